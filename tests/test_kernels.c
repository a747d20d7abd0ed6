/* test_kernels.c - every kernel of every instruction set this CPU has, against the reference:
 * packing (panel rows == reference dequantisation), matmuls (bit-identical to the reference,
 * and close to a float dot product of dequantised operands), activation quantisation
 * (bit-identical), attention, rmsnorm and swiglu (within float tolerance), the threaded driver
 * (identical results for 1, 2 and 3 threads) and the thread pool. Odd sizes throughout. */
#include "harness.h"
#include "common.h"
#include "engine/kernels/kernels.h"
#include "engine/matmul.h"
#include "engine/quant.h"
#include "engine/threadpool.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static const uint32_t k_types[] = {KVF_TYPE_F32,  KVF_TYPE_F16,  KVF_TYPE_BF16, KVF_TYPE_Q8_0,
                                   KVF_TYPE_Q4_0, KVF_TYPE_Q4_1, KVF_TYPE_Q5_0, KVF_TYPE_Q5_1,
                                   KVF_TYPE_Q4_K, KVF_TYPE_Q5_K, KVF_TYPE_Q6_K};
#define N_TYPES (int)(sizeof k_types / sizeof k_types[0])

static const kvf_kernels *isas[3];
static int                n_isas;

static void pick_isas(void) {
    isas[n_isas++] = &kvf_kernels_ref;
    if (kvf_kernels_supported("avx2")) isas[n_isas++] = &kvf_kernels_avx2;
    if (kvf_kernels_supported("avx512")) isas[n_isas++] = &kvf_kernels_avx512;
    fprintf(stderr, "kernel sets tested against ref:");
    for (int i = 1; i < n_isas; i++) fprintf(stderr, " %s", isas[i]->name);
    fprintf(stderr, "%s\n", n_isas == 1 ? " (none: this CPU has only the reference)" : "");
}

static void rand_fill(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++) x[i] = t_randf() * scale;
}

/* random weights of a type: floats quantised with the reference quantiser */
static uint8_t *make_weights(uint32_t type, int64_t n_out, int64_t n_in) {
    const kvf_quant_traits *qt = kvf_quant_get(type);
    int64_t                 rb = n_in / qt->block * qt->bytes;
    uint8_t                *w  = malloc((size_t)(rb * n_out));
    float                  *f  = malloc(sizeof(float) * (size_t)n_in);
    for (int64_t r = 0; r < n_out; r++) {
        rand_fill(f, n_in, 0.5f + (float)(r % 7));
        if (r % 5 == 0) f[r % n_in] = 40.0f; /* an outlier per few rows */
        kvf_quantize(type, f, w + r * rb, n_in);
    }
    free(f);
    return w;
}

static void test_pack_roundtrip(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t                type = k_types[ti];
        const kvf_quant_traits *qt   = kvf_quant_get(type);
        int64_t                 n_in = qt->block == 256 ? 512 : 96, n_out = 37;
        uint8_t                *w    = make_weights(type, n_out, n_in);
        kvf_weight              pw;
        CHECK_EQ(kvf_weight_pack_raw(type, w, n_out, n_in, NULL, 0, &pw), KVF_OK);
        CHECK_EQ(pw.n_panels, 3);
        float *a = malloc(sizeof(float) * (size_t)n_in), *b = malloc(sizeof(float) * (size_t)n_in);
        int    bad = 0;
        for (int64_t r = 0; r < n_out; r++) {
            kvf_dequantize(type, w + r * (n_in / qt->block * qt->bytes), a, n_in);
            kvf_weight_row(&pw, r, b);
            for (int64_t i = 0; i < n_in; i++) bad += a[i] != b[i];
        }
        CHECK_MSG(bad == 0, "%s: %d packed weights differ from the reference dequantisation",
                  qt->name, bad);
        free(a), free(b), free(w);
        kvf_weight_free(&pw);
    }
}

static void test_pack_errors(void) {
    kvf_weight pw;
    float      f[64] = {0};
    CHECK_EQ(kvf_weight_pack_raw(KVF_TYPE_Q2_K, f, 1, 256, NULL, 0, &pw), KVF_E_UNSUPPORTED);
    CHECK_CONTAINS(kvf_errmsg(), "Q2_K");
    CHECK_EQ(kvf_weight_pack_raw(KVF_TYPE_F32, f, 2, 48, NULL, 0, &pw), KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "multiple of 32");
    CHECK(pw.data == NULL);
}

static void test_quantize_row(void) {
    int64_t n = 32 * 13;
    float  *x = malloc(sizeof(float) * (size_t)n);
    rand_fill(x, n, 3.0f);
    for (int i = 0; i < 32; i++) x[32 + i] = 0.0f;                   /* an all-zero block */
    for (int i = 0; i < 32; i++) x[64 + i] = (float)(i - 16) * 0.5f; /* exact ties */
    x[100] = 1e30f;
    x[101] = -1e-30f;
    for (int two = 0; two < 2; two++) {
        int8_t  q[2][32 * 13], ql[2][32 * 13];
        float   d[2][13], dl[2][13], s[2][26];
        int32_t qs[2][26], qsl[2][26];
        memset(ql, 0, sizeof ql), memset(qsl, 0, sizeof qsl), memset(dl, 0, sizeof dl);
        kvf_quantize_row_q8_ref(x, n, q[0], d[0], s[0], qs[0], two ? ql[0] : NULL, dl[0], two ? qsl[0] : NULL);
        /* one level: within half a step of x; two levels: within half a residual step */
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float db = d[0][i / 32], v = db * q[0][i], step = db;
            if (two) v += dl[0][i / 32] * ql[0][i], step = dl[0][i / 32];
            if (fabsf(x[i] - v) > step * 0.5001f + fabsf(x[i]) * 1e-6f + 1e-30f) bad++;
        }
        CHECK_MSG(bad == 0, "two=%d: %d values off by more than half a step", two, bad);
        for (int k = 1; k < n_isas; k++) {
            isas[k]->quantize_row(x, n, q[1], d[1], s[1], qs[1], two ? ql[1] : NULL, dl[1], two ? qsl[1] : NULL);
            CHECK_MSG(memcmp(q[0], q[1], sizeof q[0]) == 0 && memcmp(d[0], d[1], sizeof d[0]) == 0 &&
                          memcmp(s[0], s[1], sizeof s[0]) == 0 &&
                          memcmp(qs[0], qs[1], sizeof qs[0]) == 0 &&
                          (!two || (memcmp(ql[0], ql[1], sizeof ql[0]) == 0 &&
                                    memcmp(dl[0], dl[1], sizeof dl[0]) == 0 &&
                                    memcmp(qsl[0], qsl[1], sizeof qsl[0]) == 0)),
                      "%s quantize_row (two=%d) differs from ref", isas[k]->name, two);
        }
    }
    free(x);
}

typedef struct {
    kvf_actbuf ab;
    kvf_act    act;
    float     *x;
} act_set;

static void make_act(act_set *a, int64_t n, int64_t n_in, int two) {
    a->x = malloc(sizeof(float) * (size_t)(n * n_in));
    rand_fill(a->x, n * n_in, 2.0f);
    kvf_actbuf_init(&a->ab, n, n_in);
    kvf_quantize_rows(NULL, &kvf_kernels_ref, a->x, n, n_in, n_in, two, &a->ab, &a->act);
}

static void free_act(act_set *a) {
    kvf_actbuf_free(&a->ab);
    free(a->x);
}

/* Blocks of random bytes (every code, every 6-bit scale and min, negative Q6_K scales, zero and
 * subnormal half scales; only infinite/NaN halves are made finite): packed rows equal the
 * reference dequantisation, every ISA's matmul (integer and float rows) is bit-identical to the
 * reference, and the panels take at most 3% more bytes than the GGUF blocks. */
static void test_pack_random_blocks(void) {
    static const struct {
        uint32_t type;
        int      f16[2]; /* byte offsets of half-precision fields in a block (-1: none) */
    } ts[] = {{KVF_TYPE_Q4_0, {0, -1}}, {KVF_TYPE_Q4_1, {0, 2}}, {KVF_TYPE_Q5_0, {0, -1}},
              {KVF_TYPE_Q5_1, {0, 2}},  {KVF_TYPE_Q8_0, {0, -1}}, {KVF_TYPE_Q4_K, {0, 2}},
              {KVF_TYPE_Q5_K, {0, 2}},  {KVF_TYPE_Q6_K, {208, -1}}};
    for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
        const kvf_quant_traits *qt = kvf_quant_get(ts[ti].type);
        int64_t  n_in = qt->block == 256 ? 768 : 224, n_out = 48, nblk = n_out * n_in / qt->block;
        uint8_t *w    = malloc((size_t)(nblk * qt->bytes));
        for (int64_t i = 0; i < nblk * qt->bytes; i++) w[i] = (uint8_t)(t_rand64() >> 24);
        for (int64_t b = 0; b < nblk; b++)
            for (int f = 0; f < 2; f++) {
                if (ts[ti].f16[f] < 0) continue;
                uint8_t *h = w + b * qt->bytes + ts[ti].f16[f];
                if ((h[1] & 0x7c) == 0x7c) h[1] &= 0xbf; /* exponent 31 -> 15 */
                if (b % 7 == 3) h[1] &= 0x83;            /* a subnormal or zero scale */
            }
        kvf_weight pw;
        CHECK_EQ(kvf_weight_pack_raw(ts[ti].type, w, n_out, n_in, NULL, 0, &pw), KVF_OK);
        int64_t packed = pw.n_panels * pw.panel_bytes, file = nblk * qt->bytes;
        CHECK_MSG(packed * 100 <= file * 103, "%s: panels take %lld bytes for %lld in the file",
                  qt->name, (long long)packed, (long long)file);
        float *a = malloc(sizeof(float) * (size_t)n_in), *b = malloc(sizeof(float) * (size_t)n_in);
        int    bad = 0;
        for (int64_t r = 0; r < n_out; r++) {
            kvf_dequantize(ts[ti].type, w + r * (n_in / qt->block * qt->bytes), a, n_in);
            kvf_weight_row(&pw, r, b);
            for (int64_t i = 0; i < n_in; i++) bad += a[i] != b[i];
        }
        CHECK_MSG(bad == 0, "%s: %d packed random-block weights differ from the reference", qt->name, bad);
        for (int mode = 0; mode < 3; mode++) { /* q8, q16, float rows */
            int64_t n = 5;
            act_set as;
            make_act(&as, n, n_in, mode == 1);
            kvf_act act = mode == 2 ? kvf_act_float(as.x, n_in, n_in) : as.act;
            size_t  ysz = sizeof(float) * (size_t)(n * n_out);
            float  *y0 = calloc(1, ysz), *y1 = calloc(1, ysz);
            kvf_matmul(NULL, &kvf_kernels_ref, &pw, &act, n, y0, n_out, 0);
            for (int k = 1; k < n_isas; k++) {
                kvf_matmul(NULL, isas[k], &pw, &act, n, y1, n_out, 0);
                int diff = 0;
                for (int64_t i = 0; i < n * n_out; i++) diff += memcmp(&y0[i], &y1[i], 4) != 0;
                CHECK_MSG(diff == 0, "%s %s random blocks mode %d: %d outputs differ", isas[k]->name,
                          qt->name, mode, diff);
            }
            free(y0), free(y1);
            free_act(&as);
        }
        free(a), free(b), free(w);
        kvf_weight_free(&pw);
    }
}

static void test_gemm_all_isas(void) {
    const int64_t ncols[] = {1, 3, 8, 13, 21};
    /* n_out 45: a last panel of 13 rows (both halves); 37: of 5 rows (one half) */
    for (int ti = 0; ti < 2 * N_TYPES; ti++) {
        uint32_t                type = k_types[ti / 2];
        const kvf_quant_traits *qt   = kvf_quant_get(type);
        int64_t                 n_in = qt->block == 256 ? 512 : 160, n_out = ti % 2 ? 37 : 45;
        uint8_t                *w    = make_weights(type, n_out, n_in);
        kvf_weight              pw;
        kvf_weight_pack_raw(type, w, n_out, n_in, NULL, 0, &pw);
        for (size_t ci = 0; ci < 2 * sizeof ncols / sizeof ncols[0]; ci++) {
            int64_t n = ncols[ci / 2], two = ci % 2;
            act_set a;
            make_act(&a, n, n_in, (int)two);
            size_t ysz = sizeof(float) * (size_t)(n * n_out);
            float *y0 = malloc(ysz), *y1 = malloc(ysz);
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                for (int64_t i = 0; i < n * n_out; i++) y0[i] = (float)(i % 11) * 0.25f;
                memcpy(y1, y0, ysz);
                kvf_matmul(NULL, &kvf_kernels_ref, &pw, &a.act, n, y0, n_out, accumulate);
                /* semantic check of the reference: float dot of dequantised operands */
                if (!accumulate) {
                    float *wr = malloc(sizeof(float) * (size_t)n_in);
                    double worst = 0;
                    for (int64_t r = 0; r < n_out; r++) {
                        kvf_weight_row(&pw, r, wr);
                        for (int64_t c = 0; c < n; c++) {
                            double dot = 0, mag = 0;
                            for (int64_t k = 0; k < n_in; k++) {
                                double db = a.act.d[c * (n_in / 32) + k / 32];
                                double xv = pw.kind == KVF_PANEL_F32
                                                ? (double)a.x[c * n_in + k]
                                                : db * a.act.q[c * n_in + k] +
                                                      (two ? (double)a.act.dl[c * (n_in / 32) + k / 32] *
                                                                 a.act.ql[c * n_in + k]
                                                           : 0.0);
                                dot += wr[k] * xv;
                                mag += fabs(wr[k] * xv);
                            }
                            double err = fabs(dot - y0[c * n_out + r]) / (mag + 1e-6);
                            if (err > worst) worst = err;
                        }
                    }
                    CHECK_MSG(worst < 1e-5, "%s n=%lld two=%d: ref matmul rel. error %.3g vs float dot",
                              qt->name, (long long)n, (int)two, worst);
                    free(wr);
                }
                for (int k = 1; k < n_isas; k++) {
                    float *y2 = malloc(ysz);
                    memcpy(y2, y1, ysz);
                    kvf_matmul(NULL, isas[k], &pw, &a.act, n, y2, n_out, accumulate);
                    int diff = 0;
                    for (int64_t i = 0; i < n * n_out; i++) diff += y2[i] != y0[i];
                    CHECK_MSG(diff == 0,
                              "%s %s n=%lld two=%d accumulate=%d: %d of %lld outputs differ",
                              isas[k]->name, qt->name, (long long)n, (int)two, accumulate, diff,
                              (long long)(n * n_out));
                    free(y2);
                }
            }
            free(y0), free(y1);
            free_act(&a);
        }
        kvf_weight_free(&pw);
        free(w);
    }
}

/* The float-activation path (gemm_f, kvf_act_float): every panel kind, odd n_out, odd row
 * counts on both sides of the micro-tile and pass sizes (6/12 rows, 96 rows), row lengths that
 * split into several decoded slices with a remainder (FT_KC = 256 inputs), a row stride
 * ldf != n_in, overwrite and accumulate: every ISA bit-identical to the reference, and the
 * reference within float rounding of a double dot product of dequantised weights and the
 * float rows. */
static void test_gemm_float_all_isas(void) {
    const int64_t ncols[] = {1, 5, 7, 13, 25, 100};
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t                type = k_types[ti];
        const kvf_quant_traits *qt   = kvf_quant_get(type);
        for (int si = 0; si < 2; si++) {
            int64_t n_in  = qt->block == 256 ? (si ? 768 : 256) : (si ? 608 : 160);
            int64_t n_out = si ? 45 : 19, ldf = n_in + 8;
            uint8_t   *w  = make_weights(type, n_out, n_in);
            kvf_weight pw;
            kvf_weight_pack_raw(type, w, n_out, n_in, NULL, 0, &pw);
            float *wr = malloc(sizeof(float) * (size_t)(n_out * n_in));
            for (int64_t r = 0; r < n_out; r++) kvf_weight_row(&pw, r, wr + r * n_in);
            for (size_t ci = 0; ci < sizeof ncols / sizeof ncols[0]; ci++) {
                int64_t n = ncols[ci];
                float  *x = malloc(sizeof(float) * (size_t)(n * ldf));
                rand_fill(x, n * ldf, 2.0f);
                kvf_act act  = kvf_act_float(x, n_in, ldf);
                size_t  ysz  = sizeof(float) * (size_t)(n * n_out);
                float  *y0 = malloc(ysz), *y1 = malloc(ysz), *y2 = malloc(ysz);
                for (int accumulate = 0; accumulate < 2; accumulate++) {
                    for (int64_t i = 0; i < n * n_out; i++) y0[i] = (float)(i % 11) * 0.25f;
                    memcpy(y1, y0, ysz);
                    kvf_matmul(NULL, &kvf_kernels_ref, &pw, &act, n, y0, n_out, accumulate);
                    if (!accumulate) {
                        double worst = 0;
                        for (int64_t r = 0; r < n_out; r++)
                            for (int64_t c = 0; c < n; c++) {
                                double dot = 0, mag = 0;
                                for (int64_t k = 0; k < n_in; k++) {
                                    double p = (double)wr[r * n_in + k] * x[c * ldf + k];
                                    dot += p, mag += fabs(p);
                                }
                                worst = fmax(worst, fabs(dot - y0[c * n_out + r]) / (mag + 1e-6));
                            }
                        CHECK_MSG(worst < 1e-5, "%s n_in=%lld n=%lld: float-row ref matmul rel. error %.3g",
                                  qt->name, (long long)n_in, (long long)n, worst);
                    }
                    for (int k = 1; k < n_isas; k++) {
                        memcpy(y2, y1, ysz);
                        kvf_matmul(NULL, isas[k], &pw, &act, n, y2, n_out, accumulate);
                        int diff = 0;
                        for (int64_t i = 0; i < n * n_out; i++) diff += y2[i] != y0[i];
                        CHECK_MSG(diff == 0,
                                  "%s gemm_f %s n_in=%lld n=%lld accumulate=%d: %d of %lld outputs differ",
                                  isas[k]->name, qt->name, (long long)n_in, (long long)n, accumulate,
                                  diff, (long long)(n * n_out));
                    }
                }
                free(y0), free(y1), free(y2), free(x);
            }
            free(wr), free(w);
            kvf_weight_free(&pw);
        }
    }
}

/* the float-row decision: only two-level batches of at least float_rows rows */
static void test_float_rows_policy(void) {
    for (int k = 0; k < n_isas; k++) {
        const kvf_kernels *K = isas[k];
        if (getenv("KVFUSE_FLOAT_ROWS")) break; /* overridden for the whole process */
        CHECK(!kvf_matmul_float_rows(K, 1, 1));
        CHECK(!kvf_matmul_float_rows(K, 1000, 0)); /* q8 stays int8 */
        CHECK_EQ(kvf_matmul_float_rows(K, 1000, 1), K->float_rows > 0);
        if (K->float_rows > 0) {
            CHECK(kvf_matmul_float_rows(K, K->float_rows, 1));
            CHECK(!kvf_matmul_float_rows(K, K->float_rows - 1, 1));
        }
    }
    /* kvf_prepare_rows: float rows describe x itself and carry no codes */
    float      x[2 * 64];
    kvf_actbuf ab;
    kvf_act    act;
    rand_fill(x, 128, 1.0f);
    kvf_actbuf_init(&ab, 2, 64);
    kvf_prepare_rows(NULL, &kvf_kernels_ref, x, 2, 64, 64, 1, &ab, &act);
    if (!getenv("KVFUSE_FLOAT_ROWS")) /* ref: never float rows */
        CHECK(act.q != NULL && act.ql != NULL && act.f == x);
    act = kvf_act_float(x, 64, 64);
    CHECK(act.q == NULL && act.f == x && act.ldf == 64 && act.n_in == 64);
    kvf_actbuf_free(&ab);
}

/* several weights in one region, writing into a wider output with an offset ldy */
static void test_matmul_multi_threads(void) {
    int64_t n_in = 256, n = 70;
    act_set a;
    make_act(&a, n, n_in, 1);
    uint32_t   types[3] = {KVF_TYPE_Q4_1, KVF_TYPE_Q8_0, KVF_TYPE_F16};
    int64_t    outs[3]  = {40, 16, 33};
    kvf_weight pw[3];
    uint8_t   *raw[3];
    for (int i = 0; i < 3; i++) {
        raw[i] = make_weights(types[i], outs[i], n_in);
        kvf_weight_pack_raw(types[i], raw[i], outs[i], n_in, NULL, 0, &pw[i]);
    }
    const kvf_kernels *K = kvf_kernels_select(NULL);
    int64_t            ld = 40 + 16 + 33;
    float             *ys[3];
    for (int t = 0; t < 3; t++) {
        kvf_pool *pool = NULL;
        if (t > 0) kvf_pool_new(t + 1, &pool);
        ys[t] = calloc((size_t)(n * ld), sizeof(float));
        kvf_mm mm[3] = {{&pw[0], ys[t], ld, 0}, {&pw[1], ys[t] + 40, ld, 0},
                        {&pw[2], ys[t] + 56, ld, 0}};
        kvf_matmul_multi(pool, K, mm, 3, &a.act, n);
        kvf_pool_free(pool);
    }
    CHECK(memcmp(ys[0], ys[1], sizeof(float) * (size_t)(n * ld)) == 0);
    CHECK(memcmp(ys[0], ys[2], sizeof(float) * (size_t)(n * ld)) == 0);
    /* and equal to three separate reference multiplies */
    float *yr = calloc((size_t)(n * ld), sizeof(float));
    for (int i = 0, off = 0; i < 3; off += (int)outs[i], i++)
        kvf_matmul(NULL, &kvf_kernels_ref, &pw[i], &a.act, n, yr + off, ld, 0);
    CHECK(memcmp(ys[0], yr, sizeof(float) * (size_t)(n * ld)) == 0);
    /* the same with float rows (gemm_f) */
    kvf_act fa = kvf_act_float(a.x, n_in, n_in);
    for (int t = 0; t < 3; t++) {
        kvf_pool *pool = NULL;
        if (t > 0) kvf_pool_new(t + 1, &pool);
        memset(ys[t], 0, sizeof(float) * (size_t)(n * ld));
        kvf_mm mm[3] = {{&pw[0], ys[t], ld, 0}, {&pw[1], ys[t] + 40, ld, 0},
                        {&pw[2], ys[t] + 56, ld, 0}};
        kvf_matmul_multi(pool, K, mm, 3, &fa, n);
        kvf_pool_free(pool);
    }
    CHECK(memcmp(ys[0], ys[1], sizeof(float) * (size_t)(n * ld)) == 0);
    CHECK(memcmp(ys[0], ys[2], sizeof(float) * (size_t)(n * ld)) == 0);
    for (int i = 0, off = 0; i < 3; off += (int)outs[i], i++)
        kvf_matmul(NULL, &kvf_kernels_ref, &pw[i], &fa, n, yr + off, ld, 0);
    CHECK(memcmp(ys[0], yr, sizeof(float) * (size_t)(n * ld)) == 0);
    for (int i = 0; i < 3; i++) kvf_weight_free(&pw[i]), free(raw[i]), free(ys[i]);
    free(yr);
    free_act(&a);
}

static void test_attention(void) {
    const int hds[]  = {32, 64, 128};
    const int Ms[]   = {1, 3, 7, 48, 64};
    const int ends[] = {1, 5, 63, 64, 65, 130, 300};
    for (size_t hi = 0; hi < 3; hi++) {
        int     hd = hds[hi];
        int64_t ldk = 320, cap = 320;
        float  *kt = kvf_alloc_aligned(sizeof(float) * (size_t)(hd * ldk));
        float  *v  = kvf_alloc_aligned(sizeof(float) * (size_t)(cap * hd));
        rand_fill(kt, hd * ldk, 1.0f);
        rand_fill(v, cap * hd, 1.0f);
        for (size_t mi = 0; mi < 5; mi++) {
            int     M = Ms[mi];
            float  *qb = malloc(sizeof(float) * (size_t)(M * hd));
            float  *ob[2];
            float  *qp[64], *op[2][64];
            int32_t kv_end[64];
            rand_fill(qb, M * hd, 1.5f);
            for (int k = 0; k < 2; k++) ob[k] = malloc(sizeof(float) * (size_t)(M * hd));
            for (int m = 0; m < M; m++) {
                qp[m]    = qb + m * hd;
                op[0][m] = ob[0] + m * hd;
                op[1][m] = ob[1] + m * hd;
                kv_end[m] = ends[(m + mi) % 7];
            }
            float *work = kvf_alloc_aligned(sizeof(float) * (size_t)kvf_attn_work_floats(M));
            float  scale = 1.0f / sqrtf((float)hd);
            kvf_kernels_ref.attn((const float *const *)qp, op[0], kv_end, M, kt, v, hd, scale,
                                 work);
            float state[2 * 64];
            memcpy(state, work + (int64_t)M * KVF_ATTN_BK, sizeof(float) * (size_t)(2 * M));
            for (int k = 1; k < n_isas; k++) {
                if (hd > 128 || (isas[k] == &kvf_kernels_avx2 && hd % 32)) continue;
                isas[k]->attn((const float *const *)qp, op[1], kv_end, M, kt, v, hd, scale, work);
                double worst = 0;
                for (int i = 0; i < M * hd; i++)
                    worst = fmax(worst, fabs(ob[0][i] - ob[1][i]));
                CHECK_MSG(worst < 2e-5, "%s attention hd=%d M=%d: max diff %.3g",
                          isas[k]->name, hd, M, worst);
                /* the softmax state (max, sum) that split-K merging reads */
                double wm = 0;
                for (int i = 0; i < 2 * M; i++)
                    wm = fmax(wm, fabs(state[i] - work[(int64_t)M * KVF_ATTN_BK + i]) / (1 + fabs(state[i])));
                CHECK_MSG(wm < 1e-5, "%s attention hd=%d M=%d: softmax state differs by %.3g",
                          isas[k]->name, hd, M, wm);
            }
            /* the reference against a direct double-precision softmax for one row */
            {
                int    m = M - 1, n = kv_end[m];
                double mx = -1e300, sum = 0, ref0 = 0;
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int i = 0; i < hd; i++) s += (double)qp[m][i] * kt[kvf_kt_idx(i, j, hd)];
                    mx = fmax(mx, s * scale);
                }
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int i = 0; i < hd; i++) s += (double)qp[m][i] * kt[kvf_kt_idx(i, j, hd)];
                    double p = exp(s * scale - mx);
                    sum += p;
                    ref0 += p * v[(int64_t)j * hd + 0];
                }
                CHECK_NEAR(op[0][m][0], ref0 / sum, 1e-5);
            }
            kvf_free_aligned(work);
            free(qb), free(ob[0]), free(ob[1]);
        }
        kvf_free_aligned(kt);
        kvf_free_aligned(v);
    }
}

/* the f16-cache attention: every kernel set agrees with the reference on the same halves, and
 * with the f32 attention on the converted values */
static void test_attention_f16(void) {
    int       hd = 64, M = 7;
    int64_t   ldk = 192;
    uint16_t *kt = kvf_alloc_aligned(2 * (size_t)(hd * ldk)), *v = kvf_alloc_aligned(2 * (size_t)(ldk * hd));
    float    *ktf = kvf_alloc_aligned(4 * (size_t)(hd * ldk)), *vf = kvf_alloc_aligned(4 * (size_t)(ldk * hd));
    for (int64_t i = 0; i < hd * ldk; i++) {
        kt[i]  = kvf_fp32_to_fp16(t_randf());
        v[i]   = kvf_fp32_to_fp16(t_randf());
        ktf[i] = kvf_fp16_to_fp32(kt[i]);
        vf[i]  = kvf_fp16_to_fp32(v[i]);
    }
    float   qb[7 * 64], o0[7 * 64], o1[7 * 64];
    float  *qp[7], *op0[7], *op1[7];
    int32_t end[7] = {1, 17, 64, 65, 100, 150, 190};
    for (int i = 0; i < 7 * 64; i++) qb[i] = t_randf();
    for (int m = 0; m < M; m++) qp[m] = qb + m * hd, op0[m] = o0 + m * hd, op1[m] = o1 + m * hd;
    float *work = kvf_alloc_aligned(sizeof(float) * (size_t)kvf_attn_work_floats(M));
    kvf_kernels_ref.attn((const float *const *)qp, op0, end, M, ktf, vf, hd, 0.125f, work);
    for (int k = 0; k < n_isas; k++) {
        isas[k]->attn_f16((const float *const *)qp, op1, end, M, kt, v, hd, 0.125f, work);
        double worst = 0;
        for (int i = 0; i < M * hd; i++) worst = fmax(worst, fabs(o0[i] - o1[i]));
        CHECK_MSG(worst < 2e-5, "%s attn_f16 differs from f32 attention on the same values by %.3g",
                  isas[k]->name, worst);
    }
    kvf_free_aligned(kt), kvf_free_aligned(v), kvf_free_aligned(ktf), kvf_free_aligned(vf);
    kvf_free_aligned(work);
}

/* huge scores must not overflow: the result is the value of the dominant key */
static void test_attention_large_logits(void) {
    int    hd = 64;
    float *kt = kvf_alloc_aligned(sizeof(float) * 64 * 128), *v = kvf_alloc_aligned(sizeof(float) * 128 * 64);
    float  q[64], o[64], *qp[1] = {q}, *op[1] = {o};
    for (int i = 0; i < 64; i++) q[i] = 100.0f;
    for (int j = 0; j < 70; j++)
        for (int i = 0; i < 64; i++) {
            kt[kvf_kt_idx(i, j, 64)] = j == 66 ? 10.0f : 1.0f;
            v[j * 64 + i]    = (float)j;
        }
    int32_t end  = 70;
    float  *work = kvf_alloc_aligned(sizeof(float) * (size_t)kvf_attn_work_floats(1));
    for (int k = 0; k < n_isas; k++) {
        isas[k]->attn((const float *const *)qp, op, &end, 1, kt, v, hd, 0.125f, work);
        CHECK_MSG(isfinite(o[0]) && fabsf(o[0] - 66.0f) < 1e-3f, "%s: %g", isas[k]->name, o[0]);
    }
    kvf_free_aligned(kt), kvf_free_aligned(v), kvf_free_aligned(work);
}

/* SALE's block estimate: every ISA returns exactly the reference's decision, which is checked
 * against the estimate computed here from the codes; thresholds sit just below and just above
 * each row's true maximum, and lim hides the maximum when it lies beyond the row's keys. */
static int est_expect(const int8_t *q, const uint8_t *k, const float *ks, const float *qs,
                      const float *t, const int32_t *lim, int M, int hd) {
    for (int m = 0; m < M; m++)
        for (int j = 0; j < lim[m] && j < KVF_ATTN_BK; j++) {
            int32_t dot = 0;
            for (int i = 0; i < hd; i++)
                dot += ((int32_t)k[(i / 4) * 256 + j * 4 + i % 4] - 128) * q[m * hd + i];
            if (((float)dot * ks[j]) * qs[m] > t[m]) return 1;
        }
    return 0;
}

static void test_attn_est(void) {
    static const int hds[] = {4, 16, 64, 128, 256};
    for (int hi = 0; hi < 5; hi++) {
        int      hd = hds[hi], M = 13;
        int8_t  *q  = malloc((size_t)(M * hd));
        uint8_t *k  = malloc((size_t)(64 * hd));
        float    ks[64], qs[13], t[13], best[13];
        int32_t  qsum[13], lim[13], arg[13];
        for (int i = 0; i < 64 * hd; i++) k[i] = (uint8_t)(1 + (t_rand64() % 255)); /* codes -127..127 */
        for (int j = 0; j < 64; j++) ks[j] = 0.001f + t_randf() * t_randf();
        for (int m = 0; m < M; m++) {
            qsum[m] = 0;
            for (int i = 0; i < hd; i++) q[m * hd + i] = (int8_t)((int)(t_rand64() % 127) - 63), qsum[m] += q[m * hd + i];
            qs[m] = 0.01f + fabsf(t_randf());
            best[m] = -INFINITY, arg[m] = 0;
            for (int j = 0; j < 64; j++) {
                int32_t dot = 0;
                for (int i = 0; i < hd; i++)
                    dot += ((int32_t)k[(i / 4) * 256 + j * 4 + i % 4] - 128) * q[m * hd + i];
                float e = ((float)dot * ks[j]) * qs[m];
                if (e > best[m]) best[m] = e, arg[m] = j;
            }
        }
        for (int trial = 0; trial < 200; trial++) {
            int hot = trial % M; /* the one row that may fire */
            for (int m = 0; m < M; m++) {
                t[m]   = best[m] + 1.0f + fabsf(best[m]); /* above every estimate */
                lim[m] = (trial / M) % 3 == 0 ? 64 : (int32_t)(t_rand64() % 70) - 3;
            }
            t[hot] = trial % 2 ? nextafterf(best[hot], -INFINITY) : best[hot];
            int want = est_expect(q, k, ks, qs, t, lim, M, hd);
            CHECK_EQ(want, trial % 2 && lim[hot] > arg[hot]);
            for (int c = 0; c < n_isas; c++) {
                int got = isas[c]->attn_est(q, qsum, qs, t, lim, M, k, ks, hd);
                CHECK_MSG(got == want, "%s attn_est hd %d trial %d: %d, want %d", isas[c]->name, hd,
                          trial, got, want);
            }
        }
        free(q), free(k);
    }
}

static void test_small_ops(void) {
    int64_t n = 1000 + 7;
    float  *x = malloc(sizeof(float) * (size_t)n), *w = malloc(sizeof(float) * (size_t)n);
    float  *y0 = malloc(sizeof(float) * (size_t)n), *y1 = malloc(sizeof(float) * (size_t)n);
    rand_fill(x, n, 4.0f);
    rand_fill(w, n, 1.0f);
    x[3] = -30.0f, x[4] = 30.0f, x[5] = -100.0f; /* silu tails */
    kvf_kernels_ref.rmsnorm(x, w, y0, n, 1e-5f);
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    CHECK_NEAR(y0[10], x[10] / sqrt(ss / (double)n + 1e-5) * w[10], 1e-5);
    for (int k = 1; k < n_isas; k++) {
        isas[k]->rmsnorm(x, w, y1, n, 1e-5f);
        double worst = 0;
        /* relative: the outputs reach ~25 here, and the sums of squares differ in order */
        for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(y0[i] - y1[i]) / fmax(1.0, fabs(y0[i])));
        CHECK_MSG(worst < 1e-5, "%s rmsnorm rel. diff %.3g", isas[k]->name, worst);
    }
    kvf_kernels_ref.swiglu(x, w, y0, n);
    CHECK_NEAR(y0[4], 30.0 / (1.0 + exp(-30.0)) * w[4], 1e-4);
    CHECK_NEAR(y0[5], 0.0, 1e-30);
    for (int k = 1; k < n_isas; k++) {
        isas[k]->swiglu(x, w, y1, n);
        double worst = 0;
        for (int64_t i = 0; i < n; i++)
            worst = fmax(worst, fabs(y0[i] - y1[i]) / (fabs(y0[i]) + 1e-6));
        CHECK_MSG(worst < 1e-5, "%s swiglu rel diff %.3g", isas[k]->name, worst);
    }
    free(x), free(w), free(y0), free(y1);
}

#define POOL_ITEMS 97

typedef struct {
    atomic_int_fast64_t next;
    atomic_int          done[POOL_ITEMS];
    atomic_int          bad_ith, entries[8];
} pool_ctx;

static void pool_task(void *p, int ith, int nth) {
    pool_ctx *c = p;
    if (ith < 0 || ith >= nth) atomic_fetch_add(&c->bad_ith, 1);
    else atomic_fetch_add(&c->entries[ith], 1);
    for (int64_t it; (it = kvf_claim(&c->next, POOL_ITEMS)) >= 0;) atomic_fetch_add(&c->done[it], 1);
}

/* every item of every region is done exactly once, each thread joins a region at most once */
static void test_threadpool(void) {
    for (int nt = 1; nt <= 4; nt++) {
        kvf_pool *pool;
        CHECK_EQ(kvf_pool_new(nt, &pool), KVF_OK);
        CHECK_EQ(kvf_pool_size(pool), nt);
        int wrong = 0, bad = 0, multi = 0;
        for (int r = 0; r < 3000; r++) {
            pool_ctx c;
            memset(&c, 0, sizeof c);
            atomic_init(&c.next, 0);
            kvf_pool_run(pool, pool_task, &c);
            for (int i = 0; i < POOL_ITEMS; i++) wrong += atomic_load(&c.done[i]) != 1;
            bad += atomic_load(&c.bad_ith);
            for (int i = 0; i < 8; i++) multi += atomic_load(&c.entries[i]) > 1;
            if (atomic_load(&c.entries[0]) != 1) multi++;
        }
        CHECK_MSG(wrong == 0, "%d items not done exactly once (%d threads)", wrong, nt);
        CHECK_EQ(bad, 0);
        CHECK_EQ(multi, 0);
        kvf_pool_free(pool);
    }
    kvf_pool_free(NULL);
}

/* half-precision conversions: every half value, and floats around every rounding case */
static void test_f16(void) {
    uint16_t *h  = malloc(sizeof(uint16_t) * 65536), *h2 = malloc(sizeof(uint16_t) * 65536);
    float    *f0 = malloc(sizeof(float) * 65536), *f1 = malloc(sizeof(float) * 65536);
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    kvf_kernels_ref.f16_to_f32(h, f0, 65536);
    for (int k = 1; k < n_isas; k++) {
        isas[k]->f16_to_f32(h, f1, 65536);
        int bad = 0;
        for (int i = 0; i < 65536; i++) bad += memcmp(&f0[i], &f1[i], 4) != 0 && !(isnan(f0[i]) && isnan(f1[i]));
        CHECK_MSG(bad == 0, "%s f16_to_f32: %d values differ", isas[k]->name, bad);
    }
    /* floats: random magnitudes across the half range, ties, subnormals, overflow, inf */
    for (int i = 0; i < 65536; i++) {
        float v = ldexpf(t_randf(), (int)(t_rand64() % 48) - 30);
        if (i % 7 == 0) v = f0[(i * 31) % 65536] + ldexpf(1.0f, -11) * f0[(i * 31) % 65536] * 0.5f;
        if (isnan(v)) v = 1.0f;
        f1[i] = v;
    }
    f1[0] = 0.0f, f1[1] = -0.0f, f1[2] = 65504.0f, f1[3] = 65520.0f, f1[4] = 1e9f, f1[5] = -INFINITY;
    f1[6] = 5.96e-8f, f1[7] = 2.98e-8f, f1[8] = 1e-10f;
    kvf_kernels_ref.f32_to_f16(f1, h, 65536);
    for (int k = 1; k < n_isas; k++) {
        isas[k]->f32_to_f16(f1, h2, 65536);
        int bad = 0;
        for (int i = 0; i < 65536; i++) bad += h[i] != h2[i];
        CHECK_MSG(bad == 0, "%s f32_to_f16: %d values differ", isas[k]->name, bad);
    }
    CHECK_EQ(h[2], 0x7bff);
    CHECK_EQ(h[3], 0x7c00); /* rounds to infinity */
    free(h), free(h2), free(f0), free(f1);
}

static void test_select(void) {
    CHECK(kvf_kernels_select("ref") == &kvf_kernels_ref);
    CHECK(kvf_kernels_select("bogus") == NULL);
    CHECK_CONTAINS(kvf_errmsg(), "bogus");
    CHECK(kvf_kernels_select(NULL) != NULL);
}

int main(void) {
    pick_isas();
    RUN(test_select);
    RUN(test_pack_roundtrip);
    RUN(test_pack_random_blocks);
    RUN(test_pack_errors);
    RUN(test_quantize_row);
    RUN(test_gemm_all_isas);
    RUN(test_gemm_float_all_isas);
    RUN(test_float_rows_policy);
    RUN(test_matmul_multi_threads);
    RUN(test_attention);
    RUN(test_attention_large_logits);
    RUN(test_attention_f16);
    RUN(test_attn_est);
    RUN(test_small_ops);
    RUN(test_threadpool);
    RUN(test_f16);
    return TEST_REPORT();
}
