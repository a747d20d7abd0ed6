/* prefix.c - conversation prefix blocks: the KV a session holds for its first tokens, kept in a
 * chunk cache (memory, disk, Redis) in blocks of B tokens and found again by content, so the
 * next turn of a conversation skips its history whichever session (server slot) serves it,
 * and after a restart when the cache has a disk tier (kvfuse.h, kvf_session_prefix_save).
 *
 * Block i holds cells [iB, (i+1)B) of every layer: keys after RoPE at their positions (the
 * positions never change: a prefix stays a prefix) and values, in the session's KV precision,
 * so a restored prefix is bit-identical to a computed one. Its content address covers every
 * token up to the block's end (the chunk key's context = tokens [0, iB)), the model and its
 * arithmetic (cache_id), the KV precision and the prefill attention the KV was computed with,
 * under a tag of its own: a block never answers a fusion chunk's key, nor the other way.
 */
#include "store/chunk.h"
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"

#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* the fingerprint the block keys are made with */
static void block_fingerprint(const kvf_session *s, uint8_t out[16]) {
    kvf_attn_params a = kvf_session_attn(s);
    XXH3_state_t    st;
    XXH3_128bits_reset(&st);
    static const char tag[] = "kvfuse prefix block v1";
    XXH3_128bits_update(&st, tag, sizeof tag);
    XXH3_128bits_update(&st, s->m->cache_id, 16);
    int32_t f[8] = {(int32_t)a.mode, 0, a.local, a.block, a.window, a.dense_layers, a.dense_period, a.min_keys};
    memcpy(&f[1], &a.threshold, 4);
    if (a.mode == KVF_ATTN_DENSE) memset(f + 1, 0, sizeof f - sizeof f[0]); /* dense: no options */
    XXH3_128bits_update(&st, f, sizeof f);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(&st));
    memcpy(out, c.digest, 16);
}

static kvf_chunk_dtype block_dtype(const kvf_session *s) {
    return s->kv_f16 ? KVF_CHUNK_F16 : KVF_CHUNK_F32;
}

/* how many of ids[0..n) the first cells of s hold at positions 0.. in order (a plain prefix) */
static int32_t held_prefix(const kvf_session *s, const int32_t *ids, int32_t n) {
    int32_t p = 0;
    if (s->evicted) return 0;
    while (p < n && p < s->n_cells && p < s->n_past && s->cell_pos[p] == p && s->cell_tok[p] == ids[p]) p++;
    return p;
}

static kvf_status check_args(const kvf_session *s, const kvf_chunk_cache *cache, const int32_t *ids,
                             int32_t n, int32_t block, const char *fn) {
    if (!s || !cache || (!ids && n > 0) || n < 0)
        return kvf_set_error(KVF_E_INVAL, "%s: session, cache and ids are required", fn);
    if (block < 1 || block > KVF_PREFIX_BLOCK_MAX)
        return kvf_set_error(KVF_E_INVAL, "%s: block of %d tokens (1..%d)", fn, block, KVF_PREFIX_BLOCK_MAX);
    return KVF_OK;
}

kvf_status kvf_session_prefix_save(kvf_session *s, kvf_chunk_cache *cache, const int32_t *ids,
                                   int32_t n, int32_t block, int32_t from, int32_t *n_saved) {
    if (n_saved) *n_saved = 0;
    kvf_status st = check_args(s, cache, ids, n, block, "kvf_session_prefix_save");
    if (st != KVF_OK) return st;
    int32_t nb = n / block;
    if (held_prefix(s, ids, nb * block) < nb * block)
        return kvf_set_error(KVF_E_INVAL, "kvf_session_prefix_save: the session does not hold "
                                          "these %d tokens as a plain prefix", nb * block);
    const kvf_hparams *hp = &s->m->hp;
    int                hd = hp->head_dim, kvd = hp->n_head_kv * hd;
    uint8_t            fpr[16];
    block_fingerprint(s, fpr);
    float *row = kvf_malloc(sizeof(float) * (size_t)kvd);
    if (!row) return kvf_set_error(KVF_E_NOMEM, "out of memory saving a prefix");
    for (int32_t b = from > 0 ? from / block : 0; b < nb && st == KVF_OK; b++) {
        int32_t       c0  = b * block;
        kvf_chunk_key key = kvf_chunk_key_make(fpr, block_dtype(s), ids, c0, ids + c0, block);
        kvf_chunk    *have = cache->ops->get(cache, &key);
        if (have) { /* saved before (another session, an earlier turn) */
            kvf_chunk_release(have);
            if (n_saved) *n_saved = c0 + block;
            continue;
        }
        kvf_chunk *ch = kvf_chunk_alloc(block_dtype(s), block, hp->n_layer, kvd, ids + c0, c0);
        if (!ch) {
            st = kvf_set_error(KVF_E_NOMEM, "out of memory saving a prefix block");
            break;
        }
        for (int l = 0; l < hp->n_layer; l++)
            for (int32_t r = 0; r < block; r++) {
                int32_t cell = c0 + r;
                for (int h = 0; h < hp->n_head_kv; h++) {
                    const void *kt = kvf_kt_at(s, l, h);
                    for (int d = 0; d < hd; d++) row[h * hd + d] = kvf_kv_get(s, kt, kvf_kt_idx(d, cell, hd));
                }
                kvf_chunk_write(s->K, ch, l, 0, r, 1, row);
                for (int h = 0; h < hp->n_head_kv; h++) {
                    const void *vt = kvf_v_at(s, l, h);
                    for (int d = 0; d < hd; d++) row[h * hd + d] = kvf_kv_get(s, vt, (int64_t)cell * hd + d);
                }
                kvf_chunk_write(s->K, ch, l, 1, r, 1, row);
            }
        ch->key = key;
        st      = cache->ops->put(cache, &key, ch);
        kvf_chunk_release(ch);
        if (st == KVF_OK && n_saved) *n_saved = c0 + block;
    }
    kvf_free(row);
    return st;
}

kvf_status kvf_session_prefix_load(kvf_session *s, kvf_chunk_cache *cache, const int32_t *ids,
                                   int32_t n, int32_t block, int32_t *n_loaded) {
    if (n_loaded) *n_loaded = 0;
    kvf_status st = check_args(s, cache, ids, n, block, "kvf_session_prefix_load");
    if (st != KVF_OK) return st;
    const kvf_hparams *hp = &s->m->hp;
    int                hd = hp->head_dim, kvd = hp->n_head_kv * hd;
    /* what the session already holds of ids is kept (its whole blocks, when blocks are
     * restored after them); the last token is left to evaluate */
    int32_t held = held_prefix(s, ids, n > 0 ? n - 1 : 0), have = held / block * block;
    int32_t nb = (n - 1) / block;
    if (nb > s->n_ctx / block) nb = s->n_ctx / block;
    uint8_t fpr[16];
    block_fingerprint(s, fpr);
    float  *row = kvf_malloc(sizeof(float) * (size_t)kvd);
    if (!row) return kvf_set_error(KVF_E_NOMEM, "out of memory loading a prefix");
    int32_t done = have, first = -1;
    for (int32_t b = have / block; b < nb; b++) {
        int32_t       c0  = b * block;
        kvf_chunk_key key = kvf_chunk_key_make(fpr, block_dtype(s), ids, c0, ids + c0, block);
        kvf_chunk    *ch  = cache->ops->get(cache, &key); /* verified (store tiers) */
        if (!ch) break;
        bool ok = ch->n_tokens == block && ch->n_layer == hp->n_layer && ch->kvd == kvd &&
                  ch->dtype == block_dtype(s) && ch->n_ctx == c0 &&
                  memcmp(ch->ids, ids + c0, sizeof(int32_t) * (size_t)block) == 0;
        if (!ok) { /* another content under this key: a hash collision, or a foreign entry */
            kvf_chunk_release(ch);
            break;
        }
        if (first < 0) { /* from here on the session's cells are rewritten */
            first = c0;
            kvf_session_truncate(s, c0);
        }
        for (int l = 0; l < hp->n_layer; l++)
            for (int32_t r = 0; r < block; r++) {
                int32_t cell = c0 + r;
                kvf_chunk_read(s->K, ch, l, 0, r, 1, row);
                for (int h = 0; h < hp->n_head_kv; h++) {
                    void *kt = kvf_kt_at(s, l, h);
                    for (int d = 0; d < hd; d++) kvf_kv_put(s, kt, kvf_kt_idx(d, cell, hd), row[h * hd + d]);
                }
                kvf_chunk_read(s->K, ch, l, 1, r, 1, row);
                for (int h = 0; h < hp->n_head_kv; h++)
                    kvf_kv_put_row(s, kvf_v_at(s, l, h), (int64_t)cell * hd, row + h * hd, hd);
            }
        kvf_chunk_release(ch);
        for (int32_t r = 0; r < block; r++) s->cell_pos[c0 + r] = c0 + r, s->cell_tok[c0 + r] = ids[c0 + r];
        s->n_cells = s->n_past = c0 + block;
        done                   = c0 + block;
    }
    kvf_free(row);
    if (first >= 0) {
        kvf_attn_sparse_written(s, -1, first); /* indexes over the rewritten cells are stale */
        s->n_logits = 0, s->last_eval_n = 0;
    } else {
        done = held; /* nothing restored: every token s already holds of ids */
    }
    if (s->n_past > done) kvf_session_truncate(s, done); /* what follows is not this prompt's */
    if (n_loaded) *n_loaded = done;
    return KVF_OK;
}
