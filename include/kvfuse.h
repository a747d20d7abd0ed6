/* kvfuse.h - the public C API of kvfuse.
 *
 * kvfuse runs GGUF language models on the CPU and serves retrieval-augmented prompts fast by
 * reusing precomputed KV caches of document chunks (A^3 KV cache fusion).
 *
 * Usage (error handling elided):
 *
 *     kvf_model *m;
 *     kvf_model_load("models/SmolLM2-135M-Instruct.Q4_1.gguf", NULL, &m);
 *     kvf_session *s;
 *     kvf_session_new(m, NULL, &s);
 *     int32_t ids[512];
 *     int32_t n = kvf_tokenize(m, "Hello", 5, ids, 512, KVF_TOK_PARSE_SPECIAL);
 *     kvf_session_eval(s, ids, n, 0);                  // prefill
 *     kvf_sampler *smp = kvf_sampler_new(NULL);        // greedy
 *     int32_t tok = kvf_sampler_sample(smp, kvf_session_logits(s, -1), kvf_model_n_vocab(m));
 *     kvf_session_eval(s, &tok, 1, 0);                 // one decode step
 *     ...
 *     kvf_sampler_free(smp); kvf_session_free(s); kvf_model_free(m);
 *
 * Conventions:
 * - Handles are opaque. Constructors return a kvf_status and write the new handle to *out
 *   (NULL on failure); destructors accept NULL.
 * - On failure a function returns a negative kvf_status; kvf_errmsg() then describes what went
 *   wrong on the calling thread (the message names the offending field, offset or argument).
 * - Functions that fill a caller buffer return the number of elements written, or, when the
 *   buffer is too small, the negative of the number required.
 *
 * Threads: a kvf_model is immutable after loading and may be shared by any number of threads
 * and sessions. A kvf_session (KV cache, scratch, thread pool) must be used by one thread at a
 * time. Samplers likewise.
 */
#ifndef KVFUSE_H
#define KVFUSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#    define KVF_API __attribute__((visibility("default")))
#else
#    define KVF_API
#endif

#define KVF_VERSION "0.1.0"
KVF_API const char *kvf_version(void);

/* ---- status codes -------------------------------------------------------------------- */

#define KVF_STATUS_MAP(X)                                                                     \
    X(OK, 0, "success")                                                                       \
    X(E_INVAL, -1, "invalid argument")                                                        \
    X(E_IO, -2, "I/O error")                                                                  \
    X(E_FORMAT, -3, "malformed or unsupported file")                                          \
    X(E_NOMEM, -4, "out of memory")                                                           \
    X(E_CTX_FULL, -5, "context window is full")                                               \
    X(E_ABORTED, -6, "aborted")                                                               \
    X(E_UNSUPPORTED, -7, "unsupported")                                                       \
    X(E_NOTFOUND, -8, "not found")                                                            \
    X(E_CORRUPT, -9, "corrupt data")                                                          \
    X(E_FULL, -10, "storage full")

typedef enum {
#define KVF_X(name, val, msg) KVF_##name = val,
    KVF_STATUS_MAP(KVF_X)
#undef KVF_X
} kvf_status;

/* Static text for a status; never NULL. */
KVF_API const char *kvf_status_str(kvf_status s);
/* The message of the last error on this thread. Borrowed: valid until the next kvfuse call on
 * this thread. Never NULL ("" when there was none). */
KVF_API const char *kvf_errmsg(void);

/* 0 = errors only, 1 = warnings, 2 = info (default), 3 = debug. Messages go to stderr. */
KVF_API void kvf_set_log_level(int level);

/* ---- model --------------------------------------------------------------------------- */

typedef struct kvf_model kvf_model;

/* Arithmetic of the matrix multiplies. Weights stay in their GGUF format; what changes is how
 * activations enter the integer dot products. */
typedef enum {
    KVF_PREC_Q16 = 0, /* default: activations as two int8 levels (value + rounding residual,
                         ~15 significant bits): logits within ~1e-2 of f32 arithmetic */
    KVF_PREC_Q8  = 1, /* activations as int8 per 32 values, as llama.cpp does: fastest, but
                         small models can lose their answers to the rounding noise */
    KVF_PREC_F32 = 2, /* weights dequantised to f32, f32 activations: matches float
                         references (1e-4); slower, 4-8x the weight memory. For checking. */
} kvf_precision;

/* "q16", "q8", "f32" */
KVF_API const char *kvf_precision_name(kvf_precision p);

typedef struct kvf_model_params {
    const char   *isa;       /* kernel set: NULL or "auto" = best this CPU supports; "ref",
                                "avx2", "avx512" force one (unsupported: error). Borrowed. */
    int32_t       n_threads; /* threads for load-time weight repacking; 0 = online CPUs */
    kvf_precision precision;
} kvf_model_params;

KVF_API kvf_model_params kvf_model_default_params(void);

/* Load a GGUF model. `params` may be NULL for defaults. On success *out owns the model (free
 * with kvf_model_free); on failure *out is NULL and kvf_errmsg() says why. */
KVF_API kvf_status kvf_model_load(const char *path, const kvf_model_params *params,
                                  kvf_model **out);
KVF_API void kvf_model_free(kvf_model *model);

typedef struct kvf_model_info {
    const char *arch;      /* "llama", "qwen2"; borrowed from the model */
    const char *name;      /* general.name or ""; borrowed */
    const char *ftype;     /* dominant weight type, e.g. "Q4_1"; static */
    const char *isa;       /* kernel set in use: "ref", "avx2", "avx512"; static */
    const char *precision; /* "q16", "q8", "f32"; static */
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    uint64_t n_params;     /* parameters in the weight tensors */
    uint64_t file_bytes;   /* size of the GGUF file */
    uint64_t weight_bytes; /* memory held by the (repacked) weights */
} kvf_model_info;

KVF_API void    kvf_model_get_info(const kvf_model *model, kvf_model_info *out);
KVF_API int32_t kvf_model_n_vocab(const kvf_model *model);
KVF_API int32_t kvf_model_n_layer(const kvf_model *model);
KVF_API int32_t kvf_model_n_ctx_train(const kvf_model *model);

/* ---- tokenizer ----------------------------------------------------------------------- */

#define KVF_TOK_ADD_BOS       1u /* prepend BOS when the model's tokenizer asks for it */
#define KVF_TOK_PARSE_SPECIAL 2u /* turn special-token text such as "<|im_start|>" into its id */

/* Tokenize `len` bytes of `text` (any bytes: invalid UTF-8 is encoded byte-wise, except bytes
 * the vocabulary has no token for, which are dropped as Hugging Face does). Returns the number
 * of ids written to `out`, -(ids needed) if n_max is too small, or INT32_MIN on error (bad
 * argument, out of memory; kvf_errmsg() says which). */
KVF_API int32_t kvf_tokenize(const kvf_model *model, const char *text, size_t len, int32_t *out,
                             int32_t n_max, uint32_t flags);
/* The bytes of one token (control tokens render as their text when render_special, else as
 * nothing). Returns bytes written (no NUL), -(bytes needed), or INT32_MIN on error (bad id). */
KVF_API int32_t kvf_token_to_piece(const kvf_model *model, int32_t token, char *buf, int32_t len,
                                   bool render_special);
/* Decode a sequence of ids into text. Same return convention as kvf_token_to_piece; a NUL is
 * written after the text when there is room for it. */
KVF_API int32_t kvf_detokenize(const kvf_model *model, const int32_t *tokens, int32_t n,
                               char *buf, int32_t len, bool render_special);
KVF_API int32_t kvf_token_bos(const kvf_model *model); /* -1 when the model has none */
KVF_API int32_t kvf_token_eos(const kvf_model *model);
/* End of generation: EOS, EOT, <|im_end|> and the like. */
KVF_API bool kvf_token_is_eog(const kvf_model *model, int32_t token);

/* ---- chat template ------------------------------------------------------------------- */

typedef struct kvf_chat_msg {
    const char *role;    /* "system", "user", "assistant"; borrowed */
    const char *content; /* borrowed */
} kvf_chat_msg;

/* Render messages with the model's chat template family (ChatML for SmolLM2 and Qwen2,
 * Llama 3 headers, Zephyr/TinyLlama, Llama 2 [INST]). With add_assistant the text ends with
 * the opening of the assistant turn. Returns bytes written (NUL added when there is room),
 * -(bytes needed), or INT32_MIN when the model has no known template (see
 * kvf_chat_template_name) or on a bad argument. */
KVF_API int32_t kvf_chat_format(const kvf_model *model, const kvf_chat_msg *msgs, size_t n_msgs,
                                bool add_assistant, char *buf, int32_t len);
/* Name of the template family in use: "chatml", "llama3", "zephyr", "llama2", "none". */
KVF_API const char *kvf_chat_template_name(const kvf_model *model);

/* ---- session (KV cache + scratch + threads) ------------------------------------------ */

typedef struct kvf_session kvf_session;

typedef enum { KVF_KV_F32 = 0, KVF_KV_F16 = 1 } kvf_kv_type;

typedef struct kvf_session_params {
    int32_t     n_ctx;     /* maximum tokens in the cache; 0 = the model's training context */
    int32_t     n_threads; /* compute threads; 0 = online CPUs */
    int32_t     n_ubatch;  /* tokens per forward micro-batch; 0 = default (256) */
    kvf_kv_type kv_type;   /* storage of the session's KV cache */
} kvf_session_params;

KVF_API kvf_session_params kvf_session_default_params(void);

/* Create a session on `model` (borrowed: must outlive the session). */
KVF_API kvf_status kvf_session_new(const kvf_model *model, const kvf_session_params *params,
                                   kvf_session **out);
KVF_API void kvf_session_free(kvf_session *s);
/* Bytes kvf_session_new reserves for these parameters (NULL: the defaults): the KV cache,
 * 2 * n_layer * n_head_kv * head_dim * (4 for f32, 2 for f16) bytes per cell, with n_ctx rounded
 * up to 64 cells (address space, committed only as cells fill: see kvf_session_trim), plus
 * scratch (committed). -1 if the parameters are invalid. Nothing is allocated. */
KVF_API int64_t kvf_session_memory(const kvf_model *model, const kvf_session_params *params);

#define KVF_EVAL_ALL_LOGITS 1u /* keep logits for every evaluated token, not only the last */

/* Append `n` tokens after the tokens already in the session, run the forward pass (batched),
 * and keep the logits of the last token (or of all, with KVF_EVAL_ALL_LOGITS).
 * KVF_E_CTX_FULL if they do not fit; the session is unchanged on any error. */
KVF_API kvf_status kvf_session_eval(kvf_session *s, const int32_t *tokens, int32_t n,
                                    uint32_t flags);
/* Decode one token for each of n sessions of the same model in a single forward pass: the
 * weights are read once for all of them (decode is memory-bound, so serving n requests costs
 * far less than n separate steps). tokens[i] is appended to sessions[i]; afterwards each
 * session's kvf_session_logits(s, -1) holds its next-token logits, as after kvf_session_eval.
 * The computation uses sessions[0]'s threads and scratch: n <= its micro-batch size. The
 * sessions must be distinct. On error (full context, bad token, distinct models) no session
 * changes. */
KVF_API kvf_status kvf_decode_batch(kvf_session *const *sessions, const int32_t *tokens,
                                    int32_t n);
/* Logits of row i of the last eval (i = -1: its last token). Borrowed from the session; valid
 * until the next eval. NULL if that row was not kept. */
KVF_API const float *kvf_session_logits(const kvf_session *s, int32_t i);
/* Tokens currently in the cache. */
KVF_API int32_t kvf_session_n_past(const kvf_session *s);
/* Compute threads of the session. */
KVF_API int32_t kvf_session_threads(const kvf_session *s);
/* Forget every token from position n_keep on (0 clears the session). */
KVF_API kvf_status kvf_session_truncate(kvf_session *s, int32_t n_keep);
/* The KV cache is reserved address space (the full n_ctx) whose memory is committed as cells
 * are written. kvf_session_trim returns the memory above the cells in use to the OS (after a
 * truncate, or when a session goes idle); kvf_session_kv_resident gives the KV bytes in memory
 * now (at page granularity), kvf_session_kv_bytes_per_token the exact bytes one token needs. */
KVF_API void    kvf_session_trim(kvf_session *s);
KVF_API int64_t kvf_session_kv_resident(const kvf_session *s);
KVF_API int64_t kvf_session_kv_bytes_per_token(const kvf_model *model, kvf_kv_type kv_type);
/* Bytes of address space a session with these parameters reserves for its KV cache (part of
 * kvf_session_memory); -1 if the parameters are invalid. */
KVF_API int64_t kvf_session_kv_reserved(const kvf_model *model, const kvf_session_params *params);

/* Sparse prefill attention (src/engine/attn_sparse.c, docs/long-context.md). Keys are taken
 * in blocks of 64 cells; a row always attends to its sink block (cells 0..63) and its own
 * recent keys densely, and the mode decides which older blocks it reads as well:
 *   KVF_ATTN_SALE   SALE (arXiv 2505.24179): after exact attention over the sink and the
 *                   `local` most recent keys, every other causal block is estimated with
 *                   8-bit Q.K products (centred keys) and kept if some estimated weight,
 *                   relative to the mass already found, exceeds `threshold` for some row of
 *                   the query tile; the kept blocks are then computed exactly. Applies to
 *                   batches of two or more rows (prefill, fusion's recompute); one-token
 *                   decode stays dense. threshold 0 keeps every block (dense).
 *   KVF_ATTN_POWER  PowerAttention (arXiv 2503.03588): a row in query block p/B reads key
 *                   block b (B = `block` cells) if b == 0, p/B - b < `window`, or p/B - b is a
 *                   power of two; prefill and decode. A training-free use: the models were not
 *                   trained for this pattern.
 * Layer l stays dense when (dense_period > 0 ? l % dense_period : l) < dense_layers, and every
 * row whose keys number fewer than min_keys is dense. */
typedef enum { KVF_ATTN_DENSE = 0, KVF_ATTN_SALE, KVF_ATTN_POWER, KVF_ATTN_COUNT } kvf_attn_mode;

typedef struct kvf_attn_params {
    kvf_attn_mode mode;
    float         threshold;    /* SALE: relative weight that keeps a block (0.008) */
    int32_t       local;        /* SALE: recent keys attended densely (128) */
    int32_t       block;        /* PowerAttention: block size in cells, a multiple of 64 (256) */
    int32_t       window;       /* PowerAttention: recent blocks read densely (5) */
    int32_t       dense_layers; /* SALE: 2 (the first two); PowerAttention: 2 of every 7 */
    int32_t       dense_period; /* 0: the first dense_layers layers; else l % period */
    int32_t       min_keys;     /* rows with fewer keys stay dense (SALE 1024, power 0) */
} kvf_attn_params;

/* The defaults of a mode (KVF_ATTN_DENSE: sparse attention off). */
KVF_API kvf_attn_params kvf_attn_default_params(kvf_attn_mode mode);
KVF_API const char     *kvf_attn_name(kvf_attn_mode mode); /* "dense", "sale", "power" */
KVF_API int             kvf_attn_from_name(const char *name); /* -1 if unknown */
/* Set the attention of a session's following evaluations (fusion's recompute included; chunks
 * for the store are always computed densely); validated: KVF_E_INVAL with a message for a bad
 * value. Dense is the default of a new session. SALE keeps 8-bit codes of the keys it has
 * seen, head_dim + 4 bytes per cell, KV head and layer (about an eighth of an f32 KV cache),
 * in address space the session reserves but commits only when SALE runs; kvf_session_memory
 * does not count them. */
KVF_API kvf_status      kvf_session_set_attn(kvf_session *s, const kvf_attn_params *p);
KVF_API kvf_attn_params kvf_session_attn(const kvf_session *s);
/* Key blocks (64 cells of one KV head, counted once per query vector) that attention read in
 * the sparse layers since the last call, and the causal blocks it could have read; both reset
 * to 0. read / causal is the density of sparse attention (dense layers are not counted). */
KVF_API void kvf_session_attn_density(kvf_session *s, int64_t *read, int64_t *causal);

/* Decode attention (src/engine/attn_mac.c, attn_louis.c). Rows with fewer than min_keys keys,
 * and prefill, stay dense.
 *   KVF_DECODE_MAC    MAC-Attention (arXiv 2604.00235): each decode step of a query head looks
 *                     for the nearest of its last `lookback` queries (pre-RoPE, L2); on a close
 *                     enough match (|q - q'| <= (1 - tau) |q|) it reuses that step's attention
 *                     state over the keys older than the band, recomputes the band [that step's
 *                     boundary, this step's boundary) and attends freshly to the `band` most
 *                     recent keys, merging the three exactly by their softmax states; a KV group
 *                     takes the reused path only if all its query heads match. Boundaries are
 *                     rounded down to 64 cells.
 *   KVF_DECODE_LOUIS  LouisKV (arXiv 2510.11292): per layer and KV head, the keys older than the
 *                     `band` most recent are grouped into units: the input's keys by spherical
 *                     k-means (`cluster` keys per cluster on average, within windows of 1024
 *                     keys), the output's in segments of 64 cells as decoding moves past them.
 *                     A step attends to the 16 sink keys, the recent keys and the units selected
 *                     at the last semantic boundary, at most `budget` keys; a boundary is a step
 *                     whose pre-RoPE queries' mean cosine with the previous step's is below
 *                     `tau`, where each KV head reselects its units by their mean keys' softmax
 *                     weight under its query heads. The first dense_layers layers stay dense. */
typedef enum {
    KVF_DECODE_DENSE = 0,
    KVF_DECODE_MAC,
    KVF_DECODE_LOUIS,
    KVF_DECODE_COUNT
} kvf_decode_mode;

typedef struct kvf_decode_attn_params {
    kvf_decode_mode mode;
    float           tau;      /* MAC: match when |q - q'| <= (1 - tau) |q| (0.9); LouisKV:
                                 boundary when the queries' mean cosine < tau (0.7) */
    int32_t         lookback; /* MAC: recent steps matched against, at most 512 (512) */
    int32_t         band;     /* recent keys always attended exactly (256) */
    int32_t         min_keys; /* rows with fewer keys stay dense (2048) */
    int32_t         budget;   /* LouisKV: keys of selected units per KV head (2048) */
    int32_t         cluster;  /* LouisKV: mean keys per input cluster, 4..256 (16) */
    int32_t         dense_layers; /* LouisKV: the first layers stay dense (2) */
} kvf_decode_attn_params;

KVF_API kvf_decode_attn_params kvf_decode_attn_default_params(kvf_decode_mode mode);
KVF_API const char *kvf_decode_attn_name(kvf_decode_mode mode); /* "dense", "mac", "louis" */
KVF_API int         kvf_decode_attn_from_name(const char *name);  /* -1 if unknown */
/* Set the decode attention of a session (validated; dense by default). Changing it forgets the
 * remembered queries and units. MAC keeps, per layer and query head, `lookback` queries with
 * their states: (2 head_dim + 2) floats each. LouisKV keeps per layer and KV head its units'
 * mean keys (about 1/cluster of the keys) and a copy of the selected keys and values (up to
 * `budget` cells). Both in address space reserved at session creation, committed when used. */
KVF_API kvf_status kvf_session_set_decode_attn(kvf_session *s, const kvf_decode_attn_params *p);
KVF_API kvf_decode_attn_params kvf_session_decode_attn(const kvf_session *s);
/* Decode steps (per layer and query head for MAC, per layer and KV head for LouisKV) that ran
 * the method since the last call, and how many reused: a MAC state, or LouisKV's selection
 * (no boundary); both reset. */
KVF_API void kvf_session_decode_hits(kvf_session *s, int64_t *hits, int64_t *lookups);
/* Keys LouisKV's decode steps attended (per layer and KV head) since the last call, and the
 * keys dense attention would have read; both reset. */
KVF_API void kvf_session_decode_density(kvf_session *s, int64_t *read, int64_t *total);

/* ---- KV cache fusion ----------------------------------------------------------------- */

/* A retrieval-augmented prompt is split into segments: segment 0 is the system prefix (its KV
 * is reused exactly), segments 1..n-2 are documents (chunks whose KV is precomputed once and
 * reused in any order), segment n-1 is the question (always computed). Each segment is
 * tokenized on its own (no BOS inside documents); the fused prompt's ids are the concatenation,
 * and `full` prefills exactly those ids, so every method sees the same tokens. */

typedef enum {
    KVF_METHOD_FULL = 0,   /* full prefill of every token: the reference */
    KVF_METHOD_PREFIX,     /* reuse the longest exactly cached prefix, compute the rest */
    KVF_METHOD_REUSE,      /* reuse every document's KV; recompute the question only */
    KVF_METHOD_EPIC,       /* recompute the first k tokens of each document + the question */
    KVF_METHOD_CACHEBLEND, /* recompute the tokens whose layer-1 V deviates most */
    KVF_METHOD_A3,         /* recompute the tokens the question attends to most (A^3) */
    KVF_METHOD_KVSHARE,    /* KVShare's dual high deviation: layer-1 question attention x
                              layer-1 V deviation */
    KVF_METHOD_PROPHET,    /* ProphetKV: the question's attention over the fused cache summed
                              over every layer (a reuse pass first), then recompute */
    KVF_METHOD_FOCUS,      /* kvfuse's own (docs/selection.md) */
    KVF_METHOD_ORACLE,     /* evaluation diagnostic, slower than full: a full prefill first,
                              then the rows whose reused K/V deviate most from full's */
    KVF_METHOD_COUNT
} kvf_method;

KVF_API const char *kvf_method_name(kvf_method m); /* "full", "prefix", ... */
/* Method by name; -1 if unknown. */
KVF_API int kvf_method_from_name(const char *name);
/* Whether the method's recompute budget is set by kvf_fuse_params.ratio (cacheblend, a3,
 * kvshare, prophet, focus, oracle). */
KVF_API bool kvf_method_has_ratio(kvf_method m);

typedef enum { KVF_EVICT_NONE = 0, KVF_EVICT_SNAPKV, KVF_EVICT_STREAMING, KVF_EVICT_COUNT } kvf_evict;

KVF_API const char *kvf_evict_name(kvf_evict e); /* "none", "snapkv", "streaming" */
/* Eviction policy by name; -1 if unknown. */
KVF_API int kvf_evict_from_name(const char *name);

typedef enum {
    KVF_CHUNK_F16 = 0,
    KVF_CHUNK_F32 = 1,
    KVF_CHUNK_Q8  = 2, /* per 32 values an f16 scale and 32 int8 codes (q8_0): 0.53x f16 */
} kvf_chunk_dtype;

typedef struct kvf_fuse_params {
    kvf_method      method;
    float           ratio;       /* recompute budget k = floor((T - q) * ratio); default 0.15 */
    int32_t         epic_k;      /* epic: tokens recomputed at the start of each document (16) */
    int32_t         score_layer; /* a3/cacheblend: layer that selects the tokens (1); layers
                                    below it are recomputed in full */
    bool            a3_per_head; /* a3: softmax per head then mean (default: heads merged
                                    before the softmax) */
    bool            blend_on_k;  /* cacheblend: deviation of K instead of V (as LMCache) */
    int32_t         pool;        /* a3: average-pool window over the scores (5; 1 = none) */
    kvf_evict       evict;       /* after the fused prefill, shrink the cache (for decoding) */
    int32_t         budget;      /* eviction budget in tokens per KV head (1024) */
    kvf_chunk_dtype dtype;       /* storage of precomputed chunk KV (f16) */
    bool            chunk_alone; /* precompute documents at position 0 without the prefix
                                    (default: after the system prefix, as in the prompt) */
    /* adaptive ratio (--ratio auto; selective methods a3, cacheblend): instead of `ratio`,
     * recompute the fewest top-scoring tokens that hold `fidelity` of the selection score's
     * mass (the question's attention for a3, the KV deviation for cacheblend), with the
     * ratio kept within [ratio_min, ratio_max]. stats->ratio_used reports the choice. */
    bool            ratio_auto;  /* false */
    float           fidelity;    /* target share of the score mass, (0, 1] (0.95) */
    float           ratio_min;   /* 0.05 */
    float           ratio_max;   /* 0.5 */
} kvf_fuse_params;

KVF_API kvf_fuse_params kvf_fuse_default_params(void);

typedef struct kvf_fuse_stats {
    int32_t total_tokens;      /* T */
    int32_t prefix_tokens;     /* P */
    int32_t question_tokens;   /* q */
    int32_t recomputed_tokens; /* rows recomputed beyond the selection layer (|I|) */
    int32_t reused_tokens;     /* tokens whose cached KV was used */
    int32_t chunk_hits, chunk_misses;
    double  precompute_ms;     /* computing missing chunks (not part of TTFT) */
    double  load_ms;           /* fetching chunk KV from the cache */
    double  rope_ms;           /* RoPE recovery and building the fused cache */
    double  recompute_ms;      /* the forward work (selection included) */
    double  first_token_ms;    /* final norm and output projection of the last token */
    double  ttft_ms;           /* load + rope + recompute + first token */
    int64_t kv_bytes_loaded;
    int32_t kept_after_evict;  /* cache tokens per KV head after eviction (0 = none) */
    float   ratio_used;        /* selective methods: recomputed documents tokens / (T - q) */
    float   score_mass;        /* selective methods: share of the selection score's mass the
                                  recomputed tokens hold */
} kvf_fuse_stats;

/* Precomputed chunk KV, reference counted. */
typedef struct kvf_chunk kvf_chunk;
KVF_API void    kvf_chunk_release(kvf_chunk *c); /* drop one reference; NULL ok */
KVF_API int32_t kvf_chunk_n_tokens(const kvf_chunk *c);
KVF_API size_t  kvf_chunk_bytes(const kvf_chunk *c);

/* The chunk cache fusion reads from and writes missing chunks to. kvf_chunk_cache_new_memory
 * makes an in-memory LRU cache bounded by budget_bytes (0 = unbounded). */
typedef struct kvf_chunk_cache kvf_chunk_cache;
KVF_API kvf_status kvf_chunk_cache_new_memory(size_t budget_bytes, kvf_chunk_cache **out);
KVF_API void       kvf_chunk_cache_free(kvf_chunk_cache *c);

typedef struct kvf_segment {
    const int32_t *ids; /* borrowed */
    int32_t        n;
} kvf_segment;

/* Fused prefill of a segmented prompt into session s (which is cleared first): afterwards
 * kvf_session_logits(s, -1) holds the first-token logits and decoding continues with
 * kvf_session_eval. `cache` may be NULL only for KVF_METHOD_FULL. Misses are computed with the
 * session and stored in the cache (their time is stats->precompute_ms). `stats` may be NULL.
 * n_segs >= 2 (segment 0 may be empty; the question segment must not be). */
KVF_API kvf_status kvf_session_fuse(kvf_session *s, kvf_chunk_cache *cache,
                                    const kvf_segment *segs, int32_t n_segs,
                                    const kvf_fuse_params *params, kvf_fuse_stats *stats);
/* Positions recomputed by the last kvf_session_fuse on s (sorted; *n set), or NULL. Borrowed:
 * valid until the next fuse or kvf_session_free. */
KVF_API const int32_t *kvf_session_fused_rows(const kvf_session *s, int32_t *n);
/* Tokens of the prompt's cached chunks: the prefix and document segments (all but the last)
 * whose chunks `cache` holds now under the keys kvf_session_fuse would look up with `fp`.
 * For ordering work by how much of it is already computed; -1 on bad arguments. */
KVF_API int64_t kvf_fuse_cached_tokens(const kvf_model *model, kvf_chunk_cache *cache,
                                       const kvf_segment *segs, int32_t n_segs,
                                       const kvf_fuse_params *fp);
/* The content addresses kvf_session_fuse looks the prompt's chunks up under with `fp`: one per
 * non-empty segment but the last (the prefix, then the documents), in order, at most `max`, into
 * keys. Returns how many, or -1 on bad arguments. For cache hints (KVFlow in `serve`). */
KVF_API int32_t kvf_fuse_chunk_keys(const kvf_model *model, const kvf_segment *segs, int32_t n_segs,
                                    const kvf_fuse_params *fp, uint8_t (*keys)[16], int32_t max);
/* Precompute and cache the KV of documents segs[1..n_segs-2] (and the prefix) without
 * answering; stats as above (precompute_ms, chunk_hits/misses). */
KVF_API kvf_status kvf_session_precompute(kvf_session *s, kvf_chunk_cache *cache,
                                          const kvf_segment *segs, int32_t n_segs,
                                          const kvf_fuse_params *params, kvf_fuse_stats *stats);

/* ---- conversation prefixes: a session's KV kept in a chunk cache, found by content ------- */

#define KVF_PREFIX_BLOCK_MAX 4096

/* Save the KV session s holds for ids[0..n) (its cells must hold exactly those tokens at
 * positions 0..n-1, as after kvf_session_eval of them) into `cache`, in blocks of `block`
 * tokens: blocks [from/block, n/block) that the cache does not hold yet (a partial last
 * block is not saved). A block's key covers every token up to its end, the model and its
 * arithmetic, the KV precision and the session's prefill attention, so a later
 * kvf_session_prefix_load of any prompt that starts with the same tokens finds it, in any
 * session of the same model and settings, or in another process through a store's disk or
 * Redis tier. *n_saved (may be NULL): the end of the last block of [from/block, n/block) now
 * in the cache, saved by this call or before (0: none). Errors: KVF_E_INVAL (the session does not hold ids as a plain prefix), the
 * cache's put errors. */
KVF_API kvf_status kvf_session_prefix_save(kvf_session *s, kvf_chunk_cache *cache,
                                           const int32_t *ids, int32_t n, int32_t block,
                                           int32_t from, int32_t *n_saved);
/* Restore into s the longest run of saved blocks that starts ids[0..n) (always leaving at
 * least the last token to evaluate). What s already holds of ids is kept (when no block is
 * restored, every such token; else its whole blocks, and from the first block restored on s
 * is rewritten); anything else s held is dropped. *n_loaded: the tokens s then holds, all of
 * them ids' (continue with kvf_session_eval(s, ids + *n_loaded, n - *n_loaded)). The restored
 * KV is bit for bit what was saved. A block whose content does not match is not used. */
KVF_API kvf_status kvf_session_prefix_load(kvf_session *s, kvf_chunk_cache *cache,
                                           const int32_t *ids, int32_t n, int32_t block,
                                           int32_t *n_loaded);

/* ---- bounded conversations (EpiCache): a long history under a fixed KV budget ---------- */

/* kvf_session_prefill_budget prefills a history block by block and, whenever the next block and
 * the probe would not fit, evicts cells down to what does fit: every layer and KV head keeps its
 * `sink` first cells, its `window` most recent ones and the cells a probe text attends to most
 * (the maximum over the probe's rows and the KV head's query heads of the softmax over the
 * cached keys, or with `score_sum` their sum, pooled over `pool` neighbours). The probe runs after the
 * cache and leaves no cells. The session never holds more than `budget` cells while doing so. */
typedef struct kvf_conv_budget_params {
    int32_t budget; /* most cells held while prefilling the history (tokens per KV head) */
    int32_t block;  /* history tokens prefilled between evictions (256) */
    int32_t sink;   /* first cells never evicted, e.g. the system prompt (0) */
    int32_t window; /* most recent cells never evicted (32) */
    int32_t pool;   /* score pooling width (5; 1 = none) */
    int32_t score_sum; /* 1: a cell's score is its attention summed over the probe's rows and
                          query heads (SnapKV's observation window), so a cell many probe tokens
                          attend to outranks one a single token does; 0: their maximum (0) */
    const int32_t *layer_budget; /* [n_layer] cells each layer may hold (mean <= budget), e.g.
                                    from kvf_conv_layer_budgets; NULL: budget for every layer */
    int32_t layer_adapt; /* 1: every eviction round shares the layers' cells out again by how much
                            of each layer's probe attention they keep (after Ada-KV): a layer
                            whose attention is spread keeps more; each keeps at least a quarter
                            of its share and the mean over layers stays within the budget (0) */
    int32_t chunk; /* > 0: every layer and KV head keeps the same cells, whole runs of `chunk`
                      cells chosen by their pooled probe attention, each head's share summed
                      over layers and heads (after ChunkKV), so kept text stays contiguous; not
                      with layer_budget or layer_adapt. 0: each head keeps its own top cells (0) */
    int32_t probe_idf; /* 1: each probe row's attention is weighted by how rare its token is in
                          the history: with N blocks of `block` history tokens and df of them
                          holding the token, w = 0.1 + 0.9 log((N + 1) / (df + 1)) / log(N + 1),
                          so template tokens and common words, found in every block, count a
                          tenth of a name found in one (0) */
} kvf_conv_budget_params;
KVF_API kvf_conv_budget_params kvf_conv_budget_default_params(int32_t budget);

typedef struct kvf_conv_budget_stats {
    int32_t blocks;     /* blocks prefilled */
    int32_t evictions;  /* probe + eviction rounds */
    int32_t peak_cells; /* most cells held at once (history, block and probe; with layer
                           budgets the mean over layers, rounded up) */
    int32_t cells;      /* cells held at the end (per KV head; mean over layers) */
    double  prefill_ms, probe_ms;
} kvf_conv_budget_stats;

/* Prefill ids[0..n) into the empty session s under p->budget cells, scoring with
 * probe[0..n_probe) (the episode's text; NULL: the last `window` history tokens seen, i.e.
 * SnapKV's observation window). Afterwards s holds at most budget - n_probe cells of the
 * history (positions 0..n-1, some evicted; the last block whole); continue with
 * kvf_session_eval (the question) and decode. A session so filled can only be appended to or
 * truncated to 0. Errors: KVF_E_INVAL (session not empty, sparse prefill attention or LouisKV
 * decoding, a budget
 * too small for sink + window + block + probe + 16), KVF_E_CTX_FULL, KVF_E_NOMEM. */
KVF_API kvf_status kvf_session_prefill_budget(kvf_session *s, const int32_t *ids, int32_t n,
                                              const int32_t *probe, int32_t n_probe,
                                              const kvf_conv_budget_params *p,
                                              kvf_conv_budget_stats *stats);
/* The same in parts, so a server can interleave other work: *done is the history tokens the
 * earlier parts prefilled (0 on the first call, which needs an empty session and resets
 * *stats); each call prefills whole blocks until at least max_tokens more are in (max_tokens
 * <= 0: the rest) and advances *done; stats accumulate over the parts, so pass the same
 * struct each time. Between parts the session must not change. The parts together compute
 * exactly what one kvf_session_prefill_budget call does. On an error the session is emptied
 * and *done is 0. */
KVF_API kvf_status kvf_session_prefill_budget_part(kvf_session *s, const int32_t *ids, int32_t n,
                                                   const int32_t *probe, int32_t n_probe,
                                                   const kvf_conv_budget_params *p,
                                                   int32_t max_tokens, int32_t *done,
                                                   kvf_conv_budget_stats *stats);

/* Layer budgets (EpiCache's layer-wise allocation). kvf_conv_layer_profile measures how much
 * each layer's keys change when ids[0..n) is prefilled in blocks of `block` tokens, each block
 * seeing only the first 128 tokens and the second half of the block before it, instead of
 * whole: sim[l] = the mean over KV heads and 100-token windows of the cosine between the
 * window's flattened keys both ways (1: the layer does not care). s must be empty, with dense
 * attention and n_ctx >= n; it is left empty. n >= 2 * block, block >= 128. */
KVF_API kvf_status kvf_conv_layer_profile(kvf_session *s, const int32_t *ids, int32_t n,
                                          int32_t block, float *sim);
/* Budgets from a profile for p (budget, block, sink, window) and a probe of n_probe tokens:
 * with K = budget - block - probe the cells a layer keeps between eviction rounds (EpiCache's
 * M), u = sim min-max normalised and w[l] = (1 - u[l])^alpha, layer l keeps
 * floor + L (K - floor) w[l] / sum(w) cells, floor = K / 4 (at least the sink and window + 16
 * + 64), and holds that plus block and probe: out[l]. The sensitive layers keep more; the mean
 * stays the budget. alpha 0 (or a flat profile): every layer gets the budget. Errors:
 * KVF_E_INVAL (a budget too small for the least, alpha < 0, a similarity not finite). */
KVF_API kvf_status kvf_conv_layer_budgets(const float *sim, int32_t n_layer,
                                          const kvf_conv_budget_params *p, int32_t n_probe,
                                          float alpha, int32_t *out);
/* The profile as a text file ("layers N", then "LAYER SIMILARITY" lines; written atomically),
 * and read back for a model of the same number of layers. Errors: KVF_E_IO, KVF_E_FORMAT. */
KVF_API kvf_status kvf_conv_layer_profile_save(const char *path, const kvf_model *m,
                                               const float *sim, int32_t n_tokens, int32_t block);
KVF_API kvf_status kvf_conv_layer_profile_load(const char *path, const kvf_model *m, float *sim);
/* The least budget a layer may get with these parameters and a probe of n_probe tokens
 * (sink + window + block + probe + 16, + 64 for the key tile a layer budget rounds to). */
KVF_API int32_t kvf_conv_layer_min_budget(const kvf_conv_budget_params *p, int32_t n_probe);

/* Episodes of a conversation (EpiCache's clustering, without a second model): the history
 * ids[0..n) is cut into utterances at utt[0..n_utt) (ascending token offsets; utterance i is
 * [utt[i], utt[i+1]) and the last runs to n), windows of `win` consecutive utterances (stride
 * win/2) become tf-idf vectors of their token ids (sublinear tf, idf over the windows, hashed
 * into 4096 buckets, unit length), clustered by spherical k-means (deterministic
 * farthest-point start) into at most n_episodes episodes. */
typedef struct kvf_episodes kvf_episodes;
KVF_API kvf_status kvf_episodes_build(const kvf_model *model, const int32_t *ids, int32_t n,
                                      const int32_t *utt, int32_t n_utt, int32_t win,
                                      int32_t n_episodes, kvf_episodes **out);
KVF_API void       kvf_episodes_free(kvf_episodes *e);
KVF_API int32_t    kvf_episodes_count(const kvf_episodes *e);
/* The episode whose centroid is nearest the question q[0..nq) as the same kind of vector
 * (cosine into *sim if not NULL); -1 on bad arguments. */
KVF_API int32_t kvf_episodes_route(const kvf_episodes *e, const int32_t *q, int32_t nq, float *sim);
/* The episode's probe text: its windows nearest the centroid first, cut at `max` tokens,
 * then put back in time order; returns the token count (<= max) or -1. */
KVF_API int32_t kvf_episodes_probe(const kvf_episodes *e, int32_t episode, int32_t *out,
                                   int32_t max);

/* ---- chunk store: persistent, tiered chunk KV cache ---------------------------------- */

/* A kvf_chunk_cache backed by up to three tiers, each optional, stacked read-through and
 * write-back: memory (in-process LRU with a byte budget and pinning) -> disk (LMDB: crash-safe,
 * shared by every process on the machine, zero-copy reads from its memory map, LRU eviction
 * by last access under a byte budget) -> remote (Redis through hiredis, shared by servers).
 *
 * Entries are content-addressed by the chunk key (XXH3-128 of the model's cache id, dtype,
 * format version, context ids and chunk ids) and self-describing: a header (magic, versions,
 * key, model id, dtype, layers, KV heads, head dim, token count, context length, sizes,
 * checksums), the context and chunk token ids, a per-layer table (offset, size, codec, XXH3-64
 * checksum), then per-layer K and V (optionally zstd-compressed). Every read verifies the
 * checksums; a bad entry is logged, dropped from its tier and reported as a miss, so fusion
 * recomputes it. Misses that fusion computes are put into the memory tier at once and written
 * to the disk and remote tiers by a background writer thread (bounded queue), so requests do
 * not wait for I/O. Hits in a lower tier are copied into the tiers above it.
 *
 * The handle is a kvf_chunk_cache: pass it to kvf_session_fuse / kvf_session_precompute and
 * free it with kvf_chunk_cache_free (which flushes queued writes first). get/put are
 * thread-safe; the maintenance functions may run concurrently with them and with other
 * processes using the same directory. */

typedef enum {
    KVF_STORE_COMPRESS_NONE = 0,
    KVF_STORE_COMPRESS_ZSTD = 1, /* zstd per layer (kept raw where it does not shrink) */
} kvf_store_compress;

typedef struct kvf_store_params {
    const char        *dir;          /* disk tier directory (created if missing); NULL = none.
                                        Copied. */
    uint64_t           map_size;     /* LMDB map size (the most the file can hold); 0 = 16 GiB.
                                        Another process's larger map is adopted. */
    uint64_t           disk_budget;  /* evict least recently used entries to keep the disk
                                        tier's entry bytes at most this; 0 = no budget (the
                                        map size is the limit: a full map is an error) */
    uint64_t           mem_budget;   /* bytes of the memory tier; 0 = no memory tier */
    const char        *redis;        /* "HOST:PORT", "unix:/PATH" or "/PATH"; NULL = none.
                                        Copied. A server that is down is retried later. */
    int32_t            redis_timeout_ms; /* connect / command timeout; 0 = 1000 */
    int32_t            redis_ttl_s;  /* expiry of Redis entries; 0 = none (rely on maxmemory) */
    const char        *redis_prefix; /* key prefix; NULL = "kvf:" (key = prefix{32 hex}) */
    kvf_store_compress compress;     /* of entries written by this handle (reads accept all) */
    int32_t            zstd_level;   /* 0 = 3 */
    uint64_t           queue_bytes;  /* chunk bytes the writer queue holds; 0 = 256 MiB */
    int32_t            touch_interval_s; /* a disk hit updates the entry's last access time if
                                        it is older than this; 0 = 60, < 0 = on every hit */
    bool               drop_when_full; /* full queue: drop the write (counted) instead of
                                        making put wait */
    bool               no_meta_sync; /* LMDB MDB_NOMETASYNC: a system crash (not a process
                                        crash) may undo the last commit; faster */
    bool               verify_deferred; /* (default true) get_deferred returns zero-copy chunks whose layers
                                        are verified by kvf_chunk_load_layer (pipelining) */
} kvf_store_params;

KVF_API kvf_store_params kvf_store_default_params(void);

/* Open a store for `model` (borrowed: must outlive the store; its cache id is checked against
 * every entry read). model == NULL opens a maintenance handle: stats, list, verify, gc and
 * remove work, get always misses and put fails. At least one tier must be enabled. On success
 * *out is a chunk cache (free with kvf_chunk_cache_free). Errors: KVF_E_INVAL (bad
 * parameter), KVF_E_IO (directory or LMDB environment cannot be opened, with the reason). */
KVF_API kvf_status kvf_store_open(const kvf_model *model, const kvf_store_params *params,
                                  kvf_chunk_cache **out);
/* True when c was made by kvf_store_open. The functions below return KVF_E_INVAL otherwise. */
KVF_API bool kvf_chunk_cache_is_store(const kvf_chunk_cache *c);

typedef enum { KVF_TIER_MEMORY = 0, KVF_TIER_DISK, KVF_TIER_REDIS, KVF_TIER_COUNT } kvf_store_tier;
KVF_API const char *kvf_store_tier_name(kvf_store_tier t); /* "memory", "disk", "redis" */

typedef struct kvf_store_tier_stats {
    bool    enabled;
    int64_t entries, bytes;      /* contents now (memory: this process; disk: the store;
                                    redis: -1 unless counted by kvf_store_count_redis) */
    int64_t hits, misses;        /* lookups through this handle */
    int64_t writes, write_bytes; /* entries this handle stored in the tier */
    int64_t evictions;           /* entries this handle evicted for the budget */
    int64_t errors;              /* failed reads or writes (I/O, full, connection down) */
    int64_t bad_entries;         /* corrupt entries detected and dropped */
    int64_t read_bytes;          /* entry bytes of the hits */
    double  read_ms;             /* time spent in lookups that hit (verification included) */
    int64_t total_hits, total_misses; /* every process's lookups, persisted in the disk tier
                                         (flushed by the writer; -1 without a disk tier) */
    int64_t total_bad_entries, total_evictions; /* likewise: every process's drops, evictions */
} kvf_store_tier_stats;

typedef struct kvf_store_stats {
    kvf_store_tier_stats tier[KVF_TIER_COUNT];
    int64_t              queued;        /* writes waiting in the queue */
    int64_t              write_dropped; /* writes dropped because the queue was full */
    int64_t              warmed;        /* chunks brought into memory ahead of use (warm hints) */
    uint64_t             map_size;      /* LMDB map size in use (0 without a disk tier) */
    uint64_t             file_bytes;    /* size of the LMDB data file */
    uint64_t             disk_budget;
} kvf_store_stats;

KVF_API kvf_status kvf_store_get_stats(kvf_chunk_cache *c, kvf_store_stats *out);
/* Count the Redis tier's entries and bytes (SCAN over the key prefix: slow on big servers)
 * into the next kvf_store_get_stats. */
KVF_API kvf_status kvf_store_count_redis(kvf_chunk_cache *c);
/* Wait until every queued write is done. Returns KVF_OK, or the first write error since the
 * last flush (e.g. KVF_E_FULL "LMDB map is full ..."; nothing stored before is lost). */
KVF_API kvf_status kvf_store_flush(kvf_chunk_cache *c);
/* Like flush without waiting: the first write error so far (cleared), or KVF_OK. */
KVF_API kvf_status kvf_store_write_status(kvf_chunk_cache *c);
/* Pin (or unpin) the memory-tier entry of a key: pinned entries are never evicted (they still
 * count against the budget). KVF_E_NOTFOUND if the key is not in the memory tier. */
KVF_API kvf_status kvf_store_pin(kvf_chunk_cache *c, const uint8_t key[16], bool pin);

/* One stored entry (maintenance). */
typedef struct kvf_store_entry {
    uint8_t            key[16];
    uint8_t            model_id[16]; /* the model's cache id */
    bool               header_ok;    /* false: the header is unreadable (fields below zero) */
    kvf_chunk_dtype    dtype;
    kvf_store_compress compress;     /* of at least one layer */
    int32_t            n_layer, n_head_kv, head_dim, n_tokens, n_ctx;
    uint64_t           bytes;        /* stored entry size */
    uint64_t           kv_bytes;     /* uncompressed K and V */
    int64_t            last_access;  /* Unix time in ns (0 unknown) */
} kvf_store_entry;

/* Visit every disk-tier entry in key order; fn returns nonzero to stop. Entry data is not
 * verified (see kvf_store_verify). */
typedef int (*kvf_store_visit_fn)(const kvf_store_entry *e, const char *problem, void *user);
KVF_API kvf_status kvf_store_list(kvf_chunk_cache *c, kvf_store_visit_fn fn, void *user);

typedef struct kvf_store_verify_report {
    int64_t checked, bad, removed;
    uint64_t bytes;                  /* entry bytes read */
    bool    index_ok;                /* LRU index and counters agree with the entries */
} kvf_store_verify_report;
/* Read every disk-tier entry and check all checksums, the key (recomputed from the stored ids)
 * and the LRU index. fn (may be NULL) is called for each bad entry with the problem. With
 * remove_bad, bad entries are deleted and the index repaired. KVF_OK when nothing was bad. */
KVF_API kvf_status kvf_store_verify(kvf_chunk_cache *c, bool remove_bad, kvf_store_visit_fn fn,
                                    void *user, kvf_store_verify_report *out);
/* Evict least recently used disk entries until the entry bytes are at most target_bytes
 * (0: the disk budget; no budget and 0: evict nothing), repair the index and counters. */
KVF_API kvf_status kvf_store_gc(kvf_chunk_cache *c, uint64_t target_bytes, int64_t *evicted,
                                uint64_t *freed);
/* Remove a key from every tier. KVF_E_NOTFOUND if no tier had it. */
KVF_API kvf_status kvf_store_remove(kvf_chunk_cache *c, const uint8_t key[16]);

/* ---- sampling ------------------------------------------------------------------------ */

typedef struct kvf_sampler kvf_sampler;

typedef struct kvf_sampler_params {
    float    temp;  /* 0 = greedy (argmax, lowest id on ties) */
    float    top_p; /* nucleus; 1 = off */
    int32_t  top_k; /* 0 = off */
    uint64_t seed;  /* RNG seed; the same seed gives the same tokens */
} kvf_sampler_params;

KVF_API kvf_sampler_params kvf_sampler_default_params(void);
/* NULL params = greedy. Returns NULL only when out of memory. Free with kvf_sampler_free. */
KVF_API kvf_sampler *kvf_sampler_new(const kvf_sampler_params *params);
KVF_API void         kvf_sampler_free(kvf_sampler *smp);
/* Pick a token from `logits` (n_vocab floats, not modified). smp == NULL picks greedily. */
KVF_API int32_t kvf_sampler_sample(kvf_sampler *smp, const float *logits, int32_t n_vocab);

#ifdef __cplusplus
}
#endif
#endif /* KVFUSE_H */
