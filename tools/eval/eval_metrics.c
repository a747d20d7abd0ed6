/* eval_metrics.c - answer normalisation, F1 / EM / substring / string_match_all, first-token
 * KL divergence (see eval_metrics.h for the exact definitions). */
#include "eval/eval_metrics.h"

#include "engine/unicode.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* lower-case mapping of one code point (the ranges named in eval_metrics.h) */
static uint32_t lower_cp(uint32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7) return c + 32;      /* Latin-1 */
    if (c >= 0x100 && c <= 0x137) return c | 1;                  /* Latin Ext-A, even upper */
    if (c >= 0x139 && c <= 0x148) return (c & 1) ? c + 1 : c;    /* odd upper */
    if (c >= 0x14A && c <= 0x177) return c | 1;
    if (c == 0x178) return 0xFF;
    if (c >= 0x179 && c <= 0x17E) return (c & 1) ? c + 1 : c;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2) return c + 32;   /* Greek */
    if (c == 0x386) return 0x3AC;
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F) return c + 32;                 /* Cyrillic */
    if (c >= 0x400 && c <= 0x40F) return c + 80;
    return c;
}

static int is_ascii_punct(uint32_t c) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
}

/* Python's str.split() white space: Unicode White_Space plus the ASCII separators 0x1C-0x1F */
static int is_space_cp(uint32_t c) {
    if (c == KVF_U_INVALID) return 0;
    return (c >= 0x1C && c <= 0x1F) || (kvf_unicode_class(c) & KVF_U_SPACE);
}

/* Python's \w: letters, numbers, underscore */
static int is_word_cp(uint32_t c) {
    if (c == KVF_U_INVALID) return 0;
    return c == '_' || (kvf_unicode_class(c) & (KVF_U_LETTER | KVF_U_NUMBER));
}

/* one decoded character of a working buffer */
typedef struct {
    uint32_t cp;  /* KVF_U_INVALID for a raw byte */
    uint8_t  raw; /* the byte when cp is invalid */
} uchar;

static size_t put_char(char *out, uchar u) {
    if (u.cp == KVF_U_INVALID) {
        out[0] = (char)u.raw;
        return 1;
    }
    if (u.cp == 0x130) { /* capital I with dot above lower-cases to i + combining dot above */
        memcpy(out, "i\xCC\x87", 3);
        return 3;
    }
    size_t k = kvf_utf8_encode(u.cp, out);
    return k;
}

char *eval_normalize(const char *s) {
    size_t n = strlen(s);
    uchar *u = malloc(sizeof(uchar) * (n + 1));
    char  *out = malloc(n * 3 + 1); /* a character never grows by more than 3x (U+0130) */
    if (!u || !out) {
        free(u), free(out);
        return NULL;
    }
    /* 1-2: decode, lower-case, drop ASCII punctuation */
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t   len;
        uint32_t c = kvf_utf8_decode(s + i, n - i, &len);
        if (c == KVF_U_INVALID) {
            u[m].cp = c, u[m].raw = (uint8_t)s[i], m++;
        } else if (!is_ascii_punct(c)) {
            u[m].cp = c == 0x130 ? 0x130 : lower_cp(c), u[m].raw = 0, m++;
        }
        i += len;
    }
    /* 3: drop word runs equal to a / an / the; 4: join words separated by white space */
    size_t o = 0;
    int    pending_space = 0;
    for (size_t i = 0; i < m;) {
        if (is_space_cp(u[i].cp)) {
            pending_space = o > 0;
            i++;
            continue;
        }
        size_t j = i;
        if (is_word_cp(u[i].cp)) {
            while (j < m && is_word_cp(u[j].cp)) j++;
            size_t k = j - i;
            int    article = (k == 1 && u[i].cp == 'a') ||
                          (k == 2 && u[i].cp == 'a' && u[i + 1].cp == 'n') ||
                          (k == 3 && u[i].cp == 't' && u[i + 1].cp == 'h' && u[i + 2].cp == 'e');
            if (article) { /* replaced by a space, as re.sub(r'\b(a|an|the)\b', ' ', s) */
                pending_space = o > 0;
                i = j;
                continue;
            }
        } else {
            j = i + 1; /* one non-word, non-space character */
        }
        if (pending_space) out[o++] = ' ', pending_space = 0;
        for (; i < j; i++) o += put_char(out + o, u[i]);
    }
    out[o] = 0;
    free(u);
    return out;
}

int eval_words(const char *s, char ***words, char **buf) {
    *words = NULL;
    *buf   = eval_normalize(s);
    if (!*buf) return -1;
    int n = (*buf)[0] != 0; /* normalised: single spaces, none leading or trailing */
    for (char *p = *buf; *p; p++) n += *p == ' ';
    *words = malloc(sizeof(char *) * (size_t)(n > 0 ? n : 1));
    if (!*words) {
        free(*buf), *buf = NULL;
        return -1;
    }
    int k = 0;
    for (char *p = *buf; *p;) {
        (*words)[k++] = p;
        char *sp      = strchr(p, ' ');
        if (!sp) break;
        *sp = 0, p = sp + 1;
    }
    return k;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

double eval_f1(const char *pred, const char *gold, int empty_is_match) {
    char **pw, **gw, *pb, *gb;
    int    np = eval_words(pred, &pw, &pb);
    int    ng = np < 0 ? -1 : eval_words(gold, &gw, &gb);
    if (np < 0 || ng < 0) {
        if (np >= 0) free(pw), free(pb);
        return 0;
    }
    double f1 = 0;
    if (np == 0 || ng == 0) {
        f1 = empty_is_match && np == 0 && ng == 0 ? 1.0 : 0.0;
    } else {
        /* multiset intersection of two sorted word lists */
        qsort(pw, (size_t)np, sizeof *pw, cmp_str);
        qsort(gw, (size_t)ng, sizeof *gw, cmp_str);
        int same = 0;
        for (int i = 0, j = 0; i < np && j < ng;) {
            int c = strcmp(pw[i], gw[j]);
            if (c == 0) same++, i++, j++;
            else if (c < 0) i++;
            else j++;
        }
        if (same > 0) {
            double p = (double)same / np, r = (double)same / ng;
            f1       = 2 * p * r / (p + r);
        }
    }
    free(pw), free(pb), free(gw), free(gb);
    return f1;
}

double eval_f1_max(const char *pred, const char *const *gold, int n_gold) {
    double best = 0;
    for (int i = 0; i < n_gold; i++) {
        double f = eval_f1(pred, gold[i], 0);
        if (f > best) best = f;
    }
    return best;
}

double eval_em(const char *pred, const char *gold) {
    char *a = eval_normalize(pred), *b = eval_normalize(gold);
    int   eq = a && b && strcmp(a, b) == 0;
    free(a), free(b);
    return eq ? 1.0 : 0.0;
}

double eval_em_max(const char *pred, const char *const *gold, int n_gold) {
    for (int i = 0; i < n_gold; i++)
        if (eval_em(pred, gold[i]) == 1.0) return 1.0;
    return 0.0;
}

double eval_substring(const char *pred, const char *gold) {
    char *a = eval_normalize(pred), *b = eval_normalize(gold);
    int   hit = a && b && b[0] && strstr(a, b) != NULL;
    free(a), free(b);
    return hit ? 1.0 : 0.0;
}

double eval_substring_max(const char *pred, const char *const *gold, int n_gold) {
    for (int i = 0; i < n_gold; i++)
        if (eval_substring(pred, gold[i]) == 1.0) return 1.0;
    return 0.0;
}

static char *ascii_lower_dup(const char *s) {
    char *d = strdup(s);
    if (d)
        for (char *p = d; *p; p++)
            if (*p >= 'A' && *p <= 'Z') *p = (char)(*p + 32);
    return d;
}

double eval_string_match_all(const char *pred, const char *const *refs, int n_ref) {
    if (n_ref <= 0) return 0;
    char *p = ascii_lower_dup(pred);
    if (!p) return 0;
    int hits = 0;
    for (int i = 0; i < n_ref; i++) {
        char *r = ascii_lower_dup(refs[i]);
        if (r && strstr(p, r)) hits++;
        free(r);
    }
    free(p);
    return (double)hits / n_ref;
}

const char *eval_metric_name(eval_metric m) {
    switch (m) {
    case EVAL_METRIC_F1: return "f1";
    case EVAL_METRIC_SUBSTRING: return "substring";
    case EVAL_METRIC_MATCH_ALL: return "string_match_all";
    default: return "none";
    }
}

double eval_score(eval_metric m, const char *pred, const char *const *gold, int n_gold) {
    switch (m) {
    case EVAL_METRIC_F1: return eval_f1_max(pred, gold, n_gold);
    case EVAL_METRIC_SUBSTRING: return eval_substring_max(pred, gold, n_gold);
    case EVAL_METRIC_MATCH_ALL: return eval_string_match_all(pred, gold, n_gold);
    default: return 0;
    }
}

int eval_log_softmax(const float *logits, int n, double *out) {
    if (n < 1) return -1;
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        double v = logits[i];
        if (isnan(v) || v == INFINITY) return -1;
        if (v > mx) mx = v;
    }
    if (mx == -INFINITY) return -1; /* every logit -inf: no distribution */
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - mx);
    double lse = mx + log(sum);
    for (int i = 0; i < n; i++) out[i] = (double)logits[i] - lse;
    return 0;
}

double eval_kl(const float *logits_p, const float *logits_q, int n) {
    if (n < 1) return -1;
    double *lp = malloc(sizeof(double) * (size_t)n * 2);
    if (!lp) return -1;
    double *lq = lp + n;
    double  kl = -1;
    if (eval_log_softmax(logits_p, n, lp) == 0 && eval_log_softmax(logits_q, n, lq) == 0) {
        kl = 0;
        for (int i = 0; i < n; i++) {
            if (lp[i] == -INFINITY) continue; /* p_i = 0 */
            double p = exp(lp[i]);
            if (p == 0) continue;
            kl += p * (lp[i] - lq[i]);
        }
        if (kl < 0) kl = 0; /* rounding: KL >= 0 */
    }
    free(lp);
    return kl;
}

int32_t eval_argmax(const float *v, int n) {
    if (n < 1) return -1;
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

double eval_ratio_or_one(int n_match, int n_pos) {
    return n_pos > 0 ? (double)n_match / n_pos : 1.0;
}
