/* test_eval.c - the evaluation harness without a model: every metric of tools/eval/eval_metrics.c on
 * hand-checked cases (expected values worked out by hand and checked against the published
 * SQuAD/LongBench normalize_answer and qa_f1_score definitions), the dataset loaders of
 * tools/eval/eval_data.c on the small fixtures in tests/fixtures/eval/ (and on hostile variants
 * written here), needle and RULER generation with a word tokenizer, and the summary / report
 * writer of tools/eval/eval_report.c on records written here. */
#include "harness.h"

#include "../tools/eval/eval_data.c"
#include "../tools/eval/eval_metrics.c"
#include "../tools/eval/eval_report.c"
#include "../tools/cli/rag.c"

#include <unistd.h>

static const char *fx_dir(void) {
    const char *d = getenv("KVF_EVAL_FIXTURES");
    return d && d[0] ? d : "tests/fixtures/eval";
}

static char tmpdir[256];

static char *fx(const char *name) {
    static char buf[8][1024];
    static int  k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", fx_dir(), name);
    return buf[k];
}

static char *tmp_path(const char *name) {
    static char buf[8][1024];
    static int  k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        T_FAILMSG("cannot write %s", path);
        return;
    }
    fputs(text, f);
    fclose(f);
}

/* ---- metrics ------------------------------------------------------------------------- */

static void check_norm(const char *in, const char *want) {
    char *got = eval_normalize(in);
    CHECK_MSG(got && strcmp(got, want) == 0, "normalize(\"%s\") = \"%s\", want \"%s\"", in, got ? got : "(null)", want);
    free(got);
}

static void test_normalize(void) {
    check_norm("The Cat's  hat!", "cats hat");
    check_norm("An apple a day", "apple day");
    check_norm("the-end", "theend");              /* punctuation goes first */
    check_norm("  Hello,   World. ", "hello world");
    check_norm("a", "");
    check_norm("A.", "");
    check_norm("theory", "theory");
    check_norm("_the_", "");                       /* '_' is punctuation */
    check_norm("the 1st", "1st");
    check_norm("don't stop", "dont stop");
    check_norm("The\tquick\nbrown", "quick brown");
    check_norm("e.g. the U.S.A.", "eg usa");
    check_norm("", "");
    /* Unicode: lower-casing beyond ASCII, \w-style word boundaries, Unicode white space */
    check_norm("\xC3\x80 la carte", "\xC3\xA0 la carte");                   /* À -> à */
    check_norm("\xC3\x89mile ZOLA", "\xC3\xA9mile zola");                   /* Émile */
    check_norm("\xCE\x91\xCE\x92\xCE\x93 \xCE\x86", "\xCE\xB1\xCE\xB2\xCE\xB3 \xCE\xAC"); /* ΑΒΓ Ά */
    check_norm("\xD0\x9F\xD1\x80\xD0\xB8 \xD0\x81\xD0\x96", "\xD0\xBF\xD1\x80\xD0\xB8 \xD1\x91\xD0\xB6"); /* При ЁЖ */
    check_norm("\xC5\xB8 \xC5\x81 \xC5\x90", "\xC3\xBF \xC5\x82 \xC5\x91"); /* Ÿ Ł Ő */
    check_norm("\xC4\xB0stanbul", "i\xCC\x87stanbul");                      /* İ -> i + U+0307 */
    check_norm("x\xE2\x80\x93the\xE2\x80\x93y", "x\xE2\x80\x93 \xE2\x80\x93y"); /* x–the–y -> x– –y */
    check_norm("x\xC2\xA0the\xE2\x80\x83y", "x y");                         /* NBSP, em space */
    check_norm("na\xC3\xAFve caf\xC3\xA9", "na\xC3\xAFve caf\xC3\xA9");
    check_norm("bad \xFF byte", "bad \xFF byte");                           /* kept as is */
    char **w, *buf;
    int    n = eval_words("The cat, the HAT.", &w, &buf);
    CHECK_EQ(n, 2);
    if (n == 2) {
        CHECK_STR(w[0], "cat");
        CHECK_STR(w[1], "hat");
    }
    free(w), free(buf);
    n = eval_words("  the  ", &w, &buf);
    CHECK_EQ(n, 0);
    free(w), free(buf);
}

static void test_f1_em(void) {
    /* pred words {cat, sat, on, mat}, gold {cat, on, mat}: P = 3/4, R = 1, F1 = 6/7 */
    CHECK_NEAR(eval_f1("the cat sat on the mat", "a cat on a mat", 0), 6.0 / 7.0, 1e-12);
    /* multiset: one "cat" in gold -> 1 common of 3 predicted: P = 1/3, R = 1, F1 = 1/2 */
    CHECK_NEAR(eval_f1("cat cat cat", "cat", 0), 0.5, 1e-12);
    CHECK_NEAR(eval_f1("cat cat", "cat cat dog", 0), 0.8, 1e-12); /* P 1, R 2/3 */
    CHECK_NEAR(eval_f1("Exeter", "Exeter College", 0), 2.0 / 3.0, 1e-12);
    CHECK_NEAR(eval_f1("dog", "cat", 0), 0, 0);
    CHECK_NEAR(eval_f1("", "cat", 0), 0, 0);
    CHECK_NEAR(eval_f1("the", "a", 0), 0, 0);  /* both empty: LongBench scores 0 */
    CHECK_NEAR(eval_f1("the", "a", 1), 1, 0);  /* fidelity convention: 1 */
    CHECK_NEAR(eval_f1("cat", "", 1), 0, 0);
    CHECK_NEAR(eval_f1("Exeter College.", "exeter college", 0), 1, 1e-12);
    const char *gold[] = {"Exeter College", "Exeter"};
    CHECK_NEAR(eval_f1_max("exeter", gold, 2), 1, 1e-12);
    CHECK_NEAR(eval_f1_max("exeter", gold, 1), 2.0 / 3.0, 1e-12);
    CHECK_NEAR(eval_f1_max("exeter", gold, 0), 0, 0);
    CHECK_NEAR(eval_em("The Exeter College.", "exeter college"), 1, 0);
    CHECK_NEAR(eval_em("Exeter College, Oxford", "exeter college"), 0, 0);
    CHECK_NEAR(eval_em_max("exeter", gold, 2), 1, 0);
    CHECK_NEAR(eval_score(EVAL_METRIC_F1, "the cat sat on the mat", (const char *[]){"a cat on a mat"}, 1), 6.0 / 7.0, 1e-12);
    CHECK_NEAR(eval_score(EVAL_METRIC_NONE, "x", NULL, 0), 0, 0);
    CHECK_STR(eval_metric_name(EVAL_METRIC_MATCH_ALL), "string_match_all");
}

static void test_substring(void) {
    CHECK_NEAR(eval_substring("The special magic number is 4829173.", "4829173"), 1, 0);
    CHECK_NEAR(eval_substring("The special magic number is 4829173.", "4829174"), 0, 0);
    CHECK_NEAR(eval_substring("value: A54E2EED-E625-4570", "a54e2eed-e625-4570"), 1, 0); /* case, '-' */
    CHECK_NEAR(eval_substring("anything", ""), 0, 0);
    CHECK_NEAR(eval_substring("the answer", "the"), 0, 0); /* empty after normalisation */
    CHECK_NEAR(eval_substring("", "x"), 0, 0);
    const char *g[] = {"nope", "4829173"};
    CHECK_NEAR(eval_substring_max("is 4829173", g, 2), 1, 0);
    CHECK_NEAR(eval_score(EVAL_METRIC_SUBSTRING, "is 4829173", g, 2), 1, 0);
}

static void test_match_all(void) {
    const char *refs[] = {"123", "456", "789"};
    CHECK_NEAR(eval_string_match_all("123 and 789", refs, 3), 2.0 / 3.0, 1e-12);
    CHECK_NEAR(eval_string_match_all("123456789", refs, 3), 1, 0);
    CHECK_NEAR(eval_string_match_all("none", refs, 3), 0, 0);
    CHECK_NEAR(eval_string_match_all("xabcx", (const char *[]){"ABC"}, 1), 1, 0);
    CHECK_NEAR(eval_string_match_all("anything", refs, 0), 0, 0);
    /* no normalisation beyond case: punctuation matters */
    CHECK_NEAR(eval_string_match_all("12-3", refs, 1), 0, 0);
    CHECK_NEAR(eval_score(EVAL_METRIC_MATCH_ALL, "456 789", refs, 3), 2.0 / 3.0, 1e-12);
}

static void test_kl(void) {
    /* p uniform over 2, q = (3/4, 1/4): KL = 0.5 ln(2/3) + 0.5 ln 2 = 0.5 ln(4/3) */
    float p[2] = {0, 0}, q[2] = {(float)log(3.0), 0};
    CHECK_NEAR(eval_kl(p, q, 2), 0.5 * log(4.0 / 3.0), 1e-7);
    CHECK_NEAR(eval_kl(p, p, 2), 0, 0);
    float shifted[2] = {100, 100};
    CHECK_NEAR(eval_kl(p, shifted, 2), 0, 1e-12); /* softmax is shift invariant */
    /* large logits stay finite: p ~ (1, e^-1000), q ~ (e^-1000, 1): KL ~ 1000 */
    float a[2] = {1000, 0}, b[2] = {0, 1000};
    CHECK_NEAR(eval_kl(a, a, 2), 0, 0);
    CHECK_NEAR(eval_kl(a, b, 2), 1000, 1e-6);
    float nanv[2] = {0, NAN}, inf[2] = {INFINITY, 0};
    CHECK(eval_kl(nanv, p, 2) < 0);
    CHECK(eval_kl(p, inf, 2) < 0);
    CHECK(eval_kl(p, q, 0) < 0);
    /* a bigger vocabulary: KL against itself is 0, against a sharper copy > 0 */
    enum { V = 49152 };
    float *x = malloc(sizeof(float) * V), *y = malloc(sizeof(float) * V);
    for (int i = 0; i < V; i++) x[i] = t_randf() * 10, y[i] = x[i] * 1.5f;
    CHECK_NEAR(eval_kl(x, x, V), 0, 1e-12);
    CHECK(eval_kl(x, y, V) > 0);
    free(x), free(y);
    /* log-softmax of (1, 2, 3): lse = 3 + ln(1 + e^-1 + e^-2) */
    float  l[3] = {1, 2, 3};
    double o[3];
    double lse = 3 + log(1 + exp(-1.0) + exp(-2.0));
    CHECK_EQ(eval_log_softmax(l, 3, o), 0);
    CHECK_NEAR(o[0], 1 - lse, 1e-12);
    CHECK_NEAR(o[2], 3 - lse, 1e-12);
    CHECK_NEAR(exp(o[0]) + exp(o[1]) + exp(o[2]), 1, 1e-12);
}

static void test_argmax_ratio(void) {
    float v[4] = {1, 3, 3, -2};
    CHECK_EQ(eval_argmax(v, 4), 1); /* lowest index on ties */
    CHECK_EQ(eval_argmax(v, 0), -1);
    CHECK_NEAR(eval_ratio_or_one(3, 4), 0.75, 0);
    CHECK_NEAR(eval_ratio_or_one(0, 0), 1, 0);
}

/* ---- loaders ------------------------------------------------------------------------- */

static int load(const char *dataset, const char *data, eval_dataset *d, char *err, size_t el) {
    eval_options o = eval_default_options();
    o.dataset = dataset, o.data = data;
    return eval_load(&o, NULL, d, err, el);
}

static void test_musique(void) {
    eval_dataset d;
    char         err[1024] = "";
    CHECK_EQ(load("musique", fx("musique_small.json"), &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 2);
    if (d.n == 2) {
        CHECK_STR(d.ex[0].id, "musique-0000");
        CHECK_STR(d.ex[1].id, "musique-0001");
        CHECK_STR(d.ex[0].instruction, RAG_MUSIQUE_PREFIX);
        CHECK_EQ(d.ex[0].n_docs, 2);
        CHECK_STR(d.ex[0].docs[0], "Exeter\n\nexeter college is a college of oxford.\n\n");
        CHECK_STR(d.ex[0].docs[1], "\n\nthe river exe flows through exeter.\n\n"); /* empty title */
        CHECK_CONTAINS(d.ex[0].question, "\nQuestion:Which college is named after Exeter?\nAnswer:");
        CHECK_CONTAINS(d.ex[1].question, "Where is Charles County?\nAnswer:"); /* no second '?' */
        CHECK(strstr(d.ex[1].question, "??") == NULL);
        CHECK_EQ(d.ex[1].n_gold, 2);
        CHECK_STR(d.ex[1].gold[1], "the State of Maryland");
        CHECK_EQ(d.ex[0].metric, EVAL_METRIC_F1);
        CHECK_EQ(d.ex[0].length, -1);
    }
    eval_dataset_free(&d);

    /* hostile inputs: the message names the file and what is wrong */
    struct {
        const char *text, *want;
    } bad[] = {
        {"not json", "not valid JSON"},
        {"{\"ctxs\": []}", "expected a JSON array"},
        {"[]", "the array is empty"},
        {"[1]", "element 0 is not an object"},
        {"[{\"question\": \"q\", \"answers\": [\"a\"]}]", "element 0: \"ctxs\""},
        {"[{\"ctxs\": [{\"title\": \"t\", \"text\": 5}], \"question\": \"q\", \"answers\": [\"a\"]}]", "ctxs[0]"},
        {"[{\"ctxs\": [{\"text\": \"x\"}], \"question\": \"\", \"answers\": [\"a\"]}]", "\"question\""},
        {"[{\"ctxs\": [{\"text\": \"x\"}], \"question\": \"q\", \"answers\": []}]", "\"answers\""},
        {"[{\"ctxs\": [{\"text\": \"x\"}], \"question\": \"q\", \"answers\": [7]}]", "answers[0]"},
        {"[{\"ctxs\": [{\"text\": \"x\"}], \"question\": \"q\", \"answers\": [\"a\"]}, {\"ctxs\": 3}]", "element 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = tmp_path("bad_musique.json");
        write_text(p, bad[i].text);
        err[0] = 0;
        CHECK_EQ(load("musique", p, &d, err, sizeof err), -1);
        CHECK_CONTAINS(err, bad[i].want);
        CHECK_CONTAINS(err, "bad_musique.json");
        CHECK_EQ(d.n, 0);
    }
    CHECK_EQ(load("musique", tmp_path("missing.json"), &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "missing.json");
    CHECK_EQ(load("musique", tmpdir, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "not a regular file");
    CHECK_EQ(load("nosuch", tmpdir, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "unknown dataset 'nosuch'");
}

static void test_demo(void) {
    eval_dataset d;
    char         err[1024] = "";
    CHECK_EQ(load("cacheblend-demo", fx("demo"), &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 3);
    if (d.n == 3) {
        CHECK_STR(d.ex[0].id, "cb-1"); /* numeric order: 1, 2, 10 */
        CHECK_STR(d.ex[1].id, "cb-2");
        CHECK_STR(d.ex[2].id, "cb-10");
        CHECK_EQ(d.ex[0].n_docs, 2);
        CHECK_STR(d.ex[0].docs[1], "second chunk of one.");
        CHECK_STR(d.ex[0].question, "Question one?\nAnswer:");
        CHECK_EQ(d.ex[2].n_docs, 3);
        CHECK_EQ(d.ex[0].n_gold, 0);
        CHECK_EQ(d.ex[0].metric, EVAL_METRIC_NONE);
        CHECK_STR(d.ex[0].instruction, RAG_MUSIQUE_PREFIX);
    }
    eval_dataset_free(&d);
    CHECK_EQ(load("cacheblend-demo", fx("demo/2.json"), &d, err, sizeof err), 0); /* one file */
    CHECK_EQ(d.n, 1);
    if (d.n == 1) CHECK_STR(d.ex[0].id, "cb-2");
    eval_dataset_free(&d);
    struct {
        const char *text, *want;
    } bad[] = {
        {"[]", "expected a JSON object"},
        {"{\"0\": \"a\", \"query\": \"q\"}", "\"chunk_num\""},
        {"{\"0\": \"a\", \"query\": \"q\", \"chunk_num\": 1.5}", "\"chunk_num\""},
        {"{\"0\": \"a\", \"query\": \"q\", \"chunk_num\": 2}", "chunk \"1\""},
        {"{\"0\": \"a\", \"query\": 3, \"chunk_num\": 1}", "\"query\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = tmp_path("7.json");
        write_text(p, bad[i].text);
        err[0] = 0;
        CHECK_EQ(load("cacheblend-demo", p, &d, err, sizeof err), -1);
        CHECK_CONTAINS(err, bad[i].want);
        CHECK_CONTAINS(err, "7.json");
    }
    char *empty = tmp_path("emptydir");
    mkdir(empty, 0777);
    CHECK_EQ(load("cacheblend-demo", empty, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "no *.json files");
}

static void test_kv(void) {
    eval_dataset d;
    char         err[1024] = "";
    eval_options o = eval_default_options();
    o.dataset = "kv-retrieval", o.data = fx("kv_small.jsonl.gz"), o.kv_pairs = 2;
    CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 2);
    if (d.n == 2) {
        eval_example *e = &d.ex[0];
        CHECK_STR(e->id, "kv-0000");
        CHECK_EQ(e->n_docs, 3); /* 5 pairs, 2 per document */
        CHECK_STR(e->docs[0], "{\"k0\": \"v0\",\n \"k1\": \"v1\",\n");
        CHECK_STR(e->docs[1], " \"k2\": \"v2\",\n \"k3\": \"v3\",\n");
        CHECK_STR(e->docs[2], " \"k4\": \"v4\"}");
        CHECK_STR(e->question, "\n\nKey: \"k3\"\nCorresponding value:");
        CHECK_EQ(e->gold_index, 3);
        CHECK_EQ(e->n_gold, 1);
        CHECK_STR(e->gold[0], "v3");
        CHECK_EQ(e->metric, EVAL_METRIC_SUBSTRING);
        CHECK_CONTAINS(e->instruction, "Extract the value corresponding to the specified key");
        CHECK_EQ(d.ex[1].n_docs, 1);
        CHECK_STR(d.ex[1].docs[0], "{\"aa-11\": \"bb-22\",\n \"cc-33\": \"dd-44\"}");
    }
    eval_dataset_free(&d);
    /* plain (uncompressed) JSON lines work too; blank lines are skipped */
    char *plain = tmp_path("kv.jsonl");
    write_text(plain, "\n{\"ordered_kv_records\": [[\"a\", \"b\"]], \"key\": \"a\", \"value\": \"b\"}\n\n");
    o.data = plain;
    CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 1);
    if (d.n == 1) CHECK_STR(d.ex[0].id, "kv-0001"); /* named by line (0-based) */
    eval_dataset_free(&d);
    struct {
        const char *text, *want;
    } bad[] = {
        {"[1, 2]", "line 1: not a JSON object"},
        {"{\"key\": \"a\", \"value\": \"b\"}", "\"ordered_kv_records\""},
        {"{\"ordered_kv_records\": [[\"a\", \"b\"]], \"key\": 1, \"value\": \"b\"}", "\"key\" and \"value\""},
        {"{\"ordered_kv_records\": [[\"a\"]], \"key\": \"a\", \"value\": \"b\"}", "ordered_kv_records[0]"},
        {"{\"ordered_kv_records\": [[\"x\", \"b\"]], \"key\": \"a\", \"value\": \"b\"}", "not among ordered_kv_records"},
        {"{\"ordered_kv_records\": [[\"a\", \"c\"]], \"key\": \"a\", \"value\": \"b\"}", "has the key but not the \"value\""},
        {"{\"ordered_kv_records\": [[\"a\", \"b\"], [\"a\", \"b\"]], \"key\": \"a\", \"value\": \"b\"}", "occurs twice"},
        {"{\"ordered_kv_records\": [[\"a\", \"b\"]], \"key\": \"a\", \"value\": \"b\"}\n{oops", "line 2"},
        {"", "is empty"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(plain, bad[i].text);
        err[0] = 0;
        CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), -1);
        CHECK_CONTAINS(err, bad[i].want);
        CHECK_CONTAINS(err, "kv.jsonl");
    }
    /* a truncated gzip file */
    size_t n;
    char  *gz = read_file(fx("kv_small.jsonl.gz"), &n, err, sizeof err);
    CHECK(gz != NULL && n > 40);
    if (gz) {
        char *cut = tmp_path("cut.jsonl.gz");
        FILE *f   = fopen(cut, "wb");
        fwrite(gz, 1, n - 20, f);
        fclose(f);
        o.data = cut;
        CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), -1);
        CHECK_CONTAINS(err, "cut.jsonl.gz");
        free(gz);
    }
    o.data = fx("kv_small.jsonl.gz"), o.kv_pairs = 0;
    CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), -1);
}

/* a stand-in tokenizer: one token per white-space separated word, chunks re-joined by spaces */
static int word_chunks(void *ctx, const char *text, int ct, int nc, char **out, char *err, size_t el) {
    (void)ctx, (void)err, (void)el;
    int         n = 0;
    const char *starts[4096];
    size_t      lens[4096];
    for (const char *p = text; *p;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p) break;
        const char *s = p;
        while (*p && !isspace((unsigned char)*p)) p++;
        if (n < 4096) starts[n] = s, lens[n] = (size_t)(p - s), n++;
    }
    if (n < ct * nc) return 1;
    for (int c = 0; c < nc; c++) {
        sbuf b = {0};
        for (int i = c * ct; i < (c + 1) * ct; i++) {
            if (i > c * ct) sb_add(&b, " ", 1);
            sb_add(&b, starts[i], lens[i]);
        }
        out[c] = b.p;
    }
    return 0;
}

static void check_insert(const char *text, double frac, const char *want) {
    char *got = eval_insert_needle(text, frac, "N.");
    CHECK_MSG(got && strcmp(got, want) == 0, "insert(\"%s\", %g) = \"%s\", want \"%s\"", text, frac, got ? got : "(null)", want);
    free(got);
}

static int count_str(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
    return n;
}

static void test_needle(void) {
    check_insert("A b. C d. E f", 1.0, "A b. C d. N. E f");
    check_insert("A b. C d.", 1.0, "A b. C d. N.");
    check_insert("A b. C d. E f", 0.0, "N. A b. C d. E f");
    check_insert("no period here", 0.5, "N. no period here");
    check_insert("A b.\nC d", 0.9, "A b.\nN. C d");
    check_insert("A b! C d? E", 0.75, "A b! N. C d? E");
    check_insert("v1.2 x", 1.0, "N. v1.2 x"); /* a '.' inside a word is no sentence end */
    check_insert("", 0.5, "N. ");

    eval_tokenizer tok = {word_chunks, NULL};
    eval_options   o   = eval_default_options();
    int            L[] = {16, 24, 100};
    double         D[] = {0, 0.5, 1};
    o.dataset = "needle", o.data = fx("essays"), o.chunk_tokens = 8;
    o.lengths = L, o.n_lengths = 2, o.depths = D, o.n_depths = 3;
    eval_dataset d;
    char         err[1024] = "";
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 6);
    if (d.n == 6) {
        CHECK_STR(d.ex[0].id, "L16-d000");
        CHECK_STR(d.ex[4].id, "L24-d050");
        CHECK_STR(d.ex[5].id, "L24-d100");
        CHECK_EQ(d.ex[0].n_docs, 2);
        CHECK_EQ(d.ex[3].n_docs, 3);
        CHECK_EQ(d.ex[4].length, 24);
        CHECK_NEAR(d.ex[4].depth, 0.5, 0);
        for (int i = 0; i < 6; i++) {
            eval_example *e = &d.ex[i];
            CHECK_EQ(e->n_gold, 1);
            CHECK_EQ((int)strlen(e->gold[0]), 7);
            char needle[64];
            snprintf(needle, sizeof needle, "The special magic number is: %s.", e->gold[0]);
            int where = -1, total = 0;
            for (int k = 0; k < e->n_docs; k++) {
                int c = count_str(e->docs[k], needle);
                total += c;
                if (c) where = k;
            }
            CHECK_EQ(total, 1);
            /* depth 0 -> first chunk, 1 -> last, 0.5 -> the chunk at half the tokens */
            int want = e->depth == 0 ? 0 : e->depth == 1 ? e->n_docs - 1 : (int)(0.5 * e->length) / 8;
            CHECK_EQ(where, want);
            CHECK_EQ(e->metric, EVAL_METRIC_SUBSTRING);
        }
        /* the haystack: the essays in name order, 8 words per chunk */
        CHECK_STR(d.ex[4].docs[0], "Alpha one two three. Four five six seven.");
        CHECK(strncmp(d.ex[0].docs[0], "The special magic number is: ", 29) == 0);
        /* the needle at depth 1 follows the last sentence end of the last chunk */
        CHECK_CONTAINS(d.ex[5].docs[2], "twenty. The special magic number is: ");
        CHECK_STR(d.ex[0].question, NEEDLE_QUESTION);
        /* the same seed gives the same values; another seed others */
        eval_dataset d2;
        o.seed = 7;
        CHECK_EQ(eval_load(&o, &tok, &d2, err, sizeof err), 0);
        if (d2.n == 6) CHECK(strcmp(d.ex[0].gold[0], d2.ex[0].gold[0]) != 0);
        eval_dataset_free(&d2);
        o.seed = 42;
        CHECK_EQ(eval_load(&o, &tok, &d2, err, sizeof err), 0);
        if (d2.n == 6) CHECK_STR(d.ex[3].gold[0], d2.ex[3].gold[0]);
        eval_dataset_free(&d2);
    }
    eval_dataset_free(&d);
    /* clamping to the context: 100 -> max 20 -> 16 (two chunks) */
    o.lengths = L + 2, o.n_lengths = 1, o.max_tokens = 20;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 3);
    if (d.n) CHECK_EQ(d.ex[0].length, 16);
    eval_dataset_free(&d);
    /* too long for the haystack (44 words), a bad depth, no tokenizer */
    o.max_tokens = 0;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "fewer than 96 tokens");
    double bad_depth[] = {1.5};
    o.lengths = L, o.depths = bad_depth, o.n_depths = 1;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "depth 1.5");
    o.depths = D;
    CHECK_EQ(eval_load(&o, NULL, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "tokenizer");
    o.data = tmp_path("emptydir");
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "no *.txt files");
    int tiny[] = {4};
    o.data = fx("essays"), o.lengths = tiny, o.n_lengths = 1;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "shorter than one chunk");
}

static void test_ruler(void) {
    eval_tokenizer tok = {word_chunks, NULL};
    eval_options   o   = eval_default_options();
    int            L[] = {24};
    o.dataset = "ruler-niah", o.data = fx("wordlists"), o.haystack = fx("essays");
    o.chunk_tokens = 8, o.lengths = L, o.n_lengths = 1, o.ruler_n = 2;
    eval_dataset d;
    char         err[1024] = "";
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 6);
    if (d.n == 6) {
        CHECK_STR(d.ex[0].id, "single-L24-000");
        CHECK_STR(d.ex[2].id, "multikey-L24-000");
        CHECK_STR(d.ex[5].id, "multivalue-L24-001");
        CHECK_STR(d.ex[0].task, "single");
        for (int i = 0; i < 6; i++) {
            eval_example *e = &d.ex[i];
            CHECK_EQ(e->metric, EVAL_METRIC_MATCH_ALL);
            CHECK_EQ(e->n_docs, 3);
            CHECK(e->answer_prefix != NULL);
            /* the key asked for: "... for KEY mentioned ..." */
            const char *f = strstr(e->question, " for ");
            const char *t = f ? strstr(f, " mentioned") : NULL;
            CHECK(f && t);
            if (!f || !t) continue;
            char key[96];
            snprintf(key, sizeof key, "%.*s", (int)(t - f - 5), f + 5);
            CHECK(strchr(key, '-') != NULL); /* adjective-noun */
            CHECK_CONTAINS(e->answer_prefix, key);
            sbuf all = {0};
            for (int k = 0; k < e->n_docs; k++) sb_str(&all, e->docs[k]), sb_str(&all, "\n");
            /* every gold value is in the haystack, as the value of the asked key */
            for (int g = 0; g < e->n_gold; g++) {
                char needle[160];
                snprintf(needle, sizeof needle, "One of the special magic numbers for %s is: %s.", key, e->gold[g]);
                CHECK_EQ(count_str(all.p, needle), 1);
            }
            int needles = count_str(all.p, "One of the special magic numbers for ");
            if (!strcmp(e->task, "single")) {
                CHECK_EQ(e->n_gold, 1);
                CHECK_EQ(needles, 1);
                CHECK_CONTAINS(all.p, "The grass is green.");
            } else if (!strcmp(e->task, "multikey")) {
                CHECK_EQ(e->n_gold, 1);
                CHECK_EQ(needles, 4);
                CHECK_EQ(count_str(all.p, key), 1); /* the other three keys differ */
                CHECK_CONTAINS(all.p, "Alpha");
            } else {
                CHECK_EQ(e->n_gold, 4);
                CHECK_EQ(needles, 4);
                CHECK_CONTAINS(e->question, "What are all the special magic numbers for");
            }
            free(all.p);
        }
        CHECK(strcmp(d.ex[0].gold[0], d.ex[1].gold[0]) != 0);
    }
    eval_dataset_free(&d);
    const char *only[] = {"multivalue"};
    o.tasks = only, o.n_tasks = 1;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), 0);
    CHECK_EQ(d.n, 2);
    eval_dataset_free(&d);
    const char *bad_task[] = {"nosuch"};
    o.tasks = bad_task;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "unknown task 'nosuch'");
    o.tasks = NULL, o.haystack = NULL;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "--haystack");
    /* a hostile word list */
    char *wl = tmp_path("wl");
    mkdir(wl, 0777);
    char p[1100];
    snprintf(p, sizeof p, "%s/adjectivelist.txt", wl);
    write_text(p, "good\nbad\x01word\nugly\n");
    snprintf(p, sizeof p, "%s/nounlist.txt", wl);
    write_text(p, "a\nb\nc\nd\ne\nf\ng\nh\n");
    o.data = wl, o.haystack = fx("essays");
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "adjectivelist.txt' line 2: a control character");
    snprintf(p, sizeof p, "%s/adjectivelist.txt", wl);
    write_text(p, "good\nugly\nad hoc\n\n");
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), -1);
    CHECK_CONTAINS(err, "2 words; at least 8");
    /* blanks around words are trimmed, entries of several words skipped, UTF-8 kept */
    write_text(p, " n\xC3\xB1" "a \nb\t\nc\r\nd\ne e\nf\ng\nh\ni\n");
    wordlist w8 = {0};
    CHECK_EQ(read_words(wl, "adjectivelist.txt", &w8, err, sizeof err), 0);
    CHECK_EQ(w8.n, 8);
    if (w8.n == 8) {
        CHECK_STR(w8.w[0], "n\xC3\xB1" "a");
        CHECK_STR(w8.w[1], "b");
        CHECK_STR(w8.w[2], "c");
        CHECK_STR(w8.w[4], "f");
    }
    words_free(&w8);
    o.data = fx("wordlists");
    o.lengths = L, o.n_lengths = 1, o.tasks = NULL;
    CHECK_EQ(eval_load(&o, &tok, &d, err, sizeof err), 0);
    eval_dataset_free(&d);
}

/* ---- records, summary and report ----------------------------------------------------- */

static void add_rec(FILE *f, const char *id, const char *method, double ratio, double score,
                    double ttft, double length, double depth) {
    fprintf(f, "{\"dataset\": \"needle\", \"id\": \"%s\", \"method\": \"%s\", \"ratio\": ", id, method);
    if (ratio >= 0) fprintf(f, "%g", ratio);
    else fputs("null", f);
    fprintf(f, ", \"metric\": \"substring\", \"score\": %g, \"fid_em\": 1, \"fid_f1\": 0.5, \"kl\": 0.25, \"top1_first\": 1, "
               "\"tf_agree\": 0.75, \"ttft_ms\": %g, \"load_ms\": 1, \"rope_ms\": 2, "
               "\"recompute_ms\": 3, \"first_token_ms\": 4, \"tpot_ms\": null, "
               "\"recomputed_frac\": 0.2, \"compute_frac\": 0.3, \"kv_bytes_loaded\": 1048576, "
               "\"length\": %g, \"depth\": %g, \"total_tokens\": 100}\n",
            score, ttft, length, depth);
}

static char *slurp(const char *path) {
    char err[256];
    return read_file(path, NULL, err, sizeof err);
}

static void test_report(void) {
    eval_rec r;
    const char *line = "{\"id\": \"x\", \"method\": \"a3\", \"ratio\": 0.15, \"score\": 0.5, \"task\": \"single\"}";
    CHECK_EQ(eval_rec_parse(line, strlen(line), &r), 0);
    CHECK_STR(r.id, "x");
    CHECK_NEAR(r.ratio, 0.15, 1e-12);
    CHECK_NEAR(r.score, 0.5, 0);
    CHECK(isnan(r.kl));
    CHECK_STR(r.task, "single");
    eval_rec_free(&r);
    CHECK_EQ(eval_rec_parse("{\"method\": \"a3\"}", 16, &r), -1); /* no id */
    CHECK_EQ(eval_rec_parse("[1]", 3, &r), -1);
    char key[16];
    eval_ratio_key(-1, key, sizeof key);
    CHECK_STR(key, "-");
    eval_ratio_key(0.15, key, sizeof key);
    CHECK_STR(key, "0.15");

    char *dir = tmp_path("out");
    mkdir(dir, 0777);
    char path[1100];
    snprintf(path, sizeof path, "%s/results.jsonl", dir);
    FILE *f = fopen(path, "wb");
    /* two needle cells; full finds both, a3 one; a3 is 4x faster */
    add_rec(f, "L16-d000", "full", -1, 1, 400, 16, 0);
    add_rec(f, "L16-d000", "a3", 0.15, 1, 100, 16, 0);
    add_rec(f, "L16-d100", "full", -1, 1, 400, 16, 1);
    add_rec(f, "L16-d100", "a3", 0.15, 0, 100, 16, 1);
    add_rec(f, "L16-d100", "a3", 0.3, 1, 200, 16, 1);
    fputs("{\"id\": \"L16-d0", f); /* cut short by a crash */
    fclose(f);
    eval_recs rs;
    char      err[1024] = "";
    CHECK_EQ(eval_recs_read(path, &rs, err, sizeof err), 0);
    CHECK_EQ(rs.n, 5);
    CHECK_EQ(rs.n_bad, 1);
    CHECK_STR(rs.dataset, "needle");
    CHECK_EQ(eval_write_outputs(dir, "test | report", &rs, err, sizeof err), 0);
    eval_recs_free(&rs);

    snprintf(path, sizeof path, "%s/summary.json", dir);
    char  *js   = slurp(path);
    cJSON *root = js ? cJSON_Parse(js) : NULL;
    CHECK(root != NULL);
    cJSON *rows = cJSON_GetObjectItem(root, "rows");
    CHECK_EQ(cJSON_GetArraySize(rows), 3);
    CHECK_EQ((int)cJSON_GetObjectItem(root, "examples")->valuedouble, 2);
    CHECK_EQ((int)cJSON_GetObjectItem(root, "bad_lines")->valuedouble, 1);
    cJSON *a3 = cJSON_GetArrayItem(rows, 1), *full = cJSON_GetArrayItem(rows, 0);
    CHECK_STR(cJSON_GetObjectItem(full, "method")->valuestring, "full");
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(full, "ratio")));
    CHECK_STR(cJSON_GetObjectItem(a3, "method")->valuestring, "a3");
    CHECK_NEAR(cJSON_GetObjectItem(a3, "ratio")->valuedouble, 0.15, 1e-9);
    CHECK_EQ((int)cJSON_GetObjectItem(a3, "n")->valuedouble, 2);
    CHECK_NEAR(cJSON_GetObjectItem(a3, "score")->valuedouble, 0.5, 1e-9);
    CHECK_NEAR(cJSON_GetObjectItem(a3, "score_vs_full")->valuedouble, -0.5, 1e-9);
    CHECK_NEAR(cJSON_GetObjectItem(a3, "speedup_vs_full")->valuedouble, 4, 1e-9);
    CHECK_NEAR(cJSON_GetObjectItem(a3, "tf_agree")->valuedouble, 0.75, 1e-9);
    CHECK_NEAR(cJSON_GetObjectItem(a3, "kv_bytes_loaded")->valuedouble, 1048576, 1e-3);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(a3, "tpot_ms")));
    cJSON *a3b = cJSON_GetArrayItem(rows, 2);
    CHECK_NEAR(cJSON_GetObjectItem(a3b, "ratio")->valuedouble, 0.3, 1e-9);
    CHECK_NEAR(cJSON_GetObjectItem(a3b, "speedup_vs_full")->valuedouble, 2, 1e-9);
    cJSON *cells = cJSON_GetObjectItem(root, "needle_cells");
    CHECK_EQ(cJSON_GetArraySize(cells), 5);
    cJSON_Delete(root);
    free(js);

    snprintf(path, sizeof path, "%s/summary.md", dir);
    char *md = slurp(path);
    CHECK_CONTAINS(md, "# test \\| report");
    CHECK_CONTAINS(md, "| a3 | 0.15 | 2 | 50.0 ± 98.0 | -50.0 ± 98.0 | 100.0 | 50.0 | 0.2500 | 75.0 | 100 |");
    CHECK_CONTAINS(md, "| 4.00x |");
    CHECK_CONTAINS(md, "| method | ratio | n | found | vs full |");
    CHECK_CONTAINS(md, "| full | - | 2 | 100.0 ± 0.0 | - |"); /* no difference of full to itself */
    free(md);
    const char *files[] = {"report.md", "report.html", "quality_vs_ratio.svg", "ttft_vs_ratio.svg",
                           "fidelity_vs_ratio.svg", "heatmap_full.svg", "heatmap_a3_0.15.svg",
                           "heatmap_a3_0.3.svg"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        char *t = slurp(path);
        CHECK_MSG(t != NULL, "%s written", files[i]);
        if (t && strstr(files[i], ".svg")) CHECK_CONTAINS(t, "</svg>");
        free(t);
    }
    snprintf(path, sizeof path, "%s/report.html", dir);
    char *html = slurp(path);
    CHECK_CONTAINS(html, "<svg");
    CHECK_CONTAINS(html, "<td>a3</td>");
    CHECK_CONTAINS(html, "test | report");
    free(html);
    snprintf(path, sizeof path, "%s/report.md", dir);
    char *rep = slurp(path);
    CHECK_CONTAINS(rep, "![a3@0.15](heatmap_a3_0.15.svg)");
    free(rep);
    /* no results file: an empty set, not an error */
    snprintf(path, sizeof path, "%s/none.jsonl", dir);
    CHECK_EQ(eval_recs_read(path, &rs, err, sizeof err), 0);
    CHECK_EQ(rs.n, 0);
    eval_recs_free(&rs);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf_test_eval_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_normalize);
    RUN(test_f1_em);
    RUN(test_substring);
    RUN(test_match_all);
    RUN(test_kl);
    RUN(test_argmax_ratio);
    RUN(test_musique);
    RUN(test_demo);
    RUN(test_kv);
    RUN(test_needle);
    RUN(test_ruler);
    RUN(test_report);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_REPORT();
}
