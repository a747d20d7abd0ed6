/* server_http.h - the libmicrohttpd side of `kvfuse serve`: listening, reading request bodies
 * (with a size limit), handing requests to server_api.c, submitting jobs to the scheduler,
 * and sending complete JSON responses or server-sent event streams back.
 *
 * libmicrohttpd runs one thread per connection. A thread waits on its job's condition
 * variable and checks its socket while it waits, so a client that disconnects (before or
 * during the answer) cancels its job. Idle connections time out after --idle-timeout seconds;
 * while a job runs, the connection has no idle timeout (the job has --timeout). */
#ifndef KVF_SERVER_HTTP_H
#define KVF_SERVER_HTTP_H

#include "server/server_api.h"
#include "server/server_sched.h"

typedef struct srv_http srv_http;

typedef struct srv_http_params {
    const char *host;           /* address to bind (default 127.0.0.1) */
    int         port;           /* 0: any free port (see srv_http_port) */
    int         max_conns;      /* simultaneous connections */
    int         idle_timeout_s; /* idle or slow connections are closed after this */
    bool        log_requests;   /* one line per request on stderr */
    bool        verbose;        /* libmicrohttpd's own messages too */
} srv_http_params;

srv_http *srv_http_start(const srv_http_params *p, srv_api *api, srv_sched *sched,
                         srv_metrics *met, char *err, size_t errlen);
int  srv_http_port(const srv_http *h);
/* Stop accepting new connections (existing ones finish). */
void srv_http_quiesce(srv_http *h);
/* Close every connection and free. */
void srv_http_stop(srv_http *h);

#endif /* KVF_SERVER_HTTP_H */
