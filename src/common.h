/* common.h - private helpers shared by every kvfuse source file.
 *
 * Assertions that stay on in release builds (for broken invariants, never for bad input),
 * the per-thread "last error" message behind kvf_errmsg(), checked size arithmetic,
 * aligned allocation, and a monotonic clock. Input errors are reported with kvf_set_error()
 * and a kvf_status return; nothing in the library calls exit().
 */
#ifndef KVF_COMMON_H
#define KVF_COMMON_H

#include "kvfuse.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define KVF_UNUSED(x) ((void)(x))
#define KVF_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVF_MAX(a, b) ((a) > (b) ? (a) : (b))
#define KVF_ALIGN 64 /* cache line; also the widest vector (AVX-512) */

#if defined(__GNUC__)
#    define KVF_PRINTF(f, a) __attribute__((format(printf, f, a)))
#    define KVF_NORETURN __attribute__((noreturn))
#    define KVF_LIKELY(x) __builtin_expect(!!(x), 1)
#    define KVF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#    define KVF_PRINTF(f, a)
#    define KVF_NORETURN
#    define KVF_LIKELY(x) (x)
#    define KVF_UNLIKELY(x) (x)
#endif

/* Broken invariant: print where and abort. Kept in release builds (a wrong answer is worse
 * than a crash). Never use for conditions that input data can trigger. */
KVF_NORETURN void kvf_abort(const char *file, int line, const char *expr);
#define KVF_ASSERT(x)                                                                          \
    do {                                                                                       \
        if (KVF_UNLIKELY(!(x))) kvf_abort(__FILE__, __LINE__, #x);                             \
    } while (0)

/* Record a message for kvf_errmsg() on this thread and return `status` (for one-line returns:
 * `return kvf_set_error(KVF_E_FORMAT, "bad %s", what);`). */
kvf_status kvf_set_error(kvf_status status, const char *fmt, ...) KVF_PRINTF(2, 3);
/* Prepend context to the current message ("loading model: " + previous). */
void kvf_error_prefix(const char *fmt, ...) KVF_PRINTF(1, 2);

/* Informational messages to stderr, silenced by kvf_set_log_level(). */
void kvf_log(int level, const char *fmt, ...) KVF_PRINTF(2, 3);
#define KVF_LOG_ERROR 0
#define KVF_LOG_WARN 1
#define KVF_LOG_INFO 2
#define KVF_LOG_DEBUG 3

/* Allocation. All return NULL on failure (callers turn that into KVF_E_NOMEM).
 * kvf_alloc_aligned memory is KVF_ALIGN-aligned, zeroed, and released with kvf_free_aligned. */
void *kvf_malloc(size_t n);
void *kvf_calloc(size_t count, size_t size);
void *kvf_realloc(void *p, size_t n);
void  kvf_free(void *p);
void *kvf_alloc_aligned(size_t n);
void  kvf_free_aligned(void *p);
char *kvf_strdup(const char *s);
/* A whole file's bytes, NUL-terminated (the length in *len when len is not NULL), from
 * malloc: the caller frees with free(). NULL when it cannot be opened (errno from fopen) or
 * read (EIO), or out of memory (ENOMEM). */
char *kvf_read_file(const char *path, size_t *len);

/* Demand-paged reservations (the session KV cache, after vAttention): kvf_vmem_reserve maps n
 * bytes of zero-filled address space without committing memory; the kernel commits a page when
 * it is first written. kvf_vmem_discard returns the pages lying wholly inside [off, end) (they
 * read as zeros again), kvf_vmem_resident counts the bytes of [p, p + n) in memory (mincore),
 * kvf_vmem_release unmaps. The fault-injection hook below applies to kvf_vmem_reserve too. */
void  *kvf_vmem_reserve(size_t n);
void   kvf_vmem_release(void *p, size_t n);
void   kvf_vmem_discard(void *p, size_t off, size_t end);
size_t kvf_vmem_resident(const void *p, size_t n);
size_t kvf_page_size(void);

/* Test hook (fault injection): make the n-th allocation from now fail (0 disables). */
void kvf_alloc_fail_after(long n);

/* Overflow-checked arithmetic: return 0 and set *out on success, -1 on overflow. */
static inline int kvf_mul_size(size_t a, size_t b, size_t *out) {
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int kvf_add_size(size_t a, size_t b, size_t *out) {
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

/* Monotonic time in milliseconds (double) and nanoseconds. */
double   kvf_time_ms(void);
uint64_t kvf_time_ns(void);

#endif /* KVF_COMMON_H */
