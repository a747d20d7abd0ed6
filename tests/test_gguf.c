/* test_gguf.c - unit tests of the GGUF reader (src/engine/gguf.c) and of the synthetic-model
 * generator (tests/synth.h).
 *
 * - round trips: every scalar and array value type through the typed getters, tensors of every
 *   known type (dims, type, size, offset, data pointer, alignment), custom general.alignment;
 * - synthetic models: keys, tokenizer layout, tensor shapes, determinism, every weight type,
 *   rejected configurations, and a naive forward pass giving finite, non-degenerate logits;
 * - hostile input: truncation at every length, thousands of seeded random corruptions, each
 *   malformed field on its own (the message must name it), allocation failures;
 * - gguf_open on missing, non-regular, empty, truncated and valid files.
 * Every parse works on an exact-length heap copy, so an ASan build catches any over-read.
 */
#include "harness.h"
#include "synth.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers --------------------------------------------------------------------------- */

/* A parse of an exact-length heap copy of src[0..len). */
typedef struct {
    uint8_t   *buf;
    size_t     len;
    gguf_file *f;
    kvf_status st;
    char       msg[1024];
} parsed;

static parsed parse_copy(const uint8_t *src, size_t len) {
    parsed p;
    memset(&p, 0, sizeof p);
    p.buf = malloc(len ? len : 1);
    if (len) memcpy(p.buf, src, len);
    p.len = len;
    p.st  = gguf_parse(p.buf, len, &p.f);
    snprintf(p.msg, sizeof p.msg, "%s", kvf_errmsg());
    return p;
}

static void parsed_free(parsed *p) {
    gguf_close(p->f);
    free(p->buf);
    p->f   = NULL;
    p->buf = NULL;
}

/* Parsing must fail with KVF_E_FORMAT, *out NULL, and a message containing both needles. */
#define EXPECT_FAIL(buf, len, n1, n2)                                                          \
    do {                                                                                       \
        parsed p_ = parse_copy((buf), (len));                                                  \
        CHECK_EQ(p_.st, KVF_E_FORMAT);                                                         \
        CHECK(p_.f == NULL);                                                                   \
        CHECK_CONTAINS(p_.msg, (n1));                                                          \
        if ((n2) != NULL) CHECK_CONTAINS(p_.msg, (const char *)(n2));                          \
        parsed_free(&p_);                                                                      \
    } while (0)

static int str_is(gguf_str s, const char *z, size_t n) {
    return s.n == n && (n == 0 || memcmp(s.s, z, n) == 0);
}

/* Everything a successful parse hands out must lie inside the buffer. Returns 0 if so. */
static int validate_parse(const gguf_file *f, const uint8_t *buf, size_t len) {
    const uint8_t *end = buf + len;
#define IN(p, n) ((const uint8_t *)(p) >= buf && (uint64_t)(n) <= (uint64_t)(end - (const uint8_t *)(p)))
    if (f->data_offset > len && f->n_tensors > 0) return 1;
    if (f->alignment == 0 || (f->alignment & (f->alignment - 1)) != 0) return 2;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (!IN(kv->key.s, kv->key.n) || kv->key.n == 0) return 3;
        if (kv->type >= GGUF_T_COUNT || kv->arr_type >= GGUF_T_COUNT ||
            kv->arr_type == GGUF_T_ARRAY)
            return 4;
        if (kv->arr_type == GGUF_T_STRING) {
            if (!kv->strs) return 5;
            for (uint64_t j = 0; j < kv->n; j++)
                if (kv->strs[j].n && !IN(kv->strs[j].s, kv->strs[j].n)) return 6;
        } else {
            size_t es = sg_type_size(kv->arr_type);
            if (es == 0 || !kv->data || !IN(kv->data, kv->n * es)) return 7;
        }
        if (kv->type != GGUF_T_ARRAY && (kv->n != 1 || kv->type != kv->arr_type)) return 8;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        kvf_type_traits    tt;
        if (!IN(t->name.s, t->name.n) || t->name.n == 0) return 9;
        if (!kvf_type_get(t->type, &tt)) return 10;
        if (t->n_dims < 1 || t->n_dims > 4) return 11;
        uint64_t nel = 1;
        for (int d = 0; d < 4; d++) {
            if (t->ne[d] < 1) return 12;
            if ((uint32_t)d >= t->n_dims && t->ne[d] != 1) return 13;
            if (__builtin_mul_overflow(nel, (uint64_t)t->ne[d], &nel)) return 14;
        }
        if (t->ne[0] % tt.block != 0 || t->nbytes != nel / tt.block * tt.bytes) return 15;
        if (!IN(t->data, t->nbytes)) return 16;
        if ((size_t)(t->data - buf) != f->data_offset + t->offset) return 17;
        if ((size_t)(t->data - buf) % f->alignment != 0) return 18;
    }
#undef IN
    return 0;
}

/* A small valid file with a few kvs and two tensors, for the malformed-field tests. */
static sg_writer *base_writer(void) {
    sg_writer *w = sg_new();
    sg_add_str(w, "general.architecture", "llama");
    sg_add_u32(w, "a.u32", 7);
    sg_add_str(w, "a.str", "hello");
    uint32_t u[3] = {1, 2, 3};
    sg_add_arr(w, "a.arr", GGUF_T_UINT32, u, 3);
    const char *s[3] = {"x", "yy", "zzz"};
    sg_add_arr_str(w, "a.strs", s, 3);
    int64_t ne0[2] = {8, 2}, ne1[2] = {32, 2};
    float   x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)i * 0.25f - 4.0f;
    sg_add_tensor_f32(w, "t.f32", 2, ne0, KVF_TYPE_F32, x);
    sg_add_tensor_f32(w, "t.q40", 2, ne1, KVF_TYPE_Q4_0, x);
    return w;
}

/* The tiny model used by the truncation and corruption tests (~12 KB). */
static synth_cfg tiny_cfg(void) {
    synth_cfg c;
    memset(&c, 0, sizeof c);
    c.n_layer   = 1;
    c.n_embd    = 32;
    c.n_head    = 2;
    c.n_head_kv = 1;
    c.n_ff      = 32;
    c.n_merges  = 8;
    c.wtype     = KVF_TYPE_Q4_0;
    c.etype     = KVF_TYPE_Q8_0;
    c.seed      = 7;
    return c;
}

/* ---- round trips ----------------------------------------------------------------------- */

static void test_roundtrip_values(void) {
    sg_writer *w = sg_new();
    sg_add_u8(w, "v.u8", 200);
    sg_add_i8(w, "v.i8", -100);
    sg_add_u16(w, "v.u16", 65000);
    sg_add_i16(w, "v.i16", -32000);
    sg_add_u32(w, "v.u32", 4000000000u);
    sg_add_i32(w, "v.i32", -2000000000);
    sg_add_f32(w, "v.f32", -1.5f);
    sg_add_bool(w, "v.bool", 1);
    sg_add_bool(w, "v.bool0", 0);
    sg_add_str(w, "v.str", "h\xc3\xa9llo w\xc3\xb6rld");
    sg_add_str(w, "v.empty", "");
    sg_add_strn(w, "v.nul", "a\0b", 3);
    sg_add_u64(w, "v.u64", 0x8000000000000005ull);
    sg_add_u64(w, "v.u64small", 123);
    sg_add_i64(w, "v.i64", INT64_MIN + 1);
    sg_add_f64(w, "v.f64", 1.0 / 3.0);
    uint8_t  au8[3]  = {0, 255, 7};
    int8_t   ai8[2]  = {-128, 127};
    uint16_t au16[2] = {0, 65535};
    int16_t  ai16[2] = {-32768, 32767};
    uint32_t au32[2] = {0, 4294967295u};
    int32_t  ai32[4] = {-5, 0, 2147483647, INT32_MIN};
    float    af32[3] = {1.5f, -2.25f, 1e-30f};
    uint8_t  abool[3] = {1, 0, 1};
    uint64_t au64[2]  = {0, UINT64_MAX};
    int64_t  ai64[2]  = {INT64_MIN, INT64_MAX};
    double   af64[2]  = {-0.0, 6.02214076e23};
    sg_add_arr(w, "a.u8", GGUF_T_UINT8, au8, 3);
    sg_add_arr(w, "a.i8", GGUF_T_INT8, ai8, 2);
    sg_add_arr(w, "a.u16", GGUF_T_UINT16, au16, 2);
    sg_add_arr(w, "a.i16", GGUF_T_INT16, ai16, 2);
    sg_add_arr(w, "a.u32", GGUF_T_UINT32, au32, 2);
    sg_add_arr(w, "a.i32", GGUF_T_INT32, ai32, 4);
    sg_add_arr(w, "a.f32", GGUF_T_FLOAT32, af32, 3);
    sg_add_arr(w, "a.bool", GGUF_T_BOOL, abool, 3);
    sg_add_arr(w, "a.u64", GGUF_T_UINT64, au64, 2);
    sg_add_arr(w, "a.i64", GGUF_T_INT64, ai64, 2);
    sg_add_arr(w, "a.f64", GGUF_T_FLOAT64, af64, 2);
    sg_add_arr(w, "a.empty", GGUF_T_INT32, NULL, 0);
    const char *strs[4] = {"a", "", "ccc", "d\0e"};
    size_t      lens[4] = {1, 0, 3, 3};
    sg_add_arr_strn(w, "a.str", strs, lens, 4);
    sg_add_arr_str(w, "a.str_empty", NULL, 0);

    size_t   len;
    uint8_t *img = sg_serialize(w, &len);
    parsed   p   = parse_copy(img, len);
    CHECK_EQ(p.st, KVF_OK);
    if (p.st != KVF_OK) {
        fprintf(stderr, "  %s\n", p.msg);
        goto out;
    }
    gguf_file *f = p.f;
    CHECK_EQ(f->version, 3);
    CHECK_EQ(f->n_kv, w->n_kv);
    CHECK_EQ(f->n_tensors, 0);
    CHECK_EQ(f->alignment, 32);

    uint32_t u32 = 0;
    CHECK_EQ(gguf_get_u32(f, "v.u8", &u32), KVF_OK);
    CHECK_EQ(u32, 200);
    CHECK_EQ(gguf_get_u32(f, "v.u16", &u32), KVF_OK);
    CHECK_EQ(u32, 65000);
    CHECK_EQ(gguf_get_u32(f, "v.u32", &u32), KVF_OK);
    CHECK_EQ(u32, 4000000000u);
    CHECK_EQ(gguf_get_u32(f, "v.u64small", &u32), KVF_OK);
    CHECK_EQ(u32, 123);
    CHECK_EQ(gguf_get_u32(f, "v.i8", &u32), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "v.i8");
    CHECK_EQ(gguf_get_u32(f, "v.i32", &u32), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_u32(f, "v.u64", &u32), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_u32(f, "v.str", &u32), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "not an integer");
    CHECK_EQ(gguf_get_u32(f, "v.f32", &u32), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_u32(f, "a.u32", &u32), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_u32(f, "v.missing", &u32), KVF_E_NOTFOUND);
    CHECK_CONTAINS(kvf_errmsg(), "v.missing");

    int64_t i64 = 0;
    CHECK_EQ(gguf_get_i64(f, "v.i8", &i64), KVF_OK);
    CHECK_EQ(i64, -100);
    CHECK_EQ(gguf_get_i64(f, "v.i16", &i64), KVF_OK);
    CHECK_EQ(i64, -32000);
    CHECK_EQ(gguf_get_i64(f, "v.i32", &i64), KVF_OK);
    CHECK_EQ(i64, -2000000000);
    CHECK_EQ(gguf_get_i64(f, "v.i64", &i64), KVF_OK);
    CHECK(i64 == INT64_MIN + 1);
    CHECK_EQ(gguf_get_i64(f, "v.u32", &i64), KVF_OK);
    CHECK_EQ(i64, 4000000000ll);
    CHECK_EQ(gguf_get_i64(f, "v.u64", &i64), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "out of range");
    CHECK_EQ(gguf_get_i64(f, "v.bool", &i64), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_i64(f, "v.f64", &i64), KVF_E_FORMAT);

    float f32 = 0;
    CHECK_EQ(gguf_get_f32(f, "v.f32", &f32), KVF_OK);
    CHECK(f32 == -1.5f);
    CHECK_EQ(gguf_get_f32(f, "v.f64", &f32), KVF_OK);
    CHECK(f32 == (float)(1.0 / 3.0));
    CHECK_EQ(gguf_get_f32(f, "v.i32", &f32), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "not a float");
    CHECK_EQ(gguf_get_f32(f, "v.nope", &f32), KVF_E_NOTFOUND);

    int b = -1;
    CHECK_EQ(gguf_get_bool(f, "v.bool", &b), KVF_OK);
    CHECK_EQ(b, 1);
    CHECK_EQ(gguf_get_bool(f, "v.bool0", &b), KVF_OK);
    CHECK_EQ(b, 0);
    CHECK_EQ(gguf_get_bool(f, "v.u8", &b), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "not a bool");

    gguf_str s = {0, 0};
    CHECK_EQ(gguf_get_str(f, "v.str", &s), KVF_OK);
    CHECK(gguf_str_eq(s, "h\xc3\xa9llo w\xc3\xb6rld"));
    CHECK_EQ(gguf_get_str(f, "v.empty", &s), KVF_OK);
    CHECK_EQ(s.n, 0);
    CHECK_EQ(gguf_get_str(f, "v.nul", &s), KVF_OK);
    CHECK(str_is(s, "a\0b", 3));
    CHECK(!gguf_str_eq(s, "a"));
    CHECK_EQ(gguf_get_str(f, "v.u8", &s), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "not a string");
    CHECK_EQ(gguf_get_str(f, "a.str", &s), KVF_E_FORMAT);

    /* scalars: type == arr_type, n == 1, offset = where the writer put the key */
    const gguf_kv *kv = gguf_find_kv(f, "v.u16");
    CHECK(kv != NULL);
    if (kv) {
        CHECK_EQ(kv->type, GGUF_T_UINT16);
        CHECK_EQ(kv->arr_type, GGUF_T_UINT16);
        CHECK_EQ(kv->n, 1);
        CHECK_EQ(kv->offset, sg_find_kv(w, "v.u16")->off_key);
    }
    CHECK(gguf_find_kv(f, "v.u1") == NULL);
    CHECK(gguf_find_kv(f, "v.u166") == NULL);

    /* arrays */
    const gguf_kv *a = NULL;
    CHECK_EQ(gguf_get_arr(f, "a.i32", GGUF_T_INT32, &a), KVF_OK);
    if (a) {
        CHECK_EQ(a->type, GGUF_T_ARRAY);
        CHECK_EQ(a->n, 4);
        for (int i = 0; i < 4; i++) CHECK_EQ(gguf_arr_i32(a, (uint64_t)i), ai32[i]);
    }
    a = NULL;
    CHECK_EQ(gguf_get_arr(f, "a.f32", GGUF_T_FLOAT32, &a), KVF_OK);
    if (a) {
        CHECK_EQ(a->n, 3);
        for (int i = 0; i < 3; i++) CHECK(gguf_arr_f32(a, (uint64_t)i) == af32[i]);
    }
    struct {
        const char *key;
        uint32_t    type;
        const void *ref;
        uint64_t    n;
    } arrs[] = {
        {"a.u8", GGUF_T_UINT8, au8, 3},       {"a.i8", GGUF_T_INT8, ai8, 2},
        {"a.u16", GGUF_T_UINT16, au16, 2},    {"a.i16", GGUF_T_INT16, ai16, 2},
        {"a.u32", GGUF_T_UINT32, au32, 2},    {"a.bool", GGUF_T_BOOL, abool, 3},
        {"a.u64", GGUF_T_UINT64, au64, 2},    {"a.i64", GGUF_T_INT64, ai64, 2},
        {"a.f64", GGUF_T_FLOAT64, af64, 2},   {"a.empty", GGUF_T_INT32, NULL, 0},
    };
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        a = NULL;
        CHECK_EQ(gguf_get_arr(f, arrs[i].key, arrs[i].type, &a), KVF_OK);
        if (!a) continue;
        CHECK_EQ(a->arr_type, arrs[i].type);
        CHECK_EQ(a->n, arrs[i].n);
        size_t nb = (size_t)arrs[i].n * sg_type_size(arrs[i].type);
        CHECK(nb == 0 || memcmp(a->data, arrs[i].ref, nb) == 0);
    }
    CHECK_EQ(gguf_get_arr(f, "a.u32", GGUF_T_INT32, &a), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "a.u32");
    CHECK_EQ(gguf_get_arr(f, "v.u32", GGUF_T_UINT32, &a), KVF_E_FORMAT);
    CHECK_EQ(gguf_get_arr(f, "a.none", GGUF_T_UINT32, &a), KVF_E_NOTFOUND);
    a = NULL;
    CHECK_EQ(gguf_get_arr(f, "a.str", GGUF_T_STRING, &a), KVF_OK);
    if (a) {
        CHECK_EQ(a->n, 4);
        for (int i = 0; i < 4; i++) CHECK(str_is(a->strs[i], strs[i], lens[i]));
    }
    a = NULL;
    CHECK_EQ(gguf_get_arr(f, "a.str_empty", GGUF_T_STRING, &a), KVF_OK);
    if (a) CHECK_EQ(a->n, 0);
    CHECK_EQ(validate_parse(f, p.buf, p.len), 0);
out:
    parsed_free(&p);
    free(img);

    /* the same content as version 2 */
    w->version = 2;
    img        = sg_serialize(w, &len);
    p          = parse_copy(img, len);
    CHECK_EQ(p.st, KVF_OK);
    if (p.f) {
        CHECK_EQ(p.f->version, 2);
        CHECK_EQ(gguf_get_u32(p.f, "v.u32", &u32), KVF_OK);
        CHECK_EQ(u32, 4000000000u);
    }
    parsed_free(&p);
    free(img);
    sg_free(w);
}

static size_t pad_to(size_t x, size_t a) {
    return (x + a - 1) / a * a;
}

/* Tensors of every known type; the layout at several alignments. */
static void check_tensors(uint32_t alignment) {
    static const struct {
        const char *name;
        uint32_t    type;
        uint32_t    n_dims;
        int64_t     ne[4];
    } ts[] = {
        {"f32", KVF_TYPE_F32, 2, {7, 3}},         {"f16", KVF_TYPE_F16, 1, {5}},
        {"bf16", KVF_TYPE_BF16, 4, {2, 3, 4, 5}}, {"q4_0", KVF_TYPE_Q4_0, 2, {64, 3}},
        {"q4_1", KVF_TYPE_Q4_1, 1, {32}},         {"q5_0", KVF_TYPE_Q5_0, 2, {32, 2}},
        {"q5_1", KVF_TYPE_Q5_1, 3, {32, 1, 2}},   {"q8_0", KVF_TYPE_Q8_0, 3, {32, 2, 2}},
        {"q8_1", KVF_TYPE_Q8_1, 1, {64}},         {"q2_k", KVF_TYPE_Q2_K, 1, {256}},
        {"q3_k", KVF_TYPE_Q3_K, 2, {256, 2}},     {"q4_k", KVF_TYPE_Q4_K, 2, {256, 2}},
        {"q5_k", KVF_TYPE_Q5_K, 1, {512}},        {"q6_k", KVF_TYPE_Q6_K, 2, {256, 3}},
        {"q8_k", KVF_TYPE_Q8_K, 1, {256}},        {"i8", KVF_TYPE_I8, 1, {3}},
        {"i16", KVF_TYPE_I16, 1, {3}},            {"i32", KVF_TYPE_I32, 2, {3, 3}},
        {"i64", KVF_TYPE_I64, 1, {1}},            {"f64", KVF_TYPE_F64, 4, {3, 1, 1, 2}},
    };
    const int  nt = (int)(sizeof ts / sizeof ts[0]);
    sg_writer *w  = NULL;
    size_t     len = 0;
    uint8_t   *img = NULL;
    /* pad with a string key until the end of the infos rounds differently at 32 and at the
     * alignment under test, so a reader that ignored general.alignment would be caught */
    for (size_t extra = 0; extra < 4096; extra++) {
        sg_free(w);
        free(img);
        w = sg_new();
        sg_add_str(w, "general.name", "tensors");
        if (alignment) sg_add_u32(w, "general.alignment", alignment);
        char *pad = malloc(extra + 1);
        memset(pad, 'p', extra);
        pad[extra] = 0;
        sg_add_str(w, "x.pad", pad);
        free(pad);
        t_rng_state = 1000 + (unsigned long long)alignment;
        for (int i = 0; i < nt; i++) {
            sg_tensor *t = sg_add_tensor(w, ts[i].name, ts[i].n_dims, ts[i].ne, ts[i].type, NULL);
            for (size_t j = 0; j < t->nbytes; j++) t->data[j] = (uint8_t)t_rand64();
        }
        img              = sg_serialize(w, &len);
        size_t infos_end = w->t[nt - 1].off_offset + 8;
        if (alignment <= 1 || pad_to(infos_end, 32) != pad_to(infos_end, alignment)) break;
    }
    uint32_t a = alignment ? alignment : 32;
    parsed   p = parse_copy(img, len);
    CHECK_MSG(p.st == KVF_OK, "alignment %u: %s", a, p.msg);
    if (p.f) {
        gguf_file *f = p.f;
        CHECK_EQ(f->alignment, a);
        CHECK_EQ(f->n_tensors, nt);
        CHECK_EQ(f->data_offset, w->data_offset);
        CHECK_EQ(f->data_offset % a, 0);
        for (int i = 0; i < nt; i++) {
            const gguf_tensor *t  = gguf_find_tensor(f, ts[i].name);
            const sg_tensor   *wt = &w->t[i];
            CHECK_MSG(t != NULL, "tensor %s not found", ts[i].name);
            if (!t) continue;
            CHECK(t == &f->tensors[i]);
            CHECK_EQ(t->n_dims, ts[i].n_dims);
            for (uint32_t d = 0; d < 4; d++) CHECK_EQ(t->ne[d], d < ts[i].n_dims ? ts[i].ne[d] : 1);
            CHECK_EQ(t->type, ts[i].type);
            CHECK_EQ(t->nbytes, wt->nbytes);
            CHECK_EQ(t->offset, wt->rel_offset);
            CHECK_EQ(t->info_offset, wt->off_info);
            CHECK(t->data == p.buf + f->data_offset + t->offset);
            CHECK_EQ((size_t)(t->data - p.buf) % a, 0);
            CHECK(memcmp(t->data, wt->data, wt->nbytes) == 0);
        }
        CHECK(gguf_find_tensor(f, "q4") == NULL);
        CHECK(gguf_find_tensor(f, "q4_00") == NULL);
        CHECK_EQ(validate_parse(f, p.buf, p.len), 0);
    }
    parsed_free(&p);
    free(img);
    sg_free(w);
}

static void test_roundtrip_tensors(void) {
    check_tensors(0); /* no key: the default 32 */
    check_tensors(1);
    check_tensors(8);
    check_tensors(64);
    check_tensors(4096);
}

/* ---- synthetic models ------------------------------------------------------------------ */

static int32_t get_u32_or(const gguf_file *f, const char *key, int32_t dflt) {
    uint32_t v;
    return gguf_get_u32(f, key, &v) == KVF_OK ? (int32_t)v : dflt;
}

static void check_model_layout(const gguf_file *f, const synth_info *in) {
    const synth_cfg *c = &in->cfg;
    char             k[128];
    gguf_str         s;
    const char      *a = c->arch;
    CHECK_EQ(gguf_get_str(f, "general.architecture", &s), KVF_OK);
    CHECK(gguf_str_eq(s, a));
    CHECK_EQ(gguf_get_str(f, "general.name", &s), KVF_OK);
    CHECK(gguf_str_eq(s, c->name));
#define KEY(suffix) (snprintf(k, sizeof k, "%s." suffix, a), k)
    CHECK_EQ(get_u32_or(f, KEY("block_count"), -1), c->n_layer);
    CHECK_EQ(get_u32_or(f, KEY("context_length"), -1), c->n_ctx);
    CHECK_EQ(get_u32_or(f, KEY("embedding_length"), -1), c->n_embd);
    CHECK_EQ(get_u32_or(f, KEY("feed_forward_length"), -1), c->n_ff);
    CHECK_EQ(get_u32_or(f, KEY("attention.head_count"), -1), c->n_head);
    CHECK_EQ(get_u32_or(f, KEY("attention.head_count_kv"), -1), c->n_head_kv);
    CHECK_EQ(get_u32_or(f, KEY("rope.dimension_count"), -1), in->head_dim);
    CHECK_EQ(get_u32_or(f, KEY("vocab_size"), -1), in->n_vocab);
    float v = 0;
    CHECK_EQ(gguf_get_f32(f, KEY("rope.freq_base"), &v), KVF_OK);
    CHECK(v == c->rope_base);
    CHECK_EQ(gguf_get_f32(f, KEY("attention.layer_norm_rms_epsilon"), &v), KVF_OK);
    CHECK(v == c->eps);
#undef KEY
    CHECK_EQ(gguf_get_str(f, "tokenizer.ggml.model", &s), KVF_OK);
    CHECK(gguf_str_eq(s, "gpt2"));
    CHECK_EQ(gguf_get_str(f, "tokenizer.ggml.pre", &s), KVF_OK);
    CHECK(gguf_str_eq(s, "gpt2"));
    CHECK_EQ(get_u32_or(f, "tokenizer.ggml.bos_token_id", -1), in->bos);
    CHECK_EQ(get_u32_or(f, "tokenizer.ggml.eos_token_id", -1), in->eos);
    int b = -1;
    CHECK_EQ(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b), KVF_OK);
    CHECK_EQ(b, 0);
    CHECK_EQ(gguf_get_str(f, "tokenizer.chat_template", &s), KVF_OK);
    CHECK(s.n > 20 && memmem(s.s, s.n, "<|im_start|>", 12) != NULL &&
          memmem(s.s, s.n, "add_generation_prompt", 21) != NULL);

    /* tokens: 256 byte tokens, merged tokens, 3 specials */
    const gguf_kv *tok = NULL, *tt = NULL, *mg = NULL;
    CHECK_EQ(gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_T_STRING, &tok), KVF_OK);
    CHECK_EQ(gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_T_INT32, &tt), KVF_OK);
    CHECK_EQ(gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_T_STRING, &mg), KVF_OK);
    if (!tok || !tt || !mg) return;
    CHECK_EQ(tok->n, in->n_vocab);
    CHECK_EQ(tt->n, in->n_vocab);
    CHECK_EQ(mg->n, in->n_merges);
    CHECK_EQ(in->n_vocab, 256 + in->n_merged_tokens + 3);
    CHECK(str_is(tok->strs[65], "A", 1));
    CHECK(str_is(tok->strs[32], "\xc4\xa0", 2));  /* U+0120 'Ġ' */
    CHECK(str_is(tok->strs[10], "\xc4\x8a", 2));  /* U+010A 'Ċ' */
    CHECK(str_is(tok->strs[0], "\xc4\x80", 2));   /* U+0100 */
    CHECK(str_is(tok->strs[127], "\xc4\xa1", 2)); /* U+0121 */
    CHECK(str_is(tok->strs[173], "\xc5\x83", 2)); /* U+0143, the last remapped byte */
    CHECK(str_is(tok->strs[255], "\xc3\xbf", 2)); /* U+00FF itself */
    int bad_bytes = 0;
    for (int i = 0; i < 256; i++) {
        char e[3] = {0};
        int  n    = synth_byte_utf8(i, e);
        bad_bytes += !str_is(tok->strs[i], e, (size_t)n);
    }
    CHECK_EQ(bad_bytes, 0);
    CHECK(str_is(tok->strs[in->tok_endoftext], "<|endoftext|>", 13));
    CHECK(str_is(tok->strs[in->tok_im_start], "<|im_start|>", 12));
    CHECK(str_is(tok->strs[in->tok_im_end], "<|im_end|>", 10));
    CHECK_EQ(in->tok_im_end, in->n_vocab - 1);
    int bad_types = 0, dup = 0;
    for (int i = 0; i < in->n_vocab; i++) {
        bad_types += gguf_arr_i32(tt, (uint64_t)i) != (i >= in->tok_endoftext ? 3 : 1);
        for (int j = 0; j < i; j++)
            dup += tok->strs[i].n == tok->strs[j].n &&
                   memcmp(tok->strs[i].s, tok->strs[j].s, tok->strs[i].n) == 0;
    }
    CHECK_EQ(bad_types, 0);
    CHECK_EQ(dup, 0);
    /* each merge "l r": both sides and their concatenation are tokens, the result a merged one */
    int bad_merges = 0;
    for (uint64_t i = 0; i < mg->n; i++) {
        gguf_str    m  = mg->strs[i];
        const char *sp = memchr(m.s, ' ', m.n);
        if (!sp || memchr(sp + 1, ' ', m.n - (size_t)(sp - m.s) - 1)) {
            bad_merges++;
            continue;
        }
        size_t ll = (size_t)(sp - m.s), lr = m.n - ll - 1;
        int    fl = -1, fr = -1, fc = -1;
        for (int j = 0; j < in->n_vocab; j++) {
            gguf_str t = tok->strs[j];
            if (str_is(t, m.s, ll)) fl = j;
            if (str_is(t, sp + 1, lr)) fr = j;
            if (t.n == ll + lr && memcmp(t.s, m.s, ll) == 0 && memcmp(t.s + ll, sp + 1, lr) == 0)
                fc = j;
        }
        bad_merges += fl < 0 || fr < 0 || fc < 256 || fc >= in->tok_endoftext;
    }
    CHECK_EQ(bad_merges, 0);

    /* tensors */
    const int64_t E = c->n_embd, F = c->n_ff, V = in->n_vocab, hd = in->head_dim;
    const int64_t Q = c->n_head * hd, KV = c->n_head_kv * hd;
    int           qwen = strcmp(a, "qwen2") == 0;
    struct {
        const char *name;
        int64_t     ne0, ne1;
        uint32_t    type;
    } want[16];
    int nw = 0;
#define WANT(n_, a_, b_, t_) (want[nw].name = (n_), want[nw].ne0 = (a_), want[nw].ne1 = (b_), want[nw].type = (t_), nw++)
    WANT("attn_norm.weight", E, 0, KVF_TYPE_F32);
    WANT("attn_q.weight", E, Q, c->wtype);
    WANT("attn_k.weight", E, KV, c->wtype);
    WANT("attn_v.weight", E, KV, c->wtype);
    WANT("attn_output.weight", Q, E, c->wtype);
    WANT("ffn_norm.weight", E, 0, KVF_TYPE_F32);
    WANT("ffn_gate.weight", E, F, c->wtype);
    WANT("ffn_up.weight", E, F, c->wtype);
    WANT("ffn_down.weight", F, E, c->wtype);
    if (qwen) {
        WANT("attn_q.bias", Q, 0, KVF_TYPE_F32);
        WANT("attn_k.bias", KV, 0, KVF_TYPE_F32);
        WANT("attn_v.bias", KV, 0, KVF_TYPE_F32);
    }
#undef WANT
    CHECK_EQ(f->n_tensors, 2 + (c->untied ? 1 : 0) + (uint64_t)nw * (uint64_t)c->n_layer);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    CHECK(t && t->n_dims == 2 && t->ne[0] == E && t->ne[1] == V && t->type == c->etype);
    t = gguf_find_tensor(f, "output_norm.weight");
    CHECK(t && t->n_dims == 1 && t->ne[0] == E && t->type == KVF_TYPE_F32);
    t = gguf_find_tensor(f, "output.weight");
    if (c->untied)
        CHECK(t && t->n_dims == 2 && t->ne[0] == E && t->ne[1] == V && t->type == c->wtype);
    else
        CHECK(t == NULL);
    for (int l = 0; l < c->n_layer; l++)
        for (int i = 0; i < nw; i++) {
            char nm[96];
            snprintf(nm, sizeof nm, "blk.%d.%s", l, want[i].name);
            t = gguf_find_tensor(f, nm);
            CHECK_MSG(t != NULL, "missing %s", nm);
            if (!t) continue;
            CHECK_MSG(t->n_dims == (want[i].ne1 ? 2u : 1u) && t->ne[0] == want[i].ne0 &&
                          (!want[i].ne1 || t->ne[1] == want[i].ne1) && t->type == want[i].type,
                      "%s: dims %u [%lld, %lld] type %s", nm, t->n_dims, (long long)t->ne[0],
                      (long long)t->ne[1], kvf_type_name(t->type));
        }
    if (!qwen) CHECK(gguf_find_tensor(f, "blk.0.attn_q.bias") == NULL);
}

/* Dequantised copy of a tensor (malloc'd), or NULL. */
static float *deq(const gguf_file *f, const char *name, int64_t *n_out) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return NULL;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float  *x = malloc((size_t)n * sizeof *x);
    kvf_dequantize(t->type, t->data, x, n);
    if (n_out) *n_out = n;
    return x;
}

static void stats(const float *x, int64_t n, double *mean, double *sd) {
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) s += x[i], s2 += (double)x[i] * x[i];
    *mean = s / (double)n;
    *sd   = sqrt(s2 / (double)n - *mean * *mean);
}

static void test_synth_default(void) {
    uint8_t   *buf;
    size_t     len;
    synth_info in;
    CHECK_EQ(synth_model(NULL, &buf, &len, &in), KVF_OK);
    CHECK_EQ(in.file_bytes, len);
    CHECK(strcmp(in.cfg.arch, "llama") == 0);
    CHECK_EQ(in.cfg.n_layer, 2);
    CHECK_EQ(in.cfg.n_embd, 64);
    CHECK_EQ(in.cfg.n_head, 4);
    CHECK_EQ(in.cfg.n_head_kv, 2);
    CHECK_EQ(in.cfg.n_ff, 128);
    CHECK_EQ(in.cfg.n_ctx, 256);
    CHECK_EQ(in.head_dim, 16);
    CHECK_EQ(in.n_merges, 300);
    CHECK(in.n_vocab > 400 && in.n_vocab < 600);
    parsed p = parse_copy(buf, len);
    CHECK_MSG(p.st == KVF_OK, "%s", p.msg);
    if (p.f) {
        check_model_layout(p.f, &in);
        CHECK_EQ(validate_parse(p.f, p.buf, p.len), 0);
        /* weights: the scales synth.h promises */
        double  m, sd;
        int64_t n;
        float  *x = deq(p.f, "blk.0.attn_q.weight", &n);
        stats(x, n, &m, &sd);
        CHECK_NEAR(m, 0, 0.01);
        CHECK_NEAR(sd, 1 / sqrt(64.0), 0.01);
        free(x);
        x = deq(p.f, "blk.1.ffn_norm.weight", &n);
        stats(x, n, &m, &sd);
        CHECK_NEAR(m, 1, 0.03);
        CHECK(sd > 0.02 && sd < 0.1);
        free(x);
    }
    parsed_free(&p);

    /* deterministic: same cfg, same bytes; another seed changes weights only */
    uint8_t *buf2;
    size_t   len2;
    CHECK_EQ(synth_model(NULL, &buf2, &len2, NULL), KVF_OK);
    CHECK(len2 == len && memcmp(buf, buf2, len) == 0);
    free(buf2);
    synth_cfg c = {0};
    c.seed      = 12345;
    CHECK_EQ(synth_model(&c, &buf2, &len2, NULL), KVF_OK);
    CHECK(len2 == len && memcmp(buf, buf2, len) != 0);
    sg_writer *w;
    CHECK_EQ(synth_build(NULL, &w, NULL), KVF_OK);
    size_t   ld = 0, ld2 = 0;
    uint8_t *bd = NULL;
    if (w) {
        bd = sg_serialize(w, &ld);
        ld2 = w->data_offset;
        sg_free(w);
    }
    CHECK(bd && ld == len && memcmp(bd, buf2, ld2) == 0); /* metadata identical */
    free(bd);
    free(buf2);
    free(buf);
}

static void test_synth_variants(void) {
    synth_cfg c = {0};
    c.arch      = "qwen2";
    c.untied    = 1;
    c.n_layer   = 3;
    c.n_embd    = 96;
    c.n_head    = 6;
    c.n_head_kv = 3;
    c.n_ff      = 160;
    c.n_ctx     = 1024;
    c.n_merges  = 50;
    c.rope_base = 1e6f;
    c.eps       = 1e-6f;
    c.alignment = 64;
    c.name      = "tiny qwen";
    uint8_t   *buf;
    size_t     len;
    synth_info in;
    CHECK_EQ(synth_model(&c, &buf, &len, &in), KVF_OK);
    CHECK_EQ(in.n_merges, 50);
    parsed p = parse_copy(buf, len);
    CHECK_MSG(p.st == KVF_OK, "%s", p.msg);
    if (p.f) {
        check_model_layout(p.f, &in);
        CHECK_EQ(p.f->alignment, 64);
    }
    parsed_free(&p);
    free(buf);

    /* every weight type, as matmul weights and as token_embd: the dequantised weights follow
     * the F32 model with the same seed within the type's error */
    static const struct {
        uint32_t type;
        double   tol; /* relative RMS error */
    } types[] = {
        {KVF_TYPE_F32, 0},      {KVF_TYPE_F16, 1e-3},   {KVF_TYPE_BF16, 8e-3},
        {KVF_TYPE_Q8_0, 0.01},  {KVF_TYPE_Q5_0, 0.06},  {KVF_TYPE_Q5_1, 0.06},
        {KVF_TYPE_Q4_0, 0.12},  {KVF_TYPE_Q4_1, 0.12},  {KVF_TYPE_Q6_K, 0.04},
        {KVF_TYPE_Q5_K, 0.08},  {KVF_TYPE_Q4_K, 0.15},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        synth_cfg q = {0}, r = {0};
        q.n_layer = r.n_layer = 1;
        q.n_merges = r.n_merges = 20;
        q.wtype = q.etype = types[i].type;
        q.seed = r.seed = 99;
        synth_info qi, ri;
        uint8_t   *qb = NULL, *rb = NULL;
        size_t     ql = 0, rl = 0;
        CHECK_MSG(synth_model(&q, &qb, &ql, &qi) == KVF_OK, "%s: %s",
                  kvf_type_name(types[i].type), kvf_errmsg());
        if (!qb) continue;
        r.n_embd = qi.cfg.n_embd; /* 256 for K-quants */
        r.n_ff   = qi.cfg.n_ff;
        CHECK_EQ(synth_model(&r, &rb, &rl, &ri), KVF_OK);
        parsed pq = parse_copy(qb, ql), pr = parse_copy(rb, rl);
        CHECK_MSG(pq.st == KVF_OK && pr.st == KVF_OK, "%s: %s", kvf_type_name(types[i].type),
                  pq.msg);
        if (pq.f && pr.f) {
            check_model_layout(pq.f, &qi);
            const char *names[] = {"token_embd.weight", "blk.0.ffn_down.weight"};
            for (int j = 0; j < 2; j++) {
                int64_t n1 = 0, n2 = 0;
                float  *x = deq(pq.f, names[j], &n1), *y = deq(pr.f, names[j], &n2);
                double  e = 0, s = 0;
                for (int64_t k = 0; x && y && k < n1 && n1 == n2; k++)
                    e += ((double)x[k] - y[k]) * ((double)x[k] - y[k]), s += (double)y[k] * y[k];
                double rel = s > 0 ? sqrt(e / s) : 1;
                CHECK_MSG(n1 == n2 && n1 > 0 && rel <= types[i].tol,
                          "%s %s: relative error %.4g > %.4g", kvf_type_name(types[i].type),
                          names[j], rel, types[i].tol);
                free(x);
                free(y);
            }
        }
        parsed_free(&pq);
        parsed_free(&pr);
        free(qb);
        free(rb);
    }

    /* the file variant */
    char path[] = "/tmp/kvf_test_gguf_XXXXXX";
    int  fd     = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        close(fd);
        synth_cfg t = tiny_cfg();
        CHECK_EQ(synth_model_file(&t, path, &in), KVF_OK);
        gguf_file *f = NULL;
        CHECK_EQ(gguf_open(path, &f), KVF_OK);
        if (f) {
            CHECK_EQ(f->len, in.file_bytes);
            check_model_layout(f, &in);
        }
        gguf_close(f);
        unlink(path);
        CHECK_EQ(synth_model_file(&t, "/nonexistent-dir/x.gguf", NULL), KVF_E_IO);
        CHECK_CONTAINS(kvf_errmsg(), "/nonexistent-dir/x.gguf");
    }
}

static void expect_reject(const synth_cfg *c, const char *needle) {
    uint8_t *buf = (uint8_t *)1;
    size_t   len = 1;
    CHECK_EQ(synth_model(c, &buf, &len, NULL), KVF_E_INVAL);
    CHECK(buf == NULL && len == 0);
    CHECK_CONTAINS(kvf_errmsg(), needle);
}

static void test_synth_reject(void) {
    synth_cfg c = {0};
    c.wtype     = KVF_TYPE_Q4_K;
    c.n_embd    = 64;
    expect_reject(&c, "256");
    c.n_embd = 256;
    c.n_ff   = 300;
    expect_reject(&c, "n_ff 300");
    memset(&c, 0, sizeof c);
    c.etype  = KVF_TYPE_Q6_K;
    c.n_embd = 128;
    expect_reject(&c, "token_embd");
    memset(&c, 0, sizeof c);
    c.wtype = KVF_TYPE_Q4_0;
    c.n_ff  = 100;
    expect_reject(&c, "n_ff 100");
    memset(&c, 0, sizeof c);
    c.arch = "gpt2";
    expect_reject(&c, "arch 'gpt2'");
    memset(&c, 0, sizeof c);
    c.n_head = 3;
    expect_reject(&c, "n_head 3");
    memset(&c, 0, sizeof c);
    c.n_head_kv = 3;
    expect_reject(&c, "n_head_kv 3");
    memset(&c, 0, sizeof c);
    c.wtype = KVF_TYPE_Q8_1;
    expect_reject(&c, "Q8_1");
    memset(&c, 0, sizeof c);
    c.etype = KVF_TYPE_Q2_K;
    expect_reject(&c, "Q2_K");
    memset(&c, 0, sizeof c);
    c.alignment = 48;
    expect_reject(&c, "alignment 48");
    memset(&c, 0, sizeof c);
    c.n_layer = -1;
    expect_reject(&c, "n_layer");
    /* K-quant types pick n_embd 256 and n_ff 512 by themselves */
    memset(&c, 0, sizeof c);
    c.wtype = KVF_TYPE_Q5_K;
    synth_info in;
    CHECK_EQ(synth_resolve(&c, &in), KVF_OK);
    CHECK_EQ(in.cfg.n_embd, 256);
    CHECK_EQ(in.cfg.n_ff, 512);
    CHECK_EQ(synth_type_from_name("q4_k"), KVF_TYPE_Q4_K);
    CHECK_EQ(synth_type_from_name("BF16"), KVF_TYPE_BF16);
    CHECK_EQ(synth_type_from_name("Q4"), -1);
}

/* A plain float forward pass (one token at a time with a KV cache), to show that synthetic
 * weights give finite, non-degenerate logits. llama: rope on adjacent pairs, as GGUF stores
 * llama q/k; qwen2: rope on halves (NeoX). */
static void check_forward(const synth_cfg *cfg) {
    uint8_t   *buf;
    size_t     len;
    synth_info in;
    CHECK_EQ(synth_model(cfg, &buf, &len, &in), KVF_OK);
    parsed p = parse_copy(buf, len);
    CHECK_EQ(p.st, KVF_OK);
    if (!p.f) {
        free(buf);
        return;
    }
    const synth_cfg *c = &in.cfg;
    const int E = c->n_embd, F = c->n_ff, V = in.n_vocab, H = c->n_head, HK = c->n_head_kv;
    const int hd = in.head_dim, L = c->n_layer, T = 12, qwen = strcmp(c->arch, "qwen2") == 0;
    const int32_t ids[12] = {84, 104, 101, 256, 300, in.tok_im_start, 10, 33, 270, 65, 32, 310};
    float *emb = deq(p.f, "token_embd.weight", NULL);
    float *out = c->untied ? deq(p.f, "output.weight", NULL) : emb;
    float *onorm = deq(p.f, "output_norm.weight", NULL);
    float *kc = calloc((size_t)L * T * HK * hd, sizeof(float));
    float *vc = calloc((size_t)L * T * HK * hd, sizeof(float));
    float *x = malloc((size_t)E * 4), *h = malloc((size_t)E * 4), *q = malloc((size_t)H * hd * 4);
    float *o = malloc((size_t)H * hd * 4), *g = malloc((size_t)F * 4);
    float *att = malloc((size_t)T * 4), *logits = malloc((size_t)T * V * 4);
    int    finite = 1;
    for (int t = 0; t < T; t++) {
        memcpy(x, emb + (size_t)ids[t] * E, (size_t)E * 4);
        for (int l = 0; l < L; l++) {
            char nm[64];
#define W(suffix) (snprintf(nm, sizeof nm, "blk.%d." suffix, l), deq(p.f, nm, NULL))
            float *an = W("attn_norm.weight"), *wq = W("attn_q.weight"), *wk = W("attn_k.weight");
            float *wv = W("attn_v.weight"), *wo = W("attn_output.weight");
            float *fn = W("ffn_norm.weight"), *wg = W("ffn_gate.weight");
            float *wu = W("ffn_up.weight"), *wd = W("ffn_down.weight");
            float *bq = qwen ? W("attn_q.bias") : NULL, *bk = qwen ? W("attn_k.bias") : NULL;
            float *bv = qwen ? W("attn_v.bias") : NULL;
#undef W
            double ss = 0;
            for (int i = 0; i < E; i++) ss += (double)x[i] * x[i];
            float sc = (float)(1 / sqrt(ss / E + c->eps));
            for (int i = 0; i < E; i++) h[i] = x[i] * sc * an[i];
            float *kt = kc + ((size_t)l * T + t) * HK * hd, *vt = vc + ((size_t)l * T + t) * HK * hd;
            for (int r = 0; r < H * hd; r++) {
                double s = bq ? bq[r] : 0;
                for (int i = 0; i < E; i++) s += (double)wq[(size_t)r * E + i] * h[i];
                q[r] = (float)s;
            }
            for (int r = 0; r < HK * hd; r++) {
                double sk = bk ? bk[r] : 0, sv = bv ? bv[r] : 0;
                for (int i = 0; i < E; i++)
                    sk += (double)wk[(size_t)r * E + i] * h[i], sv += (double)wv[(size_t)r * E + i] * h[i];
                kt[r] = (float)sk, vt[r] = (float)sv;
            }
            for (int hh = 0; hh < H + HK; hh++) { /* rope on q heads, then k heads */
                float *v = hh < H ? q + hh * hd : kt + (hh - H) * hd;
                for (int i = 0; i < hd / 2; i++) {
                    double th = t * pow(c->rope_base, -2.0 * i / hd);
                    int    a = qwen ? i : 2 * i, b = qwen ? i + hd / 2 : 2 * i + 1;
                    float  x0 = v[a], x1 = v[b];
                    v[a] = (float)(x0 * cos(th) - x1 * sin(th));
                    v[b] = (float)(x0 * sin(th) + x1 * cos(th));
                }
            }
            for (int hh = 0; hh < H; hh++) {
                int    kh = hh / (H / HK);
                double mx = -1e30, den = 0;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < hd; i++)
                        d += (double)q[hh * hd + i] * kc[(((size_t)l * T + s) * HK + kh) * hd + i];
                    att[s] = (float)(d / sqrt((double)hd));
                    if (att[s] > mx) mx = att[s];
                }
                for (int s = 0; s <= t; s++) den += (att[s] = (float)exp(att[s] - mx));
                for (int i = 0; i < hd; i++) {
                    double acc = 0;
                    for (int s = 0; s <= t; s++)
                        acc += att[s] * vc[(((size_t)l * T + s) * HK + kh) * hd + i];
                    o[hh * hd + i] = (float)(acc / den);
                }
            }
            for (int r = 0; r < E; r++) {
                double s = 0;
                for (int i = 0; i < H * hd; i++) s += (double)wo[(size_t)r * H * hd + i] * o[i];
                x[r] += (float)s;
            }
            ss = 0;
            for (int i = 0; i < E; i++) ss += (double)x[i] * x[i];
            sc = (float)(1 / sqrt(ss / E + c->eps));
            for (int i = 0; i < E; i++) h[i] = x[i] * sc * fn[i];
            for (int r = 0; r < F; r++) {
                double sg = 0, su = 0;
                for (int i = 0; i < E; i++)
                    sg += (double)wg[(size_t)r * E + i] * h[i], su += (double)wu[(size_t)r * E + i] * h[i];
                g[r] = (float)(sg / (1 + exp(-sg)) * su);
            }
            for (int r = 0; r < E; r++) {
                double s = 0;
                for (int i = 0; i < F; i++) s += (double)wd[(size_t)r * F + i] * g[i];
                x[r] += (float)s;
            }
            free(an), free(wq), free(wk), free(wv), free(wo), free(fn), free(wg), free(wu);
            free(wd), free(bq), free(bk), free(bv);
        }
        double ss = 0;
        for (int i = 0; i < E; i++) ss += (double)x[i] * x[i];
        float sc = (float)(1 / sqrt(ss / E + c->eps));
        for (int i = 0; i < E; i++) h[i] = x[i] * sc * onorm[i];
        for (int r = 0; r < V; r++) {
            double s = 0;
            for (int i = 0; i < E; i++) s += (double)out[(size_t)r * E + i] * h[i];
            logits[(size_t)t * V + r] = (float)s;
            finite &= isfinite(s) != 0;
        }
    }
    CHECK(finite);
    double max_diff = 0;
    for (int t = 0; t < T; t++) {
        double m, sd, mx = -1e30, den = 0;
        stats(logits + (size_t)t * V, V, &m, &sd);
        CHECK_MSG(sd > 0.5 && sd < 8, "%s position %d: logit sd %.3f", c->arch, t, sd);
        for (int r = 0; r < V; r++) mx = fmax(mx, logits[(size_t)t * V + r]);
        for (int r = 0; r < V; r++) den += exp(logits[(size_t)t * V + r] - mx);
        CHECK_MSG(1 / den < 0.99, "%s position %d: max probability %.3f", c->arch, t, 1 / den);
        for (int r = 0; r < V && t > 0; r++)
            max_diff = fmax(max_diff, fabs(logits[(size_t)t * V + r] - logits[r]));
    }
    CHECK(max_diff > 0.5);
    free(emb), free(onorm), free(kc), free(vc), free(x), free(h), free(q), free(o), free(g);
    free(att), free(logits);
    if (c->untied) free(out);
    parsed_free(&p);
    free(buf);
}

static void test_synth_forward(void) {
    check_forward(NULL);
    synth_cfg c = {0};
    c.arch      = "qwen2";
    c.wtype     = KVF_TYPE_Q4_1;
    c.etype     = KVF_TYPE_Q8_0;
    c.untied    = 1;
    c.n_layer   = 3;
    c.seed      = 5;
    check_forward(&c);
}

/* ---- hostile input --------------------------------------------------------------------- */

/* Every prefix shorter than the complete file fails cleanly; longer ones (trailing padding
 * only) parse. */
static void truncate_all(const uint8_t *img, size_t len, size_t min_len, const char *what) {
    size_t bad = 0, first_bad = SIZE_MAX;
    for (size_t l = 0; l < len; l++) {
        parsed p  = parse_copy(img, l);
        int    ok = l < min_len ? (p.st == KVF_E_FORMAT && p.f == NULL && p.msg[0] != 0)
                                : (p.st == KVF_OK && validate_parse(p.f, p.buf, p.len) == 0);
        if (!ok) {
            if (bad++ == 0) {
                first_bad = l;
                fprintf(stderr, "  %s: length %zu (complete at %zu): status %d '%s'\n", what, l,
                        min_len, p.st, p.msg);
            }
        }
        parsed_free(&p);
    }
    CHECK_MSG(bad == 0, "%s: %zu bad truncations, first at %zu", what, bad, first_bad);
    parsed p = parse_copy(img, len);
    CHECK_EQ(p.st, KVF_OK);
    parsed_free(&p);
}

static void test_truncation(void) {
    synth_cfg  c = tiny_cfg();
    sg_writer *w;
    CHECK_EQ(synth_build(&c, &w, NULL), KVF_OK);
    if (!w) return;
    size_t   len;
    uint8_t *img = sg_serialize(w, &len);
    CHECK(len < 32768);
    truncate_all(img, len, w->min_len, "tiny model");
    free(img);
    sg_free(w);

    /* v2, general.alignment 64, odd-sized strings */
    c.alignment = 64;
    c.n_merges  = 3;
    c.arch      = "qwen2";
    CHECK_EQ(synth_build(&c, &w, NULL), KVF_OK);
    if (!w) return;
    w->version = 2;
    img        = sg_serialize(w, &len);
    truncate_all(img, len, w->min_len, "qwen2 v2 align 64");
    free(img);
    sg_free(w);

    /* no tensors: complete right after the last kv */
    w = base_writer();
    while (w->n_t) sg_remove_tensor(w, w->t[0].name);
    img = sg_serialize(w, &len);
    CHECK_EQ(w->min_len, w->kv[w->n_kv - 1].off_val + w->kv[w->n_kv - 1].val_len);
    truncate_all(img, len, w->min_len, "kvs only");
    free(img);
    sg_free(w);
}

/* Values that tend to break length and count checks. */
static uint64_t interesting(uint64_t len) {
    static const uint64_t v[] = {0,          1,          2,           3,
                                 4,          7,          8,           9,
                                 12,         13,         24,          31,
                                 32,         33,         63,          64,
                                 255,        256,        4096,        65535,
                                 65536,      0x7fffffff, 0x80000000u, 0xffffffffu,
                                 1ull << 32, 1ull << 62, 1ull << 63,  UINT64_MAX,
                                 UINT64_MAX - 7};
    uint64_t r = t_rand64() % (sizeof v / sizeof v[0] + 4);
    if (r < sizeof v / sizeof v[0]) return v[r];
    if (r == sizeof v / sizeof v[0]) return len;
    if (r == sizeof v / sizeof v[0] + 1) return len - 1;
    if (r == sizeof v / sizeof v[0] + 2) return len / 2;
    return t_rand64();
}

static void corrupt_many(sg_writer *w, int iters, const char *what) {
    size_t   len;
    uint8_t *img = sg_serialize(w, &len);
    /* field offsets to aim structured mutations at */
    size_t *fields = malloc((3 + 3 * w->n_kv + 5 * w->n_t) * sizeof *fields);
    size_t  nf     = 0;
    fields[nf++]   = 4, fields[nf++] = 8, fields[nf++] = 16;
    for (size_t i = 0; i < w->n_kv; i++) {
        fields[nf++] = w->kv[i].off_key;
        fields[nf++] = w->kv[i].off_type;
        fields[nf++] = w->kv[i].off_val;
        if (w->kv[i].type == GGUF_T_ARRAY) fields[nf - 1] += 4 * (t_rand64() & 1);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        fields[nf++] = w->t[i].off_info;
        fields[nf++] = w->t[i].off_ndims;
        fields[nf++] = w->t[i].off_ne + 8 * (t_rand64() % (w->t[i].n_dims ? w->t[i].n_dims : 1));
        fields[nf++] = w->t[i].off_type;
        fields[nf++] = w->t[i].off_offset;
    }
    size_t   head = w->data_offset + 64 < len ? w->data_offset + 64 : len;
    uint8_t *m    = malloc(len);
    int      n_ok = 0, n_fail = 0, bad = 0;
    for (int it = 0; it < iters; it++) {
        memcpy(m, img, len);
        size_t ml = len;
        int    k  = 1 + (int)(t_rand64() % 4);
        for (int j = 0; j < k && ml > 0; j++) {
            size_t hd = head < ml ? head : ml;
            switch (t_rand64() % 6) {
            case 0: /* flip a bit in the metadata */
                m[t_rand64() % hd] ^= (uint8_t)(1u << (t_rand64() % 8));
                break;
            case 1: /* any byte anywhere */
                m[t_rand64() % ml] = (uint8_t)t_rand64();
                break;
            case 2:
            case 3: { /* a u32/u64 field gets an interesting value */
                size_t   off = fields[t_rand64() % nf];
                uint64_t v   = interesting(len);
                if (t_rand64() & 1) {
                    if (off + 4 <= ml) sg_put_u32(m, off, (uint32_t)v);
                } else if (off + 8 <= ml) {
                    sg_put_u64(m, off, v);
                }
                break;
            }
            case 4: /* a run of random bytes in the metadata */
            {
                size_t off = t_rand64() % hd, n = 1 + t_rand64() % 16;
                for (size_t q = off; q < off + n && q < ml; q++) m[q] = (uint8_t)t_rand64();
                break;
            }
            default: /* sometimes also cut the file */
                if (t_rand64() % 4 == 0) ml = (size_t)(t_rand64() % (ml + 1));
                break;
            }
        }
        parsed p = parse_copy(m, ml);
        if (p.st == KVF_OK) {
            n_ok++;
            int v = validate_parse(p.f, p.buf, p.len);
            if (v != 0 && bad++ < 5)
                fprintf(stderr, "  %s iteration %d: parse OK but invariant %d broken\n", what, it,
                        v);
        } else {
            n_fail++;
            if ((p.f != NULL || p.msg[0] == 0) && bad++ < 5)
                fprintf(stderr, "  %s iteration %d: status %d, no message or out set\n", what, it,
                        p.st);
        }
        parsed_free(&p);
    }
    fprintf(stderr, "  %s: %d corruptions, %d parsed, %d rejected\n", what, iters, n_ok, n_fail);
    CHECK_EQ(bad, 0);
    CHECK(n_ok > 0 && n_fail > 0);
    free(m);
    free(fields);
    free(img);
}

static void test_corruption(void) {
    t_rng_state = 0xC0FFEE;
    synth_cfg  c = tiny_cfg();
    sg_writer *w;
    CHECK_EQ(synth_build(&c, &w, NULL), KVF_OK);
    if (w) corrupt_many(w, 4000, "tiny model");
    sg_free(w);
    w = base_writer();
    corrupt_many(w, 4000, "base file");
    sg_free(w);
}

static void test_malformed_header(void) {
    sg_writer *w = base_writer();
    size_t     len;
    uint8_t   *img = sg_serialize(w, &len), *m = malloc(len);
#define FRESH() memcpy(m, img, len)
    FRESH();
    m[0] = 'X';
    EXPECT_FAIL(m, len, "magic", "offset 0");
    FRESH();
    memcpy(m, "GGML", 4);
    EXPECT_FAIL(m, len, "magic", NULL);
    FRESH();
    sg_put_u32(m, 4, 1);
    EXPECT_FAIL(m, len, "version 1", NULL);
    FRESH();
    sg_put_u32(m, 4, 4);
    EXPECT_FAIL(m, len, "version 4", NULL);
    FRESH();
    sg_put_u32(m, 4, 0x03000000); /* 3 written big-endian */
    EXPECT_FAIL(m, len, "big-endian", NULL);
    FRESH();
    sg_put_u32(m, 4, 0x02000000);
    EXPECT_FAIL(m, len, "big-endian", NULL);
    {
        /* a whole big-endian header: version, counts and lengths byte-swapped */
        FRESH();
        for (size_t off = 4; off < 24; off += off == 4 ? 4 : 8)
            for (size_t i = 0, n = off == 4 ? 4 : 8; i < n / 2; i++) {
                uint8_t t = m[off + i];
                m[off + i] = m[off + n - 1 - i], m[off + n - 1 - i] = t;
            }
        EXPECT_FAIL(m, len, "big-endian", NULL);
    }
    /* Version 0 is not a big-endian file: the message must not say so (gguf.c tests only
     * the low 16 bits being zero). */
    FRESH();
    sg_put_u32(m, 4, 0);
    {
        parsed p = parse_copy(m, len);
        CHECK_EQ(p.st, KVF_E_FORMAT);
        CHECK_CONTAINS(p.msg, "version");
        CHECK_MSG(strstr(p.msg, "big-endian") == NULL, "version 0 reported as: %s", p.msg);
        parsed_free(&p);
    }
    FRESH();
    sg_put_u64(m, 16, 1ull << 40);
    EXPECT_FAIL(m, len, "n_kv", "offset 16");
    FRESH();
    sg_put_u64(m, 16, UINT64_MAX);
    EXPECT_FAIL(m, len, "n_kv", NULL);
    FRESH();
    sg_put_u64(m, 8, 1ull << 40);
    EXPECT_FAIL(m, len, "n_tensors", "offset 8");
    FRESH();
    sg_put_u64(m, 8, UINT64_MAX);
    EXPECT_FAIL(m, len, "n_tensors", NULL);
    /* short files */
    EXPECT_FAIL(img, 0, "too short", NULL);
    EXPECT_FAIL(img, 23, "too short", NULL);
    EXPECT_FAIL((const uint8_t *)"GGUF", 4, "too short", NULL);
    /* a count one too large runs into the tensor infos / past the end */
    FRESH();
    sg_put_u64(m, 16, w->n_kv + 1);
    {
        parsed p = parse_copy(m, len);
        CHECK_EQ(p.st, KVF_E_FORMAT);
        CHECK(p.msg[0] != 0);
        parsed_free(&p);
    }
    FRESH();
    sg_put_u64(m, 8, w->n_t + 1);
    {
        parsed p = parse_copy(m, len);
        CHECK_EQ(p.st, KVF_E_FORMAT);
        CHECK(p.msg[0] != 0);
        parsed_free(&p);
    }
#undef FRESH
    free(m);
    free(img);
    sg_free(w);
}

static void test_malformed_kv(void) {
    sg_writer *w = base_writer();
    size_t     len;
    uint8_t   *img = sg_serialize(w, &len), *m = malloc(len);
    sg_kv     *ku = sg_find_kv(w, "a.u32"), *ks = sg_find_kv(w, "a.str");
    sg_kv     *ka = sg_find_kv(w, "a.arr"), *kss = sg_find_kv(w, "a.strs");
#define FRESH() memcpy(m, img, len)
    FRESH();
    sg_put_u64(m, ku->off_key, 0);
    EXPECT_FAIL(m, len, "invalid length 0", "key 1");
    FRESH();
    sg_put_u64(m, ku->off_key, len);
    EXPECT_FAIL(m, len, "key 1", "past the end");
    FRESH();
    sg_put_u64(m, ku->off_key, UINT64_MAX);
    EXPECT_FAIL(m, len, "key 1", "past the end");
    FRESH();
    sg_put_u32(m, ku->off_type, 13);
    EXPECT_FAIL(m, len, "unknown value type 13", "a.u32");
    FRESH();
    sg_put_u32(m, ku->off_type, 0xFFFFFFFFu);
    EXPECT_FAIL(m, len, "unknown value type 4294967295", "a.u32");
    FRESH();
    sg_put_u64(m, ks->off_val, len);
    EXPECT_FAIL(m, len, "a.str", "past the end");
    FRESH();
    sg_put_u64(m, ks->off_val, UINT64_MAX);
    EXPECT_FAIL(m, len, "a.str", "past the end");
    FRESH();
    sg_put_u64(m, ka->off_val + 4, 1ull << 62); /* u32 array count */
    EXPECT_FAIL(m, len, "a.arr", "array");
    FRESH();
    sg_put_u64(m, ka->off_val + 4, UINT64_MAX);
    EXPECT_FAIL(m, len, "a.arr", "array");
    FRESH();
    sg_put_u64(m, kss->off_val + 4, len); /* string array count */
    EXPECT_FAIL(m, len, "a.strs", "array count");
    FRESH();
    sg_put_u64(m, kss->off_val + 4 + 8 + 8 + 1, UINT64_MAX - 3); /* 2nd string's length */
    EXPECT_FAIL(m, len, "a.strs", "string 1 of 3");
    FRESH();
    sg_put_u32(m, ka->off_val, GGUF_T_ARRAY); /* nested array */
    EXPECT_FAIL(m, len, "a.arr", "array element type 9");
    FRESH();
    sg_put_u32(m, ka->off_val, 13);
    EXPECT_FAIL(m, len, "a.arr", "array element type 13");
    /* a whole nested array, well-formed by its own lengths */
    {
        sg_writer *w2 = sg_new();
        uint8_t    v[4 + 8 + 4 + 8 + 4];
        sg_put_u32(v, 0, GGUF_T_ARRAY);
        sg_put_u64(v, 4, 1);
        sg_put_u32(v, 12, GGUF_T_UINT32);
        sg_put_u64(v, 16, 1);
        sg_put_u32(v, 24, 5);
        sg_add_raw(w2, "nested", 6, GGUF_T_ARRAY, v, sizeof v);
        size_t   l2;
        uint8_t *i2 = sg_serialize(w2, &l2);
        EXPECT_FAIL(i2, l2, "nested", "array element type 9");
        free(i2);
        sg_free(w2);
    }
    /* truncated scalar value and truncated array header at the very end (no tensors) */
    {
        sg_writer *w2 = sg_new();
        sg_add_u64(w2, "last", 5);
        size_t   l2;
        uint8_t *i2 = sg_serialize(w2, &l2);
        EXPECT_FAIL(i2, w2->min_len - 3, "last", "truncated");
        EXPECT_FAIL(i2, w2->kv[0].off_val, "last", "truncated");
        EXPECT_FAIL(i2, w2->kv[0].off_type + 2, "last", "truncated");
        free(i2);
        sg_free(w2);
        w2 = sg_new();
        sg_add_arr(w2, "arr", GGUF_T_UINT8, "abc", 3);
        i2 = sg_serialize(w2, &l2);
        EXPECT_FAIL(i2, w2->kv[0].off_val + 6, "arr", "truncated");
        free(i2);
        sg_free(w2);
    }
    /* key longer than GGUF allows */
    {
        sg_writer *w2 = sg_new();
        char      *k  = malloc(70000);
        memset(k, 'k', 70000);
        sg_add_raw(w2, k, 70000, GGUF_T_UINT8, "x", 1);
        free(k);
        size_t   l2;
        uint8_t *i2 = sg_serialize(w2, &l2);
        EXPECT_FAIL(i2, l2, "invalid length 70000", NULL);
        free(i2);
        sg_free(w2);
    }
    /* duplicate key */
    {
        sg_writer *w2 = base_writer();
        sg_add_u8(w2, "a.str", 1);
        size_t   l2;
        uint8_t *i2 = sg_serialize(w2, &l2);
        EXPECT_FAIL(i2, l2, "duplicate key 'a.str'", NULL);
        free(i2);
        sg_free(w2);
    }
    /* keys that differ only after an embedded NUL or in length are not duplicates */
    {
        sg_writer *w2 = sg_new();
        sg_add_raw(w2, "k\0a", 3, GGUF_T_UINT8, "1", 1);
        sg_add_raw(w2, "k\0b", 3, GGUF_T_UINT8, "2", 1);
        sg_add_raw(w2, "k", 1, GGUF_T_UINT8, "3", 1);
        size_t   l2;
        uint8_t *i2 = sg_serialize(w2, &l2);
        parsed   p  = parse_copy(i2, l2);
        CHECK_EQ(p.st, KVF_OK);
        if (p.f) {
            uint32_t v = 0;
            CHECK_EQ(gguf_get_u32(p.f, "k", &v), KVF_OK);
            CHECK_EQ(v, '3');
        }
        parsed_free(&p);
        free(i2);
        sg_free(w2);
    }
#undef FRESH
    free(m);
    free(img);
    sg_free(w);
}

static void test_malformed_alignment(void) {
    struct {
        uint32_t    type;
        uint64_t    v;
        const char *n1, *n2;
    } cases[] = {
        {GGUF_T_UINT32, 3, "general.alignment", "power of two"},
        {GGUF_T_UINT32, 0, "general.alignment", "power of two"},
        {GGUF_T_UINT32, 48, "general.alignment", "power of two"},
        {GGUF_T_UINT32, 1u << 21, "general.alignment", "power of two"},
        {GGUF_T_UINT32, 0x80000000u, "general.alignment", "power of two"},
        {GGUF_T_UINT64, 32, "general.alignment", "uint32"},
        {GGUF_T_INT32, 32, "general.alignment", "uint32"},
        {GGUF_T_UINT16, 32, "general.alignment", "uint32"},
        {GGUF_T_FLOAT32, 0x42000000, "general.alignment", "uint32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sg_writer *w = base_writer();
        uint8_t    v[8];
        sg_put_u64(v, 0, cases[i].v);
        sg_add_raw(w, "general.alignment", 17, cases[i].type, v, sg_type_size(cases[i].type));
        size_t   len;
        uint8_t *img = sg_serialize(w, &len);
        EXPECT_FAIL(img, len, cases[i].n1, cases[i].n2);
        free(img);
        sg_free(w);
    }
    {
        sg_writer *w = base_writer();
        sg_add_str(w, "general.alignment", "32");
        size_t   len;
        uint8_t *img = sg_serialize(w, &len);
        EXPECT_FAIL(img, len, "general.alignment", "uint32");
        free(img);
        sg_free(w);
    }
    {
        sg_writer *w = base_writer();
        uint32_t   a[1] = {32};
        sg_add_arr(w, "general.alignment", GGUF_T_UINT32, a, 1);
        size_t   len;
        uint8_t *img = sg_serialize(w, &len);
        EXPECT_FAIL(img, len, "general.alignment", "uint32");
        free(img);
        sg_free(w);
    }
    /* offsets aligned to 32 but not to the declared 64 */
    {
        sg_writer *w = sg_new();
        sg_add_u32(w, "general.alignment", 64);
        w->alignment   = 32; /* lay the data out as if the key were not there */
        int64_t ne[1] = {8}; /* 32 bytes each */
        sg_add_tensor(w, "t.a", 1, ne, KVF_TYPE_F32, NULL);
        sg_add_tensor(w, "t.b", 1, ne, KVF_TYPE_F32, NULL);
        size_t   len;
        uint8_t *img = sg_serialize(w, &len);
        EXPECT_FAIL(img, len, "t.b", "not a multiple of the alignment 64");
        free(img);
        sg_free(w);
    }
}

/* A file with one tensor info written from raw fields. */
static void expect_tensor_fail(uint32_t n_dims, const uint64_t *ne, uint32_t type, size_t nbytes,
                               const char *n1, const char *n2) {
    sg_writer *w = sg_new();
    sg_add_u32(w, "x", 1);
    int64_t ok_ne[1] = {32};
    sg_add_tensor(w, "ok", 1, ok_ne, KVF_TYPE_F32, NULL);
    sg_add_tensor_raw(w, "bad", n_dims, ne, type, NULL, nbytes);
    size_t   len;
    uint8_t *img = sg_serialize(w, &len);
    EXPECT_FAIL(img, len, n1, n2);
    free(img);
    sg_free(w);
}

static void test_malformed_tensor(void) {
    uint64_t ne[8] = {32, 2, 2, 2, 2, 2, 2, 2};
    expect_tensor_fail(0, ne, KVF_TYPE_F32, 4, "bad", "n_dims is 0");
    expect_tensor_fail(5, ne, KVF_TYPE_F32, 4 * 32 * 16, "bad", "n_dims is 5");
    expect_tensor_fail(8, ne, KVF_TYPE_F32, 4 * 32 * 128, "bad", "n_dims is 8");
    uint64_t z[2] = {32, 0};
    expect_tensor_fail(2, z, KVF_TYPE_F32, 0, "bad", "dimension 1");
    uint64_t z0[1] = {0};
    expect_tensor_fail(1, z0, KVF_TYPE_F32, 0, "bad", "dimension 0");
    uint64_t big[2] = {1ull << 32, 1ull << 32};
    expect_tensor_fail(2, big, KVF_TYPE_F32, 0, "bad", "element count overflows");
    uint64_t big3[3] = {1ull << 31, 1ull << 31, 4};
    expect_tensor_fail(3, big3, KVF_TYPE_F32, 0, "bad", "element count overflows");
    uint64_t huge[1] = {UINT64_MAX};
    expect_tensor_fail(1, huge, KVF_TYPE_F32, 0, "bad", "dimension 0");
    uint64_t bytes[1] = {1ull << 62}; /* 2^62 F32 elements: 2^64 bytes */
    expect_tensor_fail(1, bytes, KVF_TYPE_F32, 0, "bad", "byte size overflows");
    uint64_t lots[1] = {1ull << 40}; /* fits the arithmetic, not the file */
    expect_tensor_fail(1, lots, KVF_TYPE_F32, 0, "bad", "outside");
    expect_tensor_fail(1, ne, 4, 64, "bad", "unknown type 4"); /* removed Q4_2 */
    expect_tensor_fail(1, ne, 39, 64, "bad", "unknown type 39");
    expect_tensor_fail(1, ne, KVF_TYPE_COUNT, 64, "bad", "unknown type 40");
    expect_tensor_fail(1, ne, 0xFFFFFFFFu, 64, "bad", "unknown type 4294967295");
    uint64_t r48[2] = {48, 2};
    expect_tensor_fail(2, r48, KVF_TYPE_Q4_0, 0, "bad", "row length 48 is not a multiple of the Q4_0 block size 32");
    uint64_t r32[1] = {32};
    expect_tensor_fail(1, r32, KVF_TYPE_Q4_K, 0, "bad", "Q4_K block size 256");

    sg_writer *w = base_writer();
    size_t     len;
    uint8_t   *img = sg_serialize(w, &len), *m = malloc(len);
    sg_tensor *t1  = sg_find_tensor(w, "t.q40");
#define FRESH() memcpy(m, img, len)
    FRESH();
    sg_put_u64(m, t1->off_offset, t1->rel_offset + 8);
    EXPECT_FAIL(m, len, "t.q40", "not a multiple of the alignment 32");
    FRESH();
    sg_put_u64(m, t1->off_offset, pad_to(len - w->data_offset, 32));
    EXPECT_FAIL(m, len, "t.q40", "outside");
    FRESH();
    sg_put_u64(m, t1->off_offset, UINT64_MAX - 31);
    EXPECT_FAIL(m, len, "t.q40", "outside");
    FRESH();
    sg_put_u64(m, t1->off_offset, pad_to(len - w->data_offset - t1->nbytes + 1, 32));
    EXPECT_FAIL(m, len, "t.q40", "outside");
    EXPECT_FAIL(img, t1->off_data + t1->nbytes - 1, "t.q40", "outside"); /* truncated data */
    FRESH();
    sg_put_u64(m, t1->off_info, 0);
    EXPECT_FAIL(m, len, "tensor 1", "invalid length 0");
    FRESH();
    sg_put_u64(m, t1->off_info, len);
    EXPECT_FAIL(m, len, "tensor 1", "past the end");
    FRESH();
    sg_put_u32(m, t1->off_ndims, 0);
    EXPECT_FAIL(m, len, "t.q40", "n_dims is 0");
    FRESH();
    sg_put_u32(m, t1->off_ndims, 5);
    EXPECT_FAIL(m, len, "t.q40", "n_dims is 5");
    FRESH();
    sg_put_u64(m, t1->off_ne + 8, 0);
    EXPECT_FAIL(m, len, "t.q40", "dimension 1");
    FRESH();
    sg_put_u32(m, t1->off_type, 5); /* removed Q4_3 */
    EXPECT_FAIL(m, len, "t.q40", "unknown type 5");
#undef FRESH
    free(m);
    free(img);
    sg_free(w);

    /* duplicate tensor name; an over-long name */
    w = base_writer();
    int64_t ne1[1] = {32};
    sg_add_tensor(w, "t.f32", 1, ne1, KVF_TYPE_F32, NULL);
    img = sg_serialize(w, &len);
    EXPECT_FAIL(img, len, "duplicate tensor name 't.f32'", NULL);
    free(img);
    sg_free(w);
    w          = sg_new();
    char nm[300];
    memset(nm, 'n', sizeof nm - 1);
    nm[sizeof nm - 1] = 0;
    sg_add_tensor(w, nm, 1, ne1, KVF_TYPE_F32, NULL);
    img = sg_serialize(w, &len);
    EXPECT_FAIL(img, len, "tensor 0", "invalid length 299");
    free(img);
    sg_free(w);
}

/* Every allocation gguf_parse makes can fail: the result is KVF_E_NOMEM, nothing leaks. */
static void test_alloc_failure(void) {
    synth_cfg c = tiny_cfg();
    uint8_t  *buf;
    size_t    len;
    CHECK_EQ(synth_model(&c, &buf, &len, NULL), KVF_OK);
    int n, wrong = 0;
    for (n = 1; n < 1000; n++) {
        kvf_alloc_fail_after(n);
        gguf_file *f  = NULL;
        kvf_status st = gguf_parse(buf, len, &f);
        kvf_alloc_fail_after(0);
        if (st == KVF_OK) {
            gguf_close(f);
            break;
        }
        if ((st != KVF_E_NOMEM || f != NULL || !strstr(kvf_errmsg(), "memory")) && wrong++ < 3)
            fprintf(stderr, "  allocation %d failing: status %d (%s), want %d (%s)\n", n, st,
                    kvf_errmsg(), KVF_E_NOMEM, kvf_status_str(KVF_E_NOMEM));
    }
    CHECK(n > 3 && n < 1000);
    CHECK_MSG(wrong == 0, "%d of %d injected allocation failures did not return KVF_E_NOMEM",
              wrong, n - 1);
    free(buf);
}

/* ---- gguf_open ------------------------------------------------------------------------- */

static void test_open(void) {
    char dir[] = "/tmp/kvf_test_gguf_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char       path[256];
    gguf_file *f = (gguf_file *)1;

    snprintf(path, sizeof path, "%s/missing.gguf", dir);
    CHECK_EQ(gguf_open(path, &f), KVF_E_IO);
    CHECK(f == NULL);
    CHECK_CONTAINS(kvf_errmsg(), path);
    CHECK_CONTAINS(kvf_errmsg(), "No such file");

    f = (gguf_file *)1;
    CHECK_EQ(gguf_open(dir, &f), KVF_E_IO);
    CHECK(f == NULL);
    CHECK_CONTAINS(kvf_errmsg(), "not a regular file");

    snprintf(path, sizeof path, "%s/empty.gguf", dir);
    CHECK_EQ(sg_write_buf(path, "", 0), 0);
    f = (gguf_file *)1;
    CHECK_EQ(gguf_open(path, &f), KVF_E_FORMAT);
    CHECK(f == NULL);
    CHECK_CONTAINS(kvf_errmsg(), path);
    CHECK_CONTAINS(kvf_errmsg(), "empty");
    unlink(path);

    synth_cfg c = tiny_cfg();
    uint8_t  *buf;
    size_t    len;
    CHECK_EQ(synth_model(&c, &buf, &len, NULL), KVF_OK);
    snprintf(path, sizeof path, "%s/trunc.gguf", dir);
    CHECK_EQ(sg_write_buf(path, buf, len / 2), 0);
    f = (gguf_file *)1;
    CHECK_EQ(gguf_open(path, &f), KVF_E_FORMAT);
    CHECK(f == NULL);
    CHECK(strncmp(kvf_errmsg(), path, strlen(path)) == 0); /* prefixed with the path */
    CHECK_CONTAINS(kvf_errmsg(), "gguf:");
    unlink(path);

    snprintf(path, sizeof path, "%s/ok.gguf", dir);
    CHECK_EQ(sg_write_buf(path, buf, len), 0);
    f = NULL;
    CHECK_EQ(gguf_open(path, &f), KVF_OK);
    if (f) {
        CHECK_EQ(f->len, len);
        CHECK(f->map != NULL && (const void *)f->buf == f->map);
        CHECK(memcmp(f->buf, buf, len) == 0);
        CHECK_EQ(validate_parse(f, f->buf, f->len), 0);
        const gguf_tensor *t = gguf_find_tensor(f, "blk.0.ffn_down.weight");
        CHECK(t != NULL && t->type == KVF_TYPE_Q4_0);
    }
    gguf_close(f);
    unlink(path);
    gguf_close(NULL);
    free(buf);
    rmdir(dir);
}

int main(void) {
    RUN(test_roundtrip_values);
    RUN(test_roundtrip_tensors);
    RUN(test_synth_default);
    RUN(test_synth_variants);
    RUN(test_synth_reject);
    RUN(test_synth_forward);
    RUN(test_truncation);
    RUN(test_corruption);
    RUN(test_malformed_header);
    RUN(test_malformed_kv);
    RUN(test_malformed_alignment);
    RUN(test_malformed_tensor);
    RUN(test_alloc_failure);
    RUN(test_open);
    return TEST_REPORT();
}
