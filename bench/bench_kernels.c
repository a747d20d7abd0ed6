/* bench_kernels.c - throughput of the compute kernels, per instruction set: matmul (GOP/s for
 * each panel kind at decode (1 row), small-batch (16) and prefill (256 rows) batch sizes, one-
 * and two-level activations, and float rows: gemm_f, see kernels.h) and attention (GFLOP/s). Single thread. The reference kernels are measured in
 * the same run as the baseline.
 *   build/bench/bench_kernels [--reps N] */
#include "common.h"
#include "engine/kernels/kernels.h"
#include "engine/matmul.h"
#include "engine/quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static double best_of(int reps, void (*fn)(void *), void *ctx) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = kvf_time_ms();
        fn(ctx);
        double t = kvf_time_ms() - t0;
        if (t < best) best = t;
    }
    return best;
}

typedef struct {
    const kvf_kernels *K;
    kvf_weight        *w;
    kvf_act           *x;
    int64_t            n;
    float             *y;
} mm_run;

static void run_mm(void *p) {
    mm_run *r = p;
    kvf_matmul(NULL, r->K, r->w, r->x, r->n, r->y, r->w->n_out, 0);
}

typedef struct {
    const kvf_kernels *K;
    const float      **q;
    float            **o;
    int32_t           *end;
    int                M;
    float             *kt, *v, *work; /* keys in tiles of 64 (kvf_kt_idx) */
} at_run;

static void run_attn(void *p) {
    at_run *r = p;
    for (int h = 0; h < 8; h++)
        r->K->attn(r->q, r->o, r->end, r->M, r->kt, r->v, 64, 0.125f, r->work);
}

int main(int argc, char **argv) {
    int reps = 5;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    const kvf_kernels *isas[3];
    int                n_isa = 0;
    isas[n_isa++]          = &kvf_kernels_ref;
    if (kvf_kernels_supported("avx2")) isas[n_isa++] = &kvf_kernels_avx2;
    if (kvf_kernels_supported("avx512")) isas[n_isa++] = &kvf_kernels_avx512;

    const struct {
        uint32_t type;
        int64_t  n_out, n_in;
    } shapes[] = {{KVF_TYPE_Q4_1, 1536, 576}, {KVF_TYPE_Q8_0, 1536, 576}, {KVF_TYPE_Q6_K, 1536, 768},
                  {KVF_TYPE_F16, 512, 576}};
    const int64_t rows[] = {1, 16, 256};
    printf("matmul, one thread: GOP/s (2 ops per multiply-add)\n");
    printf("%-6s %-6s %5s %6s", "type", "panel", "rows", "acts");
    for (int k = 0; k < n_isa; k++) printf(" %10s", isas[k]->name);
    printf("\n");
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const kvf_quant_traits *qt = kvf_quant_get(shapes[si].type);
        int64_t n_out = shapes[si].n_out, n_in = shapes[si].n_in;
        float  *f     = malloc(sizeof(float) * (size_t)(n_out * n_in));
        for (int64_t i = 0; i < n_out * n_in; i++) f[i] = sinf((float)i * 0.37f) * 0.1f;
        uint8_t *raw = malloc((size_t)(n_out * (n_in / qt->block) * qt->bytes));
        kvf_quantize(shapes[si].type, f, raw, n_out * n_in);
        kvf_weight w;
        kvf_weight_pack_raw(shapes[si].type, raw, n_out, n_in, NULL, 0, &w);
        for (size_t ri = 0; ri < sizeof rows / sizeof rows[0]; ri++)
            for (int two = 0; two < 3; two++) { /* q8, q16, float rows (gemm_f) */
                if (w.kind == KVF_PANEL_F32 && two) continue;
                int64_t    n = rows[ri];
                float     *x = malloc(sizeof(float) * (size_t)(n * n_in));
                for (int64_t i = 0; i < n * n_in; i++) x[i] = cosf((float)i * 0.11f);
                kvf_actbuf ab;
                kvf_act    a;
                kvf_actbuf_init(&ab, n, n_in);
                if (two == 2)
                    a = kvf_act_float(x, n_in, n_in);
                else
                    kvf_quantize_rows(NULL, &kvf_kernels_ref, x, n, n_in, n_in, two, &ab, &a);
                float *y = malloc(sizeof(float) * (size_t)(n * n_out));
                printf("%-6s %-6s %5lld %6s", qt->name,
                       w.kind == KVF_PANEL_F32 ? "f32" : qt->name,
                       (long long)n, w.kind == KVF_PANEL_F32 || two == 2 ? "f32" : two ? "q16" : "q8");
                for (int k = 0; k < n_isa; k++) {
                    mm_run r  = {isas[k], &w, &a, n, y};
                    int    rp = isas[k] == &kvf_kernels_ref && n > 1 ? 1 : reps;
                    double ms = best_of(rp, run_mm, &r);
                    printf(" %10.1f", 2.0 * (double)n * n_out * n_in / (ms * 1e6));
                }
                printf("\n");
                free(x), free(y);
                kvf_actbuf_free(&ab);
            }
        kvf_weight_free(&w);
        free(f), free(raw);
    }

    /* attention: 8 heads x M query rows against T keys, head_dim 64 */
    printf("\nattention, one thread, head_dim 64: GFLOP/s (QK and PV, causal work only)\n");
    printf("%6s %6s", "rows", "keys");
    for (int k = 0; k < n_isa; k++) printf(" %10s", isas[k]->name);
    printf("\n");
    const int Ms[] = {3, 48}, Ts[] = {512, 4096};
    for (int mi = 0; mi < 2; mi++)
        for (int ti = 0; ti < 2; ti++) {
            int     M = Ms[mi], T = Ts[ti];
            float  *kt = kvf_alloc_aligned(sizeof(float) * 64 * (size_t)T); /* T: whole tiles */
            float  *v  = kvf_alloc_aligned(sizeof(float) * (size_t)T * 64);
            for (int64_t i = 0; i < 64 * (int64_t)T; i++) kt[i] = sinf((float)i), v[i] = cosf((float)i);
            float      *qb = malloc(sizeof(float) * (size_t)(M * 64)), *ob = malloc(sizeof(float) * (size_t)(M * 64));
            const float *qp[64];
            float       *op[64];
            int32_t      end[64];
            for (int m = 0; m < M; m++) {
                for (int i = 0; i < 64; i++) qb[m * 64 + i] = sinf((float)(m * 64 + i) * 0.3f);
                qp[m] = qb + m * 64, op[m] = ob + m * 64, end[m] = T - M + 1 + m;
            }
            float *work = kvf_alloc_aligned(sizeof(float) * (size_t)kvf_attn_work_floats(M));
            double flops = 0;
            for (int m = 0; m < M; m++) flops += 4.0 * 64 * end[m];
            flops *= 8;
            printf("%6d %6d", M, T);
            for (int k = 0; k < n_isa; k++) {
                at_run r  = {isas[k], qp, op, end, M, kt, v, work};
                double ms = best_of(isas[k] == &kvf_kernels_ref ? 1 : reps, run_attn, &r);
                printf(" %10.1f", flops / (ms * 1e6));
            }
            printf("\n");
            kvf_free_aligned(kt), kvf_free_aligned(v), kvf_free_aligned(work);
            free(qb), free(ob);
        }
    return 0;
}
