/* chunk_io.h - the stored form of a chunk (a store "entry"): serialise, parse, verify.
 *
 * An entry is one contiguous byte string, identical in LMDB and Redis, little-endian:
 *
 *   offset  size  field
 *   0       8     magic "KVFCHUNK"
 *   8       4     entry format version (KVF_ENTRY_VERSION)
 *   12      4     chunk format version (KVF_CHUNK_FORMAT_VERSION, part of the key)
 *   16      16    key (content address, chunk.h)
 *   32      16    model id (the model's cache id: fingerprint + precision)
 *   48      4     dtype (kvf_chunk_dtype)
 *   52      4     flags (bit 0: some layer is compressed)
 *   56      4     n_layer          60  4  n_head_kv        64  4  head_dim
 *   68      4     n_tokens         72  4  n_ctx (context tokens it was computed after)
 *   76      4     payload offset (from the entry start; = 48 mod 64, see below)
 *   80      8     payload bytes (stored)       88   8  K/V bytes (uncompressed)
 *   96      8     entry bytes (header to end)  104  8  XXH3-64 of bytes [128, payload offset)
 *   112     8     reserved (0)                 120  8  XXH3-64 of bytes [0, 120)
 *   128     4*n_tokens      token ids
 *   ...     32*n_layer      layer table: u64 offset (in the payload), u64 stored size,
 *                           u64 XXH3-64 of the stored bytes, u32 codec (0 raw, 1 zstd), u32 0
 *   ...     zero padding up to the payload offset
 *   payload per layer l: K rows [n_tokens][row] then V rows, raw or one zstd frame
 *
 * The payload offset is 48 mod 64 so that in an LMDB overflow page (value at page start + 16)
 * the payload is 64-byte aligned and can be used in place. Every field of an entry read back is
 * treated as hostile: sizes are bounded and overflow-checked, the layer table is copied and
 * validated (contiguous, inside the payload, raw layers exactly the layer size) before any
 * offset is used, and the payload checksum of a layer is checked before its bytes are used.
 */
#ifndef KVF_CHUNK_IO_H
#define KVF_CHUNK_IO_H

#include "store/chunk.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVF_ENTRY_MAGIC      "KVFCHUNK"
#define KVF_ENTRY_VERSION    1
#define KVF_ENTRY_HEADER     128
#define KVF_ENTRY_LAYER_REC  32
#define KVF_ENTRY_MAX_LAYERS 1024
#define KVF_ENTRY_MAX_TOKENS (1 << 24)
#define KVF_ENTRY_MAX_KVD    (1 << 20)

enum { KVF_CODEC_RAW = 0, KVF_CODEC_ZSTD = 1 };

typedef struct kvf_entry_layer {
    uint64_t off, size, sum; /* in the payload; stored bytes; XXH3-64 of them */
    uint32_t codec;
} kvf_entry_layer;

/* A parsed entry. base points into the caller's buffer (borrowed); layers is a validated
 * private copy of the layer table (owned: kvf_entry_view_free). */
typedef struct kvf_entry_view {
    const uint8_t   *base;
    size_t           len;
    kvf_chunk_key    key;
    uint8_t          model_id[16];
    kvf_chunk_dtype  dtype;
    int32_t          n_layer, n_head_kv, head_dim, kvd, n_tokens, n_ctx;
    size_t           payload_offset, payload_bytes, kv_bytes, layer_raw;
    bool             compressed;
    kvf_entry_layer *layers;
} kvf_entry_view;

/* Parse and check the header, the ids and the layer table (not the payload checksums).
 * KVF_E_CORRUPT with a message naming the bad field, or KVF_E_NOMEM. */
kvf_status kvf_entry_parse(const void *buf, size_t len, kvf_entry_view *v);
void       kvf_entry_view_free(kvf_entry_view *v);
/* Token ids (n_tokens) into out. */
void kvf_entry_ids(const kvf_entry_view *v, int32_t *out);
/* Stored bytes of layer l (raw K/V when its codec is raw). */
const uint8_t *kvf_entry_layer_ptr(const kvf_entry_view *v, int l);
/* Checksum of layer l's stored bytes: KVF_OK or KVF_E_CORRUPT. */
kvf_status kvf_entry_check_layer(const kvf_entry_view *v, int l);
/* Check layer l and write its raw K/V (layer_raw bytes) to dst (decompressing). */
kvf_status kvf_entry_decode_layer(const kvf_entry_view *v, int l, uint8_t *dst);
/* A new owned chunk with every layer checked and decoded. */
kvf_status kvf_entry_to_chunk(const kvf_entry_view *v, kvf_chunk **out);
/* Check every layer. */
kvf_status kvf_entry_check_all(const kvf_entry_view *v);

/* Serialise chunk c under key (owned, or borrowed with its layers loadable) of a model with these KV
 * heads / head dim. compress: KVF_STORE_COMPRESS_*; a layer that zstd does not shrink is kept
 * raw. *out is kvf_malloc'd (kvf_free). */
kvf_status kvf_entry_encode(const kvf_chunk *c, const kvf_chunk_key *key,
                            const uint8_t model_id[16], int32_t n_head_kv, int32_t head_dim,
                            int compress, int zstd_level, uint8_t **out, size_t *len);
/* Size of an uncompressed entry for these dimensions (0 on overflow). */
size_t kvf_entry_raw_size(kvf_chunk_dtype dt, int32_t n_layer, int32_t kvd, int32_t n_tokens);

#endif /* KVF_CHUNK_IO_H */
