/* cmd_eval.c - `kvfuse eval`: the evaluation harness. Runs every requested fusion method (and
 * every recompute ratio of the selective ones) on the examples of a benchmark, all methods of an
 * example on the same token ids, and records per run the task score, the fidelity to `full`
 * (answer agreement, first-token KL, teacher-forced top-1 agreement), TTFT and its parts, TPOT
 * and the recompute cost. Results are appended to DIR/results.jsonl one line per run (flushed
 * and synced), so an interrupted evaluation resumes where it stopped; DIR/summary.json,
 * summary.md, report.md, report.html and SVG plots are rebuilt from that file after every
 * example. Datasets: tools/eval_data.c; metrics: tools/eval_metrics.c; reports:
 * tools/eval_report.c. */
#include "cli/cli.h"
#include "eval/eval_data.h"
#include "eval/eval_metrics.h"
#include "eval/eval_report.h"
#include "cli/rag.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LIST    64
#define CONFIG_VERS 1

static void help(void) {
    printf(
        "usage: kvfuse eval [-m MODEL] --dataset NAME --data PATH --out DIR [options]\n"
        "       kvfuse eval --report-only --out DIR\n"
        "\n"
        "Evaluates KV cache fusion methods on a benchmark: task score, fidelity to full prefill\n"
        "and latency per method (and per recompute ratio), every method of an example on the\n"
        "same token ids. One JSON line per run is appended to DIR/results.jsonl; a rerun skips\n"
        "the examples whose requested runs are all there. DIR/summary.json, summary.md,\n"
        "report.md, report.html and the SVG plots are rebuilt after every example.\n"
        "\n"
        "  -m, --model M         GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
        "      --dataset NAME    musique          CacheBlend's musique_s.json, its prompt; token F1\n"
        "                        cacheblend-demo  CacheBlend's demo prompts (dir of N.json): no\n"
        "                                         gold, fidelity and latency only\n"
        "                        needle           Paul Graham essays (--data DIR) cut into\n"
        "                                         --chunk-tokens documents, a magic number at\n"
        "                                         --depths x --lengths; substring match\n"
        "                        kv-retrieval     kv-retrieval-75_keys.jsonl.gz, --kv-pairs pairs\n"
        "                                         per document; substring match of the value\n"
        "                        ruler-niah       RULER needles from the word lists (--data DIR);\n"
        "                                         tasks single, multikey, multivalue;\n"
        "                                         string_match_all\n"
        "      --data PATH       the dataset's file or directory\n"
        "      --out DIR         results directory (created; existing results are kept)\n"
        "      --methods LIST    comma-separated: full,prefix,reuse,epic,cacheblend,a3,kvshare,\n"
        "                        prophet,focus (default: all), and oracle (a diagnostic, slower\n"
        "                        than full: the rows whose reused KV deviates most from full's;\n"
        "                        not in the default). full always runs first (it is the\n"
        "                        fidelity reference)\n"
        "      --ratios LIST     recompute ratios of the selective methods (cacheblend, a3,\n"
        "                        kvshare, prophet, focus, oracle; default 0.15); \"auto\" picks\n"
        "                        the ratio\n"
        "                        per request (--fidelity, --ratio-min, --ratio-max)\n"
        "      --fidelity F      auto: share of the selection score's mass to recompute (0.95)\n"
        "      --ratio-min R     auto: least ratio (0.05); --ratio-max R: largest (0.5)\n"
        "      --limit N         the first N examples only (default: all)\n"
        "      --offset N        skip the first N examples (with --limit: examples N..N+limit-1)\n"
        "  -n, --n-predict N     answer tokens at most, greedy (default 32)\n"
        "      --epic-k K        epic: tokens recomputed per document (default 16)\n"
        "      --score-layer L   a3/cacheblend selection layer (default 1)\n"
        "      --evict E         none (default), snapkv, streaming; --budget N tokens (1024)\n"
        "      --dtype T         chunk KV storage: f16 (default), f32, q8\n"
        "      --cache-mb N      memory chunk cache budget in MiB (default 2048)\n"
        "  needle / ruler-niah:\n"
        "      --lengths LIST    haystack tokens (needle: 1024,2048,4096,8192; ruler: 4096); each\n"
        "                        is rounded down to whole chunks and clamped to the model context\n"
        "      --depths LIST     needle depths in [0,1] (default 0,0.1,...,1)\n"
        "      --chunk-tokens N  tokens per haystack document (default 512)\n"
        "      --seed N          needle values, keys and depths (default 42)\n"
        "      --haystack DIR    ruler-niah: the essays for multikey/multivalue\n"
        "      --tasks LIST      ruler-niah: single,multikey,multivalue (default all)\n"
        "      --ruler-n N       ruler-niah: examples per task and length (default 25)\n"
        "  kv-retrieval:\n"
        "      --kv-pairs N      key-value pairs per document (default 10)\n"
        "\n"
        "  -t, --threads N       compute threads (default: all CPUs)\n"
        "      --isa NAME        kernels: auto, ref, avx2, avx512\n"
        "      --precision P     q16 (default), q8, f32\n"
        "      --report-only     rebuild summary and report from DIR/results.jsonl (no model)\n"
        "      --no-progress     no progress bar (one line per example instead)\n"
        "      --show            print the selected examples (segments, token counts, gold) as\n"
        "                        JSON lines on stdout and exit: nothing is run or written\n"
        "\n"
        "Progress and the ETA go to stderr. The settings that change results (model, dataset,\n"
        "n-predict, epic-k, evict, dtype, seed, ...) are kept in DIR/config.json; a rerun with\n"
        "different ones is refused.\n"
        "\n"
        "Sparse attention (every method's prefill and recompute, `full` included: compare with\n"
        "a dense run in another --out directory; the documents' chunks stay dense):\n"
        CLI_ATTN_HELP,
        KVF_DEFAULT_MODEL_NAME);
}

/* ---- option lists -------------------------------------------------------------------- */

static int split_list(const char *val, char **out, int max, char **buf) {
    *buf = strdup(val);
    if (!*buf) return -1;
    int n = 0;
    for (char *save = NULL, *t = strtok_r(*buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == max) return -1;
        out[n++] = t;
    }
    return n;
}

static int parse_doubles(const char *opt, const char *val, double lo, double hi, double *out) {
    char *items[MAX_LIST], *buf;
    int   n = split_list(val, items, MAX_LIST, &buf);
    if (n <= 0) {
        free(buf);
        cli_fail("eval", "%s expects a comma-separated list of 1..%d numbers", opt, MAX_LIST);
        exit(2);
    }
    for (int i = 0; i < n; i++) out[i] = cli_float("eval", opt, items[i], lo, hi);
    free(buf);
    return n;
}

/* --ratios: numbers in (0, 1] or "auto" (EVAL_RATIO_AUTO) */
static int parse_ratios(const char *val, double *out) {
    char *items[MAX_LIST], *buf;
    int   n = split_list(val, items, MAX_LIST, &buf);
    if (n <= 0) {
        free(buf);
        cli_fail("eval", "--ratios expects a comma-separated list of 1..%d ratios or auto", MAX_LIST);
        exit(2);
    }
    for (int i = 0; i < n; i++) {
        if (!strcmp(items[i], "auto")) {
            out[i] = EVAL_RATIO_AUTO;
            continue;
        }
        out[i] = cli_float("eval", "--ratios", items[i], 0, 1);
        if (!(out[i] > 0)) {
            free(buf);
            cli_fail("eval", "--ratios must be > 0 (or auto)");
            exit(2);
        }
    }
    free(buf);
    return n;
}

static int parse_ints(const char *opt, const char *val, long lo, long hi, int *out) {
    char *items[MAX_LIST], *buf;
    int   n = split_list(val, items, MAX_LIST, &buf);
    if (n <= 0) {
        free(buf);
        cli_fail("eval", "%s expects a comma-separated list of 1..%d integers", opt, MAX_LIST);
        exit(2);
    }
    for (int i = 0; i < n; i++) out[i] = (int)cli_int("eval", opt, items[i], lo, hi);
    free(buf);
    return n;
}

/* ---- the tokenizer callback of the needle loaders ------------------------------------ */

static int chunk_text(void *ctx, const char *text, int ct, int nc, char **out, char *err, size_t el) {
    const kvf_model *m    = ctx;
    size_t           len  = strlen(text);
    int32_t          need = kvf_tokenize(m, text, len, NULL, 0, 0);
    if (need == INT32_MIN) {
        snprintf(err, el, "tokenization failed: %s", kvf_errmsg());
        return -1;
    }
    if (need < 0) need = -need;
    if (need < (int64_t)ct * nc) return 1;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(need > 0 ? need : 1));
    if (!ids || kvf_tokenize(m, text, len, ids, need, 0) != need) {
        free(ids);
        snprintf(err, el, "tokenization failed: %s", kvf_errmsg());
        return -1;
    }
    for (int c = 0; c < nc; c++) {
        int32_t k = kvf_detokenize(m, ids + (int64_t)c * ct, ct, NULL, 0, false);
        if (k == INT32_MIN) {
            snprintf(err, el, "detokenization failed: %s", kvf_errmsg());
            free(ids);
            return -1;
        }
        if (k < 0) k = -k;
        out[c] = malloc((size_t)k + 1);
        if (!out[c] || kvf_detokenize(m, ids + (int64_t)c * ct, ct, out[c], k + 1, false) < 0) {
            snprintf(err, el, "detokenization failed");
            free(ids);
            return -1;
        }
        out[c][k] = 0;
    }
    free(ids);
    return 0;
}

/* ---- runs ---------------------------------------------------------------------------- */

typedef struct {
    int    method;
    double ratio; /* -1: none */
} spec;

static int has_ratio(int method) {
    return kvf_method_has_ratio((kvf_method)method);
}

static void spec_label(const spec *s, char *buf, size_t n) {
    char rk[32];
    eval_ratio_key(s->ratio, rk, sizeof rk);
    if (s->ratio >= 0) snprintf(buf, n, "%s@%s", kvf_method_name((kvf_method)s->method), rk);
    else snprintf(buf, n, "%s", kvf_method_name((kvf_method)s->method));
}

static int rec_exists(const eval_recs *rs, const char *id, const spec *s) {
    char want[32], have[32];
    eval_ratio_key(s->ratio, want, sizeof want);
    const char *mname = kvf_method_name((kvf_method)s->method);
    for (int i = 0; i < rs->n; i++) {
        if (strcmp(rs->r[i].id, id) || strcmp(rs->r[i].method, mname)) continue;
        eval_ratio_key(rs->r[i].ratio, have, sizeof have);
        if (!strcmp(want, have)) return 1;
    }
    return 0;
}

/* a greedy answer: tokens (with the terminating end-of-generation token, if any) and timing */
typedef struct {
    int32_t *tok;
    int      n, eog, steps;
    double   dec_ms;
    char    *text;
} gen_out;

static void gen_free(gen_out *g) {
    free(g->tok), free(g->text);
    memset(g, 0, sizeof *g);
}

static int greedy(kvf_session *s, const kvf_model *m, int n_predict, gen_out *g) {
    int32_t nv = kvf_model_n_vocab(m);
    memset(g, 0, sizeof *g);
    g->tok = malloc(sizeof(int32_t) * (size_t)(n_predict + 1));
    if (!g->tok) return -1;
    int32_t tok = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), nv);
    double  t0  = cli_now_ms();
    for (;;) {
        g->tok[g->n++] = tok;
        if (kvf_token_is_eog(m, tok)) {
            g->eog = 1;
            break;
        }
        if (g->n == n_predict) break;
        if (kvf_session_eval(s, &tok, 1, 0) != KVF_OK) return -1;
        g->steps++;
        tok = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), nv);
    }
    g->dec_ms   = cli_now_ms() - t0;
    int     nt  = g->n - g->eog;
    int32_t len = nt ? kvf_detokenize(m, g->tok, nt, NULL, 0, false) : 0;
    if (len == INT32_MIN) return -1;
    if (len < 0) len = -len;
    g->text = malloc((size_t)len + 1);
    if (!g->text) return -1;
    g->text[0] = 0;
    if (nt && kvf_detokenize(m, g->tok, nt, g->text, len + 1, false) < 0) return -1;
    g->text[len] = 0;
    return 0;
}

/* Teacher-forced top-1 agreement of a method with the reference answer: at position p the
 * method's argmax after the prompt and ref[0..p-1] is compared with ref[p] (p = 0 uses the
 * fused prompt's logits). The greedy run already gave the argmax of every position up to the
 * first disagreement; the rest is evaluated by feeding the reference tokens. */
static int teacher_force(kvf_session *s, kvf_chunk_cache *cache, const rag_req *req,
                         const kvf_fuse_params *fp, int evicted, int32_t n0, const gen_out *ref,
                         const gen_out *mine, int32_t nv, int *n_match, int *n_pos) {
    int nt = ref->n, j = 0;
    while (j < nt && j < mine->n && mine->tok[j] == ref->tok[j]) j++;
    *n_pos   = nt;
    *n_match = j;
    if (j == nt) return 0;
    int known = j + 1 <= mine->n ? j + 1 : mine->n; /* positions whose argmax the greedy run gave */
    if (known < 1) known = 1;
    if (known >= nt) return 0;
    /* the state after the prompt and ref[0 .. known-2] (which the method also produced) */
    if (evicted) {
        if (kvf_session_fuse(s, cache, req->segs, req->n_segs, fp, NULL) != KVF_OK) return -1;
        for (int p = 0; p < known - 1; p++)
            if (kvf_session_eval(s, &ref->tok[p], 1, 0) != KVF_OK) return -1;
    } else if (kvf_session_truncate(s, n0 + known - 1) != KVF_OK) {
        return -1;
    }
    for (int p = known; p < nt; p++) {
        if (kvf_session_eval(s, &ref->tok[p - 1], 1, 0) != KVF_OK) return -1;
        if (kvf_sampler_sample(NULL, kvf_session_logits(s, -1), nv) == ref->tok[p]) (*n_match)++;
    }
    return 0;
}

/* ---- output -------------------------------------------------------------------------- */

static void jnum(FILE *f, const char *key, double v) {
    if (isfinite(v)) fprintf(f, ", \"%s\": %.6g", key, v);
    else fprintf(f, ", \"%s\": null", key);
}

static void jstr(FILE *f, const char *key, const char *v) {
    fprintf(f, ", \"%s\": ", key);
    if (v) json_str(f, v, strlen(v));
    else fputs("null", f);
}

typedef struct {
    int fd;
} results_file;

/* append one line (a whole record) and sync it */
static int append_line(results_file *rf, const char *line, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(rf->fd, line + off, n - off);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        off += (size_t)k;
    }
    return fdatasync(rf->fd) == 0 || errno == EINVAL ? 0 : -1;
}

typedef struct {
    const eval_example *ex;
    const char         *dataset;
    const spec         *sp;
    const kvf_fuse_stats *st;
    const kvf_fuse_params *fp;
    const gen_out      *g, *ref;
    double              score, em, fid_em, fid_f1, kl, compute_frac, precompute_ms;
    int                 top1, tf_match, tf_pos, n_docs, precompute_misses, threads;
} run_out;

static char *format_record(const run_out *o) {
    char  *buf = NULL;
    size_t len = 0;
    FILE  *f   = open_memstream(&buf, &len);
    if (!f) return NULL;
    const eval_example *e = o->ex;
    fprintf(f, "{\"v\": 1");
    jstr(f, "dataset", o->dataset);
    jstr(f, "id", e->id);
    fprintf(f, ", \"index\": %d", e->index);
    jstr(f, "method", kvf_method_name((kvf_method)o->sp->method));
    if (o->sp->ratio == EVAL_RATIO_AUTO) {
        fprintf(f, ", \"ratio\": \"auto\"");
        jnum(f, "fidelity", o->fp->fidelity);
        jnum(f, "ratio_used", o->st->ratio_used);
        jnum(f, "score_mass", o->st->score_mass);
    } else {
        jnum(f, "ratio", o->sp->ratio >= 0 ? o->sp->ratio : NAN);
    }
    if (o->sp->method == KVF_METHOD_EPIC) fprintf(f, ", \"epic_k\": %d", o->fp->epic_k);
    if (has_ratio(o->sp->method)) fprintf(f, ", \"score_layer\": %d", o->fp->score_layer);
    if (e->task) jstr(f, "task", e->task);
    if (e->length >= 0) fprintf(f, ", \"length\": %d", e->length);
    if (e->depth >= 0) jnum(f, "depth", e->depth);
    if (e->gold_index >= 0) fprintf(f, ", \"gold_index\": %d", e->gold_index);
    jstr(f, "metric", eval_metric_name(e->metric));
    fprintf(f, ", \"gold\": [");
    for (int i = 0; i < e->n_gold; i++) {
        if (i) fputs(", ", f);
        json_str(f, e->gold[i], strlen(e->gold[i]));
    }
    fputc(']', f);
    jstr(f, "answer", o->g->text);
    fprintf(f, ", \"answer_tokens\": [");
    for (int i = 0; i < o->g->n; i++) fprintf(f, "%s%d", i ? ", " : "", o->g->tok[i]);
    fprintf(f, "], \"stop\": \"%s\"", o->g->eog ? "eog" : "length");
    jstr(f, "ref_answer", o->ref->text);
    jnum(f, "score", o->score);
    jnum(f, "em", o->em);
    jnum(f, "fid_em", o->fid_em);
    jnum(f, "fid_f1", o->fid_f1);
    int same = o->g->n == o->ref->n && !memcmp(o->g->tok, o->ref->tok, sizeof(int32_t) * (size_t)o->g->n);
    fprintf(f, ", \"same_tokens\": %s", same ? "true" : "false");
    jnum(f, "kl", o->kl);
    fprintf(f, ", \"top1_first\": %d", o->top1);
    jnum(f, "tf_agree", eval_ratio_or_one(o->tf_match, o->tf_pos));
    fprintf(f, ", \"tf_match\": %d, \"tf_positions\": %d", o->tf_match, o->tf_pos);
    const kvf_fuse_stats *st = o->st;
    fprintf(f, ", \"total_tokens\": %d, \"prefix_tokens\": %d, \"question_tokens\": %d, \"n_docs\": %d",
            st->total_tokens, st->prefix_tokens, st->question_tokens, o->n_docs);
    fprintf(f, ", \"recomputed_tokens\": %d, \"reused_tokens\": %d", st->recomputed_tokens, st->reused_tokens);
    jnum(f, "recomputed_frac", st->total_tokens ? (double)st->recomputed_tokens / st->total_tokens : NAN);
    jnum(f, "compute_frac", o->compute_frac);
    jnum(f, "ttft_ms", st->ttft_ms);
    jnum(f, "load_ms", st->load_ms);
    jnum(f, "rope_ms", st->rope_ms);
    jnum(f, "recompute_ms", st->recompute_ms);
    jnum(f, "first_token_ms", st->first_token_ms);
    jnum(f, "precompute_ms", o->precompute_ms);
    fprintf(f, ", \"precompute_misses\": %d", o->precompute_misses);
    jnum(f, "decode_ms", o->g->dec_ms);
    fprintf(f, ", \"decode_steps\": %d", o->g->steps);
    jnum(f, "tpot_ms", o->g->steps > 0 ? o->g->dec_ms / o->g->steps : NAN);
    fprintf(f, ", \"kv_bytes_loaded\": %lld, \"chunk_hits\": %d, \"chunk_misses\": %d",
            (long long)st->kv_bytes_loaded, st->chunk_hits, st->chunk_misses);
    fprintf(f, ", \"evict\": \"%s\", \"kept_after_evict\": %d, \"threads\": %d",
            kvf_evict_name(o->fp->evict),
            st->kept_after_evict, o->threads);
    fprintf(f, ", \"time\": %lld}\n", (long long)time(NULL));
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* ---- config (what must match for results to be comparable) --------------------------- */

static int check_config(const char *dir, cJSON *now, char *err, size_t el) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    if (!txt) {
        if (errno != ENOENT) {
            snprintf(err, el, "cannot read '%s': %s", path, strerror(errno));
            return -1;
        }
        char *out = cJSON_Print(now);
        FILE *f   = out ? fopen(path, "wx") : NULL;
        int   ok  = f && fputs(out, f) >= 0 && fputc('\n', f) != EOF;
        if (f) ok &= fclose(f) == 0;
        free(out);
        if (!ok) snprintf(err, el, "cannot write '%s': %s", path, strerror(errno));
        return ok ? 0 : -1;
    }
    cJSON *old = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsObject(old)) {
        cJSON_Delete(old);
        snprintf(err, el, "'%s' is not a JSON object; move it away or use another --out", path);
        return -1;
    }
    int    rc = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, now) {
        if (!strcmp(it->string, "data") || !strcmp(it->string, "model_path")) continue; /* may move */
        cJSON *o = cJSON_GetObjectItemCaseSensitive(old, it->string);
        if (!o || !cJSON_Compare(o, it, true)) {
            char *a = o ? cJSON_PrintUnformatted(o) : NULL, *b = cJSON_PrintUnformatted(it);
            snprintf(err, el, "%s holds results of another configuration: %s is %s there, %s now "
                              "(use another --out directory)", dir, it->string, a ? a : "missing", b ? b : "?");
            free(a), free(b);
            rc = -1;
            break;
        }
    }
    cJSON_Delete(old);
    return rc;
}

static int mkdir_p(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0777) != 0 && errno != EEXIST) return -1;
    struct stat st;
    return stat(tmp, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

/* ---- progress ------------------------------------------------------------------------ */

typedef struct {
    int    total, done, tty, enabled;
    double t0, work_ms; /* time spent on the examples done */
} progress;

static void fmt_dur(double ms, char *buf, size_t n) {
    long s = (long)(ms / 1000 + 0.5);
    if (s >= 3600) snprintf(buf, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(buf, n, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, n, "%lds", s);
}

static void progress_draw(const progress *p, const char *id, const char *what) {
    if (!p->enabled || !p->tty) return;
    char   el[32], eta[32] = "?";
    double t = cli_now_ms() - p->t0;
    fmt_dur(t, el, sizeof el);
    if (p->done > 0) fmt_dur(p->work_ms / p->done * (p->total - p->done), eta, sizeof eta);
    int  w = 24, fill = p->total ? p->done * w / p->total : w;
    char bar[32];
    for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '-';
    bar[w] = 0;
    fprintf(stderr, "\r[%s] %d/%d %s %s | %s elapsed, ETA %s\x1b[K", bar, p->done, p->total, id, what, el, eta);
    fflush(stderr);
}

static void progress_line(const progress *p, const char *line) {
    char   el[32], eta[32] = "0s";
    fmt_dur(cli_now_ms() - p->t0, el, sizeof el);
    if (p->done < p->total && p->done > 0) fmt_dur(p->work_ms / p->done * (p->total - p->done), eta, sizeof eta);
    if (p->tty && p->enabled) fputs("\r\x1b[K", stderr);
    fprintf(stderr, "eval: [%d/%d] %s | %s elapsed, ETA %s\n", p->done, p->total, line, el, eta);
}

/* ---- --show -------------------------------------------------------------------------- */

static int show_examples(const kvf_model *m, const eval_dataset *ds, int ex0, int n_ex) {
    char err[512] = "";
    for (int i = ex0; i < ex0 + n_ex; i++) {
        const eval_example *e = &ds->ex[i];
        rag_req             req;
        if (rag_tokenize(m, NULL, e->instruction, (const char *const *)e->docs, e->n_docs, e->question, &req, err, sizeof err) != 0)
            return cli_fail("eval", "%s: %s", e->id, err);
        printf("{\"id\": ");
        json_str(stdout, e->id, strlen(e->id));
        printf(", \"metric\": \"%s\", \"segment_tokens\": [", eval_metric_name(e->metric));
        for (int k = 0; k < req.n_segs; k++) printf("%s%d", k ? ", " : "", req.segs[k].n);
        printf("], \"total_tokens\": %d", req.total);
        if (e->length >= 0) printf(", \"length\": %d", e->length);
        if (e->depth >= 0) printf(", \"depth\": %g", e->depth);
        if (e->task) printf(", \"task\": \"%s\"", e->task);
        if (e->gold_index >= 0) printf(", \"gold_index\": %d", e->gold_index);
        printf(", \"instruction\": ");
        json_str(stdout, e->instruction ? e->instruction : "", e->instruction ? strlen(e->instruction) : 0);
        printf(", \"docs\": [");
        for (int k = 0; k < e->n_docs; k++) {
            if (k) printf(", ");
            json_str(stdout, e->docs[k], strlen(e->docs[k]));
        }
        printf("], \"question\": ");
        json_str(stdout, e->question, strlen(e->question));
        printf(", \"answer_prefix\": ");
        if (e->answer_prefix) json_str(stdout, e->answer_prefix, strlen(e->answer_prefix));
        else printf("null");
        printf(", \"gold\": [");
        for (int k = 0; k < e->n_gold; k++) {
            if (k) printf(", ");
            json_str(stdout, e->gold[k], strlen(e->gold[k]));
        }
        printf("]}\n");
        rag_free(&req);
    }
    return 0;
}

/* the report's title: dataset and model of DIR/config.json (the directory name without it) */
static void report_title(const char *dir, char *title, size_t n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    cJSON *c   = txt ? cJSON_ParseWithLength(txt, len) : NULL;
    free(txt);
    cJSON *ds = cJSON_GetObjectItemCaseSensitive(c, "dataset"), *mn = cJSON_GetObjectItemCaseSensitive(c, "model_name");
    cJSON *ft = cJSON_GetObjectItemCaseSensitive(c, "model_ftype"), *pr = cJSON_GetObjectItemCaseSensitive(c, "precision");
    if (cJSON_IsString(ds) && cJSON_IsString(mn) && cJSON_IsString(ft) && cJSON_IsString(pr))
        snprintf(title, n, "kvfuse eval: %s (%s %s, %s)", ds->valuestring, mn->valuestring[0] ? mn->valuestring : "model",
                 ft->valuestring, pr->valuestring);
    else
        snprintf(title, n, "kvfuse eval: %s", dir);
    cJSON_Delete(c);
}

/* ---- main ---------------------------------------------------------------------------- */

static int write_outputs(const char *dir, const char *title, const char *results) {
    eval_recs rs;
    char      err[512] = "";
    if (eval_recs_read(results, &rs, err, sizeof err) != 0 ||
        eval_write_outputs(dir, title, &rs, err, sizeof err) != 0) {
        eval_recs_free(&rs);
        return cli_fail("eval", "%s", err);
    }
    eval_recs_free(&rs);
    return 0;
}

static double compute_frac(const kvf_fuse_stats *st, int method, int n_layer, int score_layer) {
    if (st->total_tokens <= 0) return NAN;
    double f = (double)st->recomputed_tokens / st->total_tokens;
    if (method == KVF_METHOD_FULL) return 1.0;
    if (method == KVF_METHOD_ORACLE) return 1.0 + f; /* a full prefill, then the recompute */
    if (method == KVF_METHOD_PROPHET || method == KVF_METHOD_FOCUS) /* + the question probe */
        return (f * st->total_tokens + st->question_tokens) / st->total_tokens;
    if (has_ratio(method)) {
        int full_layers = score_layer + 1 < n_layer ? score_layer + 1 : n_layer;
        return (full_layers + (n_layer - full_layers) * f) / n_layer;
    }
    return f;
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},      {"dataset", required_argument, 0, 'D'},
        {"data", required_argument, 0, 'd'},       {"out", required_argument, 0, 'o'},
        {"methods", required_argument, 0, 'M'},    {"ratios", required_argument, 0, 'r'},
        {"limit", required_argument, 0, 'l'},      {"n-predict", required_argument, 0, 'n'},
        {"offset", required_argument, 0, 'O'},
        {"epic-k", required_argument, 0, 'e'},     {"score-layer", required_argument, 0, 'L'},
        {"evict", required_argument, 0, 'E'},      {"budget", required_argument, 0, 'b'},
        {"dtype", required_argument, 0, 'T'},      {"cache-mb", required_argument, 0, 'c'},
        {"lengths", required_argument, 0, 'G'},    {"depths", required_argument, 0, 'P'},
        {"chunk-tokens", required_argument, 0, 'C'}, {"seed", required_argument, 0, 's'},
        {"haystack", required_argument, 0, 'H'},   {"tasks", required_argument, 0, 'K'},
        {"ruler-n", required_argument, 0, 'N'},    {"kv-pairs", required_argument, 0, 'V'},
        {"threads", required_argument, 0, 't'},    {"isa", required_argument, 0, 'I'},
        {"precision", required_argument, 0, 'X'},  {"report-only", no_argument, 0, 'R'},
        {"no-progress", no_argument, 0, 'Q'},      {"show", no_argument, 0, 'S'},
        {"fidelity", required_argument, 0, 'F'},   {"ratio-min", required_argument, 0, 'i'},
        {"ratio-max", required_argument, 0, 'x'},  {"help", no_argument, 0, 'h'},
        CLI_ATTN_OPTIONS,                          {0, 0, 0, 0}};
    cli_attn        ca    = {0};
    const char     *model = NULL, *out_dir = NULL, *isa = NULL, *methods_arg = NULL;
    eval_options    eo    = eval_default_options();
    kvf_fuse_params fp    = kvf_fuse_default_params();
    kvf_precision   prec  = KVF_PREC_Q16;
    double          ratios[MAX_LIST] = {0.15}, depths[MAX_LIST];
    int             n_ratios = 1, lengths[MAX_LIST], limit = 0, offset = 0, n_predict = 32, n_threads = 0;
    long            cache_mb = 2048;
    bool            report_only = false, no_progress = false, show = false;
    char           *task_items[8], *task_buf = NULL;
    int             c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:n:t:h", opts, NULL)) != -1) {
        if (cli_attn_opt("eval", c, optarg, &ca)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'D': eo.dataset = optarg; break;
        case 'd': eo.data = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'M': methods_arg = optarg; break;
        case 'r': n_ratios = parse_ratios(optarg, ratios); break;
        case 'F': fp.fidelity = (float)cli_float("eval", "--fidelity", optarg, 1e-6, 1); break;
        case 'i': fp.ratio_min = (float)cli_float("eval", "--ratio-min", optarg, 0, 1); break;
        case 'x': fp.ratio_max = (float)cli_float("eval", "--ratio-max", optarg, 0, 1); break;
        case 'l': limit = (int)cli_int("eval", "--limit", optarg, 0, 1 << 30); break;
        case 'O': offset = (int)cli_int("eval", "--offset", optarg, 0, 1 << 30); break;
        case 'n': n_predict = (int)cli_int("eval", "--n-predict", optarg, 1, 1024); break;
        case 'e': fp.epic_k = (int32_t)cli_int("eval", "--epic-k", optarg, 0, 1 << 20); break;
        case 'L': fp.score_layer = (int32_t)cli_int("eval", "--score-layer", optarg, 1, 1024); break;
        case 'E':
            if (kvf_evict_from_name(optarg) < 0)
                return cli_fail("eval", "--evict expects none, snapkv or streaming, got '%s'", optarg);
            fp.evict = (kvf_evict)kvf_evict_from_name(optarg);
            break;
        case 'b': fp.budget = (int32_t)cli_int("eval", "--budget", optarg, 1, 1 << 24); break;
        case 'T':
            if (!strcmp(optarg, "f16")) fp.dtype = KVF_CHUNK_F16;
            else if (!strcmp(optarg, "f32")) fp.dtype = KVF_CHUNK_F32;
            else if (!strcmp(optarg, "q8")) fp.dtype = KVF_CHUNK_Q8;
            else return cli_fail("eval", "--dtype expects f16, f32 or q8, got '%s'", optarg);
            break;
        case 'c': cache_mb = cli_int("eval", "--cache-mb", optarg, 1, 1 << 24); break;
        case 'G':
            eo.n_lengths = parse_ints("--lengths", optarg, 1, 1 << 24, lengths);
            eo.lengths   = lengths;
            break;
        case 'P':
            eo.n_depths = parse_doubles("--depths", optarg, 0, 1, depths);
            eo.depths   = depths;
            break;
        case 'C': eo.chunk_tokens = (int)cli_int("eval", "--chunk-tokens", optarg, 1, 1 << 20); break;
        case 's': eo.seed = (uint64_t)cli_int("eval", "--seed", optarg, 0, 0x7fffffffffffffffL); break;
        case 'H': eo.haystack = optarg; break;
        case 'K':
            free(task_buf);
            eo.n_tasks = split_list(optarg, task_items, 8, &task_buf);
            if (eo.n_tasks <= 0) return free(task_buf), cli_fail("eval", "--tasks expects a list of single, multikey, multivalue");
            eo.tasks = (const char *const *)task_items;
            break;
        case 'N': eo.ruler_n = (int)cli_int("eval", "--ruler-n", optarg, 1, 1 << 20); break;
        case 'V': eo.kv_pairs = (int)cli_int("eval", "--kv-pairs", optarg, 1, 1 << 20); break;
        case 't': n_threads = (int)cli_int("eval", "--threads", optarg, 0, 1024); break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("eval", optarg); break;
        case 'R': report_only = true; break;
        case 'Q': no_progress = true; break;
        case 'S': show = true; break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (optind < argc) return free(task_buf), cli_fail("eval", "unexpected argument '%s'", argv[optind]);
    if (!out_dir && !show) return free(task_buf), cli_fail("eval", "--out DIR is required (kvfuse eval --help)");
    if (!out_dir) out_dir = ".";
    if (strlen(out_dir) > 2000) return free(task_buf), cli_fail("eval", "--out: path too long");
    char results[4200];
    snprintf(results, sizeof results, "%s/results.jsonl", out_dir);
    if (report_only) {
        free(task_buf);
        struct stat st;
        if (stat(results, &st) != 0) return cli_fail("eval", "no results in '%s' (%s)", results, strerror(errno));
        char title[512];
        report_title(out_dir, title, sizeof title);
        int rc = write_outputs(out_dir, title, results);
        if (rc == 0) fprintf(stderr, "eval: wrote %s/summary.json, summary.md, report.md, report.html\n", out_dir);
        return rc;
    }
    if (!eo.dataset || !eo.data) return free(task_buf), cli_fail("eval", "--dataset NAME and --data PATH are required (kvfuse eval --help)");
    {
        int known = 0;
        for (int i = 0; EVAL_DATASETS[i]; i++) known |= !strcmp(EVAL_DATASETS[i], eo.dataset);
        if (!known)
            return free(task_buf), cli_fail("eval", "unknown dataset '%s' (musique, cacheblend-demo, needle, kv-retrieval, ruler-niah)", eo.dataset);
    }

    /* the runs of one example: full first, then the others in the order given */
    int methods[KVF_METHOD_COUNT], n_methods = 0;
    {
        char *items[MAX_LIST], *buf;
        int   n = split_list(methods_arg ? methods_arg : "full,prefix,reuse,epic,cacheblend,a3,kvshare,prophet,focus", items, MAX_LIST, &buf);
        if (n <= 0) return free(buf), free(task_buf), cli_fail("eval", "--methods expects a comma-separated list");
        for (int i = 0; i < n; i++) {
            int k = !strcmp(items[i], "all") ? -2 : kvf_method_from_name(items[i]);
            if (k == -1) {
                cli_fail("eval", "unknown method '%s' (full, prefix, reuse, epic, cacheblend, a3, kvshare, prophet, focus, oracle)", items[i]);
                free(buf), free(task_buf);
                return 2;
            }
            for (int mth = k == -2 ? 0 : k; mth < (k == -2 ? KVF_METHOD_COUNT : k + 1); mth++) {
                int dup = 0;
                for (int j = 0; j < n_methods; j++) dup |= methods[j] == mth;
                if (!dup) methods[n_methods++] = mth;
            }
        }
        free(buf);
    }
    int any_auto = 0;
    for (int i = 0; i < n_ratios; i++) any_auto |= ratios[i] == EVAL_RATIO_AUTO;
    if (any_auto && fp.ratio_min > fp.ratio_max)
        return free(task_buf), cli_fail("eval", "--ratio-min must be <= --ratio-max");
    /* specs[0] is always full: the reference of the fidelity metrics runs first in every
     * example, and is recorded only when it was asked for */
    spec specs[KVF_METHOD_COUNT * MAX_LIST + 1];
    int  n_specs = 1, full_asked = 0, non_full = 0;
    specs[0]     = (spec){KVF_METHOD_FULL, -1};
    for (int i = 0; i < n_methods; i++) {
        if (methods[i] == KVF_METHOD_FULL) {
            full_asked = 1;
            continue;
        }
        non_full = 1;
        if (has_ratio(methods[i]))
            for (int r = 0; r < n_ratios; r++) specs[n_specs++] = (spec){methods[i], ratios[r]};
        else
            specs[n_specs++] = (spec){methods[i], -1};
    }

    int              rc = 1;
    kvf_model       *m  = cli_load_model(cli_model_path(model), isa, n_threads, prec);
    eval_dataset     ds = {0};
    eval_recs        done = {0};
    kvf_session     *s = NULL;
    kvf_chunk_cache *cache = NULL;
    cJSON           *cfg = NULL;
    results_file     rf = {.fd = -1};
    float           *ref_logits = NULL;
    char             err[8192] = "";
    if (!m) goto out;
    kvf_model_info info;
    kvf_model_get_info(m, &info);
    int n_ctx = kvf_model_n_ctx_train(m);
    /* room besides the haystack: prompt scaffolding, needle sentences and the answer */
    eo.max_tokens                = n_ctx - 256 - n_predict;
    eval_tokenizer tok           = {chunk_text, m};
    fprintf(stderr, "eval: loading %s from %s ...\n", eo.dataset, eo.data);
    if (eval_load(&eo, &tok, &ds, err, sizeof err) != 0) {
        rc = cli_fail("eval", "%s", err);
        goto out;
    }
    if (offset >= ds.n) {
        rc = cli_fail("eval", "--offset %d skips every example (the dataset has %d)", offset, ds.n);
        goto out;
    }
    int ex0 = offset, n_ex = limit > 0 && limit < ds.n - offset ? limit : ds.n - offset;
    if (show) {
        rc = show_examples(m, &ds, ex0, n_ex);
        goto out;
    }

    /* output directory, configuration, existing results, lock */
    if (mkdir_p(out_dir) != 0) {
        rc = cli_fail("eval", "cannot create '%s': %s", out_dir, strerror(errno));
        goto out;
    }
    cfg = cJSON_CreateObject();
    cJSON_AddNumberToObject(cfg, "config_version", CONFIG_VERS);
    cJSON_AddStringToObject(cfg, "dataset", eo.dataset);
    cJSON_AddStringToObject(cfg, "data", eo.data);
    cJSON_AddStringToObject(cfg, "model_path", cli_model_path(model));
    cJSON_AddStringToObject(cfg, "model_name", info.name);
    cJSON_AddStringToObject(cfg, "model_ftype", info.ftype);
    cJSON_AddNumberToObject(cfg, "model_file_bytes", (double)info.file_bytes);
    cJSON_AddStringToObject(cfg, "precision", kvf_precision_name(prec));
    cJSON_AddNumberToObject(cfg, "n_predict", n_predict);
    cJSON_AddNumberToObject(cfg, "epic_k", fp.epic_k);
    cJSON_AddNumberToObject(cfg, "score_layer", fp.score_layer);
    cJSON_AddNumberToObject(cfg, "pool", fp.pool);
    cJSON_AddStringToObject(cfg, "evict", kvf_evict_name(fp.evict));
    cJSON_AddNumberToObject(cfg, "budget", fp.budget);
    cJSON_AddStringToObject(cfg, "dtype", fp.dtype == KVF_CHUNK_F32 ? "f32" : fp.dtype == KVF_CHUNK_Q8 ? "q8" : "f16");
    cJSON_AddNumberToObject(cfg, "chunk_tokens", eo.chunk_tokens);
    cJSON_AddNumberToObject(cfg, "seed", (double)eo.seed);
    cJSON_AddNumberToObject(cfg, "kv_pairs", eo.kv_pairs);
    kvf_attn_params ap = cli_attn_params(&ca);
    if (ap.mode != KVF_ATTN_DENSE) { /* absent for dense: older result folders stay valid */
        cJSON *at = cJSON_AddObjectToObject(cfg, "attn");
        cJSON_AddStringToObject(at, "mode", kvf_attn_name(ap.mode));
        cJSON_AddNumberToObject(at, "threshold", round((double)ap.threshold * 1e6) / 1e6);
        cJSON_AddNumberToObject(at, "local", ap.local);
        cJSON_AddNumberToObject(at, "block", ap.block);
        cJSON_AddNumberToObject(at, "window", ap.window);
        cJSON_AddNumberToObject(at, "dense_layers", ap.dense_layers);
        cJSON_AddNumberToObject(at, "dense_period", ap.dense_period);
        cJSON_AddNumberToObject(at, "min_keys", ap.min_keys);
    }
    kvf_decode_attn_params dp = cli_decode_attn_params(&ca);
    if (dp.mode != KVF_DECODE_DENSE) {
        cJSON *at = cJSON_AddObjectToObject(cfg, "decode_attn");
        cJSON_AddStringToObject(at, "mode", kvf_decode_attn_name(dp.mode));
        cJSON_AddNumberToObject(at, "tau", round((double)dp.tau * 1e6) / 1e6);
        cJSON_AddNumberToObject(at, "lookback", dp.lookback);
        cJSON_AddNumberToObject(at, "band", dp.band);
        cJSON_AddNumberToObject(at, "min_keys", dp.min_keys);
        if (dp.mode == KVF_DECODE_LOUIS) {
            cJSON_AddNumberToObject(at, "budget", dp.budget);
            cJSON_AddNumberToObject(at, "cluster", dp.cluster);
            cJSON_AddNumberToObject(at, "dense_layers", dp.dense_layers);
        }
    }
    cJSON_AddNumberToObject(cfg, "ruler_keys", eo.ruler_keys);
    if (any_auto) { /* the auto runs' target and bounds (absent from older directories) */
        cJSON_AddNumberToObject(cfg, "fidelity", round(fp.fidelity * 1e6) / 1e6);
        cJSON_AddNumberToObject(cfg, "ratio_min", round(fp.ratio_min * 1e6) / 1e6);
        cJSON_AddNumberToObject(cfg, "ratio_max", round(fp.ratio_max * 1e6) / 1e6);
    }
    if (check_config(out_dir, cfg, err, sizeof err) != 0) {
        rc = cli_fail("eval", "%s", err);
        goto out;
    }
    rf.fd = open(results, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0666);
    if (rf.fd < 0) {
        rc = cli_fail("eval", "cannot open '%s': %s", results, strerror(errno));
        goto out;
    }
    if (flock(rf.fd, LOCK_EX | LOCK_NB) != 0) {
        rc = cli_fail("eval", "another kvfuse eval is writing to '%s'", results);
        goto out;
    }
    if (eval_recs_read(results, &done, err, sizeof err) != 0) {
        rc = cli_fail("eval", "%s", err);
        goto out;
    }
    {
        /* a line cut short by a crash: start the next record on a line of its own */
        struct stat st;
        int         rfd = open(results, O_RDONLY | O_CLOEXEC);
        char        last = '\n';
        if (rfd >= 0 && fstat(rfd, &st) == 0 && st.st_size > 0 && pread(rfd, &last, 1, st.st_size - 1) == 1 && last != '\n')
            append_line(&rf, "\n", 1);
        if (rfd >= 0) close(rfd);
    }
    if (done.dataset && strcmp(done.dataset, eo.dataset) != 0) {
        rc = cli_fail("eval", "'%s' holds %s results, not %s", results, done.dataset, eo.dataset);
        goto out;
    }

    /* what is left to do */
    int *todo = calloc((size_t)n_ex + 1, sizeof(int)), n_todo = 0;
    if (!todo) {
        rc = cli_fail("eval", "out of memory");
        goto out;
    }
    for (int i = ex0; i < ex0 + n_ex; i++) {
        int need = 0;
        for (int k = !full_asked; k < n_specs && !need; k++) need = !rec_exists(&done, ds.ex[i].id, &specs[k]);
        if (need) todo[n_todo++] = i;
    }
    fprintf(stderr, "eval: %s: %d examples selected (of %d), %d already complete, %d to run; %d runs "
                    "per example%s (%s)\n",
            eo.dataset, n_ex, ds.n, n_ex - n_todo, n_todo, n_specs - !full_asked,
            full_asked ? "" : " plus full as the unrecorded reference", info.name);

    char title[512];
    report_title(out_dir, title, sizeof title);
    if (n_todo == 0) {
        free(todo);
        rc = write_outputs(out_dir, title, results);
        if (rc == 0) fprintf(stderr, "eval: nothing to run; summary in %s/summary.md, report in %s/report.md\n", out_dir, out_dir);
        goto out;
    }

    kvf_session_params sp = kvf_session_default_params();
    sp.n_threads          = n_threads;
    sp.n_ctx              = n_ctx;
    if (kvf_session_new(m, &sp, &s) != KVF_OK || cli_attn_apply(s, &ca) != KVF_OK ||
        kvf_chunk_cache_new_memory((size_t)cache_mb << 20, &cache) != KVF_OK) {
        free(todo);
        rc = cli_fail("eval", "%s", kvf_errmsg());
        goto out;
    }
    int32_t nv = kvf_model_n_vocab(m);
    ref_logits = malloc(sizeof(float) * (size_t)nv);
    if (!ref_logits) {
        free(todo);
        rc = cli_fail("eval", "out of memory");
        goto out;
    }
    progress pr = {.total = n_todo, .tty = isatty(2), .enabled = !no_progress, .t0 = cli_now_ms()};
    int      n_too_long = 0;
    rc = 0;
    for (int ti = 0; ti < n_todo && rc == 0; ti++) {
        const eval_example *ex = &ds.ex[todo[ti]];
        double              t_ex = cli_now_ms();
        rag_req             req;
        progress_draw(&pr, ex->id, "tokenizing");
        if (rag_tokenize(m, NULL, ex->instruction, (const char *const *)ex->docs, ex->n_docs, ex->question, &req, err, sizeof err) != 0) {
            rc = cli_fail("eval", "%s: %s", ex->id, err);
            break;
        }
        if (ex->answer_prefix) {
            int32_t last = req.n_segs - 1, n = req.segs[last].n, cap = n;
            if (rag_append_tokens(m, ex->answer_prefix, 0, &req.ids[last], &n, &cap) != 0) {
                rag_free(&req);
                rc = cli_fail("eval", "%s: tokenizing the answer prefix: %s", ex->id, kvf_errmsg());
                break;
            }
            req.total += n - req.segs[last].n;
            req.segs[last].ids = req.ids[last], req.segs[last].n = n;
        }
        if (req.total + n_predict + 1 > n_ctx) {
            progress_line(&pr, "skipped");
            fprintf(stderr, "eval: %s has %d prompt tokens; with %d answer tokens that exceeds the "
                            "model's context of %d: skipped\n", ex->id, req.total, n_predict, n_ctx);
            n_too_long++;
            rag_free(&req);
            pr.total--;
            continue;
        }
        /* warm chunk cache: the documents' KV is computed before any timed run */
        kvf_fuse_stats pst = {0};
        if (non_full) {
            progress_draw(&pr, ex->id, "precomputing chunks");
            fp.method = KVF_METHOD_A3;
            if (kvf_session_precompute(s, cache, req.segs, req.n_segs, &fp, &pst) != KVF_OK) {
                rc = cli_fail("eval", "%s: precompute: %s", ex->id, kvf_errmsg());
                rag_free(&req);
                break;
            }
        }
        gen_out ref = {0};
        char    line[2048];
        int     lo = snprintf(line, sizeof line, "%s (%d tok)", ex->id, req.total);
        for (int k = 0; k < n_specs && rc == 0; k++) {
            const spec *sp_k = &specs[k];
            int         need = (k > 0 || full_asked) && !rec_exists(&done, ex->id, sp_k);
            if (k > 0 && !need) continue; /* full (k == 0) always runs: it is the reference */
            char label[48];
            spec_label(sp_k, label, sizeof label);
            progress_draw(&pr, ex->id, label);
            fp.method = (kvf_method)sp_k->method;
            fp.ratio      = sp_k->ratio > 0 ? (float)sp_k->ratio : 0.15f;
            fp.ratio_auto = sp_k->ratio == EVAL_RATIO_AUTO;
            kvf_fuse_stats st;
            if (kvf_session_fuse(s, cache, req.segs, req.n_segs, &fp, &st) != KVF_OK) {
                fprintf(stderr, "\nkvfuse eval: %s %s: %s\n", ex->id, label, kvf_errmsg());
                rc = 1;
                break;
            }
            int32_t      n0     = kvf_session_n_past(s);
            const float *logits = kvf_session_logits(s, -1);
            run_out      o      = {.ex = ex, .dataset = eo.dataset, .sp = sp_k, .st = &st, .fp = &fp,
                                   .n_docs = ex->n_docs, .precompute_ms = pst.precompute_ms,
                                   .precompute_misses = pst.chunk_misses, .threads = kvf_session_threads(s)};
            int is_ref = sp_k->method == KVF_METHOD_FULL;
            if (is_ref) memcpy(ref_logits, logits, sizeof(float) * (size_t)nv);
            o.kl = eval_kl(ref_logits, logits, nv);
            if (o.kl < 0) o.kl = NAN;
            gen_out g;
            if (greedy(s, m, n_predict, &g) != 0) {
                fprintf(stderr, "\nkvfuse eval: %s %s: decoding: %s\n", ex->id, label, kvf_errmsg());
                gen_free(&g);
                rc = 1;
                break;
            }
            if (is_ref) ref = g;
            o.g    = &g;
            o.ref  = &ref;
            o.top1 = g.tok[0] == ref.tok[0];
            if (is_ref) {
                o.tf_match = o.tf_pos = ref.n;
            } else if (teacher_force(s, cache, &req, &fp, st.kept_after_evict > 0, n0, &ref, &g, nv, &o.tf_match, &o.tf_pos) != 0) {
                fprintf(stderr, "\nkvfuse eval: %s %s: teacher forcing: %s\n", ex->id, label, kvf_errmsg());
                gen_free(&g);
                rc = 1;
                break;
            }
            const char *const *gold = (const char *const *)ex->gold;
            o.score        = ex->metric == EVAL_METRIC_NONE ? NAN : eval_score(ex->metric, g.text, gold, ex->n_gold);
            o.em           = ex->metric == EVAL_METRIC_F1 ? eval_em_max(g.text, gold, ex->n_gold) : NAN;
            o.fid_em       = eval_em(g.text, ref.text);
            o.fid_f1       = eval_f1(g.text, ref.text, 1);
            o.compute_frac = compute_frac(&st, sp_k->method, info.n_layer, fp.score_layer);
            if (need) {
                char *rec = format_record(&o);
                if (!rec || append_line(&rf, rec, strlen(rec)) != 0) {
                    free(rec);
                    if (!is_ref) gen_free(&g);
                    rc = cli_fail("eval", "cannot append to '%s': %s", results, strerror(errno));
                    break;
                }
                free(rec);
            }
            if (lo < (int)sizeof line - 80) {
                lo += snprintf(line + lo, sizeof line - (size_t)lo, " | %s %.1fs", label, st.ttft_ms / 1000);
                if (isfinite(o.score)) lo += snprintf(line + lo, sizeof line - (size_t)lo, " %s %.2f", ex->metric == EVAL_METRIC_F1 ? "F1" : "score", o.score);
                if (!is_ref) lo += snprintf(line + lo, sizeof line - (size_t)lo, " TF %.0f%%", 100 * eval_ratio_or_one(o.tf_match, o.tf_pos));
            }
            if (!is_ref) gen_free(&g);
        }
        gen_free(&ref);
        rag_free(&req);
        if (rc) break;
        pr.done++;
        pr.work_ms += cli_now_ms() - t_ex;
        /* the new records count as done for the summary; rebuild it */
        progress_line(&pr, line);
        if (write_outputs(out_dir, title, results) != 0) {
            rc = 1;
            break;
        }
    }
    free(todo);
    if (rc == 0) {
        fprintf(stderr, "eval: done in %.1f min%s; summary in %s/summary.md, report in %s/report.md\n",
                (cli_now_ms() - pr.t0) / 60000, n_too_long ? " (some examples were too long for the context)" : "", out_dir, out_dir);
        if (n_too_long) fprintf(stderr, "eval: %d examples skipped: longer than the model's context\n", n_too_long);
    }
out:
    if (rf.fd >= 0) close(rf.fd);
    free(ref_logits);
    cJSON_Delete(cfg);
    eval_recs_free(&done);
    eval_dataset_free(&ds);
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    kvf_model_free(m);
    free(task_buf);
    return rc;
}
