/* adaptive.c - `--ratio auto`: how many tokens a selective method recomputes, per request.
 *
 * The signal is the selection score the method already computed during fusion: for a3 the
 * question's attention to each document token at the selection layer (pooled), for cacheblend
 * how far each token's value (or key) moved when recomputed at that layer. Both are a mass
 * over the candidate tokens. When the mass is concentrated on a few tokens (the question
 * attends to one passage; only some tokens deviate), a small budget already covers most of it;
 * when it is spread (attention diffuse, many tokens deviate), the budget grows. The rule: the
 * smallest k such that the k highest-scoring candidates hold at least `fidelity` of the total
 * mass, within [ratio_min, ratio_max] of the prompt (so a fused request never costs more than
 * ratio_max of a full prefill, and never recomputes less than ratio_min).
 *
 * Attention sinks: at the selection layer of Qwen2.5-Coder-0.5B a few tokens hold nearly all
 * of the question's attention to the documents (on a MuSiQue prompt of 6273 tokens, 3 pooled
 * positions held 97% of a3's score; the next 0.1% of the tokens 2.6%). Counted as they are,
 * they meet any target and the rule degenerates to ratio_min. The ratio_min floor is
 * recomputed anyway, so the mass is measured with every score capped at the floor's weakest
 * (the ceil(ratio_min (T - q))-th largest) score: the sinks count like floor tokens and the
 * decision is how concentrated the attention beyond the floor is. On that prompt, the capped
 * mass of the top 10% / 15% / 20% is 93% / 98% / 99% (so fidelity 0.95 picks about 0.12).
 *
 * fidelity is therefore a target on the covered share of the selection signal, a proxy of
 * answer fidelity: results/adaptive-musique/ measures what it buys in answer agreement with
 * full prefill against fixed ratios. */
#include "fusion/adaptive.h"
#include "common.h"

#include <math.h>
#include <stdlib.h>

kvf_status kvf_adaptive_check(const kvf_fuse_params *fp) {
    if (!fp->ratio_auto) return KVF_OK;
    if (!(fp->fidelity > 0.0f && fp->fidelity <= 1.0f))
        return kvf_set_error(KVF_E_INVAL, "fidelity %g is outside (0, 1]", (double)fp->fidelity);
    if (!(fp->ratio_min >= 0.0f && fp->ratio_max <= 1.0f && fp->ratio_min <= fp->ratio_max))
        return kvf_set_error(KVF_E_INVAL, "auto ratio bounds [%g, %g] must satisfy 0 <= min <= max <= 1",
                             (double)fp->ratio_min, (double)fp->ratio_max);
    return KVF_OK;
}

static int desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

int32_t kvf_adaptive_k(const float *score, int32_t n, int32_t base, const kvf_fuse_params *fp,
                       float *mass) {
    if (mass) *mass = 1.0f;
    if (n <= 0) return 0;
    if (!fp->ratio_auto) {
        int32_t k = (int32_t)floor((double)base * fp->ratio);
        return KVF_MIN(KVF_MAX(k, 0), n);
    }
    /* the bounds are floats (0.2f is 0.2000000030): products within 1e-4 of an integer are
     * that integer */
    int32_t kmin = (int32_t)ceil((double)base * fp->ratio_min - 1e-4);
    int32_t kmax = (int32_t)floor((double)base * fp->ratio_max + 1e-4);
    kmax         = KVF_MIN(KVF_MAX(kmax, 0), n);
    kmin         = KVF_MIN(KVF_MAX(kmin, 0), kmax);
    float *v     = kvf_malloc(sizeof(float) * (size_t)n);
    if (!v) return -1;
    double total = 0;
    for (int32_t i = 0; i < n; i++) {
        float x = score[i];
        v[i]    = x > 0.0f && isfinite(x) ? x : 0.0f;
        total += v[i];
    }
    if (!(total > 0)) {
        kvf_free(v);
        return kmin;
    }
    qsort(v, (size_t)n, sizeof(float), desc);
    /* the floor's kmin tokens are recomputed anyway: their mass counts at most as much as the
     * floor's weakest token, so a few attention sinks cannot meet the target alone */
    if (kmin > 0) {
        float cap = v[kmin - 1];
        total     = 0;
        for (int32_t i = 0; i < n; i++) total += v[i] = v[i] < cap ? v[i] : cap;
    }
    /* smallest k with cum[k] >= fidelity * total (the fidelity 1.0 case: all positive mass) */
    double  want = (double)fp->fidelity * total, cum = 0;
    int32_t k    = 0;
    while (k < n && cum < want * (1 - 1e-12)) cum += v[k++];
    int32_t kc = KVF_MIN(KVF_MAX(k, kmin), kmax);
    if (mass) {
        double got = 0;
        for (int32_t i = 0; i < kc; i++) got += v[i];
        *mass = total > 0 ? (float)(got / total) : 1.0f;
    }
    kvf_free(v);
    return kc;
}
