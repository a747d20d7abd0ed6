/* chunk_lru.c - the in-memory chunk index shared by the memory cache and the store's memory
 * tier (chunk_lru.h). */
#include "store/chunk_lru.h"
#include "common.h"

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
