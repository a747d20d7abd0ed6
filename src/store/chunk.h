/* chunk.h - precomputed segment KV (kvf_chunk), content addresses, and the chunk-cache
 * interface that fusion reads through.
 *
 * A chunk holds, for every layer, the keys before RoPE and the values of its tokens as they
 * were computed in a prefill of (context ++ chunk), where the context is the system prefix or
 * nothing. Keys before RoPE make it position-independent: fusion applies RoPE at the chunk's
 * new positions. Layout of `data`: [n_layer][2][n_tokens][kvd] (K then V per layer) in f16,
 * f32 or q8 (rows of kvf_chunk_row_bytes: per 32 values an f16 scale then 32 int8 codes),
 * kvd = n_head_kv * head_dim.
 *
 * `data` is either owned or borrowed (zero-copy from the chunk store's memory map): a borrowed
 * chunk has a `backing` that keeps the bytes valid until the last reference is released, and
 * may defer checking a layer's bytes until kvf_chunk_load_layer() is called for it.
 *
 * A chunk is identified by a 128-bit content address (XXH3-128) of the model fingerprint, the
 * storage dtype, the format version, the context's token ids and the chunk's token ids, so the
 * same chunk has the same key in every process. The cache interface (kvf_chunk_cache_ops) is
 * implemented by the in-memory LRU cache here and by the tiered store.
 */
#ifndef KVF_CHUNK_H
#define KVF_CHUNK_H

#include "engine/kernels/kernels.h"
#include "kvfuse.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define KVF_CHUNK_FORMAT_VERSION 1

typedef struct kvf_chunk_key {
    uint8_t b[16];
} kvf_chunk_key;

struct kvf_chunk {
    atomic_int      refs;
    kvf_chunk_dtype dtype;
    int32_t         n_tokens, n_layer, kvd;
    int32_t         n_ctx;    /* tokens of context it was computed after */
    int32_t        *ids;      /* [n_tokens] (owned) */
    kvf_chunk_key   key;
    uint8_t        *data;     /* see above (owned and 64-byte aligned, or borrowed) */
    size_t          bytes;    /* of data */
    struct kvf_chunk_backing *backing; /* NULL: data is owned; else what keeps it valid */
};

/* What a borrowed chunk's data lives in (implemented by the chunk store). */
typedef struct kvf_chunk_backing {
    /* Called once, when the chunk's last reference is dropped: frees the backing. */
    void (*release)(struct kvf_chunk_backing *b);
    /* Make layer l's bytes resident and check them (checksum); KVF_OK or KVF_E_CORRUPT (with
     * a message). Must be idempotent and thread-safe. NULL: every layer is always ready. */
    kvf_status (*load_layer)(struct kvf_chunk_backing *b, const struct kvf_chunk *c, int l);
    /* Start bringing layer l in (a hint: asynchronous, never fails). NULL: nothing to do. */
    void (*prefetch_layer)(struct kvf_chunk_backing *b, const struct kvf_chunk *c, int l);
} kvf_chunk_backing;

/* New chunk with one reference and uninitialised data; NULL when out of memory. `ids`
 * (borrowed, copied) holds n_tokens token ids, or is NULL (ids left unset). */
kvf_chunk *kvf_chunk_alloc(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer, int32_t kvd,
                           const int32_t *ids, int32_t n_ctx);
/* New chunk with one reference whose data (`bytes` of layout above, read-only) is borrowed from
 * `backing`; ids are copied. On success the chunk owns `backing` (released with the chunk); on
 * failure (NULL) the caller still does. */
kvf_chunk *kvf_chunk_new_borrowed(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer,
                                  int32_t kvd, const int32_t *ids, int32_t n_ctx,
                                  const uint8_t *data, kvf_chunk_backing *backing);
/* A new owned copy of c (layers read through kvf_chunk_load_layer); NULL when out of memory
 * or when a layer is corrupt (kvf_errmsg says which). */
kvf_chunk *kvf_chunk_clone(const kvf_chunk *c);
kvf_chunk *kvf_chunk_retain(kvf_chunk *c);
/* Rows [i0, i0+n) of K (kv = 0) or V (kv = 1) at layer l, to / from floats [n][kvd], with the
 * half-precision conversions of kernel table K (NULL: the reference). */
void kvf_chunk_read(const kvf_kernels *K, const kvf_chunk *c, int l, int kv, int32_t i0,
                    int32_t n, float *dst);
void kvf_chunk_write(const kvf_kernels *K, kvf_chunk *c, int l, int kv, int32_t i0, int32_t n,
                     const float *src);
size_t kvf_chunk_elem_size(kvf_chunk_dtype dt); /* f16 2, f32 4, q8 1 (see row_bytes) */
/* Bytes of one row of kvd values in dtype dt (q8: ceil(kvd / 32) blocks of 34 bytes); 0 for
 * an unknown dtype. */
size_t kvf_chunk_row_bytes(kvf_chunk_dtype dt, int32_t kvd);
bool   kvf_chunk_dtype_valid(int dt);
const char *kvf_chunk_dtype_name(kvf_chunk_dtype dt); /* "f16", "f32", "q8" */

/* Layers of a chunk (for pipelined loading): layer l is [K rows][V rows], layer_bytes long,
 * starting at kvf_chunk_layer_data(c, l). */
size_t         kvf_chunk_layer_bytes(const kvf_chunk *c);
const uint8_t *kvf_chunk_layer_data(const kvf_chunk *c, int l);
/* Ensure layer l may be read: KVF_OK at once for owned chunks; for borrowed ones the bytes are
 * brought in and their checksum verified (once). KVF_E_CORRUPT: the chunk must not be used. */
kvf_status kvf_chunk_load_layer(const kvf_chunk *c, int l);
/* Hint that layer l will be read soon (asynchronous read-ahead of borrowed data). */
void kvf_chunk_prefetch_layer(const kvf_chunk *c, int l);

/* Content address (see above). `fingerprint` identifies the model and its arithmetic. */
kvf_chunk_key kvf_chunk_key_make(const uint8_t fingerprint[16], kvf_chunk_dtype dtype,
                                 const int32_t *ctx, int32_t n_ctx, const int32_t *ids,
                                 int32_t n);
void kvf_chunk_key_hex(const kvf_chunk_key *k, char out[33]);

/* ---- cache interface ------------------------------------------------------------------- */

typedef struct kvf_chunk_cache_ops {
    /* A new reference to the chunk with this key, or NULL (miss). Thread-safe. */
    kvf_chunk *(*get)(kvf_chunk_cache *c, const kvf_chunk_key *key);
    /* Store `chunk` (the cache takes its own reference). */
    kvf_status (*put)(kvf_chunk_cache *c, const kvf_chunk_key *key, kvf_chunk *chunk);
    void (*free)(kvf_chunk_cache *c);
    /* Optional (NULL: use get). Like get, but the layers of the returned chunk may not be
     * resident or verified yet: the caller must see kvf_chunk_load_layer(ch, l) (or a
     * loader's wait, store.h) return KVF_OK before reading layer l, and on KVF_E_CORRUPT
     * release the chunk and call get() again (which then detects it, drops the entry and
     * misses). Lets fusion overlap loading layer l + 1 with computing layer l. */
    kvf_chunk *(*get_deferred)(kvf_chunk_cache *c, const kvf_chunk_key *key);
    /* Optional (NULL: nothing to do). A hint that these keys are about to be looked up: a
     * tier may start reading them (the store's disk tier issues read-ahead for all of their
     * entries at once, so the disk is kept busy while the first ones are checked). */
    void (*prefetch)(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n);
    /* Optional (NULL: plain LRU). KVFlow's steps-to-execution hint (store/steps.h): these keys
     * are needed again in `steps` agent steps (0: by the step running now; KVF_STEPS_NONE: no
     * longer known), says source `lane` (kvf_hint_lane; each source sets and clears only its
     * own, a key counts by the nearest). The memory tier evicts the entries needed furthest
     * away first (no hint counts as never), the least recently used among equals. Also for
     * keys not cached yet. */
    void (*hint)(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n, int lane, uint32_t steps);
    /* Optional (NULL: nothing to do). Bring these keys into the memory tier from the lower tiers
     * in the background (the store's writer thread reads them from disk or Redis); returns at
     * once. KVFlow's prefetch of the next steps' KV while the current step runs. */
    void (*warm)(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n);
} kvf_chunk_cache_ops;

struct kvf_chunk_cache {
    const kvf_chunk_cache_ops *ops;
};

#endif /* KVF_CHUNK_H */
