/* cli.c - helpers shared by the kvfuse subcommands. */
#include "cli/cli.h"
#include "cli/models.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <limits.h>
#include <unistd.h>

const char *cli_model_path(const char *opt) {
    static _Thread_local char buf[PATH_MAX];
    const char               *v = opt && opt[0] ? opt : getenv("KVFUSE_MODEL");
    if (!v || !v[0]) v = KVF_DEFAULT_MODEL_NAME;
    return cli_models_resolve(v, buf, sizeof buf);
}

int cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kvfuse %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

kvf_kv_type cli_kv_type(const char *cmd, const char *val) {
    if (!strcmp(val, "f32")) return KVF_KV_F32;
    if (!strcmp(val, "f16")) return KVF_KV_F16;
    cli_fail(cmd, "--kv expects f32 or f16, got '%s'", val);
    exit(2);
}

kvf_precision cli_precision(const char *cmd, const char *val) {
    if (!strcmp(val, "q16")) return KVF_PREC_Q16;
    if (!strcmp(val, "q8")) return KVF_PREC_Q8;
    if (!strcmp(val, "f32")) return KVF_PREC_F32;
    cli_fail(cmd, "--precision expects q16, q8 or f32, got '%s'", val);
    exit(2);
}

kvf_model *cli_load_model(const char *path, const char *isa, int n_threads, kvf_precision prec) {
    kvf_model_params p = kvf_model_default_params();
    p.isa              = isa;
    p.n_threads        = n_threads;
    p.precision        = prec;
    kvf_model *m;
    if (kvf_model_load(path, &p, &m) != KVF_OK) {
        fprintf(stderr, "kvfuse: cannot load model: %s\n", kvf_errmsg());
        const cli_model_entry *e = cli_models_of_path(path);
        if (e && access(path, F_OK) != 0)
            fprintf(stderr, "kvfuse: %s is not downloaded yet: run `make model NAME=%s` (or "
                            "scripts/get-model.sh %s), or pass -m PATH / set KVFUSE_MODEL\n",
                    e->name, e->name, e->name);
        else if (!e && !strchr(path, '/') && access(path, F_OK) != 0) {
            fprintf(stderr, "kvfuse: '%s' is neither a file nor a known model name; known names:", path);
            for (int i = 0; i < cli_models_count(); i++) fprintf(stderr, " %s", cli_models_at(i)->name);
            fprintf(stderr, " (kvfuse models)\n");
        }
        return NULL;
    }
    return m;
}

long cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi) {
    char *end;
    errno  = 0;
    long v = strtol(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        cli_fail(cmd, "%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, val);
        exit(2);
    }
    return v;
}

double cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi) {
    char *end;
    errno    = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= lo && v <= hi)) {
        cli_fail(cmd, "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, val);
        exit(2);
    }
    return v;
}

void cli_ratio(const char *cmd, const char *val, kvf_fuse_params *fp) {
    if (!strcmp(val, "auto")) {
        fp->ratio_auto = true;
        return;
    }
    fp->ratio_auto = false;
    fp->ratio      = (float)cli_float(cmd, "--ratio", val, 0, 1);
}

int32_t *cli_tokenize_prompt(const char *cmd, const kvf_model *m, const char *text, bool chat,
                             const char *system, int32_t *n) {
    char *buf = NULL;
    if (chat) {
        kvf_chat_msg msgs[2];
        size_t       k = 0;
        if (system) msgs[k].role = "system", msgs[k++].content = system;
        msgs[k].role = "user", msgs[k++].content = text;
        int32_t need = kvf_chat_format(m, msgs, k, true, NULL, 0);
        if (need == INT32_MIN) {
            cli_fail(cmd, "cannot apply the chat template: %s", kvf_errmsg());
            return NULL;
        }
        if (need < 0) need = -need;
        buf = malloc((size_t)need + 1);
        if (!buf || kvf_chat_format(m, msgs, k, true, buf, need + 1) < 0) {
            free(buf);
            cli_fail(cmd, "cannot apply the chat template: %s", kvf_errmsg());
            return NULL;
        }
        text = buf;
    }
    size_t   len  = strlen(text);
    uint32_t fl   = KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL;
    int32_t  need = kvf_tokenize(m, text, len, NULL, 0, fl);
    if (need == INT32_MIN) {
        free(buf);
        cli_fail(cmd, "tokenization failed: %s", kvf_errmsg());
        return NULL;
    }
    if (need < 0) need = -need;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(need > 0 ? need : 1));
    if (!ids) {
        free(buf);
        cli_fail(cmd, "out of memory");
        return NULL;
    }
    *n = kvf_tokenize(m, text, len, ids, need, fl);
    free(buf);
    if (*n < 0) {
        free(ids);
        cli_fail(cmd, "tokenization failed: %s", kvf_errmsg());
        return NULL;
    }
    return ids;
}

double cli_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* length of a valid UTF-8 sequence at s (n bytes left), 0 if invalid */
static size_t utf8_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t   k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (k == 0 || k > n) return 0;
    for (size_t i = 1; i < k; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    uint32_t cp = k == 1 ? c : k == 2 ? c & 0x1F : k == 3 ? c & 0x0F : c & 0x07;
    for (size_t i = 1; i < k; i++) cp = (cp << 6) | (s[i] & 0x3F);
    if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return k;
}

void json_str(FILE *f, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f), fputc((int)c, f), i++;
        } else if (c == '\n') {
            fputs("\\n", f), i++;
        } else if (c == '\r') {
            fputs("\\r", f), i++;
        } else if (c == '\t') {
            fputs("\\t", f), i++;
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(f, "\\u%04x", c), i++;
        } else {
            size_t k = utf8_len(p + i, n - i);
            if (k == 0) {
                fputs("\\ufffd", f), i++;
            } else {
                fwrite(p + i, 1, k, f), i += k;
            }
        }
    }
    fputc('"', f);
}

void cli_stats(const double *v, int n, double *mean, double *sd) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    *mean    = n ? s / n : 0;
    double q = 0;
    for (int i = 0; i < n; i++) q += (v[i] - *mean) * (v[i] - *mean);
    *sd = n > 1 ? sqrt(q / (n - 1)) : 0;
}
