/* cmd_bench.c - `kvfuse bench`: prompt processing (prefill) and generation (decode) speed,
 * measured like llama-bench so the two can be compared: prefill = one batched evaluation of
 * P prompt tokens in an empty session; decode = G single-token steps with D tokens already in
 * the cache (D = P by default: the decode that follows the prompt; llama-bench -d P).
 * Tokenization and sampling are not timed. One warm-up run precedes the repetitions. */
#include "cli/cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void help(void) {
    printf("usage: kvfuse bench [-m MODEL] [-p N[,N...]] [-n N] [-r R] [options]\n"
           "\n"
           "  -m, --model M       GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
           "  -p, --prompt N,...  prompt lengths to prefill (default 512)\n"
           "  -n, --gen N         tokens to decode one at a time (default 128; 0 = skip)\n"
           "  -d, --depth D       tokens in the cache before decoding (default: the prompt\n"
           "                      length, i.e. decode right after the prefill; 0 = empty)\n"
           "  -r, --reps R        repetitions after one warm-up (default 5)\n"
           "  -t, --threads N     compute threads (default: all CPUs)\n"
           "  -u, --ubatch N      tokens per forward micro-batch (default 256)\n"
           "  -b, --batch N       decode N sessions together (kvf_decode_batch); decode tok/s\n"
           "                      is then the aggregate over all N (default 1)\n"
           "      --json          one JSON object per prompt length: prefill_tok_s,\n"
           "                      prefill_tok_s_sd, decode_tok_s, decode_tok_s_sd, ...\n"
           "      --isa NAME      kernels: auto, ref, avx2, avx512\n"
           "      --precision P   matmul arithmetic: q16 (default), q8, f32\n"
           "      --kv T          session KV cache: f32 (default) or f16\n"
           "      --no-peak       skip the measurement of the machine's FMA and read-bandwidth\n"
           "                      peaks (about a second) that the GFLOP/s and GB/s columns are\n"
           "                      compared with\n"
           "\n"
           "GFLOP/s counts the matrix products and attention of each token (2 flops per\n"
           "multiply-add; prefill skips the output matrix, computed for the last row only);\n"
           "decode GB/s counts the packed weights plus the KV cache one token reads.\n"
           "With a sparse --attn the rates still count dense attention's work (an effective\n"
           "rate, comparable across modes); --json adds attn and attn_density, the share of\n"
           "causal key blocks the sparse layers read.\n\n"
           CLI_ATTN_HELP,
           KVF_DEFAULT_MODEL_NAME);
}

/* deterministic pseudo-random prompt ids in [16, n_vocab) */
static void fill_ids(int32_t *ids, int32_t n, int32_t n_vocab) {
    uint64_t x = 0x2545F4914F6CDD1Dull;
    for (int32_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = 16 + (int32_t)(x % (uint64_t)(n_vocab - 16));
    }
}

static int run_prefill(kvf_session *s, const int32_t *ids, int32_t n, double *ms) {
    kvf_session_truncate(s, 0);
    double t0 = cli_now_ms();
    if (kvf_session_eval(s, ids, n, 0) != KVF_OK) return -1;
    *ms = cli_now_ms() - t0;
    return 0;
}

static int run_decode(kvf_session *s, const int32_t *ids, int32_t depth, int32_t n, double *ms) {
    kvf_session_truncate(s, 0);
    if (depth > 0 && kvf_session_eval(s, ids, depth, 0) != KVF_OK) return -1;
    ids += depth;
    double t0 = cli_now_ms();
    for (int32_t i = 0; i < n; i++)
        if (kvf_session_eval(s, &ids[i], 1, 0) != KVF_OK) return -1;
    *ms = cli_now_ms() - t0;
    return 0;
}

/* n tokens decoded in each of nb sessions together (aggregate rate = nb * n / time) */
static int run_decode_batch(kvf_session **ss, int nb, const int32_t *ids, int32_t depth, int32_t n,
                            double *ms) {
    int32_t tok[256];
    for (int i = 0; i < nb; i++) {
        kvf_session_truncate(ss[i], 0);
        if (depth > 0 && kvf_session_eval(ss[i], ids, depth, 0) != KVF_OK) return -1;
    }
    ids += depth;
    double t0 = cli_now_ms();
    for (int32_t k = 0; k < n; k++) {
        for (int i = 0; i < nb; i++) tok[i] = ids[(k + 7 * i) % n];
        if (kvf_decode_batch(ss, tok, nb) != KVF_OK) return -1;
    }
    *ms = cli_now_ms() - t0;
    return 0;
}

/* Work of one token: matmul multiply-adds per layer x 2 (+ the output matrix for decode),
 * attention 4 * heads * head_dim flops per key over `keys` keys. */
static double token_flops(const kvf_model_info *in, double keys, bool logits) {
    double d = in->n_embd, qd = (double)in->n_head * in->head_dim, kvd = (double)in->n_head_kv * in->head_dim;
    double per_layer = d * (qd + 2 * kvd) + qd * d + 3 * d * in->n_ff;
    double f         = 2.0 * in->n_layer * per_layer + 4.0 * in->n_layer * qd * keys;
    return logits ? f + 2.0 * d * in->n_vocab : f;
}

/* Bytes one decoded token reads: the packed weights and `keys` cells of K and V per layer. */
static double token_bytes(const kvf_model_info *in, double keys, kvf_kv_type kv) {
    double kvd = (double)in->n_head_kv * in->head_dim;
    return (double)in->weight_bytes + 2.0 * in->n_layer * kvd * keys * (kv == KVF_KV_F16 ? 2 : 4);
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"prompt", required_argument, 0, 'p'},
        {"gen", required_argument, 0, 'n'},   {"reps", required_argument, 0, 'r'},
        {"threads", required_argument, 0, 't'}, {"ubatch", required_argument, 0, 'u'},
        {"batch", required_argument, 0, 'b'},   {"depth", required_argument, 0, 'd'},
        {"json", no_argument, 0, 'J'},        {"isa", required_argument, 0, 'I'},
        {"precision", required_argument, 0, 'X'}, {"kv", required_argument, 0, 'V'},
        {"no-peak", no_argument, 0, 'P'},
        {"help", no_argument, 0, 'h'},        CLI_ATTN_OPTIONS, {0, 0, 0, 0}};
    const char *model = NULL, *plist = "512", *isa = NULL;
    cli_attn    ca = {0};
    long        n_gen = 128, reps = 5, n_threads = 0, ubatch = 0, batch = 1, depth_opt = -1;
    bool        json = false, peak = true;
    kvf_precision prec = KVF_PREC_Q16;
    kvf_kv_type   kv   = KVF_KV_F32;
    int         c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:p:n:r:t:u:b:d:h", opts, NULL)) != -1) {
        if (cli_attn_opt("bench", c, optarg, &ca)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': plist = optarg; break;
        case 'n': n_gen = cli_int("bench", "-n", optarg, 0, 1 << 20); break;
        case 'r': reps = cli_int("bench", "-r", optarg, 1, 1000); break;
        case 't': n_threads = cli_int("bench", "--threads", optarg, 0, 1024); break;
        case 'u': ubatch = cli_int("bench", "--ubatch", optarg, 0, 1 << 16); break;
        case 'b': batch = cli_int("bench", "--batch", optarg, 1, 256); break;
        case 'd': depth_opt = cli_int("bench", "--depth", optarg, 0, 1 << 22); break;
        case 'J': json = true; break;
        case 'P': peak = false; break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("bench", optarg); break;
        case 'V': kv = cli_kv_type("bench", optarg); break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (optind < argc) return cli_fail("bench", "unexpected argument '%s'", argv[optind]);
    long  plens[64];
    int   np = 0;
    char *dup = strdup(plist), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (np == 64) return free(dup), cli_fail("bench", "too many prompt lengths");
        plens[np++] = cli_int("bench", "-p", t, 0, 1 << 22);
    }
    free(dup);
    if (np == 0) return cli_fail("bench", "-p needs at least one length");

    const char *path = cli_model_path(model);
    kvf_model  *m    = cli_load_model(path, isa, (int)n_threads, prec);
    if (!m) return 1;
    kvf_model_info info;
    kvf_model_get_info(m, &info);
    int         rc = 0;
    double      pk_gflops = 0, pk_gbps = 0;
    const char *pk_isa    = "none";
    int         n_thr     = n_threads ? (int)n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (peak) {
        fprintf(stderr, "bench: measuring the machine's peaks ...");
        if (cli_measure_peak(n_thr, info.isa, &pk_gflops, &pk_gbps, &pk_isa) != 0) pk_gflops = pk_gbps = 0;
        fprintf(stderr, "\r%40s\r", "");
    }
    if (!json) {
        printf("model %s (%s, %s), kernels %s, precision %s\n", path, info.arch, info.ftype,
               info.isa, info.precision);
        if (pk_gflops > 0)
            printf("machine peak on %d threads: %.1f GFLOP/s fp32 FMA (%s), %.1f GB/s read\n", n_thr,
                   pk_gflops, pk_isa, pk_gbps);
        printf("%8s %8s %8s %20s %17s %20s %17s\n", "threads", "prompt", "gen", "prefill tok/s",
               "GFLOP/s (peak)", "decode tok/s", "GB/s (peak)");
    }
    for (int pi = 0; pi < np && rc == 0; pi++) {
        int32_t            n_p   = (int32_t)plens[pi];
        int32_t            depth = depth_opt >= 0 ? (int32_t)depth_opt : n_p;
        int32_t            need  = (int32_t)(n_p > depth + n_gen ? n_p : depth + n_gen) + 1;
        kvf_session_params sp   = kvf_session_default_params();
        sp.n_ctx                = need;
        sp.n_threads            = (int32_t)n_threads;
        sp.n_ubatch             = (int32_t)ubatch;
        sp.kv_type              = kv;
        if (need > info.n_ctx_train)
            fprintf(stderr, "kvfuse bench: note: %d tokens exceed the model's training context "
                            "(%d); speed is still measured\n",
                    need, info.n_ctx_train);
        kvf_session *s;
        kvf_session_params xp = sp; /* the other --batch sessions: depth + n_gen + 1 tokens */
        xp.n_ctx              = depth + (int32_t)n_gen + 1;
        if (cli_check_memory("bench", m, &sp, 1, (batch - 1) * kvf_session_memory(m, &xp),
                             "lower -p, -n or --batch") != 0) {
            rc = 1;
            break;
        }
        kvf_attn_params ap = cli_attn_params(&ca);
        if (kvf_session_new(m, &sp, &s) != KVF_OK) {
            rc = cli_fail("bench", "%s", kvf_errmsg());
            break;
        }
        if (cli_attn_apply(s, &ca) != KVF_OK) {
            rc = cli_fail("bench", "%s", kvf_errmsg());
            kvf_session_free(s);
            break;
        }
        kvf_session *extra[256] = {s};
        for (long i = 1; i < batch && rc == 0; i++) {
            kvf_session_params bp = sp;
            bp.n_ctx              = depth + (int32_t)n_gen + 1;
            if (kvf_session_new(m, &bp, &extra[i]) != KVF_OK || cli_attn_apply(extra[i], &ca) != KVF_OK)
                rc = cli_fail("bench", "%s", kvf_errmsg());
        }
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)need);
        fill_ids(ids, need, info.n_vocab);
        double *pp = calloc((size_t)reps, sizeof(double)), *tg = calloc((size_t)reps, sizeof(double));
        double  ms;
        /* warm-up: touches every weight page and the KV cache */
        fprintf(stderr, "bench: p=%d warm-up...", n_p);
        if ((n_p && run_prefill(s, ids, n_p, &ms)) ||
            (n_gen && run_decode(s, ids, 0, n_gen < 16 ? (int32_t)n_gen : 16, &ms))) {
            rc = cli_fail("bench", "%s", kvf_errmsg());
        }
        for (long r = 0; r < reps && rc == 0; r++) {
            fprintf(stderr, "\rbench: p=%d rep %ld/%ld   ", n_p, r + 1, reps);
            if (n_p) {
                if (run_prefill(s, ids, n_p, &ms)) rc = cli_fail("bench", "%s", kvf_errmsg());
                pp[r] = n_p / ms * 1e3;
            }
            if (n_gen && rc == 0) {
                int bad = batch > 1 ? run_decode_batch(extra, (int)batch, ids, depth, (int32_t)n_gen, &ms)
                                    : run_decode(s, ids, depth, (int32_t)n_gen, &ms);
                if (bad) rc = cli_fail("bench", "%s", kvf_errmsg());
                tg[r] = (double)batch * n_gen / ms * 1e3;
            }
        }
        fprintf(stderr, "\r%60s\r", "");
        int64_t a_read, a_causal;
        kvf_session_attn_density(s, &a_read, &a_causal);
        if (rc == 0) {
            double pm, psd, tm, tsd;
            cli_stats(pp, (int)reps, &pm, &psd);
            cli_stats(tg, (int)reps, &tm, &tsd);
            /* effective rates: prefill keys average (n_p + 1) / 2, decode depth + n_gen / 2 */
            double pfl = pm * token_flops(&info, (n_p + 1) / 2.0, false) / 1e9;
            double dkeys = depth + n_gen / 2.0;
            double dfl = tm * token_flops(&info, dkeys, true) / 1e9;
            double dgb = batch > 1 ? tm / (double)batch * token_bytes(&info, 0, kv) / 1e9 +
                                         tm * (token_bytes(&info, dkeys, kv) - token_bytes(&info, 0, kv)) / 1e9
                                   : tm * token_bytes(&info, dkeys, kv) / 1e9;
            if (json) {
                printf("{\"model\": ");
                json_str(stdout, path, strlen(path));
                printf(", \"arch\": \"%s\", \"ftype\": \"%s\", \"isa\": \"%s\", \"precision\": \"%s\", \"threads\": %d, "
                       "\"n_prompt\": %d, \"n_gen\": %ld, \"depth\": %d, \"batch\": %ld, \"reps\": %ld, \"prefill_tok_s\": %.3f, "
                       "\"prefill_tok_s_sd\": %.3f, \"decode_tok_s\": %.3f, \"decode_tok_s_sd\": "
                       "%.3f, \"prefill_gflops\": %.2f, \"decode_gflops\": %.2f, \"decode_gbps\": %.2f, "
                       "\"peak_gflops\": %.2f, \"peak_gbps\": %.2f, \"prefill_runs\": [",
                       info.arch, info.ftype, info.isa, info.precision,
                       n_threads ? (int)n_threads : kvf_session_threads(s), n_p, n_gen, depth, batch, reps, pm,
                       psd, tm, tsd, pfl, dfl, dgb, pk_gflops, pk_gbps);
                for (long r = 0; r < reps; r++) printf("%s%.3f", r ? ", " : "", pp[r]);
                printf("], \"decode_runs\": [");
                for (long r = 0; r < reps; r++) printf("%s%.3f", r ? ", " : "", tg[r]);
                printf("], \"attn\": \"%s\", \"attn_density\": %.4f}\n", kvf_attn_name(ap.mode),
                       a_causal ? (double)a_read / (double)a_causal : 1.0);
            } else {
                char pf[32] = "-", df[32] = "-";
                if (pk_gflops > 0) snprintf(pf, sizeof pf, "%.0f%%", 100 * pfl / pk_gflops);
                if (pk_gbps > 0) snprintf(df, sizeof df, "%.0f%%", 100 * dgb / pk_gbps);
                printf("%8d %8d %8ld %12.1f ± %5.1f %9.1f (%5s) %12.1f ± %5.1f %9.1f (%5s)\n",
                       n_threads ? (int)n_threads : kvf_session_threads(s), n_p, n_gen, pm, psd,
                       pfl, pf, tm, tsd, dgb, df);
                if (ap.mode != KVF_ATTN_DENSE)
                    printf("         attention %s: the sparse layers read %.1f%% of the causal key blocks\n",
                           kvf_attn_name(ap.mode), a_causal ? 100.0 * (double)a_read / (double)a_causal : 100.0);
            }
            fflush(stdout);
        }
        free(pp), free(tg), free(ids);
        for (long i = 1; i < batch; i++) kvf_session_free(extra[i]);
        kvf_session_free(s);
    }
    kvf_model_free(m);
    return rc;
}
