/* server_flow.c - the workflow registry of KVFlow (server_flow.h). */
#include "server/server_flow.h"
#include "server/server_types.h"
#include "store/steps.h"

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
} fstep;

typedef struct fwf {
    char     ns[SRV_NS_MAX];
    char     id[SRV_FLOW_NAME];
    fstep    steps[SRV_FLOW_STEPS];
    int      n_steps;
    uint64_t used; /* registry clock at the last hint */
} fwf;

struct srv_flow {
    fwf     *wf[SRV_FLOW_MAX];
    int      n_wf;
    uint64_t clock;
};

srv_flow *srv_flow_new(void) {
    return calloc(1, sizeof(srv_flow));
}

static void wf_free(fwf *w) {
    if (!w) return;
    for (int i = 0; i < w->n_steps; i++) free(w->steps[i].keys);
    free(w);
}

void srv_flow_free(srv_flow *f) {
    if (!f) return;
    for (int i = 0; i < f->n_wf; i++) wf_free(f->wf[i]);
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
    if (f->n_wf == SRV_FLOW_MAX) {
        int old = 0;
        for (int i = 1; i < f->n_wf; i++)
            if (f->wf[i]->used < f->wf[old]->used) old = i;
        wf_free(f->wf[old]);
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

int srv_flow_step(srv_flow *f, const char *ns, const srv_flow_hint *h, const kvf_chunk_key *keys,
                  int n_keys, kvf_chunk_cache *cache) {
    if (!f || !h || !h->wf[0] || !h->step[0]) return 0;
    fwf *w = wf_get(f, ns, h->wf);
    if (!w) return -1;
    w->used = ++f->clock;
    int cur = step_get(w, h->step);
    if (cur < 0) return 0; /* the workflow has too many steps: this one is not tracked */
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
    int dist[SRV_FLOW_STEPS], max_d = 0;
    distances(w, cur, dist);
    for (int i = 0; i < w->n_steps; i++) max_d = dist[i] > max_d ? dist[i] : max_d;
    /* farthest first, so that a key several steps share ends with its nearest use; the steps
     * this one cannot reach lose their hints (their keys go before any hinted one) */
    for (int i = 0; i < w->n_steps; i++)
        if (dist[i] < 0 && w->steps[i].n_keys)
            cache->ops->hint(cache, w->steps[i].keys, w->steps[i].n_keys, KVF_STEPS_NONE);
    for (int d = max_d; d >= 0; d--)
        for (int i = 0; i < w->n_steps; i++)
            if (dist[i] == d && w->steps[i].n_keys)
                cache->ops->hint(cache, w->steps[i].keys, w->steps[i].n_keys, (uint32_t)d);
    int warmed = 0;
    if (cache->ops->warm)
        for (int i = 0; i < w->n_steps; i++)
            if (dist[i] == 1 && w->steps[i].n_keys) {
                cache->ops->warm(cache, w->steps[i].keys, w->steps[i].n_keys);
                warmed += w->steps[i].n_keys;
            }
    return warmed;
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
