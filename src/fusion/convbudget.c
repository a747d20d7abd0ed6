/* convbudget.c - bounded conversations after EpiCache (arXiv 2509.17396; kvfuse.h,
 * kvf_session_prefill_budget and kvf_episodes_*): a long chat history is prefilled block by
 * block and evicted to a fixed number of cells, keeping per layer and KV head what a probe text
 * attends to; the probe is the conversation's episode the new question belongs to.
 *
 * Eviction rounds run before a block that would not fit: the probe's rows run through every
 * layer after the cached cells (their K/V land in the cells past n_cells and are dropped), each
 * layer's post-RoPE queries are scored against the cached keys (softmax over those keys only,
 * the maximum over probe rows and the query heads of a KV head, or their sum), the scores are pooled over
 * neighbours, and each head keeps its sink, its recent window and its top cells. Cells then no
 * longer map to one position (s->evicted): the session can only grow or be reset.
 *
 * Episodes: windows of consecutive utterances as tf-idf vectors of their token ids (hashed into
 * 4096 buckets; idf over the windows, so template tokens and function words weigh nothing),
 * clustered by spherical k-means; a question goes to the nearest centroid. EpiCache embeds with a
 * sentence encoder; kvfuse has none, and the serving model's mean input embedding routed worse
 * than the tokens a question shares with its topic (docs/conv-budget.md). */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"
#include "engine/model.h"
#include "engine/threadpool.h"
#include "fusion/convbudget.h"
#include "fusion/select.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

kvf_conv_budget_params kvf_conv_budget_default_params(int32_t budget) {
    return (kvf_conv_budget_params){
        .budget = budget, .block = 256, .sink = 0, .window = 32, .pool = 5};
}

/* ---- probe scoring --------------------------------------------------------------------- */

typedef struct {
    kvf_session *s;
    int l;
    int32_t u, a, nh; /* probe rows (queries in s->q); the layer's cells [a, a + nh) */
    float *score;     /* [n_head_kv][nh] of layer l: running maximum (or sum) */
    const float *roww; /* [u] the probe rows' weights (probe_idf), NULL: 1 each */
    int score_sum;    /* kvf_conv_budget_params.score_sum */
    float *work;      /* per thread: [head_dim][nh] keys + [nh] logits */
    atomic_int_fast64_t next;
} probe_task;

static void probe_head(void *p, int ith, int nth) {
    KVF_UNUSED(nth);
    probe_task *t = p;
    kvf_session *s = t->s;
    const kvf_hparams *hp = &s->m->hp;
    int g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int64_t qd = (int64_t)hp->n_head * hd, nh = t->nh;
    float *kf = t->work + (int64_t)ith * (hd + 1) * nh, *lg = kf + (int64_t)hd * nh;
    float scale = 1.0f / sqrtf((float)hd);
    for (int64_t kh; (kh = kvf_claim(&t->next, hp->n_head_kv)) >= 0;) {
        const void *kt = kvf_kt_at(s, t->l, (int)kh);
        for (int d = 0; d < hd; d++)
            kvf_kt_row(s, kt, d, t->a, nh, kf + (int64_t)d * nh);
        float *sc = t->score + kh * nh;
        for (int32_t r = 0; r < t->u; r++)
            for (int gi = 0; gi < g; gi++) {
                const float *q = s->q + (int64_t)r * qd + (kh * g + gi) * hd;
                memset(lg, 0, sizeof(float) * (size_t)nh);
                for (int d = 0; d < hd; d++)
                    s->K->axpy(q[d] * scale, kf + (int64_t)d * nh, lg, nh);
                float mx = -INFINITY;
                for (int64_t j = 0; j < nh; j++)
                    mx = fmaxf(mx, lg[j]);
                double sum = 0;
                for (int64_t j = 0; j < nh; j++)
                    sum += (lg[j] = expf(lg[j] - mx));
                float inv = (float)((t->roww ? t->roww[r] : 1.0) / sum);
                if (t->score_sum)
                    for (int64_t j = 0; j < nh; j++)
                        sc[j] += lg[j] * inv;
                else
                    for (int64_t j = 0; j < nh; j++)
                        sc[j] = fmaxf(sc[j], lg[j] * inv);
            }
    }
}

/* Cells layer l holds, and their mean over layers rounded up (the memory of that many tokens). */
static int32_t held(const kvf_session *s, int l) {
    return s->n_cells - kvf_cell_start(s, l);
}
static int32_t held_mean(const kvf_session *s, int32_t extra) {
    int L = s->m->hp.n_layer;
    int64_t sum = 0;
    for (int l = 0; l < L; l++)
        sum += held(s, l) + extra;
    return (int32_t)((sum + L - 1) / L);
}

/* Scores of cells [c0, c1) pooled over `half` neighbours each side (within the range) into
 * pool[c0 .. c1). */
static void pool_scores(const float *sc, int32_t c0, int32_t c1, int32_t half, float *pool) {
    for (int32_t j = c0; j < c1; j++) {
        double acc = 0;
        int cnt = 0;
        for (int32_t t = j - half; t <= j + half; t++)
            if (t >= c0 && t < c1) acc += sc[t], cnt++;
        pool[j] = (float)(acc / cnt);
    }
}

typedef struct {
    float g;
    int32_t l;
} gain;

static int by_gain_desc(const void *x, const void *y) {
    const gain *a = x, *b = y;
    return a->g != b->g ? (a->g > b->g ? -1 : 1) : a->l - b->l;
}

static int by_float_desc(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return a != b ? (a > b ? -1 : 1) : 0;
}

/* Adaptive layer budgets (after Ada-KV): the layers' scored cells (between sink and window) share
 * out sum(want[l]) cells by the probe attention mass each would keep. Layer l's gain for its k-th
 * cell is the mean over its KV heads of the k-th largest pooled score (score: pooled already) as
 * a share of the head's total, so a layer whose attention is concentrated on few cells gives up
 * cells to one whose attention is spread. Every layer keeps at least a quarter of want[l] and at
 * most cap cells; the counts come back in want. */
static kvf_status adapt_counts(kvf_session *s, const float *score, int32_t nh, int32_t S_,
                               int32_t W_, int32_t cap, int32_t *want) {
    const kvf_hparams *hp = &s->m->hp;
    int L = hp->n_layer, Hkv = hp->n_head_kv;
    float *pool = kvf_malloc(sizeof(float) * (size_t)nh),
          *mean = kvf_malloc(sizeof(float) * (size_t)nh);
    gain *g = kvf_malloc(sizeof(gain) * (size_t)L * (size_t)nh);
    int32_t *lo = kvf_malloc(sizeof(int32_t) * (size_t)L);
    if (!pool || !mean || !g || !lo) {
        kvf_free(pool), kvf_free(mean), kvf_free(g), kvf_free(lo);
        return kvf_set_error(KVF_E_NOMEM, "out of memory sharing out layer budgets");
    }
    int64_t ng = 0, total = 0, floors = 0;
    for (int l = 0; l < L; l++) {
        int32_t c = held(s, l), S = KVF_MIN(S_, c), W = KVF_MIN(W_, c - S), c0 = S, c1 = c - W;
        int32_t cand = c1 - c0, hi = KVF_MIN(cand, cap), need = KVF_MAX(0, want[l] - S - W);
        lo[l] = KVF_MIN(hi, need / 4);
        total += KVF_MIN(need, cand), floors += lo[l];
        memset(mean, 0, sizeof(float) * (size_t)KVF_MAX(cand, 1));
        for (int kh = 0; kh < Hkv; kh++) {
            memcpy(pool + c0, score + ((int64_t)l * Hkv + kh) * nh + c0,
                   sizeof(float) * (size_t)cand);
            double sum = 0;
            for (int32_t j = c0; j < c1; j++)
                sum += pool[j];
            qsort(pool + c0, (size_t)cand, sizeof(float), by_float_desc);
            for (int32_t k = 0; k < cand; k++)
                mean[k] += (float)(sum > 0 ? pool[c0 + k] / sum : 1.0 / cand) / (float)Hkv;
        }
        for (int32_t k = lo[l]; k < hi; k++)
            g[ng++] = (gain){mean[k], l};
    }
    qsort(g, (size_t)ng, sizeof(gain), by_gain_desc);
    for (int l = 0; l < L; l++)
        want[l] = lo[l];
    for (int64_t i = 0; i < ng && i < total - floors; i++)
        want[g[i].l]++;
    for (int l = 0; l < L; l++) {
        int32_t c = held(s, l), S = KVF_MIN(S_, c);
        want[l] += S + KVF_MIN(W_, c - S); /* the sink and the window on top */
    }
    kvf_free(pool), kvf_free(mean), kvf_free(g), kvf_free(lo);
    return KVF_OK;
}

typedef struct {
    double score;
    int32_t a, n; /* cells [a, a + n) */
} run_score;

static int by_run_score_desc(const void *x, const void *y) {
    const run_score *a = x, *b = y;
    return a->score != b->score ? (a->score > b->score ? -1 : 1) : a->a - b->a;
}

/* chunk > 0 (every layer holds the same nh cells): the cells between sink and window that every
 * head keeps, k - sink - window of them, as whole runs of `chunk` cells ranked by the sum over
 * their cells of each head's pooled scores as shares of that head's total; the best run that no
 * longer fits is cut. They go to idx[nh ..] in order; returns how many (0 without chunks, -1
 * out of memory). */
static int32_t chunk_select(kvf_session *s, const float *score, int32_t nh, int32_t k,
                            const kvf_conv_budget_params *p, int32_t *idx) {
    if (p->chunk <= 0) return 0;
    const kvf_hparams *hp = &s->m->hp;
    int L = hp->n_layer, Hkv = hp->n_head_kv;
    int32_t S = KVF_MIN(p->sink, nh), W = KVF_MIN(p->window, nh - S), c0 = S, c1 = nh - W;
    int32_t need = KVF_MAX(0, KVF_MIN(k, nh) - S - W), nr = (c1 - c0 + p->chunk - 1) / p->chunk;
    run_score *r = kvf_calloc((size_t)(nr > 0 ? nr : 1), sizeof(run_score));
    int32_t *out = idx + nh, n = 0;
    if (!r) return -1;
    for (int32_t i = 0; i < nr; i++)
        r[i].a = c0 + i * p->chunk, r[i].n = KVF_MIN(p->chunk, c1 - r[i].a);
    for (int64_t h = 0; h < (int64_t)L * Hkv; h++) {
        const float *sc = score + h * nh;
        double tot = 0;
        for (int32_t j = c0; j < c1; j++)
            tot += sc[j];
        if (!(tot > 0)) continue;
        for (int32_t i = 0; i < nr; i++) {
            double acc = 0;
            for (int32_t j = r[i].a; j < r[i].a + r[i].n; j++)
                acc += sc[j];
            r[i].score += acc / tot;
        }
    }
    qsort(r, (size_t)nr, sizeof(run_score), by_run_score_desc);
    for (int32_t i = 0; i < nr && n < need; i++)
        for (int32_t j = r[i].a; j < r[i].a + r[i].n && n < need; j++)
            out[n++] = j;
    qsort(out, (size_t)n, sizeof(int32_t), kvf_by_index);
    kvf_free(r);
    return n;
}

/* Run the probe after the cells, then keep keep_n[l] cells of each KV head of layer l: its sink,
 * its window and its top pooled scores, in order. With equal counts the cells stay at 0 ..;
 * otherwise every layer's cells end at the largest count and start at a key tile, so a layer
 * keeps up to 63 cells fewer than it may. */
static kvf_status probe_evict(kvf_session *s, const int32_t *probe, const float *roww,
                              int32_t np, int32_t *keep_n, int32_t cap,
                              const kvf_conv_budget_params *p) {
    const kvf_hparams *hp = &s->m->hp;
    int L = hp->n_layer, Hkv = hp->n_head_kv, hd = hp->head_dim;
    int32_t nh = s->n_cells, nth = kvf_session_threads(s), top = 0, uniform = !p->layer_adapt;
    float *score = kvf_calloc((size_t)L * (size_t)Hkv * (size_t)nh, sizeof(float));
    float *work =
        kvf_malloc(sizeof(float) * (size_t)(nth > 0 ? nth : 1) * (size_t)(hd + 1) * (size_t)nh);
    float *pool = kvf_malloc(sizeof(float) * (size_t)nh);
    int32_t *idx = kvf_malloc(sizeof(int32_t) * (size_t)nh * 2); /* [nh] + chunk_select's */
    if (!score || !work || !pool || !idx) {
        kvf_free(score), kvf_free(work), kvf_free(pool), kvf_free(idx);
        return kvf_set_error(KVF_E_NOMEM, "out of memory scoring a conversation's cells");
    }
    for (int32_t i0 = 0; i0 < np; i0 += s->U) {
        int32_t u = KVF_MIN(s->U, np - i0);
        for (int32_t i = 0; i < u; i++) {
            s->b_pos[i] = s->n_past + i0 + i;
            s->b_cell[i] = nh + i0 + i;
            s->b_end[i] = nh + i0 + i + 1;
        }
        kvf_batch b = {u, s->b_pos, s->b_cell, s->b_end, NULL};
        kvf_fwd_embed(s, probe + i0, u, s->x);
        kvf_fwd_rope_tables(s, &b);
        for (int l = 0; l < L; l++) {
            kvf_fwd_qkv(s, l, s->x, &b, NULL, NULL);
            probe_task t = {.s = s,
                            .l = l,
                            .u = u,
                            .a = kvf_cell_start(s, l),
                            .nh = held(s, l),
                            .score = score + (int64_t)l * Hkv * nh,
                            .score_sum = p->score_sum,
                            .roww = roww ? roww + i0 : NULL,
                            .work = work};
            atomic_init(&t.next, 0);
            kvf_pool_run(s->pool, probe_head, &t);
            if (l + 1 < L) {
                kvf_fwd_attn_out(s, l, s->x, &b);
                kvf_fwd_mlp(s, l, s->x, u);
            }
        }
    }
    /* every head's scores pooled once, in place, between its layer's sink and window */
    int32_t half = p->pool > 1 ? p->pool / 2 : 0;
    for (int l = 0; l < L; l++) {
        int32_t c = held(s, l), S = KVF_MIN(p->sink, c), W = KVF_MIN(p->window, c - S);
        for (int kh = 0; kh < Hkv; kh++) {
            float *sc = score + ((int64_t)l * Hkv + kh) * nh;
            pool_scores(sc, S, c - W, half, pool);
            memcpy(sc + S, pool + S, sizeof(float) * (size_t)(c - W - S));
        }
    }
    kvf_status rc = KVF_OK;
    int32_t n_sel = chunk_select(s, score, nh, keep_n[0], p, idx);
    if (n_sel < 0) rc = kvf_set_error(KVF_E_NOMEM, "out of memory ranking runs of cells");
    if (rc == KVF_OK && p->layer_adapt) /* keep_n's total shared out by attention mass */
        rc = adapt_counts(s, score, nh, p->sink, p->window, cap - p->sink - p->window, keep_n);
    for (int l = 0; l < L && rc == KVF_OK; l++) {
        top = KVF_MAX(top, KVF_MIN(keep_n[l], held(s, l)));
        uniform &= keep_n[l] == keep_n[0] && kvf_cell_start(s, l) == 0;
    }
    for (int l = 0; l < L && rc == KVF_OK; l++) {
        /* the layer's cells [a, nh) as 0 .. c-1; what it keeps ends at `top`, tile-aligned */
        int32_t a = kvf_cell_start(s, l), c = nh - a;
        int32_t k = KVF_MIN(keep_n[l], c), dst = 0;
        if (!uniform) {
            dst = (top - k + KVF_ATTN_BK - 1) / KVF_ATTN_BK * KVF_ATTN_BK;
            k = top - dst;
        }
        int32_t S = KVF_MIN(p->sink, c), W = KVF_MIN(p->window, c - S), c0 = S, c1 = c - W;
        int32_t need = KVF_MAX(0, k - S - W);
        for (int kh = 0; kh < Hkv; kh++) {
            int32_t n = 0;
            if (p->chunk > 0) { /* the same cells for every head (chunk_select, below idx + nh) */
                n = KVF_MIN(n_sel, need);
                memcpy(idx, idx + nh, sizeof(int32_t) * (size_t)n);
            } else {
                for (int32_t j = c0; j < c1; j++)
                    idx[n++] = j;
                qsort_r(idx, (size_t)n, sizeof(int32_t), kvf_by_score_desc,
                        score + ((int64_t)l * Hkv + kh) * nh);
                n = KVF_MIN(need, n);
                qsort(idx, (size_t)n, sizeof(int32_t), kvf_by_index);
            }
            /* keep = [0, S) + the chosen + [c1, c), ascending: shift the chosen up by S */
            memmove(idx + S, idx, sizeof(int32_t) * (size_t)n);
            for (int32_t j = 0; j < S; j++)
                idx[j] = j;
            for (int32_t j = c1; j < c; j++)
                idx[S + n + (j - c1)] = j;
            int32_t kept = S + n + W;
            for (int32_t j = 0; j < kept; j++)
                idx[j] += a; /* back to cell indices */
            /* down to 0 first (always safe), then up to the layer's start */
            kvf_cells_compact_head(s, l, kh, idx, kept, 0);
            if (dst > 0) {
                for (int32_t j = 0; j < kept; j++)
                    idx[j] = j;
                kvf_cells_compact_head(s, l, kh, idx, kept, dst);
            }
        }
        s->cell_start[l] = dst;
    }
    if (rc == KVF_OK) {
        s->n_cells = uniform ? KVF_MIN(keep_n[0], nh) : top;
        s->evicted = 1;
    }
    kvf_free(score), kvf_free(work), kvf_free(pool), kvf_free(idx);
    return rc;
}

/* probe_idf: w[r] for probe row r from the number of the history's blocks holding its token */
static void probe_row_weights(const int32_t *ids, int32_t n, int32_t block, const int32_t *probe,
                              int32_t np, float *w, uint8_t *seen) {
    int32_t nb = (n + block - 1) / block;
    for (int32_t r = 0; r < np; r++)
        w[r] = 0;
    for (int32_t b0 = 0; b0 < n; b0 += block) {
        memset(seen, 0, (size_t)np);
        for (int32_t i = b0; i < KVF_MIN(n, b0 + block); i++)
            for (int32_t r = 0; r < np; r++)
                seen[r] |= ids[i] == probe[r];
        for (int32_t r = 0; r < np; r++)
            w[r] += seen[r]; /* df, counted in w for now */
    }
    double lg = log((double)nb + 1);
    for (int32_t r = 0; r < np; r++)
        w[r] = (float)(0.1 + 0.9 * (lg > 0 ? log((nb + 1.0) / (w[r] + 1.0)) / lg : 1.0));
}

kvf_status kvf_session_prefill_budget(kvf_session *s, const int32_t *ids, int32_t n,
                                      const int32_t *probe, int32_t n_probe,
                                      const kvf_conv_budget_params *p, kvf_conv_budget_stats *st) {
    int32_t done = 0;
    return kvf_session_prefill_budget_part(s, ids, n, probe, n_probe, p, 0, &done, st);
}

kvf_status kvf_session_prefill_budget_part(kvf_session *s, const int32_t *ids, int32_t n,
                                           const int32_t *probe, int32_t n_probe,
                                           const kvf_conv_budget_params *p, int32_t max_tokens,
                                           int32_t *done, kvf_conv_budget_stats *st) {
    kvf_conv_budget_stats local;
    if (!st) {
        if (done && *done > 0)
            return kvf_set_error(KVF_E_INVAL, "kvf_session_prefill_budget_part: a later part "
                                              "needs the earlier parts' stats");
        st = &local;
    }
    if (!s || !p || !done || (!ids && n > 0) || n < 0 || (probe && n_probe < 1) ||
        (!probe && n_probe != 0) || *done < 0 || *done > n)
        return kvf_set_error(KVF_E_INVAL, "kvf_session_prefill_budget: bad arguments");
    if (*done == 0) {
        memset(st, 0, sizeof *st);
        if (s->n_cells != 0 || s->n_past != 0)
            return kvf_set_error(KVF_E_INVAL,
                                 "kvf_session_prefill_budget: the session must be empty "
                                 "(it holds %d tokens; truncate it to 0 first)",
                                 s->n_past);
    } else if (s->n_past != *done || st->blocks < 1) { /* changed since the part before */
        return kvf_set_error(KVF_E_INVAL,
                             "kvf_session_prefill_budget_part: the session holds %d tokens, "
                             "not the %d the earlier parts prefilled",
                             s->n_past, *done);
    }
    if (kvf_session_attn(s).mode != KVF_ATTN_DENSE)
        return kvf_set_error(KVF_E_INVAL, "a conversation budget needs dense prefill attention");
    if (kvf_session_decode_attn(s).mode == KVF_DECODE_LOUIS) /* its index is of uncompacted cells */
        return kvf_set_error(KVF_E_INVAL, "a conversation budget cannot be combined with LouisKV "
                                          "decode attention");
    if (p->chunk < 0 || (p->chunk > 0 && (p->layer_budget || p->layer_adapt)))
        return kvf_set_error(KVF_E_INVAL,
                             "conversation budget: chunk %d (>= 0; whole runs of cells for every "
                             "head need one budget for every layer, no layer budgets or adaptive "
                             "shares)",
                             p->chunk);
    if (p->block < 1 || p->sink < 0 || p->window < 0 || p->pool < 1 || p->pool > 64)
        return kvf_set_error(KVF_E_INVAL,
                             "conversation budget: block %d, sink %d, window %d, pool %d "
                             "(block >= 1, sink and window >= 0, pool 1..64)",
                             p->block, p->sink, p->window, p->pool);
    int32_t npc = kvf_conv_probe_cells(p, n_probe); /* probe cells an eviction needs */
    /* sink + window + block + probe + 16; a layer budget needs a key tile more */
    int64_t least = (int64_t)kvf_conv_layer_min_budget(p, n_probe) - KVF_ATTN_BK;
    if (p->budget < least)
        return kvf_set_error(KVF_E_INVAL,
                             "conversation budget of %d tokens is too small: sink %d + "
                             "window %d + block %d + probe %d + 16 = %lld",
                             p->budget, p->sink, p->window, p->block, npc, (long long)least);
    if (p->budget > s->n_ctx)
        return kvf_set_error(KVF_E_CTX_FULL,
                             "conversation budget of %d tokens exceeds the "
                             "session's %d cells",
                             p->budget, s->n_ctx);
    int L = s->m->hp.n_layer;
    if (p->layer_budget) { /* each layer's own, mean at most the budget; tile rounding: + 64 */
        int64_t sum = 0;
        for (int l = 0; l < L; l++) {
            int32_t M = p->layer_budget[l];
            if (M < least + KVF_ATTN_BK || M > s->n_ctx)
                return kvf_set_error(M > s->n_ctx ? KVF_E_CTX_FULL : KVF_E_INVAL,
                                     "layer %d's budget of %d tokens is outside %lld..%d "
                                     "(sink + window + block + probe + 16 + 64 .. the "
                                     "session's cells)",
                                     l, M, (long long)(least + KVF_ATTN_BK), s->n_ctx);
            sum += M;
        }
        if (sum > (int64_t)p->budget * L)
            return kvf_set_error(KVF_E_INVAL,
                                 "the layer budgets hold %lld cells, more than %d layers x "
                                 "the budget of %d",
                                 (long long)sum, L, p->budget);
    }
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= s->m->hp.n_vocab)
            return kvf_set_error(KVF_E_INVAL, "token id %d at index %d is outside 0..%d", ids[i], i,
                                 s->m->hp.n_vocab - 1);
    for (int32_t i = 0; probe && i < n_probe; i++)
        if (probe[i] < 0 || probe[i] >= s->m->hp.n_vocab)
            return kvf_set_error(KVF_E_INVAL, "probe token id %d at index %d is outside 0..%d",
                                 probe[i], i, s->m->hp.n_vocab - 1);
    int32_t *keep = kvf_malloc(sizeof(int32_t) * (size_t)L);
    /* probe_idf: the rows' weights; a given probe's once, the recent window's every round */
    int32_t nw = KVF_MAX(1, probe ? n_probe : npc);
    float *w = p->probe_idf ? kvf_malloc(sizeof(float) * (size_t)nw) : NULL;
    uint8_t *seen = p->probe_idf ? kvf_malloc((size_t)nw) : NULL;
    if (!keep || (p->probe_idf && (!w || !seen))) {
        kvf_free(keep), kvf_free(w), kvf_free(seen);
        return kvf_set_error(KVF_E_NOMEM, "out of memory for layer budgets and probe weights");
    }
    if (w && probe) probe_row_weights(ids, n, p->block, probe, n_probe, w, seen);
    kvf_status rc = KVF_OK;
    int32_t pos = *done, stop = max_tokens > 0 && max_tokens < n - pos ? pos + max_tokens : n;
    while (pos < stop && rc == KVF_OK) {
        int32_t b = KVF_MIN(p->block, n - pos);
        /* some layer would not fit the block and the probe (adaptive: the layers together, or
         * one past the session's cells) */
        int over = 0;
        int64_t sum_held = 0, sum_keep = 0;
        for (int l = 0; l < L; l++) {
            int32_t M = p->layer_budget ? p->layer_budget[l] : p->budget;
            keep[l] = M - b - npc;
            sum_held += held(s, l), sum_keep += keep[l];
            over |= p->layer_adapt ? held(s, l) > s->n_ctx - b - npc : held(s, l) > keep[l];
        }
        over |= p->layer_adapt && sum_held > sum_keep;
        if (over) {
            double t0 = kvf_time_ms();
            const int32_t *pr = probe ? probe : ids + pos - KVF_MIN(npc, pos);
            int32_t np = probe ? n_probe : KVF_MIN(npc, pos);
            st->peak_cells = KVF_MAX(st->peak_cells, held_mean(s, np));
            if (w && !probe) probe_row_weights(ids, n, p->block, pr, np, w, seen);
            rc = probe_evict(s, pr, w, np, keep, s->n_ctx - b - npc, p);
            kvf_session_trim(s); /* the pages of the evicted cells go back */
            st->evictions++;
            st->probe_ms += kvf_time_ms() - t0;
            if (rc != KVF_OK) break;
        }
        double t0 = kvf_time_ms();
        rc = kvf_session_eval(s, ids + pos, b, 0);
        st->prefill_ms += kvf_time_ms() - t0;
        st->blocks++;
        st->peak_cells = KVF_MAX(st->peak_cells, held_mean(s, 0));
        pos += b;
    }
    kvf_free(keep), kvf_free(w), kvf_free(seen);
    st->cells = held_mean(s, 0);
    *done = rc == KVF_OK ? pos : 0;
    if (rc != KVF_OK) kvf_session_truncate(s, 0); /* a partial history is nobody's */
    return rc;
}

/* ---- episodes -------------------------------------------------------------------------- */

#define EPI_DIM 4096 /* hashed term buckets */

struct kvf_episodes {
    int32_t n_ep, n_win, n_utt, n, win, n_vocab;
    int32_t *ids;    /* [n] the history */
    int32_t *utt;    /* [n_utt + 1] utterance starts, utt[n_utt] = n */
    int32_t *win_u0; /* [n_win] first utterance of each window */
    int32_t *win_ep; /* [n_win] episode */
    float *win_sim;  /* [n_win] cosine to the episode's centroid */
    float *idf;      /* [n_vocab]: log((1 + N) / (1 + df)), 0 for tokens of no window */
    float *centroid; /* [n_ep][EPI_DIM] unit */
};

void kvf_episodes_free(kvf_episodes *e) {
    if (!e) return;
    kvf_free(e->ids), kvf_free(e->utt), kvf_free(e->win_u0), kvf_free(e->win_ep);
    kvf_free(e->win_sim), kvf_free(e->idf), kvf_free(e->centroid);
    kvf_free(e);
}

int32_t kvf_episodes_count(const kvf_episodes *e) {
    return e ? e->n_ep : 0;
}

static uint32_t bucket(int32_t tok) {
    return ((uint32_t)tok * 2654435761u) >> 20; /* 12 bits: EPI_DIM */
}

/* tf-idf of toks[0..n) hashed into out[EPI_DIM], sublinear tf (1 + ln tf), unit length. The
 * term counts use `cnt` ([n_vocab], zero on entry and on return). */
static void tfidf(const kvf_episodes *e, const int32_t *toks, int32_t n, int32_t *cnt, float *out) {
    memset(out, 0, sizeof(float) * EPI_DIM);
    for (int32_t i = 0; i < n; i++)
        cnt[toks[i]]++;
    for (int32_t i = 0; i < n; i++) {
        int32_t t = toks[i];
        if (cnt[t] == 0) continue; /* counted already */
        out[bucket(t)] += (1.0f + logf((float)cnt[t])) * e->idf[t];
        cnt[t] = 0;
    }
    double n2 = 0;
    for (int d = 0; d < EPI_DIM; d++)
        n2 += (double)out[d] * out[d];
    float inv = n2 > 0 ? (float)(1.0 / sqrt(n2)) : 0.0f;
    for (int d = 0; d < EPI_DIM; d++)
        out[d] *= inv;
}

static float dot(const float *a, const float *b) {
    double acc = 0;
    for (int d = 0; d < EPI_DIM; d++)
        acc += (double)a[d] * b[d];
    return (float)acc;
}

static int32_t win_start(const kvf_episodes *e, int32_t w) {
    return e->utt[e->win_u0[w]];
}
static int32_t win_end(const kvf_episodes *e, int32_t w) {
    return e->utt[KVF_MIN(e->win_u0[w] + e->win, e->n_utt)];
}

kvf_status kvf_episodes_build(const kvf_model *m, const int32_t *ids, int32_t n, const int32_t *utt,
                              int32_t n_utt, int32_t win, int32_t n_episodes, kvf_episodes **out) {
    if (out) *out = NULL;
    if (!m || !ids || n < 1 || !utt || n_utt < 1 || win < 1 || n_episodes < 1 || !out)
        return kvf_set_error(KVF_E_INVAL, "kvf_episodes_build: bad arguments");
    const int32_t V = m->hp.n_vocab;
    for (int32_t i = 0; i < n_utt; i++)
        if (utt[i] < 0 || utt[i] >= n || (i > 0 && utt[i] <= utt[i - 1]))
            return kvf_set_error(KVF_E_INVAL,
                                 "utterance %d starts at %d: starts must ascend within "
                                 "0..%d",
                                 i, utt[i], n - 1);
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return kvf_set_error(KVF_E_INVAL, "token id %d at index %d is outside 0..%d", ids[i], i,
                                 V - 1);
    kvf_episodes *e = kvf_calloc(1, sizeof *e);
    if (!e) return kvf_set_error(KVF_E_NOMEM, "out of memory for episodes");
    int32_t stride = KVF_MAX(win / 2, 1);
    e->n = n, e->n_utt = n_utt, e->win = KVF_MIN(win, n_utt), e->n_vocab = V;
    e->n_win = n_utt <= e->win ? 1 : (n_utt - e->win + stride - 1) / stride + 1;
    e->n_ep = KVF_MIN(n_episodes, e->n_win);
    e->ids = kvf_malloc(sizeof(int32_t) * (size_t)n);
    e->utt = kvf_malloc(sizeof(int32_t) * (size_t)(n_utt + 1));
    e->win_u0 = kvf_malloc(sizeof(int32_t) * (size_t)e->n_win);
    e->win_ep = kvf_calloc((size_t)e->n_win, sizeof(int32_t));
    e->win_sim = kvf_calloc((size_t)e->n_win, sizeof(float));
    e->idf = kvf_calloc((size_t)V, sizeof(float));
    e->centroid = kvf_malloc(sizeof(float) * (size_t)e->n_ep * EPI_DIM);
    float *vec = kvf_malloc(sizeof(float) * (size_t)e->n_win * EPI_DIM);
    float *acc = kvf_malloc(sizeof(float) * (size_t)e->n_ep * EPI_DIM);
    int32_t *cnt = kvf_calloc((size_t)V, sizeof(int32_t)),
            *seen = kvf_malloc(sizeof(int32_t) * (size_t)V);
    if (!e->ids || !e->utt || !e->win_u0 || !e->win_ep || !e->win_sim || !e->idf || !e->centroid ||
        !vec || !acc || !cnt || !seen) {
        kvf_free(vec), kvf_free(acc), kvf_free(cnt), kvf_free(seen);
        kvf_episodes_free(e);
        return kvf_set_error(KVF_E_NOMEM, "out of memory for episodes");
    }
    memcpy(e->ids, ids, sizeof(int32_t) * (size_t)n);
    memcpy(e->utt, utt, sizeof(int32_t) * (size_t)n_utt);
    e->utt[n_utt] = n;
    for (int32_t w = 0; w < e->n_win; w++)
        e->win_u0[w] = KVF_MIN(w * stride, n_utt - e->win);
    /* document frequency over the windows (cnt as df for now) */
    for (int32_t t = 0; t < V; t++)
        seen[t] = -1;
    for (int32_t w = 0; w < e->n_win; w++)
        for (int32_t i = win_start(e, w); i < win_end(e, w); i++)
            if (seen[ids[i]] != w) seen[ids[i]] = w, cnt[ids[i]]++;
    for (int32_t t = 0; t < V; t++) {
        e->idf[t] = cnt[t] ? (float)log((1.0 + e->n_win) / (1.0 + cnt[t])) : 0.0f;
        cnt[t] = 0;
    }
    for (int32_t w = 0; w < e->n_win; w++)
        tfidf(e, ids + win_start(e, w), win_end(e, w) - win_start(e, w), cnt,
              vec + (int64_t)w * EPI_DIM);
    /* spherical k-means: farthest-point start from window 0, then Lloyd iterations */
    memcpy(e->centroid, vec, sizeof(float) * EPI_DIM);
    for (int32_t c = 1; c < e->n_ep; c++) {
        int32_t best = 0;
        float lo = INFINITY;
        for (int32_t w = 0; w < e->n_win; w++) {
            float hi = -INFINITY;
            for (int32_t k = 0; k < c; k++)
                hi = fmaxf(hi, dot(vec + (int64_t)w * EPI_DIM, e->centroid + (int64_t)k * EPI_DIM));
            if (hi < lo) lo = hi, best = w;
        }
        memcpy(e->centroid + (int64_t)c * EPI_DIM, vec + (int64_t)best * EPI_DIM,
               sizeof(float) * EPI_DIM);
    }
    for (int it = 0; it < 50; it++) {
        int changed = 0;
        for (int32_t w = 0; w < e->n_win; w++) {
            int32_t best = 0;
            float bs = -INFINITY;
            for (int32_t k = 0; k < e->n_ep; k++) {
                float v = dot(vec + (int64_t)w * EPI_DIM, e->centroid + (int64_t)k * EPI_DIM);
                if (v > bs) bs = v, best = k;
            }
            changed += it == 0 || e->win_ep[w] != best;
            e->win_ep[w] = best, e->win_sim[w] = bs;
        }
        if (!changed) break;
        memset(acc, 0, sizeof(float) * (size_t)e->n_ep * EPI_DIM);
        for (int32_t w = 0; w < e->n_win; w++)
            for (int d = 0; d < EPI_DIM; d++)
                acc[(int64_t)e->win_ep[w] * EPI_DIM + d] += vec[(int64_t)w * EPI_DIM + d];
        for (int32_t k = 0; k < e->n_ep; k++) {
            float *a = acc + (int64_t)k * EPI_DIM;
            double n2 = 0;
            for (int d = 0; d < EPI_DIM; d++)
                n2 += (double)a[d] * a[d];
            if (n2 <= 0) continue; /* empty: keeps its centroid */
            for (int d = 0; d < EPI_DIM; d++)
                e->centroid[(int64_t)k * EPI_DIM + d] = (float)(a[d] / sqrt(n2));
        }
    }
    kvf_free(vec), kvf_free(acc), kvf_free(cnt), kvf_free(seen);
    *out = e;
    return KVF_OK;
}

int32_t kvf_episodes_route(const kvf_episodes *e, const int32_t *q, int32_t nq, float *sim) {
    if (!e || !q || nq < 1) return -1;
    for (int32_t i = 0; i < nq; i++)
        if (q[i] < 0 || q[i] >= e->n_vocab) return -1;
    float *v = kvf_malloc(sizeof(float) * EPI_DIM);
    int32_t *cnt = kvf_calloc((size_t)e->n_vocab, sizeof(int32_t));
    if (!v || !cnt) {
        kvf_free(v), kvf_free(cnt);
        return -1;
    }
    tfidf(e, q, nq, cnt, v);
    int32_t best = 0;
    float bs = -INFINITY;
    for (int32_t k = 0; k < e->n_ep; k++) {
        float x = dot(v, e->centroid + (int64_t)k * EPI_DIM);
        if (x > bs) bs = x, best = k;
    }
    kvf_free(v), kvf_free(cnt);
    if (sim) *sim = bs;
    return best;
}

int32_t kvf_episodes_probe(const kvf_episodes *e, int32_t ep, int32_t *out, int32_t max) {
    if (!e || ep < 0 || ep >= e->n_ep || !out || max < 1) return -1;
    /* the episode's windows by similarity, then their utterances (each once) while they fit */
    int32_t *w_ord = kvf_malloc(sizeof(int32_t) * (size_t)e->n_win);
    uint8_t *take = kvf_calloc((size_t)e->n_utt, 1);
    if (!w_ord || !take) {
        kvf_free(w_ord), kvf_free(take);
        return -1;
    }
    int32_t nw = 0, room = max;
    for (int32_t w = 0; w < e->n_win; w++)
        if (e->win_ep[w] == ep) w_ord[nw++] = w;
    /* most similar first, then earlier */
    qsort_r(w_ord, (size_t)nw, sizeof(int32_t), kvf_by_score_desc, e->win_sim);
    for (int32_t i = 0; i < nw && room > 0; i++)
        for (int32_t u = e->win_u0[w_ord[i]];
             u < KVF_MIN(e->win_u0[w_ord[i]] + e->win, e->n_utt) && room > 0; u++)
            if (!take[u]) {
                take[u] = 1;
                room -= KVF_MIN(room, e->utt[u + 1] - e->utt[u]);
            }
    int32_t n = 0;
    for (int32_t u = 0; u < e->n_utt && n < max; u++)
        if (take[u])
            for (int32_t i = e->utt[u]; i < e->utt[u + 1] && n < max; i++)
                out[n++] = e->ids[i];
    kvf_free(w_ord), kvf_free(take);
    return n;
}
