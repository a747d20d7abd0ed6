/* fuzz_eval.c - libFuzzer target for the dataset loaders of `kvfuse eval`
 * (tools/eval/eval_data.c): files someone downloaded, read by eval_load.
 *
 * Input: a selector byte, then the file's bytes, written to a private temporary directory:
 *   0 musique          the bytes are musique_s.json
 *   1 cacheblend-demo  the bytes are one demo prompt file (N.json)
 *   2 kv-retrieval     the bytes are the JSON-lines file (gzip or plain: gzopen reads both)
 *   3 needle           the bytes are the only essay (essays/a.txt), haystacks of 2 x 4 "tokens"
 *   4 ruler-niah       the bytes are adjectivelist.txt (nounlist.txt is a fixed list), single
 *                      task over a noise haystack
 * The tokenizer is a stand-in: one token per blank-separated word.
 *
 * Checked: a failed load has a message and an empty dataset; a loaded one has examples with
 * every string present (id, question, documents, gold answers), unique ids, and is freed
 * without leaks (ASan). A broken promise aborts.
 *
 * Build and run through scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * fuzz-libs: -lcjson -lz
 */
#include "../tools/eval/eval_data.c"
#include "../tools/eval/eval_metrics.c"
#include "../tools/cli/rag.c"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                             \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "fuzz_eval: broken invariant at line %d: %s\n", __LINE__, #c);     \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static char g_dir[256];

/* one token per blank-separated word; chunks re-joined by single spaces */
static int word_chunks(void *ctx, const char *text, int ct, int nc, char **out, char *err, size_t el) {
    (void)ctx, (void)err, (void)el;
    const char *p     = text;
    int         total = ct * nc;
    for (int c = 0; c < nc; c++) {
        sbuf b = {0};
        for (int i = 0; i < ct; i++) {
            while (*p && isspace((unsigned char)*p)) p++;
            if (!*p) {
                free(b.p);
                for (int k = 0; k < c; k++) free(out[k]), out[k] = NULL;
                return 1;
            }
            const char *s = p;
            while (*p && !isspace((unsigned char)*p)) p++;
            if (i) sb_add(&b, " ", 1);
            sb_add(&b, s, (size_t)(p - s));
        }
        if (b.oom || !b.p) {
            free(b.p);
            for (int k = 0; k < c; k++) free(out[k]), out[k] = NULL;
            return -1;
        }
        out[c] = b.p;
    }
    (void)total;
    return 0;
}

static void put(const char *name, const void *p, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    REQUIRE(fwrite(p, 1, n, f) == n || n == 0);
    REQUIRE(fclose(f) == 0);
}

static void setup(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/kvf-fuzz-eval-%d", (int)getpid());
    char sub[300];
    mkdir(g_dir, 0700);
    snprintf(sub, sizeof sub, "%s/essays", g_dir);
    mkdir(sub, 0700);
    snprintf(sub, sizeof sub, "%s/words", g_dir);
    mkdir(sub, 0700);
    static const char nouns[] = "apple\nriver\nstone\ncloud\nhorse\nlamp\ntable\nforest\nbridge\nwindow\n";
    put("words/nounlist.txt", nouns, sizeof nouns - 1);
    static const char noise[] = "The grass is green. The sky is blue. The sun is yellow. Here we go. "
                                "There and back again. ";
    (void)noise;
}

static void check_dataset(const eval_dataset *d) {
    REQUIRE(d->n >= 0 && (d->n == 0 || d->ex));
    for (int i = 0; i < d->n; i++) {
        const eval_example *e = &d->ex[i];
        REQUIRE(example_ok(e));
        REQUIRE(e->n_docs >= 0 && e->n_gold >= 0);
        REQUIRE(strlen(e->id) > 0);
        for (int j = 0; j < i && j < 64; j++) REQUIRE(strcmp(d->ex[j].id, e->id) != 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) setup();
    if (size < 1) return 0;
    const uint8_t *body = data + 1;
    size_t         n    = size - 1;
    char           path[512], err[512];
    eval_options   o    = eval_default_options();
    eval_tokenizer tok  = {word_chunks, NULL};
    static const int    lens[1]   = {8};
    static const double depths[3] = {0, 0.5, 1};
    switch (data[0] % 5) {
    case 0:
        put("musique.json", body, n);
        o.dataset = "musique", snprintf(path, sizeof path, "%s/musique.json", g_dir);
        break;
    case 1:
        put("0.json", body, n);
        o.dataset = "cacheblend-demo", snprintf(path, sizeof path, "%s/0.json", g_dir);
        break;
    case 2:
        put("kv.jsonl.gz", body, n);
        o.dataset = "kv-retrieval", snprintf(path, sizeof path, "%s/kv.jsonl.gz", g_dir);
        o.kv_pairs = 2;
        break;
    case 3:
        put("essays/a.txt", body, n);
        o.dataset = "needle", snprintf(path, sizeof path, "%s/essays", g_dir);
        o.chunk_tokens = 4, o.lengths = lens, o.n_lengths = 1, o.depths = depths, o.n_depths = 3;
        break;
    default: {
        put("words/adjectivelist.txt", body, n);
        static const char *const single[1] = {"single"};
        o.dataset = "ruler-niah", snprintf(path, sizeof path, "%s/words", g_dir);
        o.chunk_tokens = 4, o.lengths = lens, o.n_lengths = 1, o.tasks = single, o.n_tasks = 1;
        o.ruler_n = 2;
        break;
    }
    }
    o.data = path;
    eval_dataset d;
    int          rc = eval_load(&o, &tok, &d, err, sizeof err);
    if (rc != 0) {
        REQUIRE(rc == -1 && err[0] != '\0');
        REQUIRE(d.n == 0 && d.ex == NULL);
    } else {
        check_dataset(&d);
        eval_dataset_free(&d);
    }
    return 0;
}
