/* test_convbudget.c - bounded conversations (EpiCache; kvf_session_prefill_budget and
 * kvf_episodes_*) on synthetic models.
 *
 * - the budget is never exceeded, whatever the block, probe and history lengths, and the
 *   session goes on answering afterwards;
 * - with a budget the history fits in, nothing is evicted and the logits are dense prefill's;
 * - one eviction round, recomputed by hand at layer 0 (the probe's queries over the cached keys,
 *   max over rows and query heads, pooled): every head keeps exactly its sink, its window and
 *   its top-scored cells, in order;
 * - episodes (tf-idf of token ids): utterances about three disjoint token "topics" cluster into
 *   three episodes, a
 *   question made of one topic's tokens is routed to that topic's episode, and its probe is
 *   taken from that topic's utterances;
 * - bad arguments are refused with clear errors. */
#include "harness.h"
#include "synth.h"

#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"
#include "kvfuse.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HD 32

static kvf_model *load_synth(const char *tag, uint64_t seed) {
    synth_cfg cfg = {.n_embd = HD * 4, .n_head = 4, .n_head_kv = 2, .n_ctx = 2048, .seed = seed};
    kvf_model *m = synth_model_load(&cfg, tag);
    if (!m) T_FAILMSG("synthetic model: %s", kvf_errmsg());
    return m;
}

static kvf_session *new_session(kvf_model *m, int ubatch) {
    kvf_session *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2, sp.n_ubatch = ubatch;
    if (kvf_session_new(m, &sp, &s) != KVF_OK) {
        T_FAILMSG("session: %s", kvf_errmsg());
        return NULL;
    }
    return s;
}

static void make_ids(int32_t *ids, int n, int salt) {
    for (int i = 0; i < n; i++)
        ids[i] = 32 + (i * 7 + i / 13 + salt) % 90;
}

static void test_never_exceeds(void) {
    kvf_model *m = load_synth("cap", 11);
    if (!m) return;
    kvf_session *s = new_session(m, 64);
    int32_t ids[1200], probe[40], q[12];
    make_ids(ids, 1200, 0), make_ids(probe, 40, 5), make_ids(q, 12, 9);
    struct {
        int n, block, budget, np, sink, window;
    } cases[] = {{1200, 64, 300, 16, 8, 16},  {1200, 100, 260, 40, 0, 0},  {777, 37, 200, 1, 3, 5},
                 {1200, 256, 600, 0, 20, 32}, {500, 128, 2048, 16, 0, 32}, {65, 64, 200, 16, 4, 8}};
    for (size_t ca = 0; ca < 2 * sizeof cases / sizeof cases[0]; ca++) {
        size_t c = ca / 2; /* each case uniform, then with adaptive layer shares */
        kvf_conv_budget_params p = kvf_conv_budget_default_params(cases[c].budget);
        p.block = cases[c].block, p.sink = cases[c].sink, p.window = cases[c].window;
        p.layer_adapt = (int)(ca % 2);
        kvf_conv_budget_stats st;
        kvf_session_truncate(s, 0);
        kvf_status rc = kvf_session_prefill_budget(s, ids, cases[c].n, cases[c].np ? probe : NULL,
                                                   cases[c].np, &p, &st);
        CHECK_EQ(rc, KVF_OK);
        if (rc != KVF_OK) {
            T_FAILMSG("case %zu: %s", c, kvf_errmsg());
            continue;
        }
        int npc = cases[c].np ? cases[c].np : (cases[c].window > 16 ? cases[c].window : 16);
        CHECK(st.peak_cells <= cases[c].budget);
        CHECK(st.cells <= cases[c].budget - npc);
        int64_t held = 0; /* cells over layers */
        for (int l = 0; l < m->hp.n_layer; l++)
            held += s->n_cells - s->cell_start[l];
        CHECK_EQ(st.cells, (held + m->hp.n_layer - 1) / m->hp.n_layer);
        if (!p.layer_adapt) CHECK_EQ(st.cells, s->n_cells);
        CHECK_EQ(kvf_session_n_past(s), cases[c].n); /* positions run on past evicted cells */
        CHECK_EQ(st.blocks, (cases[c].n + cases[c].block - 1) / cases[c].block);
        if (cases[c].n + npc <= cases[c].budget)
            CHECK_EQ(st.evictions, 0);
        else
            CHECK(st.evictions > 0 && s->evicted);
        /* the session answers on: the question and a few decoded tokens */
        CHECK_EQ(kvf_session_eval(s, q, 12, 0), KVF_OK);
        const float *lg = kvf_session_logits(s, -1);
        int ok = lg != NULL;
        for (int32_t v = 0; ok && v < kvf_model_n_vocab(m); v++)
            ok = isfinite(lg[v]);
        CHECK(ok);
        /* a kept window, then only appending or a full reset */
        CHECK_EQ(kvf_session_truncate(s, 5) == KVF_OK, !s->evicted);
    }
    kvf_session_free(s);
    kvf_model_free(m);
}

static void test_no_eviction_is_dense(void) {
    kvf_model *m = load_synth("dense", 12);
    if (!m) return;
    kvf_session *a = new_session(m, 64), *b = new_session(m, 64);
    int32_t ids[600], probe[16];
    make_ids(ids, 600, 3), make_ids(probe, 16, 1);
    kvf_conv_budget_params p = kvf_conv_budget_default_params(600 + 16);
    p.block = 100;
    kvf_conv_budget_stats st;
    CHECK_EQ(kvf_session_prefill_budget(a, ids, 600, probe, 16, &p, &st), KVF_OK);
    CHECK_EQ(st.evictions, 0);
    CHECK_EQ(kvf_session_eval(b, ids, 600, 0), KVF_OK);
    int32_t nv = kvf_model_n_vocab(m);
    double d = 0;
    for (int32_t v = 0; v < nv; v++)
        d = fmax(d, fabs((double)kvf_session_logits(a, -1)[v] - kvf_session_logits(b, -1)[v]));
    CHECK(d < 1e-4);
    if (d >= 1e-4) T_FAILMSG("no eviction: max logit difference to dense prefill %.2e", d);
    kvf_session_free(a), kvf_session_free(b);
    kvf_model_free(m);
}

/* The history in parts (kvf_session_prefill_budget_part, as serve interleaves it with other
 * work) computes exactly what one call does: the same cells, stats and logits; a session changed
 * between parts is refused. */
static void test_parts_equal_one_call(void) {
    kvf_model *m = load_synth("parts", 14);
    if (!m) return;
    kvf_session *a = new_session(m, 64), *b = new_session(m, 64);
    int32_t ids[1100], probe[12], q[9];
    make_ids(ids, 1100, 4), make_ids(probe, 12, 2), make_ids(q, 9, 7);
    for (int adapt = 0; adapt < 2 && a && b; adapt++) {
        kvf_conv_budget_params p = kvf_conv_budget_default_params(360);
        p.block = 96, p.sink = 6, p.window = 16, p.layer_adapt = adapt;
        kvf_conv_budget_stats sa, sb;
        kvf_session_truncate(a, 0), kvf_session_truncate(b, 0);
        CHECK_EQ(kvf_session_prefill_budget(a, ids, 1100, probe, 12, &p, &sa), KVF_OK);
        int32_t done = 0, parts = 0, last = 0;
        kvf_status rc = KVF_OK;
        while (rc == KVF_OK && done < 1100 && parts < 100) {
            rc = kvf_session_prefill_budget_part(b, ids, 1100, probe, 12, &p, 150, &done, &sb);
            parts++;
            /* whole blocks, at least 150 tokens a part (fewer only at the end) */
            CHECK(done == 1100 || (done - last >= 150 && done % 96 == 0));
            last = done;
        }
        CHECK_EQ(rc, KVF_OK);
        CHECK_EQ(parts, 6); /* 2 blocks a part: 192, 384, ..., 960, then the last 140 */
        CHECK_EQ(sb.blocks, sa.blocks);
        CHECK_EQ(sb.evictions, sa.evictions);
        CHECK_EQ(sb.peak_cells, sa.peak_cells);
        CHECK_EQ(sb.cells, sa.cells);
        CHECK_EQ(b->n_cells, a->n_cells);
        CHECK_EQ(kvf_session_n_past(b), 1100);
        for (int l = 0; l < m->hp.n_layer; l++)
            CHECK_EQ(b->cell_start[l], a->cell_start[l]);
        CHECK_EQ(kvf_session_eval(a, q, 9, 0), KVF_OK);
        CHECK_EQ(kvf_session_eval(b, q, 9, 0), KVF_OK);
        double d = 0;
        for (int32_t v = 0; v < kvf_model_n_vocab(m); v++)
            d = fmax(d, fabs((double)kvf_session_logits(a, -1)[v] - kvf_session_logits(b, -1)[v]));
        CHECK(d == 0);
        if (d != 0) T_FAILMSG("parts: max logit difference to one call %.2e", d);
    }
    /* a session that changed between parts, and a later part without the earlier stats */
    if (b) {
        kvf_conv_budget_params p = kvf_conv_budget_default_params(360);
        p.block = 96;
        kvf_conv_budget_stats st;
        int32_t done = 0;
        kvf_session_truncate(b, 0);
        CHECK_EQ(kvf_session_prefill_budget_part(b, ids, 1100, probe, 12, &p, 96, &done, &st), KVF_OK);
        CHECK_EQ(done, 96);
        CHECK_EQ(kvf_session_prefill_budget_part(b, ids, 1100, probe, 12, &p, 96, &done, NULL),
                 KVF_E_INVAL);
        CHECK_EQ(kvf_session_eval(b, q, 1, 0), KVF_OK); /* someone else's token */
        CHECK_EQ(kvf_session_prefill_budget_part(b, ids, 1100, probe, 12, &p, 96, &done, &st),
                 KVF_E_INVAL);
        CHECK(strstr(kvf_errmsg(), "earlier parts") != NULL);
        done = 1200; /* past the history */
        CHECK_EQ(kvf_session_prefill_budget_part(b, ids, 1100, probe, 12, &p, 96, &done, &st),
                 KVF_E_INVAL);
    }
    kvf_session_free(a), kvf_session_free(b);
    kvf_model_free(m);
}

static int by_desc(const void *x, const void *y, void *arg) {
    const float *s = arg;
    float a = s[*(const int32_t *)x], b = s[*(const int32_t *)y];
    return a != b ? (a > b ? -1 : 1) : *(const int32_t *)x - *(const int32_t *)y;
}
static int by_desc_d(const void *x, const void *y, void *arg) {
    const double *s = arg;
    double a = s[*(const int32_t *)x], b = s[*(const int32_t *)y];
    return a != b ? (a > b ? -1 : 1) : *(const int32_t *)x - *(const int32_t *)y;
}
static int by_asc(const void *x, const void *y) {
    return *(const int32_t *)x - *(const int32_t *)y;
}

/* The probe's scores of the reference session r (which holds the nh history cells) at every
 * layer, by hand: the probe's queries against the cached keys, softmax over those keys only, the
 * maximum over probe rows and the query heads of a KV head. sc: [layer][kv head][nh]. */
static void probe_scores_by_hand(kvf_session *r, const int32_t *probe, const float *roww, int np, int nh,
                                 int use_sum, float *sc) {
    const kvf_hparams *hp = &r->m->hp;
    int g = hp->n_head / hp->n_head_kv;
    for (int i = 0; i < np; i++)
        r->b_pos[i] = nh + i, r->b_cell[i] = nh + i, r->b_end[i] = nh + i + 1;
    kvf_batch b = {np, r->b_pos, r->b_cell, r->b_end, NULL};
    kvf_fwd_embed(r, probe, np, r->x);
    kvf_fwd_rope_tables(r, &b);
    for (int l = 0; l < hp->n_layer; l++) {
        kvf_fwd_qkv(r, l, r->x, &b, NULL, NULL);
        for (int kh = 0; kh < hp->n_head_kv; kh++) {
            float *out = sc + ((int64_t)l * hp->n_head_kv + kh) * nh, lg[256];
            const void *kt = kvf_kt_at(r, l, kh);
            for (int j = 0; j < nh; j++)
                out[j] = 0;
            for (int i = 0; i < np; i++)
                for (int gi = 0; gi < g; gi++) {
                    const float *q = r->q + (int64_t)i * hp->n_head * HD + (kh * g + gi) * HD;
                    float mx = -INFINITY;
                    for (int j = 0; j < nh; j++) {
                        double d = 0;
                        for (int e = 0; e < HD; e++)
                            d += (double)q[e] * kvf_kv_get(r, kt, kvf_kt_idx(e, j, HD));
                        lg[j] = (float)(d / sqrt(HD));
                        mx = fmaxf(mx, lg[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < nh; j++)
                        sum += exp((double)(lg[j] - mx));
                    for (int j = 0; j < nh; j++) {
                        float a = (float)((roww ? roww[i] : 1.0) * exp((double)(lg[j] - mx)) / sum);
                        out[j]  = use_sum ? out[j] + a : fmaxf(out[j], a);
                    }
                }
        }
        kvf_fwd_attn_out(r, l, r->x, &b);
        kvf_fwd_mlp(r, l, r->x, np);
    }
}

/* sc pooled over 3 (1 each side) within [c0, c1) */
static void pool3(const float *sc, int c0, int c1, float *pooled) {
    for (int j = c0; j < c1; j++) {
        double acc = 0;
        int cnt = 0;
        for (int t = j - 1; t <= j + 1; t++)
            if (t >= c0 && t < c1) acc += sc[t], cnt++;
        pooled[j] = (float)(acc / cnt);
    }
}

static int by_fdesc(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return a != b ? (a > b ? -1 : 1) : 0;
}

/* One eviction round recomputed by hand at both layers of a 2-layer model, 64-token blocks,
 * probe 8, sink 4, window 8, pool 3:
 * - uniform budget 160: before the third block every layer keeps 88 of 128 cells at 0..87;
 * - layer budgets (200, 264): before the fourth block layer 0 keeps 128 of 192 cells at cells
 *   64..191 (its start rounded to the key tile) and layer 1 all 192 at 0..191;
 * - adaptive (budget 160): the two layers' 2 x 76 scored cells are shared out by the probe's
 *   attention mass (each layer's k-th gain the mean over heads of its k-th largest pooled score
 *   over the head's total; at least 19 each), then the tile rounding as above;
 * - uniform with score_sum: as the first, a cell's score the sum over the probe's rows and query
 *   heads instead of their maximum;
 * - uniform with probe_idf: as the first, each probe row's attention weighted by how rare its
 *   token is in the history's 64-token blocks (two probe tokens the history never holds weigh 1).
 * Every head must keep exactly its sink, its window and its top cells by pooled score, in order. */
static void test_selection_by_hand(int mode) {
    const char *tags[6] = {"hand", "handl", "handa", "hands", "handc", "handi"};
    const int   uniform = mode == 0 || mode == 3 || mode == 4 || mode == 5;
    kvf_model *m = load_synth(tags[mode], 13);
    if (!m) return;
    kvf_session *s = new_session(m, 64), *r = new_session(m, 64);
    int32_t ids[256], probe[8], lb[2] = {200, 264};
    make_ids(ids, 256, 7), make_ids(probe, 8, 2);
    probe[1] = 3, probe[5] = 4; /* never in the history */
    const int sink = 4, window = 8, Hkv = m->hp.n_head_kv;
    const int budget = mode == 1 ? 264 : 160, nh = mode == 1 ? 192 : 128, n_ids = nh + 64;
    kvf_conv_budget_params p = kvf_conv_budget_default_params(budget);
    p.block = 64, p.sink = sink, p.window = window, p.pool = 3;
    if (mode == 1) p.layer_budget = lb;
    p.layer_adapt = mode == 2;
    p.score_sum   = mode == 3;
    p.chunk       = mode == 4 ? 10 : 0;
    p.probe_idf   = mode == 5;
    kvf_conv_budget_stats st;
    CHECK_EQ(kvf_session_prefill_budget(s, ids, n_ids, probe, 8, &p, &st), KVF_OK);
    CHECK_EQ(st.evictions, 1);
    CHECK_EQ(kvf_session_eval(r, ids, nh, 0), KVF_OK);
    static float sc[2 * 4 * 256];
    /* probe_idf: w = 0.1 + 0.9 log((N + 1) / (df + 1)) / log(N + 1), N = 3 blocks of 64 */
    float wt[8];
    int   n_w1 = 0, n_low = 0;
    for (int i = 0; i < 8; i++) {
        int df = 0;
        for (int b0 = 0; b0 < n_ids; b0 += 64) {
            int in = 0;
            for (int k = b0; k < b0 + 64; k++)
                in |= ids[k] == probe[i];
            df += in;
        }
        wt[i] = (float)(0.1 + 0.9 * log(4.0 / (df + 1.0)) / log(4.0));
        n_w1 += df == 0, n_low += df == 3;
    }
    if (mode == 5) CHECK(n_w1 == 2 && n_low >= 1); /* the weights differ */
    probe_scores_by_hand(r, probe, mode == 5 ? wt : NULL, 8, nh, mode == 3, sc);
    /* the cells each layer keeps */
    int keep[2] = {budget - 72, budget - 72};
    if (mode == 1) keep[0] = lb[0] - 72, keep[1] = KVF_MIN(lb[1] - 72, nh);
    if (mode == 2) {
        int cand = nh - sink - window, need = keep[0] - sink - window, lo = need / 4;
        float gains[2][256] = {{0}}, pooled[256], all[512];
        for (int l = 0; l < 2; l++)
            for (int kh = 0; kh < Hkv; kh++) {
                pool3(sc + ((int64_t)l * Hkv + kh) * nh, sink, nh - window, pooled);
                double sum = 0;
                for (int j = sink; j < nh - window; j++)
                    sum += pooled[j];
                qsort(pooled + sink, (size_t)cand, sizeof(float), by_fdesc);
                for (int k = 0; k < cand; k++)
                    gains[l][k] += (float)(pooled[sink + k] / sum) / (float)Hkv;
            }
        int na = 0;
        for (int l = 0; l < 2; l++)
            for (int k = lo; k < cand; k++)
                all[na++] = gains[l][k];
        qsort(all, (size_t)na, sizeof(float), by_fdesc);
        float cut = all[2 * need - 2 * lo - 1]; /* the last gain taken */
        for (int l = 0; l < 2; l++) {
            int n = lo;
            for (int k = lo; k < cand; k++)
                n += gains[l][k] > cut;
            keep[l] = sink + n + window;
        }
        /* gains equal to the cut (ties) go to layer 0 first, as the code breaks them */
        int left = 2 * need - (keep[0] + keep[1] - 2 * (sink + window));
        for (int l = 0; l < 2 && left > 0; l++)
            for (int k = lo; k < cand && left > 0; k++)
                if (gains[l][k] == cut) keep[l]++, left--;
        CHECK(keep[0] != keep[1]); /* the test means something only if the layers differ */
        CHECK(keep[0] + keep[1] == 2 * (budget - 72));
    }
    int top = KVF_MAX(keep[0], keep[1]), dst[2];
    for (int l = 0; l < 2; l++) {
        dst[l] = uniform ? 0 : (top - keep[l] + 63) / 64 * 64;
        keep[l] = uniform ? keep[l] : top - dst[l];
    }
    CHECK_EQ(s->n_cells, top + 64);
    CHECK_EQ(s->cell_start[0], dst[0]);
    CHECK_EQ(s->cell_start[1], dst[1]);
    CHECK_EQ(st.cells, (keep[0] + keep[1] + 2 * 64 + 1) / 2);
    /* chunks: runs of 10 cells from the sink on, each run's score the sum over layers and heads
     * of its pooled scores as shares of the head's total; the best runs whole, the next cut */
    int32_t runs[256], n_runs = (nh - window - sink + 9) / 10, chosen[256];
    double  rs[256] = {0};
    for (int l = 0; l < 2; l++)
        for (int kh = 0; kh < Hkv && mode == 4; kh++) {
            float pooled[256];
            pool3(sc + ((int64_t)l * Hkv + kh) * nh, sink, nh - window, pooled);
            double tot = 0;
            for (int j = sink; j < nh - window; j++)
                tot += pooled[j];
            for (int j = sink; j < nh - window; j++)
                rs[(j - sink) / 10] += pooled[j] / tot;
        }
    for (int i = 0; i < n_runs; i++)
        runs[i] = i;
    qsort_r(runs, (size_t)n_runs, sizeof(int32_t), by_desc_d, rs);
    for (int i = 0, n = 0; i < n_runs && n < keep[0] - sink - window; i++)
        for (int j = sink + runs[i] * 10; j < KVF_MIN(sink + runs[i] * 10 + 10, nh - window) &&
                                          n < keep[0] - sink - window; j++)
            chosen[n++] = j;
    if (mode == 4) {
        CHECK(keep[0] - sink - window > 20); /* whole runs and a cut one */
        qsort(chosen, (size_t)(keep[0] - sink - window), sizeof(int32_t), by_asc);
    }
    int all_match = 1;
    for (int l = 0; l < 2; l++)
        for (int kh = 0; kh < Hkv; kh++) {
            float pooled[256];
            int32_t idx[256], n = 0, want[256];
            pool3(sc + ((int64_t)l * Hkv + kh) * nh, sink, nh - window, pooled);
            for (int j = sink; j < nh - window; j++)
                idx[n++] = j;
            qsort_r(idx, (size_t)n, sizeof(int32_t), by_desc, pooled);
            qsort(idx, (size_t)(keep[l] - sink - window), sizeof(int32_t), by_asc);
            if (mode == 4) /* every head the same cells */
                memcpy(idx, chosen, sizeof(int32_t) * (size_t)(keep[l] - sink - window));
            int w = 0;
            for (int j = 0; j < sink; j++)
                want[w++] = j;
            for (int j = 0; j < keep[l] - sink - window; j++)
                want[w++] = idx[j];
            for (int j = nh - window; j < nh; j++)
                want[w++] = j;
            /* cell dst + c of the evicted session holds the key of original cell want[c] */
            const void *ks = kvf_kt_at(s, l, kh), *kt = kvf_kt_at(r, l, kh);
            for (int c = 0; c < keep[l]; c++)
                for (int e = 0; e < HD; e++)
                    if (kvf_kv_get(s, ks, kvf_kt_idx(e, dst[l] + c, HD)) !=
                        kvf_kv_get(r, kt, kvf_kt_idx(e, want[c], HD)))
                        all_match = 0;
        }
    CHECK(all_match);
    kvf_session_free(s), kvf_session_free(r);
    kvf_model_free(m);
}

static void test_selection_uniform(void) {
    test_selection_by_hand(0);
}
static void test_selection_layered(void) {
    test_selection_by_hand(1);
}
static void test_selection_score_sum(void) {
    test_selection_by_hand(3);
}
static void test_selection_adaptive(void) {
    test_selection_by_hand(2);
}
static void test_selection_chunks(void) {
    test_selection_by_hand(4);
}
static void test_selection_probe_idf(void) {
    test_selection_by_hand(5);
}

/* Layers whose cells start past 0 (layer budgets) attend exactly as before: every layer's cells
 * of a prefilled session moved up by two key tiles (every layer must end at n_cells), then a
 * prompt and decoded tokens (split-K decode across the shifted range), against the same
 * session unmoved. */
static void test_layer_start_exact(void) {
    synth_cfg cfg = {
        .n_embd = HD * 4, .n_head = 4, .n_head_kv = 2, .n_layer = 3, .n_ctx = 2048, .seed = 16};
    kvf_model *m = synth_model_load(&cfg, "start");
    if (!m) return;
    kvf_session *a = new_session(m, 64), *b = new_session(m, 64);
    int32_t ids[700];
    make_ids(ids, 700, 4);
    const int n0 = 600, up = 128;
    CHECK_EQ(kvf_session_eval(a, ids, n0, 0), KVF_OK);
    CHECK_EQ(kvf_session_eval(b, ids, n0, 0), KVF_OK);
    int32_t *keep = malloc(sizeof(int32_t) * n0);
    for (int i = 0; i < n0; i++)
        keep[i] = i;
    for (int l = 0; l < m->hp.n_layer; l++) {
        for (int h = 0; h < m->hp.n_head_kv; h++)
            kvf_cells_compact_head(a, l, h, keep, n0, up);
        a->cell_start[l] = up;
    }
    a->n_cells = n0 + up, a->evicted = 1;
    kvf_session_trim(a);
    double d = 0;
    int32_t nv = kvf_model_n_vocab(m);
    for (int step = 0; step < 4; step++) {
        int32_t n = step == 0 ? 40 : 1, *t = ids + n0 + (step == 0 ? 0 : 39 + step);
        CHECK_EQ(kvf_session_eval(a, t, n, 0), KVF_OK);
        CHECK_EQ(kvf_session_eval(b, t, n, 0), KVF_OK);
        for (int32_t v = 0; v < nv; v++)
            d = fmax(d, fabs((double)kvf_session_logits(a, -1)[v] - kvf_session_logits(b, -1)[v]));
    }
    CHECK(d < 1e-5);
    if (d >= 1e-5) T_FAILMSG("shifted layers: max logit difference %.2e", d);
    CHECK_EQ(kvf_session_truncate(a, 0), KVF_OK); /* a reset forgets the starts */
    CHECK_EQ(a->cell_start[0], 0);
    free(keep);
    kvf_session_free(a), kvf_session_free(b);
    kvf_model_free(m);
}

/* kvf_conv_layer_budgets by hand: budget 1000, block 256, probe 64: each layer keeps K = 680
 * between rounds on average; sim {1, 0.5, 0}, alpha 1: floor 170, weights {0, 0.5, 1} of 1.5,
 * spare 3 x 510 -> kept {170, 680, 1190}, held {490, 1000, 1510}. */
static void test_layer_budgets(void) {
    float sim[3] = {1.0f, 0.5f, 0.0f}, flat[3] = {0.9f, 0.9f, 0.9f};
    int32_t out[3];
    kvf_conv_budget_params p = kvf_conv_budget_default_params(1000);
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 1.0f, out), KVF_OK);
    CHECK(out[0] == 490 && out[1] == 1000 && out[2] == 1510);
    /* alpha 2: weights {0, 0.25, 1} of 1.25 -> kept {170, 476, 1394} */
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 2.0f, out), KVF_OK);
    CHECK(out[0] == 490 && out[1] == 796 && out[2] == 1714);
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 0.0f, out), KVF_OK);
    CHECK(out[0] == 1000 && out[1] == 1000 && out[2] == 1000);
    CHECK_EQ(kvf_conv_layer_budgets(flat, 3, &p, 64, 1.3f, out), KVF_OK);
    CHECK(out[0] == 1000 && out[2] == 1000);
    /* a sink that leaves the least layer no room of its own: the floor is the least */
    p.sink = 300; /* least 300 + 32 + 256 + 64 + 80 = 732: kept floor 412, spare 3 x 268 */
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 1.0f, out), KVF_OK);
    CHECK(out[0] == 732 && out[1] == 1000 && out[2] == 1268);
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, -1.0f, out), KVF_E_INVAL);
    p.sink = 700; /* least 1132 > 1000 */
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 1.0f, out), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "no room") != NULL);
    p.sink = 0;
    sim[1] = NAN;
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 64, 1.0f, out), KVF_E_INVAL);
    CHECK_EQ(kvf_conv_layer_min_budget(&p, 64), 0 + 32 + 256 + 64 + 16 + 64);
}

/* The profile on a 3-layer synthetic model: layer 0's keys come from the token and its position
 * alone, so they are the same whole or in blocks (similarity 1); deeper layers see less context
 * in blocks and differ. Then layer budgets from it run a bounded prefill within every layer's
 * budget. */
static void test_layer_profile(void) {
    synth_cfg cfg = {
        .n_embd = HD * 4, .n_head = 4, .n_head_kv = 2, .n_layer = 3, .n_ctx = 2048, .seed = 17};
    kvf_model *m = synth_model_load(&cfg, "prof");
    if (!m) return;
    kvf_session *s = new_session(m, 64);
    int32_t ids[1024], probe[16];
    make_ids(ids, 1024, 1), make_ids(probe, 16, 6);
    float sim[3] = {0};
    CHECK_EQ(kvf_conv_layer_profile(s, ids, 1024, 256, sim), KVF_OK);
    CHECK(fabsf(sim[0] - 1.0f) < 1e-5f);
    CHECK(sim[1] < 0.99999f && sim[2] < 0.99999f && sim[1] > -1.0f && sim[2] > -1.0f);
    CHECK_EQ(kvf_session_n_past(s), 0);                                   /* left empty */
    CHECK_EQ(kvf_conv_layer_profile(s, ids, 300, 256, sim), KVF_E_INVAL); /* one block */
    /* the profile's file: a round trip, and malformed files refused with the line */
    char path[64], bad[64];
    snprintf(path, sizeof path, "/tmp/kvf-prof-%d.txt", (int)getpid());
    snprintf(bad, sizeof bad, "/tmp/kvf-prof-bad-%d.txt", (int)getpid());
    float back[3] = {0};
    CHECK_EQ(kvf_conv_layer_profile_save(path, m, sim, 1024, 256), KVF_OK);
    CHECK_EQ(kvf_conv_layer_profile_load(path, m, back), KVF_OK);
    for (int l = 0; l < 3; l++)
        CHECK(fabsf(back[l] - sim[l]) < 1e-6f);
    const char *bodies[] = {"layers 2\n0 1\n1 0.5\n",        "layers 3\n0 1\n2 0.5\n1 0.4\n",
                            "layers 3\n0 1\n1 nan\n2 0.1\n", "layers 3\n0 1\n1 0.5\n",
                            "0 1\n1 0.5\n2 0.4\n",           "layers 3\n0 1\n1 1.5\n2 0\n",
                            "layers 3\n0 1\n1 x\n2 0\n"};
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        FILE *f = fopen(bad, "w");
        fputs(bodies[i], f);
        fclose(f);
        CHECK_EQ(kvf_conv_layer_profile_load(bad, m, back), KVF_E_FORMAT);
    }
    CHECK(strstr(kvf_errmsg(), ":3:") != NULL); /* the last one names its line */
    unlink(bad), unlink(path);
    CHECK_EQ(kvf_conv_layer_profile_load(path, m, back), KVF_E_IO);
    kvf_conv_budget_params p = kvf_conv_budget_default_params(600);
    p.block = 64, p.window = 16;
    int32_t lb[3], least = kvf_conv_layer_min_budget(&p, 16), reserve = 64 + 16;
    CHECK_EQ(kvf_conv_layer_budgets(sim, 3, &p, 16, 1.3f, lb), KVF_OK);
    /* the least sensitive layer keeps a quarter of 600 - 80 cells, or the least */
    CHECK(lb[0] == ((600 - reserve) / 4 + reserve > least ? (600 - reserve) / 4 + reserve : least));
    CHECK(lb[0] + lb[1] + lb[2] <= 3 * 600);
    p.layer_budget = lb;
    kvf_conv_budget_stats st;
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 1024, probe, 16, &p, &st), KVF_OK);
    CHECK(st.evictions > 0 && st.peak_cells <= 600);
    for (int l = 0; l < 3; l++) {
        CHECK(s->cell_start[l] % 64 == 0);
        CHECK(s->n_cells - s->cell_start[l] <= lb[l] - 16);
    }
    CHECK_EQ(kvf_session_eval(s, probe, 16, 0), KVF_OK);
    int ok = 1;
    for (int32_t v = 0; v < kvf_model_n_vocab(m); v++)
        ok &= isfinite(kvf_session_logits(s, -1)[v]);
    CHECK(ok);
    /* a layer budget under the least, or a mean over the budget, is refused */
    lb[0] = least - 1;
    CHECK_EQ(kvf_session_truncate(s, 0), KVF_OK);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 1024, probe, 16, &p, &st), KVF_E_INVAL);
    lb[0] = 600, lb[1] = 600, lb[2] = 601;
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 1024, probe, 16, &p, &st), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "layer budgets") != NULL);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* three topics: utterances made of disjoint token ranges, each topic's utterances together */
static void test_episodes_route(void) {
    kvf_model *m = load_synth("epi", 14);
    if (!m) return;
    kvf_session *s = new_session(m, 64);
    int32_t ids[24 * 20], utt[24], n = 0;
    for (int u = 0; u < 24; u++) {
        int topic = u / 8;
        utt[u] = n;
        for (int i = 0; i < 20; i++)
            ids[n++] = 40 + topic * 30 + (u * 7 + i * 3) % 30;
    }
    kvf_episodes *e = NULL;
    CHECK_EQ(kvf_episodes_build(m, ids, n, utt, 24, 2, 3, &e), KVF_OK);
    if (!e) goto out;
    CHECK_EQ(kvf_episodes_count(e), 3);
    int routed[3];
    for (int t = 0; t < 3; t++) {
        int32_t q[10];
        for (int i = 0; i < 10; i++)
            q[i] = 40 + t * 30 + (i * 11 + 5) % 30;
        float sim = 0;
        routed[t] = kvf_episodes_route(e, q, 10, &sim);
        CHECK(routed[t] >= 0 && sim > 0.0f);
        int32_t probe[64];
        int32_t np = kvf_episodes_probe(e, routed[t], probe, 64);
        CHECK_EQ(np, 64); /* utterances while there is room: 20 + 20 + 20, then 4 of the next */
        int own = 1;
        for (int i = 0; i < np; i++)
            own &= probe[i] >= 40 + t * 30 && probe[i] < 70 + t * 30;
        CHECK(own);
    }
    CHECK(routed[0] != routed[1] && routed[1] != routed[2] && routed[0] != routed[2]);
    CHECK_EQ(kvf_episodes_probe(e, 3, (int32_t[4]){0}, 4), -1);
    CHECK_EQ(kvf_episodes_route(e, (int32_t[1]){-1}, 1, NULL), -1);
out:
    kvf_episodes_free(e);
    kvf_session_free(s);
    kvf_model_free(m);
}

static void test_errors(void) {
    kvf_model *m = load_synth("err", 15);
    if (!m) return;
    kvf_session *s = new_session(m, 64);
    int32_t ids[300];
    make_ids(ids, 300, 0);
    kvf_conv_budget_params p = kvf_conv_budget_default_params(400);
    CHECK_EQ(kvf_session_prefill_budget(NULL, ids, 300, NULL, 0, &p, NULL), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, NULL, NULL), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, ids, 0, &p, NULL), KVF_E_INVAL);
    p.budget = 256 + 32 + 16 + 15; /* block + window + probe + 16, one short */
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "too small") != NULL);
    p.budget = 4096;
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL), KVF_E_CTX_FULL);
    p.budget = 400, p.pool = 0;
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL), KVF_E_INVAL);
    p.pool = 5;
    int32_t bad[3] = {1, 2, 1 << 30};
    CHECK_EQ(kvf_session_prefill_budget(s, bad, 3, NULL, 0, &p, NULL), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, bad, 3, &p, NULL), KVF_E_INVAL);
    CHECK_EQ(kvf_session_eval(s, ids, 10, 0), KVF_OK);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL),
             KVF_E_INVAL); /* not empty */
    CHECK(strstr(kvf_errmsg(), "empty") != NULL);
    kvf_session_truncate(s, 0);
    kvf_attn_params sa = kvf_attn_default_params(KVF_ATTN_SALE);
    CHECK_EQ(kvf_session_set_attn(s, &sa), KVF_OK);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL), KVF_E_INVAL);
    kvf_attn_params dense = kvf_attn_default_params(KVF_ATTN_DENSE);
    kvf_decode_attn_params louis = kvf_decode_attn_default_params(KVF_DECODE_LOUIS);
    CHECK_EQ(kvf_session_set_attn(s, &dense), KVF_OK);
    CHECK_EQ(kvf_session_set_decode_attn(s, &louis), KVF_OK);
    CHECK_EQ(kvf_session_prefill_budget(s, ids, 300, NULL, 0, &p, NULL), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "LouisKV") != NULL);
    kvf_episodes *e = NULL;
    int32_t utt[3] = {0, 50, 40};
    CHECK_EQ(kvf_episodes_build(m, ids, 300, utt, 3, 2, 2, &e), KVF_E_INVAL); /* not ascending */
    CHECK(e == NULL);
    utt[2] = 300;
    CHECK_EQ(kvf_episodes_build(m, ids, 300, utt, 3, 2, 2, &e), KVF_E_INVAL); /* past the end */
    CHECK_EQ(kvf_episodes_build(m, ids, 300, utt, 2, 2, 0, &e), KVF_E_INVAL);
    CHECK_EQ(kvf_episodes_build(m, ids, 300, utt, 2, 2, 5, &e),
             KVF_OK); /* fewer windows than asked */
    CHECK_EQ(kvf_episodes_count(e), 1);
    kvf_episodes_free(e);
    kvf_session_free(s);
    kvf_model_free(m);
}

int main(void) {
    RUN(test_errors);
    RUN(test_never_exceeds);
    RUN(test_no_eviction_is_dense);
    RUN(test_parts_equal_one_call);
    RUN(test_selection_uniform);
    RUN(test_selection_layered);
    RUN(test_selection_adaptive);
    RUN(test_selection_score_sum);
    RUN(test_selection_probe_idf);
    RUN(test_selection_chunks);
    RUN(test_layer_start_exact);
    RUN(test_layer_budgets);
    RUN(test_layer_profile);
    RUN(test_episodes_route);
    return TEST_REPORT();
}
