/* store_bench.c - the chunk store's disk tier measured against the disk, side by side in one
 * run (bench/store_bench.sh drives it; the store must hold the MuSiQue passages, see
 * `kvfuse ingest --musique`):
 *   1. raw sequential read speed of the store's LMDB file (read() in 4 MiB blocks, and
 *      O_DIRECT) with the page cache cold (posix_fadvise DONTNEED, residency checked with
 *      mincore) and warm, against the disk tier's load throughput (every entry looked up and
 *      checksum-verified through kvf_chunk_cache get, zero-copy) cold and warm, same file;
 *   2. KV bytes per token per dtype (f16, f32, q8) and with zstd (measured on stored chunks),
 *      zstd encode / decode speed;
 *   3. TTFT of a3 with every chunk served from the disk tier (store load included, cold and
 *      warm page cache) against full prefill, on the first --limit MuSiQue questions, with the
 *      per-layer load time (loader thread, cold) against the per-layer recompute time, and
 *      answer F1 against the gold answers;
 *   4. the accuracy cost of q8 chunks against f16 (first-token KL, top-1 and greedy answer
 *      agreement, F1) on the first --acc-limit questions (default 2: their q8 chunks are
 *      computed by the run).
 * The warm a3 TTFT is the cold run's with its store load replaced by the warm load of the same
 * chunks (the other parts of TTFT do not depend on where the chunks came from).
 * Prints tables and writes --json.
 *   build/bench/store_bench -m MODEL --store DIR --musique FILE [--limit 10] [--acc-limit 2]
 *                           [--threads N] [--json OUT] [--skip-ttft] [--skip-acc]
 */
#include "../tools/cli/rag.c" /* the MuSiQue prompt of `kvfuse ask --musique` (one translation unit) */

#include "store/chunk_io.h"
#include "common.h"
#include "engine/model.h"
#include "store/store.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_dir;
static char        g_data[4096];
static int         g_threads;

static void die(const char *what) {
    fprintf(stderr, "store_bench: %s: %s\n", what, kvf_errmsg());
    exit(1);
}

/* ---- page cache ----------------------------------------------------------------------------- */

/* drop the file's pages from the page cache; returns the fraction still resident */
static double drop_cache(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    struct stat sb;
    fstat(fd, &sb);
    double frac = -1;
    void  *p    = sb.st_size ? mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (p != MAP_FAILED) {
        size_t         pg = (size_t)sysconf(_SC_PAGESIZE), n = ((size_t)sb.st_size + pg - 1) / pg, res = 0;
        unsigned char *v  = malloc(n);
        if (v && mincore(p, (size_t)sb.st_size, v) == 0) {
            for (size_t i = 0; i < n; i++) res += v[i] & 1;
            frac = (double)res / (double)n;
        }
        free(v);
        munmap(p, (size_t)sb.st_size);
    }
    close(fd);
    return frac;
}

/* sequential read of the whole file: MB/s (1e6 bytes) */
static double raw_read(const char *path, bool direct, uint64_t *bytes) {
    int fd = open(path, O_RDONLY | (direct ? O_DIRECT : 0));
    if (fd < 0) return -1;
    size_t bs  = 4u << 20;
    void  *buf = NULL;
    if (posix_memalign(&buf, 4096, bs) != 0) return close(fd), -1;
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    double   t0 = kvf_time_ms();
    uint64_t n  = 0;
    for (;;) {
        ssize_t r = read(fd, buf, bs);
        if (r <= 0) break;
        n += (uint64_t)r;
    }
    double ms = kvf_time_ms() - t0;
    free(buf);
    close(fd);
    *bytes = n;
    return ms > 0 ? (double)n / ms / 1e3 : 0;
}

/* ---- disk tier load ------------------------------------------------------------------------- */

typedef struct {
    uint8_t (*keys)[16];
    int     n, cap;
    uint64_t bytes, kv_bytes, tokens[3], kvb[3];
} entries;

static int collect(const kvf_store_entry *e, const char *problem, void *user) {
    entries *es = user;
    if (problem || !e->header_ok) return 0;
    if (es->n == es->cap) {
        es->cap  = es->cap ? 2 * es->cap : 256;
        es->keys = realloc(es->keys, (size_t)es->cap * 16);
    }
    memcpy(es->keys[es->n++], e->key, 16);
    es->bytes += e->bytes;
    es->kv_bytes += e->kv_bytes;
    if ((unsigned)e->dtype < 3) es->tokens[e->dtype] += (uint64_t)e->n_tokens, es->kvb[e->dtype] += e->kv_bytes;
    return 0;
}

static kvf_chunk_cache *open_disk(const kvf_model *m, bool deferred) {
    kvf_store_params p = kvf_store_default_params();
    p.dir              = g_dir;
    p.verify_deferred  = deferred;
    kvf_chunk_cache *c;
    if (kvf_store_open(m, &p, &c) != KVF_OK) die("opening the store");
    return c;
}

/* Look up and verify every entry through a new store handle (mapping the file afresh): MB/s of
 * entry bytes. group > 0: in requests of `group` chunks, each announced with the prefetch hint
 * first (as fusion does for a prompt's chunks). passes > 1: more passes on the same handle
 * (mapped pages: a long-running server's steady state); *best gets the fastest pass. */
static double tier_load(const kvf_model *m, const entries *es, int group, int passes, double *best) {
    kvf_chunk_cache *c     = open_disk(m, false);
    double           first = 0;
    *best                  = 0;
    for (int p = 0; p < passes; p++) {
        double   t0 = kvf_time_ms();
        uint64_t n  = 0;
        for (int i = 0; i < es->n; i++) {
            kvf_chunk_key k;
            if (group > 0 && i % group == 0) {
                kvf_chunk_key ks[64];
                int           g = 0;
                for (int j = i; j < es->n && j < i + group && g < 64; j++) memcpy(ks[g++].b, es->keys[j], 16);
                c->ops->prefetch(c, ks, g);
            }
            memcpy(k.b, es->keys[i], 16);
            kvf_chunk *ch = c->ops->get(c, &k);
            if (ch) n += kvf_chunk_bytes(ch);
            kvf_chunk_release(ch);
        }
        double ms = kvf_time_ms() - t0, v = ms > 0 ? (double)n / ms / 1e3 : 0;
        if (p == 0) first = v;
        if (v > *best) *best = v;
    }
    kvf_chunk_cache_free(c);
    return first;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- MuSiQue ---------------------------------------------------------------------------------- */

typedef struct {
    char  *question;
    char  *gold[8];
    int    n_gold;
    char  *docs[16];
    int    n_docs;
} mq;

static int load_musique(const char *path, int limit, mq **out) {
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    if (!txt) return -1;
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsArray(root)) return -1;
    int n = cJSON_GetArraySize(root);
    if (limit > 0 && n > limit) n = limit;
    mq *q = calloc((size_t)n, sizeof *q);
    for (int i = 0; i < n; i++) {
        cJSON *it = cJSON_GetArrayItem(root, i), *c;
        q[i].question = strdup(cJSON_GetObjectItem(it, "question")->valuestring);
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(it, "answers")) if (q[i].n_gold < 8 && cJSON_IsString(c))
            q[i].gold[q[i].n_gold++] = strdup(c->valuestring);
        cJSON_ArrayForEach(c, cJSON_GetObjectItem(it, "ctxs")) {
            if (q[i].n_docs == 16) break;
            cJSON      *t = cJSON_GetObjectItem(c, "title"), *x = cJSON_GetObjectItem(c, "text");
            const char *title = cJSON_IsString(t) ? t->valuestring : "";
            size_t      sz    = strlen(title) + strlen(x->valuestring) + 8;
            char       *d     = malloc(sz);
            snprintf(d, sz, "%s\n\n%s\n\n", title, x->valuestring);
            q[i].docs[q[i].n_docs++] = d;
        }
    }
    cJSON_Delete(root);
    *out = q;
    return n;
}

/* SQuAD-style normalisation: lower case, ASCII punctuation dropped, articles dropped */
static int norm_tokens(const char *s, char toks[][64], int max) {
    char buf[4096];
    size_t k = 0;
    for (; *s && k + 1 < sizeof buf; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ispunct(ch) && ch < 128) continue;
        buf[k++] = (char)tolower(ch);
    }
    buf[k] = 0;
    int   n = 0;
    char *save, *w = strtok_r(buf, " \t\n\r", &save);
    for (; w && n < max; w = strtok_r(NULL, " \t\n\r", &save)) {
        if (!strcmp(w, "a") || !strcmp(w, "an") || !strcmp(w, "the")) continue;
        snprintf(toks[n++], 64, "%s", w);
    }
    return n;
}

static double f1(const char *pred, const char *gold) {
    static char a[256][64], b[256][64];
    int         na = norm_tokens(pred, a, 256), nb = norm_tokens(gold, b, 256), common = 0;
    if (!na || !nb) return na == nb;
    int used[256] = {0};
    for (int i = 0; i < na; i++)
        for (int j = 0; j < nb; j++)
            if (!used[j] && !strcmp(a[i], b[j])) {
                used[j] = 1, common++;
                break;
            }
    if (!common) return 0;
    double p = (double)common / na, r = (double)common / nb;
    return 2 * p * r / (p + r);
}

static double best_f1(const char *pred, const mq *q) {
    double b = 0;
    for (int i = 0; i < q->n_gold; i++) b = fmax(b, f1(pred, q->gold[i]));
    return b;
}

/* greedy answer of at most n tokens from the session's current logits */
static void answer(const kvf_model *m, kvf_session *s, int n, char *out, size_t cap) {
    size_t  len = 0;
    int32_t nv  = kvf_model_n_vocab(m);
    int32_t tok = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), nv);
    for (int i = 0; i < n && !kvf_token_is_eog(m, tok); i++) {
        char    piece[256];
        int32_t k = kvf_token_to_piece(m, tok, piece, sizeof piece, false);
        if (k > 0 && len + (size_t)k + 1 < cap) memcpy(out + len, piece, (size_t)k), len += (size_t)k;
        if (i + 1 == n || kvf_session_eval(s, &tok, 1, 0) != KVF_OK) break;
        tok = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), nv);
    }
    out[len] = 0;
}

static void softmax(const float *l, int n, double *p) {
    double mx = -1e300, sum = 0;
    for (int i = 0; i < n; i++) mx = fmax(mx, l[i]);
    for (int i = 0; i < n; i++) sum += p[i] = exp((double)l[i] - mx);
    for (int i = 0; i < n; i++) p[i] /= sum;
}

static double kl(const float *ref, const float *x, int n) {
    double *p = malloc(sizeof(double) * (size_t)n), *q = malloc(sizeof(double) * (size_t)n), d = 0;
    softmax(ref, n, p), softmax(x, n, q);
    for (int i = 0; i < n; i++)
        if (p[i] > 0) d += p[i] * (log(p[i]) - log(fmax(q[i], 1e-300)));
    free(p), free(q);
    return d;
}

static int argmax(const float *l, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static double mean(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return n ? s / n : 0;
}

static void json_num(cJSON *o, const char *k, double v) {
    cJSON_AddNumberToObject(o, k, v);
}

int main(int argc, char **argv) {
    const char *model = NULL, *musique = NULL, *json_out = NULL;
    int         limit = 10, acc_limit = 2, skip_ttft = 0, skip_acc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && v) model = v, i++;
        else if (!strcmp(a, "--store") && v) g_dir = v, i++;
        else if (!strcmp(a, "--musique") && v) musique = v, i++;
        else if (!strcmp(a, "--limit") && v) limit = atoi(v), i++;
        else if (!strcmp(a, "--acc-limit") && v) acc_limit = atoi(v), i++;
        else if (!strcmp(a, "--threads") && v) g_threads = atoi(v), i++;
        else if (!strcmp(a, "--json") && v) json_out = v, i++;
        else if (!strcmp(a, "--skip-ttft")) skip_ttft = 1;
        else if (!strcmp(a, "--skip-acc")) skip_acc = 1;
        else {
            fprintf(stderr, "usage: store_bench -m MODEL --store DIR --musique FILE [--limit N] [--acc-limit N]\n"
                            "                   [--threads N] [--json OUT] [--skip-ttft] [--skip-acc]\n");
            return 2;
        }
    }
    if (!model || !g_dir || !musique) {
        fprintf(stderr, "store_bench: -m, --store and --musique are required\n");
        return 2;
    }
    snprintf(g_data, sizeof g_data, "%s/data.mdb", g_dir);
    kvf_set_log_level(1);
    kvf_model *m;
    if (kvf_model_load(model, NULL, &m) != KVF_OK) die("loading the model");
    kvf_model_info mi;
    kvf_model_get_info(m, &mi);
    cJSON *J = cJSON_CreateObject();
    cJSON_AddStringToObject(J, "model", model);

    /* ---- 1. disk vs disk tier ---------------------------------------------------------- */
    entries es = {0};
    {
        kvf_chunk_cache *c = open_disk(NULL, false);
        if (kvf_store_list(c, collect, &es) != KVF_OK) die("listing the store");
        kvf_chunk_cache_free(c);
    }
    if (!es.n) {
        fprintf(stderr, "store_bench: the store %s is empty: run `kvfuse ingest --musique` first\n", g_dir);
        return 1;
    }
    /* R interleaved rounds (the disk and the machine are shared: medians) */
    enum { R = 3, M = 7 };
    double   v[M][R], res[R], dummy;
    uint64_t fb = 0;
    for (int r = 0; r < R; r++) {
        res[r]  = drop_cache(g_data);
        v[0][r] = raw_read(g_data, false, &fb);            /* raw cold */
        v[1][r] = raw_read(g_data, false, &fb);            /* raw warm */
        drop_cache(g_data);
        v[2][r] = raw_read(g_data, true, &fb);             /* O_DIRECT */
        drop_cache(g_data);
        v[3][r] = tier_load(m, &es, 0, 1, &dummy);         /* tier cold, one by one */
        drop_cache(g_data);
        v[4][r] = tier_load(m, &es, 11, 1, &dummy);        /* tier cold, requests of 11 + prefetch */
        v[5][r] = tier_load(m, &es, 0, 3, &v[6][r]);       /* tier warm: first pass, steady */
    }
    double md[M];
    for (int k = 0; k < M; k++) md[k] = median(v[k], R);
    double resident = median(res, R);
    /* the disk's sequential read speed: the faster of buffered read() and O_DIRECT (buffered
     * reads can be held back by a small read-ahead window) */
    double raw_cold = fmax(md[0], md[2]);
    printf("\n== disk tier load vs raw sequential read of the same file (%s, %.1f MiB, %d entries; median of %d)\n",
           g_data, (double)fb / (1 << 20), es.n, R);
    printf("%-44s %10s %10s %10s\n", "", "cold MB/s", "warm MB/s", "% of raw");
    printf("%-44s %10.0f %10.0f %10s\n", "raw read(), 4 MiB blocks", md[0], md[1], "100 / 100");
    printf("%-44s %10.0f %10s %10s\n", "raw O_DIRECT, 4 MiB blocks", md[2], "-", "-");
    printf("%-44s %10.0f %10.0f %4.0f / %3.0f\n", "disk tier get, one by one (first pass)", md[3], md[5],
           100 * md[3] / raw_cold, 100 * md[5] / md[1]);
    printf("%-44s %10.0f %10s %4.0f / -\n", "disk tier get, requests of 11 + prefetch", md[4], "-", 100 * md[4] / raw_cold);
    printf("%-44s %10s %10.0f %4s / %3.0f\n", "disk tier get, warm and mapped (server)", "-", md[6], "-", 100 * md[6] / md[1]);
    printf("(%% of raw: cold against the faster raw cold read, %.0f MB/s; zero-copy from the LMDB map, every layer's\n"
           " XXH3-64 checked; cold = posix_fadvise DONTNEED, %.1f%% of the file resident afterwards; first pass =\n"
           " pages cached but not yet mapped into this process)\n", raw_cold, 100 * resident);
    cJSON *L = cJSON_AddObjectToObject(J, "load");
    json_num(L, "file_bytes", (double)fb), json_num(L, "entries", es.n), json_num(L, "rounds", R);
    json_num(L, "raw_cold_MBps", md[0]), json_num(L, "raw_warm_MBps", md[1]), json_num(L, "raw_odirect_MBps", md[2]);
    json_num(L, "tier_cold_MBps", md[3]), json_num(L, "tier_cold_prefetch_MBps", md[4]);
    json_num(L, "tier_warm_first_MBps", md[5]), json_num(L, "tier_warm_mapped_MBps", md[6]);
    json_num(L, "raw_cold_best_MBps", raw_cold);
    json_num(L, "tier_over_raw_cold", md[3] / raw_cold), json_num(L, "tier_prefetch_over_raw_cold", md[4] / raw_cold);
    json_num(L, "tier_over_raw_warm", md[5] / md[1]), json_num(L, "tier_mapped_over_raw_warm", md[6] / md[1]);
    json_num(L, "resident_after_drop", resident);

    /* ---- 2. bytes per token ------------------------------------------------------------ */
    {
        int64_t kvd = (int64_t)mi.n_head_kv * mi.head_dim;
        double  bpt[3];
        kvf_chunk_dtype dts[3] = {KVF_CHUNK_F16, KVF_CHUNK_F32, KVF_CHUNK_Q8};
        for (int d = 0; d < 3; d++) bpt[d] = (double)mi.n_layer * 2 * (double)kvf_chunk_row_bytes(dts[d], (int32_t)kvd);
        /* zstd on up to 40 stored f16 entries (and their q8 requantisation) */
        kvf_chunk_cache *c = open_disk(m, false);
        double           zb[2] = {0, 0}, tok = 0, enc_ms[2] = {0, 0}, dec_ms[2] = {0, 0}, rawb[2] = {0, 0};
        int              lossless = 1, used = 0;
        for (int i = 0; i < es.n && used < 40; i++) {
            kvf_chunk_key k;
            memcpy(k.b, es.keys[i], 16);
            kvf_chunk *ch = c->ops->get(c, &k);
            if (!ch || ch->dtype != KVF_CHUNK_F16) {
                kvf_chunk_release(ch);
                continue;
            }
            used++;
            tok += ch->n_tokens;
            /* q8 copy of the same KV */
            kvf_chunk *q8  = kvf_chunk_alloc(KVF_CHUNK_Q8, ch->n_tokens, ch->n_layer, ch->kvd, ch->ids, ch->n_ctx);
            float     *row = malloc(sizeof(float) * (size_t)ch->kvd * (size_t)ch->n_tokens);
            for (int l = 0; l < ch->n_layer; l++)
                for (int kv = 0; kv < 2; kv++) {
                    kvf_chunk_read(NULL, ch, l, kv, 0, ch->n_tokens, row);
                    kvf_chunk_write(NULL, q8, l, kv, 0, ch->n_tokens, row);
                }
            free(row);
            kvf_chunk *src[2] = {ch, q8};
            for (int d = 0; d < 2; d++) {
                uint8_t *e;
                size_t   len;
                double   t0 = kvf_time_ms();
                if (kvf_entry_encode(src[d], &k, m->cache_id, mi.n_head_kv, mi.head_dim, KVF_STORE_COMPRESS_ZSTD, 3, &e, &len) != KVF_OK) die("zstd encode");
                enc_ms[d] += kvf_time_ms() - t0;
                zb[d] += (double)len;
                rawb[d] += (double)kvf_chunk_bytes(src[d]);
                kvf_entry_view ev;
                kvf_chunk     *back;
                t0 = kvf_time_ms();
                if (kvf_entry_parse(e, len, &ev) != KVF_OK || kvf_entry_to_chunk(&ev, &back) != KVF_OK) die("zstd decode");
                dec_ms[d] += kvf_time_ms() - t0;
                for (int l = 0; l < back->n_layer; l++)
                    lossless &= !memcmp(kvf_chunk_layer_data(back, l), kvf_chunk_layer_data(src[d], l), kvf_chunk_layer_bytes(back));
                kvf_chunk_release(back);
                kvf_entry_view_free(&ev);
                kvf_free(e);
            }
            kvf_chunk_release(q8);
            kvf_chunk_release(ch);
        }
        kvf_chunk_cache_free(c);
        printf("\n== KV bytes per token (%d layers x K,V x %lld values)\n", mi.n_layer, (long long)kvd);
        printf("%-12s %12s %10s %14s %14s\n", "dtype", "bytes/token", "vs f16", "encode MB/s", "decode MB/s");
        printf("%-12s %12.0f %9.2fx %14s %14s\n", "f32", bpt[1], bpt[1] / bpt[0], "-", "-");
        printf("%-12s %12.0f %9.2fx %14s %14s\n", "f16", bpt[0], 1.0, "-", "-");
        printf("%-12s %12.0f %9.2fx %14s %14s\n", "q8", bpt[2], bpt[2] / bpt[0], "-", "-");
        cJSON *B = cJSON_AddObjectToObject(J, "bytes_per_token");
        json_num(B, "f32", bpt[1]), json_num(B, "f16", bpt[0]), json_num(B, "q8", bpt[2]);
        if (used) {
            double zf = zb[0] / tok, zq = zb[1] / tok;
            printf("%-12s %12.0f %9.2fx %14.0f %14.0f\n", "f16+zstd", zf, zf / bpt[0], rawb[0] / enc_ms[0] / 1e3, rawb[0] / dec_ms[0] / 1e3);
            printf("%-12s %12.0f %9.2fx %14.0f %14.0f\n", "q8+zstd", zq, zq / bpt[0], rawb[1] / enc_ms[1] / 1e3, rawb[1] / dec_ms[1] / 1e3);
            printf("(zstd level 3 per layer over %d stored chunks, %.0f tokens; entry headers included; round trip %s)\n",
                   used, tok, lossless ? "bit-exact" : "NOT EXACT");
            json_num(B, "f16_zstd", zf), json_num(B, "q8_zstd", zq), json_num(B, "zstd_chunks", used);
            cJSON_AddBoolToObject(B, "zstd_lossless", lossless);
        }
    }

    /* ---- 3. TTFT: a3 from the disk tier vs full --------------------------------------- */
    mq *qs = NULL;
    int nq = load_musique(musique, limit > acc_limit ? limit : acc_limit, &qs);
    if (nq < 0) die("reading the MuSiQue file");
    kvf_fuse_params fp = kvf_fuse_default_params();
    int32_t         nv = kvf_model_n_vocab(m);
    int             na = nq < acc_limit ? nq : acc_limit;
    float         **l16 = calloc((size_t)(na > 0 ? na : 1), sizeof(float *)); /* a3 f16 logits, answers */
    char          **a16 = calloc((size_t)(na > 0 ? na : 1), sizeof(char *));
    if (!skip_ttft) {
        int     n = nq < limit ? nq : limit;
        double *full = calloc((size_t)n, sizeof(double)), *a3w = calloc((size_t)n, sizeof(double)),
               *a3c = calloc((size_t)n, sizeof(double)), *loadc = calloc((size_t)n, sizeof(double)),
               *loadw = calloc((size_t)n, sizeof(double)), *rec = calloc((size_t)n, sizeof(double)),
               *f1full = calloc((size_t)n, sizeof(double)), *f1a3 = calloc((size_t)n, sizeof(double)),
               *lay_load = calloc((size_t)n, sizeof(double)), *lay_rec = calloc((size_t)n, sizeof(double)),
               *lay_load_max = calloc((size_t)n, sizeof(double)), *toks = calloc((size_t)n, sizeof(double));
        int     misses = 0, agree = 0;
        cJSON  *Q      = cJSON_AddArrayToObject(J, "questions");
        printf("\n== TTFT on MuSiQue: a3 with every chunk from the disk tier (store load included) vs full prefill\n");
        printf("%3s %6s %9s %9s %9s %7s %7s %9s %9s %9s %9s\n", "q", "tokens", "full ms", "a3 cold", "a3 warm",
               "cold/f", "warm/f", "load cold", "load warm", "layer ld", "layer rc");
        for (int i = 0; i < n; i++) {
            rag_req req;
            char    err[256];
            char   *qt = rag_musique_question(qs[i].question);
            if (rag_tokenize(m, NULL, RAG_MUSIQUE_PREFIX, (const char *const *)qs[i].docs, qs[i].n_docs, qt, &req, err, sizeof err) != 0) {
                fprintf(stderr, "store_bench: %s\n", err);
                return 1;
            }
            free(qt);
            kvf_session_params sp = kvf_session_default_params();
            sp.n_ctx              = req.total + 40;
            sp.n_threads          = g_threads;
            kvf_session *s;
            if (kvf_session_new(m, &sp, &s) != KVF_OK) die("session");
            kvf_fuse_stats st;
            char           ans_full[1024], ans_a3[1024];
            fp.method = KVF_METHOD_FULL;
            if (kvf_session_fuse(s, NULL, req.segs, req.n_segs, &fp, &st) != KVF_OK) die("full");
            full[i] = st.ttft_ms;
            toks[i] = st.total_tokens;
            answer(m, s, 32, ans_full, sizeof ans_full);
            /* a3 with the page cache cold: every chunk read from the disk */
            fp.method = KVF_METHOD_A3;
            drop_cache(g_data);
            kvf_chunk_cache *c = open_disk(m, false);
            if (kvf_session_fuse(s, c, req.segs, req.n_segs, &fp, &st) != KVF_OK) die("a3");
            a3c[i] = st.ttft_ms, loadc[i] = st.load_ms, rec[i] = st.recompute_ms;
            misses += st.chunk_misses + (st.chunk_hits == 0);
            if (i < na) {
                l16[i] = malloc(sizeof(float) * (size_t)nv);
                memcpy(l16[i], kvf_session_logits(s, -1), sizeof(float) * (size_t)nv);
            }
            answer(m, s, 32, ans_a3, sizeof ans_a3);
            if (i < na) a16[i] = strdup(ans_a3);
            /* warm: the same chunks again through the open store (load only; the rest of the
             * TTFT does not depend on where the chunks came from) */
            kvf_chunk_key keys[64];
            int           nk = 0;
            for (int sgi = 0; sgi < req.n_segs - 1 && nk < 64; sgi++) {
                if (!req.segs[sgi].n) continue;
                int alone  = sgi == 0;
                keys[nk++] = kvf_chunk_key_make(m->cache_id, fp.dtype, alone ? NULL : req.segs[0].ids,
                                                alone ? 0 : req.segs[0].n, req.segs[sgi].ids, req.segs[sgi].n);
            }
            double t0 = kvf_time_ms();
            for (int j = 0; j < nk; j++) kvf_chunk_release(c->ops->get(c, &keys[j]));
            loadw[i] = kvf_time_ms() - t0;
            a3w[i]   = a3c[i] - loadc[i] + loadw[i];
            kvf_chunk_cache_free(c);
            f1full[i] = best_f1(ans_full, &qs[i]);
            f1a3[i]   = best_f1(ans_a3, &qs[i]);
            agree += !strcmp(ans_full, ans_a3);
            /* pipelining: per-layer load (loader thread, page cache cold) vs per-layer recompute */
            drop_cache(g_data);
            c = open_disk(m, true);
            kvf_chunk *chs[64] = {0};
            for (int j = 0; j < nk; j++) chs[j] = c->ops->get_deferred(c, &keys[j]);
            kvf_chunk_loader *ld;
            double            tl0 = kvf_time_ms(), lmax = 0;
            if (kvf_chunk_loader_start(chs, nk, mi.n_layer, 2, &ld) != KVF_OK) die("loader");
            for (int l = 0; l < mi.n_layer; l++) {
                if (kvf_chunk_loader_wait(ld, l, NULL) != KVF_OK) die("loader wait");
                lmax = fmax(lmax, kvf_chunk_loader_layer_ms(ld, l));
            }
            double lall = kvf_time_ms() - tl0;
            kvf_chunk_loader_free(ld);
            for (int j = 0; j < nk; j++) kvf_chunk_release(chs[j]);
            kvf_chunk_cache_free(c);
            lay_load[i]     = lall / mi.n_layer;
            lay_load_max[i] = lmax;
            lay_rec[i]      = rec[i] / mi.n_layer;
            printf("%3d %6.0f %9.0f %9.0f %9.0f %6.2fx %6.2fx %9.1f %9.1f %9.2f %9.1f\n", i, toks[i], full[i], a3c[i],
                   a3w[i], a3c[i] / full[i], a3w[i] / full[i], loadc[i], loadw[i], lay_load[i], lay_rec[i]);
            fflush(stdout);
            cJSON *o = cJSON_CreateObject();
            json_num(o, "tokens", toks[i]), json_num(o, "full_ttft_ms", full[i]);
            json_num(o, "a3_cold_ttft_ms", a3c[i]), json_num(o, "a3_warm_ttft_ms", a3w[i]);
            json_num(o, "load_cold_ms", loadc[i]), json_num(o, "load_warm_ms", loadw[i]);
            json_num(o, "recompute_ms", rec[i]), json_num(o, "layer_load_ms", lay_load[i]);
            json_num(o, "layer_load_max_ms", lay_load_max[i]), json_num(o, "layer_recompute_ms", lay_rec[i]);
            json_num(o, "f1_full", f1full[i]), json_num(o, "f1_a3", f1a3[i]);
            cJSON_AddStringToObject(o, "answer_full", ans_full);
            cJSON_AddStringToObject(o, "answer_a3", ans_a3);
            cJSON_AddItemToArray(Q, o);
            rag_free(&req);
            kvf_session_free(s);
        }
        double sf = 0, sc = 0, sw = 0;
        for (int i = 0; i < n; i++) sf += full[i], sc += a3c[i], sw += a3w[i];
        printf("mean: full %.0f ms; a3 from the disk tier %.0f ms cold (%.2fx full), %.0f ms warm (%.2fx); "
               "store load %.1f ms cold, %.1f ms warm; chunk misses %d\n",
               sf / n, sc / n, sc / sf, sw / n, sw / sf, mean(loadc, n), mean(loadw, n), misses);
        printf("per layer: load %.2f ms (slowest layer %.2f ms; cold, loader thread, all chunks) vs recompute %.1f ms\n"
               "(a3 recompute_ms / layers): with pipelining, loading layer l+1 hides behind computing layer l\n",
               mean(lay_load, n), mean(lay_load_max, n), mean(lay_rec, n));
        printf("answers: F1 vs gold: full %.3f, a3 %.3f; a3 answer identical to full on %d of %d\n", mean(f1full, n),
               mean(f1a3, n), agree, n);
        cJSON *T = cJSON_AddObjectToObject(J, "ttft");
        json_num(T, "questions", n), json_num(T, "full_ms", sf / n), json_num(T, "a3_cold_ms", sc / n);
        json_num(T, "a3_warm_ms", sw / n), json_num(T, "a3_cold_over_full", sc / sf), json_num(T, "a3_warm_over_full", sw / sf);
        json_num(T, "load_cold_ms", mean(loadc, n)), json_num(T, "load_warm_ms", mean(loadw, n));
        json_num(T, "layer_load_ms", mean(lay_load, n)), json_num(T, "layer_load_max_ms", mean(lay_load_max, n));
        json_num(T, "layer_recompute_ms", mean(lay_rec, n)), json_num(T, "chunk_misses", misses);
        json_num(T, "f1_full", mean(f1full, n)), json_num(T, "f1_a3", mean(f1a3, n)), json_num(T, "a3_equals_full", agree);
    }

    /* ---- 4. accuracy cost of q8 chunks -------------------------------------------------- */
    if (!skip_acc && na > 0) {
        int    top1 = 0, same = 0;
        double klsum = 0, klmax = 0, f16f1 = 0, q8f1 = 0, agreef1 = 0, q8_pre_ms = 0;
        printf("\n== accuracy of q8 chunks against f16 (a3, %d questions; the q8 chunks are computed here)\n", na);
        for (int i = 0; i < na; i++) {
            rag_req req;
            char    err[256];
            char   *qt = rag_musique_question(qs[i].question);
            if (rag_tokenize(m, NULL, RAG_MUSIQUE_PREFIX, (const char *const *)qs[i].docs, qs[i].n_docs, qt, &req, err, sizeof err) != 0) return 1;
            free(qt);
            kvf_session_params sp = kvf_session_default_params();
            sp.n_ctx              = req.total + 40;
            sp.n_threads          = g_threads;
            kvf_session *s;
            kvf_session_new(m, &sp, &s);
            kvf_chunk_cache *c = open_disk(m, false);
            kvf_fuse_stats   st;
            char             a8[1024], tmp[1024];
            fp.method = KVF_METHOD_A3;
            if (!l16[i]) { /* the TTFT section did not run */
                fp.dtype = KVF_CHUNK_F16;
                if (kvf_session_fuse(s, c, req.segs, req.n_segs, &fp, &st) != KVF_OK) die("a3 f16");
                l16[i] = malloc(sizeof(float) * (size_t)nv);
                memcpy(l16[i], kvf_session_logits(s, -1), sizeof(float) * (size_t)nv);
                answer(m, s, 32, tmp, sizeof tmp);
                a16[i] = strdup(tmp);
            }
            fp.dtype = KVF_CHUNK_Q8;
            if (kvf_session_fuse(s, c, req.segs, req.n_segs, &fp, &st) != KVF_OK) die("a3 q8"); /* computes q8 misses */
            q8_pre_ms += st.precompute_ms;
            const float *l8  = kvf_session_logits(s, -1);
            double       d   = kl(l16[i], l8, nv);
            int          t1  = argmax(l16[i], nv) == argmax(l8, nv);
            klsum += d, klmax = fmax(klmax, d), top1 += t1;
            answer(m, s, 32, a8, sizeof a8);
            same += !strcmp(a16[i], a8);
            f16f1 += best_f1(a16[i], &qs[i]), q8f1 += best_f1(a8, &qs[i]), agreef1 += f1(a8, a16[i]);
            printf("%3d KL %.2e top-1 %s | f16: %-32.32s | q8: %-32.32s\n", i, d, t1 ? "same" : "DIFF", a16[i], a8);
            fflush(stdout);
            fp.dtype = KVF_CHUNK_F16;
            kvf_chunk_cache_free(c);
            rag_free(&req);
            kvf_session_free(s);
        }
        printf("q8 vs f16: first-token KL mean %.2e (max %.2e), top-1 agreement %d/%d, identical answers %d/%d, "
               "answer F1 vs f16 %.3f; gold F1 f16 %.3f, q8 %.3f; q8 is 0.53x the bytes\n",
               klsum / na, klmax, top1, na, same, na, agreef1 / na, f16f1 / na, q8f1 / na);
        cJSON *A = cJSON_AddObjectToObject(J, "q8_accuracy");
        json_num(A, "questions", na), json_num(A, "kl_mean", klsum / na), json_num(A, "kl_max", klmax);
        json_num(A, "top1_agree", top1), json_num(A, "answers_identical", same), json_num(A, "answer_f1_vs_f16", agreef1 / na);
        json_num(A, "gold_f1_f16", f16f1 / na), json_num(A, "gold_f1_q8", q8f1 / na), json_num(A, "q8_precompute_ms", q8_pre_ms);
    }
    if (json_out) {
        char *txt = cJSON_Print(J);
        FILE *f   = fopen(json_out, "w");
        if (f) fputs(txt, f), fputc('\n', f), fclose(f);
        free(txt);
        printf("\nwrote %s\n", json_out);
    }
    cJSON_Delete(J);
    kvf_model_free(m);
    return 0;
}
