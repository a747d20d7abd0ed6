/* server_sched.h - the inference thread of `kvfuse serve`: a bounded request queue, a pool of
 * session slots, prefill scheduling, batched decoding (kvf_decode_batch), cancellation,
 * timeouts, and the chunk caches (one per tenant namespace).
 *
 * One thread owns the model's sessions and caches; HTTP threads only submit jobs, cancel them
 * and wait on each job's condition variable.
 *
 * Policy, per iteration of the inference loop:
 *   1. queued jobs that were cancelled (client gone) or timed out leave the queue;
 *   2. queued jobs take free slots in arrival order (a plain prompt prefers the slot whose
 *      previous tokens - same tenant only - share the longest prefix with it);
 *   3. at most K prefill units run (--prefill-per-step, default 1), oldest job first: a unit
 *      is one fused prefill (kvf_session_fuse, documents with a selective method) or one
 *      chunk of up to --prefill-chunk tokens of a plain prefill (no documents, or method full);
 *   4. decode steps for every slot that has a token to feed, each batched into one forward
 *      pass: one step, or, after prefill units that took P ms, steps for up to R * P ms
 *      (--decode-ratio R, default 1).
 *   5. only when no request is queued or holds a slot: one document of the next workflow
 *      steps computed ahead (KVFlow hints without a lower tier; server_flow.h), else one unit
 *      of the fidelity audit (--audit-rate; server_audit.h), within its CPU share (--audit-cpu).
 * So running requests get at least R / (1 + R) of the inference time while prompts wait
 * (a long prompt delays another request's next token by at most one unit), and a new request
 * waits for at most the units of the requests that arrived before it plus the decode bursts
 * between them. Cancelled and timed-out requests leave at the next step.
 */
#ifndef KVF_SERVER_SCHED_H
#define KVF_SERVER_SCHED_H

#include "server/server_api.h"
#include "server/server_audit.h"
#include "server/server_metrics.h"

typedef struct srv_sched srv_sched;

typedef struct srv_sched_params {
    int32_t     n_slots;       /* sessions (requests decoded together); 1..64 */
    int32_t     n_ctx;         /* tokens per session */
    int32_t     n_threads;     /* compute threads per session; 0 = online CPUs */
    kvf_kv_type kv_type;       /* storage of the sessions' KV caches */
    int32_t     max_queue;     /* jobs that may wait for a slot before 429 */
    int32_t     prefill_chunk; /* tokens of one plain prefill unit */
    int32_t     prefill_units; /* K: prefill units between decode bursts */
    double      decode_ratio;  /* R: decode time after prefill units, relative to their time */
    size_t      cache_bytes;   /* memory chunk cache of each namespace (0 = unbounded) */
    double      aging_ms;      /* queue order (after KVShare): jobs waiting at most this long go
                                  by the share of their prompt's KV already cached (documents'
                                  chunks, a slot's kept prefix), older ones first in arrival
                                  order; 0 = arrival order only */
    int32_t     overtake_max;  /* ... and a job that later arrivals have overtaken this many
                                  times goes next, in arrival order too (0 = no such bound) */
    int64_t     kv_budget;     /* KV cache tokens all slots may hold at once (0 = no limit): the
                                  sessions' KV is demand-paged, so this bounds its memory; a job
                                  is admitted when the running jobs' prompt + max_tokens and its
                                  own fit (idle slots' kept prefixes are dropped to make room),
                                  or when no other job runs */
    const kvf_store_params *store; /* NULL: memory caches; else every namespace opens a chunk
                                      store with these parameters (borrowed), its own
                                      directory DIR/t-<hash> and Redis prefix kvf:t-<hash>: when
                                      multi_tenant */
    bool        multi_tenant;  /* one chunk cache per tenant namespace, plus "shared" */
    int32_t     conv_block;    /* conversations outlive their slot: a plain prompt's KV is kept
                                  in its tenant's chunk cache (memory, then the store's tiers)
                                  in blocks of this many tokens when its job ends, and a later
                                  prompt that starts with the same tokens restores it in any
                                  slot (kvf_session_prefix_save/load); 0 = off */
    int32_t     conv_budget;   /* EpiCache: a plain chat prompt longer than this many tokens has
                                  its history (every message but the last) prefilled block by
                                  block under this many KV cells per slot, evicting what the
                                  question's episode attends to least (kvf_session_prefill_budget);
                                  0 = off; >= 512 */
    int32_t     conv_episodes; /* episodes a history is clustered into (4) */
    bool        conv_probe_question; /* the question itself is the eviction probe (--conv-probe
                                        question, the default; false: the question's episode) */
    int32_t     conv_chunk;    /* > 0: every layer and head keeps the same history cells, whole
                                  runs of this many (--conv-chunk; after ChunkKV); 0: each head
                                  its own top cells (0); not with conv_layers */
    const char *conv_layers;   /* EpiCache's layer budgets: a profile from `kvfuse conv-profile`
                                  (NULL: every layer gets conv_budget) */
    float       conv_alpha;    /* how strongly the profile skews the budgets (1.3) */
    bool        flow_compute;  /* KVFlow without a lower tier (no store): when idle, compute the
                                  chunks of the next steps' documents that are not cached (one
                                  document per unit, before audit work); default on */
    srv_audit_params audit;    /* live fidelity audit (audit.rate 0 = off; n_ctx, n_threads
                                  and kv_type are the slots') */
    /* tests: called on the inference thread after every audit unit (no lock held) */
    void (*audit_hook)(void *user, int unit_result);
    void *audit_hook_user;
} srv_sched_params;

srv_sched_params srv_sched_default_params(void);

/* Creates the sessions and starts the inference thread. NULL with a message on failure. */
srv_sched *srv_sched_new(const kvf_model *m, const srv_sched_params *p, srv_metrics *met,
                         char *err, size_t errlen);
/* Stops (see shutdown) and frees. */
void srv_sched_free(srv_sched *s);

typedef enum { SRV_SUBMIT_OK = 0, SRV_SUBMIT_BUSY = -1, SRV_SUBMIT_SHUTDOWN = -2 } srv_submit;

/* While held, queued jobs stay queued (running ones go on); releasing admits them together.
 * For tests that need several jobs to start in the same scheduling step. */
void srv_sched_hold(srv_sched *s, bool hold);
/* Queue a job (the scheduler takes its own reference). BUSY when slots and queue are full
 * (*retry_after: a suggested wait in seconds), SHUTDOWN when stopping. */
srv_submit srv_sched_submit(srv_sched *s, srv_job *j, int *retry_after);
/* The client is gone: the job is dropped at the next step (finished with status 499). */
void srv_sched_cancel(srv_sched *s, srv_job *j);
/* Stop accepting jobs, finish queued and running ones with 503, join the thread. */
void srv_sched_shutdown(srv_sched *s);

void srv_sched_status(srv_sched *s, srv_status *out);
/* Store tier statistics summed over the namespaces' caches (have_store false without
 * --store / --redis). */
void srv_sched_gauges(srv_sched *s, srv_gauges *g);
/* The fidelity audit (NULL when off): for GET /v1/audit. */
srv_audit *srv_sched_audit(srv_sched *s);

#endif /* KVF_SERVER_SCHED_H */
