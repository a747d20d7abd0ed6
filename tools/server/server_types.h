/* server_types.h - the vocabulary every part of `kvfuse serve` shares: endpoints (routing and
 * request counters), the server status the API reports, tenant namespaces, and the opaque
 * handles of the document registry and the metrics. A leaf header: it includes nothing of the
 * server, so server_api, server_docs and server_metrics depend on it and not on each other. */
#ifndef KVF_SERVER_TYPES_H
#define KVF_SERVER_TYPES_H

#include <stdbool.h>
#include <stdint.h>

typedef struct srv_docs    srv_docs;    /* server_docs.h */
typedef struct srv_doc     srv_doc;     /* server_docs.h */
typedef struct srv_metrics srv_metrics; /* server_metrics.h */

#define SRV_NS_MAX 80 /* tenant namespace: "default", "shared", "t:<name>" */

/* Endpoints, for routing and the request counters. */
typedef enum {
    SRV_EP_CHAT = 0,
    SRV_EP_COMPLETIONS,
    SRV_EP_DOCUMENTS, /* /v1/documents */
    SRV_EP_DOCUMENT,  /* /v1/documents/{id} */
    SRV_EP_MODELS,
    SRV_EP_HEALTH,
    SRV_EP_METRICS,
    SRV_EP_AUDIT, /* /v1/audit */
    SRV_EP_OTHER,
    SRV_EP_COUNT
} srv_endpoint;

/* "chat_completions", "completions", ...: the endpoint label of the request counters. */
static inline const char *srv_endpoint_name(srv_endpoint e) {
    static const char *const names[SRV_EP_COUNT] = {"chat_completions", "completions", "documents",
                                                    "document",         "models",      "health",
                                                    "metrics",          "audit",
                                                    "other"};
    return (unsigned)e < SRV_EP_COUNT ? names[e] : "other";
}

/* Server state the API reports (health, metrics); filled by a callback. */
typedef struct srv_status {
    int     queued, active, slots, max_queue;
    bool    draining;
    int64_t documents;
    int64_t kv_resident; /* bytes of the slots' KV caches in memory now (demand-paged) */
    int64_t kv_reserved; /* bytes of address space the slots reserve for their KV caches */
    int64_t kv_budget;   /* KV tokens the slots may hold at once (0 = no limit) */
} srv_status;

#endif /* KVF_SERVER_TYPES_H */
