/* store_redis.c - the remote tier of the chunk store: entries (chunk_io.h) as Redis strings,
 * through hiredis's synchronous API.
 *
 * One key per chunk, "<prefix>{<32 hex digits of the chunk key>}" with the default prefix
 * "kvf:". Only single-key commands are used (GET, SET [EX], DEL, STRLEN, SCAN), so the tier
 * works against one redis-server and against a Redis Cluster: the braces make the key's hash
 * slot that of the hex digits (CRC16 mod 16384), and a MOVED reply is followed to the node it
 * names (remembered per slot) and an ASK reply with ASKING, so pointing the tier at any node
 * of a cluster works. Eviction is Redis's own (maxmemory with an LRU policy, or a TTL here).
 *
 * A server that is down or erroring never fails a request: the call returns KVF_E_IO quickly
 * (the connection is retried after a back-off of one second), the store counts an error and
 * goes on with the lower tiers. The outage and the recovery are logged once each. SIGPIPE from
 * a server that closed the connection is blocked around socket I/O (hiredis writes with
 * write()), so it cannot kill the process.
 */
#include "common.h"
#include "store/store.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_NODES    16
#define N_SLOTS      16384
#define RETRY_NS     1000000000ull /* back-off after a failure */
#define PIPE_BYTES   (64u << 20)   /* values per pipelined batch */
#define MAX_REDIRECT 4

typedef struct rnode {
    char          host[256]; /* or a unix socket path */
    int           port;      /* 0: unix socket */
    redisContext *ctx;
    uint64_t      retry_at;  /* no connection attempt before this (monotonic ns) */
    bool          down;      /* logged as down */
} rnode;

struct kvf_redis {
    pthread_mutex_t mu;
    char           *prefix;
    int             timeout_ms;
    rnode           nodes[MAX_NODES]; /* [0]: the configured address */
    int             n_nodes;
    int8_t         *slot_node;        /* [N_SLOTS]: node serving a slot (-1: unknown, use 0) */
    bool            quiet;            /* connection state not logged (kvf_redis_set_quiet) */
};

/* ---- cluster hash slots ------------------------------------------------------------------- */

static uint16_t crc16_xmodem(const uint8_t *p, size_t n) {
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned kvf_redis_slot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t      rest  = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1) return crc16_xmodem((const uint8_t *)open + 1, (size_t)(close - open - 1)) % N_SLOTS;
    }
    return crc16_xmodem((const uint8_t *)key, len) % N_SLOTS;
}

/* ---- connections -------------------------------------------------------------------------- */

static int parse_addr(const char *addr, char *host, size_t hl, int *port) {
    if (!strncmp(addr, "unix:", 5)) addr += 5, *port = 0;
    else if (addr[0] == '/') *port = 0;
    else {
        const char *colon = strrchr(addr, ':');
        if (!colon || colon == addr) return -1;
        char *end;
        errno  = 0;
        long p = strtol(colon + 1, &end, 10);
        if (errno || *end || p < 1 || p > 65535) return -1;
        size_t n = (size_t)(colon - addr);
        if (addr[0] == '[' && n >= 2 && addr[n - 1] == ']') addr++, n -= 2; /* [v6]:port */
        if (n == 0 || n >= hl) return -1;
        memcpy(host, addr, n);
        host[n] = 0;
        *port   = (int)p;
        return 0;
    }
    if (!addr[0] || strlen(addr) >= hl) return -1;
    snprintf(host, hl, "%s", addr);
    return 0;
}

static const char *node_name(const rnode *n, char *buf, size_t len) {
    if (n->port) snprintf(buf, len, "%s:%d", n->host, n->port);
    else snprintf(buf, len, "unix:%s", n->host);
    return buf;
}

static void node_fail(kvf_redis *r, rnode *n, const char *why) {
    char name[300];
    if (n->ctx) redisFree(n->ctx);
    n->ctx      = NULL;
    n->retry_at = kvf_time_ns() + RETRY_NS;
    if (!n->down && !r->quiet)
        kvf_log(KVF_LOG_WARN, "redis tier %s is unavailable (%s); continuing with the lower tiers, "
                              "retrying every second", node_name(n, name, sizeof name), why);
    n->down = true;
}

static redisContext *node_ctx(kvf_redis *r, rnode *n) {
    if (n->ctx) return n->ctx;
    if (kvf_time_ns() < n->retry_at) return NULL;
    struct timeval tv = {r->timeout_ms / 1000, (r->timeout_ms % 1000) * 1000};
    redisContext  *c  = n->port ? redisConnectWithTimeout(n->host, n->port, tv) : redisConnectUnixWithTimeout(n->host, tv);
    if (!c || c->err) {
        char why[256];
        snprintf(why, sizeof why, "%s", c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        node_fail(r, n, why);
        return NULL;
    }
    redisSetTimeout(c, tv);
    n->ctx = c;
    if (n->down) {
        char name[300];
        if (!r->quiet) kvf_log(KVF_LOG_WARN, "redis tier %s is back", node_name(n, name, sizeof name));
        n->down = false;
    }
    return c;
}

static int node_find_or_add(kvf_redis *r, const char *addr) {
    char host[256];
    int  port;
    if (parse_addr(addr, host, sizeof host, &port) != 0) return -1;
    for (int i = 0; i < r->n_nodes; i++)
        if (r->nodes[i].port == port && !strcmp(r->nodes[i].host, host)) return i;
    if (r->n_nodes == MAX_NODES) return -1;
    rnode *n = &r->nodes[r->n_nodes];
    memset(n, 0, sizeof *n);
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    return r->n_nodes++;
}

kvf_status kvf_redis_open(const char *addr, const char *prefix, int timeout_ms, kvf_redis **out) {
    *out = NULL;
    char host[256];
    int  port;
    if (!addr || parse_addr(addr, host, sizeof host, &port) != 0)
        return kvf_set_error(KVF_E_INVAL, "redis tier: bad address '%s' (expected HOST:PORT, unix:PATH or /PATH)", addr ? addr : "(null)");
    kvf_redis *r = kvf_calloc(1, sizeof *r);
    if (!r) return kvf_set_error(KVF_E_NOMEM, "out of memory");
    r->slot_node = kvf_malloc(N_SLOTS);
    r->prefix    = kvf_strdup(prefix ? prefix : "kvf:");
    if (!r->slot_node || !r->prefix) {
        kvf_free(r->slot_node), kvf_free(r->prefix), kvf_free(r);
        return kvf_set_error(KVF_E_NOMEM, "out of memory");
    }
    memset(r->slot_node, -1, N_SLOTS);
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    snprintf(r->nodes[0].host, sizeof r->nodes[0].host, "%s", host);
    r->nodes[0].port = port;
    r->n_nodes       = 1;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return KVF_OK;
}

void kvf_redis_set_quiet(kvf_redis *r, bool quiet) {
    pthread_mutex_lock(&r->mu);
    r->quiet = quiet;
    pthread_mutex_unlock(&r->mu);
}

void kvf_redis_close(kvf_redis *r) {
    if (!r) return;
    for (int i = 0; i < r->n_nodes; i++)
        if (r->nodes[i].ctx) redisFree(r->nodes[i].ctx);
    pthread_mutex_destroy(&r->mu);
    kvf_free(r->slot_node), kvf_free(r->prefix), kvf_free(r);
}

/* ---- commands ----------------------------------------------------------------------------- */

/* SIGPIPE blocked on this thread while talking to a server; a pending one is consumed */
typedef struct {
    sigset_t old;
} pipe_guard;

static void pipe_block(pipe_guard *g) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &s, &g->old);
}

static void pipe_restore(pipe_guard *g) {
    sigset_t s, pend;
    sigemptyset(&s);
    sigaddset(&s, SIGPIPE);
    if (sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE) && !sigismember(&g->old, SIGPIPE)) {
        struct timespec zero = {0, 0};
        sigtimedwait(&s, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

static size_t make_key(const kvf_redis *r, const kvf_chunk_key *k, char *buf, size_t len) {
    char hex[33];
    kvf_chunk_key_hex(k, hex);
    int n = snprintf(buf, len, "%s{%s}", r->prefix, hex);
    return n > 0 && (size_t)n < len ? (size_t)n : 0;
}

/* An error that a later try of the same command may not get: the cluster is forming or failing
 * over (CLUSTERDOWN), a slot is migrating (TRYAGAIN), the server is loading its data (LOADING).
 * Writes retry these TRANSIENT_RETRIES times, waiting TRANSIENT_WAIT_MS, doubled each time. */
#define TRANSIENT_RETRIES 5
#define TRANSIENT_WAIT_MS 40
static bool transient(const redisReply *rep) {
    return rep->type == REDIS_REPLY_ERROR && rep->str &&
           (!strncmp(rep->str, "CLUSTERDOWN", 11) || !strncmp(rep->str, "TRYAGAIN", 8) ||
            !strncmp(rep->str, "LOADING", 7));
}

/* "MOVED 3999 127.0.0.1:6381" / "ASK ..." -> node index (or -1), *ask */
static int redirect(kvf_redis *r, const redisReply *rep, unsigned slot, bool *ask) {
    if (rep->type != REDIS_REPLY_ERROR || !rep->str) return -1;
    bool moved = !strncmp(rep->str, "MOVED ", 6);
    *ask       = !strncmp(rep->str, "ASK ", 4);
    if (!moved && !*ask) return -1;
    const char *sp = strchr(rep->str, ' ');
    sp             = sp ? strchr(sp + 1, ' ') : NULL;
    if (!sp) return -1;
    int idx = node_find_or_add(r, sp + 1);
    if (idx >= 0 && moved) r->slot_node[slot] = (int8_t)idx;
    return idx;
}

/* Run one single-key command with redirections; the reply (caller frees) or NULL with an
 * error set. Called with r->mu held. */
static redisReply *command(kvf_redis *r, int argc, const char **argv, const size_t *lens,
                           unsigned slot, kvf_status *st) {
    int  idx = r->slot_node[slot] >= 0 ? r->slot_node[slot] : 0;
    bool ask = false;
    char name[300];
    for (int hop = 0; hop <= MAX_REDIRECT; hop++) {
        rnode        *n = &r->nodes[idx];
        redisContext *c = node_ctx(r, n);
        if (!c) {
            *st = kvf_set_error(KVF_E_IO, "redis tier %s is down", node_name(n, name, sizeof name));
            return NULL;
        }
        pipe_guard g;
        pipe_block(&g);
        redisReply *rep = NULL;
        if (ask) {
            redisReply *a = redisCommand(c, "ASKING");
            if (a) freeReplyObject(a);
        }
        rep = redisCommandArgv(c, argc, argv, lens);
        pipe_restore(&g);
        if (!rep) {
            char why[256];
            snprintf(why, sizeof why, "%s", c->errstr[0] ? c->errstr : "no reply");
            node_fail(r, n, why);
            *st = kvf_set_error(KVF_E_IO, "redis tier %s: %s failed: %s", node_name(n, name, sizeof name), argv[0], why);
            return NULL;
        }
        int next = redirect(r, rep, slot, &ask);
        if (next < 0) return rep;
        freeReplyObject(rep);
        idx = next;
    }
    *st = kvf_set_error(KVF_E_IO, "redis tier: too many cluster redirections for slot %u", slot);
    return NULL;
}

kvf_status kvf_redis_get(kvf_redis *r, const kvf_chunk_key *key, kvf_redis_value *out) {
    memset(out, 0, sizeof *out);
    char   k[512];
    size_t kl = make_key(r, key, k, sizeof k);
    if (!kl) return kvf_set_error(KVF_E_INVAL, "redis tier: key prefix too long");
    const char *argv[2] = {"GET", k};
    size_t      lens[2] = {3, kl};
    kvf_status  st      = KVF_OK;
    pthread_mutex_lock(&r->mu);
    redisReply *rep = command(r, 2, argv, lens, kvf_redis_slot(k, kl), &st);
    pthread_mutex_unlock(&r->mu);
    if (!rep) return st;
    if (rep->type == REDIS_REPLY_NIL) {
        freeReplyObject(rep);
        return KVF_E_NOTFOUND;
    }
    if (rep->type != REDIS_REPLY_STRING) {
        st = kvf_set_error(KVF_E_IO, "redis tier: GET %s: %s", k, rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : "unexpected reply type");
        freeReplyObject(rep);
        return st;
    }
    out->reply = rep;
    out->data  = (const uint8_t *)rep->str;
    out->len   = rep->len;
    return KVF_OK;
}

void kvf_redis_value_free(kvf_redis_value *v) {
    if (v->reply) freeReplyObject(v->reply);
    memset(v, 0, sizeof *v);
}

kvf_status kvf_redis_set(kvf_redis *r, const kvf_chunk_key *const *keys, const uint8_t *const *vals,
                         const size_t *lens, int n, int ttl_s, kvf_status *st) {
    kvf_status first = KVF_OK;
    char       ttl[32];
    snprintf(ttl, sizeof ttl, "%d", ttl_s);
    pthread_mutex_lock(&r->mu);
    for (int i0 = 0; i0 < n;) {
        /* a batch of at most PIPE_BYTES (at least one value) to the node of the first key's
         * slot; keys of other slots (cluster) are sent on their own */
        char   k[512];
        size_t kl = make_key(r, keys[i0], k, sizeof k);
        unsigned slot0 = kvf_redis_slot(k, kl);
        int    idx = r->slot_node[slot0] >= 0 ? r->slot_node[slot0] : 0;
        int    i1 = i0;
        size_t bytes = 0;
        while (i1 < n && (i1 == i0 || bytes + lens[i1] <= PIPE_BYTES)) {
            char     k2[512];
            size_t   kl2 = make_key(r, keys[i1], k2, sizeof k2);
            unsigned s2  = kvf_redis_slot(k2, kl2);
            int      id2 = r->slot_node[s2] >= 0 ? r->slot_node[s2] : 0;
            if (i1 > i0 && id2 != idx) break;
            bytes += lens[i1++];
        }
        rnode        *nd = &r->nodes[idx];
        redisContext *c  = node_ctx(r, nd);
        char          name[300];
        if (!c) {
            kvf_status e = kvf_set_error(KVF_E_IO, "redis tier %s is down", node_name(nd, name, sizeof name));
            for (int i = i0; i < i1; i++) st[i] = e;
            if (first == KVF_OK) first = e;
            i0 = i1;
            continue;
        }
        pipe_guard g;
        pipe_block(&g);
        int appended = 0, failed = 0;
        for (int i = i0; i < i1; i++) {
            char        kk[512];
            size_t      kkl = make_key(r, keys[i], kk, sizeof kk);
            const char *argv[5] = {"SET", kk, (const char *)vals[i], "EX", ttl};
            size_t      al[5]   = {3, kkl, lens[i], 2, strlen(ttl)};
            if (redisAppendCommandArgv(c, ttl_s > 0 ? 5 : 3, argv, al) != REDIS_OK) {
                failed = 1;
                break;
            }
            appended++;
        }
        for (int i = i0; i < i0 + appended; i++) {
            redisReply *rep = NULL;
            if (!failed && redisGetReply(c, (void **)&rep) != REDIS_OK) failed = 1;
            if (failed) {
                st[i] = KVF_E_IO;
                continue;
            }
            bool     ask;
            char     ki[512];
            size_t   kil  = make_key(r, keys[i], ki, sizeof ki);
            int      next = redirect(r, rep, kvf_redis_slot(ki, kil), &ask);
            st[i]         = rep->type == REDIS_REPLY_STATUS ? KVF_OK : KVF_E_IO;
            if (next >= 0 || transient(rep)) st[i] = KVF_E_UNSUPPORTED; /* resent below */
            else if (st[i] != KVF_OK && first == KVF_OK)
                first = kvf_set_error(KVF_E_IO, "redis tier: SET: %s", rep->str ? rep->str : "unexpected reply");
            freeReplyObject(rep);
        }
        pipe_restore(&g);
        if (failed) {
            char why[256];
            snprintf(why, sizeof why, "%s", c->errstr[0] ? c->errstr : "write failed");
            node_fail(r, nd, why);
            kvf_status e = kvf_set_error(KVF_E_IO, "redis tier %s: SET failed: %s", node_name(nd, name, sizeof name), why);
            for (int i = i0; i < i1; i++)
                if (st[i] != KVF_OK) st[i] = e;
            if (first == KVF_OK) first = e;
        }
        /* values redirected elsewhere (cluster), or refused for the moment (a cluster still
         * forming or failing over answers CLUSTERDOWN / TRYAGAIN, a server loading its data
         * LOADING): one command each, following redirections, retried with back-off */
        for (int i = i0; i < i1; i++) {
            if (st[i] != KVF_E_UNSUPPORTED) continue;
            char        kk[512];
            size_t      kkl = make_key(r, keys[i], kk, sizeof kk);
            const char *argv[5] = {"SET", kk, (const char *)vals[i], "EX", ttl};
            size_t      al[5]   = {3, kkl, lens[i], 2, strlen(ttl)};
            kvf_status  e       = KVF_OK;
            redisReply *rep     = NULL;
            for (int attempt = 0;; attempt++) {
                rep = command(r, ttl_s > 0 ? 5 : 3, argv, al, kvf_redis_slot(kk, kkl), &e);
                if (!rep || !transient(rep) || attempt == TRANSIENT_RETRIES) break;
                freeReplyObject(rep);
                rep = NULL;
                struct timespec ts = {0, (long)(TRANSIENT_WAIT_MS << attempt) * 1000000L};
                nanosleep(&ts, NULL);
            }
            st[i]               = rep && rep->type == REDIS_REPLY_STATUS ? KVF_OK : KVF_E_IO;
            if (st[i] != KVF_OK && first == KVF_OK)
                first = rep ? kvf_set_error(KVF_E_IO, "redis tier: SET: %s", rep->str ? rep->str : "unexpected reply") : e;
            if (rep) freeReplyObject(rep);
        }
        i0 = i1;
    }
    pthread_mutex_unlock(&r->mu);
    return first;
}

kvf_status kvf_redis_del(kvf_redis *r, const kvf_chunk_key *key, bool *existed) {
    char   k[512];
    size_t kl = make_key(r, key, k, sizeof k);
    *existed  = false;
    const char *argv[2] = {"DEL", k};
    size_t      lens[2] = {3, kl};
    kvf_status  st      = KVF_OK;
    pthread_mutex_lock(&r->mu);
    redisReply *rep = command(r, 2, argv, lens, kvf_redis_slot(k, kl), &st);
    pthread_mutex_unlock(&r->mu);
    if (!rep) return st;
    if (rep->type == REDIS_REPLY_INTEGER) *existed = rep->integer > 0;
    else st = kvf_set_error(KVF_E_IO, "redis tier: DEL: %s", rep->str ? rep->str : "unexpected reply");
    freeReplyObject(rep);
    return st;
}

kvf_status kvf_redis_count(kvf_redis *r, int64_t *entries, int64_t *bytes) {
    *entries = *bytes = 0;
    char pattern[300];
    snprintf(pattern, sizeof pattern, "%s{*}", r->prefix);
    kvf_status st = KVF_OK;
    char       cursor[32] = "0";
    pthread_mutex_lock(&r->mu);
    /* a cluster: every master (CLUSTER NODES lines "id host:port@cport flags ..."); a single
     * server answers with an error and is counted alone */
    redisContext *c0 = node_ctx(r, &r->nodes[0]);
    if (c0) {
        pipe_guard g;
        pipe_block(&g);
        redisReply *rep = redisCommand(c0, "CLUSTER NODES");
        pipe_restore(&g);
        if (!rep) node_fail(r, &r->nodes[0], "CLUSTER NODES failed");
        else if (rep->type == REDIS_REPLY_STRING) {
            char *save, *line = strtok_r(rep->str, "\n", &save);
            for (; line; line = strtok_r(NULL, "\n", &save)) {
                char id[64], addr[300], flags[256];
                if (sscanf(line, "%63s %299s %255s", id, addr, flags) != 3 || !strstr(flags, "master") ||
                    strstr(flags, "fail"))
                    continue;
                char *at = strchr(addr, '@');
                if (at) *at = 0;
                if (!strncmp(addr, ":", 1)) continue; /* a node that does not know its address */
                node_find_or_add(r, addr);
            }
        }
        if (rep) freeReplyObject(rep);
    }
    /* SCAN each known node */
    for (int ni = 0; ni < r->n_nodes && st == KVF_OK; ni++) {
        rnode        *n = &r->nodes[ni];
        redisContext *c = node_ctx(r, n);
        char          name[300];
        if (!c) {
            st = kvf_set_error(KVF_E_IO, "redis tier %s is down", node_name(n, name, sizeof name));
            break;
        }
        snprintf(cursor, sizeof cursor, "0");
        do {
            pipe_guard g;
            pipe_block(&g);
            redisReply *rep = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, pattern);
            if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2 ||
                rep->element[0]->type != REDIS_REPLY_STRING || rep->element[1]->type != REDIS_REPLY_ARRAY) {
                pipe_restore(&g);
                st = kvf_set_error(KVF_E_IO, "redis tier %s: SCAN failed: %s", node_name(n, name, sizeof name),
                                   rep && rep->type == REDIS_REPLY_ERROR && rep->str ? rep->str : c->errstr);
                if (rep) freeReplyObject(rep);
                else node_fail(r, n, "SCAN failed");
                break;
            }
            snprintf(cursor, sizeof cursor, "%s", rep->element[0]->str);
            redisReply *keys = rep->element[1];
            int         sent = 0;
            for (size_t i = 0; i < keys->elements; i++)
                if (keys->element[i]->type == REDIS_REPLY_STRING) {
                    const char *argv[2] = {"STRLEN", keys->element[i]->str};
                    size_t      al[2]   = {6, keys->element[i]->len};
                    if (redisAppendCommandArgv(c, 2, argv, al) == REDIS_OK) sent++;
                }
            for (int i = 0; i < sent; i++) {
                redisReply *sl = NULL;
                if (redisGetReply(c, (void **)&sl) != REDIS_OK) break;
                if (sl->type == REDIS_REPLY_INTEGER && sl->integer > 0) (*entries)++, *bytes += sl->integer;
                freeReplyObject(sl);
            }
            pipe_restore(&g);
            freeReplyObject(rep);
        } while (strcmp(cursor, "0") != 0);
    }
    pthread_mutex_unlock(&r->mu);
    return st;
}
