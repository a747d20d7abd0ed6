/* cmd_tokenize.c - `kvfuse tokenize` (token ids of a text) and `kvfuse info` (model summary). */
#include "cli/cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

int cmd_tokenize(int argc, char **argv) {
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"chat", no_argument, 0, 'C'},
                                         {"pieces", no_argument, 0, 'P'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *prompt = NULL;
    bool        chat = false, pieces = false;
    int         c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'C': chat = true; break;
        case 'P': pieces = true; break;
        case 'h':
            printf("usage: kvfuse tokenize [-m MODEL] -p TEXT [--chat] [--pieces]\n"
                   "prints the token ids (with --pieces, one id and its text per line)\n");
            return 0;
        default: return 2;
        }
    }
    if (!prompt) return cli_fail("tokenize", "-p TEXT is required");
    kvf_model *m = cli_load_model(cli_model_path(model), NULL, 0, KVF_PREC_Q16);
    if (!m) return 1;
    int32_t  n;
    int32_t *ids = cli_tokenize_prompt("tokenize", m, prompt, chat, NULL, &n);
    if (!ids) return kvf_model_free(m), 1;
    char piece[256];
    for (int32_t i = 0; i < n; i++) {
        if (pieces) {
            int32_t k = kvf_token_to_piece(m, ids[i], piece, sizeof piece, true);
            printf("%d\t", ids[i]);
            json_str(stdout, piece, k > 0 ? (size_t)k : 0);
            printf("\n");
        } else {
            printf("%s%d", i ? " " : "", ids[i]);
        }
    }
    if (!pieces) printf("\n");
    free(ids);
    kvf_model_free(m);
    return 0;
}

int cmd_info(int argc, char **argv) {
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: kvfuse info [-m MODEL]\n");
            return 0;
        } else return cli_fail("info", "unexpected argument '%s'", argv[i]);
    }
    const char *path = cli_model_path(model);
    kvf_model  *m    = cli_load_model(path, NULL, 0, KVF_PREC_Q16);
    if (!m) return 1;
    kvf_model_info in;
    kvf_model_get_info(m, &in);
    printf("file         %s (%.1f MB)\n", path, in.file_bytes / 1e6);
    printf("name         %s\narch         %s\nweights      %s, %.1f M parameters, %.1f MB packed\n",
           in.name, in.arch, in.ftype, in.n_params / 1e6, in.weight_bytes / 1e6);
    printf("layers       %d\nembedding    %d\nheads        %d (KV %d, dim %d)\nfeed-forward %d\n",
           in.n_layer, in.n_embd, in.n_head, in.n_head_kv, in.head_dim, in.n_ff);
    printf("vocabulary   %d\ncontext      %d\nchat         %s\nkernels      %s (%s)\n", in.n_vocab,
           in.n_ctx_train, kvf_chat_template_name(m), in.isa, in.precision);
    /* session KV cache: per token, and a session holding the whole training context (KV cache
     * and scratch, kvf_session_memory) */
    char               b[6][32];
    kvf_session_params sp   = kvf_session_default_params();
    int64_t            t32  = kvf_session_kv_bytes_per_token(m, KVF_KV_F32);
    int64_t            t16  = kvf_session_kv_bytes_per_token(m, KVF_KV_F16);
    int64_t            n    = in.n_ctx_train;
    sp.kv_type              = KVF_KV_F32;
    int64_t            s32  = kvf_session_memory(m, &sp);
    sp.kv_type              = KVF_KV_F16;
    int64_t            s16  = kvf_session_memory(m, &sp);
    int64_t            avail = cli_mem_available();
    printf("KV cache     %s per token f32, %s f16 (%lld / %lld bytes)\n",
           cli_bytes(b[0], sizeof b[0], t32), cli_bytes(b[1], sizeof b[1], t16), (long long)t32,
           (long long)t16);
    printf("full context %s f32, %s f16 of KV cache for %lld tokens; a session with scratch "
           "%s / %s\n",
           cli_bytes(b[2], sizeof b[2], t32 * n), cli_bytes(b[3], sizeof b[3], t16 * n),
           (long long)n, cli_bytes(b[4], sizeof b[4], s32), cli_bytes(b[5], sizeof b[5], s16));
    printf("memory       %s available\n", avail < 0 ? "unknown" : cli_bytes(b[0], sizeof b[0], avail));
    kvf_model_free(m);
    return 0;
}
