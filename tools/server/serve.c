/* serve.c - `kvfuse serve`: an OpenAI-compatible HTTP server (chat completions, completions,
 * streaming) with document-aware KV cache fusion, a document registry, Prometheus metrics,
 * API-key tenants and request hardening. Options, startup, and shutdown on SIGINT/SIGTERM;
 * the parts live in server_api.c (requests), server_sched.c (the inference thread),
 * server_http.c (libmicrohttpd), server_docs.c and server_metrics.c. */
#include "cli/cli.h"
#include "server/server_api.h"
#include "server/server_docs.h"
#include "server/server_http.h"
#include "server/server_metrics.h"
#include "server/server_sched.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void help(void) {
    printf(
        "usage: kvfuse serve [-m MODEL] [options]\n"
        "\n"
        "OpenAI-compatible HTTP server: POST /v1/chat/completions, /v1/completions (stream: true\n"
        "for server-sent events), /v1/documents; GET /v1/documents/{id}, /v1/models, /health,\n"
        "/metrics; DELETE /v1/documents/{id}. Requests may carry \"documents\" (texts or ids of\n"
        "ingested documents), answered with KV cache fusion, and \"kvfuse\": {\"method\", \"ratio\",\n"
        "\"evict\", ...}; agent steps may add {\"workflow\": ID, \"step\": S, \"next\": [...]}: the\n"
        "chunk caches then evict by steps-to-execution and warm the next steps' chunks (KVFlow).\n"
        "Stops on SIGINT / SIGTERM.\n"
        "\n"
        "  -m, --model M           GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
        "      --host ADDR         address to listen on (default 127.0.0.1: this machine only)\n"
        "      --port N            port (default 8080; 0 = any free port, see --port-file)\n"
        "      --port-file FILE    write the port to FILE once listening\n"
        "      --ctx N             tokens per request slot: prompt + answer (default: the\n"
        "                          model's context, lowered until one full slot and every\n"
        "                          slot's scratch fit in 3/4 of the available memory)\n"
        "      --kv-budget N       KV cache tokens all slots may hold at once (default: what\n"
        "                          3/4 of the available memory holds; 0 = no limit). Slots\n"
        "                          reserve their context but commit memory only as tokens\n"
        "                          arrive; a request waits while running ones could fill it\n"
        "      --parallel N        request slots decoded together, 1..64 (default 4)\n"
        "      --kv T              slots' KV cache: f32 (default) or f16 (half the memory)\n"
        "      --queue N           requests that may wait for a slot; beyond: 429 with\n"
        "                          Retry-After (default 16)\n"
        "      --queue-aging MS    waiting requests go by how much of their prompt's KV is\n"
        "                          cached (documents' chunks, a slot's kept prefix), most\n"
        "                          first, until they have waited MS ms; then by arrival\n"
        "                          (default 60000; 0 = arrival order only)\n"
        "      --queue-overtake N  ... or until N later requests went before them (default\n"
        "                          3; 0 = no such bound); waiting requests' chunks are the\n"
        "                          last the memory cache evicts\n"
        "      --conv-block N      a plain prompt's KV outlives its slot: when the request ends\n"
        "                          it is kept in blocks of N tokens in the tenant's chunk cache\n"
        "                          (memory, then --store's disk and Redis tiers), and the next\n"
        "                          turn of the conversation restores it in whichever slot serves\n"
        "                          it, or after a restart with a disk tier (default 256; 0 = off:\n"
        "                          only the slot that served a conversation keeps its prefix)\n"
        "      --conv-budget N     EpiCache: a chat prompt longer than N tokens has its history\n"
        "                          (all messages but the last) prefilled block by block under N\n"
        "                          KV cells, keeping what the question attends to (0 = off,\n"
        "                          default; 512..--ctx)\n"
        "      --conv-episodes E   --conv-probe episode: episodes a history is clustered into\n"
        "                          (default 4)\n"
        "      --conv-probe P      what the eviction keeps: question (what the last message's own\n"
        "                          text attends to, or a request's kvfuse.conv_probe; default) or\n"
        "                          episode (what the question's episode of the conversation\n"
        "                          attends to, EpiCache)\n"
        "      --conv-chunk C      every layer and head keeps the same history cells, whole runs\n"
        "                          of C chosen by their attention over all heads (after ChunkKV;\n"
        "                          0 = each head its own top cells, default; not with --conv-layers)\n"
        "      --conv-layers FILE  with --conv-budget: give each layer its own share of the\n"
        "                          budget from a profile written by `kvfuse conv-profile`\n"
        "                          (sensitive layers keep more; the mean stays N)\n"
        "      --conv-alpha A      how strongly the profile skews the shares (default 1.3)\n"
        "      --prefill-chunk N   tokens per prefill unit of a plain prompt, or of a history\n"
        "                          under --conv-budget (whole blocks; default 512); while the\n"
        "                          oldest prompt needs more units than the next oldest, they\n"
        "                          take turns\n"
        "      --prefill-per-step K  prefill units between two decode bursts (default 1)\n"
        "      --decode-ratio R    after prefill units of P ms, decode running requests for up\n"
        "                          to R * P ms (default 1; 0 = one decode step per unit)\n"
        "      --timeout SECS      per request, queueing included (default 300; 0 = none)\n"
        "      --idle-timeout SECS close idle or slow connections (default 30)\n"
        "      --max-connections N simultaneous connections (default 256)\n"
        "      --max-body BYTES    request body limit (default 8388608; larger: 413)\n"
        "      --max-docs N        documents per request (default 64)\n"
        "      --tenant-docs N     documents each tenant may ingest (default 10000)\n"
        "      --tenant-doc-mb N   MiB of document text each tenant may ingest (default 1024)\n"
        "      --max-tokens N      default answer limit of chat requests (default 1024)\n"
        "      --method M          fusion method of document requests without one: full, prefix,\n"
        "                          reuse, epic, cacheblend, a3, kvshare, prophet, focus (default\n"
        "                          focus)\n"
        "      --ratio R           default recompute ratio (default 0.15), or auto: picked per\n"
        "                          request (see --fidelity; a request may send \"ratio\": \"auto\")\n"
        "      --fidelity F        --ratio auto: share of the selection score's mass (focus, a3:\n"
        "                          the question's attention) the recomputed tokens hold (default\n"
        "                          0.95)\n"
        "      --ratio-min R       --ratio auto: least ratio (default 0.05)\n"
        "      --ratio-max R       --ratio auto: largest ratio (default 0.5)\n"
        "      --audit-rate R      live fidelity audit: share of fused requests also prefilled\n"
        "                          in full while the server is idle, compared with the fused\n"
        "                          answer on /metrics and GET /v1/audit (default 0 = off;\n"
        "                          0.02 = every 50th fused request)\n"
        "      --audit-cpu F       share of the time the audit may take (default 0.1)\n"
        "      --audit-chunk N     prompt tokens per audit step: a request arriving during an\n"
        "                          audit waits for at most one step (default 32)\n"
        "      --audit-tokens N    greedy answer tokens compared (default 16; 0 = first token\n"
        "                          only; requests with temperature > 0: first token only)\n"
        "      --no-flow-compute   KVFlow without --store/--redis: do not compute the next\n"
        "                          workflow steps' uncached chunks while the server is idle\n"
        "                          (by default it does, one document at a time, before audit\n"
        "                          work; a request arriving waits for at most one document)\n"
        "      --evict E           default eviction after fusion: none, snapkv, streaming\n"
        "      --temp T            default temperature (default 0 = greedy; OpenAI's is 1)\n"
        "      --cache-mb N        memory chunk cache per tenant, MiB (default 2048; 0 = no\n"
        "                          limit); with --store/--redis: the memory tier unless\n"
        "                          --mem-budget is given\n"
        "      --api-keys FILE     require API keys: lines \"KEY TENANT [admin]\"; each tenant\n"
        "                          has its own documents and caches; /metrics needs an admin key\n"
        "      --public-metrics    serve /metrics without a key even with --api-keys\n"
        "      --model-id NAME     model name in /v1/models (default: the file name)\n"
        "  -t, --threads N         compute threads per slot\n"
        "      --isa NAME          kernels: auto, ref, avx2, avx512\n"
        "      --precision P       q16 (default), q8, f32\n"
        "  -q, --quiet             no per-request log lines\n"
        "  -v, --verbose           libmicrohttpd's messages too\n"
        "\n"
        "Chunk store (persistent, tiered; with --api-keys each tenant gets DIR/t-<hash> and its\n"
        "own Redis key prefix):\n"
        CLI_STORE_HELP
        "\n"
        "Prefill attention (the default of every request; a request may choose its own with\n"
        "\"kvfuse\": {\"attn\": \"sale\"} or {\"attn\": {\"mode\": \"sale\", \"threshold\": 0.01}}):\n"
        CLI_ATTN_HELP
        "\n"
        "Example:\n"
        "  kvfuse serve --port 8080 &\n"
        "  curl -s localhost:8080/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\",\n"
        "    \"content\": \"Who wrote it?\"}], \"documents\": [\"Dune is a novel by Frank Herbert.\"]}'\n",
        KVF_DEFAULT_MODEL_NAME);
}

typedef struct serve_state {
    srv_sched *sched;
    srv_docs  *docs;
} serve_state;

static void status_cb(void *user, srv_status *out) {
    serve_state *st = user;
    srv_sched_status(st->sched, out);
    out->documents = srv_docs_count(st->docs);
}

static void gauges_cb(void *user, srv_gauges *g) {
    serve_state *st = user;
    srv_sched_gauges(st->sched, g);
    g->st.documents = srv_docs_count(st->docs);
}

static char *model_id_from_path(const char *path) {
    const char *b = strrchr(path, '/');
    b             = b ? b + 1 : path;
    size_t n      = strlen(b);
    if (n > 5 && !strcmp(b + n - 5, ".gguf")) n -= 5;
    char *s = strndup(b, n);
    for (char *p = s; p && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f || *p == '"' || *p == '\\') *p = '_';
    return s;
}

/* The port, written to FILE.tmp.PID and renamed onto FILE: the file appears complete, and only
 * once the server is listening (the readiness signal scripts wait for). */
static int write_port_file(const char *path, int port) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        cli_fail("serve", "--port-file path too long");
        return -1;
    }
    FILE *f  = fopen(tmp, "w");
    int   ok = f != NULL;
    if (f) ok = fprintf(f, "%d\n", port) > 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        cli_fail("serve", "cannot write --port-file '%s': %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Memory the slots commit when they start with a context of n_ctx tokens: scratch and token
 * history; their KV caches are demand-paged reservations (committed as cells fill), so they
 * count apart: kv_bytes per token. The fidelity audit's session counts as one more slot. */
static int64_t slots_scratch(const kvf_model *m, const srv_sched_params *sp, int32_t n_ctx) {
    kvf_session_params p = kvf_session_default_params();
    p.n_ctx              = n_ctx;
    p.n_threads          = sp->n_threads;
    p.kv_type            = sp->kv_type;
    int64_t one          = kvf_session_memory(m, &p);
    return one < 0 ? -1
                   : (one - kvf_session_kv_reserved(m, &p) + 4 * (int64_t)n_ctx) *
                         (sp->n_slots + (sp->audit.rate > 0));
}

/* The slots' context and KV budget. Memory at start is the slots' scratch; the KV caches fill
 * on demand, bounded by sp->kv_budget tokens held at once (server_sched.h): by default what 3/4
 * of the available memory holds after the scratch. Without --ctx the context is the model's,
 * lowered (with a note) until one full slot fits in that budget; with --ctx the same is an
 * error. Returns 0 or -1 (message printed). */
static int slots_context(const kvf_model *m, srv_sched_params *sp, bool ctx_set, bool budget_set) {
    int32_t     train = kvf_model_n_ctx_train(m);
    int64_t     avail = cli_mem_available(), tok = kvf_session_kv_bytes_per_token(m, sp->kv_type);
    const char *kv    = sp->kv_type == KVF_KV_F16 ? "f16" : "f32";
    const char *f16   = sp->kv_type == KVF_KV_F16 ? "" : ", or use --kv f16";
    char        b1[32], b2[32], b3[32];
    if (ctx_set && sp->n_ctx > train)
        fprintf(stderr, "kvfuse serve: note: --ctx %d is more than the model's training context (%d)\n",
                sp->n_ctx, train);
    if (!ctx_set) sp->n_ctx = train < 64 ? 64 : train > (1 << 20) ? 1 << 20 : train;
    if (avail < 0) return 0; /* unknown: trust the model's context, no budget */
    int64_t usable = avail / 4 * 3;
    /* one full slot's KV on top of every slot's scratch must fit */
    int32_t ctx0 = sp->n_ctx;
    while (slots_scratch(m, sp, sp->n_ctx) + tok * sp->n_ctx > usable) {
        if (ctx_set) {
            cli_fail("serve", "--ctx %d with --parallel %d needs %s of scratch and %s of %s KV cache "
                              "for one full slot, more than 3/4 of the %s of memory available: lower "
                              "--ctx or --parallel%s",
                     sp->n_ctx, sp->n_slots, cli_bytes(b1, sizeof b1, slots_scratch(m, sp, sp->n_ctx)),
                     cli_bytes(b3, sizeof b3, tok * sp->n_ctx), kv, cli_bytes(b2, sizeof b2, avail), f16);
            return -1;
        }
        if (sp->n_ctx <= 256) {
            cli_fail("serve", "%d slots of even 256 tokens do not fit in the %s of memory available: "
                              "lower --parallel%s",
                     sp->n_slots, cli_bytes(b2, sizeof b2, avail), f16);
            return -1;
        }
        sp->n_ctx = sp->n_ctx / 2 / 256 * 256 > 256 ? sp->n_ctx / 2 / 256 * 256 : 256;
    }
    if (sp->n_ctx != ctx0)
        fprintf(stderr, "kvfuse serve: note: one slot's full context of %d tokens (%s of %s KV cache) "
                        "and %d slots' scratch do not fit in 3/4 of the %s available: --ctx lowered "
                        "to %d (set --ctx, --parallel%s to choose)\n",
                ctx0, cli_bytes(b1, sizeof b1, tok * ctx0), kv, sp->n_slots,
                cli_bytes(b2, sizeof b2, avail), sp->n_ctx, sp->kv_type == KVF_KV_F16 ? "" : " or --kv f16");
    if (!budget_set) {
        int64_t fit   = (usable - slots_scratch(m, sp, sp->n_ctx)) / tok;
        int64_t total = (int64_t)sp->n_ctx * sp->n_slots;
        sp->kv_budget = fit >= total ? 0 : fit; /* 0: every slot can fill its context */
    }
    return 0;
}

int cmd_serve(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'},       {"port-file", required_argument, 0, 'P'},
        {"ctx", required_argument, 0, 'c'},        {"parallel", required_argument, 0, 'n'},
        {"queue", required_argument, 0, 'Q'},      {"prefill-chunk", required_argument, 0, 'C'},
        {"prefill-per-step", required_argument, 0, 'K'}, {"timeout", required_argument, 0, 'T'},
        {"idle-timeout", required_argument, 0, 'i'}, {"max-connections", required_argument, 0, 'N'},
        {"max-body", required_argument, 0, 'B'},   {"max-docs", required_argument, 0, 'D'},
        {"tenant-docs", required_argument, 0, 'd'}, {"max-tokens", required_argument, 0, 'M'},
        {"method", required_argument, 0, 'k'},     {"ratio", required_argument, 0, 'r'},
        {"evict", required_argument, 0, 'E'},      {"temp", required_argument, 0, 'x'},
        {"cache-mb", required_argument, 0, 'z'},   {"api-keys", required_argument, 0, 'A'},
        {"public-metrics", no_argument, 0, 'O'},   {"model-id", required_argument, 0, 'I'},
        {"threads", required_argument, 0, 't'},    {"isa", required_argument, 0, 'a'},
        {"precision", required_argument, 0, 'X'},  {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {"kv", required_argument, 0, 'V'},         {"decode-ratio", required_argument, 0, 'Y'},
        {"tenant-doc-mb", required_argument, 0, 'b'},
        {"fidelity", required_argument, 0, 2000},  {"ratio-min", required_argument, 0, 2001},
        {"ratio-max", required_argument, 0, 2002}, {"audit-rate", required_argument, 0, 2003},
        {"audit-cpu", required_argument, 0, 2004}, {"audit-chunk", required_argument, 0, 2005},
        {"audit-tokens", required_argument, 0, 2006}, {"kv-budget", required_argument, 0, 2007},
        {"queue-aging", required_argument, 0, 2008}, {"queue-overtake", required_argument, 0, 2015}, {"conv-probe", required_argument, 0, 2016}, {"conv-chunk", required_argument, 0, 2017}, {"conv-block", required_argument, 0, 2009}, {"conv-budget", required_argument, 0, 2010},
        {"conv-episodes", required_argument, 0, 2011}, {"conv-layers", required_argument, 0, 2012},
        {"conv-alpha", required_argument, 0, 2013}, {"no-flow-compute", no_argument, 0, 2014},
        CLI_STORE_OPTIONS,                         CLI_ATTN_OPTIONS, {0, 0, 0, 0}};
    cli_attn         ca    = {0};
    const char      *model = NULL, *port_file = NULL, *keys_file = NULL, *isa = NULL, *model_id = NULL;
    srv_api_config   ac    = srv_api_default_config();
    srv_sched_params sp    = srv_sched_default_params();
    srv_http_params  hp    = {.host = "127.0.0.1", .port = 8080, .max_conns = 256, .idle_timeout_s = 30, .log_requests = true};
    kvf_precision    prec  = KVF_PREC_Q16;
    long             tenant_docs = 10000, tenant_doc_mb = 1024, cache_mb = 2048;
    kvf_store_params store = kvf_store_default_params();
    bool             mem_budget_set = false, ctx_set = false, kv_budget_set = false;
    int              c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:qvh", opts, NULL)) != -1) {
        if (c == CLI_STORE_OPT_BASE + 4) mem_budget_set = true;
        if (cli_store_opt("serve", c, optarg, &store)) continue;
        if (cli_attn_opt("serve", c, optarg, &ca)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'H': hp.host = optarg; break;
        case 'p': hp.port = (int)cli_int("serve", "--port", optarg, 0, 65535); break;
        case 'P': port_file = optarg; break;
        case 'c': sp.n_ctx = (int32_t)cli_int("serve", "--ctx", optarg, 64, 1 << 20), ctx_set = true; break;
        case 2008: sp.aging_ms = cli_float("serve", "--queue-aging", optarg, 0, 1e9); break;
        case 2016:
            if (strcmp(optarg, "episode") && strcmp(optarg, "question"))
                return cli_fail("serve", "--conv-probe expects episode or question, got '%s'", optarg);
            sp.conv_probe_question = !strcmp(optarg, "question");
            break;
        case 2017: sp.conv_chunk = (int32_t)cli_int("serve", "--conv-chunk", optarg, 0, 4096); break;
        case 2015: sp.overtake_max = (int32_t)cli_int("serve", "--queue-overtake", optarg, 0, 1 << 20); break;
        case 2009: sp.conv_block = (int32_t)cli_int("serve", "--conv-block", optarg, 0, KVF_PREFIX_BLOCK_MAX); break;
        case 2010: sp.conv_budget = (int32_t)cli_int("serve", "--conv-budget", optarg, 0, 1 << 24); break;
        case 2011: sp.conv_episodes = (int32_t)cli_int("serve", "--conv-episodes", optarg, 1, 64); break;
        case 2012: sp.conv_layers = optarg; break;
        case 2013: sp.conv_alpha = (float)cli_float("serve", "--conv-alpha", optarg, 0, 16); break;
        case 2014: sp.flow_compute = false; break;
        case 2007: sp.kv_budget = cli_int("serve", "--kv-budget", optarg, 0, 1L << 40), kv_budget_set = true; break;
        case 'n': sp.n_slots = (int32_t)cli_int("serve", "--parallel", optarg, 1, 64); break;
        case 'Q': sp.max_queue = (int32_t)cli_int("serve", "--queue", optarg, 0, 4096); break;
        case 'C': sp.prefill_chunk = (int32_t)cli_int("serve", "--prefill-chunk", optarg, 16, 1 << 20); break;
        case 'K': sp.prefill_units = (int32_t)cli_int("serve", "--prefill-per-step", optarg, 1, 64); break;
        case 'Y': sp.decode_ratio = cli_float("serve", "--decode-ratio", optarg, 0, 1000); break;
        case 'T': ac.timeout_ms = 1e3 * cli_float("serve", "--timeout", optarg, 0, 1e7); break;
        case 'i': hp.idle_timeout_s = (int)cli_int("serve", "--idle-timeout", optarg, 1, 86400); break;
        case 'N': hp.max_conns = (int)cli_int("serve", "--max-connections", optarg, 1, 100000); break;
        case 'B': ac.max_body = (size_t)cli_int("serve", "--max-body", optarg, 1024, 1L << 30); break;
        case 'D': ac.max_docs = (int32_t)cli_int("serve", "--max-docs", optarg, 1, 4096); break;
        case 'd': tenant_docs = cli_int("serve", "--tenant-docs", optarg, 0, 1L << 30); break;
        case 'b': tenant_doc_mb = cli_int("serve", "--tenant-doc-mb", optarg, 1, 1L << 24); break;
        case 'M': ac.max_tokens = (int32_t)cli_int("serve", "--max-tokens", optarg, 1, 1 << 24); break;
        case 'k': {
            int k = kvf_method_from_name(optarg);
            if (k == KVF_METHOD_ORACLE) return cli_fail("serve", "--method oracle is an evaluation diagnostic (kvfuse eval), not served");
            if (k < 0) return cli_fail("serve", "unknown --method '%s' (full, prefix, reuse, epic, cacheblend, a3, kvshare, prophet, focus)", optarg);
            ac.fp.method = (kvf_method)k;
            break;
        }
        case 'r': cli_ratio("serve", optarg, &ac.fp); break;
        case 2000: ac.fp.fidelity = (float)cli_float("serve", "--fidelity", optarg, 1e-6, 1); break;
        case 2001: ac.fp.ratio_min = (float)cli_float("serve", "--ratio-min", optarg, 0, 1); break;
        case 2002: ac.fp.ratio_max = (float)cli_float("serve", "--ratio-max", optarg, 0, 1); break;
        case 2003: sp.audit.rate = cli_float("serve", "--audit-rate", optarg, 0, 1); break;
        case 2004: sp.audit.cpu = cli_float("serve", "--audit-cpu", optarg, 0.001, 1); break;
        case 2005: sp.audit.chunk = (int32_t)cli_int("serve", "--audit-chunk", optarg, 1, 1 << 20); break;
        case 2006: sp.audit.answer_tokens = (int32_t)cli_int("serve", "--audit-tokens", optarg, 0, 4096); break;
        case 'E':
            if (kvf_evict_from_name(optarg) < 0)
                return cli_fail("serve", "--evict expects none, snapkv or streaming, got '%s'", optarg);
            ac.fp.evict = (kvf_evict)kvf_evict_from_name(optarg);
            break;
        case 'x': ac.temperature = (float)cli_float("serve", "--temp", optarg, 0, 2); break;
        case 'z': cache_mb = cli_int("serve", "--cache-mb", optarg, 0, 1L << 24); break;
        case 'A': keys_file = optarg; break;
        case 'O': ac.public_metrics = true; break;
        case 'I': model_id = optarg; break;
        case 't': sp.n_threads = (int32_t)cli_int("serve", "--threads", optarg, 0, 1024); break;
        case 'a': isa = optarg; break;
        case 'X': prec = cli_precision("serve", optarg); break;
        case 'V':
            if (!strcmp(optarg, "f32")) sp.kv_type = KVF_KV_F32;
            else if (!strcmp(optarg, "f16")) sp.kv_type = KVF_KV_F16;
            else return cli_fail("serve", "--kv expects f32 or f16, got '%s'", optarg);
            break;
        case 'q': hp.log_requests = false; break;
        case 'v': hp.verbose = true; break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (optind < argc) return cli_fail("serve", "unexpected argument '%s'", argv[optind]);
    if (ac.fp.ratio_min > ac.fp.ratio_max) return cli_fail("serve", "--ratio-min must be <= --ratio-max");
    ac.attn  = cli_attn_params(&ca);
    ac.dattn = cli_decode_attn_params(&ca);
    sp.cache_bytes = (size_t)cache_mb << 20;
    if (store.dir || store.redis) {
        if (!mem_budget_set) store.mem_budget = sp.cache_bytes;
        sp.store = &store;
    }

    /* signals: handled by sigwait in this thread; every thread started below inherits the mask */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit on the store is then a "disk full" error */

    char         err[512] = "";
    srv_tenants *tenants  = NULL;
    if (keys_file && !(tenants = srv_tenants_load(keys_file, err, sizeof err)))
        return cli_fail("serve", "--api-keys %s", err);
    sp.multi_tenant = tenants != NULL;

    int          rc      = 1;
    const char  *path    = cli_model_path(model);
    kvf_model   *m       = cli_load_model(path, isa, sp.n_threads, prec);
    char        *mid     = model_id ? strdup(model_id) : model_id_from_path(path);
    srv_metrics *met     = srv_metrics_new();
    srv_docs    *docs    = srv_docs_new(tenant_docs, (int64_t)tenant_doc_mb << 20);
    srv_sched   *sched   = NULL;
    srv_http    *http    = NULL;
    srv_api     *api     = calloc(1, sizeof *api);
    serve_state  st      = {0};
    if (!m) goto out;
    if (!met || !docs || !api || !mid) {
        cli_fail("serve", "out of memory");
        goto out;
    }
    kvf_model_info mi;
    kvf_model_get_info(m, &mi);
    if (ac.attn.mode == KVF_ATTN_SALE && (mi.head_dim % 4 || mi.head_dim > 256)) {
        cli_fail("serve", "--attn sale needs a head dimension that is a multiple of 4 (this model's is %d)", mi.head_dim);
        goto out;
    }
    if (slots_context(m, &sp, ctx_set, kv_budget_set) != 0) goto out;
    ac.model_id = mid;
    ac.n_ctx    = sp.n_ctx;
    if (!(sched = srv_sched_new(m, &sp, met, err, sizeof err))) {
        cli_fail("serve", "%s", err);
        goto out;
    }
    st.sched = sched;
    st.docs  = docs;
    srv_api_init(api, m, &ac, docs, tenants, met);
    api->audit       = srv_sched_audit(sched);
    api->status_fn   = status_cb;
    api->status_user = &st;
    srv_metrics_set_source(met, gauges_cb, &st);
    if (!(http = srv_http_start(&hp, api, sched, met, err, sizeof err))) {
        cli_fail("serve", "%s", err);
        goto out;
    }
    int port = srv_http_port(http);
    if (port_file && write_port_file(port_file, port) != 0) goto out;
    char ratio_txt[64], audit_txt[96] = "";
    if (ac.fp.ratio_auto)
        snprintf(ratio_txt, sizeof ratio_txt, "auto (fidelity %.2f, %.2f..%.2f)", ac.fp.fidelity, ac.fp.ratio_min, ac.fp.ratio_max);
    else
        snprintf(ratio_txt, sizeof ratio_txt, "%.2f", ac.fp.ratio);
    char kvbudget_txt[64] = "";
    if (sp.kv_budget > 0)
        snprintf(kvbudget_txt, sizeof kvbudget_txt, ", at most %lld held at once", (long long)sp.kv_budget);
    if (sp.audit.rate > 0)
        snprintf(audit_txt, sizeof audit_txt, "; fidelity audit of %.3g of fused requests, <= %.0f%% CPU",
                 sp.audit.rate, 100 * sp.audit.cpu);
    fprintf(stderr,
            "kvfuse serve: listening on http://%s%s%s:%d  (model %s; %d slots x %d tokens %s%s; "
            "documents: %s, ratio %s; attention %s; chunk cache: %s; %s%s)\n",
            strchr(hp.host, ':') ? "[" : "", hp.host, strchr(hp.host, ':') ? "]" : "", port, mid,
            sp.n_slots, sp.n_ctx, sp.kv_type == KVF_KV_F16 ? "f16" : "f32", kvbudget_txt,
            kvf_method_name(ac.fp.method), ratio_txt, kvf_attn_name(ac.attn.mode),
            sp.store ? (store.dir && store.redis ? "store (disk + redis)" : store.dir ? "store (disk)" : "store (redis)") : "memory",
            tenants ? "API keys required" : "no API keys", audit_txt);
    int sig = 0;
    sigwait(&sigs, &sig);
    fprintf(stderr, "kvfuse serve: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
out:
    srv_http_quiesce(http);     /* no new connections */
    srv_sched_shutdown(sched);  /* queued and running requests end with 503 */
    srv_http_stop(http);        /* waits for the connection threads */
    srv_sched_free(sched);
    srv_docs_free(docs);
    srv_metrics_free(met);
    srv_tenants_free(tenants);
    free(api);
    free(mid);
    kvf_model_free(m);
    return rc;
}
