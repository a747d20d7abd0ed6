/* quant.h - weight types: block decoding, reference dequantisation, activation quantisation.
 *
 * Every supported quantised type decodes a block into small integer codes with an affine
 * parameter pair per sub-block:  value[i] = scale[i / sub] * code[i] + min[i / sub].
 * That one decoder is used twice: by the reference dequantiser (bit-exact with the `gguf`
 * Python package) and by the repacker (matmul.c) that builds the interleaved panels the SIMD
 * kernels read. So the fast path and the reference cannot disagree on the format.
 *
 * Activations are quantised per 32 values to int8 with a float scale (kvf_quantize_row_q8):
 * the integer kernels compute  sum_i w_i * a_i  as  scale_w*d_a*sum(code*q) + min_w*d_a*sum(q).
 */
#ifndef KVF_QUANT_H
#define KVF_QUANT_H

#include <stdint.h>

#include "engine/gguf.h"

#define KVF_QK 32 /* activation quantisation block; every panel block is 32 weights */

/* How a type is stored in matmul panels: one kind per GGUF type, keeping the type's own scale
 * fields (layouts in kernels/panel.h). Float types are stored as F32 panels. */
typedef enum {
    KVF_PANEL_Q4_0 = 0,
    KVF_PANEL_Q4_1,
    KVF_PANEL_Q5_0,
    KVF_PANEL_Q5_1,
    KVF_PANEL_Q8_0,
    KVF_PANEL_Q4_K,
    KVF_PANEL_Q5_K,
    KVF_PANEL_Q6_K,
    KVF_PANEL_F32,
    KVF_PANEL_KINDS
} kvf_panel_kind;

typedef struct kvf_quant_traits {
    uint32_t       type;
    const char    *name;
    uint32_t       block;   /* elements per block */
    uint32_t       bytes;   /* bytes per block */
    uint32_t       sub;     /* elements per scale/min pair (16 or 32); 0 for float types */
    int            code_lo; /* codes lie in [code_lo, code_hi] */
    int            code_hi;
    kvf_panel_kind panel;
    /* Decode one block: codes[block], scale[block/sub], min[block/sub]. NULL for float types. */
    void (*unpack)(const void *blk, int8_t *codes, float *scale, float *min);
} kvf_quant_traits;

/* The raw scale fields of one block of a quantised type, as the panels keep them
 * (kernels/panel.h): d and m are IEEE half bits (m: Q4_1/Q5_1's min, or the negated dmin of
 * Q4_K/Q5_K); sc and mn are Q4_K/Q5_K's 6-bit sub-block scales and mins, or Q6_K's 16 int8
 * scales (in sc). Unused fields are 0. */
typedef struct kvf_qfields {
    uint16_t d, m;
    uint8_t  sc[16], mn[8];
} kvf_qfields;
void kvf_quant_fields(uint32_t type, const void *blk, kvf_qfields *f);

/* Traits of a type we can compute with, or NULL. */
const kvf_quant_traits *kvf_quant_get(uint32_t type);

/* Reference dequantisation of n elements (n a multiple of the type's block size). */
void kvf_dequantize(uint32_t type, const void *src, float *dst, int64_t n);

/* Half-precision conversions (exact, handle subnormals/inf/nan). */
float    kvf_fp16_to_fp32(uint16_t h);
uint16_t kvf_fp32_to_fp16(float f); /* round to nearest even */
float    kvf_bf16_to_fp32(uint16_t h);

/* Activation quantisation, reference version. n (multiple of 32) floats become, per block of
 * 32: d = max|x| / 127, codes q = nearest-even(x * (1/d)) clamped to +-127; per 16 inputs the
 * integer sums qsum of q. With ql != NULL (two-level), the residual r = fmaf(-q, d, x) is
 * quantised again with dl = d / 254 (stored in dl[]): ql = nearest-even(r * (1/dl)) clamped,
 * sums in qsuml.
 * s16 = d * sum16(q) (+ dl * sum16(ql)) is the scaled sum of the dequantised activations. */
void kvf_quantize_row_q8_ref(const float *x, int64_t n, int8_t *q, float *d, float *s16,
                             int32_t *qsum, int8_t *ql, float *dlo, int32_t *qsuml);

/* Reference quantisers (test data and synthetic models): n floats to blocks of `type`
 * (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16, F32). Simple round-to-nearest
 * schemes, not llama.cpp's error-minimising ones. Returns 0, or -1 for an unsupported type. */
int kvf_quantize(uint32_t type, const float *src, void *dst, int64_t n);

#endif /* KVF_QUANT_H */
