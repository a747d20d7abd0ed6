/* server_docs.c - the per-tenant document registry of `kvfuse serve` (see server_docs.h). */
#include "server/server_docs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define DOC_BUCKETS 1024

typedef struct ns_usage {
    char    ns[SRV_NS_MAX];
    int64_t docs, bytes;
} ns_usage;

struct srv_docs {
    pthread_mutex_t mu;
    srv_doc        *bucket[DOC_BUCKETS];
    int64_t         n;
    int64_t         max_docs, max_bytes;
    ns_usage       *use;
    int             n_use, cap_use;
};

srv_docs *srv_docs_new(int64_t max_docs, int64_t max_bytes) {
    srv_docs *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    pthread_mutex_init(&d->mu, NULL);
    d->max_docs  = max_docs;
    d->max_bytes = max_bytes;
    return d;
}

static void doc_free(srv_doc *doc) {
    free(doc->text);
    free(doc->tok);
    free(doc);
}

srv_doc *srv_doc_retain(srv_doc *doc) {
    if (doc) atomic_fetch_add(&doc->refs, 1);
    return doc;
}

void srv_doc_release(srv_doc *doc) {
    if (doc && atomic_fetch_sub(&doc->refs, 1) == 1) doc_free(doc);
}

void srv_docs_free(srv_docs *d) {
    if (!d) return;
    for (int b = 0; b < DOC_BUCKETS; b++) {
        srv_doc *doc = d->bucket[b];
        while (doc) {
            srv_doc *next = doc->next;
            srv_doc_release(doc);
            doc = next;
        }
    }
    free(d->use);
    pthread_mutex_destroy(&d->mu);
    free(d);
}

void srv_doc_id(const char *ns, const char *text, size_t len, char out[SRV_DOC_ID_LEN + 1]) {
    XXH3_state_t st;
    XXH3_128bits_reset(&st);
    XXH3_128bits_update(&st, ns, strlen(ns) + 1); /* the NUL separates namespace and text */
    XXH3_128bits_update(&st, text, len);
    XXH128_hash_t       h = XXH3_128bits_digest(&st);
    XXH128_canonical_t  c;
    XXH128_canonicalFromHash(&c, h);
    static const char hx[] = "0123456789abcdef";
    memcpy(out, "doc-", 4);
    for (int i = 0; i < 16; i++) {
        out[4 + 2 * i]     = hx[c.digest[i] >> 4];
        out[4 + 2 * i + 1] = hx[c.digest[i] & 15];
    }
    out[SRV_DOC_ID_LEN] = 0;
}

bool srv_doc_id_valid(const char *s, size_t n) {
    if (n != SRV_DOC_ID_LEN || memcmp(s, "doc-", 4) != 0) return false;
    for (size_t i = 4; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static unsigned bucket_of(const char *id) {
    /* ids are hashes already: use hex digits of the low end */
    unsigned h = 0;
    for (int i = SRV_DOC_ID_LEN - 3; i < SRV_DOC_ID_LEN; i++) h = h * 16 + (unsigned)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return h % DOC_BUCKETS;
}

static srv_doc *find_locked(srv_docs *d, const char *id) {
    for (srv_doc *doc = d->bucket[bucket_of(id)]; doc; doc = doc->next)
        if (strcmp(doc->id, id) == 0) return doc;
    return NULL;
}

static ns_usage *usage_locked(srv_docs *d, const char *ns, bool create) {
    for (int i = 0; i < d->n_use; i++)
        if (strcmp(d->use[i].ns, ns) == 0) return &d->use[i];
    if (!create) return NULL;
    if (d->n_use == d->cap_use) {
        int       nc = d->cap_use ? 2 * d->cap_use : 8;
        ns_usage *p  = realloc(d->use, sizeof *p * (size_t)nc);
        if (!p) return NULL;
        d->use = p, d->cap_use = nc;
    }
    ns_usage *u = &d->use[d->n_use++];
    memset(u, 0, sizeof *u);
    snprintf(u->ns, sizeof u->ns, "%s", ns);
    return u;
}

static bool visible(const srv_doc *doc, const char *ns) {
    return doc->shared || strcmp(doc->owner, ns) == 0;
}

srv_docs_status srv_docs_put(srv_docs *d, const char *owner, bool shared, const char *text,
                             size_t len, int32_t *tok, int32_t n_tok, srv_doc **out,
                             bool *created) {
    *out     = NULL;
    *created = false;
    char id[SRV_DOC_ID_LEN + 1];
    srv_doc_id(shared ? SRV_NS_SHARED : owner, text, len, id);
    pthread_mutex_lock(&d->mu);
    srv_doc *doc = find_locked(d, id);
    if (doc) {
        *out = srv_doc_retain(doc);
        pthread_mutex_unlock(&d->mu);
        free(tok);
        return SRV_DOCS_OK;
    }
    ns_usage *u = usage_locked(d, owner, true);
    if (!u) {
        pthread_mutex_unlock(&d->mu);
        free(tok);
        return SRV_DOCS_NOMEM;
    }
    if ((d->max_docs > 0 && u->docs + 1 > d->max_docs) ||
        (d->max_bytes > 0 && u->bytes + (int64_t)len > d->max_bytes)) {
        pthread_mutex_unlock(&d->mu);
        free(tok);
        return SRV_DOCS_FULL;
    }
    doc = calloc(1, sizeof *doc);
    char *copy = malloc(len + 1);
    if (!doc || !copy) {
        pthread_mutex_unlock(&d->mu);
        free(doc), free(copy), free(tok);
        return SRV_DOCS_NOMEM;
    }
    memcpy(copy, text, len);
    copy[len] = 0;
    atomic_init(&doc->refs, 1); /* the registry's */
    memcpy(doc->id, id, sizeof id);
    snprintf(doc->owner, sizeof doc->owner, "%s", owner);
    doc->shared  = shared;
    doc->text    = copy;
    doc->len     = len;
    doc->tok     = tok;
    doc->n_tok   = n_tok;
    doc->created = (int64_t)time(NULL);
    unsigned b   = bucket_of(id);
    doc->next    = d->bucket[b];
    d->bucket[b] = doc;
    d->n++;
    u->docs++;
    u->bytes += (int64_t)len;
    *out     = srv_doc_retain(doc);
    *created = true;
    pthread_mutex_unlock(&d->mu);
    return SRV_DOCS_OK;
}

srv_doc *srv_docs_get(srv_docs *d, const char *ns, const char *id) {
    if (!srv_doc_id_valid(id, strlen(id))) return NULL;
    pthread_mutex_lock(&d->mu);
    srv_doc *doc = find_locked(d, id);
    doc          = doc && visible(doc, ns) ? srv_doc_retain(doc) : NULL;
    pthread_mutex_unlock(&d->mu);
    return doc;
}

int srv_docs_delete(srv_docs *d, const char *ns, const char *id) {
    if (!srv_doc_id_valid(id, strlen(id))) return -1;
    pthread_mutex_lock(&d->mu);
    srv_doc **pp = &d->bucket[bucket_of(id)];
    while (*pp && strcmp((*pp)->id, id) != 0) pp = &(*pp)->next;
    srv_doc *doc = *pp;
    int      rc  = 0;
    if (!doc || !visible(doc, ns)) {
        rc = -1;
    } else if (strcmp(doc->owner, ns) != 0) {
        rc = -2;
    } else {
        *pp = doc->next;
        d->n--;
        ns_usage *u = usage_locked(d, doc->owner, false);
        if (u) u->docs--, u->bytes -= (int64_t)doc->len;
        srv_doc_release(doc);
    }
    pthread_mutex_unlock(&d->mu);
    return rc;
}

void srv_docs_list(srv_docs *d, const char *ns, int (*fn)(const srv_doc *doc, void *user),
                   void *user) {
    pthread_mutex_lock(&d->mu);
    for (int b = 0; b < DOC_BUCKETS; b++)
        for (srv_doc *doc = d->bucket[b]; doc; doc = doc->next)
            if (visible(doc, ns) && fn(doc, user)) goto out;
out:
    pthread_mutex_unlock(&d->mu);
}

int64_t srv_docs_count(srv_docs *d) {
    pthread_mutex_lock(&d->mu);
    int64_t n = d->n;
    pthread_mutex_unlock(&d->mu);
    return n;
}
