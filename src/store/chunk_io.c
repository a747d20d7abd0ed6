/* chunk_io.c - serialising, parsing and verifying store entries (format in chunk_io.h). */
#include "store/chunk_io.h"
#include "common.h"

#include <string.h>
#include <zstd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

_Static_assert(sizeof(KVF_ENTRY_MAGIC) - 1 == 8, "entry magic is 8 bytes");

/* little-endian field access (the format is LE on every host) */
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#    error "chunk_io.c: the entry payload is stored in host order, which must be little-endian"
#endif

/* offset of the payload: after header, ids and layer table, rounded up to 48 mod 64 */
static int payload_offset_for(int64_t n_tokens, int64_t n_layer, size_t *out) {
    size_t end = KVF_ENTRY_HEADER + 4 * (size_t)n_tokens + KVF_ENTRY_LAYER_REC * (size_t)n_layer;
    size_t off = (end + 16 + 63) / 64 * 64 - 16;
    *out       = off;
    return 0;
}

size_t kvf_entry_raw_size(kvf_chunk_dtype dt, int32_t n_layer, int32_t kvd, int32_t n_tokens) {
    size_t rb = kvf_chunk_row_bytes(dt, kvd), lr, kv, po, tot;
    if (!rb || n_layer <= 0 || n_tokens <= 0) return 0;
    if (kvf_mul_size(rb, 2 * (size_t)n_tokens, &lr) || kvf_mul_size(lr, (size_t)n_layer, &kv))
        return 0;
    payload_offset_for(n_tokens, n_layer, &po);
    if (kvf_add_size(po, kv, &tot)) return 0;
    return tot;
}

#define BAD(...) kvf_set_error(KVF_E_CORRUPT, "store entry: " __VA_ARGS__)

kvf_status kvf_entry_parse(const void *buf, size_t len, kvf_entry_view *v) {
    memset(v, 0, sizeof *v);
    const uint8_t *p = buf;
    if (!p || len < KVF_ENTRY_HEADER)
        return BAD("%zu bytes is shorter than the %d-byte header", len, KVF_ENTRY_HEADER);
    if (memcmp(p, KVF_ENTRY_MAGIC, 8) != 0) return BAD("bad magic (not a kvfuse chunk entry)");
    if (XXH3_64bits(p, 120) != rd64(p + 120)) return BAD("header checksum mismatch");
    uint32_t ev = rd32(p + 8), cv = rd32(p + 12);
    if (ev != KVF_ENTRY_VERSION) return BAD("entry format version %u (this build reads %d)", ev, KVF_ENTRY_VERSION);
    if (cv != KVF_CHUNK_FORMAT_VERSION) return BAD("chunk format version %u (this build uses %d)", cv, KVF_CHUNK_FORMAT_VERSION);
    uint32_t dt = rd32(p + 48), flags = rd32(p + 52);
    uint32_t nl = rd32(p + 56), nh = rd32(p + 60), hd = rd32(p + 64), nt = rd32(p + 68),
             nc = rd32(p + 72), po = rd32(p + 76);
    uint64_t pb = rd64(p + 80), kvb = rd64(p + 88), tot = rd64(p + 96);
    if (!kvf_chunk_dtype_valid((int)dt)) return BAD("unknown dtype %u", dt);
    if (flags & ~1u) return BAD("unknown flags 0x%x", flags);
    if (nl < 1 || nl > KVF_ENTRY_MAX_LAYERS) return BAD("n_layer %u out of range", nl);
    if (nh < 1 || hd < 1 || nh > KVF_ENTRY_MAX_KVD || hd > KVF_ENTRY_MAX_KVD ||
        (uint64_t)nh * hd > KVF_ENTRY_MAX_KVD)
        return BAD("KV heads %u x head dim %u out of range", nh, hd);
    if (nt < 1 || nt > KVF_ENTRY_MAX_TOKENS) return BAD("n_tokens %u out of range", nt);
    if (nc > KVF_ENTRY_MAX_TOKENS) return BAD("n_ctx %u out of range", nc);
    if (rd64(p + 112) != 0) return BAD("reserved header field is not zero");
    size_t want_po, lr, kv;
    payload_offset_for(nt, nl, &want_po);
    if (po != want_po) return BAD("payload offset %u (expected %zu)", po, want_po);
    int32_t kvd = (int32_t)(nh * hd);
    if (kvf_mul_size(kvf_chunk_row_bytes((kvf_chunk_dtype)dt, kvd), 2 * (size_t)nt, &lr) ||
        kvf_mul_size(lr, nl, &kv))
        return BAD("K/V size overflows");
    if (kvb != kv) return BAD("K/V bytes %llu (expected %zu)", (unsigned long long)kvb, kv);
    if (tot != len) return BAD("entry is %zu bytes, header says %llu (truncated or padded)", len, (unsigned long long)tot);
    if (pb > len || len - pb != po) return BAD("payload of %llu bytes does not end the entry", (unsigned long long)pb);
    if (XXH3_64bits(p + KVF_ENTRY_HEADER, po - KVF_ENTRY_HEADER) != rd64(p + 104))
        return BAD("ids / layer table checksum mismatch");
    v->layers = kvf_malloc(sizeof(kvf_entry_layer) * nl);
    if (!v->layers) return kvf_set_error(KVF_E_NOMEM, "out of memory reading a store entry");
    const uint8_t *t   = p + KVF_ENTRY_HEADER + 4 * (size_t)nt;
    uint64_t       end = 0;
    bool           any = false;
    for (uint32_t l = 0; l < nl; l++, t += KVF_ENTRY_LAYER_REC) {
        kvf_entry_layer *L = &v->layers[l];
        L->off = rd64(t), L->size = rd64(t + 8), L->sum = rd64(t + 16), L->codec = rd32(t + 24);
        kvf_status st = KVF_OK;
        if (rd32(t + 28) != 0) st = BAD("layer %u: reserved field is not zero", l);
        else if (L->codec > KVF_CODEC_ZSTD) st = BAD("layer %u: unknown codec %u", l, L->codec);
        else if (L->off != end) st = BAD("layer %u: offset %llu is not contiguous", l, (unsigned long long)L->off);
        else if (L->size > pb - L->off) st = BAD("layer %u: %llu bytes past the payload end", l, (unsigned long long)L->size);
        else if (L->codec == KVF_CODEC_RAW && L->size != lr) st = BAD("layer %u: raw size %llu (expected %zu)", l, (unsigned long long)L->size, lr);
        else if (L->codec == KVF_CODEC_ZSTD && L->size == 0) st = BAD("layer %u: empty zstd frame", l);
        if (st != KVF_OK) {
            kvf_entry_view_free(v);
            return st;
        }
        any |= L->codec != KVF_CODEC_RAW;
        end = L->off + L->size;
    }
    if (end != pb) {
        kvf_entry_view_free(v);
        return BAD("layers end at %llu, payload is %llu bytes", (unsigned long long)end, (unsigned long long)pb);
    }
    if (any != (bool)(flags & 1)) {
        kvf_entry_view_free(v);
        return BAD("compression flag disagrees with the layer table");
    }
    memcpy(v->key.b, p + 16, 16);
    memcpy(v->model_id, p + 32, 16);
    v->base = p, v->len = len, v->dtype = (kvf_chunk_dtype)dt;
    v->n_layer = (int32_t)nl, v->n_head_kv = (int32_t)nh, v->head_dim = (int32_t)hd, v->kvd = kvd;
    v->n_tokens = (int32_t)nt, v->n_ctx = (int32_t)nc;
    v->payload_offset = po, v->payload_bytes = pb, v->kv_bytes = kv, v->layer_raw = lr;
    v->compressed     = any;
    return KVF_OK;
}

void kvf_entry_view_free(kvf_entry_view *v) {
    kvf_free(v->layers);
    v->layers = NULL;
}

void kvf_entry_ids(const kvf_entry_view *v, int32_t *out) {
    const uint8_t *p = v->base + KVF_ENTRY_HEADER;
    for (int32_t i = 0; i < v->n_tokens; i++) out[i] = (int32_t)rd32(p + 4 * (size_t)i);
}

const uint8_t *kvf_entry_layer_ptr(const kvf_entry_view *v, int l) {
    return v->base + v->payload_offset + v->layers[l].off;
}

kvf_status kvf_entry_check_layer(const kvf_entry_view *v, int l) {
    if (l < 0 || l >= v->n_layer) return kvf_set_error(KVF_E_INVAL, "layer %d out of range", l);
    const kvf_entry_layer *L = &v->layers[l];
    if (XXH3_64bits(kvf_entry_layer_ptr(v, l), L->size) != L->sum)
        return BAD("layer %d checksum mismatch", l);
    return KVF_OK;
}

kvf_status kvf_entry_check_all(const kvf_entry_view *v) {
    for (int l = 0; l < v->n_layer; l++) {
        kvf_status st = kvf_entry_check_layer(v, l);
        if (st != KVF_OK) return st;
    }
    return KVF_OK;
}

kvf_status kvf_entry_decode_layer(const kvf_entry_view *v, int l, uint8_t *dst) {
    kvf_status st = kvf_entry_check_layer(v, l);
    if (st != KVF_OK) return st;
    const kvf_entry_layer *L   = &v->layers[l];
    const uint8_t         *src = kvf_entry_layer_ptr(v, l);
    if (L->codec == KVF_CODEC_RAW) {
        memcpy(dst, src, v->layer_raw);
        return KVF_OK;
    }
    size_t n = ZSTD_decompress(dst, v->layer_raw, src, L->size);
    if (ZSTD_isError(n)) return BAD("layer %d: zstd: %s", l, ZSTD_getErrorName(n));
    if (n != v->layer_raw) return BAD("layer %d: zstd frame holds %zu bytes, expected %zu", l, n, v->layer_raw);
    return KVF_OK;
}

kvf_status kvf_entry_to_chunk(const kvf_entry_view *v, kvf_chunk **out) {
    *out         = NULL;
    kvf_chunk *c = kvf_chunk_alloc(v->dtype, v->n_tokens, v->n_layer, v->kvd, NULL, v->n_ctx);
    if (!c) return kvf_set_error(KVF_E_NOMEM, "out of memory for a chunk of %d tokens", v->n_tokens);
    kvf_entry_ids(v, c->ids);
    c->key = v->key;
    for (int l = 0; l < v->n_layer; l++) {
        kvf_status st = kvf_entry_decode_layer(v, l, c->data + (size_t)l * v->layer_raw);
        if (st != KVF_OK) {
            kvf_chunk_release(c);
            return st;
        }
    }
    *out = c;
    return KVF_OK;
}

kvf_status kvf_entry_encode(const kvf_chunk *c, const kvf_chunk_key *key,
                            const uint8_t model_id[16], int32_t n_head_kv, int32_t head_dim,
                            int compress, int zstd_level, uint8_t **out, size_t *len) {
    *out = NULL, *len = 0;
    if (n_head_kv <= 0 || head_dim <= 0 || (int64_t)n_head_kv * head_dim != c->kvd)
        return kvf_set_error(KVF_E_INVAL, "chunk KV width %d is not %d heads x %d", c->kvd, n_head_kv, head_dim);
    if (c->n_layer > KVF_ENTRY_MAX_LAYERS || c->n_tokens > KVF_ENTRY_MAX_TOKENS || c->n_ctx < 0 ||
        c->n_ctx > KVF_ENTRY_MAX_TOKENS || c->kvd > KVF_ENTRY_MAX_KVD)
        return kvf_set_error(KVF_E_INVAL, "chunk is too large to store");
    size_t raw_total = kvf_entry_raw_size(c->dtype, c->n_layer, c->kvd, c->n_tokens);
    if (!raw_total) return kvf_set_error(KVF_E_INVAL, "chunk size overflows");
    size_t lr = kvf_chunk_layer_bytes(c), po;
    payload_offset_for(c->n_tokens, c->n_layer, &po);
    /* compressed layers first go to a scratch buffer; raw layers are copied directly */
    uint8_t         *zbuf = NULL;
    size_t           zcap = 0;
    kvf_entry_layer *L    = kvf_calloc((size_t)c->n_layer, sizeof *L);
    uint8_t        **zl   = kvf_calloc((size_t)c->n_layer, sizeof *zl);
    if (!L || !zl) {
        kvf_free(L), kvf_free(zl);
        return kvf_set_error(KVF_E_NOMEM, "out of memory encoding a chunk");
    }
    kvf_status st = KVF_OK;
    uint64_t   pb = 0;
    if (compress == KVF_STORE_COMPRESS_ZSTD) {
        zcap = ZSTD_compressBound(lr);
        zbuf = kvf_malloc(zcap);
        if (!zbuf) st = kvf_set_error(KVF_E_NOMEM, "out of memory encoding a chunk");
    } else if (compress != KVF_STORE_COMPRESS_NONE) {
        st = kvf_set_error(KVF_E_INVAL, "unknown compression %d", compress);
    }
    for (int l = 0; st == KVF_OK && l < c->n_layer; l++) {
        if ((st = kvf_chunk_load_layer(c, l)) != KVF_OK) break;
        const uint8_t *src = kvf_chunk_layer_data(c, l);
        L[l].off = pb, L[l].codec = KVF_CODEC_RAW, L[l].size = lr;
        if (zbuf) {
            size_t n = ZSTD_compress(zbuf, zcap, src, lr, zstd_level ? zstd_level : 3);
            if (ZSTD_isError(n)) {
                st = kvf_set_error(KVF_E_IO, "zstd: %s", ZSTD_getErrorName(n));
                break;
            }
            if (n < lr) {
                if (!(zl[l] = kvf_malloc(n))) {
                    st = kvf_set_error(KVF_E_NOMEM, "out of memory encoding a chunk");
                    break;
                }
                memcpy(zl[l], zbuf, n);
                L[l].codec = KVF_CODEC_ZSTD, L[l].size = n;
            }
        }
        L[l].sum = XXH3_64bits(zl[l] ? zl[l] : src, L[l].size);
        pb += L[l].size;
    }
    uint8_t *e     = NULL;
    size_t   total = po + pb;
    if (st == KVF_OK && !(e = kvf_malloc(total)))
        st = kvf_set_error(KVF_E_NOMEM, "out of memory encoding a chunk of %zu bytes", total);
    if (st == KVF_OK) {
        memset(e, 0, po);
        bool any = false;
        memcpy(e, KVF_ENTRY_MAGIC, 8);
        wr32(e + 8, KVF_ENTRY_VERSION);
        wr32(e + 12, KVF_CHUNK_FORMAT_VERSION);
        memcpy(e + 16, key->b, 16);
        memcpy(e + 32, model_id, 16);
        wr32(e + 48, (uint32_t)c->dtype);
        wr32(e + 56, (uint32_t)c->n_layer);
        wr32(e + 60, (uint32_t)n_head_kv);
        wr32(e + 64, (uint32_t)head_dim);
        wr32(e + 68, (uint32_t)c->n_tokens);
        wr32(e + 72, (uint32_t)c->n_ctx);
        wr32(e + 76, (uint32_t)po);
        wr64(e + 80, pb);
        wr64(e + 88, (uint64_t)lr * (uint64_t)c->n_layer);
        wr64(e + 96, total);
        uint8_t *q = e + KVF_ENTRY_HEADER;
        for (int32_t i = 0; i < c->n_tokens; i++, q += 4) wr32(q, (uint32_t)c->ids[i]);
        for (int l = 0; l < c->n_layer; l++, q += KVF_ENTRY_LAYER_REC) {
            wr64(q, L[l].off), wr64(q + 8, L[l].size), wr64(q + 16, L[l].sum);
            wr32(q + 24, L[l].codec);
            any |= L[l].codec != KVF_CODEC_RAW;
            memcpy(e + po + L[l].off, zl[l] ? zl[l] : kvf_chunk_layer_data(c, l), L[l].size);
        }
        wr32(e + 52, any ? 1u : 0u);
        wr64(e + 104, XXH3_64bits(e + KVF_ENTRY_HEADER, po - KVF_ENTRY_HEADER));
        wr64(e + 120, XXH3_64bits(e, 120));
        *out = e, *len = total;
    }
    for (int l = 0; l < c->n_layer; l++) kvf_free(zl[l]);
    kvf_free(zl), kvf_free(L), kvf_free(zbuf);
    return st;
}
