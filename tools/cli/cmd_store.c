/* cmd_store.c - `kvfuse store stats|ls|verify|gc|rm`: inspect and maintain a chunk store, and
 * the store options (--store, --redis, budgets) that ask and ingest share (cli.h). */
#include "cli/cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- shared store options ----------------------------------------------------------------- */

uint64_t cli_size(const char *cmd, const char *opt, const char *val) {
    char *end;
    errno                 = 0;
    double             v  = strtod(val, &end);
    unsigned long long mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1ull << 10, end++; break;
    case 'm': case 'M': mul = 1ull << 20, end++; break;
    case 'g': case 'G': mul = 1ull << 30, end++; break;
    case 't': case 'T': mul = 1ull << 40, end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B') end += *end == 'i' ? 1 : 0;
    if (*end == 'B') end++;
    if (errno || end == val || *end || !(v >= 0) || v * (double)mul > 1.8e19) {
        cli_fail(cmd, "%s expects a size such as 4096, 512M or 16G, got '%s'", opt, val);
        exit(2);
    }
    return (uint64_t)(v * (double)mul);
}

int cli_store_opt(const char *cmd, int c, const char *arg, kvf_store_params *p) {
    switch (c - CLI_STORE_OPT_BASE) {
    case 0: p->dir = arg; return 1;
    case 1: p->redis = arg; return 1;
    case 2: p->map_size = cli_size(cmd, "--map-size", arg); return 1;
    case 3: p->disk_budget = cli_size(cmd, "--disk-budget", arg); return 1;
    case 4: p->mem_budget = cli_size(cmd, "--mem-budget", arg); return 1;
    case 5:
        if (!strcmp(arg, "none")) p->compress = KVF_STORE_COMPRESS_NONE;
        else if (!strcmp(arg, "zstd")) p->compress = KVF_STORE_COMPRESS_ZSTD;
        else {
            cli_fail(cmd, "--compress expects none or zstd, got '%s'", arg);
            exit(2);
        }
        return 1;
    case 6: p->redis_ttl_s = (int32_t)cli_int(cmd, "--redis-ttl", arg, 0, 1 << 30); return 1;
    case 7: p->redis_timeout_ms = (int32_t)cli_int(cmd, "--redis-timeout", arg, 1, 600000); return 1;
    default: return 0;
    }
}

static void human(double b, char *out, size_t n) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int         i   = 0;
    while (b >= 1024 && i < 4) b /= 1024, i++;
    snprintf(out, n, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

/* totals: the persisted counters of every process (tiers with any), else this handle's */
void cli_store_print_stats(FILE *f, kvf_chunk_cache *c, bool totals) {
    kvf_store_stats st;
    if (kvf_store_get_stats(c, &st) != KVF_OK) {
        fprintf(f, "store statistics unavailable: %s\n", kvf_errmsg());
        return;
    }
    if (totals)
        fprintf(f, "%-7s %9s %11s %9s %9s %7s %8s\n", "tier", "entries", "bytes", "hits", "misses", "bad", "evicted");
    else
        fprintf(f, "%-7s %9s %11s %9s %9s %7s %8s %8s %8s\n", "tier", "entries", "bytes", "hits", "misses",
                "bad", "evicted", "errors", "writes");
    for (int t = 0; t < KVF_TIER_COUNT; t++) {
        const kvf_store_tier_stats *s = &st.tier[t];
        bool used = totals && (s->total_hits > 0 || s->total_misses > 0 || s->total_bad_entries > 0);
        if (!s->enabled && !used) continue;
        char b[32] = "-", e[32] = "-";
        if (s->enabled && s->bytes >= 0) human((double)s->bytes, b, sizeof b);
        if (s->enabled && s->entries >= 0) snprintf(e, sizeof e, "%lld", (long long)s->entries);
        if (totals)
            fprintf(f, "%-7s %9s %11s %9lld %9lld %7lld %8lld\n", kvf_store_tier_name((kvf_store_tier)t), e, b,
                    (long long)(s->total_hits > 0 ? s->total_hits : 0), (long long)(s->total_misses > 0 ? s->total_misses : 0),
                    (long long)(s->total_bad_entries > 0 ? s->total_bad_entries : s->bad_entries),
                    (long long)(s->total_evictions > 0 ? s->total_evictions : s->evictions));
        else
            fprintf(f, "%-7s %9s %11s %9lld %9lld %7lld %8lld %8lld %8lld\n", kvf_store_tier_name((kvf_store_tier)t), e, b,
                    (long long)s->hits, (long long)s->misses, (long long)s->bad_entries, (long long)s->evictions,
                    (long long)s->errors, (long long)s->writes);
    }
}

void cli_store_json_stats(FILE *f, const kvf_store_stats *st) {
    fprintf(f, "{");
    int first = 1;
    for (int t = 0; t < KVF_TIER_COUNT; t++) {
        const kvf_store_tier_stats *s = &st->tier[t];
        if (!s->enabled) continue;
        fprintf(f, "%s\"%s\": {\"chunk_hits\": %lld, \"chunk_misses\": %lld, \"bad_entries\": %lld, "
                   "\"errors\": %lld, \"writes\": %lld, \"read_ms\": %.3f, \"read_bytes\": %lld, "
                   "\"entries\": %lld, \"bytes\": %lld}",
                first ? "" : ", ", kvf_store_tier_name((kvf_store_tier)t), (long long)s->hits,
                (long long)s->misses, (long long)s->bad_entries, (long long)s->errors, (long long)s->writes,
                s->read_ms, (long long)s->read_bytes, (long long)s->entries, (long long)s->bytes);
        first = 0;
    }
    fprintf(f, "}");
}

/* ---- kvfuse store ------------------------------------------------------------------------- */

static void help(void) {
    printf("usage: kvfuse store <command> --store DIR [options]\n"
           "\n"
           "Inspects and maintains a chunk store (see `kvfuse ingest` and `kvfuse ask --store`).\n"
           "\n"
           "commands:\n"
           "  stats              entries, bytes, hits and misses per tier (hits and misses of every\n"
           "                     process that used the store), file and map size, budget\n"
           "  ls                 one line per entry: key, model, dtype, tokens, context, layers,\n"
           "                     bytes, last access\n"
           "  verify             read every entry and check its checksums, key and index records;\n"
           "                     exit status 1 if any is bad (--repair removes them)\n"
           "  gc                 evict least recently used entries down to --target (default: the\n"
           "                     --disk-budget) and repair the index and counters\n"
           "  rm KEY...          remove entries from every tier (32 hex digits, or a unique\n"
           "                     prefix of at least 8); --all removes everything\n"
           "\n"
           "options:\n"
           "      --json             stats / ls / verify as JSON\n"
           "      --repair           verify: remove bad entries, rebuild the index\n"
           "      --target SIZE      gc: entry bytes to keep\n"
           "      --all              rm: every entry\n"
           "  -q, --quiet            fewer messages\n"
           CLI_STORE_HELP);
}

typedef struct ls_ctx {
    bool       json;
    int        n;
    int64_t    now;
    /* rm by prefix */
    const char *prefix;
    uint8_t    (*found)[16];
    int        n_found, cap;
} ls_ctx;

static void hex16(const uint8_t *b, char *out) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) out[2 * i] = hx[b[i] >> 4], out[2 * i + 1] = hx[b[i] & 15];
    out[32] = 0;
}

static int ls_visit(const kvf_store_entry *e, const char *problem, void *user) {
    ls_ctx *c = user;
    char    key[33], model[33];
    hex16(e->key, key);
    hex16(e->model_id, model);
    double age = e->last_access > 0 ? (double)(c->now - e->last_access) / 1e9 : -1;
    if (c->json) {
        printf("%s{\"key\": \"%s\", \"ok\": %s, \"model\": \"%s\", \"dtype\": \"%s\", \"tokens\": %d, "
               "\"ctx\": %d, \"layers\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"bytes\": %llu, "
               "\"kv_bytes\": %llu, \"compressed\": %s, \"age_s\": %.0f",
               c->n ? ",\n " : "[", key, problem ? "false" : "true", model,
               e->dtype == KVF_CHUNK_F32 ? "f32" : e->dtype == KVF_CHUNK_Q8 ? "q8" : "f16", e->n_tokens,
               e->n_ctx, e->n_layer, e->n_head_kv, e->head_dim, (unsigned long long)e->bytes,
               (unsigned long long)e->kv_bytes, e->compress ? "true" : "false", age);
        if (problem) printf(", \"problem\": "), json_str(stdout, problem, strlen(problem));
        printf("}");
    } else {
        char b[32];
        human((double)e->bytes, b, sizeof b);
        if (problem)
            printf("%s  BAD: %s\n", key, problem);
        else
            printf("%s  model %.8s  %-3s  %6d tok  ctx %4d  %3d layers  %10s%s  %s%.0fs ago\n", key, model,
                   e->dtype == KVF_CHUNK_F32 ? "f32" : e->dtype == KVF_CHUNK_Q8 ? "q8" : "f16", e->n_tokens,
                   e->n_ctx, e->n_layer, b, e->compress ? " zstd" : "", age < 0 ? "?" : "", age < 0 ? 0 : age);
    }
    c->n++;
    return 0;
}

static int bad_visit(const kvf_store_entry *e, const char *problem, void *user) {
    ls_ctx *c = user;
    char    key[33];
    hex16(e->key, key);
    if (c->json) {
        printf("%s{\"key\": \"%s\", \"problem\": ", c->n ? ", " : "", key);
        json_str(stdout, problem, strlen(problem));
        printf("}");
    } else
        fprintf(stderr, "bad entry %s: %s\n", key, problem);
    c->n++;
    return 0;
}

static int add_found(ls_ctx *c, const uint8_t *key) {
    if (c->n_found == c->cap) {
        int   nc = c->cap ? 2 * c->cap : 64;
        void *p  = realloc(c->found, (size_t)nc * 16);
        if (!p) return -1;
        c->found = p, c->cap = nc;
    }
    memcpy(c->found[c->n_found++], key, 16);
    return 0;
}

static int rm_visit(const kvf_store_entry *e, const char *problem, void *user) {
    ls_ctx *c = user;
    char    key[33];
    (void)problem;
    hex16(e->key, key);
    if (c->prefix && strncmp(key, c->prefix, strlen(c->prefix)) != 0) return 0;
    return add_found(c, e->key) != 0;
}

static int parse_hex(const char *s, uint8_t *out, size_t *nbytes) {
    size_t n = strlen(s);
    if (n < 8 || n > 32 || n % 2) return -1;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789abcdefABCDEF", s[i])) return -1;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        sscanf(s + 2 * i, "%2x", &v);
        out[i] = (uint8_t)v;
    }
    *nbytes = n / 2;
    return 0;
}

int cmd_store(int argc, char **argv) {
    static const struct option opts[] = {
        {"json", no_argument, 0, 'J'},    {"repair", no_argument, 0, 'R'},
        {"target", required_argument, 0, 'T'}, {"all", no_argument, 0, 'A'},
        {"quiet", no_argument, 0, 'q'},   {"help", no_argument, 0, 'h'},
        CLI_STORE_OPTIONS,                {0, 0, 0, 0}};
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        help();
        return argc < 2 ? 2 : 0;
    }
    const char      *sub  = argv[1];
    kvf_store_params sp   = kvf_store_default_params();
    bool             json = false, repair = false, all = false, quiet = false;
    uint64_t         target = 0;
    int              c;
    optind = 2;
    while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
        if (cli_store_opt("store", c, optarg, &sp)) continue;
        switch (c) {
        case 'J': json = true; break;
        case 'R': repair = true; break;
        case 'T': target = cli_size("store", "--target", optarg); break;
        case 'A': all = true; break;
        case 'q': quiet = true; break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    bool is_rm = !strcmp(sub, "rm");
    if (!is_rm && optind < argc) return cli_fail("store", "unexpected argument '%s'", argv[optind]);
    if (strcmp(sub, "stats") && strcmp(sub, "ls") && strcmp(sub, "verify") && strcmp(sub, "gc") && !is_rm)
        return cli_fail("store", "unknown command '%s' (stats, ls, verify, gc, rm)", sub);
    if (!sp.dir && !(sp.redis && (is_rm || !strcmp(sub, "stats"))))
        return cli_fail("store", "%s needs --store DIR", sub);
    if (sp.dir) { /* maintenance never creates a store */
        char path[4096];
        snprintf(path, sizeof path, "%s/data.mdb", sp.dir);
        FILE *f = fopen(path, "rb");
        if (!f) return cli_fail("store", "no chunk store in '%s' (%s)", sp.dir, strerror(errno));
        fclose(f);
    }
    if (quiet) kvf_set_log_level(0);
    kvf_chunk_cache *st;
    if (kvf_store_open(NULL, &sp, &st) != KVF_OK) return cli_fail("store", "%s", kvf_errmsg());
    int    rc  = 0;
    ls_ctx ctx = {.json = json, .now = (int64_t)time(NULL) * 1000000000ll};
    if (!strcmp(sub, "stats")) {
        if (sp.redis && kvf_store_count_redis(st) != KVF_OK)
            fprintf(stderr, "kvfuse store: note: cannot count the Redis tier: %s\n", kvf_errmsg());
        kvf_store_stats s;
        if (kvf_store_get_stats(st, &s) != KVF_OK) rc = cli_fail("store", "%s", kvf_errmsg());
        else if (json) {
            printf("{\"dir\": ");
            json_str(stdout, sp.dir ? sp.dir : "", sp.dir ? strlen(sp.dir) : 0);
            printf(", \"map_size\": %llu, \"file_bytes\": %llu, \"disk_budget\": %llu, \"tiers\": {",
                   (unsigned long long)s.map_size, (unsigned long long)s.file_bytes, (unsigned long long)s.disk_budget);
            int first = 1;
            for (int t = 0; t < KVF_TIER_COUNT; t++) {
                const kvf_store_tier_stats *x = &s.tier[t];
                if (!x->enabled && !(x->total_hits > 0 || x->total_misses > 0)) continue;
                printf("%s\"%s\": {\"entries\": %lld, \"bytes\": %lld, \"hits\": %lld, \"misses\": %lld, "
                       "\"bad_entries\": %lld, \"evictions\": %lld}",
                       first ? "" : ", ", kvf_store_tier_name((kvf_store_tier)t), (long long)x->entries,
                       (long long)x->bytes, (long long)x->total_hits, (long long)x->total_misses,
                       (long long)(x->total_bad_entries >= 0 ? x->total_bad_entries : x->bad_entries),
                       (long long)(x->total_evictions >= 0 ? x->total_evictions : x->evictions));
                first = 0;
            }
            printf("}}\n");
        } else {
            char a[32], b[32], d[32] = "none";
            human((double)s.file_bytes, a, sizeof a);
            human((double)s.map_size, b, sizeof b);
            if (s.disk_budget) human((double)s.disk_budget, d, sizeof d);
            if (sp.dir) printf("store %s: file %s, LMDB map %s, disk budget %s\n", sp.dir, a, b, d);
            printf("hits and misses: every process's lookups (memory: per process, summed)\n");
            cli_store_print_stats(stdout, st, true);
        }
    } else if (!strcmp(sub, "ls")) {
        if (kvf_store_list(st, ls_visit, &ctx) != KVF_OK) rc = cli_fail("store", "%s", kvf_errmsg());
        if (json) printf("%s]\n", ctx.n ? "" : "[");
        else if (!quiet) fprintf(stderr, "%d entries\n", ctx.n);
    } else if (!strcmp(sub, "verify")) {
        kvf_store_verify_report rep;
        if (json) printf("{\"bad\": [");
        kvf_status vs = kvf_store_verify(st, repair, bad_visit, &ctx, &rep);
        if (vs != KVF_OK && vs != KVF_E_CORRUPT) {
            if (json) printf("]}\n");
            rc = cli_fail("store", "%s", kvf_errmsg());
        } else {
            char b[32];
            human((double)rep.bytes, b, sizeof b);
            if (json)
                printf("], \"checked\": %lld, \"bad_entries\": %lld, \"removed\": %lld, \"bytes\": %llu, \"index_ok\": %s}\n",
                       (long long)rep.checked, (long long)rep.bad, (long long)rep.removed,
                       (unsigned long long)rep.bytes, rep.index_ok ? "true" : "false");
            else
                printf("verified %lld entries (%s): %lld bad%s; index %s\n", (long long)rep.checked, b,
                       (long long)rep.bad, repair && rep.bad ? " (removed)" : "",
                       rep.index_ok ? "consistent" : repair ? "repaired" : "inconsistent (run gc or verify --repair)");
            rc = repair ? rep.removed != rep.bad || !rep.index_ok : rep.bad || !rep.index_ok;
        }
    } else if (!strcmp(sub, "gc")) {
        int64_t  ev;
        uint64_t fr;
        if (kvf_store_gc(st, target, &ev, &fr) != KVF_OK) rc = cli_fail("store", "%s", kvf_errmsg());
        else {
            char b[32];
            human((double)fr, b, sizeof b);
            printf("evicted %lld entries (%s)\n", (long long)ev, b);
        }
    } else { /* rm */
        if (all == (optind < argc)) {
            kvf_chunk_cache_free(st);
            return cli_fail("store", "rm takes KEY... or --all");
        }
        int removed = 0;
        if (all && sp.dir) {
            if (kvf_store_list(st, rm_visit, &ctx) != KVF_OK) rc = cli_fail("store", "%s", kvf_errmsg());
        } else if (all) {
            rc = cli_fail("store", "rm --all needs --store DIR (Redis keys are removed by key)");
        }
        for (int i = optind; i < argc && rc == 0; i++) {
            uint8_t k[16];
            size_t  nb;
            if (parse_hex(argv[i], k, &nb) != 0) {
                rc = cli_fail("store", "'%s' is not a key (8 to 32 hex digits)", argv[i]);
                break;
            }
            if (nb == 16) {
                if (add_found(&ctx, k) != 0) rc = cli_fail("store", "out of memory");
                continue;
            }
            if (!sp.dir) {
                rc = cli_fail("store", "a key prefix needs --store DIR; give all 32 hex digits");
                break;
            }
            int  before = ctx.n_found;
            char lower[33];
            snprintf(lower, sizeof lower, "%s", argv[i]);
            for (char *q = lower; *q; q++) *q = (char)(*q >= 'A' && *q <= 'F' ? *q + 32 : *q);
            ctx.prefix = lower;
            kvf_store_list(st, rm_visit, &ctx);
            ctx.prefix = NULL;
            if (ctx.n_found - before != 1) {
                rc = cli_fail("store", "key prefix '%s' matches %d entries", argv[i], ctx.n_found - before);
                break;
            }
        }
        for (int i = 0; i < ctx.n_found && rc == 0; i++) {
            char       key[33];
            kvf_status r = kvf_store_remove(st, ctx.found[i]);
            hex16(ctx.found[i], key);
            if (r == KVF_OK) removed++;
            else if (r == KVF_E_NOTFOUND) fprintf(stderr, "kvfuse store: %s: not found\n", key);
            else rc = cli_fail("store", "%s: %s", key, kvf_errmsg());
        }
        if (!quiet) printf("removed %d entries\n", removed);
        free(ctx.found);
    }
    kvf_chunk_cache_free(st);
    return rc;
}
