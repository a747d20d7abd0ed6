/* panel.h - the byte layout of weight panels, shared by the packer (matmul.c), the reference
 * kernels and the SIMD kernels (which call these helpers with a constant kind, so every switch
 * folds away).
 *
 * A matrix W[n_out][n_in] is stored as ceil(n_out/16) panels of 16 rows. A panel is n_in/32
 * blocks of 16 rows x 32 inputs; the K kinds group 8 blocks (256 inputs) into a super-block
 * that starts with a head of per-row super-block scales. Each kind keeps the GGUF type's own
 * scale fields, so a panel is no larger than the file's blocks (Q4_K +2.8%, Q5_K +2.3%, the
 * others 0%). Block = header, then codes:
 *
 *   header   F16       u16 d[16]                       scale = d,            min = C * d
 *            F16MIN    u16 d[16], u16 m[16]            scale = d,            min = m
 *            K         u8 sc[16], u8 m[16]             scale = D * sc,       min = DM * m
 *                      (head: u16 D[16], u16 DM[16]; DM holds -dmin)
 *            K6        i8 sc[2][16] (inputs 0..15, 16..31)   scale = D * sc,  min = -32 * scale
 *                      (head: u16 D[16])
 *   codes    U4   qs[4][64]: byte 4r+t of qs[v]: low nibble = code(r, 8v+t),
 *                 high nibble = code(r, 8v+4+t)                                (256 bytes)
 *            U5   U4 nibbles, then hb[4][2] u64: bit 4r+t of hb[v][j] = bit 4 of
 *                 code(r, 8v+4j+t)                                             (320 bytes)
 *            U6   U4 nibbles, then h2[2][64]: bits 4(v&1)+2j..+1 of byte 4r+t of h2[v/2] =
 *                 bits 4..5 of code(r, 8v+4j+t)                                (384 bytes)
 *            S8   q[8][64] int8: q[g][4r+t] = code(r, 4g+t)                    (512 bytes)
 * (u16 = IEEE half bits; C = -8 for Q4_0, -16 for Q5_0, 0 for Q8_0.) Unsigned codes are the
 * file's codes shifted to start at 0 (the shift is folded into min), so every integer kind
 * decodes to  weight(r, k) = scale(r, k) * code(r, k) + min(r, k)  with at most two
 * scale/min pairs per row and block (K6: one per 16 inputs). Rows past n_out are zero.
 * F32 panels: float w[32][16] per block, w[k][r].
 */
#ifndef KVF_PANEL_H
#define KVF_PANEL_H

#include <stdint.h>
#include <string.h>

#include "engine/quant.h"

typedef enum { KVF_CODES_U4, KVF_CODES_U5, KVF_CODES_U6, KVF_CODES_S8, KVF_CODES_F32 } kvf_codes;
typedef enum { KVF_HDR_F16, KVF_HDR_F16MIN, KVF_HDR_K, KVF_HDR_K6, KVF_HDR_NONE } kvf_hdr;

static inline kvf_codes kvf_panel_codes(kvf_panel_kind k) {
    switch (k) {
    case KVF_PANEL_Q4_0:
    case KVF_PANEL_Q4_1:
    case KVF_PANEL_Q4_K: return KVF_CODES_U4;
    case KVF_PANEL_Q5_0:
    case KVF_PANEL_Q5_1:
    case KVF_PANEL_Q5_K: return KVF_CODES_U5;
    case KVF_PANEL_Q6_K: return KVF_CODES_U6;
    case KVF_PANEL_Q8_0: return KVF_CODES_S8;
    default: return KVF_CODES_F32;
    }
}

static inline kvf_hdr kvf_panel_hdr(kvf_panel_kind k) {
    switch (k) {
    case KVF_PANEL_Q4_0:
    case KVF_PANEL_Q5_0:
    case KVF_PANEL_Q8_0: return KVF_HDR_F16;
    case KVF_PANEL_Q4_1:
    case KVF_PANEL_Q5_1: return KVF_HDR_F16MIN;
    case KVF_PANEL_Q4_K:
    case KVF_PANEL_Q5_K: return KVF_HDR_K;
    case KVF_PANEL_Q6_K: return KVF_HDR_K6;
    default: return KVF_HDR_NONE;
    }
}

/* min = C * scale for the F16 header */
static inline float kvf_panel_cmin(kvf_panel_kind k) {
    return k == KVF_PANEL_Q4_0 ? -8.0f : k == KVF_PANEL_Q5_0 ? -16.0f : 0.0f;
}

/* inputs per scale/min pair */
static inline int kvf_panel_sub(kvf_panel_kind k) { return k == KVF_PANEL_Q6_K ? 16 : 32; }

static inline int kvf_panel_hdr_bytes(kvf_panel_kind k) {
    switch (kvf_panel_hdr(k)) {
    case KVF_HDR_F16MIN: return 64;
    case KVF_HDR_NONE: return 0;
    default: return 32;
    }
}

static inline int kvf_panel_code_bytes(kvf_panel_kind k) {
    switch (kvf_panel_codes(k)) {
    case KVF_CODES_U4: return 256;
    case KVF_CODES_U5: return 320;
    case KVF_CODES_U6: return 384;
    case KVF_CODES_S8: return 512;
    default: return 2048;
    }
}

static inline int64_t kvf_panel_block_bytes(kvf_panel_kind k) {
    return kvf_panel_hdr_bytes(k) + kvf_panel_code_bytes(k);
}

/* bytes of a super-block head (0: the kind has no super-blocks) */
static inline int kvf_panel_head_bytes(kvf_panel_kind k) {
    kvf_hdr h = kvf_panel_hdr(k);
    return h == KVF_HDR_K ? 64 : h == KVF_HDR_K6 ? 32 : 0;
}

#define KVF_PANEL_SB 8 /* blocks per super-block */

/* How far ahead (bytes) the one-column (decode) kernels prefetch a panel they stream from
 * memory; measured on the 1.5B at 2048-6144 (AVX2 decode +40% over no prefetch). */
#define KVF_PF_BYTES 3072

/* X-macro over the integer panel kinds (kernel tables instantiate one function per kind) */
#define KVF_INT_PANELS(X) X(Q4_0) X(Q4_1) X(Q5_0) X(Q5_1) X(Q8_0) X(Q4_K) X(Q5_K) X(Q6_K)

static inline int64_t kvf_panel_bytes(kvf_panel_kind k, int64_t n_in) {
    int64_t nb = n_in / KVF_QK;
    return nb * kvf_panel_block_bytes(k) + nb / KVF_PANEL_SB * kvf_panel_head_bytes(k);
}

/* block b of a panel, and the head of its super-block (K kinds) */
static inline const uint8_t *kvf_panel_blk(const uint8_t *panel, int64_t b, kvf_panel_kind k) {
    const int64_t hb = kvf_panel_head_bytes(k), bb = kvf_panel_block_bytes(k);
    if (!hb) return panel + b * bb;
    return panel + (b / KVF_PANEL_SB) * (hb + KVF_PANEL_SB * bb) + hb + (b % KVF_PANEL_SB) * bb;
}

static inline const uint8_t *kvf_panel_head(const uint8_t *panel, int64_t b, kvf_panel_kind k) {
    const int64_t hb = kvf_panel_head_bytes(k), bb = kvf_panel_block_bytes(k);
    return panel + (b / KVF_PANEL_SB) * (hb + KVF_PANEL_SB * bb);
}

/* Prefetch the lines of the block KVF_PF_BYTES past blk (of a panel streamed from memory). */
static inline void kvf_panel_prefetch(const uint8_t *blk, kvf_panel_kind k) {
    for (int64_t o = 0; o < kvf_panel_block_bytes(k); o += 64) __builtin_prefetch(blk + KVF_PF_BYTES + o, 0, 3);
}

static inline float kvf_panel_h2f(const uint8_t *p, int i) {
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return kvf_fp16_to_fp32(h);
}

/* scale and min of row r for inputs h*16.. (h = 0 or 1; only K6 differs between halves);
 * the exact float operations every kernel performs */
static inline void kvf_panel_scale_min(const uint8_t *blk, const uint8_t *head, kvf_panel_kind k,
                                       int r, int h, float *sc, float *mn) {
    switch (kvf_panel_hdr(k)) {
    case KVF_HDR_F16:
        *sc = kvf_panel_h2f(blk, r);
        *mn = *sc * kvf_panel_cmin(k);
        break;
    case KVF_HDR_F16MIN:
        *sc = kvf_panel_h2f(blk, r);
        *mn = kvf_panel_h2f(blk, 16 + r);
        break;
    case KVF_HDR_K:
        *sc = kvf_panel_h2f(head, r) * (float)blk[r];
        *mn = kvf_panel_h2f(head, 16 + r) * (float)blk[16 + r];
        break;
    case KVF_HDR_K6:
        *sc = kvf_panel_h2f(head, r) * (float)(int8_t)blk[16 * h + r];
        *mn = *sc * -32.0f;
        break;
    default: *sc = 1.0f, *mn = 0.0f; break; /* KVF_HDR_NONE */
    }
}

/* code(r, k) of an integer block (unsigned kinds: 0..15/31/63; S8: -128..127) */
static inline int kvf_panel_code(const uint8_t *blk, kvf_panel_kind kind, int r, int k) {
    const uint8_t *c = blk + kvf_panel_hdr_bytes(kind);
    if (kvf_panel_codes(kind) == KVF_CODES_S8) return ((const int8_t *)c)[64 * (k / 4) + 4 * r + k % 4];
    int v = k / 8, j = (k % 8) / 4, i = 4 * r + k % 4;
    int code = (c[64 * v + i] >> (4 * j)) & 15;
    if (kvf_panel_codes(kind) == KVF_CODES_U5) {
        uint64_t hb;
        memcpy(&hb, c + 256 + 16 * v + 8 * j, 8);
        code |= (int)((hb >> i) & 1) << 4;
    } else if (kvf_panel_codes(kind) == KVF_CODES_U6) {
        code |= ((c[256 + 64 * (v / 2) + i] >> (4 * (v & 1) + 2 * j)) & 3) << 4;
    }
    return code;
}

#endif /* KVF_PANEL_H */
