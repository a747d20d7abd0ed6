/* fuzz_server.c - libFuzzer target for the request handler of `kvfuse serve`
 * (tools/server/server_api.c with the document registry and the metrics page): everything an HTTP
 * request can reach except sockets and inference.
 *
 * Input: "METHOD PATH\n", optional header lines ("Authorization: ...", "X-Api-Key: ..."), a
 * blank line, then the body; input without a newline is the body of a POST to
 * /v1/chat/completions. Requests with a key go to a server with API keys (tenants alpha, beta,
 * admin ops: see KEYS), the others to one without. A request that becomes a job is "answered"
 * with generated text made from its own prompt tokens (stop strings applied) and rendered as a
 * complete response and as server-sent events.
 *
 * Checked: every response has a status of 100..599, and every JSON body or event parses and is
 * valid UTF-8; the job's segments are consistent and fit the context. A broken promise aborts.
 *
 * Build and run through scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * fuzz-libs: -lcjson -llmdb -lhiredis -lzstd
 */
#include "../tests/synth.h"
#include "../tools/server/server_api.c"
#include "../tools/server/server_audit.c"
#include "../tools/server/server_docs.c"
#include "../tools/server/server_metrics.c"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                             \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "fuzz_server: broken invariant at line %d: %s\n", __LINE__, #c);   \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

#define KEYS "key-alpha-123 alpha\nkey-beta-4567 beta\nkey-admin-890 ops admin\n"

static kvf_model   *g_model;
static srv_api      g_open, g_keyed;
static srv_docs    *g_docs;
static srv_metrics *g_met;
static srv_tenants *g_ten;

static void setup(void) {
    char path[128];
    snprintf(path, sizeof path, "/tmp/kvf-fuzz-server-%d.gguf", (int)getpid());
    synth_cfg  cfg = {.n_layer = 1, .n_ctx = 512, .seed = 3};
    synth_info info;
    kvf_set_log_level(0);
    if (synth_model_file(&cfg, path, &info) != KVF_OK || kvf_model_load(path, NULL, &g_model) != KVF_OK) {
        fprintf(stderr, "fuzz_server: setup: %s\n", kvf_errmsg());
        abort();
    }
    unlink(path);
    char err[128];
    g_ten  = srv_tenants_parse(KEYS, strlen(KEYS), err, sizeof err);
    g_docs = srv_docs_new(64, 1 << 20); /* bounded: the registry persists across inputs */
    g_met  = srv_metrics_new();
    REQUIRE(g_ten && g_docs && g_met);
    srv_api_config c = srv_api_default_config();
    c.model_id       = "fuzz";
    c.n_ctx          = 256;
    c.max_body       = 1 << 16;
    c.max_docs       = 8;
    c.max_ingest     = 8;
    srv_api_init(&g_open, g_model, &c, g_docs, NULL, g_met);
    srv_api_init(&g_keyed, g_model, &c, g_docs, g_ten, g_met);
}

static void check_json(const char *s, size_t n) {
    REQUIRE(s && memchr(s, 0, n) == NULL);
    REQUIRE(srv_utf8_valid(s, n, NULL));
    cJSON *o = cJSON_ParseWithLength(s, n);
    REQUIRE(o != NULL);
    cJSON_Delete(o);
}

/* EV(srv_sse_x(j, ..., &n_)): check the event it returns (n_ is its length) */
#define EV(call)                                                                               \
    do {                                                                                       \
        size_t n_ = 0;                                                                         \
        char  *e_ = call;                                                                      \
        check_event(e_, n_);                                                                   \
    } while (0)

static void check_event(char *ev, size_t n) {
    REQUIRE(ev && n >= 8 && !strncmp(ev, "data: ", 6) && !strcmp(ev + n - 2, "\n\n"));
    check_json(ev + 6, n - 8);
    free(ev);
}

/* answer a job with its own prompt's pieces as "generated" text */
static void answer(srv_job *j, const uint8_t *data, size_t size) {
    REQUIRE(j->n_segs >= 1 && j->n_prompt > 0 && j->n_prompt < 256);
    REQUIRE(j->max_tokens >= 1 && j->n_prompt + j->max_tokens <= 256);
    int32_t total = 0;
    for (int32_t s = 0; s < j->n_segs; s++) {
        REQUIRE(j->segs[s].n >= 0 && (j->segs[s].n == 0 || j->segs[s].ids));
        for (int32_t i = 0; i < j->segs[s].n; i++) REQUIRE(j->segs[s].ids[i] >= 0 && j->segs[s].ids[i] < kvf_model_n_vocab(g_model));
        total += j->segs[s].n;
    }
    REQUIRE(total == j->n_prompt);
    if (j->fused) REQUIRE(j->n_segs == j->n_documents + 2 && j->segs[j->n_segs - 1].n > 0);
    pthread_mutex_lock(&j->mu);
    size_t sent = 0;
    bool   stop = false;
    for (int32_t i = 0; i < j->n_prompt && i < j->max_tokens && !stop; i++) {
        char    piece[64];
        int32_t t = j->segs[0].n > i ? j->segs[0].ids[i] : j->segs[j->n_segs - 1].ids[i % j->segs[j->n_segs - 1].n];
        int32_t k = kvf_token_to_piece(g_model, t, piece, sizeof piece, (size ^ (size_t)i) & 1);
        if (k < 0) k = 0;
        if (i == 1 && size > 2) piece[0] = (char)data[size / 2]; /* any byte may come out */
        stop = srv_job_push(j, piece, (size_t)k);
        j->n_gen++;
        REQUIRE(j->ready <= j->len && j->ready >= sent);
        if (j->ready > sent) {
            EV(srv_sse_delta(j, sent, j->ready, &n_));
            sent = j->ready;
        }
    }
    if (size % 7 == 3)
        srv_job_done_locked(j, NULL, 504, "timeout", "timed out after %d s", 1);
    else
        srv_job_done_locked(j, stop ? "stop" : "length", 0, NULL, "%s", "");
    if (j->err_status) {
        EV(srv_sse_error(j, &n_));
    } else {
        if (j->ready > sent) EV(srv_sse_delta(j, sent, j->ready, &n_));
        EV(srv_sse_role(j, &n_));
        EV(srv_sse_final(j, &n_));
        EV(srv_sse_usage(j, &n_));
    }
    srv_response rs = {0};
    srv_job_response(j, &rs);
    pthread_mutex_unlock(&j->mu);
    REQUIRE(rs.status == 200 || rs.status == j->err_status);
    check_json(rs.body, rs.len);
    srv_response_clear(&rs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_model) setup();
    if (size > (1 << 17)) return 0;
    char *in = malloc(size + 1);
    REQUIRE(in);
    memcpy(in, data, size);
    in[size] = 0;
    char        method[16] = "POST", path[256] = "/v1/chat/completions";
    const char *auth = NULL, *xkey = NULL, *body = in;
    size_t      body_len = size;
    char       *nl       = memchr(in, '\n', size);
    if (nl) {
        /* request line */
        *nl     = 0;
        char *sp = strchr(in, ' ');
        if (sp) {
            *sp = 0;
            snprintf(method, sizeof method, "%s", in);
            snprintf(path, sizeof path, "%s", sp + 1);
        } else {
            snprintf(path, sizeof path, "%s", in);
        }
        /* headers up to a blank line */
        char *p = nl + 1, *end = in + size;
        while (p < end) {
            char *e = memchr(p, '\n', (size_t)(end - p));
            if (!e) e = end;
            *e = 0;
            if (p == e) {
                p = e + 1;
                break;
            }
            if (!strncasecmp(p, "Authorization: ", 15)) auth = p + 15;
            if (!strncasecmp(p, "X-Api-Key: ", 11)) xkey = p + 11;
            p = e + 1;
        }
        body     = p < end ? p : end;
        body_len = (size_t)(end - body);
    }
    srv_request rq = {.method = method, .path = path, .auth = auth, .api_key = xkey, .body = body,
                      .body_len = body_len, .body_too_large = body_len > (1 << 16)};
    srv_api     *a  = auth || xkey ? &g_keyed : &g_open;
    srv_response rs = {0};
    srv_job     *j  = NULL;
    srv_api_result r = srv_api_handle(a, &rq, &rs, &j);
    if (r == SRV_API_JOB) {
        REQUIRE(j != NULL && rs.body == NULL);
        answer(j, data, size);
        srv_job_release(j);
    } else {
        REQUIRE(j == NULL);
        REQUIRE(rs.status >= 100 && rs.status <= 599 && rs.body);
        if (rs.ctype && !strcmp(rs.ctype, "application/json"))
            check_json(rs.body, rs.len);
        else
            REQUIRE(strlen(rs.body) == rs.len && srv_utf8_valid(rs.body, rs.len, NULL));
        srv_response_clear(&rs);
    }
    free(in);
    return 0;
}
