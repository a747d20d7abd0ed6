/* forward.h - the transformer's forward-pass steps (forward.c) over any set of rows of one
 * session's KV cache cells (kv_cells.h): embedding, attention with RoPE, MLP, logits.
 * session.c runs them for prefill and decode, fusion.c for the rows it recomputes. */
#ifndef KVF_FORWARD_H
#define KVF_FORWARD_H

#include "engine/kv_cells.h"

#include <math.h>

typedef struct kvf_batch {
    int32_t        n;
    const int32_t *pos;    /* [n] RoPE positions */
    const int32_t *cell;   /* [n] cache cells written */
    const int32_t *kv_end; /* [n] attention sees cells [0, kv_end) */
    kvf_session *const *sess; /* [n] whose KV cache each row uses (batched decode across
                                 sessions), or NULL: all rows use the computing session */
} kvf_batch;

/* Forward steps (forward.c). x is [n][n_embd] row-major, the residual stream. */
void kvf_fwd_embed(kvf_session *s, const int32_t *tokens, int32_t n, float *x);
/* Per-batch RoPE tables for b->pos (call before the layers of a batch). */
void kvf_fwd_rope_tables(kvf_session *s, const kvf_batch *b);
/* Attention block of layer l: norm, Q/K/V, RoPE, write K/V to the cells, attention, output
 * projection added to x. */
void kvf_fwd_attn(kvf_session *s, int l, float *x, const kvf_batch *b);
/* The parts of kvf_fwd_attn, for callers that need Q (scoring) or the pre-RoPE K:
 * qkv leaves post-RoPE queries in s->q ([n][n_head*head_dim]); if k_raw/v_raw are given, the
 * pre-RoPE keys and the values are copied there ([n][n_head_kv*head_dim]). */
void kvf_fwd_qkv(kvf_session *s, int l, const float *x, const kvf_batch *b, float *k_raw,
                 float *v_raw);
void kvf_fwd_attn_out(kvf_session *s, int l, float *x, const kvf_batch *b);
/* MLP block of layer l, added to x. */
void kvf_fwd_mlp(kvf_session *s, int l, float *x, int32_t n);
/* Final norm and output projection of n rows of x (stride ldx) into out [n][n_vocab]. */
void kvf_fwd_logits(kvf_session *s, const float *x, int32_t n, int64_t ldx, float *out);
/* RoPE: cos/sin of position pos ([n_rot/2] each), and the rotation of n_vec consecutive head
 * vectors (head_dim floats each) with such a table. */
void kvf_rope_table(const kvf_model *m, int32_t pos, float *cos_out, float *sin_out);
void kvf_rope_row(const kvf_hparams *hp, float *v, int n_vec, const float *c, const float *sn);

/* Softmax states of attention over disjoint key ranges merge exactly: (o, m, l) becomes the
 * state over both ranges, given (o2, m2, l2) (o normalised, m the maximum score, l the sum of
 * exp(score - m)); an empty state (l == 0) takes the other. */
static inline void kvf_attn_merge(float *o, float *m, float *l, const float *o2, float m2, float l2,
                                  int hd) {
    if (*l == 0.0f) {
        for (int i = 0; i < hd; i++) o[i] = o2[i];
        *m = m2, *l = l2;
        return;
    }
    float mx = fmaxf(*m, m2), w1 = expf(*m - mx) * *l, w2 = expf(m2 - mx) * l2;
    float inv = 1.0f / (w1 + w2);
    for (int i = 0; i < hd; i++) o[i] = (w1 * o[i] + w2 * o2[i]) * inv;
    *m = mx, *l = w1 + w2;
}

/* Attention of M query vectors q (outputs o) over the keys and values of layer l, KV head h of
 * session ts from cell j0 (a multiple of the key tile) on, vector m seeing end[m] cells; the
 * kernel of s (f32 or f16 cache). work holds the softmax states afterwards (kernels.h). Every
 * attention path (dense, split-K, sparse, MAC) calls the kernels through this. */
void kvf_attn_call(const kvf_session *s, const kvf_session *ts, int l, int h, int64_t j0,
                   const float *const *q, float *const *o, const int32_t *end, int M, float *work);
/* The same over keys kt (tile layout) and values v given directly, f16 or f32 elements. */
void kvf_attn_call_kv(const kvf_session *s, int f16, const void *kt, const void *v,
                      const float *const *q, float *const *o, const int32_t *end, int M, float *work);
/* The softmax state (running max m[i], sum l[i]) of the M vectors of the last kvf_attn_call
 * that used `work` (kernels.h: after M key tiles of scores). */
static inline void kvf_attn_state(const float *work, int M, float *m, float *l) {
    for (int i = 0; i < M; i++) m[i] = work[(int64_t)M * KVF_ATTN_BK + i], l[i] = work[(int64_t)M * KVF_ATTN_BK + M + i];
}
/* The boundary below a row's `band` most recent keys (MAC's band, LouisKV's recent window):
 * e - band rounded down to the key tile, 0 if none. */
static inline int64_t kvf_attn_band_edge(int64_t e, int32_t band) {
    return e > band ? (e - band) / KVF_ATTN_BK * KVF_ATTN_BK : 0;
}
/* A decode step: one row per session (batched decode across sessions, or a single token). */
static inline int kvf_batch_is_decode(const kvf_batch *b) {
    return b->sess != NULL || b->n == 1;
}

/* ---- sparse attention (attn_sparse.c: SALE, PowerAttention) ---------------------------- */
/* 1 if layer l of batch b runs sparse attention (some row's session has a sparse mode that
 * applies to this layer and batch), else 0: forward.c then uses its dense kernels. */
int kvf_attn_sparse_wanted(const kvf_session *s, int l, const kvf_batch *b);
/* Attention of batch b at layer l into s->att, in query tiles of TR rows x the query heads of
 * one KV head (forward.c's tiling), reading only the key blocks each tile's mode selects. */
void kvf_attn_sparse(kvf_session *s, int l, const kvf_batch *b, int TR);
/* Cells from `cell` on of layer l (-1: of every layer) were written outside the forward pass
 * or rewritten by it: SALE's codes of them are stale. Every writer of key cells calls this. */
void kvf_attn_sparse_written(kvf_session *s, int l, int32_t cell);
/* Per-thread work floats (attn_sparse_work_stride) for a context of ldk cells. */
int64_t kvf_attn_sparse_stride(const kvf_hparams *hp, int64_t ldk);

/* ---- decode attention (attn_mac.c: MAC-Attention; attn_louis.c: LouisKV) ---------------- */
/* 1 if batch b is a decode step (one row per session) and some row's session uses a decode
 * attention method. */
int  kvf_attn_decode_wanted(const kvf_session *s, const kvf_batch *b);
/* Attention of decode batch b at layer l into s->att (each row by its session's method). */
void kvf_attn_decode(kvf_session *s, int l, const kvf_batch *b);
/* Cells from `cell` on of layer l (-1: all) were rewritten: remembered states and units that
 * covered them are forgotten (called by kvf_attn_sparse_written). */
void kvf_attn_decode_written(kvf_session *s, int l, int32_t cell);
/* LouisKV's parts (attn_mac.c's decode step calls them): whether a row with e keys at layer l
 * runs it; units and boundary of session ts's row r before the step (computing session s);
 * the attention of KV head h's query vectors q[0..g) into o (tmp: g * head_dim floats);
 * forgetting layer l's units; the k-means scratch per thread. */
int     kvf_louis_applies(const kvf_decode_attn_params *d, int l, int64_t e);
void    kvf_louis_prepare(kvf_session *s, kvf_session *ts, int l, int32_t r, int64_t e);
/* After layer l of a prefill batch that leaves e cells: cluster the input keys whose windows
 * are complete (LouisKV's index is built during prefill, as in the paper). */
void    kvf_louis_prefill(kvf_session *s, int l, int64_t e);
void    kvf_louis_row(kvf_session *s, kvf_session *ts, int l, int h, int64_t e,
                      const float *const *q, float *const *o, int g, float *work, float *tmp);
void    kvf_louis_forget(kvf_session *s, int l);
int64_t kvf_louis_kwork_floats(int hd);

#endif /* KVF_FORWARD_H */
