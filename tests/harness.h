/* harness.h - a minimal test harness: typed checks that print both operands, and a summary
 * line "N passed, N failed" that scripts/run-tests.sh adds up.
 *
 * Usage: define test functions `static void test_x(void)`, call them through RUN(test_x) from
 * main(), and `return TEST_REPORT();`.
 */
#ifndef KVF_TEST_HARNESS_H
#define KVF_TEST_HARNESS_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_pass, t_fail;
static const char *t_current = "";

#define T_FAILMSG(...)                                                                         \
    do {                                                                                       \
        t_fail++;                                                                              \
        fprintf(stderr, "FAIL %s (%s:%d): ", t_current, __FILE__, __LINE__);                   \
        fprintf(stderr, __VA_ARGS__);                                                          \
        fputc('\n', stderr);                                                                   \
    } while (0)

#define CHECK(c)                                                                               \
    do {                                                                                       \
        if (c)                                                                                 \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG("%s", #c);                                                               \
    } while (0)

#define CHECK_MSG(c, ...)                                                                      \
    do {                                                                                       \
        if (c)                                                                                 \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG(__VA_ARGS__);                                                            \
    } while (0)

#define CHECK_EQ(a, b)                                                                         \
    do {                                                                                       \
        long long a_ = (long long)(a), b_ = (long long)(b);                                    \
        if (a_ == b_)                                                                          \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG("%s == %s: %lld vs %lld", #a, #b, a_, b_);                               \
    } while (0)

#define CHECK_STR(a, b)                                                                        \
    do {                                                                                       \
        const char *a_ = (a), *b_ = (b);                                                       \
        if (a_ && b_ && strcmp(a_, b_) == 0)                                                   \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG("%s == %s: \"%s\" vs \"%s\"", #a, #b, a_ ? a_ : "(null)",                 \
                      b_ ? b_ : "(null)");                                                     \
    } while (0)

/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol)                                                                  \
    do {                                                                                       \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                         \
        if (fabs(a_ - b_) <= t_)                                                               \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG("%s ~= %s: %.9g vs %.9g (diff %.3g > %.3g)", #a, #b, a_, b_,             \
                      fabs(a_ - b_), t_);                                                      \
    } while (0)

/* Substring check, for error messages. */
#define CHECK_CONTAINS(hay, needle)                                                            \
    do {                                                                                       \
        const char *h_ = (hay), *n_ = (needle);                                                \
        if (h_ && strstr(h_, n_))                                                              \
            t_pass++;                                                                          \
        else                                                                                   \
            T_FAILMSG("\"%s\" should contain \"%s\"", h_ ? h_ : "(null)", n_);                 \
    } while (0)

#define RUN(fn)                                                                                \
    do {                                                                                       \
        t_current = #fn;                                                                       \
        int f0_   = t_fail;                                                                    \
        fn();                                                                                  \
        fprintf(stderr, "%s %s\n", t_fail == f0_ ? "ok  " : "FAIL", #fn);                      \
    } while (0)

#define TEST_REPORT() (printf("%d passed, %d failed\n", t_pass, t_fail), t_fail ? 1 : 0)

/* Deterministic pseudo-random numbers for test data (splitmix64). */
static unsigned long long t_rng_state = 0x9E3779B97F4A7C15ull;
static inline unsigned long long t_rand64(void) {
    unsigned long long z = (t_rng_state += 0x9E3779B97F4A7C15ull);
    z                    = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z                    = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [-1, 1) */
static inline float t_randf(void) {
    return (float)((double)(t_rand64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#endif /* KVF_TEST_HARNESS_H */
