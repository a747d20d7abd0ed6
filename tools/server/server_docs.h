/* server_docs.h - the document registry of `kvfuse serve`: documents ingested through
 * POST /v1/documents, per tenant namespace.
 *
 * A document's id is "doc-" + the XXH3-128 (hex) of its namespace and text, so the same text
 * ingested twice by one tenant gets the same id, and two tenants' ids never coincide. A
 * document ingested with "shared": true lives in the "shared" namespace: every tenant can read
 * and use it (and its KV cache entries), only the tenant that ingested it may delete it.
 * Documents keep their text and token ids; they are reference counted so a request that uses
 * one keeps it alive after a DELETE. Thread-safe.
 */
#ifndef KVF_SERVER_DOCS_H
#define KVF_SERVER_DOCS_H

#include "server/server_types.h"

#include <stddef.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define SRV_DOC_ID_LEN 36 /* "doc-" + 32 hex */
#define SRV_NS_SHARED  "shared"

struct srv_doc {
    atomic_int      refs;
    char            id[SRV_DOC_ID_LEN + 1];
    char            owner[SRV_NS_MAX]; /* namespace of the tenant that ingested it */
    bool            shared;
    char           *text; /* NUL-terminated */
    size_t          len;
    int32_t        *tok;  /* token ids (plain text, no special tokens) */
    int32_t         n_tok;
    int64_t         created; /* Unix seconds */
    struct srv_doc *next;    /* hash chain */
};

/* max_docs: documents per namespace (0 = unlimited); max_bytes: text bytes per namespace
 * (0 = unlimited). */
srv_docs *srv_docs_new(int64_t max_docs, int64_t max_bytes);
void      srv_docs_free(srv_docs *d);

/* The id of text in namespace ns (shared documents use SRV_NS_SHARED). */
void srv_doc_id(const char *ns, const char *text, size_t len, char out[SRV_DOC_ID_LEN + 1]);
/* true when s looks like a document id ("doc-" + 32 lowercase hex). */
bool srv_doc_id_valid(const char *s, size_t n);

typedef enum { SRV_DOCS_OK = 0, SRV_DOCS_FULL = -1, SRV_DOCS_NOMEM = -2 } srv_docs_status;

/* Add a document owned by namespace `owner` (shared: visible to all). Takes ownership of tok
 * (malloc'd) in every case. If the id exists already, that document is returned (*created =
 * false) and tok is freed. *out is a new reference. */
srv_docs_status srv_docs_put(srv_docs *d, const char *owner, bool shared, const char *text,
                             size_t len, int32_t *tok, int32_t n_tok, srv_doc **out,
                             bool *created);
/* The document `id` if namespace ns may see it (its own or shared), retained; else NULL. */
srv_doc *srv_docs_get(srv_docs *d, const char *ns, const char *id);
/* 0 deleted; -1 not visible to ns (404); -2 shared and owned by another namespace (403). */
int srv_docs_delete(srv_docs *d, const char *ns, const char *id);
/* Visit the documents ns may see (owned or shared), in no particular order; fn returns
 * nonzero to stop. Runs under the registry lock: fn must not call back into it. */
void srv_docs_list(srv_docs *d, const char *ns, int (*fn)(const srv_doc *doc, void *user),
                   void *user);
int64_t  srv_docs_count(srv_docs *d);
srv_doc *srv_doc_retain(srv_doc *doc);
void     srv_doc_release(srv_doc *doc);

#endif /* KVF_SERVER_DOCS_H */
