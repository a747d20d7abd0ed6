/* kernels_avx2.c - AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; selected at run
 * time). A 16-row panel is processed as two halves of 8 rows (one ymm each).
 *
 * Integer dot products use vpmaddubsw (unsigned x signed bytes -> int16 pairs): U4 codes are
 * unsigned and small, so eight groups can be summed in int16 without saturation (8 * 2 * 15 *
 * 127 < 32767); S8 codes use the sign trick |w| x sign(a, w) and are widened per group. All
 * integer sums are exact and the float steps mirror kernels_ref.c: bit-identical matmuls.
 */
#ifdef KVF_REF_ONLY
/* Built without SIMD kernels (scripts/fuzz.sh): an empty table kvf_kernels_select never picks. */
#    include "engine/kernels/kernels.h"
const kvf_kernels kvf_kernels_avx2 = {.name = "avx2"};
#else
#include "engine/kernels/kernels.h"
#include "common.h"
#include "engine/kernels/panel.h"
#include "engine/quant.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static inline __m256i half_mask(int nr, int h) {
    int n = nr - 8 * h; /* valid rows in this half */
    n     = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

AI void store_acc(float *y, __m256 acc, int nr, int h, int accumulate) {
    if (nr >= 8 * h + 8) {
        if (accumulate) acc = _mm256_add_ps(_mm256_loadu_ps(y), acc);
        _mm256_storeu_ps(y, acc);
        return;
    }
    __m256i m = half_mask(nr, h);
    if (accumulate) acc = _mm256_add_ps(_mm256_maskload_ps(y, m), acc);
    _mm256_maskstore_ps(y, m, acc);
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum256i(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s         = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s         = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* ---- matmul tiles (one half of a panel, NC columns) ------------------------------------ */

/* Float epilogue of one block (or half block) for one column, mirroring kernels_ref.c. */
AI __m256 block_acc(__m256 acc, __m256i ia, __m256i ial, const int TWO, __m256 sc, __m256 mn,
                    float d, float dl, float s) {
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia), _mm256_mul_ps(sc, _mm256_set1_ps(d)), acc);
    if (TWO)
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ial), _mm256_mul_ps(sc, _mm256_set1_ps(dl)), acc);
    return _mm256_fmadd_ps(mn, _mm256_set1_ps(s), acc);
}

/* ---- decoding a panel block (layouts: panel.h); half h = rows 8h..8h+7 ------------------ */

AI __m256 h8(const uint8_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
AI __m256 u8f(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
AI __m256 i8f(const uint8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* scale and min of rows 8rh.. for inputs 16h.. (kvf_panel_scale_min, vectorised) */
AI void blk_scales(const uint8_t *blk, const uint8_t *head, const kvf_panel_kind KIND, int rh,
                   int h, __m256 *sc, __m256 *mn) {
    switch (kvf_panel_hdr(KIND)) {
    case KVF_HDR_F16:
        *sc = h8(blk + 16 * rh);
        *mn = _mm256_mul_ps(*sc, _mm256_set1_ps(kvf_panel_cmin(KIND)));
        break;
    case KVF_HDR_F16MIN: *sc = h8(blk + 16 * rh), *mn = h8(blk + 32 + 16 * rh); break;
    case KVF_HDR_K:
        *sc = _mm256_mul_ps(h8(head + 16 * rh), u8f(blk + 8 * rh));
        *mn = _mm256_mul_ps(h8(head + 32 + 16 * rh), u8f(blk + 16 + 8 * rh));
        break;
    case KVF_HDR_K6:
        *sc = _mm256_mul_ps(h8(head + 16 * rh), i8f(blk + 16 * h + 8 * rh));
        *mn = _mm256_mul_ps(*sc, _mm256_set1_ps(-32.0f));
        break;
    case KVF_HDR_NONE: break;
    }
}

/* 32 bits to 32 bytes: byte i = 0xFF if bit i is set */
AI __m256i bits_to_bytes(uint32_t m) {
    const __m256i sel  = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
                                          2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i       v    = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), sel);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
}

/* the unsigned codes of rows 8rh.. as 8 vectors of 4-input groups: byte 4r'+t of w[g] =
 * code(8rh + r', 4g + t) */
AI void blk_ucodes(const uint8_t *blk, const kvf_panel_kind KIND, int rh, __m256i w[8]) {
    const uint8_t  *c  = blk + kvf_panel_hdr_bytes(KIND);
    const kvf_codes CS = kvf_panel_codes(KIND);
    const __m256i   m4 = _mm256_set1_epi8(0x0F);
    for (int v = 0; v < 4; v++) {
        __m256i raw  = _mm256_loadu_si256((const __m256i *)(c + 64 * v + 32 * rh));
        w[2 * v]     = _mm256_and_si256(raw, m4);
        w[2 * v + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    }
    if (CS == KVF_CODES_U5) {
        const __m256i b4 = _mm256_set1_epi8(16);
        for (int g = 0; g < 8; g++) {
            uint32_t hb;
            memcpy(&hb, c + 256 + 8 * g + 4 * rh, 4);
            w[g] = _mm256_or_si256(w[g], _mm256_and_si256(bits_to_bytes(hb), b4));
        }
    } else if (CS == KVF_CODES_U6) {
        const __m256i m30 = _mm256_set1_epi8(0x30);
        for (int p = 0; p < 2; p++) {
            const __m256i hv = _mm256_loadu_si256((const __m256i *)(c + 256 + 64 * p + 32 * rh));
            w[4 * p + 0] = _mm256_or_si256(w[4 * p + 0], _mm256_and_si256(_mm256_slli_epi16(hv, 4), m30));
            w[4 * p + 1] = _mm256_or_si256(w[4 * p + 1], _mm256_and_si256(_mm256_slli_epi16(hv, 2), m30));
            w[4 * p + 2] = _mm256_or_si256(w[4 * p + 2], _mm256_and_si256(hv, m30));
            w[4 * p + 3] = _mm256_or_si256(w[4 * p + 3], _mm256_and_si256(_mm256_srli_epi16(hv, 2), m30));
        }
    }
}

/* unsigned codes x activation bytes over groups g0..g0+ng-1: int16 sums of up to PER groups
 * (no saturation: PER * 2 * max_code * 127 < 32768), widened to int32 */
AI __m256i u_groups(const __m256i *w, const int8_t *xq, int g0, int ng, const int PER) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i       ia   = _mm256_setzero_si256();
    for (int g = g0; g < g0 + ng; g += PER) {
        __m256i i16 = _mm256_maddubs_epi16(w[g], bcast4(xq + 4 * g));
        for (int e = 1; e < PER && g + e < g0 + ng; e++)
            i16 = _mm256_add_epi16(i16, _mm256_maddubs_epi16(w[g + e], bcast4(xq + 4 * (g + e))));
        ia = _mm256_add_epi32(ia, _mm256_madd_epi16(i16, ones));
    }
    return ia;
}

/* isum of 4-input groups g0..g0+ng-1 with the sign trick, widened to int32 per group */
AI __m256i s8_groups(const __m256i *wa, const __m256i *ws, const int8_t *xq, int g0, int ng) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i       ia   = _mm256_setzero_si256();
    for (int g = g0; g < g0 + ng; g++) {
        __m256i a = _mm256_sign_epi8(bcast4(xq + 4 * g), ws[g]);
        ia        = _mm256_add_epi32(ia, _mm256_madd_epi16(_mm256_maddubs_epi16(wa[g], a), ones));
    }
    return ia;
}

/* one block b of half rh for columns c..c+NC-1: acc[i] += that block's contribution */
AI void int_block(const uint8_t *panel, int64_t b, const kvf_act *x, int64_t c, const int NC,
                  const int TWO, int rh, const kvf_panel_kind KIND, __m256 *acc) {
    const int64_t   K = x->n_in, KB = K / KVF_QK, KS = K / 16;
    const kvf_codes CS   = kvf_panel_codes(KIND);
    const int       NSUB = KVF_QK / kvf_panel_sub(KIND);
    const int       PER  = CS == KVF_CODES_U4 ? 8 : CS == KVF_CODES_U5 ? 4 : 2;
    const uint8_t  *blk = kvf_panel_blk(panel, b, KIND), *head = kvf_panel_head(panel, b, KIND);
    __m256          sc[2], mn[2];
    __m256i         w[8], wa[8];
    for (int h = 0; h < NSUB; h++) blk_scales(blk, head, KIND, rh, h, &sc[h], &mn[h]);
    if (CS == KVF_CODES_S8)
        for (int g = 0; g < 8; g++) {
            w[g]  = _mm256_loadu_si256((const __m256i *)(blk + kvf_panel_hdr_bytes(KIND) + 64 * g + 32 * rh));
            wa[g] = _mm256_abs_epi8(w[g]);
        }
    else
        blk_ucodes(blk, KIND, rh, w);
#pragma GCC unroll 4
    for (int i = 0; i < NC; i++) {
        const int8_t *xq = x->q + (c + i) * K + b * KVF_QK;
        const int8_t *xl = TWO ? x->ql + (c + i) * K + b * KVF_QK : NULL;
        const float  *s  = x->s16 + (c + i) * KS + 2 * b;
        const float   d = x->d[(c + i) * KB + b], dl = TWO ? x->dl[(c + i) * KB + b] : 0.0f;
        for (int h = 0; h < NSUB; h++) {
            const int g0 = NSUB == 2 ? 4 * h : 0, ng = NSUB == 2 ? 4 : 8;
            __m256i   ia = CS == KVF_CODES_S8 ? s8_groups(wa, w, xq, g0, ng) : u_groups(w, xq, g0, ng, PER);
            __m256i   ial = ia;
            if (TWO) ial = CS == KVF_CODES_S8 ? s8_groups(wa, w, xl, g0, ng) : u_groups(w, xl, g0, ng, PER);
            acc[i] = block_acc(acc[i], ia, ial, TWO, sc[h], mn[h], d, dl, NSUB == 2 ? s[h] : s[0] + s[1]);
        }
    }
}

AI void int_half(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c, const int NC,
                 const int TWO, float *y, int64_t ldy, int nr, int rh, int accumulate,
                 const kvf_panel_kind KIND) {
    __m256 acc[4];
    for (int i = 0; i < NC; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) int_block(panel, b, x, c, NC, TWO, rh, KIND, acc);
    for (int i = 0; i < NC; i++) store_acc(y + (c + i) * ldy + 8 * rh, acc[i], nr, rh, accumulate);
}

/* One column, both halves in one pass over the blocks (decode): the panel streams from memory
 * once while it is computed on, instead of a memory-bound pass over half 0 followed by a pass
 * over half 1 from cache during which memory idles. The next blocks are prefetched. */
AI void int_col(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c, const int TWO,
                float *y, int nr, int accumulate, const kvf_panel_kind KIND) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t b = 0; b < nb; b++) {
        kvf_panel_prefetch(kvf_panel_blk(panel, b, KIND), KIND);
        int_block(panel, b, x, c, 1, TWO, 0, KIND, &acc[0]);
        int_block(panel, b, x, c, 1, TWO, 1, KIND, &acc[1]);
    }
    store_acc(y + 8 * 0, acc[0], nr, 0, accumulate);
    if (nr > 8) store_acc(y + 8, acc[1], nr, 1, accumulate);
}

#define GEMM_COLS(KIND, TWO)                                                                   \
    do {                                                                                       \
        if (nc == 1) {                                                                         \
            int_col(panel, nb, x, c0, TWO, y + c0 * ldy, nr, accumulate, KIND);                \
            break;                                                                             \
        }                                                                                      \
        for (int h = 0; h < 2 && 8 * h < nr; h++) {                                            \
            int64_t c = c0, end = c0 + nc;                                                     \
            for (; c + 4 <= end; c += 4) int_half(panel, nb, x, c, 4, TWO, y, ldy, nr, h, accumulate, KIND); \
            switch (end - c) {                                                                 \
            case 3: int_half(panel, nb, x, c, 3, TWO, y, ldy, nr, h, accumulate, KIND); break; \
            case 2: int_half(panel, nb, x, c, 2, TWO, y, ldy, nr, h, accumulate, KIND); break; \
            case 1: int_half(panel, nb, x, c, 1, TWO, y, ldy, nr, h, accumulate, KIND); break; \
            default: break;                                                                    \
            }                                                                                  \
        }                                                                                      \
    } while (0)

#define DEFINE_GEMM(T)                                                                         \
    static void gemm_##T(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,       \
                         int64_t nc, float *y, int64_t ldy, int nr, int accumulate) {          \
        if (x->ql)                                                                             \
            GEMM_COLS(KVF_PANEL_##T, 1);                                                       \
        else                                                                                   \
            GEMM_COLS(KVF_PANEL_##T, 0);                                                       \
    }


/* ---- float-activation GEMM (kernels.h, gemm_f) -----------------------------------------
 * For batches of many rows on CPUs whose int8 products are slow (AVX2 without VNNI: a
 * two-level int8 product costs two vpmaddubsw chains per block, while the FMA units idle).
 * A slice of FT_KC inputs of the panel is decoded once into a float tile wt[k][16] (16 KiB,
 * L1), then a 16-row x FT_NR-column micro-kernel (2 x FT_NR accumulators, two weight vectors
 * and one broadcast: 15 of the 16 ymm registers) runs over the activation rows. Partial sums
 * between slices go through part[] unchanged, so each output is still one fmaf chain in input
 * order: bit-identical to gemm_f_int_ref. F32 panels are already tiles (w[k][16] contiguous). */

#define FT_KC 256 /* inputs per decoded slice */
#define FT_NR 6   /* activation rows per micro-tile */
#define FT_CB 96  /* activation rows per pass over the slices (partial sums in part[]) */

/* decode block b into out[k * 16 + r] = fmaf(scale, code, min) */
AI void ft_dec(const uint8_t *panel, int64_t b, const kvf_panel_kind KIND, float *out) {
    const uint8_t *blk = kvf_panel_blk(panel, b, KIND), *head = kvf_panel_head(panel, b, KIND);
    const int      S8 = kvf_panel_codes(KIND) == KVF_CODES_S8, NSUB = KVF_QK / kvf_panel_sub(KIND);
    const __m256i  mff = _mm256_set1_epi32(0xFF);
    for (int rh = 0; rh < 2; rh++) {
        __m256  sc[2], mn[2];
        __m256i w[8];
        for (int h = 0; h < NSUB; h++) blk_scales(blk, head, KIND, rh, h, &sc[h], &mn[h]);
        if (S8)
            for (int g = 0; g < 8; g++)
                w[g] = _mm256_loadu_si256((const __m256i *)(blk + kvf_panel_hdr_bytes(KIND) + 64 * g + 32 * rh));
        else
            blk_ucodes(blk, KIND, rh, w);
        for (int g = 0; g < 8; g++) {
            const int h = NSUB == 2 ? g / 4 : 0;
            for (int t = 0; t < 4; t++) {
                /* byte t of lane r is code(8rh + r, 4g + t) */
                __m256i ci = S8 ? _mm256_srai_epi32(_mm256_slli_epi32(w[g], 24 - 8 * t), 24)
                                : _mm256_and_si256(_mm256_srli_epi32(w[g], 8 * t), mff);
                _mm256_store_ps(out + (4 * g + t) * 16 + 8 * rh,
                                _mm256_fmadd_ps(sc[h], _mm256_cvtepi32_ps(ci), mn[h]));
            }
        }
    }
}

/* NC activation rows c.. against kc inputs of the tile w (from input k0): accumulators start
 * at 0 (first) or from part[], end in y (last) or back in part[]. */
AI void ft_cols(const float *w, int kc, const kvf_act *x, int64_t c, int64_t k0, const int NC,
                float *part, int first, int last, float *y, int64_t ldy, int nr, int accumulate) {
    __m256        a0[FT_NR], a1[FT_NR];
    const int64_t ldf = x->ldf;
    const float  *xb  = x->f + c * ldf + k0;
#pragma GCC unroll 8
    for (int i = 0; i < NC; i++) {
        a0[i] = first ? _mm256_setzero_ps() : _mm256_load_ps(part + 16 * i);
        a1[i] = first ? _mm256_setzero_ps() : _mm256_load_ps(part + 16 * i + 8);
    }
#pragma GCC unroll 2
    for (int k = 0; k < kc; k++) {
        const __m256 w0 = _mm256_load_ps(w + 16 * k), w1 = _mm256_load_ps(w + 16 * k + 8);
#pragma GCC unroll 8
        for (int i = 0; i < NC; i++) {
            const __m256 b = _mm256_broadcast_ss(xb + i * ldf + k);
            a0[i]          = _mm256_fmadd_ps(w0, b, a0[i]);
            a1[i]          = _mm256_fmadd_ps(w1, b, a1[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < NC; i++) {
        if (last) {
            store_acc(y + (c + i) * ldy, a0[i], nr, 0, accumulate);
            if (nr > 8) store_acc(y + (c + i) * ldy + 8, a1[i], nr, 1, accumulate);
        } else {
            _mm256_store_ps(part + 16 * i, a0[i]);
            _mm256_store_ps(part + 16 * i + 8, a1[i]);
        }
    }
}

AI void gemm_f_impl(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0, int64_t nc,
                    float *y, int64_t ldy, int nr, int accumulate, const kvf_panel_kind KIND) {
    const int64_t K  = nb * KVF_QK;
    const int64_t KC = KIND == KVF_PANEL_F32 ? K : FT_KC; /* F32: the panel is the tile */
    _Alignas(64) float wt[KIND == KVF_PANEL_F32 ? 16 : FT_KC * 16];
    _Alignas(64) float part[FT_CB * 16];
    for (int64_t cb = c0; cb < c0 + nc; cb += FT_CB) {
        const int64_t ce = KVF_MIN(cb + FT_CB, c0 + nc);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            const int    kc = (int)KVF_MIN(KC, K - k0);
            const float *w  = wt;
            if (KIND == KVF_PANEL_F32)
                w = (const float *)panel + k0 * 16;
            else
                for (int64_t b = k0 / KVF_QK; b < (k0 + kc) / KVF_QK; b++)
                    ft_dec(panel, b, KIND, wt + (b * KVF_QK - k0) * 16);
            const int first = k0 == 0, last = k0 + kc >= K;
            int64_t   c     = cb;
            for (; c + FT_NR <= ce; c += FT_NR)
                ft_cols(w, kc, x, c, k0, FT_NR, part + (c - cb) * 16, first, last, y, ldy, nr, accumulate);
            float *pp = part + (c - cb) * 16;
            switch (ce - c) {
            case 5: ft_cols(w, kc, x, c, k0, 5, pp, first, last, y, ldy, nr, accumulate); break;
            case 4: ft_cols(w, kc, x, c, k0, 4, pp, first, last, y, ldy, nr, accumulate); break;
            case 3: ft_cols(w, kc, x, c, k0, 3, pp, first, last, y, ldy, nr, accumulate); break;
            case 2: ft_cols(w, kc, x, c, k0, 2, pp, first, last, y, ldy, nr, accumulate); break;
            case 1: ft_cols(w, kc, x, c, k0, 1, pp, first, last, y, ldy, nr, accumulate); break;
            default: break;
            }
        }
    }
}

#define DEFINE_GEMM_F(T)                                                                       \
    static void gemm_f_##T(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,     \
                           int64_t nc, float *y, int64_t ldy, int nr, int accumulate) {        \
        gemm_f_impl(panel, nb, x, c0, nc, y, ldy, nr, accumulate, KVF_PANEL_##T);              \
    }
#define DEFINE_KIND(T) DEFINE_GEMM(T) DEFINE_GEMM_F(T)
KVF_INT_PANELS(DEFINE_KIND)
#define GEMM_ENTRY(T)   [KVF_PANEL_##T] = gemm_##T,
#define GEMM_F_ENTRY(T) [KVF_PANEL_##T] = gemm_f_##T,

static void gemm_f_f32(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c0,
                       int64_t nc, float *y, int64_t ldy, int nr, int accumulate) {
    gemm_f_impl(panel, nb, x, c0, nc, y, ldy, nr, accumulate, KVF_PANEL_F32);
}

/* ---- activation quantisation (bit-identical to the reference) -------------------------- */

/* round to nearest even, clamp to +-127, convert (exact) */
static inline __m256i round_clamp(__m256 v) {
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_max_ps(_mm256_min_ps(v, _mm256_set1_ps(127.0f)), _mm256_set1_ps(-127.0f));
    return _mm256_cvtps_epi32(v);
}

/* 32 int32 codes (values within +-127) to 32 bytes in order */
static inline void store_codes(int8_t *dst, const __m256i *iv) {
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i p01 = _mm256_packs_epi32(iv[0], iv[1]), p23 = _mm256_packs_epi32(iv[2], iv[3]);
    _mm256_storeu_si256((__m256i *)dst, _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm));
}

static void quantize_row(const float *x, int64_t n, int8_t *q, float *d, float *s16,
                         int32_t *qsum, int8_t *ql, float *dlo, int32_t *qsuml) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / KVF_QK; b++) {
        __m256 v[4], am = _mm256_setzero_ps();
        for (int t = 0; t < 4; t++) {
            v[t] = _mm256_loadu_ps(x + 32 * b + 8 * t);
            am   = _mm256_max_ps(am, _mm256_and_ps(v[t], absmask));
        }
        float   amax = hmax256(am);
        float   db   = amax / 127.0f;
        float   id   = db != 0.0f ? 1.0f / db : 0.0f;
        float   dl   = db / 254.0f;
        float   idl  = dl != 0.0f ? 1.0f / dl : 0.0f;
        __m256i iv[4], il[4];
        for (int t = 0; t < 4; t++) {
            iv[t] = round_clamp(_mm256_mul_ps(v[t], _mm256_set1_ps(id)));
            if (ql) {
                __m256 r = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(iv[t]), _mm256_set1_ps(db), v[t]);
                il[t]    = round_clamp(_mm256_mul_ps(r, _mm256_set1_ps(idl)));
            }
        }
        store_codes(q + 32 * b, iv);
        d[b] = db;
        for (int h = 0; h < 2; h++) {
            int sh          = hsum256i(_mm256_add_epi32(iv[2 * h], iv[2 * h + 1]));
            qsum[2 * b + h] = sh;
            s16[2 * b + h]  = db * (float)sh;
        }
        if (ql) {
            dlo[b] = dl;
            store_codes(ql + 32 * b, il);
            for (int h = 0; h < 2; h++) {
                int sl           = hsum256i(_mm256_add_epi32(il[2 * h], il[2 * h + 1]));
                qsuml[2 * b + h] = sl;
                s16[2 * b + h] += dl * (float)sl;
            }
        }
    }
}

/* ---- exp: same range reduction and polynomial as the AVX-512 version; 2^n built in the
 * exponent bits (x is clamped to [-87, 88] so n stays a normal exponent). ---------------- */

static inline __m256 exp256(__m256 x) {
    x        = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    x        = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r        = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.3981999507e-3f);
    p        = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p        = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p        = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p        = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p        = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* ---- attention ------------------------------------------------------------------------- */

/* 8 keys or value components at element index i, from an f32 or f16 cache */
AI __m256 ld8(const void *p, int64_t i, const int F16) {
    return F16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)))
               : _mm256_loadu_ps((const float *)p + i);
}

/* S[m][kofs .. kofs+32) for R rows (3 x 4 accumulators fit in 16 registers) */
AI void qk_rows(const float *const *q, int m0, const int R, const void *kt, int64_t j,
                int kofs, int hd, float scale, float *S, const int F16) {
    __m256 acc[3][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm256_setzero_ps();
    for (int i = 0; i < hd; i++) {
        int64_t kr = kvf_kt_idx(i, j, hd); /* 32 keys of one tile */
        __m256  k0 = ld8(kt, kr, F16), k1 = ld8(kt, kr + 8, F16);
        __m256  k2 = ld8(kt, kr + 16, F16), k3 = ld8(kt, kr + 24, F16);
        for (int r = 0; r < R; r++) {
            __m256 qv = _mm256_broadcast_ss(&q[m0 + r][i]);
            acc[r][0] = _mm256_fmadd_ps(qv, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(qv, k1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(qv, k2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(qv, k3, acc[r][3]);
        }
    }
    __m256 vs = _mm256_set1_ps(scale);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < 4; t++)
            _mm256_store_ps(S + (int64_t)(m0 + r) * KVF_ATTN_BK + kofs + 8 * t,
                            _mm256_mul_ps(acc[r][t], vs));
}

/* o_m[d0 .. d0+32) = o * alpha + P v for R rows */
AI void pv_rows(float *const *o, int m0, const int R, const float *P, const float *alpha,
                const void *v, int64_t j0, int jn, int hd, int d0, const int F16) {
    __m256 acc[2][4];
    for (int r = 0; r < R; r++) {
        __m256 a = _mm256_set1_ps(alpha[m0 + r]);
        for (int t = 0; t < 4; t++)
            acc[r][t] = _mm256_mul_ps(_mm256_loadu_ps(o[m0 + r] + d0 + 8 * t), a);
    }
    for (int j = 0; j < jn; j++) {
        int64_t vr = (j0 + j) * hd + d0;
        __m256  v0 = ld8(v, vr, F16), v1 = ld8(v, vr + 8, F16);
        __m256  v2 = ld8(v, vr + 16, F16), v3 = ld8(v, vr + 24, F16);
        for (int r = 0; r < R; r++) {
            __m256 p  = _mm256_broadcast_ss(&P[(int64_t)(m0 + r) * KVF_ATTN_BK + j]);
            acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
            acc[r][2] = _mm256_fmadd_ps(p, v2, acc[r][2]);
            acc[r][3] = _mm256_fmadd_ps(p, v3, acc[r][3]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < 4; t++) _mm256_storeu_ps(o[m0 + r] + d0 + 8 * t, acc[r][t]);
}

AI void attn_impl(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                  const void *kt, const void *v, int hd, float scale, float *work,
                  const int F16) {
    KVF_ASSERT(M <= KVF_ATTN_MAX_M && hd % 32 == 0);
    float *S = work, *mrow = S + (int64_t)M * KVF_ATTN_BK, *lrow = mrow + M, *alpha = lrow + M;
    int    n_max = 0;
    for (int m = 0; m < M; m++) {
        n_max   = KVF_MAX(n_max, kv_end[m]);
        mrow[m] = -INFINITY;
        lrow[m] = 0.0f;
        memset(o[m], 0, sizeof(float) * (size_t)hd);
    }
    for (int64_t j0 = 0; j0 < n_max; j0 += KVF_ATTN_BK) {
        int jn = (int)KVF_MIN((int64_t)KVF_ATTN_BK, n_max - j0);
        for (int kofs = 0; kofs < KVF_ATTN_BK; kofs += 32) {
            int m = 0;
            for (; m + 3 <= M; m += 3) qk_rows(q, m, 3, kt, j0 + kofs, kofs, hd, scale, S, F16);
            for (; m < M; m++) qk_rows(q, m, 1, kt, j0 + kofs, kofs, hd, scale, S, F16);
        }
        for (int m = 0; m < M; m++) {
            float  *s   = S + (int64_t)m * KVF_ATTN_BK;
            int64_t vis = kv_end[m] - j0;
            if (vis <= 0) {
                memset(s, 0, sizeof(float) * KVF_ATTN_BK);
                alpha[m] = 1.0f;
                continue;
            }
            if (vis < KVF_ATTN_BK)
                for (int64_t j = vis; j < KVF_ATTN_BK; j++) s[j] = -INFINITY;
            __m256 mx = _mm256_set1_ps(-INFINITY);
            for (int t = 0; t < 8; t++) mx = _mm256_max_ps(mx, _mm256_load_ps(s + 8 * t));
            float m_new = fmaxf(mrow[m], hmax256(mx));
            alpha[m]    = expf(mrow[m] - m_new);
            mrow[m]     = m_new;
            __m256 vm = _mm256_set1_ps(m_new), sum = _mm256_setzero_ps();
            for (int t = 0; t < 8; t++) {
                __m256 sv   = _mm256_load_ps(s + 8 * t);
                __m256 live = _mm256_cmp_ps(sv, _mm256_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                __m256 p    = _mm256_and_ps(live, exp256(_mm256_sub_ps(sv, vm)));
                sum         = _mm256_add_ps(sum, p);
                _mm256_store_ps(s + 8 * t, p);
            }
            lrow[m] = lrow[m] * alpha[m] + hsum256(sum);
        }
        for (int d0 = 0; d0 < hd; d0 += 32) {
            int m = 0;
            for (; m + 2 <= M; m += 2) pv_rows(o, m, 2, S, alpha, v, j0, jn, hd, d0, F16);
            for (; m < M; m++) pv_rows(o, m, 1, S, alpha, v, j0, jn, hd, d0, F16);
        }
    }
    for (int m = 0; m < M; m++) {
        __m256 inv = _mm256_set1_ps(1.0f / lrow[m]);
        for (int t = 0; t < hd / 8; t++)
            _mm256_storeu_ps(o[m] + 8 * t, _mm256_mul_ps(_mm256_loadu_ps(o[m] + 8 * t), inv));
    }
}

static void attn(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                 const float *kt, const float *v, int hd, float scale, float *work) {
    attn_impl(q, o, kv_end, M, kt, v, hd, scale, work, 0);
}

static void attn_f16(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                     const uint16_t *kt, const uint16_t *v, int hd, float scale,
                     float *work) {
    attn_impl(q, o, kv_end, M, kt, v, hd, scale, work, 1);
}

/* SALE block estimate (kernels.h): 8 keys per vector; vpmaddubsw on (code + 128) x q, whose
 * pair sums stay within int16 because |q| <= 63, then vpmaddwd with ones. */
static int attn_est(const int8_t *q, const int32_t *qsum, const float *qs, const float *t,
                    const int32_t *lim, int M, const uint8_t *k, const float *ks, int hd) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), ones = _mm256_set1_epi16(1);
    for (int m = 0; m < M; m++) {
        if (lim[m] <= 0) continue;
        __m256i acc[8];
        for (int g = 0; g < 8; g++) acc[g] = _mm256_set1_epi32(-128 * qsum[m]);
        const int8_t *qm = q + (int64_t)m * hd;
        for (int i4 = 0; i4 < hd / 4; i4++) {
            __m256i        qb = bcast4(qm + 4 * i4);
            const uint8_t *kb = k + (int64_t)i4 * 4 * KVF_ATTN_BK;
            for (int g = 0; g < 8; g++) {
                __m256i p = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(kb + 32 * g)), qb);
                acc[g]    = _mm256_add_epi32(acc[g], _mm256_madd_epi16(p, ones));
            }
        }
        __m256 qsv = _mm256_set1_ps(qs[m]), tv = _mm256_set1_ps(t[m]);
        for (int g = 0; g < 8 && 8 * g < lim[m]; g++) {
            __m256  e    = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(acc[g]),
                                                       _mm256_loadu_ps(ks + 8 * g)), qsv);
            __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(lim[m] - 8 * g), lane);
            __m256  hit  = _mm256_and_ps(_mm256_cmp_ps(e, tv, _CMP_GT_OQ), _mm256_castsi256_ps(live));
            if (_mm256_movemask_ps(hit)) return 1;
        }
    }
    return 0;
}

/* ---- small ops ------------------------------------------------------------------------- */

static void rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
    __m256  acc = _mm256_setzero_ps();
    int64_t i   = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        acc      = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum256(acc);
    for (; i < n; i++) ss += x[i] * x[i];
    float  r  = 1.0f / sqrtf(ss / (float)n + eps);
    __m256 vr = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vr),
                                              _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = x[i] * r * w[i];
}

static void swiglu(const float *g, const float *u, float *out, int64_t n) {
    int64_t      i   = 0;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 e  = exp256(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)),
                                                _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    int64_t i  = 0;
    __m256  va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = kvf_fp16_to_fp32(src[i]);
}

static void f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = kvf_fp32_to_fp16(src[i]);
}

const kvf_kernels kvf_kernels_avx2 = {
    .name         = "avx2",
    .gemm         = {KVF_INT_PANELS(GEMM_ENTRY)[KVF_PANEL_F32] = gemm_f_f32},
    .gemm_f       = {KVF_INT_PANELS(GEMM_F_ENTRY)[KVF_PANEL_F32] = gemm_f_f32},
    .float_rows   = 8, /* see kvf_matmul_float_rows */
    .quantize_row = quantize_row,
    .attn         = attn,
    .attn_f16     = attn_f16,
    .attn_est     = attn_est,
    .rmsnorm      = rmsnorm,
    .swiglu       = swiglu,
    .axpy         = axpy,
    .f16_to_f32   = f16_to_f32,
    .f32_to_f16   = f32_to_f16,
};

#endif /* KVF_REF_ONLY */
