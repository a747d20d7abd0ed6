/* steps.h - KVFlow's steps-to-execution hints for the chunk caches' memory tiers (issue 13,
 * part 3; ../shared/docs/memory-and-reuse.md). A caller that knows an agent workflow's step
 * graph says, per chunk key, in how many steps it will be needed next (0: the step running
 * now); the caches then evict the entry needed furthest in the future first, and only among
 * equals (or entries without a hint, which count as never) the least recently used one.
 *
 * kvf_steps is a bounded map key -> steps, filled before or after the key is cached. It is
 * advisory: when it is full it forgets every hint at once (the caches fall back to LRU until
 * the next hints arrive). Not thread-safe: the owning cache holds its lock around every call. */
#ifndef KVF_STORE_STEPS_H
#define KVF_STORE_STEPS_H

#include "kvfuse.h"

#include <stdint.h>

#define KVF_STEPS_NONE UINT32_MAX /* no hint: never needed, as far as anyone said */

typedef struct kvf_steps {
    uint8_t      (*keys)[16];
    uint32_t      *steps;
    uint8_t       *used;
    uint32_t       cap, n; /* cap: a power of two */
} kvf_steps;

/* an empty map for up to cap_hint keys (rounded up to a power of two; 0: 16384); KVF_E_NOMEM */
kvf_status kvf_steps_init(kvf_steps *t, uint32_t cap_hint);
void       kvf_steps_free(kvf_steps *t);
/* the hint of `key` (a chunk's 16-byte content address), KVF_STEPS_NONE if none */
uint32_t   kvf_steps_get(const kvf_steps *t, const uint8_t key[16]);
/* set (or with KVF_STEPS_NONE clear) the hint of `key` */
void       kvf_steps_set(kvf_steps *t, const uint8_t key[16], uint32_t steps);

#endif
