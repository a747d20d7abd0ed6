/* store.h - private interfaces of the tiered chunk store (public API: kvfuse.h, "chunk store"):
 * the LMDB disk tier (store_lmdb.c), the Redis tier (store_redis.c), and the layer loader that
 * lets fusion overlap loading a chunk's layer l + 1 with computing layer l (store.c).
 *
 * Pipelined loading, for fusion: fetch chunks with cache->ops->get_deferred (when not NULL),
 * start a loader on them, and wait for each layer before reading it:
 *
 *     kvf_chunk_loader *ld;
 *     kvf_chunk_loader_start(chunks, n_chunks, n_layer, 2, &ld);   // NULL chunks are skipped
 *     for (int l = 0; l < n_layer; l++) {
 *         if (kvf_chunk_loader_wait(ld, l) != KVF_OK) ...;         // layer l verified, resident
 *         ... build / recompute layer l ...                         // loader works on l + 1..
 *     }
 *     kvf_chunk_loader_free(ld);
 *
 * The loader thread reads layers in order, keeping `ahead` layers of read-ahead requested
 * (kvf_chunk_prefetch_layer: madvise(WILLNEED) on zero-copy chunks), and checks each layer's
 * checksum (kvf_chunk_load_layer), timing each layer.
 */
#ifndef KVF_STORE_H
#define KVF_STORE_H

#include "store/chunk.h"
#include "store/chunk_io.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- layer loader (pipelining) ------------------------------------------------------------ */

typedef struct kvf_chunk_loader kvf_chunk_loader;

/* Start loading layers 0..n_layer-1 of chunks[0..n) (entries may be NULL) on a new thread,
 * requesting read-ahead `ahead` layers beyond the one being checked (0 = none). The loader
 * holds its own references. KVF_E_NOMEM / KVF_E_IO (thread) on failure. */
kvf_status kvf_chunk_loader_start(kvf_chunk *const *chunks, int n, int n_layer, int ahead,
                                  kvf_chunk_loader **out);
/* Block until layer l of every chunk is loaded. KVF_OK, or KVF_E_CORRUPT when some chunk's
 * layer l (or an earlier one) failed its checksum: *bad (may be NULL) is set to that chunk's
 * index; the message says which layer. Layers are always finished in order. */
kvf_status kvf_chunk_loader_wait(kvf_chunk_loader *ld, int l, int *bad);
/* Milliseconds the loader spent on layer l (read + checksum, all chunks); -1 if not done. */
double kvf_chunk_loader_layer_ms(const kvf_chunk_loader *ld, int l);
/* Stop (the current layer is finished first) and free. NULL is fine. */
void kvf_chunk_loader_free(kvf_chunk_loader *ld);

/* ---- LMDB disk tier ----------------------------------------------------------------------- */

typedef struct kvf_lmdb kvf_lmdb;

typedef struct kvf_lmdb_params {
    const char *dir;
    uint64_t    map_size;    /* 0 = keep the existing map size, or 16 GiB for a new store */
    uint64_t    budget;      /* entry bytes; 0 = none */
    bool        no_meta_sync;
} kvf_lmdb_params;

kvf_status kvf_lmdb_open(const kvf_lmdb_params *p, kvf_lmdb **out);
void       kvf_lmdb_close(kvf_lmdb *d);

typedef enum {
    KVF_LMDB_EAGER = 0, /* every layer verified before returning; zero-copy when aligned */
    KVF_LMDB_DEFERRED,  /* zero-copy; layers verified by kvf_chunk_load_layer */
    KVF_LMDB_COPY,      /* an owned, verified copy */
} kvf_lmdb_mode;

/* Look up key. KVF_OK with *out, KVF_E_NOTFOUND, KVF_E_CORRUPT (header, key, model id or a
 * checksum is bad: the caller drops it), or KVF_E_IO/KVF_E_NOMEM. model_id NULL: any model.
 * *last_access: the entry's last access time (Unix ns; 0 unknown). */
kvf_status kvf_lmdb_get(kvf_lmdb *d, const kvf_chunk_key *key, const uint8_t *model_id,
                        kvf_lmdb_mode mode, kvf_chunk **out, uint64_t *last_access);

/* Start reading the entries of these keys (read-ahead of their pages; a hint). */
void kvf_lmdb_prefetch(kvf_lmdb *d, const kvf_chunk_key *keys, int n);

/* One write of a batch (the writer thread's unit of work). */
typedef enum { KVF_LMDB_PUT = 0, KVF_LMDB_TOUCH, KVF_LMDB_DROP_BAD, KVF_LMDB_DEL } kvf_lmdb_opkind;
typedef struct kvf_lmdb_op {
    kvf_lmdb_opkind kind;
    kvf_chunk_key   key;
    const uint8_t  *entry; /* PUT: the encoded entry */
    size_t          len;
    uint64_t        time;  /* PUT / TOUCH: access time (Unix ns) */
    /* results */
    kvf_status      status;
    bool            done;     /* stored / touched / deleted */
    int32_t         evicted;  /* entries evicted to make room (PUT) */
    int32_t         replaced_bad; /* PUT found a corrupt entry under the key and replaced it */
} kvf_lmdb_op;

/* Persistent counters (kept in the store's "info" table). */
typedef enum {
    KVF_CTR_HITS_MEM = 0, KVF_CTR_MISSES_MEM, KVF_CTR_HITS_DISK, KVF_CTR_MISSES_DISK,
    KVF_CTR_HITS_REDIS, KVF_CTR_MISSES_REDIS, KVF_CTR_BAD_DISK, KVF_CTR_BAD_REDIS,
    KVF_CTR_EVICTED, KVF_CTR_COUNT
} kvf_lmdb_counter;

/* Apply ops (in order) and add deltas[KVF_CTR_COUNT] (may be NULL) in one transaction; when that
 * fails (map full, disk full), the deltas and then each op are retried in transactions of their
 * own so the others still land. Each op's status says how it went; *deltas_done (may be NULL)
 * whether the deltas were added. Returns the first failure (message in kvf_errmsg(), e.g.
 * KVF_E_FULL "the LMDB map is full ...") or KVF_OK. */
kvf_status kvf_lmdb_write(kvf_lmdb *d, kvf_lmdb_op *ops, int n, const int64_t *deltas,
                          bool *deltas_done);

typedef struct kvf_lmdb_info {
    int64_t  entries, bytes;
    int64_t  ctr[KVF_CTR_COUNT];
    uint64_t map_size, file_bytes, budget, used_bytes;
} kvf_lmdb_info;
kvf_status kvf_lmdb_info_get(kvf_lmdb *d, kvf_lmdb_info *out);

kvf_status kvf_lmdb_list(kvf_lmdb *d, kvf_store_visit_fn fn, void *user);
kvf_status kvf_lmdb_verify(kvf_lmdb *d, bool remove_bad, kvf_store_visit_fn fn, void *user,
                           kvf_store_verify_report *out);
kvf_status kvf_lmdb_gc(kvf_lmdb *d, uint64_t target, int64_t *evicted, uint64_t *freed);
kvf_status kvf_lmdb_remove(kvf_lmdb *d, const kvf_chunk_key *key);

/* Fill a kvf_store_entry from an entry's bytes (header_ok false when unreadable; *problem the
 * reason). */
void kvf_store_entry_from_bytes(const void *buf, size_t len, const uint8_t key[16],
                                kvf_store_entry *e, const char **problem);

/* ---- Redis tier --------------------------------------------------------------------------- */

typedef struct kvf_redis kvf_redis;

/* Parse the address and prepare a client (it connects on first use, and again after failures
 * with a back-off). KVF_E_INVAL for a malformed address. */
kvf_status kvf_redis_open(const char *addr, const char *prefix, int timeout_ms, kvf_redis **out);
void       kvf_redis_close(kvf_redis *r);
/* Say nothing about the connection going down and coming back (a second handle to the same
 * tier, whose user reports its own failures). */
void kvf_redis_set_quiet(kvf_redis *r, bool quiet);
/* A value read from Redis (the reply owns the bytes). */
typedef struct kvf_redis_value {
    void          *reply;
    const uint8_t *data;
    size_t         len;
} kvf_redis_value;
/* GET: KVF_OK with the value in *out (kvf_redis_value_free), KVF_E_NOTFOUND, or KVF_E_IO (server
 * down or erroring: the message says so). Thread-safe (one connection, locked). */
kvf_status kvf_redis_get(kvf_redis *r, const kvf_chunk_key *key, kvf_redis_value *out);
void       kvf_redis_value_free(kvf_redis_value *v);
/* SET of n values, pipelined; ttl_s > 0 sets an expiry. st[i] per value. */
kvf_status kvf_redis_set(kvf_redis *r, const kvf_chunk_key *const *keys, const uint8_t *const *vals,
                         const size_t *lens, int n, int ttl_s, kvf_status *st);
kvf_status kvf_redis_del(kvf_redis *r, const kvf_chunk_key *key, bool *existed);
/* Count keys with the prefix and their total value bytes (SCAN + STRLEN). */
kvf_status kvf_redis_count(kvf_redis *r, int64_t *entries, int64_t *bytes);
/* Cluster hash slot of a key (CRC16 of its hash tag, mod 16384), for tests. */
unsigned kvf_redis_slot(const char *key, size_t len);

#endif /* KVF_STORE_H */
