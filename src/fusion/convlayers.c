/* convlayers.c - EpiCache's layer-wise budgets (arXiv 2509.17396; kvfuse.h,
 * kvf_conv_layer_*): how much each layer's keys change when a text is prefilled in blocks
 * instead of whole (the profile, measured once per model), the budgets it gives each layer, and
 * the profile's file. kvf_session_prefill_budget (convbudget.c) then evicts each layer to its own
 * budget; kv_cells.h says how layers holding different numbers of cells are laid out. */
#include "common.h"
#include "engine/forward.h"
#include "engine/kv_cells.h"
#include "engine/model.h"
#include "fusion/convbudget.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int32_t kvf_conv_layer_min_budget(const kvf_conv_budget_params *p, int32_t n_probe) {
    if (!p) return 0;
    int64_t least = (int64_t)p->sink + p->window + p->block + kvf_conv_probe_cells(p, n_probe) +
                    16 + KVF_ATTN_BK;
    return least > INT32_MAX ? INT32_MAX : (int32_t)least; /* hostile parameters saturate */
}

kvf_status kvf_conv_layer_budgets(const float *sim, int32_t L, const kvf_conv_budget_params *p,
                                  int32_t n_probe, float alpha, int32_t *out) {
    if (!sim || !out || !p || L < 1 || !(alpha >= 0))
        return kvf_set_error(KVF_E_INVAL, "layer budgets: bad arguments (alpha %g)", (double)alpha);
    /* what a layer keeps between rounds; the block and the probe come on top in every layer */
    int32_t reserve = p->block + kvf_conv_probe_cells(p, n_probe);
    int32_t least = kvf_conv_layer_min_budget(p, n_probe), K = p->budget - reserve;
    if (least > p->budget)
        return kvf_set_error(KVF_E_INVAL,
                             "layer budgets: the budget of %d tokens leaves no room (each layer "
                             "needs %d)",
                             p->budget, least);
    float lo = INFINITY, hi = -INFINITY;
    for (int l = 0; l < L; l++) {
        if (!isfinite(sim[l]))
            return kvf_set_error(KVF_E_INVAL, "layer budgets: layer %d's similarity is not finite",
                                 l);
        lo = fminf(lo, sim[l]), hi = fmaxf(hi, sim[l]);
    }
    int32_t floor_ = KVF_MAX(K / 4, least - reserve);
    double wsum = 0;
    for (int l = 0; l < L; l++)
        wsum += hi > lo ? pow(1.0 - (sim[l] - lo) / (hi - lo), alpha) : 0.0;
    for (int l = 0; l < L; l++) {
        double w = hi > lo ? pow(1.0 - (sim[l] - lo) / (hi - lo), alpha) : 0.0;
        out[l] = alpha == 0 || wsum <= 0
                     ? p->budget
                     : reserve + floor_ + (int32_t)((double)L * (K - floor_) * w / wsum);
    }
    return KVF_OK;
}

#define PROFILE_SINK 128 /* tokens every block sees (EpiCache's profile) */
#define PROFILE_WIN  100 /* tokens per compared window */

kvf_status kvf_conv_layer_profile(kvf_session *s, const int32_t *ids, int32_t n, int32_t block,
                                  float *sim) {
    if (!s || !ids || !sim || block < PROFILE_SINK || n < 2 * (int64_t)block)
        return kvf_set_error(KVF_E_INVAL,
                             "layer profile: %d tokens in blocks of %d (block >= %d, at least "
                             "two blocks)",
                             n, block, PROFILE_SINK);
    if (s->n_cells != 0 || s->n_past != 0)
        return kvf_set_error(KVF_E_INVAL, "layer profile: the session must be empty");
    if (kvf_session_attn(s).mode != KVF_ATTN_DENSE)
        return kvf_set_error(KVF_E_INVAL, "layer profile: needs dense prefill attention");
    if (n > s->n_ctx || PROFILE_SINK + block + block / 2 > s->n_ctx)
        return kvf_set_error(
            KVF_E_CTX_FULL, "layer profile: %d tokens (blocks of %d) exceed the session's %d cells",
            n, block, s->n_ctx);
    const kvf_hparams *hp = &s->m->hp;
    int L = hp->n_layer, Hkv = hp->n_head_kv, hd = hp->head_dim;
    int64_t nk = n - block; /* tokens compared: every block but the first */
    float *full = kvf_malloc(sizeof(float) * (size_t)(L * Hkv * hd) * (size_t)nk);
    float *blk = kvf_malloc(sizeof(float) * (size_t)hd * (size_t)block);
    int32_t *ctx = kvf_malloc(sizeof(int32_t) * (size_t)(PROFILE_SINK + block));
    int32_t *cpos = kvf_malloc(sizeof(int32_t) * (size_t)(PROFILE_SINK + 2 * block));
    double *acc = kvf_calloc((size_t)L, sizeof(double));
    int64_t cnt = 0;
    kvf_status rc = KVF_OK;
    if (!full || !blk || !ctx || !cpos || !acc) {
        rc = kvf_set_error(KVF_E_NOMEM, "out of memory for a layer profile of %d tokens", n);
        goto done;
    }
    /* whole: every layer's keys of tokens block .. n-1, as [l][h][d][token] */
    if ((rc = kvf_session_eval(s, ids, n, 0)) != KVF_OK) goto done;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < Hkv; h++)
            for (int d = 0; d < hd; d++)
                kvf_kt_row(s, kvf_kt_at(s, l, h), d, block, nk,
                           full + (((int64_t)l * Hkv + h) * hd + d) * nk);
    /* in blocks: the sink and the second half of the block before, then the block */
    for (int32_t b0 = block; b0 < n; b0 += block) {
        int32_t nb = KVF_MIN(block, n - b0), nc = 0;
        kvf_session_truncate(s, 0);
        for (int32_t i = 0; i < PROFILE_SINK; i++)
            cpos[nc++] = i;
        for (int32_t i = KVF_MAX(PROFILE_SINK, b0 - block / 2); i < b0; i++)
            cpos[nc++] = i;
        for (int32_t i = 0; i < nc; i++)
            ctx[i] = ids[cpos[i]];
        for (int32_t i = 0; i < nb; i++)
            cpos[nc + i] = b0 + i;
        if ((rc = kvf_session_eval_at(s, ctx, cpos, nc, 0)) != KVF_OK ||
            (rc = kvf_session_eval_at(s, ids + b0, cpos + nc, nb, 0)) != KVF_OK)
            goto done;
        for (int l = 0; l < L; l++)
            for (int h = 0; h < Hkv; h++) {
                for (int d = 0; d < hd; d++)
                    kvf_kt_row(s, kvf_kt_at(s, l, h), d, nc, nb, blk + (int64_t)d * nb);
                const float *f = full + ((int64_t)l * Hkv + h) * hd * nk;
                for (int32_t w0 = 0; w0 < nb; w0 += PROFILE_WIN) {
                    int32_t w1 = KVF_MIN(nb, w0 + PROFILE_WIN);
                    double ab = 0, aa = 0, bb = 0;
                    for (int d = 0; d < hd; d++)
                        for (int32_t j = w0; j < w1; j++) {
                            double x = f[(int64_t)d * nk + (b0 - block) + j],
                                   y = blk[(int64_t)d * nb + j];
                            ab += x * y, aa += x * x, bb += y * y;
                        }
                    acc[l] += aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 1.0;
                    if (l == 0 && h == 0) cnt++;
                }
            }
    }
    for (int l = 0; l < L; l++)
        sim[l] = (float)(acc[l] / ((double)cnt * Hkv));
done:
    kvf_session_truncate(s, 0);
    kvf_free(full), kvf_free(blk), kvf_free(ctx), kvf_free(cpos), kvf_free(acc);
    return rc;
}

/* ---- the profile's file ------------------------------------------------------------------ */

kvf_status kvf_conv_layer_profile_save(const char *path, const kvf_model *m, const float *sim,
                                       int32_t n_tokens, int32_t block) {
    if (!path || !m || !sim) return kvf_set_error(KVF_E_INVAL, "layer profile: bad arguments");
    int L = m->hp.n_layer;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return kvf_set_error(KVF_E_INVAL, "layer profile: path too long");
    FILE *f = fopen(tmp, "w");
    if (!f) return kvf_set_error(KVF_E_IO, "cannot write %s: %s", tmp, strerror(errno));
    kvf_model_info info;
    kvf_model_get_info(m, &info);
    char name[128]; /* the model's name, one printable line whatever its metadata holds */
    size_t k = 0;
    for (const char *c = info.name ? info.name : ""; *c && k + 1 < sizeof name; c++)
        name[k++] = (*c >= 0x20 && *c < 0x7f) ? *c : '?';
    name[k] = 0;
    fprintf(f, "# kvfuse layer profile of \"%s\": %d tokens in blocks of %d\n", name, n_tokens,
            block);
    fprintf(f, "# cosine of each layer's keys, whole against in blocks (1: insensitive)\n");
    fprintf(f, "layers %d\n", L);
    for (int l = 0; l < L; l++)
        fprintf(f, "%d %.6f\n", l, (double)sim[l]);
    int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return kvf_set_error(KVF_E_IO, "cannot write %s: %s", path, strerror(e));
    }
    return KVF_OK;
}

kvf_status kvf_conv_layer_profile_load(const char *path, const kvf_model *m, float *sim) {
    if (!path || !m || !sim) return kvf_set_error(KVF_E_INVAL, "layer profile: bad arguments");
    FILE *f = fopen(path, "r");
    if (!f)
        return kvf_set_error(KVF_E_IO, "cannot read layer profile %s: %s", path, strerror(errno));
    int L = m->hp.n_layer, layers = -1, next = 0, line = 0;
    char buf[256];
    kvf_status rc = KVF_OK;
    while (rc == KVF_OK && fgets(buf, sizeof buf, f)) {
        line++;
        size_t k = strlen(buf);
        if (k == sizeof buf - 1 && buf[k - 1] != '\n') {
            rc = kvf_set_error(KVF_E_FORMAT, "%s:%d: line too long", path, line);
            break;
        }
        char *p = buf;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || *p == '\n' || *p == '\0') continue;
        if (layers < 0) {
            char *e;
            long n = strncmp(p, "layers ", 7) ? -1 : strtol(p + 7, &e, 10);
            if (n < 0 || (*e != '\n' && *e != '\0'))
                rc = kvf_set_error(KVF_E_FORMAT, "%s:%d: expected 'layers N'", path, line);
            else if (n != L)
                rc = kvf_set_error(KVF_E_FORMAT, "%s: a profile of %ld layers, the model has %d",
                                   path, n, L);
            layers = (int)n;
            continue;
        }
        char *e1, *e2;
        long l = strtol(p, &e1, 10);
        float v = e1 != p ? strtof(e1, &e2) : NAN;
        if (e1 == p || e2 == e1 || (*e2 != '\n' && *e2 != '\0' && *e2 != ' '))
            rc = kvf_set_error(KVF_E_FORMAT, "%s:%d: expected 'LAYER SIMILARITY'", path, line);
        else if (l != next || next >= L)
            rc = kvf_set_error(KVF_E_FORMAT, "%s:%d: layer %ld out of order (expected %d of %d)",
                               path, line, l, next, L);
        else if (!(v >= -1.0f && v <= 1.0f))
            rc = kvf_set_error(KVF_E_FORMAT, "%s:%d: similarity %g is outside -1..1", path, line,
                               (double)v);
        else
            sim[next++] = v;
    }
    if (rc == KVF_OK && ferror(f)) rc = kvf_set_error(KVF_E_IO, "reading %s failed", path);
    if (rc == KVF_OK && next != L)
        rc = kvf_set_error(KVF_E_FORMAT, "%s: %d of the model's %d layers", path, next, L);
    fclose(f);
    return rc;
}
