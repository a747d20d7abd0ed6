/* test_fusion.c - KV cache fusion on tiny synthetic models: the invariants of
 * ../shared/docs/fusion.md section 3 (ratio 1.0 == full prefill; prefix-cache equivalence;
 * RoPE recovery at layer 0, and the equivalent "rotate post-RoPE keys by the delta" form), the
 * cacheblend selection against top-k by V deviation computed here independently, the epic set,
 * eviction budgets, chunk cache behaviour, determinism and argument errors. */
#include "harness.h"
#include "synth.h"

#include "store/chunk.h"
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

static char       tmpdir[256];
static kvf_model *g_model;
static int32_t    g_nv;

static int32_t *make_ids(int n, uint64_t seed) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) {
        seed   = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)(g_nv - 3));
    }
    return ids;
}

/* prompt: prefix (P), docs of the given lengths, question (q) */
typedef struct {
    int          n_segs;
    kvf_segment  segs[16];
    int32_t     *ids[16];
    int32_t     *all; /* concatenation */
    int32_t      T;
} prompt;

static void make_prompt(prompt *p, int P, const int *docs, int n_docs, int q, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->n_segs = n_docs + 2;
    int lens[16];
    lens[0] = P;
    for (int i = 0; i < n_docs; i++) lens[i + 1] = docs[i];
    lens[n_docs + 1] = q;
    for (int i = 0; i < p->n_segs; i++) {
        p->ids[i]     = make_ids(lens[i] ? lens[i] : 1, seed + (uint64_t)i * 977);
        p->segs[i].ids = p->ids[i];
        p->segs[i].n   = lens[i];
        p->T += lens[i];
    }
    p->all = malloc(sizeof(int32_t) * (size_t)p->T);
    for (int i = 0, o = 0; i < p->n_segs; o += lens[i], i++)
        memcpy(p->all + o, p->ids[i], sizeof(int32_t) * (size_t)lens[i]);
}

static void free_prompt(prompt *p) {
    for (int i = 0; i < p->n_segs; i++) free(p->ids[i]);
    free(p->all);
}

static kvf_session *new_session(int n_ctx) {
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = n_ctx;
    sp.n_threads          = 2;
    kvf_session *s        = NULL;
    CHECK_EQ(kvf_session_new(g_model, &sp, &s), KVF_OK);
    return s;
}

/* logits of the last token of a plain prefill */
static float *full_logits(const int32_t *ids, int n) {
    kvf_session *s = new_session(n + 8);
    float       *l = malloc(sizeof(float) * (size_t)g_nv);
    kvf_session_eval(s, ids, n, 0);
    memcpy(l, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv);
    kvf_session_free(s);
    return l;
}

/* Tolerance for "the same arithmetic as a full prefill". In q16 on kernel sets that multiply
 * batches of many rows with float activations (kvf_matmul_float_rows: AVX2 without VNNI), a
 * chunk, the question or a recomputed subset is a batch of another size than the full
 * prompt, so its rows may take the other path (float rows vs two-level int8): they then agree
 * only within q16's accuracy (2e-3, test_model.c). Otherwise bit-level agreement up to f32
 * accumulation order. */
static double same_arith_tol(void) {
    return kvf_matmul_float_rows(g_model->K, 1 << 20, g_model->precision == KVF_PREC_Q16) ? 2e-3
                                                                                          : 1e-5;
}

static double max_diff(const float *a, const float *b, int n, double *mag) {
    double d = 0;
    *mag     = 0;
    for (int i = 0; i < n; i++) d = fmax(d, fabs(a[i] - b[i])), *mag = fmax(*mag, fabs(b[i]));
    return d;
}

static int argmax(const float *l) {
    int b = 0;
    for (int i = 1; i < g_nv; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

/* greedy continuation of n tokens from the session's current logits */
static void greedy(kvf_session *s, int n, int32_t *out) {
    for (int i = 0; i < n; i++) {
        out[i] = argmax(kvf_session_logits(s, -1));
        kvf_session_eval(s, &out[i], 1, 0);
    }
}

static kvf_fuse_params params(kvf_method m, float ratio, kvf_chunk_dtype dt) {
    kvf_fuse_params fp = kvf_fuse_default_params();
    fp.method          = m;
    fp.ratio           = ratio;
    fp.dtype           = dt;
    return fp;
}

/* ratio 1.0 reproduces full prefill: logits within float tolerance, same greedy tokens */
static void test_ratio_one_equals_full(void) {
    int    docs[3] = {40, 77, 23};
    prompt p;
    make_prompt(&p, 12, docs, 3, 9, 1);
    float           *ref = full_logits(p.all, p.T);
    kvf_session     *s   = new_session(p.T + 16);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_session *sf = new_session(p.T + 16);
    kvf_session_eval(sf, p.all, p.T, 0);
    int32_t ref_tok[6];
    greedy(sf, 6, ref_tok);
    kvf_session_free(sf);
    kvf_method ms[] = {KVF_METHOD_A3,      KVF_METHOD_CACHEBLEND, KVF_METHOD_FULL,
                       KVF_METHOD_PREFIX,  KVF_METHOD_KVSHARE,    KVF_METHOD_PROPHET,
                       KVF_METHOD_FOCUS,   KVF_METHOD_ORACLE};
    for (int dt = 0; dt < 2; dt++)
        for (int i = 0; i < (int)(sizeof ms / sizeof ms[0]); i++) {
            kvf_fuse_params fp = params(ms[i], 1.0f, dt ? KVF_CHUNK_F32 : KVF_CHUNK_F16);
            kvf_fuse_stats  st;
            CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
            double mag, d = max_diff(kvf_session_logits(s, -1), ref, g_nv, &mag);
            /* f32 chunks: the same arithmetic as full prefill; f16: the prefix KV is rounded */
            double tol = dt ? same_arith_tol() : 2e-3;
            CHECK_MSG(d <= tol * (1 + mag), "%s r=1 (%s): logits differ from full by %.3g",
                      kvf_method_name(ms[i]), dt ? "f32" : "f16", d);
            int32_t tok[6];
            greedy(s, 6, tok);
            CHECK_MSG(memcmp(tok, ref_tok, sizeof tok) == 0, "%s r=1: greedy tokens differ",
                      kvf_method_name(ms[i]));
            if (kvf_method_has_ratio(ms[i])) CHECK_EQ(st.recomputed_tokens, p.T - p.segs[0].n);
            CHECK_EQ(st.total_tokens, p.T);
        }
    /* the keys kvf_fuse_chunk_keys names are the ones fusion stored: the prefix and every
     * document, in order, each found in the cache; another dtype names other keys */
    for (int dt = 0; dt < 2; dt++) {
        kvf_fuse_params fp = params(KVF_METHOD_A3, 0.15f, dt ? KVF_CHUNK_F32 : KVF_CHUNK_F16);
        uint8_t         keys[8][16];
        CHECK_EQ(kvf_fuse_chunk_keys(g_model, p.segs, p.n_segs, &fp, keys, 8), p.n_segs - 1);
        CHECK_EQ(kvf_fuse_chunk_keys(g_model, p.segs, p.n_segs, &fp, keys, 2), 2);
        CHECK_EQ(kvf_fuse_chunk_keys(g_model, p.segs, p.n_segs, &fp, NULL, 1), -1);
        int n = kvf_fuse_chunk_keys(g_model, p.segs, p.n_segs, &fp, keys, 8);
        CHECK_EQ(kvf_fuse_cached_tokens(g_model, cache, p.segs, p.n_segs, &fp), p.T - p.segs[p.n_segs - 1].n);
        for (int k = 0; k < n; k++) {
            kvf_chunk_key key;
            memcpy(key.b, keys[k], 16);
            kvf_chunk *ch = cache->ops->get(cache, &key);
            CHECK_MSG(ch && ch->n_tokens == p.segs[k].n, "dtype %d: key %d names segment %d's chunk", dt, k, k);
            kvf_chunk_release(ch);
        }
    }
    free(ref);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    free_prompt(&p);
}

/* prefix ++ chunk ++ question with the chunk computed after the same prefix: reuse == full */
static void test_prefix_cache_equivalence(void) {
    int    docs[1] = {53};
    prompt p;
    make_prompt(&p, 17, docs, 1, 8, 2);
    float           *ref = full_logits(p.all, p.T);
    kvf_session     *s   = new_session(p.T + 4);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_REUSE, 0.15f, KVF_CHUNK_F32);
    kvf_fuse_stats  st;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    double mag, d = max_diff(kvf_session_logits(s, -1), ref, g_nv, &mag);
    CHECK_MSG(d <= same_arith_tol() * (1 + mag), "reuse after the same prefix differs from full by %.3g", d);
    CHECK_EQ(st.recomputed_tokens, 8);
    CHECK_EQ(st.chunk_misses, 2); /* prefix + document, computed on the first request */
    /* a second request hits the cache and gives the same logits */
    float first[64];
    memcpy(first, kvf_session_logits(s, -1), sizeof first);
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    CHECK_EQ(st.chunk_hits, 2);
    CHECK_EQ(st.chunk_misses, 0);
    CHECK(memcmp(first, kvf_session_logits(s, -1), sizeof first) == 0);
    /* the prefix method reuses prefix + first document exactly */
    fp.method = KVF_METHOD_PREFIX;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    d = max_diff(kvf_session_logits(s, -1), ref, g_nv, &mag);
    CHECK_MSG(d <= same_arith_tol() * (1 + mag), "prefix method differs from full by %.3g", d);
    CHECK_EQ(st.reused_tokens, 17 + 53);
    free(ref);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    free_prompt(&p);
}

/* oracle: the first document, computed after the same prefix, has full's KV (the invariant
 * above), so its deviation is ~0 and it is never chosen while the later documents, computed
 * without the documents before them, still have rows to give; the budget is the usual one */
static void test_oracle_selection(void) {
    int    docs[3] = {30, 25, 20};
    prompt p;
    make_prompt(&p, 12, docs, 3, 6, 5);
    kvf_session     *s = new_session(p.T + 4);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_ORACLE, 0.3f, KVF_CHUNK_F32);
    kvf_fuse_stats  st;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    int32_t k = (int32_t)floor((double)(p.T - 6) * 0.3); /* 26 <= 45 rows of documents 2, 3 */
    CHECK_EQ(st.recomputed_tokens, k + 6);
    int in_first = 0;
    for (int i = 0; i < s->n_fuse_rows - 6; i++) in_first += s->fuse_rows[i] < 12 + 30;
    CHECK_MSG(in_first == 0, "oracle chose %d rows of the first document", in_first);
    /* and the cache it leaves is a fused one: a second request gives the same logits */
    float first[64];
    memcpy(first, kvf_session_logits(s, -1), sizeof first);
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    CHECK(memcmp(first, kvf_session_logits(s, -1), sizeof first) == 0);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    free_prompt(&p);
}

/* Conversation prefix blocks: save a session's KV in blocks, restore it into another session
 * bit for bit; a changed token stops the restore at its block; other KV precision or prefill
 * attention never matches; bad arguments are refused. */
static int kv_cells_equal(const kvf_session *a, const kvf_session *b, int32_t n) {
    const kvf_hparams *hp = &g_model->hp;
    int                hd = hp->head_dim, bad = 0;
    for (int l = 0; l < hp->n_layer; l++)
        for (int h = 0; h < hp->n_head_kv; h++)
            for (int32_t c = 0; c < n; c++)
                for (int d = 0; d < hd; d++) {
                    float ka = kvf_kv_get(a, kvf_kt_at(a, l, h), kvf_kt_idx(d, c, hd));
                    float kb = kvf_kv_get(b, kvf_kt_at(b, l, h), kvf_kt_idx(d, c, hd));
                    float va = kvf_kv_get(a, kvf_v_at(a, l, h), (int64_t)c * hd + d);
                    float vb = kvf_kv_get(b, kvf_v_at(b, l, h), (int64_t)c * hd + d);
                    bad += memcmp(&ka, &kb, 4) != 0 || memcmp(&va, &vb, 4) != 0;
                }
    return bad == 0;
}

static void test_prefix_blocks(void) {
    int32_t         *ids = make_ids(80, 4242);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_session *a = new_session(128), *b = new_session(128);
    CHECK_EQ(kvf_session_eval(a, ids, 70, 0), KVF_OK);
    int32_t n = -1;
    CHECK_EQ(kvf_session_prefix_save(a, cache, ids, 70, 16, 0, &n), KVF_OK);
    CHECK_EQ(n, 64); /* 4 whole blocks; the last 6 tokens are not a block */
    /* saving again writes nothing new and reports the same coverage */
    CHECK_EQ(kvf_session_prefix_save(a, cache, ids, 70, 16, 0, &n), KVF_OK);
    CHECK_EQ(n, 64);
    /* restore into a fresh session: 64 tokens, bit-identical cells, identical logits after */
    CHECK_EQ(kvf_session_prefix_load(b, cache, ids, 80, 16, &n), KVF_OK);
    CHECK_EQ(n, 64);
    CHECK_EQ(kvf_session_n_past(b), 64);
    CHECK(kv_cells_equal(a, b, 64));
    CHECK_EQ(kvf_session_truncate(a, 64), KVF_OK);
    CHECK_EQ(kvf_session_eval(a, ids + 64, 16, 0), KVF_OK);
    CHECK_EQ(kvf_session_eval(b, ids + 64, 16, 0), KVF_OK);
    CHECK(memcmp(kvf_session_logits(a, -1), kvf_session_logits(b, -1), sizeof(float) * (size_t)g_nv) == 0);
    /* a prompt of exactly 64 tokens keeps its last token to evaluate: 48 */
    kvf_session_truncate(b, 0);
    CHECK_EQ(kvf_session_prefix_load(b, cache, ids, 64, 16, &n), KVF_OK);
    CHECK_EQ(n, 48);
    /* a token changed at position 40: no block of it is saved; b keeps its 40 matching tokens */
    int32_t *alt = malloc(sizeof(int32_t) * 80);
    memcpy(alt, ids, sizeof(int32_t) * 80);
    alt[40] = (alt[40] + 1) % (g_nv - 3);
    CHECK_EQ(kvf_session_prefix_load(b, cache, alt, 80, 16, &n), KVF_OK);
    CHECK_EQ(n, 40);
    CHECK_EQ(kvf_session_n_past(b), 40);
    CHECK(kv_cells_equal(a, b, 40));
    /* the same tokens under another block size are other keys: nothing */
    kvf_session_truncate(b, 0);
    CHECK_EQ(kvf_session_prefix_load(b, cache, ids, 80, 32, &n), KVF_OK);
    CHECK_EQ(n, 0);
    /* f16 KV, or SALE prefill attention: the f32 dense blocks are not theirs */
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 128;
    sp.n_threads          = 1;
    sp.kv_type            = KVF_KV_F16;
    kvf_session *h = NULL;
    CHECK_EQ(kvf_session_new(g_model, &sp, &h), KVF_OK);
    CHECK_EQ(kvf_session_prefix_load(h, cache, ids, 80, 16, &n), KVF_OK);
    CHECK_EQ(n, 0);
    kvf_attn_params sale = kvf_attn_default_params(KVF_ATTN_SALE);
    CHECK_EQ(kvf_session_set_attn(b, &sale), KVF_OK);
    CHECK_EQ(kvf_session_prefix_load(b, cache, ids, 80, 16, &n), KVF_OK);
    CHECK_EQ(n, 0);
    /* errors: a session not holding the tokens, a bad block size */
    CHECK_EQ(kvf_session_prefix_save(a, cache, alt, 80, 16, 0, &n), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefix_save(a, cache, ids, 80, 0, 0, &n), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefix_load(b, cache, ids, 80, KVF_PREFIX_BLOCK_MAX + 1, &n), KVF_E_INVAL);
    CHECK_EQ(kvf_session_prefix_load(b, NULL, ids, 80, 16, &n), KVF_E_INVAL);
    free(alt);
    kvf_session_free(h);
    kvf_session_free(a), kvf_session_free(b);
    kvf_chunk_cache_free(cache);
    free(ids);
}

/* RoPE recovery at layer 0: a chunk computed alone at positions 0..n-1 and placed at k..k+n-1
 * has the keys that a prefill computes there; rotating post-RoPE keys by the position delta
 * gives the same keys within float tolerance */
static void test_rope_recovery(void) {
    int    docs[1] = {30};
    prompt p;
    make_prompt(&p, 21, docs, 1, 5, 3);
    const kvf_hparams *hp = &g_model->hp;
    int                hd = hp->head_dim, kvd = hp->n_head_kv * hd, half = hp->n_rot / 2;
    kvf_session       *full = new_session(p.T);
    kvf_session_eval(full, p.all, p.T, 0);
    kvf_session     *s = new_session(p.T);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_REUSE, 0.15f, KVF_CHUNK_F32);
    fp.chunk_alone     = true;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, NULL), KVF_OK);
    int    k = p.segs[0].n, bad = 0;
    double worst_delta = 0;
    float *pre = malloc(sizeof(float) * (size_t)kvd), *post = malloc(sizeof(float) * (size_t)kvd);
    float  c[256], sn[256];
    /* the chunk as stored: pre-RoPE keys at layer 0 */
    kvf_chunk_key key = kvf_chunk_key_make(g_model->cache_id, KVF_CHUNK_F32, NULL, 0, p.segs[1].ids, p.segs[1].n);
    kvf_chunk    *ch  = cache->ops->get(cache, &key);
    CHECK(ch != NULL);
    for (int t = 0; ch && t < p.segs[1].n; t++) {
        int pos = k + t;
        for (int h = 0; h < hp->n_head_kv; h++)
            for (int i = 0; i < hd; i++)
                bad += kvf_kv_get(s, kvf_kt_at(s, 0, h), kvf_kt_idx(i, pos, hd)) !=
                       kvf_kv_get(full, kvf_kt_at(full, 0, h), kvf_kt_idx(i, pos, hd));
        /* the alternative: post-RoPE at the old position t, rotated by the delta k */
        kvf_chunk_read(NULL, ch, 0, 0, t, 1, pre);
        memcpy(post, pre, sizeof(float) * (size_t)kvd);
        kvf_rope_table(g_model, t, c, sn);
        kvf_rope_row(hp, post, hp->n_head_kv, c, sn);
        kvf_rope_table(g_model, k, c, sn);
        kvf_rope_row(hp, post, hp->n_head_kv, c, sn);
        for (int h = 0; h < hp->n_head_kv; h++)
            for (int i = 0; i < hd; i++)
                worst_delta = fmax(worst_delta, fabs(post[h * hd + i] - kvf_kv_get(full, kvf_kt_at(full, 0, h), kvf_kt_idx(i, pos, hd))));
    }
    KVF_UNUSED(half);
    CHECK_MSG(bad == 0, "%d layer-0 keys differ after RoPE recovery", bad);
    CHECK_MSG(worst_delta < 1e-4, "rotating post-RoPE keys by the delta differs by %.3g", worst_delta);
    kvf_chunk_release(ch);
    free(pre), free(post);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s), kvf_session_free(full);
    free_prompt(&p);
}

/* cacheblend's selection == top-k by ||V1_fresh - V1_cached||^2 computed independently:
 * fresh = layer-1 values of a full prefill; cached = layer-1 values of prefix ++ document */
static void test_cacheblend_selection(void) {
    int    docs[3] = {31, 45, 27};
    prompt p;
    make_prompt(&p, 10, docs, 3, 6, 4);
    const kvf_hparams *hp  = &g_model->hp;
    int                hd  = hp->head_dim;
    kvf_session       *full = new_session(p.T);
    kvf_session_eval(full, p.all, p.T, 0);
    float *dev = calloc((size_t)p.T, sizeof(float));
    for (int d = 1; d <= 3; d++) {
        int32_t      n = p.segs[d].n, start = 0;
        int32_t     *ids = malloc(sizeof(int32_t) * (size_t)(10 + n));
        memcpy(ids, p.segs[0].ids, sizeof(int32_t) * 10);
        memcpy(ids + 10, p.segs[d].ids, sizeof(int32_t) * (size_t)n);
        for (int i = 0; i < d; i++) start += p.segs[i].n;
        kvf_session *alone = new_session(10 + n);
        kvf_session_eval(alone, ids, 10 + n, 0);
        for (int t = 0; t < n; t++) {
            double s2 = 0;
            for (int h = 0; h < hp->n_head_kv; h++)
                for (int i = 0; i < hd; i++) {
                    double a = kvf_kv_get(full, kvf_v_at(full, 1, h), (int64_t)(start + t) * hd + i);
                    double b = kvf_kv_get(alone, kvf_v_at(alone, 1, h), (int64_t)(10 + t) * hd + i);
                    s2 += (a - b) * (a - b);
                }
            dev[start + t] = (float)s2;
        }
        kvf_session_free(alone);
        free(ids);
    }
    int32_t k = (int32_t)floor((double)(p.T - 6) * 0.2), nd = p.T - 6 - 10;
    int32_t *order = malloc(sizeof(int32_t) * (size_t)nd);
    for (int i = 0; i < nd; i++) order[i] = 10 + i;
    for (int i = 0; i < nd; i++) /* selection sort, descending deviation */
        for (int j = i + 1; j < nd; j++)
            if (dev[order[j]] > dev[order[i]]) {
                int32_t t = order[i];
                order[i]  = order[j], order[j] = t;
            }
    char *want = calloc((size_t)p.T, 1);
    for (int i = 0; i < k; i++) want[order[i]] = 1;
    for (int j = p.T - 6; j < p.T; j++) want[j] = 1;
    kvf_session     *s = new_session(p.T);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_CACHEBLEND, 0.2f, KVF_CHUNK_F32);
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, NULL), KVF_OK);
    CHECK_EQ(s->n_fuse_rows, k + 6);
    int mismatch = 0;
    for (int i = 0; i < s->n_fuse_rows; i++) mismatch += !want[s->fuse_rows[i]];
    CHECK_MSG(mismatch == 0, "%d selected rows are not in the independent top-%d", mismatch, k);
    for (int i = 1; i < s->n_fuse_rows; i++) CHECK(s->fuse_rows[i] > s->fuse_rows[i - 1]);
    free(order), free(want), free(dev);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s), kvf_session_free(full);
    free_prompt(&p);
}

/* epic recomputes exactly the first k tokens of every document and the question */
static void test_epic_set(void) {
    int    docs[3] = {20, 5, 33};
    prompt p;
    make_prompt(&p, 7, docs, 3, 4, 5);
    kvf_session     *s = new_session(p.T);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_EPIC, 0.15f, KVF_CHUNK_F16);
    fp.epic_k          = 8;
    kvf_fuse_stats st;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    int32_t want[64], n = 0;
    for (int d = 1, start = 7; d <= 3; start += docs[d - 1], d++)
        for (int t = 0; t < (docs[d - 1] < 8 ? docs[d - 1] : 8); t++) want[n++] = start + t;
    for (int j = p.T - 4; j < p.T; j++) want[n++] = j;
    CHECK_EQ(s->n_fuse_rows, n);
    CHECK(s->n_fuse_rows == n && memcmp(s->fuse_rows, want, sizeof(int32_t) * (size_t)n) == 0);
    CHECK_EQ(st.recomputed_tokens, n);
    /* reuse recomputes only the question */
    fp.method = KVF_METHOD_REUSE;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    CHECK_EQ(s->n_fuse_rows, 4);
    CHECK_EQ(s->fuse_rows[0], p.T - 4);
    /* a3's selection: k document tokens + the question, sorted, inside the documents */
    fp.method = KVF_METHOD_A3;
    fp.ratio  = 0.25f;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
    int32_t k = (int32_t)floor((p.T - 4) * 0.25);
    CHECK_EQ(s->n_fuse_rows, k + 4);
    int ok = 1;
    for (int i = 0; i < k; i++) ok &= s->fuse_rows[i] >= 7 && s->fuse_rows[i] < p.T - 4;
    CHECK(ok);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    free_prompt(&p);
}

/* eviction keeps exactly the budget; every kept key is one of the cache's keys; decoding goes on */
static void test_eviction(void) {
    int    docs[2] = {60, 70};
    prompt p;
    make_prompt(&p, 10, docs, 2, 12, 6);
    int B = 64;
    for (int mode = 0; mode < 2; mode++) {
        kvf_session     *s = new_session(p.T + 8), *ref = new_session(p.T + 8);
        kvf_chunk_cache *cache;
        kvf_chunk_cache_new_memory(0, &cache);
        kvf_fuse_params fp = params(KVF_METHOD_A3, 0.3f, KVF_CHUNK_F16);
        kvf_fuse_stats  st;
        CHECK_EQ(kvf_session_fuse(ref, cache, p.segs, p.n_segs, &fp, NULL), KVF_OK);
        fp.evict  = mode ? KVF_EVICT_STREAMING : KVF_EVICT_SNAPKV;
        fp.budget = B;
        CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
        CHECK_EQ(st.kept_after_evict, B);
        CHECK_EQ(s->n_cells, B);
        CHECK_EQ(kvf_session_n_past(s), p.T);
        /* same first token: eviction happens after the prefill */
        CHECK(memcmp(kvf_session_logits(s, -1), kvf_session_logits(ref, -1), sizeof(float) * (size_t)g_nv) == 0);
        /* kept values are exactly cache cells of the un-evicted session, and the last
         * (window) cells are kept in order */
        const kvf_hparams *hp = &g_model->hp;
        int                missing = 0, hd = hp->head_dim;
        for (int l = 0; l < hp->n_layer; l++)
            for (int h = 0; h < hp->n_head_kv; h++)
                for (int i = 0; i < B; i++) {
                    const float *v     = (const float *)kvf_v_at(s, l, h) + (int64_t)i * hd;
                    int          found = 0;
                    for (int j = 0; j < p.T && !found; j++)
                        found = memcmp(v, (const float *)kvf_v_at(ref, l, h) + (int64_t)j * hd, sizeof(float) * (size_t)hd) == 0;
                    missing += !found;
                }
        CHECK_MSG(missing == 0, "%s: %d kept values are not cache values", mode ? "streaming" : "snapkv", missing);
        CHECK(memcmp((const float *)kvf_v_at(s, 0, 0) + (int64_t)(B - 1) * hd, (const float *)kvf_v_at(ref, 0, 0) + (int64_t)(p.T - 1) * hd, sizeof(float) * (size_t)hd) == 0);
        int32_t tok[5];
        greedy(s, 5, tok);
        CHECK_EQ(kvf_session_n_past(s), p.T + 5);
        CHECK_EQ(s->n_cells, B + 5);
        CHECK_EQ(kvf_session_truncate(s, 3), KVF_E_UNSUPPORTED);
        CHECK_EQ(kvf_session_truncate(s, 0), KVF_OK);
        kvf_chunk_cache_free(cache);
        kvf_session_free(s), kvf_session_free(ref);
    }
    free_prompt(&p);
}

static void test_determinism_and_threads(void) {
    int    docs[2] = {50, 41};
    prompt p;
    make_prompt(&p, 9, docs, 2, 7, 7);
    static const kvf_method ms[] = {KVF_METHOD_A3, KVF_METHOD_KVSHARE, KVF_METHOD_PROPHET,
                                    KVF_METHOD_FOCUS};
    for (int mi = 0; mi < 4; mi++) {
    float *first = NULL;
    int32_t first_rows[256], n_first = -1;
    for (int t = 1; t <= 3; t++) {
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx              = p.T;
        sp.n_threads          = t;
        kvf_session *s;
        kvf_session_new(g_model, &sp, &s);
        kvf_chunk_cache *cache;
        kvf_chunk_cache_new_memory(0, &cache);
        kvf_fuse_params fp = params(ms[mi], 0.2f, KVF_CHUNK_F16);
        kvf_fuse_stats  st;
        CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, &st), KVF_OK);
        /* the budget: floor((T - q) * r) document rows + the question */
        CHECK_EQ(st.recomputed_tokens, (int32_t)floor((double)(p.T - 7) * 0.2) + 7);
        if (!first) {
            first = malloc(sizeof(float) * (size_t)g_nv);
            memcpy(first, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv);
            n_first = s->n_fuse_rows;
            memcpy(first_rows, s->fuse_rows, sizeof(int32_t) * (size_t)n_first);
        } else {
            CHECK_MSG(memcmp(first, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv) == 0,
                      "%s logits differ with %d threads", kvf_method_name(ms[mi]), t);
            CHECK_MSG(n_first == s->n_fuse_rows &&
                          memcmp(first_rows, s->fuse_rows, sizeof(int32_t) * (size_t)n_first) == 0,
                      "%s selects other rows with %d threads", kvf_method_name(ms[mi]), t);
        }
        kvf_chunk_cache_free(cache);
        kvf_session_free(s);
    }
    free(first);
    }
    free_prompt(&p);
}

/* Sessions fuse concurrently: 4 threads, each with its own session and prompt, sharing one
 * chunk cache (and the model), with a3, cacheblend (both sort by score), epic and a3 + SnapKV
 * eviction (sorts too). Each thread's logits and greedy tokens must equal the same fusion run
 * alone. Under `make tsan` this is also the data-race check of the fusion, chunk cache and
 * forward paths. */
typedef struct {
    prompt           p;
    kvf_fuse_params  fp;
    kvf_chunk_cache *cache;
    float           *logits;
    int32_t          toks[4];
    kvf_status       st;
} fuse_job;

static void fuse_job_run(fuse_job *j) {
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = j->p.T + 8;
    sp.n_threads          = 1;
    kvf_session *s        = NULL;
    j->st                 = kvf_session_new(g_model, &sp, &s);
    if (j->st != KVF_OK) return;
    j->st = kvf_session_fuse(s, j->cache, j->p.segs, j->p.n_segs, &j->fp, NULL);
    if (j->st == KVF_OK) {
        j->logits = malloc(sizeof(float) * (size_t)g_nv);
        memcpy(j->logits, kvf_session_logits(s, -1), sizeof(float) * (size_t)g_nv);
        greedy(s, 4, j->toks);
    }
    kvf_session_free(s);
}

static void *fuse_job_thread(void *arg) {
    fuse_job_run(arg);
    return NULL;
}

static void test_concurrent_sessions(void) {
    enum { NJ = 4 };
    const kvf_method methods[NJ] = {KVF_METHOD_A3, KVF_METHOD_CACHEBLEND, KVF_METHOD_EPIC,
                                    KVF_METHOD_A3};
    fuse_job         alone[NJ], conc[NJ];
    kvf_chunk_cache *shared = NULL;
    CHECK_EQ(kvf_chunk_cache_new_memory(0, &shared), KVF_OK);
    for (int i = 0; i < NJ; i++) {
        int docs[3] = {40 + 7 * i, 33, 29 + i};
        for (int pass = 0; pass < 2; pass++) {
            fuse_job *j = pass ? &conc[i] : &alone[i];
            memset(j, 0, sizeof *j);
            /* documents shared between jobs 0-1 and 2-3 (the same chunks hit the cache) */
            make_prompt(&j->p, 9, docs, 3, 6 + i, 100 + (uint64_t)(i / 2) * 31);
            j->fp = params(methods[i], 0.25f, KVF_CHUNK_F16);
            if (i == 3) j->fp.evict = KVF_EVICT_SNAPKV, j->fp.budget = 48;
        }
        alone[i].cache = NULL;
        CHECK_EQ(kvf_chunk_cache_new_memory(0, &alone[i].cache), KVF_OK);
        fuse_job_run(&alone[i]);
        CHECK_EQ(alone[i].st, KVF_OK);
        conc[i].cache = shared;
    }
    pthread_t th[NJ];
    for (int i = 0; i < NJ; i++) CHECK_EQ(pthread_create(&th[i], NULL, fuse_job_thread, &conc[i]), 0);
    for (int i = 0; i < NJ; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NJ; i++) {
        CHECK_EQ(conc[i].st, KVF_OK);
        if (conc[i].logits && alone[i].logits)
            CHECK_MSG(memcmp(conc[i].logits, alone[i].logits, sizeof(float) * (size_t)g_nv) == 0,
                      "job %d (%s): concurrent logits differ from the sequential run", i,
                      kvf_method_name(methods[i]));
        CHECK_MSG(memcmp(conc[i].toks, alone[i].toks, sizeof conc[i].toks) == 0,
                  "job %d: concurrent greedy tokens differ", i);
        free(conc[i].logits), free(alone[i].logits);
        free_prompt(&conc[i].p), free_prompt(&alone[i].p);
        kvf_chunk_cache_free(alone[i].cache);
    }
    kvf_chunk_cache_free(shared);
}

/* a3 selects the tokens the question attends to. SmolLM2-135M's layer-1 attention is mostly
 * on punctuation, so this is tested on a model whose layer-1 attention is semantic by
 * construction (synth_needle_file): layer 0 is the identity, layer 1 has Wq = Wk = I (a
 * duplicate-token head: a query attends to earlier occurrences of its own token) and only two
 * rotary dimensions. A needle token planted in a document and repeated in the question must be
 * selected; without it in the question it is not. */
static void test_a3_selects_needle(void) {
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
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 256;
    kvf_session     *s;
    kvf_chunk_cache *cache;
    kvf_session_new(m, &sp, &s);
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_A3, 0.05f, KVF_CHUNK_F16);
    for (int asks = 0; asks < 2; asks++) {
        ids[4][2] = asks ? needle : ids[4][3]; /* the question mentions the needle or not */
        for (int pool = 1; pool <= 5; pool += 4) {
            fp.pool = pool;
            CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fp, NULL), KVF_OK);
            int found = 0;
            for (int i = 0; i < s->n_fuse_rows; i++) found |= s->fuse_rows[i] == needle_pos;
            CHECK_MSG(found == asks, "pool %d: needle %s (question %s it)", pool,
                      found ? "selected" : "not selected", asks ? "mentions" : "does not mention");
        }
    }
    /* the multi-layer methods find it too when the question mentions it (their layer-0
     * attention is not constructed to miss it, so only this direction is asserted) */
    ids[4][2] = needle;
    for (int mi = 0; mi < 2; mi++) {
        kvf_fuse_params fq = params(mi ? KVF_METHOD_FOCUS : KVF_METHOD_PROPHET, 0.05f, KVF_CHUNK_F16);
        CHECK_EQ(kvf_session_fuse(s, cache, segs, 5, &fq, NULL), KVF_OK);
        int found = 0;
        for (int i = 0; i < s->n_fuse_rows; i++) found |= s->fuse_rows[i] == needle_pos;
        CHECK_MSG(found, "%s: the needle the question mentions is not selected", kvf_method_name(fq.method));
    }
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    kvf_model_free(m);
}

/* fusion into an f16 session cache (RoPE recovery, selection, recompute, eviction) gives the
 * same selection as an f32 cache and close logits */
static void test_f16_session_cache(void) {
    int    docs[2] = {50, 60};
    prompt p;
    make_prompt(&p, 9, docs, 2, 7, 12);
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = p.T + 8;
    kvf_session *a, *b;
    kvf_session_new(g_model, &sp, &a);
    sp.kv_type = KVF_KV_F16;
    kvf_session_new(g_model, &sp, &b);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_method ms[] = {KVF_METHOD_A3, KVF_METHOD_CACHEBLEND, KVF_METHOD_REUSE};
    for (int i = 0; i < 3; i++) {
        kvf_fuse_params fp = params(ms[i], 0.2f, KVF_CHUNK_F16);
        fp.evict           = KVF_EVICT_SNAPKV;
        fp.budget          = 64;
        kvf_fuse_stats sa, sb;
        CHECK_EQ(kvf_session_fuse(a, cache, p.segs, p.n_segs, &fp, &sa), KVF_OK);
        CHECK_EQ(kvf_session_fuse(b, cache, p.segs, p.n_segs, &fp, &sb), KVF_OK);
        CHECK_EQ(sb.kept_after_evict, 64);
        double mag, d = max_diff(kvf_session_logits(b, -1), kvf_session_logits(a, -1), g_nv, &mag);
        CHECK_MSG(d <= 0.02 * (1 + mag), "%s: f16 session cache differs by %.3g", kvf_method_name(ms[i]), d);
        int32_t ta[4], tb[4];
        greedy(a, 4, ta);
        greedy(b, 4, tb);
        CHECK_EQ(kvf_session_n_past(b), p.T + 4);
    }
    kvf_chunk_cache_free(cache);
    kvf_session_free(a), kvf_session_free(b);
    free_prompt(&p);
}

static void test_errors_and_cache(void) {
    int    docs[1] = {10};
    prompt p;
    make_prompt(&p, 4, docs, 1, 3, 8);
    kvf_session     *s = new_session(p.T);
    kvf_chunk_cache *cache;
    kvf_chunk_cache_new_memory(0, &cache);
    kvf_fuse_params fp = params(KVF_METHOD_A3, 0.15f, KVF_CHUNK_F16);
    CHECK_EQ(kvf_session_fuse(s, NULL, p.segs, p.n_segs, &fp, NULL), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "chunk cache");
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, 1, &fp, NULL), KVF_E_INVAL);
    fp.ratio = 1.5f;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, NULL), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "ratio");
    fp.ratio          = 0.15f;
    kvf_segment empty = {p.segs[2].ids, 0}, saved = p.segs[2];
    p.segs[2]         = empty;
    CHECK_EQ(kvf_session_fuse(s, cache, p.segs, p.n_segs, &fp, NULL), KVF_E_INVAL);
    p.segs[2] = saved;
    kvf_session *small = new_session(p.T - 1);
    CHECK_EQ(kvf_session_fuse(small, cache, p.segs, p.n_segs, &fp, NULL), KVF_E_CTX_FULL);
    kvf_session_free(small);
    int32_t bad_id   = g_nv;
    kvf_segment badq = {&bad_id, 1};
    kvf_segment segs2[3] = {p.segs[0], p.segs[1], badq};
    CHECK_EQ(kvf_session_fuse(s, cache, segs2, 3, &fp, NULL), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "token id");
    /* full works without a cache; an empty prefix is allowed */
    fp.method = KVF_METHOD_FULL;
    CHECK_EQ(kvf_session_fuse(s, NULL, p.segs, p.n_segs, &fp, NULL), KVF_OK);
    kvf_segment segs3[3] = {{NULL, 0}, p.segs[1], p.segs[2]};
    fp.method            = KVF_METHOD_A3;
    CHECK_EQ(kvf_session_fuse(s, cache, segs3, 3, &fp, NULL), KVF_OK);
    CHECK(kvf_method_from_name("cacheblend") == KVF_METHOD_CACHEBLEND);
    CHECK(kvf_method_from_name("kvshare") == KVF_METHOD_KVSHARE);
    CHECK(kvf_method_from_name("prophet") == KVF_METHOD_PROPHET);
    CHECK(kvf_method_from_name("focus") == KVF_METHOD_FOCUS);
    CHECK(kvf_method_has_ratio(KVF_METHOD_FOCUS) && !kvf_method_has_ratio(KVF_METHOD_EPIC));
    CHECK(kvf_method_from_name("nope") == -1);
    /* content addresses: stable, and sensitive to every input */
    uint8_t       fpr[16] = {1, 2, 3};
    int32_t       a[3] = {5, 6, 7}, ctx[2] = {1, 2};
    kvf_chunk_key k1 = kvf_chunk_key_make(fpr, KVF_CHUNK_F16, ctx, 2, a, 3);
    kvf_chunk_key k2 = kvf_chunk_key_make(fpr, KVF_CHUNK_F16, ctx, 2, a, 3);
    kvf_chunk_key k3 = kvf_chunk_key_make(fpr, KVF_CHUNK_F32, ctx, 2, a, 3);
    kvf_chunk_key k4 = kvf_chunk_key_make(fpr, KVF_CHUNK_F16, ctx, 1, a, 3);
    a[2]             = 8;
    kvf_chunk_key k5 = kvf_chunk_key_make(fpr, KVF_CHUNK_F16, ctx, 2, a, 3);
    CHECK(memcmp(&k1, &k2, 16) == 0);
    CHECK(memcmp(&k1, &k3, 16) != 0 && memcmp(&k1, &k4, 16) != 0 && memcmp(&k1, &k5, 16) != 0);
    /* a bounded memory cache evicts least recently used chunks */
    kvf_chunk_cache *tiny;
    kvf_chunk_cache_new_memory(3000, &tiny);
    int32_t        ten[10] = {5, 6, 7, 8, 9, 10, 11, 12, 13, 14}; /* ids: one per token */
    kvf_chunk     *c1 = kvf_chunk_alloc(KVF_CHUNK_F32, 10, 1, 32, ten, 0);
    kvf_chunk     *c2 = kvf_chunk_alloc(KVF_CHUNK_F32, 10, 1, 32, ten, 0);
    kvf_chunk_key ka = k1, kb = k3;
    tiny->ops->put(tiny, &ka, c1); /* 2560 bytes each: the second evicts the first */
    tiny->ops->put(tiny, &kb, c2);
    kvf_chunk *g1 = tiny->ops->get(tiny, &ka), *g2 = tiny->ops->get(tiny, &kb);
    CHECK(g1 == NULL && g2 == c2);
    kvf_chunk_release(g2), kvf_chunk_release(c1), kvf_chunk_release(c2);
    kvf_chunk_cache_free(tiny);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    free_prompt(&p);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf-test-fusion-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) return 1;
    kvf_set_log_level(1);
    /* 4 layers so that selection (layer 1) and later layers both exist; q16 arithmetic */
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q4_1, .etype = KVF_TYPE_Q8_0, .n_layer = 4, .n_ctx = 512, .seed = 11};
    synth_info info;
    char       path[400];
    snprintf(path, sizeof path, "%s/fusion.gguf", tmpdir);
    if (synth_model_file(&cfg, path, &info) != KVF_OK || kvf_model_load(path, NULL, &g_model) != KVF_OK) {
        fprintf(stderr, "setup: %s\n", kvf_errmsg());
        return 1;
    }
    g_nv = info.n_vocab;
    RUN(test_ratio_one_equals_full);
    RUN(test_prefix_cache_equivalence);
    RUN(test_oracle_selection);
    RUN(test_prefix_blocks);
    RUN(test_rope_recovery);
    RUN(test_cacheblend_selection);
    RUN(test_epic_set);
    RUN(test_eviction);
    RUN(test_determinism_and_threads);
    RUN(test_concurrent_sessions);
    RUN(test_errors_and_cache);
    RUN(test_a3_selects_needle);
    RUN(test_f16_session_cache);
    kvf_model_free(g_model);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_REPORT();
}
