/* forward.c - the transformer forward pass over a batch of rows (llama / qwen2):
 *   x = embed(tokens)
 *   per layer:  x += Wo . attn(rope(Wq . norm(x)), cache)      with K, V written to the cache
 *               x += Wdown . (silu(Wgate . norm(x)) * (Wup . norm(x)))
 *   logits = Wout . norm(x)
 * Matmuls are batched over the rows (matmul.c); small per-row steps and attention run in
 * parallel regions of the session's thread pool. Every step works on any set of rows with
 * explicit positions and cache cells, which is what fusion's selective recompute needs. */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <math.h>
#include <string.h>

/* Run fn over rows [0, n) in chunks claimed by whichever threads join (inline when n is small). */
typedef void (*row_fn)(kvf_session *s, void *ctx, int32_t r0, int32_t r1);
typedef struct {
    kvf_session        *s;
    void               *ctx;
    row_fn              fn;
    int32_t             n, chunk;
    atomic_int_fast64_t next;
} rows_ctx;

static void rows_task(void *p, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    rows_ctx *c  = p;
    int64_t   ni = (c->n + c->chunk - 1) / c->chunk;
    for (int64_t it; (it = kvf_claim(&c->next, ni)) >= 0;)
        c->fn(c->s, c->ctx, (int32_t)(it * c->chunk), (int32_t)KVF_MIN(c->n, (it + 1) * c->chunk));
}

static void run_rows(kvf_session *s, int32_t n, row_fn fn, void *ctx) {
    if (n < 4) {
        fn(s, ctx, 0, n);
        return;
    }
    rows_ctx c = {.s = s, .ctx = ctx, .fn = fn, .n = n};
    c.chunk    = KVF_MAX(1, n / (4 * kvf_pool_size(s->pool)));
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, rows_task, &c);
}

/* ---- embedding, norms ------------------------------------------------------------------ */

typedef struct {
    const int32_t *tokens;
    float         *x;
} embed_ctx;

static void embed_rows(kvf_session *s, void *p, int32_t r0, int32_t r1) {
    embed_ctx *c = p;
    int32_t    d = s->m->hp.n_embd;
    for (int32_t r = r0; r < r1; r++) kvf_model_embed(s->m, c->tokens[r], c->x + (int64_t)r * d);
}

void kvf_fwd_embed(kvf_session *s, const int32_t *tokens, int32_t n, float *x) {
    embed_ctx c = {tokens, x};
    run_rows(s, n, embed_rows, &c);
}

/* xb = rmsnorm(x) * w, then quantised into s->act (unless the batch goes to the matmuls as
 * float rows: kvf_matmul_float_rows) */
typedef struct {
    const float *x;
    int64_t      ldx;
    const float *w;
    int          quant;
} norm_ctx;

static void norm_quant_rows(kvf_session *s, void *p, int32_t r0, int32_t r1) {
    norm_ctx          *c = p;
    const kvf_hparams *hp = &s->m->hp;
    int64_t            d  = hp->n_embd;
    for (int32_t r = r0; r < r1; r++) {
        float *xb = s->xb + r * d;
        s->K->rmsnorm(c->x + r * c->ldx, c->w, xb, d, hp->eps);
        if (!c->quant) continue;
        s->K->quantize_row(xb, d, s->act.q + r * d, s->act.d + r * (d / KVF_QK),
                           s->act.s16 + r * (d / 16), s->act.qsum + r * (d / 16),
                           s->two_level ? s->act.ql + r * d : NULL,
                           s->two_level ? s->act.dl + r * (d / KVF_QK) : NULL,
                           s->two_level ? s->act.qsuml + r * (d / 16) : NULL);
    }
}

static kvf_act norm_quant(kvf_session *s, const float *x, int64_t ldx, int32_t n, const float *w) {
    int64_t  d = s->m->hp.n_embd;
    norm_ctx c = {x, ldx, w, !kvf_matmul_float_rows(s->K, n, s->two_level)};
    run_rows(s, n, norm_quant_rows, &c);
    return c.quant ? kvf_act_view(&s->act, d, s->two_level, s->xb, d) : kvf_act_float(s->xb, d, d);
}

/* ---- RoPE ------------------------------------------------------------------------------ */

void kvf_fwd_rope_tables(kvf_session *s, const kvf_batch *b) {
    int half = s->m->hp.n_rot / 2;
    for (int32_t r = 0; r < b->n; r++)
        kvf_rope_table(s->m, b->pos[r], s->rcos + (int64_t)r * half, s->rsin + (int64_t)r * half);
}

void kvf_rope_table(const kvf_model *m, int32_t pos, float *c, float *sn) {
    for (int i = 0; i < m->hp.n_rot / 2; i++) {
        double th = (double)pos * (double)m->inv_freq[i];
        c[i]      = (float)cos(th);
        sn[i]     = (float)sin(th);
    }
}

/* Rotate n_vec head vectors of one row with precomputed cos/sin. */
void kvf_rope_row(const kvf_hparams *hp, float *v, int n_vec, const float *c, const float *sn) {
    int half = hp->n_rot / 2, hd = hp->head_dim;
    for (int h = 0; h < n_vec; h++) {
        float *x = v + (int64_t)h * hd;
        if (hp->rope_neox) {
            for (int i = 0; i < half; i++) {
                float a = x[i], bb = x[i + half];
                x[i]        = a * c[i] - bb * sn[i];
                x[i + half] = a * sn[i] + bb * c[i];
            }
        } else {
            for (int i = 0; i < half; i++) {
                float a = x[2 * i], bb = x[2 * i + 1];
                x[2 * i]     = a * c[i] - bb * sn[i];
                x[2 * i + 1] = a * sn[i] + bb * c[i];
            }
        }
    }
}

/* ---- attention block ------------------------------------------------------------------- */

typedef struct {
    int              l;
    const kvf_batch *b;
    float           *k_raw, *v_raw;
} qkv_ctx;

/* biases, RoPE, and K/V into the cache cells */
static void qkv_post_rows(kvf_session *s, void *p, int32_t r0, int32_t r1) {
    qkv_ctx           *c  = p;
    const kvf_hparams *hp = &s->m->hp;
    const kvf_layer   *L  = &s->m->layers[c->l];
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    int     half = hp->n_rot / 2, hd = hp->head_dim;
    for (int32_t r = r0; r < r1; r++) {
        float *q = s->q + r * qd, *k = s->kb + r * kvd, *v = s->vb + r * kvd;
        if (L->bq) {
            for (int64_t i = 0; i < qd; i++) q[i] += L->bq[i];
            for (int64_t i = 0; i < kvd; i++) k[i] += L->bk[i], v[i] += L->bv[i];
        }
        if (c->k_raw) memcpy(c->k_raw + r * kvd, k, sizeof(float) * (size_t)kvd);
        if (c->v_raw) memcpy(c->v_raw + r * kvd, v, sizeof(float) * (size_t)kvd);
        const float *cs = s->rcos + (int64_t)r * half, *sn = s->rsin + (int64_t)r * half;
        kvf_session *qs = c->b->sess ? c->b->sess[r] : s; /* MAC matches pre-RoPE queries */
        if (qs->dattn.mode != KVF_DECODE_DENSE && kvf_batch_is_decode(c->b))
            memcpy(s->q_pre + r * qd, q, sizeof(float) * (size_t)qd);
        kvf_rope_row(hp, q, hp->n_head, cs, sn);
        kvf_rope_row(hp, k, hp->n_head_kv, cs, sn);
        int32_t      cell = c->b->cell[r];
        kvf_session *ts   = c->b->sess ? c->b->sess[r] : s; /* whose cache */
        for (int h = 0; h < hp->n_head_kv; h++) {
            void *kt = kvf_kt_at(ts, c->l, h);
            for (int i = 0; i < hd; i++) kvf_kv_put(ts, kt, kvf_kt_idx(i, cell, hd), k[h * hd + i]);
            kvf_kv_put_row(ts, kvf_v_at(ts, c->l, h), (int64_t)cell * hd, v + h * hd, hd);
        }
    }
}

void kvf_fwd_qkv(kvf_session *s, int l, const float *x, const kvf_batch *b, float *k_raw,
                 float *v_raw) {
    const kvf_hparams *hp = &s->m->hp;
    const kvf_layer   *L  = &s->m->layers[l];
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    kvf_act a     = norm_quant(s, x, hp->n_embd, b->n, L->attn_norm);
    kvf_mm  mm[3] = {{&L->wq, s->q, qd, 0}, {&L->wk, s->kb, kvd, 0}, {&L->wv, s->vb, kvd, 0}};
    kvf_matmul_multi(s->pool, s->K, mm, 3, &a, b->n);
    qkv_ctx c = {l, b, k_raw, v_raw};
    run_rows(s, b->n, qkv_post_rows, &c);
    for (int32_t r = 0; r < b->n; r++) kvf_attn_sparse_written(b->sess ? b->sess[r] : s, l, b->cell[r]);
}

/* Attention work items. A tile groups TR consecutive rows and the g query heads sharing one KV
 * head. With few rows (decode) the keys are split into chunks whose partial softmax states are
 * merged afterwards (split-K), so a handful of heads still spreads across threads. */
#define SPLIT_KEYS 256

typedef struct {
    kvf_session        *s;
    int                 l;
    const kvf_batch    *b;
    int                 TR, n_tiles, n_chunks; /* n_chunks > 1: split-K mode */
    int                 Mmax;                  /* query vectors per item: TR * group size */
    int64_t             n_items;
    atomic_int_fast64_t next;
} attn_ctx;

void kvf_attn_call(const kvf_session *s, const kvf_session *ts, int l, int h, int64_t j0,
                   const float *const *q, float *const *o, const int32_t *end, int M, float *work) {
    int    hd    = s->m->hp.head_dim;
    size_t off   = (size_t)(j0 * hd) * kvf_kv_esize(ts); /* j0 * hd elements in (tile-aligned) */
    kvf_attn_call_kv(s, ts->kv_f16, (const char *)kvf_kt_at(ts, l, h) + off,
                     (const char *)kvf_v_at(ts, l, h) + off, q, o, end, M, work);
}

void kvf_attn_call_kv(const kvf_session *s, int f16, const void *kt, const void *v,
                      const float *const *q, float *const *o, const int32_t *end, int M, float *work) {
    int   hd    = s->m->hp.head_dim;
    float scale = 1.0f / sqrtf((float)hd);
    if (f16)
        s->attn_K->attn_f16(q, o, end, M, kt, v, hd, scale, work);
    else
        s->attn_K->attn(q, o, end, M, kt, v, hd, scale, work);
}

static void attn_task(void *p, int ith, int nth) {
    KVF_UNUSED(nth);
    attn_ctx          *c  = p;
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &s->m->hp;
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int64_t qd   = (int64_t)hp->n_head * hd;
    float  *work = s->attn_work + ith * s->attn_work_stride;
    for (int64_t it; (it = kvf_claim(&c->next, c->n_items)) >= 0;) {
        int     h     = (int)(it % hp->n_head_kv);
        int64_t rest  = it / hp->n_head_kv;
        int     tile  = (int)(rest % c->n_tiles);
        int     chunk = (int)(rest / c->n_tiles);
        int     r0 = tile * c->TR, r1 = KVF_MIN(r0 + c->TR, c->b->n), M = 0;
        const float *qp[KVF_ATTN_MAX_M];
        float       *op[KVF_ATTN_MAX_M];
        int32_t      end[KVF_ATTN_MAX_M];
        kvf_session *ts = c->b->sess ? c->b->sess[r0] : s; /* a tile never mixes sessions */
        /* the layer's cells start at cell_start (tile-aligned; 0 unless evicted per layer) */
        int64_t      j0 = kvf_cell_start(ts, c->l) + (int64_t)chunk * SPLIT_KEYS;
        for (int r = r0; r < r1; r++)
            for (int gi = 0; gi < g; gi++, M++) {
                qp[M] = s->q + r * qd + (int64_t)(h * g + gi) * hd;
                if (c->n_chunks > 1) {
                    /* partial result slot: [o (hd) | m | l] */
                    op[M]  = s->split_o + ((it * c->Mmax) + M) * (hd + 2);
                    end[M] = (int32_t)KVF_MIN((int64_t)SPLIT_KEYS, c->b->kv_end[r] - j0);
                } else {
                    op[M]  = s->att + r * qd + (int64_t)(h * g + gi) * hd;
                    end[M] = (int32_t)(c->b->kv_end[r] - j0);
                }
            }
        if (c->n_chunks > 1) {
            /* rows whose keys end before this chunk contribute nothing: mark them */
            int any = 0;
            for (int m = 0; m < M; m++) any |= end[m] > 0;
            if (!any) {
                for (int m = 0; m < M; m++) op[m][hd] = -INFINITY, op[m][hd + 1] = 0.0f;
                continue;
            }
            for (int m = 0; m < M; m++)
                if (end[m] < 1) end[m] = 1; /* computed but discarded below */
        }
        kvf_attn_call(s, ts, c->l, h, j0, qp, op, end, M, work);
        if (c->n_chunks > 1) {
            const float *mrow = work + (int64_t)M * KVF_ATTN_BK, *lrow = mrow + M;
            for (int m = 0, r = r0; r < r1; r++)
                for (int gi = 0; gi < g; gi++, m++) {
                    int live      = c->b->kv_end[r] - j0 > 0;
                    op[m][hd]     = live ? mrow[m] : -INFINITY;
                    op[m][hd + 1] = live ? lrow[m] : 0.0f;
                }
        }
    }
}

/* Merge split-K partials: o = sum_c e^(m_c - M) l_c o_c / sum_c e^(m_c - M) l_c. */
static void attn_merge(kvf_session *s, const attn_ctx *c) {
    const kvf_hparams *hp = &s->m->hp;
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int64_t qd = (int64_t)hp->n_head * hd;
    for (int h = 0; h < hp->n_head_kv; h++)
        for (int tile = 0; tile < c->n_tiles; tile++) {
            int r0 = tile * c->TR, r1 = KVF_MIN(r0 + c->TR, c->b->n);
            for (int m = 0, r = r0; r < r1; r++)
                for (int gi = 0; gi < g; gi++, m++) {
                    float mx = -INFINITY;
                    for (int ch = 0; ch < c->n_chunks; ch++) {
                        int64_t it = ((int64_t)ch * c->n_tiles + tile) * hp->n_head_kv + h;
                        mx = fmaxf(mx, s->split_o[(it * c->Mmax + m) * (hd + 2) + hd]);
                    }
                    float *o   = s->att + r * qd + (int64_t)(h * g + gi) * hd;
                    float  den = 0.0f;
                    memset(o, 0, sizeof(float) * (size_t)hd);
                    for (int ch = 0; ch < c->n_chunks; ch++) {
                        int64_t it = ((int64_t)ch * c->n_tiles + tile) * hp->n_head_kv + h;
                        const float *po = s->split_o + (it * c->Mmax + m) * (hd + 2);
                        if (po[hd] == -INFINITY) continue;
                        float w = expf(po[hd] - mx) * po[hd + 1];
                        den += w;
                        for (int i = 0; i < hd; i++) o[i] += w * po[i];
                    }
                    for (int i = 0; i < hd; i++) o[i] /= den;
                }
        }
}

static void attention(kvf_session *s, int l, const kvf_batch *b) {
    const kvf_hparams *hp = &s->m->hp;
    int                g  = hp->n_head / hp->n_head_kv;
    attn_ctx           c  = {.s = s, .l = l, .b = b};
    c.TR                  = b->sess ? 1 : KVF_MAX(1, KVF_MIN(16, KVF_ATTN_MAX_M / g));
    /* a decode batch that mixes PowerAttention and MAC sessions runs the power pattern, and
     * the MAC rows densely (exact) for this layer */
    int shifted = 0; /* a layer evicted to its own budget runs dense (exact) attention */
    for (int32_t r = 0; r < b->n; r++) shifted |= kvf_cell_start(b->sess ? b->sess[r] : s, l) > 0;
    int sparse = !shifted && kvf_attn_sparse_wanted(s, l, b);
    if (!sparse && !shifted && kvf_attn_decode_wanted(s, b)) {
        kvf_attn_decode(s, l, b);
        return;
    }
    if (sparse) {
        kvf_attn_sparse(s, l, b, c.TR);
        return;
    }
    c.Mmax                = c.TR * g;
    c.n_tiles             = (b->n + c.TR - 1) / c.TR;
    int32_t max_end       = 0;
    for (int32_t r = 0; r < b->n; r++) max_end = KVF_MAX(max_end, b->kv_end[r]);
    c.n_chunks = 1;
    int64_t base_items = (int64_t)hp->n_head_kv * c.n_tiles;
    if (base_items < 2 * kvf_pool_size(s->pool) && max_end > SPLIT_KEYS && (b->n <= 4 || b->sess))
        c.n_chunks = (max_end + SPLIT_KEYS - 1) / SPLIT_KEYS;
    if (c.n_chunks > 1 && base_items * c.n_chunks * c.Mmax * (hp->head_dim + 2) > s->split_cap)
        c.n_chunks = 1; /* no room for the partials (kvf_decode_batch sizes it first) */
    c.n_items = base_items * c.n_chunks;
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, attn_task, &c);
    if (c.n_chunks > 1) attn_merge(s, &c);
}

void kvf_fwd_attn_out(kvf_session *s, int l, float *x, const kvf_batch *b) {
    const kvf_hparams *hp = &s->m->hp;
    int64_t            qd = (int64_t)hp->n_head * hp->head_dim;
    attention(s, l, b);
    kvf_act a;
    kvf_prepare_rows(s->pool, s->K, s->att, b->n, qd, qd, s->two_level, &s->act, &a);
    kvf_matmul(s->pool, s->K, &s->m->layers[l].wo, &a, b->n, x, hp->n_embd, 1);
}

void kvf_fwd_attn(kvf_session *s, int l, float *x, const kvf_batch *b) {
    kvf_fwd_qkv(s, l, x, b, NULL, NULL);
    kvf_fwd_attn_out(s, l, x, b);
}

/* ---- MLP ------------------------------------------------------------------------------- */

static void swiglu_quant_rows(kvf_session *s, void *p, int32_t r0, int32_t r1) {
    const int *quant = p;
    int64_t    f     = s->m->hp.n_ff;
    for (int32_t r = r0; r < r1; r++) {
        float *g = s->hb + r * f;
        s->K->swiglu(g, s->hb2 + r * f, g, f);
        if (!*quant) continue;
        s->K->quantize_row(g, f, s->act.q + r * f, s->act.d + r * (f / KVF_QK),
                           s->act.s16 + r * (f / 16), s->act.qsum + r * (f / 16),
                           s->two_level ? s->act.ql + r * f : NULL,
                           s->two_level ? s->act.dl + r * (f / KVF_QK) : NULL,
                           s->two_level ? s->act.qsuml + r * (f / 16) : NULL);
    }
}

void kvf_fwd_mlp(kvf_session *s, int l, float *x, int32_t n) {
    const kvf_hparams *hp = &s->m->hp;
    const kvf_layer   *L  = &s->m->layers[l];
    kvf_act            a  = norm_quant(s, x, hp->n_embd, n, L->ffn_norm);
    kvf_mm mm[2] = {{&L->wgate, s->hb, hp->n_ff, 0}, {&L->wup, s->hb2, hp->n_ff, 0}};
    kvf_matmul_multi(s->pool, s->K, mm, 2, &a, n);
    int quant = !kvf_matmul_float_rows(s->K, n, s->two_level);
    run_rows(s, n, swiglu_quant_rows, &quant);
    kvf_act h = quant ? kvf_act_view(&s->act, hp->n_ff, s->two_level, s->hb, hp->n_ff)
                      : kvf_act_float(s->hb, hp->n_ff, hp->n_ff);
    kvf_matmul(s->pool, s->K, &L->wdown, &h, n, x, hp->n_embd, 1);
}

/* ---- output ---------------------------------------------------------------------------- */

void kvf_fwd_logits(kvf_session *s, const float *x, int32_t n, int64_t ldx, float *out) {
    const kvf_model *m = s->m;
    kvf_act          a = norm_quant(s, x, ldx, n, m->output_norm);
    kvf_matmul(s->pool, s->K, &m->output, &a, n, out, m->hp.n_vocab, 0);
}
