/* session.c - kvf_session: KV cache allocation, batched evaluation of new tokens in
 * micro-batches, logits bookkeeping, truncation. The forward steps are in forward.c. */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <string.h>

kvf_session_params kvf_session_default_params(void) {
    kvf_session_params p = {.n_ctx = 0, .n_threads = 0, .n_ubatch = 0, .kv_type = KVF_KV_F32};
    return p;
}

void kvf_session_free(kvf_session *s) {
    if (!s) return;
    kvf_vmem_release(s->kv_map, s->kv_map_bytes);
    kvf_vmem_release(s->split_o, sizeof(float) * (size_t)s->split_cap);
    kvf_free(s->kt), kvf_free(s->vc);
    kvf_free(s->cell_pos), kvf_free(s->cell_tok), kvf_free(s->cell_start);
    for (int i = 0; i < s->n_scratch; i++) kvf_vmem_release(s->scratch[i].p, s->scratch[i].n);
    kvf_free_aligned(s->logits);
    kvf_free_aligned(s->batch_logits);
    kvf_free(s->b_pos), kvf_free(s->b_cell), kvf_free(s->b_end);
    kvf_free(s->fuse_rows);
    kvf_free(s->sq_valid);
    kvf_free(s->mac_next), kvf_free(s->mac_hi);
    kvf_free(s->lv_nunits), kvf_free(s->lv_nsel), kvf_free(s->lv_cover);
    kvf_actbuf_free(&s->act);
    kvf_pool_free(s->pool);
    kvf_free(s);
}

/* Scratch of the forward pass: demand-paged reservations (common.h), registered so that
 * kvf_session_trim can return their memory while the session is idle and free can unmap them. */
static float *alloc_f(kvf_session *s, int64_t n, int *fail) {
    size_t bytes = sizeof(float) * (size_t)(n > 0 ? n : 1);
    float *p     = s->n_scratch < KVF_SCRATCH_MAX ? kvf_vmem_reserve(bytes) : NULL;
    if (!p) {
        *fail = 1;
        return NULL;
    }
    s->scratch[s->n_scratch].p     = p;
    s->scratch[s->n_scratch++].n = bytes;
    return p;
}

/* Validate params and fill in the defaults (n_ctx, n_ubatch). */
static kvf_status session_params(const kvf_model *m, const kvf_session_params *params,
                                 kvf_session_params *out) {
    kvf_session_params p = params ? *params : kvf_session_default_params();
    if (p.kv_type != KVF_KV_F32 && p.kv_type != KVF_KV_F16)
        return kvf_set_error(KVF_E_INVAL, "unknown KV cache type %d", (int)p.kv_type);
    if (p.n_ctx < 0 || p.n_ubatch < 0 || p.n_threads < 0)
        return kvf_set_error(KVF_E_INVAL, "negative session parameter");
    if (p.n_ctx == 0) p.n_ctx = m->hp.n_ctx_train;
    if (p.n_ctx > (1 << 22)) return kvf_set_error(KVF_E_INVAL, "n_ctx %d is too large", p.n_ctx);
    if (p.n_ubatch == 0) p.n_ubatch = 256;
    if (p.n_ubatch > p.n_ctx) p.n_ubatch = p.n_ctx;
    *out = p;
    return KVF_OK;
}

/* KV cache bytes of one cell of one layer's keys (or values) */
static int64_t kv_cell_bytes(const kvf_hparams *hp, kvf_kv_type t) {
    return (int64_t)hp->n_head_kv * hp->head_dim * (t == KVF_KV_F16 ? 2 : 4);
}

/* KV cache bytes of one layer's keys (or values) for n_ctx cells: the cell capacity is n_ctx
 * rounded up to 64 (ldk). */
static int64_t kv_layer_bytes(const kvf_hparams *hp, int64_t n_ctx, kvf_kv_type t) {
    return kv_cell_bytes(hp, t) * ((n_ctx + 63) / 64 * 64);
}

int64_t kvf_session_kv_reserved(const kvf_model *m, const kvf_session_params *params) {
    kvf_session_params p;
    if (!m || session_params(m, params, &p) != KVF_OK) return -1;
    return 2 * (int64_t)m->hp.n_layer * kv_layer_bytes(&m->hp, p.n_ctx, p.kv_type);
}

int64_t kvf_session_memory(const kvf_model *m, const kvf_session_params *params) {
    kvf_session_params p;
    if (!m || session_params(m, params, &p) != KVF_OK) return -1;
    const kvf_hparams *hp = &m->hp;
    int64_t kvd = (int64_t)hp->n_head_kv * hp->head_dim, qd = (int64_t)hp->n_head * hp->head_dim;
    int64_t U = p.n_ubatch, thr = p.n_threads > 0 ? p.n_threads : kvf_n_cpus();
    int64_t max_in = KVF_MAX(KVF_MAX((int64_t)hp->n_embd, (int64_t)hp->n_ff), qd);
    int64_t b = kvf_session_kv_reserved(m, &p); /* K and V */
    b += 2 * 4 * (int64_t)p.n_ctx;                                                /* cell_pos, cell_tok */
    int64_t fl = U * (2 * hp->n_embd + 2 * qd + 2 * kvd + 2 * hp->n_ff + hp->n_rot) +
                 (kvf_attn_work_floats(KVF_ATTN_MAX_M) + 15) / 16 * 16 * thr +
                 (int64_t)hp->n_head_kv * ((p.n_ctx + 255) / 256) * KVF_ATTN_MAX_M * (hp->head_dim + 2) +
                 hp->n_vocab;
    b += 4 * fl + 12 * U;                    /* float scratch; b_pos, b_cell, b_end */
    b += U * max_in * 2 + U * (max_in / 32) * 8 + U * (max_in / 16) * 8; /* activation rows */
    return b;
}

kvf_status kvf_session_new(const kvf_model *m, const kvf_session_params *params,
                           kvf_session **out) {
    if (!out) return kvf_set_error(KVF_E_INVAL, "kvf_session_new: out is NULL");
    *out = NULL;
    if (!m) return kvf_set_error(KVF_E_INVAL, "kvf_session_new: model is NULL");
    kvf_session_params p;
    kvf_status         pst = session_params(m, params, &p);
    if (pst != KVF_OK) return pst;
    const kvf_hparams *hp = &m->hp;

    kvf_session *s = kvf_calloc(1, sizeof *s);
    if (!s) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    s->m     = m;
    s->p     = p;
    s->K     = m->K;
    s->two_level = m->precision == KVF_PREC_Q16;
    /* the AVX2 attention needs head_dim % 32 == 0: the reference kernels otherwise */
    s->attn_K = (s->K == &kvf_kernels_avx2 && hp->head_dim % 32) ? &kvf_kernels_ref : s->K;
    s->n_ctx = p.n_ctx;
    s->ldk   = ((int64_t)p.n_ctx + 63) / 64 * 64;
    s->U     = p.n_ubatch;
    kvf_status st = kvf_pool_new(p.n_threads, &s->pool);
    if (st != KVF_OK) {
        kvf_free(s);
        return st;
    }
    int     fail = 0;
    int64_t kvd  = (int64_t)hp->n_head_kv * hp->head_dim;
    int64_t qd   = (int64_t)hp->n_head * hp->head_dim;
    s->kv_f16    = p.kv_type == KVF_KV_F16;
    s->kt        = kvf_calloc((size_t)hp->n_layer, sizeof(void *));
    s->vc        = kvf_calloc((size_t)hp->n_layer, sizeof(void *));
    if (!s->kt || !s->vc) fail = 1;
    /* one demand-paged reservation for every layer's keys and values: memory is committed as
     * cells are written and returned by kvf_session_trim (kv_cells.h) */
    size_t kv_bytes = (size_t)kv_layer_bytes(hp, p.n_ctx, p.kv_type);
    s->kv_map_bytes = 2 * (size_t)hp->n_layer * kv_bytes;
    if (!fail && !(s->kv_map = kvf_vmem_reserve(s->kv_map_bytes))) fail = 1;
    for (int l = 0; !fail && l < hp->n_layer; l++) {
        s->kt[l] = (char *)s->kv_map + (size_t)(2 * l) * kv_bytes;
        s->vc[l] = (char *)s->kv_map + (size_t)(2 * l + 1) * kv_bytes;
    }
    s->cell_pos = kvf_calloc((size_t)p.n_ctx, sizeof(int32_t));
    s->cell_tok = kvf_calloc((size_t)p.n_ctx, sizeof(int32_t));
    s->cell_start = kvf_calloc((size_t)hp->n_layer, sizeof(int32_t));
    if (!s->cell_pos || !s->cell_tok || !s->cell_start) fail = 1;
    int64_t U = s->U;
    s->x      = alloc_f(s, U * hp->n_embd, &fail);
    s->xb     = alloc_f(s, U * hp->n_embd, &fail);
    s->q      = alloc_f(s, U * qd, &fail);
    s->att    = alloc_f(s, U * qd, &fail);
    s->kb     = alloc_f(s, U * kvd, &fail);
    s->vb     = alloc_f(s, U * kvd, &fail);
    s->hb     = alloc_f(s, U * hp->n_ff, &fail);
    s->hb2    = alloc_f(s, U * hp->n_ff, &fail);
    s->rcos   = alloc_f(s, U * (hp->n_rot / 2), &fail);
    s->rsin   = alloc_f(s, U * (hp->n_rot / 2), &fail);
    s->attn_work_stride = (kvf_attn_work_floats(KVF_ATTN_MAX_M) + 15) / 16 * 16;
    s->attn_work = alloc_f(s, s->attn_work_stride * kvf_pool_size(s->pool), &fail);
    /* sparse attention: address space only until a sparse mode is used */
    s->attn      = kvf_attn_default_params(KVF_ATTN_DENSE);
    s->sp_stride = kvf_attn_sparse_stride(hp, s->ldk);
    s->sp_work   = alloc_f(s, s->sp_stride * kvf_pool_size(s->pool), &fail);
    s->sq_ks     = alloc_f(s, (int64_t)hp->n_layer * hp->n_head_kv * s->ldk, &fail);
    s->sq_kbar   = alloc_f(s, (int64_t)hp->n_layer * kvd, &fail);
    s->sq_k      = (uint8_t *)alloc_f(s, (int64_t)hp->n_layer * hp->n_head_kv * s->ldk * hp->head_dim / 4, &fail);
    if (!(s->sq_valid = kvf_calloc((size_t)hp->n_layer, sizeof(int32_t)))) fail = 1;
    /* MAC-Attention's rings: address space until MAC is used */
    s->dattn    = kvf_decode_attn_default_params(KVF_DECODE_DENSE);
    s->mac_ring = alloc_f(s, (int64_t)hp->n_layer * hp->n_head * KVF_MAC_MAX * (2 * hp->head_dim + 2), &fail);
    s->mac_pos  = (int32_t *)alloc_f(s, (int64_t)hp->n_layer * hp->n_head * KVF_MAC_MAX, &fail);
    s->q_pre    = alloc_f(s, (int64_t)s->U * qd, &fail);
    s->mac_next = kvf_calloc((size_t)hp->n_layer, sizeof(int32_t));
    s->mac_hi   = kvf_calloc((size_t)hp->n_layer, sizeof(int32_t));
    if (!s->mac_next || !s->mac_hi) fail = 1;
    /* LouisKV's units and gathered keys: address space until LouisKV is used */
    int64_t lh  = (int64_t)hp->n_layer * hp->n_head_kv;
    s->lv_umax  = (s->ldk / KVF_LOUIS_WIN + 2) * (KVF_LOUIS_WIN / 4) + s->ldk / KVF_ATTN_BK + 1;
    s->lv_cent  = alloc_f(s, lh * s->lv_umax * hp->head_dim, &fail);
    s->lv_off   = (int32_t *)alloc_f(s, 2 * lh * s->lv_umax, &fail);
    s->lv_cnt   = s->lv_off ? s->lv_off + lh * s->lv_umax : NULL;
    s->lv_cells = (int32_t *)alloc_f(s, lh * s->ldk, &fail);
    s->lv_gk    = (char *)alloc_f(s, 2 * lh * s->ldk * hp->head_dim * (int64_t)kvf_kv_esize(s) / 4, &fail);
    s->lv_gv    = s->lv_gk ? s->lv_gk + lh * s->ldk * hp->head_dim * (int64_t)kvf_kv_esize(s) : NULL;
    s->lv_qprev = alloc_f(s, (int64_t)hp->n_layer * qd, &fail);
    s->lv_sel   = alloc_f(s, 3 * hp->n_head_kv * s->lv_umax, &fail);
    s->lv_kwork = alloc_f(s, kvf_louis_kwork_floats(hp->head_dim) * kvf_pool_size(s->pool), &fail);
    s->lv_nunits = kvf_calloc((size_t)lh, sizeof(int32_t));
    s->lv_nsel   = kvf_calloc((size_t)lh, sizeof(int32_t));
    s->lv_cover  = kvf_calloc((size_t)hp->n_layer, sizeof(int32_t));
    if (!s->lv_nunits || !s->lv_nsel || !s->lv_cover) fail = 1;
    atomic_init(&s->lv_read, 0);
    atomic_init(&s->lv_total, 0);
    atomic_init(&s->mac_hits, 0);
    atomic_init(&s->mac_lookups, 0);
    atomic_init(&s->sp_read, 0);
    atomic_init(&s->sp_causal, 0);
    s->split_cap = (int64_t)hp->n_head_kv * ((p.n_ctx + 255) / 256) * KVF_ATTN_MAX_M *
                   (hp->head_dim + 2);
    /* demand-paged like the KV cache */
    if (!(s->split_o = kvf_vmem_reserve(sizeof(float) * (size_t)s->split_cap))) fail = 1;
    s->logits_cap = 1;
    if (!(s->logits = kvf_alloc_aligned(sizeof(float) * (size_t)hp->n_vocab))) fail = 1;
    s->b_pos      = kvf_malloc(sizeof(int32_t) * (size_t)U);
    s->b_cell     = kvf_malloc(sizeof(int32_t) * (size_t)U);
    s->b_end      = kvf_malloc(sizeof(int32_t) * (size_t)U);
    if (!s->b_pos || !s->b_cell || !s->b_end) fail = 1;
    int64_t max_in = KVF_MAX(KVF_MAX((int64_t)hp->n_embd, (int64_t)hp->n_ff), qd);
    if (!fail && kvf_actbuf_init(&s->act, U, max_in) != KVF_OK) fail = 1;
    if (fail) {
        kvf_session_free(s);
        return kvf_set_error(KVF_E_NOMEM,
                             "out of memory creating a session (n_ctx %d needs %.1f MiB of %s KV "
                             "cache)",
                             p.n_ctx, (double)kvf_session_kv_reserved(m, &p) / 1048576.0,
                             p.kv_type == KVF_KV_F16 ? "f16" : "f32");
    }
    *out = s;
    return KVF_OK;
}

int32_t kvf_session_n_past(const kvf_session *s) {
    return s->n_past;
}

int32_t kvf_session_threads(const kvf_session *s) {
    return kvf_pool_size(s->pool);
}

kvf_status kvf_session_truncate(kvf_session *s, int32_t n_keep) {
    if (n_keep < 0 || n_keep > s->n_past)
        return kvf_set_error(KVF_E_INVAL, "truncate to %d: the session holds %d tokens", n_keep,
                             s->n_past);
    if (s->evicted && n_keep != 0 && n_keep != s->n_past)
        return kvf_set_error(KVF_E_UNSUPPORTED,
                             "truncate to %d: the cache was evicted (compacted per head); only "
                             "0 (clear) is possible",
                             n_keep);
    if (s->evicted) {
        if (n_keep == s->n_past) return KVF_OK;
        s->evicted = 0;
        memset(s->cell_start, 0, sizeof(int32_t) * (size_t)s->m->hp.n_layer);
    }
    /* cells are in position order unless eviction compacted them: keep cells below n_keep */
    int32_t c = 0;
    while (c < s->n_cells && s->cell_pos[c] < n_keep) c++;
    s->n_cells     = c;
    kvf_attn_sparse_written(s, -1, c);
    s->n_past      = n_keep;
    s->n_logits    = 0;
    s->last_eval_n = 0;
    return KVF_OK;
}

void kvf_session_trim(kvf_session *s) {
    if (!s || !s->kv_map) return;
    const kvf_hparams *hp = &s->m->hp;
    size_t es = kvf_kv_esize(s), hd = (size_t)hp->head_dim, ldk = (size_t)s->ldk;
    size_t used = (size_t)s->n_cells;
    size_t t0   = (used + KVF_ATTN_BK - 1) / KVF_ATTN_BK * KVF_ATTN_BK; /* first key tile unused */
    for (int l = 0; l < hp->n_layer; l++)
        for (int h = 0; h < hp->n_head_kv; h++) {
            /* keys: tiles of 64 cells x head_dim from t0 on; values: ldk rows of head_dim */
            size_t k0 = (size_t)((char *)kvf_kt_at(s, l, h) - (char *)s->kv_map);
            size_t v0 = (size_t)((char *)kvf_v_at(s, l, h) - (char *)s->kv_map);
            kvf_vmem_discard(s->kv_map, k0 + t0 * hd * es, k0 + ldk * hd * es);
            kvf_vmem_discard(s->kv_map, v0 + used * hd * es, v0 + ldk * hd * es);
            size_t lo = (size_t)s->cell_start[l]; /* below the layer's first cell: unused too */
            kvf_vmem_discard(s->kv_map, k0, k0 + lo * hd * es);
            kvf_vmem_discard(s->kv_map, v0, v0 + lo * hd * es);
        }
    kvf_vmem_discard(s->split_o, 0, sizeof(float) * (size_t)s->split_cap);
    for (int i = 0; i < s->n_scratch; i++) kvf_vmem_discard(s->scratch[i].p, 0, s->scratch[i].n);
    kvf_actbuf_discard(&s->act);
    kvf_attn_sparse_written(s, -1, 0); /* the codes were in the scratch just returned */
}

static void move_cell(kvf_session *s, char *kt, char *v, int32_t from, int32_t to) {
    int    hd = s->m->hp.head_dim;
    size_t es = kvf_kv_esize(s);
    if (from == to) return;
    for (int d = 0; d < hd; d++)
        memcpy(kt + kvf_kt_idx(d, to, hd) * (int64_t)es, kt + kvf_kt_idx(d, from, hd) * (int64_t)es, es);
    memmove(v + (int64_t)to * hd * es, v + (int64_t)from * hd * es, es * (size_t)hd);
}

void kvf_cells_compact_head(kvf_session *s, int l, int h, const int32_t *keep, int32_t n,
                            int32_t dst) {
    char *kt = kvf_kt_at(s, l, h), *v = kvf_v_at(s, l, h);
    kvf_attn_sparse_written(s, l, 0);
    if (dst == 0) /* every cell moves down or stays: front to back */
        for (int32_t i = 0; i < n; i++) move_cell(s, kt, v, keep[i], i);
    else /* keep[i] <= dst + i: every cell moves up or stays, back to front */
        for (int32_t i = n - 1; i >= 0; i--) move_cell(s, kt, v, keep[i], dst + i);
}

int64_t kvf_session_kv_resident(const kvf_session *s) {
    return s && s->kv_map ? (int64_t)kvf_vmem_resident(s->kv_map, s->kv_map_bytes) : 0;
}

int64_t kvf_session_kv_bytes_per_token(const kvf_model *m, kvf_kv_type t) {
    if (!m) return -1;
    return 2 * (int64_t)m->hp.n_layer * kv_cell_bytes(&m->hp, t);
}

static kvf_status ensure_logits(kvf_session *s, int64_t rows) {
    if (rows <= s->logits_cap) return KVF_OK;
    float *p = kvf_alloc_aligned(sizeof(float) * (size_t)(rows * s->m->hp.n_vocab));
    if (!p)
        return kvf_set_error(KVF_E_NOMEM, "out of memory for logits of %lld tokens",
                             (long long)rows);
    kvf_free_aligned(s->logits);
    s->logits     = p;
    s->logits_cap = rows;
    return KVF_OK;
}

kvf_status kvf_session_eval(kvf_session *s, const int32_t *tokens, int32_t n, uint32_t flags) {
    return kvf_session_eval_at(s, tokens, NULL, n, flags);
}

kvf_status kvf_session_eval_at(kvf_session *s, const int32_t *tokens, const int32_t *pos, int32_t n,
                               uint32_t flags) {
    if (!s || (!tokens && n > 0) || n < 0) return kvf_set_error(KVF_E_INVAL, "kvf_session_eval: bad arguments");
    if (n == 0) return KVF_OK;
    const kvf_hparams *hp = &s->m->hp;
    if ((int64_t)s->n_cells + n > s->n_ctx)
        return kvf_set_error(KVF_E_CTX_FULL,
                             "%d new tokens do not fit: the session holds %d of %d tokens", n,
                             s->n_cells, s->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return kvf_set_error(KVF_E_INVAL, "token id %d at index %d is outside 0..%d",
                                 tokens[i], i, hp->n_vocab - 1);
    int all = (flags & KVF_EVAL_ALL_LOGITS) != 0;
    kvf_status st = ensure_logits(s, all ? n : 1);
    if (st != KVF_OK) return st;

    for (int32_t i0 = 0; i0 < n; i0 += s->U) {
        int32_t u = KVF_MIN(s->U, n - i0);
        for (int32_t i = 0; i < u; i++) {
            s->b_pos[i]  = pos ? pos[i0 + i] : s->n_past + i;
            s->b_cell[i] = s->n_cells + i;
            s->b_end[i]  = s->n_cells + i + 1;
        }
        kvf_batch b = {u, s->b_pos, s->b_cell, s->b_end, NULL};
        kvf_fwd_embed(s, tokens + i0, u, s->x);
        kvf_fwd_rope_tables(s, &b);
        for (int l = 0; l < hp->n_layer; l++) {
            kvf_fwd_attn(s, l, s->x, &b);
            if (u > 1) kvf_louis_prefill(s, l, s->n_cells + u);
            kvf_fwd_mlp(s, l, s->x, u);
        }
        for (int32_t i = 0; i < u; i++) {
            s->cell_pos[s->n_cells + i] = s->b_pos[i];
            s->cell_tok[s->n_cells + i] = tokens[i0 + i];
        }
        s->n_cells += u;
        s->n_past = s->b_pos[u - 1] + 1;
        if (all)
            kvf_fwd_logits(s, s->x, u, hp->n_embd, s->logits + (int64_t)i0 * hp->n_vocab);
        else if (i0 + u == n)
            kvf_fwd_logits(s, s->x + (int64_t)(u - 1) * hp->n_embd, 1, hp->n_embd, s->logits);
    }
    s->last_eval_n = n;
    s->n_logits    = all ? n : 1;
    s->logits_row0 = all ? 0 : n - 1;
    return KVF_OK;
}

kvf_status kvf_decode_batch(kvf_session *const *sessions, const int32_t *tokens, int32_t n) {
    if (!sessions || !tokens || n < 1 || !sessions[0])
        return kvf_set_error(KVF_E_INVAL, "kvf_decode_batch: bad arguments");
    kvf_session       *lead = sessions[0];
    const kvf_hparams *hp   = &lead->m->hp;
    if (n > lead->U)
        return kvf_set_error(KVF_E_INVAL, "kvf_decode_batch: %d sessions exceed the micro-batch "
                                          "size %d of the first session", n, lead->U);
    int32_t max_end = 0;
    for (int32_t i = 0; i < n; i++) {
        kvf_session *s = sessions[i];
        if (!s || s->m != lead->m)
            return kvf_set_error(KVF_E_INVAL, "kvf_decode_batch: session %d is NULL or uses another model", i);
        for (int32_t j = 0; j < i; j++)
            if (sessions[j] == s) return kvf_set_error(KVF_E_INVAL, "kvf_decode_batch: session %d appears twice", i);
        if (s->n_cells >= s->n_ctx)
            return kvf_set_error(KVF_E_CTX_FULL, "kvf_decode_batch: session %d is full (%d tokens)", i, s->n_ctx);
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return kvf_set_error(KVF_E_INVAL, "kvf_decode_batch: token id %d (session %d) is outside 0..%d",
                                 tokens[i], i, hp->n_vocab - 1);
        max_end = KVF_MAX(max_end, s->n_cells + 1);
    }
    /* room for split-K partials (one query row per item) and for the logits of every row */
    int64_t g = hp->n_head / hp->n_head_kv;
    int64_t need = (int64_t)hp->n_head_kv * n * ((max_end + 255) / 256) * g * (hp->head_dim + 2);
    if (need > lead->split_cap) {
        float *p = kvf_vmem_reserve(sizeof(float) * (size_t)need);
        if (!p) return kvf_set_error(KVF_E_NOMEM, "out of memory for batched decode");
        kvf_vmem_release(lead->split_o, sizeof(float) * (size_t)lead->split_cap);
        lead->split_o = p, lead->split_cap = need;
    }
    if (n > lead->batch_logits_cap) {
        float *p = kvf_alloc_aligned(sizeof(float) * (size_t)n * (size_t)hp->n_vocab);
        if (!p) return kvf_set_error(KVF_E_NOMEM, "out of memory for batched decode");
        kvf_free_aligned(lead->batch_logits);
        lead->batch_logits = p, lead->batch_logits_cap = n;
    }
    for (int32_t i = 0; i < n; i++) {
        lead->b_pos[i]  = sessions[i]->n_past;
        lead->b_cell[i] = sessions[i]->n_cells;
        lead->b_end[i]  = sessions[i]->n_cells + 1;
    }
    kvf_batch b = {n, lead->b_pos, lead->b_cell, lead->b_end, sessions};
    kvf_fwd_embed(lead, tokens, n, lead->x);
    kvf_fwd_rope_tables(lead, &b);
    for (int l = 0; l < hp->n_layer; l++) {
        kvf_fwd_attn(lead, l, lead->x, &b);
        kvf_fwd_mlp(lead, l, lead->x, n);
    }
    kvf_fwd_logits(lead, lead->x, n, hp->n_embd, lead->batch_logits);
    for (int32_t i = 0; i < n; i++) {
        kvf_session *s           = sessions[i];
        s->cell_pos[s->n_cells] = s->n_past;
        s->cell_tok[s->n_cells] = tokens[i];
        s->n_cells++, s->n_past++;
        memcpy(s->logits, lead->batch_logits + (int64_t)i * hp->n_vocab, sizeof(float) * (size_t)hp->n_vocab);
        s->last_eval_n = 1, s->n_logits = 1, s->logits_row0 = 0;
    }
    return KVF_OK;
}

const float *kvf_session_logits(const kvf_session *s, int32_t i) {
    if (!s || s->last_eval_n == 0) return NULL;
    if (i < 0) i = s->last_eval_n - 1;
    int32_t r = i - s->logits_row0;
    if (r < 0 || r >= s->n_logits) return NULL;
    return s->logits + (int64_t)r * s->m->hp.n_vocab;
}
