/* chunk_lru.h - an index of chunks in memory: key -> chunk (one reference held), a
 * least-recently-used order, the byte total, and the steps-to-execution hints (steps.h) that
 * choose what to evict. The memory chunk cache (chunk_lru.c) and the store's memory tier
 * (store.c) are both one of these behind their own lock. Not thread-safe: the owner locks
 * around every call. */
#ifndef KVF_STORE_CHUNK_LRU_H
#define KVF_STORE_CHUNK_LRU_H

#include "store/chunk.h"
#include "store/steps.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvf_lru_entry {
    kvf_chunk_key key;
    kvf_chunk *chunk;                  /* one reference, released with the entry */
    bool pinned;                       /* never chosen as a victim */
    struct kvf_lru_entry *prev, *next; /* LRU order: head = most recent */
    struct kvf_lru_entry *hnext;       /* hash chain */
} kvf_lru_entry;

typedef struct kvf_lru {
    kvf_lru_entry **buckets;
    size_t n_buckets;
    kvf_lru_entry *head, *tail;
    int64_t n_entries;
    uint64_t bytes;  /* sum of the entries' chunk bytes */
    kvf_steps steps; /* hints: the eviction order */
} kvf_lru;

/* an empty index; KVF_E_NOMEM. A zeroed kvf_lru is an empty index that cannot take entries
 * (kvf_lru_find finds nothing). */
kvf_status kvf_lru_init(kvf_lru *l);
/* releases every entry's chunk and the index; a zeroed or freed index is fine */
void kvf_lru_free(kvf_lru *l);
/* the entry of `key` or NULL; with `touch`, it becomes the most recently used */
kvf_lru_entry *kvf_lru_find(kvf_lru *l, const kvf_chunk_key *key, bool touch);
/* keep `c` under `key` as the most recently used entry (a reference is taken); an entry with
 * that key is replaced in place and keeps its pin. NULL (KVF_E_NOMEM) only for a new key. */
kvf_lru_entry *kvf_lru_put(kvf_lru *l, const kvf_chunk_key *key, kvf_chunk *c);
void kvf_lru_remove(kvf_lru *l, kvf_lru_entry *e);
/* the entry to evict, never `keep` nor a pinned one, NULL if none: the one needed furthest in
 * the future by the hints, the least recently used among equals (plain LRU without hints) */
kvf_lru_entry *kvf_lru_victim(const kvf_lru *l, const kvf_lru_entry *keep);
/* evict victims (never `keep`) until the bytes fit `budget` or none is left; returns how many */
int64_t kvf_lru_shrink(kvf_lru *l, uint64_t budget, const kvf_lru_entry *keep);

#endif
