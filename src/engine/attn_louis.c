/* attn_louis.c - LouisKV for decoding (arXiv 2510.11292; docs/long-context.md section 4,
 * docs/attention.md).
 *
 * Per session, layer (from dense_layers on) and KV head, the keys are split into
 *   sink   [0, 16)                       always attended;
 *   units  [16, cover)                   the input's keys clustered by spherical k-means (about
 *                                        `cluster` keys per cluster, each window of 1024 keys on
 *                                        its own, so clustering stays O(T)), and then the output's
 *                                        keys in segments of 64 cells, appended as decoding moves
 *                                        the recent window past them; each unit is indexed by
 *                                        its mean key (post-RoPE);
 *   recent [cover, P]                    the last `band` to `band` + 63 keys, always attended.
 * A decode step is a semantic boundary when the mean cosine of its pre-RoPE queries with the
 * previous step's (over the layer's query heads) falls below tau, or when nothing is selected
 * yet: then every KV head scores its units by the softmax of q . mean key / sqrt(d), averaged
 * over its query heads, takes them best first while they fit in `budget` keys and copies their
 * keys and values into a contiguous buffer (the "fast tier" of the paper; on a CPU its gain is
 * that a step reads budget + band keys instead of all). Between boundaries the selection is
 * reused. Attention over sink, selected units and recent keys is merged exactly by softmax
 * states, so with every unit selected it is dense attention computed in three ranges. */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define BK    KVF_ATTN_BK
#define SINK  KVF_LOUIS_SINK
#define WIN   KVF_LOUIS_WIN
#define CPW   (KVF_LOUIS_WIN / 4) /* unit slots per input window (cluster >= 4) */
#define ITERS 8                   /* k-means iterations (fewer if the assignment settles) */

static int64_t lh_at(const kvf_session *s, int l, int h) {
    return (int64_t)l * s->m->hp.n_head_kv + h;
}

void kvf_louis_forget(kvf_session *s, int l) {
    s->lv_cover[l] = 0;
}

int64_t kvf_louis_kwork_floats(int hd) {
    return ((int64_t)WIN * hd + (int64_t)CPW * hd + WIN + 2 * CPW + 15) / 16 * 16;
}

int kvf_louis_applies(const kvf_decode_attn_params *d, int l, int64_t e) {
    return d->mode == KVF_DECODE_LOUIS && l >= d->dense_layers && e >= d->min_keys &&
           kvf_attn_band_edge(e, d->band) >= BK;
}

/* ---- units ------------------------------------------------------------------------------- */

static void unit_mean(const kvf_session *ts, int l, int h, int64_t u) {
    int          hd   = ts->m->hp.head_dim;
    int64_t      lh   = lh_at(ts, l, h);
    const void  *kt   = kvf_kt_at(ts, l, h);
    const int32_t *cl = ts->lv_cells + lh * ts->ldk;
    float       *c    = ts->lv_cent + (lh * ts->lv_umax + u) * hd;
    int32_t      off = ts->lv_off[lh * ts->lv_umax + u], n = ts->lv_cnt[lh * ts->lv_umax + u];
    for (int i = 0; i < hd; i++) {
        float acc = 0.0f;
        for (int32_t k = 0; k < n; k++) acc += kvf_kv_get(ts, kt, kvf_kt_idx(i, cl[off + k], hd));
        c[i] = n ? acc / (float)n : 0.0f;
    }
}

/* Input windows [a0, end) of layer l: window w is [max(a0, (a0/WIN + w) WIN),
 * min(end, (a0/WIN + w + 1) WIN)) with unit slots u0 + w CPW .. + CPW (so windows end on key
 * tiles whatever a0 is) */
typedef struct {
    kvf_session        *ts;
    int                 l, n_win;
    int64_t             a0, end, u0, stride;
    float              *scratch; /* [threads of the computing session][stride] */
    atomic_int_fast64_t next;
} build_ctx;

/* eight partial sums, so the compiler can use vector registers (clustering is the hot loop) */
static float dot(const float *a, const float *b, int n) {
    float s[8] = {0};
    int   i    = 0;
    for (; i + 8 <= n; i += 8)
        for (int t = 0; t < 8; t++) s[t] += a[i + t] * b[i + t];
    float acc = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void normalise(float *v, int n) {
    float nn = sqrtf(dot(v, v, n));
    if (nn > 0.0f)
        for (int i = 0; i < n; i++) v[i] /= nn;
}

/* spherical k-means of one window of one KV head into the window's unit slots */
static void build_task(void *p, int ith, int nth) {
    KVF_UNUSED(nth);
    build_ctx   *c  = p;
    kvf_session *ts = c->ts;
    int          hd = ts->m->hp.head_dim, nkv = ts->m->hp.n_head_kv, l = c->l;
    float       *kn = c->scratch + ith * c->stride, *cent = kn + (int64_t)WIN * hd;
    int32_t     *as = (int32_t *)(cent + (int64_t)CPW * hd), *cnt = as + WIN, *pos = cnt + CPW;
    for (int64_t it; (it = kvf_claim(&c->next, (int64_t)c->n_win * nkv)) >= 0;) {
        int         h = (int)(it % nkv), w = (int)(it / nkv);
        int64_t     lh = lh_at(ts, l, h), u0 = c->u0 + (int64_t)w * CPW;
        int64_t     a  = KVF_MAX(c->a0, (c->a0 / WIN + w) * WIN);
        int         n  = (int)(KVF_MIN(c->end, (c->a0 / WIN + w + 1) * WIN) - a);
        int         C  = (n + ts->dattn.cluster - 1) / ts->dattn.cluster;
        const void *kt = kvf_kt_at(ts, l, h);
        for (int j = 0; j < n; j++) {
            for (int i = 0; i < hd; i++) kn[(int64_t)j * hd + i] = kvf_kv_get(ts, kt, kvf_kt_idx(i, a + j, hd));
            normalise(kn + (int64_t)j * hd, hd);
        }
        for (int k = 0; k < C; k++) /* seeds spread evenly over the window */
            memcpy(cent + (int64_t)k * hd, kn + (int64_t)(k * n / C) * hd, sizeof(float) * (size_t)hd);
        for (int j = 0; j < n; j++) as[j] = -1;
        for (int iter = 0; iter < ITERS; iter++) {
            int changed = 0;
            for (int j = 0; j < n; j++) {
                int   best = 0;
                float bs   = -INFINITY;
                for (int k = 0; k < C; k++) {
                    float d = dot(kn + (int64_t)j * hd, cent + (int64_t)k * hd, hd);
                    if (d > bs) bs = d, best = k;
                }
                changed += as[j] != best;
                as[j] = best;
            }
            if (!changed || iter == ITERS - 1) break;
            memset(cnt, 0, sizeof(int32_t) * (size_t)C);
            for (int j = 0; j < n; j++) cnt[as[j]]++;
            for (int k = 0; k < C; k++) /* an empty cluster keeps its centre */
                if (cnt[k]) memset(cent + (int64_t)k * hd, 0, sizeof(float) * (size_t)hd);
            for (int j = 0; j < n; j++)
                for (int i = 0; i < hd; i++) cent[(int64_t)as[j] * hd + i] += kn[(int64_t)j * hd + i];
            for (int k = 0; k < C; k++)
                if (cnt[k]) normalise(cent + (int64_t)k * hd, hd);
        }
        /* members grouped by cluster (in cell order within one) into the window's region */
        memset(cnt, 0, sizeof(int32_t) * (size_t)CPW);
        for (int j = 0; j < n; j++) cnt[as[j]]++;
        int32_t *cells = ts->lv_cells + lh * ts->ldk;
        int32_t  base  = (int32_t)(a - SINK);
        for (int k = 0, o = 0; k < CPW; k++) {
            int64_t u            = lh * ts->lv_umax + u0 + k;
            ts->lv_off[u]        = base + o;
            ts->lv_cnt[u]        = k < C ? cnt[k] : 0;
            pos[k]               = o;
            o                   += k < C ? cnt[k] : 0;
        }
        for (int j = 0; j < n; j++) cells[base + pos[as[j]]++] = (int32_t)(a + j);
        for (int k = 0; k < C; k++)
            if (cnt[k]) unit_mean(ts, l, h, u0 + k);
    }
}

/* cluster the keys [cover, end) of layer l (every KV head) as input windows */
static void cluster_input(kvf_session *s, kvf_session *ts, int l, int64_t end) {
    int       nkv = ts->m->hp.n_head_kv;
    build_ctx c   = {.ts = ts, .l = l, .a0 = ts->lv_cover[l], .end = end, .scratch = s->lv_kwork};
    c.u0          = ts->lv_nunits[lh_at(ts, l, 0)];
    c.n_win       = (int)((end - 1) / WIN - c.a0 / WIN + 1);
    c.stride      = kvf_louis_kwork_floats(ts->m->hp.head_dim);
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, build_task, &c);
    for (int h = 0; h < nkv; h++) ts->lv_nunits[lh_at(ts, l, h)] += c.n_win * CPW;
    ts->lv_cover[l] = (int32_t)end;
}

/* Units of layer l for e keys. Prefill (decoding = 0) clusters the whole windows of 1024 keys
 * below the recent window as they fill; the first decode step clusters the rest of the input
 * (unless a segment is all that is left), and from then on the keys that leave the recent
 * window become segments of 64. */
static void units_update(kvf_session *s, kvf_session *ts, int l, int64_t e, int decoding) {
    int     nkv  = ts->m->hp.n_head_kv;
    int64_t edge = kvf_attn_band_edge(e, ts->dattn.band);
    if (ts->lv_cover[l] == 0) { /* nothing yet (or forgotten) */
        ts->lv_cover[l] = SINK;
        for (int h = 0; h < nkv; h++) ts->lv_nunits[lh_at(ts, l, h)] = 0, ts->lv_nsel[lh_at(ts, l, h)] = -1;
    }
    int64_t cover = ts->lv_cover[l], end = edge / WIN * WIN;
    if (decoding && (edge - cover >= 2 * BK || cover % BK)) end = edge;
    if (end > cover) cluster_input(s, ts, l, end);
    if (!decoding) return;
    while (ts->lv_cover[l] + BK <= edge) { /* a segment of output (or later input) keys */
        int32_t a = ts->lv_cover[l];
        for (int h = 0; h < nkv; h++) {
            int64_t lh = lh_at(ts, l, h), u = ts->lv_nunits[lh]++;
            int32_t *cells = ts->lv_cells + lh * ts->ldk;
            ts->lv_off[lh * ts->lv_umax + u] = a - SINK;
            ts->lv_cnt[lh * ts->lv_umax + u] = BK;
            for (int k = 0; k < BK; k++) cells[a - SINK + k] = a + k;
            unit_mean(ts, l, h, u);
        }
        ts->lv_cover[l] = a + BK;
    }
}

/* ---- a step ------------------------------------------------------------------------------ */

void kvf_louis_prefill(kvf_session *s, int l, int64_t e) {
    const kvf_decode_attn_params *d = &s->dattn;
    if (d->mode == KVF_DECODE_LOUIS && l >= d->dense_layers && e >= d->min_keys)
        units_update(s, s, l, e, 0);
}

void kvf_louis_prepare(kvf_session *s, kvf_session *ts, int l, int32_t r, int64_t e) {
    const kvf_hparams *hp = &ts->m->hp;
    int64_t            qd = (int64_t)hp->n_head * hp->head_dim;
    units_update(s, ts, l, e, 1);
    const float *q = s->q_pre + r * qd;
    float       *qprev = ts->lv_qprev + l * qd;
    int          boundary = ts->lv_nsel[lh_at(ts, l, 0)] < 0;
    if (!boundary) {
        float mean = 0.0f;
        for (int hq = 0; hq < hp->n_head; hq++) {
            const float *a = q + (int64_t)hq * hp->head_dim, *b = qprev + (int64_t)hq * hp->head_dim;
            float        na = dot(a, a, hp->head_dim), nb = dot(b, b, hp->head_dim);
            mean += na > 0.0f && nb > 0.0f ? dot(a, b, hp->head_dim) / sqrtf(na * nb) : 0.0f;
        }
        boundary = !(mean / (float)hp->n_head >= ts->dattn.tau);
    }
    memcpy(qprev, q, sizeof(float) * (size_t)qd);
    if (boundary)
        for (int h = 0; h < hp->n_head_kv; h++) ts->lv_nsel[lh_at(ts, l, h)] = -1;
    atomic_fetch_add(&ts->mac_lookups, hp->n_head_kv);
    if (!boundary) atomic_fetch_add(&ts->mac_hits, hp->n_head_kv);
}

typedef struct {
    float   score;
    int32_t u;
} scored;

static int by_score(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    return (x->u > y->u) - (x->u < y->u);
}

/* score the units of KV head h under the query vectors q[0..g) and copy the best into the
 * buffer; sc and z have room for the layer's units */
static void select_units(kvf_session *ts, int l, int h, const float *const *q, int g, scored *sc,
                         float *z) {
    int     hd = ts->m->hp.head_dim;
    int64_t lh = lh_at(ts, l, h), U = ts->lv_nunits[lh], n = 0;
    size_t  es = kvf_kv_esize(ts);
    float   scale = 1.0f / sqrtf((float)hd);
    for (int64_t u = 0; u < U; u++)
        if (ts->lv_cnt[lh * ts->lv_umax + u] > 0) sc[n].u = (int32_t)u, sc[n++].score = 0.0f;
    for (int gi = 0; gi < g; gi++) { /* softmax over the units, averaged over the query heads */
        float mx = -INFINITY, sum = 0.0f;
        for (int64_t k = 0; k < n; k++) {
            z[k] = dot(q[gi], ts->lv_cent + (lh * ts->lv_umax + sc[k].u) * hd, hd) * scale;
            mx   = fmaxf(mx, z[k]);
        }
        for (int64_t k = 0; k < n; k++) sum += z[k] = expf(z[k] - mx);
        for (int64_t k = 0; k < n; k++) sc[k].score += z[k] / sum / (float)g;
    }
    qsort(sc, (size_t)n, sizeof *sc, by_score);
    int64_t        budget = KVF_MIN((int64_t)ts->dattn.budget, ts->ldk), nsel = 0;
    const char    *kt = kvf_kt_at(ts, l, h), *v = kvf_v_at(ts, l, h);
    char          *gk = ts->lv_gk + lh * ts->ldk * hd * (int64_t)es;
    char          *gv = ts->lv_gv + lh * ts->ldk * hd * (int64_t)es;
    const int32_t *cells = ts->lv_cells + lh * ts->ldk;
    for (int64_t k = 0; k < n && nsel < budget; k++) { /* best first, while they fit */
        int64_t u = lh * ts->lv_umax + sc[k].u;
        int32_t cnt = ts->lv_cnt[u], off = ts->lv_off[u];
        if (nsel + cnt > budget) continue;
        for (int32_t m = 0; m < cnt; m++, nsel++) {
            int32_t cell = cells[off + m];
            for (int i = 0; i < hd; i++)
                memcpy(gk + kvf_kt_idx(i, nsel, hd) * (int64_t)es, kt + kvf_kt_idx(i, cell, hd) * (int64_t)es, es);
            memcpy(gv + nsel * hd * (int64_t)es, v + (int64_t)cell * hd * (int64_t)es, es * (size_t)hd);
        }
    }
    ts->lv_nsel[lh] = (int32_t)nsel;
}

void kvf_louis_row(kvf_session *s, kvf_session *ts, int l, int h, int64_t e, const float *const *q,
                   float *const *o, int g, float *work, float *tmp) {
    int     hd = ts->m->hp.head_dim;
    int64_t lh = lh_at(ts, l, h), cover = ts->lv_cover[l];
    size_t  es = kvf_kv_esize(ts);
    float   am[KVF_ATTN_MAX_M], al[KVF_ATTN_MAX_M], bm[KVF_ATTN_MAX_M], bl[KVF_ATTN_MAX_M];
    float  *tp[KVF_ATTN_MAX_M];
    int32_t end[KVF_ATTN_MAX_M] = {0};
    if (ts->lv_nsel[lh] < 0) { /* a boundary: this head's scratch, used by one thread */
        float *sel = ts->lv_sel + (int64_t)h * 3 * ts->lv_umax;
        select_units(ts, l, h, q, g, (scored *)sel, sel + 2 * ts->lv_umax);
    }
    for (int gi = 0; gi < g; gi++) tp[gi] = tmp + (int64_t)gi * hd;
    /* the sink, then the selected units, then the recent keys */
    for (int gi = 0; gi < g; gi++) end[gi] = SINK;
    kvf_attn_call(s, ts, l, h, 0, q, o, end, g, work);
    kvf_attn_state(work, g, am, al);
    int32_t nsel = ts->lv_nsel[lh];
    if (nsel > 0) {
        for (int gi = 0; gi < g; gi++) end[gi] = nsel;
        kvf_attn_call_kv(s, ts->kv_f16, ts->lv_gk + lh * ts->ldk * hd * (int64_t)es,
                         ts->lv_gv + lh * ts->ldk * hd * (int64_t)es, q, tp, end, g, work);
        kvf_attn_state(work, g, bm, bl);
        for (int gi = 0; gi < g; gi++) kvf_attn_merge(o[gi], &am[gi], &al[gi], tp[gi], bm[gi], bl[gi], hd);
    }
    for (int gi = 0; gi < g; gi++) end[gi] = (int32_t)(e - cover);
    kvf_attn_call(s, ts, l, h, cover, q, tp, end, g, work);
    kvf_attn_state(work, g, bm, bl);
    for (int gi = 0; gi < g; gi++) kvf_attn_merge(o[gi], &am[gi], &al[gi], tp[gi], bm[gi], bl[gi], hd);
    atomic_fetch_add(&ts->lv_read, SINK + nsel + (e - cover));
    atomic_fetch_add(&ts->lv_total, e);
}

void kvf_session_decode_density(kvf_session *s, int64_t *read, int64_t *total) {
    int64_t r = atomic_exchange(&s->lv_read, 0), t = atomic_exchange(&s->lv_total, 0);
    if (read) *read = r;
    if (total) *total = t;
}
