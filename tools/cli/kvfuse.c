/* kvfuse.c - entry point of the kvfuse command-line tool: dispatches to a subcommand. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "kvfuse %s - fast RAG inference on the CPU with KV cache fusion\n"
            "\n"
            "usage: kvfuse <command> [options]   (kvfuse <command> --help for details)\n"
            "\n"
            "commands:\n"
            "  generate   generate text from a prompt (streams; --json for a summary object)\n"
            "  ask        answer a question over documents with KV cache fusion (A^3 etc.)\n"
            "  ingest     precompute documents' chunk KV caches into a persistent store\n"
            "  store      chunk store maintenance: stats, ls, verify, gc, rm\n"
            "  serve      OpenAI-compatible HTTP server: documents fused, streaming, metrics, keys\n"
            "  eval       evaluate fusion methods on a benchmark: quality, fidelity, latency, plots\n"
            "  bench      prefill and decode tokens/s, mean +- sd over repetitions\n"
            "  logits     write the logits of every prompt position to a file\n"
            "  tokenize   print the token ids of a text\n"
            "  info       describe a model file\n"
            "  models     the models known by name (-m NAME), present or not\n"
            "  conv-profile  a model's layer sensitivity for serve --conv-layers (EpiCache)\n"
            "\n"
            "The model is -m PATH|NAME, else $KVFUSE_MODEL, else %s\n"
            "(`make model NAME=...` downloads one; `kvfuse models` lists them).\n",
            kvf_version(), KVF_DEFAULT_MODEL_NAME);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "-h") || !strcmp(c, "--help") || !strcmp(c, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(c, "--version") || !strcmp(c, "version")) {
        printf("kvfuse %s\n", kvf_version());
        return 0;
    }
    if (!strcmp(c, "generate")) return cmd_generate(argc - 1, argv + 1);
    if (!strcmp(c, "bench")) return cmd_bench(argc - 1, argv + 1);
    if (!strcmp(c, "ask")) return cmd_ask(argc - 1, argv + 1);
    if (!strcmp(c, "eval")) return cmd_eval(argc - 1, argv + 1);
    if (!strcmp(c, "ingest")) return cmd_ingest(argc - 1, argv + 1);
    if (!strcmp(c, "store")) return cmd_store(argc - 1, argv + 1);
    if (!strcmp(c, "serve")) return cmd_serve(argc - 1, argv + 1);
    if (!strcmp(c, "logits")) return cmd_logits(argc - 1, argv + 1);
    if (!strcmp(c, "tokenize")) return cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(c, "info")) return cmd_info(argc - 1, argv + 1);
    if (!strcmp(c, "models")) return cmd_models(argc - 1, argv + 1);
    if (!strcmp(c, "conv-profile")) return cmd_conv_profile(argc - 1, argv + 1);
    fprintf(stderr, "kvfuse: unknown command '%s'\n\n", c);
    usage(stderr);
    return 2;
}
