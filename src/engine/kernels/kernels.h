/* kernels.h - the compute kernels, one table per instruction set.
 *
 * Every table has the same entries: the reference table (kernels_ref.c, portable scalar C) is
 * the specification; kernels_avx2.c and kernels_avx512.c are fast versions of the same
 * functions, selected at run time (kvf_kernels_select) and tested against the reference.
 *
 * Weight panels: 16 rows x 32 inputs per block, one panel kind per GGUF type, layouts in
 * panel.h. Every integer kind decodes to weight(r, k) = scale(r, k) * code(r, k) + min(r, k),
 * scale and min computed from the stored fields exactly as kvf_panel_scale_min() does.
 * The 4-byte groups (4 inputs of one row) match VNNI's vpdpbusd: one broadcast of 4 activation
 * bytes against 16 rows at once.
 *
 * Activations for the integer panels are quantised per row (kvf_act) in blocks of 32:
 *   q[n_in] int8 codes, d[n_in/32] scales (d = max|x| / 127), qsum[n_in/16] sums of 16 codes;
 * and, in two-level mode (ql != NULL), the rounding residual quantised again:
 *   ql[n_in] int8 codes of x - d*q with scale dl = d / 254, qsuml[n_in/16] their sums;
 * so x ~= d*q + dl*ql (about 15 significant bits instead of 8). s16[n_in/16] is the scaled sum
 * of the dequantised activations of 16 inputs (d*sum(q) + dl*sum(ql)). For one panel block
 * and row r, with the integer dot products isum = sum_k code(r,k) q(k) and isuml (exact):
 *   acc = fmaf((float)isum, scale[r] * d, acc);
 *   acc = fmaf((float)isuml, scale[r] * dl, acc);        (two-level mode only; dl = d / 254
 *                                                          as stored by the quantiser)
 *   acc = fmaf(min[r], s16[0] + s16[1], acc);
 * (Q6_K panels: the same per 16-input half h, with s16[h] in the last step). Every kernel table performs exactly these float
 * operations in this order, so all instruction sets give bit-identical matmul results.
 * F32 panels: acc = fmaf(w(r,k), x(k), acc) for k in order.
 *
 * Float-activation GEMM (gemm_f; used when kvf_act.q == NULL: batches of many rows in q16 on
 * CPUs whose int8 products are slow, see kvf_matmul_float_rows in matmul.h). Integer panels
 * are decoded to floats and multiplied with the float rows x->f like F32 panels:
 *   w(r,k) = fmaf(scale[r], (float)code(r,k), min[r])      (Q6_K: scale and min of k's half;
 *                                                           unsigned kinds: the stored code)
 *   acc = 0;  acc = fmaf(w(r,k), x(k), acc) for k in order; y = acc (or y += acc)
 * (F32 panels: w(r,k) is the stored float; gemm_f[F32] == gemm[F32]). The fast versions decode
 * a slice of a panel once into a float tile and reuse it for many activation rows with a
 * register-blocked FMA micro-kernel; the operation order per output is the same, so every
 * instruction set is bit-identical here too.
 */
#ifndef KVF_KERNELS_H
#define KVF_KERNELS_H

#include <stdint.h>

#include "engine/quant.h"

#define KVF_PANEL_ROWS 16

/* A batch of input rows for a matmul. Integer panels read q/d/s16 (or, when q == NULL, the
 * float rows f through gemm_f); F32 panels read f. */
typedef struct kvf_act {
    int64_t      n_in;
    int8_t      *q;   /* [rows][n_in] */
    float       *d;   /* [rows][n_in/32] */
    float       *s16;   /* [rows][n_in/16] */
    int32_t     *qsum;  /* [rows][n_in/16] */
    int8_t      *ql;    /* [rows][n_in] residual codes, or NULL (one-level) */
    float       *dl;    /* [rows][n_in/32] residual scales d / 254 */
    int32_t     *qsuml; /* [rows][n_in/16] */
    const float *f;   /* [rows][ldf] */
    int64_t      ldf;
} kvf_act;

/* y[c * ldy + r] (+)= sum_k W(r, k) * x_c(k) for the panel's rows r < nr and columns
 * c in [c0, c0 + nc); `panel` points at the panel's first block, nb = n_in / 32.
 * accumulate != 0 adds to y instead of overwriting it. */
typedef void (*kvf_gemm_fn)(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,
                            int64_t nc, float *y, int64_t ldy, int nr, int accumulate);

/* Attention of M query vectors against one KV head of a cache (exact softmax):
 *   o_m = sum_{j < kv_end[m]} softmax_j(scale * q_m . k_j) v_j
 * q[m] and o[m] point at head_dim floats; kt is the head's keys in tiles of KVF_ATTN_BK cells
 * (kt[kvf_kt_idx(i, j, head_dim)] = component i of key j, see below); v[j * head_dim + i]. kv_end[m] >= 1. `work` (64-byte aligned) has
 * room for kvf_attn_work_floats(M) floats. On return work[M*KVF_ATTN_BK + m] holds row m's
 * maximum score and work[M*KVF_ATTN_BK + M + m] the sum of exp(score - maximum): the softmax
 * state that split-K decoding merges across key chunks. */
typedef void (*kvf_attn_fn)(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                            const float *kt, const float *v, int head_dim,
                            float scale, float *work);
/* The same with keys and values stored as IEEE halves (f16 KV cache). */
typedef void (*kvf_attn_f16_fn)(const float *const *q, float *const *o, const int32_t *kv_end,
                                int M, const uint16_t *kt, const uint16_t *v,
                                int head_dim, float scale, float *work);
#define KVF_ATTN_BK 64 /* keys per block */
#define KVF_ATTN_MAX_M 64
/* Keys of a KV head are stored in tiles of KVF_ATTN_BK cells: tile t holds keys 64t..64t+63
 * as [head_dim][64], so a tile is contiguous (16 KiB for head_dim 64 in f32): attention reads
 * it as one stream, and a demand-paged cache commits keys 64 cells at a time. */
static inline int64_t kvf_kt_idx(int64_t i, int64_t j, int64_t head_dim) {
    return ((j / KVF_ATTN_BK) * head_dim + i) * KVF_ATTN_BK + j % KVF_ATTN_BK;
}
static inline int64_t kvf_attn_work_floats(int M) {
    return (int64_t)M * (KVF_ATTN_BK + 4) + 64;
}

/* SALE's block estimate (sparse prefill attention, forward.c). One block of 64 keys quantised
 * to 8 bits: k[(i / 4) * 256 + j * 4 + i % 4] = code(j, i) + 128 for key j and component i
 * (codes in [-127, 127]; the 4-byte groups of 4 components match vpdpbusd), ks[j] its scale.
 * M query vectors q[m * hd + i] with codes in [-63, 63], so that an unsigned x signed byte
 * pair sums within int16 on AVX2 (vpmaddubsw); qsum[m] = sum_i q[m * hd + i]. With the exact
 *   acc(m, j) = sum_i (code(j, i) + 128) * q(m, i) - 128 * qsum[m]
 * it returns 1 if ((float)acc(m, j) * ks[j]) * qs[m] > t[m] for some m and some j < lim[m]
 * (rows with lim[m] <= 0 take no part), else 0. hd is a multiple of 4 (at most 256). Every
 * table performs these operations exactly, so the blocks chosen are the same on every ISA. */
typedef int (*kvf_attn_est_fn)(const int8_t *q, const int32_t *qsum, const float *qs,
                               const float *t, const int32_t *lim, int M, const uint8_t *k,
                               const float *ks, int hd);

typedef struct kvf_kernels {
    const char *name;
    kvf_gemm_fn gemm[KVF_PANEL_KINDS];   /* indexed by kvf_panel_kind; integer panels read x->q etc. */
    kvf_gemm_fn gemm_f[KVF_PANEL_KINDS]; /* the same weights times the float rows x->f (see above) */
    /* q16 batches of at least this many rows use gemm_f (0: never); see matmul.h */
    int         float_rows;
    /* Quantise one row of n (multiple of 32) floats: see kvf_quantize_row_q8_ref. */
    void (*quantize_row)(const float *x, int64_t n, int8_t *q, float *d, float *s16,
                         int32_t *qsum, int8_t *ql, float *dl, int32_t *qsuml);
    kvf_attn_fn     attn;
    kvf_attn_f16_fn attn_f16;
    kvf_attn_est_fn attn_est;
    /* y = x / sqrt(mean(x^2) + eps) * w */
    void (*rmsnorm)(const float *x, const float *w, float *y, int64_t n, float eps);
    /* out[i] = silu(g[i]) * u[i] */
    void (*swiglu)(const float *g, const float *u, float *out, int64_t n);
    /* y[i] += a * x[i] */
    void (*axpy)(float a, const float *x, float *y, int64_t n);
    /* IEEE half <-> float, round to nearest even (identical in every table) */
    void (*f16_to_f32)(const uint16_t *src, float *dst, int64_t n);
    void (*f32_to_f16)(const float *src, uint16_t *dst, int64_t n);
} kvf_kernels;

extern const kvf_kernels kvf_kernels_ref;
extern const kvf_kernels kvf_kernels_avx2;
extern const kvf_kernels kvf_kernels_avx512;

/* Pick a kernel table: NULL/"auto" = best supported by this CPU (overridable with the
 * KVFUSE_ISA environment variable), or "ref", "avx2", "avx512". NULL (message set) if the
 * requested set is unknown or this CPU lacks it. */
const kvf_kernels *kvf_kernels_select(const char *isa);
/* 1 if this CPU can run the named set. */
int kvf_kernels_supported(const char *isa);

#endif /* KVF_KERNELS_H */
