/* server_metrics.h - counters of `kvfuse serve` and their Prometheus text exposition
 * (GET /metrics). Thread-safe: HTTP threads count requests, the inference thread counts jobs,
 * decode steps and chunk-cache lookups; gauges (queue depth, slots, store tiers, memory) are
 * read from a callback when the page is rendered. */
#ifndef KVF_SERVER_METRICS_H
#define KVF_SERVER_METRICS_H

#include "kvfuse.h"
#include "server/server_types.h"

/* What the metrics count of a job that left the server (srv_job_outcome_of in server_api.h). */
typedef struct srv_job_outcome {
    int            err_status;    /* 0 completed, 499 client gone, 504 timed out, other: error */
    int32_t        n_prompt, n_gen, cached_tokens;
    double         ttft_ms;       /* 0: no first token */
    bool           fused;         /* documents fused with method `method` */
    kvf_method     method;
    kvf_fuse_stats fst;
} srv_job_outcome;

/* The live fidelity audit (server_audit.h): fused requests also prefilled in full when idle. */
typedef struct srv_audit_method_stats {
    uint64_t n;          /* audits finished */
    uint64_t top1_agree; /* of them: fused and full first token (argmax) the same */
    uint64_t n_answer;   /* of them: greedy answers compared */
    double   kl_sum;     /* sum of first-token KL(full || fused), nats */
    double   f1_sum;     /* sum of the answers' token F1 */
} srv_audit_method_stats;

typedef struct srv_audit_stats {
    bool                   enabled;
    uint64_t               sampled;   /* fused requests picked for an audit */
    uint64_t               skipped;   /* picked but dropped: too many audits waiting */
    uint64_t               completed; /* audits finished */
    uint64_t               units;     /* audit work units run (prefill micro-batches, decode steps) */
    uint64_t               yields;    /* times a live request arrived with an audit in progress */
    int32_t                pending;   /* audits waiting or in progress */
    double                 seconds;   /* time spent in audit work */
    srv_audit_method_stats m[KVF_METHOD_COUNT];
} srv_audit_stats;

typedef struct srv_gauges {
    srv_status      st;
    srv_audit_stats audit;       /* enabled false without --audit-rate */
    bool            have_store;  /* store: per-tier statistics below */
    kvf_store_stats store;       /* summed over the tenants' stores */
    int32_t         n_caches;    /* chunk caches (tenant namespaces) open */
} srv_gauges;

srv_metrics *srv_metrics_new(void);
void         srv_metrics_free(srv_metrics *m);
void         srv_metrics_set_source(srv_metrics *m, void (*fn)(void *user, srv_gauges *out),
                                    void *user);

/* An HTTP response sent with this status. */
void srv_metrics_request(srv_metrics *m, srv_endpoint ep, int status);
/* A job left the server, with any outcome. */
void srv_metrics_job(srv_metrics *m, const srv_job_outcome *j);
/* A job refused at admission (429 busy, 503 shutting down). */
void srv_metrics_rejected(srv_metrics *m, int status);
/* Chunk-cache lookups by fusion (all tiers together). */
void srv_metrics_cache(srv_metrics *m, int64_t hits, int64_t misses);
/* KVFlow computed `chunks` of the next workflow steps' documents ahead, in idle time. */
void srv_metrics_flow_compute(srv_metrics *m, int64_t chunks, double ms);
/* One batched decode step of `rows` requests. */
void srv_metrics_decode_step(srv_metrics *m, int rows, double ms);
/* One prefill unit (a fused prefill or a chunk of a plain one). */
void srv_metrics_prefill(srv_metrics *m, int32_t tokens, double ms);

/* The exposition text (malloc'd, NUL-terminated; *len its length); NULL when out of memory. */
char *srv_metrics_render(srv_metrics *m, size_t *len);

/* Resident set size of this process in bytes (from /proc/self/statm; 0 if unknown). */
int64_t srv_rss_bytes(void);

#endif /* KVF_SERVER_METRICS_H */
