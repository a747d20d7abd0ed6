/* server_api.h - the pure part of `kvfuse serve`: HTTP requests (method, path, headers, body)
 * in, either a complete response or a validated inference job out; and the JSON of completion
 * responses and streaming chunks. No sockets and no inference here, so the unit tests and the
 * libFuzzer target (fuzz/fuzz_server.c) drive it directly.
 *
 * A job (srv_job) is shared by the HTTP thread that received it and the inference thread
 * (server_sched.c): the request part is immutable once submitted; the progress part (state,
 * generated text, statistics) is guarded by job->mu and announced on job->cv.
 */
#ifndef KVF_SERVER_API_H
#define KVF_SERVER_API_H

#include "kvfuse.h"
#include "server/server_flow.h"
#include "server/server_metrics.h"
#include "server/server_types.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_MAX_STOP  4
#define SRV_STOP_MAX  64 /* bytes of one stop string */

/* The endpoint a request path belongs to ("/v1/x" and "/x" alike). */
srv_endpoint srv_api_endpoint(const char *path);

/* ---- tenants (API keys) ---------------------------------------------------------------- */

typedef struct srv_tenant {
    char *key;             /* the API key (secret) */
    char  name[65];        /* tenant name: [A-Za-z0-9._-]{1,64} */
    char  ns[SRV_NS_MAX];  /* "t:<name>" */
    bool  admin;           /* may read /metrics and /v1/audit */
} srv_tenant;

typedef struct srv_tenants {
    srv_tenant *t;
    int         n;
} srv_tenants;

/* Parse a keys file: one "KEY TENANT [admin]" per line; blank lines and lines starting with
 * '#' are skipped. Keys are 8..256 printable ASCII characters; several keys may name the same
 * tenant (they share its documents and caches). Returns NULL with a message naming the line
 * on error. */
srv_tenants *srv_tenants_parse(const char *text, size_t len, char *err, size_t errlen);
srv_tenants *srv_tenants_load(const char *path, char *err, size_t errlen);
void         srv_tenants_free(srv_tenants *t);
/* The tenant whose key is `key` (compared in constant time over every key), or NULL. */
const srv_tenant *srv_tenants_find(const srv_tenants *t, const char *key, size_t len);

/* ---- UTF-8 ----------------------------------------------------------------------------- */

/* true when s[0..n) is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF); else false and
 * *bad = offset of the first bad byte. */
bool srv_utf8_valid(const char *s, size_t n, size_t *bad);
/* Bytes at the end of s[0..n) that start a valid but unfinished sequence (0..3): text to hold
 * back until the next token completes it. */
size_t srv_utf8_incomplete_tail(const char *s, size_t n);
/* A NUL-terminated copy of s[0..n) with every invalid sequence replaced by U+FFFD (malloc'd;
 * NULL when out of memory). */
char *srv_utf8_sanitize(const char *s, size_t n, size_t *out_len);

/* ---- jobs ------------------------------------------------------------------------------ */

typedef enum { SRV_JOB_QUEUED = 0, SRV_JOB_RUNNING, SRV_JOB_DONE } srv_job_state;

typedef struct srv_job {
    /* --- request: set by srv_api_handle, read-only afterwards --- */
    srv_endpoint ep;
    bool         chat;          /* chat.completion (else text_completion) */
    bool         stream, include_usage;
    char         id[48];        /* "chatcmpl-..." / "cmpl-..." */
    int64_t      created;       /* Unix seconds */
    char         model[128];
    char         ns[SRV_NS_MAX]; /* tenant namespace of the caller */
    int32_t      n_segs;        /* 1: a plain prompt; >= 3: prefix + documents + question */
    int32_t    **seg_ids;       /* [n_segs] owned */
    kvf_segment *segs;          /* [n_segs] views of seg_ids */
    int32_t      n_prompt;      /* tokens of all segments */
    srv_doc    **docs;          /* registered documents used (retained), for shared routing */
    int32_t      n_docs;        /* of docs[] */
    int32_t      n_documents;   /* documents in the prompt (registered + inline) */
    bool         fused;         /* documents given: fusion with fp */
    kvf_fuse_params fp;
    kvf_attn_params attn;       /* prefill attention (kvfuse.attn, else the server's --attn) */
    kvf_decode_attn_params dattn; /* decode attention (kvfuse.decode_attn, else --decode-attn) */
    kvf_sampler_params sp;      /* temp 0 = greedy */
    srv_flow_hint flow;         /* kvfuse.workflow / step / next (KVFlow); flow.wf[0] == 0: none */
    int32_t     *utt;           /* plain chat prompts: token offset where each message starts */
    int32_t      n_utt;         /* (its template opening included); the last is the question */
    int32_t      q_text0, q_text1; /* plain chat prompts: the last message's own text, without the
                                    * template around it, is tokens [q_text0, q_text1) */
    int32_t     *conv_probe;    /* kvfuse.conv_probe's tokens (owned), NULL: none */
    int32_t      n_conv_probe;
    int32_t      max_tokens;
    char         stop[SRV_MAX_STOP][SRV_STOP_MAX + 1];
    int          n_stop;
    double       t_arrival_ms;  /* monotonic ms */
    double       timeout_ms;    /* 0 = none */

    /* --- queue order: the scheduler thread only --- */
    int32_t      kv_cached;     /* prompt tokens whose KV is already cached (estimate) */
    bool         kv_scored;     /* kv_cached was computed */
    uint64_t     kv_epoch;      /* the scheduler's cache epoch when kv_cached was computed */
    int32_t      overtaken;     /* later arrivals admitted before this job while it waited */
    uint8_t    (*ckeys)[16];    /* a fused job's chunk keys (kvf_fuse_chunk_keys), or NULL */
    int32_t      n_ckeys;
    bool         kv_hinted;     /* its keys carry the queue's eviction hints (to be cleared) */
    uint64_t     pf_unit_last;  /* the scheduler's prefill units run when its prompt was in */

    /* --- progress: guarded by mu --- */
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    atomic_int      refs;
    atomic_bool     cancel;     /* set by the HTTP side when the client is gone */
    srv_job_state   state;
    int             err_status; /* != 0: failed with this HTTP status */
    char            err_type[40];
    char            err_msg[256];
    char           *text;       /* generated bytes */
    size_t          len, cap;
    size_t          ready;      /* bytes of text that may be sent (see srv_job_push) */
    int32_t         n_gen;      /* tokens generated */
    const char     *finish;     /* "stop", "length" once done */
    kvf_fuse_stats  fst;        /* fused requests (and method full), else zero */
    int32_t         cached_tokens; /* prompt tokens whose KV was reused */
    int32_t         flow_warmed;   /* KVFlow: chunks of the next steps asked up from disk/Redis */
    bool            conv_bounded;  /* the history was prefilled under --conv-budget: */
    bool            conv_probe_q;  /* ... with the question as the probe (else its episode) */
    int32_t         conv_episode, conv_episodes, conv_kept, conv_peak, conv_evictions, conv_probe_n;
    int32_t         conv_chunk;    /* ... keeping whole runs of this many cells (0: per head) */
    int32_t         conv_layer_min, conv_layer_max; /* --conv-layers: least and most cells a
                                                       layer could hold (0: uniform) */
    double          queue_ms, prefill_ms, ttft_ms, decode_ms;
    int32_t         batch_max;  /* largest decode batch this job was part of */
} srv_job;

srv_job *srv_job_new(void);
srv_job *srv_job_retain(srv_job *j);
void     srv_job_release(srv_job *j);
/* Append generated bytes (caller holds j->mu). Looks for the stop strings in the text; on a
 * match the text is cut before it and true is returned. Updates j->ready: everything except an
 * unfinished UTF-8 sequence at the end and a tail that may still become a stop string. */
bool srv_job_push(srv_job *j, const char *piece, size_t n);
/* Mark the job done (caller holds j->mu): finish reason, or an error (status != 0); makes the
 * whole text ready and wakes waiters. */
void srv_job_done_locked(srv_job *j, const char *finish, int status, const char *type,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* What the metrics count of a job that left the server (caller holds j->mu or owns it). */
srv_job_outcome srv_job_outcome_of(const srv_job *j);

/* ---- responses ------------------------------------------------------------------------- */

typedef struct srv_response {
    int         status;
    char       *body; /* malloc'd */
    size_t      len;
    const char *ctype;       /* static */
    int         retry_after; /* seconds; 0 = no Retry-After header */
    const char *allow;       /* Allow header for 405; static */
} srv_response;

void srv_response_clear(srv_response *r);
/* {"error": {"message", "type", "param", "code"}} with the given status. */
void srv_response_error(srv_response *r, int status, const char *type, const char *param,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Complete (non-streaming) response of a finished job: 200 with the completion object, or the
 * job's error. Caller holds j->mu or the job is done. */
void srv_job_response(const srv_job *j, srv_response *r);
/* Server-sent event chunks (each "data: {...}\n\n", malloc'd, *n its length):
 * role  - the first chat chunk (delta.role = "assistant");
 * delta - content text[from, to) of the job;
 * final - finish_reason (+ the kvfuse object);
 * usage - the usage chunk (choices: []) when stream_options.include_usage;
 * error - {"error": ...} of a failed job; done - "data: [DONE]\n\n". */
char *srv_sse_role(const srv_job *j, size_t *n);
char *srv_sse_delta(const srv_job *j, size_t from, size_t to, size_t *n);
char *srv_sse_final(const srv_job *j, size_t *n);
char *srv_sse_usage(const srv_job *j, size_t *n);
char *srv_sse_error(const srv_job *j, size_t *n);
char *srv_sse_done(size_t *n);

/* ---- the request handler --------------------------------------------------------------- */

typedef struct srv_api_config {
    const char *model_id;       /* name in /v1/models and responses */
    int32_t     n_ctx;          /* context of a slot: prompt + completion must fit */
    int32_t     max_tokens;     /* default completion limit of chat requests (completions: 16) */
    int32_t     max_docs;       /* documents per request */
    int32_t     max_ingest;     /* documents per POST /v1/documents */
    size_t      max_body;       /* bytes (413 above) */
    kvf_fuse_params fp;         /* defaults for document requests (method, ratio, evict) */
    kvf_attn_params attn;       /* default prefill attention (--attn) */
    kvf_decode_attn_params dattn; /* default decode attention (--decode-attn) */
    float       temperature;    /* default when the request has none */
    double      timeout_ms;     /* per request (0 = none) */
    bool        public_metrics; /* /metrics without an admin key even when keys are set */
} srv_api_config;

typedef struct srv_api {
    const kvf_model *model;
    srv_api_config   cfg;
    srv_docs        *docs;
    srv_tenants     *tenants; /* NULL: no API keys */
    srv_metrics     *metrics; /* may be NULL */
    void (*status_fn)(void *user, srv_status *out); /* may be NULL */
    void            *status_user;
    struct srv_audit *audit;  /* the live fidelity audit (server_audit.h); NULL: off */
    atomic_uint_fast64_t seq;
    uint64_t         id_salt;
} srv_api;

srv_api_config srv_api_default_config(void);
/* model must have a chat template for chat requests (else they get 400). */
void srv_api_init(srv_api *a, const kvf_model *model, const srv_api_config *cfg, srv_docs *docs,
                  srv_tenants *tenants, srv_metrics *metrics);

typedef struct srv_request {
    const char *method;    /* "GET", "POST", ... */
    const char *path;      /* without the query string */
    const char *auth;      /* Authorization header or NULL */
    const char *api_key;   /* X-Api-Key header or NULL */
    const char *body;
    size_t      body_len;
    bool        body_too_large;
} srv_request;

typedef enum { SRV_API_RESPONSE = 0, SRV_API_JOB = 1 } srv_api_result;

/* Handle one request. SRV_API_RESPONSE: *rs is the complete answer. SRV_API_JOB: *job is a
 * new inference job (one reference, owned by the caller) to submit to the scheduler; rs is
 * untouched. Never crashes on any input. */
srv_api_result srv_api_handle(srv_api *a, const srv_request *rq, srv_response *rs, srv_job **job);
/* The answer when the scheduler refuses a job: 429 (busy) or 503 (shutting down). */
void srv_api_busy(srv_response *rs, bool shutting_down, int retry_after);

double srv_now_ms(void); /* monotonic */

#endif /* KVF_SERVER_API_H */
