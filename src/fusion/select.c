/* select.c - the question-attention signal of the multi-layer selection methods (select.h). */
#include "fusion/select.h"
#include "common.h"

#include <math.h>
#include <string.h>

int kvf_by_score_desc(const void *a, const void *b, void *score) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float   sx = ((const float *)score)[x], sy = ((const float *)score)[y];
    if (sx != sy) return sx < sy ? 1 : -1;
    return x - y;
}

int kvf_by_index(const void *a, const void *b) {
    return *(const int32_t *)a - *(const int32_t *)b;
}

kvf_status kvf_qattn_init(kvf_qattn *a, int n_layer, int32_t c0, int32_t c1, int32_t qpos0,
                          int per_head) {
    memset(a, 0, sizeof *a);
    a->n_layer = n_layer, a->c0 = c0, a->c1 = c1, a->qpos0 = qpos0, a->per_head = per_head;
    int32_t nc = c1 > c0 ? c1 - c0 : 0;
    a->score   = kvf_calloc((size_t)n_layer * (size_t)(nc ? nc : 1), sizeof(float));
    a->seen    = kvf_calloc((size_t)n_layer, 1);
    if (!a->score || !a->seen) {
        kvf_qattn_free(a);
        return kvf_set_error(KVF_E_NOMEM, "out of memory for the question attention");
    }
    return KVF_OK;
}

void kvf_qattn_free(kvf_qattn *a) {
    kvf_free(a->score), kvf_free(a->seen), kvf_free(a->kf), kvf_free(a->prob);
    memset(a, 0, sizeof *a);
}

typedef struct {
    kvf_qattn          *a;
    const kvf_session  *s;
    const kvf_batch    *b;
    const int32_t      *rows;  /* batch indices of the question rows */
    int32_t             n_rows, c_end;
    atomic_int_fast64_t next;
    atomic_int          failed;
} qattn_task;

/* one work item = one question row: its attention over [0, pos], mean over head passes,
 * document columns into prob[item] */
static void qattn_row(void *p, int ith, int nth) {
    KVF_UNUSED(ith), KVF_UNUSED(nth);
    qattn_task        *t  = p;
    kvf_qattn         *a  = t->a;
    const kvf_hparams *hp = &t->s->m->hp;
    int     g = hp->n_head / hp->n_head_kv, hd = hp->head_dim;
    int64_t kvd = (int64_t)hp->n_head_kv * hd, qd = (int64_t)hp->n_head * hd;
    int32_t nc  = a->c1 - a->c0;
    float  *lg  = kvf_malloc(sizeof(float) * (size_t)t->c_end);
    float  *qs  = kvf_malloc(sizeof(float) * (size_t)kvd);
    if (!lg || !qs) {
        kvf_free(lg), kvf_free(qs);
        atomic_store(&t->failed, 1);
        return;
    }
    for (int64_t it; (it = kvf_claim(&t->next, t->n_rows)) >= 0;) {
        int32_t      r   = t->rows[it];
        int32_t      end = t->b->kv_end[r];
        const float *q   = t->s->q + (int64_t)r * qd;
        float       *out = a->prob + it * nc;
        memset(out, 0, sizeof(float) * (size_t)nc);
        int n_pass = a->per_head ? hp->n_head : 1;
        for (int ps = 0; ps < n_pass; ps++) {
            float scale;
            memset(qs, 0, sizeof(float) * (size_t)kvd);
            if (a->per_head) {
                memcpy(qs + (int64_t)(ps / g) * hd, q + (int64_t)ps * hd, sizeof(float) * (size_t)hd);
                scale = 1.0f / sqrtf((float)hd);
            } else {
                for (int h = 0; h < hp->n_head; h++)
                    for (int d = 0; d < hd; d++) qs[(h / g) * hd + d] += q[(int64_t)h * hd + d];
                scale = 1.0f / sqrtf((float)(hp->n_head * hd));
            }
            memset(lg, 0, sizeof(float) * (size_t)end);
            for (int64_t e = 0; e < kvd; e++)
                if (qs[e] != 0.0f) t->s->K->axpy(qs[e] * scale, a->kf + e * t->c_end, lg, end);
            float mx = -INFINITY;
            for (int32_t j = 0; j < end; j++) mx = fmaxf(mx, lg[j]);
            double sum = 0;
            for (int32_t j = 0; j < end; j++) sum += exp((double)(lg[j] - mx));
            int32_t hi = KVF_MIN(a->c1, end);
            for (int32_t j = a->c0; j < hi; j++)
                out[j - a->c0] += (float)(exp((double)(lg[j] - mx)) / sum / n_pass);
        }
    }
    kvf_free(lg), kvf_free(qs);
}

kvf_status kvf_qattn_layer(kvf_qattn *a, kvf_session *s, int l, const kvf_batch *b) {
    const kvf_hparams *hp = &s->m->hp;
    int                hd = hp->head_dim;
    int64_t            kvd = (int64_t)hp->n_head_kv * hd;
    int32_t            nc = a->c1 - a->c0, n_rows = 0, c_end = 0;
    if (nc <= 0 || l < 0 || l >= a->n_layer) return KVF_OK;
    int32_t *rows = kvf_malloc(sizeof(int32_t) * (size_t)b->n);
    if (!rows) return kvf_set_error(KVF_E_NOMEM, "out of memory scoring tokens");
    for (int32_t r = 0; r < b->n; r++)
        if (b->pos[r] >= a->qpos0) {
            rows[n_rows++] = r;
            c_end          = KVF_MAX(c_end, b->kv_end[r]);
        }
    if (n_rows == 0) {
        kvf_free(rows);
        return KVF_OK;
    }
    /* the layer's keys of cells [0, c_end) as float rows kf[e][cell] */
    if ((int64_t)c_end * kvd > a->kf_cap) {
        kvf_free(a->kf);
        a->kf     = kvf_malloc(sizeof(float) * (size_t)(c_end * kvd));
        a->kf_cap = a->kf ? (int64_t)c_end * kvd : 0;
    }
    if (n_rows > a->prob_rows) {
        kvf_free(a->prob);
        a->prob      = kvf_malloc(sizeof(float) * (size_t)n_rows * (size_t)nc);
        a->prob_rows = a->prob ? n_rows : 0;
    }
    if (!a->kf || !a->prob) {
        kvf_free(rows);
        return kvf_set_error(KVF_E_NOMEM, "out of memory scoring tokens");
    }
    for (int kh = 0; kh < hp->n_head_kv; kh++) {
        const void *kt = kvf_kt_at(s, l, kh);
        for (int d = 0; d < hd; d++) {
            kvf_kt_row(s, kt, d, 0, c_end, a->kf + ((int64_t)kh * hd + d) * c_end);
        }
    }
    qattn_task t = {.a = a, .s = s, .b = b, .rows = rows, .n_rows = n_rows, .c_end = c_end};
    atomic_init(&t.next, 0);
    atomic_init(&t.failed, 0);
    kvf_pool_run(s->pool, qattn_row, &t);
    kvf_free(rows);
    if (atomic_load(&t.failed)) return kvf_set_error(KVF_E_NOMEM, "out of memory scoring tokens");
    float *dst = a->score + (int64_t)l * nc;
    for (int32_t i = 0; i < n_rows; i++) /* fixed order: independent of the thread count */
        for (int32_t j = 0; j < nc; j++) dst[j] += a->prob[(int64_t)i * nc + j];
    a->seen[l] = 1;
    return KVF_OK;
}

void kvf_qattn_combine(const kvf_qattn *a, int l_from, int l_to, int normalize, int pool,
                       float *out) {
    int32_t nc = a->c1 - a->c0;
    if (nc <= 0) return;
    memset(out, 0, sizeof(float) * (size_t)nc);
    for (int l = KVF_MAX(l_from, 0); l <= l_to && l < a->n_layer; l++) {
        if (!a->seen[l]) continue;
        const float *src = a->score + (int64_t)l * nc;
        double       tot = 0;
        for (int32_t j = 0; j < nc; j++) tot += src[j];
        double w = normalize ? (tot > 0 ? 1.0 / tot : 0.0) : 1.0;
        for (int32_t j = 0; j < nc; j++) out[j] += (float)(src[j] * w);
    }
    if (pool > 1) {
        float *tmp = kvf_malloc(sizeof(float) * (size_t)nc);
        if (!tmp) return; /* unpooled scores still rank the tokens */
        for (int32_t j = 0; j < nc; j++) {
            double acc = 0;
            for (int t = -(pool / 2); t <= (pool - 1) / 2; t++)
                if (j + t >= 0 && j + t < nc) acc += out[j + t];
            tmp[j] = (float)(acc / pool);
        }
        memcpy(out, tmp, sizeof(float) * (size_t)nc);
        kvf_free(tmp);
    }
}
