/* model.h - a loaded model: hyperparameters, packed weights, tokenizer (private layout of the
 * public kvf_model handle). Filled by model.c from a GGUF file; immutable afterwards. */
#ifndef KVF_MODEL_H
#define KVF_MODEL_H

#include "engine/gguf.h"
#include "engine/kernels/kernels.h"
#include "engine/matmul.h"
#include "engine/tokenizer.h"

typedef enum { KVF_ARCH_LLAMA = 0, KVF_ARCH_QWEN2 = 1 } kvf_arch;

typedef struct kvf_hparams {
    kvf_arch arch;
    int32_t  n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t  n_rot;      /* rotated dimensions per head (<= head_dim) */
    int      rope_neox;  /* 1: pairs (i, i + n_rot/2) (qwen2); 0: pairs (2i, 2i+1) (llama) */
    float    rope_base;
    float    rope_scale; /* linear position scaling: theta uses pos / rope_scale */
    float    eps;
} kvf_hparams;

typedef struct kvf_layer {
    const float *attn_norm, *ffn_norm; /* [n_embd] */
    const float *bq, *bk, *bv;         /* qwen2 biases or NULL */
    kvf_weight   wq, wk, wv, wo, wgate, wup, wdown;
} kvf_layer;

struct kvf_model {
    char                 *path;
    gguf_file            *gguf;       /* kept open: norms and the embedding table live in it */
    kvf_hparams           hp;
    const kvf_kernels    *K;
    kvf_precision         precision;
    kvf_layer            *layers;     /* [n_layer] */
    const gguf_tensor    *tok_embd;   /* [n_vocab][n_embd] rows of any supported type */
    const float          *output_norm;
    kvf_weight            output;     /* [n_vocab][n_embd]; a packed copy of tok_embd if tied */
    float                *inv_freq;   /* [n_rot/2] RoPE frequencies (owned) */
    kvf_vocab            *vocab;
    char                 *arch_name, *name;
    uint32_t              ftype;      /* most common matmul weight type */
    uint64_t              n_params, weight_bytes;
    uint8_t               fingerprint[16]; /* XXH3-128 of tensor data and tokenizer: the
                                              model's identity in chunk-cache keys */
    uint8_t               cache_id[16];    /* fingerprint + precision: what computed KV
                                              depends on */
    float               **owned;      /* converted norm vectors etc. */
    int                   n_owned;
};

/* Embedding row of token `id` as floats (n_embd). */
void kvf_model_embed(const kvf_model *m, int32_t id, float *out);

#endif /* KVF_MODEL_H */
