/* attn_sparse.c - block-sparse attention for long prompts: SALE and PowerAttention
 * (docs/long-context.md; the modes are described at kvf_attn_params in kvfuse.h).
 *
 * Work is tiled as in forward.c: one item is a query tile (TR rows x the g query heads of one
 * KV head) against that KV head's cache. Keys are taken in blocks of 64 cells, the key tile of
 * the cache (kernels.h), so any run of consecutive blocks is an ordinary call of the dense
 * kernel on a sub-range; runs are merged exactly through their softmax states (o, m, l):
 *   m = max(m1, m2), wi = e^(mi - m) li, o = (w1 o1 + w2 o2) / (w1 + w2), l = w1 + w2.
 * When every block is kept, the whole range is one run: the result equals dense attention bit
 * for bit.
 *
 * SALE per item: (1) exact attention over the sink block and each row's `local` most recent
 * keys; (2) threshold per query vector m: a key j matters if p~ = e^(s~ - m_m) / l_m > tau,
 * i.e. s~ > m_m + ln(tau l_m) (the relative attention score: weight relative to the mass
 * already found); (3) every other causal block is estimated with 8-bit products of the query
 * and the keys centred on their mean (q . kbar is added back exactly per row) and kept if some
 * estimate crosses some vector's threshold; (4) the kept blocks are computed exactly and
 * merged. The blocks are chosen per query head, for the rows of the tile together.
 * Deviations from the paper: 8-bit instead of 4-bit codes (x86 has no 4-bit product), query
 * tiles of forward.c's size instead of 64 rows, 64-key blocks instead of 32, one threshold for
 * every head (no per-head calibration). */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <math.h>
#include <string.h>

#define BK KVF_ATTN_BK
#define MAXM KVF_ATTN_MAX_M

kvf_attn_params kvf_attn_default_params(kvf_attn_mode mode) {
    kvf_attn_params p = {.mode = mode, .threshold = 0.008f, .local = 128, .block = 256,
                         .window = 5, .dense_layers = 2, .dense_period = 0, .min_keys = 1024};
    if (mode == KVF_ATTN_POWER) p.dense_period = 7, p.min_keys = 0;
    if (mode == KVF_ATTN_DENSE) p.dense_layers = 0, p.min_keys = 0;
    return p;
}

static const char *const attn_names[KVF_ATTN_COUNT] = {"dense", "sale", "power"};

const char *kvf_attn_name(kvf_attn_mode mode) {
    return (unsigned)mode < KVF_ATTN_COUNT ? attn_names[mode] : "?";
}

int kvf_attn_from_name(const char *name) {
    for (int i = 0; name && i < KVF_ATTN_COUNT; i++)
        if (strcmp(name, attn_names[i]) == 0) return i;
    return -1;
}

kvf_status kvf_session_set_attn(kvf_session *s, const kvf_attn_params *p) {
    if (!s || !p) return kvf_set_error(KVF_E_INVAL, "kvf_session_set_attn: NULL argument");
    if ((unsigned)p->mode >= KVF_ATTN_COUNT)
        return kvf_set_error(KVF_E_INVAL, "unknown attention mode %d", (int)p->mode);
    if (!(p->threshold >= 0.0f && p->threshold < 1.0f))
        return kvf_set_error(KVF_E_INVAL, "attention threshold %g is not in [0, 1)",
                             (double)p->threshold);
    if (p->local < 0 || p->window < 1 || p->dense_layers < 0 || p->dense_period < 0 ||
        p->min_keys < 0)
        return kvf_set_error(KVF_E_INVAL, "negative attention parameter (or window < 1)");
    if (p->block < BK || p->block % BK || p->block > (1 << 20))
        return kvf_set_error(KVF_E_INVAL, "attention block %d is not a multiple of %d",
                             (int)p->block, BK);
    if (p->mode == KVF_ATTN_SALE && (s->m->hp.head_dim % 4 || s->m->hp.head_dim > 256))
        return kvf_set_error(KVF_E_UNSUPPORTED,
                             "SALE needs a head dimension that is a multiple of 4 (at most 256); "
                             "this model's is %d",
                             s->m->hp.head_dim);
    s->attn = *p;
    return KVF_OK;
}

kvf_attn_params kvf_session_attn(const kvf_session *s) {
    return s->attn;
}

void kvf_session_attn_density(kvf_session *s, int64_t *read, int64_t *causal) {
    int64_t r = atomic_exchange(&s->sp_read, 0), c = atomic_exchange(&s->sp_causal, 0);
    if (read) *read = r;
    if (causal) *causal = c;
}

/* Per-thread work (floats): sparse_task's run output [MAXM][hd] | states 3 x [MAXM] | SALE's
 * query scales, thresholds, sums, limits 4 x [MAXM] | query codes [MAXM][hd] int8 | keep flags
 * [ldk / 64] bytes; attn_mac.c uses the first 2 x [MAXM][hd] (that is less than the total). */
int64_t kvf_attn_sparse_stride(const kvf_hparams *hp, int64_t ldk) {
    int64_t f = (int64_t)MAXM * hp->head_dim + 7 * MAXM + ((int64_t)MAXM * hp->head_dim + 3) / 4 +
                (ldk / BK + 3) / 4;
    f = KVF_MAX(f, 2 * (int64_t)MAXM * hp->head_dim);
    return (f + 15) / 16 * 16;
}

static int layer_dense(const kvf_attn_params *a, int l) {
    if (a->mode == KVF_ATTN_DENSE) return 1;
    return (a->dense_period > 0 ? l % a->dense_period : l) < a->dense_layers;
}

/* SALE applies to a batch of one session with two or more rows (prefill, fusion's recompute) */
static int sale_applies(const kvf_session *s, int l, const kvf_batch *b) {
    return s->attn.mode == KVF_ATTN_SALE && !b->sess && b->n >= 2 && !layer_dense(&s->attn, l);
}

int kvf_attn_sparse_wanted(const kvf_session *s, int l, const kvf_batch *b) {
    if (sale_applies(s, l, b)) return 1;
    for (int32_t r = 0; r < b->n; r++) {
        const kvf_session *ts = b->sess ? b->sess[r] : s;
        if (ts->attn.mode == KVF_ATTN_POWER && !layer_dense(&ts->attn, l)) return 1;
        if (!b->sess) break;
    }
    return 0;
}

/* ---- SALE: 8-bit keys ------------------------------------------------------------------ */

/* Layer l's codes are kept between evaluations: a prefill of many micro-batches codes each new
 * key once. Cells written afterwards lower sq_valid[l] (kvf_attn_sparse_written); the mean the
 * keys are centred on is fixed when the layer is coded from cell 0 (any constant is exact: the
 * estimate adds q . kbar back). */
void kvf_attn_sparse_written(kvf_session *s, int l, int32_t cell) {
    kvf_attn_decode_written(s, l, cell);
    if (!s->sq_valid) return;
    for (int i = l < 0 ? 0 : l; i < (l < 0 ? s->m->hp.n_layer : l + 1); i++)
        if (s->sq_valid[i] > cell) s->sq_valid[i] = cell;
}

static uint8_t *sq_block(const kvf_session *s, int l, int64_t h, int64_t blk) {
    int64_t nbk = s->ldk / BK, hd = s->m->hp.head_dim;
    return s->sq_k + (((int64_t)l * s->m->hp.n_head_kv + h) * nbk + blk) * hd * BK;
}
static float *sq_scales(const kvf_session *s, int l, int64_t h) {
    return s->sq_ks + ((int64_t)l * s->m->hp.n_head_kv + h) * s->ldk;
}
static float *sq_mean(const kvf_session *s, int l, int64_t h) {
    return s->sq_kbar + ((int64_t)l * s->m->hp.n_head_kv + h) * s->m->hp.head_dim;
}

typedef struct {
    kvf_session        *s;
    int                 l;
    int64_t             n_keys, b0, n_blocks; /* code blocks [b0, n_blocks) */
    atomic_int_fast64_t next;
} kq_ctx;

/* the mean of the keys of cells [0, n_keys) of head h, tile by tile */
static void kbar_task(void *p, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    kq_ctx      *c  = p;
    kvf_session *s  = c->s;
    int          hd = s->m->hp.head_dim;
    for (int64_t h; (h = kvf_claim(&c->next, s->m->hp.n_head_kv)) >= 0;) {
        const char *kt = kvf_kt_at(s, c->l, (int)h);
        size_t      es = kvf_kv_esize(s);
        double      sum[256] = {0};
        for (int64_t blk = 0; blk * BK < c->n_keys; blk++) {
            int         n    = (int)KVF_MIN((int64_t)BK, c->n_keys - blk * BK);
            const char *tile = kt + blk * hd * BK * (int64_t)es;
            for (int i = 0; i < hd; i++) {
                float t = 0.0f;
                for (int jj = 0; jj < n; jj++) t += kvf_kv_get(s, tile, (int64_t)i * BK + jj);
                sum[i] += t;
            }
        }
        float *kbar = sq_mean(s, c->l, h);
        for (int i = 0; i < hd; i++) kbar[i] = (float)(sum[i] / (double)c->n_keys);
    }
}

/* codes of one block of one head: keys centred, one scale per key (max |x| / 127); cells at or
 * after n_keys get zero codes */
static void kquant_task(void *p, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    kq_ctx      *c  = p;
    kvf_session *s  = c->s;
    int          hd = s->m->hp.head_dim;
    size_t       es = kvf_kv_esize(s);
    int64_t      nb = c->n_blocks - c->b0;
    for (int64_t it; (it = kvf_claim(&c->next, s->m->hp.n_head_kv * nb)) >= 0;) {
        int64_t      h = it / nb, blk = c->b0 + it % nb;
        const char  *tile = (const char *)kvf_kt_at(s, c->l, (int)h) + blk * hd * BK * (int64_t)es;
        const float *kbar = sq_mean(s, c->l, h);
        uint8_t     *out  = sq_block(s, c->l, h, blk);
        float       *ks   = sq_scales(s, c->l, h) + blk * BK;
        int          n    = (int)KVF_MIN((int64_t)BK, c->n_keys - blk * BK);
        float        x[256][BK], amax[BK] = {0}, inv[BK];
        for (int i = 0; i < hd; i++)
            for (int jj = 0; jj < BK; jj++) {
                x[i][jj]  = jj < n ? kvf_kv_get(s, tile, (int64_t)i * BK + jj) - kbar[i] : 0.0f;
                amax[jj] = fmaxf(amax[jj], fabsf(x[i][jj]));
            }
        for (int jj = 0; jj < BK; jj++) {
            ks[jj]  = amax[jj] / 127.0f;
            inv[jj] = amax[jj] > 0.0f ? 127.0f / amax[jj] : 0.0f;
        }
        for (int i = 0; i < hd; i++)
            for (int jj = 0; jj < BK; jj++) {
                long v = lrintf(x[i][jj] * inv[jj]);
                v      = v > 127 ? 127 : v < -127 ? -127 : v;
                out[(i / 4) * 4 * BK + jj * 4 + i % 4] = (uint8_t)(v + 128);
            }
    }
}

/* bring layer l's codes up to n_keys cells */
static void quantize_keys(kvf_session *s, int l, int64_t n_keys) {
    int64_t valid = s->sq_valid[l];
    if (valid >= n_keys) return;
    kq_ctx c = {.s = s, .l = l, .n_keys = n_keys, .b0 = valid / BK, .n_blocks = (n_keys + BK - 1) / BK};
    if (valid == 0) {
        atomic_init(&c.next, 0);
        kvf_pool_run(s->pool, kbar_task, &c);
    }
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, kquant_task, &c);
    s->sq_valid[l] = (int32_t)n_keys;
}

/* ---- block runs and state merging ------------------------------------------------------ */

typedef struct {
    int            l, h; /* layer and KV head */
    const float *const *q;
    float *const *o;     /* final outputs, accumulated */
    const int32_t *end;  /* kv_end of each query vector */
    int            M, hd;
    float         *st_m, *st_l; /* softmax state of o: maximum, sum */
    float         *tmp;         /* [M][hd] a run's output */
    float         *work;        /* the kernel's work area */
    int32_t       *e2;          /* [M] a run's ends */
} run_ctx;

/* Exact attention over every run of consecutive kept blocks [0, nb), merged into the state.
 * Returns the number of blocks read. */
static int64_t run_blocks(const kvf_session *s, const kvf_session *ts, run_ctx *r,
                          const uint8_t *keep, int64_t nb) {
    int64_t read = 0;
    for (int64_t b = 0; b < nb;) {
        if (!keep[b]) {
            b++;
            continue;
        }
        int64_t b1 = b;
        while (b1 < nb && keep[b1]) b1++;
        int64_t j0 = b * BK, any = 0;
        float  *tp[MAXM];
        for (int m = 0; m < r->M; m++) {
            int64_t e = KVF_MIN((int64_t)r->end[m], b1 * BK) - j0;
            r->e2[m]  = (int32_t)(e > 0 ? e : 1);
            any |= e > 0;
            tp[m] = r->tmp + (int64_t)m * r->hd;
        }
        if (any) {
            kvf_attn_call(s, ts, r->l, r->h, j0, r->q, tp, r->e2, r->M, r->work);
            const float *mrow = r->work + (int64_t)r->M * BK, *lrow = mrow + r->M;
            for (int m = 0; m < r->M; m++)
                if (r->end[m] > j0)
                    kvf_attn_merge(r->o[m], &r->st_m[m], &r->st_l[m], tp[m], mrow[m], lrow[m], r->hd);
            read += b1 - b;
        }
        b = b1;
    }
    return read;
}

/* ---- the item task ---------------------------------------------------------------------- */

typedef struct {
    kvf_session        *s;
    int                 l, TR, n_tiles, sale;
    const kvf_batch    *b;
    atomic_int_fast64_t next;
} sp_ctx;

static int is_pow2(int64_t x) {
    return x > 0 && (x & (x - 1)) == 0;
}

/* SALE on one item; returns the blocks read */
static int64_t sale_item(const kvf_session *s, const kvf_session *ts, run_ctx *r, uint8_t *keep,
                         int64_t nb, float scale, float *fw) {
    int l = r->l, h = r->h;
    const kvf_attn_params *a  = &ts->attn;
    int                    hd = r->hd, M = r->M;
    memset(keep, 0, (size_t)nb);
    keep[0] = 1; /* sink */
    for (int m = 0; m < M; m++) {
        int64_t lo = KVF_MAX((int64_t)0, (int64_t)r->end[m] - a->local) / BK, hi = (r->end[m] - 1) / BK;
        for (int64_t b = lo; b <= hi; b++) keep[b] = 1;
    }
    int64_t read = run_blocks(s, ts, r, keep, nb);
    /* estimate the rest: 8-bit query codes, thresholds in the estimate's units */
    float   *qs = fw, *t = fw + MAXM;
    int32_t *qsum = (int32_t *)(fw + 2 * MAXM), *lim = (int32_t *)(fw + 3 * MAXM);
    int8_t  *qc   = (int8_t *)(fw + 4 * MAXM);
    const float *kbar = sq_mean(s, l, h);
    for (int m = 0; m < M; m++) {
        float amax = 0.0f, qk = 0.0f;
        for (int i = 0; i < hd; i++) amax = fmaxf(amax, fabsf(r->q[m][i])), qk += r->q[m][i] * kbar[i];
        float   inv = amax > 0.0f ? 63.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < hd; i++) {
            long v = lrintf(r->q[m][i] * inv);
            v      = v > 63 ? 63 : v < -63 ? -63 : v;
            qc[(int64_t)m * hd + i] = (int8_t)v;
            sum += (int32_t)v;
        }
        qsum[m] = sum;
        qs[m]   = amax / 63.0f;
        t[m]    = (r->st_m[m] + logf(a->threshold * r->st_l[m])) / scale - qk;
    }
    const uint8_t *kq = sq_block(s, l, h, 0);
    const float   *ks = sq_scales(s, l, h);
    int            any = 0;
    for (int64_t b = 0; b < nb; b++) {
        if (keep[b]) {
            keep[b] = 0;
            continue;
        }
        for (int m = 0; m < M; m++) lim[m] = (int32_t)KVF_MIN((int64_t)BK, r->end[m] - b * BK);
        keep[b] = (uint8_t)s->attn_K->attn_est(qc, qsum, qs, t, lim, M, kq + b * hd * BK, ks + b * BK, hd);
        any |= keep[b];
    }
    if (any) read += run_blocks(s, ts, r, keep, nb);
    return read;
}

static void sparse_task(void *p, int ith, int nth) {
    KVF_UNUSED(nth);
    sp_ctx            *c  = p;
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &s->m->hp;
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int64_t qd = (int64_t)hp->n_head * hd;
    float   scale = 1.0f / sqrtf((float)hd);
    float  *work  = s->attn_work + ith * s->attn_work_stride;
    float  *sw    = s->sp_work + ith * s->sp_stride;
    float  *tmp   = sw, *st = sw + (int64_t)MAXM * hd, *fw = st + 3 * MAXM;
    uint8_t *keep = (uint8_t *)(fw + 4 * MAXM) + (int64_t)MAXM * hd;
    int64_t  n_read = 0, n_causal = 0;
    for (int64_t it; (it = kvf_claim(&c->next, (int64_t)c->n_tiles * hp->n_head_kv)) >= 0;) {
        int h = (int)(it % hp->n_head_kv), tile = (int)(it / hp->n_head_kv);
        int r0 = tile * c->TR, r1 = KVF_MIN(r0 + c->TR, c->b->n), M = 0;
        const float *qp[MAXM];
        float       *op[MAXM];
        int32_t      end[MAXM], e2[MAXM], max_end = 0;
        for (int r = r0; r < r1; r++)
            for (int gi = 0; gi < g; gi++, M++) {
                qp[M]  = s->q + r * qd + (int64_t)(h * g + gi) * hd;
                op[M]  = s->att + r * qd + (int64_t)(h * g + gi) * hd;
                end[M] = c->b->kv_end[r];
                max_end = KVF_MAX(max_end, end[M]);
            }
        const kvf_session *ts = c->b->sess ? c->b->sess[r0] : s; /* a tile never mixes sessions */
        int64_t            nb = (max_end + BK - 1) / BK;
        run_ctx rc = {.l = c->l, .h = h, .q = qp, .o = op,
                      .end = end, .M = M, .hd = hd, .st_m = st, .st_l = st + MAXM, .tmp = tmp,
                      .work = work, .e2 = e2};
        for (int m = 0; m < M; m++) rc.st_m[m] = -INFINITY, rc.st_l[m] = 0.0f;
        n_causal += nb * M;
        const kvf_attn_params *a = &ts->attn;
        if (c->sale && max_end >= a->min_keys && a->threshold > 0.0f) {
            /* blocks are chosen per query head (its vectors are every g-th of the tile) */
            int          R = M / g;
            const float *hq[MAXM];
            float       *ho[MAXM];
            int32_t      he[MAXM];
            for (int gi = 0; gi < g; gi++) {
                for (int k = 0; k < R; k++) hq[k] = qp[k * g + gi], ho[k] = op[k * g + gi], he[k] = end[k * g + gi];
                run_ctx hr = rc;
                hr.q = hq, hr.o = ho, hr.end = he, hr.M = R;
                for (int k = 0; k < R; k++) hr.st_m[k] = -INFINITY, hr.st_l[k] = 0.0f;
                n_read += sale_item(s, ts, &hr, keep, nb, scale, fw) * R;
            }
        } else if (!c->sale && a->mode == KVF_ATTN_POWER && !layer_dense(a, c->l) &&
                   max_end >= a->min_keys) {
            /* rows of one query block share a pattern: one group each */
            int64_t per = a->block / BK;
            for (int m0 = 0; m0 < M;) {
                int64_t qb = (end[m0] - 1) / a->block;
                int     m1 = m0;
                int64_t gmax = 0;
                for (; m1 < M && (end[m1] - 1) / a->block == qb; m1++) gmax = KVF_MAX(gmax, (int64_t)end[m1]);
                int64_t gnb = (gmax + BK - 1) / BK;
                for (int64_t b = 0; b < gnb; b++) {
                    int64_t dist = qb - b / per;
                    keep[b] = (uint8_t)(b < per || dist < a->window || is_pow2(dist));
                }
                run_ctx gr = rc;
                gr.q = qp + m0, gr.o = op + m0, gr.end = end + m0, gr.M = m1 - m0;
                gr.st_m = rc.st_m + m0, gr.st_l = rc.st_l + m0;
                n_read += run_blocks(s, ts, &gr, keep, gnb) * (m1 - m0);
                m0 = m1;
            }
        } else {
            memset(keep, 1, (size_t)nb);
            n_read += run_blocks(s, ts, &rc, keep, nb) * M;
        }
    }
    atomic_fetch_add(&s->sp_read, n_read);
    atomic_fetch_add(&s->sp_causal, n_causal);
}

void kvf_attn_sparse(kvf_session *s, int l, const kvf_batch *b, int TR) {
    sp_ctx c = {.s = s, .l = l, .TR = TR, .n_tiles = (b->n + TR - 1) / TR, .b = b,
                .sale = sale_applies(s, l, b)};
    if (c.sale) {
        int32_t max_end = 0;
        for (int32_t r = 0; r < b->n; r++) max_end = KVF_MAX(max_end, b->kv_end[r]);
        if (max_end >= s->attn.min_keys && s->attn.threshold > 0.0f) quantize_keys(s, l, max_end);
    }
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, sparse_task, &c);
}
