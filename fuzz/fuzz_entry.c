/* fuzz_entry.c - libFuzzer target for the store's entry decoder (src/store/chunk_io.c): the
 * bytes an LMDB value or a Redis string holds, which a damaged disk, a torn write or anyone
 * with write access to the Redis tier controls.
 *
 * Input: one mode byte, then the entry. Mode bit 0 set: before parsing, the checksums the format
 * carries (the layers' XXH3 in the layer table, the ids/table checksum, the header checksum)
 * are recomputed over the mutated bytes wherever the fields they cover lie inside the input,
 * so mutations of sizes, counts, offsets and codecs reach the validation behind the checksums
 * instead of stopping at the first mismatch. Bit 1: re-encode with zstd instead of raw.
 *
 * Checked: a failed parse leaves an empty view; a parsed view describes only bytes inside the
 * input (ids, layer table, every layer); ids and every layer can be read and checked; a layer
 * that decodes has exactly the K/V bytes of its shape. An entry of at most 64 MiB of K/V that
 * decodes completely is re-encoded and parsed again: same shape, ids, key, model and K/V bytes
 * (the stores check an entry's shape against the model before decoding it, so larger shapes
 * are only parsed and checked here). A broken promise aborts.
 *
 * Build and run through scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * fuzz-sources: store/chunk_io store/chunk common engine/kernels/kernels engine/kernels/kernels_ref engine/quant
 * fuzz-libs: -lzstd
 */
#include "store/chunk_io.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                             \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "fuzz_entry: broken invariant at line %d: %s\n", __LINE__, #c);    \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

#define MAX_DECODE ((size_t)64 << 20)

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void     wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* recompute every checksum whose covered bytes lie inside [p, p + n) */
static void fix_sums(uint8_t *p, size_t n) {
    if (n < KVF_ENTRY_HEADER) return;
    uint64_t nl = rd32(p + 56), nt = rd32(p + 68), po = rd32(p + 76);
    uint64_t table = KVF_ENTRY_HEADER + 4 * nt;
    if (po >= KVF_ENTRY_HEADER && po <= n && nl <= KVF_ENTRY_MAX_LAYERS && table + 32 * nl <= po) {
        for (uint64_t l = 0; l < nl; l++) {
            uint8_t *t = p + table + 32 * l;
            uint64_t off = rd64(t), sz = rd64(t + 8);
            if (off <= n - po && sz <= n - po - off) wr64(t + 16, XXH3_64bits(p + po + off, sz));
        }
        wr64(p + 104, XXH3_64bits(p + KVF_ENTRY_HEADER, po - KVF_ENTRY_HEADER));
    }
    wr64(p + 120, XXH3_64bits(p, 120));
}

static int inside(const uint8_t *q, uint64_t n, const uint8_t *buf, size_t len) {
    return q >= buf && q <= buf + len && n <= (uint64_t)(buf + len - q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    size_t  len  = size - 1;
    uint8_t *buf = malloc(len ? len : 1);
    REQUIRE(buf);
    memcpy(buf, data + 1, len);
    if (mode & 1) fix_sums(buf, len);

    kvf_entry_view v;
    if (kvf_entry_parse(buf, len, &v) != KVF_OK) {
        REQUIRE(v.layers == NULL);
        REQUIRE(kvf_errmsg()[0] != '\0');
        free(buf);
        return 0;
    }
    /* the view describes the input only */
    REQUIRE(v.base == buf && v.len == len);
    REQUIRE(v.n_layer >= 1 && v.n_tokens >= 1 && v.kvd >= 1 && v.kvd == v.n_head_kv * v.head_dim);
    REQUIRE(v.payload_offset >= KVF_ENTRY_HEADER + 4 * (size_t)v.n_tokens + KVF_ENTRY_LAYER_REC * (size_t)v.n_layer);
    REQUIRE(v.payload_offset + v.payload_bytes == len);
    REQUIRE(v.layer_raw == kvf_chunk_row_bytes(v.dtype, v.kvd) * 2 * (size_t)v.n_tokens);
    REQUIRE(v.kv_bytes == v.layer_raw * (size_t)v.n_layer);
    bool all_ok = true;
    for (int l = 0; l < v.n_layer; l++) {
        const kvf_entry_layer *L = &v.layers[l];
        REQUIRE(inside(kvf_entry_layer_ptr(&v, l), L->size, buf + v.payload_offset, v.payload_bytes));
        REQUIRE(L->codec == KVF_CODEC_RAW || L->codec == KVF_CODEC_ZSTD);
        REQUIRE(L->codec != KVF_CODEC_RAW || L->size == v.layer_raw);
        if (kvf_entry_check_layer(&v, l) != KVF_OK) all_ok = false;
    }
    REQUIRE((kvf_entry_check_all(&v) == KVF_OK) == all_ok);
    int32_t *ids = malloc(sizeof *ids * (size_t)v.n_tokens);
    REQUIRE(ids);
    kvf_entry_ids(&v, ids);

    if (v.kv_bytes <= MAX_DECODE) {
        uint8_t *layer = malloc(v.layer_raw);
        REQUIRE(layer);
        for (int l = 0; l < v.n_layer; l++)
            if (kvf_entry_decode_layer(&v, l, layer) != KVF_OK) all_ok = false;
        free(layer);
        kvf_chunk *c = NULL;
        kvf_status st = kvf_entry_to_chunk(&v, &c);
        REQUIRE((st == KVF_OK) == all_ok);
        if (st == KVF_OK) {
            REQUIRE(c->n_layer == v.n_layer && c->n_tokens == v.n_tokens && c->kvd == v.kvd &&
                    c->dtype == v.dtype && c->n_ctx == v.n_ctx && c->bytes == v.kv_bytes);
            REQUIRE(memcmp(c->ids, ids, sizeof *ids * (size_t)v.n_tokens) == 0);
            REQUIRE(memcmp(c->key.b, v.key.b, 16) == 0);
            /* encode again and read back: the same chunk */
            uint8_t *e2 = NULL;
            size_t   n2 = 0;
            int      z  = (mode & 2) ? KVF_STORE_COMPRESS_ZSTD : KVF_STORE_COMPRESS_NONE;
            REQUIRE(kvf_entry_encode(c, &v.key, v.model_id, v.n_head_kv, v.head_dim, z, 1, &e2, &n2) == KVF_OK);
            kvf_entry_view v2;
            REQUIRE(kvf_entry_parse(e2, n2, &v2) == KVF_OK);
            kvf_chunk *c2 = NULL;
            REQUIRE(kvf_entry_to_chunk(&v2, &c2) == KVF_OK);
            REQUIRE(v2.n_layer == v.n_layer && v2.n_tokens == v.n_tokens && v2.n_head_kv == v.n_head_kv &&
                    v2.head_dim == v.head_dim && v2.dtype == v.dtype && v2.n_ctx == v.n_ctx);
            REQUIRE(memcmp(v2.model_id, v.model_id, 16) == 0 && memcmp(v2.key.b, v.key.b, 16) == 0);
            REQUIRE(c2->bytes == c->bytes && memcmp(c2->data, c->data, c->bytes) == 0);
            REQUIRE(memcmp(c2->ids, c->ids, sizeof *ids * (size_t)v.n_tokens) == 0);
            kvf_chunk_release(c2);
            kvf_entry_view_free(&v2);
            kvf_free(e2);
            kvf_chunk_release(c);
        }
    }
    free(ids);
    kvf_entry_view_free(&v);
    free(buf);
    return 0;
}
