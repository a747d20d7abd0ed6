/* matmul.c - packing GGUF weights into panels, activation quantisation, and the threaded
 * driver that hands (panel group x row group) work items to the kernels. */
#include "engine/matmul.h"
#include "engine/kernels/panel.h"
#include "common.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- packing --------------------------------------------------------------------------- */

typedef struct {
    uint32_t                type;
    const kvf_quant_traits *qt;
    const uint8_t          *src;
    int64_t                 row_bytes;
    kvf_weight             *w;
    atomic_int_fast64_t     next;
    atomic_int              failed;
} pack_ctx;

/* Write row r of block b of a panel: the block's header fields from the type block's raw
 * fields f (j = which 32 inputs of the type block) and its 32 codes (unsigned kinds: shifted
 * to start at 0). Layouts: kernels/panel.h. */
static void put_block(kvf_panel_kind kind, uint8_t *panel, int64_t b, int r, const kvf_qfields *f,
                      int j, const int8_t *codes, int code_lo) {
    uint8_t *blk  = (uint8_t *)kvf_panel_blk(panel, b, kind);
    uint8_t *head = (uint8_t *)kvf_panel_head(panel, b, kind);
    switch (kvf_panel_hdr(kind)) {
    case KVF_HDR_F16MIN: memcpy(blk + 32 + 2 * r, &f->m, 2); /* fall through */
    case KVF_HDR_F16: memcpy(blk + 2 * r, &f->d, 2); break;
    case KVF_HDR_K:
        memcpy(head + 2 * r, &f->d, 2);
        memcpy(head + 32 + 2 * r, &f->m, 2);
        blk[r] = f->sc[j], blk[16 + r] = f->mn[j];
        break;
    case KVF_HDR_K6:
        memcpy(head + 2 * r, &f->d, 2);
        blk[r] = f->sc[2 * j], blk[16 + r] = f->sc[2 * j + 1];
        break;
    case KVF_HDR_NONE: KVF_ASSERT(0);
    }
    uint8_t        *c  = blk + kvf_panel_hdr_bytes(kind);
    const kvf_codes cs = kvf_panel_codes(kind);
    for (int k = 0; k < KVF_QK; k++) {
        if (cs == KVF_CODES_S8) {
            c[64 * (k / 4) + 4 * r + k % 4] = (uint8_t)codes[k];
            continue;
        }
        int u = codes[k] - code_lo, v = k / 8, jj = (k % 8) / 4, i = 4 * r + k % 4;
        c[64 * v + i] |= (uint8_t)((u & 15) << (4 * jj));
        if (cs == KVF_CODES_U5) {
            uint64_t hb;
            memcpy(&hb, c + 256 + 16 * v + 8 * jj, 8);
            hb |= (uint64_t)((u >> 4) & 1) << i;
            memcpy(c + 256 + 16 * v + 8 * jj, &hb, 8);
        } else if (cs == KVF_CODES_U6) {
            c[256 + 64 * (v / 2) + i] |= (uint8_t)(((u >> 4) & 3) << (4 * (v & 1) + 2 * jj));
        }
    }
}

static void pack_panel(pack_ctx *c, int64_t p, float *tmp) {
    kvf_weight *w   = c->w;
    uint8_t    *dst = w->data + p * w->panel_bytes;
    int64_t     nb  = w->n_in / KVF_QK;
    memset(dst, 0, (size_t)w->panel_bytes);
    for (int r = 0; r < KVF_PANEL_ROWS; r++) {
        int64_t row = p * KVF_PANEL_ROWS + r;
        if (row >= w->n_out) break;
        const uint8_t *src = c->src + row * c->row_bytes;
        if (w->kind == KVF_PANEL_F32) { /* any type, dequantised to floats */
            kvf_dequantize(c->type, src, tmp, w->n_in);
            for (int64_t b = 0; b < nb; b++) {
                float *blk = (float *)(dst + b * 2048);
                for (int k = 0; k < KVF_QK; k++) blk[k * KVF_PANEL_ROWS + r] = tmp[b * KVF_QK + k];
            }
            continue;
        }
        const kvf_quant_traits *qt = c->qt;
        int8_t                  codes[256];
        float                   scale[16], min[16];
        kvf_qfields             f;
        int64_t                 per = qt->block / KVF_QK; /* panel blocks per type block */
        int code_lo = kvf_panel_codes(w->kind) == KVF_CODES_S8 ? 0 : qt->code_lo;
        for (int64_t tb = 0; tb < w->n_in / qt->block; tb++) {
            qt->unpack(src + tb * qt->bytes, codes, scale, min);
            kvf_quant_fields(c->type, src + tb * qt->bytes, &f);
            for (int64_t j = 0; j < per; j++)
                put_block(w->kind, dst, tb * per + j, r, &f, (int)j, codes + j * KVF_QK, code_lo);
        }
    }
}

static void pack_task(void *ctx, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    pack_ctx *c   = ctx;
    float    *tmp = NULL;
    if (c->w->kind == KVF_PANEL_F32 && !(tmp = kvf_malloc(sizeof(float) * (size_t)c->w->n_in))) {
        atomic_store(&c->failed, 1);
        return;
    }
    for (int64_t p; (p = kvf_claim(&c->next, c->w->n_panels)) >= 0;) pack_panel(c, p, tmp);
    kvf_free(tmp);
}

kvf_status kvf_weight_pack_raw(uint32_t type, const void *data, int64_t n_out, int64_t n_in,
                               kvf_pool *pool, int force_f32, kvf_weight *out) {
    memset(out, 0, sizeof *out);
    const kvf_quant_traits *qt = kvf_quant_get(type);
    if (!qt)
        return kvf_set_error(KVF_E_UNSUPPORTED, "weight type %s is not supported",
                             kvf_type_name(type));
    if (n_out <= 0 || n_in <= 0 || n_in % KVF_QK != 0 || n_in % qt->block != 0)
        return kvf_set_error(KVF_E_FORMAT,
                             "matrix %lld x %lld of type %s: the row length must be a positive "
                             "multiple of %u",
                             (long long)n_out, (long long)n_in, qt->name,
                             KVF_MAX(qt->block, (uint32_t)KVF_QK));
    out->kind        = force_f32 ? KVF_PANEL_F32 : qt->panel;
    out->src_type    = type;
    out->n_out       = n_out;
    out->n_in        = n_in;
    out->n_panels    = (n_out + KVF_PANEL_ROWS - 1) / KVF_PANEL_ROWS;
    out->panel_bytes = kvf_panel_bytes(out->kind, n_in);
    size_t total;
    if (kvf_mul_size((size_t)out->n_panels, (size_t)out->panel_bytes, &total))
        return kvf_set_error(KVF_E_FORMAT, "matrix too large");
    out->data = kvf_alloc_aligned(total);
    if (!out->data)
        return kvf_set_error(KVF_E_NOMEM, "out of memory packing a %lld x %lld matrix",
                             (long long)n_out, (long long)n_in);
    pack_ctx c = {.type = type, .qt = qt, .src = data, .w = out};
    c.row_bytes = n_in / qt->block * qt->bytes;
    atomic_init(&c.next, 0);
    atomic_init(&c.failed, 0);
    kvf_pool_run(pool, pack_task, &c);
    if (atomic_load(&c.failed)) {
        kvf_weight_free(out);
        return kvf_set_error(KVF_E_NOMEM, "out of memory packing a matrix");
    }
    return KVF_OK;
}

kvf_status kvf_weight_pack(const gguf_tensor *t, kvf_pool *pool, int force_f32, kvf_weight *out) {
    if (t->n_dims != 2 || t->ne[2] != 1 || t->ne[3] != 1) {
        memset(out, 0, sizeof *out);
        return kvf_set_error(KVF_E_FORMAT, "tensor '%.*s' must be 2-D (has %u dims)",
                             (int)t->name.n, t->name.s, t->n_dims);
    }
    kvf_status s = kvf_weight_pack_raw(t->type, t->data, t->ne[1], t->ne[0], pool, force_f32, out);
    if (s != KVF_OK) kvf_error_prefix("tensor '%.*s': ", (int)t->name.n, t->name.s);
    return s;
}

void kvf_weight_free(kvf_weight *w) {
    if (!w) return;
    kvf_free_aligned(w->data);
    memset(w, 0, sizeof *w);
}

void kvf_weight_row(const kvf_weight *w, int64_t row, float *out) {
    const int64_t  p = row / KVF_PANEL_ROWS;
    const int      r = (int)(row % KVF_PANEL_ROWS);
    const uint8_t *panel = w->data + p * w->panel_bytes;
    for (int64_t b = 0; b < w->n_in / KVF_QK; b++) {
        float *o = out + b * KVF_QK;
        if (w->kind == KVF_PANEL_F32) {
            const float *blk = (const float *)(panel + b * 2048);
            for (int k = 0; k < KVF_QK; k++) o[k] = blk[k * KVF_PANEL_ROWS + r];
            continue;
        }
        const uint8_t *blk = kvf_panel_blk(panel, b, w->kind), *head = kvf_panel_head(panel, b, w->kind);
        for (int k = 0; k < KVF_QK; k++) {
            float sc, mn;
            kvf_panel_scale_min(blk, head, w->kind, r, k / 16, &sc, &mn);
            o[k] = sc * (float)kvf_panel_code(blk, w->kind, r, k) + mn;
        }
    }
}

/* ---- activations ----------------------------------------------------------------------- */

/* One demand-paged reservation (common.h) carved into the buffers, each KVF_ALIGN-aligned:
 * only the rows a batch uses are committed, and kvf_actbuf_discard returns them. */
kvf_status kvf_actbuf_init(kvf_actbuf *a, int64_t max_rows, int64_t max_in) {
    memset(a, 0, sizeof *a);
    a->max_rows = max_rows;
    a->max_in   = max_in;
    size_t sz[7] = {(size_t)(max_rows * max_in),
                    (size_t)(max_rows * (max_in / KVF_QK)) * sizeof(float),
                    (size_t)(max_rows * (max_in / 16)) * sizeof(float),
                    (size_t)(max_rows * (max_in / 16)) * sizeof(int32_t),
                    (size_t)(max_rows * max_in),
                    (size_t)(max_rows * (max_in / KVF_QK)) * sizeof(float),
                    (size_t)(max_rows * (max_in / 16)) * sizeof(int32_t)};
    size_t off[7], total = 0;
    for (int i = 0; i < 7; i++) off[i] = total, total += (sz[i] + KVF_ALIGN - 1) / KVF_ALIGN * KVF_ALIGN;
    char *base = kvf_vmem_reserve(total);
    if (!base) return kvf_set_error(KVF_E_NOMEM, "out of memory for activation buffers");
    a->map = base, a->map_bytes = total;
    a->q     = (int8_t *)(base + off[0]);
    a->d     = (float *)(base + off[1]);
    a->s16   = (float *)(base + off[2]);
    a->qsum  = (int32_t *)(base + off[3]);
    a->ql    = (int8_t *)(base + off[4]);
    a->dl    = (float *)(base + off[5]);
    a->qsuml = (int32_t *)(base + off[6]);
    return KVF_OK;
}

void kvf_actbuf_discard(kvf_actbuf *a) {
    if (a->map) kvf_vmem_discard(a->map, 0, a->map_bytes);
}

void kvf_actbuf_free(kvf_actbuf *a) {
    kvf_vmem_release(a->map, a->map_bytes);
    memset(a, 0, sizeof *a);
}

typedef struct {
    const kvf_kernels  *K;
    const float        *x;
    int64_t             n, n_in, ldx;
    const kvf_act      *act;
    atomic_int_fast64_t next;
} quant_ctx;

#define QUANT_CHUNK 8 /* rows per work item */

static void quant_task(void *ctx, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    quant_ctx *c  = ctx;
    int64_t    ni = (c->n + QUANT_CHUNK - 1) / QUANT_CHUNK;
    for (int64_t it; (it = kvf_claim(&c->next, ni)) >= 0;)
        for (int64_t r = it * QUANT_CHUNK; r < KVF_MIN(c->n, (it + 1) * QUANT_CHUNK); r++)
            c->K->quantize_row(c->x + r * c->ldx, c->n_in, c->act->q + r * c->n_in,
                               c->act->d + r * (c->n_in / KVF_QK), c->act->s16 + r * (c->n_in / 16),
                               c->act->qsum + r * (c->n_in / 16),
                               c->act->ql ? c->act->ql + r * c->n_in : NULL,
                               c->act->ql ? c->act->dl + r * (c->n_in / KVF_QK) : NULL,
                               c->act->ql ? c->act->qsuml + r * (c->n_in / 16) : NULL);
}

kvf_act kvf_act_view(const kvf_actbuf *a, int64_t n_in, int two_level, const float *f, int64_t ldf) {
    kvf_act act = {.n_in = n_in, .q = a->q, .d = a->d, .s16 = a->s16, .qsum = a->qsum,
                   .ql = two_level ? a->ql : NULL, .dl = two_level ? a->dl : NULL,
                   .qsuml = two_level ? a->qsuml : NULL,
                   .f = f, .ldf = ldf};
    return act;
}

kvf_act kvf_act_float(const float *f, int64_t n_in, int64_t ldf) {
    kvf_act act = {.n_in = n_in, .f = f, .ldf = ldf};
    return act;
}

int kvf_matmul_float_rows(const kvf_kernels *K, int64_t n, int two_level) {
    static atomic_int env = -2; /* -2: not read yet; -1: not set */
    int               e   = atomic_load_explicit(&env, memory_order_relaxed);
    if (e == -2) {
        const char *v = getenv("KVFUSE_FLOAT_ROWS");
        e             = v && *v ? atoi(v) : -1;
        if (e < -1) e = 0;
        atomic_store_explicit(&env, e, memory_order_relaxed);
    }
    int min_rows = e >= 0 ? e : K->float_rows;
    return two_level && min_rows > 0 && n >= min_rows;
}

void kvf_prepare_rows(kvf_pool *pool, const kvf_kernels *K, const float *x, int64_t n,
                      int64_t n_in, int64_t ldx, int two_level, kvf_actbuf *a, kvf_act *act) {
    if (kvf_matmul_float_rows(K, n, two_level))
        *act = kvf_act_float(x, n_in, ldx);
    else
        kvf_quantize_rows(pool, K, x, n, n_in, ldx, two_level, a, act);
}

void kvf_quantize_rows(kvf_pool *pool, const kvf_kernels *K, const float *x, int64_t n,
                       int64_t n_in, int64_t ldx, int two_level, kvf_actbuf *a, kvf_act *act) {
    KVF_ASSERT(n <= a->max_rows && n_in <= a->max_in && n_in % KVF_QK == 0);
    *act        = kvf_act_view(a, n_in, two_level, x, ldx);
    quant_ctx c = {.K = K, .x = x, .n = n, .n_in = n_in, .ldx = ldx, .act = act};
    atomic_init(&c.next, 0);
    if (n < 4)
        quant_task(&c, 0, 1);
    else
        kvf_pool_run(pool, quant_task, &c);
}

/* ---- the multiply ---------------------------------------------------------------------- */

#define MM_MAX 4

typedef struct {
    const kvf_kernels  *K;
    const kvf_mm       *mm;
    int                 n_mm;
    const kvf_act      *x;
    int64_t             n;
    int64_t             col_chunk;           /* rows of X per item */
    int64_t             n_col_chunks;
    int64_t             panel_group[MM_MAX]; /* panels per item, per weight */
    int64_t             items_before[MM_MAX + 1];
    atomic_int_fast64_t next;
} mm_ctx;

static void mm_task(void *ctx, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    mm_ctx *c     = ctx;
    int64_t total = c->items_before[c->n_mm];
    for (int64_t it; (it = kvf_claim(&c->next, total)) >= 0;) {
        int m = 0;
        while (it >= c->items_before[m + 1]) m++;
        int64_t           local = it - c->items_before[m];
        const kvf_mm     *mm    = &c->mm[m];
        const kvf_weight *w     = mm->w;
        int64_t           cc    = local % c->n_col_chunks;
        int64_t           pg    = local / c->n_col_chunks;
        int64_t           c0    = cc * c->col_chunk;
        int64_t           nc    = KVF_MIN(c->col_chunk, c->n - c0);
        int64_t           p0    = pg * c->panel_group[m];
        int64_t           p1    = KVF_MIN(p0 + c->panel_group[m], w->n_panels);
        kvf_gemm_fn       fn    = c->x->q ? c->K->gemm[w->kind] : c->K->gemm_f[w->kind];
        for (int64_t p = p0; p < p1; p++) {
            int nr = (int)KVF_MIN((int64_t)KVF_PANEL_ROWS, w->n_out - p * KVF_PANEL_ROWS);
            fn(w->data + p * w->panel_bytes, w->n_in / KVF_QK, c->x, c0, nc,
               mm->y + p * KVF_PANEL_ROWS, mm->ldy, nr, mm->accumulate);
        }
    }
}

void kvf_matmul_multi(kvf_pool *pool, const kvf_kernels *K, const kvf_mm *mm, int n_mm,
                      const kvf_act *x, int64_t n) {
    KVF_ASSERT(n_mm >= 1 && n_mm <= MM_MAX);
    if (n <= 0) return;
    int    nth = kvf_pool_size(pool);
    mm_ctx c   = {.K = K, .mm = mm, .n_mm = n_mm, .x = x, .n = n};
    /* Row chunks of 64 keep a chunk of X in L2 while a panel stays in L1. */
    c.col_chunk    = n < 64 ? n : 64;
    c.n_col_chunks = (n + c.col_chunk - 1) / c.col_chunk;
    int64_t panels = 0;
    KVF_ASSERT(x->q || x->f);
    for (int i = 0; i < n_mm; i++) {
        KVF_ASSERT(mm[i].w->n_in == x->n_in);
        panels += mm[i].w->n_panels;
    }
    /* aim for >= 8 items per thread, but at most 8 panels (128 rows) per item */
    int64_t want = (int64_t)nth * 8;
    int64_t pg   = panels * c.n_col_chunks / (want > 0 ? want : 1);
    pg           = pg < 1 ? 1 : pg > 8 ? 8 : pg;
    c.items_before[0] = 0;
    for (int i = 0; i < n_mm; i++) {
        c.panel_group[i]      = pg;
        int64_t groups        = (mm[i].w->n_panels + pg - 1) / pg;
        c.items_before[i + 1] = c.items_before[i] + groups * c.n_col_chunks;
    }
    atomic_init(&c.next, 0);
    kvf_pool_run(pool, mm_task, &c);
}

void kvf_matmul(kvf_pool *pool, const kvf_kernels *K, const kvf_weight *w, const kvf_act *x,
                int64_t n, float *y, int64_t ldy, int accumulate) {
    kvf_mm mm = {w, y, ldy, accumulate};
    kvf_matmul_multi(pool, K, &mm, 1, x, n);
}
