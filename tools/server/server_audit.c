/* server_audit.c - the live fidelity audit of `kvfuse serve` (see server_audit.h). */
#include "server/server_audit.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { ITEM_LIVE = 0, ITEM_WAITING, ITEM_PREFILL, ITEM_DECODE } item_phase;

struct srv_audit_item {
    srv_audit_item *next;        /* waiting list */
    item_phase      phase;
    char            id[48];
    kvf_method      method;
    float           ratio, fidelity;
    bool            ratio_auto;
    int32_t         recomputed;
    int32_t        *prompt;
    int32_t         n_prompt, pf_done;
    float          *fused_logits; /* [n_vocab] */
    bool            greedy, completed;
    int32_t        *ans, n_ans;   /* the live answer's first tokens (greedy requests) */
    bool            ans_eog;      /* it ended with end-of-generation within answer_tokens */
    int32_t        *full, n_full; /* full prefill's greedy answer */
    int32_t         limit;        /* full answer tokens to generate */
    double          kl;
    int32_t         top_fused, top_full;
};

struct srv_audit {
    const kvf_model *m;
    srv_audit_params p;
    int32_t          n_vocab;
    kvf_session     *s;
    double           acc;       /* sampling accumulator */
    int32_t          n_items;   /* live + waiting + in progress */
    srv_audit_item  *head, *tail; /* waiting, in order; head may be in progress */
    double           next_ok_ms;  /* CPU budget: no unit before this */

    pthread_mutex_t  mu; /* stats, cases */
    srv_audit_stats  st;
    srv_audit_case  *cases; /* ring of the last p.keep finished audits */
    int              n_cases, case_next;
};

srv_audit_params srv_audit_default_params(void) {
    srv_audit_params p;
    memset(&p, 0, sizeof p);
    p.rate          = 0;
    p.cpu           = 0.1;
    p.chunk         = 32;
    p.answer_tokens = 16;
    p.max_pending   = 8;
    p.keep          = 64;
    p.n_ctx         = 4096;
    p.kv_type       = KVF_KV_F32;
    return p;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

srv_audit *srv_audit_new(const kvf_model *m, const srv_audit_params *p, char *err, size_t errlen) {
    if (!(p->rate > 0 && p->rate <= 1) || !(p->cpu > 0 && p->cpu <= 1) || p->chunk < 1 ||
        p->answer_tokens < 0 || p->answer_tokens > 4096 || p->max_pending < 1 || p->keep < 1 || p->n_ctx < 16) {
        snprintf(err, errlen, "bad audit parameters (--audit-rate in (0, 1], --audit-cpu in (0, 1])");
        return NULL;
    }
    srv_audit *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->m       = m;
    a->p       = *p;
    a->n_vocab = kvf_model_n_vocab(m);
    a->cases   = calloc((size_t)p->keep, sizeof *a->cases);
    pthread_mutex_init(&a->mu, NULL);
    a->st.enabled = true;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = p->n_ctx;
    sp.n_threads          = p->n_threads;
    sp.kv_type            = p->kv_type;
    if (!a->cases || kvf_session_new(m, &sp, &a->s) != KVF_OK) {
        snprintf(err, errlen, "cannot create the audit session (n_ctx %d): %s", p->n_ctx,
                 a->cases ? kvf_errmsg() : "out of memory");
        srv_audit_free(a);
        return NULL;
    }
    return a;
}

static void item_free(srv_audit_item *it) {
    if (!it) return;
    free(it->prompt), free(it->fused_logits), free(it->ans), free(it->full);
    free(it);
}

void srv_audit_free(srv_audit *a) {
    if (!a) return;
    for (srv_audit_item *it = a->head, *nx; it; it = nx) {
        nx = it->next;
        item_free(it);
    }
    kvf_session_free(a->s);
    free(a->cases);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

static void set_pending(srv_audit *a) {
    pthread_mutex_lock(&a->mu);
    a->st.pending = a->n_items;
    pthread_mutex_unlock(&a->mu);
}

/* ---- the live request --------------------------------------------------------------------- */

srv_audit_item *srv_audit_begin(srv_audit *a, const srv_audit_req *r) {
    if (!a || r->fp->method == KVF_METHOD_FULL) return NULL;
    a->acc += a->p.rate;
    if (a->acc < 1.0 - 1e-9) return NULL;
    a->acc -= 1.0;
    pthread_mutex_lock(&a->mu);
    a->st.sampled++;
    bool full = a->n_items >= a->p.max_pending;
    if (full) a->st.skipped++;
    pthread_mutex_unlock(&a->mu);
    if (full) return NULL;
    int32_t n = 0;
    for (int32_t i = 0; i < r->n_segs; i++) n += r->segs[i].n;
    if (n < 1 || n > a->p.n_ctx - a->p.answer_tokens - 1) { /* does not fit the audit session */
        pthread_mutex_lock(&a->mu);
        a->st.skipped++;
        pthread_mutex_unlock(&a->mu);
        return NULL;
    }
    srv_audit_item *it = calloc(1, sizeof *it);
    if (it) {
        it->prompt       = malloc(sizeof(int32_t) * (size_t)n);
        it->fused_logits = malloc(sizeof(float) * (size_t)a->n_vocab);
        it->ans          = malloc(sizeof(int32_t) * (size_t)(a->p.answer_tokens + 1));
        it->full         = malloc(sizeof(int32_t) * (size_t)(a->p.answer_tokens + 1));
    }
    if (!it || !it->prompt || !it->fused_logits || !it->ans || !it->full) {
        item_free(it);
        pthread_mutex_lock(&a->mu);
        a->st.skipped++;
        pthread_mutex_unlock(&a->mu);
        return NULL;
    }
    snprintf(it->id, sizeof it->id, "%s", r->id ? r->id : "");
    it->method     = r->fp->method;
    it->ratio_auto = r->fp->ratio_auto;
    it->fidelity   = r->fp->fidelity;
    it->ratio      = kvf_method_has_ratio(r->fp->method)
                         ? (r->fp->ratio_auto ? r->st->ratio_used : r->fp->ratio)
                         : 0.0f;
    it->recomputed = r->st->recomputed_tokens;
    for (int32_t i = 0, o = 0; i < r->n_segs; o += r->segs[i].n, i++)
        memcpy(it->prompt + o, r->segs[i].ids, sizeof(int32_t) * (size_t)r->segs[i].n);
    it->n_prompt = n;
    memcpy(it->fused_logits, r->logits, sizeof(float) * (size_t)a->n_vocab);
    it->greedy = r->greedy && a->p.answer_tokens > 0;
    it->phase  = ITEM_LIVE;
    a->n_items++;
    set_pending(a);
    return it;
}

void srv_audit_token(srv_audit *a, srv_audit_item *it, int32_t tok, bool eog) {
    if (!it || !it->greedy || it->ans_eog || it->n_ans >= a->p.answer_tokens) return;
    if (eog) it->ans_eog = true;
    else it->ans[it->n_ans++] = tok;
}

void srv_audit_end(srv_audit *a, srv_audit_item *it, bool completed) {
    if (!it) return;
    it->completed = completed;
    /* the full answer is generated for as many tokens as the fused answer was followed: all of
     * --audit-tokens when it got there or ended with end-of-generation, else its length */
    it->limit = !it->greedy || !completed                              ? 0
                : it->ans_eog || it->n_ans >= a->p.answer_tokens ? a->p.answer_tokens
                                                                  : it->n_ans;
    it->phase = ITEM_WAITING;
    if (a->tail) a->tail->next = it;
    else a->head = it;
    a->tail = it;
}

/* ---- audit work ------------------------------------------------------------------------- */

bool srv_audit_ready(srv_audit *a, double now, double *wait_ms) {
    *wait_ms = 0;
    if (!a || !a->head) return false;
    if (now < a->next_ok_ms) {
        *wait_ms = a->next_ok_ms - now;
        return false;
    }
    return true;
}

bool srv_audit_in_progress(srv_audit *a) {
    return a && a->head && (a->head->phase == ITEM_PREFILL || a->head->phase == ITEM_DECODE);
}

void srv_audit_note_yield(srv_audit *a) {
    pthread_mutex_lock(&a->mu);
    a->st.yields++;
    pthread_mutex_unlock(&a->mu);
}

static int32_t argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

/* KL(p || q) of the softmaxes of logits lp, lq; NAN when not finite */
static double kl_logits(const float *lp, const float *lq, int32_t n) {
    double mp = -INFINITY, mq = -INFINITY;
    for (int32_t i = 0; i < n; i++) mp = fmax(mp, lp[i]), mq = fmax(mq, lq[i]);
    double zp = 0, zq = 0;
    for (int32_t i = 0; i < n; i++) zp += exp(lp[i] - mp), zq += exp(lq[i] - mq);
    double lzp = mp + log(zp), lzq = mq + log(zq), kl = 0;
    for (int32_t i = 0; i < n; i++) {
        double lpi = lp[i] - lzp, lqi = lq[i] - lzq;
        kl += exp(lpi) * (lpi - lqi);
    }
    return isfinite(kl) ? fmax(kl, 0.0) : NAN;
}

static int cmp_i32(const void *x, const void *y) {
    int32_t a = *(const int32_t *)x, b = *(const int32_t *)y;
    return (a > b) - (a < b);
}

/* token F1 of two id sequences taken as bags; 1 when both are empty */
static double token_f1(const int32_t *a, int32_t na, const int32_t *b, int32_t nb) {
    if (na == 0 && nb == 0) return 1.0;
    if (na == 0 || nb == 0) return 0.0;
    int32_t *x = malloc(sizeof(int32_t) * (size_t)(na + nb));
    if (!x) return NAN;
    int32_t *y = x + na;
    memcpy(x, a, sizeof(int32_t) * (size_t)na), memcpy(y, b, sizeof(int32_t) * (size_t)nb);
    qsort(x, (size_t)na, sizeof(int32_t), cmp_i32), qsort(y, (size_t)nb, sizeof(int32_t), cmp_i32);
    int32_t i = 0, j = 0, common = 0;
    while (i < na && j < nb) {
        if (x[i] == y[j]) common++, i++, j++;
        else if (x[i] < y[j]) i++;
        else j++;
    }
    free(x);
    if (common == 0) return 0.0;
    double p = (double)common / na, r = (double)common / nb;
    return 2 * p * r / (p + r);
}

static void pieces(const kvf_model *m, const int32_t *t, int32_t n, char *buf, size_t cap) {
    size_t o = 0;
    buf[0]   = 0;
    for (int32_t i = 0; i < n && o + 1 < cap; i++) {
        char    p[128];
        int32_t k = kvf_token_to_piece(m, t[i], p, sizeof p, false);
        if (k <= 0) continue;
        if ((size_t)k > cap - 1 - o) k = (int32_t)(cap - 1 - o);
        memcpy(buf + o, p, (size_t)k);
        o += (size_t)k;
    }
    buf[o] = 0;
}

/* the head audit is done: record it and drop it */
static void finish(srv_audit *a) {
    srv_audit_item *it = a->head;
    srv_audit_case  c;
    memset(&c, 0, sizeof c);
    snprintf(c.id, sizeof c.id, "%s", it->id);
    c.method            = (int)it->method;
    c.ratio             = it->ratio;
    c.ratio_auto        = it->ratio_auto;
    c.fidelity          = it->fidelity;
    c.prompt_tokens     = it->n_prompt;
    c.recomputed_tokens = it->recomputed;
    c.kl                = it->kl;
    c.top1_agree        = it->top_fused == it->top_full;
    c.answer_compared   = it->limit > 0;
    int32_t nf          = it->n_ans < it->limit ? it->n_ans : it->limit;
    c.answer_f1         = c.answer_compared ? token_f1(it->ans, nf, it->full, it->n_full) : NAN;
    c.answer_tokens     = c.answer_compared ? nf : 0;
    pieces(a->m, &it->top_fused, 1, c.fused_first, sizeof c.fused_first);
    pieces(a->m, &it->top_full, 1, c.full_first, sizeof c.full_first);
    if (c.answer_compared) {
        pieces(a->m, it->ans, nf, c.fused_answer, sizeof c.fused_answer);
        pieces(a->m, it->full, it->n_full, c.full_answer, sizeof c.full_answer);
    }
    c.finished = (int64_t)time(NULL);
    pthread_mutex_lock(&a->mu);
    srv_audit_method_stats *ms = &a->st.m[it->method];
    ms->n++;
    ms->top1_agree += c.top1_agree;
    if (isfinite(c.kl)) ms->kl_sum += c.kl;
    if (c.answer_compared && isfinite(c.answer_f1)) ms->n_answer++, ms->f1_sum += c.answer_f1;
    a->st.completed++;
    a->cases[a->case_next] = c;
    a->case_next           = (a->case_next + 1) % a->p.keep;
    if (a->n_cases < a->p.keep) a->n_cases++;
    pthread_mutex_unlock(&a->mu);
    a->head = it->next;
    if (!a->head) a->tail = NULL;
    a->n_items--;
    item_free(it);
    set_pending(a);
}

static void drop_head(srv_audit *a, const char *why) {
    srv_audit_item *it = a->head;
    fprintf(stderr, "kvfuse serve: audit of %s dropped: %s\n", it->id, why);
    a->head = it->next;
    if (!a->head) a->tail = NULL;
    a->n_items--;
    item_free(it);
    set_pending(a);
}

int srv_audit_step(srv_audit *a) {
    srv_audit_item *it = a->head;
    if (!it) return 0;
    double t0 = now_ms();
    int    rc = 0;
    if (it->phase == ITEM_WAITING) {
        kvf_session_truncate(a->s, 0);
        it->phase   = ITEM_PREFILL;
        it->pf_done = 0;
    }
    if (it->phase == ITEM_PREFILL) {
        int32_t n = it->n_prompt - it->pf_done < a->p.chunk ? it->n_prompt - it->pf_done : a->p.chunk;
        if (kvf_session_eval(a->s, it->prompt + it->pf_done, n, 0) != KVF_OK) {
            drop_head(a, kvf_errmsg());
            rc = -1;
        } else if ((it->pf_done += n) == it->n_prompt) {
            const float *lg = kvf_session_logits(a->s, -1);
            it->kl          = kl_logits(lg, it->fused_logits, a->n_vocab);
            it->top_fused   = argmax(it->fused_logits, a->n_vocab);
            it->top_full    = argmax(lg, a->n_vocab);
            free(it->fused_logits);
            it->fused_logits = NULL;
            it->phase        = ITEM_DECODE;
            if (it->limit == 0) {
                finish(a);
                rc = 1;
            }
        }
    } else if (it->phase == ITEM_DECODE) {
        /* one greedy step: the token the current logits pick, then its forward pass */
        int32_t tok = argmax(kvf_session_logits(a->s, -1), a->n_vocab);
        if (kvf_token_is_eog(a->m, tok)) {
            finish(a);
            rc = 1;
        } else {
            it->full[it->n_full++] = tok;
            if (it->n_full >= it->limit) {
                finish(a);
                rc = 1;
            } else if (kvf_session_eval(a->s, &tok, 1, 0) != KVF_OK) {
                drop_head(a, kvf_errmsg());
                rc = -1;
            }
        }
    }
    double t1 = now_ms(), dt = t1 - t0;
    /* CPU budget: after dt ms of work, rest dt * (1 - cpu) / cpu ms */
    a->next_ok_ms = t1 + dt * (1.0 - a->p.cpu) / a->p.cpu;
    pthread_mutex_lock(&a->mu);
    a->st.units++;
    a->st.seconds += dt / 1e3;
    pthread_mutex_unlock(&a->mu);
    return rc;
}

/* ---- reads ------------------------------------------------------------------------------ */

void srv_audit_get_stats(srv_audit *a, srv_audit_stats *out) {
    if (!a) {
        memset(out, 0, sizeof *out);
        return;
    }
    pthread_mutex_lock(&a->mu);
    *out = a->st;
    pthread_mutex_unlock(&a->mu);
}

static int worse_first(const void *x, const void *y) {
    const srv_audit_case *a = x, *b = y;
    double ka = isfinite(a->kl) ? a->kl : INFINITY, kb = isfinite(b->kl) ? b->kl : INFINITY;
    if (ka != kb) return ka < kb ? 1 : -1;
    double fa = a->answer_compared ? a->answer_f1 : 2, fb = b->answer_compared ? b->answer_f1 : 2;
    if (fa != fb) return fa > fb ? 1 : -1;
    return (a->finished < b->finished) - (a->finished > b->finished);
}

int srv_audit_worst(srv_audit *a, srv_audit_case *out, int max) {
    if (!a || max <= 0) return 0;
    pthread_mutex_lock(&a->mu);
    int             n   = a->n_cases;
    srv_audit_case *all = malloc(sizeof *all * (size_t)(n > 0 ? n : 1));
    if (all) memcpy(all, a->cases, sizeof *all * (size_t)n);
    pthread_mutex_unlock(&a->mu);
    if (!all) return 0;
    qsort(all, (size_t)n, sizeof *all, worse_first);
    if (n > max) n = max;
    memcpy(out, all, sizeof *all * (size_t)n);
    free(all);
    return n;
}
