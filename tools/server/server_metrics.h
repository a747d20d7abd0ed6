/* server_metrics.h - counters of `kvfuse serve` and their Prometheus text exposition
 * (GET /metrics). Thread-safe: HTTP threads count requests, the inference thread counts jobs,
 * decode steps and chunk-cache lookups; gauges (queue depth, slots, store tiers, memory) are
 * read from a callback when the page is rendered. */
#ifndef KVF_SERVER_METRICS_H
#define KVF_SERVER_METRICS_H

#include "server_api.h"

typedef struct srv_gauges {
    srv_status      st;
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
/* A job left the server (any outcome: err_status 0 = completed, 499 = client gone, 504 =
 * timed out, other = error). Reads the job's statistics (caller holds j->mu or owns it). */
void srv_metrics_job(srv_metrics *m, const srv_job *j);
/* A job refused at admission (429 busy, 503 shutting down). */
void srv_metrics_rejected(srv_metrics *m, int status);
/* Chunk-cache lookups by fusion (all tiers together). */
void srv_metrics_cache(srv_metrics *m, int64_t hits, int64_t misses);
/* One batched decode step of `rows` requests. */
void srv_metrics_decode_step(srv_metrics *m, int rows, double ms);
/* One prefill unit (a fused prefill or a chunk of a plain one). */
void srv_metrics_prefill(srv_metrics *m, int32_t tokens, double ms);

/* The exposition text (malloc'd, NUL-terminated; *len its length); NULL when out of memory. */
char *srv_metrics_render(srv_metrics *m, size_t *len);

/* Resident set size of this process in bytes (from /proc/self/statm; 0 if unknown). */
int64_t srv_rss_bytes(void);

#endif /* KVF_SERVER_METRICS_H */
