/* load_client.c - a bounded load test client for `kvfuse serve` (bench/load_test.sh runs it).
 *
 * Reads MuSiQue questions (../shared/data/musique-cacheblend/musique_s.json: 10 passages
 * each), ingests every passage through POST /v1/documents, warms the server's chunk caches with
 * one request per question, then for each method runs C client threads for D seconds, each
 * sending streaming chat completions (documents by id) back to back. It reports per method:
 * completed requests, HTTP status counts (5xx must be zero), throughput, client-side TTFT
 * (request sent -> first content chunk) and the server's TTFT (kvfuse.ttft_ms), p50/p99, the
 * recomputed fraction, answers containing the gold answer, and the server's resident memory
 * (from /metrics) before and after. Requests still running at the deadline are abandoned
 * (the client closes the connection; the server cancels them) and reported as cut.
 *
 * Plain HTTP/1.1 over TCP, for loopback use: no TLS, no proxies.
 */
#include "common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static char g_host[256] = "127.0.0.1", g_port[16] = "8080";
static const char *g_key;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct buf {
    char  *p;
    size_t n, cap;
} buf;

static int buf_add(buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = 2 * (b->n + n) + 256;
        char  *p  = realloc(b->p, nc);
        if (!p) return -1;
        b->p = p, b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int dial(void) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(g_host, g_port, &hints, &ai) != 0 || !ai) return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

/* Called with each piece of decoded body as it arrives; returns nonzero to stop reading. */
typedef int (*body_fn)(void *user, const char *p, size_t n);

/* One request (Connection: close). Returns the status (0 when the connection failed or the
 * deadline cut it: *cut set). The body goes to fn, or into *out when fn is NULL. */
static int http(const char *method, const char *path, const char *body, body_fn fn, void *user,
                buf *out, double deadline, bool *cut) {
    if (cut) *cut = false;
    int fd = dial();
    if (fd < 0) return 0;
    char   head[1024];
    size_t bl = body ? strlen(body) : 0;
    int    hl = snprintf(head, sizeof head,
                         "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n%s%s%s"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         method, path, g_host, g_port, g_key ? "Authorization: Bearer " : "",
                         g_key ? g_key : "", g_key ? "\r\n" : "", bl);
    if (send_all(fd, head, (size_t)hl) != 0 || (bl && send_all(fd, body, bl) != 0)) {
        close(fd);
        return 0;
    }
    buf  raw = {0};
    int  status = 0, state = 0; /* 0 headers, 1 body by length/close, 2 chunk size, 3 chunk data, 4 chunk CRLF */
    bool chunked = false;
    size_t pos = 0, need = 0;
    int    stop = 0;
    char   tmp[16384];
    while (!stop) {
        if (deadline > 0) {
            double left = deadline - now_s();
            if (left <= 0) {
                if (cut) *cut = true;
                status = 0;
                break;
            }
            struct pollfd pf = {.fd = fd, .events = POLLIN};
            int           pr = poll(&pf, 1, (int)(left * 1000) + 1);
            if (pr == 0) continue;
        }
        ssize_t k = recv(fd, tmp, sizeof tmp, 0);
        if (k <= 0) break;
        if (buf_add(&raw, tmp, (size_t)k) != 0) break;
        for (;;) { /* advance the parser over raw[pos..] */
            if (state == 0) {
                char *e = strstr(raw.p, "\r\n\r\n");
                if (!e) break;
                if (sscanf(raw.p, "HTTP/%*s %d", &status) != 1) status = 0;
                *e = 0;
                for (char *h = raw.p; *h; h++) *h = (*h >= 'A' && *h <= 'Z') ? *h + 32 : *h;
                chunked = strstr(raw.p, "transfer-encoding: chunked") != NULL;
                pos     = (size_t)(e - raw.p) + 4;
                state   = chunked ? 2 : 1;
            } else if (state == 1) {
                if (pos < raw.n) {
                    if (fn)
                        stop = fn(user, raw.p + pos, raw.n - pos);
                    else if (out)
                        buf_add(out, raw.p + pos, raw.n - pos);
                    pos = raw.n;
                }
                break;
            } else if (state == 2) {
                char *e = strstr(raw.p + pos, "\r\n");
                if (!e) break;
                need = strtoul(raw.p + pos, NULL, 16);
                pos  = (size_t)(e - raw.p) + 2;
                state = need ? 3 : 5;
                if (state == 5) stop = 1;
            } else if (state == 3) {
                size_t have = raw.n - pos < need ? raw.n - pos : need;
                if (have == 0) break;
                if (fn)
                    stop = fn(user, raw.p + pos, have);
                else if (out)
                    buf_add(out, raw.p + pos, have);
                pos += have, need -= have;
                if (need == 0) state = 4;
                if (stop) break;
            } else if (state == 4) {
                if (raw.n - pos < 2) break;
                pos += 2;
                state = 2;
            } else {
                break;
            }
        }
    }
    close(fd);
    free(raw.p);
    return status;
}

/* ---- data ---------------------------------------------------------------------------------- */

typedef struct question {
    char  *q, **answers;
    int    n_answers;
    char  *passages[16];
    int    n_passages;
    char   ids[16][40];
} question;

static int load_questions(const char *path, question *qs, int max) {
    char *txt = kvf_read_file(path, NULL);
    if (!txt) return -1;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return -1;
    }
    int n = 0;
    for (cJSON *it = root->child; it && n < max; it = it->next) {
        question *q  = &qs[n];
        cJSON    *qq = cJSON_GetObjectItem(it, "question"), *ctxs = cJSON_GetObjectItem(it, "ctxs"),
              *ans = cJSON_GetObjectItem(it, "answers");
        if (!cJSON_IsString(qq) || !cJSON_IsArray(ctxs)) continue;
        memset(q, 0, sizeof *q);
        q->q = strdup(qq->valuestring);
        for (cJSON *c = ctxs->child; c && q->n_passages < 16; c = c->next) {
            cJSON *t = cJSON_GetObjectItem(c, "title"), *x = cJSON_GetObjectItem(c, "text");
            if (!cJSON_IsString(x)) continue;
            const char *title = cJSON_IsString(t) ? t->valuestring : "";
            size_t      len   = strlen(title) + strlen(x->valuestring) + 8;
            char       *p     = malloc(len);
            snprintf(p, len, "%s\n\n%s\n\n", title, x->valuestring); /* CacheBlend's passage format */
            q->passages[q->n_passages++] = p;
        }
        int na     = cJSON_GetArraySize(ans);
        q->answers = calloc((size_t)(na > 0 ? na : 1), sizeof(char *));
        for (cJSON *a = ans ? ans->child : NULL; a; a = a->next)
            if (cJSON_IsString(a)) q->answers[q->n_answers++] = strdup(a->valuestring);
        n++;
    }
    cJSON_Delete(root);
    return n;
}

static const char *SYSTEM =
    "You will be asked a question after reading several passages. Please directly answer the "
    "question based on the given passages. Do NOT repeat the question. The answer should be "
    "within 5 words.";

static char *request_body(const question *q, const char *method, int max_tokens, bool stream) {
    cJSON *o = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(o, "messages");
    cJSON *s = cJSON_CreateObject(), *u = cJSON_CreateObject();
    cJSON_AddStringToObject(s, "role", "system");
    cJSON_AddStringToObject(s, "content", SYSTEM);
    char   qt[2048];
    size_t ql = strlen(q->q);
    snprintf(qt, sizeof qt, "Answer the question directly based on the given passages. Do NOT repeat the "
             "question. The answer should be within 5 words.\nQuestion: %s%s\nAnswer:", q->q,
             ql && q->q[ql - 1] == '?' ? "" : "?");
    cJSON_AddStringToObject(u, "role", "user");
    cJSON_AddStringToObject(u, "content", qt);
    cJSON_AddItemToArray(msgs, s);
    cJSON_AddItemToArray(msgs, u);
    cJSON *d = cJSON_AddArrayToObject(o, "documents");
    for (int i = 0; i < q->n_passages; i++) cJSON_AddItemToArray(d, cJSON_CreateString(q->ids[i]));
    cJSON_AddNumberToObject(o, "max_tokens", max_tokens);
    cJSON_AddNumberToObject(o, "temperature", 0);
    cJSON_AddBoolToObject(o, "stream", stream);
    cJSON *k = cJSON_AddObjectToObject(o, "kvfuse");
    cJSON_AddStringToObject(k, "method", method);
    char *b = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return b;
}

/* ---- a streamed request -------------------------------------------------------------------- */

typedef struct stream_state {
    buf    acc;  /* decoded body not yet parsed into events */
    double t0, t_first, t_end;
    double server_ttft, recomputed, total;
    char   text[512];
    size_t tlen;
    int    tokens;
    bool   done, error;
} stream_state;

static int on_stream(void *user, const char *p, size_t n) {
    stream_state *s = user;
    buf_add(&s->acc, p, n);
    char *e;
    while (s->acc.p && (e = strstr(s->acc.p, "\n\n"))) {
        *e = 0;
        if (!strncmp(s->acc.p, "data: ", 6)) {
            const char *d = s->acc.p + 6;
            if (!strcmp(d, "[DONE]")) {
                s->done  = true;
                s->t_end = now_s();
            } else {
                cJSON *o = cJSON_Parse(d);
                if (cJSON_GetObjectItem(o, "error")) s->error = true;
                cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
                cJSON *c  = cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content");
                if (cJSON_IsString(c) && c->valuestring[0]) {
                    if (!s->t_first) s->t_first = now_s();
                    size_t l = strlen(c->valuestring);
                    if (s->tlen + l < sizeof s->text) memcpy(s->text + s->tlen, c->valuestring, l + 1), s->tlen += l;
                }
                cJSON *fr = cJSON_GetObjectItem(ch, "finish_reason");
                if (cJSON_IsString(fr) && !s->t_first) s->t_first = now_s(); /* empty answer */
                cJSON *k = cJSON_GetObjectItem(o, "kvfuse");
                if (k) {
                    s->server_ttft = cJSON_GetObjectItem(k, "ttft_ms") ? cJSON_GetObjectItem(k, "ttft_ms")->valuedouble : 0;
                    s->recomputed  = cJSON_GetObjectItem(k, "recomputed_tokens") ? cJSON_GetObjectItem(k, "recomputed_tokens")->valuedouble : 0;
                    s->total       = cJSON_GetObjectItem(k, "total_tokens") ? cJSON_GetObjectItem(k, "total_tokens")->valuedouble : 0;
                }
                cJSON_Delete(o);
            }
        }
        size_t used = (size_t)(e - s->acc.p) + 2;
        memmove(s->acc.p, s->acc.p + used, s->acc.n - used + 1);
        s->acc.n -= used;
    }
    return 0;
}

/* ---- the run ------------------------------------------------------------------------------- */

typedef struct result {
    double ttft_client, ttft_server, frac, dur;
    int    status;
    bool   gold, cut; /* cut: abandoned at the deadline (ttft_client valid if > 0) */
} result;

typedef struct run {
    question       *qs;
    int             n_q, max_tokens;
    const char     *method;
    double          deadline;
    atomic_int      next;
    pthread_mutex_t mu;
    result         *res;
    int             n_res, cap_res;
    int             cut, conn_fail;
} run;

static bool has_gold(const question *q, const char *text) {
    for (int i = 0; i < q->n_answers; i++) {
        const char *a = q->answers[i];
        size_t      n = strlen(a);
        for (const char *p = text; *p; p++)
            if (!strncasecmp(p, a, n)) return true;
    }
    return false;
}

static void *worker(void *arg) {
    run *r = arg;
    while (now_s() < r->deadline) {
        int       i    = atomic_fetch_add(&r->next, 1);
        question *q    = &r->qs[i % r->n_q];
        char     *body = request_body(q, r->method, r->max_tokens, true);
        stream_state s;
        memset(&s, 0, sizeof s);
        s.t0 = now_s();
        bool cut;
        int  st = http("POST", "/v1/chat/completions", body, on_stream, &s, NULL, r->deadline, &cut);
        free(body);
        free(s.acc.p);
        pthread_mutex_lock(&r->mu);
        if (cut) r->cut++;
        if (!cut && st == 0) {
            r->conn_fail++;
        } else {
            if (r->n_res == r->cap_res) {
                r->cap_res = r->cap_res ? 2 * r->cap_res : 64;
                r->res     = realloc(r->res, sizeof *r->res * (size_t)r->cap_res);
            }
            result *x      = &r->res[r->n_res++];
            x->cut         = cut;
            x->status      = cut ? 0 : st == 200 && (s.error || !s.done) ? 500 : st;
            x->ttft_client = s.t_first ? (s.t_first - s.t0) * 1e3 : 0;
            x->ttft_server = s.server_ttft;
            x->frac        = s.total > 0 ? s.recomputed / s.total : 0;
            x->dur         = (s.t_end ? s.t_end : now_s()) - s.t0;
            x->gold        = has_gold(q, s.text);
        }
        pthread_mutex_unlock(&r->mu);
        if (st == 429 || st == 503) usleep(200000); /* back off as Retry-After asks */
    }
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p) {
    if (n == 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(p / 100.0 * (n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static double metric(const char *name) {
    buf b = {0};
    if (http("GET", "/metrics", NULL, NULL, NULL, &b, 0, NULL) != 200 || !b.p) {
        free(b.p);
        return -1;
    }
    double v = -1;
    size_t nl = strlen(name);
    for (char *line = b.p; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, name, nl) && line[nl] == ' ') v = strtod(line + nl + 1, NULL);
    free(b.p);
    return v;
}

static void usage(void) {
    printf("usage: load_client --url http://127.0.0.1:PORT --data musique_s.json [options]\n"
           "  --clients N      concurrent clients (8)\n"
           "  --duration S     seconds per method (60)\n"
           "  --questions N    MuSiQue questions used (8)\n"
           "  --methods LIST   comma-separated fusion methods, run one after the other (a3,full)\n"
           "  --max-tokens N   answer tokens (16)\n"
           "  --key KEY        API key\n"
           "  --json FILE      also write the results as JSON\n");
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"url", required_argument, 0, 'u'},      {"data", required_argument, 0, 'd'},
                                         {"clients", required_argument, 0, 'c'},  {"duration", required_argument, 0, 't'},
                                         {"questions", required_argument, 0, 'q'}, {"methods", required_argument, 0, 'm'},
                                         {"max-tokens", required_argument, 0, 'n'}, {"key", required_argument, 0, 'k'},
                                         {"json", required_argument, 0, 'j'},     {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *url = "http://127.0.0.1:8080", *data = "../shared/data/musique-cacheblend/musique_s.json",
               *methods = "a3,full", *json_path = NULL;
    int    clients = 8, n_q = 8, max_tokens = 16, c;
    double duration = 60;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'd': data = optarg; break;
        case 'c': clients = atoi(optarg); break;
        case 't': duration = atof(optarg); break;
        case 'q': n_q = atoi(optarg); break;
        case 'm': methods = optarg; break;
        case 'n': max_tokens = atoi(optarg); break;
        case 'k': g_key = optarg; break;
        case 'j': json_path = optarg; break;
        case 'h': usage(); return 0;
        default: usage(); return 2;
        }
    }
    if (clients < 1 || clients > 256 || n_q < 1 || n_q > 150 || duration <= 0 || max_tokens < 1) {
        usage();
        return 2;
    }
    if (strncmp(url, "http://", 7) != 0) {
        fprintf(stderr, "load_client: --url must start with http://\n");
        return 2;
    }
    const char *hp = url + 7, *colon = strrchr(hp, ':');
    if (colon) {
        snprintf(g_host, sizeof g_host, "%.*s", (int)(colon - hp), hp);
        snprintf(g_port, sizeof g_port, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
    } else {
        snprintf(g_host, sizeof g_host, "%.*s", (int)strcspn(hp, "/"), hp);
    }
    question *qs = calloc((size_t)n_q, sizeof *qs);
    n_q          = load_questions(data, qs, n_q);
    if (n_q <= 0) {
        fprintf(stderr, "load_client: cannot read questions from '%s'\n", data);
        return 1;
    }
    /* ingest */
    double t0 = now_s();
    int    n_docs = 0, tokens = 0;
    for (int i = 0; i < n_q; i++) {
        cJSON *o = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(o, "documents");
        for (int k = 0; k < qs[i].n_passages; k++) cJSON_AddItemToArray(d, cJSON_CreateString(qs[i].passages[k]));
        char *body = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        buf  b  = {0};
        int  st = http("POST", "/v1/documents", body, NULL, NULL, &b, 0, NULL);
        free(body);
        cJSON *r = b.p ? cJSON_Parse(b.p) : NULL;
        cJSON *arr = cJSON_GetObjectItem(r, "data");
        if (st != 200 || cJSON_GetArraySize(arr) != qs[i].n_passages) {
            fprintf(stderr, "load_client: ingest failed (%d): %s\n", st, b.p ? b.p : "no answer");
            return 1;
        }
        int k = 0;
        for (cJSON *x = arr->child; x; x = x->next, k++) {
            snprintf(qs[i].ids[k], sizeof qs[i].ids[k], "%s", cJSON_GetObjectItem(x, "id")->valuestring);
            tokens += (int)cJSON_GetObjectItem(x, "tokens")->valuedouble;
            n_docs++;
        }
        cJSON_Delete(r);
        free(b.p);
    }
    printf("ingested %d passages of %d questions (%d tokens) in %.1f s\n", n_docs, n_q, tokens, now_s() - t0);
    /* warm the chunk caches: one a3 request per question (precomputes prefix + passages) */
    t0 = now_s();
    for (int i = 0; i < n_q; i++) {
        char *body = request_body(&qs[i], "a3", 1, false);
        buf   b    = {0};
        int   st   = http("POST", "/v1/chat/completions", body, NULL, NULL, &b, 0, NULL);
        free(body);
        if (st != 200) {
            fprintf(stderr, "load_client: warm-up request failed (%d): %s\n", st, b.p ? b.p : "no answer");
            return 1;
        }
        free(b.p);
    }
    printf("warmed the chunk caches in %.1f s; server RSS %.0f MiB\n\n", now_s() - t0,
           metric("kvfuse_resident_memory_bytes") / 1048576.0);
    printf("%-6s %5s %5s %5s %5s %4s %5s %8s %8s %8s %8s %8s %7s %6s %9s %9s\n", "method", "done", "2xx", "4xx",
           "5xx", "cut", "no1st", "req/s", "ttft50", "ttft99", "srv50", "srv99", "recomp", "gold", "RSS0 MiB", "RSS1 MiB");
    FILE *jf = json_path ? fopen(json_path, "w") : NULL;
    if (jf) fprintf(jf, "[");
    int   any5xx = 0, first = 1;
    char *mlist  = strdup(methods);
    for (char *m = strtok(mlist, ","); m; m = strtok(NULL, ",")) {
        run r;
        memset(&r, 0, sizeof r);
        r.qs = qs, r.n_q = n_q, r.max_tokens = max_tokens, r.method = m;
        pthread_mutex_init(&r.mu, NULL);
        double     rss0 = metric("kvfuse_resident_memory_bytes") / 1048576.0;
        double     start = now_s();
        r.deadline       = start + duration;
        pthread_t *th    = calloc((size_t)clients, sizeof *th);
        for (int i = 0; i < clients; i++) pthread_create(&th[i], NULL, worker, &r);
        for (int i = 0; i < clients; i++) pthread_join(th[i], NULL);
        free(th);
        double  rss1 = metric("kvfuse_resident_memory_bytes") / 1048576.0;
        double *tc = malloc(sizeof(double) * (size_t)(r.n_res + 1)), *ts = malloc(sizeof(double) * (size_t)(r.n_res + 1));
        int     n_ok = 0, n4 = 0, n5 = 0, gold = 0, n_t = 0, n_s = 0, waiting = 0;
        double  frac = 0;
        for (int i = 0; i < r.n_res; i++) {
            result *x = &r.res[i];
            if (x->cut) { /* its first token, if it came before the deadline, still counts */
                if (x->ttft_client > 0)
                    tc[n_t++] = x->ttft_client;
                else
                    waiting++;
                continue;
            }
            if (x->status >= 500) n5++;
            else if (x->status >= 400) n4++;
            else if (x->status == 200) {
                tc[n_t++] = x->ttft_client, ts[n_s++] = x->ttft_server;
                frac += x->frac, gold += x->gold;
                n_ok++;
            }
        }
        any5xx += n5;
        double el = duration, rps = n_ok / el;
        double c50 = pct(tc, n_t, 50), c99 = pct(tc, n_t, 99), s50 = pct(ts, n_s, 50), s99 = pct(ts, n_s, 99);
        printf("%-6s %5d %5d %5d %5d %4d %5d %8.3f %8.0f %8.0f %8.0f %8.0f %6.1f%% %3d/%-3d %9.0f %9.0f\n", m,
               r.n_res - r.cut, n_ok, n4, n5, r.cut, waiting, rps, c50, c99, s50, s99, n_ok ? 100 * frac / n_ok : 0, gold,
               n_ok, rss0, rss1);
        if (jf)
            fprintf(jf, "%s{\"method\": \"%s\", \"clients\": %d, \"duration_s\": %.0f, \"completed\": %d, \"ok\": %d, "
                        "\"status_4xx\": %d, \"status_5xx\": %d, \"cut_at_deadline\": %d, \"no_first_token\": %d, "
                        "\"connect_failures\": %d, \"ttft_samples\": %d, "
                        "\"req_per_s\": %.4f, \"ttft_client_p50_ms\": %.1f, \"ttft_client_p99_ms\": %.1f, "
                        "\"ttft_server_p50_ms\": %.1f, \"ttft_server_p99_ms\": %.1f, \"recomputed_fraction\": %.4f, "
                        "\"gold\": %d, \"rss_before_mib\": %.1f, \"rss_after_mib\": %.1f}",
                    first ? "" : ", ", m, clients, duration, r.n_res - r.cut, n_ok, n4, n5, r.cut, waiting, r.conn_fail, n_t, rps, c50, c99, s50,
                    s99, n_ok ? frac / n_ok : 0, gold, rss0, rss1);
        first = 0;
        if (r.conn_fail) printf("       (%d connections failed)\n", r.conn_fail);
        free(tc), free(ts), free(r.res);
        pthread_mutex_destroy(&r.mu);
    }
    if (jf) fprintf(jf, "]\n"), fclose(jf);
    free(mlist);
    printf("\ndone: requests completed in the window; cut: abandoned at the deadline (the server cancels "
           "them); no1st: cut before their first token.\nttft50/99: client-side ms from sending the request "
           "to the first answer text (queueing included), over every request\nwhose first token came before "
           "the deadline (cut ones too); srv50/99: the server's kvfuse.ttft_ms of completed requests;\n"
           "recomp: mean recomputed/total prompt tokens; gold: answers containing the gold answer.\n");
    printf("%s\n", any5xx ? "FAIL: 5xx responses" : "no 5xx responses");
    for (int i = 0; i < n_q; i++) {
        free(qs[i].q);
        for (int k = 0; k < qs[i].n_passages; k++) free(qs[i].passages[k]);
        for (int k = 0; k < qs[i].n_answers; k++) free(qs[i].answers[k]);
        free(qs[i].answers);
    }
    free(qs);
    return any5xx ? 1 : 0;
}
