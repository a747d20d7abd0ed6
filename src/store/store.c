/* store.c - the tiered chunk store (kvfuse.h, "chunk store"): the memory tier, the read-through
 * / write-back stack over the disk (store_lmdb.c) and Redis (store_redis.c) tiers, the
 * background writer, statistics, maintenance, and the layer loader for pipelined fusion.
 *
 * Lookup order: memory -> disk -> Redis. A disk hit is returned zero-copy (a borrowed chunk
 * holding an LMDB read transaction) unless the memory tier is on, in which case an owned copy
 * is made and kept there (memory entries must not hold LMDB transactions: that would keep
 * freed pages from reuse). A Redis hit is copied into memory and queued for the disk tier. A
 * corrupt entry is logged, queued for removal (the writer re-checks before deleting, in case
 * another process rewrote it) and reported as a miss.
 *
 * Writes (put of a computed miss, write-back of a Redis hit, access-time updates, removals)
 * go through one writer thread per store handle with a queue bounded in chunk bytes: put
 * never does I/O; it waits only when the queue is full (or drops the write, counted, with
 * drop_when_full). The writer batches queued items into one LMDB transaction and one
 * pipelined Redis round trip, and persists the hit/miss counters with them.
 */
#include "store/store.h"
#include "store/chunk_lru.h"
#include "common.h"
#include "engine/model.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#define DEFAULT_QUEUE_BYTES (256ull << 20)
#define BATCH_ITEMS         32
#define BATCH_BYTES         (256ull << 20)

/* ---- state -------------------------------------------------------------------------------- */

typedef enum { W_PUT = 0, W_TOUCH, W_DROP_DISK, W_DROP_REDIS, W_WARM } wkind;

typedef struct witem {
    struct witem *next;
    wkind         kind;
    kvf_chunk_key key;
    kvf_chunk    *chunk; /* W_PUT */
    bool          to_disk, to_redis;
    uint64_t      time;
    uint64_t      qbytes; /* counted against the queue bound */
} witem;

typedef struct tstats {
    atomic_llong hits, misses, writes, write_bytes, evictions, errors, bad, read_bytes, read_ns;
} tstats;

typedef struct kvf_store {
    kvf_chunk_cache base;
    bool            have_model;
    uint8_t         model_id[16];
    int32_t         n_layer, n_head_kv, head_dim, kvd;
    /* parameters */
    uint64_t mem_budget, queue_max;
    int      compress, zstd_level, redis_ttl;
    int64_t  touch_ns;
    bool     drop_when_full, deferred;
    /* memory tier */
    pthread_mutex_t mmu;
    kvf_lru         mem; /* entries, LRU order, KVFlow hints (chunk_lru.h); zeroed without a budget */
    /* lower tiers */
    kvf_lmdb  *disk;
    kvf_redis *redis_r, *redis_w; /* request side, writer side (separate connections) */
    char      *redis_addr;
    /* writer */
    pthread_t       thr;
    bool            thr_started;
    pthread_mutex_t qmu;
    pthread_cond_t  qcv, dcv;
    witem          *qhead, *qtail;
    uint64_t        q_bytes, seq_in, seq_done;
    int64_t         q_items;
    bool            closing;
    kvf_status      werr;
    char            werr_msg[512];
    bool            redis_werr_logged; /* writer thread only: this episode of failed Redis
                                          writes was logged */
    bool            disk_werr_logged;  /* writer thread only: the same for disk writes */
    atomic_bool     disk_rerr_logged;  /* any thread: an episode of failed disk reads */
    /* statistics */
    tstats       ts[KVF_TIER_COUNT];
    atomic_llong dropped;
    atomic_llong warmed; /* chunks brought into memory by warm() */
    atomic_llong pending[KVF_CTR_COUNT]; /* counter deltas not yet persisted */
    int64_t      redis_entries, redis_bytes;
    bool         redis_counted;
} kvf_store;

static const kvf_chunk_cache_ops store_ops;

static kvf_store *as_store(kvf_chunk_cache *c) {
    return c && c->ops == &store_ops ? (kvf_store *)c : NULL;
}

bool kvf_chunk_cache_is_store(const kvf_chunk_cache *c) {
    return c && c->ops == &store_ops;
}

const char *kvf_store_tier_name(kvf_store_tier t) {
    switch (t) {
    case KVF_TIER_MEMORY: return "memory";
    case KVF_TIER_DISK: return "disk";
    case KVF_TIER_REDIS: return "redis";
    default: return "unknown";
    }
}

static uint64_t wall_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void count(atomic_llong *c, long long v) {
    atomic_fetch_add(c, v);
}

/* ---- memory tier -------------------------------------------------------------------------- */

/* keep an owned chunk in the memory tier (a reference is taken) */
static void m_insert(kvf_store *s, const kvf_chunk_key *key, kvf_chunk *c) {
    if (!s->mem_budget || c->backing || c->bytes > s->mem_budget) return;
    pthread_mutex_lock(&s->mmu);
    kvf_lru_entry *e = kvf_lru_put(&s->mem, key, c);
    if (e) {
        /* evict unpinned entries, the one needed furthest away by the step hints first, the
         * least recently used among equals (plain LRU without hints); if that is not enough,
         * drop the new one */
        count(&s->ts[KVF_TIER_MEMORY].evictions, kvf_lru_shrink(&s->mem, s->mem_budget, e));
        if (s->mem.bytes > s->mem_budget && !e->pinned) kvf_lru_remove(&s->mem, e);
    }
    pthread_mutex_unlock(&s->mmu);
}

static kvf_chunk *m_get(kvf_store *s, const kvf_chunk_key *key) {
    pthread_mutex_lock(&s->mmu);
    kvf_lru_entry *e = kvf_lru_find(&s->mem, key, true);
    kvf_chunk     *r = e ? kvf_chunk_retain(e->chunk) : NULL;
    pthread_mutex_unlock(&s->mmu);
    return r;
}

/* whether the memory tier holds the key now (its LRU order untouched) */
static bool m_has(kvf_store *s, const kvf_chunk_key *key) {
    pthread_mutex_lock(&s->mmu);
    bool have = kvf_lru_find(&s->mem, key, false) != NULL;
    pthread_mutex_unlock(&s->mmu);
    return have;
}

static bool m_del(kvf_store *s, const kvf_chunk_key *key) {
    pthread_mutex_lock(&s->mmu);
    kvf_lru_entry *e = kvf_lru_find(&s->mem, key, false);
    if (e) kvf_lru_remove(&s->mem, e);
    pthread_mutex_unlock(&s->mmu);
    return e != NULL;
}

kvf_status kvf_store_pin(kvf_chunk_cache *c, const uint8_t key[16], bool pin) {
    kvf_store *s = as_store(c);
    if (!s || !key) return kvf_set_error(KVF_E_INVAL, "kvf_store_pin: not a chunk store");
    if (!s->mem_budget) return kvf_set_error(KVF_E_NOTFOUND, "the store has no memory tier to pin in");
    kvf_chunk_key k;
    memcpy(k.b, key, 16);
    pthread_mutex_lock(&s->mmu);
    kvf_lru_entry *e = kvf_lru_find(&s->mem, &k, false);
    if (e) e->pinned = pin;
    pthread_mutex_unlock(&s->mmu);
    return e ? KVF_OK : kvf_set_error(KVF_E_NOTFOUND, "the key is not in the memory tier");
}

/* ---- the writer queue --------------------------------------------------------------------- */

/* Queue an item. Blocks while the queue is over its bound (an empty queue always accepts),
 * unless may_drop, which drops it instead (false returned; the item is freed). */
static bool enqueue(kvf_store *s, witem *it, bool may_drop) {
    pthread_mutex_lock(&s->qmu);
    while (s->q_items > 0 && s->q_bytes + it->qbytes > s->queue_max && !s->closing) {
        if (may_drop) {
            pthread_mutex_unlock(&s->qmu);
            kvf_chunk_release(it->chunk);
            kvf_free(it);
            return false;
        }
        pthread_cond_wait(&s->dcv, &s->qmu);
    }
    it->next = NULL;
    if (s->qtail) s->qtail->next = it; else s->qhead = it;
    s->qtail = it;
    s->q_bytes += it->qbytes;
    s->q_items++;
    s->seq_in++;
    pthread_cond_signal(&s->qcv);
    pthread_mutex_unlock(&s->qmu);
    return true;
}

static void queue_simple(kvf_store *s, wkind kind, const kvf_chunk_key *key, uint64_t t) {
    if (!s->thr_started) return;
    witem *it = kvf_calloc(1, sizeof *it);
    if (!it) return;
    it->kind = kind, it->key = *key, it->time = t;
    enqueue(s, it, kind == W_TOUCH); /* a touch is dropped rather than waited for */
}

static void record_werr(kvf_store *s, kvf_status st, const char *msg) {
    pthread_mutex_lock(&s->qmu);
    if (s->werr == KVF_OK) {
        s->werr = st;
        snprintf(s->werr_msg, sizeof s->werr_msg, "%s", msg);
    }
    pthread_mutex_unlock(&s->qmu);
}

static void take_deltas(kvf_store *s, int64_t *d, bool *any) {
    *any = false;
    for (int i = 0; i < KVF_CTR_COUNT; i++) {
        d[i] = atomic_exchange(&s->pending[i], 0);
        *any |= d[i] != 0;
    }
}

static void give_back_deltas(kvf_store *s, const int64_t *d) {
    for (int i = 0; i < KVF_CTR_COUNT; i++) count(&s->pending[i], d[i]);
}

/* whether some chunk was written by these operations (the end of a failed-writes episode) */
static bool puts_done(const kvf_lmdb_op *ops, int n) {
    for (int i = 0; i < n; i++)
        if (ops[i].kind == KVF_LMDB_PUT && ops[i].done) return true;
    return false;
}

static kvf_chunk *lookup_lower(kvf_store *s, const kvf_chunk_key *key, bool deferred);

static void process_batch(kvf_store *s, witem *const *items, int n) {
    uint8_t      **bufs  = kvf_calloc((size_t)n, sizeof *bufs);
    size_t        *lens  = kvf_calloc((size_t)n, sizeof *lens);
    kvf_lmdb_op   *ops   = kvf_calloc((size_t)n, sizeof *ops);
    int           *opi   = kvf_calloc((size_t)n, sizeof *opi);
    if (!bufs || !lens || !ops || !opi) {
        record_werr(s, KVF_E_NOMEM, "out of memory in the store writer; writes were lost");
        kvf_free(bufs), kvf_free(lens), kvf_free(ops), kvf_free(opi);
        return;
    }
    /* encode */
    for (int i = 0; i < n; i++) {
        witem *it = items[i];
        if (it->kind != W_PUT || !(it->to_disk || it->to_redis)) continue;
        kvf_status st = kvf_entry_encode(it->chunk, &it->key, s->model_id, s->n_head_kv, s->head_dim,
                                         s->compress, s->zstd_level, &bufs[i], &lens[i]);
        if (st != KVF_OK) {
            kvf_error_prefix("encoding a chunk: ");
            kvf_log(KVF_LOG_WARN, "store: %s", kvf_errmsg());
            record_werr(s, st, kvf_errmsg());
            count(&s->ts[it->to_disk ? KVF_TIER_DISK : KVF_TIER_REDIS].errors, 1);
            it->to_disk = it->to_redis = false;
        }
    }
    /* disk: one transaction (with the counters) */
    if (s->disk) {
        int nop = 0;
        for (int i = 0; i < n; i++) {
            witem       *it = items[i];
            kvf_lmdb_op *op = &ops[nop];
            if (it->kind == W_PUT && it->to_disk) op->kind = KVF_LMDB_PUT, op->entry = bufs[i], op->len = lens[i];
            else if (it->kind == W_TOUCH) op->kind = KVF_LMDB_TOUCH;
            else if (it->kind == W_DROP_DISK) op->kind = KVF_LMDB_DROP_BAD;
            else continue;
            op->key  = it->key;
            op->time = it->time;
            opi[nop++] = i;
        }
        int64_t deltas[KVF_CTR_COUNT];
        bool    any;
        take_deltas(s, deltas, &any);
        if (nop || any) {
            bool       dd = false;
            kvf_status st = kvf_lmdb_write(s->disk, ops, nop, any ? deltas : NULL, &dd);
            if (st != KVF_OK) {
                /* the disk tier is a cache too: chunks that could not be written stay in
                 * memory or are computed again; a full map or disk is said once per episode
                 * (every failed write is counted in the tier's errors) */
                if (!s->disk_werr_logged)
                    kvf_log(KVF_LOG_WARN, "store: %s; chunks are served from the other tiers or "
                            "computed until writes succeed again", kvf_errmsg());
                s->disk_werr_logged = true;
                record_werr(s, st, kvf_errmsg());
            } else if (s->disk_werr_logged && puts_done(ops, nop)) {
                kvf_log(KVF_LOG_INFO, "store: writes to the disk tier succeed again");
                s->disk_werr_logged = false;
            }
            if (any && !dd) give_back_deltas(s, deltas);
            for (int j = 0; j < nop; j++) {
                kvf_lmdb_op *op = &ops[j];
                if (op->kind == KVF_LMDB_PUT) {
                    if (op->done) count(&s->ts[KVF_TIER_DISK].writes, 1), count(&s->ts[KVF_TIER_DISK].write_bytes, (long long)op->len);
                    if (op->status != KVF_OK) count(&s->ts[KVF_TIER_DISK].errors, 1);
                    count(&s->ts[KVF_TIER_DISK].evictions, op->evicted);
                    count(&s->pending[KVF_CTR_EVICTED], op->evicted);
                    count(&s->ts[KVF_TIER_DISK].bad, op->replaced_bad);
                    count(&s->pending[KVF_CTR_BAD_DISK], op->replaced_bad);
                } else if (op->kind == KVF_LMDB_DROP_BAD && op->done) {
                    count(&s->pending[KVF_CTR_BAD_DISK], 1);
                }
            }
        }
    }
    /* redis: pipelined SETs, then DELs */
    if (s->redis_w) {
        const kvf_chunk_key **keys = kvf_calloc((size_t)n, sizeof *keys);
        const uint8_t       **vals = kvf_calloc((size_t)n, sizeof *vals);
        size_t               *vl   = kvf_calloc((size_t)n, sizeof *vl);
        kvf_status           *sts  = kvf_calloc((size_t)n, sizeof *sts);
        int                   m    = 0;
        if (keys && vals && vl && sts) {
            for (int i = 0; i < n; i++)
                if (items[i]->kind == W_PUT && items[i]->to_redis && bufs[i])
                    keys[m] = &items[i]->key, vals[m] = bufs[i], vl[m] = lens[i], m++;
            if (m) {
                kvf_status rs     = kvf_redis_set(s->redis_w, keys, vals, vl, m, s->redis_ttl, sts);
                int        failed = 0;
                for (int j = 0; j < m; j++) {
                    if (sts[j] == KVF_OK) count(&s->ts[KVF_TIER_REDIS].writes, 1), count(&s->ts[KVF_TIER_REDIS].write_bytes, (long long)vl[j]);
                    else count(&s->ts[KVF_TIER_REDIS].errors, 1), failed++;
                }
                /* Redis is a cache: a failed write loses nothing, but is said once per episode */
                if (failed && !s->redis_werr_logged) {
                    kvf_log(KVF_LOG_WARN, "store: %d of %d writes to the redis tier failed (%s); the "
                            "chunks stay in the other tiers", failed, m, rs != KVF_OK ? kvf_errmsg() : "?");
                    s->redis_werr_logged = true;
                } else if (!failed && s->redis_werr_logged) {
                    kvf_log(KVF_LOG_INFO, "store: writes to the redis tier succeed again");
                    s->redis_werr_logged = false;
                }
            }
            for (int i = 0; i < n; i++)
                if (items[i]->kind == W_DROP_REDIS) {
                    bool existed;
                    if (kvf_redis_del(s->redis_w, &items[i]->key, &existed) == KVF_OK) {
                        if (existed) count(&s->pending[KVF_CTR_BAD_REDIS], 1);
                    } else
                        count(&s->ts[KVF_TIER_REDIS].errors, 1);
                }
        } else
            count(&s->ts[KVF_TIER_REDIS].errors, m);
        kvf_free(keys), kvf_free(vals), kvf_free(vl), kvf_free(sts);
    }
    for (int i = 0; i < n; i++) kvf_free(bufs[i]);
    kvf_free(bufs), kvf_free(lens), kvf_free(ops), kvf_free(opi);
    /* warm reads last, after this batch's writes: a key found in a lower tier enters the
     * memory tier (lookup does that); one already there or nowhere costs a probe */
    for (int i = 0; i < n; i++)
        if (items[i]->kind == W_WARM) {
            if (m_has(s, &items[i]->key)) continue;
            kvf_chunk *c = lookup_lower(s, &items[i]->key, false);
            if (c) count(&s->warmed, 1);
            kvf_chunk_release(c);
        }
}

static void persist_counters(kvf_store *s) {
    if (!s->disk) return;
    int64_t d[KVF_CTR_COUNT];
    bool    any;
    take_deltas(s, d, &any);
    bool dd = false;
    if (any) kvf_lmdb_write(s->disk, NULL, 0, d, &dd);
    if (any && !dd) give_back_deltas(s, d);
}

static void *writer_main(void *arg) {
    kvf_store *s = arg;
    pthread_mutex_lock(&s->qmu);
    for (;;) {
        if (!s->qhead && !s->closing) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            if (pthread_cond_timedwait(&s->qcv, &s->qmu, &ts) != 0 && !s->qhead) {
                pthread_mutex_unlock(&s->qmu);
                persist_counters(s);
                pthread_mutex_lock(&s->qmu);
            }
            continue;
        }
        if (!s->qhead) break; /* closing and drained */
        /* the batch stays at the head of the queue while it is written, so lookups still
         * find its chunks (read-your-writes before the disk has them) */
        witem   *items[BATCH_ITEMS], *last = s->qhead;
        int      n     = 1;
        uint64_t bytes = last->qbytes;
        items[0]       = last;
        while (last->next && n < BATCH_ITEMS && bytes + last->next->qbytes <= BATCH_BYTES) {
            last = last->next;
            bytes += last->qbytes;
            items[n++] = last;
        }
        pthread_mutex_unlock(&s->qmu);
        process_batch(s, items, n);
        pthread_mutex_lock(&s->qmu);
        witem *done = s->qhead;
        s->qhead    = last->next;
        last->next  = NULL;
        if (!s->qhead) s->qtail = NULL;
        s->q_bytes -= bytes;
        s->q_items -= n;
        s->seq_done += (uint64_t)n;
        pthread_cond_broadcast(&s->dcv);
        pthread_mutex_unlock(&s->qmu);
        for (witem *it = done; it;) {
            witem *nx = it->next;
            kvf_chunk_release(it->chunk);
            kvf_free(it);
            it = nx;
        }
        pthread_mutex_lock(&s->qmu);
    }
    pthread_mutex_unlock(&s->qmu);
    persist_counters(s);
    return NULL;
}

/* ---- get / put ---------------------------------------------------------------------------- */

static bool chunk_fits_model(const kvf_store *s, const kvf_chunk *c) {
    return c->n_layer == s->n_layer && c->kvd == s->kvd;
}

static void drop_bad(kvf_store *s, kvf_store_tier t, const kvf_chunk_key *key, const char *msg) {
    char hex[33];
    kvf_chunk_key_hex(key, hex);
    count(&s->ts[t].bad, 1);
    kvf_log(KVF_LOG_WARN, "store: %s tier entry %s is corrupt (%s); dropping it, the chunk will be "
                          "recomputed", kvf_store_tier_name(t), hex, msg);
    queue_simple(s, t == KVF_TIER_DISK ? W_DROP_DISK : W_DROP_REDIS, key, 0);
}

/* a chunk queued for writing (not on disk yet) */
static kvf_chunk *queued_chunk(kvf_store *s, const kvf_chunk_key *key) {
    kvf_chunk *c = NULL;
    pthread_mutex_lock(&s->qmu);
    for (witem *it = s->qhead; it && !c; it = it->next)
        if (it->kind == W_PUT && it->to_disk && !memcmp(it->key.b, key->b, 16)) c = kvf_chunk_retain(it->chunk);
    pthread_mutex_unlock(&s->qmu);
    return c;
}

static kvf_chunk *lookup(kvf_store *s, const kvf_chunk_key *key, bool deferred) {
    if (!s->have_model) return NULL;
    kvf_chunk *c;
    uint64_t   t0 = kvf_time_ns();
    if (s->mem_budget) {
        if ((c = m_get(s, key))) {
            count(&s->ts[KVF_TIER_MEMORY].hits, 1);
            count(&s->pending[KVF_CTR_HITS_MEM], 1);
            count(&s->ts[KVF_TIER_MEMORY].read_bytes, (long long)c->bytes);
            count(&s->ts[KVF_TIER_MEMORY].read_ns, (long long)(kvf_time_ns() - t0));
            return c;
        }
        count(&s->ts[KVF_TIER_MEMORY].misses, 1);
        count(&s->pending[KVF_CTR_MISSES_MEM], 1);
    }
    return lookup_lower(s, key, deferred);
}

/* the tiers below memory (a hit is copied into the memory tier, if there is one) */
static kvf_chunk *lookup_lower(kvf_store *s, const kvf_chunk_key *key, bool deferred) {
    kvf_chunk *c;
    if (s->disk && (c = queued_chunk(s, key))) { /* written soon: a disk hit */
        count(&s->ts[KVF_TIER_DISK].hits, 1);
        count(&s->pending[KVF_CTR_HITS_DISK], 1);
        count(&s->ts[KVF_TIER_DISK].read_bytes, (long long)c->bytes);
        return c;
    }
    if (s->disk) {
        uint64_t      t1 = kvf_time_ns(), last;
        kvf_lmdb_mode mode = s->mem_budget ? KVF_LMDB_COPY : deferred && s->deferred ? KVF_LMDB_DEFERRED : KVF_LMDB_EAGER;
        kvf_status    st   = kvf_lmdb_get(s->disk, key, s->model_id, mode, &c, &last);
        if ((st == KVF_OK || st == KVF_E_NOTFOUND || st == KVF_E_CORRUPT) &&
            atomic_load_explicit(&s->disk_rerr_logged, memory_order_relaxed) &&
            atomic_exchange(&s->disk_rerr_logged, false))
            kvf_log(KVF_LOG_INFO, "store: reads from the disk tier succeed again");
        if (st == KVF_OK && !chunk_fits_model(s, c)) {
            st = kvf_set_error(KVF_E_CORRUPT, "%d layers x %d KV width, the model has %d x %d", c->n_layer, c->kvd, s->n_layer, s->kvd);
            kvf_chunk_release(c);
        }
        if (st == KVF_OK) {
            uint64_t now = wall_ns();
            count(&s->ts[KVF_TIER_DISK].hits, 1);
            count(&s->pending[KVF_CTR_HITS_DISK], 1);
            count(&s->ts[KVF_TIER_DISK].read_bytes, (long long)c->bytes);
            count(&s->ts[KVF_TIER_DISK].read_ns, (long long)(kvf_time_ns() - t1));
            if (s->touch_ns < 0 || now > last + (uint64_t)s->touch_ns) queue_simple(s, W_TOUCH, key, now);
            m_insert(s, key, c);
            return c;
        }
        if (st == KVF_E_CORRUPT) drop_bad(s, KVF_TIER_DISK, key, kvf_errmsg());
        else if (st == KVF_E_NOTFOUND) {
            count(&s->ts[KVF_TIER_DISK].misses, 1);
            count(&s->pending[KVF_CTR_MISSES_DISK], 1);
        } else {
            count(&s->ts[KVF_TIER_DISK].errors, 1);
            if (!atomic_exchange(&s->disk_rerr_logged, true))
                kvf_log(KVF_LOG_WARN, "store: %s; reading from the other tiers or computing", kvf_errmsg());
        }
    }
    if (s->redis_r) {
        uint64_t        t1 = kvf_time_ns();
        kvf_redis_value v;
        kvf_status      st = kvf_redis_get(s->redis_r, key, &v);
        if (st == KVF_OK) {
            kvf_entry_view ev;
            c  = NULL;
            st = kvf_entry_parse(v.data, v.len, &ev);
            if (st == KVF_OK) {
                if (memcmp(ev.key.b, key->b, 16) != 0) st = kvf_set_error(KVF_E_CORRUPT, "it holds the chunk of another key");
                else if (memcmp(ev.model_id, s->model_id, 16) != 0) st = kvf_set_error(KVF_E_CORRUPT, "it was computed by another model");
                /* the shape before decoding: a small zstd entry may claim a huge K/V size */
                else if (ev.n_layer != s->n_layer || ev.kvd != s->kvd) st = kvf_set_error(KVF_E_CORRUPT, "its shape does not match the model");
                else st = kvf_entry_to_chunk(&ev, &c);
                kvf_entry_view_free(&ev);
            }
            if (st == KVF_OK && !chunk_fits_model(s, c)) {
                st = kvf_set_error(KVF_E_CORRUPT, "its shape does not match the model");
                kvf_chunk_release(c);
            }
            size_t len = v.len;
            kvf_redis_value_free(&v);
            if (st == KVF_OK) {
                count(&s->ts[KVF_TIER_REDIS].hits, 1);
                count(&s->pending[KVF_CTR_HITS_REDIS], 1);
                count(&s->ts[KVF_TIER_REDIS].read_bytes, (long long)len);
                count(&s->ts[KVF_TIER_REDIS].read_ns, (long long)(kvf_time_ns() - t1));
                m_insert(s, key, c);
                if (s->disk && s->thr_started) { /* write back to the disk tier */
                    witem *it = kvf_calloc(1, sizeof *it);
                    if (it) {
                        it->kind = W_PUT, it->key = *key, it->chunk = kvf_chunk_retain(c);
                        it->to_disk = true, it->time = wall_ns(), it->qbytes = c->bytes;
                        if (!enqueue(s, it, true)) count(&s->dropped, 1);
                    }
                }
                return c;
            }
            if (st == KVF_E_NOMEM) count(&s->ts[KVF_TIER_REDIS].errors, 1);
            else drop_bad(s, KVF_TIER_REDIS, key, kvf_errmsg());
        } else if (st == KVF_E_NOTFOUND) {
            count(&s->ts[KVF_TIER_REDIS].misses, 1);
            count(&s->pending[KVF_CTR_MISSES_REDIS], 1);
        } else {
            count(&s->ts[KVF_TIER_REDIS].errors, 1);
        }
    }
    return NULL;
}

static kvf_chunk *store_get(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    return lookup((kvf_store *)c, key, false);
}

static kvf_chunk *store_get_deferred(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    return lookup((kvf_store *)c, key, true);
}

static void store_prefetch(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n) {
    kvf_store *s = (kvf_store *)c;
    if (s->disk && s->have_model) kvf_lmdb_prefetch(s->disk, keys, n);
}

static void store_hint(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n, int lane, uint32_t steps) {
    kvf_store *s = (kvf_store *)c;
    if (!s->mem_budget) return;
    pthread_mutex_lock(&s->mmu);
    for (int i = 0; i < n; i++) kvf_steps_set(&s->mem.steps, keys[i].b, lane, steps);
    pthread_mutex_unlock(&s->mmu);
}

/* warm: queue reads for the writer thread (W_WARM), which brings the keys missing from the
 * memory tier up from disk or Redis; dropped rather than waiting when the queue is full */
static void store_warm(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n) {
    kvf_store *s = (kvf_store *)c;
    if (!s->have_model || !s->mem_budget || !s->thr_started || !(s->disk || s->redis_r)) return;
    for (int i = 0; i < n; i++) {
        if (m_has(s, &keys[i])) continue;
        witem *it = kvf_calloc(1, sizeof *it);
        if (!it) return;
        it->kind = W_WARM, it->key = keys[i], it->time = wall_ns();
        enqueue(s, it, true);
    }
}

static kvf_status store_put(kvf_chunk_cache *cc, const kvf_chunk_key *key, kvf_chunk *chunk) {
    kvf_store *s = (kvf_store *)cc;
    if (!s->have_model) return kvf_set_error(KVF_E_INVAL, "this store was opened without a model (maintenance only): it cannot store chunks");
    if (!chunk || !chunk_fits_model(s, chunk))
        return kvf_set_error(KVF_E_INVAL, "store: the chunk's shape (%d layers x %d) does not match the model (%d x %d)",
                             chunk ? chunk->n_layer : 0, chunk ? chunk->kvd : 0, s->n_layer, s->kvd);
    if (!chunk->backing) m_insert(s, key, chunk);
    if (!s->thr_started) return KVF_OK;
    witem *it = kvf_calloc(1, sizeof *it);
    if (!it) return kvf_set_error(KVF_E_NOMEM, "out of memory queueing a chunk write");
    it->kind = W_PUT, it->key = *key, it->chunk = kvf_chunk_retain(chunk);
    it->to_disk = s->disk != NULL, it->to_redis = s->redis_w != NULL;
    it->time = wall_ns(), it->qbytes = chunk->bytes;
    if (!enqueue(s, it, s->drop_when_full)) count(&s->dropped, 1);
    return KVF_OK;
}

/* ---- open / close ------------------------------------------------------------------------- */

kvf_store_params kvf_store_default_params(void) {
    kvf_store_params p;
    memset(&p, 0, sizeof p);
    p.compress = KVF_STORE_COMPRESS_NONE;
    /* fusion verifies each layer just before using it, overlapping disk reads and checksums
     * with the computation of the layer before (pipelined loading) */
    p.verify_deferred = true;
    return p;
}

static void store_free(kvf_chunk_cache *c) {
    kvf_store *s = (kvf_store *)c;
    if (s->thr_started) {
        pthread_mutex_lock(&s->qmu);
        s->closing = true;
        pthread_cond_broadcast(&s->qcv);
        pthread_cond_broadcast(&s->dcv);
        pthread_mutex_unlock(&s->qmu);
        pthread_join(s->thr, NULL);
        if (s->werr != KVF_OK) kvf_log(KVF_LOG_WARN, "store: closed with a write error: %s", s->werr_msg);
    } else
        persist_counters(s);
    kvf_lru_free(&s->mem);
    pthread_mutex_destroy(&s->mmu);
    pthread_mutex_destroy(&s->qmu);
    pthread_cond_destroy(&s->qcv);
    pthread_cond_destroy(&s->dcv);
    kvf_lmdb_close(s->disk);
    kvf_redis_close(s->redis_r);
    kvf_redis_close(s->redis_w);
    kvf_free(s->redis_addr);
    kvf_free(s);
}

static const kvf_chunk_cache_ops store_ops = {.get          = store_get,
                                              .put          = store_put,
                                              .free         = store_free,
                                              .get_deferred = store_get_deferred,
                                              .prefetch     = store_prefetch,
                                              .hint         = store_hint,
                                              .warm         = store_warm};

kvf_status kvf_store_open(const kvf_model *model, const kvf_store_params *params, kvf_chunk_cache **out) {
    if (!out) return kvf_set_error(KVF_E_INVAL, "kvf_store_open: out is NULL");
    *out                 = NULL;
    kvf_store_params p   = params ? *params : kvf_store_default_params();
    bool             dir = p.dir && p.dir[0], red = p.redis && p.redis[0];
    if (!dir && !red && !p.mem_budget)
        return kvf_set_error(KVF_E_INVAL, "kvf_store_open: no tier enabled (give a directory, a Redis address or a memory budget)");
    if (p.compress != KVF_STORE_COMPRESS_NONE && p.compress != KVF_STORE_COMPRESS_ZSTD)
        return kvf_set_error(KVF_E_INVAL, "kvf_store_open: unknown compression %d", (int)p.compress);
    if (p.zstd_level < 0 || p.zstd_level > 22) return kvf_set_error(KVF_E_INVAL, "kvf_store_open: zstd level %d is outside 0..22", p.zstd_level);
    if (p.redis_ttl_s < 0 || p.redis_timeout_ms < 0) return kvf_set_error(KVF_E_INVAL, "kvf_store_open: negative Redis TTL or timeout");
    kvf_store *s = kvf_calloc(1, sizeof *s);
    if (!s) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    s->base.ops = &store_ops;
    pthread_mutex_init(&s->mmu, NULL);
    pthread_mutex_init(&s->qmu, NULL);
    pthread_cond_init(&s->qcv, NULL);
    pthread_cond_init(&s->dcv, NULL);
    if (model) {
        s->have_model = true;
        memcpy(s->model_id, model->cache_id, 16);
        s->n_layer   = model->hp.n_layer;
        s->n_head_kv = model->hp.n_head_kv;
        s->head_dim  = model->hp.head_dim;
        s->kvd       = s->n_head_kv * s->head_dim;
    }
    s->mem_budget     = p.mem_budget;
    s->queue_max      = p.queue_bytes ? p.queue_bytes : DEFAULT_QUEUE_BYTES;
    s->compress       = (int)p.compress;
    s->zstd_level     = p.zstd_level ? p.zstd_level : 3;
    s->redis_ttl      = p.redis_ttl_s;
    s->touch_ns       = p.touch_interval_s < 0 ? -1 : (int64_t)(p.touch_interval_s ? p.touch_interval_s : 60) * 1000000000ll;
    s->drop_when_full = p.drop_when_full;
    s->deferred       = p.verify_deferred;
    kvf_status st     = p.mem_budget ? kvf_lru_init(&s->mem) : KVF_OK;
    if (st == KVF_OK && dir) {
        kvf_lmdb_params lp = {.dir = p.dir, .map_size = p.map_size, .budget = p.disk_budget, .no_meta_sync = p.no_meta_sync};
        st                 = kvf_lmdb_open(&lp, &s->disk);
    }
    if (st == KVF_OK && red) {
        st = kvf_redis_open(p.redis, p.redis_prefix, p.redis_timeout_ms, &s->redis_r);
        if (st == KVF_OK) st = kvf_redis_open(p.redis, p.redis_prefix, p.redis_timeout_ms, &s->redis_w);
        /* the reader's handle says when the tier goes and comes back; the writer reports
         * failed writes once per episode itself */
        if (st == KVF_OK) kvf_redis_set_quiet(s->redis_w, true);
        if (st == KVF_OK && !(s->redis_addr = kvf_strdup(p.redis))) st = kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    if (st == KVF_OK && (s->disk || s->redis_w)) {
        if (pthread_create(&s->thr, NULL, writer_main, s) != 0) st = kvf_set_error(KVF_E_IO, "cannot start the store writer thread");
        else s->thr_started = true;
    }
    if (st != KVF_OK) {
        store_free(&s->base);
        return st;
    }
    *out = &s->base;
    return KVF_OK;
}

/* ---- flush, statistics, maintenance ------------------------------------------------------- */

static kvf_status take_werr(kvf_store *s) {
    kvf_status st = s->werr;
    if (st != KVF_OK) kvf_set_error(st, "%s", s->werr_msg);
    s->werr        = KVF_OK;
    s->werr_msg[0] = 0;
    return st;
}

kvf_status kvf_store_flush(kvf_chunk_cache *c) {
    kvf_store *s = as_store(c);
    if (!s) return kvf_set_error(KVF_E_INVAL, "kvf_store_flush: not a chunk store");
    if (!s->thr_started) return KVF_OK;
    pthread_mutex_lock(&s->qmu);
    uint64_t target = s->seq_in;
    while (s->seq_done < target) pthread_cond_wait(&s->dcv, &s->qmu);
    kvf_status st = take_werr(s);
    pthread_mutex_unlock(&s->qmu);
    if (st == KVF_OK) persist_counters(s);
    return st;
}

kvf_status kvf_store_write_status(kvf_chunk_cache *c) {
    kvf_store *s = as_store(c);
    if (!s) return kvf_set_error(KVF_E_INVAL, "kvf_store_write_status: not a chunk store");
    pthread_mutex_lock(&s->qmu);
    kvf_status st = take_werr(s);
    pthread_mutex_unlock(&s->qmu);
    return st;
}

kvf_status kvf_store_count_redis(kvf_chunk_cache *c) {
    kvf_store *s = as_store(c);
    if (!s) return kvf_set_error(KVF_E_INVAL, "kvf_store_count_redis: not a chunk store");
    if (!s->redis_r) return kvf_set_error(KVF_E_INVAL, "the store has no Redis tier");
    kvf_status st = kvf_redis_count(s->redis_r, &s->redis_entries, &s->redis_bytes);
    s->redis_counted = st == KVF_OK;
    return st;
}

kvf_status kvf_store_get_stats(kvf_chunk_cache *c, kvf_store_stats *out) {
    kvf_store *s = as_store(c);
    if (!s || !out) return kvf_set_error(KVF_E_INVAL, "kvf_store_get_stats: not a chunk store");
    memset(out, 0, sizeof *out);
    for (int t = 0; t < KVF_TIER_COUNT; t++) {
        kvf_store_tier_stats *o = &out->tier[t];
        tstats               *i = &s->ts[t];
        o->hits = atomic_load(&i->hits), o->misses = atomic_load(&i->misses);
        o->writes = atomic_load(&i->writes), o->write_bytes = atomic_load(&i->write_bytes);
        o->evictions = atomic_load(&i->evictions), o->errors = atomic_load(&i->errors);
        o->bad_entries = atomic_load(&i->bad), o->read_bytes = atomic_load(&i->read_bytes);
        o->read_ms = (double)atomic_load(&i->read_ns) / 1e6;
        o->entries = o->bytes = o->total_hits = o->total_misses = -1;
        o->total_bad_entries = o->total_evictions = -1;
    }
    out->tier[KVF_TIER_MEMORY].enabled = s->mem_budget > 0;
    out->tier[KVF_TIER_DISK].enabled   = s->disk != NULL;
    out->tier[KVF_TIER_REDIS].enabled  = s->redis_r != NULL;
    if (s->mem_budget) {
        pthread_mutex_lock(&s->mmu);
        out->tier[KVF_TIER_MEMORY].entries = s->mem.n_entries;
        out->tier[KVF_TIER_MEMORY].bytes   = (int64_t)s->mem.bytes;
        pthread_mutex_unlock(&s->mmu);
    }
    if (s->redis_counted) {
        out->tier[KVF_TIER_REDIS].entries = s->redis_entries;
        out->tier[KVF_TIER_REDIS].bytes   = s->redis_bytes;
    }
    pthread_mutex_lock(&s->qmu);
    out->queued = s->q_items;
    pthread_mutex_unlock(&s->qmu);
    out->write_dropped = atomic_load(&s->dropped);
    out->warmed        = atomic_load(&s->warmed);
    if (s->disk) {
        kvf_lmdb_info in;
        kvf_status    st = kvf_lmdb_info_get(s->disk, &in);
        if (st != KVF_OK) return st;
        out->tier[KVF_TIER_DISK].entries = in.entries;
        out->tier[KVF_TIER_DISK].bytes   = in.bytes;
        static const int hc[KVF_TIER_COUNT] = {KVF_CTR_HITS_MEM, KVF_CTR_HITS_DISK, KVF_CTR_HITS_REDIS};
        static const int mc[KVF_TIER_COUNT] = {KVF_CTR_MISSES_MEM, KVF_CTR_MISSES_DISK, KVF_CTR_MISSES_REDIS};
        for (int t = 0; t < KVF_TIER_COUNT; t++) {
            out->tier[t].total_hits   = in.ctr[hc[t]] + atomic_load(&s->pending[hc[t]]);
            out->tier[t].total_misses = in.ctr[mc[t]] + atomic_load(&s->pending[mc[t]]);
        }
        out->tier[KVF_TIER_DISK].total_bad_entries  = in.ctr[KVF_CTR_BAD_DISK] + atomic_load(&s->pending[KVF_CTR_BAD_DISK]);
        out->tier[KVF_TIER_REDIS].total_bad_entries = in.ctr[KVF_CTR_BAD_REDIS] + atomic_load(&s->pending[KVF_CTR_BAD_REDIS]);
        out->tier[KVF_TIER_DISK].total_evictions    = in.ctr[KVF_CTR_EVICTED] + atomic_load(&s->pending[KVF_CTR_EVICTED]);
        out->map_size    = in.map_size;
        out->file_bytes  = in.file_bytes;
        out->disk_budget = in.budget;
    }
    return KVF_OK;
}

static kvf_status need_disk(kvf_store *s, const char *what) {
    if (!s) return kvf_set_error(KVF_E_INVAL, "%s: not a chunk store", what);
    if (!s->disk) return kvf_set_error(KVF_E_INVAL, "%s: the store has no disk tier", what);
    return KVF_OK;
}

kvf_status kvf_store_list(kvf_chunk_cache *c, kvf_store_visit_fn fn, void *user) {
    kvf_store *s  = as_store(c);
    kvf_status st = need_disk(s, "kvf_store_list");
    if (st != KVF_OK) return st;
    if (!fn) return kvf_set_error(KVF_E_INVAL, "kvf_store_list: no visitor");
    kvf_store_flush(c);
    return kvf_lmdb_list(s->disk, fn, user);
}

kvf_status kvf_store_verify(kvf_chunk_cache *c, bool remove_bad, kvf_store_visit_fn fn, void *user,
                            kvf_store_verify_report *out) {
    kvf_store *s  = as_store(c);
    kvf_status st = need_disk(s, "kvf_store_verify");
    if (st != KVF_OK) return st;
    kvf_store_verify_report local;
    kvf_store_flush(c);
    return kvf_lmdb_verify(s->disk, remove_bad, fn, user, out ? out : &local);
}

kvf_status kvf_store_gc(kvf_chunk_cache *c, uint64_t target_bytes, int64_t *evicted, uint64_t *freed) {
    kvf_store *s  = as_store(c);
    kvf_status st = need_disk(s, "kvf_store_gc");
    if (st != KVF_OK) return st;
    int64_t  ev;
    uint64_t fr;
    kvf_store_flush(c);
    st = kvf_lmdb_gc(s->disk, target_bytes, &ev, &fr);
    if (st == KVF_OK) count(&s->ts[KVF_TIER_DISK].evictions, ev);
    if (evicted) *evicted = st == KVF_OK ? ev : 0;
    if (freed) *freed = st == KVF_OK ? fr : 0;
    return st;
}

kvf_status kvf_store_remove(kvf_chunk_cache *c, const uint8_t key[16]) {
    kvf_store *s = as_store(c);
    if (!s || !key) return kvf_set_error(KVF_E_INVAL, "kvf_store_remove: not a chunk store");
    kvf_chunk_key k;
    memcpy(k.b, key, 16);
    kvf_store_flush(c);
    bool       found = m_del(s, &k);
    kvf_status st    = KVF_OK;
    if (s->disk) {
        kvf_status r = kvf_lmdb_remove(s->disk, &k);
        if (r == KVF_OK) found = true;
        else if (r != KVF_E_NOTFOUND) st = r;
    }
    if (s->redis_w && st == KVF_OK) {
        bool existed;
        kvf_status r = kvf_redis_del(s->redis_w, &k, &existed);
        if (r != KVF_OK) st = r;
        found |= existed;
    }
    if (st != KVF_OK) return st;
    return found ? KVF_OK : kvf_set_error(KVF_E_NOTFOUND, "the key is in no tier of the store");
}

/* ---- layer loader ------------------------------------------------------------------------- */

struct kvf_chunk_loader {
    kvf_chunk     **chunks;
    int             n, n_layer, ahead;
    pthread_t       thr;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    int             done;      /* layers [0, done) are loaded */
    int             bad_layer; /* -1 none */
    int             bad_chunk;
    char            msg[512];
    atomic_bool     stop;
    double         *ms;        /* [n_layer] */
};

static void *loader_main(void *arg) {
    kvf_chunk_loader *ld = arg;
    for (int a = 0; a < ld->ahead && a < ld->n_layer; a++)
        for (int i = 0; i < ld->n; i++)
            if (ld->chunks[i]) kvf_chunk_prefetch_layer(ld->chunks[i], a);
    for (int l = 0; l < ld->n_layer && !atomic_load(&ld->stop); l++) {
        double t0 = kvf_time_ms();
        if (ld->ahead > 0 && l + ld->ahead < ld->n_layer)
            for (int i = 0; i < ld->n; i++)
                if (ld->chunks[i]) kvf_chunk_prefetch_layer(ld->chunks[i], l + ld->ahead);
        int bad = -1;
        for (int i = 0; i < ld->n && bad < 0; i++)
            if (ld->chunks[i] && kvf_chunk_load_layer(ld->chunks[i], l) != KVF_OK) bad = i;
        pthread_mutex_lock(&ld->mu);
        ld->ms[l] = kvf_time_ms() - t0;
        if (bad >= 0) {
            ld->bad_layer = l, ld->bad_chunk = bad;
            snprintf(ld->msg, sizeof ld->msg, "%s", kvf_errmsg());
            atomic_store(&ld->stop, true);
        } else
            ld->done = l + 1;
        pthread_cond_broadcast(&ld->cv);
        pthread_mutex_unlock(&ld->mu);
    }
    pthread_mutex_lock(&ld->mu);
    atomic_store(&ld->stop, true);
    pthread_cond_broadcast(&ld->cv);
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}

kvf_status kvf_chunk_loader_start(kvf_chunk *const *chunks, int n, int n_layer, int ahead,
                                  kvf_chunk_loader **out) {
    *out = NULL;
    if (n < 0 || n_layer < 1 || ahead < 0 || (n > 0 && !chunks))
        return kvf_set_error(KVF_E_INVAL, "kvf_chunk_loader_start: bad arguments");
    for (int i = 0; i < n; i++)
        if (chunks[i] && chunks[i]->n_layer < n_layer)
            return kvf_set_error(KVF_E_INVAL, "kvf_chunk_loader_start: chunk %d has %d layers, not %d", i, chunks[i]->n_layer, n_layer);
    kvf_chunk_loader *ld = kvf_calloc(1, sizeof *ld);
    if (!ld) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    ld->chunks = kvf_calloc((size_t)(n > 0 ? n : 1), sizeof(kvf_chunk *));
    ld->ms     = kvf_malloc(sizeof(double) * (size_t)n_layer);
    if (!ld->chunks || !ld->ms) {
        kvf_free(ld->chunks), kvf_free(ld->ms), kvf_free(ld);
        return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) ld->chunks[i] = kvf_chunk_retain(chunks[i]);
    for (int l = 0; l < n_layer; l++) ld->ms[l] = -1;
    ld->n = n, ld->n_layer = n_layer, ld->ahead = ahead, ld->bad_layer = -1, ld->bad_chunk = -1;
    atomic_init(&ld->stop, false);
    pthread_mutex_init(&ld->mu, NULL);
    pthread_cond_init(&ld->cv, NULL);
    if (pthread_create(&ld->thr, NULL, loader_main, ld) != 0) {
        for (int i = 0; i < n; i++) kvf_chunk_release(ld->chunks[i]);
        pthread_mutex_destroy(&ld->mu);
        pthread_cond_destroy(&ld->cv);
        kvf_free(ld->chunks), kvf_free(ld->ms), kvf_free(ld);
        return kvf_set_error(KVF_E_IO, "cannot start the chunk loader thread");
    }
    *out = ld;
    return KVF_OK;
}

kvf_status kvf_chunk_loader_wait(kvf_chunk_loader *ld, int l, int *bad) {
    if (bad) *bad = -1;
    if (!ld || l < 0 || l >= ld->n_layer) return kvf_set_error(KVF_E_INVAL, "kvf_chunk_loader_wait: layer %d out of range", l);
    pthread_mutex_lock(&ld->mu);
    while (ld->done <= l && ld->bad_layer < 0 && !atomic_load(&ld->stop)) pthread_cond_wait(&ld->cv, &ld->mu);
    kvf_status st = KVF_OK;
    if (ld->done <= l) {
        if (ld->bad_layer >= 0) {
            st = kvf_set_error(KVF_E_CORRUPT, "%s", ld->msg);
            if (bad) *bad = ld->bad_chunk;
        } else
            st = kvf_set_error(KVF_E_ABORTED, "the chunk loader was stopped before layer %d", l);
    }
    pthread_mutex_unlock(&ld->mu);
    return st;
}

double kvf_chunk_loader_layer_ms(const kvf_chunk_loader *ld, int l) {
    if (!ld || l < 0 || l >= ld->n_layer) return -1;
    pthread_mutex_lock((pthread_mutex_t *)&ld->mu);
    double v = ld->ms[l];
    pthread_mutex_unlock((pthread_mutex_t *)&ld->mu);
    return v;
}

void kvf_chunk_loader_free(kvf_chunk_loader *ld) {
    if (!ld) return;
    atomic_store(&ld->stop, true);
    pthread_join(ld->thr, NULL);
    for (int i = 0; i < ld->n; i++) kvf_chunk_release(ld->chunks[i]);
    pthread_mutex_destroy(&ld->mu);
    pthread_cond_destroy(&ld->cv);
    kvf_free(ld->chunks), kvf_free(ld->ms), kvf_free(ld);
}
