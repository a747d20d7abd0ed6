/* eval_data.c - dataset loaders and generators of `kvfuse eval` (see eval_data.h). */
#include "eval/eval_data.h"

#include "cli/rag.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

const char *const EVAL_DATASETS[] = {"musique", "cacheblend-demo", "needle", "kv-retrieval",
                                     "ruler-niah", NULL};
const int         EVAL_DEFAULT_LENGTHS[4] = {1024, 2048, 4096, 8192};
const double      EVAL_DEFAULT_DEPTHS[11] = {0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};

#define MAX_FILE_BYTES ((size_t)512 << 20) /* any one input file (decompressed) */
#define MAX_DOCS       4096                 /* documents in one example */

static const char *const NEEDLE_INSTRUCTION =
    "A special magic number is hidden within the following text. Make sure to memorize it. I "
    "will quiz you about the number afterwards.\n";
static const char *const NEEDLE_QUESTION =
    "\n\nWhat is the special magic number mentioned in the provided text?";
static const char *const RULER_INSTRUCTION =
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards.\n";
static const char *const RULER_NOISE =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
static const char *const KV_INSTRUCTION =
    "Extract the value corresponding to the specified key in the JSON object below.\n\n"
    "JSON data:\n";

eval_options eval_default_options(void) {
    eval_options o;
    memset(&o, 0, sizeof o);
    o.chunk_tokens = 512;
    o.seed         = 42;
    o.kv_pairs     = 10;
    o.ruler_n      = 25;
    o.ruler_keys   = 4;
    return o;
}

uint64_t eval_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* ---- small helpers ------------------------------------------------------------------- */

static void set_err(char *err, size_t el, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t el, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, el, fmt, ap);
    va_end(ap);
}

static char *xstrdup(const char *s) {
    return s ? strdup(s) : NULL;
}

/* printf into a malloc'd string */
static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* growable byte buffer */
typedef struct {
    char  *p;
    size_t n, cap;
    int    oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = (b->n + n + 1) * 2;
        char  *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np, b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_str(sbuf *b, const char *s) {
    sb_add(b, s, strlen(s));
}

/* Read a whole regular file (at most MAX_FILE_BYTES), NUL-terminated. */
static char *read_file(const char *path, size_t *len, char *err, size_t el) {
    struct stat st;
    if (stat(path, &st) != 0) {
        set_err(err, el, "cannot read '%s': %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, el, "'%s' is not a regular file", path);
        return NULL;
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        set_err(err, el, "'%s' is larger than %zu MiB", path, MAX_FILE_BYTES >> 20);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, el, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char  *b   = malloc(cap);
    if (!b) {
        fclose(f);
        set_err(err, el, "'%s': out of memory", path);
        return NULL;
    }
    n = fread(b, 1, cap - 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(b);
        set_err(err, el, "error reading '%s'", path);
        return NULL;
    }
    b[n] = 0;
    if (len) *len = n;
    return b;
}

static int has_nul(const char *s, size_t n) {
    return memchr(s, 0, n) != NULL;
}

static void example_free(eval_example *e) {
    free(e->id), free(e->instruction), free(e->question), free(e->answer_prefix), free(e->task);
    for (int i = 0; i < e->n_docs; i++) free(e->docs[i]);
    free(e->docs);
    for (int i = 0; i < e->n_gold; i++) free(e->gold[i]);
    free(e->gold);
    memset(e, 0, sizeof *e);
}

void eval_dataset_free(eval_dataset *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) example_free(&d->ex[i]);
    free(d->ex);
    free(d->name);
    memset(d, 0, sizeof *d);
}

/* append a zeroed example; NULL when out of memory */
static eval_example *new_example(eval_dataset *d, int *cap) {
    if (d->n == *cap) {
        int           nc = *cap ? *cap * 2 : 16;
        eval_example *p  = realloc(d->ex, sizeof *p * (size_t)nc);
        if (!p) return NULL;
        d->ex = p, *cap = nc;
    }
    eval_example *e = &d->ex[d->n++];
    memset(e, 0, sizeof *e);
    e->index      = d->n - 1;
    e->length     = -1;
    e->depth      = -1;
    e->gold_index = -1;
    return e;
}

/* an example is complete when every string it needs is there (catches out of memory) */
static int example_ok(const eval_example *e) {
    if (!e->id || !e->question || !e->docs || (e->n_gold && !e->gold)) return 0;
    for (int i = 0; i < e->n_docs; i++)
        if (!e->docs[i]) return 0;
    for (int i = 0; i < e->n_gold; i++)
        if (!e->gold[i]) return 0;
    return 1;
}

/* ---- musique ------------------------------------------------------------------------- */

static int load_musique(const char *path, eval_dataset *d, char *err, size_t el) {
    size_t len;
    char  *txt = read_file(path, &len, err, el);
    if (!txt) return -1;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!root) {
        set_err(err, el, "'%s': not valid JSON", path);
        return -1;
    }
    int rc = -1, cap = 0;
    if (!cJSON_IsArray(root)) {
        set_err(err, el, "'%s': expected a JSON array of {\"ctxs\", \"question\", \"answers\"}", path);
        goto out;
    }
    int    i = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, root) {
        cJSON *ctxs = cJSON_GetObjectItemCaseSensitive(it, "ctxs");
        cJSON *q    = cJSON_GetObjectItemCaseSensitive(it, "question");
        cJSON *ans  = cJSON_GetObjectItemCaseSensitive(it, "answers");
        if (!cJSON_IsObject(it)) {
            set_err(err, el, "'%s': element %d is not an object", path, i);
            goto out;
        }
        if (!cJSON_IsArray(ctxs) || cJSON_GetArraySize(ctxs) < 1 || cJSON_GetArraySize(ctxs) > MAX_DOCS) {
            set_err(err, el, "'%s': element %d: \"ctxs\" must be an array of 1..%d passages", path, i, MAX_DOCS);
            goto out;
        }
        if (!cJSON_IsString(q) || !q->valuestring[0]) {
            set_err(err, el, "'%s': element %d: \"question\" must be a non-empty string", path, i);
            goto out;
        }
        if (!cJSON_IsArray(ans) || cJSON_GetArraySize(ans) < 1) {
            set_err(err, el, "'%s': element %d: \"answers\" must be a non-empty array of strings", path, i);
            goto out;
        }
        eval_example *e = new_example(d, &cap);
        if (!e) goto oom;
        e->id          = xasprintf("musique-%04d", i);
        e->instruction = xstrdup(RAG_MUSIQUE_PREFIX);
        e->question    = rag_musique_question(q->valuestring);
        e->metric      = EVAL_METRIC_F1;
        e->n_docs      = cJSON_GetArraySize(ctxs);
        e->docs        = calloc((size_t)e->n_docs, sizeof(char *));
        e->n_gold      = cJSON_GetArraySize(ans);
        e->gold        = calloc((size_t)e->n_gold, sizeof(char *));
        if (!e->docs || !e->gold) goto oom;
        int    k = 0;
        cJSON *c;
        cJSON_ArrayForEach(c, ctxs) {
            cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "title");
            cJSON *x = cJSON_GetObjectItemCaseSensitive(c, "text");
            if (!cJSON_IsObject(c) || !cJSON_IsString(x) || (t && !cJSON_IsString(t))) {
                set_err(err, el, "'%s': element %d: ctxs[%d] must be {\"title\": string, \"text\": string}", path, i, k);
                goto out;
            }
            const char *title = t ? t->valuestring : "";
            if (!title[0] && !x->valuestring[0]) {
                set_err(err, el, "'%s': element %d: ctxs[%d] has an empty title and text", path, i, k);
                goto out;
            }
            e->docs[k++] = xasprintf("%s\n\n%s\n\n", title, x->valuestring);
        }
        k = 0;
        cJSON_ArrayForEach(c, ans) {
            if (!cJSON_IsString(c) || !c->valuestring[0]) {
                set_err(err, el, "'%s': element %d: answers[%d] is not a non-empty string", path, i, k);
                goto out;
            }
            e->gold[k++] = xstrdup(c->valuestring);
        }
        if (!example_ok(e)) goto oom;
        i++;
    }
    if (d->n == 0) {
        set_err(err, el, "'%s': the array is empty", path);
        goto out;
    }
    rc = 0;
    goto out;
oom:
    set_err(err, el, "'%s': out of memory", path);
out:
    cJSON_Delete(root);
    return rc;
}

/* ---- cacheblend-demo ----------------------------------------------------------------- */

static int load_demo_file(const char *path, const char *stem, eval_dataset *d, int *cap, char *err,
                          size_t el) {
    size_t len;
    char  *txt = read_file(path, &len, err, el);
    if (!txt) return -1;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    int rc = -1;
    if (!cJSON_IsObject(root)) {
        set_err(err, el, "'%s': expected a JSON object {\"0\": chunk, ..., \"query\", \"chunk_num\"}", path);
        goto out;
    }
    cJSON *num = cJSON_GetObjectItemCaseSensitive(root, "chunk_num");
    cJSON *q   = cJSON_GetObjectItemCaseSensitive(root, "query");
    if (!cJSON_IsNumber(num) || num->valuedouble < 1 || num->valuedouble > MAX_DOCS ||
        num->valuedouble != (double)(int)num->valuedouble) {
        set_err(err, el, "'%s': \"chunk_num\" must be an integer in [1, %d]", path, MAX_DOCS);
        goto out;
    }
    if (!cJSON_IsString(q) || !q->valuestring[0]) {
        set_err(err, el, "'%s': \"query\" must be a non-empty string", path);
        goto out;
    }
    eval_example *e = new_example(d, cap);
    if (!e) goto oom;
    e->id          = xasprintf("cb-%s", stem);
    e->instruction = xstrdup(RAG_MUSIQUE_PREFIX);
    e->question    = xstrdup(q->valuestring);
    e->metric      = EVAL_METRIC_NONE;
    e->n_docs      = (int)num->valuedouble;
    e->docs        = calloc((size_t)e->n_docs, sizeof(char *));
    if (!e->docs) goto oom;
    for (int k = 0; k < e->n_docs; k++) {
        char key[16];
        snprintf(key, sizeof key, "%d", k);
        cJSON *c = cJSON_GetObjectItemCaseSensitive(root, key);
        if (!cJSON_IsString(c) || !c->valuestring[0]) {
            set_err(err, el, "'%s': chunk \"%s\" is missing or not a non-empty string (chunk_num = %d)", path, key, e->n_docs);
            goto out;
        }
        e->docs[k] = xstrdup(c->valuestring);
    }
    if (!example_ok(e)) goto oom;
    rc = 0;
    goto out;
oom:
    set_err(err, el, "'%s': out of memory", path);
out:
    cJSON_Delete(root);
    return rc;
}

/* sort file names by their numeric stem when both have one, else by name */
static int cmp_name(const void *a, const void *b) {
    const char *x = *(const char *const *)a, *y = *(const char *const *)b;
    char       *ex, *ey;
    long        nx = strtol(x, &ex, 10), ny = strtol(y, &ey, 10);
    int         numx = ex != x && *ex == '.', numy = ey != y && *ey == '.';
    if (numx && numy && nx != ny) return nx < ny ? -1 : 1;
    if (numx != numy) return numx ? -1 : 1;
    return strcmp(x, y);
}

/* names of the regular files in dir ending with suffix, sorted (cmp_name) */
static char **list_dir(const char *dir, const char *suffix, int *n_out, char *err, size_t el) {
    DIR *dh = opendir(dir);
    if (!dh) {
        set_err(err, el, "cannot open directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    char        **names = NULL;
    int           n = 0, cap = 0;
    struct dirent *de;
    size_t        sl = strlen(suffix);
    while ((de = readdir(dh))) {
        size_t l = strlen(de->d_name);
        if (de->d_name[0] == '.' || l <= sl || strcmp(de->d_name + l - sl, suffix) != 0) continue;
        if (n == cap) {
            cap         = cap ? cap * 2 : 64;
            char **nn   = realloc(names, sizeof(char *) * (size_t)cap);
            if (!nn) break;
            names = nn;
        }
        if (!(names[n] = strdup(de->d_name))) break;
        n++;
    }
    closedir(dh);
    if (de) { /* stopped early: out of memory */
        for (int i = 0; i < n; i++) free(names[i]);
        free(names);
        set_err(err, el, "'%s': out of memory", dir);
        return NULL;
    }
    if (n == 0) {
        free(names);
        set_err(err, el, "no *%s files in '%s'", suffix, dir);
        return NULL;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_name);
    *n_out = n;
    return names;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int load_demo(const char *path, eval_dataset *d, char *err, size_t el) {
    int cap = 0;
    if (!is_dir(path)) {
        const char *base = strrchr(path, '/');
        base             = base ? base + 1 : path;
        char  *stem      = strdup(base);
        if (!stem) return set_err(err, el, "out of memory"), -1;
        char *dot = strrchr(stem, '.');
        if (dot && dot != stem) *dot = 0;
        int rc = load_demo_file(path, stem, d, &cap, err, el);
        free(stem);
        return rc;
    }
    int    n;
    char **names = list_dir(path, ".json", &n, err, el);
    if (!names) return -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char *full = xasprintf("%s/%s", path, names[i]);
        names[i][strlen(names[i]) - 5] = 0; /* the stem */
        rc = full ? load_demo_file(full, names[i], d, &cap, err, el) : (set_err(err, el, "out of memory"), -1);
        free(full);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

/* ---- kv-retrieval -------------------------------------------------------------------- */

/* JSON string literal of s (quotes and escapes), malloc'd through the buffer */
static void sb_json_str(sbuf *b, const char *s) {
    sb_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\', tmp[1] = (char)*p;
            sb_add(b, tmp, 2);
        } else if (*p < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", *p);
            sb_str(b, tmp);
        } else {
            sb_add(b, (const char *)p, 1);
        }
    }
    sb_add(b, "\"", 1);
}

static int kv_record(const char *path, int line, const char *txt, size_t len, int kv_pairs,
                     eval_dataset *d, int *cap, char *err, size_t el) {
    cJSON *root = cJSON_ParseWithLength(txt, len);
    int    rc   = -1;
    if (!cJSON_IsObject(root)) {
        set_err(err, el, "'%s' line %d: not a JSON object", path, line);
        goto out;
    }
    cJSON *recs = cJSON_GetObjectItemCaseSensitive(root, "ordered_kv_records");
    cJSON *key  = cJSON_GetObjectItemCaseSensitive(root, "key");
    cJSON *val  = cJSON_GetObjectItemCaseSensitive(root, "value");
    if (!cJSON_IsArray(recs) || cJSON_GetArraySize(recs) < 1) {
        set_err(err, el, "'%s' line %d: \"ordered_kv_records\" must be a non-empty array of [key, value] pairs", path, line);
        goto out;
    }
    if (!cJSON_IsString(key) || !key->valuestring[0] || !cJSON_IsString(val) || !val->valuestring[0]) {
        set_err(err, el, "'%s' line %d: \"key\" and \"value\" must be non-empty strings", path, line);
        goto out;
    }
    int n = cJSON_GetArraySize(recs), gold = -1;
    {
        int    j = 0;
        cJSON *r;
        cJSON_ArrayForEach(r, recs) {
            cJSON *k = cJSON_GetArrayItem(r, 0), *v = cJSON_GetArrayItem(r, 1);
            if (!cJSON_IsArray(r) || cJSON_GetArraySize(r) != 2 || !cJSON_IsString(k) || !cJSON_IsString(v)) {
                set_err(err, el, "'%s' line %d: ordered_kv_records[%d] is not a [string, string] pair", path, line, j);
                goto out;
            }
            if (!strcmp(k->valuestring, key->valuestring)) {
                if (gold >= 0) {
                    set_err(err, el, "'%s' line %d: the key occurs twice in ordered_kv_records (%d and %d)", path, line, gold, j);
                    goto out;
                }
                if (strcmp(v->valuestring, val->valuestring) != 0) {
                    set_err(err, el, "'%s' line %d: ordered_kv_records[%d] has the key but not the \"value\"", path, line, j);
                    goto out;
                }
                gold = j;
            }
            j++;
        }
    }
    if (gold < 0) {
        set_err(err, el, "'%s' line %d: \"key\" is not among ordered_kv_records", path, line);
        goto out;
    }
    eval_example *e = new_example(d, cap);
    if (!e) goto oom;
    e->id          = xasprintf("kv-%04d", line - 1);
    e->instruction = xstrdup(KV_INSTRUCTION);
    e->metric      = EVAL_METRIC_SUBSTRING;
    e->gold_index  = gold;
    e->n_gold      = 1;
    e->gold        = calloc(1, sizeof(char *));
    e->n_docs      = (n + kv_pairs - 1) / kv_pairs;
    e->docs        = calloc((size_t)e->n_docs, sizeof(char *));
    if (!e->gold || !e->docs) goto oom;
    e->gold[0] = xstrdup(val->valuestring);
    /* lost-in-the-middle's layout: {"k": "v",\n "k": "v",\n ... "k": "v"} */
    for (int c = 0; c < e->n_docs; c++) {
        sbuf b = {0};
        for (int j = c * kv_pairs; j < n && j < (c + 1) * kv_pairs; j++) {
            cJSON *r = cJSON_GetArrayItem(recs, j);
            sb_str(&b, j == 0 ? "{" : " ");
            sb_json_str(&b, cJSON_GetArrayItem(r, 0)->valuestring);
            sb_str(&b, ": ");
            sb_json_str(&b, cJSON_GetArrayItem(r, 1)->valuestring);
            sb_str(&b, j == n - 1 ? "}" : ",\n");
        }
        if (b.oom) {
            free(b.p);
            goto oom;
        }
        e->docs[c] = b.p;
    }
    {
        sbuf b = {0};
        sb_str(&b, "\n\nKey: ");
        sb_json_str(&b, key->valuestring);
        sb_str(&b, "\nCorresponding value:");
        if (b.oom) {
            free(b.p);
            goto oom;
        }
        e->question = b.p;
    }
    if (!example_ok(e)) goto oom;
    rc = 0;
    goto out;
oom:
    set_err(err, el, "'%s' line %d: out of memory", path, line);
out:
    cJSON_Delete(root);
    return rc;
}

static int load_kv(const char *path, int kv_pairs, eval_dataset *d, char *err, size_t el) {
    if (kv_pairs < 1) return set_err(err, el, "kv-retrieval: pairs per document must be >= 1"), -1;
    if (is_dir(path)) return set_err(err, el, "'%s' is a directory; kv-retrieval reads a .jsonl(.gz) file", path), -1;
    gzFile gz = gzopen(path, "rb"); /* reads plain files too */
    if (!gz) return set_err(err, el, "cannot open '%s': %s", path, errno ? strerror(errno) : "out of memory"), -1;
    sbuf   all = {0};
    char   buf[1 << 16];
    int    k, rc = 0;
    while ((k = gzread(gz, buf, sizeof buf)) > 0) {
        sb_add(&all, buf, (size_t)k);
        if (all.oom || all.n > MAX_FILE_BYTES) break;
    }
    int         zerr;
    const char *zmsg = gzerror(gz, &zerr);
    if (k < 0 || (zerr != Z_OK && zerr != Z_BUF_ERROR)) {
        set_err(err, el, "'%s': corrupt gzip data (%s)", path, zmsg);
        rc = -1;
    } else if (all.oom) {
        set_err(err, el, "'%s': out of memory", path);
        rc = -1;
    } else if (all.n > MAX_FILE_BYTES) {
        set_err(err, el, "'%s': more than %zu MiB decompressed", path, MAX_FILE_BYTES >> 20);
        rc = -1;
    } else if (all.n == 0 || has_nul(all.p, all.n)) {
        set_err(err, el, "'%s': %s", path, all.n ? "contains NUL bytes" : "is empty");
        rc = -1;
    }
    gzclose(gz);
    int cap = 0, line = 0;
    for (size_t i = 0; rc == 0 && i < all.n;) {
        char  *nl = memchr(all.p + i, '\n', all.n - i);
        size_t e  = nl ? (size_t)(nl - all.p) : all.n;
        line++;
        size_t j = i;
        while (j < e && isspace((unsigned char)all.p[j])) j++;
        if (j < e) rc = kv_record(path, line, all.p + i, e - i, kv_pairs, d, &cap, err, el);
        i = e + 1;
    }
    free(all.p);
    if (rc == 0 && d->n == 0) set_err(err, el, "'%s': no records", path), rc = -1;
    return rc;
}

/* ---- haystacks ----------------------------------------------------------------------- */

/* the essays of dir (*.txt, by name) joined with blank lines */
static char *read_essays(const char *dir, char *err, size_t el) {
    int    n;
    char **names = list_dir(dir, ".txt", &n, err, el);
    if (!names) return NULL;
    sbuf b  = {0};
    int  ok = 1;
    for (int i = 0; i < n && ok; i++) {
        char  *full = xasprintf("%s/%s", dir, names[i]);
        size_t len;
        char  *t = full ? read_file(full, &len, err, el) : NULL;
        if (!t) {
            if (!full) set_err(err, el, "out of memory");
            ok = 0;
        } else if (has_nul(t, len)) {
            set_err(err, el, "'%s' contains NUL bytes: not a text file", full);
            ok = 0;
        } else {
            if (b.n) sb_str(&b, "\n\n");
            sb_add(&b, t, len);
            if (b.n > MAX_FILE_BYTES) set_err(err, el, "'%s': more than %zu MiB of essays", dir, MAX_FILE_BYTES >> 20), ok = 0;
        }
        free(t), free(full);
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    if (b.oom) set_err(err, el, "'%s': out of memory", dir), ok = 0;
    if (!ok) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* Cut the haystack into n_chunks chunks of chunk_tokens tokens. The tokenizer sees a prefix of
 * the text first (about 8 bytes per token), the whole text if that was too short. */
static char **cut_haystack(const eval_tokenizer *tok, const char *text, int chunk_tokens,
                           int n_chunks, const char *what, char *err, size_t el) {
    char **out = calloc((size_t)n_chunks, sizeof(char *));
    if (!out) return set_err(err, el, "out of memory"), NULL;
    size_t len = strlen(text), want = (size_t)chunk_tokens * (size_t)n_chunks * 8 + 1024;
    int    rc  = 1;
    if (want < len) {
        char *pre = strndup(text, want);
        rc        = pre ? tok->chunk(tok->ctx, pre, chunk_tokens, n_chunks, out, err, el) : -1;
        free(pre);
    }
    if (rc == 1) rc = tok->chunk(tok->ctx, text, chunk_tokens, n_chunks, out, err, el);
    if (rc == 1) set_err(err, el, "%s has fewer than %d tokens", what, chunk_tokens * n_chunks);
    if (rc != 0) {
        for (int i = 0; i < n_chunks; i++) free(out[i]);
        free(out);
        return NULL;
    }
    return out;
}

char *eval_insert_needle(const char *text, double frac, const char *needle) {
    size_t len = strlen(text);
    if (!(frac >= 0)) frac = 0;
    if (frac > 1) frac = 1;
    size_t p = (size_t)(frac * (double)len), at = 0;
    int    found = 0;
    if (p > len) p = len;
    for (size_t i = p; i >= 1 && !found; i--) {
        char c = text[i - 1];
        if ((c == '.' || c == '!' || c == '?') && (i == len || text[i] == ' ' || text[i] == '\n'))
            found = 1, at = i;
    }
    if (found && at == len) return xasprintf("%s %s", text, needle);
    if (found) at++; /* after the space or newline */
    return xasprintf("%.*s%s %s", (int)at, text, needle, text + at);
}

/* haystack lengths of the grid in whole chunks, clamped to max_tokens, deduplicated, ascending */
static int grid_lengths(const eval_options *o, int *out, char *err, size_t el) {
    const int *L = o->lengths ? o->lengths : EVAL_DEFAULT_LENGTHS;
    int        n = o->lengths ? o->n_lengths : 4, k = 0;
    for (int i = 0; i < n; i++) {
        int v = L[i];
        if (o->max_tokens > 0 && v > o->max_tokens) v = o->max_tokens;
        v = v / o->chunk_tokens * o->chunk_tokens;
        if (v < o->chunk_tokens) {
            set_err(err, el, "haystack length %d is shorter than one chunk of %d tokens%s", L[i], o->chunk_tokens,
                    o->max_tokens > 0 && L[i] > o->max_tokens ? " after clamping to the model's context" : "");
            return -1;
        }
        int dup = 0;
        for (int j = 0; j < k; j++) dup |= out[j] == v;
        if (!dup) out[k++] = v;
    }
    for (int i = 1; i < k; i++) /* insertion sort */
        for (int j = i; j > 0 && out[j - 1] > out[j]; j--) {
            int t = out[j];
            out[j] = out[j - 1], out[j - 1] = t;
        }
    return k;
}

/* ---- needle -------------------------------------------------------------------------- */

static int gen_needle(const eval_options *o, const eval_tokenizer *tok, eval_dataset *d, char *err,
                      size_t el) {
    if (!tok || !tok->chunk) return set_err(err, el, "needle: a tokenizer is needed"), -1;
    int lengths[64];
    if ((o->lengths ? o->n_lengths : 4) > 64) return set_err(err, el, "needle: at most 64 lengths"), -1;
    int nl = grid_lengths(o, lengths, err, el);
    if (nl < 0) return -1;
    const double *D  = o->depths ? o->depths : EVAL_DEFAULT_DEPTHS;
    int           nd = o->depths ? o->n_depths : 11;
    for (int i = 0; i < nd; i++)
        if (!(D[i] >= 0 && D[i] <= 1)) return set_err(err, el, "needle: depth %g is outside [0, 1]", D[i]), -1;
    char *hay = read_essays(o->data, err, el);
    if (!hay) return -1;
    int    maxc   = lengths[nl - 1] / o->chunk_tokens;
    char **chunks = cut_haystack(tok, hay, o->chunk_tokens, maxc, o->data, err, el);
    free(hay);
    if (!chunks) return -1;
    int rc = 0, cap = 0;
    for (int li = 0; li < nl && rc == 0; li++) {
        int nc = lengths[li] / o->chunk_tokens;
        for (int di = 0; di < nd && rc == 0; di++) {
            eval_example *e = new_example(d, &cap);
            if (!e) {
                rc = -1;
                break;
            }
            double   depth = D[di];
            uint64_t h     = eval_mix64(o->seed ^ eval_mix64((uint64_t)lengths[li] * 1000003u + (uint64_t)(depth * 1e4 + 0.5)));
            char     value[16];
            snprintf(value, sizeof value, "%07d", 1000000 + (int)(h % 9000000u));
            char  *needle = xasprintf("The special magic number is: %s.", value);
            double t      = depth * lengths[li];
            int    c      = (int)(t / o->chunk_tokens);
            if (c >= nc) c = nc - 1;
            double frac    = (t - (double)c * o->chunk_tokens) / o->chunk_tokens;
            e->id          = xasprintf("L%d-d%03d", lengths[li], (int)(depth * 100 + 0.5));
            e->instruction = xstrdup(NEEDLE_INSTRUCTION);
            e->question    = xstrdup(NEEDLE_QUESTION);
            e->metric      = EVAL_METRIC_SUBSTRING;
            e->length      = lengths[li];
            e->depth       = depth;
            e->n_gold      = 1;
            e->gold        = calloc(1, sizeof(char *));
            e->n_docs      = nc;
            e->docs        = calloc((size_t)nc, sizeof(char *));
            if (e->gold) e->gold[0] = xstrdup(value);
            for (int i = 0; e->docs && needle && i < nc; i++)
                e->docs[i] = i == c ? eval_insert_needle(chunks[i], frac, needle) : xstrdup(chunks[i]);
            free(needle);
            if (!example_ok(e)) rc = -1;
        }
    }
    for (int i = 0; i < maxc; i++) free(chunks[i]);
    free(chunks);
    if (rc) set_err(err, el, "needle: out of memory");
    return rc;
}

/* ---- ruler-niah ---------------------------------------------------------------------- */

typedef struct {
    char **w;
    int    n;
    char  *buf;
} wordlist;

static int read_words(const char *dir, const char *name, wordlist *wl, char *err, size_t el) {
    char *path = xasprintf("%s/%s", dir, name);
    if (!path) return set_err(err, el, "out of memory"), -1;
    size_t len;
    wl->buf = read_file(path, &len, err, el);
    if (!wl->buf) return free(path), -1;
    wl->n   = 0;
    wl->w   = malloc(sizeof(char *) * (len / 2 + 2));
    int rc  = wl->w ? 0 : (set_err(err, el, "out of memory"), -1);
    if (rc == 0 && has_nul(wl->buf, len)) set_err(err, el, "'%s' contains NUL bytes: not a word list", path), rc = -1;
    /* one word per line; surrounding blanks are trimmed; entries of several words ("ad hoc")
     * are skipped, keys being "adjective-noun"; control characters are an error */
    int line = 0;
    for (char *p = wl->buf; rc == 0 && p < wl->buf + len;) {
        char *e = memchr(p, '\n', (size_t)(wl->buf + len - p));
        if (!e) e = wl->buf + len;
        *e = 0;
        line++;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = strlen(p);
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r')) p[--n] = 0;
        int several = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            unsigned char ch = (unsigned char)p[i];
            if (ch == ' ' || ch == '\t') several = 1;
            else if (ch < 0x20 || ch == 0x7f) {
                set_err(err, el, "'%s' line %d: a control character (0x%02x) in a word", path, line, ch);
                rc = -1;
            }
        }
        if (rc == 0 && n > 64) {
            set_err(err, el, "'%s' line %d: a word of %zu bytes (at most 64)", path, line, n);
            rc = -1;
        }
        if (rc == 0 && n > 0 && !several) wl->w[wl->n++] = p;
        p = e + 1;
    }
    if (rc == 0 && wl->n < 8) set_err(err, el, "'%s': %d words; at least 8 are needed", path, wl->n), rc = -1;
    free(path);
    return rc;
}

static void words_free(wordlist *wl) {
    free(wl->w), free(wl->buf);
    memset(wl, 0, sizeof *wl);
}

/* RULER's tasks: which haystack, how many needles with how many keys, what is asked */
static const char *const RULER_TASKS[] = {"single", "multikey", "multivalue"};

static int gen_ruler(const eval_options *o, const eval_tokenizer *tok, eval_dataset *d, char *err,
                     size_t el) {
    if (!tok || !tok->chunk) return set_err(err, el, "ruler-niah: a tokenizer is needed"), -1;
    if (o->ruler_n < 1) return set_err(err, el, "ruler-niah: examples per task must be >= 1"), -1;
    if (o->ruler_keys < 2 || o->ruler_keys > 64) return set_err(err, el, "ruler-niah: needles per multi-key example must be in [2, 64]"), -1;
    const char *const *tasks   = o->tasks ? o->tasks : RULER_TASKS;
    int                n_tasks = o->tasks ? o->n_tasks : 3;
    for (int t = 0; t < n_tasks; t++) {
        int ok = 0;
        for (int k = 0; k < 3; k++) ok |= !strcmp(tasks[t], RULER_TASKS[k]);
        if (!ok) return set_err(err, el, "ruler-niah: unknown task '%s' (single, multikey, multivalue)", tasks[t]), -1;
    }
    int lengths[64];
    if ((o->lengths ? o->n_lengths : 4) > 64) return set_err(err, el, "ruler-niah: at most 64 lengths"), -1;
    eval_options o2 = *o;
    static const int ruler_default_len[1] = {4096};
    if (!o->lengths) o2.lengths = ruler_default_len, o2.n_lengths = 1;
    int nl = grid_lengths(&o2, lengths, err, el);
    if (nl < 0) return -1;
    wordlist adj = {0}, noun = {0};
    if (read_words(o->data, "adjectivelist.txt", &adj, err, el) != 0 ||
        read_words(o->data, "nounlist.txt", &noun, err, el) != 0) {
        words_free(&adj), words_free(&noun);
        return -1;
    }
    int    maxc = lengths[nl - 1] / o->chunk_tokens;
    char **noise = NULL, **essay = NULL;
    int    rc = 0, need_essay = 0, need_noise = 0;
    for (int t = 0; t < n_tasks; t++) {
        if (strcmp(tasks[t], "single")) need_essay = 1;
        else need_noise = 1;
    }
    if (need_noise) {
        sbuf   b    = {0};
        size_t reps = (size_t)maxc * (size_t)o->chunk_tokens / 8 + 16; /* ~22 tokens per copy */
        for (size_t i = 0; i < reps; i++) sb_str(&b, RULER_NOISE);
        if (b.oom) rc = -1, set_err(err, el, "out of memory");
        else noise = cut_haystack(tok, b.p, o->chunk_tokens, maxc, "the noise haystack", err, el);
        free(b.p);
        if (!noise) rc = -1;
    }
    if (rc == 0 && need_essay) {
        if (!o->haystack) {
            set_err(err, el, "ruler-niah: multikey and multivalue need --haystack DIR (the Paul Graham essays)");
            rc = -1;
        } else {
            char *hay = read_essays(o->haystack, err, el);
            if (!hay || !(essay = cut_haystack(tok, hay, o->chunk_tokens, maxc, o->haystack, err, el))) rc = -1;
            free(hay);
        }
    }
    int cap = 0;
    for (int t = 0; t < n_tasks && rc == 0; t++) {
        int multikey = !strcmp(tasks[t], "multikey"), multival = !strcmp(tasks[t], "multivalue");
        int n_needles = multikey || multival ? o->ruler_keys : 1;
        char **hay    = multikey || multival ? essay : noise;
        for (int li = 0; li < nl && rc == 0; li++) {
            int nc = lengths[li] / o->chunk_tokens;
            for (int s = 0; s < o->ruler_n && rc == 0; s++) {
                uint64_t st = eval_mix64(o->seed ^ eval_mix64(((uint64_t)t << 48) ^ ((uint64_t)lengths[li] << 20) ^ (uint64_t)s));
                char     keys[64][96];
                char     vals[64][16];
                for (int k = 0; k < n_needles; k++) {
                    if (k == 0 || multikey) {
                        for (int tries = 0;; tries++) { /* distinct keys */
                            st = eval_mix64(st);
                            snprintf(keys[k], sizeof keys[k], "%s-%s", adj.w[st % (uint64_t)adj.n], noun.w[(st >> 32) % (uint64_t)noun.n]);
                            int dup = 0;
                            for (int j = 0; j < k; j++) dup |= !strcmp(keys[j], keys[k]);
                            if (!dup || tries > 100) break;
                        }
                    } else {
                        strcpy(keys[k], keys[0]);
                    }
                    for (int tries = 0;; tries++) { /* distinct values */
                        st = eval_mix64(st);
                        snprintf(vals[k], sizeof vals[k], "%07d", 1000000 + (int)(st % 9000000u));
                        int dup = 0;
                        for (int j = 0; j < k; j++) dup |= !strcmp(vals[j], vals[k]);
                        if (!dup || tries > 100) break;
                    }
                }
                eval_example *e = new_example(d, &cap);
                if (!e) {
                    rc = -1;
                    break;
                }
                e->id          = xasprintf("%s-L%d-%03d", tasks[t], lengths[li], s);
                e->task        = xstrdup(tasks[t]);
                e->length      = lengths[li];
                e->metric      = EVAL_METRIC_MATCH_ALL;
                e->instruction = xstrdup(RULER_INSTRUCTION);
                e->question = multival ? xasprintf("\nWhat are all the special magic numbers for %s mentioned in the provided text?", keys[0])
                                       : xasprintf("\nWhat is the special magic number for %s mentioned in the provided text?", keys[0]);
                e->answer_prefix = multival ? xasprintf("The special magic numbers for %s mentioned in the provided text are", keys[0])
                                            : xasprintf("The special magic number for %s mentioned in the provided text is", keys[0]);
                e->n_gold = multival ? n_needles : 1;
                e->gold   = calloc((size_t)e->n_gold, sizeof(char *));
                e->n_docs = nc;
                e->docs   = calloc((size_t)nc, sizeof(char *));
                if (!e->gold || !e->docs || !e->answer_prefix) {
                    rc = -1;
                    break;
                }
                for (int k = 0; k < e->n_gold; k++) e->gold[k] = xstrdup(vals[k]);
                for (int i = 0; i < nc; i++) e->docs[i] = xstrdup(hay[i]);
                /* needles at seeded random depths, inserted in order of depth */
                for (int k = 0; k < n_needles; k++) {
                    st            = eval_mix64(st);
                    double depth  = (double)(st >> 11) / 9007199254740992.0;
                    double tpos   = depth * lengths[li];
                    int    c      = (int)(tpos / o->chunk_tokens);
                    if (c >= nc) c = nc - 1;
                    char *needle = xasprintf("One of the special magic numbers for %s is: %s.", keys[k], vals[k]);
                    char *nd     = needle && e->docs[c] ? eval_insert_needle(e->docs[c], (tpos - (double)c * o->chunk_tokens) / o->chunk_tokens, needle) : NULL;
                    free(needle);
                    if (!nd) {
                        rc = -1;
                        break;
                    }
                    free(e->docs[c]);
                    e->docs[c] = nd;
                }
                if (rc == 0 && !example_ok(e)) rc = -1;
            }
        }
    }
    if (rc && !err[0]) set_err(err, el, "ruler-niah: out of memory");
    for (int i = 0; noise && i < maxc; i++) free(noise[i]);
    for (int i = 0; essay && i < maxc; i++) free(essay[i]);
    free(noise), free(essay);
    words_free(&adj), words_free(&noun);
    return rc;
}

/* ---- entry --------------------------------------------------------------------------- */

int eval_load(const eval_options *o, const eval_tokenizer *tok, eval_dataset *out, char *err,
              size_t errlen) {
    memset(out, 0, sizeof *out);
    if (errlen) err[0] = 0;
    if (!o->dataset || !o->data) return set_err(err, errlen, "a dataset name and its data path are needed"), -1;
    if (o->chunk_tokens < 1) return set_err(err, errlen, "chunk tokens must be >= 1"), -1;
    int rc;
    if (!strcmp(o->dataset, "musique")) rc = load_musique(o->data, out, err, errlen);
    else if (!strcmp(o->dataset, "cacheblend-demo")) rc = load_demo(o->data, out, err, errlen);
    else if (!strcmp(o->dataset, "kv-retrieval")) rc = load_kv(o->data, o->kv_pairs, out, err, errlen);
    else if (!strcmp(o->dataset, "needle")) rc = gen_needle(o, tok, out, err, errlen);
    else if (!strcmp(o->dataset, "ruler-niah")) rc = gen_ruler(o, tok, out, err, errlen);
    else return set_err(err, errlen, "unknown dataset '%s' (musique, cacheblend-demo, needle, kv-retrieval, ruler-niah)", o->dataset), -1;
    if (rc == 0 && !(out->name = strdup(o->dataset))) rc = -1, set_err(err, errlen, "out of memory");
    if (rc != 0) eval_dataset_free(out);
    return rc;
}
