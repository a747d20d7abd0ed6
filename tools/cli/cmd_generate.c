/* cmd_generate.c - `kvfuse generate`: prompt in, streamed text out, timings on request. */
#include "cli/cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void help(void) {
    printf("usage: kvfuse generate [-m MODEL] -p PROMPT [options]\n"
           "\n"
           "  -m, --model M        GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
           "  -p, --prompt TEXT    the prompt (or -f FILE)\n"
           "  -f, --file PATH      read the prompt from a file\n"
           "      --chat           wrap the prompt in the model's chat template\n"
           "      --system TEXT    system message (with --chat)\n"
           "  -n, --n-predict N    tokens to generate at most (default 128)\n"
           "      --temp T         temperature; 0 = greedy (default 0)\n"
           "      --top-p P        nucleus sampling (default 1 = off)\n"
           "      --top-k K        top-k sampling (default 0 = off)\n"
           "      --seed S         sampling seed (default 0)\n"
           "  -t, --threads N      compute threads (default: all CPUs)\n"
           "  -c, --ctx N          context size (default: prompt + n, at most the model's\n"
           "                       training context; a longer prompt is an error)\n"
           "      --json           print one JSON object at the end instead of streaming:\n"
           "                       text, tokens, prompt_tokens, prefill_ms, ttft_ms,\n"
           "                       decode_tok_s, stop (and attn, attn_density: the share of\n"
           "                       causal key blocks the prefill's sparse layers read)\n"
           "      --isa NAME       kernels: auto, ref, avx2, avx512\n"
           "      --kv T           session KV cache: f32 (default) or f16 (half the memory)\n"
           "      --precision P    matmul arithmetic: q16 (default; ~f32 accuracy), q8\n"
           "                       (int8 activations like llama.cpp; fastest), f32 (reference)\n"
           CLI_ATTN_HELP,
           KVF_DEFAULT_MODEL_NAME);
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},  {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},   {"chat", no_argument, 0, 'C'},
        {"system", required_argument, 0, 'S'}, {"n-predict", required_argument, 0, 'n'},
        {"temp", required_argument, 0, 'T'},   {"top-p", required_argument, 0, 'P'},
        {"top-k", required_argument, 0, 'K'},  {"seed", required_argument, 0, 's'},
        {"threads", required_argument, 0, 't'}, {"ctx", required_argument, 0, 'c'},
        {"json", no_argument, 0, 'J'},         {"isa", required_argument, 0, 'I'},
        {"precision", required_argument, 0, 'X'}, {"kv", required_argument, 0, 'V'},      {"help", no_argument, 0, 'h'},
        CLI_ATTN_OPTIONS, {0, 0, 0, 0}};
    const char        *model = NULL, *prompt = NULL, *file = NULL, *system = NULL, *isa = NULL;
    bool               chat = false, json = false;
    kvf_precision      prec = KVF_PREC_Q16;
    kvf_kv_type        kv   = KVF_KV_F32;
    long               n_predict = 128, n_threads = 0, n_ctx = 0;
    kvf_sampler_params sp        = kvf_sampler_default_params();
    cli_attn           ca = {0};
    int                c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:f:n:t:c:h", opts, NULL)) != -1) {
        if (cli_attn_opt("generate", c, optarg, &ca)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 'C': chat = true; break;
        case 'S': system = optarg; break;
        case 'n': n_predict = cli_int("generate", "-n", optarg, 0, 1 << 24); break;
        case 'T': sp.temp = (float)cli_float("generate", "--temp", optarg, 0, 100); break;
        case 'P': sp.top_p = (float)cli_float("generate", "--top-p", optarg, 0, 1); break;
        case 'K': sp.top_k = (int32_t)cli_int("generate", "--top-k", optarg, 0, 1 << 24); break;
        case 's': sp.seed = (uint64_t)cli_int("generate", "--seed", optarg, 0, 0x7fffffffffffffffL); break;
        case 't': n_threads = cli_int("generate", "--threads", optarg, 0, 1024); break;
        case 'c': n_ctx = cli_int("generate", "--ctx", optarg, 0, 1 << 22); break;
        case 'J': json = true; break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("generate", optarg); break;
        case 'V': kv = cli_kv_type("generate", optarg); break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (optind < argc) return cli_fail("generate", "unexpected argument '%s'", argv[optind]);
    char *file_text = NULL;
    if (file) {
        if (prompt) return cli_fail("generate", "give -p or -f, not both");
        if (!(file_text = kvf_read_file(file, NULL)))
            return cli_fail("generate", "cannot read '%s'", file);
        prompt = file_text;
    }
    if (!prompt) {
        help();
        return cli_fail("generate", "a prompt is required (-p TEXT or -f FILE)");
    }
    kvf_model *m = cli_load_model(cli_model_path(model), isa, (int)n_threads, prec);
    if (!m) return free(file_text), 1;

    double   t0 = cli_now_ms();
    int32_t  n_prompt;
    int32_t *ids = cli_tokenize_prompt("generate", m, prompt, chat, system, &n_prompt);
    free(file_text);
    if (!ids) return kvf_model_free(m), 1;
    if (n_prompt == 0) {
        free(ids);
        kvf_model_free(m);
        return cli_fail("generate", "the prompt is empty");
    }
    int32_t ctx_max = kvf_model_n_ctx_train(m);
    bool    ctx_set = n_ctx > 0;
    long    want    = n_prompt + (n_predict > 0 ? n_predict : 1); /* room for the first token */
    if (!ctx_set) n_ctx = want < ctx_max ? want : ctx_max;
    if (n_prompt >= n_ctx) {
        free(ids);
        kvf_model_free(m);
        if (!ctx_set)
            return cli_fail("generate", "the prompt has %d tokens, more than fit in the model's "
                                        "context of %d tokens (leave room for at least one "
                                        "generated token); shorten it, or pass --ctx N to go "
                                        "past the training context",
                            n_prompt, ctx_max);
        return cli_fail("generate", "the prompt has %d tokens, more than fit in --ctx %ld "
                                    "(leave room for at least one generated token)",
                        n_prompt, n_ctx);
    }
    if (n_ctx > ctx_max)
        fprintf(stderr, "kvfuse generate: note: --ctx %ld is more than the model's training "
                        "context (%d)\n", n_ctx, ctx_max);
    kvf_session_params sprm = kvf_session_default_params();
    sprm.n_ctx              = (int32_t)n_ctx;
    sprm.n_threads          = (int32_t)n_threads;
    sprm.kv_type            = kv;
    kvf_session *s = NULL;
    if (cli_check_memory("generate", m, &sprm, 1, 0,
                         kv == KVF_KV_F16 ? "lower --ctx or -n" : "lower --ctx or -n, or use --kv f16") != 0) {
        free(ids);
        kvf_model_free(m);
        return 1;
    }
    kvf_attn_params ap = cli_attn_params(&ca);
    if (kvf_session_new(m, &sprm, &s) != KVF_OK || cli_attn_apply(s, &ca) != KVF_OK) {
        if (s) kvf_session_free(s);
        free(ids);
        kvf_model_free(m);
        return cli_fail("generate", "%s", kvf_errmsg());
    }
    kvf_sampler *smp = kvf_sampler_new(&sp);
    double       t1  = cli_now_ms();
    if (kvf_session_eval(s, ids, n_prompt, 0) != KVF_OK) {
        int rc = cli_fail("generate", "%s", kvf_errmsg());
        kvf_sampler_free(smp), kvf_session_free(s), free(ids), kvf_model_free(m);
        return rc;
    }
    double  t2      = cli_now_ms();
    int64_t a_read, a_causal; /* the prefill's sparse attention density */
    kvf_session_attn_density(s, &a_read, &a_causal);
    int32_t n_vocab = kvf_model_n_vocab(m);
    int32_t tok     = kvf_sampler_sample(smp, kvf_session_logits(s, -1), n_vocab);
    double  t_first = cli_now_ms();

    size_t      cap = 4096, len = 0;
    char       *text = malloc(cap);
    int32_t     n_gen = 0, n_steps = 0; /* tokens emitted, decode forward steps */
    const char *stop  = "length";
    double      t_dec0 = t_first, t_end = t_first;
    char        piece[256];
    while (n_gen < n_predict) {
        if (kvf_token_is_eog(m, tok)) {
            stop = "eos";
            break;
        }
        n_gen++;
        /* append the token's bytes to text (growing it), then stream them */
        int32_t k = kvf_token_to_piece(m, tok, piece, sizeof piece, false);
        if (k < 0 && k != INT32_MIN) {
            if (len + (size_t)-k + 1 > cap) text = realloc(text, cap = 2 * (cap + (size_t)-k));
            k = kvf_token_to_piece(m, tok, text + len, -k, false);
            if (k > 0 && !json) fwrite(text + len, 1, (size_t)k, stdout), fflush(stdout);
            if (k > 0) len += (size_t)k;
        } else if (k > 0) {
            if (!json) fwrite(piece, 1, (size_t)k, stdout), fflush(stdout);
            if (len + (size_t)k + 1 > cap) text = realloc(text, cap = 2 * (cap + (size_t)k));
            memcpy(text + len, piece, (size_t)k);
            len += (size_t)k;
        }
        if (n_gen == n_predict) break;
        if (kvf_session_n_past(s) >= n_ctx) {
            stop = "context";
            break;
        }
        if (kvf_session_eval(s, &tok, 1, 0) != KVF_OK) {
            fprintf(stderr, "\nkvfuse generate: %s\n", kvf_errmsg());
            stop = "error";
            break;
        }
        tok   = kvf_sampler_sample(smp, kvf_session_logits(s, -1), n_vocab);
        t_end = cli_now_ms();
        n_steps++;
    }
    /* decode rate: forward steps after the first token, each producing one token */
    double dec_ms    = t_end - t_dec0;
    double dec_tok_s = n_steps > 0 && dec_ms > 0 ? n_steps / dec_ms * 1e3 : 0;
    if (json) {
        printf("{\"text\": ");
        json_str(stdout, text, len);
        printf(", \"tokens\": %d, \"prompt_tokens\": %d, \"prefill_ms\": %.3f, \"ttft_ms\": "
               "%.3f, \"decode_ms\": %.3f, \"decode_tok_s\": %.3f, \"stop\": \"%s\"",
               n_gen, n_prompt, t2 - t1, t_first - t0, dec_ms, dec_tok_s, stop);
        if (ap.mode != KVF_ATTN_DENSE)
            printf(", \"attn\": \"%s\", \"attn_density\": %.4f", kvf_attn_name(ap.mode),
                   a_causal ? (double)a_read / (double)a_causal : 1.0);
        int64_t mh, ml;
        kvf_session_decode_hits(s, &mh, &ml);
        int64_t lr, lt;
        kvf_session_decode_density(s, &lr, &lt);
        if (ca.dmode == KVF_DECODE_MAC)
            printf(", \"decode_attn\": \"mac\", \"mac_hit_rate\": %.4f", ml ? (double)mh / (double)ml : 0.0);
        else if (ca.dmode == KVF_DECODE_LOUIS) /* steps without a boundary; keys read */
            printf(", \"decode_attn\": \"louis\", \"louis_reuse_rate\": %.4f, \"louis_density\": %.4f",
                   ml ? (double)mh / (double)ml : 0.0, lt ? (double)lr / (double)lt : 1.0);
        printf("}\n");
    } else {
        printf("\n");
        fflush(stdout); /* the text and its newline before the stats on stderr */
        fprintf(stderr, "[%d prompt tokens, prefill %.1f ms (%.1f tok/s), first token %.1f ms, "
                        "%d tokens at %.1f tok/s, stop: %s]\n",
                n_prompt, t2 - t1, n_prompt / (t2 - t1) * 1e3, t_first - t0, n_gen, dec_tok_s,
                stop);
    }
    free(text);
    kvf_sampler_free(smp);
    kvf_session_free(s);
    free(ids);
    kvf_model_free(m);
    return strcmp(stop, "error") == 0;
}
