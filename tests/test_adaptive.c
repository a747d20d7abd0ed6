/* test_adaptive.c - `--ratio auto` (src/fusion/adaptive.c): the budget rule on hand-made score
 * vectors (bounds, monotone in the fidelity target, deterministic, order-independent, the
 * fixed-ratio path, degenerate scores, parameter errors), and end to end through
 * kvf_session_fuse on tiny synthetic models (a3 and cacheblend stay within the bounds and
 * report the ratio they used; a larger target never recomputes fewer rows; repeated runs pick
 * the same rows; auto pinned at ratio 1 is full prefill; a question that attends to one needle
 * token gets a smaller budget than one that attends to nothing in particular). */
#include "harness.h"
#include "synth.h"

#include "common.h"
#include "engine/kv_cells.h"
#include "fusion/adaptive.h"
#include "store/chunk.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

static char       tmpdir[256];
static kvf_model *g_model;
static int32_t    g_nv;

static kvf_fuse_params auto_params(float fidelity, float rmin, float rmax) {
    kvf_fuse_params fp = kvf_fuse_default_params();
    fp.ratio_auto      = true;
    fp.fidelity        = fidelity;
    fp.ratio_min       = rmin;
    fp.ratio_max       = rmax;
    return fp;
}

/* ---- the rule on score vectors ------------------------------------------------------------ */

static void test_rule_concentrated_vs_spread(void) {
    enum { N = 200 };
    float conc[N], flat[N];
    for (int i = 0; i < N; i++) conc[i] = 0.001f, flat[i] = 1.0f;
    conc[17] = 10.0f, conc[150] = 5.0f; /* two tokens hold 15 / 15.198 = 98.7% */
    kvf_fuse_params fp = auto_params(0.95f, 0.0f, 1.0f);
    float           mass;
    CHECK_EQ(kvf_adaptive_k(conc, N, N, &fp, &mass), 2);
    CHECK(mass >= 0.95f && mass <= 1.0f);
    /* uniform: 95% of the mass needs 95% of the tokens */
    CHECK_EQ(kvf_adaptive_k(flat, N, N, &fp, &mass), 190);
    CHECK(fabsf(mass - 0.95f) < 1e-4f);
    /* bounds: ratio_max caps the uniform case; they are fractions of base (T - q), the
     * candidates may be fewer */
    fp = auto_params(0.95f, 0.1f, 0.5f);
    CHECK_EQ(kvf_adaptive_k(flat, N, N, &fp, &mass), 100);
    CHECK(fabsf(mass - 0.5f) < 1e-4f);
    CHECK_EQ(kvf_adaptive_k(flat, N, 2 * N, &fp, NULL), 190); /* base 400: max 200, needs 190 */
    CHECK_EQ(kvf_adaptive_k(flat, 50, 1000, &fp, NULL), 50);  /* never more than n */
    /* sinks: 3 huge scores, a block of 30 relevant tokens, noise. Uncapped, the sinks hold
     * 99.9% and the floor (10 tokens) would do; capped at the floor's weakest score, the block
     * decides: 30 tokens hold 0.95 of the capped mass only with most of the block */
    float sink[N];
    for (int i = 0; i < N; i++) sink[i] = 1e-5f;
    sink[0] = sink[60] = sink[120] = 1000.0f;
    for (int i = 0; i < 30; i++) sink[140 + i] = 0.5f + 0.01f * (float)i;
    fp = auto_params(0.95f, 0.05f, 0.5f); /* floor 10 */
    int32_t ks = kvf_adaptive_k(sink, N, N, &fp, &mass);
    CHECK_MSG(ks >= 28 && ks <= 33, "sinks + a block of 30: k %d", ks);
    CHECK(mass >= 0.95f);
    fp = auto_params(0.95f, 0.0f, 0.5f); /* no floor, no cap: the sinks meet the target */
    CHECK_EQ(kvf_adaptive_k(sink, N, N, &fp, NULL), 3);
}

static void test_rule_monotone_and_deterministic(void) {
    enum { N = 500 };
    float sc[N], perm[N];
    uint64_t x = 99;
    for (int i = 0; i < N; i++) {
        x     = x * 6364136223846793005ull + 1442695040888963407ull;
        sc[i] = (float)pow((double)((x >> 40) % 1000) / 1000.0, 6.0); /* heavy-tailed */
    }
    for (int i = 0; i < N; i++) perm[i] = sc[(i * 7 + 3) % N]; /* 7 is prime to 500 */
    int32_t prev = -1;
    for (int t = 1; t <= 100; t++) {
        kvf_fuse_params fp = auto_params((float)t / 100.0f, 0.05f, 0.6f);
        int32_t         k  = kvf_adaptive_k(sc, N, N, &fp, NULL);
        CHECK_MSG(k >= 25 && k <= 300, "fidelity %.2f: k %d outside [25, 300]", t / 100.0, k);
        CHECK_MSG(k >= prev, "fidelity %.2f: k %d < %d at a lower target", t / 100.0, k, prev);
        CHECK_EQ(kvf_adaptive_k(sc, N, N, &fp, NULL), k);   /* same input, same answer */
        CHECK_EQ(kvf_adaptive_k(perm, N, N, &fp, NULL), k); /* order of the candidates */
        prev = k;
    }
    /* the covered mass is at least the target wherever the bounds do not bind */
    kvf_fuse_params fp = auto_params(0.5f, 0.0f, 1.0f);
    float           mass;
    int32_t         k  = kvf_adaptive_k(sc, N, N, &fp, &mass);
    CHECK(mass >= 0.5f);
    fp.fidelity = 0.5f * mass; /* one token fewer must be below the target */
    CHECK(kvf_adaptive_k(sc, N, N, &fp, NULL) <= k);
}

static void test_rule_fixed_and_degenerate(void) {
    float           sc[10] = {0};
    kvf_fuse_params fp     = kvf_fuse_default_params();
    fp.ratio               = 0.3f;
    CHECK_EQ(kvf_adaptive_k(sc, 10, 10, &fp, NULL), 3); /* fixed: floor(base * ratio) */
    CHECK_EQ(kvf_adaptive_k(sc, 10, 40, &fp, NULL), 10);
    /* no mass (all zero, negative or not finite): the least budget */
    fp     = auto_params(0.9f, 0.2f, 0.8f);
    sc[3]  = -5.0f, sc[4] = NAN, sc[5] = -INFINITY;
    float m = 0;
    CHECK_EQ(kvf_adaptive_k(sc, 10, 10, &fp, &m), 2);
    CHECK(m == 1.0f);
    /* infinity is ignored too; the finite mass decides */
    sc[6] = INFINITY, sc[7] = 1.0f;
    CHECK_EQ(kvf_adaptive_k(sc, 10, 10, &fp, NULL), 2);
    CHECK_EQ(kvf_adaptive_k(sc, 0, 10, &fp, NULL), 0);
    /* parameter checks */
    CHECK_EQ(kvf_adaptive_check(&fp), KVF_OK);
    kvf_fuse_params bad = auto_params(0.0f, 0.1f, 0.5f);
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_E_INVAL);
    bad = auto_params(1.5f, 0.1f, 0.5f);
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_E_INVAL);
    bad = auto_params(NAN, 0.1f, 0.5f);
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_E_INVAL);
    bad = auto_params(0.9f, 0.6f, 0.5f);
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "min <= max") != NULL);
    bad = auto_params(0.9f, -0.1f, 0.5f);
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_E_INVAL);
    bad.ratio_auto = false; /* fixed ratios ignore the auto fields */
    CHECK_EQ(kvf_adaptive_check(&bad), KVF_OK);
}

/* ---- end to end on a synthetic model ------------------------------------------------------- */

static int32_t *make_ids(int n, uint64_t seed) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        seed   = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)(g_nv - 3));
    }
    return ids;
}

static kvf_session *new_session(const kvf_model *m, int n_ctx) {
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = n_ctx;
    sp.n_threads          = 2;
    kvf_session *s        = NULL;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    return s;
}

static void test_fuse_auto(void) {
    int          lens[5] = {10, 70, 90, 50, 8}, T = 0;
    int32_t     *ids[5];
    kvf_segment  segs[5];
    for (int i = 0; i < 5; i++) {
        ids[i]  = make_ids(lens[i], 31 + (uint64_t)i * 7);
        segs[i] = (kvf_segment){ids[i], lens[i]};
        T += lens[i];
    }
    int32_t      base = T - lens[4], nd = T - lens[4] - lens[0];
    kvf_session *s    = new_session(g_model, T + 8);
    kvf_chunk_cache *cache;
    CHECK_EQ(kvf_chunk_cache_new_memory(0, &cache), KVF_OK);
    kvf_method ms[2] = {KVF_METHOD_A3, KVF_METHOD_CACHEBLEND};
    for (int mi = 0; mi < 2; mi++) {
        int32_t prev = -1;
        for (int t = 0; t < 6; t++) {
            float           fid = 0.5f + 0.1f * (float)t; /* 0.5 .. 1.0 */
            kvf_fuse_params fp  = auto_params(fid, 0.1f, 0.7f);
            fp.method           = ms[mi];
            kvf_fuse_stats st;
            CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fp, &st), KVF_OK);
            int32_t k = st.recomputed_tokens - lens[4];
            CHECK_MSG(k >= (int32_t)ceil(base * 0.1 - 1e-4) && k <= (int32_t)floor(base * 0.7 + 1e-4) && k <= nd,
                      "%s fidelity %.1f: %d rows outside the bounds", kvf_method_name(ms[mi]), fid, k);
            CHECK(fabsf(st.ratio_used - (float)k / (float)base) < 1e-6f);
            CHECK(st.score_mass > 0.0f && st.score_mass <= 1.0f + 1e-6f);
            CHECK_MSG(k >= prev, "%s: fidelity %.1f recomputes %d rows, fewer than %d at a lower target",
                      kvf_method_name(ms[mi]), fid, k, prev);
            /* once more: the same rows and the same first-token logits */
            int32_t        n1;
            const int32_t *r1    = kvf_session_fused_rows(s, &n1);
            int32_t       *rows1 = malloc(sizeof(int32_t) * (size_t)T);
            memcpy(rows1, r1, sizeof(int32_t) * (size_t)n1);
            float *l1 = malloc(sizeof(float) * (size_t)g_nv);
            memcpy(l1, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv);
            kvf_fuse_stats st2;
            CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fp, &st2), KVF_OK);
            int32_t        n2;
            const int32_t *rows2 = kvf_session_fused_rows(s, &n2);
            CHECK(n1 == n2 && memcmp(rows1, rows2, sizeof(int32_t) * (size_t)n1) == 0);
            CHECK(memcmp(l1, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv) == 0);
            free(rows1), free(l1);
            prev = k;
        }
        /* the fixed ratio path is unchanged and reports its ratio */
        kvf_fuse_params fx = kvf_fuse_default_params();
        fx.method          = ms[mi];
        fx.ratio           = 0.25f;
        kvf_fuse_stats st;
        CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fx, &st), KVF_OK);
        CHECK_EQ(st.recomputed_tokens - lens[4], (int32_t)floor(base * 0.25));
        /* auto pinned to ratio 1 recomputes every document token: full prefill's logits */
        kvf_fuse_params one = auto_params(0.5f, 1.0f, 1.0f);
        one.method          = ms[mi];
        one.dtype           = KVF_CHUNK_F32;
        CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &one, &st), KVF_OK);
        CHECK_EQ(st.recomputed_tokens, T - lens[0]);
        float *fused = malloc(sizeof(float) * (size_t)g_nv);
        memcpy(fused, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv);
        kvf_fuse_params full = kvf_fuse_default_params();
        full.method          = KVF_METHOD_FULL;
        CHECK_EQ(kvf_session_fuse(s, NULL, segs, 5, &full, NULL), KVF_OK);
        double d = 0, mag = 0;
        for (int i = 0; i < g_nv; i++)
            d = fmax(d, fabs(fused[i] - kvf_session_logits(s, -1)[i])), mag = fmax(mag, fabs(fused[i]));
        CHECK_MSG(d <= 2e-3 * (1 + mag), "%s auto at ratio 1: logits differ from full by %.3g",
                  kvf_method_name(ms[mi]), d);
        free(fused);
    }
    /* bad auto parameters are refused with a message */
    kvf_fuse_params bad = auto_params(0.9f, 0.5f, 0.2f);
    CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &bad, NULL), KVF_E_INVAL);
    CHECK(strstr(kvf_errmsg(), "auto ratio bounds") != NULL);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    for (int i = 0; i < 5; i++) free(ids[i]);
}

/* A 2-layer model whose layer-1 attention scores are token identity (q = k = the embedding,
 * no RoPE on most dimensions): a question that contains a document token attends to it, one
 * that does not spreads its attention. Auto picks fewer rows for the first. */
static void test_fuse_auto_follows_concentration(void) {
    char path[400];
    snprintf(path, sizeof path, "%s/needle.gguf", tmpdir);
    int32_t    ids[5][64];
    int        lens[5] = SYNTH_NEEDLE_LENS, needle = SYNTH_NEEDLE, needle_pos = SYNTH_NEEDLE_POS;
    kvf_model *m;
    if (synth_needle_file(path, ids) != KVF_OK || kvf_model_load(path, NULL, &m) != KVF_OK) {
        T_FAILMSG("needle model: %s", kvf_errmsg());
        return;
    }
    kvf_segment segs[5];
    for (int i = 0; i < 5; i++) segs[i].ids = ids[i], segs[i].n = lens[i];
    kvf_session     *s = new_session(m, 256);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = auto_params(0.8f, 0.0f, 1.0f);
    fp.pool            = 1;
    int32_t k[2];
    for (int asks = 0; asks < 2; asks++) {
        ids[4][2] = asks ? needle : ids[4][3];
        kvf_fuse_stats st;
        CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fp, &st), KVF_OK);
        k[asks]   = st.recomputed_tokens - lens[4];
        int found = 0;
        for (int i = 0; i < s->n_fuse_rows; i++) found |= s->fuse_rows[i] == needle_pos;
        if (asks) CHECK_MSG(found, "the needle the question attends to is not recomputed");
    }
    CHECK_MSG(k[1] < k[0], "auto recomputes %d rows for a question that attends to one token, "
                           "%d for one that does not", k[1], k[0]);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    kvf_model_free(m);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf-test-adaptive-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) return 1;
    kvf_set_log_level(1);
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q4_1, .etype = KVF_TYPE_Q8_0, .n_layer = 4, .n_ctx = 512, .seed = 11};
    synth_info info;
    char       path[400];
    snprintf(path, sizeof path, "%s/adaptive.gguf", tmpdir);
    if (synth_model_file(&cfg, path, &info) != KVF_OK || kvf_model_load(path, NULL, &g_model) != KVF_OK) {
        fprintf(stderr, "setup: %s\n", kvf_errmsg());
        return 1;
    }
    g_nv = info.n_vocab;
    RUN(test_rule_concentrated_vs_spread);
    RUN(test_rule_monotone_and_deterministic);
    RUN(test_rule_fixed_and_degenerate);
    RUN(test_fuse_auto);
    RUN(test_fuse_auto_follows_concentration);
    kvf_model_free(g_model);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_REPORT();
}
