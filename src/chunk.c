/* chunk.c - chunk objects, content addresses, and the in-memory LRU chunk cache. */
#include "chunk.h"
#include "common.h"
#include "quant.h"

#include <pthread.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

size_t kvf_chunk_elem_size(kvf_chunk_dtype dt) {
    return dt == KVF_CHUNK_F32 ? 4 : 2;
}

kvf_chunk *kvf_chunk_alloc(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer, int32_t kvd,
                           const int32_t *ids, int32_t n_ctx) {
    if (n_tokens <= 0 || n_layer <= 0 || kvd <= 0) return NULL;
    kvf_chunk *c = kvf_calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    c->dtype    = dtype;
    c->n_tokens = n_tokens;
    c->n_layer  = n_layer;
    c->kvd      = kvd;
    c->n_ctx    = n_ctx;
    c->bytes    = (size_t)n_layer * 2 * (size_t)n_tokens * (size_t)kvd * kvf_chunk_elem_size(dtype);
    c->ids      = kvf_malloc(sizeof(int32_t) * (size_t)n_tokens);
    c->data     = kvf_alloc_aligned(c->bytes);
    if (!c->ids || !c->data) {
        kvf_free(c->ids);
        kvf_free_aligned(c->data);
        kvf_free(c);
        return NULL;
    }
    if (ids) memcpy(c->ids, ids, sizeof(int32_t) * (size_t)n_tokens);
    return c;
}

kvf_chunk *kvf_chunk_retain(kvf_chunk *c) {
    if (c) atomic_fetch_add(&c->refs, 1);
    return c;
}

void kvf_chunk_release(kvf_chunk *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    kvf_free(c->ids);
    kvf_free_aligned(c->data);
    kvf_free(c);
}

int32_t kvf_chunk_n_tokens(const kvf_chunk *c) {
    return c->n_tokens;
}

size_t kvf_chunk_bytes(const kvf_chunk *c) {
    return c->bytes;
}

static uint8_t *chunk_at(const kvf_chunk *c, int l, int kv, int32_t i) {
    size_t row = (((size_t)l * 2 + (size_t)kv) * (size_t)c->n_tokens + (size_t)i) * (size_t)c->kvd;
    return c->data + row * kvf_chunk_elem_size(c->dtype);
}

void kvf_chunk_read(const kvf_kernels *K, const kvf_chunk *c, int l, int kv, int32_t i0,
                    int32_t n, float *dst) {
    KVF_ASSERT(l >= 0 && l < c->n_layer && i0 >= 0 && i0 + n <= c->n_tokens);
    const uint8_t *p = chunk_at(c, l, kv, i0);
    size_t         m = (size_t)n * (size_t)c->kvd;
    if (c->dtype == KVF_CHUNK_F32) {
        memcpy(dst, p, m * 4);
        return;
    }
    (K ? K : &kvf_kernels_ref)->f16_to_f32((const uint16_t *)p, dst, (int64_t)m);
}

void kvf_chunk_write(const kvf_kernels *K, kvf_chunk *c, int l, int kv, int32_t i0, int32_t n,
                     const float *src) {
    KVF_ASSERT(l >= 0 && l < c->n_layer && i0 >= 0 && i0 + n <= c->n_tokens);
    uint8_t *p = chunk_at(c, l, kv, i0);
    size_t   m = (size_t)n * (size_t)c->kvd;
    if (c->dtype == KVF_CHUNK_F32) {
        memcpy(p, src, m * 4);
        return;
    }
    (K ? K : &kvf_kernels_ref)->f32_to_f16(src, (uint16_t *)p, (int64_t)m);
}

kvf_chunk_key kvf_chunk_key_make(const uint8_t fingerprint[16], kvf_chunk_dtype dtype,
                                 const int32_t *ctx, int32_t n_ctx, const int32_t *ids,
                                 int32_t n) {
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    uint32_t hdr[4] = {0x4B564643u /* "KVFC" */, KVF_CHUNK_FORMAT_VERSION, (uint32_t)dtype,
                       (uint32_t)n_ctx};
    XXH3_128bits_update(&st, fingerprint, 16);
    XXH3_128bits_update(&st, hdr, sizeof hdr);
    if (n_ctx > 0) XXH3_128bits_update(&st, ctx, sizeof(int32_t) * (size_t)n_ctx);
    uint32_t nn = (uint32_t)n;
    XXH3_128bits_update(&st, &nn, 4);
    XXH3_128bits_update(&st, ids, sizeof(int32_t) * (size_t)n);
    XXH128_hash_t      h = XXH3_128bits_digest(&st);
    XXH128_canonical_t canon;
    XXH128_canonicalFromHash(&canon, h);
    kvf_chunk_key k;
    memcpy(k.b, canon.digest, 16);
    return k;
}

void kvf_chunk_key_hex(const kvf_chunk_key *k, char out[33]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) out[2 * i] = hx[k->b[i] >> 4], out[2 * i + 1] = hx[k->b[i] & 15];
    out[32] = 0;
}

/* ---- in-memory LRU cache --------------------------------------------------------------- */

typedef struct mem_entry {
    kvf_chunk_key     key;
    kvf_chunk        *chunk;
    struct mem_entry *prev, *next; /* LRU list: head = most recent */
    struct mem_entry *hnext;       /* hash chain */
} mem_entry;

typedef struct mem_cache {
    kvf_chunk_cache  base;
    pthread_mutex_t  mu;
    size_t           budget, bytes;
    mem_entry      **buckets;
    size_t           n_buckets, n_entries;
    mem_entry       *head, *tail;
} mem_cache;

static size_t bucket_of(const mem_cache *m, const kvf_chunk_key *k) {
    uint64_t h;
    memcpy(&h, k->b, 8);
    return (size_t)(h % m->n_buckets);
}

static void lru_unlink(mem_cache *m, mem_entry *e) {
    if (e->prev) e->prev->next = e->next; else m->head = e->next;
    if (e->next) e->next->prev = e->prev; else m->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(mem_cache *m, mem_entry *e) {
    e->prev = NULL;
    e->next = m->head;
    if (m->head) m->head->prev = e;
    m->head = e;
    if (!m->tail) m->tail = e;
}

static mem_entry *find(mem_cache *m, const kvf_chunk_key *k) {
    for (mem_entry *e = m->buckets[bucket_of(m, k)]; e; e = e->hnext)
        if (memcmp(e->key.b, k->b, 16) == 0) return e;
    return NULL;
}

static void remove_entry(mem_cache *m, mem_entry *e) {
    mem_entry **pp = &m->buckets[bucket_of(m, &e->key)];
    while (*pp != e) pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(m, e);
    m->bytes -= e->chunk->bytes;
    m->n_entries--;
    kvf_chunk_release(e->chunk);
    kvf_free(e);
}

static kvf_chunk *mem_get(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    mem_cache *m = (mem_cache *)c;
    pthread_mutex_lock(&m->mu);
    mem_entry *e = find(m, key);
    kvf_chunk *r = NULL;
    if (e) {
        lru_unlink(m, e);
        lru_push_front(m, e);
        r = kvf_chunk_retain(e->chunk);
    }
    pthread_mutex_unlock(&m->mu);
    return r;
}

static kvf_status mem_put(kvf_chunk_cache *c, const kvf_chunk_key *key, kvf_chunk *chunk) {
    mem_cache *m = (mem_cache *)c;
    if (m->budget && chunk->bytes > m->budget) return KVF_OK; /* too big to keep: not an error */
    pthread_mutex_lock(&m->mu);
    mem_entry *e = find(m, key);
    if (e) { /* replace */
        remove_entry(m, e);
    }
    e = kvf_calloc(1, sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&m->mu);
        return kvf_set_error(KVF_E_NOMEM, "out of memory in the chunk cache");
    }
    e->key   = *key;
    e->chunk = kvf_chunk_retain(chunk);
    size_t b = bucket_of(m, key);
    e->hnext = m->buckets[b];
    m->buckets[b] = e;
    lru_push_front(m, e);
    m->bytes += chunk->bytes;
    m->n_entries++;
    while (m->budget && m->bytes > m->budget && m->tail != e) remove_entry(m, m->tail);
    pthread_mutex_unlock(&m->mu);
    return KVF_OK;
}

static void mem_free(kvf_chunk_cache *c) {
    mem_cache *m = (mem_cache *)c;
    while (m->head) remove_entry(m, m->head);
    kvf_free(m->buckets);
    pthread_mutex_destroy(&m->mu);
    kvf_free(m);
}

static const kvf_chunk_cache_ops mem_ops = {mem_get, mem_put, mem_free};

kvf_status kvf_chunk_cache_new_memory(size_t budget_bytes, kvf_chunk_cache **out) {
    *out         = NULL;
    mem_cache *m = kvf_calloc(1, sizeof *m);
    if (!m) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    m->n_buckets = 1024;
    m->buckets   = kvf_calloc(m->n_buckets, sizeof(mem_entry *));
    if (!m->buckets) {
        kvf_free(m);
        return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    m->base.ops = &mem_ops;
    m->budget   = budget_bytes;
    pthread_mutex_init(&m->mu, NULL);
    *out = &m->base;
    return KVF_OK;
}

void kvf_chunk_cache_free(kvf_chunk_cache *c) {
    if (c) c->ops->free(c);
}
