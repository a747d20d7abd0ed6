/* chunk.h - precomputed segment KV (kvf_chunk), content addresses, and the chunk-cache
 * interface that fusion reads through.
 *
 * A chunk holds, for every layer, the keys before RoPE and the values of its tokens as they
 * were computed in a prefill of (context ++ chunk), where the context is the system prefix or
 * nothing. Keys before RoPE make it position-independent: fusion applies RoPE at the chunk's
 * new positions. Layout of `data`: [n_layer][2][n_tokens][kvd] (K then V per layer) in f16 or
 * f32, kvd = n_head_kv * head_dim.
 *
 * A chunk is identified by a 128-bit content address (XXH3-128) of the model fingerprint, the
 * storage dtype, the format version, the context's token ids and the chunk's token ids, so the
 * same chunk has the same key in every process. The cache interface (kvf_chunk_cache_ops) is
 * implemented by the in-memory LRU cache here and by the tiered store.
 */
#ifndef KVF_CHUNK_H
#define KVF_CHUNK_H

#include "kernels.h"
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
    uint8_t        *data;     /* see above (owned, 64-byte aligned) */
    size_t          bytes;    /* of data */
};

/* New chunk with one reference and uninitialised data; NULL when out of memory. */
kvf_chunk *kvf_chunk_alloc(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer, int32_t kvd,
                           const int32_t *ids, int32_t n_ctx);
kvf_chunk *kvf_chunk_retain(kvf_chunk *c);
/* Rows [i0, i0+n) of K (kv = 0) or V (kv = 1) at layer l, to / from floats [n][kvd], with the
 * half-precision conversions of kernel table K (NULL: the reference). */
void kvf_chunk_read(const kvf_kernels *K, const kvf_chunk *c, int l, int kv, int32_t i0,
                    int32_t n, float *dst);
void kvf_chunk_write(const kvf_kernels *K, kvf_chunk *c, int l, int kv, int32_t i0, int32_t n,
                     const float *src);
size_t kvf_chunk_elem_size(kvf_chunk_dtype dt);

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
} kvf_chunk_cache_ops;

struct kvf_chunk_cache {
    const kvf_chunk_cache_ops *ops;
};

#endif /* KVF_CHUNK_H */
