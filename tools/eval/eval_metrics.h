/* eval_metrics.h - the metrics of `kvfuse eval`: SQuAD/LongBench answer normalisation, token
 * F1 and exact match, substring match (needle, key-value retrieval), RULER's string_match_all,
 * the KL divergence of two first-token distributions, argmax, and small aggregation helpers.
 * Pure functions over bytes and floats: no model needed (unit-tested in tests/test_eval.c). */
#ifndef KVF_EVAL_METRICS_H
#define KVF_EVAL_METRICS_H

#include <stddef.h>
#include <stdint.h>

/* SQuAD / LongBench normalize_answer, applied to UTF-8 text:
 *   1. lower-case (ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic capitals; other
 *      characters are kept as they are),
 *   2. delete ASCII punctuation (Python's string.punctuation: !"#$%&'()*+,-./:;<=>?@[\]^_`{|}~),
 *   3. replace the words "a", "an", "the" by a space (a word = a maximal run of letters,
 *      digits and '_', Unicode-aware like Python's \w: re.sub(r'\b(a|an|the)\b', ' ', s)),
 *   4. split on white space and join the words with single spaces.
 * Returns a malloc'd string (NULL when out of memory). Invalid UTF-8 bytes are kept. */
char *eval_normalize(const char *s);

/* Words of the normalised text (malloc'd array of pointers into *buf, which the caller frees
 * together with the array). Returns the count, or -1 when out of memory. */
int eval_words(const char *s, char ***words, char **buf);

/* Token F1 of `pred` against one gold answer, as LongBench's qa_f1_score: normalise both,
 * multiset overlap of the words; 0 when nothing overlaps (so also when either is empty).
 * With empty_is_match, two answers that are both empty after normalisation score 1 (SQuAD's
 * convention; used for fidelity between two generated answers). */
double eval_f1(const char *pred, const char *gold, int empty_is_match);
/* max over the gold answers of eval_f1(pred, gold[i], 0); 0 when n_gold == 0 */
double eval_f1_max(const char *pred, const char *const *gold, int n_gold);

/* 1 when the normalised strings are equal, else 0. */
double eval_em(const char *pred, const char *gold);
double eval_em_max(const char *pred, const char *const *gold, int n_gold);

/* 1 when the normalised gold answer occurs in the normalised prediction (lost-in-the-middle's
 * best_subspan_em); max over gold answers. An empty normalised gold never matches. */
double eval_substring(const char *pred, const char *gold);
double eval_substring_max(const char *pred, const char *const *gold, int n_gold);

/* RULER's string_match_all: the fraction of references that occur in the prediction,
 * compared case-insensitively (ASCII case folding; no other normalisation), 0 for n_ref == 0. */
double eval_string_match_all(const char *pred, const char *const *refs, int n_ref);

/* The metric of a dataset. */
typedef enum {
    EVAL_METRIC_NONE = 0,  /* no gold answers: fidelity and latency only */
    EVAL_METRIC_F1,        /* eval_f1_max */
    EVAL_METRIC_SUBSTRING, /* eval_substring_max */
    EVAL_METRIC_MATCH_ALL, /* eval_string_match_all */
} eval_metric;

const char *eval_metric_name(eval_metric m); /* "none", "f1", "substring", "string_match_all" */
/* score of pred under metric m (0 for NONE) */
double eval_score(eval_metric m, const char *pred, const char *const *gold, int n_gold);

/* log-softmax of n logits into out (double), computed stably (max subtracted, log-sum-exp in
 * double). Returns 0, or -1 when a logit is NaN or n < 1. +inf logits are an error too. */
int eval_log_softmax(const float *logits, int n, double *out);

/* KL(p || q) = sum_i p_i (log p_i - log q_i) of the softmax distributions of two logit vectors
 * over the full vocabulary, in double. Terms with p_i == 0 contribute 0. Returns -1 on bad
 * input (NaN, n < 1) or out of memory; otherwise >= 0 (+inf when q_i underflows to 0 where
 * p_i > 0, which cannot happen for finite logits in double). */
double eval_kl(const float *logits_p, const float *logits_q, int n);

/* index of the largest value, lowest index on ties (as the greedy sampler); -1 when n < 1 */
int32_t eval_argmax(const float *v, int n);

/* Teacher-forced agreement: fraction of positions where the method's argmax equals the
 * reference token (n_match / n_pos); 0 positions -> 1 (nothing to disagree on). */
double eval_ratio_or_one(int n_match, int n_pos);

#endif /* KVF_EVAL_METRICS_H */
