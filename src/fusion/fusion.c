/* fusion.c - KV cache fusion (../shared/docs/fusion.md): chunk precompute, RoPE recovery,
 * token selection for each method, and exact selective recompute.
 *
 * A fused prefill of prefix ++ docs ++ question (T tokens) runs in four steps:
 *   1. load: each segment's chunk KV comes from the chunk cache (misses are computed with the
 *      session first and stored). From a store, chunks come back unverified and a loader
 *      thread reads and checks them layer by layer;
 *   2. rope: layer by layer, just before the first computation that needs it, the session
 *      cache is filled with the chunks' values and their keys rotated to the chunk's positions
 *      in this prompt (cells 0..T-1, cell == position), so loading layer l+1 overlaps the
 *      computation of layer l (pipelined loading). A chunk that fails verification is dropped,
 *      recomputed and the request restarted: a corrupt entry is never used;
 *   3. recompute: a set of rows I is recomputed with the ordinary forward steps (forward.c);
 *      row t attends to cells 0..t (exact causal mask by position) and its fresh K, V overwrite
 *      its cell. Rows are processed in position order in micro-batches, each through all
 *      remaining layers, which is exactly equivalent to processing all of I layer by layer.
 *      a3/cacheblend first run layers below the selection layer for every non-prefix row, then
 *      compute that layer's Q/K/V for all of them (fresh K/V into the cache), score, select I,
 *      and continue with the rows of I only (their residual stream is kept);
 *   4. first token: the last row's logits.
 * Optionally the cache is then shrunk for decoding (SnapKV or streaming eviction).
 */
#include "store/chunk.h"
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"
#include "fusion/adaptive.h"
#include "store/store.h"
#include "fusion/select.h"

#include <math.h>
#include <string.h>

static const char *const method_names[KVF_METHOD_COUNT] = {
    "full", "prefix", "reuse", "epic", "cacheblend", "a3", "kvshare", "prophet", "focus", "oracle"};

const char *kvf_method_name(kvf_method m) {
    return (unsigned)m < KVF_METHOD_COUNT ? method_names[m] : "unknown";
}

int kvf_method_from_name(const char *name) {
    for (int i = 0; i < KVF_METHOD_COUNT; i++)
        if (strcmp(name, method_names[i]) == 0) return i;
    return -1;
}

bool kvf_method_has_ratio(kvf_method m) {
    return m == KVF_METHOD_CACHEBLEND || m == KVF_METHOD_A3 || m == KVF_METHOD_KVSHARE ||
           m == KVF_METHOD_PROPHET || m == KVF_METHOD_FOCUS || m == KVF_METHOD_ORACLE;
}

static const char *const evict_names[KVF_EVICT_COUNT] = {"none", "snapkv", "streaming"};

const char *kvf_evict_name(kvf_evict e) {
    return (unsigned)e < KVF_EVICT_COUNT ? evict_names[e] : "unknown";
}

int kvf_evict_from_name(const char *name) {
    for (int i = 0; i < KVF_EVICT_COUNT; i++)
        if (strcmp(name, evict_names[i]) == 0) return i;
    return -1;
}

kvf_fuse_params kvf_fuse_default_params(void) {
    kvf_fuse_params p = {.method      = KVF_METHOD_A3,
                         .ratio       = 0.15f,
                         .epic_k      = 16,
                         .score_layer = 1,
                         .a3_per_head = false,
                         .blend_on_k  = false,
                         .pool        = 5,
                         .evict       = KVF_EVICT_NONE,
                         .budget      = 1024,
                         .dtype       = KVF_CHUNK_F16,
                         .chunk_alone = false,
                         .ratio_auto  = false,
                         .fidelity    = 0.95f,
                         .ratio_min   = 0.05f,
                         .ratio_max   = 0.5f};
    return p;
}

/* ---- request state --------------------------------------------------------------------- */

typedef struct {
    kvf_session           *s;
    const kvf_model       *m;
    kvf_chunk_cache       *cache;
    const kvf_fuse_params *fp;
    kvf_fuse_stats        *st;
    int32_t                n_segs, T, P, q;
    int32_t               *ids;       /* [T] */
    int32_t               *seg_start; /* [n_segs + 1] */
    kvf_chunk            **chunks;    /* [n_segs]: chunk of each segment (question: NULL) */
    float                 *rcos, *rsin; /* [T][n_rot/2] RoPE tables of the prompt */
    /* eviction (SnapKV): queries of the observation window, per layer [w][n_head*hd] */
    int32_t                win;       /* window rows (0 = no capture) */
    float                 *winq;      /* [n_layer][win][qd] */
    /* pipelined loading */
    int32_t                n_load;    /* segments 0 .. n_load-1 come from the cache */
    kvf_chunk_loader      *ld;        /* reads and verifies the chunks' layers in order */
    uint8_t               *built;     /* [n_layer]: fused cache layer written */
    int                    bad_seg;   /* segment whose chunk failed verification, or -1 */
    double                 ensure_ms; /* time inside ensure_layer (kept out of recompute_ms) */
    kvf_qattn             *qa;        /* prophet/focus probe: question attention recorded here */
} fuse_ctx;

static int seg_of(const fuse_ctx *c, int32_t pos) {
    int lo = 0, hi = c->n_segs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (c->seg_start[mid] <= pos) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* ---- chunk precompute ------------------------------------------------------------------ */

/* Run rows [p0, p0 + n) of s (tokens ids, cells == positions, causal) through every layer,
 * copying each layer's pre-RoPE keys and values of those rows into chunk c (rows r0..). The
 * last layer's attention output and MLP are skipped: nothing reads them. */
static kvf_status prefill_capture(kvf_session *s, const int32_t *ids, int32_t p0, int32_t n,
                                  kvf_chunk *c) {
    const kvf_hparams *hp  = &s->m->hp;
    int64_t            kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    float *kr = kvf_malloc(sizeof(float) * (size_t)(s->U * kvd));
    float *vr = kvf_malloc(sizeof(float) * (size_t)(s->U * kvd));
    if (!kr || !vr) {
        kvf_free(kr), kvf_free(vr);
        return kvf_set_error(KVF_E_NOMEM, "out of memory computing a chunk");
    }
    for (int32_t i0 = 0; i0 < n; i0 += s->U) {
        int32_t u = KVF_MIN(s->U, n - i0);
        for (int32_t i = 0; i < u; i++) {
            s->b_pos[i]  = p0 + i0 + i;
            s->b_cell[i] = p0 + i0 + i;
            s->b_end[i]  = p0 + i0 + i + 1;
        }
        kvf_batch b = {u, s->b_pos, s->b_cell, s->b_end, NULL};
        kvf_fwd_embed(s, ids + i0, u, s->x);
        kvf_fwd_rope_tables(s, &b);
        for (int l = 0; l < hp->n_layer; l++) {
            kvf_fwd_qkv(s, l, s->x, &b, kr, vr);
            kvf_chunk_write(s->K, c, l, 0, i0, u, kr);
            kvf_chunk_write(s->K, c, l, 1, i0, u, vr);
            if (l == hp->n_layer - 1) break;
            kvf_fwd_attn_out(s, l, s->x, &b);
            kvf_fwd_mlp(s, l, s->x, u);
        }
    }
    kvf_free(kr), kvf_free(vr);
    s->n_cells = s->n_past = p0 + n;
    return KVF_OK;
}

/* Compute the chunk of `ids` after context `ctx` with session s (whose cache it overwrites). */
static kvf_status compute_chunk(kvf_session *s, const int32_t *ctx, int32_t n_ctx,
                                const int32_t *ids, int32_t n, kvf_chunk_dtype dt,
                                kvf_chunk **out) {
    const kvf_hparams *hp = &s->m->hp;
    *out                  = NULL;
    if ((int64_t)n_ctx + n > s->n_ctx)
        return kvf_set_error(KVF_E_CTX_FULL, "a chunk of %d tokens after %d of context does not "
                                             "fit the session's %d tokens",
                             n, n_ctx, s->n_ctx);
    kvf_chunk *c = kvf_chunk_alloc(dt, n, hp->n_layer, hp->n_head_kv * hp->head_dim, ids, n_ctx);
    if (!c) return kvf_set_error(KVF_E_NOMEM, "out of memory for a chunk of %d tokens", n);
    kvf_session_truncate(s, 0);
    /* chunks are shared through the store: always computed with dense attention, so an entry
     * never depends on the attention mode of the request that computed it */
    kvf_attn_params attn = kvf_session_attn(s), dense = kvf_attn_default_params(KVF_ATTN_DENSE);
    kvf_session_set_attn(s, &dense);
    kvf_status st = KVF_OK;
    if (n_ctx > 0) st = kvf_session_eval(s, ctx, n_ctx, 0);
    if (st == KVF_OK) st = prefill_capture(s, ids, n_ctx, n, c);
    kvf_session_set_attn(s, &attn);
    kvf_session_truncate(s, 0);
    if (st != KVF_OK) {
        kvf_chunk_release(c);
        return st;
    }
    *out = c;
    return KVF_OK;
}

/* Content address of the chunk of segment i (ids[n]) of a prompt whose prefix segment is
 * prefix[n_prefix], and the context it is computed after (*ctx, *n_ctx): the prefix itself
 * and, with chunk_alone, every segment are computed alone, the others after the prefix. */
static kvf_chunk_key chunk_key_of(const kvf_model *m, const kvf_fuse_params *fp, int i,
                                  const int32_t *prefix, int32_t n_prefix, const int32_t *ids,
                                  int32_t n, const int32_t **ctx, int32_t *n_ctx) {
    int alone = i == 0 || fp->chunk_alone;
    *ctx      = alone ? NULL : prefix;
    *n_ctx    = alone ? 0 : n_prefix;
    return kvf_chunk_key_make(m->cache_id, fp->dtype, *ctx, *n_ctx, ids, n);
}

static kvf_chunk_key seg_key(const fuse_ctx *c, int i, const int32_t **ctx, int32_t *n_ctx) {
    return chunk_key_of(c->m, c->fp, i, c->ids, c->P, c->ids + c->seg_start[i],
                        c->seg_start[i + 1] - c->seg_start[i], ctx, n_ctx);
}

/* The key of segment i of a caller's prompt (the last segment, the question, has none); false
 * for an empty segment, which has no chunk */
static bool prompt_seg_key(const kvf_model *m, const kvf_fuse_params *fp, const kvf_segment *segs,
                           int32_t i, kvf_chunk_key *key) {
    if (segs[i].n <= 0 || !segs[i].ids) return false;
    const int32_t *ctx;
    int32_t        n_ctx;
    *key = chunk_key_of(m, fp, i, segs[0].ids, segs[0].n, segs[i].ids, segs[i].n, &ctx, &n_ctx);
    return true;
}

int64_t kvf_fuse_cached_tokens(const kvf_model *m, kvf_chunk_cache *cache, const kvf_segment *segs,
                               int32_t n_segs, const kvf_fuse_params *fp) {
    if (!m || !cache || !segs || !fp || n_segs < 1) return -1;
    int64_t n = 0;
    for (int32_t i = 0; i + 1 < n_segs; i++) {
        kvf_chunk_key key;
        if (!prompt_seg_key(m, fp, segs, i, &key)) continue;
        kvf_chunk *ch = cache->ops->get_deferred ? cache->ops->get_deferred(cache, &key)
                                                       : cache->ops->get(cache, &key);
        if (!ch) continue;
        if (ch->n_tokens == segs[i].n) n += segs[i].n;
        kvf_chunk_release(ch);
    }
    return n;
}

int32_t kvf_fuse_chunk_keys(const kvf_model *m, const kvf_segment *segs, int32_t n_segs,
                            const kvf_fuse_params *fp, uint8_t (*keys)[16], int32_t max) {
    if (!m || !segs || !fp || n_segs < 1 || max < 0 || (max > 0 && !keys)) return -1;
    int32_t n = 0;
    for (int32_t i = 0; i + 1 < n_segs && n < max; i++) {
        kvf_chunk_key key;
        if (prompt_seg_key(m, fp, segs, i, &key)) memcpy(keys[n++], key.b, 16);
    }
    return n;
}

/* Chunk of segment i: from the cache (deferred: verified later by the loader, unless eager),
 * else computed and stored. */
static kvf_status get_chunk(fuse_ctx *c, int i, int eager) {
    const int32_t *ids = c->ids + c->seg_start[i], *ctx;
    int32_t        n   = c->seg_start[i + 1] - c->seg_start[i], n_ctx;
    kvf_chunk_key  key = seg_key(c, i, &ctx, &n_ctx);
    double         t0  = kvf_time_ms();
    kvf_chunk     *ch  = !eager && c->cache->ops->get_deferred ? c->cache->ops->get_deferred(c->cache, &key)
                                                               : c->cache->ops->get(c->cache, &key);
    if (ch && (ch->n_tokens != n || ch->n_layer != c->m->hp.n_layer ||
               ch->kvd != c->m->hp.n_head_kv * c->m->hp.head_dim || ch->dtype != c->fp->dtype ||
               memcmp(ch->ids, ids, sizeof(int32_t) * (size_t)n) != 0)) {
        kvf_log(KVF_LOG_WARN, "chunk cache returned a mismatching entry; recomputing it");
        kvf_chunk_release(ch);
        ch = NULL;
    }
    if (ch) {
        c->st->chunk_hits++;
        c->st->load_ms += kvf_time_ms() - t0;
        c->st->kv_bytes_loaded += (int64_t)ch->bytes;
    } else {
        c->st->chunk_misses++;
        t0            = kvf_time_ms();
        kvf_status st = compute_chunk(c->s, ctx, n_ctx, ids, n, c->fp->dtype, &ch);
        if (st != KVF_OK) return st;
        ch->key = key;
        if ((st = c->cache->ops->put(c->cache, &key, ch)) != KVF_OK)
            kvf_log(KVF_LOG_WARN, "could not store a chunk: %s", kvf_errmsg());
        c->st->precompute_ms += kvf_time_ms() - t0;
    }
    c->chunks[i] = ch;
    return KVF_OK;
}

/* ---- building the fused cache ---------------------------------------------------------- */

typedef struct {
    fuse_ctx           *c;
    int32_t             n_load; /* segments 0 .. n_load-1 are loaded */
    int                 layer;  /* the layer to build */
    atomic_int_fast64_t next;
    atomic_int          failed;
} build_ctx;

#define BUILD_ROWS 64

/* work item = segment of one layer: K rows rotated to their positions, V copied */
static void build_task(void *p, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    build_ctx         *bc = p;
    fuse_ctx          *c  = bc->c;
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &c->m->hp;
    int                hd = hp->head_dim, half = hp->n_rot / 2;
    int64_t            kvd = (int64_t)hp->n_head_kv * hd;
    float             *buf = kvf_malloc(sizeof(float) * (size_t)(BUILD_ROWS * kvd));
    if (!buf) {
        atomic_store(&bc->failed, 1);
        return;
    }
    for (int64_t it; (it = kvf_claim(&bc->next, bc->n_load)) >= 0;) {
        int        l = bc->layer, seg = (int)it;
        kvf_chunk *ch = c->chunks[seg];
        if (!ch) continue;
        int32_t p0 = c->seg_start[seg];
        for (int32_t r0 = 0; r0 < ch->n_tokens; r0 += BUILD_ROWS) {
            int32_t n = KVF_MIN(BUILD_ROWS, ch->n_tokens - r0);
            kvf_chunk_read(s->K, ch, l, 0, r0, n, buf);
            for (int32_t r = 0; r < n; r++) {
                int32_t pos = p0 + r0 + r;
                float  *k   = buf + r * kvd;
                kvf_rope_row(hp, k, hp->n_head_kv, c->rcos + (int64_t)pos * half,
                             c->rsin + (int64_t)pos * half);
                for (int h = 0; h < hp->n_head_kv; h++) {
                    void *kt = kvf_kt_at(s, l, h);
                    for (int i = 0; i < hd; i++) kvf_kv_put(s, kt, kvf_kt_idx(i, pos, hd), k[h * hd + i]);
                }
            }
            kvf_chunk_read(s->K, ch, l, 1, r0, n, buf);
            for (int32_t r = 0; r < n; r++) {
                int32_t pos = p0 + r0 + r;
                for (int h = 0; h < hp->n_head_kv; h++)
                    kvf_kv_put_row(s, kvf_v_at(s, l, h), (int64_t)pos * hd, buf + r * kvd + h * hd, hd);
            }
        }
    }
    kvf_free(buf);
}

static kvf_status build_layer(fuse_ctx *c, int l) {
    build_ctx bc = {.c = c, .n_load = c->n_load, .layer = l};
    /* the cells of the segments about to be written; said once, before the threads write */
    for (int32_t seg = 0; seg < c->n_load; seg++)
        if (c->chunks[seg]) {
            kvf_attn_sparse_written(c->s, l, c->seg_start[seg]);
            break;
        }
    atomic_init(&bc.next, 0);
    atomic_init(&bc.failed, 0);
    kvf_pool_run(c->s->pool, build_task, &bc);
    if (atomic_load(&bc.failed)) return kvf_set_error(KVF_E_NOMEM, "out of memory building the cache");
    return KVF_OK;
}

/* Make layer l of the fused cache ready: wait for the loader to have verified it in every
 * chunk (the wait is load time not hidden behind computation), then write it. */
static kvf_status ensure_layer(fuse_ctx *c, int l) {
    if (c->built[l] || c->n_load == 0) return KVF_OK;
    double t0 = kvf_time_ms();
    if (c->ld) {
        int        bad = -1;
        kvf_status st  = kvf_chunk_loader_wait(c->ld, l, &bad);
        if (st == KVF_E_CORRUPT) c->bad_seg = bad;
        if (st != KVF_OK) return st;
    }
    double t1 = kvf_time_ms();
    kvf_status st = build_layer(c, l);
    double     t2 = kvf_time_ms();
    c->st->load_ms += t1 - t0;
    c->st->rope_ms += t2 - t1;
    c->ensure_ms += t2 - t0;
    if (st == KVF_OK) c->built[l] = 1;
    return st;
}

/* ---- recompute ------------------------------------------------------------------------- */

/* Copy the window rows' queries of this batch (post-RoPE) for SnapKV. */
static void capture_window(fuse_ctx *c, int l, const kvf_batch *b) {
    if (!c->win) return;
    const kvf_hparams *hp = &c->m->hp;
    int64_t            qd = (int64_t)hp->n_head * hp->head_dim;
    for (int32_t r = 0; r < b->n; r++) {
        int32_t w = b->pos[r] - (c->T - c->win);
        if (w >= 0)
            memcpy(c->winq + ((int64_t)l * c->win + w) * qd, c->s->q + r * qd,
                   sizeof(float) * (size_t)qd);
    }
}

/* Recompute rows rows[0..n) (sorted positions) from layer l0 to the end. For l0 > 0 the
 * rows' residual streams at l0 come from x_in ([n][n_embd]). Leaves the last row's logits. */
static kvf_status recompute(fuse_ctx *c, const int32_t *rows, int32_t n, int l0,
                            const float *x_in) {
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &c->m->hp;
    double             t0 = kvf_time_ms(), e0 = c->ensure_ms;
    for (int32_t i0 = 0; i0 < n; i0 += s->U) {
        int32_t u = KVF_MIN(s->U, n - i0);
        int32_t tok[1024];
        KVF_ASSERT(s->U <= 1024);
        for (int32_t i = 0; i < u; i++) {
            int32_t p    = rows[i0 + i];
            s->b_pos[i]  = p;
            s->b_cell[i] = p;
            s->b_end[i]  = p + 1;
            tok[i]       = c->ids[p];
        }
        kvf_batch b = {u, s->b_pos, s->b_cell, s->b_end, NULL};
        if (l0 == 0)
            kvf_fwd_embed(s, tok, u, s->x);
        else
            memcpy(s->x, x_in + (int64_t)i0 * hp->n_embd, sizeof(float) * (size_t)(u * hp->n_embd));
        kvf_fwd_rope_tables(s, &b);
        for (int l = l0; l < hp->n_layer; l++) {
            kvf_status st = ensure_layer(c, l);
            if (st != KVF_OK) return st;
            kvf_fwd_qkv(s, l, s->x, &b, NULL, NULL);
            capture_window(c, l, &b);
            if (c->qa && (st = kvf_qattn_layer(c->qa, s, l, &b)) != KVF_OK) return st;
            kvf_fwd_attn_out(s, l, s->x, &b);
            kvf_fwd_mlp(s, l, s->x, u);
        }
        if (i0 + u == n) {
            double t1 = kvf_time_ms();
            c->st->recompute_ms += t1 - t0 - (c->ensure_ms - e0);
            kvf_fwd_logits(s, s->x + (int64_t)(u - 1) * hp->n_embd, 1, hp->n_embd, s->logits);
            c->st->first_token_ms += kvf_time_ms() - t1;
        }
    }
    s->last_eval_n = 1;
    s->n_logits    = 1;
    s->logits_row0 = 0;
    return KVF_OK;
}

/* a3 / cacheblend: layers below the selection layer for every non-prefix row, then the
 * selection layer's Q/K/V for all of them; scores per document position; then I. */
typedef struct {
    float  *score;   /* [T] (document positions only) */
    float  *x_sel;   /* [T - P][n_embd] residual stream entering the selection layer */
    float  *q_quest; /* [q][qd] queries of the question rows at the selection layer */
} select_state;

static kvf_status select_pass(fuse_ctx *c, select_state *ss) {
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &c->m->hp;
    int                sl = c->fp->score_layer;
    int64_t qd = (int64_t)hp->n_head * hp->head_dim, kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    int32_t            n  = c->T - c->P, q0 = c->T - c->q;
    float *kr = kvf_malloc(sizeof(float) * (size_t)(s->U * kvd));
    float *vr = kvf_malloc(sizeof(float) * (size_t)(s->U * kvd));
    float *old = kvf_malloc(sizeof(float) * (size_t)kvd);
    if (!kr || !vr || !old) {
        kvf_free(kr), kvf_free(vr), kvf_free(old);
        return kvf_set_error(KVF_E_NOMEM, "out of memory selecting tokens");
    }
    int kvshare = c->fp->method == KVF_METHOD_KVSHARE; /* att x dev: both signals */
    int blend   = c->fp->method == KVF_METHOD_CACHEBLEND || kvshare;
    for (int32_t i0 = 0; i0 < n; i0 += s->U) {
        int32_t u = KVF_MIN(s->U, n - i0);
        for (int32_t i = 0; i < u; i++) {
            int32_t p    = c->P + i0 + i;
            s->b_pos[i]  = p;
            s->b_cell[i] = p;
            s->b_end[i]  = p + 1;
        }
        kvf_batch b = {u, s->b_pos, s->b_cell, s->b_end, NULL};
        kvf_fwd_embed(s, c->ids + c->P + i0, u, s->x);
        kvf_fwd_rope_tables(s, &b);
        kvf_status est = KVF_OK;
        for (int l = 0; l < sl && est == KVF_OK; l++) {
            if ((est = ensure_layer(c, l)) != KVF_OK) break;
            kvf_fwd_attn(s, l, s->x, &b);
            kvf_fwd_mlp(s, l, s->x, u);
        }
        if (est == KVF_OK) est = ensure_layer(c, sl);
        if (est != KVF_OK) {
            kvf_free(kr), kvf_free(vr), kvf_free(old);
            return est;
        }
        memcpy(ss->x_sel + (int64_t)i0 * hp->n_embd, s->x, sizeof(float) * (size_t)(u * hp->n_embd));
        kvf_fwd_qkv(s, sl, s->x, &b, blend ? kr : NULL, blend ? vr : NULL);
        for (int32_t i = 0; i < u; i++) {
            int32_t p = c->P + i0 + i;
            if (p >= q0) {
                memcpy(ss->q_quest + (int64_t)(p - q0) * qd, s->q + i * qd, sizeof(float) * (size_t)qd);
                continue;
            }
            if (!blend) continue;
            /* squared distance between the fresh and the cached (chunk) value or key */
            int        seg = seg_of(c, p);
            kvf_chunk *ch  = c->chunks[seg];
            kvf_chunk_read(s->K, ch, sl, c->fp->blend_on_k ? 0 : 1, p - c->seg_start[seg], 1, old);
            const float *fresh = (c->fp->blend_on_k ? kr : vr) + i * kvd;
            double       d2    = 0;
            for (int64_t j = 0; j < kvd; j++) d2 += (double)(fresh[j] - old[j]) * (fresh[j] - old[j]);
            ss->score[p] = (float)d2;
        }
    }
    kvf_free(kr), kvf_free(vr), kvf_free(old);
    if (blend && !kvshare) return KVF_OK;

    /* a3: attention of the question rows to the document columns at the selection layer.
     * The layer's keys of columns P..T-1 are first copied into float rows kf[kh][d][col]
     * (contiguous per key dimension), so each score row is a sum of axpy's over the query's
     * components: lg[col] += q[d] * kf[kh][d][col]. */
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int32_t ncol = c->T - c->P;
    float  *lg   = kvf_malloc(sizeof(float) * (size_t)ncol);
    float  *qs   = kvf_malloc(sizeof(float) * (size_t)kvd);
    float  *kf   = kvf_malloc(sizeof(float) * (size_t)kvd * (size_t)ncol);
    float  *dev  = kvshare ? kvf_malloc(sizeof(float) * (size_t)ncol) : NULL;
    if (!lg || !qs || !kf || (kvshare && !dev)) {
        kvf_free(lg), kvf_free(qs), kvf_free(kf), kvf_free(dev);
        return kvf_set_error(KVF_E_NOMEM, "out of memory scoring tokens");
    }
    for (int kh = 0; kh < hp->n_head_kv; kh++) {
        const void *kt = kvf_kt_at(s, sl, kh);
        for (int d = 0; d < hd; d++) {
            kvf_kt_row(s, kt, d, c->P, ncol, kf + ((int64_t)kh * hd + d) * ncol);
        }
    }
    if (dev) memcpy(dev, ss->score + c->P, sizeof(float) * (size_t)(q0 - c->P));
    for (int32_t j = c->P; j < q0; j++) ss->score[j] = 0.0f;
    int n_pass = c->fp->a3_per_head ? hp->n_head : 1;
    for (int32_t i = 0; i < c->q; i++) {
        int32_t nc = q0 + i - c->P + 1; /* causal: columns P .. q0 + i */
        for (int hp_i = 0; hp_i < n_pass; hp_i++) {
            float scale;
            memset(qs, 0, sizeof(float) * (size_t)kvd);
            if (c->fp->a3_per_head) {
                /* one head: q_h . k_{h/g}, scaled by 1/sqrt(hd) */
                int h = hp_i, kh = h / g;
                memcpy(qs + (int64_t)kh * hd, ss->q_quest + (int64_t)i * qd + (int64_t)h * hd,
                       sizeof(float) * (size_t)hd);
                scale = 1.0f / sqrtf((float)hd);
            } else {
                /* heads merged before the softmax: sum the queries sharing a KV head */
                for (int h = 0; h < hp->n_head; h++)
                    for (int d = 0; d < hd; d++)
                        qs[(h / g) * hd + d] += ss->q_quest[(int64_t)i * qd + (int64_t)h * hd + d];
                scale = 1.0f / sqrtf((float)(hp->n_head * hd));
            }
            memset(lg, 0, sizeof(float) * (size_t)nc);
            for (int64_t e = 0; e < kvd; e++)
                if (qs[e] != 0.0f) s->K->axpy(qs[e] * scale, kf + e * ncol, lg, nc);
            float mx = -INFINITY;
            for (int32_t j = 0; j < nc; j++) mx = fmaxf(mx, lg[j]);
            double sum = 0;
            for (int32_t j = 0; j < nc; j++) sum += exp((double)(lg[j] - mx));
            for (int32_t j = c->P; j < q0; j++)
                ss->score[j] += (float)(exp((double)(lg[j - c->P] - mx)) / sum / n_pass);
        }
    }
    kvf_free(lg), kvf_free(qs), kvf_free(kf);
    /* average pool, window `pool`, stride 1, zero padding counted */
    int w = c->fp->pool < 1 || kvshare ? 1 : c->fp->pool;
    if (dev) { /* kvshare: the question's attention times the value deviation */
        for (int32_t j = c->P; j < q0; j++) ss->score[j] *= dev[j - c->P];
        kvf_free(dev);
    }
    if (w > 1 && q0 > c->P) {
        float *tmp = kvf_malloc(sizeof(float) * (size_t)(q0 - c->P));
        if (!tmp) return kvf_set_error(KVF_E_NOMEM, "out of memory");
        for (int32_t j = c->P; j < q0; j++) {
            double acc = 0;
            for (int t = -(w / 2); t <= (w - 1) / 2; t++)
                if (j + t >= c->P && j + t < q0) acc += ss->score[j + t];
            tmp[j - c->P] = (float)(acc / w);
        }
        memcpy(ss->score + c->P, tmp, sizeof(float) * (size_t)(q0 - c->P));
        kvf_free(tmp);
    }
    return KVF_OK;
}

/* rows = top k document positions by score (ties: earlier position) + the question, sorted */

static int32_t select_topk(const fuse_ctx *c, const float *score, int32_t k, int32_t *rows) {
    int32_t q0 = c->T - c->q, nd = q0 - c->P, n = 0;
    for (int32_t j = c->P; j < q0; j++) rows[n++] = j;
    qsort_r(rows, (size_t)nd, sizeof(int32_t), kvf_by_score_desc, (void *)score);
    n = KVF_MIN(k, nd);
    qsort(rows, (size_t)n, sizeof(int32_t), kvf_by_index);
    for (int32_t j = q0; j < c->T; j++) rows[n++] = j;
    return n;
}

/* ---- eviction -------------------------------------------------------------------------- */

static kvf_status evict(fuse_ctx *c) {
    kvf_session       *s = c->s;
    const kvf_hparams *hp = &c->m->hp;
    int32_t            B = c->fp->budget, T = c->T;
    if (c->fp->evict == KVF_EVICT_NONE || B <= 0 || T <= B) return KVF_OK;
    int32_t *keep = kvf_malloc(sizeof(int32_t) * (size_t)T);
    float   *sc   = kvf_malloc(sizeof(float) * (size_t)T * 2);
    if (!keep || !sc) {
        kvf_free(keep), kvf_free(sc);
        return kvf_set_error(KVF_E_NOMEM, "out of memory evicting");
    }
    if (c->fp->evict == KVF_EVICT_STREAMING) {
        int32_t P = KVF_MIN(c->P, B), n = 0;
        for (int32_t j = 0; j < P; j++) keep[n++] = j;
        for (int32_t j = T - (B - P); j < T; j++) keep[n++] = j;
        for (int l = 0; l < hp->n_layer; l++)
            for (int h = 0; h < hp->n_head_kv; h++) kvf_cells_compact_head(s, l, h, keep, n, 0);
    } else { /* SnapKV */
        int     w = c->win, g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
        int64_t qd    = (int64_t)hp->n_head * hd;
        int32_t nkeep = B - w, nc = T - w; /* candidates: cells 0 .. T-w-1 */
        float   scale = 1.0f / sqrtf((float)hd);
        float  *lg    = sc + T;
        for (int l = 0; l < hp->n_layer; l++)
            for (int kh = 0; kh < hp->n_head_kv; kh++) {
                const void *kt = kvf_kt_at(s, l, kh);
                for (int32_t j = 0; j < nc; j++) sc[j] = 0.0f;
                for (int i = 0; i < w; i++)
                    for (int gi = 0; gi < g; gi++) {
                        const float *q    = c->winq + ((int64_t)l * w + i) * qd + (int64_t)(kh * g + gi) * hd;
                        int32_t      last = T - w + i;
                        float        mx   = -INFINITY;
                        for (int32_t j = 0; j <= last; j++) {
                            float dot = 0;
                            for (int d = 0; d < hd; d++) dot += q[d] * kvf_kv_get(s, kt, kvf_kt_idx(d, j, hd));
                            lg[j] = dot * scale;
                            mx    = fmaxf(mx, lg[j]);
                        }
                        double sum = 0;
                        for (int32_t j = 0; j <= last; j++) sum += exp((double)(lg[j] - mx));
                        for (int32_t j = 0; j < nc; j++) sc[j] += (float)(exp((double)(lg[j] - mx)) / sum);
                    }
                /* pool (window 5), then the top nkeep candidates and the window */
                float *pooled = lg;
                for (int32_t j = 0; j < nc; j++) {
                    double acc = 0;
                    for (int t = -2; t <= 2; t++)
                        if (j + t >= 0 && j + t < nc) acc += sc[j + t];
                    pooled[j] = (float)(acc / 5);
                }
                int32_t n = 0;
                for (int32_t j = 0; j < nc; j++) keep[n++] = j;
                qsort_r(keep, (size_t)nc, sizeof(int32_t), kvf_by_score_desc, pooled);
                n = nkeep;
                qsort(keep, (size_t)n, sizeof(int32_t), kvf_by_index);
                for (int32_t j = nc; j < T; j++) keep[n++] = j;
                kvf_cells_compact_head(s, l, kh, keep, n, 0);
            }
    }
    s->n_cells = B;
    s->evicted = 1;
    c->st->kept_after_evict = B;
    kvf_free(keep), kvf_free(sc);
    return KVF_OK;
}

/* ---- the request ----------------------------------------------------------------------- */

static void ctx_free(fuse_ctx *c) {
    kvf_chunk_loader_free(c->ld);
    c->ld = NULL;
    kvf_free(c->built);
    if (c->chunks)
        for (int i = 0; i < c->n_segs; i++) kvf_chunk_release(c->chunks[i]);
    kvf_free(c->chunks);
    kvf_free(c->ids);
    kvf_free(c->seg_start);
    kvf_free_aligned(c->rcos);
    kvf_free_aligned(c->rsin);
    kvf_free_aligned(c->winq);
}

static kvf_status ctx_init(fuse_ctx *c, kvf_session *s, kvf_chunk_cache *cache,
                           const kvf_segment *segs, int32_t n_segs, const kvf_fuse_params *fp,
                           kvf_fuse_stats *st) {
    memset(c, 0, sizeof *c);
    c->s = s, c->m = s->m, c->cache = cache, c->fp = fp, c->st = st, c->n_segs = n_segs;
    c->bad_seg = -1;
    if (n_segs < 2) return kvf_set_error(KVF_E_INVAL, "fusion needs a prefix and a question segment (n_segs >= 2)");
    if ((unsigned)fp->method >= KVF_METHOD_COUNT) return kvf_set_error(KVF_E_INVAL, "unknown fusion method %d", (int)fp->method);
    if (!(fp->ratio >= 0.0f && fp->ratio <= 1.0f)) return kvf_set_error(KVF_E_INVAL, "ratio %g is outside [0, 1]", (double)fp->ratio);
    if (kvf_adaptive_check(fp) != KVF_OK) return KVF_E_INVAL;
    if (fp->score_layer < 1 || fp->score_layer >= s->m->hp.n_layer)
        return kvf_set_error(KVF_E_INVAL, "score layer %d must be in 1..%d", fp->score_layer, s->m->hp.n_layer - 1);
    if (fp->epic_k < 0 || fp->pool < 1 || fp->pool > 101 || fp->budget < 0)
        return kvf_set_error(KVF_E_INVAL, "bad fusion parameter (epic_k %d, pool %d, budget %d)", fp->epic_k, fp->pool, fp->budget);
    if (fp->method != KVF_METHOD_FULL && !cache)
        return kvf_set_error(KVF_E_INVAL, "method %s needs a chunk cache", kvf_method_name(fp->method));
    int64_t T = 0;
    for (int32_t i = 0; i < n_segs; i++) {
        if (segs[i].n < 0 || (segs[i].n > 0 && !segs[i].ids)) return kvf_set_error(KVF_E_INVAL, "segment %d is malformed", i);
        if (i > 0 && segs[i].n == 0) return kvf_set_error(KVF_E_INVAL, "segment %d is empty (only the prefix may be)", i);
        T += segs[i].n;
    }
    if (T > s->n_ctx) return kvf_set_error(KVF_E_CTX_FULL, "the prompt has %lld tokens; the session holds %d", (long long)T, s->n_ctx);
    c->T         = (int32_t)T;
    c->P         = segs[0].n;
    c->q         = segs[n_segs - 1].n;
    c->ids       = kvf_malloc(sizeof(int32_t) * (size_t)T);
    c->seg_start = kvf_malloc(sizeof(int32_t) * (size_t)(n_segs + 1));
    c->chunks    = kvf_calloc((size_t)n_segs, sizeof(kvf_chunk *));
    c->built     = kvf_calloc((size_t)s->m->hp.n_layer, 1);
    int half     = s->m->hp.n_rot / 2;
    c->rcos      = kvf_alloc_aligned(sizeof(float) * (size_t)T * (size_t)half);
    c->rsin      = kvf_alloc_aligned(sizeof(float) * (size_t)T * (size_t)half);
    if (!c->ids || !c->seg_start || !c->chunks || !c->built || !c->rcos || !c->rsin) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    for (int32_t i = 0, p = 0; i < n_segs; p += segs[i].n, i++) {
        c->seg_start[i] = p;
        if (segs[i].n) memcpy(c->ids + p, segs[i].ids, sizeof(int32_t) * (size_t)segs[i].n);
    }
    c->seg_start[n_segs] = (int32_t)T;
    for (int64_t i = 0; i < T; i++)
        if (c->ids[i] < 0 || c->ids[i] >= s->m->hp.n_vocab) return kvf_set_error(KVF_E_INVAL, "token id %d at position %lld is out of range", c->ids[i], (long long)i);
    for (int32_t p = 0; p < c->T; p++) kvf_rope_table(s->m, p, c->rcos + (int64_t)p * half, c->rsin + (int64_t)p * half);
    if (fp->evict == KVF_EVICT_SNAPKV && fp->budget > 0 && c->T > fp->budget) {
        c->win  = KVF_MAX(1, KVF_MIN(c->q, fp->budget / 2));
        c->winq = kvf_alloc_aligned(sizeof(float) * (size_t)s->m->hp.n_layer * (size_t)c->win * (size_t)(s->m->hp.n_head * s->m->hp.head_dim));
        if (!c->winq) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    return KVF_OK;
}

/* Fetch the chunks of segments 0 .. n_load-1 (asking a store to start reading them all).
 * eager: verify every layer now (precompute) instead of layer by layer during the fusion. */
static kvf_status load_chunks(fuse_ctx *c, int32_t n_load, int eager) {
    n_load = KVF_MIN(n_load, c->n_segs - 1);
    if (n_load <= 0) return KVF_OK;
    if (c->cache->ops->prefetch) {
        kvf_chunk_key *keys = kvf_malloc(sizeof(kvf_chunk_key) * (size_t)n_load);
        int            k    = 0;
        for (int i = 0; keys && i < n_load; i++) {
            const int32_t *ctx;
            int32_t        n_ctx;
            if (c->seg_start[i + 1] > c->seg_start[i]) keys[k++] = seg_key(c, i, &ctx, &n_ctx);
        }
        if (keys && k) c->cache->ops->prefetch(c->cache, keys, k);
        kvf_free(keys);
    }
    for (int i = 0; i < n_load; i++) {
        if (c->seg_start[i + 1] == c->seg_start[i]) continue; /* empty prefix */
        kvf_status st = get_chunk(c, i, eager);
        if (st != KVF_OK) return st;
    }
    return KVF_OK;
}

const int32_t *kvf_session_fused_rows(const kvf_session *s, int32_t *n) {
    *n = s->fuse_rows ? s->n_fuse_rows : 0;
    return s->fuse_rows;
}

kvf_status kvf_session_precompute(kvf_session *s, kvf_chunk_cache *cache, const kvf_segment *segs,
                                  int32_t n_segs, const kvf_fuse_params *params,
                                  kvf_fuse_stats *stats) {
    kvf_fuse_params fp = params ? *params : kvf_fuse_default_params();
    kvf_fuse_stats  local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    if (!cache) return kvf_set_error(KVF_E_INVAL, "precompute needs a chunk cache");
    fuse_ctx   c;
    kvf_status st = ctx_init(&c, s, cache, segs, n_segs, &fp, stats);
    if (st == KVF_OK) st = load_chunks(&c, n_segs - 1, 1);
    ctx_free(&c);
    kvf_session_truncate(s, 0);
    return st;
}

/* prophet / focus: run the question rows through every layer over the fused cache (as reuse
 * does), recording their attention to the documents at each layer, then select the top
 * floor((T - q) * ratio) document rows by the combined score (docs/selection.md). rows: I. */
static kvf_status probe_select(fuse_ctx *c, int32_t *rows, int32_t *n_rows) {
    const kvf_fuse_params *fp = c->fp;
    int                    L  = c->m->hp.n_layer, focus = fp->method == KVF_METHOD_FOCUS;
    int32_t                q0 = c->T - c->q, n = 0;
    kvf_qattn              qa;
    kvf_status             st = kvf_qattn_init(&qa, L, c->P, q0, q0, 0);
    if (st != KVF_OK) return st;
    for (int32_t p = q0; p < c->T; p++) rows[n++] = p;
    c->qa = &qa;
    st    = recompute(c, rows, n, 0, NULL);
    c->qa = NULL;
    float *score = kvf_calloc((size_t)c->T, sizeof(float));
    if (st == KVF_OK && !score) st = kvf_set_error(KVF_E_NOMEM, "out of memory");
    if (st == KVF_OK) {
        /* prophet: every layer's attention summed; focus: the deeper half of the layers, each
         * normalised to one vote, pooled like a3 so that the neighbours of a hit come along */
        if (focus) kvf_qattn_combine(&qa, L / 2, L - 1, 1, 5, score + c->P);
        else kvf_qattn_combine(&qa, 0, L - 1, 0, 1, score + c->P);
        /* budget: fixed ratio, or chosen from the scores' concentration (adaptive.c) */
        int32_t k = kvf_adaptive_k(score + c->P, q0 - c->P, c->T - c->q, fp, &c->st->score_mass);
        if (k < 0) st = kvf_set_error(KVF_E_NOMEM, "out of memory");
        else {
            c->st->ratio_used = c->T > c->q ? (float)k / (float)(c->T - c->q) : 0.0f;
            *n_rows           = select_topk(c, score, k, rows);
        }
    }
    kvf_free(score);
    kvf_qattn_free(&qa);
    return st;
}

/* oracle (an evaluation diagnostic, docs/selection.md): a full prefill of the prompt first,
 * then the top k document rows by how far their reused keys and values are from full's, summed
 * over every layer with each layer's K and V deviations normalised to one vote each. Both
 * sides are pre-RoPE (chunks store keys before rotation), so no rotation enters the distance.
 * Costs more than full prefill: it bounds what selecting by KV error can reach. rows: I. */
static kvf_status oracle_select(fuse_ctx *c, int32_t *rows, int32_t *n_rows) {
    kvf_session       *s  = c->s;
    const kvf_hparams *hp = &c->m->hp;
    int64_t            kvd = (int64_t)hp->n_head_kv * hp->head_dim;
    int32_t            q0 = c->T - c->q, nd = q0 - c->P;
    kvf_chunk *full = kvf_chunk_alloc(KVF_CHUNK_F32, c->T, hp->n_layer, (int)kvd, c->ids, 0);
    float     *score = kvf_calloc((size_t)c->T, sizeof(float));
    float     *dev = kvf_malloc(sizeof(float) * (size_t)(nd > 0 ? nd : 1));
    float     *a = kvf_malloc(sizeof(float) * (size_t)kvd), *b = kvf_malloc(sizeof(float) * (size_t)kvd);
    kvf_status st = KVF_OK;
    if (!full || !score || !dev || !a || !b) st = kvf_set_error(KVF_E_NOMEM, "out of memory for the oracle");
    if (st == KVF_OK) {
        kvf_session_truncate(s, 0);
        st = prefill_capture(s, c->ids, 0, c->T, full);
    }
    for (int l = 0; st == KVF_OK && l < hp->n_layer; l++)
        /* waits for the loader to have verified the chunks' layer l (store-backed chunks) */
        for (int kv = 0; kv < 2 && (kv || (st = ensure_layer(c, l)) == KVF_OK); kv++) {
            double tot = 0;
            for (int32_t j = c->P; j < q0; j++) {
                int seg = seg_of(c, j);
                kvf_chunk_read(s->K, full, l, kv, j, 1, a);
                kvf_chunk_read(s->K, c->chunks[seg], l, kv, j - c->seg_start[seg], 1, b);
                double d2 = 0;
                for (int64_t e = 0; e < kvd; e++) d2 += (double)(a[e] - b[e]) * (a[e] - b[e]);
                dev[j - c->P] = (float)d2;
                tot += d2;
            }
            for (int32_t j = c->P; j < q0 && tot > 0; j++) score[j] += (float)(dev[j - c->P] / tot);
        }
    if (st == KVF_OK) {
        /* ensure_layer above wrote the chunks over the full prefill's KV in every layer (the
         * question's rows are recomputed); drop the full prefill's logits and sparse-attention
         * indexes and lay the prompt's cells out again */
        kvf_session_truncate(s, 0);
        for (int32_t p = 0; p < c->T; p++) s->cell_pos[p] = p, s->cell_tok[p] = c->ids[p];
        s->n_cells = s->n_past = c->T;
        int32_t k = kvf_adaptive_k(score + c->P, nd, c->T - c->q, c->fp, &c->st->score_mass);
        if (k < 0) st = kvf_set_error(KVF_E_NOMEM, "out of memory");
        else {
            c->st->ratio_used = c->T > c->q ? (float)k / (float)(c->T - c->q) : 0.0f;
            *n_rows           = select_topk(c, score, k, rows);
        }
    }
    kvf_chunk_release(full);
    kvf_free(score), kvf_free(dev), kvf_free(a), kvf_free(b);
    return st;
}

/* One attempt at the fused prefill from loaded chunks: fused cache layers (pipelined), row
 * selection, recompute, first-token logits. KVF_E_CORRUPT with c->bad_seg set when a chunk
 * fails verification on the way. */
static kvf_status run_fused(fuse_ctx *c, int32_t *rows, int32_t *n_rows_out, select_state *ss) {
    kvf_session           *s  = c->s;
    const kvf_fuse_params *fp = c->fp;
    kvf_fuse_stats        *st = c->st;
    kvf_status             rc;
    kvf_session_truncate(s, 0);
    memset(c->built, 0, (size_t)s->m->hp.n_layer);
    if (c->n_load > 0 && !c->ld &&
        (rc = kvf_chunk_loader_start(c->chunks, c->n_load, s->m->hp.n_layer, 2, &c->ld)) != KVF_OK)
        return rc;
    for (int32_t p = 0; p < c->T; p++) s->cell_pos[p] = p, s->cell_tok[p] = c->ids[p];
    s->n_cells = s->n_past = c->T;

    int32_t q0 = c->T - c->q, n_rows = 0, l0 = 0;
    int32_t start = c->n_load > 0 ? c->seg_start[c->n_load] : 0; /* exact cached prefix */
    switch (fp->method) {
    case KVF_METHOD_FULL:
    case KVF_METHOD_PREFIX:
        for (int32_t p = start; p < c->T; p++) rows[n_rows++] = p;
        break;
    case KVF_METHOD_REUSE:
        for (int32_t p = q0; p < c->T; p++) rows[n_rows++] = p;
        break;
    case KVF_METHOD_EPIC:
        for (int i = 1; i < c->n_segs - 1; i++)
            for (int32_t p = c->seg_start[i];
                 p < KVF_MIN(c->seg_start[i + 1], c->seg_start[i] + fp->epic_k); p++)
                rows[n_rows++] = p;
        for (int32_t p = q0; p < c->T; p++) rows[n_rows++] = p;
        break;
    case KVF_METHOD_PROPHET:
    case KVF_METHOD_FOCUS: {
        /* the probe's forward work and scoring are recompute time (not twice, not as the
         * first token) */
        double t0 = kvf_time_ms(), e0 = c->ensure_ms, r0 = st->recompute_ms, f0 = st->first_token_ms;
        if ((rc = probe_select(c, rows, &n_rows)) != KVF_OK) return rc;
        st->recompute_ms   = r0 + kvf_time_ms() - t0 - (c->ensure_ms - e0);
        st->first_token_ms = f0;
        break;
    }
    case KVF_METHOD_ORACLE: {
        double t0 = kvf_time_ms(), e0 = c->ensure_ms;
        if ((rc = oracle_select(c, rows, &n_rows)) != KVF_OK) return rc;
        st->recompute_ms += kvf_time_ms() - t0 - (c->ensure_ms - e0);
        break;
    }
    case KVF_METHOD_CACHEBLEND:
    case KVF_METHOD_KVSHARE:
    case KVF_METHOD_A3: {
        int64_t qd = (int64_t)s->m->hp.n_head * s->m->hp.head_dim;
        if (!ss->score) {
            ss->score   = kvf_calloc((size_t)c->T, sizeof(float));
            ss->x_sel   = kvf_malloc(sizeof(float) * (size_t)(c->T - c->P) * (size_t)s->m->hp.n_embd);
            ss->q_quest = kvf_malloc(sizeof(float) * (size_t)c->q * (size_t)qd);
            if (!ss->score || !ss->x_sel || !ss->q_quest) return kvf_set_error(KVF_E_NOMEM, "out of memory");
        }
        double t0 = kvf_time_ms(), e0 = c->ensure_ms;
        if ((rc = select_pass(c, ss)) != KVF_OK) return rc;
        /* budget: fixed ratio, or chosen from the scores' concentration (adaptive.c) */
        int32_t k = kvf_adaptive_k(ss->score + c->P, q0 - c->P, c->T - c->q, fp, &st->score_mass);
        if (k < 0) return kvf_set_error(KVF_E_NOMEM, "out of memory");
        st->ratio_used = c->T > c->q ? (float)k / (float)(c->T - c->q) : 0.0f;
        n_rows         = select_topk(c, ss->score, k, rows);
        st->recompute_ms += kvf_time_ms() - t0 - (c->ensure_ms - e0);
        /* residual streams of the selected rows entering the selection layer */
        for (int32_t i = 0; i < n_rows; i++)
            memmove(ss->x_sel + (int64_t)i * s->m->hp.n_embd,
                    ss->x_sel + (int64_t)(rows[i] - c->P) * s->m->hp.n_embd,
                    sizeof(float) * (size_t)s->m->hp.n_embd);
        l0 = fp->score_layer;
        break;
    }
    default: break;
    }
    st->recomputed_tokens = n_rows;
    st->reused_tokens     = fp->method == KVF_METHOD_FULL     ? 0
                            : fp->method == KVF_METHOD_PREFIX ? start
                                                              : c->T - n_rows;
    *n_rows_out = n_rows;
    return recompute(c, rows, n_rows, l0, ss->x_sel);
}

kvf_status kvf_session_fuse(kvf_session *s, kvf_chunk_cache *cache, const kvf_segment *segs,
                            int32_t n_segs, const kvf_fuse_params *params, kvf_fuse_stats *stats) {
    if (!s) return kvf_set_error(KVF_E_INVAL, "kvf_session_fuse: session is NULL");
    kvf_fuse_params fp = params ? *params : kvf_fuse_default_params();
    kvf_fuse_stats  local;
    if (!stats) stats = &local;
    memset(stats, 0, sizeof *stats);
    fuse_ctx   c;
    kvf_status st = ctx_init(&c, s, cache, segs, n_segs, &fp, stats);
    int32_t   *rows = NULL;
    select_state ss = {0};
    if (st != KVF_OK) goto done;
    stats->total_tokens    = c.T;
    stats->prefix_tokens   = c.P;
    stats->question_tokens = c.q;
    rows = kvf_malloc(sizeof(int32_t) * (size_t)c.T);
    if (!rows) {
        st = kvf_set_error(KVF_E_NOMEM, "out of memory");
        goto done;
    }
    int32_t n_rows = 0, n_load = 0;
    switch (fp.method) {
    case KVF_METHOD_FULL: n_load = 0; break;
    case KVF_METHOD_PREFIX:
        /* the prefix is exact; so is the first document when it was computed after it */
        n_load = 1 + (!fp.chunk_alone && n_segs > 2);
        break;
    default: n_load = n_segs - 1;
    }
    c.n_load = n_load;
    if ((st = load_chunks(&c, n_load, 0)) != KVF_OK) goto done;
    for (int attempt = 0;; attempt++) {
        st = run_fused(&c, rows, &n_rows, &ss);
        if (st != KVF_E_CORRUPT || c.bad_seg < 0 || attempt == 2) break;
        /* a stored chunk failed its checksum: it is dropped by the store; recompute it and
         * start over (the session cache was overwritten while recomputing) */
        kvf_log(KVF_LOG_WARN, "the stored KV of segment %d failed verification; recomputing it",
                c.bad_seg);
        kvf_chunk_loader_free(c.ld);
        c.ld = NULL;
        stats->chunk_hits--; /* it was counted as a hit when fetched; it is a miss */
        stats->kv_bytes_loaded -= (int64_t)c.chunks[c.bad_seg]->bytes;
        kvf_chunk_release(c.chunks[c.bad_seg]);
        c.chunks[c.bad_seg] = NULL;
        if ((st = get_chunk(&c, c.bad_seg, 1)) != KVF_OK) break;
        c.bad_seg = -1;
    }
    if (st != KVF_OK) goto done;
    kvf_free(s->fuse_rows);
    s->fuse_rows   = rows;
    s->n_fuse_rows = n_rows;
    rows           = NULL;
    stats->ttft_ms = stats->load_ms + stats->rope_ms + stats->recompute_ms + stats->first_token_ms;
    st             = evict(&c);
done:
    kvf_free(ss.score), kvf_free(ss.x_sel), kvf_free(ss.q_quest);
    kvf_free(rows);
    ctx_free(&c);
    if (st != KVF_OK) kvf_session_truncate(s, 0);
    return st;
}
