/* chunk_lru.c - the in-memory chunk index shared by the memory chunk cache and the store's
 * memory tier (chunk_lru.h), and that memory chunk cache (kvf_chunk_cache_new_memory). */
#include "store/chunk_lru.h"
#include "common.h"

#include <pthread.h>
#include <string.h>

#define N_BUCKETS 1024

kvf_status kvf_lru_init(kvf_lru *l) {
    memset(l, 0, sizeof *l);
    l->n_buckets = N_BUCKETS;
    l->buckets = kvf_calloc(l->n_buckets, sizeof(kvf_lru_entry *));
    if (!l->buckets || kvf_steps_init(&l->steps, 0) != KVF_OK) {
        kvf_free(l->buckets);
        l->buckets = NULL;
        return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    return KVF_OK;
}

void kvf_lru_free(kvf_lru *l) {
    if (l->buckets)
        while (l->head)
            kvf_lru_remove(l, l->head);
    kvf_free(l->buckets);
    kvf_steps_free(&l->steps);
    memset(l, 0, sizeof *l);
}

static size_t bucket_of(const kvf_lru *l, const kvf_chunk_key *k) {
    uint64_t h;
    memcpy(&h, k->b, 8);
    return (size_t)(h % l->n_buckets);
}

static void unlink_lru(kvf_lru *l, kvf_lru_entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        l->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        l->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(kvf_lru *l, kvf_lru_entry *e) {
    e->prev = NULL;
    e->next = l->head;
    if (l->head) l->head->prev = e;
    l->head = e;
    if (!l->tail) l->tail = e;
}

kvf_lru_entry *kvf_lru_find(kvf_lru *l, const kvf_chunk_key *key, bool touch) {
    if (!l->buckets) return NULL; /* never initialised: empty */
    for (kvf_lru_entry *e = l->buckets[bucket_of(l, key)]; e; e = e->hnext)
        if (memcmp(e->key.b, key->b, 16) == 0) {
            if (touch) unlink_lru(l, e), push_front(l, e);
            return e;
        }
    return NULL;
}

kvf_lru_entry *kvf_lru_put(kvf_lru *l, const kvf_chunk_key *key, kvf_chunk *c) {
    kvf_lru_entry *e = kvf_lru_find(l, key, true);
    if (e) { /* replace the chunk, keep the entry (and its pin) */
        l->bytes -= e->chunk->bytes;
        kvf_chunk_release(e->chunk);
    } else {
        if (!(e = kvf_calloc(1, sizeof *e))) {
            kvf_set_error(KVF_E_NOMEM, "out of memory in the chunk cache");
            return NULL;
        }
        e->key = *key;
        size_t b = bucket_of(l, key);
        e->hnext = l->buckets[b];
        l->buckets[b] = e;
        push_front(l, e);
        l->n_entries++;
    }
    e->chunk = kvf_chunk_retain(c);
    l->bytes += c->bytes;
    return e;
}

void kvf_lru_remove(kvf_lru *l, kvf_lru_entry *e) {
    kvf_lru_entry **pp = &l->buckets[bucket_of(l, &e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    unlink_lru(l, e);
    l->bytes -= e->chunk->bytes;
    l->n_entries--;
    kvf_chunk_release(e->chunk);
    kvf_free(e);
}

kvf_lru_entry *kvf_lru_victim(const kvf_lru *l, const kvf_lru_entry *keep) {
    kvf_lru_entry *v = NULL;
    uint32_t vs = 0;
    for (kvf_lru_entry *e = l->tail; e; e = e->prev) {
        if (e == keep || e->pinned) continue;
        uint32_t st = kvf_steps_get(&l->steps, e->key.b);
        if (!v || st > vs) v = e, vs = st;
        if (vs == KVF_STEPS_NONE) break; /* nothing goes before "never" */
    }
    return v;
}

int64_t kvf_lru_shrink(kvf_lru *l, uint64_t budget, const kvf_lru_entry *keep) {
    int64_t n = 0;
    for (kvf_lru_entry *v; l->bytes > budget && (v = kvf_lru_victim(l, keep)); n++)
        kvf_lru_remove(l, v);
    return n;
}

/* ---- in-memory LRU cache --------------------------------------------------------------- */

typedef struct mem_cache {
    kvf_chunk_cache base;
    pthread_mutex_t mu;
    size_t          budget; /* 0: unbounded */
    kvf_lru         lru;
} mem_cache;

static kvf_chunk *mem_get(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    mem_cache *m = (mem_cache *)c;
    pthread_mutex_lock(&m->mu);
    kvf_lru_entry *e = kvf_lru_find(&m->lru, key, true);
    kvf_chunk     *r = e ? kvf_chunk_retain(e->chunk) : NULL;
    pthread_mutex_unlock(&m->mu);
    return r;
}

static kvf_status mem_put(kvf_chunk_cache *c, const kvf_chunk_key *key, kvf_chunk *chunk) {
    mem_cache *m = (mem_cache *)c;
    if (m->budget && chunk->bytes > m->budget) return KVF_OK; /* too big to keep: not an error */
    pthread_mutex_lock(&m->mu);
    kvf_lru_entry *e = kvf_lru_put(&m->lru, key, chunk);
    if (e && m->budget) kvf_lru_shrink(&m->lru, m->budget, e);
    pthread_mutex_unlock(&m->mu);
    return e ? KVF_OK : KVF_E_NOMEM;
}

static void mem_hint(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n, int lane, uint32_t steps) {
    mem_cache *m = (mem_cache *)c;
    pthread_mutex_lock(&m->mu);
    for (int i = 0; i < n; i++) kvf_steps_set(&m->lru.steps, keys[i].b, lane, steps);
    pthread_mutex_unlock(&m->mu);
}

static void mem_free(kvf_chunk_cache *c) {
    mem_cache *m = (mem_cache *)c;
    kvf_lru_free(&m->lru);
    pthread_mutex_destroy(&m->mu);
    kvf_free(m);
}

static const kvf_chunk_cache_ops mem_ops = {.get = mem_get, .put = mem_put, .free = mem_free, .hint = mem_hint};

kvf_status kvf_chunk_cache_new_memory(size_t budget_bytes, kvf_chunk_cache **out) {
    *out         = NULL;
    mem_cache *m = kvf_calloc(1, sizeof *m);
    if (!m) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    if (kvf_lru_init(&m->lru) != KVF_OK) {
        kvf_free(m);
        return KVF_E_NOMEM;
    }
    m->base.ops = &mem_ops;
    m->budget   = budget_bytes;
    pthread_mutex_init(&m->mu, NULL);
    *out = &m->base;
    return KVF_OK;
}
