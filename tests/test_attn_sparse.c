/* test_attn_sparse.c - sparse prefill attention (SALE, PowerAttention) on synthetic models.
 *
 * Hand-built caches whose values name their key block (value j = one-hot of block j / 64) show
 * exactly which blocks a row read: with equal scores, the output's component b is the share of
 * the row's keys that lie in block b, so a block that was skipped reads 0. Then, through the
 * whole forward pass: the modes switched off (threshold 0, a window over every block) give
 * dense attention's logits bit for bit, a threshold that keeps every block gives them within
 * float tolerance, and the parameters are validated. */
#include "harness.h"
#include "synth.h"

#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"
#include "kvfuse.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

#define N_KEYS 1000 /* cells filled: blocks 0..15 */
#define HD 32       /* head_dim: n_embd 128, 4 heads, 2 KV heads */

static kvf_model *load_synth_heads(const char *tag, int n_ctx, uint64_t seed, int n_head,
                                   int n_head_kv) {
    synth_cfg cfg = {.n_embd = HD * n_head, .n_head = n_head, .n_head_kv = n_head_kv,
                     .n_ctx = n_ctx, .seed = seed};
    kvf_model *m = synth_model_load(&cfg, tag);
    if (!m) T_FAILMSG("synthetic model: %s", kvf_errmsg());
    return m;
}

static kvf_model *load_synth(const char *tag, int n_ctx, uint64_t seed) {
    return load_synth_heads(tag, n_ctx, seed, 4, 2);
}

/* Layer 0's cache: keys zero except `hot` (-1: none), whose keys are `amp` * e_0; values
 * one-hot of the key block. */
static void fill_cache(kvf_session *s, int hot, float amp) {
    for (int h = 0; h < s->m->hp.n_head_kv; h++) {
        void *kt = kvf_kt_at(s, 0, h), *v = kvf_v_at(s, 0, h);
        for (int j = 0; j < N_KEYS; j++)
            for (int i = 0; i < HD; i++) {
                kvf_kv_put(s, kt, kvf_kt_idx(i, j, HD), (i == 0 && j / 64 == hot) ? amp : 0.0f);
                kvf_kv_put(s, v, (int64_t)j * HD + i, i == j / 64 ? 1.0f : 0.0f);
            }
    }
    s->n_cells = s->n_past = N_KEYS;
    kvf_attn_sparse_written(s, -1, 0); /* a writer of key cells says so */
}

/* Attention of rows at positions pos[0..n) (query e_0 * qamp for every head) at layer 0 */
static void run_rows(kvf_session *s, const int32_t *pos, int n, float qamp) {
    int32_t cell[16], end[16], qd = s->m->hp.n_head * HD;
    for (int r = 0; r < n; r++) {
        cell[r] = pos[r], end[r] = pos[r] + 1;
        for (int i = 0; i < qd; i++) s->q[r * qd + i] = i % HD == 0 ? qamp : 0.0f;
    }
    kvf_batch b = {.n = n, .pos = pos, .cell = cell, .kv_end = end, .sess = NULL};
    kvf_attn_sparse(s, 0, &b, 2);
}

/* which blocks row r read, from the one-hot values: a bit mask; every head of the row must
 * agree (they read the same blocks), else ~0u */
static unsigned blocks_read(const kvf_session *s, int r) {
    unsigned mask = 0;
    for (int h = 0; h < s->m->hp.n_head; h++) {
        unsigned mh = 0;
        for (int b = 0; b < 16; b++)
            if (s->att[(r * s->m->hp.n_head + h) * HD + b] > 0.0f) mh |= 1u << b;
        if (h > 0 && mh != mask) return ~0u;
        mask = mh;
    }
    return mask;
}

static void test_sale_selects_blocks(void) {
    kvf_model *m = load_synth("sale", 2048, 3);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_attn_params a = kvf_attn_default_params(KVF_ATTN_SALE);
    a.dense_layers = 0, a.min_keys = 0;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    /* the query scores block 7's keys at 3 (weight e^3 against ~1 per key of the ~190 keys in
     * the sink and local window: ~0.1 > 0.008), every other key at 0 (~0.005 < 0.008) */
    float amp = 3.0f * sqrtf((float)HD);
    fill_cache(s, 7, amp);
    int32_t pos[3] = {997, 998, 999};
    run_rows(s, pos, 3, 1.0f);
    unsigned want = 1u << 0 | 1u << 7 | 1u << 13 | 1u << 14 | 1u << 15; /* sink, hot, local */
    for (int r = 0; r < 3; r++)
        CHECK_MSG(blocks_read(s, r) == want, "row %d read blocks %#x, want %#x", r,
                  blocks_read(s, r), want);
    int64_t rd, cz;
    kvf_session_attn_density(s, &rd, &cz);
    /* 2 KV heads x 2 tiles (rows {997, 998}, {999}) x 2 query heads x 16 causal blocks */
    CHECK_EQ(cz, 2 * 16 * 6);
    CHECK_EQ(rd, 2 * 5 * 6);
    /* block 7's output weight: 64 keys at e^3 against the sink's 64 and blocks 13..15's 168 */
    float w = 64.0f * expf(3.0f);
    CHECK_NEAR(s->att[2 * 4 * HD + 7], w / (w + 64.0f + (999 - 832 + 1)), 1e-4);
    /* no hot block: only the sink and the local window */
    fill_cache(s, -1, 0.0f);
    run_rows(s, pos, 3, 1.0f);
    CHECK_EQ(blocks_read(s, 0), 1u << 0 | 1u << 13 | 1u << 14 | 1u << 15);
    /* a threshold that keeps everything reads every block, equal to dense within tolerance */
    a.threshold = 1e-30f;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    fill_cache(s, 7, amp);
    run_rows(s, pos, 3, 1.0f);
    CHECK_EQ(blocks_read(s, 0), 0xffffu);
    float dense[4 * HD];
    memcpy(dense, s->att, sizeof dense);
    a.threshold = 0.0f; /* 0: dense, through one run of every block */
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    run_rows(s, pos, 3, 1.0f);
    for (int i = 0; i < 4 * HD; i++) CHECK_NEAR(dense[i], s->att[i], 1e-5);
    kvf_session_free(s);
    kvf_model_free(m);
}

static void test_power_pattern(void) {
    kvf_model *m = load_synth("power", 2048, 4);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_attn_params a = kvf_attn_default_params(KVF_ATTN_POWER);
    a.block = 64, a.window = 2, a.dense_layers = 0;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    fill_cache(s, -1, 0.0f); /* equal scores: a row's output is the share of its keys per block */
    /* rows in query blocks 15 and 14 in one tile: each gets its own pattern */
    int32_t pos[2] = {999, 959};
    run_rows(s, pos, 2, 1.0f);
    /* block 15: the sink, distance < 2 (15, 14), powers of two 1, 2, 4, 8 (14, 13, 11, 7) */
    unsigned w15 = 1u << 0 | 1u << 15 | 1u << 14 | 1u << 13 | 1u << 11 | 1u << 7;
    /* block 14: 0, 14, 13, 12, 10, 6 */
    unsigned w14 = 1u << 0 | 1u << 14 | 1u << 13 | 1u << 12 | 1u << 10 | 1u << 6;
    CHECK_MSG(blocks_read(s, 0) == w15, "row 999 read %#x, want %#x", blocks_read(s, 0), w15);
    CHECK_MSG(blocks_read(s, 1) == w14, "row 959 read %#x, want %#x", blocks_read(s, 1), w14);
    /* shares: row 999 reads 5 full blocks and 40 keys of block 15 */
    CHECK_NEAR(s->att[7], 64.0f / (5 * 64 + 40), 1e-5);
    CHECK_NEAR(s->att[15], 40.0f / (5 * 64 + 40), 1e-5);
    kvf_session_free(s);
    /* three query heads per KV head, three rows in one tile, three query blocks */
    kvf_model_free(m);
    m = load_synth_heads("power3", 2048, 7, 3, 1);
    if (!m) return;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    fill_cache(s, -1, 0.0f);
    int32_t pos3[3] = {999, 959, 900};
    run_rows(s, pos3, 3, 1.0f);
    CHECK_MSG(blocks_read(s, 0) == w15, "g=3: row 999 read %#x, want %#x", blocks_read(s, 0), w15);
    CHECK_MSG(blocks_read(s, 1) == w14, "g=3: row 959 read %#x, want %#x", blocks_read(s, 1), w14);
    /* block 14 as well (900 / 64 = 14) */
    CHECK_MSG(blocks_read(s, 2) == w14, "g=3: row 900 read %#x, want %#x", blocks_read(s, 2), w14);
    /* a window over every block is dense attention, bit for bit (one run) */
    a.window = 1000;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_OK);
    run_rows(s, pos, 2, 1.0f);
    CHECK_EQ(blocks_read(s, 0), 0xffffu);
    CHECK_NEAR(s->att[3], 64.0f / 1000.0f, 1e-6);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* logits of every row of a 1300-token prompt (deterministic pseudo-text) */
static float *prefill_logits(kvf_model *m, const kvf_attn_params *a, int n, int64_t *density_pm) {
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2, sp.n_ubatch = 128;
    if (kvf_session_new(m, &sp, &s) != KVF_OK) return NULL;
    if (a && kvf_session_set_attn(s, a) != KVF_OK) {
        kvf_session_free(s);
        return NULL;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = 32 + (i * 7 + i / 13) % 90;
    int64_t nv  = kvf_model_n_vocab(m);
    float  *out = NULL;
    if (kvf_session_eval(s, ids, n, KVF_EVAL_ALL_LOGITS) == KVF_OK) {
        out = malloc(sizeof(float) * (size_t)(nv * n));
        for (int i = 0; i < n; i++) memcpy(out + i * nv, kvf_session_logits(s, i), sizeof(float) * (size_t)nv);
    } else {
        T_FAILMSG("eval: %s", kvf_errmsg());
    }
    int64_t rd, cz;
    kvf_session_attn_density(s, &rd, &cz);
    if (density_pm) *density_pm = cz ? rd * 1000 / cz : -1;
    free(ids);
    kvf_session_free(s);
    return out;
}

static double max_diff(const float *a, const float *b, int64_t n) {
    double d = 0;
    for (int64_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void test_forward_switched_off(void) {
    kvf_model *m = load_synth("fwd", 2048, 5);
    if (!m) return;
    int     n  = 1300;
    int64_t nv = kvf_model_n_vocab(m), dpm;
    float  *dense = prefill_logits(m, NULL, n, NULL);
    kvf_attn_params a = kvf_attn_default_params(KVF_ATTN_SALE);
    a.threshold = 0.0f, a.min_keys = 0, a.dense_layers = 0;
    float *s0 = prefill_logits(m, &a, n, &dpm);
    CHECK(dense && s0);
    if (dense && s0) CHECK_MSG(memcmp(dense, s0, sizeof(float) * (size_t)(nv * n)) == 0, "SALE with threshold 0 differs from dense");
    CHECK_EQ(dpm, 1000);
    a.threshold = 1e-30f; /* every block kept, in several runs merged */
    float *s1 = prefill_logits(m, &a, n, &dpm);
    CHECK(s1 != NULL);
    if (dense && s1) {
        double d = max_diff(dense, s1, nv * n);
        CHECK_MSG(d < 1e-3, "SALE keeping every block: max logit difference %.3g", d);
    }
    CHECK_EQ(dpm, 1000);
    a.threshold = 0.05f; /* a real threshold: some blocks skipped, logits still sane */
    float *s2 = prefill_logits(m, &a, n, &dpm);
    CHECK(s2 != NULL);
    CHECK_MSG(dpm > 0 && dpm < 1000, "SALE density %lld per mille", (long long)dpm);
    if (s2) {
        int finite = 1;
        for (int64_t i = 0; i < nv * n; i++) finite &= isfinite(s2[i]);
        CHECK(finite);
    }
    kvf_attn_params p = kvf_attn_default_params(KVF_ATTN_POWER);
    p.window = 100, p.block = 64, p.dense_layers = 0;
    float *p0 = prefill_logits(m, &p, n, &dpm);
    if (dense && p0) CHECK_MSG(memcmp(dense, p0, sizeof(float) * (size_t)(nv * n)) == 0, "power with a window over everything differs from dense");
    CHECK_EQ(dpm, 1000);
    p.window = 2;
    float *p1 = prefill_logits(m, &p, n, &dpm);
    CHECK(p1 != NULL);
    CHECK_MSG(dpm > 0 && dpm < 700, "power density %lld per mille", (long long)dpm);
    free(dense), free(s0), free(s1), free(s2), free(p0), free(p1);
    kvf_model_free(m);
}

/* ---- MAC-Attention (decode) -------------------------------------------------------------- */

/* dense attention of row `pos`'s query heads (s->q row 0) over keys [a, e) of layer 0, head h:
 * outputs o[gi] and states */
static void ref_range(kvf_session *s, int h, int64_t a, int64_t e, float *o, float *m, float *l) {
    int          g = s->m->hp.n_head / s->m->hp.n_head_kv;
    const float *qp[8];
    float       *op[8], work[8 * (KVF_ATTN_BK + 4) + 64] __attribute__((aligned(64)));
    int32_t      end[8];
    for (int gi = 0; gi < g; gi++) qp[gi] = s->q + (h * g + gi) * HD, op[gi] = o + gi * HD, end[gi] = (int32_t)(e - a);
    s->attn_K->attn(qp, op, end, g, (const float *)kvf_kt_at(s, 0, h) + a * HD, (const float *)kvf_v_at(s, 0, h) + a * HD,
                    HD, 1.0f / sqrtf((float)HD), work);
    for (int gi = 0; gi < g; gi++) m[gi] = work[g * KVF_ATTN_BK + gi], l[gi] = work[g * KVF_ATTN_BK + g + gi];
}

static void merge_ref(float *o, float *m, float *l, const float *o2, float m2, float l2) {
    float mx = fmaxf(*m, m2), w1 = expf(*m - mx) * *l, w2 = expf(m2 - mx) * l2;
    for (int i = 0; i < HD; i++) o[i] = (w1 * o[i] + w2 * o2[i]) / (w1 + w2);
    *m = mx, *l = w1 + w2;
}

/* one decode step at position pos through kvf_attn_decode; q (post-RoPE) and q_pre given */
static void mac_step(kvf_session *s, int32_t pos, const float *q, const float *qpre) {
    int qd = s->m->hp.n_head * HD;
    memcpy(s->q, q, sizeof(float) * (size_t)qd);
    memcpy(s->q_pre, qpre, sizeof(float) * (size_t)qd);
    int32_t   cell = pos, end = pos + 1;
    kvf_batch b = {.n = 1, .pos = &pos, .cell = &cell, .kv_end = &end, .sess = NULL};
    CHECK(kvf_attn_decode_wanted(s, &b));
    kvf_attn_decode(s, 0, &b);
}

static void test_mac_match_amend_complete(void) {
    kvf_model *m = load_synth("mac", 2048, 8);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_decode_attn_params d = kvf_decode_attn_default_params(KVF_DECODE_MAC);
    d.band = 64, d.min_keys = 0, d.lookback = 64;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
    /* random keys and values in layer 0 */
    uint64_t st = 12345;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < N_KEYS; j++)
            for (int i = 0; i < HD; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                float x = (float)((st >> 40) % 2001) / 1000.0f - 1.0f;
                kvf_kv_put(s, kvf_kt_at(s, 0, h), kvf_kt_idx(i, j, HD), 2.0f * x);
                kvf_kv_put(s, kvf_v_at(s, 0, h), (int64_t)j * HD + i, x * (float)(i % 5));
            }
    s->n_cells = s->n_past = N_KEYS;
    kvf_attn_sparse_written(s, -1, 0);
    float q[4 * HD], q2[4 * HD], qpre[4 * HD], far[4 * HD], o[4 * HD], om[4], ol[4], o2[4 * HD], m2[4], l2[4];
    for (int i = 0; i < 4 * HD; i++) q[i] = sinf((float)i), q2[i] = cosf((float)i * 0.7f), qpre[i] = 1.0f + (float)(i % 3), far[i] = -qpre[i];
    int64_t hits, looks;
    kvf_session_decode_hits(s, NULL, NULL);
    /* step at 700: nothing remembered yet: dense, computed as [0, 576) + [576, 701) (the band
     * boundary 701 - 64 rounded down to 64 cells) */
    mac_step(s, 700, q, qpre);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(hits, 0);
    CHECK_EQ(looks, 4);
    for (int h = 0; h < 2; h++) {
        ref_range(s, h, 0, 701, o, om, ol);
        for (int i = 0; i < 2 * HD; i++) CHECK_NEAR(s->att[h * 2 * HD + i], o[i], 1e-5);
    }
    /* step at 760 with the same pre-RoPE query but another post-RoPE query: a hit, so the state
     * over [0, 576) is the one computed with the first query; amend [576, 640), complete
     * [640, 761) with the new query */
    mac_step(s, 760, q2, qpre);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(hits, 4);
    CHECK_EQ(looks, 4);
    for (int h = 0; h < 2; h++) {
        memcpy(s->q, q, sizeof q);
        ref_range(s, h, 0, 576, o, om, ol); /* the remembered state (first query) */
        memcpy(s->q, q2, sizeof q2);
        ref_range(s, h, 576, 640, o2, m2, l2);
        for (int gi = 0; gi < 2; gi++) merge_ref(o + gi * HD, &om[gi], &ol[gi], o2 + gi * HD, m2[gi], l2[gi]);
        ref_range(s, h, 640, 761, o2, m2, l2);
        for (int gi = 0; gi < 2; gi++) merge_ref(o + gi * HD, &om[gi], &ol[gi], o2 + gi * HD, m2[gi], l2[gi]);
        for (int i = 0; i < 2 * HD; i++) CHECK_NEAR(s->att[h * 2 * HD + i], o[i], 1e-5);
        /* and it differs from dense attention with the new query: the old state was reused */
        ref_range(s, h, 0, 761, o2, m2, l2);
        double dd = 0;
        for (int i = 0; i < 2 * HD; i++) dd = fmax(dd, fabs((double)o2[i] - s->att[h * 2 * HD + i]));
        CHECK_MSG(dd > 1e-3, "head %d: a reused state should differ from dense (%.3g)", h, dd);
    }
    /* a distant query misses: dense */
    mac_step(s, 770, q2, far);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(hits, 0);
    for (int h = 0; h < 2; h++) {
        ref_range(s, h, 0, 771, o, om, ol);
        for (int i = 0; i < 2 * HD; i++) CHECK_NEAR(s->att[h * 2 * HD + i], o[i], 1e-5);
    }
    /* a match more than `lookback` positions back is not used */
    mac_step(s, 900, q2, qpre);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(hits, 0);
    /* rewriting cells forgets the states that covered them */
    mac_step(s, 905, q2, qpre);
    kvf_session_decode_hits(s, &hits, NULL);
    CHECK_EQ(hits, 4);
    kvf_attn_sparse_written(s, 0, 100);
    mac_step(s, 910, q2, qpre);
    kvf_session_decode_hits(s, &hits, NULL);
    CHECK_EQ(hits, 0);
    /* tau 1 (exact match only, here impossible once the query moves) and validation */
    d.tau = 1.5f;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_E_INVAL);
    d.tau = 0.9f, d.lookback = 513;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_E_INVAL);
    CHECK_EQ(kvf_decode_attn_from_name("mac"), (int)KVF_DECODE_MAC);
    CHECK_EQ(kvf_decode_attn_from_name("quest"), -1);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* decoding through the forward pass: MAC whose min_keys exceeds the context is dense, token for
 * token; MAC in force looks up once per step, layer and query head */
static void test_mac_forward(void) {
    kvf_model *m = load_synth("macfwd", 2048, 9);
    if (!m) return;
    int32_t toks[3][24];
    int64_t hits[3] = {-1, -1, -1}, looks[3] = {-1, -1, -1};
    for (int mode = 0; mode < 3; mode++) {
        kvf_session       *s;
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx = 2048, sp.n_threads = 2;
        if (kvf_session_new(m, &sp, &s) != KVF_OK) break;
        kvf_decode_attn_params d = kvf_decode_attn_default_params(mode ? KVF_DECODE_MAC : KVF_DECODE_DENSE);
        d.min_keys = mode == 1 ? 100000 : 0, d.band = 64;
        CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
        int32_t ids[600];
        for (int i = 0; i < 600; i++) ids[i] = 40 + (i * 11) % 80;
        CHECK_EQ(kvf_session_eval(s, ids, 600, 0), KVF_OK);
        int nv = kvf_model_n_vocab(m);
        for (int t = 0; t < 24; t++) {
            const float *lg = kvf_session_logits(s, -1);
            int          best = 0;
            for (int v = 1; v < nv; v++)
                if (lg[v] > lg[best]) best = v;
            toks[mode][t] = best;
            CHECK_EQ(kvf_session_eval(s, &best, 1, 0), KVF_OK);
        }
        kvf_session_decode_hits(s, &hits[mode], &looks[mode]);
        kvf_session_free(s);
    }
    CHECK(!memcmp(toks[0], toks[1], sizeof toks[0]));
    CHECK_EQ(looks[1], 0);
    CHECK_EQ(looks[2], 24 * 2 * 4); /* 24 steps x 2 layers x 4 query heads */
    CHECK(hits[2] >= 0 && hits[2] <= looks[2]);
    kvf_model_free(m);
}

/* ---- LouisKV (decode) ---------------------------------------------------------------------- */

/* Layer 0: keys [16, 704) point along e_t for topic t = (cell / 64) % 8 (amplitude 4), with
 * values one-hot of t; the sink [0, 16) and the cells from 704 on have zero keys and values
 * e_8 and e_9. A step at position 999 has the recent window [704, 1000) (band 256), so the
 * units cover [16, 704): k-means finds the topics, and a query along e_t selects topic t. */
static void fill_topics(kvf_session *s) {
    for (int h = 0; h < s->m->hp.n_head_kv; h++)
        for (int j = 0; j < N_KEYS; j++) {
            int t = (j / 64) % 8, mark = j < KVF_LOUIS_SINK ? 8 : j >= 704 ? 9 : t;
            for (int i = 0; i < HD; i++) {
                kvf_kv_put(s, kvf_kt_at(s, 0, h), kvf_kt_idx(i, j, HD), mark == t && i == t ? 4.0f : 0.0f);
                kvf_kv_put(s, kvf_v_at(s, 0, h), (int64_t)j * HD + i, i == mark ? 1.0f : 0.0f);
            }
        }
    s->n_cells = s->n_past = N_KEYS;
    kvf_attn_sparse_written(s, -1, 0);
}

/* q = a * e_t for every head, pre-RoPE query qp * e_u */
static void louis_step(kvf_session *s, int32_t pos, int t, float a, int u) {
    float q[4 * HD], qp[4 * HD];
    for (int i = 0; i < 4 * HD; i++) q[i] = i % HD == t ? a : 0.0f, qp[i] = i % HD == u ? 1.0f : 0.0f;
    mac_step(s, pos, q, qp);
}

static void test_louis_units_select(void) {
    kvf_model *m = load_synth("louis", 2048, 10);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_decode_attn_params d = kvf_decode_attn_default_params(KVF_DECODE_LOUIS);
    CHECK_NEAR(d.tau, 0.7, 1e-6);
    d.min_keys = 0, d.dense_layers = 0, d.budget = 64;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
    fill_topics(s);
    int64_t hits, looks, rd, tot;
    kvf_session_decode_hits(s, NULL, NULL);
    kvf_session_decode_density(s, NULL, NULL);
    louis_step(s, 999, 3, 4.0f, 0);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(looks, 2); /* one boundary per KV head */
    CHECK_EQ(hits, 0);
    CHECK_EQ(s->lv_cover[0], 704);
    /* topic 3 is block [192, 256): one cluster of 64 keys, exactly the budget */
    double e16 = exp(16.0 / sqrt((double)HD)), Z = 64 * e16 + 16 + 296;
    for (int h = 0; h < 4; h++) {
        const float *o = s->att + h * HD;
        CHECK_NEAR(o[3], 64 * e16 / Z, 1e-5);
        CHECK_NEAR(o[8], 16 / Z, 1e-5);
        CHECK_NEAR(o[9], 296 / Z, 1e-5);
        for (int i = 0; i < 8; i++)
            if (i != 3) CHECK_EQ(o[i], 0.0f);
    }
    kvf_session_decode_density(s, &rd, &tot);
    CHECK_EQ(rd, 2 * (16 + 64 + 296));
    CHECK_EQ(tot, 2 * 1000);
    /* the same pre-RoPE query: no boundary, the selection is kept although the post-RoPE query
     * now points at topic 5 */
    louis_step(s, 999, 5, 4.0f, 0);
    kvf_session_decode_hits(s, &hits, &looks);
    CHECK_EQ(hits, 2);
    CHECK_EQ(looks, 2);
    CHECK(s->att[3] > 0.0f && s->att[5] == 0.0f);
    /* an orthogonal pre-RoPE query is a boundary: topic 5 is selected */
    louis_step(s, 999, 5, 4.0f, 1);
    kvf_session_decode_hits(s, &hits, NULL);
    CHECK_EQ(hits, 0);
    CHECK(s->att[5] > 0.0f && s->att[3] == 0.0f);
    /* a budget of 128 keys takes topics 5 and (of the rest, all with equal mean-key weight)
     * the first; a budget of 63 fits no cluster of 64: sink and recent keys only */
    d.budget = 63;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
    louis_step(s, 999, 5, 4.0f, 1);
    CHECK_EQ(s->lv_nsel[0], 0);
    CHECK_NEAR(s->att[8], 16.0 / 312.0, 1e-5);
    /* decoding on, one position at a time: keys that leave the recent window become segments
     * of 64 */
    int32_t units = s->lv_nunits[0];
    for (int32_t pos = 1000; pos <= 1150; pos++) louis_step(s, pos, 5, 4.0f, 1);
    CHECK_EQ(s->lv_cover[0], 832); /* floor64(1151 - 256) */
    CHECK_EQ(s->lv_nunits[0], units + 2);
    CHECK_EQ(s->lv_off[units + 1], 768 - KVF_LOUIS_SINK);
    CHECK_EQ(s->lv_cells[s->lv_off[units + 1]], 768);
    CHECK_EQ(s->lv_cnt[units + 1], 64);
    /* rewriting a cell below the units forgets them; the next step clusters every key below
     * the recent window again, as input */
    kvf_attn_sparse_written(s, 0, 100);
    CHECK_EQ(s->lv_cover[0], 0);
    louis_step(s, 1150, 5, 4.0f, 1);
    CHECK_EQ(s->lv_cover[0], 832);
    CHECK_EQ(s->lv_nunits[0], KVF_LOUIS_WIN / 4); /* one window of input slots, no segment */
    /* validation */
    d.cluster = 3;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_E_INVAL);
    d.cluster = 16, d.budget = 0;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_E_INVAL);
    CHECK_EQ(kvf_decode_attn_from_name("louis"), (int)KVF_DECODE_LOUIS);
    CHECK_STR(kvf_decode_attn_name(KVF_DECODE_LOUIS), "louis");
    kvf_session_free(s);
    kvf_model_free(m);
}

/* every unit selected (budget >= the keys) is dense attention in three ranges */
static void test_louis_full_budget_is_dense(void) {
    kvf_model *m = load_synth("louisd", 2048, 11);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 2048, sp.n_threads = 2;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_decode_attn_params d = kvf_decode_attn_default_params(KVF_DECODE_LOUIS);
    d.min_keys = 0, d.dense_layers = 0, d.budget = 4096, d.band = 100;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
    uint64_t st = 777;
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < N_KEYS; j++)
            for (int i = 0; i < HD; i++) {
                st = st * 6364136223846793005ull + 1442695040888963407ull;
                float x = (float)((st >> 40) % 2001) / 1000.0f - 1.0f;
                kvf_kv_put(s, kvf_kt_at(s, 0, h), kvf_kt_idx(i, j, HD), 2.0f * x);
                kvf_kv_put(s, kvf_v_at(s, 0, h), (int64_t)j * HD + i, x * (float)(i % 7));
            }
    s->n_cells = s->n_past = N_KEYS;
    kvf_attn_sparse_written(s, -1, 0);
    float q[4 * HD], qp[4 * HD], o[2 * HD], om[2], ol[2];
    for (int step = 0; step < 3; step++) {
        for (int i = 0; i < 4 * HD; i++) q[i] = sinf((float)(i + 31 * step)), qp[i] = cosf((float)(i * (step + 1)));
        mac_step(s, 990 + step, q, qp);
        for (int h = 0; h < 2; h++) {
            ref_range(s, h, 0, 991 + step, o, om, ol);
            for (int i = 0; i < 2 * HD; i++) CHECK_NEAR(s->att[h * 2 * HD + i], o[i], 1e-5);
        }
    }
    CHECK_EQ(s->lv_nsel[0] + KVF_LOUIS_SINK, s->lv_cover[0]);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* the index is built during prefill: whole windows of 1024 keys below the recent window as
 * they fill, in the layers LouisKV runs; the first decode step clusters the rest */
static void test_louis_prefill_index(void) {
    kvf_model *m = load_synth("louispre", 4096, 13);
    if (!m) return;
    kvf_session       *s;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 4096, sp.n_threads = 2, sp.n_ubatch = 512;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    kvf_decode_attn_params d = kvf_decode_attn_default_params(KVF_DECODE_LOUIS);
    d.min_keys = 0, d.dense_layers = 1;
    CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
    int32_t ids[2600];
    for (int i = 0; i < 2600; i++) ids[i] = 40 + (i * 7) % 90;
    CHECK_EQ(kvf_session_eval(s, ids, 2600, 0), KVF_OK);
    CHECK_EQ(s->lv_cover[0], 0);    /* a dense layer */
    CHECK_EQ(s->lv_cover[1], 2048); /* the windows below floor64(2600 - 256) = 2304 */
    CHECK_EQ(s->lv_nunits[2], 2 * KVF_LOUIS_WIN / 4); /* layer 1, KV head 0 */
    int32_t members = 0;
    for (int u = 0; u < s->lv_nunits[2]; u++) members += s->lv_cnt[2 * s->lv_umax + u];
    CHECK_EQ(members, 2048 - KVF_LOUIS_SINK);
    int32_t tok = 50;
    CHECK_EQ(kvf_session_eval(s, &tok, 1, 0), KVF_OK);
    CHECK_EQ(s->lv_cover[1], 2304);
    CHECK_EQ(s->lv_nunits[2], 3 * KVF_LOUIS_WIN / 4);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* through the forward pass: LouisKV that keeps every key (or starts beyond the context) decodes
 * the tokens dense attention decodes; in force it looks up once per step, layer and KV head */
static void test_louis_forward(void) {
    kvf_model *m = load_synth("louisfwd", 2048, 12);
    if (!m) return;
    int32_t toks[4][24];
    int64_t looks[4] = {-1, -1, -1, -1};
    for (int mode = 0; mode < 4; mode++) {
        kvf_session       *s;
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx = 2048, sp.n_threads = 2;
        if (kvf_session_new(m, &sp, &s) != KVF_OK) break;
        kvf_decode_attn_params d = kvf_decode_attn_default_params(mode ? KVF_DECODE_LOUIS : KVF_DECODE_DENSE);
        d.min_keys = mode == 1 ? 100000 : 0, d.dense_layers = 0, d.budget = mode == 3 ? 128 : 4096;
        CHECK_EQ(kvf_session_set_decode_attn(s, &d), KVF_OK);
        int32_t ids[600];
        for (int i = 0; i < 600; i++) ids[i] = 40 + (i * 11) % 80;
        CHECK_EQ(kvf_session_eval(s, ids, 600, 0), KVF_OK);
        int nv = kvf_model_n_vocab(m);
        for (int t = 0; t < 24; t++) {
            const float *lg = kvf_session_logits(s, -1);
            int          best = 0;
            for (int v = 1; v < nv; v++)
                if (lg[v] > lg[best]) best = v;
            toks[mode][t] = best;
            CHECK_EQ(kvf_session_eval(s, &best, 1, 0), KVF_OK);
        }
        kvf_session_decode_hits(s, NULL, &looks[mode]);
        kvf_session_free(s);
    }
    CHECK(!memcmp(toks[0], toks[1], sizeof toks[0]));
    CHECK(!memcmp(toks[0], toks[2], sizeof toks[0]));
    CHECK_EQ(looks[1], 0);
    CHECK_EQ(looks[2], 24 * 2 * 2); /* 24 steps x 2 layers x 2 KV heads */
    CHECK_EQ(looks[3], 24 * 2 * 2);
    kvf_model_free(m);
}

static void test_params(void) {
    kvf_model *m = load_synth("par", 256, 6);
    if (!m) return;
    kvf_session *s;
    CHECK_EQ(kvf_session_new(m, NULL, &s), KVF_OK);
    CHECK_EQ((int)kvf_session_attn(s).mode, (int)KVF_ATTN_DENSE);
    CHECK_EQ(kvf_attn_from_name("sale"), (int)KVF_ATTN_SALE);
    CHECK_EQ(kvf_attn_from_name("power"), (int)KVF_ATTN_POWER);
    CHECK_EQ(kvf_attn_from_name("dense"), (int)KVF_ATTN_DENSE);
    CHECK_EQ(kvf_attn_from_name("sparse"), -1);
    CHECK_STR(kvf_attn_name(KVF_ATTN_POWER), "power");
    kvf_attn_params a = kvf_attn_default_params(KVF_ATTN_SALE);
    a.threshold = 1.5f;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "threshold");
    a = kvf_attn_default_params(KVF_ATTN_POWER);
    a.block = 100;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_E_INVAL);
    a.block = 64, a.window = 0;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_E_INVAL);
    a.window = 5, a.mode = (kvf_attn_mode)7;
    CHECK_EQ(kvf_session_set_attn(s, &a), KVF_E_INVAL);
    CHECK_EQ((int)kvf_session_attn(s).mode, (int)KVF_ATTN_DENSE); /* unchanged by failures */
    kvf_session_free(s);
    kvf_model_free(m);
}

int main(void) {
    RUN(test_params);
    RUN(test_sale_selects_blocks);
    RUN(test_power_pattern);
    RUN(test_forward_switched_off);
    RUN(test_mac_match_amend_complete);
    RUN(test_mac_forward);
    RUN(test_louis_units_select);
    RUN(test_louis_full_budget_is_dense);
    RUN(test_louis_prefill_index);
    RUN(test_louis_forward);
    return TEST_REPORT();
}
