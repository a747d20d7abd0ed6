/* conv_budget.c - long conversations under a KV budget (issue 13, EpiCache), one run.
 *
 * Each conversation is a chat whose user turns hand the assistant MuSiQue passages of several
 * questions ("Note N: <passage>", answered "Noted."), the passages of one question (a topic)
 * after those of the previous one, then asks one of those questions. Each question is answered
 * in several modes, greedy, -n tokens. Mode "full" has the whole history in the cache
 * (unbounded; prefilled once per conversation). The other modes prefill the history with
 * kvf_session_prefill_budget under --budget-frac of its length and differ in the probe: "epi"
 * the probe of the episode the question is routed to (kvf_episodes_*), "recent" the recent
 * window (block prefill without episodes), "question" the question's words (question-specific
 * eviction, which EpiCache argues fails in later turns), "epiq" the episode's probe, then the
 * question's words, and "epil" epi with each layer's budget from a --layers profile
 * (kvf_conv_layer_budgets, --alpha), "epia" epi with the layers' shares recomputed from the
 * probe's attention every round (layer_adapt), "turn" the question's whole turn as the model
 * reads it (template and the assistant's header; its last --probe tokens), "message" the user's
 * message without the template (instruction and question; its last --probe tokens, what serve
 * uses). --modes picks them (default epi,recent); full
 * always runs.
 *
 * One JSON line per (conversation, question, mode) on stdout: the answer, the gold answers, peak
 * cells, KV bytes resident after the answer, times. bench/conv_budget.py turns the lines into
 * the table (agreement with full, memory against full).
 *
 *   build/bench/conv_budget -m MODEL --data musique_s.json [--conversations 5] [--topics 3]
 *       [--passages 4] [--budget-frac 0.25] [--block 256] [--episodes 4] [--probe 64]
 *       [-n 16] [--threads N] [--modes epi,recent] [--offset 0] [--grounded]
 */
#include "kvfuse.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_MSG 128

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* whether the comma-separated list names mode */
static bool has_mode(const char *list, const char *mode) {
    size_t n = strlen(mode);
    for (const char *p = list; *p;) {
        const char *e = strchr(p, ',');
        size_t      l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !strncmp(p, mode, n)) return true;
        p += l + (e != NULL);
    }
    return false;
}

static void usage(void) {
    fprintf(stderr,
            "usage: conv_budget -m MODEL (--data musique_s.json | --convs CONVS.json)\n"
            "       [--conversations C] [--topics K]   (--convs: conversations of\n"
            "       bench/convqa.py, their own messages and questions; --topics, --passages and\n"
            "       --grounded do not apply)\n"
            "       [--passages P] [--budget-frac F] [--block B] [--episodes E] [--probe N]\n"
            "       [-n TOKENS] [--threads N] [--modes epi,recent,question,epiq,epil,epia,turn,message]\n"
            "       [--offset I] [--score max|sum]   (a cell's probe attention: the maximum\n"
            "       over the probe's rows, the default, or their sum)\n"
            "       [--chunk C]   (every head keeps the same cells, whole runs of C; not epil/epia)\n"
            "       [--pool W]   (a cell's score averaged over W neighbours, 1..64, default 5)\n"
            "       [--probe-idf]   (a probe row's attention weighted by how rare its token is in\n"
            "       the history's blocks)\n"
            "       [--grounded]   (only questions whose gold answer occurs in one of their\n"
            "       passages; those passages are among the P given, the best-ranked others fill\n"
            "       the rest)\n"
            "       [--layers PROFILE] [--alpha A]   (epil: epi with layer budgets from\n"
            "       `kvfuse conv-profile`, skewed by A, default 1.3)\n");
}

static void json_str(FILE *o, const char *s) {
    fputc('"', o);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(o, "\\%c", c);
        else if (c < 0x20)
            fprintf(o, "\\u%04x", c);
        else
            fputc(c, o);
    }
    fputc('"', o);
}

/* tokens of the chat-formatted messages[0..n) (+ assistant opening when gen) into *out */
static int32_t format_tokens(const kvf_model *m, const kvf_chat_msg *msgs, int n, bool gen,
                             int32_t **out) {
    int32_t need = kvf_chat_format(m, msgs, (size_t)n, gen, NULL, 0);
    if (need == INT32_MIN) return -1;
    if (need < 0) need = -need;
    char *buf = malloc((size_t)need + 1);
    if (!buf || kvf_chat_format(m, msgs, (size_t)n, gen, buf, need + 1) < 0) return free(buf), -1;
    int32_t cap = need + 16;
    *out = malloc(sizeof(int32_t) * (size_t)cap);
    int32_t k = *out ? kvf_tokenize(m, buf, (size_t)need, *out, cap,
                                    KVF_TOK_PARSE_SPECIAL | KVF_TOK_ADD_BOS)
                     : -1;
    free(buf);
    return k;
}

static int answer(kvf_session *s, const kvf_model *m, const int32_t *q, int32_t nq, int n_predict,
                  char *out, size_t cap, double *ttft) {
    double t0 = now_ms();
    if (kvf_session_eval(s, q, nq, 0) != KVF_OK) return -1;
    *ttft = now_ms() - t0;
    size_t len = 0;
    int32_t V = kvf_model_n_vocab(m);
    out[0] = 0;
    for (int i = 0; i < n_predict; i++) {
        const float *lg = kvf_session_logits(s, -1);
        int32_t tok = 0;
        for (int32_t v = 1; v < V; v++)
            if (lg[v] > lg[tok]) tok = v;
        if (kvf_token_is_eog(m, tok)) break;
        char piece[256];
        int32_t k = kvf_token_to_piece(m, tok, piece, sizeof piece, false);
        if (k > 0 && len + (size_t)k < cap)
            memcpy(out + len, piece, (size_t)k), len += (size_t)k, out[len] = 0;
        if (kvf_session_eval(s, &tok, 1, 0) != KVF_OK) return -1;
    }
    return 0;
}

/* whether passage `ctx` of example `ex` contains one of its gold answers (case-insensitive) */
static bool has_gold(cJSON *ex, cJSON *ctx) {
    const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "text"));
    cJSON      *g    = cJSON_GetObjectItem(ex, "answers");
    for (int k = 0; text && k < cJSON_GetArraySize(g); k++) {
        const char *gs = cJSON_GetStringValue(cJSON_GetArrayItem(g, k));
        if (gs && *gs && strcasestr(text, gs)) return true;
    }
    return false;
}

/* The passages of example ex given as notes: its first P in retrieval order, or with
 * `grounded` those that contain a gold answer first and then the best-ranked others, up to P,
 * kept in retrieval order. idx[] gets their indices; returns how many (0: none grounded). */
static int pick_passages(cJSON *ex, int P, bool grounded, int *idx) {
    cJSON *ctxs = cJSON_GetObjectItem(ex, "ctxs");
    int    n    = cJSON_GetArraySize(ctxs), k = 0, n_gold = 0;
    bool   take[64] = {0};
    if (n > 64) n = 64;
    for (int j = 0; grounded && j < n && k < P; j++)
        if (has_gold(ex, cJSON_GetArrayItem(ctxs, j))) take[j] = true, k++, n_gold++;
    if (grounded && n_gold == 0) return 0;
    for (int j = 0; j < n && k < P; j++)
        if (!take[j]) take[j] = true, k++;
    k = 0;
    for (int j = 0; j < n; j++)
        if (take[j]) idx[k++] = j;
    return k;
}

int main(int argc, char **argv) {
    const char *model = NULL, *data = NULL, *convs_path = NULL;
    int n_conv = 5, topics = 3, passages = 4, block = 256, n_ep = 4, probe_max = 64, n_predict = 16;
    int threads = 0, offset = 0;
    const char *mode_list = "epi,recent", *layers = NULL;
    double alpha = 1.3;
    int score_sum = 0, chunk = 0, pool = 5;
    bool grounded = false, probe_idf = false;
    double frac = 0.25;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (!strcmp(a, "--grounded")) {
            grounded = true;
            continue;
        }
        if (!strcmp(a, "--probe-idf")) {
            probe_idf = true;
            continue;
        }
        if (!v) return usage(), 2;
        if (!strcmp(a, "-m"))
            model = v;
        else if (!strcmp(a, "--data"))
            data = v;
        else if (!strcmp(a, "--convs"))
            convs_path = v;
        else if (!strcmp(a, "--conversations"))
            n_conv = atoi(v);
        else if (!strcmp(a, "--topics"))
            topics = atoi(v);
        else if (!strcmp(a, "--passages"))
            passages = atoi(v);
        else if (!strcmp(a, "--budget-frac"))
            frac = atof(v);
        else if (!strcmp(a, "--block"))
            block = atoi(v);
        else if (!strcmp(a, "--episodes"))
            n_ep = atoi(v);
        else if (!strcmp(a, "--probe"))
            probe_max = atoi(v);
        else if (!strcmp(a, "-n"))
            n_predict = atoi(v);
        else if (!strcmp(a, "--threads"))
            threads = atoi(v);
        else if (!strcmp(a, "--offset"))
            offset = atoi(v);
        else if (!strcmp(a, "--modes"))
            mode_list = v;
        else if (!strcmp(a, "--layers"))
            layers = v;
        else if (!strcmp(a, "--alpha"))
            alpha = atof(v);
        else if (!strcmp(a, "--chunk"))
            chunk = atoi(v);
        else if (!strcmp(a, "--pool"))
            pool = atoi(v);
        else if (!strcmp(a, "--score") && (!strcmp(v, "sum") || !strcmp(v, "max")))
            score_sum = !strcmp(v, "sum");
        else
            return usage(), 2;
        i++;
    }
    if (!model || (!data == !convs_path) || n_conv < 1 || topics < 1 || passages < 1 ||
        topics * passages * 2 + 2 > MAX_MSG || !(frac > 0 && frac <= 1) || block < 1 || n_ep < 1 ||
        probe_max < 1 || probe_max > 4096 || n_predict < 1 || offset < 0 || !(alpha >= 0) || chunk < 0 ||
        pool < 1 || pool > 64 ||
        (has_mode(mode_list, "epil") && !layers))
        return usage(), 2;
    const char *ds_path = convs_path ? convs_path : data;
    char *txt = kvf_read_file(ds_path, NULL);
    cJSON *ds = txt ? cJSON_Parse(txt) : NULL;
    free(txt);
    if (!cJSON_IsArray(ds)) {
        fprintf(stderr, "conv_budget: cannot read %s as a JSON array\n", ds_path);
        return 1;
    }
    if (convs_path) { /* one file entry per conversation; topics is its number of questions */
        if (cJSON_GetArraySize(ds) < offset + n_conv) {
            fprintf(stderr, "conv_budget: %s has %d conversations, %d from %d asked\n", ds_path,
                    cJSON_GetArraySize(ds), n_conv, offset);
            return 1;
        }
        topics = 0;
        for (int c = 0; c < n_conv; c++) {
            cJSON *cv = cJSON_GetArrayItem(ds, offset + c), *ms = cJSON_GetObjectItem(cv, "messages");
            cJSON *qa = cJSON_GetObjectItem(cv, "questions");
            int n = cJSON_GetArraySize(qa);
            bool ok = cJSON_IsArray(ms) && cJSON_GetArraySize(ms) >= 1 &&
                      cJSON_GetArraySize(ms) + 1 <= MAX_MSG && n >= 1;
            for (int k = 0; ok && k < cJSON_GetArraySize(ms); k++) {
                cJSON *mk = cJSON_GetArrayItem(ms, k);
                ok = cJSON_GetStringValue(cJSON_GetObjectItem(mk, "role")) &&
                     cJSON_GetStringValue(cJSON_GetObjectItem(mk, "content"));
            }
            for (int k = 0; ok && k < n; k++) {
                cJSON *qk = cJSON_GetArrayItem(qa, k);
                ok = cJSON_GetStringValue(cJSON_GetObjectItem(qk, "question")) &&
                     cJSON_IsArray(cJSON_GetObjectItem(qk, "answers"));
            }
            if (!ok || (topics && n != topics)) {
                fprintf(stderr,
                        "conv_budget: %s: conversation %d needs messages (1..%d, each with role "
                        "and content) and questions (each with question and answers), as many "
                        "as the first conversation's\n",
                        ds_path, offset + c, MAX_MSG - 1);
                return 1;
            }
            topics = n;
        }
    }
    /* the examples used, in order from offset: every one, or with --grounded those whose gold
     * answer occurs in one of their passages */
    int n_ex = cJSON_GetArraySize(ds), need = n_conv * topics, n_use = 0;
    int *use_ex = calloc((size_t)(need > 0 ? need : 1), sizeof(int)), pidx[64];
    for (; convs_path && use_ex && n_use < need; n_use++) /* the conversation's index in the file */
        use_ex[n_use] = offset + n_use / topics;
    for (int i = offset; use_ex && i < n_ex && n_use < need; i++)
        if (pick_passages(cJSON_GetArrayItem(ds, i), passages, grounded, pidx) > 0) use_ex[n_use++] = i;
    if (!use_ex || n_use < need) {
        fprintf(stderr,
                "conv_budget: %d conversations x %d topics from %d need %d%s examples; the file "
                "has %d\n",
                n_conv, topics, offset, need, grounded ? " grounded" : "", use_ex ? n_use : 0);
        return 1;
    }
    kvf_set_log_level(1);
    kvf_model_params mp = kvf_model_default_params();
    mp.n_threads = threads;
    kvf_model *m = NULL;
    if (kvf_model_load(model, &mp, &m) != KVF_OK) {
        fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
        return 1;
    }
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx = 16384;
    kvf_session *s = NULL, *sf = NULL;
    if (kvf_session_new(m, &sp, &s) != KVF_OK || kvf_session_new(m, &sp, &sf) != KVF_OK) {
        fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
        return 1;
    }
    int64_t bpt = kvf_session_kv_bytes_per_token(m, sp.kv_type);
    int32_t L = kvf_model_n_layer(m), *lb = calloc((size_t)L, sizeof(int32_t));
    float *lsim = calloc((size_t)L, sizeof(float));
    if (!lb || !lsim || (layers && kvf_conv_layer_profile_load(layers, m, lsim) != KVF_OK)) {
        fprintf(stderr, "conv_budget: %s\n", lb && lsim ? kvf_errmsg() : "out of memory");
        return 1;
    }
    for (int c = 0; c < n_conv; c++) {
        /* the history: system, then the topics' passages interleaved as notes */
        kvf_chat_msg msgs[MAX_MSG];
        char *bodies[MAX_MSG] = {0};
        int nm = 0;
        cJSON *cv = convs_path ? cJSON_GetArrayItem(ds, offset + c) : NULL;
        cJSON *cms = cJSON_GetObjectItem(cv, "messages"); /* NULL without --convs */
        for (int k = 0; k < cJSON_GetArraySize(cms); k++) {
            cJSON *mk = cJSON_GetArrayItem(cms, k);
            msgs[nm++] = (kvf_chat_msg){cJSON_GetStringValue(cJSON_GetObjectItem(mk, "role")),
                                        cJSON_GetStringValue(cJSON_GetObjectItem(mk, "content"))};
        }
        if (!cv)
            msgs[nm++] = (kvf_chat_msg){
                "system", "You are a helpful assistant. The user gives you notes to remember, "
                          "then asks questions about them. Answer briefly."};
        for (int t = 0; !cv && t < topics; t++) { /* one topic after the other, as a chat drifts */
            cJSON *ex = cJSON_GetArrayItem(ds, use_ex[c * topics + t]);
            int    np = pick_passages(ex, passages, grounded, pidx);
            for (int p = 0; p < np; p++) {
                cJSON *ctx = cJSON_GetArrayItem(cJSON_GetObjectItem(ex, "ctxs"), pidx[p]);
                const char *text = cJSON_GetStringValue(cJSON_GetObjectItem(ctx, "text"));
                size_t len = strlen(text ? text : "") + 32;
                bodies[nm] = malloc(len);
                snprintf(bodies[nm], len, "Note %d: %s", nm / 2 + 1, text ? text : "");
                msgs[nm] = (kvf_chat_msg){"user", bodies[nm]};
                nm++;
                msgs[nm++] = (kvf_chat_msg){"assistant", "Noted."};
            }
        }
        int32_t *hist = NULL, n_hist = format_tokens(m, msgs, nm, false, &hist);
        int32_t utt[MAX_MSG], n_utt = 0;
        for (int k = 1; k <= nm && n_hist > 0;
             k++) { /* utterance starts: token counts of prefixes */
            int32_t *pre = NULL, np = format_tokens(m, msgs, k - 1, false, &pre);
            if (k == 1) np = 0;
            if (np >= 0 && np < n_hist && (n_utt == 0 || np > utt[n_utt - 1])) utt[n_utt++] = np;
            free(pre);
        }
        int32_t budget = (int32_t)(n_hist * frac);
        kvf_conv_budget_params bp = kvf_conv_budget_default_params(budget);
        bp.score_sum = score_sum;
        bp.probe_idf = probe_idf;
        bp.chunk = chunk;
        bp.pool = pool;
        bp.block = block;
        bp.sink = utt[1 < n_utt ? 1 : 0]; /* the system prompt */
        kvf_episodes *ep = NULL;
        if (kvf_episodes_build(m, hist, n_hist, utt, n_utt, 4, n_ep, &ep) != KVF_OK) {
            fprintf(stderr, "conv_budget: episodes: %s\n", kvf_errmsg());
            return 1;
        }
        fprintf(stderr,
                "conv_budget: conversation %d: %d history tokens, %d utterances, budget %d, %d "
                "episodes\n",
                c, n_hist, n_utt, budget, kvf_episodes_count(ep));
        /* full: the history once, each question after it */
        double t0 = now_ms();
        kvf_session_truncate(sf, 0);
        if (kvf_session_eval(sf, hist, n_hist, 0) != KVF_OK) {
            fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
            return 1;
        }
        double full_prefill = now_ms() - t0;
        for (int t = 0; t < topics; t++) {
            cJSON *ex = cv ? cJSON_GetArrayItem(cJSON_GetObjectItem(cv, "questions"), t)
                           : cJSON_GetArrayItem(ds, use_ex[c * topics + t]);
            const char *qs = cJSON_GetStringValue(cJSON_GetObjectItem(ex, "question"));
            char qtext[2048];
            snprintf(qtext, sizeof qtext,
                     cv ? "%s Answer in a few words."
                        : "Answer the question from the notes, in a few words. Question: %s",
                     qs ? qs : "");
            msgs[nm] = (kvf_chat_msg){"user", qtext};
            int32_t *all = NULL, n_all = format_tokens(m, msgs, nm + 1, true, &all);
            if (n_all <= n_hist || memcmp(all, hist, sizeof(int32_t) * (size_t)n_hist) != 0) {
                fprintf(
                    stderr,
                    "conv_budget: the question's prompt does not extend the history's tokens\n");
                return 1;
            }
            const int32_t *q = all + n_hist;
            int32_t nq = n_all - n_hist;
            float sim = 0;
            /* route on the user's words, not the template around them */
            int32_t qw[1024],
                nqw = kvf_tokenize(m, qs ? qs : "", strlen(qs ? qs : ""), qw, 1024, 0);
            int32_t e_id = kvf_episodes_route(ep, qw, nqw > 0 ? nqw : 1, &sim);
            int32_t probe[4096 + 1024], n_probe = kvf_episodes_probe(ep, e_id, probe, probe_max);
            /* epiq: the episode's probe, then the question's words */
            int32_t n_epiq = n_probe;
            for (int32_t i = 0; i < nqw && n_epiq < 4096 + 1024; i++) probe[n_epiq++] = qw[i];
            const char *modes[9] = {"full", "epi",  "recent", "question", "epiq",
                                    "epil", "epia", "turn",   "message"};
            /* turn: the question's whole turn as the model sees it (template and the assistant's
             * header), its last probe_max tokens, like SnapKV's observation window */
            int32_t n_turn = nq < probe_max ? nq : probe_max;
            const int32_t *turn = q + nq - n_turn;
            /* message: the user's message without the template (instruction and question), its
             * last probe_max tokens, as serve probes */
            int32_t mw[1024], nmw = kvf_tokenize(m, qtext, strlen(qtext), mw, 1024, 0);
            if (nmw < 1) {
                fprintf(stderr, "conv_budget: cannot tokenize the question's message\n");
                return 1;
            }
            int32_t n_msg = nmw < probe_max ? nmw : probe_max;
            const int32_t *msg = mw + nmw - n_msg;
            for (int md = 0; md < 9; md++) {
                if (md > 0 && !has_mode(mode_list, modes[md])) continue;
                char ans[2048];
                double ttft = 0, pre_ms = 0;
                kvf_conv_budget_stats st = {0};
                kvf_session *use = md == 0 ? sf : s;
                /* the mode's probe (none for full and recent, which probes its recent window) */
                const int32_t *pr = md == 8              ? msg
                                    : md == 7            ? turn
                                    : md == 1 || md >= 4 ? probe
                                    : md == 3            ? qw
                                                         : NULL;
                int32_t np = md == 8                ? n_msg
                             : md == 7              ? n_turn
                             : md == 1 || md >= 5   ? n_probe
                             : md == 3              ? nqw
                             : md == 4              ? n_epiq
                                                    : 0;
                if (md == 0) {
                    kvf_session_truncate(sf, n_hist);
                    pre_ms = full_prefill;
                } else {
                    kvf_session_truncate(s, 0);
                    kvf_session_trim(s);
                    bp.window = 32;
                    bp.layer_budget = NULL;
                    bp.layer_adapt = md == 6; /* epia: shares by attention mass each round */
                    bp.chunk = md == 5 || md == 6 ? 0 : chunk; /* whole runs need one budget for all layers */
                    if (md == 5) { /* epil: the episode's probe and the profile's layer budgets */
                        if (kvf_conv_layer_budgets(lsim, L, &bp, np, (float)alpha, lb) != KVF_OK) {
                            fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
                            return 1;
                        }
                        bp.layer_budget = lb;
                        int32_t lo = lb[0], hi = lb[0];
                        for (int l = 1; l < L; l++) lo = lb[l] < lo ? lb[l] : lo, hi = lb[l] > hi ? lb[l] : hi;
                        fprintf(stderr, "  layer budgets %d .. %d (mean %d)\n", lo, hi, budget);
                    }
                    double t1 = now_ms();
                    if (kvf_session_prefill_budget(s, hist, n_hist, pr, np, &bp, &st) != KVF_OK) {
                        fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
                        return 1;
                    }
                    pre_ms = now_ms() - t1;
                }
                if (answer(use, m, q, nq, n_predict, ans, sizeof ans, &ttft) != 0) {
                    fprintf(stderr, "conv_budget: %s\n", kvf_errmsg());
                    return 1;
                }
                int64_t kv_res = kvf_session_kv_resident(use);
                int32_t peak = md == 0 ? n_hist + nq + n_predict : st.peak_cells;
                int32_t held = md == 0 ? kvf_session_n_past(use) : st.cells + nq + n_predict;
                if (held > peak) peak = held;
                printf(
                    "{\"conversation\": %d, \"topic\": %d, \"example\": %d, \"mode\": \"%s\", "
                    "\"history_tokens\": "
                    "%d, "
                    "\"question_tokens\": %d, \"budget\": %d, \"block\": %d, \"probe_idf\": %d, "
                    "\"pool\": %d, "
                    "\"episode\": %d, \"episodes\": %d, "
                    "\"route_sim\": %.4f, \"probe_tokens\": %d, \"peak_cells\": %d, "
                    "\"peak_kv_bytes\": %lld, "
                    "\"kv_resident_bytes\": %lld, \"evictions\": %d, \"prefill_ms\": %.1f, "
                    "\"probe_ms\": %.1f, "
                    "\"ttft_ms\": %.1f, \"answer\": ",
                    c, t, use_ex[c * topics + t], modes[md], n_hist, nq, md == 0 ? 0 : budget, block,
                    md == 0 ? 0 : (int)probe_idf, md == 0 ? 0 : pool, e_id, kvf_episodes_count(ep),
                    sim,
                    md == 2 ? 32 : np,
                    peak, (long long)peak * bpt, (long long)kv_res, st.evictions, pre_ms,
                    st.probe_ms, ttft);
                json_str(stdout, ans);
                printf(", \"gold\": [");
                cJSON *g = cJSON_GetObjectItem(ex, "answers");
                for (int k = 0; k < cJSON_GetArraySize(g); k++) {
                    if (k) printf(", ");
                    const char *gs = cJSON_GetStringValue(cJSON_GetArrayItem(g, k));
                    json_str(stdout, gs ? gs : "");
                }
                printf("]}\n");
                fflush(stdout);
                fprintf(stderr, "  q%d %-8s peak %5d cells  prefill %7.0f ms  ttft %6.0f ms  %s\n",
                        t, modes[md], peak, pre_ms, ttft, ans);
            }
            free(all);
        }
        kvf_episodes_free(ep);
        free(hist);
        for (int k = 0; k < nm; k++)
            free(bodies[k]);
    }
    kvf_session_free(s), kvf_session_free(sf);
    free(lb), free(lsim), free(use_ex);
    kvf_model_free(m);
    cJSON_Delete(ds);
    return 0;
}
