/* fuzz_gguf.c - libFuzzer target for the GGUF reader (src/engine/gguf.c).
 *
 * Parses the input with gguf_parse(). On failure the result must be NULL with a message; on
 * success every key, value, string and tensor is read back through the public accessors and
 * checked against the reader's promises (everything inside the buffer, sizes consistent with
 * the type table, data aligned), and small tensors of computable types are dequantised.
 * A broken promise aborts, which libFuzzer reports as a crash.
 *
 * Build and run through scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * fuzz-sources: engine/gguf common engine/quant
 */
#include "engine/gguf.h"
#include "engine/quant.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                             \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "fuzz_gguf: broken invariant at line %d: %s\n", __LINE__, #c);     \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static volatile uint64_t g_sink;

/* [p, p + n) lies inside [buf, buf + len) */
static int inside(const void *p, uint64_t n, const uint8_t *buf, size_t len) {
    const uint8_t *q = p;
    return q >= buf && q <= buf + len && n <= (uint64_t)(buf + len - q);
}

static uint64_t touch(const void *p, uint64_t n) {
    const uint8_t *q = p;
    uint64_t       h = 0;
    for (uint64_t i = 0; i < n; i++) h = h * 31 + q[i];
    return h;
}

static size_t elem_size(uint32_t t) {
    switch (t) {
    case GGUF_T_UINT8:
    case GGUF_T_INT8:
    case GGUF_T_BOOL: return 1;
    case GGUF_T_UINT16:
    case GGUF_T_INT16: return 2;
    case GGUF_T_UINT32:
    case GGUF_T_INT32:
    case GGUF_T_FLOAT32: return 4;
    case GGUF_T_UINT64:
    case GGUF_T_INT64:
    case GGUF_T_FLOAT64: return 8;
    default: return 0;
    }
}

static void check_kv(const gguf_file *f, const gguf_kv *kv, const uint8_t *buf, size_t len) {
    uint64_t h = 0;
    REQUIRE(kv->key.n > 0 && inside(kv->key.s, kv->key.n, buf, len));
    REQUIRE(kv->type < GGUF_T_COUNT && kv->arr_type < GGUF_T_COUNT);
    REQUIRE(kv->arr_type != GGUF_T_ARRAY);
    REQUIRE(kv->offset < len);
    h += touch(kv->key.s, kv->key.n);
    if (kv->type != GGUF_T_ARRAY) REQUIRE(kv->n == 1 && kv->arr_type == kv->type);
    if (kv->arr_type == GGUF_T_STRING) {
        REQUIRE(kv->strs != NULL);
        for (uint64_t i = 0; i < kv->n; i++) {
            REQUIRE(kv->strs[i].n == 0 || inside(kv->strs[i].s, kv->strs[i].n, buf, len));
            h += touch(kv->strs[i].s, kv->strs[i].n);
        }
    } else {
        size_t es = elem_size(kv->arr_type);
        REQUIRE(es > 0 && kv->n <= len / es && inside(kv->data, kv->n * es, buf, len));
        h += touch(kv->data, kv->n * es);
    }

    /* the typed getters, by name (keys with a NUL inside cannot be looked up that way) */
    char key[300];
    if (kv->key.n >= sizeof key || memchr(kv->key.s, 0, kv->key.n)) return;
    memcpy(key, kv->key.s, kv->key.n);
    key[kv->key.n] = 0;
    REQUIRE(gguf_find_kv(f, key) == kv); /* duplicates are rejected, so the first is this one */
    uint32_t       u32;
    int64_t        i64;
    float          f32;
    int            b;
    gguf_str       s;
    const gguf_kv *a;
    kvf_status     st;
    st = gguf_get_u32(f, key, &u32);
    REQUIRE(st == KVF_OK || st == KVF_E_FORMAT);
    if (st == KVF_OK) h += u32;
    st = gguf_get_i64(f, key, &i64);
    REQUIRE(st == KVF_OK || st == KVF_E_FORMAT);
    if (st == KVF_OK) h += (uint64_t)i64;
    st = gguf_get_f32(f, key, &f32);
    REQUIRE((st == KVF_OK) == (kv->type == GGUF_T_FLOAT32 || kv->type == GGUF_T_FLOAT64));
    if (st == KVF_OK) h += (uint64_t)(f32 == f32);
    st = gguf_get_bool(f, key, &b);
    REQUIRE((st == KVF_OK) == (kv->type == GGUF_T_BOOL));
    if (st == KVF_OK) h += (uint64_t)b;
    st = gguf_get_str(f, key, &s);
    REQUIRE((st == KVF_OK) == (kv->type == GGUF_T_STRING));
    if (st == KVF_OK) h += touch(s.s, s.n);
    st = gguf_get_arr(f, key, kv->arr_type, &a);
    REQUIRE((st == KVF_OK) == (kv->type == GGUF_T_ARRAY));
    if (st == KVF_OK) {
        REQUIRE(a == kv);
        for (uint64_t i = 0; i < a->n; i++) {
            if (a->arr_type == GGUF_T_INT32 || a->arr_type == GGUF_T_UINT32)
                h += (uint64_t)gguf_arr_i32(a, i);
            else if (a->arr_type == GGUF_T_FLOAT32)
                h += (uint64_t)(gguf_arr_f32(a, i) == 0);
        }
    }
    g_sink += h;
}

static void check_tensor(const gguf_file *f, const gguf_tensor *t, const uint8_t *buf,
                         size_t len) {
    kvf_type_traits tt;
    REQUIRE(t->name.n > 0 && inside(t->name.s, t->name.n, buf, len));
    REQUIRE(t->n_dims >= 1 && t->n_dims <= 4);
    REQUIRE(kvf_type_get(t->type, &tt));
    uint64_t nel = 1;
    for (uint32_t d = 0; d < 4; d++) {
        REQUIRE(t->ne[d] >= 1);
        if (d >= t->n_dims) REQUIRE(t->ne[d] == 1);
        REQUIRE(!__builtin_mul_overflow(nel, (uint64_t)t->ne[d], &nel));
    }
    REQUIRE(t->ne[0] % tt.block == 0);
    REQUIRE(t->nbytes == nel / tt.block * tt.bytes);
    REQUIRE(t->offset % f->alignment == 0);
    REQUIRE(t->data == buf + f->data_offset + t->offset);
    REQUIRE(inside(t->data, t->nbytes, buf, len));
    REQUIRE((size_t)(t->data - buf) % f->alignment == 0);
    REQUIRE(t->info_offset < f->data_offset);
    g_sink += touch(t->name.s, t->name.n) + touch(t->data, t->nbytes);

    char name[300];
    if (t->name.n < sizeof name && !memchr(t->name.s, 0, t->name.n)) {
        memcpy(name, t->name.s, t->name.n);
        name[t->name.n] = 0;
        REQUIRE(gguf_find_tensor(f, name) == t);
    }
    /* decode small tensors of the types the engine computes with */
    if (kvf_quant_get(t->type) && nel <= (1u << 16)) {
        float *x = malloc((size_t)nel * sizeof *x);
        if (!x) return;
        kvf_dequantize(t->type, t->data, x, (int64_t)nel);
        uint64_t h = 0;
        for (uint64_t i = 0; i < nel; i++) h += x[i] != x[i];
        g_sink += h;
        free(x);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file *f  = (gguf_file *)&g_sink; /* must be overwritten */
    kvf_status st = gguf_parse(data, size, &f);
    if (st != KVF_OK) {
        REQUIRE(f == NULL);
        REQUIRE(st == KVF_E_FORMAT || st == KVF_E_NOMEM);
        REQUIRE(kvf_errmsg()[0] != 0);
        return 0;
    }
    REQUIRE(f != NULL && f->buf == data && f->len == size);
    REQUIRE(f->version == 2 || f->version == 3);
    REQUIRE(f->alignment != 0 && (f->alignment & (f->alignment - 1)) == 0);
    REQUIRE(f->data_offset % f->alignment == 0);
    REQUIRE(f->n_tensors == 0 || f->data_offset <= size);
    for (uint64_t i = 0; i < f->n_kv; i++) check_kv(f, &f->kv[i], data, size);
    for (uint64_t i = 0; i < f->n_tensors; i++) check_tensor(f, &f->tensors[i], data, size);
    gguf_close(f);
    return 0;
}
