/* model.c - load a GGUF model: read and validate hyperparameters, bind and check every tensor,
 * pack the matmul weights into panels, load the tokenizer. Also the public model and tokenizer
 * entry points of kvfuse.h. Architectures: llama (SmolLM2, TinyLlama, Llama 2/3) and qwen2. */
#include "engine/model.h"
#include "common.h"
#include "engine/threadpool.h"

#include <math.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

kvf_model_params kvf_model_default_params(void) {
    kvf_model_params p = {.isa = NULL, .n_threads = 0, .precision = KVF_PREC_Q16};
    return p;
}

const char *kvf_precision_name(kvf_precision p) {
    return p == KVF_PREC_Q8 ? "q8" : p == KVF_PREC_F32 ? "f32" : "q16";
}

/* ---- hyperparameters ------------------------------------------------------------------- */

static kvf_status get_u32_key(const gguf_file *f, const char *arch, const char *suffix,
                              int required, uint32_t dflt, uint32_t lo, uint32_t hi,
                              int32_t *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t   v;
    kvf_status s = gguf_get_u32(f, key, &v);
    if (s == KVF_E_NOTFOUND) {
        if (required) return kvf_set_error(KVF_E_FORMAT, "missing required key '%s'", key);
        v = dflt;
    } else if (s != KVF_OK) {
        return s;
    }
    if (v < lo || v > hi)
        return kvf_set_error(KVF_E_FORMAT, "key '%s' is %u, outside the supported range %u..%u",
                             key, v, lo, hi);
    *out = (int32_t)v;
    return KVF_OK;
}

static kvf_status get_f32_key(const gguf_file *f, const char *arch, const char *suffix,
                              float dflt, float lo, float hi, float *out) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    float      v;
    kvf_status s = gguf_get_f32(f, key, &v);
    if (s == KVF_E_NOTFOUND)
        v = dflt;
    else if (s != KVF_OK)
        return s;
    if (!(v >= lo && v <= hi))
        return kvf_set_error(KVF_E_FORMAT, "key '%s' is %g, outside the supported range %g..%g",
                             key, (double)v, (double)lo, (double)hi);
    *out = v;
    return KVF_OK;
}

static kvf_status read_hparams(kvf_model *m) {
    const gguf_file *f = m->gguf;
    gguf_str         a;
    if (gguf_get_str(f, "general.architecture", &a) != KVF_OK)
        return kvf_set_error(KVF_E_FORMAT, "missing or invalid key 'general.architecture'");
    m->arch_name = kvf_malloc(a.n + 1);
    if (!m->arch_name) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    memcpy(m->arch_name, a.s, a.n);
    m->arch_name[a.n] = 0;
    kvf_hparams *hp   = &m->hp;
    if (strcmp(m->arch_name, "llama") == 0)
        hp->arch = KVF_ARCH_LLAMA;
    else if (strcmp(m->arch_name, "qwen2") == 0)
        hp->arch = KVF_ARCH_QWEN2;
    else
        return kvf_set_error(KVF_E_UNSUPPORTED,
                             "architecture '%s' is not supported (supported: llama, qwen2)",
                             m->arch_name);
    const char *ar = m->arch_name;
    kvf_status  s;
#define TRY(x)                                                                                 \
    do {                                                                                       \
        if ((s = (x)) != KVF_OK) return s;                                                     \
    } while (0)
    TRY(get_u32_key(f, ar, "block_count", 1, 0, 1, 512, &hp->n_layer));
    TRY(get_u32_key(f, ar, "embedding_length", 1, 0, 16, 65536, &hp->n_embd));
    TRY(get_u32_key(f, ar, "feed_forward_length", 1, 0, 16, 1 << 20, &hp->n_ff));
    TRY(get_u32_key(f, ar, "attention.head_count", 1, 0, 1, 1024, &hp->n_head));
    TRY(get_u32_key(f, ar, "attention.head_count_kv", 0, (uint32_t)hp->n_head, 1, 1024,
                    &hp->n_head_kv));
    TRY(get_u32_key(f, ar, "context_length", 0, 2048, 1, 1 << 24, &hp->n_ctx_train));
    if (hp->n_embd % hp->n_head != 0)
        return kvf_set_error(KVF_E_FORMAT, "embedding_length %d is not a multiple of head_count %d",
                             hp->n_embd, hp->n_head);
    TRY(get_u32_key(f, ar, "attention.key_length", 0, (uint32_t)(hp->n_embd / hp->n_head), 1,
                    1024, &hp->head_dim));
    TRY(get_u32_key(f, ar, "rope.dimension_count", 0, (uint32_t)hp->head_dim, 2, 1024,
                    &hp->n_rot));
    TRY(get_f32_key(f, ar, "rope.freq_base", 10000.0f, 1.0f, 1e12f, &hp->rope_base));
    TRY(get_f32_key(f, ar, "attention.layer_norm_rms_epsilon",
                    hp->arch == KVF_ARCH_QWEN2 ? 1e-6f : 1e-5f, 0.0f, 1.0f, &hp->eps));
    hp->rope_scale = 1.0f;
    {
        char     key[160];
        gguf_str st;
        snprintf(key, sizeof key, "%s.rope.scaling.type", ar);
        if (gguf_get_str(f, key, &st) == KVF_OK && gguf_str_eq(st, "linear"))
            TRY(get_f32_key(f, ar, "rope.scaling.factor", 1.0f, 1e-3f, 1e3f, &hp->rope_scale));
        else if (gguf_get_str(f, key, &st) == KVF_OK && !gguf_str_eq(st, "none"))
            kvf_log(KVF_LOG_WARN, "rope scaling type '%.*s' is not implemented; ignoring it",
                    (int)st.n, st.s);
    }
#undef TRY
    if (hp->n_head % hp->n_head_kv != 0)
        return kvf_set_error(KVF_E_FORMAT, "head_count %d is not a multiple of head_count_kv %d",
                             hp->n_head, hp->n_head_kv);
    if (hp->head_dim % 16 != 0 || hp->head_dim > 128)
        return kvf_set_error(KVF_E_UNSUPPORTED,
                             "head dimension %d is not supported (a multiple of 16, at most 128)",
                             hp->head_dim);
    if (hp->n_rot % 2 != 0 || hp->n_rot > hp->head_dim)
        return kvf_set_error(KVF_E_FORMAT, "rope.dimension_count %d must be even and <= %d",
                             hp->n_rot, hp->head_dim);
    if (hp->n_head / hp->n_head_kv > 64)
        return kvf_set_error(KVF_E_UNSUPPORTED, "more than 64 query heads per KV head");
    hp->rope_neox = hp->arch == KVF_ARCH_QWEN2;
    return KVF_OK;
}

/* ---- tensors --------------------------------------------------------------------------- */

static const gguf_tensor *find_tensor(const kvf_model *m, const char *name, int required,
                                      kvf_status *st) {
    const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
    if (!t && required) *st = kvf_set_error(KVF_E_FORMAT, "missing tensor '%s'", name);
    return t;
}

static kvf_status check_shape(const gguf_tensor *t, const char *name, int64_t ne0, int64_t ne1) {
    int64_t want[4] = {ne0, ne1, 1, 1};
    for (int d = 0; d < 4; d++)
        if (t->ne[d] != want[d])
            return kvf_set_error(KVF_E_FORMAT,
                                 "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, "
                                 "%lld]",
                                 name, (long long)t->ne[0], (long long)t->ne[1],
                                 (long long)t->ne[2], (long long)t->ne[3], (long long)ne0,
                                 (long long)ne1);
    return KVF_OK;
}

/* A 1-D float vector: a pointer into the mapping for F32, a converted copy otherwise. */
static kvf_status load_vector(kvf_model *m, const char *name, int64_t n, int required,
                              const float **out) {
    kvf_status         st = KVF_OK;
    const gguf_tensor *t  = find_tensor(m, name, required, &st);
    *out                  = NULL;
    if (!t) return st;
    if ((st = check_shape(t, name, n, 1)) != KVF_OK) return st;
    if (t->type == KVF_TYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = (const float *)t->data;
        return KVF_OK;
    }
    if (t->type != KVF_TYPE_F32 && t->type != KVF_TYPE_F16 && t->type != KVF_TYPE_BF16)
        return kvf_set_error(KVF_E_UNSUPPORTED, "tensor '%s' has type %s; expected F32/F16/BF16",
                             name, kvf_type_name(t->type));
    float **owned = kvf_realloc(m->owned, sizeof(float *) * (size_t)(m->n_owned + 1));
    if (!owned) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    m->owned = owned;
    float *v = kvf_alloc_aligned(sizeof(float) * (size_t)n);
    if (!v) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    kvf_dequantize(t->type, t->data, v, n);
    m->owned[m->n_owned++] = v;
    *out                   = v;
    return KVF_OK;
}

static kvf_status load_matrix(kvf_model *m, kvf_pool *pool, const char *name, int64_t n_in,
                              int64_t n_out, kvf_weight *w, uint64_t *type_count) {
    kvf_status         st = KVF_OK;
    const gguf_tensor *t  = find_tensor(m, name, 1, &st);
    if (!t) return st;
    if ((st = check_shape(t, name, n_in, n_out)) != KVF_OK) return st;
    if ((st = kvf_weight_pack(t, pool, m->precision == KVF_PREC_F32, w)) != KVF_OK) return st;
    gguf_release_data(m->gguf, t); /* only the packed copy stays resident */
    m->n_params += (uint64_t)(n_in * n_out);
    m->weight_bytes += (uint64_t)(w->n_panels * w->panel_bytes);
    if (t->type < KVF_TYPE_COUNT) type_count[t->type] += (uint64_t)(n_in * n_out);
    return KVF_OK;
}

static kvf_status load_tensors(kvf_model *m, kvf_pool *pool) {
    const kvf_hparams *hp = &m->hp;
    kvf_status         st = KVF_OK;
    uint64_t           type_count[KVF_TYPE_COUNT] = {0};
    int64_t            qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    char               name[96];

    m->tok_embd = find_tensor(m, "token_embd.weight", 1, &st);
    if (!m->tok_embd) return st;
    if (m->tok_embd->n_dims != 2 || m->tok_embd->ne[0] != hp->n_embd)
        return kvf_set_error(KVF_E_FORMAT,
                             "tensor 'token_embd.weight' must be [%d, n_vocab]; found [%lld, %lld]",
                             hp->n_embd, (long long)m->tok_embd->ne[0],
                             (long long)m->tok_embd->ne[1]);
    if (m->tok_embd->ne[1] > (1 << 24))
        return kvf_set_error(KVF_E_FORMAT, "vocabulary of %lld tokens is too large",
                             (long long)m->tok_embd->ne[1]);
    m->hp.n_vocab = (int32_t)m->tok_embd->ne[1];
    if (!kvf_quant_get(m->tok_embd->type))
        return kvf_set_error(KVF_E_UNSUPPORTED, "tensor 'token_embd.weight' has unsupported type %s",
                             kvf_type_name(m->tok_embd->type));
    if ((st = load_vector(m, "output_norm.weight", hp->n_embd, 1, &m->output_norm)) != KVF_OK)
        return st;
    if (gguf_find_tensor(m->gguf, "output.weight")) {
        st = load_matrix(m, pool, "output.weight", hp->n_embd, hp->n_vocab, &m->output, type_count);
    } else { /* tied embeddings */
        st = kvf_weight_pack(m->tok_embd, pool, m->precision == KVF_PREC_F32, &m->output);
        if (st == KVF_OK) m->weight_bytes += (uint64_t)(m->output.n_panels * m->output.panel_bytes);
    }
    if (st != KVF_OK) return st;
    m->n_params += (uint64_t)hp->n_vocab * (uint64_t)hp->n_embd;

    m->layers = kvf_calloc((size_t)hp->n_layer, sizeof(kvf_layer));
    if (!m->layers) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        kvf_layer *L = &m->layers[l];
#define NM(s) (snprintf(name, sizeof name, "blk.%d." s, l), name)
        if ((st = load_vector(m, NM("attn_norm.weight"), hp->n_embd, 1, &L->attn_norm)) ||
            (st = load_vector(m, NM("ffn_norm.weight"), hp->n_embd, 1, &L->ffn_norm)) ||
            (st = load_matrix(m, pool, NM("attn_q.weight"), hp->n_embd, qd, &L->wq, type_count)) ||
            (st = load_matrix(m, pool, NM("attn_k.weight"), hp->n_embd, kvd, &L->wk, type_count)) ||
            (st = load_matrix(m, pool, NM("attn_v.weight"), hp->n_embd, kvd, &L->wv, type_count)) ||
            (st = load_matrix(m, pool, NM("attn_output.weight"), qd, hp->n_embd, &L->wo,
                              type_count)) ||
            (st = load_matrix(m, pool, NM("ffn_gate.weight"), hp->n_embd, hp->n_ff, &L->wgate,
                              type_count)) ||
            (st = load_matrix(m, pool, NM("ffn_up.weight"), hp->n_embd, hp->n_ff, &L->wup,
                              type_count)) ||
            (st = load_matrix(m, pool, NM("ffn_down.weight"), hp->n_ff, hp->n_embd, &L->wdown,
                              type_count)))
            return st;
        int need_bias = hp->arch == KVF_ARCH_QWEN2;
        if ((st = load_vector(m, NM("attn_q.bias"), qd, need_bias, &L->bq)) ||
            (st = load_vector(m, NM("attn_k.bias"), kvd, need_bias, &L->bk)) ||
            (st = load_vector(m, NM("attn_v.bias"), kvd, need_bias, &L->bv)))
            return st;
#undef NM
    }
    uint64_t best = 0;
    for (uint32_t t = 0; t < KVF_TYPE_COUNT; t++)
        if (type_count[t] > best) best = type_count[t], m->ftype = t;

    /* RoPE frequencies, with optional per-dimension factors (Llama 3.1 rope_freqs) */
    int half    = hp->n_rot / 2;
    m->inv_freq = kvf_malloc(sizeof(float) * (size_t)half);
    if (!m->inv_freq) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    const float *factors = NULL;
    if (gguf_find_tensor(m->gguf, "rope_freqs.weight") &&
        (st = load_vector(m, "rope_freqs.weight", half, 1, &factors)) != KVF_OK)
        return st;
    for (int i = 0; i < half; i++) {
        double f = pow((double)hp->rope_base, -2.0 * i / (double)hp->n_rot);
        if (factors) f /= (double)factors[i];
        m->inv_freq[i] = (float)(f / (double)hp->rope_scale);
    }
    return KVF_OK;
}

/* ---- identity -------------------------------------------------------------------------- */

/* Fingerprint: the tensor data section, the tokenizer's tokens and merges and the
 * architecture (not the file name or general.name), so a renamed or copied file keeps its
 * identity and a re-quantised one does not. */
static void compute_fingerprint(kvf_model *m) {
    const gguf_file *f = m->gguf;
    XXH3_state_t     st;
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, m->arch_name, strlen(m->arch_name) + 1);
    if (f->data_offset < f->len)
        XXH3_128bits_update(&st, f->buf + f->data_offset, f->len - f->data_offset);
    const char *keys[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"};
    for (int k = 0; k < 2; k++) {
        const gguf_kv *kv = gguf_find_kv(f, keys[k]);
        if (!kv || kv->arr_type != GGUF_T_STRING) continue;
        for (uint64_t i = 0; i < kv->n; i++) {
            XXH3_128bits_update(&st, &kv->strs[i].n, sizeof kv->strs[i].n);
            XXH3_128bits_update(&st, kv->strs[i].s, (size_t)kv->strs[i].n);
        }
    }
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
    memcpy(m->fingerprint, c.digest, 16);
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, m->fingerprint, 16);
    uint32_t prec = (uint32_t)m->precision;
    XXH3_128bits_update(&st, &prec, 4);
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
    memcpy(m->cache_id, c.digest, 16);
}

/* ---- load / free ----------------------------------------------------------------------- */

void kvf_model_free(kvf_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->hp.n_layer; l++) {
            kvf_layer *L = &m->layers[l];
            kvf_weight_free(&L->wq), kvf_weight_free(&L->wk), kvf_weight_free(&L->wv);
            kvf_weight_free(&L->wo), kvf_weight_free(&L->wgate), kvf_weight_free(&L->wup);
            kvf_weight_free(&L->wdown);
        }
        kvf_free(m->layers);
    }
    kvf_weight_free(&m->output);
    for (int i = 0; i < m->n_owned; i++) kvf_free_aligned(m->owned[i]);
    kvf_free(m->owned);
    kvf_free(m->inv_freq);
    kvf_vocab_free(m->vocab);
    gguf_close(m->gguf);
    kvf_free(m->arch_name);
    kvf_free(m->name);
    kvf_free(m->path);
    kvf_free(m);
}

kvf_status kvf_model_load(const char *path, const kvf_model_params *params, kvf_model **out) {
    kvf_model_params p = params ? *params : kvf_model_default_params();
    if (!out) return kvf_set_error(KVF_E_INVAL, "kvf_model_load: out is NULL");
    *out = NULL;
    if (!path) return kvf_set_error(KVF_E_INVAL, "kvf_model_load: path is NULL");
    const kvf_kernels *K = kvf_kernels_select(p.isa);
    if (!K) return KVF_E_UNSUPPORTED;
    kvf_model *m = kvf_calloc(1, sizeof *m);
    if (!m) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    m->K       = K;
    if ((unsigned)p.precision > KVF_PREC_F32) {
        kvf_free(m);
        return kvf_set_error(KVF_E_INVAL, "unknown precision %d", (int)p.precision);
    }
    m->precision = p.precision;
    m->path    = kvf_strdup(path);
    kvf_pool  *pool = NULL;
    kvf_status st   = gguf_open(path, &m->gguf);
    if (st != KVF_OK) goto fail_noprefix;
    if ((st = read_hparams(m)) != KVF_OK) goto fail;
    gguf_str nm;
    if (gguf_get_str(m->gguf, "general.name", &nm) == KVF_OK) {
        m->name = kvf_malloc(nm.n + 1);
        if (m->name) memcpy(m->name, nm.s, nm.n), m->name[nm.n] = 0;
    }
    if ((st = kvf_pool_new(p.n_threads, &pool)) != KVF_OK) goto fail;
    /* before packing: packing drops the file pages of each packed tensor from memory */
    compute_fingerprint(m);
    if ((st = load_tensors(m, pool)) != KVF_OK) goto fail;
    if ((st = kvf_vocab_load(m->gguf, &m->vocab)) != KVF_OK) goto fail;
    if (kvf_vocab_n_tokens(m->vocab) > m->hp.n_vocab) {
        st = kvf_set_error(KVF_E_FORMAT,
                           "the tokenizer has %d tokens but token_embd.weight only %d rows",
                           kvf_vocab_n_tokens(m->vocab), m->hp.n_vocab);
        goto fail;
    }
    kvf_pool_free(pool);
    /* embedding rows are read one token at a time: let their pages fault in on demand */
    gguf_release_data(m->gguf, m->tok_embd);
    *out = m;
    return KVF_OK;
fail:
    kvf_error_prefix("model '%s': ", path);
fail_noprefix:
    kvf_pool_free(pool);
    kvf_model_free(m);
    return st;
}

/* ---- queries --------------------------------------------------------------------------- */

void kvf_model_embed(const kvf_model *m, int32_t id, float *out) {
    const gguf_tensor      *t  = m->tok_embd;
    const kvf_quant_traits *qt = kvf_quant_get(t->type);
    int64_t                 rb = t->ne[0] / qt->block * qt->bytes;
    kvf_dequantize(t->type, t->data + (int64_t)id * rb, out, t->ne[0]);
}

void kvf_model_get_info(const kvf_model *m, kvf_model_info *o) {
    memset(o, 0, sizeof *o);
    o->arch         = m->arch_name;
    o->name         = m->name ? m->name : "";
    o->ftype        = kvf_type_name(m->ftype);
    o->isa          = m->K->name;
    o->precision    = kvf_precision_name(m->precision);
    o->n_vocab      = m->hp.n_vocab;
    o->n_ctx_train  = m->hp.n_ctx_train;
    o->n_embd       = m->hp.n_embd;
    o->n_layer      = m->hp.n_layer;
    o->n_head       = m->hp.n_head;
    o->n_head_kv    = m->hp.n_head_kv;
    o->head_dim     = m->hp.head_dim;
    o->n_ff         = m->hp.n_ff;
    o->n_params     = m->n_params;
    o->file_bytes   = m->gguf->len;
    o->weight_bytes = m->weight_bytes;
}

int32_t kvf_model_n_vocab(const kvf_model *m) {
    return m->hp.n_vocab;
}

int32_t kvf_model_n_layer(const kvf_model *m) {
    return m->hp.n_layer;
}

int32_t kvf_model_n_ctx_train(const kvf_model *m) {
    return m->hp.n_ctx_train;
}

/* ---- tokenizer entry points ------------------------------------------------------------ */

int32_t kvf_tokenize(const kvf_model *m, const char *text, size_t len, int32_t *out,
                     int32_t n_max, uint32_t flags) {
    return kvf_vocab_encode(m->vocab, text, len, out, n_max, flags);
}

int32_t kvf_token_to_piece(const kvf_model *m, int32_t token, char *buf, int32_t len,
                           bool render_special) {
    return kvf_vocab_piece(m->vocab, token, buf, len, render_special);
}

int32_t kvf_detokenize(const kvf_model *m, const int32_t *tokens, int32_t n, char *buf,
                       int32_t len, bool render_special) {
    return kvf_vocab_decode(m->vocab, tokens, n, buf, len, render_special);
}

int32_t kvf_token_bos(const kvf_model *m) {
    return kvf_vocab_bos(m->vocab);
}

int32_t kvf_token_eos(const kvf_model *m) {
    return kvf_vocab_eos(m->vocab);
}

bool kvf_token_is_eog(const kvf_model *m, int32_t token) {
    return kvf_vocab_is_eog(m->vocab, token);
}

int32_t kvf_chat_format(const kvf_model *m, const kvf_chat_msg *msgs, size_t n_msgs,
                        bool add_assistant, char *buf, int32_t len) {
    return kvf_vocab_chat_format(m->vocab, msgs, n_msgs, add_assistant, buf, len);
}

const char *kvf_chat_template_name(const kvf_model *m) {
    return kvf_vocab_chat_template_name(m->vocab);
}
