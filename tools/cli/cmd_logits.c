/* cmd_logits.c - `kvfuse logits`: evaluate a prompt and write the logits of every position, for
 * comparison with reference implementations. Output (little-endian): "KVFL", int32 version (1),
 * int32 n_tokens, int32 n_vocab, int32 ids[n_tokens], float32 logits[n_tokens][n_vocab]. */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static void help(void) {
    printf("usage: kvfuse logits [-m MODEL] (-p PROMPT | --ids FILE) -o OUT [options]\n"
           "\n"
           "  -p, --prompt TEXT   prompt (special tokens parsed; BOS if the model adds one)\n"
           "      --ids FILE      whitespace-separated token ids instead of a prompt\n"
           "      --chat          wrap the prompt in the chat template\n"
           "  -o, --out FILE      output file (format: \"KVFL\", int32 version=1, int32 n_tokens,\n"
           "                      int32 n_vocab, int32 ids[n], float32 logits[n][n_vocab])\n"
           "  -t, --threads N     compute threads\n"
           "  -u, --ubatch N      tokens per micro-batch (default 256)\n"
           "      --isa NAME      kernels: auto, ref, avx2, avx512\n"
           "      --precision P   matmul arithmetic: q16 (default; ~f32 accuracy), q8\n"
           "                      (int8 activations like llama.cpp; fastest), f32 (reference)\n");
}

static int32_t *read_ids(const char *path, int32_t *n) {
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    if (!txt) return NULL;
    int32_t  cap = 256, k = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    char    *p = txt, *end;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == ',') p++;
        if (!*p) break;
        errno  = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 0x7fffffff) {
            free(ids), free(txt);
            errno = EINVAL;
            return NULL;
        }
        if (k == cap) ids = realloc(ids, sizeof(int32_t) * (size_t)(cap *= 2));
        ids[k++] = (int32_t)v;
        p        = end;
    }
    free(txt);
    *n = k;
    return ids;
}

int cmd_logits(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"ids", required_argument, 0, 'i'},   {"chat", no_argument, 0, 'C'},
        {"out", required_argument, 0, 'o'},   {"threads", required_argument, 0, 't'},
        {"ubatch", required_argument, 0, 'u'}, {"isa", required_argument, 0, 'I'},
        {"precision", required_argument, 0, 'X'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *model = NULL, *prompt = NULL, *idfile = NULL, *out = NULL, *isa = NULL;
    bool        chat = false;
    kvf_precision prec = KVF_PREC_Q16;
    long        n_threads = 0, ubatch = 0;
    int         c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:o:t:u:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'i': idfile = optarg; break;
        case 'C': chat = true; break;
        case 'o': out = optarg; break;
        case 't': n_threads = cli_int("logits", "--threads", optarg, 0, 1024); break;
        case 'u': ubatch = cli_int("logits", "--ubatch", optarg, 0, 1 << 16); break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("logits", optarg); break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (!out || (!prompt == !idfile)) {
        help();
        return cli_fail("logits", "need -o OUT and exactly one of -p PROMPT / --ids FILE");
    }
    kvf_model *m = cli_load_model(cli_model_path(model), isa, (int)n_threads, prec);
    if (!m) return 1;
    int32_t  n   = 0;
    int32_t *ids = idfile ? read_ids(idfile, &n) : cli_tokenize_prompt("logits", m, prompt, chat, NULL, &n);
    if (!ids) {
        kvf_model_free(m);
        return idfile ? cli_fail("logits", "cannot read token ids from '%s'", idfile) : 1;
    }
    int rc = 0;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = n > 0 ? n : 1;
    sp.n_threads          = (int32_t)n_threads;
    sp.n_ubatch           = (int32_t)ubatch;
    kvf_session *s        = NULL;
    if (n == 0) rc = cli_fail("logits", "no tokens to evaluate");
    else if (kvf_session_new(m, &sp, &s) != KVF_OK || kvf_session_eval(s, ids, n, KVF_EVAL_ALL_LOGITS) != KVF_OK)
        rc = cli_fail("logits", "%s", kvf_errmsg());
    if (rc == 0) {
        FILE   *f = fopen(out, "wb");
        int32_t hdr[3] = {1, n, kvf_model_n_vocab(m)};
        int     ok = f && fwrite("KVFL", 1, 4, f) == 4 && fwrite(hdr, 4, 3, f) == 3 &&
                 fwrite(ids, 4, (size_t)n, f) == (size_t)n;
        for (int32_t i = 0; ok && i < n; i++)
            ok = fwrite(kvf_session_logits(s, i), 4, (size_t)hdr[2], f) == (size_t)hdr[2];
        if (f && fclose(f) != 0) ok = 0;
        if (!ok) rc = cli_fail("logits", "cannot write '%s': %s", out, strerror(errno));
    }
    kvf_session_free(s);
    free(ids);
    kvf_model_free(m);
    return rc;
}
