/* quant.c - block decoders for every supported weight type, the reference dequantiser, the
 * reference activation quantiser, and simple reference quantisers for test data.
 *
 * Block layouts (ggml's, little-endian, f16 = IEEE half):
 *   Q4_0 {f16 d; u8 qs[16]}            x = d*(q-8); q of element j<16 = qs[j]&15, j>=16: qs[j-16]>>4
 *   Q4_1 {f16 d, m; u8 qs[16]}         x = d*q + m
 *   Q5_0 {f16 d; u8 qh[4]; u8 qs[16]}  fifth bit of element j = bit j of qh; x = d*(q-16)
 *   Q5_1 {f16 d, m; u8 qh[4]; u8 qs[16]}  x = d*q + m
 *   Q8_0 {f16 d; i8 qs[32]}            x = d*q
 *   Q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]}   8 sub-blocks of 32 with 6-bit scale/min:
 *        x = (d*sc)*q - dmin*m
 *   Q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}
 *   Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}  16 sub-blocks of 16: x = (d*sc)*(q-32)
 */
#include "engine/quant.h"
#include "common.h"

#include <math.h>
#include <string.h>

/* ---- half precision -------------------------------------------------------------------- */

float kvf_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp  = (h >> 10) & 0x1f;
    uint32_t man  = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t kvf_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (absx < 0x38800000u) {                                   /* subnormal half or zero */
        if (absx < 0x33000000u) return (uint16_t)sign;          /* < 2^-25: rounds to 0 */
        /* value = m * 2^(e-150); the half subnormal unit is 2^-24, so q = m >> (126 - e) */
        uint32_t e       = absx >> 23;
        uint32_t m       = (absx & 0x7fffff) | 0x800000;
        uint32_t shift   = 126 - e; /* 14..24 */
        uint32_t r       = m >> shift;
        uint32_t rem     = m & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t e   = (absx >> 23) - 127 + 15;
    uint32_t m   = absx & 0x7fffff;
    uint32_t h   = (e << 10) | (m >> 13);
    uint32_t rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into the exponent: ok */
    return (uint16_t)(sign | h);
}

float kvf_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float    f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return kvf_fp16_to_fp32(h);
}

static inline void wr_f16(uint8_t *p, float f) {
    uint16_t h = kvf_fp32_to_fp16(f);
    memcpy(p, &h, 2);
}

/* ---- block decoders -------------------------------------------------------------------- */

static void unpack_q4_0(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b = blk;
    scale[0]         = rd_f16(b);
    min[0]           = 0.0f;
    for (int j = 0; j < 16; j++) {
        c[j]      = (int8_t)((b[2 + j] & 15) - 8);
        c[j + 16] = (int8_t)((b[2 + j] >> 4) - 8);
    }
}

static void unpack_q4_1(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b = blk;
    scale[0]         = rd_f16(b);
    min[0]           = rd_f16(b + 2);
    for (int j = 0; j < 16; j++) {
        c[j]      = (int8_t)(b[4 + j] & 15);
        c[j + 16] = (int8_t)(b[4 + j] >> 4);
    }
}

static void unpack_q5_0(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b = blk;
    uint32_t       qh;
    memcpy(&qh, b + 2, 4);
    scale[0] = rd_f16(b);
    min[0]   = 0.0f;
    for (int j = 0; j < 16; j++) {
        c[j]      = (int8_t)(((b[6 + j] & 15) | (((qh >> j) & 1) << 4)) - 16);
        c[j + 16] = (int8_t)(((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16);
    }
}

static void unpack_q5_1(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b = blk;
    uint32_t       qh;
    memcpy(&qh, b + 4, 4);
    scale[0] = rd_f16(b);
    min[0]   = rd_f16(b + 2);
    for (int j = 0; j < 16; j++) {
        c[j]      = (int8_t)((b[8 + j] & 15) | (((qh >> j) & 1) << 4));
        c[j + 16] = (int8_t)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4));
    }
}

static void unpack_q8_0(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b = blk;
    scale[0]         = rd_f16(b);
    min[0]           = 0.0f;
    memcpy(c, b + 2, 32);
}

/* 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block. */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m  = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m  = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void unpack_q4_k(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b    = blk;
    float          d    = rd_f16(b);
    float          dmin = rd_f16(b + 2);
    const uint8_t *qs   = b + 16;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k_scale_min(b + 4, j, &sc, &m);
        scale[j] = d * (float)sc;
        min[j]   = -(dmin * (float)m);
    }
    for (int ch = 0; ch < 4; ch++)
        for (int l = 0; l < 32; l++) {
            c[64 * ch + l]      = (int8_t)(qs[32 * ch + l] & 15);
            c[64 * ch + 32 + l] = (int8_t)(qs[32 * ch + l] >> 4);
        }
}

static void unpack_q5_k(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *b    = blk;
    float          d    = rd_f16(b);
    float          dmin = rd_f16(b + 2);
    const uint8_t *qh   = b + 16;
    const uint8_t *qs   = b + 48;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k_scale_min(b + 4, j, &sc, &m);
        scale[j] = d * (float)sc;
        min[j]   = -(dmin * (float)m);
    }
    for (int ch = 0; ch < 4; ch++)
        for (int l = 0; l < 32; l++) {
            int lo = qs[32 * ch + l] & 15, hi = qs[32 * ch + l] >> 4;
            c[64 * ch + l]      = (int8_t)(lo | (((qh[l] >> (2 * ch)) & 1) << 4));
            c[64 * ch + 32 + l] = (int8_t)(hi | (((qh[l] >> (2 * ch + 1)) & 1) << 4));
        }
}

static void unpack_q6_k(const void *blk, int8_t *c, float *scale, float *min) {
    const uint8_t *ql = blk;
    const uint8_t *qh = ql + 128;
    const int8_t  *sc = (const int8_t *)(ql + 192);
    float          d  = rd_f16(ql + 208);
    for (int j = 0; j < 16; j++) {
        scale[j] = d * (float)sc[j];
        min[j]   = 0.0f;
    }
    for (int h = 0; h < 2; h++)
        for (int e = 0; e < 128; e++) {
            int lo = ql[64 * h + (e & 63)];
            lo     = e < 64 ? (lo & 15) : (lo >> 4);
            int hi = (qh[32 * h + (e & 31)] >> (2 * (e >> 5))) & 3;
            c[128 * h + e] = (int8_t)((lo | (hi << 4)) - 32);
        }
}

static const kvf_quant_traits g_quant[KVF_TYPE_COUNT] = {
    [KVF_TYPE_F32]  = {KVF_TYPE_F32, "F32", 1, 4, 0, 0, 0, KVF_PANEL_F32, NULL},
    [KVF_TYPE_F16]  = {KVF_TYPE_F16, "F16", 1, 2, 0, 0, 0, KVF_PANEL_F32, NULL},
    [KVF_TYPE_BF16] = {KVF_TYPE_BF16, "BF16", 1, 2, 0, 0, 0, KVF_PANEL_F32, NULL},
    [KVF_TYPE_Q4_0] = {KVF_TYPE_Q4_0, "Q4_0", 32, 18, 32, -8, 7, KVF_PANEL_Q4_0, unpack_q4_0},
    [KVF_TYPE_Q4_1] = {KVF_TYPE_Q4_1, "Q4_1", 32, 20, 32, 0, 15, KVF_PANEL_Q4_1, unpack_q4_1},
    [KVF_TYPE_Q5_0] = {KVF_TYPE_Q5_0, "Q5_0", 32, 22, 32, -16, 15, KVF_PANEL_Q5_0, unpack_q5_0},
    [KVF_TYPE_Q5_1] = {KVF_TYPE_Q5_1, "Q5_1", 32, 24, 32, 0, 31, KVF_PANEL_Q5_1, unpack_q5_1},
    [KVF_TYPE_Q8_0] = {KVF_TYPE_Q8_0, "Q8_0", 32, 34, 32, -128, 127, KVF_PANEL_Q8_0, unpack_q8_0},
    [KVF_TYPE_Q4_K] = {KVF_TYPE_Q4_K, "Q4_K", 256, 144, 32, 0, 15, KVF_PANEL_Q4_K, unpack_q4_k},
    [KVF_TYPE_Q5_K] = {KVF_TYPE_Q5_K, "Q5_K", 256, 176, 32, 0, 31, KVF_PANEL_Q5_K, unpack_q5_k},
    [KVF_TYPE_Q6_K] = {KVF_TYPE_Q6_K, "Q6_K", 256, 210, 16, -32, 31, KVF_PANEL_Q6_K,
                       unpack_q6_k},
};

void kvf_quant_fields(uint32_t type, const void *blk, kvf_qfields *f) {
    const uint8_t *b = blk;
    memset(f, 0, sizeof *f);
    switch (type) {
    case KVF_TYPE_Q4_1:
    case KVF_TYPE_Q5_1: memcpy(&f->m, b + 2, 2); /* fall through */
    case KVF_TYPE_Q4_0:
    case KVF_TYPE_Q5_0:
    case KVF_TYPE_Q8_0: memcpy(&f->d, b, 2); break;
    case KVF_TYPE_Q4_K:
    case KVF_TYPE_Q5_K:
        memcpy(&f->d, b, 2);
        memcpy(&f->m, b + 2, 2);
        f->m ^= 0x8000; /* -dmin: min = (-dmin) * m == -(dmin * m) exactly */
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k_scale_min(b + 4, j, &sc, &m);
            f->sc[j] = (uint8_t)sc, f->mn[j] = (uint8_t)m;
        }
        break;
    case KVF_TYPE_Q6_K:
        memcpy(f->sc, b + 192, 16);
        memcpy(&f->d, b + 208, 2);
        break;
    default: break;
    }
}

const kvf_quant_traits *kvf_quant_get(uint32_t type) {
    if (type >= KVF_TYPE_COUNT || g_quant[type].name == NULL) return NULL;
    return &g_quant[type];
}

void kvf_dequantize(uint32_t type, const void *src, float *dst, int64_t n) {
    const kvf_quant_traits *qt = kvf_quant_get(type);
    KVF_ASSERT(qt && n % qt->block == 0);
    const uint8_t *s = src;
    if (type == KVF_TYPE_F32) {
        memcpy(dst, src, (size_t)n * 4);
        return;
    }
    if (type == KVF_TYPE_F16 || type == KVF_TYPE_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = type == KVF_TYPE_F16 ? kvf_fp16_to_fp32(h) : kvf_bf16_to_fp32(h);
        }
        return;
    }
    int8_t codes[256];
    float  scale[16], min[16];
    for (int64_t b = 0; b < n / qt->block; b++) {
        qt->unpack(s + b * qt->bytes, codes, scale, min);
        float *y = dst + b * qt->block;
        for (uint32_t i = 0; i < qt->block; i++) {
            uint32_t j = i / qt->sub;
            y[i]       = scale[j] * (float)codes[i] + min[j];
        }
    }
}

/* ---- activation quantisation ----------------------------------------------------------- */

void kvf_quantize_row_q8_ref(const float *x, int64_t n, int8_t *q, float *d, float *s16,
                             int32_t *qsum, int8_t *ql, float *dlo, int32_t *qsuml) {
    for (int64_t b = 0; b < n / KVF_QK; b++) {
        const float *xb   = x + b * KVF_QK;
        float        amax = 0.0f;
        for (int i = 0; i < KVF_QK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float db  = amax / 127.0f;
        float id  = db != 0.0f ? 1.0f / db : 0.0f;
        float dl  = db / 254.0f;
        float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
        int   sum[2] = {0, 0}, suml[2] = {0, 0};
        for (int i = 0; i < KVF_QK; i++) {
            float v = nearbyintf(xb[i] * id);
            v       = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[b * KVF_QK + i] = (int8_t)v;
            sum[i >> 4] += (int)v;
            if (ql) {
                float r = fmaf(-v, db, xb[i]);
                float w = nearbyintf(r * idl);
                w       = w > 127.0f ? 127.0f : w < -127.0f ? -127.0f : w;
                ql[b * KVF_QK + i] = (int8_t)w;
                suml[i >> 4] += (int)w;
            }
        }
        d[b] = db;
        if (ql) dlo[b] = dl;
        for (int h = 0; h < 2; h++) {
            s16[2 * b + h]  = db * (float)sum[h];
            qsum[2 * b + h] = sum[h];
            if (ql) {
                s16[2 * b + h] += dl * (float)suml[h];
                qsuml[2 * b + h] = suml[h];
            }
        }
    }
}

/* ---- reference quantisers (for tests and synthetic models) ----------------------------- */

static float absmax_signed(const float *x, int n) {
    float m = 0.0f, am = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > am) am = fabsf(x[i]), m = x[i];
    return m;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    *mn = *mx = x[0];
    for (int i = 1; i < n; i++) *mn = fminf(*mn, x[i]), *mx = fmaxf(*mx, x[i]);
}

static int clampi(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

static void pack_nibbles(const int *q, uint8_t *qs) {
    for (int j = 0; j < 16; j++) qs[j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

static void quant_q4_0(const float *x, uint8_t *b) {
    float m = absmax_signed(x, 32), d = m / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    int   q[32];
    for (int i = 0; i < 32; i++) q[i] = clampi((int)(x[i] * id + 8.5f), 0, 15);
    wr_f16(b, d);
    pack_nibbles(q, b + 2);
}

static void quant_q4_1(const float *x, uint8_t *b) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    float d = (mx - mn) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
    int   q[32];
    for (int i = 0; i < 32; i++) q[i] = clampi((int)((x[i] - mn) * id + 0.5f), 0, 15);
    wr_f16(b, d);
    wr_f16(b + 2, mn);
    pack_nibbles(q, b + 4);
}

static void pack_q5(const int *q, uint8_t *qh4, uint8_t *qs) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    memcpy(qh4, &qh, 4);
}

static void quant_q5_0(const float *x, uint8_t *b) {
    float m = absmax_signed(x, 32), d = m / -16.0f, id = d != 0 ? 1.0f / d : 0.0f;
    int   q[32];
    for (int i = 0; i < 32; i++) q[i] = clampi((int)(x[i] * id + 16.5f), 0, 31);
    wr_f16(b, d);
    pack_q5(q, b + 2, b + 6);
}

static void quant_q5_1(const float *x, uint8_t *b) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    float d = (mx - mn) / 31.0f, id = d != 0 ? 1.0f / d : 0.0f;
    int   q[32];
    for (int i = 0; i < 32; i++) q[i] = clampi((int)((x[i] - mn) * id + 0.5f), 0, 31);
    wr_f16(b, d);
    wr_f16(b + 2, mn);
    pack_q5(q, b + 4, b + 8);
}

static void quant_q8_0(const float *x, uint8_t *b) {
    float am = fabsf(absmax_signed(x, 32)), d = am / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    wr_f16(b, d);
    for (int i = 0; i < 32; i++) b[2 + i] = (uint8_t)(int8_t)clampi((int)roundf(x[i] * id), -127, 127);
}

/* Q4_K / Q5_K: per 32-sub-block affine (scale, min>=0 subtracted), 6-bit scales. */
static void quant_k45(const float *x, uint8_t *b, int bits) {
    int   nmax = (1 << bits) - 1;
    float sub_scale[8], sub_min[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float mn, mx;
        minmax(x + 32 * j, 32, &mn, &mx);
        if (mn > 0) mn = 0;
        sub_scale[j] = (mx - mn) / (float)nmax;
        sub_min[j]   = -mn;
        max_scale    = fmaxf(max_scale, sub_scale[j]);
        max_min      = fmaxf(max_min, sub_min[j]);
    }
    float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    int   sc[8], mm[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? clampi((int)roundf(sub_scale[j] / d), 0, 63) : 0;
        mm[j] = dmin > 0 ? clampi((int)roundf(sub_min[j] / dmin), 0, 63) : 0;
    }
    wr_f16(b, d);
    wr_f16(b + 2, dmin);
    d    = rd_f16(b); /* use the stored (rounded) values when quantising */
    dmin = rd_f16(b + 2);
    uint8_t *s = b + 4;
    for (int j = 0; j < 4; j++) {
        s[j]     = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((mm[j] & 63) | ((mm[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mm[j + 4] & 15) << 4));
    }
    int q[256];
    for (int j = 0; j < 8; j++) {
        float ds = d * (float)sc[j], dm = dmin * (float)mm[j];
        for (int i = 0; i < 32; i++)
            q[32 * j + i] = ds > 0 ? clampi((int)roundf((x[32 * j + i] + dm) / ds), 0, nmax) : 0;
    }
    uint8_t *qs = bits == 4 ? b + 16 : b + 48;
    if (bits == 5) memset(b + 16, 0, 32);
    for (int ch = 0; ch < 4; ch++)
        for (int l = 0; l < 32; l++) {
            int lo = q[64 * ch + l], hi = q[64 * ch + 32 + l];
            qs[32 * ch + l] = (uint8_t)((lo & 15) | ((hi & 15) << 4));
            if (bits == 5) {
                b[16 + l] |= (uint8_t)(((lo >> 4) & 1) << (2 * ch));
                b[16 + l] |= (uint8_t)(((hi >> 4) & 1) << (2 * ch + 1));
            }
        }
}

static void quant_q6_k(const float *x, uint8_t *b) {
    float sub[16], maxs = 0;
    for (int j = 0; j < 16; j++) {
        float am = fabsf(absmax_signed(x + 16 * j, 16));
        sub[j]   = am / 31.0f;
        maxs     = fmaxf(maxs, sub[j]);
    }
    float   d = maxs / 127.0f;
    int8_t *sc = (int8_t *)(b + 192);
    wr_f16(b + 208, d);
    d = rd_f16(b + 208);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)(d > 0 ? clampi((int)roundf(sub[j] / d), -127, 127) : 0);
    int q[256];
    for (int i = 0; i < 256; i++) {
        float ds = d * (float)sc[i / 16];
        q[i]     = ds != 0 ? clampi((int)roundf(x[i] / ds), -32, 31) + 32 : 32;
    }
    uint8_t *ql = b, *qh = b + 128;
    memset(ql, 0, 128);
    memset(qh, 0, 64);
    for (int h = 0; h < 2; h++)
        for (int e = 0; e < 128; e++) {
            int v = q[128 * h + e];
            ql[64 * h + (e & 63)] |= (uint8_t)((v & 15) << (e < 64 ? 0 : 4));
            qh[32 * h + (e & 31)] |= (uint8_t)(((v >> 4) & 3) << (2 * (e >> 5)));
        }
}

int kvf_quantize(uint32_t type, const float *src, void *dst, int64_t n) {
    const kvf_quant_traits *qt = kvf_quant_get(type);
    if (!qt || n % qt->block != 0) return -1;
    uint8_t *o = dst;
    switch (type) {
    case KVF_TYPE_F32: memcpy(dst, src, (size_t)n * 4); return 0;
    case KVF_TYPE_F16:
        for (int64_t i = 0; i < n; i++) wr_f16(o + 2 * i, src[i]);
        return 0;
    case KVF_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &src[i], 4);
            bits += 0x7fff + ((bits >> 16) & 1); /* round to nearest even (finite inputs) */
            uint16_t h = (uint16_t)(bits >> 16);
            memcpy(o + 2 * i, &h, 2);
        }
        return 0;
    default: break;
    }
    for (int64_t b = 0; b < n / qt->block; b++) {
        const float *x  = src + b * qt->block;
        uint8_t     *ob = o + b * qt->bytes;
        switch (type) {
        case KVF_TYPE_Q4_0: quant_q4_0(x, ob); break;
        case KVF_TYPE_Q4_1: quant_q4_1(x, ob); break;
        case KVF_TYPE_Q5_0: quant_q5_0(x, ob); break;
        case KVF_TYPE_Q5_1: quant_q5_1(x, ob); break;
        case KVF_TYPE_Q8_0: quant_q8_0(x, ob); break;
        case KVF_TYPE_Q4_K: quant_k45(x, ob, 4); break;
        case KVF_TYPE_Q5_K: quant_k45(x, ob, 5); break;
        case KVF_TYPE_Q6_K: quant_q6_k(x, ob); break;
        default: return -1;
        }
    }
    return 0;
}
