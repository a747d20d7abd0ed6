/* threadpool.c - persistent worker threads with spin-then-sleep waiting and late-join skipping.
 *
 * A region is published in one atomic word `state` = (generation << 32) | entered-count, with a
 * CLOSED bit. A worker joins a region by incrementing the count with a CAS while the region is
 * open and current; its thread index is its join order. When the caller has finished its own
 * share it sets CLOSED and waits only for the workers that joined. A worker that was
 * descheduled (say, by another process on a 2-core machine) and wakes up late finds the region
 * closed and skips it, so the caller never waits a whole time slice for it. This requires that
 * tasks distribute work dynamically (kvf_claim) rather than by thread index: whoever is
 * present does all the work.
 *
 * Sleeping: workers spin on `state` for a while, then sleep on `cv`. They register in
 * `n_sleeping` and re-check `state` under the mutex before waiting; the caller broadcasts after
 * publishing whenever it sees a sleeper (seq_cst on both sides), so no wake-up is lost.
 */
#include "engine/threadpool.h"
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#    include <immintrin.h>
#    define CPU_RELAX() _mm_pause()
#else
#    define CPU_RELAX() ((void)0)
#endif

#define SPIN_ITERS 20000 /* ~0.1-0.5 ms of polling before sleeping */
#define CLOSED ((uint64_t)1 << 31)
#define COUNT_MASK (CLOSED - 1)

struct kvf_pool {
    int        n;
    pthread_t *threads;
    uint32_t   gen; /* caller-side generation counter */

    _Alignas(64) atomic_uint_fast64_t state;
    _Alignas(64) atomic_int n_done;
    _Alignas(64) atomic_int n_sleeping;
    atomic_int      quit;
    kvf_task_fn     fn;
    void           *ctx;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
};

int kvf_n_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

static void *worker_main(void *p) {
    kvf_pool *pool = p;
    uint64_t  seen = 0; /* generation last seen */
    for (;;) {
        uint64_t s;
        int      spins = 0;
        while (((s = atomic_load(&pool->state)) >> 32) == seen && !atomic_load(&pool->quit)) {
            if (++spins < SPIN_ITERS) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while ((atomic_load(&pool->state) >> 32) == seen && !atomic_load(&pool->quit))
                pthread_cond_wait(&pool->cv, &pool->mu);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mu);
            spins = 0;
        }
        if (atomic_load(&pool->quit)) return NULL;
        seen = s >> 32;
        /* join if the region is still open */
        int ith = -1;
        while (!(s & CLOSED) && (s >> 32) == seen) {
            if (atomic_compare_exchange_weak(&pool->state, &s, s + 1)) {
                ith = (int)(s & COUNT_MASK) + 1;
                break;
            }
        }
        if (ith < 0) continue; /* closed or superseded: skip */
        pool->fn(pool->ctx, ith, pool->n);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
}

kvf_status kvf_pool_new(int n_threads, kvf_pool **out) {
    *out = NULL;
    if (n_threads <= 0) n_threads = kvf_n_cpus();
    if (n_threads > 1024) return kvf_set_error(KVF_E_INVAL, "too many threads: %d", n_threads);
    kvf_pool *pool = kvf_calloc(1, sizeof *pool);
    if (!pool) return kvf_set_error(KVF_E_NOMEM, "out of memory creating thread pool");
    pool->n       = n_threads;
    pool->threads = kvf_calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) {
        kvf_free(pool);
        return kvf_set_error(KVF_E_NOMEM, "out of memory creating thread pool");
    }
    atomic_init(&pool->state, CLOSED);
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
            pool->n = i; /* join the ones that started */
            kvf_pool_free(pool);
            return kvf_set_error(KVF_E_NOMEM, "cannot start thread %d of %d", i, n_threads);
        }
    }
    *out = pool;
    return KVF_OK;
}

void kvf_pool_free(kvf_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->quit, 1);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    kvf_free(pool->threads);
    kvf_free(pool);
}

int kvf_pool_size(const kvf_pool *pool) {
    return pool ? pool->n : 1;
}

void kvf_pool_run(kvf_pool *pool, kvf_task_fn fn, void *ctx) {
    if (!pool || pool->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn  = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    pool->gen++;
    if (pool->gen == 0) pool->gen = 1; /* generation 0 means "none seen" to workers */
    atomic_store(&pool->state, (uint64_t)pool->gen << 32); /* seq_cst: publishes fn/ctx */
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mu);
        pthread_cond_broadcast(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    fn(ctx, 0, pool->n);
    int joined = (int)(atomic_fetch_or(&pool->state, CLOSED) & COUNT_MASK);
    int spins  = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) != joined) {
        if (++spins < SPIN_ITERS)
            CPU_RELAX();
        else
            sched_yield();
    }
}
