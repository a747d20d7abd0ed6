/* server_api.c - request parsing and validation, prompt building (chat template + documents
 * as fusion segments), document endpoints and response JSON of `kvfuse serve` (see
 * server_api.h). Everything that arrives here is hostile: bodies are size-checked, UTF-8
 * validated and parsed with cJSON; every field is type- and range-checked and errors name it. */
#include "server/server_api.h"
#include "server/server_audit.h"
#include "server/server_docs.h"
#include "server/server_metrics.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double srv_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

srv_endpoint srv_api_endpoint(const char *path) {
    if (!path) return SRV_EP_OTHER;
    if (!strncmp(path, "/v1/", 4)) path += 3;
    if (!strcmp(path, "/chat/completions")) return SRV_EP_CHAT;
    if (!strcmp(path, "/completions")) return SRV_EP_COMPLETIONS;
    if (!strcmp(path, "/documents")) return SRV_EP_DOCUMENTS;
    if (!strncmp(path, "/documents/", 11)) return SRV_EP_DOCUMENT;
    if (!strcmp(path, "/models") || !strncmp(path, "/models/", 8)) return SRV_EP_MODELS;
    if (!strcmp(path, "/health") || !strcmp(path, "/healthz")) return SRV_EP_HEALTH;
    if (!strcmp(path, "/metrics")) return SRV_EP_METRICS;
    if (!strcmp(path, "/audit")) return SRV_EP_AUDIT;
    return SRV_EP_OTHER;
}

/* ==== tenants =========================================================================== */

void srv_tenants_free(srv_tenants *t) {
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        if (t->t[i].key) {
            volatile char *p = t->t[i].key; /* scrub the secret */
            while (*p) *p++ = 0;
        }
        free(t->t[i].key);
    }
    free(t->t);
    free(t);
}

static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

srv_tenants *srv_tenants_parse(const char *text, size_t len, char *err, size_t errlen) {
    srv_tenants *t = calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int    line = 0, cap = 0;
    size_t i    = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n') e++;
        line++;
        /* words of [i, e) */
        const char *w[4];
        size_t      wl[4];
        int         nw = 0;
        size_t      p  = i;
        while (p < e) {
            while (p < e && (text[p] == ' ' || text[p] == '\t' || text[p] == '\r')) p++;
            if (p >= e) break;
            size_t s = p;
            while (p < e && text[p] != ' ' && text[p] != '\t' && text[p] != '\r') p++;
            if (nw < 4) w[nw] = text + s, wl[nw] = p - s;
            nw++;
        }
        i = e + 1;
        if (nw == 0 || w[0][0] == '#') continue;
        if (nw < 2 || nw > 3) {
            snprintf(err, errlen, "line %d: expected \"KEY TENANT [admin]\"", line);
            goto fail;
        }
        if (wl[0] < 8 || wl[0] > 256) {
            snprintf(err, errlen, "line %d: the key must have 8 to 256 characters", line);
            goto fail;
        }
        for (size_t k = 0; k < wl[0]; k++)
            if ((unsigned char)w[0][k] < 0x21 || (unsigned char)w[0][k] > 0x7e) {
                snprintf(err, errlen, "line %d: the key must be printable ASCII", line);
                goto fail;
            }
        if (wl[1] < 1 || wl[1] > 64) {
            snprintf(err, errlen, "line %d: the tenant name must have 1 to 64 characters", line);
            goto fail;
        }
        for (size_t k = 0; k < wl[1]; k++)
            if (!name_char(w[1][k])) {
                snprintf(err, errlen, "line %d: the tenant name may only use letters, digits, '.', '_' and '-'", line);
                goto fail;
            }
        if (nw == 3 && !(wl[2] == 5 && memcmp(w[2], "admin", 5) == 0)) {
            snprintf(err, errlen, "line %d: the third word may only be \"admin\"", line);
            goto fail;
        }
        for (int k = 0; k < t->n; k++)
            if (strlen(t->t[k].key) == wl[0] && memcmp(t->t[k].key, w[0], wl[0]) == 0) {
                snprintf(err, errlen, "line %d: the key appears twice", line);
                goto fail;
            }
        if (t->n == cap) {
            int         nc = cap ? 2 * cap : 8;
            srv_tenant *np = realloc(t->t, sizeof *np * (size_t)nc);
            if (!np) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
            t->t = np, cap = nc;
        }
        srv_tenant *x = &t->t[t->n];
        memset(x, 0, sizeof *x);
        x->key = strndup(w[0], wl[0]);
        if (!x->key) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
        memcpy(x->name, w[1], wl[1]);
        x->name[wl[1]] = 0;
        snprintf(x->ns, sizeof x->ns, "t:%s", x->name);
        x->admin = nw == 3;
        t->n++;
    }
    if (t->n == 0) {
        snprintf(err, errlen, "no keys (expected lines \"KEY TENANT [admin]\")");
        goto fail;
    }
    return t;
fail:
    srv_tenants_free(t);
    return NULL;
}

srv_tenants *srv_tenants_load(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    char   buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf, f);
    int    more = fgetc(f) != EOF;
    fclose(f);
    if (more) {
        snprintf(err, errlen, "'%s' is larger than 64 KiB", path);
        return NULL;
    }
    char         e2[200] = "";
    srv_tenants *t       = srv_tenants_parse(buf, n, e2, sizeof e2);
    if (!t) snprintf(err, errlen, "'%s': %s", path, e2);
    memset(buf, 0, sizeof buf);
    return t;
}

const srv_tenant *srv_tenants_find(const srv_tenants *t, const char *key, size_t len) {
    const srv_tenant *found = NULL;
    for (int i = 0; i < t->n; i++) {
        const char *k  = t->t[i].key;
        size_t      kl = strlen(k);
        /* constant time in the key's content: compare every byte of the longer length */
        unsigned diff = (unsigned)(kl != len);
        size_t   m    = kl > len ? kl : len;
        for (size_t j = 0; j < m; j++) {
            unsigned char a = j < kl ? (unsigned char)k[j] : 0, b = j < len ? (unsigned char)key[j] : 0;
            diff |= (unsigned)(a ^ b);
        }
        if (diff == 0 && !found) found = &t->t[i];
    }
    return found;
}

/* ==== UTF-8 ============================================================================= */

/* Length of the valid sequence at s[0..n), 0 if invalid; *incomplete when it is a valid
 * prefix cut by the end. */
static size_t utf8_seq(const unsigned char *s, size_t n, bool *incomplete) {
    *incomplete = false;
    unsigned c  = s[0];
    if (c < 0x80) return 1;
    size_t   k;
    unsigned lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f; /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else
        return 0;
    for (size_t i = 1; i < k; i++) {
        if (i >= n) {
            *incomplete = true;
            return 0;
        }
        unsigned d = s[i];
        if (i == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xbf)) return 0;
    }
    return k;
}

bool srv_utf8_valid(const char *s, size_t n, size_t *bad) {
    const unsigned char *u = (const unsigned char *)s;
    size_t               i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        bool   inc;
        size_t k = utf8_seq(u + i, n - i, &inc);
        if (!k) {
            if (bad) *bad = i;
            return false;
        }
        i += k;
    }
    return true;
}

size_t srv_utf8_incomplete_tail(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        unsigned c = u[n - back];
        if ((c & 0xc0) == 0x80) continue; /* continuation: look further back */
        if (c < 0x80) return 0;
        bool inc;
        utf8_seq(u + n - back, back, &inc);
        return inc ? back : 0;
    }
    return 0;
}

char *srv_utf8_sanitize(const char *s, size_t n, size_t *out_len) {
    const unsigned char *u   = (const unsigned char *)s;
    char                *out = malloc(3 * n + 1); /* each bad byte may become 3 bytes */
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            out[o++] = (char)u[i++];
            continue;
        }
        bool   inc;
        size_t k = utf8_seq(u + i, n - i, &inc);
        if (k) {
            memcpy(out + o, s + i, k);
            o += k, i += k;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, i++;
        }
    }
    out[o] = 0;
    if (out_len) *out_len = o;
    return out;
}

/* ==== jobs ============================================================================== */

srv_job *srv_job_new(void) {
    srv_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, false);
    j->fp = kvf_fuse_default_params();
    j->sp = kvf_sampler_default_params();
    return j;
}

srv_job *srv_job_retain(srv_job *j) {
    if (j) atomic_fetch_add(&j->refs, 1);
    return j;
}

void srv_job_release(srv_job *j) {
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1) return;
    if (j->seg_ids)
        for (int32_t i = 0; i < j->n_segs; i++) free(j->seg_ids[i]);
    free(j->seg_ids);
    free(j->segs);
    free(j->utt);
    free(j->conv_probe);
    for (int32_t i = 0; i < j->n_docs; i++) srv_doc_release(j->docs[i]);
    free(j->docs);
    free(j->text);
    free(j->ckeys);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

bool srv_job_push(srv_job *j, const char *piece, size_t n) {
    if (n > 0) {
        if (j->len + n + 1 > j->cap) {
            size_t nc = 2 * (j->len + n) + 64;
            char  *p  = realloc(j->text, nc);
            if (!p) return false; /* drop the piece; the caller ends the job on other limits */
            j->text = p, j->cap = nc;
        }
        memcpy(j->text + j->len, piece, n);
        j->len += n;
        j->text[j->len] = 0;
    }
    /* a stop string that ends in the new bytes? */
    size_t hold = 0;
    for (int s = 0; s < j->n_stop; s++) {
        size_t m    = strlen(j->stop[s]);
        size_t from = j->len >= n + m ? j->len - n - m + 1 : 0;
        if (from > j->ready) from = j->ready; /* never look before what was sent */
        for (size_t p = from; p + m <= j->len; p++)
            if (memcmp(j->text + p, j->stop[s], m) == 0) {
                j->len = p;
                if (j->ready > p) j->ready = p;
                j->text[p] = 0;
                return true;
            }
        /* longest proper prefix of the stop string that ends the text */
        for (size_t k = m - 1; k > hold; k--)
            if (k <= j->len && memcmp(j->text + j->len - k, j->stop[s], k) == 0) {
                hold = k;
                break;
            }
    }
    size_t ready = j->len - hold;
    ready -= srv_utf8_incomplete_tail(j->text, ready);
    if (ready > j->ready) j->ready = ready;
    return false;
}

srv_job_outcome srv_job_outcome_of(const srv_job *j) {
    srv_job_outcome o = {.err_status    = j->err_status,
                         .n_prompt      = j->n_prompt,
                         .n_gen         = j->n_gen,
                         .cached_tokens = j->cached_tokens,
                         .ttft_ms       = j->ttft_ms,
                         .fused         = j->fused,
                         .method        = j->fp.method,
                         .fst           = j->fst};
    return o;
}

void srv_job_done_locked(srv_job *j, const char *finish, int status, const char *type,
                         const char *fmt, ...) {
    if (j->state == SRV_JOB_DONE) return;
    j->state  = SRV_JOB_DONE;
    j->finish = finish;
    if (status) {
        j->err_status = status;
        snprintf(j->err_type, sizeof j->err_type, "%s", type ? type : "server_error");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(j->err_msg, sizeof j->err_msg, fmt, ap);
        va_end(ap);
    }
    j->ready = j->len;
    pthread_cond_broadcast(&j->cv);
}

/* ==== responses ========================================================================= */

void srv_response_clear(srv_response *r) {
    free(r->body);
    memset(r, 0, sizeof *r);
}

static void set_json(srv_response *r, int status, cJSON *root) {
    free(r->body);
    r->body   = root ? cJSON_PrintUnformatted(root) : NULL;
    r->status = status;
    r->ctype  = "application/json";
    if (!r->body) { /* out of memory: a static-sized fallback */
        r->body   = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        r->status = r->body ? 500 : 500;
    }
    r->len = r->body ? strlen(r->body) : 0;
    cJSON_Delete(root);
}

static cJSON *error_obj(const char *type, const char *param, const char *code, const char *msg) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    if (!e) {
        cJSON_Delete(root);
        return NULL;
    }
    size_t n;
    char  *m = srv_utf8_sanitize(msg, strlen(msg), &n);
    cJSON_AddStringToObject(e, "message", m ? m : "error");
    free(m);
    cJSON_AddStringToObject(e, "type", type);
    if (param)
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code)
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    return root;
}

static const char *code_for(int status) {
    switch (status) {
    case 401: return "invalid_api_key";
    case 404: return "not_found";
    case 405: return "method_not_allowed";
    case 413: return "request_too_large";
    case 429: return "rate_limit_exceeded";
    case 503: return "server_unavailable";
    case 504: return "timeout";
    default: return NULL;
    }
}

void srv_response_error(srv_response *r, int status, const char *type, const char *param,
                        const char *fmt, ...) {
    char    msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    set_json(r, status, error_obj(type, param, code_for(status), msg));
}

void srv_api_busy(srv_response *rs, bool shutting_down, int retry_after) {
    if (shutting_down)
        srv_response_error(rs, 503, "server_unavailable", NULL, "the server is shutting down");
    else
        srv_response_error(rs, 429, "rate_limit_exceeded", NULL,
                           "the server is at its concurrency limit (all slots busy and the queue "
                           "full); retry after %d s", retry_after);
    rs->retry_after = retry_after > 0 ? retry_after : 1;
}

static void add_ms(cJSON *o, const char *k, double v) {
    cJSON_AddNumberToObject(o, k, round(v * 1000.0) / 1000.0);
}

static cJSON *usage_obj(const srv_job *j) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", j->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", j->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", j->n_prompt + j->n_gen);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    if (d) cJSON_AddNumberToObject(d, "cached_tokens", j->cached_tokens);
    return u;
}


/* the response's "kvfuse" object: method, tokens reused/recomputed, TTFT and its parts */
static cJSON *kvfuse_obj(const srv_job *j) {
    cJSON *k = cJSON_CreateObject();
    cJSON_AddStringToObject(k, "method", j->fused ? kvf_method_name(j->fp.method) : "none");
    if (j->fused) {
        if (kvf_method_has_ratio(j->fp.method)) {
            if (j->fp.ratio_auto) { /* the ratio this request picked (once it is fused) */
                cJSON_AddStringToObject(k, "ratio_mode", "auto");
                cJSON_AddNumberToObject(k, "fidelity", round((double)j->fp.fidelity * 1e4) / 1e4);
                cJSON_AddNumberToObject(k, "ratio", round((double)j->fst.ratio_used * 1e4) / 1e4);
                cJSON_AddNumberToObject(k, "score_mass", round((double)j->fst.score_mass * 1e4) / 1e4);
            } else {
                cJSON_AddNumberToObject(k, "ratio", round((double)j->fp.ratio * 1e4) / 1e4);
            }
        }
        cJSON_AddStringToObject(k, "evict", kvf_evict_name(j->fp.evict));
    }
    if (j->attn.mode != KVF_ATTN_DENSE) cJSON_AddStringToObject(k, "attn", kvf_attn_name(j->attn.mode));
    if (j->dattn.mode != KVF_DECODE_DENSE) cJSON_AddStringToObject(k, "decode_attn", kvf_decode_attn_name(j->dattn.mode));
    cJSON_AddNumberToObject(k, "documents", j->n_documents);
    const kvf_fuse_stats *st = &j->fst;
    if (j->fused) {
        cJSON_AddNumberToObject(k, "total_tokens", st->total_tokens);
        cJSON_AddNumberToObject(k, "prefix_tokens", st->prefix_tokens);
        cJSON_AddNumberToObject(k, "question_tokens", st->question_tokens);
        cJSON_AddNumberToObject(k, "recomputed_tokens", st->recomputed_tokens);
        cJSON_AddNumberToObject(k, "reused_tokens", st->reused_tokens);
        cJSON_AddNumberToObject(k, "chunk_hits", st->chunk_hits);
        cJSON_AddNumberToObject(k, "chunk_misses", st->chunk_misses);
        cJSON_AddNumberToObject(k, "kv_bytes_loaded", (double)st->kv_bytes_loaded);
        if (st->kept_after_evict) cJSON_AddNumberToObject(k, "kept_after_evict", st->kept_after_evict);
    } else {
        cJSON_AddNumberToObject(k, "total_tokens", j->n_prompt);
        cJSON_AddNumberToObject(k, "recomputed_tokens", j->n_prompt - j->cached_tokens);
        cJSON_AddNumberToObject(k, "reused_tokens", j->cached_tokens);
    }
    add_ms(k, "ttft_ms", j->ttft_ms);
    add_ms(k, "queue_ms", j->queue_ms);
    add_ms(k, "prefill_ms", j->prefill_ms);
    if (j->fused) {
        cJSON *p = cJSON_AddObjectToObject(k, "ttft_parts");
        if (p) {
            add_ms(p, "load_ms", st->load_ms);
            add_ms(p, "rope_ms", st->rope_ms);
            add_ms(p, "recompute_ms", st->recompute_ms);
            add_ms(p, "first_token_ms", st->first_token_ms);
            add_ms(p, "fusion_ttft_ms", st->ttft_ms);
        }
        add_ms(k, "precompute_ms", st->precompute_ms);
    }
    add_ms(k, "decode_ms", j->decode_ms);
    double tps = j->decode_ms > 0 && j->n_gen > 1 ? (j->n_gen - 1) / j->decode_ms * 1e3 : 0;
    cJSON_AddNumberToObject(k, "decode_tok_s", round(tps * 100) / 100);
    cJSON_AddNumberToObject(k, "batch_max", j->batch_max);
    if (j->conv_bounded) {
        cJSON *c = cJSON_AddObjectToObject(k, "conversation");
        cJSON_AddStringToObject(c, "probe", j->n_conv_probe > 0 ? "request" : j->conv_probe_q ? "question" : "episode");
        cJSON_AddNumberToObject(c, "chunk", j->conv_chunk);
        cJSON_AddNumberToObject(c, "episode", j->conv_episode);
        cJSON_AddNumberToObject(c, "episodes", j->conv_episodes);
        cJSON_AddNumberToObject(c, "kept_tokens", j->conv_kept);
        cJSON_AddNumberToObject(c, "probe_tokens", j->conv_probe_n);
        cJSON_AddNumberToObject(c, "peak_tokens", j->conv_peak);
        cJSON_AddNumberToObject(c, "evictions", j->conv_evictions);
        if (j->conv_layer_max > 0) {
            cJSON_AddNumberToObject(c, "layer_budget_min", j->conv_layer_min);
            cJSON_AddNumberToObject(c, "layer_budget_max", j->conv_layer_max);
        }
    }
    if (j->flow.wf[0]) {
        cJSON *w = cJSON_AddObjectToObject(k, "workflow");
        cJSON_AddStringToObject(w, "id", j->flow.wf);
        cJSON_AddStringToObject(w, "step", j->flow.step);
        cJSON_AddNumberToObject(w, "warmed_chunks", j->flow_warmed);
    }
    return k;
}

static cJSON *base_obj(const srv_job *j, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)j->created);
    cJSON_AddStringToObject(o, "model", j->model);
    cJSON_AddStringToObject(o, "system_fingerprint", "kvfuse-" KVF_VERSION);
    return o;
}

/* text[from, to) of the job as a sanitized cJSON string */
static cJSON *text_item(const srv_job *j, size_t from, size_t to) {
    size_t n;
    char  *s = srv_utf8_sanitize(j->text ? j->text + from : "", to - from, &n);
    cJSON *x = cJSON_CreateString(s ? s : "");
    free(s);
    return x;
}

void srv_job_response(const srv_job *j, srv_response *r) {
    if (j->err_status) {
        set_json(r, j->err_status, error_obj(j->err_type, NULL, code_for(j->err_status), j->err_msg));
        return;
    }
    cJSON *o  = base_obj(j, j->chat ? "chat.completion" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (j->chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddItemToObject(m, "content", text_item(j, 0, j->len));
    } else {
        cJSON_AddItemToObject(c, "text", text_item(j, 0, j->len));
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", j->finish ? j->finish : "stop");
    cJSON_AddItemToObject(o, "usage", usage_obj(j));
    cJSON_AddItemToObject(o, "kvfuse", kvfuse_obj(j));
    set_json(r, 200, o);
}

static char *sse(cJSON *o, size_t *n) {
    char *js = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!js) return NULL;
    size_t k   = strlen(js);
    char  *out = malloc(k + 9);
    if (out) {
        memcpy(out, "data: ", 6);
        memcpy(out + 6, js, k);
        memcpy(out + 6 + k, "\n\n", 3);
        *n = k + 8;
    }
    free(js);
    return out;
}

static cJSON *chunk_obj(const srv_job *j, cJSON **choice) {
    cJSON *o  = base_obj(j, j->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    *choice   = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, *choice);
    cJSON_AddNumberToObject(*choice, "index", 0);
    return o;
}

char *srv_sse_role(const srv_job *j, size_t *n) {
    cJSON *c, *o = chunk_obj(j, &c);
    cJSON *d     = cJSON_AddObjectToObject(c, "delta");
    cJSON_AddStringToObject(d, "role", "assistant");
    cJSON_AddStringToObject(d, "content", "");
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddNullToObject(c, "finish_reason");
    return sse(o, n);
}

char *srv_sse_delta(const srv_job *j, size_t from, size_t to, size_t *n) {
    cJSON *c, *o = chunk_obj(j, &c);
    if (j->chat) {
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        cJSON_AddItemToObject(d, "content", text_item(j, from, to));
    } else {
        cJSON_AddItemToObject(c, "text", text_item(j, from, to));
    }
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddNullToObject(c, "finish_reason");
    return sse(o, n);
}

char *srv_sse_final(const srv_job *j, size_t *n) {
    cJSON *c, *o = chunk_obj(j, &c);
    if (j->chat)
        cJSON_AddObjectToObject(c, "delta");
    else
        cJSON_AddStringToObject(c, "text", "");
    cJSON_AddNullToObject(c, "logprobs");
    cJSON_AddStringToObject(c, "finish_reason", j->finish ? j->finish : "stop");
    cJSON_AddItemToObject(o, "kvfuse", kvfuse_obj(j));
    return sse(o, n);
}

char *srv_sse_usage(const srv_job *j, size_t *n) {
    cJSON *o = base_obj(j, j->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", usage_obj(j));
    return sse(o, n);
}

char *srv_sse_error(const srv_job *j, size_t *n) {
    return sse(error_obj(j->err_type[0] ? j->err_type : "server_error", NULL,
                         code_for(j->err_status), j->err_msg[0] ? j->err_msg : "error"),
               n);
}

char *srv_sse_done(size_t *n) {
    *n = 14;
    return strdup("data: [DONE]\n\n");
}

/* ==== request validation ================================================================ */

typedef struct verr {
    int  status;
    char type[40];
    char param[128];
    char msg[400];
} verr;

__attribute__((format(printf, 4, 5))) static int fail(verr *e, int status, const char *param,
                                                      const char *fmt, ...) {
    e->status = status;
    snprintf(e->type, sizeof e->type, "%s", status == 404 ? "not_found_error" : "invalid_request_error");
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return -1;
}

static const char *jtype(const cJSON *x) {
    if (!x) return "nothing";
    if (cJSON_IsNull(x)) return "null";
    if (cJSON_IsBool(x)) return "a boolean";
    if (cJSON_IsNumber(x)) return "a number";
    if (cJSON_IsString(x)) return "a string";
    if (cJSON_IsArray(x)) return "an array";
    if (cJSON_IsObject(x)) return "an object";
    return "an invalid value";
}

/* A short printable excerpt of a user string for messages (UTF-8 safe cut). */
static void excerpt(const char *s, char *out, size_t cap) {
    size_t n = strlen(s), k = 0;
    while (k < n && k < 40) {
        bool   inc;
        size_t q = utf8_seq((const unsigned char *)s + k, n - k, &inc);
        if (!q || k + q > 40) break;
        k += q;
    }
    snprintf(out, cap, "%.*s%s", (int)k, s, k < n ? "..." : "");
}

/* Optional fields: 0 absent (or null), 1 present and valid, -1 invalid (error set). */
static int opt_bool(const cJSON *o, const char *k, const char *path, bool *v, verr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsBool(x)) return fail(e, 400, path, "%s must be a boolean, not %s", path, jtype(x));
    *v = cJSON_IsTrue(x);
    return 1;
}

static int opt_num(const cJSON *o, const char *k, const char *path, double lo, double hi,
                   double *v, verr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsNumber(x)) return fail(e, 400, path, "%s must be a number, not %s", path, jtype(x));
    double d = x->valuedouble;
    if (!isfinite(d) || d < lo || d > hi)
        return fail(e, 400, path, "%s must be between %g and %g (got %g)", path, lo, hi, d);
    *v = d;
    return 1;
}

static int opt_int(const cJSON *o, const char *k, const char *path, double lo, double hi,
                   long long *v, verr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsNumber(x)) return fail(e, 400, path, "%s must be an integer, not %s", path, jtype(x));
    double d = x->valuedouble;
    if (!isfinite(d) || d != floor(d))
        return fail(e, 400, path, "%s must be an integer (got %g)", path, d);
    if (d < lo || d > hi) return fail(e, 400, path, "%s must be between %.0f and %.0f (got %.0f)", path, lo, hi, d);
    *v = (long long)d;
    return 1;
}

static int opt_str(const cJSON *o, const char *k, const char *path, const char **v, verr *e) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!x || cJSON_IsNull(x)) return 0;
    if (!cJSON_IsString(x)) return fail(e, 400, path, "%s must be a string, not %s", path, jtype(x));
    *v = x->valuestring;
    return 1;
}

/* fields that exist in OpenAI's API but that kvfuse cannot honour: reject rather than ignore */
static int reject_unsupported(const cJSON *root, verr *e) {
    static const char *const no[] = {"tools", "tool_choice", "functions", "function_call",
                                     "logit_bias", "suffix", "best_of"};
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, no[i]);
        if (x && !cJSON_IsNull(x) && !(cJSON_IsArray(x) && cJSON_GetArraySize(x) == 0) &&
            !(cJSON_IsObject(x) && !x->child))
            return fail(e, 400, no[i], "%s is not supported by kvfuse", no[i]);
    }
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (lp && !cJSON_IsNull(lp)) {
        if (!cJSON_IsBool(lp) && !cJSON_IsNumber(lp))
            return fail(e, 400, "logprobs", "logprobs must be a boolean (chat) or an integer (completions), not %s", jtype(lp));
        if (cJSON_IsTrue(lp) || (cJSON_IsNumber(lp) && lp->valuedouble != 0))
            return fail(e, 400, "logprobs", "logprobs is not supported by kvfuse");
    }
    bool b = false;
    if (opt_bool(root, "echo", "echo", &b, e) < 0) return -1;
    if (b) return fail(e, 400, "echo", "echo is not supported by kvfuse");
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    if (rf && !cJSON_IsNull(rf)) {
        const char *t = NULL;
        if (!cJSON_IsObject(rf)) return fail(e, 400, "response_format", "response_format must be an object, not %s", jtype(rf));
        if (opt_str(rf, "type", "response_format.type", &t, e) < 0) return -1;
        if (t && strcmp(t, "text") != 0) {
            char ex[64];
            excerpt(t, ex, sizeof ex);
            return fail(e, 400, "response_format.type", "response_format.type \"%s\" is not supported (only \"text\")", ex);
        }
    }
    return 0;
}

/* ---- tokens ---------------------------------------------------------------------------- */

typedef struct tokbuf {
    int32_t *p;
    int32_t  n, cap;
} tokbuf;

static int tok_append(const kvf_model *m, tokbuf *b, const char *text, size_t len, uint32_t flags) {
    if (len > (size_t)INT32_MAX / 2 - 16) return -1;
    /* byte-level vocabularies: at most one id per byte, plus BOS */
    int64_t need = (int64_t)b->n + (int64_t)len + 2;
    if (need > INT32_MAX / 2) return -1;
    if (need > b->cap) {
        int32_t  nc = (int32_t)need;
        int32_t *p  = realloc(b->p, sizeof(int32_t) * (size_t)nc);
        if (!p) return -1;
        b->p = p, b->cap = nc;
    }
    int32_t k = kvf_tokenize(m, text, len, b->p + b->n, b->cap - b->n, flags);
    if (k == INT32_MIN) return -1;
    if (k < 0) { /* a vocabulary that needs more: ask, then retry */
        int64_t nc = (int64_t)b->n - (int64_t)k;
        if (nc > INT32_MAX / 2) return -1;
        int32_t *p = realloc(b->p, sizeof(int32_t) * (size_t)nc);
        if (!p) return -1;
        b->p = p, b->cap = (int32_t)nc;
        k    = kvf_tokenize(m, text, len, b->p + b->n, b->cap - b->n, flags);
        if (k < 0) return -1;
    }
    b->n += k;
    return 0;
}

/* Tokens of a document's text: plain text (no special tokens, no BOS), followed by a blank line
 * when the text does not end with a newline, so documents do not run into each other. */
static int doc_tokens(const kvf_model *m, const char *text, size_t len, int32_t **out, int32_t *n) {
    tokbuf b = {0};
    int    r = tok_append(m, &b, text, len, 0);
    if (r == 0 && len > 0 && text[len - 1] != '\n') r = tok_append(m, &b, "\n\n", 2, 0);
    if (r != 0 || b.n == 0) {
        free(b.p);
        return r != 0 ? -1 : -2;
    }
    *out = b.p, *n = b.n;
    return 0;
}

/* ---- documents of a request ------------------------------------------------------------ */

typedef struct req_doc {
    srv_doc *reg;  /* registered (retained) or NULL */
    int32_t *tok;  /* inline: owned tokens */
    int32_t  n;
} req_doc;

static void req_docs_free(req_doc *d, int n) {
    for (int i = 0; i < n; i++) {
        srv_doc_release(d[i].reg);
        free(d[i].tok);
    }
    free(d);
}

/* text of a {"text", "title"} object or a string (malloc'd) */
static char *doc_text(const cJSON *x, const char *path, verr *e) {
    if (cJSON_IsString(x)) return strdup(x->valuestring);
    const char *t = NULL, *title = NULL;
    char        p[96];
    for (const cJSON *c = x->child; c; c = c->next) {
        if (!c->string || (strcmp(c->string, "text") && strcmp(c->string, "title") && strcmp(c->string, "id"))) {
            char ex[64];
            excerpt(c->string ? c->string : "", ex, sizeof ex);
            fail(e, 400, path, "%s: unknown field \"%s\" (expected \"id\", or \"text\" and an optional \"title\")", path, ex);
            return NULL;
        }
    }
    snprintf(p, sizeof p, "%s.text", path);
    if (opt_str(x, "text", p, &t, e) < 0) return NULL;
    snprintf(p, sizeof p, "%s.title", path);
    if (opt_str(x, "title", p, &title, e) < 0) return NULL;
    if (!t) {
        fail(e, 400, path, "%s must have \"text\" (a string) or \"id\" (a document id)", path);
        return NULL;
    }
    size_t n = strlen(t) + (title ? strlen(title) + 2 : 0) + 1;
    char  *s = malloc(n);
    if (s) snprintf(s, n, "%s%s%s", title ? title : "", title ? "\n\n" : "", t);
    return s;
}

static int parse_request_docs(srv_api *a, const cJSON *arr, const char *ns, req_doc **out,
                              int *n_out, verr *e) {
    *out   = NULL;
    *n_out = 0;
    if (!arr || cJSON_IsNull(arr)) return 0;
    if (!cJSON_IsArray(arr)) return fail(e, 400, "documents", "documents must be an array of strings or objects, not %s", jtype(arr));
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return 0;
    if (n > a->cfg.max_docs)
        return fail(e, 400, "documents", "documents has %d entries; at most %d are allowed", n, a->cfg.max_docs);
    req_doc *d = calloc((size_t)n, sizeof *d);
    if (!d) return fail(e, 500, "documents", "out of memory");
    int i = 0;
    for (const cJSON *x = arr->child; x; x = x->next, i++) {
        char p[64];
        snprintf(p, sizeof p, "documents[%d]", i);
        const char *id = NULL;
        if (cJSON_IsString(x) && srv_doc_id_valid(x->valuestring, strlen(x->valuestring))) {
            id = x->valuestring;
        } else if (cJSON_IsObject(x)) {
            char pi[80];
            snprintf(pi, sizeof pi, "%s.id", p);
            if (opt_str(x, "id", pi, &id, e) < 0) goto bad;
            if (id && cJSON_GetObjectItemCaseSensitive(x, "text")) {
                fail(e, 400, p, "%s: give \"id\" or \"text\", not both", p);
                goto bad;
            }
            if (id && !srv_doc_id_valid(id, strlen(id))) {
                fail(e, 400, pi, "%s is not a document id (expected \"doc-\" and 32 hex digits)", pi);
                goto bad;
            }
        } else if (!cJSON_IsString(x)) {
            fail(e, 400, p, "%s must be a string (text or document id) or an object, not %s", p, jtype(x));
            goto bad;
        }
        if (id) {
            d[i].reg = srv_docs_get(a->docs, ns, id);
            if (!d[i].reg) {
                fail(e, 404, p, "%s: no document '%s' (ingest it with POST /v1/documents)", p, id);
                goto bad;
            }
            continue;
        }
        char *text = doc_text(x, p, e);
        if (!text) {
            if (!e->status) fail(e, 500, p, "out of memory");
            goto bad;
        }
        if (!text[0]) {
            free(text);
            fail(e, 400, p, "%s is empty", p);
            goto bad;
        }
        int r = doc_tokens(a->model, text, strlen(text), &d[i].tok, &d[i].n);
        free(text);
        if (r == -2) {
            fail(e, 400, p, "%s has no tokens", p);
            goto bad;
        }
        if (r != 0) {
            fail(e, 500, p, "%s: tokenization failed: %s", p, kvf_errmsg());
            goto bad;
        }
    }
    *out   = d;
    *n_out = n;
    return 0;
bad:
    req_docs_free(d, n);
    return -1;
}

/* ---- messages -------------------------------------------------------------------------- */

typedef struct pmsg {
    const char *role; /* static */
    char       *content;
} pmsg;

static void msgs_free(pmsg *m, int n) {
    for (int i = 0; i < n; i++) free(m[i].content);
    free(m);
}

static char *content_text(const cJSON *c, const char *path, bool assistant, verr *e) {
    if (!c || cJSON_IsNull(c)) {
        if (assistant) return strdup("");
        fail(e, 400, path, "%s is missing (a string or an array of text parts)", path);
        return NULL;
    }
    if (cJSON_IsString(c)) return strdup(c->valuestring);
    if (!cJSON_IsArray(c)) {
        fail(e, 400, path, "%s must be a string or an array of text parts, not %s", path, jtype(c));
        return NULL;
    }
    size_t total = 1;
    int    k     = 0;
    for (const cJSON *p = c->child; p; p = p->next, k++) {
        char pp[160];
        snprintf(pp, sizeof pp, "%s[%d]", path, k);
        if (!cJSON_IsObject(p)) {
            fail(e, 400, pp, "%s must be an object {\"type\": \"text\", \"text\": ...}, not %s", pp, jtype(p));
            return NULL;
        }
        const char *type = NULL, *text = NULL;
        char        pt[176];
        snprintf(pt, sizeof pt, "%s.type", pp);
        if (opt_str(p, "type", pt, &type, e) < 0) return NULL;
        if (!type || strcmp(type, "text") != 0) {
            fail(e, 400, pt, "%s must be \"text\" (other content parts are not supported)", pt);
            return NULL;
        }
        snprintf(pt, sizeof pt, "%s.text", pp);
        if (opt_str(p, "text", pt, &text, e) < 0) return NULL;
        if (!text) {
            fail(e, 400, pt, "%s is missing", pt);
            return NULL;
        }
        total += strlen(text) + 1;
    }
    char *s = malloc(total);
    if (!s) {
        fail(e, 500, path, "out of memory");
        return NULL;
    }
    s[0]     = 0;
    size_t o = 0;
    for (const cJSON *p = c->child; p; p = p->next) {
        const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
        size_t      l = strlen(t);
        if (o) s[o++] = '\n';
        memcpy(s + o, t, l);
        o += l;
        s[o] = 0;
    }
    return s;
}

static int parse_messages(const cJSON *root, pmsg **out, int *n_out, verr *e) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!arr || cJSON_IsNull(arr)) return fail(e, 400, "messages", "messages is required (an array of {\"role\", \"content\"} objects)");
    if (!cJSON_IsArray(arr)) return fail(e, 400, "messages", "messages must be an array, not %s", jtype(arr));
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return fail(e, 400, "messages", "messages must not be empty");
    if (n > 4096) return fail(e, 400, "messages", "messages has %d entries; at most 4096 are allowed", n);
    pmsg *m = calloc((size_t)n, sizeof *m);
    if (!m) return fail(e, 500, "messages", "out of memory");
    int i = 0;
    for (const cJSON *x = arr->child; x; x = x->next, i++) {
        char p[64], pr[80], pc[80];
        snprintf(p, sizeof p, "messages[%d]", i);
        snprintf(pr, sizeof pr, "%s.role", p);
        snprintf(pc, sizeof pc, "%s.content", p);
        if (!cJSON_IsObject(x)) {
            fail(e, 400, p, "%s must be an object with \"role\" and \"content\", not %s", p, jtype(x));
            goto bad;
        }
        const char *role = NULL;
        if (opt_str(x, "role", pr, &role, e) < 0) goto bad;
        if (!role) {
            fail(e, 400, pr, "%s is missing", pr);
            goto bad;
        }
        if (!strcmp(role, "system") || !strcmp(role, "developer"))
            m[i].role = "system";
        else if (!strcmp(role, "user"))
            m[i].role = "user";
        else if (!strcmp(role, "assistant"))
            m[i].role = "assistant";
        else {
            char ex[64];
            excerpt(role, ex, sizeof ex);
            fail(e, 400, pr, "%s must be \"system\", \"developer\", \"user\" or \"assistant\" (got \"%s\")", pr, ex);
            goto bad;
        }
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(x, "tool_calls");
        if (tc && !cJSON_IsNull(tc)) {
            fail(e, 400, p, "%s.tool_calls: tool calls are not supported by kvfuse", p);
            goto bad;
        }
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "name");
        if (nm && !cJSON_IsNull(nm) && !cJSON_IsString(nm)) {
            fail(e, 400, p, "%s.name must be a string, not %s", p, jtype(nm));
            goto bad;
        }
        m[i].content = content_text(cJSON_GetObjectItemCaseSensitive(x, "content"), pc,
                                    m[i].role[0] == 'a', e);
        if (!m[i].content) {
            if (!e->status) fail(e, 500, pc, "out of memory");
            goto bad;
        }
    }
    *out   = m;
    *n_out = n;
    return 0;
bad:
    msgs_free(m, n);
    return -1;
}

static void trim(char *s) {
    size_t n = strlen(s), a = 0;
    while (a < n && (s[a] == ' ' || s[a] == '\n' || s[a] == '\t' || s[a] == '\r')) a++;
    while (n > a && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\t' || s[n - 1] == '\r')) n--;
    memmove(s, s + a, n - a);
    s[n - a] = 0;
}

/* ---- segments -------------------------------------------------------------------------- */

static int set_segments(srv_job *j, tokbuf *segs, int n) {
    j->seg_ids = calloc((size_t)n, sizeof *j->seg_ids);
    j->segs    = calloc((size_t)n, sizeof *j->segs);
    if (!j->seg_ids || !j->segs) return -1;
    j->n_segs   = n;
    j->n_prompt = 0;
    for (int i = 0; i < n; i++) {
        j->seg_ids[i] = segs[i].p;
        segs[i].p     = NULL;
        j->segs[i].ids = j->seg_ids[i];
        j->segs[i].n   = segs[i].n;
        j->n_prompt += segs[i].n;
    }
    return 0;
}

/* segments: [prefix, docs..., question] from a prefix and question buffer */
static int build_fused(srv_job *j, tokbuf *prefix, req_doc *docs, int n_docs, tokbuf *question, verr *e) {
    int     n = n_docs + 2;
    tokbuf *s = calloc((size_t)n, sizeof *s);
    if (!s) return fail(e, 500, NULL, "out of memory");
    s[0] = *prefix;
    memset(prefix, 0, sizeof *prefix);
    int n_reg = 0;
    for (int i = 0; i < n_docs; i++) n_reg += docs[i].reg != NULL;
    j->docs = n_reg ? calloc((size_t)n_reg, sizeof *j->docs) : NULL;
    int rc  = n_reg && !j->docs ? -1 : 0;
    for (int i = 0; rc == 0 && i < n_docs; i++) {
        if (docs[i].reg) {
            s[i + 1].p = malloc(sizeof(int32_t) * (size_t)docs[i].reg->n_tok);
            if (!s[i + 1].p) {
                rc = -1;
                break;
            }
            memcpy(s[i + 1].p, docs[i].reg->tok, sizeof(int32_t) * (size_t)docs[i].reg->n_tok);
            s[i + 1].n            = docs[i].reg->n_tok;
            j->docs[j->n_docs++] = srv_doc_retain(docs[i].reg);
        } else {
            s[i + 1].p  = docs[i].tok;
            s[i + 1].n  = docs[i].n;
            docs[i].tok = NULL;
        }
    }
    s[n - 1] = *question;
    memset(question, 0, sizeof *question);
    if (rc == 0) rc = set_segments(j, s, n);
    for (int i = 0; i < n; i++) free(s[i].p);
    free(s);
    j->n_documents = n_docs;
    j->fused       = true;
    return rc ? fail(e, 500, NULL, "out of memory") : 0;
}

/* Chat prompt: the model's chat template with each message's content replaced by a marker,
 * so template text (special tokens parsed) and message content (plain text: a user cannot
 * inject control tokens) are tokenized apart. With documents, they go between the template
 * text that opens the last user turn and that turn's content. */
static int build_chat_prompt(srv_api *a, srv_job *j, pmsg *msgs, int n, req_doc *docs,
                             int n_docs, verr *e) {
    if (n < 1 || n > 4096) return fail(e, 400, "messages", "messages must have 1 to 4096 entries");
    const kvf_model *m    = a->model;
    const char      *tmpl = kvf_chat_template_name(m);
    if (!strcmp(tmpl, "none"))
        return fail(e, 400, "messages", "the model has no chat template: use /v1/completions");
    if (n_docs > 0 && strcmp(msgs[n - 1].role, "user") != 0)
        return fail(e, 400, "messages", "with documents, the last message must be from the user (the question)");
    bool strip = !strcmp(tmpl, "llama3") || !strcmp(tmpl, "llama2");
    if (strip)
        for (int i = 0; i < n; i++) trim(msgs[i].content);
    kvf_chat_msg *cm   = calloc((size_t)n, sizeof *cm);
    char        (*mk)[16] = calloc((size_t)n, sizeof *mk);
    char         *buf  = NULL;
    tokbuf        pre = {0}, q = {0};
    int           rc   = -1;
    if (!cm || !mk) {
        fail(e, 500, NULL, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        snprintf(mk[i], sizeof mk[i], "\x1e%d\x1f", i);
        cm[i].role    = msgs[i].role;
        cm[i].content = mk[i];
    }
    int32_t need = kvf_chat_format(m, cm, (size_t)n, true, NULL, 0);
    if (need == INT32_MIN) {
        fail(e, 500, "messages", "cannot apply the chat template: %s", kvf_errmsg());
        goto out;
    }
    if (need < 0) need = -need;
    buf = malloc((size_t)need + 1);
    if (!buf || kvf_chat_format(m, cm, (size_t)n, true, buf, need + 1) < 0) {
        fail(e, 500, "messages", "cannot apply the chat template: %s", kvf_errmsg());
        goto out;
    }
    buf[need]    = 0;
    size_t pos   = 0;
    bool   first = true;
    int    last  = n - 1; /* the question when there are documents */
    tokbuf *cur  = &pre;
    if (n_docs == 0 && !(j->utt = malloc(sizeof(int32_t) * (size_t)n))) {
        fail(e, 500, NULL, "out of memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        char *at = strstr(buf + pos, mk[i]);
        if (!at) continue; /* the template leaves this message out */
        size_t tl = (size_t)(at - (buf + pos));
        if (j->utt && (j->n_utt == 0 || pre.n > j->utt[j->n_utt - 1])) j->utt[j->n_utt++] = pre.n;
        if (tok_append(m, cur, buf + pos, tl, KVF_TOK_PARSE_SPECIAL | (first ? KVF_TOK_ADD_BOS : 0)) != 0)
            goto tokfail;
        first = false;
        if (n_docs > 0 && i == last) cur = &q;
        if (n_docs == 0 && i == n - 1) j->q_text0 = pre.n;
        if (tok_append(m, cur, msgs[i].content, strlen(msgs[i].content), 0) != 0) goto tokfail;
        if (n_docs == 0 && i == n - 1) j->q_text1 = pre.n;
        pos += tl + strlen(mk[i]);
    }
    if (n_docs > 0 && cur != &q) {
        fail(e, 400, "messages", "the chat template leaves out the last user message");
        goto out;
    }
    if (tok_append(m, cur, buf + pos, strlen(buf + pos), KVF_TOK_PARSE_SPECIAL | (first ? KVF_TOK_ADD_BOS : 0)) != 0)
        goto tokfail;
    if (n_docs > 0) {
        if (q.n == 0) {
            fail(e, 400, "messages", "the question (last user message) is empty");
            goto out;
        }
        rc = build_fused(j, &pre, docs, n_docs, &q, e);
    } else {
        rc = set_segments(j, &pre, 1);
        if (rc) fail(e, 500, NULL, "out of memory");
    }
    goto out;
tokfail:
    fail(e, 500, "messages", "tokenization failed: %s", kvf_errmsg());
out:
    free(pre.p), free(q.p), free(buf), free(cm), free(mk);
    return rc;
}

/* Completions: the prompt is raw model input (special tokens parsed, BOS added); with
 * documents the prefix is just the BOS (if any) and the prompt is the question. */
static int build_text_prompt(srv_api *a, srv_job *j, const char *prompt, req_doc *docs, int n_docs,
                             verr *e) {
    const kvf_model *m   = a->model;
    tokbuf           pre = {0}, q = {0};
    int              rc  = 0;
    if (n_docs > 0) {
        if (tok_append(m, &pre, "", 0, KVF_TOK_ADD_BOS) != 0 ||
            tok_append(m, &q, prompt, strlen(prompt), KVF_TOK_PARSE_SPECIAL) != 0)
            rc = fail(e, 500, "prompt", "tokenization failed: %s", kvf_errmsg());
        else if (q.n == 0)
            rc = fail(e, 400, "prompt", "prompt has no tokens (the question after the documents)");
        else
            rc = build_fused(j, &pre, docs, n_docs, &q, e);
    } else {
        if (tok_append(m, &pre, prompt, strlen(prompt), KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL) != 0)
            rc = fail(e, 500, "prompt", "tokenization failed: %s", kvf_errmsg());
        else if (pre.n == 0)
            rc = fail(e, 400, "prompt", "prompt has no tokens");
        else if (set_segments(j, &pre, 1) != 0)
            rc = fail(e, 500, NULL, "out of memory");
    }
    free(pre.p), free(q.p);
    return rc;
}

/* ---- completion requests ---------------------------------------------------------------- */

/* The mode of kvfuse.<field> (attn, decode_attn): a mode name, or an object whose fields are all
 * in known[] (a comma-separated list for the message) and whose "mode" is given. Sets *name;
 * -1 after a 400. */
static int attn_mode_name(const cJSON *ax, const char *field, const char *const *known, size_t n_known,
                          const char *known_list, const char **name, verr *e) {
    char path[48];
    snprintf(path, sizeof path, "kvfuse.%s", field);
    *name = cJSON_IsString(ax) ? ax->valuestring : NULL;
    if (*name) return 0;
    if (!cJSON_IsObject(ax))
        return fail(e, 400, path, "%s must be a mode name or an object {%s}, not %s", path, known_list, jtype(ax));
    for (const cJSON *c = ax->child; c; c = c->next) {
        bool ok = false;
        for (size_t i = 0; i < n_known; i++) ok |= c->string && !strcmp(c->string, known[i]);
        if (!ok) {
            char ex[64];
            excerpt(c->string ? c->string : "", ex, sizeof ex);
            return fail(e, 400, path, "%s.%s is not a known field (%s)", path, ex, known_list);
        }
    }
    char mpath[64];
    snprintf(mpath, sizeof mpath, "%s.mode", path);
    if (opt_str(ax, "mode", mpath, name, e) < 0) return -1;
    if (!*name) return fail(e, 400, mpath, "%s needs a \"mode\"", path);
    return 0;
}

/* kvfuse.attn: a mode name ("dense", "sale", "power": its defaults, or the server's own
 * settings when the server runs that mode) or an object {"mode", "threshold", "local",
 * "block", "window", "dense_layers", "dense_period", "min_keys"} */
static int parse_attn(srv_api *a, const cJSON *ax, srv_job *j, verr *e) {
    static const char *const known[] = {"mode", "threshold", "local", "block", "window", "dense_layers", "dense_period", "min_keys"};
    const char              *name;
    if (attn_mode_name(ax, "attn", known, sizeof known / sizeof known[0],
                       "mode, threshold, local, block, window, dense_layers, dense_period, min_keys", &name, e) < 0)
        return -1;
    int mode = kvf_attn_from_name(name);
    if (mode < 0) {
        char ex[64];
        excerpt(name, ex, sizeof ex);
        return fail(e, 400, "kvfuse.attn", "kvfuse.attn mode must be \"dense\", \"sale\" or \"power\" (got \"%s\")", ex);
    }
    j->attn = (int)a->cfg.attn.mode == mode ? a->cfg.attn : kvf_attn_default_params((kvf_attn_mode)mode);
    if (cJSON_IsString(ax)) return 0;
    double    d;
    long long v;
    int       k;
    if ((k = opt_num(ax, "threshold", "kvfuse.attn.threshold", 0, 0.999999, &d, e)) < 0) return -1;
    if (k) j->attn.threshold = (float)d;
    if ((k = opt_int(ax, "local", "kvfuse.attn.local", 0, 1 << 22, &v, e)) < 0) return -1;
    if (k) j->attn.local = (int32_t)v;
    if ((k = opt_int(ax, "block", "kvfuse.attn.block", 64, 1 << 20, &v, e)) < 0) return -1;
    if (k) {
        if (v % 64) return fail(e, 400, "kvfuse.attn.block", "kvfuse.attn.block must be a multiple of 64 (got %lld)", v);
        j->attn.block = (int32_t)v;
    }
    if ((k = opt_int(ax, "window", "kvfuse.attn.window", 1, 1 << 20, &v, e)) < 0) return -1;
    if (k) j->attn.window = (int32_t)v;
    if ((k = opt_int(ax, "dense_layers", "kvfuse.attn.dense_layers", 0, 4096, &v, e)) < 0) return -1;
    if (k) j->attn.dense_layers = (int32_t)v;
    if ((k = opt_int(ax, "dense_period", "kvfuse.attn.dense_period", 0, 4096, &v, e)) < 0) return -1;
    if (k) j->attn.dense_period = (int32_t)v;
    if ((k = opt_int(ax, "min_keys", "kvfuse.attn.min_keys", 0, 1 << 22, &v, e)) < 0) return -1;
    if (k) j->attn.min_keys = (int32_t)v;
    return 0;
}

/* kvfuse.decode_attn: "dense" / "mac" / "louis", or {"mode", "tau", "lookback", "band",
 * "min_keys", "budget", "cluster", "dense_layers"} */
static int parse_decode_attn(srv_api *a, const cJSON *ax, srv_job *j, verr *e) {
    static const char *const known[] = {"mode", "tau", "lookback", "band", "min_keys", "budget", "cluster", "dense_layers"};
    const char              *name;
    if (attn_mode_name(ax, "decode_attn", known, sizeof known / sizeof known[0],
                       "mode, tau, lookback, band, min_keys, budget, cluster, dense_layers", &name, e) < 0)
        return -1;
    int mode = kvf_decode_attn_from_name(name);
    if (mode < 0) {
        char ex[64];
        excerpt(name, ex, sizeof ex);
        return fail(e, 400, "kvfuse.decode_attn", "kvfuse.decode_attn mode must be \"dense\", \"mac\" or \"louis\" (got \"%s\")", ex);
    }
    j->dattn = (int)a->cfg.dattn.mode == mode ? a->cfg.dattn : kvf_decode_attn_default_params((kvf_decode_mode)mode);
    if (cJSON_IsString(ax)) return 0;
    double    d;
    long long v;
    int       k;
    if ((k = opt_num(ax, "tau", "kvfuse.decode_attn.tau", 0, 1, &d, e)) < 0) return -1;
    if (k) j->dattn.tau = (float)d;
    if ((k = opt_int(ax, "lookback", "kvfuse.decode_attn.lookback", 1, 512, &v, e)) < 0) return -1;
    if (k) j->dattn.lookback = (int32_t)v;
    if ((k = opt_int(ax, "band", "kvfuse.decode_attn.band", 1, 1 << 22, &v, e)) < 0) return -1;
    if (k) j->dattn.band = (int32_t)v;
    if ((k = opt_int(ax, "min_keys", "kvfuse.decode_attn.min_keys", 0, 1 << 22, &v, e)) < 0) return -1;
    if (k) j->dattn.min_keys = (int32_t)v;
    if ((k = opt_int(ax, "budget", "kvfuse.decode_attn.budget", 1, 1 << 22, &v, e)) < 0) return -1;
    if (k) j->dattn.budget = (int32_t)v;
    if ((k = opt_int(ax, "cluster", "kvfuse.decode_attn.cluster", 4, 256, &v, e)) < 0) return -1;
    if (k) j->dattn.cluster = (int32_t)v;
    if ((k = opt_int(ax, "dense_layers", "kvfuse.decode_attn.dense_layers", 0, 4096, &v, e)) < 0) return -1;
    if (k) j->dattn.dense_layers = (int32_t)v;
    return 0;
}

/* a workflow id or step name: a string of 1..63 bytes, or an integer >= 0 (kept as its digits) */
static int flow_name(const cJSON *x, const char *path, char out[SRV_FLOW_NAME], verr *e) {
    if (cJSON_IsNumber(x)) {
        double d = x->valuedouble;
        if (!isfinite(d) || d != floor(d) || d < 0 || d > 9007199254740991.0)
            return fail(e, 400, path, "%s must be a string or an integer >= 0", path);
        snprintf(out, SRV_FLOW_NAME, "%.0f", d);
        return 0;
    }
    if (!cJSON_IsString(x)) return fail(e, 400, path, "%s must be a string or an integer >= 0, not %s", path, jtype(x));
    size_t n = strlen(x->valuestring);
    if (n == 0 || n >= SRV_FLOW_NAME) return fail(e, 400, path, "%s must be 1..%d bytes long (got %zu)", path, SRV_FLOW_NAME - 1, n);
    memcpy(out, x->valuestring, n + 1);
    return 0;
}

/* kvfuse.workflow, .step, .next (KVFlow): step is required with a workflow, next is optional */
static int parse_flow(const cJSON *kx, srv_job *j, verr *e) {
    const cJSON *wx = cJSON_GetObjectItemCaseSensitive(kx, "workflow");
    const cJSON *sx = cJSON_GetObjectItemCaseSensitive(kx, "step");
    const cJSON *nx = cJSON_GetObjectItemCaseSensitive(kx, "next");
    bool         w = wx && !cJSON_IsNull(wx), st = sx && !cJSON_IsNull(sx), nt = nx && !cJSON_IsNull(nx);
    if (!w) {
        if (st || nt) return fail(e, 400, st ? "kvfuse.step" : "kvfuse.next", "kvfuse.%s needs kvfuse.workflow", st ? "step" : "next");
        return 0;
    }
    if (!st) return fail(e, 400, "kvfuse.step", "kvfuse.workflow needs kvfuse.step (this request's step in it)");
    if (flow_name(wx, "kvfuse.workflow", j->flow.wf, e) < 0 || flow_name(sx, "kvfuse.step", j->flow.step, e) < 0) return -1;
    if (nt) {
        if (!cJSON_IsArray(nx)) return fail(e, 400, "kvfuse.next", "kvfuse.next must be an array of steps, not %s", jtype(nx));
        int n = cJSON_GetArraySize(nx);
        if (n > SRV_FLOW_NEXT) return fail(e, 400, "kvfuse.next", "kvfuse.next names %d steps (at most %d)", n, SRV_FLOW_NEXT);
        int i = 0;
        for (const cJSON *c = nx->child; c; c = c->next, i++)
            if (flow_name(c, "kvfuse.next[]", j->flow.next[i], e) < 0) return -1;
        j->flow.n_next = n;
    }
    return 0;
}

/* kvfuse.conv_probe: the text whose attention chooses what a bounded conversation's history
 * keeps (--conv-budget), e.g. the bare question when the last message also holds instructions */
static int parse_conv_probe(srv_api *a, const cJSON *kx, srv_job *j, verr *e) {
    const char *s = NULL;
    if (opt_str(kx, "conv_probe", "kvfuse.conv_probe", &s, e) < 0) return -1;
    if (!s) return 0;
    size_t n = strlen(s);
    if (n == 0 || n > 4096) return fail(e, 400, "kvfuse.conv_probe", "kvfuse.conv_probe must be 1..4096 bytes long (got %zu)", n);
    tokbuf b = {0};
    if (tok_append(a->model, &b, s, n, 0) != 0) {
        free(b.p);
        return fail(e, 500, "kvfuse.conv_probe", "cannot tokenize kvfuse.conv_probe: %s", kvf_errmsg());
    }
    if (b.n == 0) {
        free(b.p);
        return fail(e, 400, "kvfuse.conv_probe", "kvfuse.conv_probe has no tokens");
    }
    j->conv_probe = b.p, j->n_conv_probe = b.n;
    return 0;
}

static int parse_kvfuse(srv_api *a, const cJSON *root, srv_job *j, verr *e) {
    j->fp           = a->cfg.fp;
    j->attn         = a->cfg.attn;
    j->dattn        = a->cfg.dattn;
    const cJSON *kx = cJSON_GetObjectItemCaseSensitive(root, "kvfuse");
    if (!kx || cJSON_IsNull(kx)) return 0;
    if (!cJSON_IsObject(kx)) return fail(e, 400, "kvfuse", "kvfuse must be an object {\"method\", \"ratio\", \"evict\", \"budget\"}, not %s", jtype(kx));
    for (const cJSON *c = kx->child; c; c = c->next) {
        static const char *const known[] = {"method", "ratio", "fidelity", "evict", "budget", "epic_k", "pool", "attn", "decode_attn", "workflow", "step", "next", "conv_probe"};
        bool                     ok      = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) ok |= c->string && !strcmp(c->string, known[i]);
        if (!ok) {
            char ex[64];
            excerpt(c->string ? c->string : "", ex, sizeof ex);
            return fail(e, 400, "kvfuse", "kvfuse.%s is not a known field (method, ratio, fidelity, evict, budget, epic_k, pool, attn, decode_attn, workflow, step, next, conv_probe)", ex);
        }
    }
    const char *s = NULL;
    if (opt_str(kx, "method", "kvfuse.method", &s, e) < 0) return -1;
    if (s) {
        int k = kvf_method_from_name(s);
        if (k == KVF_METHOD_ORACLE) /* a diagnostic that runs a full prefill first */
            return fail(e, 400, "kvfuse.method", "kvfuse.method \"oracle\" is an evaluation diagnostic (kvfuse eval), not served");
        if (k < 0) {
            char ex[64];
            excerpt(s, ex, sizeof ex);
            return fail(e, 400, "kvfuse.method", "kvfuse.method must be one of full, prefix, reuse, epic, cacheblend, a3, kvshare, prophet, focus (got \"%s\")", ex);
        }
        j->fp.method = (kvf_method)k;
    }
    double       r;
    const cJSON *rx = cJSON_GetObjectItemCaseSensitive(kx, "ratio");
    if (cJSON_IsString(rx)) { /* "auto": picked per request for the fidelity target */
        if (strcmp(rx->valuestring, "auto") != 0) {
            char ex[64];
            excerpt(rx->valuestring, ex, sizeof ex);
            return fail(e, 400, "kvfuse.ratio", "kvfuse.ratio must be a number in [0, 1] or \"auto\" (got \"%s\")", ex);
        }
        j->fp.ratio_auto = true;
    } else {
        int kr = opt_num(kx, "ratio", "kvfuse.ratio", 0, 1, &r, e);
        if (kr < 0) return -1;
        if (kr) j->fp.ratio = (float)r, j->fp.ratio_auto = false;
    }
    int kf = opt_num(kx, "fidelity", "kvfuse.fidelity", 0, 1, &r, e);
    if (kf < 0) return -1;
    if (kf) {
        if (!(r > 0)) return fail(e, 400, "kvfuse.fidelity", "kvfuse.fidelity must be in (0, 1] (got %g)", r);
        if (!j->fp.ratio_auto)
            return fail(e, 400, "kvfuse.fidelity", "kvfuse.fidelity needs \"ratio\": \"auto\" (here or as the server's --ratio)");
        j->fp.fidelity = (float)r;
    }
    s = NULL;
    if (opt_str(kx, "evict", "kvfuse.evict", &s, e) < 0) return -1;
    if (s) {
        int ev = kvf_evict_from_name(s);
        if (ev < 0) return fail(e, 400, "kvfuse.evict", "kvfuse.evict must be \"none\", \"snapkv\" or \"streaming\"");
        j->fp.evict = (kvf_evict)ev;
    }
    long long v;
    int       k = opt_int(kx, "budget", "kvfuse.budget", 16, 1 << 20, &v, e);
    if (k < 0) return -1;
    if (k) j->fp.budget = (int32_t)v;
    if ((k = opt_int(kx, "epic_k", "kvfuse.epic_k", 0, 1 << 20, &v, e)) < 0) return -1;
    if (k) j->fp.epic_k = (int32_t)v;
    if ((k = opt_int(kx, "pool", "kvfuse.pool", 1, 101, &v, e)) < 0) return -1;
    if (k) j->fp.pool = (int32_t)v;
    const cJSON *ax = cJSON_GetObjectItemCaseSensitive(kx, "attn");
    if (ax && !cJSON_IsNull(ax) && parse_attn(a, ax, j, e) < 0) return -1;
    const cJSON *dx = cJSON_GetObjectItemCaseSensitive(kx, "decode_attn");
    if (dx && !cJSON_IsNull(dx) && parse_decode_attn(a, dx, j, e) < 0) return -1;
    if (parse_conv_probe(a, kx, j, e) < 0) return -1;
    return parse_flow(kx, j, e);
}

static int parse_sampling(srv_api *a, const cJSON *root, srv_job *j, verr *e) {
    double    d;
    long long v;
    int       k;
    j->sp.temp = a->cfg.temperature;
    if ((k = opt_num(root, "temperature", "temperature", 0, 2, &d, e)) < 0) return -1;
    if (k) j->sp.temp = (float)d;
    if ((k = opt_num(root, "top_p", "top_p", 0, 1, &d, e)) < 0) return -1;
    if (k) j->sp.top_p = d > 0 ? (float)d : 1e-6f;
    if ((k = opt_int(root, "top_k", "top_k", 0, 1 << 20, &v, e)) < 0) return -1;
    if (k) j->sp.top_k = (int32_t)v;
    if ((k = opt_int(root, "seed", "seed", -9007199254740991.0, 9007199254740991.0, &v, e)) < 0) return -1;
    if (k)
        j->sp.seed = (uint64_t)v;
    else
        j->sp.seed = a->id_salt ^ (atomic_fetch_add(&a->seq, 1) * 0x9E3779B97F4A7C15ull);
    if ((k = opt_int(root, "n", "n", 1, 1 << 20, &v, e)) < 0) return -1;
    if (k && v != 1) return fail(e, 400, "n", "n must be 1 (kvfuse returns one choice)");
    for (int i = 0; i < 2; i++) { /* accepted, not applied */
        const char *nm = i ? "frequency_penalty" : "presence_penalty";
        if (opt_num(root, nm, nm, -2, 2, &d, e) < 0) return -1;
    }
    const char *u;
    if (opt_str(root, "user", "user", &u, e) < 0) return -1;
    /* stop: a string or up to 4 strings */
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (st && !cJSON_IsNull(st)) {
        const cJSON *one = cJSON_IsString(st) ? st : NULL;
        if (!one && !cJSON_IsArray(st)) return fail(e, 400, "stop", "stop must be a string or an array of strings, not %s", jtype(st));
        if (!one && cJSON_GetArraySize(st) > SRV_MAX_STOP) return fail(e, 400, "stop", "stop has more than %d strings", SRV_MAX_STOP);
        int i = 0;
        for (const cJSON *x = one ? one : st->child; x; x = one ? NULL : x->next, i++) {
            char p[32];
            snprintf(p, sizeof p, one ? "stop" : "stop[%d]", i);
            if (!cJSON_IsString(x)) return fail(e, 400, p, "%s must be a string, not %s", p, jtype(x));
            size_t l = strlen(x->valuestring);
            if (l == 0) return fail(e, 400, p, "%s must not be empty", p);
            if (l > SRV_STOP_MAX) return fail(e, 400, p, "%s is longer than %d bytes", p, SRV_STOP_MAX);
            memcpy(j->stop[j->n_stop++], x->valuestring, l + 1);
        }
    }
    return 0;
}

static int parse_completion(srv_api *a, const cJSON *root, const char *ns, bool chat, srv_job *j,
                            verr *e) {
    if (reject_unsupported(root, e) < 0) return -1;
    const char *model = NULL;
    if (opt_str(root, "model", "model", &model, e) < 0) return -1;
    snprintf(j->model, sizeof j->model, "%s", a->cfg.model_id); /* one model: always ours */
    bool b = false;
    if (opt_bool(root, "stream", "stream", &b, e) < 0) return -1;
    j->stream        = b;
    const cJSON *so  = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return fail(e, 400, "stream_options", "stream_options must be an object, not %s", jtype(so));
        b = false;
        if (opt_bool(so, "include_usage", "stream_options.include_usage", &b, e) < 0) return -1;
        j->include_usage = b;
    }
    if (parse_sampling(a, root, j, e) < 0) return -1;
    if (parse_kvfuse(a, root, j, e) < 0) return -1;
    long long mt = 0;
    int       k1 = opt_int(root, "max_tokens", "max_tokens", 1, 1 << 24, &mt, e);
    if (k1 < 0) return -1;
    long long mt2 = 0;
    int       k2  = opt_int(root, "max_completion_tokens", "max_completion_tokens", 1, 1 << 24, &mt2, e);
    if (k2 < 0) return -1;
    const char *mt_name = k2 ? "max_completion_tokens" : "max_tokens";
    if (k2) mt = mt2, k1 = 1;

    req_doc *docs   = NULL;
    int      n_docs = 0;
    if (parse_request_docs(a, cJSON_GetObjectItemCaseSensitive(root, "documents"), ns, &docs, &n_docs, e) < 0)
        return -1;
    int rc;
    if (chat) {
        pmsg *msgs = NULL;
        int   n    = 0;
        rc         = parse_messages(root, &msgs, &n, e);
        if (rc == 0) rc = build_chat_prompt(a, j, msgs, n, docs, n_docs, e);
        if (msgs) msgs_free(msgs, n);
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (p && cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && cJSON_IsString(p->child)) p = p->child;
        if (!p || cJSON_IsNull(p))
            rc = fail(e, 400, "prompt", "prompt is required (a string)");
        else if (cJSON_IsArray(p))
            rc = fail(e, 400, "prompt", "prompt must be one string (batches of prompts and token arrays are not supported)");
        else if (!cJSON_IsString(p))
            rc = fail(e, 400, "prompt", "prompt must be a string, not %s", jtype(p));
        else
            rc = build_text_prompt(a, j, p->valuestring, docs, n_docs, e);
    }
    req_docs_free(docs, n_docs);
    if (rc < 0) return -1;
    /* with tenants, chunks of shared documents are computed without the prefix (system
     * prompt) as context: their cache keys then reveal nothing about a tenant's prompt */
    for (int32_t i = 0; a->tenants && i < j->n_docs; i++)
        if (j->docs[i]->shared) j->fp.chunk_alone = true;

    int32_t C = a->cfg.n_ctx;
    if (j->n_prompt >= C)
        return fail(e, 400, chat ? "messages" : "prompt",
                    "the prompt has %d tokens (documents included), more than fit in the server's "
                    "context of %d tokens (leave room for at least one generated token)",
                    j->n_prompt, C);
    if (k1) {
        if ((long long)j->n_prompt + mt > C)
            return fail(e, 400, mt_name,
                        "%s is %lld but the prompt has %d tokens and the context %d: at most %d "
                        "tokens can be generated",
                        mt_name, mt, j->n_prompt, C, C - j->n_prompt);
        j->max_tokens = (int32_t)mt;
    } else {
        int32_t def   = chat ? a->cfg.max_tokens : 16;
        j->max_tokens = C - j->n_prompt < def ? C - j->n_prompt : def;
    }
    return 0;
}

/* ==== endpoints ========================================================================= */

static void json_error_from(srv_response *rs, const verr *e) {
    const char *code = code_for(e->status);
    if (e->status == 400 && strstr(e->msg, "context of")) code = "context_length_exceeded";
    set_json(rs, e->status ? e->status : 400,
             error_obj(e->status >= 500 ? "server_error" : e->type, e->param[0] ? e->param : NULL, code, e->msg));
}

/* parse a body that must be a JSON object */
static cJSON *parse_body(const srv_request *rq, verr *e) {
    if (rq->body_len == 0) {
        fail(e, 400, NULL, "the request body is empty; expected a JSON object");
        return NULL;
    }
    size_t bad;
    if (!srv_utf8_valid(rq->body, rq->body_len, &bad)) {
        fail(e, 400, NULL, "the request body is not valid UTF-8 (byte offset %zu)", bad);
        return NULL;
    }
    const char *end  = NULL;
    cJSON      *root = cJSON_ParseWithLengthOpts(rq->body, rq->body_len, &end, false);
    if (!root) {
        size_t off = end && end >= rq->body && end <= rq->body + rq->body_len ? (size_t)(end - rq->body) : 0;
        fail(e, 400, NULL, "the request body is not valid JSON (error near byte offset %zu)", off);
        return NULL;
    }
    if (end) {
        const char *stop = rq->body + rq->body_len;
        while (end < stop && (*end == ' ' || *end == '\n' || *end == '\r' || *end == '\t')) end++;
        if (end < stop) {
            fail(e, 400, NULL, "unexpected data after the JSON value (byte offset %zu)", (size_t)(end - rq->body));
            cJSON_Delete(root);
            return NULL;
        }
    }
    if (!cJSON_IsObject(root)) {
        fail(e, 400, NULL, "the request body must be a JSON object, not %s", jtype(root));
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static srv_api_result handle_completion(srv_api *a, const srv_request *rq, const char *ns, bool chat,
                                        srv_response *rs, srv_job **out) {
    verr   e    = {0};
    cJSON *root = parse_body(rq, &e);
    if (!root) {
        json_error_from(rs, &e);
        return SRV_API_RESPONSE;
    }
    srv_job *j = srv_job_new();
    if (!j) {
        cJSON_Delete(root);
        srv_response_error(rs, 500, "server_error", NULL, "out of memory");
        return SRV_API_RESPONSE;
    }
    j->t_arrival_ms = srv_now_ms();
    j->ep           = chat ? SRV_EP_CHAT : SRV_EP_COMPLETIONS;
    j->chat         = chat;
    j->timeout_ms   = a->cfg.timeout_ms;
    j->created      = (int64_t)time(NULL);
    snprintf(j->ns, sizeof j->ns, "%s", ns);
    uint64_t s = a->id_salt ^ (atomic_fetch_add(&a->seq, 1) + 1) * 0xD1B54A32D192ED03ull;
    s ^= s >> 29;
    snprintf(j->id, sizeof j->id, "%s%016llx", chat ? "chatcmpl-" : "cmpl-", (unsigned long long)s);
    int rc = parse_completion(a, root, ns, chat, j, &e);
    cJSON_Delete(root);
    if (rc < 0) {
        json_error_from(rs, &e);
        srv_job_release(j);
        return SRV_API_RESPONSE;
    }
    *out = j;
    return SRV_API_JOB;
}

static cJSON *doc_json(const srv_doc *d, bool with_text, int created) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", d->id);
    cJSON_AddStringToObject(o, "object", "document");
    cJSON_AddNumberToObject(o, "tokens", d->n_tok);
    cJSON_AddNumberToObject(o, "bytes", (double)d->len);
    cJSON_AddBoolToObject(o, "shared", d->shared);
    cJSON_AddNumberToObject(o, "created_at", (double)d->created);
    if (created >= 0) cJSON_AddBoolToObject(o, "created", created);
    if (with_text) cJSON_AddStringToObject(o, "text", d->text);
    return o;
}

static void handle_ingest(srv_api *a, const srv_request *rq, const char *ns, srv_response *rs) {
    verr   e    = {0};
    cJSON *root = parse_body(rq, &e);
    if (!root) {
        json_error_from(rs, &e);
        return;
    }
    for (const cJSON *c = root->child; c; c = c->next)
        if (!c->string || (strcmp(c->string, "documents") && strcmp(c->string, "text") &&
                           strcmp(c->string, "title") && strcmp(c->string, "shared"))) {
            char ex[64];
            excerpt(c->string ? c->string : "", ex, sizeof ex);
            fail(&e, 400, NULL, "unknown field \"%s\" (expected \"documents\" or \"text\", \"title\", and \"shared\")", ex);
            goto out;
        }
    bool shared = false;
    if (opt_bool(root, "shared", "shared", &shared, &e) < 0) goto out;
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "documents");
    bool         one = false;
    if (arr && !cJSON_IsNull(arr)) {
        if (cJSON_GetObjectItemCaseSensitive(root, "text")) {
            fail(&e, 400, "documents", "give \"documents\" or \"text\", not both");
            goto out;
        }
        if (!cJSON_IsArray(arr)) {
            fail(&e, 400, "documents", "documents must be an array of strings or {\"text\", \"title\"} objects, not %s", jtype(arr));
            goto out;
        }
        int n = cJSON_GetArraySize(arr);
        if (n == 0) {
            fail(&e, 400, "documents", "documents must not be empty");
            goto out;
        }
        if (n > a->cfg.max_ingest) {
            fail(&e, 400, "documents", "documents has %d entries; at most %d per request", n, a->cfg.max_ingest);
            goto out;
        }
    } else {
        if (!cJSON_GetObjectItemCaseSensitive(root, "text")) {
            fail(&e, 400, "documents", "documents is required (an array), or \"text\" for one document");
            goto out;
        }
        arr = root;
        one = true;
    }
    cJSON *resp = cJSON_CreateObject(), *data;
    cJSON_AddStringToObject(resp, "object", "list");
    data  = cJSON_AddArrayToObject(resp, "data");
    int i = 0;
    for (const cJSON *x = one ? root : arr->child; x; x = one ? NULL : x->next, i++) {
        char p[48];
        snprintf(p, sizeof p, one ? "text" : "documents[%d]", i);
        if (!one && !cJSON_IsString(x) && !cJSON_IsObject(x)) {
            fail(&e, 400, p, "%s must be a string or a {\"text\", \"title\"} object, not %s", p, jtype(x));
            break;
        }
        if (!one && cJSON_IsObject(x) && cJSON_GetObjectItemCaseSensitive(x, "id")) {
            fail(&e, 400, p, "%s: \"id\" is assigned by the server (content hash)", p);
            break;
        }
        char *text = NULL;
        if (one) {
            const char *t = NULL, *title = NULL;
            if (opt_str(root, "text", "text", &t, &e) < 0 || opt_str(root, "title", "title", &title, &e) < 0) break;
            if (!t) {
                fail(&e, 400, "text", "text must be a string");
                break;
            }
            size_t n = strlen(t) + (title ? strlen(title) + 2 : 0) + 1;
            if ((text = malloc(n))) snprintf(text, n, "%s%s%s", title ? title : "", title ? "\n\n" : "", t);
        } else {
            text = doc_text(x, p, &e);
            if (!text && e.status) break;
        }
        if (!text) {
            fail(&e, 500, NULL, "out of memory");
            break;
        }
        if (!text[0]) {
            free(text);
            fail(&e, 400, p, "%s is empty", p);
            break;
        }
        int32_t *tok = NULL, nt = 0;
        size_t   len = strlen(text);
        int      r   = doc_tokens(a->model, text, len, &tok, &nt);
        if (r != 0) {
            free(text);
            if (r == -2)
                fail(&e, 400, p, "%s has no tokens", p);
            else
                fail(&e, 500, p, "%s: tokenization failed: %s", p, kvf_errmsg());
            break;
        }
        if (nt >= a->cfg.n_ctx) {
            free(text), free(tok);
            fail(&e, 400, p, "%s has %d tokens, more than the server's context of %d", p, nt, a->cfg.n_ctx);
            break;
        }
        srv_doc        *d;
        bool            created;
        srv_docs_status st = srv_docs_put(a->docs, ns, shared, text, len, tok, nt, &d, &created);
        free(text);
        if (st == SRV_DOCS_FULL) {
            fail(&e, 507, p, "%s: the tenant's document quota is full (delete documents first)", p);
            snprintf(e.type, sizeof e.type, "insufficient_storage");
            break;
        }
        if (st != SRV_DOCS_OK) {
            fail(&e, 500, p, "out of memory");
            break;
        }
        cJSON_AddItemToArray(data, doc_json(d, false, created));
        srv_doc_release(d);
    }
    if (e.status) { /* documents ingested before the error stay (ids are content hashes) */
        cJSON_Delete(resp);
        goto out;
    }
    set_json(rs, 200, resp);
out:
    if (e.status) json_error_from(rs, &e);
    cJSON_Delete(root);
}

typedef struct list_ctx {
    cJSON *arr;
    int    n;
} list_ctx;

static int list_one(const srv_doc *d, void *user) {
    list_ctx *l = user;
    if (l->n >= 10000) return 1;
    cJSON_AddItemToArray(l->arr, doc_json(d, false, -1));
    l->n++;
    return 0;
}

static void handle_models(srv_api *a, srv_response *rs, const char *one) {
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", a->cfg.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "kvfuse");
    cJSON_AddNumberToObject(m, "context_length", a->cfg.n_ctx);
    if (one) {
        if (strcmp(one, a->cfg.model_id) != 0) {
            cJSON_Delete(m);
            srv_response_error(rs, 404, "not_found_error", "model", "no model with this id (GET /v1/models lists them)");
            return;
        }
        set_json(rs, 200, m);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "data"), m);
    set_json(rs, 200, root);
}

static void method_not_allowed(srv_response *rs, const char *method, const char *allow) {
    char m[16];
    excerpt(method, m, sizeof m);
    srv_response_error(rs, 405, "invalid_request_error", NULL, "method %s is not allowed here (allowed: %s)", m, allow);
    rs->allow = allow;
}

/* the key of a request: "Authorization: Bearer KEY" or "X-Api-Key: KEY" */
/* GET /v1/audit: the audit's counters, per-method means and the recent worst cases */
#define AUDIT_LIST 20
static void add_text(cJSON *o, const char *k, const char *t) {
    size_t n;
    char  *u = srv_utf8_sanitize(t, strlen(t), &n);
    cJSON_AddStringToObject(o, k, u ? u : "");
    free(u);
}

static cJSON *audit_json(struct srv_audit *au) {
    srv_audit_stats st;
    srv_audit_get_stats(au, &st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "audit");
    cJSON_AddNumberToObject(o, "sampled", (double)st.sampled);
    cJSON_AddNumberToObject(o, "skipped", (double)st.skipped);
    cJSON_AddNumberToObject(o, "completed", (double)st.completed);
    cJSON_AddNumberToObject(o, "pending", st.pending);
    cJSON_AddNumberToObject(o, "yields", (double)st.yields);
    cJSON_AddNumberToObject(o, "seconds", round(st.seconds * 1e3) / 1e3);
    cJSON *pm = cJSON_AddObjectToObject(o, "methods");
    for (int k = 0; k < KVF_METHOD_COUNT; k++) {
        const srv_audit_method_stats *x = &st.m[k];
        if (!x->n) continue;
        cJSON *mo = cJSON_AddObjectToObject(pm, kvf_method_name((kvf_method)k));
        cJSON_AddNumberToObject(mo, "audits", (double)x->n);
        cJSON_AddNumberToObject(mo, "first_token_kl", x->kl_sum / (double)x->n);
        cJSON_AddNumberToObject(mo, "first_token_agreement", (double)x->top1_agree / (double)x->n);
        cJSON_AddNumberToObject(mo, "answers_compared", (double)x->n_answer);
        if (x->n_answer) cJSON_AddNumberToObject(mo, "answer_f1", x->f1_sum / (double)x->n_answer);
    }
    srv_audit_case *cs = calloc(AUDIT_LIST, sizeof *cs);
    int             n  = cs ? srv_audit_worst(au, cs, AUDIT_LIST) : 0;
    cJSON          *arr = cJSON_AddArrayToObject(o, "worst");
    for (int i = 0; i < n; i++) {
        const srv_audit_case *c = &cs[i];
        cJSON                *x = cJSON_CreateObject();
        add_text(x, "id", c->id);
        cJSON_AddStringToObject(x, "method", kvf_method_name((kvf_method)c->method));
        if (kvf_method_has_ratio((kvf_method)c->method)) {
            cJSON_AddNumberToObject(x, "ratio", round((double)c->ratio * 1e4) / 1e4);
            if (c->ratio_auto) cJSON_AddNumberToObject(x, "fidelity", round((double)c->fidelity * 1e4) / 1e4);
        }
        cJSON_AddNumberToObject(x, "prompt_tokens", c->prompt_tokens);
        cJSON_AddNumberToObject(x, "recomputed_tokens", c->recomputed_tokens);
        if (isfinite(c->kl)) cJSON_AddNumberToObject(x, "first_token_kl", c->kl);
        else cJSON_AddNullToObject(x, "first_token_kl");
        cJSON_AddBoolToObject(x, "first_token_agree", c->top1_agree);
        add_text(x, "fused_first_token", c->fused_first);
        add_text(x, "full_first_token", c->full_first);
        if (c->answer_compared) {
            cJSON_AddNumberToObject(x, "answer_f1", isfinite(c->answer_f1) ? c->answer_f1 : 0);
            cJSON_AddNumberToObject(x, "answer_tokens", c->answer_tokens);
            add_text(x, "fused_answer", c->fused_answer);
            add_text(x, "full_answer", c->full_answer);
        }
        cJSON_AddNumberToObject(x, "finished", (double)c->finished);
        cJSON_AddItemToArray(arr, x);
    }
    free(cs);
    return o;
}

static const char *request_key(const srv_request *rq, size_t *len) {
    if (rq->auth) {
        const char *p = rq->auth;
        if (strncasecmp(p, "Bearer", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
            p += 6;
            while (*p == ' ' || *p == '\t') p++;
            size_t n = strlen(p);
            while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
            *len = n;
            return p;
        }
        return NULL;
    }
    if (rq->api_key) {
        *len = strlen(rq->api_key);
        return rq->api_key;
    }
    return NULL;
}

srv_api_config srv_api_default_config(void) {
    srv_api_config c;
    memset(&c, 0, sizeof c);
    c.model_id    = "kvfuse";
    c.n_ctx       = 8192;
    c.max_tokens  = 1024;
    c.max_docs    = 64;
    c.max_ingest  = 256;
    c.max_body    = 8u << 20;
    c.fp          = kvf_fuse_default_params();
    c.fp.method   = KVF_METHOD_FOCUS; /* why: README "Which method serves by default" */
    c.attn        = kvf_attn_default_params(KVF_ATTN_DENSE);
    c.dattn       = kvf_decode_attn_default_params(KVF_DECODE_DENSE);
    c.temperature = 0;
    c.timeout_ms  = 300e3;
    return c;
}

void srv_api_init(srv_api *a, const kvf_model *model, const srv_api_config *cfg, srv_docs *docs,
                  srv_tenants *tenants, srv_metrics *metrics) {
    memset(a, 0, sizeof *a);
    a->model   = model;
    a->cfg     = *cfg;
    a->docs    = docs;
    a->tenants = tenants;
    a->metrics = metrics;
    atomic_init(&a->seq, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    a->id_salt = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40);
}

srv_api_result srv_api_handle(srv_api *a, const srv_request *rq, srv_response *rs, srv_job **job) {
    *job               = NULL;
    const char *path   = rq->path ? rq->path : "/";
    const char *method = rq->method ? rq->method : "GET";
    bool        get    = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    bool        post   = !strcmp(method, "POST");
    bool        del    = !strcmp(method, "DELETE");
    if (!strncmp(path, "/v1/", 4)) path += 3; /* "/v1/x" and "/x" are the same */

    /* open endpoints */
    if (!strcmp(path, "/health") || !strcmp(path, "/healthz")) {
        if (!get) return method_not_allowed(rs, method, "GET"), SRV_API_RESPONSE;
        srv_status st = {0};
        if (a->status_fn) a->status_fn(a->status_user, &st);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", st.draining ? "draining" : "ok");
        cJSON_AddNumberToObject(o, "queued", st.queued);
        cJSON_AddNumberToObject(o, "active", st.active);
        cJSON_AddNumberToObject(o, "slots", st.slots);
        set_json(rs, st.draining ? 503 : 200, o);
        return SRV_API_RESPONSE;
    }
    if (rq->body_too_large) {
        srv_response_error(rs, 413, "invalid_request_error", NULL,
                           "the request body exceeds the limit of %zu bytes (--max-body)", a->cfg.max_body);
        return SRV_API_RESPONSE;
    }

    /* authentication */
    const srv_tenant *tenant = NULL;
    const char       *ns     = "default";
    if (a->tenants) {
        size_t      kl  = 0;
        const char *key = request_key(rq, &kl);
        if (!key || kl == 0) {
            srv_response_error(rs, 401, "authentication_error", NULL,
                               "missing API key (send \"Authorization: Bearer KEY\")");
            return SRV_API_RESPONSE;
        }
        tenant = srv_tenants_find(a->tenants, key, kl);
        if (!tenant) {
            srv_response_error(rs, 401, "authentication_error", NULL, "invalid API key");
            return SRV_API_RESPONSE;
        }
        ns = tenant->ns;
    }

    if (!strcmp(path, "/metrics")) {
        if (!get) return method_not_allowed(rs, method, "GET"), SRV_API_RESPONSE;
        if (a->tenants && !a->cfg.public_metrics && !tenant->admin) {
            srv_response_error(rs, 403, "permission_error", NULL,
                               "/metrics needs an admin key (\"KEY TENANT admin\" in --api-keys)");
            return SRV_API_RESPONSE;
        }
        size_t n    = 0;
        char  *text = a->metrics ? srv_metrics_render(a->metrics, &n) : strdup("");
        if (!text) {
            srv_response_error(rs, 500, "server_error", NULL, "out of memory");
            return SRV_API_RESPONSE;
        }
        if (!a->metrics) n = 0;
        free(rs->body);
        rs->status = 200;
        rs->body   = text;
        rs->len    = n;
        rs->ctype  = "text/plain; version=0.0.4; charset=utf-8";
        return SRV_API_RESPONSE;
    }
    if (!strcmp(path, "/audit")) {
        if (!get) return method_not_allowed(rs, method, "GET"), SRV_API_RESPONSE;
        if (a->tenants && !tenant->admin) {
            srv_response_error(rs, 403, "permission_error", NULL,
                               "/v1/audit needs an admin key (\"KEY TENANT admin\" in --api-keys)");
            return SRV_API_RESPONSE;
        }
        if (!a->audit) {
            srv_response_error(rs, 404, "not_found_error", NULL,
                               "the fidelity audit is off (start the server with --audit-rate R)");
            return SRV_API_RESPONSE;
        }
        set_json(rs, 200, audit_json(a->audit));
        return SRV_API_RESPONSE;
    }
    if (!strcmp(path, "/chat/completions") || !strcmp(path, "/completions")) {
        if (!post) return method_not_allowed(rs, method, "POST"), SRV_API_RESPONSE;
        return handle_completion(a, rq, ns, path[1] == 'c' && path[2] == 'h', rs, job);
    }
    if (!strcmp(path, "/models")) {
        if (!get) return method_not_allowed(rs, method, "GET"), SRV_API_RESPONSE;
        handle_models(a, rs, NULL);
        return SRV_API_RESPONSE;
    }
    if (!strncmp(path, "/models/", 8)) {
        if (!get) return method_not_allowed(rs, method, "GET"), SRV_API_RESPONSE;
        handle_models(a, rs, path + 8);
        return SRV_API_RESPONSE;
    }
    if (!strcmp(path, "/documents")) {
        if (post) {
            handle_ingest(a, rq, ns, rs);
        } else if (get) {
            list_ctx l = {.arr = cJSON_CreateArray()};
            srv_docs_list(a->docs, ns, list_one, &l);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "object", "list");
            cJSON_AddItemToObject(o, "data", l.arr);
            set_json(rs, 200, o);
        } else {
            method_not_allowed(rs, method, "GET, POST");
        }
        return SRV_API_RESPONSE;
    }
    if (!strncmp(path, "/documents/", 11)) {
        const char *id = path + 11;
        if (!get && !del) return method_not_allowed(rs, method, "GET, DELETE"), SRV_API_RESPONSE;
        if (!srv_doc_id_valid(id, strlen(id))) {
            srv_response_error(rs, 404, "not_found_error", "id",
                               "not a document id (expected \"doc-\" and 32 hex digits)");
            return SRV_API_RESPONSE;
        }
        if (get) {
            srv_doc *d = srv_docs_get(a->docs, ns, id);
            if (!d) {
                srv_response_error(rs, 404, "not_found_error", "id", "no document '%s'", id);
                return SRV_API_RESPONSE;
            }
            set_json(rs, 200, doc_json(d, true, -1));
            srv_doc_release(d);
            return SRV_API_RESPONSE;
        }
        int r = srv_docs_delete(a->docs, ns, id);
        if (r == -1) {
            srv_response_error(rs, 404, "not_found_error", "id", "no document '%s'", id);
        } else if (r == -2) {
            srv_response_error(rs, 403, "permission_error", "id",
                               "document '%s' is shared by another tenant; only its owner may delete it", id);
        } else {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "id", id);
            cJSON_AddStringToObject(o, "object", "document");
            cJSON_AddBoolToObject(o, "deleted", true);
            set_json(rs, 200, o);
        }
        return SRV_API_RESPONSE;
    }
    srv_response_error(rs, 404, "not_found_error", NULL,
                       "no such endpoint (POST /v1/chat/completions, /v1/completions, /v1/documents; "
                       "GET /v1/models, /v1/documents/{id}, /health, /metrics, /v1/audit)");
    return SRV_API_RESPONSE;
}
