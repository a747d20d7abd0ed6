/* server_flow.c - the workflow registry of KVFlow (server_flow.h). */
#include "server/server_flow.h"
#include "server/server_types.h"
#include "store/steps.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fstep {
    char           name[SRV_FLOW_NAME];
    kvf_chunk_key *keys; /* of the step's last run */
    int            n_keys;
    int            next[SRV_FLOW_NEXT]; /* indices into the workflow's steps */
    int            n_next;
    /* what its last run computed (srv_flow_remember): prefix and documents concatenated in
     * tok, document d at tok[off[d] .. off[d + 1]) (off[0]: the prefix's length) */
    int32_t        *tok, *off;
    uint8_t        *shared;
    int             n_docs;
    kvf_fuse_params fp;
} fstep;

typedef struct fwf {
    char     ns[SRV_NS_MAX];
    char     id[SRV_FLOW_NAME];
    fstep    steps[SRV_FLOW_STEPS];
    int      n_steps;
    uint64_t used; /* registry clock at the last hint */
    int      cur;  /* the step that started last */
    int      dist[SRV_FLOW_STEPS]; /* each step's distance in its latest hint (-1: none) */
    int      take; /* documents of its next steps handed out since (srv_flow_take_doc) */
} fwf;

struct srv_flow {
    fwf     *wf[SRV_FLOW_MAX];
    int      n_wf;
    uint64_t clock;
    int64_t  n_tok; /* document tokens remembered (SRV_FLOW_TOKENS at most) */
};

srv_flow *srv_flow_new(void) {
    return calloc(1, sizeof(srv_flow));
}

static void step_forget_docs(srv_flow *f, fstep *s) {
    if (s->tok) f->n_tok -= s->off[s->n_docs];
    free(s->tok), free(s->off), free(s->shared);
    s->tok = s->off = NULL, s->shared = NULL, s->n_docs = 0;
}

static void wf_free(srv_flow *f, fwf *w) {
    if (!w) return;
    for (int i = 0; i < w->n_steps; i++) free(w->steps[i].keys), step_forget_docs(f, &w->steps[i]);
    free(w);
}

void srv_flow_free(srv_flow *f) {
    if (!f) return;
    for (int i = 0; i < f->n_wf; i++) wf_free(f, f->wf[i]);
    free(f);
}

static fwf *wf_find(const srv_flow *f, const char *ns, const char *id) {
    for (int i = 0; i < f->n_wf; i++)
        if (!strcmp(f->wf[i]->id, id) && !strcmp(f->wf[i]->ns, ns)) return f->wf[i];
    return NULL;
}

/* the workflow, created when new (the least recently hinted one gives way when full) */
static fwf *wf_get(srv_flow *f, const char *ns, const char *id) {
    fwf *w = wf_find(f, ns, id);
    if (w) return w;
    if (!(w = calloc(1, sizeof *w))) return NULL;
    snprintf(w->ns, sizeof w->ns, "%s", ns);
    snprintf(w->id, sizeof w->id, "%s", id);
    for (int i = 0; i < SRV_FLOW_STEPS; i++) w->dist[i] = -1;
    if (f->n_wf == SRV_FLOW_MAX) {
        int old = 0;
        for (int i = 1; i < f->n_wf; i++)
            if (f->wf[i]->used < f->wf[old]->used) old = i;
        wf_free(f, f->wf[old]);
        f->wf[old] = f->wf[--f->n_wf];
    }
    f->wf[f->n_wf++] = w;
    return w;
}

static int step_find(const fwf *w, const char *name) {
    for (int i = 0; i < w->n_steps; i++)
        if (!strcmp(w->steps[i].name, name)) return i;
    return -1;
}

static int step_get(fwf *w, const char *name) {
    int i = step_find(w, name);
    if (i >= 0 || w->n_steps == SRV_FLOW_STEPS) return i;
    i = w->n_steps++;
    memset(&w->steps[i], 0, sizeof w->steps[i]);
    w->dist[i] = -1;
    snprintf(w->steps[i].name, sizeof w->steps[i].name, "%s", name);
    return i;
}

/* breadth-first distances from step `from` along the next edges; -1: unreachable */
static void distances(const fwf *w, int from, int *dist) {
    int queue[SRV_FLOW_STEPS], qh = 0, qt = 0;
    for (int i = 0; i < w->n_steps; i++) dist[i] = -1;
    dist[from]  = 0;
    queue[qt++] = from;
    while (qh < qt) {
        const fstep *s = &w->steps[queue[qh++]];
        for (int e = 0; e < s->n_next; e++) {
            int t = s->next[e];
            if (dist[t] < 0) dist[t] = dist[queue[qh - 1]] + 1, queue[qt++] = t;
        }
    }
}

typedef struct {
    kvf_chunk_key k;
    int           d; /* nearest use over the namespace's workflows; INT_MAX: none */
} key_use;

static int by_key(const void *a, const void *b) {
    return memcmp(((const key_use *)a)->k.b, ((const key_use *)b)->k.b, sizeof(kvf_chunk_key));
}

static int by_dist_desc(const void *a, const void *b) {
    int x = ((const key_use *)a)->d, y = ((const key_use *)b)->d;
    return x != y ? (x > y ? -1 : 1) : by_key(a, b);
}

/* every key of workflow w hinted by its nearest use: its own steps' distances (dist[i] < 0: no
 * longer known), or a nearer one of another workflow of the namespace that shares the document,
 * so that two workflows never overwrite each other's hint; a key no workflow still needs loses
 * its hint (it goes before any hinted one) */
static void hint_all(const srv_flow *f, fwf *w, const int *dist, kvf_chunk_cache *cache) {
    int n = 0;
    for (int i = 0; i < w->n_steps; i++) w->dist[i] = dist[i], n += w->steps[i].n_keys;
    key_use *u = malloc(sizeof *u * (size_t)(n > 0 ? n : 1));
    if (!u) return; /* the old hints stay: eviction falls back on them and LRU */
    n = 0;
    for (int i = 0; i < w->n_steps; i++)
        for (int k = 0; k < w->steps[i].n_keys; k++)
            u[n++] = (key_use){w->steps[i].keys[k], dist[i] >= 0 ? dist[i] : INT_MAX};
    qsort(u, (size_t)n, sizeof *u, by_key);
    int m = 0; /* one entry per key, its nearest step */
    for (int i = 0; i < n; i++)
        if (m > 0 && !by_key(&u[m - 1], &u[i]))
            u[m - 1].d = u[i].d < u[m - 1].d ? u[i].d : u[m - 1].d;
        else
            u[m++] = u[i];
    for (int o = 0; o < f->n_wf; o++) {
        const fwf *x = f->wf[o];
        if (x == w || strcmp(x->ns, w->ns)) continue;
        for (int t = 0; t < x->n_steps; t++)
            for (int k = 0; x->dist[t] >= 0 && k < x->steps[t].n_keys; k++) {
                key_use  q = {x->steps[t].keys[k], 0};
                key_use *h = bsearch(&q, u, (size_t)m, sizeof *u, by_key);
                if (h && x->dist[t] < h->d) h->d = x->dist[t];
            }
    }
    qsort(u, (size_t)m, sizeof *u, by_dist_desc);
    kvf_chunk_key *run = malloc(sizeof *run * (size_t)(m > 0 ? m : 1));
    for (int i = 0, r = 0; run && i < m; i++) { /* runs of one distance, one call each */
        run[r++] = u[i].k;
        if (i + 1 == m || u[i + 1].d != u[i].d) {
            cache->ops->hint(cache, run, r, KVF_HINT_FLOW, u[i].d == INT_MAX ? KVF_STEPS_NONE : (uint32_t)u[i].d);
            r = 0;
        }
    }
    free(run), free(u);
}

void srv_flow_step_done(srv_flow *f, const char *ns, const srv_flow_hint *h, kvf_chunk_cache *cache) {
    if (!f || !h || !h->wf[0] || !h->step[0] || !cache || !cache->ops->hint) return;
    fwf *w   = wf_find(f, ns, h->wf);
    int  cur = w ? step_find(w, h->step) : -1;
    if (cur < 0) return;
    /* distance from the nearest next step, plus the one step still to start */
    int dist[SRV_FLOW_STEPS], dn[SRV_FLOW_STEPS];
    for (int i = 0; i < w->n_steps; i++) dist[i] = -1;
    for (int e = 0; e < w->steps[cur].n_next; e++) {
        distances(w, w->steps[cur].next[e], dn);
        for (int i = 0; i < w->n_steps; i++)
            if (dn[i] >= 0 && (dist[i] < 0 || dn[i] + 1 < dist[i])) dist[i] = dn[i] + 1;
    }
    hint_all(f, w, dist, cache);
}

int srv_flow_step(srv_flow *f, const char *ns, const srv_flow_hint *h, const kvf_chunk_key *keys,
                  int n_keys, kvf_chunk_cache *cache) {
    if (!f || !h || !h->wf[0] || !h->step[0]) return 0;
    fwf *w = wf_get(f, ns, h->wf);
    if (!w) return -1;
    w->used = ++f->clock;
    int cur = step_get(w, h->step);
    if (cur < 0) return 0; /* the workflow has too many steps: this one is not tracked */
    w->cur = cur, w->take = 0;
    fstep *s = &w->steps[cur];
    if (n_keys > 0) {
        kvf_chunk_key *k = malloc(sizeof *k * (size_t)n_keys);
        if (!k) return -1;
        memcpy(k, keys, sizeof *k * (size_t)n_keys);
        free(s->keys);
        s->keys   = k;
        s->n_keys = n_keys;
    }
    s->n_next = 0; /* the latest hint says what follows */
    for (int e = 0; e < h->n_next && e < SRV_FLOW_NEXT; e++) {
        int t = step_get(w, h->next[e]);
        if (t >= 0) s->next[s->n_next++] = t;
    }
    if (!cache || !cache->ops->hint) return 0;
    int dist[SRV_FLOW_STEPS];
    distances(w, cur, dist);
    hint_all(f, w, dist, cache);
    int warmed = 0;
    if (cache->ops->warm)
        for (int i = 0; i < w->n_steps; i++)
            if (dist[i] == 1 && w->steps[i].n_keys) {
                cache->ops->warm(cache, w->steps[i].keys, w->steps[i].n_keys);
                warmed += w->steps[i].n_keys;
            }
    return warmed;
}

int srv_flow_remember(srv_flow *f, const char *ns, const srv_flow_hint *h, const kvf_segment *segs,
                      int32_t n_segs, const uint8_t *shared, const kvf_fuse_params *fp) {
    if (!f || !h || !h->wf[0] || !h->step[0] || !segs || n_segs < 2 || !fp) return 0;
    fwf *w = wf_find(f, ns, h->wf);
    int  i = w ? step_find(w, h->step) : -1;
    if (i < 0) return 0; /* srv_flow_step did not track it */
    fstep *st = &w->steps[i];
    step_forget_docs(f, st);
    int     nd  = n_segs - 2;
    int64_t tot = 0;
    for (int32_t k = 0; k + 1 < n_segs; k++) tot += segs[k].n > 0 ? segs[k].n : 0;
    /* room: the least recently hinted workflows forget their documents first (this one last) */
    while (f->n_tok + tot > SRV_FLOW_TOKENS) {
        fwf *old = NULL;
        for (int k = 0; k < f->n_wf; k++) {
            fwf *o = f->wf[k];
            if (o == w) continue;
            bool has = false;
            for (int t = 0; t < o->n_steps && !has; t++) has = o->steps[t].tok != NULL;
            if (has && (!old || o->used < old->used)) old = o;
        }
        if (!old) break;
        for (int t = 0; t < old->n_steps; t++) step_forget_docs(f, &old->steps[t]);
    }
    for (int t = 0; f->n_tok + tot > SRV_FLOW_TOKENS && t < w->n_steps; t++)
        if (t != i) step_forget_docs(f, &w->steps[t]);
    if (f->n_tok + tot > SRV_FLOW_TOKENS || nd <= 0) return 0; /* too large to keep: not computed ahead */
    st->tok    = malloc(sizeof(int32_t) * (size_t)(tot > 0 ? tot : 1));
    st->off    = malloc(sizeof(int32_t) * (size_t)(nd + 1));
    st->shared = calloc((size_t)nd, 1);
    if (!st->tok || !st->off || !st->shared) {
        free(st->tok), free(st->off), free(st->shared);
        st->tok = st->off = NULL, st->shared = NULL;
        return -1;
    }
    int32_t n = 0;
    for (int32_t k = 0; k + 1 < n_segs; k++) {
        if (k > 0) st->off[k - 1] = n;
        if (segs[k].n > 0) memcpy(st->tok + n, segs[k].ids, sizeof(int32_t) * (size_t)segs[k].n), n += segs[k].n;
        if (k > 0 && shared) st->shared[k - 1] = shared[k];
    }
    st->off[nd] = n;
    st->n_docs  = nd;
    st->fp      = *fp;
    f->n_tok += n;
    return 0;
}

/* the `idx`-th document (over the steps one edge from w->cur, in step order) of workflow w;
 * false past the last */
static bool next_doc(const fwf *w, int idx, int *step, int *doc) {
    if (w->cur < 0 || w->cur >= w->n_steps) return false;
    int dist[SRV_FLOW_STEPS];
    distances(w, w->cur, dist);
    for (int i = 0; i < w->n_steps; i++) {
        if (dist[i] != 1 || !w->steps[i].tok) continue;
        for (int d = 0; d < w->steps[i].n_docs; d++)
            if (w->steps[i].off[d + 1] > w->steps[i].off[d] && idx-- == 0) {
                *step = i, *doc = d;
                return true;
            }
    }
    return false;
}

/* the most recently hinted workflow with a document left to hand out, or NULL */
static fwf *next_wf(const srv_flow *f, int *step, int *doc) {
    fwf *best = NULL;
    for (int k = 0; k < f->n_wf; k++) {
        fwf *w = f->wf[k];
        int  s, d;
        if ((!best || w->used > best->used) && next_doc(w, w->take, &s, &d)) best = w, *step = s, *doc = d;
    }
    return best;
}

bool srv_flow_has_doc(const srv_flow *f) {
    int s, d;
    return f && next_wf(f, &s, &d) != NULL;
}

int srv_flow_take_doc(srv_flow *f, srv_flow_doc *out) {
    int  si, di;
    fwf *w = f ? next_wf(f, &si, &di) : NULL;
    if (!w) return 0;
    w->take++;
    const fstep *st = &w->steps[si];
    memset(out, 0, sizeof *out);
    snprintf(out->ns, sizeof out->ns, "%s", w->ns);
    out->segs[0] = (kvf_segment){.ids = st->tok, .n = st->off[0]};
    out->segs[1] = (kvf_segment){.ids = st->tok + st->off[di], .n = st->off[di + 1] - st->off[di]};
    out->segs[2] = (kvf_segment){.ids = st->tok + st->off[di], .n = 1}; /* a stand-in question */
    out->shared  = st->shared[di] != 0;
    out->fp      = st->fp;
    return 1;
}

int srv_flow_distance(const srv_flow *f, const char *ns, const char *wf, const char *from,
                      const char *step) {
    const fwf *w = f ? wf_find(f, ns, wf) : NULL;
    if (!w) return -1;
    int a = step_find(w, from), b = step_find(w, step);
    if (a < 0 || b < 0) return -1;
    int dist[SRV_FLOW_STEPS];
    distances(w, a, dist);
    return dist[b];
}
