/* server_sched.c - the inference thread of `kvfuse serve` (policy in server_sched.h).
 *
 * Tenant isolation of the KV caches: every tenant namespace has its own chunk cache (memory
 * LRU, or a chunk store under DIR/t-<hash> with its own Redis key prefix), so a tenant's
 * request can only hit chunks its own requests computed. Documents ingested as shared are
 * cached in the "shared" namespace's cache: requests look up their own cache first, then the
 * shared one, and chunks computed for a shared document go to the shared cache. Prefix reuse
 * between consecutive plain requests on a slot likewise only happens within one tenant.
 *
 * The composite cache needs the chunk-cache interface of src/chunk.h (the ops table: get, put,
 * free, get_deferred, prefetch; a chunk's token ids); it forwards to the two caches.
 */
#include "server/server_sched.h"
#include "server/server_docs.h"

#include "store/chunk.h" /* kvf_chunk_cache_ops: the composite tenant + shared cache */
#include "store/steps.h" /* KVF_STEPS_NONE */

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define MAX_SLOTS 64
#define CONV_PROBE 64 /* probe tokens of a bounded conversation (--conv-budget) */

typedef enum { SLOT_FREE = 0, SLOT_PREFILL, SLOT_DECODE } slot_phase;

typedef struct slot {
    kvf_session *s;
    srv_job     *job;
    slot_phase   phase;
    kvf_sampler *smp;
    int32_t     *flat; /* plain prefill: the prompt's tokens */
    int32_t      n_flat, pf_done;
    bool         plain; /* plain prefill (no fusion call) */
    bool         bounded; /* plain chat prefilled under --conv-budget (EpiCache) */
    struct {              /* its history, prefilled a few blocks per unit */
        bool                   started;
        int32_t                done; /* history tokens prefilled */
        int32_t                probe[CONV_PROBE], np, episode, n_ep;
        kvf_conv_budget_params bp;
        kvf_conv_budget_stats  st;
        int32_t               *lb; /* [n_layer] its layer budgets (--conv-layers), or NULL */
    } conv;
    int32_t      next;  /* sampled token to feed at the next decode step */
    /* tokens in the session, for prefix reuse by the next plain request of the same tenant */
    int32_t     *hist;
    int32_t      n_hist;
    bool         hist_ok;
    int32_t      n_saved; /* hist[0..n_saved) is in the tenant's cache as prefix blocks */
    kvf_attn_params hist_attn; /* the attention hist's KV was computed with */
    char         hist_ns[SRV_NS_MAX];
    double       last_use;
    srv_audit_item *audit; /* the fidelity audit following this job, or NULL */
} slot;

typedef struct ns_cache {
    char             ns[SRV_NS_MAX];
    kvf_chunk_cache *c;
    bool             store;
} ns_cache;

/* the composite cache of a tenant: own cache first, then the shared namespace's */
typedef struct mux_cache {
    kvf_chunk_cache  base;
    kvf_chunk_cache *own, *shared;
    const srv_job   *job; /* the request being fused: its shared documents route puts */
    const kvf_segment *shared_doc; /* KVFlow's idle computation of a shared document: its
                                      chunk goes to "shared" too */
} mux_cache;

struct srv_sched {
    const kvf_model *m;
    srv_sched_params p;
    srv_metrics     *met;
    slot            *slots;
    int32_t          n_vocab;

    pthread_t       thr;
    bool            started;
    pthread_mutex_t mu; /* queue, counters, stop */
    pthread_cond_t  cv;
    srv_job       **q;
    int             q_head, q_len, q_cap;
    int            *q_order; /* [q_cap] scratch of the admission order (inference thread) */
    srv_job       **q_score; /* [q_cap] scratch: jobs to score (inference thread) */
    uint64_t        cache_epoch; /* bumped when cached KV may have changed (a job ended, an idle
                                    unit computed chunks): queued jobs' scores are stale */
    int             n_busy;
    bool            stop;
    bool            held; /* srv_sched_hold: queued jobs wait */
    uint32_t        pf_turn; /* prefill units given while the oldest prompt was shared */
    uint64_t        pf_units; /* prefill units run */
    double          avg_job_s; /* EWMA of job durations, for Retry-After */

    pthread_mutex_t cache_mu; /* the caches array (read by the metrics thread) */
    ns_cache       *caches;
    int             n_caches, cap_caches;
    mux_cache       mux;
    srv_audit      *audit; /* NULL: off */
    srv_flow       *flow;  /* KVFlow's workflow registry (server_flow.h) */
    kvf_session    *flow_s; /* KVFlow's idle computation of the next steps' chunks (lazily) */
    float          *conv_sim; /* [n_layer] the --conv-layers profile, or NULL */
};

srv_sched_params srv_sched_default_params(void) {
    srv_sched_params p;
    memset(&p, 0, sizeof p);
    p.n_slots       = 4;
    p.n_ctx         = 8192;
    p.max_queue     = 16;
    p.prefill_chunk = 512;
    p.prefill_units = 1;
    p.decode_ratio  = 1.0;
    p.aging_ms      = 60000;
    p.overtake_max  = 3;
    p.cache_bytes   = (size_t)2048 << 20;
    p.conv_block    = 256;
    p.conv_budget   = 0;
    p.conv_episodes = 4;
    p.conv_probe_question = true; /* measured better than the episode's (README, Benchmarks) */
    p.conv_alpha    = 1.3f;
    p.store         = NULL;
    p.audit         = srv_audit_default_params(); /* rate 0: off */
    p.flow_compute  = true;
    return p;
}

/* ---- caches ---------------------------------------------------------------------------- */

static bool same_tokens(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    return na == nb && memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0;
}

/* the tokens are those of one of job j's documents shared between tenants */
static bool is_shared_doc(const srv_job *j, const int32_t *ids, int32_t n) {
    for (int32_t i = 0; j && i < j->n_docs; i++)
        if (j->docs[i]->shared && same_tokens(j->docs[i]->tok, j->docs[i]->n_tok, ids, n)) return true;
    return false;
}

static kvf_chunk *mux_get(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    mux_cache *x = (mux_cache *)c;
    kvf_chunk *r = x->own->ops->get(x->own, key);
    if (!r && x->shared) r = x->shared->ops->get(x->shared, key);
    return r;
}

static kvf_chunk *mux_get_deferred(kvf_chunk_cache *c, const kvf_chunk_key *key) {
    mux_cache       *x  = (mux_cache *)c;
    kvf_chunk_cache *cs[2] = {x->own, x->shared};
    for (int i = 0; i < 2; i++) {
        if (!cs[i]) continue;
        kvf_chunk *r = cs[i]->ops->get_deferred ? cs[i]->ops->get_deferred(cs[i], key) : cs[i]->ops->get(cs[i], key);
        if (r) return r;
    }
    return NULL;
}

static kvf_status mux_put(kvf_chunk_cache *c, const kvf_chunk_key *key, kvf_chunk *chunk) {
    mux_cache         *x = (mux_cache *)c;
    const kvf_segment *d = x->shared_doc;
    if (x->shared && (is_shared_doc(x->job, chunk->ids, chunk->n_tokens) ||
                      (d && same_tokens(d->ids, d->n, chunk->ids, chunk->n_tokens))))
        return x->shared->ops->put(x->shared, key, chunk);
    return x->own->ops->put(x->own, key, chunk);
}

static void mux_prefetch(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n) {
    mux_cache *x = (mux_cache *)c;
    if (x->own->ops->prefetch) x->own->ops->prefetch(x->own, keys, n);
    if (x->shared && x->shared->ops->prefetch) x->shared->ops->prefetch(x->shared, keys, n);
}

static void mux_hint(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n, int lane, uint32_t steps) {
    mux_cache *x = (mux_cache *)c;
    if (x->own->ops->hint) x->own->ops->hint(x->own, keys, n, lane, steps);
    if (x->shared && x->shared->ops->hint) x->shared->ops->hint(x->shared, keys, n, lane, steps);
}

static void mux_warm(kvf_chunk_cache *c, const kvf_chunk_key *keys, int n) {
    mux_cache *x = (mux_cache *)c;
    if (x->own->ops->warm) x->own->ops->warm(x->own, keys, n);
    if (x->shared && x->shared->ops->warm) x->shared->ops->warm(x->shared, keys, n);
}

static void mux_free(kvf_chunk_cache *c) {
    (void)c; /* the caches belong to the scheduler */
}

static const kvf_chunk_cache_ops mux_ops = {.get          = mux_get,
                                           .put          = mux_put,
                                           .free         = mux_free,
                                           .get_deferred = mux_get_deferred,
                                           .prefetch     = mux_prefetch,
                                           .hint         = mux_hint,
                                           .warm         = mux_warm};

static kvf_chunk_cache *open_cache(srv_sched *s, const char *ns, bool *is_store, char *err, size_t el) {
    kvf_chunk_cache *c = NULL;
    *is_store          = false;
    if (!s->p.store) {
        if (kvf_chunk_cache_new_memory(s->p.cache_bytes, &c) != KVF_OK)
            snprintf(err, el, "cannot create a chunk cache: %s", kvf_errmsg());
        return c;
    }
    /* a tag for the namespace: its directory and Redis key prefix */
    char tag[40] = "";
    if (s->p.multi_tenant) {
        if (!strcmp(ns, SRV_NS_SHARED))
            snprintf(tag, sizeof tag, "shared");
        else
            snprintf(tag, sizeof tag, "t-%016llx", (unsigned long long)XXH3_64bits(ns, strlen(ns)));
    }
    char             dir[4096], prefix[128];
    kvf_store_params sp = *s->p.store;
    if (sp.dir && tag[0]) {
        if (mkdir(sp.dir, 0755) != 0 && errno != EEXIST) {
            snprintf(err, el, "cannot create the store directory '%s': %s", sp.dir, strerror(errno));
            return NULL;
        }
        snprintf(dir, sizeof dir, "%s/%s", sp.dir, tag);
        sp.dir = dir;
    }
    if (sp.redis && tag[0]) {
        snprintf(prefix, sizeof prefix, "%s%s:", sp.redis_prefix ? sp.redis_prefix : "kvf:", tag);
        sp.redis_prefix = prefix;
    }
    if (kvf_store_open(s->m, &sp, &c) != KVF_OK) {
        snprintf(err, el, "cannot open the chunk store%s%s: %s", tag[0] ? " of namespace " : "", tag, kvf_errmsg());
        return NULL;
    }
    *is_store = true;
    return c;
}

static kvf_chunk_cache *cache_for(srv_sched *s, const char *ns, char *err, size_t el) {
    for (int i = 0; i < s->n_caches; i++)
        if (!strcmp(s->caches[i].ns, ns)) return s->caches[i].c;
    bool             st;
    kvf_chunk_cache *c = open_cache(s, ns, &st, err, el);
    if (!c) return NULL;
    pthread_mutex_lock(&s->cache_mu);
    if (s->n_caches == s->cap_caches) {
        int       nc = s->cap_caches ? 2 * s->cap_caches : 8;
        ns_cache *p  = realloc(s->caches, sizeof *p * (size_t)nc);
        if (!p) {
            pthread_mutex_unlock(&s->cache_mu);
            kvf_chunk_cache_free(c);
            snprintf(err, el, "out of memory");
            return NULL;
        }
        s->caches = p, s->cap_caches = nc;
    }
    ns_cache *e = &s->caches[s->n_caches++];
    snprintf(e->ns, sizeof e->ns, "%s", ns);
    e->c     = c;
    e->store = st;
    pthread_mutex_unlock(&s->cache_mu);
    return c;
}

/* the cache of namespace ns (with "shared" behind it when multi-tenant); puts of job j's
 * shared documents (j may be NULL) and of shared_doc go to "shared" */
static kvf_chunk_cache *tenant_cache(srv_sched *s, const char *ns, const srv_job *j,
                                     const kvf_segment *shared_doc, char *err, size_t el) {
    kvf_chunk_cache *own = cache_for(s, ns, err, el);
    if (!own || !s->p.multi_tenant) return own;
    kvf_chunk_cache *sh = cache_for(s, SRV_NS_SHARED, err, el);
    if (!sh) return NULL;
    s->mux.base.ops   = &mux_ops;
    s->mux.own        = own;
    s->mux.shared     = sh == own ? NULL : sh;
    s->mux.job        = j;
    s->mux.shared_doc = shared_doc;
    return &s->mux.base;
}

static void queue_rehint(srv_sched *s, srv_job *j, uint32_t steps);

/* the cache fusion uses for job j */
static kvf_chunk_cache *job_cache(srv_sched *s, const srv_job *j, char *err, size_t el) {
    return tenant_cache(s, j->ns, j, NULL, err, el);
}

/* The keys fused job j's chunks are looked up under (kvf_fuse_chunk_keys), computed once and
 * kept in the job for the queue's and KVFlow's hints; how many (0 if out of memory). */
static int32_t job_keys(srv_sched *s, srv_job *j) {
    if (!j->ckeys && j->n_segs > 1 && (j->ckeys = malloc(16 * (size_t)(j->n_segs - 1))) != NULL) {
        j->n_ckeys = kvf_fuse_chunk_keys(s->m, j->segs, j->n_segs, &j->fp, j->ckeys, j->n_segs - 1);
        if (j->n_ckeys < 0) j->n_ckeys = 0;
    }
    return j->n_ckeys;
}

/* ---- job endings ----------------------------------------------------------------------- */

/* A plain job's tokens stay findable after the slot serves another conversation: the blocks
 * of its history not saved yet go to the tenant's own cache (never the shared namespace). */
static void save_conversation(srv_sched *s, slot *sl, const srv_job *j) {
    int32_t B = s->p.conv_block;
    if (B <= 0 || !sl->plain || !sl->hist_ok || j->err_status != 0 || sl->n_hist / B <= sl->n_saved / B) return;
    char             err[320];
    kvf_chunk_cache *c = cache_for(s, j->ns, err, sizeof err);
    int32_t          n = 0;
    if (!c || kvf_session_prefix_save(sl->s, c, sl->hist, sl->n_hist, B, sl->n_saved, &n) != KVF_OK) {
        fprintf(stderr, "kvfuse serve: warning: keeping a conversation's KV: %s\n", c ? kvf_errmsg() : err);
        return;
    }
    if (n > sl->n_saved) sl->n_saved = n;
}

static void slot_release(srv_sched *s, slot *sl) {
    srv_job *j = sl->job;
    save_conversation(s, sl, j);
    queue_rehint(s, j, KVF_STEPS_NONE);
    if (j->flow.wf[0] && !sl->plain && s->flow) { /* KVFlow: the step is over */
        char             err[320];
        kvf_chunk_cache *c = job_cache(s, j, err, sizeof err);
        if (c) srv_flow_step_done(s->flow, j->ns, &j->flow, c);
        s->mux.job = NULL;
    }
    kvf_sampler_free(sl->smp);
    sl->smp = NULL;
    free(sl->flat);
    sl->flat     = NULL;
    sl->n_flat   = sl->pf_done = 0;
    sl->job      = NULL;
    sl->phase    = SLOT_FREE;
    sl->last_use = srv_now_ms();
    kvf_session_trim(sl->s); /* idle: keep memory only for the prefix it holds */
    if (sl->audit) { /* the audit's full prefill waits for idle time */
        srv_audit_end(s->audit, sl->audit, j->err_status == 0);
        sl->audit = NULL;
    }
    srv_job_outcome o = srv_job_outcome_of(j);
    srv_metrics_job(s->met, &o);
    s->cache_epoch++; /* its chunks and prefix are cached now: queued jobs are scored again */
    double dur = (srv_now_ms() - j->t_arrival_ms) / 1e3;
    pthread_mutex_lock(&s->mu);
    s->n_busy--;
    s->avg_job_s = 0.8 * s->avg_job_s + 0.2 * dur;
    pthread_mutex_unlock(&s->mu);
    srv_job_release(j);
}

__attribute__((format(printf, 5, 6))) static void slot_fail(srv_sched *s, slot *sl, int status,
                                                             const char *type, const char *fmt, ...) {
    char    msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&sl->job->mu);
    srv_job_done_locked(sl->job, NULL, status, type, "%s", msg);
    pthread_mutex_unlock(&sl->job->mu);
    sl->hist_ok = false; /* the session may hold a partial prefill */
    slot_release(s, sl);
}

/* A queued job that never got a slot. */
static void drop_queued(srv_sched *s, srv_job *j, int status, const char *type, const char *msg) {
    queue_rehint(s, j, KVF_STEPS_NONE);
    pthread_mutex_lock(&j->mu);
    srv_job_done_locked(j, NULL, status, type, "%s", msg);
    srv_job_outcome o = srv_job_outcome_of(j);
    pthread_mutex_unlock(&j->mu);
    srv_metrics_job(s->met, &o);
    srv_job_release(j);
}

/* ---- tokens out ------------------------------------------------------------------------ */

/* Hand a sampled token to the job; false when the job is finished (slot released). */
static bool emit(srv_sched *s, slot *sl, int32_t tok, bool first) {
    srv_job *j   = sl->job;
    double   now = srv_now_ms();
    char     piece[256];
    int32_t  k   = 0;
    bool     eog = kvf_token_is_eog(s->m, tok);
    if (sl->audit) srv_audit_token(s->audit, sl->audit, tok, eog);
    if (!eog) {
        k = kvf_token_to_piece(s->m, tok, piece, sizeof piece, false);
        if (k < 0) k = 0; /* a piece longer than 256 bytes does not exist in practice */
    }
    const char *finish = NULL;
    pthread_mutex_lock(&j->mu);
    if (first) j->ttft_ms = now - j->t_arrival_ms;
    if (eog) {
        finish = "stop";
    } else {
        j->n_gen++;
        if (srv_job_push(j, piece, (size_t)k))
            finish = "stop";
        else if (j->n_gen >= j->max_tokens)
            finish = "length";
        else if (kvf_session_n_past(sl->s) >= s->p.n_ctx)
            finish = "length";
    }
    if (finish)
        srv_job_done_locked(j, finish, 0, NULL, "%s", "");
    else
        pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (finish) {
        slot_release(s, sl);
        return false;
    }
    sl->next  = tok;
    sl->phase = SLOT_DECODE;
    return true;
}

static void first_token(srv_sched *s, slot *sl) {
    sl->job->pf_unit_last = s->pf_units;
    const float *lg  = kvf_session_logits(sl->s, -1);
    int32_t      tok = kvf_sampler_sample(sl->smp, lg, s->n_vocab);
    emit(s, sl, tok, true);
}

/* ---- admission ------------------------------------------------------------------------- */

static int32_t common_prefix(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    int32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* plain prefill: the prompt's tokens in one array */
static int32_t *flatten(const srv_job *j, int32_t *n) {
    int32_t *f = malloc(sizeof(int32_t) * (size_t)(j->n_prompt > 0 ? j->n_prompt : 1));
    if (!f) return NULL;
    int32_t o = 0;
    for (int32_t i = 0; i < j->n_segs; i++) {
        memcpy(f + o, j->segs[i].ids, sizeof(int32_t) * (size_t)j->segs[i].n);
        o += j->segs[i].n;
    }
    *n = o;
    return f;
}

/* Whether job j may reuse the KV slot sl holds: a plain history of the same tenant, computed
 * with the same attention (other attention, other KV) */
static bool slot_hist_usable(const slot *sl, const srv_job *j) {
    return sl->hist_ok && !strcmp(sl->hist_ns, j->ns) && !memcmp(&sl->hist_attn, &j->attn, sizeof j->attn);
}

/* Tokens of the plain prompt flat[n_flat] that free slot sl already holds (same tenant only) */
static int32_t slot_prefix(const slot *sl, const srv_job *j, const int32_t *flat, int32_t n_flat) {
    if (!flat || !slot_hist_usable(sl, j)) return 0;
    return common_prefix(sl->hist, sl->n_hist, flat, n_flat);
}

static slot *choose_slot(srv_sched *s, const srv_job *j, const int32_t *flat, int32_t n_flat) {
    slot   *best = NULL;
    int32_t best_lcp = -1;
    for (int i = 0; i < s->p.n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->phase != SLOT_FREE) continue;
        int32_t lcp = slot_prefix(sl, j, flat, n_flat);
        if (lcp > best_lcp || (lcp == best_lcp && sl->last_use < best->last_use)) best = sl, best_lcp = lcp;
    }
    return best;
}

/* ---- KV budget (demand-paged sessions) --------------------------------------------------- */

/* KV tokens job j may fill: its prompt and answer, at most a session */
static int64_t job_kv(const srv_sched *s, const srv_job *j) {
    int64_t n = (int64_t)j->n_prompt + (j->max_tokens > 0 ? j->max_tokens : 0);
    return n < s->p.n_ctx ? n : s->p.n_ctx;
}

/* KV tokens the running jobs may fill */
static int64_t busy_kv(const srv_sched *s) {
    int64_t n = 0;
    for (int i = 0; i < s->p.n_slots; i++)
        if (s->slots[i].phase != SLOT_FREE) n += job_kv(s, s->slots[i].job);
    return n;
}

/* Before job j starts in slot `use`: if the running jobs' KV, j's and the prefixes idle slots
 * keep for reuse exceed the budget, idle slots give theirs up, least recently used first. */
static void make_kv_room(srv_sched *s, const slot *use, const srv_job *j) {
    if (s->p.kv_budget <= 0) return;
    int64_t need = busy_kv(s) + job_kv(s, j);
    for (int i = 0; i < s->p.n_slots; i++) {
        const slot *sl = &s->slots[i];
        if (sl != use && sl->phase == SLOT_FREE) need += kvf_session_n_past(sl->s);
    }
    while (need > s->p.kv_budget) {
        slot *old = NULL;
        for (int i = 0; i < s->p.n_slots; i++) {
            slot *sl = &s->slots[i];
            if (sl != use && sl->phase == SLOT_FREE && kvf_session_n_past(sl->s) > 0 &&
                (!old || sl->last_use < old->last_use))
                old = sl;
        }
        if (!old) break;
        need -= kvf_session_n_past(old->s);
        kvf_session_truncate(old->s, 0);
        kvf_session_trim(old->s);
        old->hist_ok = false;
        old->n_hist  = old->n_saved = 0;
    }
}

/* ---- queue order (after KVShare) --------------------------------------------------------- */

/* The queue's eviction hints (steps-to-execution, store/steps.h) on a fused job's chunks: 1
 * while it waits and 2 while it runs, so the cache evicts the chunks nobody waits for or uses
 * first (least recently used first), then the running jobs', and the waiting jobs' last;
 * KVF_STEPS_NONE once it is done. Not for KVFlow's jobs, whose workflow hints rule their
 * chunks. */
static void queue_hint(srv_sched *s, srv_job *j, uint32_t steps) {
    if (j->n_ckeys <= 0 || j->flow.wf[0] || (steps == KVF_STEPS_NONE && !j->kv_hinted)) return;
    char             err[160];
    kvf_chunk_cache *c = job_cache(s, j, err, sizeof err);
    if (c && c->ops->hint) c->ops->hint(c, (const kvf_chunk_key *)j->ckeys, j->n_ckeys, KVF_HINT_QUEUE, steps);
    if (c) s->mux.job = NULL;
    j->kv_hinted = steps != KVF_STEPS_NONE;
}

/* Job j leaves the queue (steps 2: it runs; KVF_STEPS_NONE: it is done or dropped): its hints
 * change, and the other jobs' hints are set again, the running ones' and then the waiting ones'
 * (they may share keys with j: the prefix, a document). */
static void queue_rehint(srv_sched *s, srv_job *j, uint32_t steps) {
    if (!j->kv_hinted) return;
    queue_hint(s, j, steps);
    for (int i = 0; i < s->p.n_slots; i++) {
        srv_job *r = s->slots[i].phase == SLOT_FREE ? NULL : s->slots[i].job;
        if (r && r != j && r->kv_hinted) queue_hint(s, r, 2);
    }
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->q_len; i++) {
        srv_job *q = s->q[(s->q_head + i) % s->q_cap];
        if (q && q != j && q->kv_hinted) s->q_score[n++] = q;
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) queue_hint(s, s->q_score[i], 1);
}

/* How many of j's prompt tokens have their KV cached: its documents' chunks in the tenant's
 * caches (fused; their keys kept in the job the first time, for queue_hint), or the longest
 * prefix an idle slot keeps that admit() would reuse (plain). */
static int32_t cached_tokens_of(srv_sched *s, srv_job *j) {
    if (j->fused && j->fp.method != KVF_METHOD_FULL) {
        char             err[160];
        kvf_chunk_cache *c = job_cache(s, j, err, sizeof err);
        int64_t          n = c ? kvf_fuse_cached_tokens(s->m, c, j->segs, j->n_segs, &j->fp) : 0;
        job_keys(s, j);
        s->mux.job = NULL;
        return n > 0 ? (int32_t)n : 0;
    }
    if (j->fused) return 0; /* method full: prefilled without a slot's prefix (admit) */
    int32_t  n_flat = 0, best = 0;
    int32_t *flat   = flatten(j, &n_flat);
    for (int i = 0; flat && i < s->p.n_slots; i++)
        if (s->slots[i].phase == SLOT_FREE) {
            int32_t n = slot_prefix(&s->slots[i], j, flat, n_flat);
            if (n > best) best = n;
        }
    free(flat);
    return best;
}

/* Score the queued jobs not scored since the cache last changed, outside the queue lock (a
 * chunk lookup may read a store), and hint their chunks to the cache. A job that ends has its
 * documents' chunks cached, so a waiting request with the same documents is cheap now: scores
 * are redone after each. Only this thread removes jobs from the queue, so the pointers stay
 * valid. */
static void score_queue(srv_sched *s) {
    int n = 0;
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->q_len; i++) {
        srv_job *j = s->q[(s->q_head + i) % s->q_cap];
        if (!j->kv_scored || j->kv_epoch != s->cache_epoch) s->q_score[n++] = j;
    }
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < n; i++) {
        srv_job *j   = s->q_score[i];
        j->kv_cached  = cached_tokens_of(s, j);
        j->kv_scored  = true;
        j->kv_epoch   = s->cache_epoch;
        queue_hint(s, j, 1);
    }
}

typedef struct {
    srv_sched *s;
    double     now;
} order_ctx;

/* A job is due when it has waited past the aging bound or been overtaken overtake_max times.
 * An earlier arrival has waited longer and been overtaken at least as often (every job admitted
 * past a later one passed it too), so the due jobs are a prefix of the arrival order. */
static bool due(const srv_sched *s, const srv_job *j, double now) {
    return now - j->t_arrival_ms > s->p.aging_ms || (s->p.overtake_max > 0 && j->overtaken >= s->p.overtake_max);
}

/* Admission order: due jobs first, by arrival; then by the share of the prompt already cached,
 * most first; ties by arrival. */
static int by_admission(const void *a, const void *b, void *arg) {
    const order_ctx *o = arg;
    const srv_job   *x = o->s->q[(o->s->q_head + *(const int *)a) % o->s->q_cap];
    const srv_job   *y = o->s->q[(o->s->q_head + *(const int *)b) % o->s->q_cap];
    bool             ox = due(o->s, x, o->now), oy = due(o->s, y, o->now);
    if (ox != oy) return ox ? -1 : 1;
    if (!ox) {
        double fx = (double)x->kv_cached / (x->n_prompt > 0 ? x->n_prompt : 1);
        double fy = (double)y->kv_cached / (y->n_prompt > 0 ? y->n_prompt : 1);
        if (fx != fy) return fx > fy ? -1 : 1;
    }
    return *(const int *)a - *(const int *)b; /* queue position = arrival order */
}

/* EpiCache: a plain chat prompt longer than --conv-budget, whose history (every message but
 * the last) is prefilled under the budget; only with dense prefill attention and not with
 * LouisKV decoding (kvf_session_prefill_budget). */
static bool bounded_job(const srv_sched *s, const srv_job *j, int32_t n_flat) {
    return s->p.conv_budget > 0 && !j->fused && j->chat && j->n_utt >= 2 && n_flat > s->p.conv_budget &&
           j->utt[j->n_utt - 1] > 0 && j->attn.mode == KVF_ATTN_DENSE && j->dattn.mode != KVF_DECODE_LOUIS;
}

/* Give job j a free slot (there is one). */
static void admit(srv_sched *s, srv_job *j) {
    queue_rehint(s, j, 2); /* the waiting jobs' chunks go before its own */
    double now  = srv_now_ms();
    bool   plain = !j->fused || j->fp.method == KVF_METHOD_FULL;
    int32_t *flat = NULL, n_flat = 0;
    if (plain && !(flat = flatten(j, &n_flat))) {
        drop_queued(s, j, 500, "server_error", "out of memory");
        return;
    }
    slot *sl = choose_slot(s, j, j->fused ? NULL : flat, n_flat);
    make_kv_room(s, sl, j);
    pthread_mutex_lock(&s->mu);
    s->n_busy++;
    pthread_mutex_unlock(&s->mu);
    sl->job   = j;
    sl->phase = SLOT_PREFILL;
    sl->plain = plain;
    sl->flat  = flat;
    sl->n_flat = n_flat;
    sl->pf_done = 0;
    pthread_mutex_lock(&j->mu);
    j->state    = SRV_JOB_RUNNING;
    j->queue_ms = now - j->t_arrival_ms;
    pthread_mutex_unlock(&j->mu);
    if (j->sp.temp > 0 && !(sl->smp = kvf_sampler_new(&j->sp))) {
        slot_fail(s, sl, 500, "server_error", "out of memory");
        return;
    }
    if (kvf_session_set_attn(sl->s, &j->attn) != KVF_OK || kvf_session_set_decode_attn(sl->s, &j->dattn) != KVF_OK) {
        slot_fail(s, sl, 400, "invalid_request_error", "kvfuse.attn: %s", kvf_errmsg());
        return;
    }
    sl->bounded = plain && bounded_job(s, j, n_flat);
    if (sl->bounded) { /* the history is prefilled afresh under the budget: nothing is reused */
        kvf_session_truncate(sl->s, 0);
        sl->pf_done = sl->n_hist = sl->n_saved = 0;
        sl->hist_ok      = false;
        sl->conv.started = false;
        j->cached_tokens = 0;
    } else if (plain) {
        /* reuse the slot's previous tokens (same tenant, plain prompts only), or the longer
         * prefix of this conversation another slot or process kept in the tenant's cache */
        int32_t lcp = j->fused ? 0 : slot_prefix(sl, j, flat, n_flat), n_loaded = 0;
        if (!j->fused && s->p.conv_block > 0 && n_flat > s->p.conv_block) {
            char             err[320];
            kvf_chunk_cache *c = cache_for(s, j->ns, err, sizeof err);
            if (!slot_hist_usable(sl, j)) kvf_session_truncate(sl->s, 0); /* never kept */
            if (c && kvf_session_prefix_load(sl->s, c, flat, n_flat, s->p.conv_block, &n_loaded) != KVF_OK) {
                fprintf(stderr, "kvfuse serve: warning: restoring a conversation's KV: %s\n", kvf_errmsg());
                n_loaded = 0;
                kvf_session_truncate(sl->s, 0);
            }
            lcp = n_loaded; /* what the session now holds of this prompt (its own or restored) */
            memcpy(sl->hist, flat, sizeof(int32_t) * (size_t)n_loaded);
            /* its whole blocks are in the cache: restored, or saved when this slot's last job ended */
            sl->n_saved = n_loaded / s->p.conv_block * s->p.conv_block;
        } else if (s->p.conv_block > 0) { /* blocks past the reused prefix are not this prompt's */
            int32_t keep = sl->n_saved < lcp ? sl->n_saved : lcp;
            sl->n_saved  = keep / s->p.conv_block * s->p.conv_block;
        }
        if (lcp >= n_flat) lcp = n_flat - 1; /* evaluate at least one token for its logits */
        if (kvf_session_truncate(sl->s, lcp) != KVF_OK) {
            lcp = 0;
            kvf_session_truncate(sl->s, 0);
        }
        sl->pf_done      = lcp;
        sl->n_hist       = lcp;
        sl->hist_ok      = true;
        sl->hist_attn    = j->attn;
        snprintf(sl->hist_ns, sizeof sl->hist_ns, "%s", j->ns);
        j->cached_tokens = lcp; /* read by the HTTP side only once the job is done */
    } else {
        sl->hist_ok = false;
        sl->n_hist  = sl->n_saved = 0;
    }
}

/* ---- prefill and decode ---------------------------------------------------------------- */

/* KVFlow: this step of a workflow starts; the caches learn how far each of the workflow's chunks
 * is from use, and the next steps' chunks are read up from the lower tiers meanwhile */
static void flow_step(srv_sched *s, srv_job *j, kvf_chunk_cache *c) {
    int32_t n = job_keys(s, j);
    int     w = s->flow ? srv_flow_step(s->flow, j->ns, &j->flow, (const kvf_chunk_key *)j->ckeys, n, c) : 0;
    if (s->flow && s->p.flow_compute && !s->p.store) { /* to compute its chunks ahead next time */
        uint8_t *sh = calloc((size_t)j->n_segs, 1);
        for (int32_t i = 1; sh && i + 1 < j->n_segs; i++) sh[i] = is_shared_doc(j, j->segs[i].ids, j->segs[i].n);
        if (sh) srv_flow_remember(s->flow, j->ns, &j->flow, j->segs, j->n_segs, sh, &j->fp);
        free(sh);
    }
    pthread_mutex_lock(&j->mu);
    j->flow_warmed = w > 0 ? w : 0;
    pthread_mutex_unlock(&j->mu);
}

/* The history of a bounded conversation (every message but the last), a few blocks per unit so
 * that the other slots decode meanwhile: on the first unit its episodes are clustered, the
 * question routed to one and that episode's text made the probe (--conv-probe question: the
 * last CONV_PROBE tokens of the question's own text, no episodes); every unit then prefills at least
 * --prefill-chunk more history tokens under the budget (kvf_session_prefill_budget_part). The
 * question follows in the ordinary units. */
static void bounded_prefill(srv_sched *s, slot *sl) {
    srv_job *j  = sl->job;
    double   t0 = srv_now_ms();
    int32_t  q0 = j->utt[j->n_utt - 1];
    if (!sl->conv.started) {
        kvf_episodes *ep = NULL;
        sl->conv.np = 0, sl->conv.episode = -1, sl->conv.done = 0;
        if (j->n_conv_probe > 0 || s->p.conv_probe_question) {
            /* the request's kvfuse.conv_probe, else the message's own text: the template's tokens
             * around it attend to the notes' template, not to what the question asks
             * (docs/conv-budget.md); its last CONV_PROBE tokens */
            const int32_t *src = sl->flat + q0;
            int32_t        ns  = sl->n_flat - q0;
            if (j->n_conv_probe > 0)
                src = j->conv_probe, ns = j->n_conv_probe;
            else if (j->q_text0 >= q0 && j->q_text1 > j->q_text0 && j->q_text1 <= sl->n_flat)
                src = sl->flat + j->q_text0, ns = j->q_text1 - j->q_text0;
            sl->conv.np = ns < CONV_PROBE ? ns : CONV_PROBE;
            memcpy(sl->conv.probe, src + ns - sl->conv.np, sizeof(int32_t) * (size_t)(sl->conv.np > 0 ? sl->conv.np : 0));
        } else if (kvf_episodes_build(s->m, sl->flat, q0, j->utt, j->n_utt - 1, 4, s->p.conv_episodes, &ep) == KVF_OK) {
            sl->conv.episode = kvf_episodes_route(ep, sl->flat + q0, sl->n_flat - q0, NULL);
            sl->conv.np = sl->conv.episode >= 0 ? kvf_episodes_probe(ep, sl->conv.episode, sl->conv.probe, CONV_PROBE) : 0;
        }
        if (sl->conv.np < 0) sl->conv.np = 0;
        sl->conv.n_ep = kvf_episodes_count(ep);
        kvf_episodes_free(ep);
        kvf_conv_budget_params *bp = &sl->conv.bp;
        *bp          = kvf_conv_budget_default_params(s->p.conv_budget);
        int32_t room = s->p.conv_budget - (bp->block + bp->window + CONV_PROBE + 16);
        bp->sink     = j->utt[1] < room ? j->utt[1] : room; /* the first message (system prompt) */
        bp->chunk    = s->p.conv_chunk;
        if (bp->sink > s->p.conv_budget / 4) bp->sink = s->p.conv_budget / 4;
        /* layer budgets from the profile (uniform where this request's sink leaves no room) */
        if (s->conv_sim && sl->conv.lb &&
            kvf_conv_layer_budgets(s->conv_sim, kvf_model_n_layer(s->m), bp, sl->conv.np, s->p.conv_alpha,
                                   sl->conv.lb) == KVF_OK)
            bp->layer_budget = sl->conv.lb;
        sl->conv.started = true;
    }
    kvf_status rc = kvf_session_prefill_budget_part(sl->s, sl->flat, q0, sl->conv.np > 0 ? sl->conv.probe : NULL,
                                                    sl->conv.np, &sl->conv.bp, s->p.prefill_chunk, &sl->conv.done,
                                                    &sl->conv.st);
    double dt = srv_now_ms() - t0;
    if (rc != KVF_OK) {
        slot_fail(s, sl, 500, "server_error", "prefill under --conv-budget failed: %s", kvf_errmsg());
        return;
    }
    pthread_mutex_lock(&j->mu);
    j->prefill_ms += dt;
    pthread_mutex_unlock(&j->mu);
    if (sl->conv.done < q0) {
        srv_metrics_prefill(s->met, 0, dt); /* a unit; the tokens count once the history is in */
        return;
    }
    srv_metrics_prefill(s->met, q0, dt);
    sl->pf_done = q0;
    const kvf_conv_budget_params *bp = &sl->conv.bp;
    const kvf_conv_budget_stats  *st = &sl->conv.st;
    pthread_mutex_lock(&j->mu);
    j->conv_bounded   = true;
    j->conv_probe_q   = s->p.conv_probe_question;
    j->conv_chunk     = bp->chunk;
    j->conv_episode   = sl->conv.episode;
    j->conv_episodes  = sl->conv.n_ep;
    j->conv_kept      = st->cells;
    j->conv_peak      = st->peak_cells;
    j->conv_evictions = st->evictions;
    j->conv_probe_n   = sl->conv.np;
    j->conv_layer_min = j->conv_layer_max = 0;
    for (int l = 0; bp->layer_budget && l < kvf_model_n_layer(s->m); l++) {
        if (!j->conv_layer_min || bp->layer_budget[l] < j->conv_layer_min) j->conv_layer_min = bp->layer_budget[l];
        if (bp->layer_budget[l] > j->conv_layer_max) j->conv_layer_max = bp->layer_budget[l];
    }
    pthread_mutex_unlock(&j->mu);
}

static void prefill_unit(srv_sched *s, slot *sl) {
    srv_job *j  = sl->job;
    double   t0 = srv_now_ms();
    if (sl->bounded && sl->pf_done == 0) { /* until its history is in */
        bounded_prefill(s, sl);
        return;
    }
    if (!sl->plain) {
        char             err[320] = "";
        kvf_chunk_cache *c        = job_cache(s, j, err, sizeof err);
        if (!c) {
            slot_fail(s, sl, 500, "server_error", "%s", err);
            return;
        }
        if (j->flow.wf[0]) flow_step(s, j, c);
        kvf_fuse_stats st;
        memset(&st, 0, sizeof st);
        kvf_status rc = kvf_session_fuse(sl->s, c, j->segs, j->n_segs, &j->fp, &st);
        s->mux.job    = NULL;
        double dt     = srv_now_ms() - t0;
        if (rc != KVF_OK) {
            slot_fail(s, sl, 500, "server_error", "fusion failed: %s", kvf_errmsg());
            return;
        }
        srv_metrics_prefill(s->met, j->n_prompt, dt);
        srv_metrics_cache(s->met, st.chunk_hits, st.chunk_misses);
        pthread_mutex_lock(&j->mu);
        j->fst           = st;
        j->cached_tokens = st.reused_tokens;
        j->prefill_ms    = dt;
        pthread_mutex_unlock(&j->mu);
        if (s->audit) {
            srv_audit_req ar = {.id = j->id, .fp = &j->fp, .st = &st, .segs = j->segs, .n_segs = j->n_segs,
                                .logits = kvf_session_logits(sl->s, -1), .greedy = !(j->sp.temp > 0)};
            sl->audit = srv_audit_begin(s->audit, &ar);
        }
        first_token(s, sl);
        return;
    }
    int32_t n = sl->n_flat - sl->pf_done;
    if (n > s->p.prefill_chunk) n = s->p.prefill_chunk;
    kvf_status rc = kvf_session_eval(sl->s, sl->flat + sl->pf_done, n, 0);
    double     dt = srv_now_ms() - t0;
    if (rc != KVF_OK) {
        slot_fail(s, sl, 500, "server_error", "prefill failed: %s", kvf_errmsg());
        return;
    }
    srv_metrics_prefill(s->met, n, dt);
    memcpy(sl->hist + sl->pf_done, sl->flat + sl->pf_done, sizeof(int32_t) * (size_t)n);
    sl->pf_done += n;
    sl->n_hist = sl->pf_done;
    pthread_mutex_lock(&j->mu);
    j->prefill_ms += dt;
    if (sl->pf_done == sl->n_flat && j->fused) { /* method full: report it like fusion does */
        kvf_fuse_stats *st    = &j->fst;
        st->total_tokens      = sl->n_flat;
        st->prefix_tokens     = j->segs[0].n;
        st->question_tokens   = j->segs[j->n_segs - 1].n;
        st->recomputed_tokens = sl->n_flat;
        st->recompute_ms      = j->prefill_ms;
        st->ttft_ms           = j->prefill_ms;
    }
    pthread_mutex_unlock(&j->mu);
    if (sl->pf_done == sl->n_flat) first_token(s, sl);
}

static bool expired(const srv_job *j, double now);

/* Prefill units a slot still needs: a plain prompt's chunks (a bounded history counted as its
 * whole prompt), one for a fused prompt. */
static int64_t units_left(const srv_sched *s, const slot *sl) {
    if (!sl->plain) return 1;
    int64_t n = sl->n_flat - sl->pf_done;
    return (n + s->p.prefill_chunk - 1) / s->p.prefill_chunk;
}

/* Whether the oldest prefilling slot p shares the prefill units with the next oldest p2: while
 * p is in a bounded history (always), or p needs more units than p2 still does. Two prompts of
 * the same length go oldest first, so sharing never delays the older for nothing. */
static bool share_unit(const srv_sched *s, const slot *p, const slot *p2) {
    if (p->bounded && p->pf_done == 0) return true;
    int64_t n = units_left(s, p);
    return n > 1 && units_left(s, p2) < n;
}

/* One batched decode step; returns the rows decoded. */
static int decode_step(srv_sched *s) {
    kvf_session *sess[MAX_SLOTS];
    int32_t      tok[MAX_SLOTS];
    slot        *who[MAX_SLOTS];
    int          n   = 0;
    double       now = srv_now_ms();
    for (int i = 0; i < s->p.n_slots; i++) {
        slot *sl = &s->slots[i];
        if (sl->phase != SLOT_DECODE) continue;
        if (atomic_load(&sl->job->cancel)) {
            slot_fail(s, sl, 499, "cancelled", "the client closed the connection");
            continue;
        }
        if (expired(sl->job, now)) {
            slot_fail(s, sl, 504, "timeout", "the request timed out after %.0f s (--timeout)", sl->job->timeout_ms / 1e3);
            continue;
        }
        who[n]  = sl;
        sess[n] = sl->s;
        tok[n]  = sl->next;
        n++;
    }
    if (n == 0) return 0;
    double     t0 = srv_now_ms();
    kvf_status rc = n == 1 ? kvf_session_eval(sess[0], tok, 1, 0) : kvf_decode_batch(sess, tok, n);
    if (rc != KVF_OK && n > 1) { /* find the culprit: step them one by one */
        for (int i = 0; i < n; i++) {
            if (kvf_session_eval(sess[i], &tok[i], 1, 0) != KVF_OK) {
                slot_fail(s, who[i], 500, "server_error", "decoding failed: %s", kvf_errmsg());
                who[i] = NULL;
            }
        }
        rc = KVF_OK;
    }
    double dt = srv_now_ms() - t0;
    if (rc != KVF_OK) {
        slot_fail(s, who[0], 500, "server_error", "decoding failed: %s", kvf_errmsg());
        return 1;
    }
    srv_metrics_decode_step(s->met, n, dt);
    for (int i = 0; i < n; i++) {
        slot *sl = who[i];
        if (!sl) continue;
        if (sl->hist_ok && sl->n_hist < s->p.n_ctx) sl->hist[sl->n_hist++] = tok[i];
        srv_job *j = sl->job;
        pthread_mutex_lock(&j->mu);
        j->decode_ms += dt;
        if (n > j->batch_max) j->batch_max = n;
        pthread_mutex_unlock(&j->mu);
        int32_t t = kvf_sampler_sample(sl->smp, kvf_session_logits(sl->s, -1), s->n_vocab);
        emit(s, sl, t, false);
    }
    return n;
}

/* ---- idle work --------------------------------------------------------------------------- */

static bool flow_ready(const srv_sched *s) {
    return s->flow && s->p.flow_compute && !s->p.store && srv_flow_has_doc(s->flow);
}

/* KVFlow without a lower tier: one document of a next workflow step, its chunk computed and
 * cached unless it is there already (kvf_session_precompute looks it up first) */
static void flow_compute_unit(srv_sched *s) {
    srv_flow_doc d;
    if (!srv_flow_take_doc(s->flow, &d)) return;
    double t0 = srv_now_ms();
    if (!s->flow_s) {
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx              = s->p.n_ctx;
        sp.n_threads          = s->p.n_threads;
        sp.kv_type            = s->p.kv_type;
        if (kvf_session_new(s->m, &sp, &s->flow_s) != KVF_OK) {
            s->flow_s = NULL;
            return; /* no memory for it now: the step computes its chunks itself */
        }
    }
    char             err[320];
    kvf_chunk_cache *c = tenant_cache(s, d.ns, NULL, d.shared ? &d.segs[1] : NULL, err, sizeof err);
    if (!c) return;
    kvf_fuse_stats st;
    kvf_status     rc = kvf_session_precompute(s->flow_s, c, d.segs, 3, &d.fp, &st);
    s->mux.shared_doc = NULL;
    s->cache_epoch++;
    if (rc == KVF_OK) srv_metrics_flow_compute(s->met, st.chunk_misses, srv_now_ms() - t0);
}

/* ---- the loop -------------------------------------------------------------------------- */

static bool expired(const srv_job *j, double now) {
    return j->timeout_ms > 0 && now - j->t_arrival_ms > j->timeout_ms;
}

static void *sched_main(void *arg) {
    srv_sched *s = arg;
    srv_job   *adm[MAX_SLOTS];
    int        adm_pos[MAX_SLOTS]; /* their queue positions (arrival order) */
    bool       was_idle = true;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        /* idle: wait for a request; KVFlow's and the audit's work runs only here, one unit at
         * a time */
        bool audit_now = false, flow_now = false;
        while (!s->stop && (s->q_len == 0 || s->held) && s->n_busy == 0) {
            double wait = 0;
            if (flow_ready(s)) {
                flow_now = true;
                break;
            }
            if (srv_audit_ready(s->audit, srv_now_ms(), &wait)) {
                audit_now = true;
                break;
            }
            if (wait > 0) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                double ns  = (double)ts.tv_nsec + wait * 1e6;
                ts.tv_sec += (time_t)(ns / 1e9);
                ts.tv_nsec = (long)fmod(ns, 1e9);
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            } else {
                pthread_cond_wait(&s->cv, &s->mu);
            }
        }
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        if (flow_now) {
            pthread_mutex_unlock(&s->mu);
            flow_compute_unit(s);
            continue;
        }
        if (audit_now) {
            pthread_mutex_unlock(&s->mu);
            was_idle = true;
            int r    = srv_audit_step(s->audit);
            if (s->p.audit_hook) s->p.audit_hook(s->p.audit_hook_user, r);
            continue;
        }
        if (was_idle && srv_audit_in_progress(s->audit)) srv_audit_note_yield(s->audit);
        was_idle = false;
        double now = srv_now_ms();
        /* 1. cancelled or expired jobs leave the queue; 2. the rest take free slots */
        srv_job *gone[MAX_SLOTS * 8];
        int      n_gone = 0, n_adm = 0, keep = 0, n_ord = 0;
        int      free_slots = s->held ? 0 : s->p.n_slots - s->n_busy;
        int64_t  kv_used = busy_kv(s); /* in admission order: a job that does not fit the KV */
        bool     kv_full = false;      /* budget holds back the ones after it too */
        if (s->p.aging_ms > 0 && free_slots > 0 && s->q_len > 0) {
            pthread_mutex_unlock(&s->mu);
            score_queue(s);
            pthread_mutex_lock(&s->mu);
            free_slots = s->held ? 0 : s->p.n_slots - s->n_busy;
        }
        for (int i = 0; i < s->q_len; i++) {
            srv_job *j = s->q[(s->q_head + i) % s->q_cap];
            if ((atomic_load(&j->cancel) || expired(j, now)) && n_gone < (int)(sizeof gone / sizeof gone[0]))
                gone[n_gone++] = j, s->q[(s->q_head + i) % s->q_cap] = NULL;
            else
                s->q_order[n_ord++] = i;
        }
        if (s->p.aging_ms > 0 && n_ord > 1) {
            order_ctx oc = {s, now};
            qsort_r(s->q_order, (size_t)n_ord, sizeof(int), by_admission, &oc);
        }
        for (int k = 0; k < n_ord; k++) {
            int      i = s->q_order[k];
            srv_job *j = s->q[(s->q_head + i) % s->q_cap];
            if (n_adm < free_slots && !kv_full &&
                (s->p.kv_budget <= 0 || kv_used + job_kv(s, j) <= s->p.kv_budget || (s->n_busy == 0 && n_adm == 0))) {
                adm_pos[n_adm] = i, adm[n_adm++] = j, kv_used += job_kv(s, j);
                s->q[(s->q_head + i) % s->q_cap] = NULL;
            } else if (n_adm < free_slots) {
                kv_full = true; /* a free slot but no KV room */
            }
        }
        for (int i = 0; i < s->q_len; i++) { /* the rest stay, in arrival order; each counts */
            srv_job *j = s->q[(s->q_head + i) % s->q_cap]; /* the later arrivals admitted */
            if (!j) continue;                              /* before it */
            for (int k = 0; k < n_adm; k++) j->overtaken += adm_pos[k] > i;
            s->q[(s->q_head + keep++) % s->q_cap] = j;
        }
        s->q_len = keep;
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < n_gone; i++) {
            bool c = atomic_load(&gone[i]->cancel);
            drop_queued(s, gone[i], c ? 499 : 504, c ? "cancelled" : "timeout",
                        c ? "the client closed the connection"
                          : "the request timed out while waiting for a slot (--timeout)");
        }
        for (int i = 0; i < n_adm; i++) admit(s, adm[i]);

        /* running jobs: cancellation and timeouts */
        now = srv_now_ms();
        for (int i = 0; i < s->p.n_slots; i++) {
            slot *sl = &s->slots[i];
            if (sl->phase == SLOT_FREE) continue;
            if (atomic_load(&sl->job->cancel))
                slot_fail(s, sl, 499, "cancelled", "the client closed the connection");
            else if (expired(sl->job, now))
                slot_fail(s, sl, 504, "timeout", "the request timed out after %.0f s (--timeout)", sl->job->timeout_ms / 1e3);
        }
        /* 3. prefill units, oldest job first; while the oldest needs more units than the next
         * oldest (or is in a bounded history), every other unit goes to the next oldest, so a
         * short prompt is not queued behind a long one and the long one still gets half */
        double pf_ms = 0;
        for (int u = 0; u < s->p.prefill_units; u++) {
            slot *p = NULL, *p2 = NULL;
            for (int i = 0; i < s->p.n_slots; i++) {
                slot *sl = &s->slots[i];
                if (sl->phase != SLOT_PREFILL) continue;
                if (!p || sl->job->t_arrival_ms < p->job->t_arrival_ms)
                    p2 = p, p = sl;
                else if (!p2 || sl->job->t_arrival_ms < p2->job->t_arrival_ms)
                    p2 = sl;
            }
            if (!p) break;
            if (p2 && share_unit(s, p, p2) && (s->pf_turn++ & 1)) p = p2;
            double t0 = srv_now_ms();
            s->pf_units++;
            prefill_unit(s, p);
            pf_ms += srv_now_ms() - t0;
        }
        /* 4. decode: one step, or a burst of up to R times the prefill time */
        double budget = pf_ms * s->p.decode_ratio, t0 = srv_now_ms();
        while (decode_step(s) > 0 && srv_now_ms() - t0 < budget) {
        }
    }
    /* shutting down: finish everything */
    for (int i = 0; i < s->p.n_slots; i++)
        if (s->slots[i].phase != SLOT_FREE)
            slot_fail(s, &s->slots[i], 503, "server_unavailable", "the server is shutting down");
    pthread_mutex_lock(&s->mu);
    int       n = s->q_len;
    srv_job **left = malloc(sizeof *left * (size_t)(n > 0 ? n : 1));
    for (int i = 0; left && i < n; i++) left[i] = s->q[(s->q_head + i) % s->q_cap];
    s->q_len = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; left && i < n; i++)
        drop_queued(s, left[i], 503, "server_unavailable", "the server is shutting down");
    free(left);
    return NULL;
}

/* ---- public ---------------------------------------------------------------------------- */

srv_sched *srv_sched_new(const kvf_model *m, const srv_sched_params *p, srv_metrics *met,
                         char *err, size_t errlen) {
    if (p->n_slots < 1 || p->n_slots > MAX_SLOTS) {
        snprintf(err, errlen, "--parallel must be 1..%d", MAX_SLOTS);
        return NULL;
    }
    if (p->n_ctx < 16 || p->max_queue < 0 || p->prefill_chunk < 1 || p->prefill_units < 1 ||
        !(p->decode_ratio >= 0) || p->conv_episodes < 1 || p->conv_episodes > 64) {
        snprintf(err, errlen, "bad scheduler parameters");
        return NULL;
    }
    if (p->conv_chunk < 0 || p->conv_chunk > 4096 || (p->conv_chunk > 0 && p->conv_layers)) {
        snprintf(err, errlen, "--conv-chunk %d must be 0 (off) or 1..4096, and not with --conv-layers (whole runs "
                 "need one budget for every layer)", p->conv_chunk);
        return NULL;
    }
    if (p->conv_budget != 0 && (p->conv_budget < 512 || p->conv_budget > p->n_ctx)) {
        snprintf(err, errlen, "--conv-budget %d must be 0 (off) or 512..%d (--ctx)", p->conv_budget, p->n_ctx);
        return NULL;
    }
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->m         = m;
    s->p         = *p;
    s->met       = met;
    s->n_vocab   = kvf_model_n_vocab(m);
    s->avg_job_s = 2.0;
    s->q_cap     = p->n_slots + p->max_queue;
    s->q         = calloc((size_t)s->q_cap, sizeof *s->q);
    s->q_order   = calloc((size_t)s->q_cap, sizeof *s->q_order);
    s->q_score   = calloc((size_t)s->q_cap, sizeof *s->q_score);
    s->slots     = calloc((size_t)p->n_slots, sizeof *s->slots);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    pthread_mutex_init(&s->cache_mu, NULL);
    if (!s->q || !s->q_order || !s->q_score || !s->slots) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = p->n_ctx;
    sp.n_threads          = p->n_threads;
    sp.kv_type            = p->kv_type;
    for (int i = 0; i < p->n_slots; i++) {
        if (kvf_session_new(m, &sp, &s->slots[i].s) != KVF_OK) {
            snprintf(err, errlen, "cannot create session %d of %d (n_ctx %d): %s", i + 1, p->n_slots,
                     p->n_ctx, kvf_errmsg());
            goto fail;
        }
        s->slots[i].hist = malloc(sizeof(int32_t) * (size_t)p->n_ctx);
        if (!s->slots[i].hist) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    if (p->audit.rate > 0) {
        srv_audit_params ap = p->audit;
        ap.n_ctx            = p->n_ctx;
        ap.n_threads        = p->n_threads;
        ap.kv_type          = p->kv_type;
        if (!(s->audit = srv_audit_new(m, &ap, err, errlen))) goto fail;
    }
    if (p->conv_layers) {
        if (!p->conv_budget) {
            snprintf(err, errlen, "--conv-layers needs --conv-budget");
            goto fail;
        }
        if (!(p->conv_alpha >= 0 && p->conv_alpha <= 16)) {
            snprintf(err, errlen, "--conv-alpha must be 0..16");
            goto fail;
        }
        bool mem   = (s->conv_sim = calloc((size_t)kvf_model_n_layer(m), sizeof(float))) != NULL;
        for (int i = 0; mem && i < p->n_slots; i++)
            mem = (s->slots[i].conv.lb = calloc((size_t)kvf_model_n_layer(m), sizeof(int32_t))) != NULL;
        if (!mem || kvf_conv_layer_profile_load(p->conv_layers, m, s->conv_sim) != KVF_OK) {
            snprintf(err, errlen, "--conv-layers: %s", mem ? kvf_errmsg() : "out of memory");
            goto fail;
        }
    }
    if (!(s->flow = srv_flow_new())) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    /* open the first cache now, so a bad --store fails at startup */
    char e2[320] = "";
    if (!cache_for(s, p->multi_tenant ? SRV_NS_SHARED : "default", e2, sizeof e2)) {
        snprintf(err, errlen, "%s", e2);
        goto fail;
    }
    if (pthread_create(&s->thr, NULL, sched_main, s) != 0) {
        snprintf(err, errlen, "cannot start the inference thread");
        goto fail;
    }
    s->started = true;
    return s;
fail:
    srv_sched_free(s);
    return NULL;
}

void srv_sched_shutdown(srv_sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started) pthread_join(s->thr, NULL);
    s->started = false;
}

void srv_sched_free(srv_sched *s) {
    if (!s) return;
    srv_sched_shutdown(s);
    for (int i = 0; s->slots && i < s->p.n_slots; i++) {
        kvf_session_free(s->slots[i].s);
        free(s->slots[i].hist);
        free(s->slots[i].conv.lb);
    }
    for (int i = 0; i < s->n_caches; i++) kvf_chunk_cache_free(s->caches[i].c);
    free(s->caches);
    srv_audit_free(s->audit);
    srv_flow_free(s->flow);
    if (s->flow_s) kvf_session_free(s->flow_s);
    free(s->conv_sim);
    free(s->slots);
    free(s->q);
    free(s->q_order);
    free(s->q_score);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->cache_mu);
    free(s);
}

void srv_sched_hold(srv_sched *s, bool hold) {
    pthread_mutex_lock(&s->mu);
    s->held = hold;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

srv_submit srv_sched_submit(srv_sched *s, srv_job *j, int *retry_after) {
    pthread_mutex_lock(&s->mu);
    if (s->stop) {
        pthread_mutex_unlock(&s->mu);
        if (retry_after) *retry_after = 5;
        return SRV_SUBMIT_SHUTDOWN;
    }
    if (s->q_len + s->n_busy >= s->q_cap) {
        double wait = s->avg_job_s * (double)(s->q_len + 1) / (double)s->p.n_slots;
        int    ra   = (int)(wait + 0.999);
        pthread_mutex_unlock(&s->mu);
        if (retry_after) *retry_after = ra < 1 ? 1 : ra > 120 ? 120 : ra;
        return SRV_SUBMIT_BUSY;
    }
    s->q[(s->q_head + s->q_len) % s->q_cap] = srv_job_retain(j);
    s->q_len++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return SRV_SUBMIT_OK;
}

void srv_sched_cancel(srv_sched *s, srv_job *j) {
    atomic_store(&j->cancel, true);
    pthread_mutex_lock(&s->mu);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv_sched_status(srv_sched *s, srv_status *out) {
    pthread_mutex_lock(&s->mu);
    out->queued    = s->q_len;
    out->active    = s->n_busy;
    out->slots     = s->p.n_slots;
    out->max_queue = s->p.max_queue;
    out->draining  = s->stop;
    pthread_mutex_unlock(&s->mu);
    /* mincore on the reservations: no session state is read, so no lock is needed */
    out->kv_resident = 0;
    for (int i = 0; i < s->p.n_slots; i++) out->kv_resident += kvf_session_kv_resident(s->slots[i].s);
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = s->p.n_ctx;
    sp.kv_type            = s->p.kv_type;
    out->kv_reserved      = (int64_t)s->p.n_slots * kvf_session_kv_reserved(s->m, &sp);
    out->kv_budget = s->p.kv_budget;
}

srv_audit *srv_sched_audit(srv_sched *s) {
    return s ? s->audit : NULL;
}

void srv_sched_gauges(srv_sched *s, srv_gauges *g) {
    srv_sched_status(s, &g->st);
    srv_audit_get_stats(s->audit, &g->audit);
    pthread_mutex_lock(&s->cache_mu);
    g->n_caches = s->n_caches;
    for (int i = 0; i < s->n_caches; i++) {
        kvf_store_stats st;
        if (!s->caches[i].store || kvf_store_get_stats(s->caches[i].c, &st) != KVF_OK) continue;
        if (!g->have_store) memset(&g->store, 0, sizeof g->store);
        g->have_store = true;
        for (int t = 0; t < KVF_TIER_COUNT; t++) {
            kvf_store_tier_stats *a = &g->store.tier[t], *b = &st.tier[t];
            a->enabled |= b->enabled;
            a->entries += b->entries;
            a->bytes += b->bytes;
            a->hits += b->hits;
            a->misses += b->misses;
            a->writes += b->writes;
            a->write_bytes += b->write_bytes;
            a->evictions += b->evictions;
            a->errors += b->errors;
            a->bad_entries += b->bad_entries;
        }
        g->store.queued += st.queued;
        g->store.write_dropped += st.write_dropped;
    }
    pthread_mutex_unlock(&s->cache_mu);
}
