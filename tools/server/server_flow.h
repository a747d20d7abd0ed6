/* server_flow.h - KVFlow in `kvfuse serve` (issue 13, part 3; ../shared/docs/memory-and-reuse.md):
 * requests may name the agent workflow they belong to, their step and the steps that run next
 * (kvfuse: {"workflow": id, "step": s, "next": [...]}). The registry learns each workflow's step
 * graph from those hints (which chunk keys a step's documents have, which steps follow which)
 * and, when a step starts, turns it into steps-to-execution for every key the workflow knows:
 * 0 for the step starting, 1 for its next steps, and so on along the graph; steps it cannot
 * reach get no hint. The chunk caches then evict by that distance instead of plain LRU, and the
 * next steps' chunks are read up from the disk / Redis tiers while this step runs. When a step
 * ends, the keys are hinted again from the steps after it; without a lower tier the scheduler
 * computes the next steps' documents in idle time (srv_flow_remember / srv_flow_take_doc).
 * Inference thread only. */
#ifndef KVF_SERVER_FLOW_H
#define KVF_SERVER_FLOW_H

#include "kvfuse.h"
#include "server/server_types.h"
#include "store/chunk.h"

#include <stdbool.h>

#define SRV_FLOW_NAME  64 /* bytes of a workflow id or step name, NUL included */
#define SRV_FLOW_NEXT  16 /* next steps a request may name */
#define SRV_FLOW_MAX   256 /* workflows remembered per server (least recently used dropped) */
#define SRV_FLOW_STEPS 64  /* steps per workflow (a hint naming more is ignored) */
#define SRV_FLOW_TOKENS (1 << 22) /* document tokens remembered over all workflows (16 MiB) */

/* the workflow hint of one request (all names NUL-terminated; wf[0] == 0: none) */
typedef struct srv_flow_hint {
    char wf[SRV_FLOW_NAME];
    char step[SRV_FLOW_NAME];
    char next[SRV_FLOW_NEXT][SRV_FLOW_NAME];
    int  n_next;
} srv_flow_hint;

typedef struct srv_flow srv_flow;

srv_flow *srv_flow_new(void);
void      srv_flow_free(srv_flow *f);

/* Step h->step of workflow (ns, h->wf) starts with the chunk keys `keys`: remember them and the
 * edges to h->next, then hint every key of the workflow to `cache` (ops->hint) by its distance
 * from this step, and ask `cache` to warm (ops->warm) the keys of the steps one edge away.
 * Returns the number of keys warmed, or -1 when out of memory (the hints are then skipped: the
 * caches stay LRU). */
int srv_flow_step(srv_flow *f, const char *ns, const srv_flow_hint *h, const kvf_chunk_key *keys,
                  int n_keys, kvf_chunk_cache *cache);

/* Step h->step of workflow (ns, h->wf) has finished: its keys are no longer needed now, so every
 * key of the workflow is hinted again by its distance from the step's next steps plus one (the
 * finished step's own keys: the way back to it, or no hint). Keeps what the next steps need
 * ahead of what just ran while the server waits for them. */
void srv_flow_step_done(srv_flow *f, const char *ns, const srv_flow_hint *h, kvf_chunk_cache *cache);

/* Remember what step h->step of workflow (ns, h->wf) computed: its prompt's prefix and
 * documents (segs[0 .. n_segs-2]; the question is not kept), which documents are shared
 * between tenants (shared[i] for segment i, NULL: none) and the fusion parameters, so that its
 * chunks can be computed ahead when the server is idle (srv_flow_take_doc). Call after
 * srv_flow_step. Tokens kept over all workflows are bounded (SRV_FLOW_TOKENS): the least
 * recently hinted workflows' documents are forgotten first. 0, or -1 when out of memory. */
int srv_flow_remember(srv_flow *f, const char *ns, const srv_flow_hint *h, const kvf_segment *segs,
                      int32_t n_segs, const uint8_t *shared, const kvf_fuse_params *fp);

/* One document to compute ahead: segs (prefix, document, a one-token question, the shape
 * kvf_session_precompute takes) point into the registry and stay valid until the next
 * srv_flow_step / srv_flow_remember / srv_flow_free. */
typedef struct srv_flow_doc {
    char            ns[SRV_NS_MAX];
    kvf_segment     segs[3];
    bool            shared; /* a document shared between tenants (its chunk goes to "shared") */
    kvf_fuse_params fp;
} srv_flow_doc;

/* KVFlow's prefetch where no lower tier holds the KV: the documents of the steps one edge
 * after the step that started last in each workflow (most recently hinted workflow first), as
 * they were when those steps last ran, each handed out once per step start. 1: *d filled; 0:
 * none left. has_doc: whether take would give one. */
int  srv_flow_take_doc(srv_flow *f, srv_flow_doc *d);
bool srv_flow_has_doc(const srv_flow *f);

/* Distance of step `step` from step `from` in workflow (ns, wf) as the registry knows it now
 * (0 = itself, -1 = unknown or unreachable). For tests and /metrics. */
int srv_flow_distance(const srv_flow *f, const char *ns, const char *wf, const char *from,
                      const char *step);

#endif
