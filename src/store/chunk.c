/* chunk.c - chunk objects (owned or borrowed data; f16, f32 and q8 rows), content addresses,
 * and freeing a chunk cache (the in-memory one is in chunk_lru.c). */
#include "store/chunk.h"
#include "common.h"
#include "engine/quant.h"

#include <math.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define Q8_BLOCK 32
#define Q8_BYTES 34 /* f16 scale + 32 int8 codes */

size_t kvf_chunk_elem_size(kvf_chunk_dtype dt) {
    return dt == KVF_CHUNK_F32 ? 4 : dt == KVF_CHUNK_Q8 ? 1 : 2;
}

bool kvf_chunk_dtype_valid(int dt) {
    return dt == KVF_CHUNK_F16 || dt == KVF_CHUNK_F32 || dt == KVF_CHUNK_Q8;
}

const char *kvf_chunk_dtype_name(kvf_chunk_dtype dt) {
    switch (dt) {
    case KVF_CHUNK_F16: return "f16";
    case KVF_CHUNK_F32: return "f32";
    case KVF_CHUNK_Q8: return "q8";
    }
    return "unknown";
}

size_t kvf_chunk_row_bytes(kvf_chunk_dtype dt, int32_t kvd) {
    if (kvd <= 0) return 0;
    switch (dt) {
    case KVF_CHUNK_F16: return (size_t)kvd * 2;
    case KVF_CHUNK_F32: return (size_t)kvd * 4;
    case KVF_CHUNK_Q8: return (size_t)((kvd + Q8_BLOCK - 1) / Q8_BLOCK) * Q8_BYTES;
    }
    return 0;
}

static kvf_chunk *chunk_new(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer, int32_t kvd,
                            const int32_t *ids, int32_t n_ctx) {
    if (n_tokens <= 0 || n_layer <= 0 || kvd <= 0 || !kvf_chunk_dtype_valid((int)dtype)) return NULL;
    kvf_chunk *c = kvf_calloc(1, sizeof *c);
    if (!c) return NULL;
    atomic_init(&c->refs, 1);
    c->dtype    = dtype;
    c->n_tokens = n_tokens;
    c->n_layer  = n_layer;
    c->kvd      = kvd;
    c->n_ctx    = n_ctx;
    c->bytes    = (size_t)n_layer * 2 * (size_t)n_tokens * kvf_chunk_row_bytes(dtype, kvd);
    c->ids      = kvf_malloc(sizeof(int32_t) * (size_t)n_tokens);
    if (!c->ids) {
        kvf_free(c);
        return NULL;
    }
    if (ids) memcpy(c->ids, ids, sizeof(int32_t) * (size_t)n_tokens);
    return c;
}

kvf_chunk *kvf_chunk_alloc(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer, int32_t kvd,
                           const int32_t *ids, int32_t n_ctx) {
    kvf_chunk *c = chunk_new(dtype, n_tokens, n_layer, kvd, ids, n_ctx);
    if (!c) return NULL;
    c->data = kvf_alloc_aligned(c->bytes);
    if (!c->data) {
        kvf_free(c->ids);
        kvf_free(c);
        return NULL;
    }
    return c;
}

kvf_chunk *kvf_chunk_new_borrowed(kvf_chunk_dtype dtype, int32_t n_tokens, int32_t n_layer,
                                  int32_t kvd, const int32_t *ids, int32_t n_ctx,
                                  const uint8_t *data, kvf_chunk_backing *backing) {
    if (!data || !backing || !backing->release) return NULL;
    kvf_chunk *c = chunk_new(dtype, n_tokens, n_layer, kvd, ids, n_ctx);
    if (!c) return NULL;
    c->data    = (uint8_t *)data; /* read-only: kvf_chunk_write refuses borrowed chunks */
    c->backing = backing;
    return c;
}

kvf_chunk *kvf_chunk_clone(const kvf_chunk *c) {
    kvf_chunk *d = kvf_chunk_alloc(c->dtype, c->n_tokens, c->n_layer, c->kvd, c->ids, c->n_ctx);
    if (!d) {
        kvf_set_error(KVF_E_NOMEM, "out of memory copying a chunk of %d tokens", c->n_tokens);
        return NULL;
    }
    d->key          = c->key;
    size_t lb       = kvf_chunk_layer_bytes(c);
    for (int l = 0; l < c->n_layer; l++) {
        if (kvf_chunk_load_layer(c, l) != KVF_OK) {
            kvf_chunk_release(d);
            return NULL;
        }
        memcpy(d->data + (size_t)l * lb, kvf_chunk_layer_data(c, l), lb);
    }
    return d;
}

kvf_chunk *kvf_chunk_retain(kvf_chunk *c) {
    if (c) atomic_fetch_add(&c->refs, 1);
    return c;
}

void kvf_chunk_release(kvf_chunk *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    kvf_free(c->ids);
    if (c->backing)
        c->backing->release(c->backing);
    else
        kvf_free_aligned(c->data);
    kvf_free(c);
}

int32_t kvf_chunk_n_tokens(const kvf_chunk *c) {
    return c->n_tokens;
}

size_t kvf_chunk_bytes(const kvf_chunk *c) {
    return c->bytes;
}

size_t kvf_chunk_layer_bytes(const kvf_chunk *c) {
    return 2 * (size_t)c->n_tokens * kvf_chunk_row_bytes(c->dtype, c->kvd);
}

const uint8_t *kvf_chunk_layer_data(const kvf_chunk *c, int l) {
    KVF_ASSERT(l >= 0 && l < c->n_layer);
    return c->data + (size_t)l * kvf_chunk_layer_bytes(c);
}

kvf_status kvf_chunk_load_layer(const kvf_chunk *c, int l) {
    if (l < 0 || l >= c->n_layer)
        return kvf_set_error(KVF_E_INVAL, "layer %d of a chunk with %d layers", l, c->n_layer);
    if (!c->backing || !c->backing->load_layer) return KVF_OK;
    return c->backing->load_layer(c->backing, c, l);
}

void kvf_chunk_prefetch_layer(const kvf_chunk *c, int l) {
    if (l < 0 || l >= c->n_layer || !c->backing || !c->backing->prefetch_layer) return;
    c->backing->prefetch_layer(c->backing, c, l);
}

static uint8_t *chunk_at(const kvf_chunk *c, int l, int kv, int32_t i) {
    size_t row = ((size_t)l * 2 + (size_t)kv) * (size_t)c->n_tokens + (size_t)i;
    return c->data + row * kvf_chunk_row_bytes(c->dtype, c->kvd);
}

/* q8 rows: per block of 32 values d = max|x| / 127 rounded to f16, codes round(x / d) */
static void q8_read_rows(const uint8_t *p, int32_t n, int32_t kvd, float *dst) {
    size_t rb = kvf_chunk_row_bytes(KVF_CHUNK_Q8, kvd);
    for (int32_t r = 0; r < n; r++, p += rb, dst += kvd) {
        for (int32_t b0 = 0; b0 < kvd; b0 += Q8_BLOCK) {
            const uint8_t *blk = p + (size_t)(b0 / Q8_BLOCK) * Q8_BYTES;
            uint16_t       h;
            memcpy(&h, blk, 2);
            float         d  = kvf_fp16_to_fp32(h);
            const int8_t *q  = (const int8_t *)(blk + 2);
            int32_t       ne = KVF_MIN(Q8_BLOCK, kvd - b0);
            for (int32_t i = 0; i < ne; i++) dst[b0 + i] = d * (float)q[i];
        }
    }
}

static void q8_write_rows(uint8_t *p, int32_t n, int32_t kvd, const float *src) {
    size_t rb = kvf_chunk_row_bytes(KVF_CHUNK_Q8, kvd);
    for (int32_t r = 0; r < n; r++, p += rb, src += kvd) {
        for (int32_t b0 = 0; b0 < kvd; b0 += Q8_BLOCK) {
            uint8_t *blk = p + (size_t)(b0 / Q8_BLOCK) * Q8_BYTES;
            int32_t  ne  = KVF_MIN(Q8_BLOCK, kvd - b0);
            float    amax = 0.0f;
            for (int32_t i = 0; i < ne; i++) amax = fmaxf(amax, fabsf(src[b0 + i]));
            uint16_t h = kvf_fp32_to_fp16(amax / 127.0f);
            float    d = kvf_fp16_to_fp32(h);
            if (!(d > 0.0f) || !isfinite(d)) h = 0, d = 0.0f; /* all zero (or non-finite input) */
            float   id = d > 0.0f ? 1.0f / d : 0.0f;
            int8_t *q  = (int8_t *)(blk + 2);
            memcpy(blk, &h, 2);
            for (int32_t i = 0; i < Q8_BLOCK; i++) {
                float v = i < ne ? nearbyintf(src[b0 + i] * id) : 0.0f;
                q[i]    = (int8_t)(v > 127.0f ? 127 : v < -127.0f ? -127 : (int)v);
            }
        }
    }
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
    if (c->dtype == KVF_CHUNK_Q8) {
        q8_read_rows(p, n, c->kvd, dst);
        return;
    }
    (K ? K : &kvf_kernels_ref)->f16_to_f32((const uint16_t *)p, dst, (int64_t)m);
}

void kvf_chunk_write(const kvf_kernels *K, kvf_chunk *c, int l, int kv, int32_t i0, int32_t n,
                     const float *src) {
    KVF_ASSERT(l >= 0 && l < c->n_layer && i0 >= 0 && i0 + n <= c->n_tokens && !c->backing);
    uint8_t *p = chunk_at(c, l, kv, i0);
    size_t   m = (size_t)n * (size_t)c->kvd;
    if (c->dtype == KVF_CHUNK_F32) {
        memcpy(p, src, m * 4);
        return;
    }
    if (c->dtype == KVF_CHUNK_Q8) {
        q8_write_rows(p, n, c->kvd, src);
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

void kvf_chunk_cache_free(kvf_chunk_cache *c) {
    if (c) c->ops->free(c);
}
