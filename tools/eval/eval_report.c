/* eval_report.c - results.jsonl -> summary.json, summary.md, report.md, report.html and SVG
 * plots (see eval_report.h). The plots are plain SVG written here: line charts against the
 * recompute ratio and needle heatmaps. */
#include "eval/eval_report.h"

#include "kvfuse.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- records ------------------------------------------------------------------------- */

void eval_ratio_key(double ratio, char *buf, size_t n) {
    if (!(ratio >= 0)) snprintf(buf, n, "-");
    else if (ratio == EVAL_RATIO_AUTO) snprintf(buf, n, "auto");
    else snprintf(buf, n, "%.4g", ratio);
}

void eval_rec_free(eval_rec *r) {
    free(r->id), free(r->method), free(r->task), free(r->metric);
    memset(r, 0, sizeof *r);
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v) ? 1.0 : 0.0;
    return NAN;
}

static char *str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

int eval_rec_parse(const char *line, size_t len, eval_rec *r) {
    memset(r, 0, sizeof *r);
    cJSON *o = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return -1;
    }
    r->id     = str(o, "id");
    r->method = str(o, "method");
    r->task   = str(o, "task");
    r->metric = str(o, "metric");
    double       ra = num(o, "ratio");
    const cJSON *rj = cJSON_GetObjectItemCaseSensitive(o, "ratio");
    r->ratio        = cJSON_IsString(rj) && !strcmp(rj->valuestring, "auto") ? EVAL_RATIO_AUTO
                      : isnan(ra)                                            ? -1
                                                                             : ra;
#define F(field) r->field = num(o, #field)
    F(score), F(em), F(fid_em), F(fid_f1), F(kl), F(top1_first), F(tf_agree), F(ttft_ms);
    F(load_ms), F(rope_ms), F(recompute_ms), F(first_token_ms), F(tpot_ms), F(precompute_ms);
    F(recomputed_frac), F(compute_frac), F(kv_bytes_loaded), F(length), F(depth), F(total_tokens);
    F(ratio_used);
#undef F
    cJSON_Delete(o);
    if (!r->id || !r->method) {
        eval_rec_free(r);
        return -1;
    }
    return 0;
}

void eval_recs_free(eval_recs *rs) {
    for (int i = 0; i < rs->n; i++) eval_rec_free(&rs->r[i]);
    free(rs->r);
    free(rs->dataset);
    memset(rs, 0, sizeof *rs);
}

int eval_recs_read(const char *path, eval_recs *out, char *err, size_t el) {
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errno == ENOENT) return 0;
        snprintf(err, el, "cannot read '%s': %s", path, strerror(errno));
        return -1;
    }
    char   *line = NULL;
    size_t  cap  = 0;
    ssize_t k;
    int     ln = 0, rc = 0;
    while ((k = getline(&line, &cap, f)) > 0) {
        ln++;
        size_t n = (size_t)k;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (n == 0) continue;
        eval_rec r;
        if (eval_rec_parse(line, n, &r) != 0) {
            fprintf(stderr, "kvfuse eval: %s line %d is not a complete record (skipped)\n", path, ln);
            out->n_bad++;
            continue;
        }
        if (!out->dataset) {
            cJSON *o = cJSON_ParseWithLength(line, n);
            char  *d = o ? str(o, "dataset") : NULL;
            cJSON_Delete(o);
            out->dataset = d;
        }
        if (out->n == out->cap) {
            int       nc = out->cap ? out->cap * 2 : 256;
            eval_rec *p  = realloc(out->r, sizeof *p * (size_t)nc);
            if (!p) {
                eval_rec_free(&r);
                snprintf(err, el, "'%s': out of memory", path);
                rc = -1;
                break;
            }
            out->r = p, out->cap = nc;
        }
        out->r[out->n++] = r;
    }
    if (rc == 0 && ferror(f)) {
        snprintf(err, el, "error reading '%s'", path);
        rc = -1;
    }
    free(line);
    fclose(f);
    if (rc) eval_recs_free(out);
    return rc;
}

double eval_mean_finite(const double *v, int n, int *n_out) {
    double s = 0;
    int    k = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) s += v[i], k++;
    if (n_out) *n_out = k;
    return k ? s / k : NAN;
}

/* ---- aggregation --------------------------------------------------------------------- */

enum {
    M_SCORE, M_EM, M_FID_EM, M_FID_F1, M_KL, M_TOP1, M_TF, M_TTFT, M_LOAD, M_ROPE, M_RECOMP,
    M_FIRST, M_TPOT, M_PRECOMP, M_RECFRAC, M_COMPFRAC, M_KVB, M_TOKENS, M_RATIO_USED, M_N
};
static const char *const M_NAME[M_N] = {
    "score", "em", "fid_em", "fid_f1", "kl", "top1_first", "tf_agree", "ttft_ms", "load_ms",
    "rope_ms", "recompute_ms", "first_token_ms", "tpot_ms", "precompute_ms", "recomputed_frac",
    "compute_frac", "kv_bytes_loaded", "total_tokens", "ratio_used"};

static double rec_field(const eval_rec *r, int m) {
    switch (m) {
    case M_SCORE: return r->score;
    case M_EM: return r->em;
    case M_FID_EM: return r->fid_em;
    case M_FID_F1: return r->fid_f1;
    case M_KL: return r->kl;
    case M_TOP1: return r->top1_first;
    case M_TF: return r->tf_agree;
    case M_TTFT: return r->ttft_ms;
    case M_LOAD: return r->load_ms;
    case M_ROPE: return r->rope_ms;
    case M_RECOMP: return r->recompute_ms;
    case M_FIRST: return r->first_token_ms;
    case M_TPOT: return r->tpot_ms;
    case M_PRECOMP: return r->precompute_ms;
    case M_RECFRAC: return r->recomputed_frac;
    case M_COMPFRAC: return r->compute_frac;
    case M_KVB: return r->kv_bytes_loaded;
    case M_RATIO_USED: return r->ratio_used;
    default: return r->total_tokens;
    }
}

typedef struct group {
    const char *method;
    double      ratio;
    int         order, n;
    double      mean[M_N];
    int         cnt[M_N];
    double      score_ci;             /* 95% half-width of the mean score */
    double      speedup;              /* paired: sum of full TTFT / sum of this TTFT */
    int         n_pair;               /* examples with a full record */
    double      dscore, dscore_ci;    /* paired score difference to full (points x 1) */
    int        *idx;                  /* records of the group */
} group;

static int method_order(const char *m) {
    int k = kvf_method_from_name(m);
    return k < 0 ? 100 : k;
}

static int cmp_group(const void *a, const void *b) {
    const group *x = a, *y = b;
    if (x->order != y->order) return x->order - y->order;
    int c = strcmp(x->method, y->method);
    if (c) return c;
    return (x->ratio > y->ratio) - (x->ratio < y->ratio);
}

static double ci95(const double *v, int n) {
    int    k;
    double m = eval_mean_finite(v, n, &k);
    if (k < 2) return NAN;
    double q = 0;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) q += (v[i] - m) * (v[i] - m);
    return 1.96 * sqrt(q / (k - 1)) / sqrt((double)k);
}

static const eval_rec *find_full(const eval_recs *rs, const char *id) {
    for (int i = 0; i < rs->n; i++)
        if (!strcmp(rs->r[i].method, "full") && !strcmp(rs->r[i].id, id)) return &rs->r[i];
    return NULL;
}

/* groups of (method, ratio); NULL when out of memory */
static group *make_groups(const eval_recs *rs, int *n_out) {
    group *g  = calloc((size_t)(rs->n + 1), sizeof *g);
    int    ng = 0;
    if (!g) return NULL;
    for (int i = 0; i < rs->n; i++) {
        const eval_rec *r = &rs->r[i];
        int             k = 0;
        while (k < ng && !(strcmp(g[k].method, r->method) == 0 && fabs(g[k].ratio - r->ratio) < 1e-9)) k++;
        if (k == ng) {
            g[ng].method = r->method, g[ng].ratio = r->ratio, g[ng].order = method_order(r->method);
            g[ng].idx    = malloc(sizeof(int) * (size_t)rs->n);
            if (!g[ng].idx) goto oom;
            ng++;
        }
        g[k].idx[g[k].n++] = i;
    }
    double *v = malloc(sizeof(double) * (size_t)(rs->n + 1) * 2);
    if (!v) goto oom;
    double *w = v + rs->n + 1;
    for (int k = 0; k < ng; k++) {
        group *G = &g[k];
        for (int m = 0; m < M_N; m++) {
            for (int i = 0; i < G->n; i++) v[i] = rec_field(&rs->r[G->idx[i]], m);
            G->mean[m] = eval_mean_finite(v, G->n, &G->cnt[m]);
        }
        for (int i = 0; i < G->n; i++) v[i] = rs->r[G->idx[i]].score;
        G->score_ci = ci95(v, G->n);
        double sf = 0, sm = 0;
        int    nd = 0;
        G->n_pair = 0;
        for (int i = 0; i < G->n; i++) {
            const eval_rec *r = &rs->r[G->idx[i]], *f = find_full(rs, r->id);
            if (!f) continue;
            G->n_pair++;
            if (isfinite(f->ttft_ms) && isfinite(r->ttft_ms)) sf += f->ttft_ms, sm += r->ttft_ms;
            if (isfinite(f->score) && isfinite(r->score)) w[nd++] = r->score - f->score;
        }
        int is_full  = !strcmp(G->method, "full");
        G->speedup   = sm > 0 ? sf / sm : NAN;
        G->dscore    = is_full ? NAN : eval_mean_finite(w, nd, NULL);
        G->dscore_ci = is_full ? NAN : ci95(w, nd);
    }
    free(v);
    qsort(g, (size_t)ng, sizeof *g, cmp_group);
    *n_out = ng;
    return g;
oom:
    for (int k = 0; k < ng; k++) free(g[k].idx);
    free(g);
    return NULL;
}

static void free_groups(group *g, int n) {
    for (int k = 0; g && k < n; k++) free(g[k].idx);
    free(g);
}

static void group_label(const group *g, char *buf, size_t n) {
    char rk[32];
    eval_ratio_key(g->ratio, rk, sizeof rk);
    if (g->ratio >= 0) snprintf(buf, n, "%s@%s", g->method, rk);
    else snprintf(buf, n, "%s", g->method);
}

/* ---- file writing -------------------------------------------------------------------- */

/* write bytes to dir/name atomically (tmp file + rename) */
static int put_file(const char *dir, const char *name, const char *data, size_t n, char *err,
                    size_t el) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        snprintf(err, el, "cannot write '%s': %s", tmp, strerror(errno));
        return -1;
    }
    int ok = fwrite(data, 1, n, f) == n;
    ok &= fclose(f) == 0;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, el, "cannot write '%s': %s", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

/* a memory stream */
typedef struct {
    char  *p;
    size_t n;
    FILE  *f;
} mstream;

static int ms_open(mstream *m) {
    m->p = NULL, m->n = 0;
    m->f = open_memstream(&m->p, &m->n);
    return m->f ? 0 : -1;
}
static void ms_close(mstream *m) {
    if (m->f) fclose(m->f);
    m->f = NULL;
}
static void ms_free(mstream *m) {
    ms_close(m);
    free(m->p);
    m->p = NULL;
}

static void xml_esc(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* markdown table cell text: | would end the cell */
static void md_esc(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '|') fputs("\\|", f);
        else if (*s == '\n') fputc(' ', f);
        else fputc(*s, f);
    }
}

/* a number in a table: "-" when not finite */
static void cell(FILE *f, double v, const char *fmt, double scale) {
    if (!isfinite(v)) fputs(" - |", f);
    else {
        fputc(' ', f);
        fprintf(f, fmt, v * scale);
        fputs(" |", f);
    }
}

static double rnd9(double v) {
    if (!isfinite(v)) return v;
    char b[32];
    snprintf(b, sizeof b, "%.9g", v);
    return strtod(b, NULL);
}

/* ---- summary ------------------------------------------------------------------------- */

static int dataset_has_gold(const eval_recs *rs) {
    for (int i = 0; i < rs->n; i++)
        if (isfinite(rs->r[i].score)) return 1;
    return 0;
}

/* the column title of the task score: the metric of the records */
static const char *score_title(const eval_recs *rs) {
    const char *m = rs->n ? rs->r[0].metric : NULL;
    for (int i = 1; m && i < rs->n; i++)
        if (!rs->r[i].metric || strcmp(rs->r[i].metric, m)) return "score";
    if (!m) return "score";
    if (!strcmp(m, "none")) return "score (no gold)";
    if (!strcmp(m, "f1")) return "F1";
    if (!strcmp(m, "substring")) return "found";
    if (!strcmp(m, "string_match_all")) return "match all";
    return "score";
}

static void summary_md(FILE *f, const group *g, int ng, const char *score_col) {
    fprintf(f, "| method | ratio | n | %s | vs full | fid EM | fid F1 | KL | top-1 TF | TTFT ms | "
               "load | rope | recompute | first tok | speedup | TPOT ms | recomputed %% | "
               "compute %% | KV MB |\n",
            score_col);
    fputs("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n", f);
    for (int k = 0; k < ng; k++) {
        const group *G = &g[k];
        fputs("| ", f);
        md_esc(f, G->method);
        if (G->ratio == EVAL_RATIO_AUTO) fprintf(f, " | auto (%.3f) |", G->mean[M_RATIO_USED]);
        else if (G->ratio >= 0) fprintf(f, " | %.4g |", G->ratio);
        else fputs(" | - |", f);
        fprintf(f, " %d |", G->n);
        if (isfinite(G->mean[M_SCORE])) {
            if (isfinite(G->score_ci)) fprintf(f, " %.1f ± %.1f |", 100 * G->mean[M_SCORE], 100 * G->score_ci);
            else fprintf(f, " %.1f |", 100 * G->mean[M_SCORE]);
        } else {
            fputs(" - |", f);
        }
        if (isfinite(G->dscore)) {
            if (isfinite(G->dscore_ci)) fprintf(f, " %+.1f ± %.1f |", 100 * G->dscore, 100 * G->dscore_ci);
            else fprintf(f, " %+.1f |", 100 * G->dscore);
        } else {
            fputs(" - |", f);
        }
        cell(f, G->mean[M_FID_EM], "%.1f", 100);
        cell(f, G->mean[M_FID_F1], "%.1f", 100);
        cell(f, G->mean[M_KL], "%.4f", 1);
        cell(f, G->mean[M_TF], "%.1f", 100);
        cell(f, G->mean[M_TTFT], "%.0f", 1);
        cell(f, G->mean[M_LOAD], "%.1f", 1);
        cell(f, G->mean[M_ROPE], "%.1f", 1);
        cell(f, G->mean[M_RECOMP], "%.0f", 1);
        cell(f, G->mean[M_FIRST], "%.1f", 1);
        cell(f, G->speedup, "%.2fx", 1);
        cell(f, G->mean[M_TPOT], "%.1f", 1);
        cell(f, G->mean[M_RECFRAC], "%.1f", 100);
        cell(f, G->mean[M_COMPFRAC], "%.1f", 100);
        cell(f, G->mean[M_KVB], "%.1f", 1.0 / (1 << 20));
        fputc('\n', f);
    }
}

static const char *const COLUMN_NOTES =
    "Columns: *score* = mean task metric x 100 (F1 for QA, substring match for needle and "
    "kv-retrieval, string_match_all for ruler-niah) ± 95% CI; *vs full* = mean paired score "
    "difference to `full` on the same examples ± 95% CI; *fid EM / fid F1* = exact match / token "
    "F1 of the greedy answer against `full`'s greedy answer; *KL* = KL(p_full || p_method) of "
    "the first-token distributions (nats); *top-1 TF* = % of positions where the method's "
    "argmax equals the next token of `full`'s answer, teacher-forced; *TTFT* and its parts "
    "(chunk KV load, RoPE recovery + fused cache, forward recompute, first-token head) with "
    "warm chunk caches; *speedup* = total `full` TTFT / total TTFT over the same examples; "
    "*TPOT* = decode ms per generated token; *recomputed* = recomputed rows / prompt tokens; "
    "*compute* = estimated share of full prefill's layer x token work (layers below and at the "
    "selection layer count in full); *KV MB* = chunk KV bytes loaded.\n";

static cJSON *group_json(const group *G) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "method", G->method);
    if (G->ratio == EVAL_RATIO_AUTO) cJSON_AddStringToObject(o, "ratio", "auto");
    else if (G->ratio >= 0) cJSON_AddNumberToObject(o, "ratio", rnd9(G->ratio));
    else cJSON_AddNullToObject(o, "ratio");
    cJSON_AddNumberToObject(o, "n", G->n);
    for (int m = 0; m < M_N; m++) {
        if (G->cnt[m]) cJSON_AddNumberToObject(o, M_NAME[m], rnd9(G->mean[m]));
        else cJSON_AddNullToObject(o, M_NAME[m]);
    }
    cJSON_AddNumberToObject(o, "score_ci95", rnd9(G->score_ci));
    cJSON_AddNumberToObject(o, "score_vs_full", rnd9(G->dscore));
    cJSON_AddNumberToObject(o, "score_vs_full_ci95", rnd9(G->dscore_ci));
    cJSON_AddNumberToObject(o, "speedup_vs_full", rnd9(G->speedup));
    cJSON_AddNumberToObject(o, "n_paired_with_full", G->n_pair);
    return o;
}

/* ---- grids (needle heatmaps, ruler tables) ------------------------------------------- */

static int cmp_dbl(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* sorted distinct finite values of a field (length or depth) */
static int distinct(const eval_recs *rs, int depth, double *out, int max) {
    int n = 0;
    for (int i = 0; i < rs->n; i++) {
        double v = depth ? rs->r[i].depth : rs->r[i].length;
        if (!isfinite(v) || v < 0) continue;
        int dup = 0;
        for (int j = 0; j < n && !dup; j++) dup = fabs(out[j] - v) < 1e-9;
        if (!dup && n < max) out[n++] = v;
    }
    qsort(out, (size_t)n, sizeof *out, cmp_dbl);
    return n;
}

/* mean score of a group's records in one (length, depth) cell; NAN if none */
static double cell_score(const eval_recs *rs, const group *G, double len, double depth, int *n) {
    double s = 0;
    int    k = 0;
    for (int i = 0; i < G->n; i++) {
        const eval_rec *r = &rs->r[G->idx[i]];
        if (fabs(r->length - len) < 1e-9 && fabs(r->depth - depth) < 1e-9 && isfinite(r->score)) s += r->score, k++;
    }
    *n = k;
    return k ? s / k : NAN;
}

/* red (0) - yellow (0.5) - green (1) */
static void score_color(double v, char *buf, size_t n) {
    if (!isfinite(v)) {
        snprintf(buf, n, "#dddddd");
        return;
    }
    static const double c0[3] = {215, 48, 39}, c1[3] = {254, 224, 139}, c2[3] = {26, 152, 80};
    const double *a = v < 0.5 ? c0 : c1, *b = v < 0.5 ? c1 : c2;
    double        t = v < 0.5 ? v * 2 : (v - 0.5) * 2;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    snprintf(buf, n, "#%02x%02x%02x", (int)(a[0] + (b[0] - a[0]) * t), (int)(a[1] + (b[1] - a[1]) * t),
             (int)(a[2] + (b[2] - a[2]) * t));
}

static void svg_heatmap(FILE *f, const eval_recs *rs, const group *G, const double *L, int nl,
                        const double *D, int nd) {
    int  cw = 64, ch = 26, left = 70, top = 50, W = left + cw * nl + 20, H = top + ch * nd + 60;
    if (W < 480) W = 480;
    char label[128];
    group_label(G, label, sizeof label);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"20\" font-size=\"14\" font-weight=\"bold\">needle score: ", left);
    xml_esc(f, label);
    fprintf(f, "</text>\n");
    fprintf(f, "<text x=\"%d\" y=\"38\" fill=\"#555\">rows: needle depth; columns: haystack tokens; cells: %% found</text>\n", left);
    for (int j = 0; j < nd; j++) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.0f%%</text>\n", left - 6, top + j * ch + ch / 2 + 4, D[j] * 100);
        for (int i = 0; i < nl; i++) {
            int    n;
            double v = cell_score(rs, G, L[i], D[j], &n);
            char   col[16];
            score_color(v, col, sizeof col);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"white\"/>\n",
                    left + i * cw, top + j * ch, cw, ch, col);
            if (isfinite(v))
                fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", left + i * cw + cw / 2, top + j * ch + ch / 2 + 4, v * 100);
        }
    }
    for (int i = 0; i < nl; i++)
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", left + i * cw + cw / 2, top + nd * ch + 16, L[i]);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#555\">haystack tokens</text>\n", left + cw * nl / 2, top + nd * ch + 36);
    fprintf(f, "</svg>\n");
}

/* ---- line charts against the ratio --------------------------------------------------- */

static const char *method_color(const char *m) {
    static const char *const C[] = {"#000000", "#7f7f7f", "#d62728", "#ff7f0e", "#1f77b4",
                                     "#2ca02c", "#8c564b", "#e377c2", "#9467bd"};
    int k = kvf_method_from_name(m);
    return k >= 0 && k < (int)(sizeof C / sizeof C[0]) ? C[k] : "#17becf";
}

static double nice_step(double range) {
    if (!(range > 0)) return 1;
    double raw = range / 5, p = pow(10, floor(log10(raw))), r = raw / p;
    return p * (r < 1.5 ? 1 : r < 3.5 ? 2 : r < 7.5 ? 5 : 10);
}

/* the x of a group: its ratio, or for --ratios auto the mean ratio its requests picked */
static double group_x(const group *g) {
    return g->ratio == EVAL_RATIO_AUTO ? g->mean[M_RATIO_USED] : g->ratio;
}

/* one chart: metric m of every group (x 'scale') against the ratio; methods without a ratio are
 * dashed horizontal lines; --ratios auto is a diamond at its mean picked ratio. Returns 0 when
 * there is nothing to plot. */
static int svg_vs_ratio(FILE *f, const group *g, int ng, int m, double scale, const char *title,
                        const char *ylabel) {
    double xmax = 0, ymin = INFINITY, ymax = -INFINITY;
    int    any  = 0;
    for (int k = 0; k < ng; k++) {
        if (!g[k].cnt[m]) continue;
        double y = g[k].mean[m] * scale;
        any      = 1;
        if (isfinite(group_x(&g[k])) && group_x(&g[k]) > xmax) xmax = group_x(&g[k]);
        if (y < ymin) ymin = y;
        if (y > ymax) ymax = y;
    }
    if (!any) return 0;
    xmax = xmax > 0 ? xmax * 1.1 : 0.2;
    if (xmax > 1) xmax = 1;
    if (ymin > 0) ymin = 0;
    if (ymax <= ymin) ymax = ymin + 1;
    double ystep = nice_step(ymax - ymin);
    ymax         = ceil(ymax / ystep) * ystep;
    double xstep = nice_step(xmax);
    int    W = 680, H = 400, L = 70, R = 160, T = 40, B = 50, pw = W - L - R, ph = H - T - B;
#define PX(x) (L + (x) / xmax * pw)
#define PY(y) (T + ph - ((y) - ymin) / (ymax - ymin) * ph)
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<text x=\"%d\" y=\"22\" font-size=\"14\" font-weight=\"bold\">", L);
    xml_esc(f, title);
    fprintf(f, "</text>\n");
    for (double y = ymin; y <= ymax + ystep * 1e-6; y += ystep) {
        fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e5e5e5\"/>\n", L, L + pw, PY(y), PY(y));
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", L - 6, PY(y) + 4, rnd9(y));
    }
    for (double x = 0; x <= xmax + xstep * 1e-6; x += xstep)
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", PX(x), T + ph + 16, rnd9(x));
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333\"/>\n", L, T, pw, ph);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">recompute ratio r</text>\n", L + pw / 2, H - 10);
    fprintf(f, "<text transform=\"translate(16,%d) rotate(-90)\" text-anchor=\"middle\">", T + ph / 2);
    xml_esc(f, ylabel);
    fprintf(f, "</text>\n");
    int legend = 0;
    for (int k = 0; k < ng;) {
        /* the run of groups of one method */
        int e = k;
        while (e < ng && !strcmp(g[e].method, g[k].method)) e++;
        const char *col = method_color(g[k].method);
        int         has = 0;
        for (int i = k; i < e; i++) has |= g[i].cnt[m] > 0;
        if (has) {
            if (g[k].ratio < 0) {
                double y = g[k].mean[m] * scale;
                fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/>\n",
                        L, L + pw, PY(y), PY(y), col);
            } else {
                fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
                for (int i = k; i < e; i++)
                    if (g[i].cnt[m] && g[i].ratio != EVAL_RATIO_AUTO) fprintf(f, "%.1f,%.1f ", PX(g[i].ratio), PY(g[i].mean[m] * scale));
                fprintf(f, "\"/>\n");
                for (int i = k; i < e; i++) {
                    if (!g[i].cnt[m]) continue;
                    if (g[i].ratio != EVAL_RATIO_AUTO) {
                        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", PX(g[i].ratio), PY(g[i].mean[m] * scale), col);
                    } else if (isfinite(group_x(&g[i]))) {
                        double x = PX(group_x(&g[i])), y = PY(g[i].mean[m] * scale);
                        fprintf(f, "<path d=\"M%.1f %.1fl7 7l-7 7l-7 -7z\" fill=\"white\" stroke=\"%s\" stroke-width=\"2\"/>\n", x, y - 7, col);
                        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">auto</text>\n", x + 9, y - 8);
                    }
                }
            }
            int ly = T + 10 + legend * 20;
            fprintf(f, "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", L + pw + 12, L + pw + 36, ly, ly, col,
                    g[k].ratio < 0 ? " stroke-dasharray=\"6,4\"" : "");
            fprintf(f, "<text x=\"%d\" y=\"%d\">", L + pw + 42, ly + 4);
            xml_esc(f, g[k].method);
            fprintf(f, "</text>\n");
            legend++;
        }
        k = e;
    }
#undef PX
#undef PY
    fprintf(f, "</svg>\n");
    return 1;
}

/* ---- outputs ------------------------------------------------------------------------- */

typedef struct {
    char    name[160];
    char    caption[160];
    mstream svg;
} plot;

int eval_write_outputs(const char *dir, const char *title, const eval_recs *rs, char *err,
                       size_t el) {
    int    ng = 0, rc = -1;
    group *g  = make_groups(rs, &ng);
    if (!g) {
        snprintf(err, el, "out of memory");
        return -1;
    }
    int     gold = dataset_has_gold(rs);
    plot   *pl   = calloc((size_t)ng + 4, sizeof *pl);
    int     np   = 0;
    mstream md = {0}, rep = {0}, html = {0};
    cJSON  *root = NULL;
    if (!pl || ms_open(&md) || ms_open(&rep) || ms_open(&html)) {
        snprintf(err, el, "out of memory");
        goto out;
    }

    /* summary.json */
    root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "dataset", rs->dataset ? rs->dataset : "");
    cJSON_AddNumberToObject(root, "records", rs->n);
    cJSON_AddNumberToObject(root, "bad_lines", rs->n_bad);
    {
        int n_ex = 0;
        for (int i = 0; i < rs->n; i++) {
            int seen = 0;
            for (int j = 0; j < i && !seen; j++) seen = !strcmp(rs->r[j].id, rs->r[i].id);
            n_ex += !seen;
        }
        cJSON_AddNumberToObject(root, "examples", n_ex);
    }
    cJSON *rows = cJSON_AddArrayToObject(root, "rows");
    for (int k = 0; k < ng; k++) cJSON_AddItemToArray(rows, group_json(&g[k]));

    double L[64], D[64];
    int    nl = distinct(rs, 0, L, 64), nd = distinct(rs, 1, D, 64);
    int    heat = nl > 0 && nd > 0;
    if (heat) {
        cJSON *cells = cJSON_AddArrayToObject(root, "needle_cells");
        for (int k = 0; k < ng; k++)
            for (int i = 0; i < nl; i++)
                for (int j = 0; j < nd; j++) {
                    int    n;
                    double v = cell_score(rs, &g[k], L[i], D[j], &n);
                    if (!n) continue;
                    cJSON *c = cJSON_CreateObject();
                    cJSON_AddStringToObject(c, "method", g[k].method);
                    if (g[k].ratio == EVAL_RATIO_AUTO) cJSON_AddStringToObject(c, "ratio", "auto");
                    else if (g[k].ratio >= 0) cJSON_AddNumberToObject(c, "ratio", rnd9(g[k].ratio));
                    else cJSON_AddNullToObject(c, "ratio");
                    cJSON_AddNumberToObject(c, "length", L[i]);
                    cJSON_AddNumberToObject(c, "depth", rnd9(D[j]));
                    cJSON_AddNumberToObject(c, "n", n);
                    cJSON_AddNumberToObject(c, "score", rnd9(v));
                    cJSON_AddItemToArray(cells, c);
                }
    }
    /* per task x length (ruler-niah) */
    int has_task = 0;
    for (int i = 0; i < rs->n; i++) has_task |= rs->r[i].task != NULL;
    if (has_task) {
        cJSON *tasks = cJSON_AddArrayToObject(root, "task_cells");
        for (int k = 0; k < ng; k++)
            for (int i = 0; i < g[k].n; i++) {
                const eval_rec *r = &rs->r[g[k].idx[i]];
                int             first = 1;
                for (int j = 0; j < i && first; j++) {
                    const eval_rec *q = &rs->r[g[k].idx[j]];
                    first = !(q->task && r->task && !strcmp(q->task, r->task) && fabs(q->length - r->length) < 1e-9);
                }
                if (!first || !r->task) continue;
                double s = 0;
                int    n = 0;
                for (int j = i; j < g[k].n; j++) {
                    const eval_rec *q = &rs->r[g[k].idx[j]];
                    if (q->task && !strcmp(q->task, r->task) && fabs(q->length - r->length) < 1e-9 && isfinite(q->score)) s += q->score, n++;
                }
                cJSON *c = cJSON_CreateObject();
                cJSON_AddStringToObject(c, "method", g[k].method);
                if (g[k].ratio == EVAL_RATIO_AUTO) cJSON_AddStringToObject(c, "ratio", "auto");
                else if (g[k].ratio >= 0) cJSON_AddNumberToObject(c, "ratio", rnd9(g[k].ratio));
                else cJSON_AddNullToObject(c, "ratio");
                cJSON_AddStringToObject(c, "task", r->task);
                cJSON_AddNumberToObject(c, "length", r->length);
                cJSON_AddNumberToObject(c, "n", n);
                cJSON_AddNumberToObject(c, "score", n ? rnd9(s / n) : NAN);
                cJSON_AddItemToArray(tasks, c);
            }
    }
    char *js_text = cJSON_Print(root);
    if (!js_text) {
        snprintf(err, el, "out of memory");
        goto out;
    }
    int w = put_file(dir, "summary.json", js_text, strlen(js_text), err, el);
    free(js_text);
    if (w) goto out;

    /* summary.md */
    fprintf(md.f, "# ");
    md_esc(md.f, title);
    fprintf(md.f, "\n\n%d records, %d examples%s\n\n", rs->n, (int)cJSON_GetObjectItem(root, "examples")->valuedouble,
            rs->n_bad ? " (some lines of results.jsonl could not be read)" : "");
    summary_md(md.f, g, ng, score_title(rs));
    fprintf(md.f, "\n%s", COLUMN_NOTES);
    ms_close(&md);
    if (put_file(dir, "summary.md", md.p, md.n, err, el)) goto out;

    /* plots */
    struct {
        int         m;
        double      scale;
        const char *name, *title, *ylabel;
    } charts[] = {
        {gold ? M_SCORE : M_FID_F1, 100, "quality_vs_ratio.svg",
         gold ? "task score vs recompute ratio" : "answer F1 vs full (no gold) vs recompute ratio",
         gold ? "score x 100" : "F1 vs full x 100"},
        {M_TF, 100, "fidelity_vs_ratio.svg", "top-1 agreement with full (teacher-forced)", "% positions"},
        {M_KL, 1, "kl_vs_ratio.svg", "first-token KL(full || method)", "nats"},
        {M_TTFT, 1, "ttft_vs_ratio.svg", "TTFT vs recompute ratio (warm chunk cache)", "ms"},
    };
    for (size_t c = 0; c < sizeof charts / sizeof charts[0]; c++) {
        plot *p = &pl[np];
        if (ms_open(&p->svg)) {
            snprintf(err, el, "out of memory");
            goto out;
        }
        int ok = svg_vs_ratio(p->svg.f, g, ng, charts[c].m, charts[c].scale, charts[c].title, charts[c].ylabel);
        ms_close(&p->svg);
        if (!ok) {
            ms_free(&p->svg);
            continue;
        }
        snprintf(p->name, sizeof p->name, "%s", charts[c].name);
        snprintf(p->caption, sizeof p->caption, "%s", charts[c].title);
        np++;
    }
    int first_heat = np;
    if (heat)
        for (int k = 0; k < ng; k++) {
            int any = 0;
            for (int i = 0; i < g[k].n && !any; i++) any = isfinite(rs->r[g[k].idx[i]].depth) && rs->r[g[k].idx[i]].depth >= 0;
            if (!any) continue;
            plot *p = &pl[np];
            if (ms_open(&p->svg)) {
                snprintf(err, el, "out of memory");
                goto out;
            }
            svg_heatmap(p->svg.f, rs, &g[k], L, nl, D, nd);
            ms_close(&p->svg);
            char label[128];
            group_label(&g[k], label, sizeof label);
            for (char *c = label; *c; c++)
                if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '.' || *c == '-')) *c = '_';
            snprintf(p->name, sizeof p->name, "heatmap_%s.svg", label);
            group_label(&g[k], p->caption, sizeof p->caption);
            np++;
        }
    for (int i = 0; i < np; i++)
        if (put_file(dir, pl[i].name, pl[i].svg.p, pl[i].svg.n, err, el)) goto out;

    /* report.md */
    fprintf(rep.f, "# ");
    md_esc(rep.f, title);
    fprintf(rep.f, "\n\n%d records, %d examples.\n\n## Summary\n\n", rs->n, (int)cJSON_GetObjectItem(root, "examples")->valuedouble);
    summary_md(rep.f, g, ng, score_title(rs));
    fprintf(rep.f, "\n%s\n## Plots\n\n", COLUMN_NOTES);
    for (int i = 0; i < first_heat; i++) fprintf(rep.f, "![%s](%s)\n\n", pl[i].caption, pl[i].name);
    if (np > first_heat) {
        fprintf(rep.f, "## Needle heatmaps (depth x haystack length)\n\n");
        for (int i = first_heat; i < np; i++) fprintf(rep.f, "### %s\n\n![%s](%s)\n\n", pl[i].caption, pl[i].caption, pl[i].name);
    }
    cJSON *tc = cJSON_GetObjectItem(root, "task_cells");
    if (tc && cJSON_GetArraySize(tc) > 0) {
        fprintf(rep.f, "## Per task and length\n\n| method | ratio | task | length | n | score |\n|---|---|---|---|---|---|\n");
        cJSON *c;
        cJSON_ArrayForEach(c, tc) {
            cJSON *r = cJSON_GetObjectItem(c, "ratio");
            fprintf(rep.f, "| %s | ", cJSON_GetObjectItem(c, "method")->valuestring);
            if (cJSON_IsNumber(r)) fprintf(rep.f, "%.4g", r->valuedouble);
            else fputs("-", rep.f);
            fputs(" | ", rep.f);
            md_esc(rep.f, cJSON_GetObjectItem(c, "task")->valuestring);
            double sc = cJSON_GetObjectItem(c, "score")->valuedouble;
            fprintf(rep.f, " | %.0f | %d |", cJSON_GetObjectItem(c, "length")->valuedouble,
                    (int)cJSON_GetObjectItem(c, "n")->valuedouble);
            cell(rep.f, cJSON_IsNumber(cJSON_GetObjectItem(c, "score")) ? sc : NAN, "%.1f", 100);
            fputc('\n', rep.f);
        }
    }
    ms_close(&rep);
    if (put_file(dir, "report.md", rep.p, rep.n, err, el)) goto out;

    /* report.html: the same, self-contained (plots inline) */
    fprintf(html.f, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
    xml_esc(html.f, title);
    fprintf(html.f, "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
                    "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f3f3f3}"
                    "td:first-child{text-align:left}</style></head><body>\n<h1>");
    xml_esc(html.f, title);
    fprintf(html.f, "</h1>\n<p>%d records, %d examples.</p>\n<h2>Summary</h2>\n<table>\n", rs->n,
            (int)cJSON_GetObjectItem(root, "examples")->valuedouble);
    {
        /* the markdown table rows, turned into HTML rows */
        mstream t;
        if (ms_open(&t)) {
            snprintf(err, el, "out of memory");
            goto out;
        }
        summary_md(t.f, g, ng, score_title(rs));
        ms_close(&t);
        int   row = 0;
        char *save = NULL;
        for (char *ln = strtok_r(t.p, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save), row++) {
            if (row == 1) continue; /* the |---| line */
            const char *tag = row == 0 ? "th" : "td";
            fputs("<tr>", html.f);
            char *p = ln + 1; /* after the first | */
            while (*p) {
                char *e = p;
                while (*e && !(*e == '|' && e[-1] != '\\')) e++;
                if (!*e) break;
                *e = 0;
                while (*p == ' ') p++;
                char *q = p + strlen(p);
                while (q > p && q[-1] == ' ') *--q = 0;
                fprintf(html.f, "<%s>", tag);
                for (char *c = p; *c; c++) {
                    if (*c == '\\' && c[1] == '|') continue;
                    char s2[2] = {*c, 0};
                    xml_esc(html.f, s2);
                }
                fprintf(html.f, "</%s>", tag);
                p = e + 1;
            }
            fputs("</tr>\n", html.f);
        }
        ms_free(&t);
    }
    fprintf(html.f, "</table>\n<p style=\"max-width:60em\">");
    xml_esc(html.f, COLUMN_NOTES);
    fprintf(html.f, "</p>\n<h2>Plots</h2>\n");
    for (int i = 0; i < np; i++) {
        if (i == first_heat) fprintf(html.f, "<h2>Needle heatmaps (depth x haystack length)</h2>\n");
        fprintf(html.f, "<div>%.*s</div>\n", (int)pl[i].svg.n, pl[i].svg.p);
    }
    fprintf(html.f, "</body></html>\n");
    ms_close(&html);
    if (put_file(dir, "report.html", html.p, html.n, err, el)) goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    for (int i = 0; pl && i < np + 1 && i < ng + 4; i++) ms_free(&pl[i].svg);
    free(pl);
    ms_free(&md), ms_free(&rep), ms_free(&html);
    free_groups(g, ng);
    return rc;
}
