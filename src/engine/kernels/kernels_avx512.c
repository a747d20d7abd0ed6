/* kernels_avx512.c - AVX-512 (F, BW, VL, DQ) + VNNI kernels. Compiled with -mavx512* flags
 * and only called after kvf_kernels_select() has checked the CPU.
 *
 * Matmuls: one zmm holds one 4-input group of all 16 panel rows, so vpdpbusd multiplies it
 * by a broadcast 4-byte group of an activation row. VNNI wants unsigned x signed bytes: U4
 * codes are unsigned already; S8 codes are biased by +128 (xor 0x80) and the bias is taken
 * back exactly with the activation's integer sums. Float steps mirror kernels_ref.c, so the
 * results are bit-identical to the reference.
 */
#ifdef KVF_REF_ONLY
/* Built without SIMD kernels (scripts/fuzz.sh): an empty table kvf_kernels_select never picks. */
#    include "engine/kernels/kernels.h"
const kvf_kernels kvf_kernels_avx512 = {.name = "avx512"};
#else
#include "engine/kernels/kernels.h"
#include "common.h"
#include "engine/kernels/panel.h"
#include "engine/quant.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define AI static inline __attribute__((always_inline))

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

static inline __mmask16 row_mask(int nr) {
    return nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
}

AI void store_acc(float *y, __m512 acc, __mmask16 m, int accumulate) {
    if (accumulate) acc = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y), acc);
    _mm512_mask_storeu_ps(y, m, acc);
}

/* Float epilogue of one block (or half block) for one column, mirroring kernels_ref.c. */
AI __m512 block_acc(__m512 acc, __m512i ia, __m512i ial, const int TWO, __m512 sc, __m512 mn,
                    float d, float dl, float s) {
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia), _mm512_mul_ps(sc, _mm512_set1_ps(d)), acc);
    if (TWO)
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ial), _mm512_mul_ps(sc, _mm512_set1_ps(dl)), acc);
    return _mm512_fmadd_ps(mn, _mm512_set1_ps(s), acc);
}

/* ---- decoding a panel block (layouts: panel.h) ------------------------------------------ */

AI __m512 h16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
AI __m512 u8f(const uint8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
AI __m512 i8f(const uint8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* scale and min of the 16 rows for inputs 16h.. (kvf_panel_scale_min, vectorised) */
AI void blk_scales(const uint8_t *blk, const uint8_t *head, const kvf_panel_kind KIND, int h,
                   __m512 *sc, __m512 *mn) {
    switch (kvf_panel_hdr(KIND)) {
    case KVF_HDR_F16:
        *sc = h16(blk);
        *mn = _mm512_mul_ps(*sc, _mm512_set1_ps(kvf_panel_cmin(KIND)));
        break;
    case KVF_HDR_F16MIN: *sc = h16(blk), *mn = h16(blk + 32); break;
    case KVF_HDR_K:
        *sc = _mm512_mul_ps(h16(head), u8f(blk));
        *mn = _mm512_mul_ps(h16(head + 32), u8f(blk + 16));
        break;
    case KVF_HDR_K6:
        *sc = _mm512_mul_ps(h16(head), i8f(blk + 16 * h));
        *mn = _mm512_mul_ps(*sc, _mm512_set1_ps(-32.0f));
        break;
    case KVF_HDR_NONE: break;
    }
}

/* the codes of a block as 8 vectors of 4-input groups: byte 4r+t of w[g] = code(r, 4g+t)
 * (unsigned kinds as stored; S8 with the +128 bias vpdpbusd needs) */
AI void blk_codes(const uint8_t *blk, const kvf_panel_kind KIND, __m512i w[8]) {
    const uint8_t  *c  = blk + kvf_panel_hdr_bytes(KIND);
    const kvf_codes CS = kvf_panel_codes(KIND);
    if (CS == KVF_CODES_S8) {
        const __m512i bias = _mm512_set1_epi8((char)0x80);
        for (int g = 0; g < 8; g++) w[g] = _mm512_xor_si512(_mm512_loadu_si512(c + 64 * g), bias);
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int v = 0; v < 4; v++) {
        __m512i raw  = _mm512_loadu_si512(c + 64 * v);
        w[2 * v]     = _mm512_and_si512(raw, m4);
        w[2 * v + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
    }
    if (CS == KVF_CODES_U5) {
        const __m512i b4 = _mm512_set1_epi8(16);
        for (int g = 0; g < 8; g++) {
            uint64_t hb;
            memcpy(&hb, c + 256 + 8 * g, 8);
            w[g] = _mm512_mask_add_epi8(w[g], _cvtu64_mask64(hb), w[g], b4);
        }
    } else if (CS == KVF_CODES_U6) {
        const __m512i m30 = _mm512_set1_epi8(0x30);
        for (int p = 0; p < 2; p++) {
            const __m512i hv = _mm512_loadu_si512(c + 256 + 64 * p);
            /* group 4p + q takes bits 2q..2q+1 of each byte, moved to bits 4..5 */
            w[4 * p + 0] = _mm512_or_si512(w[4 * p + 0], _mm512_and_si512(_mm512_slli_epi16(hv, 4), m30));
            w[4 * p + 1] = _mm512_or_si512(w[4 * p + 1], _mm512_and_si512(_mm512_slli_epi16(hv, 2), m30));
            w[4 * p + 2] = _mm512_or_si512(w[4 * p + 2], _mm512_and_si512(hv, m30));
            w[4 * p + 3] = _mm512_or_si512(w[4 * p + 3], _mm512_and_si512(_mm512_srli_epi16(hv, 2), m30));
        }
    }
}

/* ---- integer-activation tiles ---------------------------------------------------------- */

/* one row of activations against groups g0..g0+ng-1; S8 starts from -128 * (sum of codes) to
 * take the bias back */
AI __m512i dot_groups(const __m512i *w, const int8_t *xq, int g0, int ng, int32_t bias_sum) {
    __m512i ia = _mm512_set1_epi32(-128 * bias_sum);
#pragma GCC unroll 8
    for (int g = g0; g < g0 + ng; g++) ia = _mm512_dpbusd_epi32(ia, w[g], bcast4(xq + 4 * g));
    return ia;
}

AI void int_tile(const uint8_t *panel, int64_t nb, const kvf_act *x, int64_t c, const int NC,
                 const int TWO, float *y, int64_t ldy, int nr, int accumulate,
                 const kvf_panel_kind KIND) {
    const int64_t K = x->n_in, KB = K / KVF_QK, KS = K / 16;
    const int     S8 = kvf_panel_codes(KIND) == KVF_CODES_S8, NSUB = KVF_QK / kvf_panel_sub(KIND);
    __m512        acc[8];
#pragma GCC unroll 8
    for (int i = 0; i < NC; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = kvf_panel_blk(panel, b, KIND), *head = kvf_panel_head(panel, b, KIND);
        __m512         sc[2], mn[2];
        __m512i        w[8];
        if (NC == 1) kvf_panel_prefetch(blk, KIND); /* decode streams the panel */
        for (int h = 0; h < NSUB; h++) blk_scales(blk, head, KIND, h, &sc[h], &mn[h]);
        blk_codes(blk, KIND, w);
#pragma GCC unroll 8
        for (int i = 0; i < NC; i++) {
            const int8_t  *xq  = x->q + (c + i) * K + b * KVF_QK;
            const int8_t  *xl  = TWO ? x->ql + (c + i) * K + b * KVF_QK : NULL;
            const int32_t *qs  = x->qsum + (c + i) * KS + 2 * b;
            const int32_t *qsl = TWO ? x->qsuml + (c + i) * KS + 2 * b : NULL;
            const float   *s   = x->s16 + (c + i) * KS + 2 * b;
            const float    d = x->d[(c + i) * KB + b], dl = TWO ? x->dl[(c + i) * KB + b] : 0.0f;
            if (NSUB == 1) {
                __m512i ia  = dot_groups(w, xq, 0, 8, S8 ? qs[0] + qs[1] : 0);
                __m512i ial = TWO ? dot_groups(w, xl, 0, 8, S8 ? qsl[0] + qsl[1] : 0) : ia;
                acc[i]      = block_acc(acc[i], ia, ial, TWO, sc[0], mn[0], d, dl, s[0] + s[1]);
            } else {
                for (int h = 0; h < 2; h++) {
                    __m512i ia  = dot_groups(w, xq, 4 * h, 4, S8 ? qs[h] : 0);
                    __m512i ial = TWO ? dot_groups(w, xl, 4 * h, 4, S8 ? qsl[h] : 0) : ia;
                    acc[i]      = block_acc(acc[i], ia, ial, TWO, sc[h], mn[h], d, dl, s[h]);
                }
            }
        }
    }
    __mmask16 m = row_mask(nr);
#pragma GCC unroll 8
    for (int i = 0; i < NC; i++) store_acc(y + (c + i) * ldy, acc[i], m, accumulate);
}

/* Column loop: full tiles of 8 columns, then one tile of the remainder (each size is its own
 * instantiation, so the accumulators stay in registers); one- and two-level activations are
 * separate instantiations too. */
#define GEMM_COLS(KIND, TWO)                                                                   \
    do {                                                                                       \
        int64_t c = c0, end = c0 + nc;                                                         \
        for (; c + 8 <= end; c += 8) int_tile(panel, nb, x, c, 8, TWO, y, ldy, nr, accumulate, KIND); \
        switch (end - c) {                                                                     \
        case 7: int_tile(panel, nb, x, c, 7, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 6: int_tile(panel, nb, x, c, 6, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 5: int_tile(panel, nb, x, c, 5, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 4: int_tile(panel, nb, x, c, 4, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 3: int_tile(panel, nb, x, c, 3, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 2: int_tile(panel, nb, x, c, 2, TWO, y, ldy, nr, accumulate, KIND); break;        \
        case 1: int_tile(panel, nb, x, c, 1, TWO, y, ldy, nr, accumulate, KIND); break;        \
        default: break;                                                                        \
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
 * A slice of FT_KC inputs of the panel is decoded once into a float tile wt[k][16] (one zmm
 * per input), then a 16-row x FT_NR-column micro-kernel (FT_NR zmm accumulators) runs over
 * the activation rows; partial sums between slices go through part[] unchanged, so each
 * output is one fmaf chain in input order (bit-identical to gemm_f_int_ref). With VNNI the
 * integer path is usually faster (kvf_kernels_avx512.float_rows = 0); this serves F32 panels
 * and KVFUSE_FLOAT_ROWS. */

#define FT_KC 256 /* inputs per decoded slice */
#define FT_NR 12  /* activation rows per micro-tile */
#define FT_CB 96  /* activation rows per pass over the slices */

/* decode block b into out[k * 16 + r] = fmaf(scale, code, min) */
AI void ft_dec(const uint8_t *panel, int64_t b, const kvf_panel_kind KIND, float *out) {
    const uint8_t *blk = kvf_panel_blk(panel, b, KIND), *head = kvf_panel_head(panel, b, KIND);
    const int      S8 = kvf_panel_codes(KIND) == KVF_CODES_S8, NSUB = KVF_QK / kvf_panel_sub(KIND);
    __m512         sc[2], mn[2];
    __m512i        w[8];
    for (int h = 0; h < NSUB; h++) blk_scales(blk, head, KIND, h, &sc[h], &mn[h]);
    if (S8)
        for (int g = 0; g < 8; g++) w[g] = _mm512_loadu_si512(blk + kvf_panel_hdr_bytes(KIND) + 64 * g);
    else
        blk_codes(blk, KIND, w);
    const __m512i mff = _mm512_set1_epi32(0xFF);
    for (int g = 0; g < 8; g++) {
        const int h = NSUB == 2 ? g / 4 : 0;
        for (int t = 0; t < 4; t++) {
            /* byte t of lane r is code(r, 4g + t) */
            __m512i ci = S8 ? _mm512_srai_epi32(_mm512_slli_epi32(w[g], 24 - 8 * t), 24)
                            : _mm512_and_si512(_mm512_srli_epi32(w[g], 8 * t), mff);
            _mm512_store_ps(out + (4 * g + t) * 16, _mm512_fmadd_ps(sc[h], _mm512_cvtepi32_ps(ci), mn[h]));
        }
    }
}

AI void ft_cols(const float *w, int kc, const kvf_act *x, int64_t c, int64_t k0, const int NC,
                float *part, int first, int last, float *y, int64_t ldy, int nr, int accumulate) {
    __m512        a[FT_NR];
    const int64_t ldf = x->ldf;
    const float  *xb  = x->f + c * ldf + k0;
#pragma GCC unroll 12
    for (int i = 0; i < NC; i++) a[i] = first ? _mm512_setzero_ps() : _mm512_load_ps(part + 16 * i);
#pragma GCC unroll 2
    for (int k = 0; k < kc; k++) {
        const __m512 w0 = _mm512_load_ps(w + 16 * k);
#pragma GCC unroll 12
        for (int i = 0; i < NC; i++) a[i] = _mm512_fmadd_ps(w0, _mm512_set1_ps(xb[i * ldf + k]), a[i]);
    }
    __mmask16 m = row_mask(nr);
#pragma GCC unroll 12
    for (int i = 0; i < NC; i++) {
        if (last)
            store_acc(y + (c + i) * ldy, a[i], m, accumulate);
        else
            _mm512_store_ps(part + 16 * i, a[i]);
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
#define FT_CASE(N) case N: ft_cols(w, kc, x, c, k0, N, pp, first, last, y, ldy, nr, accumulate); break;
            FT_CASE(11) FT_CASE(10) FT_CASE(9) FT_CASE(8) FT_CASE(7) FT_CASE(6)
            FT_CASE(5) FT_CASE(4) FT_CASE(3) FT_CASE(2) FT_CASE(1)
#undef FT_CASE
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

/* ---- activation quantisation (bit-identical to kvf_quantize_row_q8_ref) ---------------- */

static void quantize_row(const float *x, int64_t n, int8_t *q, float *d, float *s16,
                         int32_t *qsum, int8_t *ql, float *dlo, int32_t *qsuml) {
    const __m512  absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512  lim = _mm512_set1_ps(127.0f), nlim = _mm512_set1_ps(-127.0f);
    for (int64_t b = 0; b < n / KVF_QK; b++) {
        __m512 xv[2] = {_mm512_loadu_ps(x + 32 * b), _mm512_loadu_ps(x + 32 * b + 16)};
        __m512 am    = _mm512_max_ps(_mm512_and_ps(xv[0], absmask), _mm512_and_ps(xv[1], absmask));
        float  amax  = _mm512_reduce_max_ps(am);
        float  db    = amax / 127.0f;
        float  id    = db != 0.0f ? 1.0f / db : 0.0f;
        float  dl    = db / 254.0f;
        float  idl   = dl != 0.0f ? 1.0f / dl : 0.0f;
        d[b]         = db;
        if (ql) dlo[b] = dl;
        for (int h = 0; h < 2; h++) {
            /* round to nearest even (as nearbyintf), clamp, then convert exactly */
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(xv[h], _mm512_set1_ps(id)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v        = _mm512_max_ps(_mm512_min_ps(v, lim), nlim);
            __m512i iv = _mm512_cvtps_epi32(v);
            _mm_storeu_si128((__m128i *)(q + 32 * b + 16 * h), _mm512_cvtepi32_epi8(iv));
            int sh = _mm512_reduce_add_epi32(iv);
            qsum[2 * b + h] = sh;
            s16[2 * b + h]  = db * (float)sh;
            if (ql) {
                __m512 r = _mm512_fnmadd_ps(v, _mm512_set1_ps(db), xv[h]);
                __m512 w = _mm512_roundscale_ps(_mm512_mul_ps(r, _mm512_set1_ps(idl)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                w          = _mm512_max_ps(_mm512_min_ps(w, lim), nlim);
                __m512i iw = _mm512_cvtps_epi32(w);
                _mm_storeu_si128((__m128i *)(ql + 32 * b + 16 * h), _mm512_cvtepi32_epi8(iw));
                int sl           = _mm512_reduce_add_epi32(iw);
                qsuml[2 * b + h] = sl;
                s16[2 * b + h] += dl * (float)sl;
            }
        }
    }
}

/* ---- exp ------------------------------------------------------------------------------- */

/* e^x for a vector: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, then scale by
 * 2^n with vscalefps (which also handles overflow to inf and underflow to 0). Max relative
 * error ~2 ulp over the float range; exp(-inf) = 0. */
static inline __m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2lo = _mm512_set1_ps(-2.12194440e-4f);
    x                  = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* e^-104 underflows */
    x                  = _mm512_min_ps(x, _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2hi, x);
    r        = _mm512_fnmadd_ps(n, ln2lo, r);
    __m512 p = _mm512_set1_ps(1.3981999507e-3f);
    p        = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p        = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p        = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p        = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p        = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

/* ---- attention (flash-style: key blocks of 64, online softmax) ------------------------- */

/* 16 keys or value components at p (element index), from an f32 or f16 cache */
AI __m512 ld16(const void *p, int64_t i, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)))
               : _mm512_loadu_ps((const float *)p + i);
}

/* S[m][0..64) = scale * q_m . k_{j0..j0+64} for R rows starting at m0 */
AI void qk_rows(const float *const *q, int m0, const int R, const void *kt, int64_t j0, int hd,
                float scale, float *S, const int F16) {
    __m512 acc[6][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = _mm512_setzero_ps();
    for (int i = 0; i < hd; i++) {
        int64_t kr = kvf_kt_idx(i, j0, hd); /* the 64 keys of tile j0 / 64 */
        __m512  k0 = ld16(kt, kr, F16), k1 = ld16(kt, kr + 16, F16);
        __m512  k2 = ld16(kt, kr + 32, F16), k3 = ld16(kt, kr + 48, F16);
        for (int r = 0; r < R; r++) {
            __m512 qv = _mm512_set1_ps(q[m0 + r][i]);
            acc[r][0] = _mm512_fmadd_ps(qv, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qv, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(qv, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(qv, k3, acc[r][3]);
        }
    }
    __m512 vs = _mm512_set1_ps(scale);
    for (int r = 0; r < R; r++)
        for (int t = 0; t < 4; t++)
            _mm512_store_ps(S + (int64_t)(m0 + r) * KVF_ATTN_BK + 16 * t,
                            _mm512_mul_ps(acc[r][t], vs));
}

/* o_m = o_m * alpha_m + sum_j P[m][j] v_j for R rows, hd = 16 * HV */
AI void pv_rows(float *const *o, int m0, const int R, const float *P, const float *alpha,
                const void *v, int64_t j0, int jn, const int HV, const int F16) {
    __m512 acc[4][8];
    for (int r = 0; r < R; r++) {
        __m512 a = _mm512_set1_ps(alpha[m0 + r]);
        for (int t = 0; t < HV; t++) acc[r][t] = _mm512_mul_ps(_mm512_loadu_ps(o[m0 + r] + 16 * t), a);
    }
    for (int j = 0; j < jn; j++) {
        int64_t vr = (j0 + j) * (16 * HV);
        __m512  vv[8];
        for (int t = 0; t < HV; t++) vv[t] = ld16(v, vr + 16 * t, F16);
        for (int r = 0; r < R; r++) {
            __m512 p = _mm512_set1_ps(P[(int64_t)(m0 + r) * KVF_ATTN_BK + j]);
            for (int t = 0; t < HV; t++) acc[r][t] = _mm512_fmadd_ps(p, vv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < HV; t++) _mm512_storeu_ps(o[m0 + r] + 16 * t, acc[r][t]);
}

AI void pv_block(float *const *o, int M, const float *P, const float *alpha, const void *v,
                 int64_t j0, int jn, int hd, const int F16) {
    int m = 0;
    /* 4 rows at a time while 4*HV accumulators fit in the 32 registers, else 2 */
#define PV_CASE(HV)                                                                            \
    case HV:                                                                                   \
        if (HV <= 4)                                                                           \
            for (; m + 4 <= M; m += 4) pv_rows(o, m, 4, P, alpha, v, j0, jn, HV, F16);         \
        for (; m + 2 <= M; m += 2) pv_rows(o, m, 2, P, alpha, v, j0, jn, HV, F16);             \
        for (; m < M; m++) pv_rows(o, m, 1, P, alpha, v, j0, jn, HV, F16);                     \
        break;
    switch (hd / 16) {
        PV_CASE(1) PV_CASE(2) PV_CASE(3) PV_CASE(4) PV_CASE(5) PV_CASE(6) PV_CASE(7) PV_CASE(8)
    default: KVF_ASSERT(0);
    }
#undef PV_CASE
}

AI void attn_impl(const float *const *q, float *const *o, const int32_t *kv_end, int M,
                  const void *kt, const void *v, int hd, float scale, float *work,
                  const int F16) {
    KVF_ASSERT(M <= KVF_ATTN_MAX_M && hd % 16 == 0 && hd <= 128);
    float *S     = work;                        /* [M][64], 64-byte aligned by the caller */
    float *mrow  = S + (int64_t)M * KVF_ATTN_BK; /* [M] */
    float *lrow  = mrow + M;
    float *alpha = lrow + M;
    int    n_max = 0;
    for (int m = 0; m < M; m++) {
        n_max   = KVF_MAX(n_max, kv_end[m]);
        mrow[m] = -INFINITY;
        lrow[m] = 0.0f;
        memset(o[m], 0, sizeof(float) * (size_t)hd);
    }
    for (int64_t j0 = 0; j0 < n_max; j0 += KVF_ATTN_BK) {
        int jn = (int)KVF_MIN((int64_t)KVF_ATTN_BK, n_max - j0);
        int m  = 0;
        for (; m + 6 <= M; m += 6) qk_rows(q, m, 6, kt, j0, hd, scale, S, F16);
        switch (M - m) {
        case 5: qk_rows(q, m, 5, kt, j0, hd, scale, S, F16); break;
        case 4: qk_rows(q, m, 4, kt, j0, hd, scale, S, F16); break;
        case 3: qk_rows(q, m, 3, kt, j0, hd, scale, S, F16); break;
        case 2: qk_rows(q, m, 2, kt, j0, hd, scale, S, F16); break;
        case 1: qk_rows(q, m, 1, kt, j0, hd, scale, S, F16); break;
        default: break;
        }
        for (m = 0; m < M; m++) {
            float  *s    = S + (int64_t)m * KVF_ATTN_BK;
            int64_t vis  = kv_end[m] - j0; /* visible keys of this block */
            if (vis <= 0) {                 /* nothing visible: leave this row unchanged */
                memset(s, 0, sizeof(float) * KVF_ATTN_BK);
                alpha[m] = 1.0f;
                continue;
            }
            __m512 sv[4], mx = _mm512_set1_ps(-INFINITY);
            for (int t = 0; t < 4; t++) {
                int64_t   lo   = 16 * t;
                __mmask16 keep = vis >= lo + 16 ? 0xFFFF
                                 : vis <= lo    ? 0
                                                : (__mmask16)((1u << (vis - lo)) - 1);
                sv[t]          = _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY),
                                                      _mm512_load_ps(s + lo));
                mx             = _mm512_max_ps(mx, sv[t]);
            }
            float m_new = fmaxf(mrow[m], _mm512_reduce_max_ps(mx));
            alpha[m]    = expf(mrow[m] - m_new); /* 0 on the first block (-inf) */
            mrow[m]     = m_new;
            __m512 vm = _mm512_set1_ps(m_new), sum = _mm512_setzero_ps();
            for (int t = 0; t < 4; t++) {
                /* masked keys get exactly 0 (their score is -inf) */
                __mmask16 live = _mm512_cmp_ps_mask(sv[t], _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
                __m512    p    = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(sv[t], vm)));
                sum            = _mm512_add_ps(sum, p);
                _mm512_store_ps(s + 16 * t, p);
            }
            lrow[m] = lrow[m] * alpha[m] + _mm512_reduce_add_ps(sum);
        }
        pv_block(o, M, S, alpha, v, j0, jn, hd, F16);
    }
    for (int m = 0; m < M; m++) {
        __m512 inv = _mm512_set1_ps(1.0f / lrow[m]);
        for (int t = 0; t < hd / 16; t++)
            _mm512_storeu_ps(o[m] + 16 * t, _mm512_mul_ps(_mm512_loadu_ps(o[m] + 16 * t), inv));
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

/* SALE block estimate (kernels.h): 16 keys per vector, one vpdpbusd per 4 components. */
static int attn_est(const int8_t *q, const int32_t *qsum, const float *qs, const float *t,
                    const int32_t *lim, int M, const uint8_t *k, const float *ks, int hd) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 ksv[4];
    for (int g = 0; g < 4; g++) ksv[g] = _mm512_loadu_ps(ks + 16 * g);
    for (int m = 0; m < M; m++) {
        if (lim[m] <= 0) continue;
        __m512i acc[4];
        for (int g = 0; g < 4; g++) acc[g] = _mm512_set1_epi32(-128 * qsum[m]);
        const int8_t *qm = q + (int64_t)m * hd;
        for (int i4 = 0; i4 < hd / 4; i4++) {
            int32_t qv;
            memcpy(&qv, qm + 4 * i4, 4);
            __m512i        qb = _mm512_set1_epi32(qv);
            const uint8_t *kb = k + (int64_t)i4 * 4 * KVF_ATTN_BK;
            for (int g = 0; g < 4; g++)
                acc[g] = _mm512_dpbusd_epi32(acc[g], _mm512_loadu_si512(kb + 64 * g), qb);
        }
        __m512 qsv = _mm512_set1_ps(qs[m]), tv = _mm512_set1_ps(t[m]);
        for (int g = 0; g < 4 && 16 * g < lim[m]; g++) {
            __m512    e    = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[g]), ksv[g]), qsv);
            __mmask16 live = _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32(lim[m] - 16 * g));
            if (_mm512_mask_cmp_ps_mask(live, e, tv, _CMP_GT_OQ)) return 1;
        }
    }
    return 0;
}

/* ---- small ops ------------------------------------------------------------------------- */

static void rmsnorm(const float *x, const float *w, float *y, int64_t n, float eps) {
    __m512  acc = _mm512_setzero_ps();
    int64_t i   = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        acc      = _mm512_fmadd_ps(v, v, acc);
    }
    float ss = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) ss += x[i] * x[i];
    float  r  = 1.0f / sqrtf(ss / (float)n + eps);
    __m512 vr = _mm512_set1_ps(r);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vr),
                                              _mm512_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = x[i] * r * w[i];
}

static void swiglu(const float *g, const float *u, float *out, int64_t n) {
    int64_t      i   = 0;
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 gv = _mm512_loadu_ps(g + i);
        __m512 e  = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        __m512 s  = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    for (; i < n; i++) out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void axpy(float a, const float *x, float *y, int64_t n) {
    int64_t i  = 0;
    __m512  va = _mm512_set1_ps(a);
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    for (; i < n; i++) dst[i] = kvf_fp16_to_fp32(src[i]);
}

static void f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) dst[i] = kvf_fp32_to_fp16(src[i]);
}

const kvf_kernels kvf_kernels_avx512 = {
    .name         = "avx512",
    .gemm         = {KVF_INT_PANELS(GEMM_ENTRY)[KVF_PANEL_F32] = gemm_f_f32},
    .gemm_f       = {KVF_INT_PANELS(GEMM_F_ENTRY)[KVF_PANEL_F32] = gemm_f_f32},
    .float_rows   = 0, /* VNNI int8 is faster; see above */
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
