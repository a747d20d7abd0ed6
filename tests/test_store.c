/* test_store.c - the persistent chunk store: entry format round trips (f16, f32, q8; raw and
 * zstd), every truncation and every flipped byte of an entry detected, hostile header fields
 * with valid checksums rejected, the q8 chunk dtype, memory-tier LRU eviction and pinning,
 * disk-tier budgets and LRU order, a full LMDB map and a full disk (clear error, nothing lost),
 * a corrupt disk entry dropped and recomputed by fusion, pipelined (deferred) loading, readers
 * concurrent with the writer, writer-queue flushing and dropping, Redis down, maintenance
 * (list / verify / gc / remove), fused prefill from the disk tier equal to the memory cache,
 * and content addresses identical across processes. Synthetic models only. */
#include "harness.h"
#include "synth.h"

#include "store/chunk.h"
#include "store/chunk_io.h"
#include "common.h"
#include "engine/model.h"
#include "store/store.h"
#include "store/steps.h"

#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char       tmpdir[256];
static kvf_model *g_model;
static int32_t    g_nv, g_kvd, g_nl;
static int        g_dirs;

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *new_dir(void) {
    static char d[400];
    snprintf(d, sizeof d, "%s/store%d", tmpdir, g_dirs++);
    return d;
}

static void fill_ids(int32_t *ids, int n, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed   = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)(g_nv - 3));
    }
}

/* a chunk of the test model's shape with deterministic contents; key set */
static kvf_chunk *make_chunk(kvf_chunk_dtype dt, int n, uint64_t seed, float zero_frac) {
    int32_t ids[4096];
    fill_ids(ids, n, seed);
    kvf_chunk *c = kvf_chunk_alloc(dt, n, g_nl, g_kvd, ids, 0);
    float     *row = malloc(sizeof(float) * (size_t)g_kvd);
    t_rng_state    = seed * 7919 + 1;
    for (int l = 0; l < g_nl; l++)
        for (int kv = 0; kv < 2; kv++)
            for (int t = 0; t < n; t++) {
                for (int i = 0; i < g_kvd; i++) {
                    float u = t_randf();
                    row[i]  = fabsf(u) < zero_frac ? 0.0f : u * 3.0f;
                }
                kvf_chunk_write(NULL, c, l, kv, t, 1, row);
            }
    free(row);
    c->key = kvf_chunk_key_make(g_model->cache_id, dt, NULL, 0, ids, n);
    return c;
}

static int chunk_same(const kvf_chunk *a, const kvf_chunk *b) {
    if (!a || !b || a->dtype != b->dtype || a->n_tokens != b->n_tokens || a->n_layer != b->n_layer ||
        a->kvd != b->kvd || a->n_ctx != b->n_ctx || a->bytes != b->bytes)
        return 0;
    if (memcmp(a->ids, b->ids, sizeof(int32_t) * (size_t)a->n_tokens) != 0) return 0;
    for (int l = 0; l < a->n_layer; l++) {
        if (kvf_chunk_load_layer(a, l) != KVF_OK || kvf_chunk_load_layer(b, l) != KVF_OK) return 0;
        if (memcmp(kvf_chunk_layer_data(a, l), kvf_chunk_layer_data(b, l), kvf_chunk_layer_bytes(a)) != 0) return 0;
    }
    return 1;
}

/* the cache holds the chunk's key now (a lookup: touches the LRU order like any get) */
static int has_key(kvf_chunk_cache *s, const kvf_chunk *c) {
    kvf_chunk *g = s->ops->get(s, &c->key);
    kvf_chunk_release(g);
    return g != NULL;
}

static kvf_store_params disk_params(const char *dir) {
    kvf_store_params p = kvf_store_default_params();
    p.dir              = dir;
    p.map_size         = 64u << 20;
    p.no_meta_sync     = true;
    return p;
}

static kvf_chunk_cache *open_store(const kvf_store_params *p) {
    kvf_chunk_cache *c = NULL;
    kvf_status       st = kvf_store_open(g_model, p, &c);
    CHECK_MSG(st == KVF_OK, "kvf_store_open: %s", kvf_errmsg());
    return c;
}

static kvf_store_stats stats_of(kvf_chunk_cache *c) {
    kvf_store_stats s;
    CHECK_EQ(kvf_store_get_stats(c, &s), KVF_OK);
    return s;
}

/* Flip one byte of the payload of the k-th entry found in dir/data.mdb (by its magic). */
static int flip_entry_byte(const char *dir, int k, long where) {
    char path[600];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    FILE *f = fopen(path, "r+b");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    if (fread(b, 1, (size_t)n, f) != (size_t)n) return fclose(f), free(b), -1;
    int found = -1;
    for (long i = 0; i + 128 <= n; i++)
        if (!memcmp(b + i, KVF_ENTRY_MAGIC, 8) && k-- == 0) {
            uint32_t po = b[i + 76] | b[i + 77] << 8 | (uint32_t)b[i + 78] << 16 | (uint32_t)b[i + 79] << 24;
            long     at = where >= 0 ? i + (long)po + where : i + (-where);
            fseek(f, at, SEEK_SET);
            uint8_t x = b[at] ^ 0x5a;
            fwrite(&x, 1, 1, f);
            found = 0;
            break;
        }
    fclose(f);
    free(b);
    return found;
}

/* ---- entry format ------------------------------------------------------------------------- */

static void test_entry_roundtrip(void) {
    kvf_chunk_dtype dts[3] = {KVF_CHUNK_F16, KVF_CHUNK_F32, KVF_CHUNK_Q8};
    for (int d = 0; d < 3; d++)
        for (int z = 0; z < 2; z++) {
            kvf_chunk *c = make_chunk(dts[d], 37, 100 + (uint64_t)d, z ? 0.7f : 0.0f);
            c->n_ctx     = 12;
            uint8_t *e;
            size_t   len;
            CHECK_EQ(kvf_entry_encode(c, &c->key, g_model->cache_id, g_model->hp.n_head_kv, g_model->hp.head_dim,
                                      z ? KVF_STORE_COMPRESS_ZSTD : KVF_STORE_COMPRESS_NONE, 3, &e, &len),
                     KVF_OK);
            kvf_entry_view v;
            CHECK_EQ(kvf_entry_parse(e, len, &v), KVF_OK);
            CHECK_EQ(v.n_tokens, 37);
            CHECK_EQ(v.n_ctx, 12);
            CHECK_EQ(v.dtype, dts[d]);
            CHECK_EQ(v.payload_offset % 64, 48);
            CHECK(!memcmp(v.model_id, g_model->cache_id, 16));
            CHECK(!memcmp(v.key.b, c->key.b, 16));
            if (z) CHECK_MSG(v.compressed && len < c->bytes, "zstd entry of %zu bytes for %zu of K/V", len, c->bytes);
            else CHECK_EQ(len, kvf_entry_raw_size(dts[d], g_nl, g_kvd, 37));
            kvf_chunk *back;
            CHECK_EQ(kvf_entry_to_chunk(&v, &back), KVF_OK);
            CHECK(chunk_same(c, back));
            kvf_chunk_release(back);
            kvf_entry_view_free(&v);
            /* deterministic: the same chunk encodes to the same bytes */
            uint8_t *e2;
            size_t   len2;
            kvf_entry_encode(c, &c->key, g_model->cache_id, g_model->hp.n_head_kv, g_model->hp.head_dim,
                             z ? KVF_STORE_COMPRESS_ZSTD : KVF_STORE_COMPRESS_NONE, 3, &e2, &len2);
            CHECK(len2 == len && !memcmp(e, e2, len));
            kvf_free(e), kvf_free(e2);
            kvf_chunk_release(c);
        }
}

/* parse + verify + decode of a copy of exactly len bytes: KVF_OK only for a good entry */
static kvf_status full_check(const uint8_t *src, size_t len) {
    uint8_t *b = malloc(len ? len : 1); /* exact size: ASan sees any overread */
    memcpy(b, src, len);
    kvf_entry_view v;
    kvf_status     st = kvf_entry_parse(b, len, &v);
    if (st == KVF_OK) {
        kvf_chunk *c = NULL;
        st           = kvf_entry_to_chunk(&v, &c);
        kvf_chunk_release(c);
        kvf_entry_view_free(&v);
    }
    free(b);
    return st;
}

static void test_entry_corruption(void) {
    for (int z = 0; z < 2; z++) {
        kvf_chunk *c = make_chunk(KVF_CHUNK_F16, 3, 7, z ? 0.8f : 0.0f);
        uint8_t   *e;
        size_t     len;
        kvf_entry_encode(c, &c->key, g_model->cache_id, g_model->hp.n_head_kv, g_model->hp.head_dim, z, 3, &e, &len);
        CHECK_EQ(full_check(e, len), KVF_OK);
        int trunc_ok = 0, flip_ok = 0, corrupt = 0;
        for (size_t n = 0; n < len; n++) trunc_ok += full_check(e, n) == KVF_OK;
        CHECK_MSG(trunc_ok == 0, "%d truncations accepted", trunc_ok);
        uint8_t *pad = malloc(len + 1);
        memcpy(pad, e, len), pad[len] = 0;
        CHECK(full_check(pad, len + 1) != KVF_OK);
        free(pad);
        for (size_t i = 0; i < len; i++)
            for (int bit = 0; bit < 8; bit += 7) {
                e[i] ^= (uint8_t)(1u << bit);
                kvf_status st = full_check(e, len);
                flip_ok += st == KVF_OK;
                corrupt += st == KVF_E_CORRUPT;
                e[i] ^= (uint8_t)(1u << bit);
            }
        CHECK_MSG(flip_ok == 0, "%d of %zu flipped bits went unnoticed", flip_ok, 2 * len);
        CHECK_EQ(corrupt, 2 * (long long)len);
        kvf_free(e);
        kvf_chunk_release(c);
    }
}

static uint32_t rd32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static void wr32le(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#define XXH_INLINE_ALL
#include <xxhash.h>

/* recompute both metadata checksums after editing fields (a forged but well-sealed entry) */
static void reseal(uint8_t *e, size_t len, uint32_t po_override) {
    uint32_t po = po_override ? po_override : rd32le(e + 76);
    if (po > KVF_ENTRY_HEADER && po <= len) wr64le(e + 104, XXH3_64bits(e + KVF_ENTRY_HEADER, po - KVF_ENTRY_HEADER));
    wr64le(e + 120, XXH3_64bits(e, 120));
}

static void test_entry_hostile_fields(void) {
    kvf_chunk *c = make_chunk(KVF_CHUNK_F16, 5, 9, 0.0f);
    uint8_t   *e;
    size_t     len;
    kvf_entry_encode(c, &c->key, g_model->cache_id, g_model->hp.n_head_kv, g_model->hp.head_dim, 0, 3, &e, &len);
    uint32_t po    = rd32le(e + 76);
    size_t   table = KVF_ENTRY_HEADER + 4 * 5;
    struct {
        size_t   off;
        uint32_t v;
        int      is64;
    } cases[] = {
        {56, 0, 0},          {56, 5000, 0},        {68, 0x7fffffff, 0}, {68, 6, 0},
        {60, 0xffff, 0},     {64, 0xffff, 0},      {72, 0x7fffffff, 0}, {48, 7, 0},
        {52, 1, 0},          {52, 2, 0},           {76, 0, 0},          {80, 1, 1},
        {88, 12345, 1},      {96, 99, 1},          {112, 1, 1},         {8, 2, 0},
        {12, 9, 0},          {table, 64, 1},       {table + 8, 1, 1},   {table + 24, 5, 0},
        {table + 28, 1, 0},  {table + 32 + 8, 100000, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t *b = malloc(len);
        memcpy(b, e, len);
        if (cases[i].is64) wr64le(b + cases[i].off, cases[i].v);
        else wr32le(b + cases[i].off, cases[i].v);
        reseal(b, len, po);
        kvf_status st = full_check(b, len);
        CHECK_MSG(st == KVF_E_CORRUPT, "forged field at offset %zu = %u: status %d", cases[i].off, cases[i].v, st);
        free(b);
    }
    /* a raw layer relabelled zstd (checksums valid): the decoder must reject it */
    uint8_t *b = malloc(len);
    memcpy(b, e, len);
    wr32le(b + table + 24, 1);
    wr32le(b + 52, 1);
    reseal(b, len, po);
    kvf_status st = full_check(b, len);
    CHECK_EQ(st, KVF_E_CORRUPT);
    CHECK_CONTAINS(kvf_errmsg(), "zstd");
    free(b);
    kvf_free(e);
    kvf_chunk_release(c);
}

static void test_q8_dtype(void) {
    CHECK_EQ(kvf_chunk_row_bytes(KVF_CHUNK_Q8, 32), 34);
    CHECK_EQ(kvf_chunk_row_bytes(KVF_CHUNK_Q8, 40), 68);
    CHECK_EQ(kvf_chunk_row_bytes(KVF_CHUNK_F16, 40), 80);
    int        kvd = 40;
    int32_t    ids[3] = {1, 2, 3};
    kvf_chunk *c      = kvf_chunk_alloc(KVF_CHUNK_Q8, 3, 1, kvd, ids, 0);
    float      x[40], y[40];
    double     worst = 0, amax = 0;
    for (int t = 0; t < 3; t++) {
        for (int i = 0; i < kvd; i++) x[i] = t == 2 ? 0.0f : t_randf() * (i < 32 ? 5.0f : 0.01f);
        kvf_chunk_write(NULL, c, 0, 1, t, 1, x);
        kvf_chunk_read(NULL, c, 0, 1, t, 1, y);
        for (int i = 0; i < kvd; i++) {
            double blk = i < 32 ? 5.0 : 0.01;
            worst      = fmax(worst, fabs(x[i] - y[i]) / blk);
            amax       = fmax(amax, fabs(y[i]));
        }
        if (t == 2) CHECK(y[0] == 0.0f && y[39] == 0.0f);
    }
    CHECK_MSG(worst < 0.5 / 127 * 1.01 + 1e-3, "q8 error %.4g of the block range", worst);
    kvf_chunk_release(c);
}

/* ---- memory tier -------------------------------------------------------------------------- */

static void test_memory_lru_and_pin(void) {
    kvf_chunk       *c[4];
    for (int i = 0; i < 4; i++) c[i] = make_chunk(KVF_CHUNK_F16, 20, 200 + (uint64_t)i, 0);
    kvf_store_params p = kvf_store_default_params();
    p.mem_budget       = c[0]->bytes * 5 / 2; /* room for two */
    kvf_chunk_cache *s = open_store(&p);
    for (int i = 0; i < 2; i++) CHECK_EQ(s->ops->put(s, &c[i]->key, c[i]), KVF_OK);
    kvf_chunk *g = s->ops->get(s, &c[0]->key); /* 0 becomes most recent */
    CHECK(g == c[0]);
    kvf_chunk_release(g);
    s->ops->put(s, &c[2]->key, c[2]); /* evicts 1 */
    g = s->ops->get(s, &c[1]->key);
    CHECK(g == NULL);
    g = s->ops->get(s, &c[0]->key);
    CHECK(g == c[0]);
    kvf_chunk_release(g);
    CHECK_EQ(kvf_store_pin(s, c[2]->key.b, true), KVF_OK);
    CHECK_EQ(kvf_store_pin(s, c[1]->key.b, true), KVF_E_NOTFOUND);
    s->ops->put(s, &c[3]->key, c[3]); /* 2 is pinned, 0 goes */
    g = s->ops->get(s, &c[2]->key);
    CHECK(g == c[2]);
    kvf_chunk_release(g);
    g = s->ops->get(s, &c[0]->key);
    CHECK(g == NULL);
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].entries, 2);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].bytes, 2 * (long long)c[0]->bytes);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].evictions, 2);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].hits, 3);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].misses, 2);
    CHECK(!st.tier[KVF_TIER_DISK].enabled && !st.tier[KVF_TIER_REDIS].enabled);
    /* a chunk larger than the budget is not kept; all pinned: the new one is not admitted */
    CHECK_EQ(kvf_store_pin(s, c[3]->key.b, true), KVF_OK);
    s->ops->put(s, &c[1]->key, c[1]);
    g = s->ops->get(s, &c[1]->key);
    CHECK(g == NULL);
    /* a new chunk under a cached key replaces the entry in place and keeps its pin */
    kvf_chunk *c3b = make_chunk(KVF_CHUNK_F16, 20, 299, 0);
    CHECK_EQ(s->ops->put(s, &c[3]->key, c3b), KVF_OK);
    g = s->ops->get(s, &c[3]->key);
    CHECK(g == c3b);
    kvf_chunk_release(g);
    s->ops->put(s, &c[1]->key, c[1]); /* both still pinned: not admitted */
    g = s->ops->get(s, &c[1]->key);
    CHECK(g == NULL);
    st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].entries, 2);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].bytes, (long long)(c[2]->bytes + c3b->bytes));
    kvf_chunk_release(c3b);
    /* a chunk of another shape is refused */
    int32_t    ids[2] = {1, 2};
    kvf_chunk *odd    = kvf_chunk_alloc(KVF_CHUNK_F16, 2, g_nl + 1, g_kvd, ids, 0);
    CHECK_EQ(s->ops->put(s, &c[1]->key, odd), KVF_E_INVAL);
    kvf_chunk_release(odd);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < 4; i++) kvf_chunk_release(c[i]);
    /* argument errors */
    kvf_chunk_cache *x = NULL;
    kvf_store_params none = kvf_store_default_params();
    CHECK_EQ(kvf_store_open(g_model, &none, &x), KVF_E_INVAL);
    CHECK(x == NULL);
    CHECK_CONTAINS(kvf_errmsg(), "no tier");
    kvf_chunk_cache *mem;
    kvf_chunk_cache_new_memory(0, &mem);
    kvf_store_stats sst;
    CHECK(!kvf_chunk_cache_is_store(mem));
    CHECK_EQ(kvf_store_get_stats(mem, &sst), KVF_E_INVAL);
    kvf_chunk_cache_free(mem);
}

/* KVFlow's step hints (store/steps.h) order the evictions of both memory caches: the entry
 * needed furthest away goes first, an entry without a hint before any hinted one, the least
 * recently used among equals; a hint given before the key is cached applies when it arrives;
 * the store never evicts a pinned entry, whatever its hint. */
static void test_kvflow_eviction(void) {
    kvf_chunk *c[9];
    for (int i = 0; i < 9; i++) c[i] = make_chunk(KVF_CHUNK_F16, 16, 900 + (uint64_t)i, 0);
    for (int kind = 0; kind < 2; kind++) {
        kvf_chunk_cache *s = NULL;
        size_t           budget = c[0]->bytes * 7 / 2; /* room for three */
        if (kind == 0) {
            CHECK_EQ(kvf_chunk_cache_new_memory(budget, &s), KVF_OK);
        } else {
            kvf_store_params p = kvf_store_default_params();
            p.mem_budget       = budget;
            s                  = open_store(&p);
        }
        CHECK(s->ops->hint != NULL);
#define HAS(i) has_key(s, c[i])
        for (int i = 0; i < 3; i++) s->ops->put(s, &c[i]->key, c[i]);
        s->ops->hint(s, &c[0]->key, 1, KVF_HINT_FLOW, 0); /* c0 is the LRU one, but needed now */
        s->ops->hint(s, &c[1]->key, 1, KVF_HINT_FLOW, 2);
        s->ops->hint(s, &c[2]->key, 1, KVF_HINT_FLOW, 1);
        s->ops->put(s, &c[3]->key, c[3]); /* evicts c1: two steps away */
        CHECK_MSG(HAS(0) && !HAS(1) && HAS(2) && HAS(3), "cache kind %d: the furthest step first", kind);
        s->ops->hint(s, &c[3]->key, 1, KVF_HINT_FLOW, 0);
        s->ops->hint(s, &c[4]->key, 1, KVF_HINT_FLOW, 5); /* before c4 is cached */
        s->ops->put(s, &c[4]->key, c[4]);  /* c0 0, c2 1, c3 0: c2 goes */
        CHECK_MSG(HAS(0) && !HAS(2) && HAS(3) && HAS(4), "cache kind %d: step 1 before step 0", kind);
        s->ops->put(s, &c[5]->key, c[5]); /* c4 (5 steps, hinted before it came) goes */
        CHECK_MSG(HAS(0) && HAS(3) && !HAS(4) && HAS(5), "cache kind %d: a hint given before the put", kind);
        s->ops->put(s, &c[6]->key, c[6]); /* c5 has no hint: before any hinted one */
        CHECK_MSG(HAS(0) && HAS(3) && !HAS(5) && HAS(6), "cache kind %d: no hint goes first", kind);
        /* another source's hint on c0 comes and goes: c0 keeps its own (0, needed now) */
        s->ops->hint(s, &c[0]->key, 1, KVF_HINT_QUEUE, 2);
        s->ops->hint(s, &c[0]->key, 1, KVF_HINT_QUEUE, KVF_STEPS_NONE);
        s->ops->hint(s, &c[6]->key, 1, KVF_HINT_FLOW, 1);
        s->ops->put(s, &c[8]->key, c[8]); /* c0 0, c3 0, c6 1: c6 goes, not c0 */
        CHECK_MSG(HAS(0) && HAS(3) && !HAS(6) && HAS(8), "cache kind %d: lanes", kind);
        s->ops->put(s, &c[6]->key, c[6]); /* c8 has no hint: it goes */
        CHECK_MSG(HAS(0) && HAS(3) && HAS(6) && !HAS(8), "cache kind %d: lanes", kind);
        s->ops->hint(s, &c[6]->key, 1, KVF_HINT_FLOW, KVF_STEPS_NONE);
        /* hints cleared: plain LRU again (c0 touched last, c3 is the oldest) */
        s->ops->hint(s, &c[0]->key, 1, KVF_HINT_FLOW, KVF_STEPS_NONE);
        s->ops->hint(s, &c[3]->key, 1, KVF_HINT_FLOW, KVF_STEPS_NONE);
        kvf_chunk_release(s->ops->get(s, &c[0]->key));
        kvf_chunk_release(s->ops->get(s, &c[6]->key));
        s->ops->put(s, &c[7]->key, c[7]);
        CHECK_MSG(HAS(0) && !HAS(3) && HAS(6) && HAS(7), "cache kind %d: LRU among equals", kind);
        if (kind == 1) { /* the store: a pinned entry stays whatever its hint */
            s->ops->hint(s, &c[0]->key, 1, KVF_HINT_FLOW, 9);
            s->ops->hint(s, &c[6]->key, 1, KVF_HINT_FLOW, 3);
            s->ops->hint(s, &c[7]->key, 1, KVF_HINT_FLOW, 0);
            CHECK_EQ(kvf_store_pin(s, c[0]->key.b, true), KVF_OK);
            s->ops->put(s, &c[8]->key, c[8]);
            CHECK(HAS(0) && !HAS(6) && HAS(7) && HAS(8));
        }
#undef HAS
        kvf_chunk_cache_free(s);
    }
    for (int i = 0; i < 9; i++) kvf_chunk_release(c[i]);
}

/* The hint map (store/steps.h): a key's hint is the nearest of its lanes', and a lane clears
 * only its own; when 3/4 full the map drops the keys no lane hints any more and keeps every live
 * hint (growing when the live ones fill half of it) instead of forgetting them all. */
static void test_steps_lanes_and_rebuild(void) {
    kvf_steps t;
    CHECK_EQ(kvf_steps_init(&t, 64), KVF_OK);
    CHECK_EQ(t.cap, 64u);
    uint8_t k[16] = {0}, other[16] = {0};
    k[8] = 1, other[8] = 2;
    CHECK_EQ(kvf_steps_get(&t, k), KVF_STEPS_NONE);
    kvf_steps_set(&t, k, KVF_HINT_FLOW, 5);
    kvf_steps_set(&t, k, KVF_HINT_QUEUE, 1);
    CHECK_EQ(kvf_steps_get(&t, k), 1u); /* the nearest */
    kvf_steps_set(&t, k, KVF_HINT_QUEUE, KVF_STEPS_NONE);
    CHECK_EQ(kvf_steps_get(&t, k), 5u); /* the workflow's hint stands */
    kvf_steps_set(&t, k, KVF_HINT_LANES, 0); /* a bad lane changes nothing */
    kvf_steps_set(&t, k, -1, 0);
    CHECK_EQ(kvf_steps_get(&t, k), 5u);
    kvf_steps_set(&t, other, KVF_HINT_QUEUE, KVF_STEPS_NONE); /* clearing an absent key adds none */
    CHECK_EQ(t.n, 1u);
    /* churn: 400 keys hinted and cleared one after the other (a queue's requests) in a map of 64
     * slots; the workflow's key keeps its hint through every rebuild, and the map stays small */
    uint8_t key[16] = {0};
    for (uint32_t i = 0; i < 400; i++) {
        memcpy(key + 8, &(uint64_t){0x9e3779b97f4a7c15ull * (i + 3)}, 8);
        kvf_steps_set(&t, key, KVF_HINT_QUEUE, 2);
        CHECK_EQ(kvf_steps_get(&t, key), 2u);
        kvf_steps_set(&t, key, KVF_HINT_QUEUE, KVF_STEPS_NONE);
    }
    CHECK_EQ(kvf_steps_get(&t, k), 5u);
    CHECK_EQ(t.cap, 64u);
    CHECK(t.n <= 48);
    /* 100 live hints at once: the map grows and keeps them all */
    for (uint32_t i = 0; i < 100; i++) {
        memcpy(key + 8, &(uint64_t){0x9e3779b97f4a7c15ull * (i + 1000)}, 8);
        kvf_steps_set(&t, key, KVF_HINT_FLOW, i);
    }
    CHECK(t.cap >= 256);
    for (uint32_t i = 0; i < 100; i++) {
        memcpy(key + 8, &(uint64_t){0x9e3779b97f4a7c15ull * (i + 1000)}, 8);
        CHECK_EQ(kvf_steps_get(&t, key), i);
    }
    CHECK_EQ(kvf_steps_get(&t, k), 5u);
    kvf_steps_free(&t);
}

/* The store's warm(): keys missing from memory are read up from the disk tier in the
 * background; the next lookup hits memory. Keys already in memory or stored nowhere cost
 * nothing. */
static void test_kvflow_warm(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk       *c[3];
    for (int i = 0; i < 3; i++) c[i] = make_chunk(KVF_CHUNK_F16, 16, 950 + (uint64_t)i, 0);
    p.mem_budget       = c[0]->bytes * 5 / 2; /* room for two */
    kvf_chunk_cache *s = open_store(&p);
    CHECK(s->ops->warm != NULL);
    for (int i = 0; i < 3; i++) s->ops->put(s, &c[i]->key, c[i]);
    CHECK_EQ(kvf_store_flush(s), KVF_OK);
    /* c0 was evicted from memory (LRU) and is on disk */
    kvf_store_stats st0 = stats_of(s);
    kvf_chunk_key   missing = c[0]->key;
    missing.b[3] ^= 0x40;
    kvf_chunk_key keys[3] = {c[0]->key, c[2]->key, missing};
    s->ops->warm(s, keys, 3);
    CHECK_EQ(kvf_store_flush(s), KVF_OK); /* waits for the warm reads too */
    kvf_store_stats st1 = stats_of(s);
    CHECK_EQ(st1.warmed, 1);
    CHECK_EQ(st1.tier[KVF_TIER_DISK].hits - st0.tier[KVF_TIER_DISK].hits, 1);
    kvf_chunk *g = s->ops->get(s, &c[0]->key);
    CHECK(chunk_same(g, c[0]));
    kvf_chunk_release(g);
    kvf_store_stats st2 = stats_of(s);
    CHECK_EQ(st2.tier[KVF_TIER_MEMORY].hits - st1.tier[KVF_TIER_MEMORY].hits, 1);
    CHECK_EQ(st2.tier[KVF_TIER_DISK].hits, st1.tier[KVF_TIER_DISK].hits);
    kvf_chunk_cache_free(s);
    /* a memory-only store has nothing to warm from */
    kvf_store_params pm = kvf_store_default_params();
    pm.mem_budget       = 1u << 20;
    s                   = open_store(&pm);
    s->ops->warm(s, keys, 3);
    CHECK_EQ(stats_of(s).warmed, 0);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < 3; i++) kvf_chunk_release(c[i]);
}

/* ---- disk tier ---------------------------------------------------------------------------- */

static void test_disk_roundtrip_and_persistence(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk       *c[3];
    for (int i = 0; i < 3; i++) c[i] = make_chunk(i == 1 ? KVF_CHUNK_F32 : KVF_CHUNK_F16, 30 + i, 300 + (uint64_t)i, 0);
    kvf_chunk_cache *s = open_store(&p);
    for (int i = 0; i < 3; i++) CHECK_EQ(s->ops->put(s, &c[i]->key, c[i]), KVF_OK);
    CHECK_EQ(kvf_store_flush(s), KVF_OK);
    for (int i = 0; i < 3; i++) {
        kvf_chunk *g = s->ops->get(s, &c[i]->key);
        CHECK_MSG(g && g->backing, "disk hit %d is zero-copy", i);
        CHECK(chunk_same(g, c[i]));
        if (g) CHECK_EQ((uintptr_t)g->data % 64, 0);
        kvf_chunk_release(g);
    }
    kvf_chunk_key missing = c[0]->key;
    missing.b[0] ^= 1;
    CHECK(s->ops->get(s, &missing) == NULL);
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 3);
    CHECK_EQ(st.tier[KVF_TIER_DISK].hits, 3);
    CHECK_EQ(st.tier[KVF_TIER_DISK].misses, 1);
    CHECK_EQ(st.tier[KVF_TIER_DISK].writes, 3);
    CHECK(st.tier[KVF_TIER_DISK].bytes > (int64_t)(c[0]->bytes + c[1]->bytes + c[2]->bytes));
    kvf_chunk_cache_free(s);
    /* a new handle (as a new process would) sees the entries and the persisted counters */
    s  = open_store(&p);
    st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 3);
    CHECK_EQ(st.tier[KVF_TIER_DISK].total_hits, 3);
    CHECK_EQ(st.tier[KVF_TIER_DISK].total_misses, 1);
    CHECK_EQ(st.tier[KVF_TIER_DISK].hits, 0);
    /* with a memory tier, a disk hit is copied up and the next lookup hits memory */
    kvf_chunk_cache_free(s);
    p.mem_budget = 1u << 30;
    s            = open_store(&p);
    kvf_chunk *g = s->ops->get(s, &c[1]->key), *g2 = s->ops->get(s, &c[1]->key);
    CHECK(g && !g->backing && g == g2 && chunk_same(g, c[1]));
    kvf_chunk_release(g), kvf_chunk_release(g2);
    st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].hits, 1);
    CHECK_EQ(st.tier[KVF_TIER_MEMORY].hits, 1);
    /* two handles on one directory in one process share the environment */
    kvf_store_params p2 = disk_params(dir);
    kvf_chunk_cache *s2 = open_store(&p2);
    kvf_chunk       *c4 = make_chunk(KVF_CHUNK_F16, 8, 304, 0);
    s->ops->put(s, &c4->key, c4);
    kvf_store_flush(s);
    kvf_chunk_cache_free(s);
    g = s2->ops->get(s2, &c4->key);
    CHECK(chunk_same(g, c4));
    kvf_chunk_release(g);
    /* maintenance: list, verify, remove */
    int n = 0;
    CHECK_EQ(kvf_store_list(s2, NULL, NULL), KVF_E_INVAL);
    kvf_store_verify_report rep;
    CHECK_EQ(kvf_store_verify(s2, false, NULL, NULL, &rep), KVF_OK);
    CHECK_EQ(rep.checked, 4);
    CHECK_EQ(rep.bad, 0);
    CHECK(rep.index_ok);
    CHECK_EQ(kvf_store_remove(s2, c4->key.b), KVF_OK);
    CHECK_EQ(kvf_store_remove(s2, c4->key.b), KVF_E_NOTFOUND);
    st = stats_of(s2);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 3);
    KVF_UNUSED(n);
    kvf_chunk_cache_free(s2);
    /* maintenance handle without a model: reads miss, writes fail, maintenance works */
    kvf_chunk_cache *m = NULL;
    CHECK_EQ(kvf_store_open(NULL, &p2, &m), KVF_OK);
    CHECK(m->ops->get(m, &c[0]->key) == NULL);
    CHECK_EQ(m->ops->put(m, &c[0]->key, c[0]), KVF_E_INVAL);
    CHECK_EQ(kvf_store_verify(m, false, NULL, NULL, &rep), KVF_OK);
    CHECK_EQ(rep.checked, 3);
    kvf_chunk_cache_free(m);
    for (int i = 0; i < 3; i++) kvf_chunk_release(c[i]);
    kvf_chunk_release(c4);
}

static int count_visit(const kvf_store_entry *e, const char *problem, void *user) {
    int *n = user;
    if (!problem && e->header_ok) n[0]++;
    else n[1]++;
    return 0;
}

static void test_disk_budget_lru(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk       *c[5];
    for (int i = 0; i < 5; i++) c[i] = make_chunk(KVF_CHUNK_F16, 24, 400 + (uint64_t)i, 0);
    size_t esz          = kvf_entry_raw_size(KVF_CHUNK_F16, g_nl, g_kvd, 24);
    p.disk_budget       = 3 * esz + esz / 2; /* three entries */
    p.touch_interval_s  = -1;                /* every hit updates the access time */
    kvf_chunk_cache *s  = open_store(&p);
    for (int i = 0; i < 3; i++) {
        s->ops->put(s, &c[i]->key, c[i]);
        kvf_store_flush(s);
        usleep(2000);
    }
    kvf_chunk *g = s->ops->get(s, &c[0]->key); /* 0 is now the most recent */
    kvf_chunk_release(g);
    kvf_store_flush(s);
    s->ops->put(s, &c[3]->key, c[3]); /* evicts 1 */
    kvf_store_flush(s);
    CHECK((g = s->ops->get(s, &c[1]->key)) == NULL);
    for (int i = 0; i < 4; i++) {
        if (i == 1) continue;
        g = s->ops->get(s, &c[i]->key);
        CHECK_MSG(g != NULL, "entry %d should have survived", i);
        kvf_chunk_release(g);
    }
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 3);
    CHECK_EQ(st.tier[KVF_TIER_DISK].evictions, 1);
    CHECK(st.tier[KVF_TIER_DISK].bytes <= (int64_t)p.disk_budget);
    /* an entry larger than the whole budget is refused with a clear error */
    kvf_chunk *big = make_chunk(KVF_CHUNK_F32, 100, 499, 0);
    s->ops->put(s, &big->key, big);
    CHECK_EQ(kvf_store_flush(s), KVF_E_FULL);
    CHECK_CONTAINS(kvf_errmsg(), "budget");
    kvf_chunk_release(big);
    /* gc to a smaller target evicts the least recent first */
    int64_t  ev;
    uint64_t fr;
    CHECK_EQ(kvf_store_gc(s, esz + esz / 2, &ev, &fr), KVF_OK);
    CHECK_EQ(ev, 2);
    CHECK_EQ(fr, 2 * (uint64_t)esz);
    int n[2] = {0, 0};
    CHECK_EQ(kvf_store_list(s, count_visit, n), KVF_OK);
    CHECK_EQ(n[0], 1);
    CHECK_EQ(n[1], 0);
    kvf_store_verify_report rep;
    CHECK_EQ(kvf_store_verify(s, false, NULL, NULL, &rep), KVF_OK);
    CHECK(rep.index_ok);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < 5; i++) kvf_chunk_release(c[i]);
}

static void test_map_full(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    p.map_size           = 512u << 10;
    kvf_chunk_cache *s   = open_store(&p);
    enum { N = 40 };
    kvf_chunk *c[N];
    for (int i = 0; i < N; i++) {
        c[i] = make_chunk(KVF_CHUNK_F16, 40, 500 + (uint64_t)i, 0);
        s->ops->put(s, &c[i]->key, c[i]);
    }
    kvf_status st = kvf_store_flush(s);
    CHECK_EQ(st, KVF_E_FULL);
    CHECK_CONTAINS(kvf_errmsg(), "map is full");
    CHECK_CONTAINS(kvf_errmsg(), "nothing stored before is lost");
    kvf_store_stats ss     = stats_of(s);
    int64_t         stored = ss.tier[KVF_TIER_DISK].writes;
    CHECK_MSG(stored > 3 && stored < N, "%lld of %d entries stored in a 512 KiB map", (long long)stored, N);
    CHECK_EQ(ss.tier[KVF_TIER_DISK].entries, stored);
    kvf_chunk_cache_free(s);
    /* reopened: every stored entry intact */
    s        = open_store(&p);
    int good = 0;
    for (int i = 0; i < N; i++) {
        kvf_chunk *g = s->ops->get(s, &c[i]->key);
        good += g && chunk_same(g, c[i]);
        kvf_chunk_release(g);
    }
    CHECK_EQ(good, stored);
    kvf_store_verify_report rep;
    CHECK_EQ(kvf_store_verify(s, false, NULL, NULL, &rep), KVF_OK);
    CHECK_EQ(rep.checked, stored);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < N; i++) kvf_chunk_release(c[i]);
}

/* a file size limit (RLIMIT_FSIZE) stands in for a full disk: writes fail with EFBIG */
static void test_disk_full(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk       *c[30];
    for (int i = 0; i < 30; i++) c[i] = make_chunk(KVF_CHUNK_F16, 40, 600 + (uint64_t)i, 0);
    kvf_chunk_cache *s = open_store(&p);
    for (int i = 0; i < 3; i++) s->ops->put(s, &c[i]->key, c[i]);
    CHECK_EQ(kvf_store_flush(s), KVF_OK);
    kvf_chunk_cache_free(s);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {300u << 10, 300u << 10};
        setrlimit(RLIMIT_FSIZE, &rl);
        kvf_chunk_cache *cs = NULL;
        if (kvf_store_open(g_model, &p, &cs) != KVF_OK) _exit(3);
        for (int i = 3; i < 30; i++) cs->ops->put(cs, &c[i]->key, c[i]);
        kvf_status st = kvf_store_flush(cs);
        int        ok = st == KVF_E_FULL && strstr(kvf_errmsg(), "disk is full") != NULL;
        if (!ok) fprintf(stderr, "child: status %d: %s\n", st, kvf_errmsg());
        kvf_set_log_level(0);
        kvf_chunk_cache_free(cs);
        _exit(ok ? 0 : 1);
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    CHECK_MSG(WIFEXITED(wst) && WEXITSTATUS(wst) == 0, "child status %d: a full disk should be a clear KVF_E_FULL", wst);
    s = open_store(&p);
    for (int i = 0; i < 3; i++) {
        kvf_chunk *g = s->ops->get(s, &c[i]->key);
        CHECK_MSG(g && chunk_same(g, c[i]), "entry %d stored before the disk filled is intact", i);
        kvf_chunk_release(g);
    }
    kvf_store_verify_report rep;
    CHECK_EQ(kvf_store_verify(s, false, NULL, NULL, &rep), KVF_OK);
    CHECK(rep.checked >= 3 && rep.index_ok);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < 30; i++) kvf_chunk_release(c[i]);
}

/* ---- corruption, pipelining --------------------------------------------------------------- */

static void test_corrupt_disk_entry(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk       *c   = make_chunk(KVF_CHUNK_F16, 50, 700, 0), *c2 = make_chunk(KVF_CHUNK_F16, 20, 701, 0);
    kvf_chunk_cache *s   = open_store(&p);
    s->ops->put(s, &c->key, c);
    kvf_store_flush(s);
    s->ops->put(s, &c2->key, c2);
    kvf_chunk_cache_free(s);
    CHECK_EQ(flip_entry_byte(dir, 0, 1000), 0);
    s = open_store(&p);
    kvf_set_log_level(0);
    kvf_chunk *g = s->ops->get(s, &c->key), *g2 = NULL;
    CHECK(g == NULL); /* detected, never served */
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].bad_entries, 1);
    kvf_store_flush(s);
    st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 1); /* dropped */
    g2 = s->ops->get(s, &c2->key);
    CHECK(chunk_same(g2, c2));
    kvf_chunk_release(g2);
    s->ops->put(s, &c->key, c); /* recomputed and stored again */
    kvf_store_flush(s);
    g = s->ops->get(s, &c->key);
    CHECK(chunk_same(g, c));
    kvf_chunk_release(g);
    kvf_chunk_cache_free(s);
    /* a flipped header byte: verify reports it and --repair removes it */
    CHECK_EQ(flip_entry_byte(dir, 0, -20), 0);
    s = open_store(&p);
    kvf_store_verify_report rep;
    int n[2] = {0, 0};
    CHECK_EQ(kvf_store_verify(s, false, count_visit, n, &rep), KVF_E_CORRUPT);
    CHECK_EQ(rep.bad, 1);
    CHECK_EQ(n[1], 1);
    CHECK_EQ(kvf_store_verify(s, true, NULL, NULL, &rep), KVF_E_CORRUPT);
    CHECK_EQ(rep.removed, 1);
    CHECK_EQ(kvf_store_verify(s, false, NULL, NULL, &rep), KVF_OK);
    CHECK_EQ(rep.checked, 1);
    kvf_set_log_level(1);
    kvf_chunk_cache_free(s);
    kvf_chunk_release(c), kvf_chunk_release(c2);
}

static void test_deferred_loader(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    p.verify_deferred    = true;
    kvf_chunk *c[3];
    kvf_chunk_cache *s = open_store(&p);
    for (int i = 0; i < 3; i++) {
        c[i] = make_chunk(KVF_CHUNK_F16, 64, 800 + (uint64_t)i, 0);
        s->ops->put(s, &c[i]->key, c[i]);
    }
    kvf_chunk_cache_free(s);
    s = open_store(&p);
    kvf_chunk *g[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) g[i] = s->ops->get_deferred(s, &c[i]->key);
    CHECK(g[0] && g[1] && g[2] && g[0]->backing);
    kvf_chunk_loader *ld;
    CHECK_EQ(kvf_chunk_loader_start(g, 4, g_nl, 2, &ld), KVF_OK); /* g[3] == NULL is skipped */
    for (int l = 0; l < g_nl; l++) {
        CHECK_EQ(kvf_chunk_loader_wait(ld, l, NULL), KVF_OK);
        CHECK(kvf_chunk_loader_layer_ms(ld, l) >= 0);
    }
    kvf_chunk_loader_free(ld);
    for (int i = 0; i < 3; i++) CHECK(chunk_same(g[i], c[i]));
    for (int i = 0; i < 3; i++) kvf_chunk_release(g[i]);
    kvf_chunk_cache_free(s);
    /* corrupt layer 2 of the second entry: the loader stops there and names the chunk */
    size_t lb = kvf_chunk_layer_bytes(c[0]);
    int    which = -1;
    for (int k = 0; k < 3 && which < 0; k++) {
        CHECK_EQ(flip_entry_byte(dir, k, (long)(2 * lb + 5)), 0);
        s                 = open_store(&p);
        kvf_set_log_level(0);
        for (int i = 0; i < 3; i++) g[i] = s->ops->get_deferred(s, &c[i]->key);
        CHECK(g[0] && g[1] && g[2]); /* the header is fine: the damage shows when loading */
        kvf_chunk_loader_start(g, 3, g_nl, 1, &ld);
        CHECK_EQ(kvf_chunk_loader_wait(ld, 0, NULL), KVF_OK);
        CHECK_EQ(kvf_chunk_loader_wait(ld, 1, NULL), KVF_OK);
        int bad = -1;
        CHECK_EQ(kvf_chunk_loader_wait(ld, g_nl - 1, &bad), KVF_E_CORRUPT);
        CHECK_CONTAINS(kvf_errmsg(), "layer 2");
        CHECK(bad >= 0 && bad < 3);
        kvf_chunk_loader_free(ld);
        /* the caller then asks again eagerly: a miss, and the entry is dropped */
        kvf_chunk *again = bad >= 0 ? s->ops->get(s, &c[bad]->key) : NULL;
        CHECK(again == NULL);
        kvf_store_flush(s);
        kvf_store_stats st = stats_of(s);
        CHECK_EQ(st.tier[KVF_TIER_DISK].entries, 2);
        which = bad;
        for (int i = 0; i < 3; i++) kvf_chunk_release(g[i]);
        kvf_set_log_level(1);
        kvf_chunk_cache_free(s);
    }
    for (int i = 0; i < 3; i++) kvf_chunk_release(c[i]);
}

/* ---- concurrency, writer queue, redis down ------------------------------------------------ */

typedef struct {
    kvf_chunk_cache *s;
    kvf_chunk      **c;
    int              n, bad, hits;
} reader_arg;

static void *reader_main(void *p) {
    reader_arg *a = p;
    for (int it = 0; it < 200; it++) {
        int        i = it % a->n;
        kvf_chunk *g = a->s->ops->get(a->s, &a->c[i]->key);
        if (g) {
            a->hits++;
            a->bad += !chunk_same(g, a->c[i]);
            kvf_chunk_release(g);
        }
    }
    return NULL;
}

static void test_concurrent_readers(void) {
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    enum { N = 12 };
    kvf_chunk *c[N];
    for (int i = 0; i < N; i++) c[i] = make_chunk(KVF_CHUNK_F16, 16 + i, 900 + (uint64_t)i, 0);
    kvf_chunk_cache *s = open_store(&p), *s2 = open_store(&p);
    for (int i = 0; i < N / 2; i++) s->ops->put(s, &c[i]->key, c[i]);
    kvf_store_flush(s);
    pthread_t  th[4];
    reader_arg ra[4];
    for (int t = 0; t < 4; t++) {
        ra[t] = (reader_arg){t % 2 ? s : s2, c, N, 0, 0};
        pthread_create(&th[t], NULL, reader_main, &ra[t]);
    }
    for (int i = N / 2; i < N; i++) s->ops->put(s, &c[i]->key, c[i]); /* written meanwhile */
    kvf_store_flush(s);
    int bad = 0, hits = 0;
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        bad += ra[t].bad, hits += ra[t].hits;
    }
    CHECK_MSG(bad == 0, "%d of %d concurrent reads returned wrong data", bad, hits);
    CHECK(hits >= 4 * 100);
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, N);
    kvf_chunk_cache_free(s2);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < N; i++) kvf_chunk_release(c[i]);
}

static void test_writer_queue(void) {
    enum { N = 10 };
    kvf_chunk *c[N];
    for (int i = 0; i < N; i++) c[i] = make_chunk(KVF_CHUNK_F16, 30, 1000 + (uint64_t)i, 0);
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    p.queue_bytes        = 1; /* at most one chunk queued: put waits for the writer */
    kvf_chunk_cache *s   = open_store(&p);
    for (int i = 0; i < N; i++) CHECK_EQ(s->ops->put(s, &c[i]->key, c[i]), KVF_OK);
    kvf_chunk_cache_free(s); /* flushes */
    s                  = open_store(&p);
    kvf_store_stats st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].entries, N);
    kvf_chunk_cache_free(s);
    /* drop_when_full: every put returns at once; written + dropped == N */
    p.dir            = new_dir();
    p.drop_when_full = true;
    s                = open_store(&p);
    for (int i = 0; i < N; i++) CHECK_EQ(s->ops->put(s, &c[i]->key, c[i]), KVF_OK);
    kvf_store_flush(s);
    st = stats_of(s);
    CHECK_EQ(st.tier[KVF_TIER_DISK].writes + st.write_dropped, N);
    CHECK_EQ(st.queued, 0);
    kvf_chunk_cache_free(s);
    for (int i = 0; i < N; i++) kvf_chunk_release(c[i]);
}

static void test_redis_down(void) {
    kvf_store_params p = disk_params(new_dir());
    p.redis            = "127.0.0.1:1"; /* nothing listens: connection refused */
    p.redis_timeout_ms = 200;
    kvf_chunk       *c = make_chunk(KVF_CHUNK_F16, 20, 1100, 0);
    kvf_set_log_level(0);
    kvf_chunk_cache *s = open_store(&p);
    CHECK(s->ops->get(s, &c->key) == NULL);
    double t0 = kvf_time_ms();
    CHECK_EQ(s->ops->put(s, &c->key, c), KVF_OK);
    CHECK_EQ(kvf_store_flush(s), KVF_OK); /* a Redis outage is not a write error */
    kvf_chunk *g = s->ops->get(s, &c->key);
    CHECK(chunk_same(g, c));
    kvf_chunk_release(g);
    CHECK(kvf_time_ms() - t0 < 2000);
    kvf_store_stats st = stats_of(s);
    CHECK(st.tier[KVF_TIER_REDIS].enabled);
    CHECK(st.tier[KVF_TIER_REDIS].errors >= 1);
    CHECK_EQ(st.tier[KVF_TIER_DISK].hits, 1);
    CHECK_EQ(kvf_store_count_redis(s), KVF_E_IO);
    kvf_chunk_cache_free(s);
    kvf_set_log_level(1);
    kvf_chunk_release(c);
    kvf_store_params bad = kvf_store_default_params();
    bad.redis            = "no-port";
    kvf_chunk_cache *x;
    CHECK_EQ(kvf_store_open(g_model, &bad, &x), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "HOST:PORT");
    /* cluster hash slots (values from the Redis Cluster specification / CLUSTER KEYSLOT) */
    CHECK_EQ(kvf_redis_slot("123456789", 9), 0x31C3);
    CHECK_EQ(kvf_redis_slot("foo", 3), 12182);
    CHECK_EQ(kvf_redis_slot("{user1000}.following", 20), kvf_redis_slot("{user1000}.followers", 20));
    CHECK_EQ(kvf_redis_slot("kvf:{abc}", 9), kvf_redis_slot("abc", 3));
}

/* ---- fusion through the store ------------------------------------------------------------- */

static void make_segments(kvf_segment *segs, int32_t **ids, int n_docs, uint64_t seed) {
    int lens[8] = {9, 33, 47, 21, 28, 15, 40, 11};
    for (int i = 0; i < n_docs + 2; i++) {
        int n  = i == n_docs + 1 ? 7 : lens[i % 8];
        ids[i] = malloc(sizeof(int32_t) * (size_t)n);
        fill_ids(ids[i], n, seed + (uint64_t)i * 31);
        segs[i].ids = ids[i], segs[i].n = n;
    }
}

static void test_fusion_from_disk(void) {
    enum { D = 4 };
    kvf_segment segs[D + 2];
    int32_t    *ids[D + 2];
    make_segments(segs, ids, D, 1200);
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 256;
    sp.n_threads          = 2;
    kvf_session *s;
    kvf_session_new(g_model, &sp, &s);
    kvf_fuse_params fp = kvf_fuse_default_params();
    int32_t         nv = g_nv;
    /* reference: the memory cache */
    kvf_chunk_cache *mem;
    kvf_chunk_cache_new_memory(0, &mem);
    CHECK_EQ(kvf_session_fuse(s, mem, segs, D + 2, &fp, NULL), KVF_OK);
    float *ref = malloc(sizeof(float) * (size_t)nv);
    memcpy(ref, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv);
    kvf_chunk_cache_free(mem);
    /* precompute into the store, then fuse from a new handle: every chunk from disk */
    const char      *dir = new_dir();
    kvf_store_params p   = disk_params(dir);
    kvf_chunk_cache *st  = open_store(&p);
    kvf_fuse_stats   fs;
    CHECK_EQ(kvf_session_precompute(s, st, segs, D + 2, &fp, &fs), KVF_OK);
    CHECK_EQ(fs.chunk_misses, D + 1);
    kvf_chunk_cache_free(st);
    st = open_store(&p);
    CHECK_EQ(kvf_session_fuse(s, st, segs, D + 2, &fp, &fs), KVF_OK);
    CHECK_EQ(fs.chunk_hits, D + 1);
    CHECK_EQ(fs.chunk_misses, 0);
    CHECK_MSG(!memcmp(ref, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv), "logits from the disk tier differ from the memory cache");
    kvf_store_stats ss = stats_of(st);
    CHECK_EQ(ss.tier[KVF_TIER_DISK].hits, D + 1);
    kvf_chunk_cache_free(st);
    /* a flipped byte in one stored chunk: detected, recomputed, same answer */
    CHECK_EQ(flip_entry_byte(dir, 2, 333), 0);
    st = open_store(&p);
    kvf_set_log_level(0);
    CHECK_EQ(kvf_session_fuse(s, st, segs, D + 2, &fp, &fs), KVF_OK);
    kvf_set_log_level(1);
    CHECK_EQ(fs.chunk_misses, 1);
    CHECK_EQ(fs.chunk_hits, D);
    CHECK(!memcmp(ref, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv));
    kvf_store_flush(st);
    kvf_store_verify_report rep;
    CHECK_EQ(kvf_store_verify(st, false, NULL, NULL, &rep), KVF_OK);
    CHECK_EQ(rep.checked, D + 1);
    kvf_chunk_cache_free(st);
    /* q8 chunks: the same pipeline, answers close to f16 */
    fp.dtype = KVF_CHUNK_Q8;
    p.dir    = new_dir();
    st       = open_store(&p);
    CHECK_EQ(kvf_session_fuse(s, st, segs, D + 2, &fp, &fs), KVF_OK);
    CHECK_EQ(kvf_session_fuse(s, st, segs, D + 2, &fp, &fs), KVF_OK);
    CHECK_EQ(fs.chunk_hits, D + 1);
    double worst = 0, mag = 0;
    for (int i = 0; i < nv; i++) worst = fmax(worst, fabs(ref[i] - kvf_session_logits(s, -1)[i])), mag = fmax(mag, fabs(ref[i]));
    CHECK_MSG(worst < 0.05 * mag + 1e-3, "q8 chunk logits differ by %.3g (max |logit| %.3g)", worst, mag);
    kvf_chunk_cache_free(st);
    free(ref);
    kvf_session_free(s);
    for (int i = 0; i < D + 2; i++) free(ids[i]);
}

/* ---- content addresses -------------------------------------------------------------------- */

static void key_hex_fixed(char out[33]) {
    uint8_t fp[16];
    for (int i = 0; i < 16; i++) fp[i] = (uint8_t)(i * 17 + 3);
    int32_t       ctx[3] = {1, 2, 3}, ids[5] = {100, 200, 300, 400, 49151};
    kvf_chunk_key k      = kvf_chunk_key_make(fp, KVF_CHUNK_F16, ctx, 3, ids, 5);
    kvf_chunk_key_hex(&k, out);
}

static void test_keys_stable(void) {
    char here[33], model_here[33];
    key_hex_fixed(here);
    int32_t       ids[4] = {5, 6, 7, 8};
    kvf_chunk_key mk     = kvf_chunk_key_make(g_model->cache_id, KVF_CHUNK_F16, NULL, 0, ids, 4);
    kvf_chunk_key_hex(&mk, model_here);
    int fd[2];
    CHECK_EQ(pipe(fd), 0);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) { /* another process: same model file loaded again, same key */
        char       buf[66];
        kvf_model *m2;
        char       path[400];
        snprintf(path, sizeof path, "%s/store.gguf", tmpdir);
        key_hex_fixed(buf);
        if (kvf_model_load(path, NULL, &m2) != KVF_OK) _exit(1);
        kvf_chunk_key k2 = kvf_chunk_key_make(m2->cache_id, KVF_CHUNK_F16, NULL, 0, ids, 4);
        kvf_chunk_key_hex(&k2, buf + 33);
        if (write(fd[1], buf, 66) != 66) _exit(2);
        _exit(0);
    }
    close(fd[1]);
    char   got[66];
    size_t n = 0;
    ssize_t r;
    while (n < 66 && (r = read(fd[0], got + n, 66 - n)) > 0) n += (size_t)r;
    close(fd[0]);
    int wst;
    waitpid(pid, &wst, 0);
    CHECK_EQ(n, 66);
    CHECK_STR(got, here);
    CHECK_STR(got + 33, model_here);
    /* and across builds and machines: a fixed input has a fixed address */
    CHECK_STR(here, "8a52b6799716653e34fc3db5ade27e49");
    /* every input matters */
    uint8_t fp[16] = {0};
    int32_t a[2] = {1, 2};
    kvf_chunk_key k1 = kvf_chunk_key_make(fp, KVF_CHUNK_F16, NULL, 0, a, 2);
    kvf_chunk_key k2 = kvf_chunk_key_make(fp, KVF_CHUNK_F32, NULL, 0, a, 2);
    kvf_chunk_key k3 = kvf_chunk_key_make(fp, KVF_CHUNK_F16, a, 1, a + 1, 1);
    fp[15]           = 1;
    kvf_chunk_key k4 = kvf_chunk_key_make(fp, KVF_CHUNK_F16, NULL, 0, a, 2);
    CHECK(memcmp(&k1, &k2, 16) && memcmp(&k1, &k3, 16) && memcmp(&k1, &k4, 16));
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf-test-store-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) return 1;
    kvf_set_log_level(1);
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q4_1, .etype = KVF_TYPE_Q8_0, .n_layer = 4, .n_ctx = 512, .seed = 5};
    synth_info info;
    char       path[400];
    snprintf(path, sizeof path, "%s/store.gguf", tmpdir);
    if (synth_model_file(&cfg, path, &info) != KVF_OK || kvf_model_load(path, NULL, &g_model) != KVF_OK) {
        fprintf(stderr, "setup: %s\n", kvf_errmsg());
        return 1;
    }
    g_nv  = info.n_vocab;
    g_nl  = g_model->hp.n_layer;
    g_kvd = g_model->hp.n_head_kv * g_model->hp.head_dim;
    RUN(test_entry_roundtrip);
    RUN(test_entry_corruption);
    RUN(test_entry_hostile_fields);
    RUN(test_q8_dtype);
    RUN(test_memory_lru_and_pin);
    RUN(test_kvflow_eviction);
    RUN(test_steps_lanes_and_rebuild);
    RUN(test_kvflow_warm);
    RUN(test_disk_roundtrip_and_persistence);
    RUN(test_disk_budget_lru);
    RUN(test_map_full);
    RUN(test_disk_full);
    RUN(test_corrupt_disk_entry);
    RUN(test_deferred_loader);
    RUN(test_concurrent_readers);
    RUN(test_writer_queue);
    RUN(test_redis_down);
    RUN(test_fusion_from_disk);
    RUN(test_keys_stable);
    kvf_model_free(g_model);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_REPORT();
}
