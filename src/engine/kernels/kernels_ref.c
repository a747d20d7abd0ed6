/* kernels_ref.c - the portable scalar kernels: the specification every SIMD table must match
 * (matmuls bit for bit, the rest within float tolerance) and the fallback on any CPU. */
#include "engine/kernels/kernels.h"
#include "engine/kernels/panel.h"
#include "common.h"

#include <math.h>
#include <string.h>

/* ---- matmul panels --------------------------------------------------------------------- */

static inline void store_row(float *y, int64_t c, int64_t ldy, int r, float v, int accumulate) {
    float *p = y + c * ldy + r;
    *p       = accumulate ? *p + v : v;
}

/* One integer panel kind (layouts and the scale/min arithmetic: panel.h). */
static void gemm_int_ref(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,
                         int64_t nc, float *y, int64_t ldy, int nr, int accumulate,
                         kvf_panel_kind kind) {
    const int64_t K    = x->n_in;
    const int     sub  = kvf_panel_sub(kind);
    const int     nsub = KVF_QK / sub;
    for (int64_t c = c0; c < c0 + nc; c++) {
        const int8_t *xq = x->q + c * K, *xl = x->ql ? x->ql + c * K : NULL;
        const float  *xd = x->d + c * (K / KVF_QK), *xs = x->s16 + c * (K / 16);
        for (int r = 0; r < nr; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = kvf_panel_blk(panel, b, kind), *head = kvf_panel_head(panel, b, kind);
                float          dl  = xl ? x->dl[c * (K / KVF_QK) + b] : 0.0f;
                for (int h = 0; h < nsub; h++) {
                    int32_t isum = 0, isuml = 0;
                    for (int k = h * sub; k < (h + 1) * sub; k++) {
                        int code = kvf_panel_code(blk, kind, r, k);
                        isum += code * xq[b * KVF_QK + k];
                        if (xl) isuml += code * xl[b * KVF_QK + k];
                    }
                    float sc, mn;
                    kvf_panel_scale_min(blk, head, kind, r, h, &sc, &mn);
                    acc = fmaf((float)isum, sc * xd[b], acc);
                    if (xl) acc = fmaf((float)isuml, sc * dl, acc);
                    acc = fmaf(mn, nsub == 2 ? xs[2 * b + h] : xs[2 * b] + xs[2 * b + 1], acc);
                }
            }
            store_row(y, c, ldy, r, acc, accumulate);
        }
    }
}

static void gemm_f32_ref(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,
                         int64_t nc, float *y, int64_t ldy, int nr, int accumulate) {
    for (int64_t c = c0; c < c0 + nc; c++) {
        const float *xf = x->f + c * x->ldf;
        for (int r = 0; r < nr; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const float *w = (const float *)(panel + b * 2048);
                for (int k = 0; k < KVF_QK; k++)
                    acc = fmaf(w[k * KVF_PANEL_ROWS + r], xf[b * KVF_QK + k], acc);
            }
            store_row(y, c, ldy, r, acc, accumulate);
        }
    }
}

/* Float-activation GEMM of an integer panel (kernels.h): each weight decoded with one fmaf,
 * then acc = fmaf(w, x, acc) in input order. */
static void gemm_f_int_ref(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,
                           int64_t nc, float *y, int64_t ldy, int nr, int accumulate,
                           kvf_panel_kind kind) {
    for (int64_t c = c0; c < c0 + nc; c++) {
        const float *xf = x->f + c * x->ldf;
        for (int r = 0; r < nr; r++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = kvf_panel_blk(panel, b, kind), *head = kvf_panel_head(panel, b, kind);
                for (int k = 0; k < KVF_QK; k++) {
                    float sc, mn;
                    kvf_panel_scale_min(blk, head, kind, r, k / 16, &sc, &mn);
                    float w = fmaf(sc, (float)kvf_panel_code(blk, kind, r, k), mn);
                    acc     = fmaf(w, xf[b * KVF_QK + k], acc);
                }
            }
            store_row(y, c, ldy, r, acc, accumulate);
        }
    }
}

#define REF_KIND(T)                                                                            \
    static void gemm_##T##_ref(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0, \
                               int64_t nc, float *y, int64_t ldy, int nr, int accumulate) {    \
        gemm_int_ref(panel, nb, x, c0, nc, y, ldy, nr, accumulate, KVF_PANEL_##T);             \
    }                                                                                          \
    static void gemm_f_##T##_ref(const uint8_t *panel, int64_t nb, const kvf_act *x,           \
                                 int64_t c0, int64_t nc, float *y, int64_t ldy, int nr,        \
                                 int accumulate) {                                             \
        gemm_f_int_ref(panel, nb, x, c0, nc, y, ldy, nr, accumulate, KVF_PANEL_##T);           \
    }
KVF_INT_PANELS(REF_KIND)
#undef REF_KIND
#define GEMM_ENTRY(T)   [KVF_PANEL_##T] = gemm_##T##_ref,
#define GEMM_F_ENTRY(T) [KVF_PANEL_##T] = gemm_f_##T##_ref,

/* ---- attention ------------------------------------------------------------------------- */

/* Two passes per query: scores and max, then exp-weighted sum of values. Keys and values are
 * read through ld() so f32 and f16 caches share the code. */
static inline float ld_kv(const void *p, int64_t i, int f16) {
    return f16 ? kvf_fp16_to_fp32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static void attn_ref_impl(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                          const void *kt, const void *v, int hd, float scale,
                          int f16, float *work) {
    float *mrow = work + (int64_t)M * KVF_ATTN_BK, *lrow = mrow + M;
    for (int m = 0; m < M; m++) {
        int   n  = kv_end[m];
        float mx = -INFINITY;
        /* first pass: the maximum score (scores are recomputed in the second pass) */
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += q[m][i] * ld_kv(kt, kvf_kt_idx(i, j, hd), f16);
            s *= scale;
            if (s > mx) mx = s;
        }
        float sum = 0.0f;
        float acc[256];
        KVF_ASSERT(hd <= 256);
        memset(acc, 0, sizeof(float) * (size_t)hd);
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int i = 0; i < hd; i++) s += q[m][i] * ld_kv(kt, kvf_kt_idx(i, j, hd), f16);
            float p = expf(s * scale - mx);
            sum += p;
            for (int i = 0; i < hd; i++) acc[i] += p * ld_kv(v, (int64_t)j * hd + i, f16);
        }
        for (int i = 0; i < hd; i++) o[m][i] = acc[i] / sum;
        mrow[m] = mx;
        lrow[m] = sum;
    }
}

static void attn_ref(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                     const float *kt, const float *v, int hd, float scale,
                     float *work) {
    attn_ref_impl(q, o, kv_end, M, kt, v, hd, scale, 0, work);
}

static void attn_f16_ref(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                         const uint16_t *kt, const uint16_t *v, int hd, float scale,
                         float *work) {
    attn_ref_impl(q, o, kv_end, M, kt, v, hd, scale, 1, work);
}

static int attn_est_ref(const int8_t *q, const int32_t *qsum, const float *qs, const float *t,
                        const int32_t *lim, int M, const uint8_t *k, const float *ks, int hd) {
    for (int m = 0; m < M; m++)
        for (int j = 0; j < lim[m] && j < KVF_ATTN_BK; j++) {
            int32_t acc = 0;
            for (int i = 0; i < hd; i++)
                acc += (int32_t)k[(i / 4) * 4 * KVF_ATTN_BK + j * 4 + i % 4] * q[(int64_t)m * hd + i];
            acc -= 128 * qsum[m];
            if (((float)acc * ks[j]) * qs[m] > t[m]) return 1;
        }
    return 0;
}

/* ---- small ops ------------------------------------------------------------------------- */

static void rmsnorm_ref(const float *x, const float *w, float *y, int64_t n, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * r * w[i];
}

static void swiglu_ref(const float *g, const float *u, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void axpy_ref(float a, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void f16_to_f32_ref(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = kvf_fp16_to_fp32(src[i]);
}

static void f32_to_f16_ref(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = kvf_fp32_to_fp16(src[i]);
}

const kvf_kernels kvf_kernels_ref = {
    .name         = "ref",
    .gemm         = {KVF_INT_PANELS(GEMM_ENTRY)[KVF_PANEL_F32] = gemm_f32_ref},
    .gemm_f       = {KVF_INT_PANELS(GEMM_F_ENTRY)[KVF_PANEL_F32] = gemm_f32_ref},
    .float_rows   = 0, /* the portable fallback keeps the integer path */
    .quantize_row = kvf_quantize_row_q8_ref,
    .attn         = attn_ref,
    .attn_f16     = attn_f16_ref,
    .attn_est     = attn_est_ref,
    .rmsnorm      = rmsnorm_ref,
    .swiglu       = swiglu_ref,
    .axpy         = axpy_ref,
    .f16_to_f32   = f16_to_f32_ref,
    .f32_to_f16   = f32_to_f16_ref,
};
