/* cmd_conv_profile.c - `kvfuse conv-profile`: measure a model's layer sensitivity to block-wise
 * prefill (kvf_conv_layer_profile) over a text, once per model, for `serve --conv-layers`. */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f, "usage: kvfuse conv-profile [-m MODEL] -f TEXT_FILE [-o PROFILE] [--tokens N]\n"
               "                           [--block B] [-t THREADS]\n"
               "Measures how much each layer's keys change when the text is prefilled in blocks\n"
               "(each block sees the first 128 tokens and the second half of the block before it)\n"
               "instead of whole: EpiCache's layer profile. `kvfuse serve --conv-budget N\n"
               "--conv-layers PROFILE` then gives the sensitive layers more of the budget.\n"
               "  -f, --file FILE     a long plain text (a book chapter, an essay)\n"
               "  -o, --out FILE      write the profile there (default: print it only)\n"
               "      --tokens N      tokens of the text used (4096; the text must have them)\n"
               "      --block B       block length (1024; at least 128, at most N / 2)\n"
               "  -t, --threads N     compute threads (default: all cores)\n");
}

int cmd_conv_profile(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"file", required_argument, 0, 'f'},
        {"out", required_argument, 0, 'o'},    {"tokens", required_argument, 0, 1001},
        {"block", required_argument, 0, 1002}, {"threads", required_argument, 0, 't'},
        {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    const char *model = NULL, *file = NULL, *out = NULL;
    long n_tok = 4096, block = 1024, threads = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:f:o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 1001:
            n_tok = cli_int("conv-profile", "--tokens", optarg, 256, 1 << 20);
            break;
        case 1002:
            block = cli_int("conv-profile", "--block", optarg, 128, 1 << 19);
            break;
        case 't':
            threads = cli_int("conv-profile", "--threads", optarg, 0, 1024);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) return cli_fail("conv-profile", "unexpected argument '%s'", argv[optind]);
    if (!file) return cli_fail("conv-profile", "-f TEXT_FILE is required (see --help)");
    if (2 * block > n_tok)
        return cli_fail("conv-profile", "--block %ld needs --tokens >= %ld", block, 2 * block);
    size_t len = 0;
    char *text = kvf_read_file(file, &len);
    if (!text) return cli_fail("conv-profile", "cannot read %s: %s", file, strerror(errno));
    kvf_model *m = cli_load_model(cli_model_path(model), NULL, (int)threads, KVF_PREC_Q16);
    if (!m) return free(text), 1;
    int32_t cap = (int32_t)n_tok, *ids = malloc(sizeof(int32_t) * (size_t)cap);
    int32_t n = ids ? kvf_tokenize(m, text, len, ids, cap, 0) : INT32_MIN;
    if (n < 0 && n != INT32_MIN) { /* the whole text is longer: tokenize it, keep the start */
        free(ids);
        cap = -n;
        ids = malloc(sizeof(int32_t) * (size_t)cap);
        n = ids ? kvf_tokenize(m, text, len, ids, cap, 0) : INT32_MIN;
    }
    free(text);
    int rc = 1;
    if (n == INT32_MIN) {
        cli_fail("conv-profile", "tokenizing %s: %s", file, ids ? kvf_errmsg() : "out of memory");
        goto done;
    }
    if (n < n_tok) {
        cli_fail("conv-profile", "%s has %d tokens, --tokens %ld asked for", file, n, n_tok);
        goto done;
    }
    n = (int32_t)n_tok;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = (int32_t)n_tok, sp.n_threads = (int32_t)threads;
    kvf_session *s = NULL;
    if (cli_check_memory("conv-profile", m, &sp, 1, 0, "use fewer --tokens") != 0) goto done;
    if (kvf_session_new(m, &sp, &s) != KVF_OK) {
        cli_fail("conv-profile", "%s", kvf_errmsg());
        goto done;
    }
    kvf_model_info info;
    kvf_model_get_info(m, &info);
    int32_t L = info.n_layer;
    float *sim = calloc((size_t)L, sizeof(float));
    fprintf(stderr, "conv-profile: %d tokens whole, then in blocks of %ld ...\n", n, block);
    double t0 = cli_now_ms();
    if (!sim || kvf_conv_layer_profile(s, ids, n, (int32_t)block, sim) != KVF_OK) {
        cli_fail("conv-profile", "%s", sim ? kvf_errmsg() : "out of memory");
    } else {
        fprintf(stderr, "conv-profile: %.1f s\n", (cli_now_ms() - t0) / 1e3);
        printf("layer  similarity\n");
        for (int32_t l = 0; l < L; l++)
            printf("%5d  %.4f\n", l, (double)sim[l]);
        if (out && kvf_conv_layer_profile_save(out, m, sim, n, (int32_t)block) != KVF_OK)
            cli_fail("conv-profile", "%s", kvf_errmsg());
        else
            rc = 0;
        if (out && rc == 0) fprintf(stderr, "conv-profile: written to %s\n", out);
    }
    free(sim);
    kvf_session_free(s);
done:
    free(ids);
    kvf_model_free(m);
    return rc;
}
