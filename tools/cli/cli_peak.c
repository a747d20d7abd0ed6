/* cli_peak.c - the machine's limits, measured in a fraction of a second, so that `kvfuse bench`
 * can state every speed as a fraction of them: fp32 FMA throughput (8-wide FMAs on independent
 * accumulators, AVX2+FMA or AVX-512 as the CPU has them, else scalar) and read bandwidth (a
 * buffer much larger than the caches summed by every thread), each the best of 3 tries. */
#include "cli/cli.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FMA_ITERS (1 << 23)
#define PEAK_TRIES 3 /* the best of these: a busy machine only ever slows a try down */

__attribute__((target("avx2,fma"))) static float fma_avx2(float seed) {
    __m256 a[10], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) a[i] = _mm256_set1_ps(seed + (float)i);
    for (int it = 0; it < FMA_ITERS; it++) {
#pragma GCC unroll 10
        for (int i = 0; i < 10; i++) a[i] = _mm256_fmadd_ps(a[i], m, c); /* in registers */
    }
    __m256 s = a[0];
    for (int i = 1; i < 10; i++) s = _mm256_add_ps(s, a[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f"))) static float fma_avx512(float seed) {
    __m512 a[10], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) a[i] = _mm512_set1_ps(seed + (float)i);
    for (int it = 0; it < FMA_ITERS; it++) {
#pragma GCC unroll 10
        for (int i = 0; i < 10; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    __m512 s = a[0];
    for (int i = 1; i < 10; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

typedef struct {
    int          width; /* floats per FMA: 16, 8 */
    const float *buf;   /* bandwidth: this thread's slice */
    size_t       n;
    int          passes;
    double       sink;
} peak_job;

static void *fma_thread(void *p) {
    peak_job *j = p;
    j->sink     = j->width == 16 ? fma_avx512(1.0f) : fma_avx2(1.0f);
    return NULL;
}

__attribute__((target("avx2"))) static void *read_thread(void *p) {
    peak_job *j = p;
    __m256    s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (int pass = 0; pass < j->passes; pass++)
        for (size_t i = 0; i + 32 <= j->n; i += 32) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(j->buf + i));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(j->buf + i + 8));
            s2 = _mm256_add_ps(s2, _mm256_loadu_ps(j->buf + i + 16));
            s3 = _mm256_add_ps(s3, _mm256_loadu_ps(j->buf + i + 24));
        }
    float o[8];
    _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    j->sink = o[0] + o[3];
    return NULL;
}

int cli_measure_peak(int threads, const char *want, double *gflops, double *gbps, const char **isa) {
    *gflops = *gbps = 0;
    *isa         = "none";
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    __builtin_cpu_init();
    int width = __builtin_cpu_supports("avx512f") ? 16 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 8 : 0;
    if (!width) return -1;
    if (want && !strcmp(want, "avx2")) width = 8; /* the peak of the kernels in use */
    *isa = width == 16 ? "avx512" : "avx2";
    pthread_t th[64];
    peak_job  jobs[64];
    memset(jobs, 0, sizeof jobs);
    double best = 1e30, t0, ms;
    for (int t = 0; t < PEAK_TRIES; t++) {
        t0 = cli_now_ms();
        for (int i = 0; i < threads; i++) jobs[i].width = width, pthread_create(&th[i], NULL, fma_thread, &jobs[i]);
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        ms   = cli_now_ms() - t0;
        best = ms < best ? ms : best;
    }
    *gflops = (double)threads * FMA_ITERS * 10.0 * width * 2.0 / (best * 1e6);

    size_t n   = (size_t)256 << 20 >> 2; /* 256 MiB of floats */
    float *buf = malloc(n * sizeof(float));
    if (!buf) return -1;
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    size_t per = n / (size_t)threads / 32 * 32;
    best       = 1e30;
    for (int t = 0; t < PEAK_TRIES; t++) {
        t0 = cli_now_ms();
        for (int i = 0; i < threads; i++) {
            jobs[i].buf = buf + (size_t)i * per, jobs[i].n = per, jobs[i].passes = 1;
            pthread_create(&th[i], NULL, read_thread, &jobs[i]);
        }
        for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
        ms   = cli_now_ms() - t0;
        best = ms < best ? ms : best;
    }
    *gbps = (double)per * (double)threads * sizeof(float) / (best * 1e6);
    free(buf);
    return 0;
}
