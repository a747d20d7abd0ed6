/* server_flow.h - KVFlow in `kvfuse serve` (issue 13, part 3; ../shared/docs/memory-and-reuse.md):
 * requests may name the agent workflow they belong to, their step and the steps that run next
 * (kvfuse: {"workflow": id, "step": s, "next": [...]}). The registry learns each workflow's step
 * graph from those hints (which chunk keys a step's documents have, which steps follow which)
 * and, when a step starts, turns it into steps-to-execution for every key the workflow knows:
 * 0 for the step starting, 1 for its next steps, and so on along the graph; steps it cannot
 * reach get no hint. The chunk caches then evict by that distance instead of plain LRU, and the
 * next steps' chunks are read up from the disk / Redis tiers while this step runs.
 * Inference thread only. */
#ifndef KVF_SERVER_FLOW_H
#define KVF_SERVER_FLOW_H

#include "kvfuse.h"
#include "store/chunk.h"

#define SRV_FLOW_NAME  64 /* bytes of a workflow id or step name, NUL included */
#define SRV_FLOW_NEXT  16 /* next steps a request may name */
#define SRV_FLOW_MAX   256 /* workflows remembered per server (least recently used dropped) */
#define SRV_FLOW_STEPS 64  /* steps per workflow (a hint naming more is ignored) */

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

/* Distance of step `step` from step `from` in workflow (ns, wf) as the registry knows it now
 * (0 = itself, -1 = unknown or unreachable). For tests and /metrics. */
int srv_flow_distance(const srv_flow *f, const char *ns, const char *wf, const char *from,
                      const char *step);

#endif
