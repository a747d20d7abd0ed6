/* tokenizer.h - text <-> token ids for GGUF vocabularies, and chat templates.
 *
 * Two tokenizer models, chosen by tokenizer.ggml.model:
 *   "gpt2"  byte-level BPE: a regex pre-tokenizer picked by tokenizer.ggml.pre (smollm, gpt2,
 *           llama3, qwen2), the GPT-2 byte <-> unicode mapping, merges applied by rank;
 *   "llama" SentencePiece BPE: "▁" for spaces, optional space prefix, greedy merging of the
 *           adjacent pair whose piece has the highest score, <0xXX> byte fallback, <unk>.
 * Control tokens are matched in text only with KVF_TOK_PARSE_SPECIAL; USER_DEFINED tokens always
 * (Hugging Face's non-special added tokens, llama.cpp's USER_DEFINED).
 * Chat formatting renders one of a few template families (ChatML, Llama 3, Zephyr, Llama 2),
 * detected from tokenizer.chat_template; it does not interpret Jinja.
 *
 * A kvf_vocab is immutable once built: every function here may be called from any number of
 * threads at once. Return conventions follow the public wrappers in kvfuse.h.
 */
#ifndef KVF_TOKENIZER_H
#define KVF_TOKENIZER_H

#include "engine/gguf.h"
#include "kvfuse.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvf_vocab kvf_vocab;

/* Token types as numbered by tokenizer.ggml.token_type. UNDEFINED is treated as NORMAL. */
enum {
    KVF_TOKT_UNDEFINED = 0,
    KVF_TOKT_NORMAL = 1,
    KVF_TOKT_UNKNOWN = 2,
    KVF_TOKT_CONTROL = 3,
    KVF_TOKT_USER_DEFINED = 4,
    KVF_TOKT_UNUSED = 5,
    KVF_TOKT_BYTE = 6,
};

/* Everything a vocabulary is built from: the tokenizer.ggml.* keys of a GGUF file, as plain
 * arrays. kvf_vocab_load() fills one from a file; tests fill one by hand. All pointers are
 * borrowed for the duration of kvf_vocab_build() only. */
typedef struct kvf_vocab_spec {
    const char *model;      /* tokenizer.ggml.model: "gpt2" or "llama" */
    const char *pre;        /* tokenizer.ggml.pre; NULL = "default" */
    const gguf_str *tokens; /* tokenizer.ggml.tokens[n_tokens] */
    int32_t n_tokens;
    const int32_t *types;   /* tokenizer.ggml.token_type[n_tokens]; NULL = all NORMAL */
    const float *scores;    /* tokenizer.ggml.scores[n_tokens]; NULL = all 0 */
    const gguf_str *merges; /* tokenizer.ggml.merges[n_merges], "left right" (gpt2 only) */
    int32_t n_merges;
    int64_t bos, eos, unk, eot, eom; /* token ids; -1 = none */
    int add_bos;                     /* tokenizer.ggml.add_bos_token: 0, 1, -1 = default */
    int add_space_prefix;            /* tokenizer.ggml.add_space_prefix: 0, 1, -1 = default */
    gguf_str chat_template;          /* tokenizer.chat_template; n = 0 = none */
    const char *arch;                /* general.architecture; NULL = unknown */
} kvf_vocab_spec;

/* A spec with no tokens, every id -1 and every flag at its default. */
kvf_vocab_spec kvf_vocab_spec_default(void);

/* Validate a spec and build a vocabulary from it (copies everything). KVF_E_FORMAT with a
 * message naming the tokenizer.ggml.* key and index on bad data; KVF_E_UNSUPPORTED for an
 * unknown model; KVF_E_NOMEM. */
kvf_status kvf_vocab_build(const kvf_vocab_spec *spec, kvf_vocab **out);

/* Build from GGUF metadata (tokenizer.ggml.*, tokenizer.chat_template, general.architecture).
 * Copies everything it needs: f may be closed afterwards. */
kvf_status kvf_vocab_load(const gguf_file *f, kvf_vocab **out);
void kvf_vocab_free(kvf_vocab *v); /* NULL ok */

int32_t kvf_vocab_n_tokens(const kvf_vocab *v);

/* Tokenize len bytes of text (any bytes; invalid UTF-8 round-trips). flags: KVF_TOK_ADD_BOS
 * (prepend BOS when the vocabulary's add_bos_token says so, unless the text already starts
 * with it), KVF_TOK_PARSE_SPECIAL. Returns the number of ids written, or -(ids needed) when
 * n_max is too small (nothing useful is in out then). INT32_MIN on a bad argument, on out of
 * memory, or when more than INT32_MAX ids would be needed (kvf_errmsg() says which). */
int32_t kvf_vocab_encode(const kvf_vocab *v, const char *text, size_t len, int32_t *out,
                         int32_t n_max, uint32_t flags);

/* The bytes of one token: its text for NORMAL/USER_DEFINED tokens, its byte for BYTE tokens,
 * and for CONTROL/UNKNOWN/UNUSED tokens their text when render_special, else nothing.
 * Returns bytes written (no NUL), -(bytes needed) if len is too small, INT32_MIN for a bad
 * id. */
int32_t kvf_vocab_piece(const kvf_vocab *v, int32_t id, char *buf, int32_t len,
                        bool render_special);

/* Concatenated pieces of ids[0..n) (SentencePiece: the space that the prefix added before
 * the first text is removed). Returns bytes written and adds a NUL when there is room;
 * -(bytes needed) if len is too small; INT32_MIN for a bad id or an output over INT32_MAX. */
int32_t kvf_vocab_decode(const kvf_vocab *v, const int32_t *ids, int32_t n, char *buf, int32_t len,
                         bool render_special);

int32_t kvf_vocab_bos(const kvf_vocab *v); /* -1 if none */
int32_t kvf_vocab_eos(const kvf_vocab *v); /* -1 if none */
/* End of generation: EOS, EOT, EOM, and control tokens such as <|im_end|>, <|eot_id|>,
 * <|endoftext|>, <end_of_turn>, </s>. */
bool kvf_vocab_is_eog(const kvf_vocab *v, int32_t id);

/* Render a conversation with the vocabulary's chat template family; add_assistant ends it with
 * the opening of an assistant turn. Returns bytes written (NUL added when there is room) or
 * -(bytes needed). INT32_MIN (kvf_errmsg() says why) when the family is "none", a message
 * has a NULL role or content, or the text would exceed INT32_MAX bytes.
 * The text contains the family's special-token strings (and, for Llama 3 / Llama 2, the BOS
 * text): tokenize it with KVF_TOK_PARSE_SPECIAL. */
int32_t kvf_vocab_chat_format(const kvf_vocab *v, const kvf_chat_msg *msgs, size_t n,
                              bool add_assistant, char *buf, int32_t len);
/* "chatml", "llama3", "zephyr", "llama2" or "none". */
const char *kvf_vocab_chat_template_name(const kvf_vocab *v);

/* ---- introspection (tests, tools) ---- */

/* KVF_TOKT_* of a token, -1 for a bad id. */
int kvf_vocab_token_type(const kvf_vocab *v, int32_t id);
/* Id of the token whose tokenizer.ggml.tokens entry is exactly these bytes, -1 if none. */
int32_t kvf_vocab_find(const kvf_vocab *v, const char *text, size_t len);
/* The pre-tokenizer in use: "smollm", "gpt2", "llama3", "qwen2", or "spm" for "llama". */
const char *kvf_vocab_pre_name(const kvf_vocab *v);
/* The pre-tokenizer's split of text (BPE vocabularies; special tokens are not parsed): the
 * byte offset where each pre-token ends. Returns the count, -(count) if n_max is too small,
 * INT32_MIN for a SentencePiece vocabulary or a bad argument. */
int32_t kvf_vocab_pretokenize(const kvf_vocab *v, const char *text, size_t len, size_t *ends,
                              int32_t n_max);
/* Whether KVF_TOK_ADD_BOS adds a BOS for this vocabulary. */
bool kvf_vocab_add_bos(const kvf_vocab *v);

#endif /* KVF_TOKENIZER_H */
