/* sampler.c - token selection: greedy (temp 0) or temperature sampling with top-k and top-p,
 * driven by a seeded xoshiro256** generator so a seed reproduces the same tokens. */
#include "common.h"

#include <math.h>
#include <string.h>

struct kvf_sampler {
    kvf_sampler_params p;
    uint64_t           s[4]; /* xoshiro256** state */
    struct cand {
        float   p;
        int32_t id;
    } *cand;
    int32_t cand_cap;
};

kvf_sampler_params kvf_sampler_default_params(void) {
    kvf_sampler_params p = {.temp = 0.0f, .top_p = 1.0f, .top_k = 0, .seed = 0};
    return p;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z          = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z          = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t next_u64(kvf_sampler *smp) {
    uint64_t *s = smp->s, r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t, s[3] = rotl(s[3], 45);
    return r;
}

kvf_sampler *kvf_sampler_new(const kvf_sampler_params *params) {
    kvf_sampler *smp = kvf_calloc(1, sizeof *smp);
    if (!smp) return NULL;
    smp->p     = params ? *params : kvf_sampler_default_params();
    uint64_t x = smp->p.seed;
    for (int i = 0; i < 4; i++) smp->s[i] = splitmix(&x);
    return smp;
}

void kvf_sampler_free(kvf_sampler *smp) {
    if (!smp) return;
    kvf_free(smp->cand);
    kvf_free(smp);
}

static int cand_desc(const void *a, const void *b) {
    const struct cand *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id - y->id;
}

int32_t kvf_sampler_sample(kvf_sampler *smp, const float *logits, int32_t n_vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    if (!smp || smp->p.temp <= 0.0f || n_vocab <= 1) return best;
    if (smp->cand_cap < n_vocab) {
        struct cand *c = kvf_realloc(smp->cand, sizeof(struct cand) * (size_t)n_vocab);
        if (!c) return best; /* out of memory: fall back to greedy rather than fail */
        smp->cand     = c;
        smp->cand_cap = n_vocab;
    }
    /* softmax(logits / temp); candidates below 1e-9 of the best are dropped before sorting */
    float   inv = 1.0f / smp->p.temp, mx = logits[best] * inv;
    double  sum = 0;
    int32_t n   = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        float p = expf(logits[i] * inv - mx);
        if (p < 1e-9f) continue;
        smp->cand[n].p  = p;
        smp->cand[n].id = i;
        sum += p;
        n++;
    }
    qsort(smp->cand, (size_t)n, sizeof(struct cand), cand_desc);
    if (smp->p.top_k > 0 && n > smp->p.top_k) n = smp->p.top_k;
    if (smp->p.top_p < 1.0f) {
        double total = 0, cum = 0;
        for (int32_t i = 0; i < n; i++) total += smp->cand[i].p;
        for (int32_t i = 0; i < n; i++) {
            cum += smp->cand[i].p;
            if (cum >= smp->p.top_p * total) {
                n = i + 1;
                break;
            }
        }
    }
    sum = 0;
    for (int32_t i = 0; i < n; i++) sum += smp->cand[i].p;
    double r = (double)(next_u64(smp) >> 11) / 9007199254740992.0 * sum, acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += smp->cand[i].p;
        if (r < acc) return smp->cand[i].id;
    }
    return smp->cand[n - 1].id;
}
