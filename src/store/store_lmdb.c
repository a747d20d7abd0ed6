/* store_lmdb.c - the disk tier of the chunk store: entries (chunk_io.h) in an LMDB environment.
 *
 * Tables (named LMDB databases):
 *   chunks  key (16 bytes) -> entry bytes
 *   meta    key -> { u64 last access (Unix ns), u64 entry bytes }   (little-endian)
 *   lru     u64 last access (big-endian) ++ key -> ""               (eviction order)
 *   info    "layout", "entries", "bytes" and the persistent hit/miss counters -> u64
 *
 * Every change is one LMDB write transaction, so an entry, its index records and the counters
 * appear together or not at all: a process killed at any moment leaves the previous committed
 * state (LMDB commits by writing the data pages first and the meta page last; its writer lock
 * is a robust mutex and stale reader slots are cleared on open). Several processes share an
 * environment; within one process the environment is opened once and shared by every handle
 * (LMDB forbids opening it twice). Reads use MDB_NOTLS read transactions: a zero-copy chunk
 * keeps its transaction open until it is released, which keeps its pages from being reused
 * even if the entry is evicted meanwhile.
 *
 * LMDB does not checksum its own pages; the entry format does (checked on every read).
 */
#include "common.h"
#include "store/store.h"

#include <errno.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAP_SIZE (16ull << 30)
#define LAYOUT_VERSION   1u
#define META_BYTES       16
#define LRU_KEY_BYTES    24
#define ZC_ALIGN         16 /* zero-copy needs payloads at least this aligned */

static const char *const ctr_names[KVF_CTR_COUNT] = {
    "hits.memory", "misses.memory", "hits.disk",  "misses.disk", "hits.redis",
    "misses.redis", "bad.disk",     "bad.redis",  "evicted"};

/* ---- environments (one per directory per process) ---------------------------------------- */

typedef struct lenv {
    struct lenv *next;
    dev_t        dev;
    ino_t        ino;
    char        *dir;
    MDB_env     *env;
    MDB_dbi      chunks, meta, lru, info;
    atomic_int   refs;
} lenv;

struct kvf_lmdb {
    lenv    *e;
    uint64_t budget;
};

static pthread_mutex_t g_envs_mu = PTHREAD_MUTEX_INITIALIZER;
static lenv           *g_envs;

static void put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get_u64le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* an LMDB / errno code as a kvf_status with a message naming the store and the operation */
static kvf_status lerr(const lenv *e, int rc, const char *what) {
    const char *dir = e ? e->dir : "?";
    switch (rc) {
    case MDB_MAP_FULL: {
        MDB_envinfo in;
        double      mib = e && mdb_env_info(e->env, &in) == 0 ? (double)in.me_mapsize / (1 << 20) : 0;
        return kvf_set_error(KVF_E_FULL,
                             "disk tier %s: %s: the LMDB map is full (map size %.1f MiB); nothing "
                             "stored before is lost. Raise --map-size or set a --disk-budget below it",
                             dir, what, mib);
    }
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return kvf_set_error(KVF_E_FULL, "disk tier %s: %s: the disk is full (%s); the write was "
                                         "rolled back and nothing stored before is lost",
                             dir, what, strerror(rc));
    case EIO: { /* LMDB reports a short write as EIO: usually a full disk or a file size limit */
        struct statvfs vs;
        struct rlimit  rl;
        const char    *why = NULL;
        if (e && statvfs(e->dir, &vs) == 0 && (uint64_t)vs.f_bavail * vs.f_frsize < (64u << 20))
            why = "the disk is full";
        else if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
            why = "the disk is full for this process (file size limit, ulimit -f)";
        if (why)
            return kvf_set_error(KVF_E_FULL, "disk tier %s: %s: %s (short write); the write was "
                                             "rolled back and nothing stored before is lost",
                                 dir, what, why);
        return kvf_set_error(KVF_E_IO, "disk tier %s: %s: I/O error (a short write: is the disk "
                                       "full?); the write was rolled back", dir, what);
    }
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
        return kvf_set_error(KVF_E_CORRUPT, "disk tier %s: %s: %s", dir, what, mdb_strerror(rc));
    case ENOMEM: return kvf_set_error(KVF_E_NOMEM, "disk tier %s: %s: out of memory", dir, what);
    default: return kvf_set_error(KVF_E_IO, "disk tier %s: %s: %s", dir, what, mdb_strerror(rc));
    }
}

static void env_unref(lenv *e) {
    if (atomic_fetch_sub(&e->refs, 1) != 1) return;
    pthread_mutex_lock(&g_envs_mu);
    /* a concurrent open may have revived it */
    if (atomic_load(&e->refs) != 0) {
        pthread_mutex_unlock(&g_envs_mu);
        return;
    }
    for (lenv **pp = &g_envs; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    pthread_mutex_unlock(&g_envs_mu);
    mdb_env_close(e->env);
    kvf_free(e->dir);
    kvf_free(e);
}

static int info_get(lenv *e, MDB_txn *t, const char *name, int64_t *v) {
    MDB_val k = {strlen(name), (void *)name}, d;
    int     rc = mdb_get(t, e->info, &k, &d);
    *v         = 0;
    if (rc == 0 && d.mv_size == 8) *v = (int64_t)get_u64le(d.mv_data);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int info_put(lenv *e, MDB_txn *t, const char *name, int64_t v) {
    uint8_t b[8];
    put_u64le(b, (uint64_t)v);
    MDB_val k = {strlen(name), (void *)name}, d = {8, b};
    return mdb_put(t, e->info, &k, &d, 0);
}

static kvf_status env_open(const kvf_lmdb_params *p, lenv **out) {
    *out = NULL;
    if (mkdir(p->dir, 0755) != 0 && errno != EEXIST)
        return kvf_set_error(KVF_E_IO, "disk tier: cannot create directory '%s': %s", p->dir, strerror(errno));
    struct stat sb;
    if (stat(p->dir, &sb) != 0)
        return kvf_set_error(KVF_E_IO, "disk tier: cannot stat '%s': %s", p->dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return kvf_set_error(KVF_E_IO, "disk tier: '%s' is not a directory", p->dir);
    pthread_mutex_lock(&g_envs_mu);
    for (lenv *e = g_envs; e; e = e->next)
        if (e->dev == sb.st_dev && e->ino == sb.st_ino) {
            atomic_fetch_add(&e->refs, 1);
            pthread_mutex_unlock(&g_envs_mu);
            *out = e;
            return KVF_OK;
        }
    kvf_status st = KVF_OK;
    lenv      *e  = kvf_calloc(1, sizeof *e);
    if (!e || !(e->dir = kvf_strdup(p->dir))) {
        kvf_free(e);
        pthread_mutex_unlock(&g_envs_mu);
        return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    e->dev = sb.st_dev, e->ino = sb.st_ino;
    atomic_init(&e->refs, 1);
    int rc = mdb_env_create(&e->env);
    if (rc == 0) rc = mdb_env_set_maxdbs(e->env, 8);
    if (rc == 0) rc = mdb_env_set_maxreaders(e->env, 1022);
    char data_path[4096];
    snprintf(data_path, sizeof data_path, "%s/data.mdb", p->dir);
    struct stat db;
    int         exists = stat(data_path, &db) == 0;
    if (rc == 0 && (p->map_size || !exists))
        rc = mdb_env_set_mapsize(e->env, (size_t)(p->map_size ? p->map_size : DEFAULT_MAP_SIZE));
    if (rc == 0)
        rc = mdb_env_open(e->env, p->dir, MDB_NOTLS | (p->no_meta_sync ? MDB_NOMETASYNC : 0), 0644);
    if (rc != 0) {
        st = rc == MDB_INVALID || rc == MDB_VERSION_MISMATCH
                 ? kvf_set_error(KVF_E_FORMAT, "disk tier: '%s' does not hold a readable LMDB store (%s)", p->dir, mdb_strerror(rc))
                 : kvf_set_error(rc == ENOMEM ? KVF_E_NOMEM : KVF_E_IO, "disk tier: cannot open the LMDB environment in '%s': %s", p->dir, mdb_strerror(rc));
        goto fail;
    }
    int dead = 0;
    mdb_reader_check(e->env, &dead); /* slots of processes that died holding a read txn */
    if (dead) kvf_log(KVF_LOG_DEBUG, "disk tier %s: cleared %d stale reader slots", p->dir, dead);
    MDB_txn *t;
    if ((rc = mdb_txn_begin(e->env, NULL, 0, &t)) != 0) {
        st = lerr(e, rc, "opening the tables");
        goto fail;
    }
    if ((rc = mdb_dbi_open(t, "chunks", MDB_CREATE, &e->chunks)) == 0 &&
        (rc = mdb_dbi_open(t, "meta", MDB_CREATE, &e->meta)) == 0 &&
        (rc = mdb_dbi_open(t, "lru", MDB_CREATE, &e->lru)) == 0 &&
        (rc = mdb_dbi_open(t, "info", MDB_CREATE, &e->info)) == 0) {
        int64_t layout = 0;
        rc             = info_get(e, t, "layout", &layout);
        if (rc == 0 && layout == 0) rc = info_put(e, t, "layout", LAYOUT_VERSION);
        else if (rc == 0 && layout != LAYOUT_VERSION) {
            mdb_txn_abort(t);
            st = kvf_set_error(KVF_E_FORMAT, "disk tier: '%s' has store layout %lld; this build uses %u",
                               p->dir, (long long)layout, LAYOUT_VERSION);
            goto fail;
        }
    }
    if (rc == 0) rc = mdb_txn_commit(t);
    else mdb_txn_abort(t);
    if (rc != 0) {
        st = lerr(e, rc, "opening the tables");
        goto fail;
    }
    e->next = g_envs;
    g_envs  = e;
    pthread_mutex_unlock(&g_envs_mu);
    *out = e;
    return KVF_OK;
fail:
    if (e->env) mdb_env_close(e->env);
    kvf_free(e->dir);
    kvf_free(e);
    pthread_mutex_unlock(&g_envs_mu);
    return st;
}

kvf_status kvf_lmdb_open(const kvf_lmdb_params *p, kvf_lmdb **out) {
    *out = NULL;
    if (!p || !p->dir || !p->dir[0]) return kvf_set_error(KVF_E_INVAL, "disk tier: no directory given");
    kvf_lmdb *d = kvf_calloc(1, sizeof *d);
    if (!d) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    kvf_status st = env_open(p, &d->e);
    if (st != KVF_OK) {
        kvf_free(d);
        return st;
    }
    d->budget = p->budget;
    *out      = d;
    return KVF_OK;
}

void kvf_lmdb_close(kvf_lmdb *d) {
    if (!d) return;
    env_unref(d->e);
    kvf_free(d);
}

static int rtxn_begin(lenv *e, MDB_txn **t) {
    int rc = mdb_txn_begin(e->env, NULL, MDB_RDONLY, t);
    if (rc == MDB_READERS_FULL) {
        int dead = 0;
        mdb_reader_check(e->env, &dead);
        rc = mdb_txn_begin(e->env, NULL, MDB_RDONLY, t);
    }
    if (rc == MDB_MAP_RESIZED) { /* another process grew the map beyond ours */
        rc = mdb_env_set_mapsize(e->env, 0);
        if (rc == 0) rc = mdb_txn_begin(e->env, NULL, MDB_RDONLY, t);
    }
    return rc;
}

static int wtxn_begin(lenv *e, MDB_txn **t) {
    int rc = mdb_txn_begin(e->env, NULL, 0, t);
    if (rc == MDB_MAP_RESIZED) {
        rc = mdb_env_set_mapsize(e->env, 0);
        if (rc == 0) rc = mdb_txn_begin(e->env, NULL, 0, t);
    }
    return rc;
}

/* read-ahead of [p, p + n) of the map (page-aligned range; a hint) */
static void advise(const void *p, size_t n, int advice) {
    static long pg;
    if (!pg) pg = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1), b = (uintptr_t)p + n;
    if (n) madvise((void *)a, b - a, advice);
}

/* ---- reads -------------------------------------------------------------------------------- */

typedef struct lbacking {
    kvf_chunk_backing base;
    lenv             *e;
    MDB_txn          *txn;
    kvf_entry_view    v;
    _Atomic uint8_t  *state; /* [n_layer]: 0 unchecked, 1 good, 2 bad */
} lbacking;

static void lb_release(kvf_chunk_backing *b) {
    lbacking *lb = (lbacking *)b;
    mdb_txn_abort(lb->txn);
    kvf_entry_view_free(&lb->v);
    kvf_free((void *)lb->state);
    env_unref(lb->e);
    kvf_free(lb);
}

static kvf_status lb_load(kvf_chunk_backing *b, const kvf_chunk *c, int l) {
    lbacking *lb = (lbacking *)b;
    uint8_t   s  = atomic_load(&lb->state[l]);
    if (s == 0) {
        s = kvf_entry_check_layer(&lb->v, l) == KVF_OK ? 1 : 2;
        atomic_store(&lb->state[l], s);
    }
    if (s == 1) return KVF_OK;
    char hex[33];
    kvf_chunk_key_hex(&c->key, hex);
    return kvf_set_error(KVF_E_CORRUPT, "disk tier %s: entry %s: layer %d checksum mismatch", lb->e->dir, hex, l);
}

static void lb_prefetch(kvf_chunk_backing *b, const kvf_chunk *c, int l) {
    lbacking *lb = (lbacking *)b;
    KVF_UNUSED(c);
    advise(kvf_entry_layer_ptr(&lb->v, l), lb->v.layers[l].size, MADV_WILLNEED);
}

static void meta_decode(const MDB_val *d, uint64_t *at, uint64_t *size) {
    *at = *size = 0;
    if (d->mv_size == META_BYTES) *at = get_u64le(d->mv_data), *size = get_u64le((const uint8_t *)d->mv_data + 8);
}

kvf_status kvf_lmdb_get(kvf_lmdb *d, const kvf_chunk_key *key, const uint8_t *model_id,
                        kvf_lmdb_mode mode, kvf_chunk **out, uint64_t *last_access) {
    lenv *e = d->e;
    *out = NULL, *last_access = 0;
    MDB_txn *t;
    int      rc = rtxn_begin(e, &t);
    if (rc != 0) return lerr(e, rc, "beginning a read");
    MDB_val k = {16, (void *)key->b}, v, m;
    rc        = mdb_get(t, e->chunks, &k, &v);
    if (rc != 0) {
        mdb_txn_abort(t);
        return rc == MDB_NOTFOUND ? KVF_E_NOTFOUND : lerr(e, rc, "reading an entry");
    }
    if (mdb_get(t, e->meta, &k, &m) == 0) {
        uint64_t sz;
        meta_decode(&m, last_access, &sz);
    }
    char hex[33];
    kvf_chunk_key_hex(key, hex);
    kvf_entry_view ev;
    kvf_status     st = kvf_entry_parse(v.mv_data, v.mv_size, &ev);
    if (st != KVF_OK) {
        mdb_txn_abort(t);
        kvf_error_prefix("disk tier %s: entry %s: ", e->dir, hex);
        return st;
    }
    if (memcmp(ev.key.b, key->b, 16) != 0) st = kvf_set_error(KVF_E_CORRUPT, "disk tier %s: entry %s holds the chunk of another key", e->dir, hex);
    else if (model_id && memcmp(ev.model_id, model_id, 16) != 0) st = kvf_set_error(KVF_E_CORRUPT, "disk tier %s: entry %s was computed by another model", e->dir, hex);
    if (st != KVF_OK) {
        kvf_entry_view_free(&ev);
        mdb_txn_abort(t);
        return st;
    }
    const uint8_t *payload = ev.base + ev.payload_offset;
    if (mode != KVF_LMDB_DEFERRED) advise(payload, ev.payload_bytes, MADV_WILLNEED);

    if (mode == KVF_LMDB_COPY || ev.compressed || ((uintptr_t)payload % ZC_ALIGN) != 0) {
        kvf_chunk *c;
        st = kvf_entry_to_chunk(&ev, &c);
        kvf_entry_view_free(&ev);
        mdb_txn_abort(t);
        if (st != KVF_OK) {
            kvf_error_prefix("disk tier %s: entry %s: ", e->dir, hex);
            return st;
        }
        *out = c;
        return KVF_OK;
    }
    lbacking *lb = kvf_calloc(1, sizeof *lb);
    int32_t  *ids = kvf_malloc(sizeof(int32_t) * (size_t)ev.n_tokens);
    if (lb) lb->state = kvf_calloc((size_t)ev.n_layer, 1);
    if (!lb || !lb->state || !ids) {
        if (lb) kvf_free((void *)lb->state);
        kvf_free(lb), kvf_free(ids);
        kvf_entry_view_free(&ev);
        mdb_txn_abort(t);
        return kvf_set_error(KVF_E_NOMEM, "out of memory reading a chunk");
    }
    kvf_entry_ids(&ev, ids);
    lb->base.release        = lb_release;
    lb->base.load_layer     = lb_load;
    lb->base.prefetch_layer = lb_prefetch;
    lb->e = e, lb->txn = t, lb->v = ev;
    atomic_fetch_add(&e->refs, 1);
    kvf_chunk *c = kvf_chunk_new_borrowed(ev.dtype, ev.n_tokens, ev.n_layer, ev.kvd, ids, ev.n_ctx,
                                          payload, &lb->base);
    kvf_free(ids);
    if (!c) {
        lb_release(&lb->base);
        return kvf_set_error(KVF_E_NOMEM, "out of memory reading a chunk");
    }
    c->key = *key;
    if (mode == KVF_LMDB_EAGER)
        for (int l = 0; l < c->n_layer; l++)
            if ((st = kvf_chunk_load_layer(c, l)) != KVF_OK) {
                kvf_chunk_release(c);
                return st;
            }
    *out = c;
    return KVF_OK;
}

void kvf_lmdb_prefetch(kvf_lmdb *d, const kvf_chunk_key *keys, int n) {
    MDB_txn *t;
    if (n <= 0 || rtxn_begin(d->e, &t) != 0) return;
    for (int i = 0; i < n; i++) {
        MDB_val k = {16, (void *)keys[i].b}, v;
        if (mdb_get(t, d->e->chunks, &k, &v) == 0) advise(v.mv_data, v.mv_size, MADV_WILLNEED);
    }
    mdb_txn_abort(t);
}

/* ---- writes ------------------------------------------------------------------------------- */

static void lru_key(uint8_t *b, uint64_t at, const uint8_t *key) {
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(at >> (56 - 8 * i)); /* big-endian: sorts by time */
    memcpy(b + 8, key, 16);
}

/* delete an entry and its index records; *size = its bytes (0 if absent) */
static int del_entry(lenv *e, MDB_txn *t, const uint8_t *key, uint64_t *size, bool *found) {
    MDB_val k = {16, (void *)key}, m, v;
    *size = 0, *found = false;
    int rc = mdb_get(t, e->meta, &k, &m);
    if (rc == 0) {
        uint64_t at, sz;
        meta_decode(&m, &at, &sz);
        uint8_t lk[LRU_KEY_BYTES];
        lru_key(lk, at, key);
        MDB_val lkv = {LRU_KEY_BYTES, lk};
        rc          = mdb_del(t, e->lru, &lkv, NULL);
        if (rc != 0 && rc != MDB_NOTFOUND) return rc;
        if ((rc = mdb_del(t, e->meta, &k, NULL)) != 0) return rc;
    } else if (rc != MDB_NOTFOUND)
        return rc;
    rc = mdb_get(t, e->chunks, &k, &v);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc != 0) return rc;
    *size  = v.mv_size;
    *found = true;
    return mdb_del(t, e->chunks, &k, NULL);
}

typedef struct wstate {
    int64_t entries, bytes;
} wstate;

static int ws_load(lenv *e, MDB_txn *t, wstate *w) {
    int rc = info_get(e, t, "entries", &w->entries);
    if (rc == 0) rc = info_get(e, t, "bytes", &w->bytes);
    return rc;
}

static int ws_save(lenv *e, MDB_txn *t, const wstate *w) {
    int rc = info_put(e, t, "entries", w->entries < 0 ? 0 : w->entries);
    if (rc == 0) rc = info_put(e, t, "bytes", w->bytes < 0 ? 0 : w->bytes);
    return rc;
}

static int del_counted(lenv *e, MDB_txn *t, const uint8_t *key, wstate *w, bool *found) {
    uint64_t sz;
    int      rc = del_entry(e, t, key, &sz, found);
    if (rc == 0 && *found) w->entries--, w->bytes -= (int64_t)sz;
    return rc;
}

/* evict the least recently used entry; *none when the index is empty */
static int evict_one(lenv *e, MDB_txn *t, wstate *w, bool *none, uint64_t *freed) {
    MDB_cursor *cur;
    int         rc = mdb_cursor_open(t, e->lru, &cur);
    if (rc != 0) return rc;
    MDB_val lk, lv;
    uint8_t rec[LRU_KEY_BYTES];
    *none = false;
    rc    = mdb_cursor_get(cur, &lk, &lv, MDB_FIRST);
    if (rc == MDB_NOTFOUND) {
        mdb_cursor_close(cur);
        *none = true;
        return 0;
    }
    bool bad_rec = rc == 0 && lk.mv_size != LRU_KEY_BYTES;
    if (rc == 0 && !bad_rec) memcpy(rec, lk.mv_data, LRU_KEY_BYTES);
    if (rc == 0 && bad_rec) rc = mdb_cursor_del(cur, 0);
    mdb_cursor_close(cur);
    if (rc != 0 || bad_rec) return rc;
    uint64_t before = (uint64_t)w->bytes;
    bool     found;
    rc = del_counted(e, t, rec + 8, w, &found);
    if (rc == 0) { /* the record itself (del_entry removed it unless it was stale) */
        MDB_val k = {LRU_KEY_BYTES, rec};
        rc        = mdb_del(t, e->lru, &k, NULL);
        if (rc == MDB_NOTFOUND) rc = 0;
    }
    if (freed) *freed += before - (uint64_t)w->bytes;
    return rc;
}

static int touch(lenv *e, MDB_txn *t, const uint8_t *key, uint64_t at, bool *done) {
    MDB_val k = {16, (void *)key}, m;
    *done     = false;
    int rc    = mdb_get(t, e->meta, &k, &m);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc != 0) return rc;
    uint64_t old, sz;
    meta_decode(&m, &old, &sz);
    if (at <= old) return 0;
    uint8_t lk[LRU_KEY_BYTES], mb[META_BYTES];
    lru_key(lk, old, key);
    MDB_val lkv = {LRU_KEY_BYTES, lk};
    rc          = mdb_del(t, e->lru, &lkv, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND) return rc;
    lru_key(lk, at, key);
    MDB_val empty = {0, NULL};
    if ((rc = mdb_put(t, e->lru, &lkv, &empty, 0)) != 0) return rc;
    put_u64le(mb, at), put_u64le(mb + 8, sz);
    MDB_val mv = {META_BYTES, mb};
    *done      = true;
    return mdb_put(t, e->meta, &k, &mv, 0);
}

/* is the stored value under key a good entry for it? */
static bool stored_ok(const MDB_val *v, const uint8_t *key) {
    kvf_entry_view ev;
    if (kvf_entry_parse(v->mv_data, v->mv_size, &ev) != KVF_OK) return false;
    advise(ev.base, ev.len, MADV_WILLNEED);
    bool ok = memcmp(ev.key.b, key, 16) == 0 && kvf_entry_check_all(&ev) == KVF_OK;
    kvf_entry_view_free(&ev);
    return ok;
}

static int apply_op(kvf_lmdb *d, MDB_txn *t, kvf_lmdb_op *op, wstate *w) {
    lenv   *e  = d->e;
    MDB_val k  = {16, op->key.b}, v;
    int     rc = 0;
    bool    found;
    op->status = KVF_OK, op->done = false, op->evicted = 0, op->replaced_bad = 0;
    switch (op->kind) {
    case KVF_LMDB_TOUCH: return touch(e, t, op->key.b, op->time, &op->done);
    case KVF_LMDB_DEL:
        rc       = del_counted(e, t, op->key.b, w, &found);
        op->done = found;
        return rc;
    case KVF_LMDB_DROP_BAD:
        rc = mdb_get(t, e->chunks, &k, &v);
        if (rc == MDB_NOTFOUND) return 0;
        if (rc != 0) return rc;
        if (stored_ok(&v, op->key.b)) return 0; /* rewritten by someone meanwhile */
        rc       = del_counted(e, t, op->key.b, w, &found);
        op->done = found;
        return rc;
    case KVF_LMDB_PUT: break;
    }
    rc = mdb_get(t, e->chunks, &k, &v);
    if (rc == 0) {
        if (stored_ok(&v, op->key.b)) return touch(e, t, op->key.b, op->time, &found);
        if ((rc = del_counted(e, t, op->key.b, w, &found)) != 0) return rc;
        op->replaced_bad = 1;
    } else if (rc != MDB_NOTFOUND)
        return rc;
    if (d->budget && op->len > d->budget) {
        char hex[33];
        kvf_chunk_key_hex(&op->key, hex);
        op->status = kvf_set_error(KVF_E_FULL, "disk tier %s: entry %s (%zu bytes) is larger than the disk budget (%llu bytes); not stored",
                                   e->dir, hex, op->len, (unsigned long long)d->budget);
        return 0;
    }
    while (d->budget && (uint64_t)w->bytes + op->len > d->budget) {
        bool none;
        if ((rc = evict_one(e, t, w, &none, NULL)) != 0) return rc;
        if (none) break;
        op->evicted++;
    }
    MDB_val val = {op->len, NULL};
    if ((rc = mdb_put(t, e->chunks, &k, &val, MDB_RESERVE)) != 0) return rc;
    memcpy(val.mv_data, op->entry, op->len);
    uint8_t lk[LRU_KEY_BYTES], mb[META_BYTES];
    put_u64le(mb, op->time), put_u64le(mb + 8, op->len);
    MDB_val mv = {META_BYTES, mb}, lkv = {LRU_KEY_BYTES, lk}, empty = {0, NULL};
    lru_key(lk, op->time, op->key.b);
    if ((rc = mdb_put(t, e->meta, &k, &mv, 0)) != 0) return rc;
    if ((rc = mdb_put(t, e->lru, &lkv, &empty, 0)) != 0) return rc;
    w->entries++, w->bytes += (int64_t)op->len;
    op->done = true;
    return 0;
}

static int add_deltas(lenv *e, MDB_txn *t, const int64_t *deltas) {
    for (int i = 0; deltas && i < KVF_CTR_COUNT; i++) {
        if (!deltas[i]) continue;
        int64_t v;
        int     rc = info_get(e, t, ctr_names[i], &v);
        if (rc == 0) rc = info_put(e, t, ctr_names[i], v + deltas[i]);
        if (rc != 0) return rc;
    }
    return 0;
}

/* one transaction: ops[0..n) and the deltas; 0 or the LMDB error (rolled back) */
static int write_txn(kvf_lmdb *d, kvf_lmdb_op *ops, int n, const int64_t *deltas, const char **what) {
    lenv    *e = d->e;
    MDB_txn *t;
    int      rc = wtxn_begin(e, &t);
    *what       = "beginning a write";
    if (rc != 0) return rc;
    wstate w;
    if ((rc = ws_load(e, t, &w)) != 0) *what = "reading the counters";
    for (int i = 0; rc == 0 && i < n; i++) {
        rc = apply_op(d, t, &ops[i], &w);
        if (rc != 0) *what = ops[i].kind == KVF_LMDB_PUT ? "storing an entry" : "updating the index";
    }
    if (rc == 0 && (rc = add_deltas(e, t, deltas)) != 0) *what = "updating the counters";
    if (rc == 0 && (rc = ws_save(e, t, &w)) != 0) *what = "updating the counters";
    if (rc != 0) {
        mdb_txn_abort(t);
        return rc;
    }
    if ((rc = mdb_txn_commit(t)) != 0) *what = "committing";
    return rc;
}

kvf_status kvf_lmdb_write(kvf_lmdb *d, kvf_lmdb_op *ops, int n, const int64_t *deltas,
                          bool *deltas_done) {
    const char *what;
    int         rc = write_txn(d, ops, n, deltas, &what);
    kvf_status  first = KVF_OK;
    bool        dd_local;
    if (!deltas_done) deltas_done = &dd_local;
    *deltas_done = rc == 0 && deltas;
    if (rc == 0) {
        for (int i = 0; i < n; i++)
            if (ops[i].status != KVF_OK && first == KVF_OK) first = ops[i].status;
        if (first != KVF_OK) /* re-raise the first op's message */
            for (int i = 0; i < n; i++)
                if (ops[i].status != KVF_OK) {
                    char hex[33];
                    kvf_chunk_key_hex(&ops[i].key, hex);
                    kvf_set_error(ops[i].status, "disk tier %s: entry %s larger than the disk budget; not stored", d->e->dir, hex);
                    break;
                }
        return first;
    }
    if (n <= 1 && !deltas) {
        kvf_status st = lerr(d->e, rc, what);
        for (int i = 0; i < n; i++) ops[i].status = st, ops[i].done = false;
        return st;
    }
    /* the batch failed as a whole: counters first, then each op on its own */
    char msg[512] = "";
    if (deltas && (rc = write_txn(d, NULL, 0, deltas, &what)) != 0) {
        first = lerr(d->e, rc, what);
        snprintf(msg, sizeof msg, "%s", kvf_errmsg());
    } else if (deltas)
        *deltas_done = true;
    for (int i = 0; i < n; i++) {
        rc = write_txn(d, &ops[i], 1, NULL, &what);
        if (rc != 0) {
            char hex[33];
            kvf_chunk_key_hex(&ops[i].key, hex);
            ops[i].status = lerr(d->e, rc, what);
            ops[i].done   = false;
            kvf_error_prefix("entry %s: ", hex);
        }
        if (ops[i].status != KVF_OK && first == KVF_OK) {
            first = ops[i].status;
            snprintf(msg, sizeof msg, "%s", kvf_errmsg());
        }
    }
    if (first != KVF_OK) kvf_set_error(first, "%s", msg);
    return first;
}

/* ---- information and maintenance ---------------------------------------------------------- */

kvf_status kvf_lmdb_info_get(kvf_lmdb *d, kvf_lmdb_info *out) {
    lenv *e = d->e;
    memset(out, 0, sizeof *out);
    MDB_txn *t;
    int      rc = rtxn_begin(e, &t);
    if (rc != 0) return lerr(e, rc, "beginning a read");
    rc = info_get(e, t, "entries", &out->entries);
    if (rc == 0) rc = info_get(e, t, "bytes", &out->bytes);
    for (int i = 0; rc == 0 && i < KVF_CTR_COUNT; i++) rc = info_get(e, t, ctr_names[i], &out->ctr[i]);
    MDB_envinfo in;
    MDB_stat    ms;
    if (rc == 0 && mdb_env_info(e->env, &in) == 0 && mdb_env_stat(e->env, &ms) == 0) {
        out->map_size   = in.me_mapsize;
        out->used_bytes = (uint64_t)(in.me_last_pgno + 1) * ms.ms_psize;
    }
    mdb_txn_abort(t);
    if (rc != 0) return lerr(e, rc, "reading the counters");
    char        path[4096];
    struct stat sb;
    snprintf(path, sizeof path, "%s/data.mdb", e->dir);
    if (stat(path, &sb) == 0) out->file_bytes = (uint64_t)sb.st_size;
    out->budget = d->budget;
    return KVF_OK;
}

void kvf_store_entry_from_bytes(const void *buf, size_t len, const uint8_t key[16],
                                kvf_store_entry *e, const char **problem) {
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, 16);
    e->bytes = len;
    *problem = NULL;
    kvf_entry_view v;
    if (kvf_entry_parse(buf, len, &v) != KVF_OK) {
        *problem = kvf_errmsg();
        return;
    }
    e->header_ok = true;
    memcpy(e->model_id, v.model_id, 16);
    e->dtype    = v.dtype;
    e->compress = v.compressed ? KVF_STORE_COMPRESS_ZSTD : KVF_STORE_COMPRESS_NONE;
    e->n_layer = v.n_layer, e->n_head_kv = v.n_head_kv, e->head_dim = v.head_dim;
    e->n_tokens = v.n_tokens, e->n_ctx = v.n_ctx;
    e->kv_bytes = v.kv_bytes;
    if (memcmp(v.key.b, key, 16) != 0) *problem = "the header's key differs from the entry's key";
    kvf_entry_view_free(&v);
}

kvf_status kvf_lmdb_list(kvf_lmdb *d, kvf_store_visit_fn fn, void *user) {
    lenv    *e = d->e;
    MDB_txn *t;
    int      rc = rtxn_begin(e, &t);
    if (rc != 0) return lerr(e, rc, "beginning a read");
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(t, e->chunks, &cur)) != 0) {
        mdb_txn_abort(t);
        return lerr(e, rc, "listing");
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 16) continue;
        kvf_store_entry en;
        const char     *problem;
        kvf_store_entry_from_bytes(v.mv_data, v.mv_size, k.mv_data, &en, &problem);
        MDB_val m;
        if (mdb_get(t, e->meta, &k, &m) == 0) {
            uint64_t at, sz;
            meta_decode(&m, &at, &sz);
            en.last_access = (int64_t)at;
        }
        char msg[512];
        if (problem) snprintf(msg, sizeof msg, "%s", problem);
        if (fn(&en, problem ? msg : NULL, user)) break;
    }
    mdb_cursor_close(cur);
    mdb_txn_abort(t);
    return rc == 0 || rc == MDB_NOTFOUND ? KVF_OK : lerr(e, rc, "listing");
}

/* a growable list of keys (up to 32 bytes each) */
typedef struct keylist {
    uint8_t (*k)[32];
    uint8_t *len;
    size_t   n, cap;
} keylist;

static int keylist_add(keylist *l, const void *key, size_t len) {
    if (len > 32) len = 32;
    if (l->n == l->cap) {
        size_t nc = l->cap ? 2 * l->cap : 64;
        void  *p  = kvf_realloc(l->k, nc * 32);
        if (!p) return -1;
        l->k  = p;
        void *q = kvf_realloc(l->len, nc);
        if (!q) return -1;
        l->len = q, l->cap = nc;
    }
    memcpy(l->k[l->n], key, len);
    l->len[l->n++] = (uint8_t)len;
    return 0;
}

static void keylist_free(keylist *l) {
    kvf_free(l->k), kvf_free(l->len);
    memset(l, 0, sizeof *l);
}

/* Rebuild meta / lru / counters from the chunks table, in write txn t. */
static int repair_index(lenv *e, MDB_txn *t, wstate *w, int64_t *fixed) {
    MDB_cursor *cur;
    MDB_val     k, v;
    int         rc;
    w->entries = w->bytes = 0;
    *fixed                = 0;
    uint64_t now          = (uint64_t)time(NULL) * 1000000000ull;
    /* meta / lru for each entry */
    if ((rc = mdb_cursor_open(t, e->chunks, &cur)) != 0) return rc;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 16) continue;
        uint8_t key[16];
        memcpy(key, k.mv_data, 16);
        size_t  len = v.mv_size;
        MDB_val kk = {16, key}, m;
        uint64_t at = now, sz = 0;
        int      mrc = mdb_get(t, e->meta, &kk, &m);
        if (mrc != 0 && mrc != MDB_NOTFOUND) break;
        if (mrc == 0) meta_decode(&m, &at, &sz);
        if (mrc != 0 || sz != len || m.mv_size != META_BYTES) {
            if (mrc == 0 && m.mv_size != META_BYTES) at = now;
            uint8_t mb[META_BYTES];
            put_u64le(mb, at), put_u64le(mb + 8, len);
            MDB_val mv = {META_BYTES, mb};
            if ((rc = mdb_put(t, e->meta, &kk, &mv, 0)) != 0) break;
            (*fixed)++;
        }
        uint8_t lk[LRU_KEY_BYTES];
        lru_key(lk, at, key);
        MDB_val lkv = {LRU_KEY_BYTES, lk}, lv, empty = {0, NULL};
        if (mdb_get(t, e->lru, &lkv, &lv) == MDB_NOTFOUND) {
            if ((rc = mdb_put(t, e->lru, &lkv, &empty, 0)) != 0) break;
            (*fixed)++;
        }
        w->entries++, w->bytes += (int64_t)len;
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND && rc != 0) return rc;
    /* lru records without a matching meta at, meta without an entry: collect, then delete */
    for (int pass = 0; pass < 2; pass++) {
        MDB_dbi dbi  = pass == 0 ? e->lru : e->meta;
        size_t  ksz  = pass == 0 ? LRU_KEY_BYTES : 16;
        keylist dead = {0};
        if ((rc = mdb_cursor_open(t, dbi, &cur)) != 0) return rc;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            bool stale = k.mv_size != ksz;
            if (!stale && pass == 0) {
                uint64_t at = 0, mt, sz;
                for (int i = 0; i < 8; i++) at = at << 8 | ((const uint8_t *)k.mv_data)[i];
                MDB_val kk = {16, (uint8_t *)k.mv_data + 8}, m;
                stale      = mdb_get(t, e->meta, &kk, &m) != 0;
                if (!stale) {
                    meta_decode(&m, &mt, &sz);
                    stale = mt != at;
                }
            } else if (!stale) {
                MDB_val c;
                stale = mdb_get(t, e->chunks, &k, &c) != 0;
            }
            if (stale && keylist_add(&dead, k.mv_data, k.mv_size) != 0) {
                rc = ENOMEM;
                break;
            }
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND) rc = 0;
        for (size_t i = 0; rc == 0 && i < dead.n; i++) {
            MDB_val kk = {dead.len[i], dead.k[i]};
            rc         = mdb_del(t, dbi, &kk, NULL);
            if (rc == MDB_NOTFOUND) rc = 0;
            (*fixed)++;
        }
        keylist_free(&dead);
        if (rc != 0) return rc;
    }
    return 0;
}

kvf_status kvf_lmdb_verify(kvf_lmdb *d, bool remove_bad, kvf_store_visit_fn fn, void *user,
                           kvf_store_verify_report *out) {
    lenv *e = d->e;
    memset(out, 0, sizeof *out);
    out->index_ok = true;
    MDB_txn *t;
    int      rc = rtxn_begin(e, &t);
    if (rc != 0) return lerr(e, rc, "beginning a read");
    keylist     bad = {0};
    MDB_cursor *cur;
    int64_t     entries = 0, bytes = 0, lru_n = 0, c_entries = 0, c_bytes = 0;
    kvf_status  st = KVF_OK;
    if ((rc = mdb_cursor_open(t, e->chunks, &cur)) != 0) {
        mdb_txn_abort(t);
        return lerr(e, rc, "verifying");
    }
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        out->checked++;
        out->bytes += v.mv_size;
        entries++, bytes += (int64_t)v.mv_size;
        char            msg[512] = "";
        kvf_store_entry en;
        const char     *problem = NULL;
        if (k.mv_size != 16) {
            memset(&en, 0, sizeof en);
            snprintf(msg, sizeof msg, "key of %zu bytes (not 16)", k.mv_size);
        } else {
            kvf_store_entry_from_bytes(v.mv_data, v.mv_size, k.mv_data, &en, &problem);
            if (problem) snprintf(msg, sizeof msg, "%s", problem);
            else {
                kvf_entry_view ev;
                if (kvf_entry_parse(v.mv_data, v.mv_size, &ev) == KVF_OK) {
                    advise(v.mv_data, v.mv_size, MADV_WILLNEED);
                    if (kvf_entry_check_all(&ev) != KVF_OK) snprintf(msg, sizeof msg, "%s", kvf_errmsg());
                    kvf_entry_view_free(&ev);
                }
                MDB_val m;
                uint64_t at = 0, sz = 0;
                if (mdb_get(t, e->meta, &k, &m) == 0) {
                    meta_decode(&m, &at, &sz);
                    en.last_access = (int64_t)at;
                    uint8_t lk[LRU_KEY_BYTES];
                    lru_key(lk, at, k.mv_data);
                    MDB_val lkv = {LRU_KEY_BYTES, lk}, lv;
                    if (sz != v.mv_size || mdb_get(t, e->lru, &lkv, &lv) != 0) out->index_ok = false;
                } else
                    out->index_ok = false;
            }
        }
        if (msg[0]) {
            out->bad++;
            if (k.mv_size == 16 && keylist_add(&bad, k.mv_data, 16) != 0) {
                st = kvf_set_error(KVF_E_NOMEM, "out of memory");
                break;
            }
            if (fn && fn(&en, msg, user)) break;
        }
    }
    mdb_cursor_close(cur);
    if (st == KVF_OK && rc != 0 && rc != MDB_NOTFOUND) st = lerr(e, rc, "verifying");
    if (st == KVF_OK && (rc = mdb_cursor_open(t, e->lru, &cur)) == 0) {
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) lru_n++;
        mdb_cursor_close(cur);
    }
    info_get(e, t, "entries", &c_entries);
    info_get(e, t, "bytes", &c_bytes);
    mdb_txn_abort(t);
    if (lru_n != entries || c_entries != entries || c_bytes != bytes) out->index_ok = false;
    if (st == KVF_OK && remove_bad && (bad.n || !out->index_ok)) {
        MDB_txn *w = NULL;
        wstate   ws;
        int64_t  fixed;
        const char *what = "beginning a write";
        rc = wtxn_begin(e, &w);
        if (rc != 0) w = NULL;
        for (size_t i = 0; rc == 0 && i < bad.n; i++) {
            uint64_t sz;
            bool     found;
            what = "removing a bad entry";
            rc   = del_entry(e, w, bad.k[i], &sz, &found);
            if (rc == 0 && found) out->removed++;
        }
        if (rc == 0) {
            what = "repairing the index";
            rc   = repair_index(e, w, &ws, &fixed);
        }
        if (rc == 0) rc = ws_save(e, w, &ws);
        if (rc == 0) {
            int64_t delta[KVF_CTR_COUNT] = {0};
            delta[KVF_CTR_BAD_DISK]      = out->removed;
            rc = add_deltas(e, w, delta);
        }
        if (rc == 0) {
            what = "committing";
            rc   = mdb_txn_commit(w);
        } else if (w)
            mdb_txn_abort(w);
        if (rc != 0) st = lerr(e, rc, what), out->removed = 0;
        else out->index_ok = true;
    }
    keylist_free(&bad);
    if (st != KVF_OK) return st;
    return out->bad ? kvf_set_error(KVF_E_CORRUPT, "disk tier %s: %lld of %lld entries are bad%s", e->dir,
                                    (long long)out->bad, (long long)out->checked,
                                    remove_bad ? " (removed)" : "")
                    : KVF_OK;
}

kvf_status kvf_lmdb_gc(kvf_lmdb *d, uint64_t target, int64_t *evicted, uint64_t *freed) {
    lenv    *e = d->e;
    MDB_txn *t;
    *evicted = 0, *freed = 0;
    if (!target) target = d->budget;
    int rc = wtxn_begin(e, &t);
    if (rc != 0) return lerr(e, rc, "beginning a write");
    wstate  w;
    int64_t fixed;
    const char *what = "repairing the index";
    rc               = repair_index(e, t, &w, &fixed);
    while (rc == 0 && target && (uint64_t)w.bytes > target) {
        bool none;
        what = "evicting";
        rc   = evict_one(e, t, &w, &none, freed);
        if (none) break;
        if (rc == 0) (*evicted)++;
    }
    if (rc == 0) rc = ws_save(e, t, &w);
    if (rc == 0) {
        int64_t delta[KVF_CTR_COUNT] = {0};
        delta[KVF_CTR_EVICTED]       = *evicted;
        rc = add_deltas(e, t, delta);
    }
    if (rc == 0) {
        what = "committing";
        rc   = mdb_txn_commit(t);
    } else
        mdb_txn_abort(t);
    if (rc != 0) {
        *evicted = 0, *freed = 0;
        return lerr(e, rc, what);
    }
    if (fixed) kvf_log(KVF_LOG_INFO, "disk tier %s: repaired %lld index records", e->dir, (long long)fixed);
    return KVF_OK;
}

kvf_status kvf_lmdb_remove(kvf_lmdb *d, const kvf_chunk_key *key) {
    kvf_lmdb_op op = {.kind = KVF_LMDB_DEL, .key = *key};
    kvf_status  st = kvf_lmdb_write(d, &op, 1, NULL, NULL);
    if (st != KVF_OK) return st;
    return op.done ? KVF_OK : KVF_E_NOTFOUND;
}
