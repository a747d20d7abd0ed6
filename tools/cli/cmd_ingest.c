/* cmd_ingest.c - `kvfuse ingest`: split documents into chunks on paragraph boundaries within a
 * token window, precompute each chunk's KV (after the chat template's system prefix, exactly
 * as `kvfuse ask` builds its document segments) and store it in a chunk store, so that later
 * requests over those chunks hit the store. Shows a progress bar with an ETA on stderr. */
#include "cli/cli.h"
#include "cli/rag.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void help(void) {
    printf("usage: kvfuse ingest [-m MODEL] --store DIR [options] FILE...\n"
           "       kvfuse ingest [-m MODEL] --store DIR --musique FILE [--limit N]\n"
           "\n"
           "Splits each FILE into chunks of whole paragraphs (blank-line separated) of at most\n"
           "--chunk-tokens tokens (a longer paragraph is split at sentence ends), computes each\n"
           "chunk's KV cache after the chat template's system prefix, as `kvfuse ask` lays out its\n"
           "documents, and stores it. Chunks already stored are skipped.\n"
           "\n"
           "  -m, --model M          GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
           "      --chunk-tokens N   token window of a chunk (default 512)\n"
           "      --chunk-alone      compute chunks at position 0, without the prefix (as\n"
           "                         ask --chunk-alone)\n"
           "      --system TEXT      system message of the prefix (as ask --system)\n"
           "      --prefix TEXT      instruction after the system message (as ask --prefix)\n"
           "      --musique FILE     ingest every passage of a MuSiQue file (shared/data/\n"
           "                         musique-cacheblend/musique_s.json) with the prompt of\n"
           "                         ask --musique, so ask --musique over them hits the store\n"
           "      --limit N          with --musique: only the first N questions\n"
           "      --manifest FILE    write the chunk texts as a JSON array of strings first:\n"
           "                         ask --docs-json FILE then finds them in the store\n"
           "      --dtype T          chunk KV storage: f16 (default), f32 or q8\n"
           "  -t, --threads N        compute threads\n"
           "      --isa NAME         kernels: auto, ref, avx2, avx512\n"
           "      --precision P      q16 (default), q8, f32\n"
           "  -q, --quiet            no progress bar\n"
           CLI_STORE_HELP,
           KVF_DEFAULT_MODEL_NAME);
}

/* ---- chunks ------------------------------------------------------------------------------- */

typedef struct {
    char **text;
    int    n, cap;
} textlist;

static int tl_add(textlist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        int   nc = l->cap ? 2 * l->cap : 64;
        void *p  = realloc(l->text, sizeof(char *) * (size_t)nc);
        if (!p) return -1;
        l->text = p, l->cap = nc;
    }
    char *t = malloc(n + 1);
    if (!t) return -1;
    memcpy(t, s, n);
    t[n]            = 0;
    l->text[l->n++] = t;
    return 0;
}

static int32_t n_tokens(const kvf_model *m, const char *s, size_t n) {
    int32_t k = kvf_tokenize(m, s, n, NULL, 0, 0);
    return k < 0 && k != INT32_MIN ? -k : k;
}

static int is_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* A paragraph longer than the window: pieces of at most `window` tokens, cut after a sentence
 * end (or else a space) where possible. */
static int split_long(const kvf_model *m, const char *s, size_t n, int window, textlist *out) {
    size_t pos = 0;
    while (pos < n) {
        while (pos < n && is_space(s[pos])) pos++;
        if (pos == n) break;
        if (n_tokens(m, s + pos, n - pos) <= window) return tl_add(out, s + pos, n - pos);
        size_t lo = 1, hi = n - pos; /* largest length that fits */
        while (lo < hi) {
            size_t mid = lo + (hi - lo + 1) / 2;
            if (n_tokens(m, s + pos, mid) <= window) lo = mid;
            else hi = mid - 1;
        }
        size_t cut = lo, best = 0;
        for (size_t i = lo; i > lo / 2; i--) { /* sentence end, else whitespace */
            if (i < n - pos && is_space(s[pos + i]) && strchr(".!?", s[pos + i - 1])) {
                best = i;
                break;
            }
        }
        if (!best)
            for (size_t i = lo; i > lo / 2; i--)
                if (i < n - pos && is_space(s[pos + i])) {
                    best = i;
                    break;
                }
        if (best) cut = best;
        while (cut > 1 && ((unsigned char)s[pos + cut] & 0xC0) == 0x80) cut--; /* UTF-8 boundary */
        if (tl_add(out, s + pos, cut) != 0) return -1;
        pos += cut;
    }
    return 0;
}

/* Paragraphs (runs of lines separated by blank lines), packed greedily into chunks of at most
 * `window` tokens; each chunk is the exact text from its first paragraph to its last. */
static int chunk_file(const kvf_model *m, const char *text, size_t len, int window, textlist *out) {
    size_t(*para)[2] = NULL;
    int    np = 0, cap = 0;
    size_t i  = 0;
    while (i < len) {
        while (i < len && is_space(text[i])) i++;
        if (i == len) break;
        size_t start = i, end = i;
        for (;;) { /* to the end of a line; stop at a blank line */
            while (i < len && text[i] != '\n') i++;
            end = i;
            if (i == len) break;
            size_t j = i + 1;
            while (j < len && text[j] != '\n' && is_space(text[j])) j++;
            if (j >= len || text[j] == '\n') break;
            i = i + 1;
        }
        while (end > start && is_space(text[end - 1])) end--;
        if (np == cap) {
            cap     = cap ? 2 * cap : 64;
            void *p = realloc(para, sizeof *para * (size_t)cap);
            if (!p) return free(para), -1;
            para = p;
        }
        para[np][0] = start, para[np][1] = end;
        np++;
    }
    int rc = 0;
    for (int p = 0; p < np && rc == 0;) {
        size_t s = para[p][0], e = para[p][1];
        if (n_tokens(m, text + s, e - s) > window) {
            rc = split_long(m, text + s, e - s, window, out);
            p++;
            continue;
        }
        int q = p + 1;
        while (q < np && n_tokens(m, text + s, para[q][1] - s) <= window) e = para[q++][1];
        rc = tl_add(out, text + s, e - s);
        p  = q;
    }
    free(para);
    return rc;
}

/* passages of a MuSiQue file, formatted as ask --musique formats them */
static int musique_passages(const char *path, int limit, textlist *out, char *err, size_t el) {
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    if (!txt) return snprintf(err, el, "cannot read '%s'", path), -1;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return snprintf(err, el, "'%s' is not a JSON array of MuSiQue questions", path), -1;
    }
    int    q = 0, rc = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root) {
        if (limit > 0 && q >= limit) break;
        cJSON *ctxs = cJSON_GetObjectItemCaseSensitive(it, "ctxs"), *c;
        if (!cJSON_IsArray(ctxs)) {
            rc = -1;
            snprintf(err, el, "'%s': question %d has no \"ctxs\" array", path, q);
            break;
        }
        cJSON_ArrayForEach(c, ctxs) {
            cJSON      *t = cJSON_GetObjectItemCaseSensitive(c, "title"), *x = cJSON_GetObjectItemCaseSensitive(c, "text");
            const char *title = cJSON_IsString(t) ? t->valuestring : "";
            if (!cJSON_IsString(x)) continue;
            size_t sz = strlen(title) + strlen(x->valuestring) + 8;
            char  *d  = malloc(sz);
            if (!d) { rc = -1; break; }
            snprintf(d, sz, "%s\n\n%s\n\n", title, x->valuestring);
            rc = tl_add(out, d, strlen(d));
            free(d);
            if (rc) break;
        }
        q++;
        if (rc) break;
    }
    cJSON_Delete(root);
    if (rc && !err[0]) snprintf(err, el, "out of memory");
    return rc;
}

static int write_manifest(const char *path, const textlist *l) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fputc('[', f);
    for (int i = 0; i < l->n; i++) {
        fputs(i ? ",\n " : "", f);
        json_str(f, l->text[i], strlen(l->text[i]));
    }
    fputs("]\n", f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return remove(tmp), -1;
    return 0;
}

static void fmt_time(double s, char *out, size_t n) {
    if (s < 0 || s > 1e7) snprintf(out, n, "--");
    else if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(out, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

static void progress(bool tty, int done, int total, int64_t tok_done, int64_t tok_total, double t0,
                     int computed, int skipped, bool final) {
    static int last_decile = -1;
    double     el          = (cli_now_ms() / 1e3) - t0;
    double     frac        = tok_total > 0 ? (double)tok_done / (double)tok_total : 1.0;
    double     eta         = tok_done > 0 ? el / (double)tok_done * (double)(tok_total - tok_done) : -1;
    char       e[32], a[32];
    fmt_time(eta, e, sizeof e);
    fmt_time(el, a, sizeof a);
    if (tty) {
        char bar[31];
        int  k = (int)(frac * 30 + 0.5);
        for (int i = 0; i < 30; i++) bar[i] = i < k ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r[%s] %3.0f%% %d/%d chunks (%d computed, %d stored before) %s elapsed, ETA %s  %s",
                bar, frac * 100, done, total, computed, skipped, a, final ? "--" : e, final ? "\n" : "");
        fflush(stderr);
        return;
    }
    int decile = (int)(frac * 10);
    if (decile != last_decile || final) {
        last_decile = decile;
        fprintf(stderr, "ingest: %3.0f%% %d/%d chunks (%d computed, %d stored before), %s elapsed, ETA %s\n",
                frac * 100, done, total, computed, skipped, a, final ? "--" : e);
    }
}

int cmd_ingest(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},        {"chunk-tokens", required_argument, 0, 'c'},
        {"chunk-alone", no_argument, 0, 'A'},        {"system", required_argument, 0, 'S'},
        {"prefix", required_argument, 0, 'P'},       {"musique", required_argument, 0, 'M'},
        {"limit", required_argument, 0, 'l'},        {"manifest", required_argument, 0, 'F'},
        {"dtype", required_argument, 0, 'T'},        {"threads", required_argument, 0, 't'},
        {"isa", required_argument, 0, 'I'},          {"precision", required_argument, 0, 'X'},
        {"quiet", no_argument, 0, 'q'},              {"help", no_argument, 0, 'h'},
        CLI_STORE_OPTIONS,                           {0, 0, 0, 0}};
    const char      *model = NULL, *system = NULL, *prefix = NULL, *musique = NULL, *manifest = NULL, *isa = NULL;
    long             window = 512, limit = 0, n_threads = 0;
    bool             quiet  = false;
    kvf_precision    prec   = KVF_PREC_Q16;
    kvf_fuse_params  fp     = kvf_fuse_default_params();
    kvf_store_params sp     = kvf_store_default_params();
    sp.mem_budget           = UINT64_MAX; /* not given */
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:t:qh", opts, NULL)) != -1) {
        if (cli_store_opt("ingest", c, optarg, &sp)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'c': window = cli_int("ingest", "--chunk-tokens", optarg, 1, 1 << 20); break;
        case 'A': fp.chunk_alone = true; break;
        case 'S': system = optarg; break;
        case 'P': prefix = optarg; break;
        case 'M': musique = optarg; break;
        case 'l': limit = cli_int("ingest", "--limit", optarg, 1, 1 << 30); break;
        case 'F': manifest = optarg; break;
        case 'T':
            if (!strcmp(optarg, "f16")) fp.dtype = KVF_CHUNK_F16;
            else if (!strcmp(optarg, "f32")) fp.dtype = KVF_CHUNK_F32;
            else if (!strcmp(optarg, "q8")) fp.dtype = KVF_CHUNK_Q8;
            else return cli_fail("ingest", "--dtype expects f16, f32 or q8, got '%s'", optarg);
            break;
        case 't': n_threads = cli_int("ingest", "--threads", optarg, 0, 1024); break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("ingest", optarg); break;
        case 'q': quiet = true; break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (!sp.dir && !sp.redis) return help(), cli_fail("ingest", "give --store DIR and/or --redis HOST:PORT");
    if (!musique == (optind == argc)) return help(), cli_fail("ingest", "give FILE... or --musique FILE");
    if (sp.mem_budget == UINT64_MAX) sp.mem_budget = 64u << 20;
    signal(SIGXFSZ, SIG_IGN); /* a file size limit is then a clear "disk full" error */
    signal(SIGPIPE, SIG_IGN);

    kvf_model *m = cli_load_model(cli_model_path(model), isa, (int)n_threads, prec);
    if (!m) return 1;
    textlist chunks = {0};
    char     err[512] = "";
    int      rc       = 0;
    if (musique) {
        if (musique_passages(musique, (int)limit, &chunks, err, sizeof err) != 0) rc = cli_fail("ingest", "%s", err);
        if (!prefix) prefix = RAG_MUSIQUE_PREFIX;
    } else {
        for (int i = optind; i < argc && rc == 0; i++) {
            size_t len;
            char  *txt = kvf_read_file(argv[i], &len);
            if (!txt) {
                rc = cli_fail("ingest", "cannot read '%s'", argv[i]);
                break;
            }
            int before = chunks.n;
            if (chunk_file(m, txt, len, (int)window, &chunks) != 0) rc = cli_fail("ingest", "out of memory chunking '%s'", argv[i]);
            else if (chunks.n == before && !quiet) fprintf(stderr, "kvfuse ingest: note: '%s' has no text\n", argv[i]);
            free(txt);
        }
    }
    if (rc == 0 && manifest && write_manifest(manifest, &chunks) != 0)
        rc = cli_fail("ingest", "cannot write the manifest '%s'", manifest);
    /* tokenize every chunk the way ask does (prefix, document, a placeholder question) */
    rag_req *reqs    = rc == 0 ? calloc((size_t)(chunks.n ? chunks.n : 1), sizeof(rag_req)) : NULL;
    int64_t  tok_all = 0;
    int32_t  max_T   = 0;
    for (int i = 0; rc == 0 && i < chunks.n; i++) {
        const char *doc = chunks.text[i];
        if (rag_tokenize(m, system, prefix, &doc, 1, "?", &reqs[i], err, sizeof err) != 0) {
            rc = cli_fail("ingest", "chunk %d: %s", i, err);
            break;
        }
        tok_all += reqs[i].segs[1].n;
        if (reqs[i].total > max_T) max_T = reqs[i].total;
    }
    kvf_session     *s     = NULL;
    kvf_chunk_cache *cache = NULL;
    if (rc == 0 && chunks.n) {
        kvf_session_params spp = kvf_session_default_params();
        spp.n_threads          = (int32_t)n_threads;
        spp.n_ctx              = max_T + 1;
        if (kvf_session_new(m, &spp, &s) != KVF_OK || kvf_store_open(m, &sp, &cache) != KVF_OK)
            rc = cli_fail("ingest", "%s", kvf_errmsg());
    }
    bool    tty      = !quiet && isatty(2);
    int     computed = 0, skipped = 0, done = 0;
    int64_t tok_done = 0;
    double  t0 = (cli_now_ms() / 1e3);
    if (rc == 0 && !quiet)
        fprintf(stderr, "ingest: %d chunks, %lld tokens (window %ld, %s, %s)\n", chunks.n, (long long)tok_all,
                window, fp.dtype == KVF_CHUNK_F32 ? "f32" : fp.dtype == KVF_CHUNK_Q8 ? "q8" : "f16",
                fp.chunk_alone ? "alone" : "after the prefix");
    if (rc == 0 && chunks.n) { /* the shared prefix first, so each chunk's misses are its own */
        kvf_segment pq[2] = {reqs[0].segs[0], reqs[0].segs[2]};
        if (kvf_session_precompute(s, cache, pq, 2, &fp, NULL) != KVF_OK) rc = cli_fail("ingest", "the prefix: %s", kvf_errmsg());
    }
    for (int i = 0; rc == 0 && i < chunks.n; i++) {
        kvf_fuse_stats st;
        if (kvf_session_precompute(s, cache, reqs[i].segs, reqs[i].n_segs, &fp, &st) != KVF_OK) {
            rc = cli_fail("ingest", "chunk %d: %s", i, kvf_errmsg());
            break;
        }
        if (st.chunk_misses > 0) computed++; /* the prefix is stored already (above) */
        else skipped++;
        tok_done += reqs[i].segs[1].n;
        done++;
        if (kvf_store_write_status(cache) != KVF_OK) {
            rc = cli_fail("ingest", "storing chunks failed: %s", kvf_errmsg());
            break;
        }
        if (!quiet) progress(tty, done, chunks.n, tok_done, tok_all, t0, computed, skipped, false);
    }
    if (cache) {
        kvf_status fs = kvf_store_flush(cache);
        if (fs != KVF_OK && rc == 0) rc = cli_fail("ingest", "storing chunks failed: %s", kvf_errmsg());
        if (!quiet) {
            if (chunks.n) progress(tty, done, chunks.n, tok_done, tok_all, t0, computed, skipped, true);
            fprintf(stderr, "ingest: %d chunks (%lld tokens): %d computed, %d already stored; %.1f s\n", done,
                    (long long)tok_done, computed, skipped, (cli_now_ms() / 1e3) - t0);
            cli_store_print_stats(stderr, cache, false);
        }
    }
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    for (int i = 0; reqs && i < chunks.n; i++) rag_free(&reqs[i]);
    free(reqs);
    for (int i = 0; i < chunks.n; i++) free(chunks.text[i]);
    free(chunks.text);
    kvf_model_free(m);
    return rc;
}
