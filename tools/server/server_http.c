/* server_http.c - libmicrohttpd glue of `kvfuse serve` (see server_http.h). */
#include "server/server_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct srv_http {
    struct MHD_Daemon *d;
    srv_api           *api;
    srv_sched         *sched;
    srv_metrics       *met;
    srv_http_params    p;
    size_t             max_body;
    int                port;
    atomic_bool        started;  /* set once listening; read by MHD's threads (mhd_log) */
    MHD_socket         quiesced; /* listening socket after quiesce; closed after stop */
    bool               has_quiesced;
};

typedef enum { ST_ROLE = 0, ST_BODY, ST_USAGE, ST_DONE, ST_END } stream_stage;

/* per request */
typedef struct req_ctx {
    atomic_int             refs; /* the connection's, and the stream response's */
    srv_http              *h;
    struct MHD_Connection *conn;
    char                  *body;
    size_t                 len, cap, received;
    bool                   too_large, answered;
    srv_job               *job;
    int                    fd;
    srv_endpoint           ep;
    int                    status;
    double                 t0;
    char                   method[12];
    char                   path[96];
    /* streaming */
    stream_stage stage;
    size_t       sent;
    char        *pend;
    size_t       pend_len, pend_off;
} req_ctx;

static void ctx_release(req_ctx *c) {
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1) return;
    free(c->body);
    free(c->pend);
    srv_job_release(c->job);
    free(c);
}

/* true when the peer has closed its side of the connection */
static bool peer_closed(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    if (p.revents & POLLIN) {
        char    ch;
        ssize_t r = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        if (r == 0) return true;
    }
    return false;
}

static void deadline_in(struct timespec *ts, long ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (ms % 1000) * 1000000L;
    ts->tv_sec += ms / 1000 + ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void set_timeout(req_ctx *c, unsigned s) {
    MHD_set_connection_option(c->conn, MHD_CONNECTION_OPTION_TIMEOUT, s);
}

static enum MHD_Result queue(req_ctx *c, srv_response *rs) {
    struct MHD_Response *r;
    if (rs->body) {
        r        = MHD_create_response_from_buffer(rs->len, rs->body, MHD_RESPMEM_MUST_FREE);
        rs->body = NULL; /* MHD frees it */
    } else {
        r = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rs->ctype ? rs->ctype : "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (rs->retry_after > 0) {
        char v[16];
        snprintf(v, sizeof v, "%d", rs->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (rs->allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, rs->allow);
    c->status         = rs->status;
    c->answered       = true;
    enum MHD_Result q = MHD_queue_response(c->conn, (unsigned)rs->status, r);
    MHD_destroy_response(r);
    srv_metrics_request(c->h->met, c->ep, rs->status);
    srv_response_clear(rs);
    return q;
}

/* ---- streaming ------------------------------------------------------------------------- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    req_ctx *c = cls;
    srv_job *j = c->job;
    for (;;) {
        if (c->pend_off < c->pend_len) {
            size_t n = c->pend_len - c->pend_off;
            if (n > max) n = max;
            memcpy(buf, c->pend + c->pend_off, n);
            c->pend_off += n;
            return (ssize_t)n;
        }
        free(c->pend);
        c->pend     = NULL;
        c->pend_len = c->pend_off = 0;
        if (c->stage == ST_END) return MHD_CONTENT_READER_END_OF_STREAM;
        char  *p    = NULL;
        size_t n    = 0;
        bool   want = true;
        pthread_mutex_lock(&j->mu);
        if (c->stage == ST_ROLE) {
            if (j->chat)
                p = srv_sse_role(j, &n);
            else
                want = false;
            c->stage = ST_BODY;
        } else if (c->stage == ST_BODY && j->ready > c->sent) {
            p       = srv_sse_delta(j, c->sent, j->ready, &n);
            c->sent = j->ready;
        } else if (j->state == SRV_JOB_DONE) {
            if (c->stage == ST_BODY && j->err_status) {
                p        = srv_sse_error(j, &n);
                c->stage = ST_DONE;
            } else if (c->stage == ST_BODY) {
                p        = srv_sse_final(j, &n);
                c->stage = j->include_usage ? ST_USAGE : ST_DONE;
            } else if (c->stage == ST_USAGE) {
                p        = srv_sse_usage(j, &n);
                c->stage = ST_DONE;
            } else {
                p        = srv_sse_done(&n);
                c->stage = ST_END;
                set_timeout(c, (unsigned)c->h->p.idle_timeout_s);
            }
        } else {
            struct timespec ts;
            deadline_in(&ts, 200);
            pthread_cond_timedwait(&j->cv, &j->mu, &ts);
            pthread_mutex_unlock(&j->mu);
            if (peer_closed(c->fd)) {
                srv_sched_cancel(c->h->sched, j);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            continue;
        }
        pthread_mutex_unlock(&j->mu);
        if (!want) continue;
        if (!p) { /* out of memory: end the stream */
            srv_sched_cancel(c->h->sched, j);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        c->pend     = p;
        c->pend_len = n;
    }
}

static void stream_free(void *cls) {
    ctx_release(cls);
}

/* ---- requests -------------------------------------------------------------------------- */

static void copy_printable(char *dst, size_t cap, const char *src) {
    size_t i = 0;
    for (; src && src[i] && i + 1 < cap; i++)
        dst[i] = (src[i] > 0x20 && src[i] < 0x7f) ? src[i] : '?';
    dst[i] = 0;
}

static enum MHD_Result run_job(req_ctx *c, srv_job *j) {
    srv_http    *h  = c->h;
    srv_response rs = {0};
    int          ra = 1;
    srv_submit   sb = srv_sched_submit(h->sched, j, &ra);
    if (sb != SRV_SUBMIT_OK) {
        srv_metrics_rejected(h->met, sb == SRV_SUBMIT_SHUTDOWN ? 503 : 429);
        srv_job_release(j);
        srv_api_busy(&rs, sb == SRV_SUBMIT_SHUTDOWN, ra);
        return queue(c, &rs);
    }
    c->job = j;        /* the context's reference */
    set_timeout(c, 0); /* the job has its own timeout */
    if (j->stream) {
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                   stream_reader, c, stream_free);
        if (!r) {
            srv_sched_cancel(h->sched, j);
            return MHD_NO;
        }
        atomic_fetch_add(&c->refs, 1); /* the response's */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        c->status         = 200;
        c->answered       = true;
        enum MHD_Result q = MHD_queue_response(c->conn, 200, r);
        MHD_destroy_response(r);
        srv_metrics_request(h->met, c->ep, 200);
        return q;
    }
    /* complete answer: wait for the job, watching the socket */
    pthread_mutex_lock(&j->mu);
    while (j->state != SRV_JOB_DONE) {
        struct timespec ts;
        deadline_in(&ts, 200);
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (j->state == SRV_JOB_DONE) break;
        pthread_mutex_unlock(&j->mu);
        bool gone = peer_closed(c->fd);
        if (gone) {
            srv_sched_cancel(h->sched, j);
            c->status = 499;
            srv_metrics_request(h->met, c->ep, 499);
            return MHD_NO; /* close the connection */
        }
        pthread_mutex_lock(&j->mu);
    }
    srv_job_response(j, &rs);
    pthread_mutex_unlock(&j->mu);
    set_timeout(c, (unsigned)h->p.idle_timeout_s);
    return queue(c, &rs);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    srv_http *h = cls;
    req_ctx  *c = *con_cls;
    if (!c) { /* first call: headers only */
        c = calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        atomic_init(&c->refs, 1);
        c->h    = h;
        c->conn = conn;
        c->t0   = srv_now_ms();
        c->ep   = srv_api_endpoint(url);
        c->fd   = -1;
        copy_printable(c->method, sizeof c->method, method);
        copy_printable(c->path, sizeof c->path, url);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) c->fd = ci->connect_fd;
        *con_cls = c;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char              *end;
            errno              = 0;
            unsigned long long v = strtoull(cl, &end, 10);
            if (errno || end == cl || v > h->max_body) { /* refuse before reading it */
                srv_response rs = {0};
                srv_request  rq = {.method = method, .path = url, .body_too_large = true};
                srv_job     *j  = NULL;
                srv_api_handle(h->api, &rq, &rs, &j); /* 413 (or 200 for /health) */
                srv_job_release(j);
                return queue(c, &rs);
            }
        }
        return MHD_YES;
    }
    if (c->answered) { /* answered early (413): drop whatever body still comes */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        c->received += n;
        *upload_data_size = 0;
        if (c->too_large || c->len + n > h->max_body) {
            c->too_large = true;
            free(c->body);
            c->body = NULL;
            c->len = c->cap = 0;
            /* a client that keeps sending: close the connection */
            return c->received > 4 * h->max_body + (1u << 20) ? MHD_NO : MHD_YES;
        }
        if (c->len + n > c->cap) {
            size_t nc = c->cap ? 2 * c->cap : 4096;
            while (nc < c->len + n) nc *= 2;
            if (nc > h->max_body) nc = h->max_body;
            char *p = realloc(c->body, nc + 1);
            if (!p) return MHD_NO;
            c->body = p, c->cap = nc;
        }
        memcpy(c->body + c->len, upload_data, n);
        c->len += n;
        return MHD_YES;
    }
    /* the whole request is here */
    srv_request rq = {.method         = method,
                      .path           = url,
                      .auth           = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
                      .api_key        = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Api-Key"),
                      .body           = c->body ? c->body : "",
                      .body_len       = c->len,
                      .body_too_large = c->too_large};
    srv_response rs = {0};
    srv_job     *j  = NULL;
    if (srv_api_handle(h->api, &rq, &rs, &j) == SRV_API_JOB) {
        free(c->body); /* the job has its tokens */
        c->body = NULL;
        c->len = c->cap = 0;
        return run_job(c, j);
    }
    return queue(c, &rs);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)conn;
    srv_http *h = cls;
    req_ctx  *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    if (c->job) {
        bool done;
        pthread_mutex_lock(&c->job->mu);
        done = c->job->state == SRV_JOB_DONE;
        pthread_mutex_unlock(&c->job->mu);
        if (!done) srv_sched_cancel(h->sched, c->job); /* the client went away mid-answer */
    }
    if (h->p.log_requests) {
        int st = c->status;
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && c->job && st == 200) st = 499;
        fprintf(stderr, "kvfuse serve: %s %s %d %.1f ms%s\n", c->method, c->path, st ? st : 499,
                srv_now_ms() - c->t0, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed)");
    }
    ctx_release(c);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    srv_http *h = cls;
    if (atomic_load_explicit(&h->started, memory_order_acquire) && !h->p.verbose) return;
    fprintf(stderr, "kvfuse serve: http: ");
    vfprintf(stderr, fmt, ap);
}

srv_http *srv_http_start(const srv_http_params *p, srv_api *api, srv_sched *sched,
                         srv_metrics *met, char *err, size_t errlen) {
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->api      = api;
    h->sched    = sched;
    h->met      = met;
    h->p        = *p;
    h->max_body = api->cfg.max_body;
    if (!h->p.host) h->p.host = "127.0.0.1";
    if (h->p.idle_timeout_s <= 0) h->p.idle_timeout_s = 30;
    if (h->p.max_conns <= 0) h->p.max_conns = 256;

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai   = NULL;
    int              gr   = getaddrinfo(h->p.host, NULL, &hints, &ai);
    if (gr != 0 || !ai) {
        snprintf(err, errlen, "--host '%s': %s", h->p.host, gai_strerror(gr));
        free(h);
        return NULL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    bool v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    if (v6)
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)p->port);
    else
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)p->port);

    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    h->d = MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, on_request, h,
                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, /* first: see its docs */
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->p.max_conns,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)h->p.idle_timeout_s,
                            MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(64 * 1024),
                            MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
                            MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use, or not an address of this "
                 "machine?)", h->p.host, p->port);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port    = di ? di->port : p->port;
    atomic_store_explicit(&h->started, true, memory_order_release);
    return h;
}

int srv_http_port(const srv_http *h) {
    return h->port;
}

void srv_http_quiesce(srv_http *h) {
    if (h && h->d && !h->has_quiesced) {
        h->quiesced     = MHD_quiesce_daemon(h->d);
        h->has_quiesced = h->quiesced != MHD_INVALID_SOCKET;
    }
}

void srv_http_stop(srv_http *h) {
    if (!h) return;
    if (h->d) MHD_stop_daemon(h->d);
    if (h->has_quiesced) close(h->quiesced); /* ours after quiesce, once the threads are gone */
    free(h);
}
