/* attn_mac.c - MAC-Attention for decoding: match, amend, complete (arXiv 2604.00235;
 * docs/long-context.md section 3, docs/attention.md).
 *
 * Per session, layer and query head a ring remembers the last `lookback` decode steps: the
 * pre-RoPE query and the attention state (o, m, l) over the keys [0, E) below that step's band
 * boundary E = floor64(P + 1 - band). A decode step at position P with boundary E:
 *   match:    the nearest remembered query (L2, pre-RoPE); a hit if |q - q'| <= (1 - tau)|q|;
 *   amend:    on a hit of every query head of the KV group, each head's state is the matched
 *             state merged with fresh attention over [E', E) (E' the match's boundary);
 *             otherwise the state over [0, E) is computed for the whole group;
 *   complete: fresh attention over [E, P] merged in; the state over [0, E) is remembered.
 * Boundaries are multiples of 64 (the key tile), so every range is one call of the dense
 * kernel. With no hit the result is dense attention computed in two ranges. A remembered state
 * inherits what it reused, so error can chain across steps, as in the paper.
 *
 * This file also runs the decode step for every decode method (kvf_attn_decode): rows of
 * LouisKV sessions go to attn_louis.c, rows where no method applies are dense. */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <math.h>
#include <string.h>

#define BK KVF_ATTN_BK

kvf_decode_attn_params kvf_decode_attn_default_params(kvf_decode_mode mode) {
    kvf_decode_attn_params p = {.mode = mode, .tau = mode == KVF_DECODE_LOUIS ? 0.7f : 0.9f,
                                .lookback = 512, .band = 256, .min_keys = 2048, .budget = 2048,
                                .cluster = 16, .dense_layers = 2};
    return p;
}

static const char *const dnames[KVF_DECODE_COUNT] = {"dense", "mac", "louis"};

const char *kvf_decode_attn_name(kvf_decode_mode mode) {
    return (unsigned)mode < KVF_DECODE_COUNT ? dnames[mode] : "?";
}

int kvf_decode_attn_from_name(const char *name) {
    for (int i = 0; name && i < KVF_DECODE_COUNT; i++)
        if (strcmp(name, dnames[i]) == 0) return i;
    return -1;
}

/* first entry of the ring of layer l, query head hq */
static int64_t ring_at(const kvf_session *s, int l, int hq) {
    return ((int64_t)l * s->m->hp.n_head + hq) * KVF_MAC_MAX;
}

static void forget(kvf_session *s, int l) {
    int64_t n = (int64_t)s->m->hp.n_head * KVF_MAC_MAX;
    for (int64_t i = 0; i < n; i++) s->mac_pos[ring_at(s, l, 0) + i] = -1;
    s->mac_next[l] = 0;
    s->mac_hi[l]   = 0;
}

kvf_status kvf_session_set_decode_attn(kvf_session *s, const kvf_decode_attn_params *p) {
    if (!s || !p) return kvf_set_error(KVF_E_INVAL, "kvf_session_set_decode_attn: NULL argument");
    if ((unsigned)p->mode >= KVF_DECODE_COUNT)
        return kvf_set_error(KVF_E_INVAL, "unknown decode attention mode %d", (int)p->mode);
    if (!(p->tau >= 0.0f && p->tau <= 1.0f))
        return kvf_set_error(KVF_E_INVAL, "decode attention tau %g is not in [0, 1]", (double)p->tau);
    if (p->lookback < 1 || p->lookback > KVF_MAC_MAX)
        return kvf_set_error(KVF_E_INVAL, "decode attention lookback %d is not in 1..%d",
                             (int)p->lookback, KVF_MAC_MAX);
    if (p->band < 1 || p->min_keys < 0)
        return kvf_set_error(KVF_E_INVAL, "decode attention band must be >= 1 and min_keys >= 0");
    if (p->budget < 1 || p->cluster < 4 || p->cluster > 256 || p->dense_layers < 0)
        return kvf_set_error(KVF_E_INVAL, "decode attention budget must be >= 1, cluster in 4..256 "
                                          "and dense_layers >= 0");
    if (memcmp(&s->dattn, p, sizeof *p) != 0)
        for (int l = 0; l < s->m->hp.n_layer; l++) forget(s, l), kvf_louis_forget(s, l);
    s->dattn = *p;
    return KVF_OK;
}

kvf_decode_attn_params kvf_session_decode_attn(const kvf_session *s) {
    return s->dattn;
}

void kvf_session_decode_hits(kvf_session *s, int64_t *hits, int64_t *lookups) {
    int64_t h = atomic_exchange(&s->mac_hits, 0), n = atomic_exchange(&s->mac_lookups, 0);
    if (hits) *hits = h;
    if (lookups) *lookups = n;
}

void kvf_attn_decode_written(kvf_session *s, int l, int32_t cell) {
    if (!s->mac_hi || s->dattn.mode == KVF_DECODE_DENSE) return;
    for (int i = l < 0 ? 0 : l; i < (l < 0 ? s->m->hp.n_layer : l + 1); i++) {
        /* states or units over rewritten keys, or the scratch's pages returned */
        if (cell < s->mac_hi[i] || cell == 0) forget(s, i);
        if (cell < s->lv_cover[i] || cell == 0) kvf_louis_forget(s, i);
    }
}

int kvf_attn_decode_wanted(const kvf_session *s, const kvf_batch *b) {
    if (!kvf_batch_is_decode(b)) return 0;
    for (int32_t r = 0; r < b->n; r++)
        if ((b->sess ? b->sess[r] : s)->dattn.mode != KVF_DECODE_DENSE) return 1;
    return 0;
}

/* ---- one item: a row and a KV head ------------------------------------------------------ */

typedef struct {
    kvf_session        *s;
    int                 l;
    const kvf_batch    *b;
    atomic_int_fast64_t next;
} mac_ctx;

/* fresh attention of vectors q[0..M) over keys [a, e) (a a multiple of 64, e > a) of one KV
 * head into o[m] with its state in m_out / l_out */
static void attn_range(const kvf_session *s, const kvf_session *ts, int l, int h,
                       const float *const *q, float *const *o, int M, int64_t a, int64_t e,
                       float *work, float *m_out, float *l_out) {
    int32_t end[KVF_ATTN_MAX_M] = {0}; /* (zeroed: the compiler cannot see only M are read) */
    for (int m = 0; m < M; m++) end[m] = (int32_t)(e - a);
    kvf_attn_call(s, ts, l, h, a, q, o, end, M, work);
    kvf_attn_state(work, M, m_out, l_out);
}

/* MAC runs for a row with e keys (else the row is dense and nothing is remembered) */
static int mac_applies(const kvf_decode_attn_params *d, int64_t e) {
    return d->mode == KVF_DECODE_MAC && e >= d->min_keys && kvf_attn_band_edge(e, d->band) > 0;
}

static void mac_task(void *p, int ith, int nth) {
    KVF_UNUSED(nth);
    mac_ctx           *c  = p;
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &s->m->hp;
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim, l = c->l;
    int64_t qd = (int64_t)hp->n_head * hd, rs = 2 * (int64_t)hd + 2;
    float  *work = s->attn_work + ith * s->attn_work_stride;
    float  *sw   = s->sp_work + ith * s->sp_stride;
    float  *ao = sw, *to = sw + (int64_t)KVF_ATTN_MAX_M * hd; /* states over [0, E) and the tail */
    for (int64_t it; (it = kvf_claim(&c->next, (int64_t)c->b->n * hp->n_head_kv)) >= 0;) {
        int                h  = (int)(it % hp->n_head_kv), r = (int)(it / hp->n_head_kv);
        kvf_session       *ts = c->b->sess ? c->b->sess[r] : s;
        const float       *qp[KVF_ATTN_MAX_M];
        float             *op[KVF_ATTN_MAX_M], *ap[KVF_ATTN_MAX_M], *tp[KVF_ATTN_MAX_M];
        float              am[KVF_ATTN_MAX_M], al[KVF_ATTN_MAX_M], tm[KVF_ATTN_MAX_M], tl[KVF_ATTN_MAX_M];
        int64_t            e  = c->b->kv_end[r];
        const kvf_decode_attn_params *d = &ts->dattn;
        for (int gi = 0; gi < g; gi++) {
            qp[gi] = s->q + r * qd + (int64_t)(h * g + gi) * hd;
            op[gi] = s->att + r * qd + (int64_t)(h * g + gi) * hd;
            ap[gi] = ao + (int64_t)gi * hd, tp[gi] = to + (int64_t)gi * hd;
        }
        if (kvf_louis_applies(d, l, e)) {
            kvf_louis_row(s, ts, l, h, e, qp, op, g, work, to);
            continue;
        }
        int64_t E = kvf_attn_band_edge(e, d->band);
        if (!mac_applies(d, e)) {
            attn_range(s, ts, l, h, qp, op, g, 0, e, work, am, al);
            continue;
        }
        /* match each query head against its ring */
        int32_t P = (int32_t)(e - 1), hit[KVF_ATTN_MAX_M], all = 1;
        for (int gi = 0; gi < g; gi++) {
            int          hq   = h * g + gi;
            const float *qpre = s->q_pre + r * qd + (int64_t)hq * hd;
            float        qn = 0.0f, best = INFINITY;
            for (int i = 0; i < hd; i++) qn += qpre[i] * qpre[i];
            hit[gi] = -1;
            int64_t base = ring_at(ts, l, hq);
            for (int k = 0; k < d->lookback; k++) {
                int32_t pk = ts->mac_pos[base + k];
                if (pk < 0 || pk >= P || P - pk > d->lookback) continue;
                const float *rq = ts->mac_ring + (base + k) * rs;
                float        d2 = 0.0f;
                for (int i = 0; i < hd && d2 < best; i++) d2 += (qpre[i] - rq[i]) * (qpre[i] - rq[i]);
                if (d2 < best) best = d2, hit[gi] = k;
            }
            float lim = (1.0f - d->tau) * (1.0f - d->tau) * qn;
            if (hit[gi] < 0 || !(best <= lim)) hit[gi] = -1, all = 0;
        }
        atomic_fetch_add(&ts->mac_lookups, g);
        if (all) {
            atomic_fetch_add(&ts->mac_hits, g);
            for (int gi = 0; gi < g; gi++) {
                int64_t      k  = ring_at(ts, l, h * g + gi) + hit[gi];
                const float *rq = ts->mac_ring + k * rs;
                int32_t      pk = ts->mac_pos[k];
                int64_t      Ek = kvf_attn_band_edge(pk + 1, d->band);
                memcpy(ap[gi], rq + hd, sizeof(float) * (size_t)hd);
                am[gi] = rq[2 * hd], al[gi] = rq[2 * hd + 1];
                if (Ek < E) { /* amend: the band between the match's boundary and ours */
                    float bm, bl;
                    attn_range(s, ts, l, h, qp + gi, tp + gi, 1, Ek, E, work, &bm, &bl);
                    kvf_attn_merge(ap[gi], &am[gi], &al[gi], tp[gi], bm, bl, hd);
                }
            }
        } else {
            attn_range(s, ts, l, h, qp, ap, g, 0, E, work, am, al);
        }
        /* remember this step: pre-RoPE query and the state over [0, E) */
        int slot = ts->mac_next[l];
        for (int gi = 0; gi < g; gi++) {
            int64_t k  = ring_at(ts, l, h * g + gi) + slot;
            float  *rq = ts->mac_ring + k * rs;
            memcpy(rq, s->q_pre + r * qd + (int64_t)(h * g + gi) * hd, sizeof(float) * (size_t)hd);
            memcpy(rq + hd, ap[gi], sizeof(float) * (size_t)hd);
            rq[2 * hd] = am[gi], rq[2 * hd + 1] = al[gi];
            ts->mac_pos[k] = P;
        }
        /* complete: the fresh tail [E, e) */
        attn_range(s, ts, l, h, qp, tp, g, E, e, work, tm, tl);
        for (int gi = 0; gi < g; gi++) {
            kvf_attn_merge(ap[gi], &am[gi], &al[gi], tp[gi], tm[gi], tl[gi], hd);
            memcpy(op[gi], ap[gi], sizeof(float) * (size_t)hd);
        }
    }
}

void kvf_attn_decode(kvf_session *s, int l, const kvf_batch *b) {
    mac_ctx c = {.s = s, .l = l, .b = b};
    /* LouisKV: units and boundaries first (clustering runs on the pool) */
    for (int32_t r = 0; r < b->n; r++) {
        kvf_session *ts = b->sess ? b->sess[r] : s;
        if (kvf_louis_applies(&ts->dattn, l, b->kv_end[r])) kvf_louis_prepare(s, ts, l, r, b->kv_end[r]);
    }
    atomic_init(&c.next, 0);
    kvf_pool_run(s->pool, mac_task, &c);
    /* every MAC session of the batch wrote this step into slot mac_next[l] */
    for (int32_t r = 0; r < b->n; r++) {
        kvf_session *ts = b->sess ? b->sess[r] : s;
        int64_t      e  = b->kv_end[r], E = kvf_attn_band_edge(e, ts->dattn.band);
        if (!mac_applies(&ts->dattn, e)) continue;
        ts->mac_next[l] = (ts->mac_next[l] + 1) % ts->dattn.lookback;
        if (E > ts->mac_hi[l]) ts->mac_hi[l] = (int32_t)E;
    }
}
