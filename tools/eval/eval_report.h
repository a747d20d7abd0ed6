/* eval_report.h - reading the per-run JSON lines of `kvfuse eval` back, aggregating them per
 * method x ratio (and per needle cell), and writing summary.json, summary.md, and report.md /
 * report.html with SVG plots drawn here (quality, fidelity and TTFT against the recompute
 * ratio; a depth x length heatmap per method for needle datasets). No model needed: `kvfuse
 * eval --report-only` rebuilds everything from results.jsonl. */
#ifndef KVF_EVAL_REPORT_H
#define KVF_EVAL_REPORT_H

#include <stddef.h>

/* One line of results.jsonl (one method at one ratio on one example). Numbers that a line does
 * not have are NAN (ratio: -1 for the methods without one). */
typedef struct eval_rec {
    char  *id, *method, *task, *metric;
    double ratio;
    double score, em;                            /* task metric (NAN without gold) */
    double fid_em, fid_f1, kl, top1_first, tf_agree;
    double ttft_ms, load_ms, rope_ms, recompute_ms, first_token_ms, tpot_ms, precompute_ms;
    double recomputed_frac, compute_frac, kv_bytes_loaded;
    double length, depth;                        /* grid coordinates (NAN if none) */
    double total_tokens;
    double ratio_used;                           /* the ratio an auto run picked (else NAN) */
} eval_rec;

typedef struct eval_recs {
    eval_rec *r;
    int       n, cap;
    int       n_bad;   /* lines that could not be parsed (skipped) */
    char     *dataset; /* of the first record */
} eval_recs;

/* Read results.jsonl; a missing file is an empty set. Unparseable lines (e.g. one cut short by
 * a crash) are counted in n_bad and reported on stderr with their line number. Returns 0, or -1
 * with a message. */
int  eval_recs_read(const char *path, eval_recs *out, char *err, size_t errlen);
void eval_recs_free(eval_recs *r);
/* Parse one JSON line into rec (strings malloc'd). Returns 0, or -1 when it is not a record. */
int  eval_rec_parse(const char *line, size_t len, eval_rec *rec);
void eval_rec_free(eval_rec *r);

/* The ratio of a run with --ratios auto (fixed ratios are > 0): records write "ratio": "auto"
 * (with "ratio_used", the ratio the request picked, and "fidelity"). */
#define EVAL_RATIO_AUTO 0.0
/* "-" for no ratio, "auto", else "%.4g" of the ratio: the key used to match runs */
void eval_ratio_key(double ratio, char *buf, size_t n);

/* Write DIR/summary.json, DIR/summary.md, DIR/report.md, DIR/report.html and the SVG plots
 * (atomically: each file is written beside and renamed). `title` heads the report. Returns 0,
 * or -1 with a message. */
int eval_write_outputs(const char *dir, const char *title, const eval_recs *recs, char *err,
                       size_t errlen);

/* mean of the finite values (NAN when none); n_out = how many */
double eval_mean_finite(const double *v, int n, int *n_out);

#endif /* KVF_EVAL_REPORT_H */
