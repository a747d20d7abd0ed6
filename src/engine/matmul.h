/* matmul.h - weight matrices in panel form and the threaded matrix multiply.
 *
 * kvf_weight_pack() turns a GGUF tensor W[n_out][n_in] of any supported type into 16-row
 * panels (see kernels.h) once, at model load. kvf_matmul() computes Y[n][n_out] = X[n][n_in] W^T
 * for a batch of rows: the same kernel serves prefill (many rows) and decode (one row).
 * Work is split into fixed items (groups of panels x groups of rows), so every output element
 * is computed by exactly one thread in a fixed order: results do not depend on thread count.
 */
#ifndef KVF_MATMUL_H
#define KVF_MATMUL_H

#include "engine/gguf.h"
#include "engine/kernels/kernels.h"
#include "engine/threadpool.h"

typedef struct kvf_weight {
    kvf_panel_kind kind;
    uint32_t       src_type; /* GGUF type it was packed from */
    int64_t        n_out, n_in;
    int64_t        n_panels;
    int64_t        panel_bytes;
    uint8_t       *data; /* owned, 64-byte aligned: n_panels * panel_bytes */
} kvf_weight;

/* Pack tensor t (2-D, ne[0] = n_in, ne[1] = n_out). n_in must be a multiple of 32.
 * force_f32 dequantises into float panels (exact float arithmetic with float activations:
 * slower and 4-8x larger, for checking against references). KVF_E_UNSUPPORTED for types
 * without a decoder; KVF_E_FORMAT for bad shapes. Uses the pool (may be NULL) to pack in
 * parallel. */
kvf_status kvf_weight_pack(const gguf_tensor *t, kvf_pool *pool, int force_f32, kvf_weight *out);
/* Same from raw rows of `type` (n_out rows of n_in elements). */
kvf_status kvf_weight_pack_raw(uint32_t type, const void *data, int64_t n_out, int64_t n_in,
                               kvf_pool *pool, int force_f32, kvf_weight *out);
void kvf_weight_free(kvf_weight *w);
/* Row r of the packed matrix back to floats (the packing's exact inverse of decoding). */
void kvf_weight_row(const kvf_weight *w, int64_t r, float *out);

/* Quantised activation rows: buffers sized for up to max_rows rows of n_in (owned; one
 * demand-paged reservation, map). kvf_actbuf_discard returns their memory between batches
 * (contents are lost). */
typedef struct kvf_actbuf {
    int64_t max_rows, max_in;
    int8_t  *q, *ql;
    float   *d, *dl, *s16;
    int32_t *qsum, *qsuml;
    void    *map;
    size_t   map_bytes;
} kvf_actbuf;
kvf_status kvf_actbuf_init(kvf_actbuf *a, int64_t max_rows, int64_t max_in);
void       kvf_actbuf_discard(kvf_actbuf *a);
void       kvf_actbuf_free(kvf_actbuf *a);

/* Quantise n rows x[i * ldx .. + n_in) into `a` (in parallel) and describe them in *act;
 * two_level adds the residual codes (see kernels.h). */
void kvf_quantize_rows(kvf_pool *pool, const kvf_kernels *K, const float *x, int64_t n,
                       int64_t n_in, int64_t ldx, int two_level, kvf_actbuf *a, kvf_act *act);
/* View of rows already quantised into `a` (row length n_in), with float rows f for F32 panels. */
kvf_act kvf_act_view(const kvf_actbuf *a, int64_t n_in, int two_level, const float *f, int64_t ldf);
/* Float rows only (q == NULL): every weight is multiplied through the kernels' gemm_f. */
kvf_act kvf_act_float(const float *f, int64_t n_in, int64_t ldf);

/* Whether a batch of n rows should enter the matmuls as float rows (kvf_act_float, no
 * activation quantisation) instead of quantised ones. Yes for two-level (q16) batches of at
 * least K->float_rows rows: on CPUs without VNNI a q16 product is two int8 product chains,
 * while decoding a panel slice to floats once and reusing it across many rows keeps the FMA
 * units busy (and is more exact: float activations). So in q16 prefill (many rows) and decode
 * (few rows) use different arithmetic; both stay within q16's tolerance of f32. q8 always
 * stays int8 (llama.cpp's scheme). The environment variable KVFUSE_FLOAT_ROWS=N overrides the
 * threshold for every kernel set (0 = never; read once). */
int kvf_matmul_float_rows(const kvf_kernels *K, int64_t n, int two_level);
/* Quantise rows like kvf_quantize_rows, or describe them as float rows when
 * kvf_matmul_float_rows says so. */
void kvf_prepare_rows(kvf_pool *pool, const kvf_kernels *K, const float *x, int64_t n,
                      int64_t n_in, int64_t ldx, int two_level, kvf_actbuf *a, kvf_act *act);

/* One multiply in a kvf_matmul_multi call. */
typedef struct kvf_mm {
    const kvf_weight *w;
    float            *y; /* [n][ldy] */
    int64_t           ldy;
    int               accumulate;
} kvf_mm;

/* Y_i (+)= X W_i^T for several weights sharing the same input rows (e.g. Q, K, V), in one
 * parallel region. `x` must carry the quantised rows if any weight has an integer panel kind
 * (or be float rows: x->q == NULL, see kvf_act_float) and the float rows (x->f) if any has
 * F32 panels. */
void kvf_matmul_multi(kvf_pool *pool, const kvf_kernels *K, const kvf_mm *mm, int n_mm,
                      const kvf_act *x, int64_t n);
void kvf_matmul(kvf_pool *pool, const kvf_kernels *K, const kvf_weight *w, const kvf_act *x,
                int64_t n, float *y, int64_t ldy, int accumulate);

#endif /* KVF_MATMUL_H */
