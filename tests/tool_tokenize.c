/* tool_tokenize.c - drives the tokenizer for tests/integration/tokenizer_parity.py.
 *
 *   tool_tokenize info  MODEL           print the vocabulary's properties, one "key value" a line
 *   tool_tokenize encode MODEL IN OUT   tokenize and decode every record of IN
 *   tool_tokenize chat  MODEL IN OUT    render every conversation of IN
 *   tool_tokenize split MODEL IN OUT    pre-tokenize every record of IN (BPE vocabularies)
 *   tool_tokenize bench MODEL IN REPS   time tokenizing every record of IN (REPS runs each)
 *
 * Files are little-endian binary, so any bytes pass through unchanged.
 *   encode IN:  records {u32 flags (KVF_TOK_*), u32 len, len bytes}
 *   encode OUT: records {i32 n, n x i32 ids, i32 len, len bytes of decode(ids, render_special)}
 *   chat IN:    records {u32 n_msgs, u32 add_assistant, n_msgs x {u32 len, role, u32 len,
 *               content}}
 *   chat OUT:   records {i32 len, len bytes} (len < 0: an error, no bytes follow)
 *   split IN:   as encode IN (flags ignored)
 *   split OUT:  records {i32 n, n x u32 byte offset where each pre-token ends}
 * Not run on its own by scripts/run-tests.sh (the name does not start with test_).
 */
#include "common.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    size_t cap = 1 << 16, n = 0;
    unsigned char *p = malloc(cap);
    for (;;) {
        if (!p) break;
        size_t got = fread(p + n, 1, cap - n, fp);
        n += got;
        if (n < cap) break;
        unsigned char *q = realloc(p, cap * 2);
        if (!q) {
            free(p);
            p = NULL;
            break;
        }
        p = q, cap *= 2;
    }
    fclose(fp);
    *len = n;
    return p;
}

typedef struct {
    const unsigned char *p;
    size_t n, at;
    int bad;
} reader;

static uint32_t rd_u32(reader *r) {
    if (r->n - r->at < 4) {
        r->bad = 1;
        return 0;
    }
    const unsigned char *b = r->p + r->at;
    r->at += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static const char *rd_bytes(reader *r, size_t n) {
    if (r->n - r->at < n) {
        r->bad = 1;
        return NULL;
    }
    const char *s = (const char *)r->p + r->at;
    r->at += n;
    return s;
}

static void wr_i32(FILE *fp, int32_t v) {
    uint32_t u = (uint32_t)v;
    unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 24)};
    fwrite(b, 1, 4, fp);
}

/* Tokenize through the size query: first with no room (must return -needed), then exact. */
static int32_t encode_all(const kvf_vocab *v, const char *s, size_t n, uint32_t flags,
                          int32_t **ids) {
    int32_t need = kvf_vocab_encode(v, s, n, NULL, 0, flags);
    if (need == INT32_MIN) return INT32_MIN;
    int32_t cnt = -need;
    *ids = malloc(((size_t)cnt + 1) * sizeof **ids);
    if (!*ids) return INT32_MIN;
    int32_t got = kvf_vocab_encode(v, s, n, *ids, cnt, flags);
    if (got != cnt) {
        fprintf(stderr, "tool_tokenize: size query said %d ids, encode gave %d\n", cnt, got);
        return INT32_MIN;
    }
    return got;
}

static int cmd_encode(const kvf_vocab *v, reader *r, FILE *out) {
    while (r->at < r->n) {
        uint32_t flags = rd_u32(r), len = rd_u32(r);
        const char *s = rd_bytes(r, len);
        if (r->bad) return fprintf(stderr, "tool_tokenize: truncated input\n"), 1;
        int32_t *ids = NULL;
        int32_t n = encode_all(v, s, len, flags, &ids);
        if (n == INT32_MIN) return fprintf(stderr, "tool_tokenize: %s\n", kvf_errmsg()), 1;
        wr_i32(out, n);
        for (int32_t i = 0; i < n; i++)
            wr_i32(out, ids[i]);
        int32_t dn = kvf_vocab_decode(v, ids, n, NULL, 0, true);
        if (dn == INT32_MIN) return fprintf(stderr, "tool_tokenize: %s\n", kvf_errmsg()), 1;
        char *txt = malloc((size_t)-dn + 1);
        int32_t got = txt ? kvf_vocab_decode(v, ids, n, txt, -dn + 1, true) : INT32_MIN;
        if (got != -dn || txt[got] != 0)
            return fprintf(stderr, "tool_tokenize: decode size query mismatch\n"), 1;
        wr_i32(out, got);
        fwrite(txt, 1, (size_t)got, out);
        free(txt);
        free(ids);
    }
    return 0;
}

static int cmd_chat(const kvf_vocab *v, reader *r, FILE *out) {
    while (r->at < r->n) {
        uint32_t n_msgs = rd_u32(r), gen = rd_u32(r);
        if (r->bad || n_msgs > 4096) return fprintf(stderr, "tool_tokenize: bad input\n"), 1;
        kvf_chat_msg *m = calloc(n_msgs + 1, sizeof *m);
        char **own = calloc(2 * (size_t)n_msgs + 1, sizeof *own);
        if (!m || !own) return 1;
        for (uint32_t i = 0; i < n_msgs; i++) {
            for (int k = 0; k < 2; k++) {
                uint32_t len = rd_u32(r);
                const char *s = rd_bytes(r, len);
                if (r->bad) return fprintf(stderr, "tool_tokenize: truncated input\n"), 1;
                char *z = malloc(len + 1);
                if (!z) return 1;
                memcpy(z, s, len);
                z[len] = 0;
                own[2 * i + k] = z;
                if (k == 0)
                    m[i].role = z;
                else
                    m[i].content = z;
            }
        }
        int32_t need = kvf_vocab_chat_format(v, m, n_msgs, gen != 0, NULL, 0);
        if (need == INT32_MIN) {
            fprintf(stderr, "tool_tokenize: chat: %s\n", kvf_errmsg());
            wr_i32(out, INT32_MIN);
        } else {
            char *buf = malloc((size_t)-need + 1);
            int32_t got =
                buf ? kvf_vocab_chat_format(v, m, n_msgs, gen != 0, buf, -need + 1) : INT32_MIN;
            if (got != -need || buf[got] != 0)
                return fprintf(stderr, "tool_tokenize: chat size query mismatch\n"), 1;
            wr_i32(out, got);
            fwrite(buf, 1, (size_t)got, out);
            free(buf);
        }
        for (uint32_t i = 0; i < 2 * n_msgs; i++)
            free(own[i]);
        free(own);
        free(m);
    }
    return 0;
}

static int cmd_split(const kvf_vocab *v, reader *r, FILE *out) {
    while (r->at < r->n) {
        rd_u32(r);
        uint32_t len = rd_u32(r);
        const char *s = rd_bytes(r, len);
        if (r->bad) return fprintf(stderr, "tool_tokenize: truncated input\n"), 1;
        int32_t need = kvf_vocab_pretokenize(v, s, len, NULL, 0);
        if (need == INT32_MIN) return fprintf(stderr, "tool_tokenize: %s\n", kvf_errmsg()), 1;
        size_t *ends = malloc(((size_t)-need + 1) * sizeof *ends);
        int32_t n = ends ? kvf_vocab_pretokenize(v, s, len, ends, -need) : INT32_MIN;
        if (n != -need) return fprintf(stderr, "tool_tokenize: split size query mismatch\n"), 1;
        wr_i32(out, n);
        for (int32_t i = 0; i < n; i++)
            wr_i32(out, (int32_t)ends[i]);
        free(ends);
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_bench(const kvf_vocab *v, reader *r, int reps) {
    double *t = malloc((size_t)reps * sizeof *t);
    if (!t) return 1;
    for (int k = 0; r->at < r->n; k++) {
        uint32_t flags = rd_u32(r), len = rd_u32(r);
        const char *s = rd_bytes(r, len);
        if (r->bad) return fprintf(stderr, "tool_tokenize: truncated input\n"), 1;
        int32_t n = 0;
        for (int i = 0; i < reps; i++) {
            int32_t *ids = NULL;
            double t0 = kvf_time_ms();
            n = encode_all(v, s, len, flags, &ids);
            t[i] = kvf_time_ms() - t0;
            free(ids);
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_double);
        printf("bench %d bytes %u tokens %d ms_min %.3f ms_median %.3f\n", k, len, n, t[0],
               t[reps / 2]);
    }
    free(t);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr,
                "usage: tool_tokenize info|encode|chat|split|bench MODEL [IN [OUT|REPS]]\n");
        return 2;
    }
    const char *cmd = argv[1];
    gguf_file *f = NULL;
    kvf_vocab *v = NULL;
    double t0 = kvf_time_ms();
    if (gguf_open(argv[2], &f) || kvf_vocab_load(f, &v)) {
        fprintf(stderr, "tool_tokenize: %s: %s\n", argv[2], kvf_errmsg());
        gguf_close(f);
        return 1;
    }
    double load_ms = kvf_time_ms() - t0;
    gguf_close(f); /* the vocabulary must not need the file any more */

    int rc = 0;
    if (strcmp(cmd, "info") == 0) {
        printf("n_tokens %d\nbos %d\neos %d\npre %s\nchat %s\nadd_bos %d\nload_ms %.1f\n",
               kvf_vocab_n_tokens(v), kvf_vocab_bos(v), kvf_vocab_eos(v), kvf_vocab_pre_name(v),
               kvf_vocab_chat_template_name(v), kvf_vocab_add_bos(v), load_ms);
        printf("eog");
        for (int32_t i = 0; i < kvf_vocab_n_tokens(v); i++)
            if (kvf_vocab_is_eog(v, i)) printf(" %d", i);
        printf("\nmissing_bytes"); /* bytes no token stands for: encoding drops them */
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            int32_t id;
            if (kvf_vocab_encode(v, &c, 1, &id, 1, 0) == 0) printf(" %d", b);
        }
        printf("\n");
    } else if (argc >= 4) {
        size_t len;
        unsigned char *in = read_file(argv[3], &len);
        if (!in) {
            fprintf(stderr, "tool_tokenize: cannot read %s\n", argv[3]);
            kvf_vocab_free(v);
            return 1;
        }
        reader r = {in, len, 0, 0};
        if (strcmp(cmd, "bench") == 0) {
            rc = cmd_bench(v, &r, argc >= 5 ? atoi(argv[4]) > 0 ? atoi(argv[4]) : 1 : 5);
        } else if (argc >= 5 && (strcmp(cmd, "encode") == 0 || strcmp(cmd, "chat") == 0 ||
                                 strcmp(cmd, "split") == 0)) {
            FILE *out = fopen(argv[4], "wb");
            if (!out) {
                fprintf(stderr, "tool_tokenize: cannot write %s\n", argv[4]);
                rc = 1;
            } else {
                rc = strcmp(cmd, "encode") == 0 ? cmd_encode(v, &r, out)
                     : strcmp(cmd, "chat") == 0 ? cmd_chat(v, &r, out)
                                                : cmd_split(v, &r, out);
                if (fclose(out) != 0) rc = 1;
            }
        } else {
            fprintf(stderr, "tool_tokenize: bad command or arguments\n");
            rc = 2;
        }
        free(in);
    } else {
        fprintf(stderr, "tool_tokenize: bad command or arguments\n");
        rc = 2;
    }
    kvf_vocab_free(v);
    return rc;
}
