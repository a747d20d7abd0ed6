/* server_audit.h - the live fidelity audit of `kvfuse serve` (--audit-rate): a sample of fused
 * requests is also prefilled in full, in a session of its own, while the server is idle; the
 * fused first-token distribution and greedy answer are compared with full prefill's.
 *
 * Sampling is deterministic: an accumulator adds --audit-rate per fused request and audits the
 * request where it reaches 1 (rate 0.02: every 50th fused request; rate 1: every one).
 * Requests with method full are not audited (they are the reference).
 *
 * The inference thread (server_sched.c) drives everything: srv_audit_begin when a fused
 * prefill is done (the fused logits are copied), srv_audit_token for every token the live
 * request emits, srv_audit_end when it leaves; srv_audit_step runs one unit of audit work
 * (a micro-batch of --audit-chunk prompt tokens of the full prefill, or one greedy decode
 * step), only when no request is queued or running, and only as often as --audit-cpu allows.
 * A live request that arrives during an audit therefore waits for at most one unit, and the
 * audit resumes where it stopped once the server is idle again.
 *
 * Compared: first-token KL(full || fused) and whether the argmax first tokens agree (every
 * audit); and for greedy requests (temperature 0) that completed, the token F1 of the first
 * --audit-tokens tokens of the fused answer against full's greedy answer of the same length
 * (token ids as bags, as SQuAD's F1 does with words). Other requests are compared on the first
 * token only. Results: srv_audit_get_stats (metrics) and srv_audit_worst (GET /v1/audit).
 * Stats and cases are guarded by a mutex; everything else belongs to the inference thread.
 */
#ifndef KVF_SERVER_AUDIT_H
#define KVF_SERVER_AUDIT_H

#include "kvfuse.h"
#include "server/server_metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct srv_audit      srv_audit;
typedef struct srv_audit_item srv_audit_item;

typedef struct srv_audit_params {
    double      rate;          /* share of fused requests audited, (0, 1]; 0 = off */
    double      cpu;           /* share of wall time audit work may take, (0, 1] (0.1) */
    int32_t     chunk;         /* prompt tokens per audit unit (32) */
    int32_t     answer_tokens; /* greedy answer tokens compared (16; 0 = first token only) */
    int32_t     max_pending;   /* audits waiting or in progress; more picks are skipped (8) */
    int32_t     keep;          /* finished audits kept for /v1/audit (64) */
    int32_t     n_ctx;         /* the audit session's context (the slots') */
    int32_t     n_threads;     /* its compute threads (0 = online CPUs) */
    kvf_kv_type kv_type;
} srv_audit_params;

srv_audit_params srv_audit_default_params(void);

/* Creates the audit and its session. NULL with a message on failure. */
srv_audit *srv_audit_new(const kvf_model *m, const srv_audit_params *p, char *err, size_t errlen);
void       srv_audit_free(srv_audit *a);

/* What the scheduler knows of a fused request when its first-token logits are ready. */
typedef struct srv_audit_req {
    const char            *id;     /* request id */
    const kvf_fuse_params *fp;
    const kvf_fuse_stats  *st;
    const kvf_segment     *segs;
    int32_t                n_segs;
    const float           *logits; /* fused first-token logits [n_vocab] */
    bool                   greedy; /* temperature 0: the answer is compared too */
} srv_audit_req;

/* Inference thread. Sample the request; the item that follows it, or NULL (not picked, method
 * full, too many audits waiting, out of memory). */
srv_audit_item *srv_audit_begin(srv_audit *a, const srv_audit_req *r);
/* A token the live request emitted (eog: an end-of-generation token). */
void srv_audit_token(srv_audit *a, srv_audit_item *it, int32_t tok, bool eog);
/* The live request left (completed: it ended normally, not cancelled or failed): the item
 * waits for idle time. */
void srv_audit_end(srv_audit *a, srv_audit_item *it, bool completed);
/* Whether an audit unit may run now; when work waits for the CPU budget, *wait_ms is how long
 * (else 0). */
bool srv_audit_ready(srv_audit *a, double now_ms, double *wait_ms);
/* True while an audit has started its full prefill and not finished. */
bool srv_audit_in_progress(srv_audit *a);
/* Count a live request arriving while an audit is in progress. */
void srv_audit_note_yield(srv_audit *a);
/* Run one unit of audit work (see above). Returns 1 when it finished an audit, 0 otherwise,
 * -1 when the full prefill failed (the audit is dropped, with a log line). */
int srv_audit_step(srv_audit *a);

/* Thread-safe reads. */
void srv_audit_get_stats(srv_audit *a, srv_audit_stats *out);

typedef struct srv_audit_case {
    char    id[48];
    int     method;            /* kvf_method */
    float   ratio;             /* the ratio used (selective methods), else 0 */
    bool    ratio_auto;
    float   fidelity;          /* auto: the target */
    int32_t prompt_tokens, recomputed_tokens;
    double  kl;                /* first-token KL(full || fused), nats */
    bool    top1_agree;
    bool    answer_compared;
    double  answer_f1;         /* when compared */
    int32_t answer_tokens;     /* tokens compared (fused answer) */
    char    fused_first[48], full_first[48];   /* first-token pieces (raw bytes) */
    char    fused_answer[256], full_answer[256]; /* answer texts, cut at 255 bytes */
    int64_t finished;          /* Unix seconds */
} srv_audit_case;

/* The worst of the recent finished audits (highest KL first; ties: lower answer F1), at most
 * max into out; returns the count. */
int srv_audit_worst(srv_audit *a, srv_audit_case *out, int max);

#endif /* KVF_SERVER_AUDIT_H */
