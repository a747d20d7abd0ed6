/* threadpool.h - a persistent pthread pool for data-parallel regions.
 *
 * kvf_pool_run(pool, fn, ctx) calls fn(ctx, ith, nth) on the calling thread (ith 0) and on every
 * worker that joins the region before the caller has finished its own call (ith 1..nth-1,
 * each at most once), and returns when all of those have finished. A worker that is late
 * (descheduled) skips the region, so `fn` must hand out work dynamically (kvf_claim) instead of
 * by thread index: whoever runs takes items until none are left. ith is only for per-thread
 * scratch. Workers spin briefly between regions (a forward pass issues hundreds of short
 * regions per token) and then sleep, so an idle pool costs no CPU. kvfuse's tasks use work
 * items whose results do not depend on which thread computes them, so output does not depend
 * on the thread count or on scheduling.
 */
#ifndef KVF_THREADPOOL_H
#define KVF_THREADPOOL_H

#include "kvfuse.h"

#include <stdatomic.h>
#include <stdint.h>

typedef struct kvf_pool kvf_pool;
typedef void (*kvf_task_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0 means the number of online CPUs. */
kvf_status kvf_pool_new(int n_threads, kvf_pool **out);
void       kvf_pool_free(kvf_pool *pool); /* NULL ok; joins the workers */
int        kvf_pool_size(const kvf_pool *pool);
/* Run fn on every thread of the pool; one region at a time (not reentrant). */
void kvf_pool_run(kvf_pool *pool, kvf_task_fn fn, void *ctx);

/* Dynamic work distribution inside a region: items 0..n-1 claimed one at a time from a shared
 * counter (reset it to 0 before kvf_pool_run). Returns -1 when none are left. */
static inline int64_t kvf_claim(atomic_int_fast64_t *counter, int64_t n) {
    int64_t i = atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    return i < n ? i : -1;
}

int kvf_n_cpus(void);

#endif /* KVF_THREADPOOL_H */
