/* common.c - status strings, per-thread error messages, logging, allocation (heap and
 * demand-paged reservations) and clocks. */
#include "common.h"

#include <stdatomic.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

const char *kvf_version(void) {
    return KVF_VERSION;
}

const char *kvf_status_str(kvf_status s) {
    switch (s) {
#define KVF_X(name, val, msg)                                                                  \
    case KVF_##name:                                                                           \
        return msg;
        KVF_STATUS_MAP(KVF_X)
#undef KVF_X
    }
    return "unknown status";
}

/* ---- errors ---------------------------------------------------------------------------- */

static _Thread_local char g_errmsg[1024];

const char *kvf_errmsg(void) {
    return g_errmsg;
}

kvf_status kvf_set_error(kvf_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_errmsg, sizeof g_errmsg, fmt, ap);
    va_end(ap);
    return status;
}

void kvf_error_prefix(const char *fmt, ...) {
    char    prefix[512], old[sizeof g_errmsg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_errmsg, sizeof old);
    size_t np = strlen(prefix), no = strlen(old);
    if (np > sizeof g_errmsg - 1) np = sizeof g_errmsg - 1;
    if (no > sizeof g_errmsg - 1 - np) no = sizeof g_errmsg - 1 - np;
    memcpy(g_errmsg, prefix, np);
    memcpy(g_errmsg + np, old, no);
    g_errmsg[np + no] = 0;
}

void kvf_abort(const char *file, int line, const char *expr) {
    fprintf(stderr, "kvfuse: internal error at %s:%d: assertion `%s` failed\n", file, line,
            expr);
    fflush(stderr);
    abort();
}

/* ---- logging --------------------------------------------------------------------------- */

static atomic_int g_log_level = KVF_LOG_INFO; /* atomic: set while other threads log */

void kvf_set_log_level(int level) {
    atomic_store_explicit(&g_log_level, level, memory_order_relaxed);
}

void kvf_log(int level, const char *fmt, ...) {
    if (level > atomic_load_explicit(&g_log_level, memory_order_relaxed)) return;
    static const char *names[] = {"error", "warning", "info", "debug"};
    va_list            ap;
    va_start(ap, fmt);
    fprintf(stderr, "kvfuse %s: ", names[level < 0 ? 0 : level > 3 ? 3 : level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- allocation ------------------------------------------------------------------------ */

static long g_fail_after; /* 0: off; n > 0: the n-th allocation from now fails */

void kvf_alloc_fail_after(long n) {
    g_fail_after = n;
}

static int alloc_should_fail(void) {
    if (g_fail_after <= 0) return 0;
    return --g_fail_after == 0;
}

void *kvf_malloc(size_t n) {
    if (alloc_should_fail()) return NULL;
    return malloc(n ? n : 1);
}

void *kvf_calloc(size_t count, size_t size) {
    if (alloc_should_fail()) return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *kvf_realloc(void *p, size_t n) {
    if (alloc_should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void kvf_free(void *p) {
    free(p);
}

void *kvf_alloc_aligned(size_t n) {
    if (alloc_should_fail()) return NULL;
    size_t rounded;
    if (kvf_add_size(n, KVF_ALIGN - 1, &rounded)) return NULL;
    rounded &= ~(size_t)(KVF_ALIGN - 1);
    void *p = NULL;
    if (posix_memalign(&p, KVF_ALIGN, rounded ? rounded : KVF_ALIGN) != 0) return NULL;
    memset(p, 0, rounded ? rounded : KVF_ALIGN);
    return p;
}

void kvf_free_aligned(void *p) {
    free(p);
}

size_t kvf_page_size(void) {
    long ps = sysconf(_SC_PAGESIZE);
    return ps > 0 ? (size_t)ps : 4096;
}

void *kvf_vmem_reserve(size_t n) {
    if (alloc_should_fail() || n == 0) return NULL;
    /* MAP_NORESERVE: no swap reservation, so untouched address space is not counted against
     * the commit limit (overcommit modes 0 and 1). */
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_NOHUGEPAGE
    /* huge pages would commit 2 MiB around the first write: memory would no longer follow the
     * tokens held */
    madvise(p, n, MADV_NOHUGEPAGE);
#endif
    return p;
}

void kvf_vmem_release(void *p, size_t n) {
    if (p) munmap(p, n);
}

void kvf_vmem_discard(void *p, size_t off, size_t end) {
    size_t ps = kvf_page_size();
    off       = (off + ps - 1) / ps * ps; /* p is page aligned (mmap) */
    end       = end / ps * ps;
    if (end > off) madvise((char *)p + off, end - off, MADV_DONTNEED);
}

size_t kvf_vmem_resident(const void *p, size_t n) {
    size_t        ps = kvf_page_size(), pages = (n + ps - 1) / ps, res = 0;
    unsigned char vec[4096]; /* 16 MiB of pages per call: a 32k-token reservation in ~50 */
    for (size_t i = 0; i < pages; i += sizeof vec) {
        size_t k = pages - i < sizeof vec ? pages - i : sizeof vec;
        if (mincore((char *)p + i * ps, k * ps, vec) != 0) return 0;
        for (size_t j = 0; j < k; j++) res += vec[j] & 1;
    }
    return res * ps;
}

char *kvf_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char  *b   = malloc(cap);
    while (b) {
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
        if (cap - n - 1 == 0) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!b || err) {
        free(b);
        errno = err ? EIO : ENOMEM;
        return NULL;
    }
    b[n] = 0;
    if (len) *len = n;
    return b;
}

char *kvf_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char  *r = kvf_malloc(n);
    if (r) memcpy(r, s, n);
    return r;
}

/* ---- clocks ---------------------------------------------------------------------------- */

uint64_t kvf_time_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double kvf_time_ms(void) {
    return (double)kvf_time_ns() / 1e6;
}
