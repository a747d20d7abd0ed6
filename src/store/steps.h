/* steps.h - KVFlow's steps-to-execution hints for the chunk caches' memory tiers (issue 13,
 * part 3; ../shared/docs/memory-and-reuse.md). A caller that knows an agent workflow's step
 * graph says, per chunk key, in how many steps it will be needed next (0: the step running
 * now); the caches then evict the entry needed furthest in the future first, and only among
 * equals (or entries without a hint, which count as never) the least recently used one.
 *
 * Hints come from independent sources (lanes): a workflow's step graph and the server's queue
 * may both speak of one key (a document shared by a workflow step and a plain request). Each
 * lane sets and clears only its own hint; a key's hint is the nearest of its lanes', so the
 * queue clearing its hint when a request ends leaves the workflow's standing.
 *
 * kvf_steps is a bounded map key -> steps per lane, filled before or after the key is cached.
 * When it is 3/4 full it drops the keys no lane hints any more and, if the live ones still
 * fill half of it, doubles (up to 2^20 keys); only when it cannot grow does it forget every
 * hint at once (advisory: the caches fall back to LRU until the next hints arrive). Not
 * thread-safe: the owning cache holds its lock around every call. */
#ifndef KVF_STORE_STEPS_H
#define KVF_STORE_STEPS_H

#include "kvfuse.h"

#include <stdint.h>

#define KVF_STEPS_NONE UINT32_MAX /* no hint: never needed, as far as anyone said */

typedef enum {
    KVF_HINT_FLOW  = 0, /* KVFlow: a workflow's steps to execution */
    KVF_HINT_QUEUE = 1, /* the server's queue: waiting (1) or running (2) requests' chunks */
    KVF_HINT_LANES = 2
} kvf_hint_lane;

typedef struct kvf_steps {
    uint8_t      (*keys)[16];
    uint32_t     (*steps)[KVF_HINT_LANES];
    uint8_t       *used;
    uint32_t       cap, n; /* cap: a power of two; n: slots used (cleared hints included) */
} kvf_steps;

/* an empty map for up to cap_hint keys (rounded up to a power of two; 0: 16384); KVF_E_NOMEM */
kvf_status kvf_steps_init(kvf_steps *t, uint32_t cap_hint);
void       kvf_steps_free(kvf_steps *t);
/* the hint of `key` (a chunk's 16-byte content address): the least over its lanes,
 * KVF_STEPS_NONE if none */
uint32_t   kvf_steps_get(const kvf_steps *t, const uint8_t key[16]);
/* set (or with KVF_STEPS_NONE clear) lane `lane`'s hint of `key`; a bad lane is ignored */
void       kvf_steps_set(kvf_steps *t, const uint8_t key[16], int lane, uint32_t steps);

#endif
