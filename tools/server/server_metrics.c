/* server_metrics.c - Prometheus counters and text exposition of `kvfuse serve` (see
 * server_metrics.h). Every metric is prefixed kvfuse_. */
#include "server/server_metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_CODES   600
#define TTFT_BUCKETS 12
static const double ttft_bounds[TTFT_BUCKETS] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160};
#define N_MLABEL (KVF_METHOD_COUNT + 1) /* methods + "none" (plain prompts) */

typedef struct hist {
    uint64_t b[TTFT_BUCKETS];
    uint64_t count;
    double   sum;
} hist;

struct srv_metrics {
    pthread_mutex_t mu;
    uint64_t        req[SRV_EP_COUNT][N_CODES];
    hist            ttft[N_MLABEL];
    uint64_t        jobs_ok, jobs_cancelled, jobs_timeout, jobs_error;
    uint64_t        rejected_busy, rejected_shutdown;
    uint64_t        prompt_tokens, completion_tokens, cached_tokens;
    uint64_t        fused_requests, fused_total, fused_recomputed, fused_reused;
    uint64_t        kv_evictions;
    uint64_t        cache_hits, cache_misses;
    uint64_t        flow_computed;
    double          flow_seconds;
    uint64_t        decode_steps, decode_rows;
    double          decode_seconds;
    uint64_t        prefill_units, prefill_tokens;
    double          prefill_seconds;
    void (*src)(void *user, srv_gauges *out);
    void *src_user;
};

srv_metrics *srv_metrics_new(void) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (m) pthread_mutex_init(&m->mu, NULL);
    return m;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_set_source(srv_metrics *m, void (*fn)(void *user, srv_gauges *out), void *user) {
    pthread_mutex_lock(&m->mu);
    m->src      = fn;
    m->src_user = user;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_request(srv_metrics *m, srv_endpoint ep, int status) {
    if (!m || (unsigned)ep >= SRV_EP_COUNT) return;
    if (status < 100 || status >= N_CODES) status = 500;
    pthread_mutex_lock(&m->mu);
    m->req[ep][status]++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_rejected(srv_metrics *m, int status) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    if (status == 503)
        m->rejected_shutdown++;
    else
        m->rejected_busy++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_job(srv_metrics *m, const srv_job_outcome *j) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    if (j->err_status == 0)
        m->jobs_ok++;
    else if (j->err_status == 499)
        m->jobs_cancelled++;
    else if (j->err_status == 504)
        m->jobs_timeout++;
    else
        m->jobs_error++;
    m->prompt_tokens += (uint64_t)j->n_prompt;
    m->completion_tokens += (uint64_t)j->n_gen;
    m->cached_tokens += (uint64_t)(j->cached_tokens > 0 ? j->cached_tokens : 0);
    if (j->ttft_ms > 0) {
        int    l = j->fused ? (int)j->method + 1 : 0;
        hist  *h = &m->ttft[l];
        double s = j->ttft_ms / 1e3;
        for (int b = 0; b < TTFT_BUCKETS; b++)
            if (s <= ttft_bounds[b]) h->b[b]++;
        h->count++;
        h->sum += s;
    }
    if (j->fused && j->fst.total_tokens > 0) {
        m->fused_requests++;
        m->fused_total += (uint64_t)j->fst.total_tokens;
        m->fused_recomputed += (uint64_t)j->fst.recomputed_tokens;
        m->fused_reused += (uint64_t)j->fst.reused_tokens;
        if (j->fst.kept_after_evict > 0) m->kv_evictions++;
    }
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_cache(srv_metrics *m, int64_t hits, int64_t misses) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->cache_hits += (uint64_t)hits;
    m->cache_misses += (uint64_t)misses;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_flow_compute(srv_metrics *m, int64_t chunks, double ms) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->flow_computed += (uint64_t)chunks;
    m->flow_seconds += ms / 1e3;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_decode_step(srv_metrics *m, int rows, double ms) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->decode_steps++;
    m->decode_rows += (uint64_t)rows;
    m->decode_seconds += ms / 1e3;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_prefill(srv_metrics *m, int32_t tokens, double ms) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->prefill_units++;
    m->prefill_tokens += (uint64_t)tokens;
    m->prefill_seconds += ms / 1e3;
    pthread_mutex_unlock(&m->mu);
}

int64_t srv_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    long long size = 0, rss = 0;
    int       k    = fscanf(f, "%lld %lld", &size, &rss);
    fclose(f);
    if (k != 2) return 0;
    return (int64_t)rss * (int64_t)sysconf(_SC_PAGESIZE);
}

/* ---- text output ----------------------------------------------------------------------- */

typedef struct obuf {
    char  *p;
    size_t n, cap;
    bool   oom;
} obuf;

__attribute__((format(printf, 2, 3))) static void out(obuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        size_t nc = 2 * b->cap + (size_t)k + 256;
        char  *p  = realloc(b->p, nc);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p, b->cap = nc;
    }
}

static void head(obuf *b, const char *name, const char *type, const char *help) {
    out(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(obuf *b, const char *name, const char *help, uint64_t v) {
    head(b, name, "counter", help);
    out(b, "%s %llu\n", name, (unsigned long long)v);
}

static void gauge(obuf *b, const char *name, const char *help, double v) {
    head(b, name, "gauge", help);
    out(b, "%s %.17g\n", name, v);
}

/* the fidelity audit: fused answers against full prefill of the same prompt, per method */
static void render_audit(obuf *b, const srv_audit_stats *a) {
    counter(b, "kvfuse_audit_sampled_total", "fused requests picked for a fidelity audit (--audit-rate)", a->sampled);
    counter(b, "kvfuse_audit_skipped_total", "picked requests not audited: too many audits waiting", a->skipped);
    counter(b, "kvfuse_audit_completed_total", "fidelity audits finished", a->completed);
    counter(b, "kvfuse_audit_units_total", "audit work units (full-prefill micro-batches, decode steps)", a->units);
    counter(b, "kvfuse_audit_yields_total", "live requests that arrived while an audit was in progress (the audit waited)", a->yields);
    gauge(b, "kvfuse_audit_pending", "audits waiting for idle time or in progress", a->pending);
    gauge(b, "kvfuse_audit_seconds_total", "time spent in audit work (bounded by --audit-cpu)", a->seconds);
    head(b, "kvfuse_audit_first_token_kl", "summary",
         "first-token KL(full || fused) in nats of audited requests, by fusion method");
    for (int k = 0; k < KVF_METHOD_COUNT; k++) {
        const srv_audit_method_stats *x = &a->m[k];
        if (!x->n) continue;
        out(b, "kvfuse_audit_first_token_kl_sum{method=\"%s\"} %.9g\n", kvf_method_name((kvf_method)k), x->kl_sum);
        out(b, "kvfuse_audit_first_token_kl_count{method=\"%s\"} %llu\n", kvf_method_name((kvf_method)k), (unsigned long long)x->n);
    }
    head(b, "kvfuse_audit_first_token_agree_total", "counter",
         "audited requests whose fused first token (argmax) equals full prefill's, by method");
    for (int k = 0; k < KVF_METHOD_COUNT; k++)
        if (a->m[k].n)
            out(b, "kvfuse_audit_first_token_agree_total{method=\"%s\"} %llu\n", kvf_method_name((kvf_method)k),
                (unsigned long long)a->m[k].top1_agree);
    head(b, "kvfuse_audit_answer_f1", "summary",
         "token F1 of the fused greedy answer against full prefill's greedy answer (first "
         "--audit-tokens tokens; greedy requests only), by method");
    for (int k = 0; k < KVF_METHOD_COUNT; k++) {
        const srv_audit_method_stats *x = &a->m[k];
        if (!x->n_answer) continue;
        out(b, "kvfuse_audit_answer_f1_sum{method=\"%s\"} %.9g\n", kvf_method_name((kvf_method)k), x->f1_sum);
        out(b, "kvfuse_audit_answer_f1_count{method=\"%s\"} %llu\n", kvf_method_name((kvf_method)k), (unsigned long long)x->n_answer);
    }
}

char *srv_metrics_render(srv_metrics *m, size_t *len) {
    srv_gauges g;
    memset(&g, 0, sizeof g);
    pthread_mutex_lock(&m->mu);
    void (*src)(void *, srv_gauges *) = m->src;
    void *user                         = m->src_user;
    pthread_mutex_unlock(&m->mu);
    if (src) src(user, &g); /* outside our lock: the source takes its own */

    obuf b = {.p = malloc(8192), .cap = 8192};
    if (!b.p) return NULL;
    b.p[0] = 0;
    pthread_mutex_lock(&m->mu);
    srv_metrics s = *m; /* a consistent snapshot */
    pthread_mutex_unlock(&m->mu);

    head(&b, "kvfuse_http_requests_total", "counter", "HTTP responses by endpoint and status code");
    for (int e = 0; e < SRV_EP_COUNT; e++)
        for (int c = 0; c < N_CODES; c++)
            if (s.req[e][c])
                out(&b, "kvfuse_http_requests_total{endpoint=\"%s\",code=\"%d\"} %llu\n",
                    srv_endpoint_name((srv_endpoint)e), c, (unsigned long long)s.req[e][c]);
    head(&b, "kvfuse_completions_total", "counter",
         "inference requests that left the server, by outcome");
    out(&b, "kvfuse_completions_total{outcome=\"ok\"} %llu\n", (unsigned long long)s.jobs_ok);
    out(&b, "kvfuse_completions_total{outcome=\"cancelled\"} %llu\n", (unsigned long long)s.jobs_cancelled);
    out(&b, "kvfuse_completions_total{outcome=\"timeout\"} %llu\n", (unsigned long long)s.jobs_timeout);
    out(&b, "kvfuse_completions_total{outcome=\"error\"} %llu\n", (unsigned long long)s.jobs_error);
    head(&b, "kvfuse_rejected_total", "counter",
         "inference requests refused at admission (429 queue full, 503 shutting down)");
    out(&b, "kvfuse_rejected_total{reason=\"busy\"} %llu\n", (unsigned long long)s.rejected_busy);
    out(&b, "kvfuse_rejected_total{reason=\"shutdown\"} %llu\n", (unsigned long long)s.rejected_shutdown);

    head(&b, "kvfuse_ttft_seconds", "histogram",
         "time from request arrival to the first token (queueing included), by fusion method "
         "(none = prompt without documents)");
    for (int l = 0; l < N_MLABEL; l++) {
        const hist *h  = &s.ttft[l];
        const char *mn = l == 0 ? "none" : kvf_method_name((kvf_method)(l - 1));
        if (!h->count) continue;
        for (int k = 0; k < TTFT_BUCKETS; k++)
            out(&b, "kvfuse_ttft_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n", mn,
                ttft_bounds[k], (unsigned long long)h->b[k]);
        out(&b, "kvfuse_ttft_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n", mn,
            (unsigned long long)h->count);
        out(&b, "kvfuse_ttft_seconds_sum{method=\"%s\"} %.6f\n", mn, h->sum);
        out(&b, "kvfuse_ttft_seconds_count{method=\"%s\"} %llu\n", mn, (unsigned long long)h->count);
    }

    counter(&b, "kvfuse_prompt_tokens_total", "prompt tokens of finished requests (tokens in)", s.prompt_tokens);
    counter(&b, "kvfuse_completion_tokens_total", "generated tokens (tokens out)", s.completion_tokens);
    counter(&b, "kvfuse_cached_prompt_tokens_total",
            "prompt tokens whose KV was reused (fusion or prefix cache)", s.cached_tokens);
    counter(&b, "kvfuse_fused_requests_total", "requests answered with documents (fusion)", s.fused_requests);
    counter(&b, "kvfuse_fused_tokens_total", "prompt tokens of fused requests", s.fused_total);
    counter(&b, "kvfuse_recomputed_tokens_total", "tokens recomputed by fusion", s.fused_recomputed);
    counter(&b, "kvfuse_reused_tokens_total", "tokens whose cached chunk KV fusion reused", s.fused_reused);
    gauge(&b, "kvfuse_recomputed_fraction",
          "recomputed / total tokens over all fused requests so far",
          s.fused_total ? (double)s.fused_recomputed / (double)s.fused_total : 0.0);
    counter(&b, "kvfuse_kv_evictions_total",
            "fused prefills whose KV cache was shrunk by eviction (snapkv, streaming)", s.kv_evictions);
    counter(&b, "kvfuse_flow_computed_chunks_total",
            "chunks of the next workflow steps' documents computed ahead in idle time (KVFlow)",
            s.flow_computed);
    gauge(&b, "kvfuse_flow_compute_seconds_total", "idle time spent computing them", s.flow_seconds);
    head(&b, "kvfuse_chunk_cache_lookups_total", "counter",
         "chunk KV lookups by fusion (all tiers together)");
    out(&b, "kvfuse_chunk_cache_lookups_total{result=\"hit\"} %llu\n", (unsigned long long)s.cache_hits);
    out(&b, "kvfuse_chunk_cache_lookups_total{result=\"miss\"} %llu\n", (unsigned long long)s.cache_misses);

    /* per-tier store statistics (memory tier only without --store / --redis) */
    head(&b, "kvfuse_store_hits_total", "counter", "chunk-store hits per tier");
    if (g.have_store) {
        for (int t = 0; t < KVF_TIER_COUNT; t++)
            if (g.store.tier[t].enabled)
                out(&b, "kvfuse_store_hits_total{tier=\"%s\"} %lld\n", kvf_store_tier_name((kvf_store_tier)t),
                    (long long)g.store.tier[t].hits);
    } else {
        out(&b, "kvfuse_store_hits_total{tier=\"memory\"} %llu\n", (unsigned long long)s.cache_hits);
    }
    head(&b, "kvfuse_store_misses_total", "counter", "chunk-store misses per tier");
    if (g.have_store) {
        for (int t = 0; t < KVF_TIER_COUNT; t++)
            if (g.store.tier[t].enabled)
                out(&b, "kvfuse_store_misses_total{tier=\"%s\"} %lld\n", kvf_store_tier_name((kvf_store_tier)t),
                    (long long)g.store.tier[t].misses);
    } else {
        out(&b, "kvfuse_store_misses_total{tier=\"memory\"} %llu\n", (unsigned long long)s.cache_misses);
    }
    if (g.have_store) {
        head(&b, "kvfuse_store_evictions_total", "counter", "chunk-store entries evicted per tier");
        for (int t = 0; t < KVF_TIER_COUNT; t++)
            if (g.store.tier[t].enabled)
                out(&b, "kvfuse_store_evictions_total{tier=\"%s\"} %lld\n", kvf_store_tier_name((kvf_store_tier)t),
                    (long long)g.store.tier[t].evictions);
        head(&b, "kvfuse_store_bytes", "gauge", "bytes held per tier");
        for (int t = 0; t < KVF_TIER_COUNT; t++)
            if (g.store.tier[t].enabled && g.store.tier[t].bytes >= 0)
                out(&b, "kvfuse_store_bytes{tier=\"%s\"} %lld\n", kvf_store_tier_name((kvf_store_tier)t),
                    (long long)g.store.tier[t].bytes);
        head(&b, "kvfuse_store_errors_total", "counter", "failed store reads or writes per tier");
        for (int t = 0; t < KVF_TIER_COUNT; t++)
            if (g.store.tier[t].enabled)
                out(&b, "kvfuse_store_errors_total{tier=\"%s\"} %lld\n", kvf_store_tier_name((kvf_store_tier)t),
                    (long long)g.store.tier[t].errors);
        gauge(&b, "kvfuse_store_write_queue", "chunk writes waiting for the disk/remote tiers",
              (double)g.store.queued);
    }

    counter(&b, "kvfuse_decode_steps_total", "batched decode steps", s.decode_steps);
    counter(&b, "kvfuse_decode_rows_total", "tokens decoded in batched steps (rows / steps = mean batch)", s.decode_rows);
    gauge(&b, "kvfuse_decode_seconds_total", "time in decode steps", s.decode_seconds);
    counter(&b, "kvfuse_prefill_units_total", "prefill units (fused prefills and plain prefill chunks)", s.prefill_units);
    counter(&b, "kvfuse_prefill_tokens_total", "prompt tokens prefilled", s.prefill_tokens);
    gauge(&b, "kvfuse_prefill_seconds_total", "time in prefill units", s.prefill_seconds);

    gauge(&b, "kvfuse_queue_depth", "requests waiting for a slot", g.st.queued);
    gauge(&b, "kvfuse_active_requests", "requests holding a slot", g.st.active);
    gauge(&b, "kvfuse_slots", "session slots (--parallel)", g.st.slots);
    gauge(&b, "kvfuse_queue_limit", "requests that may wait before 429 (--queue)", g.st.max_queue);
    gauge(&b, "kvfuse_documents", "documents in the registry", (double)g.st.documents);
    gauge(&b, "kvfuse_chunk_caches", "chunk caches open (one per tenant namespace in use)", g.n_caches);
    gauge(&b, "kvfuse_resident_memory_bytes", "resident set size of the server", (double)srv_rss_bytes());
    gauge(&b, "kvfuse_kv_resident_bytes", "memory the slots' KV caches hold now (committed as tokens arrive)",
          (double)g.st.kv_resident);
    gauge(&b, "kvfuse_kv_reserved_bytes", "address space the slots reserve for their KV caches (--ctx x --parallel)",
          (double)g.st.kv_reserved);
    gauge(&b, "kvfuse_kv_budget_tokens", "KV tokens the slots may hold at once (--kv-budget; 0 = no limit)",
          (double)g.st.kv_budget);
    if (g.audit.enabled) render_audit(&b, &g.audit);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}
