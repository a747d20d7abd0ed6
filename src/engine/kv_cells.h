/* kv_cells.h - private layout of kvf_session: its KV cache cells, scratch and logits, and the
 * accessors of the cells. The forward-pass steps that read and write them are in forward.h.
 *
 * The KV cache is a set of cells. Each cell holds, per layer, the key (RoPE applied) and value
 * of one token, and records that token's position and id. A forward step processes a batch of
 * rows; row i has a RoPE position pos[i], writes its K/V into cell[i], and attends to cells
 * [0, kv_end[i]). Plain generation uses cell == position and kv_end = position + 1 (causal);
 * fusion recomputes arbitrary subsets of rows against a fully populated cache with the same
 * steps, and eviction compacts cells while positions keep their original values. Layers evicted
 * to different budgets (convbudget.c) share the append point n_cells: layer l holds cells
 * [cell_start[l], n_cells), its start a multiple of the key tile, and attention starts there.
 *
 * Layout per layer: keys transposed in tiles of 64 cells, kt[h][cell / 64][i][cell % 64] (head h,
 * component i: kvf_kt_idx in kernels.h), so attention streams 16 keys per vector from one
 * contiguous tile; values v[h][cell][i]. ldk = n_ctx rounded up to 64 (cell capacity).
 *
 * Memory (after vAttention): all layers' kt and vc lie in one reservation of address space
 * (kvf_vmem_reserve) whose pages the kernel commits when a cell is first written, so a session
 * with a long context costs memory in proportion to the cells it has filled, with the kernels
 * unchanged (each head keeps one contiguous range). kvf_session_trim returns the pages above
 * n_cells; keys commit a tile (64 cells) at a time, values a cell at a time.
 */
#ifndef KVF_KV_CELLS_H
#define KVF_KV_CELLS_H

#include "kvfuse.h"
#include "engine/kernels/kernels.h"
#include "engine/matmul.h"
#include "engine/model.h"
#include "engine/quant.h"
#include "engine/threadpool.h"

#include <string.h>

#define KVF_SCRATCH_MAX 32
#define KVF_MAC_MAX 512 /* most queries MAC remembers per layer and head */
#define KVF_LOUIS_SINK 16 /* LouisKV: first keys always attended */
#define KVF_LOUIS_WIN 1024 /* LouisKV: input keys clustered together */

struct kvf_session {
    const kvf_model   *m;
    kvf_session_params p;
    kvf_pool          *pool;
    const kvf_kernels *K;
    const kvf_kernels *attn_K; /* kernel table used for attention */
    int                two_level; /* KVF_PREC_Q16: two-level activation quantisation */

    /* KV cache */
    int32_t  n_ctx;       /* cells */
    int64_t  ldk;         /* cell capacity of kt and v (n_ctx rounded up to the key tile, 64) */
    void   **kt, **vc;    /* [n_layer] -> see above; f32 or f16 elements (kv_f16) */
    void    *kv_map;      /* one demand-paged reservation holding every kt[l] and vc[l] */
    size_t   kv_map_bytes;
    int      kv_f16;      /* cache elements are IEEE halves */
    int32_t *cell_pos;    /* [n_ctx] position of the token in each cell */
    int32_t *cell_tok;    /* [n_ctx] its token id */
    int32_t  n_cells;     /* cells in use: 0 .. n_cells-1 */
    int      evicted;     /* cells were compacted per head (kvf_session_fuse eviction): cell
                             index no longer maps to one position, so only a full reset or
                             appending is allowed */
    int32_t  n_past;      /* position of the next token */
    int32_t *cell_start;  /* [n_layer] layer l holds cells [cell_start[l], n_cells) only: layers
                             evicted to different budgets (convbudget.c); a multiple of the key
                             tile, 0 unless evicted */

    /* scratch for up to U rows */
    int32_t    U;
    float     *x, *xb, *q, *kb, *vb, *att, *hb, *hb2; /* row-major [U][...] */
    float     *rcos, *rsin;                          /* [U][n_rot/2] for the current batch */
    kvf_actbuf act;                                  /* quantised rows, up to max(n_embd, n_ff) */
    float     *attn_work;                            /* [threads][attn_work_stride] */
    struct {
        void  *p;
        size_t n;
    } scratch[KVF_SCRATCH_MAX]; /* the reservations above (freed / trimmed together) */
    int        n_scratch;
    int64_t    attn_work_stride;
    float     *split_o; /* decode split-K partials: [items][rows per item][head_dim + 2]
                           (demand-paged reservation of split_cap floats) */
    int64_t    split_cap;
    float     *batch_logits; /* kvf_decode_batch: [rows][n_vocab] */
    int64_t    batch_logits_cap;
    int32_t   *b_pos, *b_cell, *b_end; /* [U] batch description for eval */

    /* sparse attention (attn_sparse.c); buffers are demand-paged, committed only when used */
    kvf_attn_params     attn;
    uint8_t            *sq_k;     /* [n_layer][n_head_kv][ldk / 64][head_dim * 64] SALE's 8-bit
                                     centred keys (kernels.h layout) */
    float              *sq_ks;    /* [n_layer][n_head_kv][ldk] their scales */
    float              *sq_kbar;  /* [n_layer][n_head_kv][head_dim] the means they are centred on */
    int32_t            *sq_valid; /* [n_layer] cells 0 .. sq_valid[l]-1 of layer l are coded
                                     from the cache as it is (kvf_attn_sparse_written) */
    float              *sp_work; /* [threads][sp_stride] */
    int64_t             sp_stride;
    atomic_int_fast64_t sp_read, sp_causal; /* kvf_session_attn_density */
    /* MAC-Attention (attn_mac.c): per layer and query head a ring of KVF_MAC_MAX entries
     * [pre-RoPE q (hd) | o (hd) | m | l] with the position of each (-1: empty) */
    kvf_decode_attn_params dattn;
    float              *mac_ring;  /* [n_layer][n_head][KVF_MAC_MAX][2 hd + 2] */
    int32_t            *mac_pos;   /* [n_layer][n_head][KVF_MAC_MAX] */
    int32_t            *mac_next;  /* [n_layer] the slot the next step writes */
    int32_t            *mac_hi;    /* [n_layer] every stored state covers cells below this */
    float              *q_pre;     /* [U][n_head * hd] pre-RoPE queries of a decode batch */
    atomic_int_fast64_t mac_hits, mac_lookups;
    /* LouisKV (attn_louis.c): per layer and KV head, units of the keys [KVF_LOUIS_SINK,
     * lv_cover[l]) (unit u: members lv_cells[lv_off[u] .. + lv_cnt[u]), mean key lv_cent[u]) and a
     * copy of the selected units' keys (tile layout) and values; address space until used */
    float              *lv_cent;  /* [n_layer][n_head_kv][lv_umax][hd] */
    int32_t            *lv_off, *lv_cnt; /* [n_layer][n_head_kv][lv_umax] */
    int32_t            *lv_cells; /* [n_layer][n_head_kv][ldk] (index: cell - sink) */
    int32_t            *lv_nunits; /* [n_layer][n_head_kv] */
    int32_t            *lv_nsel;   /* [n_layer][n_head_kv] gathered cells, -1: no selection */
    char               *lv_gk, *lv_gv; /* [n_layer][n_head_kv][ldk cells] cache elements */
    float              *lv_qprev;  /* [n_layer][n_head * hd] the last step's pre-RoPE queries */
    int32_t            *lv_cover;  /* [n_layer] 0: no units yet */
    float              *lv_sel;    /* [n_head_kv][3 lv_umax] scores of a selection */
    float              *lv_kwork;  /* [threads][kvf_louis_kwork_floats] k-means scratch */
    int64_t             lv_umax;
    atomic_int_fast64_t lv_read, lv_total;

    /* rows recomputed by the last kvf_session_fuse (sorted positions), for inspection */
    int32_t *fuse_rows;
    int32_t  n_fuse_rows;

    /* logits of the last eval */
    float  *logits;
    int64_t logits_cap; /* rows allocated */
    int32_t n_logits;   /* rows kept */
    int32_t logits_row0; /* eval row index of logits row 0 */
    int32_t last_eval_n;
};

/* Cache addressing. kvf_kt_at / kvf_v_at give the start of a head's keys / values; elements are
 * addressed by index (keys: kvf_kt_idx(component, cell, head_dim); values: cell * head_dim +
 * component) and read or written with kvf_kv_get / kvf_kv_put, which convert f16 caches. */
static inline size_t kvf_kv_esize(const kvf_session *s) {
    return s->kv_f16 ? 2 : 4;
}
static inline void *kvf_kt_at(const kvf_session *s, int l, int h) {
    return (char *)s->kt[l] + (size_t)h * (size_t)s->m->hp.head_dim * (size_t)s->ldk * kvf_kv_esize(s);
}
static inline void *kvf_v_at(const kvf_session *s, int l, int h) {
    return (char *)s->vc[l] + (size_t)h * (size_t)s->ldk * (size_t)s->m->hp.head_dim * kvf_kv_esize(s);
}
static inline float kvf_kv_get(const kvf_session *s, const void *base, int64_t i) {
    return s->kv_f16 ? kvf_fp16_to_fp32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}
static inline void kvf_kv_put(const kvf_session *s, void *base, int64_t i, float v) {
    if (s->kv_f16)
        ((uint16_t *)base)[i] = kvf_fp32_to_fp16(v);
    else
        ((float *)base)[i] = v;
}
/* Component d of the keys of cells c0 .. c0+n-1 (kt: a head's keys) as floats, tile by tile. */
static inline void kvf_kt_row(const kvf_session *s, const void *kt, int d, int64_t c0, int64_t n,
                              float *out) {
    const int64_t hd = s->m->hp.head_dim;
    for (int64_t c = c0; c < c0 + n;) {
        int64_t run = KVF_ATTN_BK - c % KVF_ATTN_BK, i = kvf_kt_idx(d, c, hd);
        if (run > c0 + n - c) run = c0 + n - c;
        if (s->kv_f16)
            s->K->f16_to_f32((const uint16_t *)kt + i, out + (c - c0), run);
        else
            memcpy(out + (c - c0), (const float *)kt + i, sizeof(float) * (size_t)run);
        c += run;
    }
}

/* Store n consecutive floats at element index i (values rows), converting for f16 caches. */
static inline void kvf_kv_put_row(const kvf_session *s, void *base, int64_t i, const float *src,
                                  int n) {
    if (s->kv_f16)
        s->K->f32_to_f16(src, (uint16_t *)base + i, n);
    else
        memcpy((float *)base + i, src, sizeof(float) * (size_t)n);
}

/* Eviction: move the keys and values of cells keep[0..n) (sorted ascending) of layer l, KV head
 * h to cells dst..dst+n-1, in order; either dst is 0 (cells move down) or keep[i] <= dst + i
 * for every i (cells move up).
 * Heads may keep different cells; the caller sets n_cells, cell_start and `evicted` once every
 * head is compacted (session.c). */
void kvf_cells_compact_head(kvf_session *s, int l, int h, const int32_t *keep, int32_t n,
                            int32_t dst);
/* kvf_session_eval with the rows' RoPE positions given (pos[0..n); NULL: n_past on): the rows
 * are appended after the cells, causal among themselves, and n_past becomes the last position
 * + 1 (session.c; convlayers.c's block-masked profile). */
kvf_status kvf_session_eval_at(kvf_session *s, const int32_t *tokens, const int32_t *pos, int32_t n,
                               uint32_t flags);
/* The first cell layer l holds (0 unless its layer was evicted to a smaller budget). */
static inline int32_t kvf_cell_start(const kvf_session *s, int l) {
    return s->cell_start[l];
}

#endif /* KVF_KV_CELLS_H */
