/* kv_paging.c - what demand-paged KV caches cost and save (issue 13, vAttention), one run:
 *   1. sessions: S sessions of --ctx tokens created; KV reserved vs resident, process RSS;
 *   2. the page-fault cost: prefill of P tokens into fresh pages, then the same P tokens again
 *      into pages already committed (truncate keeps them), then again after kvf_session_trim
 *      returned them: the difference per token is what demand paging costs;
 *   3. a direct probe: first writes to N fresh pages of a reservation, microseconds per page,
 *      times the pages one token's KV touches.
 *   build/bench/kv_paging -m MODEL [--ctx 32768] [--sessions 32] [-p 512] [--threads N] [--kv f16]
 */
#include "common.h"
#include "kvfuse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int64_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long  pages = 0, res = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = -1;
    fclose(f);
    return res < 0 ? -1 : (int64_t)res * (int64_t)kvf_page_size();
}

static double mib(int64_t b) {
    return (double)b / 1048576.0;
}

static void usage(void) {
    fprintf(stderr, "usage: kv_paging -m MODEL [--ctx N] [--sessions S] [-p TOKENS] [--threads N] [--kv f16]\n");
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int         ctx = 32768, n_sess = 32, P = 512, threads = 0;
    kvf_kv_type kt = KVF_KV_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return usage(), 0;
        if (!v) return usage(), 2;
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "--ctx")) ctx = atoi(v);
        else if (!strcmp(a, "--sessions")) n_sess = atoi(v);
        else if (!strcmp(a, "-p")) P = atoi(v);
        else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--kv")) kt = !strcmp(v, "f16") ? KVF_KV_F16 : KVF_KV_F32;
        else return usage(), 2;
        i++;
    }
    if (!model || ctx < 64 || n_sess < 1 || P < 1 || P > ctx) return usage(), 2;
    kvf_set_log_level(1);
    int64_t          rss0 = rss_bytes();
    kvf_model_params mp   = kvf_model_default_params();
    mp.n_threads          = threads;
    kvf_model *m          = NULL;
    if (kvf_model_load(model, &mp, &m) != KVF_OK) {
        fprintf(stderr, "kv_paging: %s\n", kvf_errmsg());
        return 1;
    }
    int64_t rss_model = rss_bytes(), tok = kvf_session_kv_bytes_per_token(m, kt);
    printf("model %s: KV %lld bytes per token (%s)\n", model, (long long)tok, kt == KVF_KV_F16 ? "f16" : "f32");

    /* 1. many long-context sessions */
    kvf_session      **ss = calloc((size_t)n_sess, sizeof *ss);
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = ctx;
    sp.n_threads          = threads;
    sp.kv_type            = kt;
    for (int i = 0; i < n_sess; i++)
        if (kvf_session_new(m, &sp, &ss[i]) != KVF_OK) {
            fprintf(stderr, "kv_paging: session %d: %s\n", i, kvf_errmsg());
            return 1;
        }
    int64_t rss_sess = rss_bytes(), resident = 0;
    for (int i = 0; i < n_sess; i++) resident += kvf_session_kv_resident(ss[i]);
    printf("\n1. %d sessions x %d tokens: KV reserved %.0f MiB, resident %.1f MiB; RSS: %.0f MiB "
           "before the model, %.0f with it, %.0f with the sessions (+%.0f MiB scratch)\n",
           n_sess, ctx, mib(tok * (int64_t)((ctx + 63) / 64 * 64) * n_sess), mib(resident), mib(rss0),
           mib(rss_model), mib(rss_sess), mib(rss_sess - rss_model));

    /* 2. prefill into fresh, committed and trimmed pages */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)P);
    int32_t  nv  = kvf_model_n_vocab(m);
    uint64_t x   = 0x9E3779B97F4A7C15ULL;
    for (int i = 0; i < P; i++) x = x * 6364136223846793005ULL + 1442695040888963407ULL, ids[i] = (int32_t)((x >> 33) % (uint64_t)(nv - 300));
    kvf_session *s = ss[0];
    const char  *what[3] = {"fresh pages", "pages kept (truncate)", "after kvf_session_trim"};
    double       ms[3];
    int64_t      res[3];
    kvf_session_eval(s, ids, 16, 0); /* warm the code paths */
    kvf_session_truncate(s, 0);
    kvf_session_trim(s);
    for (int r = 0; r < 3; r++) {
        double t0 = kvf_time_ms();
        if (kvf_session_eval(s, ids, P, 0) != KVF_OK) {
            fprintf(stderr, "kv_paging: eval: %s\n", kvf_errmsg());
            return 1;
        }
        ms[r]  = kvf_time_ms() - t0;
        res[r] = kvf_session_kv_resident(s);
        kvf_session_truncate(s, 0);
        if (r == 1) kvf_session_trim(s);
    }
    printf("\n2. prefill of %d tokens, one session (%d threads)\n", P, kvf_session_threads(s));
    printf("   %-24s %10s %12s %14s\n", "KV pages", "ms", "tok/s", "KV resident");
    for (int r = 0; r < 3; r++)
        printf("   %-24s %10.1f %12.1f %11.2f MiB\n", what[r], ms[r], 1e3 * P / ms[r], mib(res[r]));
    printf("   exact KV of %d tokens: %.2f MiB; paging cost %.3f ms per token (%.2f%% of the prefill)\n",
           P, mib(tok * P), (ms[0] - ms[1]) / P, 100.0 * (ms[0] - ms[1]) / ms[1]);

    /* 3. first writes to fresh pages, directly */
    size_t   ps = kvf_page_size(), npg = 65536;
    char    *r  = kvf_vmem_reserve(npg * ps);
    uint64_t t0 = kvf_time_ns();
    for (size_t i = 0; i < npg; i++) r[i * ps] = 1;
    double us = (double)(kvf_time_ns() - t0) / 1e3 / (double)npg;
    kvf_vmem_release(r, npg * ps);
    printf("\n3. first write to a fresh page: %.3f us; one token's KV spans %.1f pages -> %.2f us per "
           "token\n",
           us, (double)tok / (double)ps, us * (double)tok / (double)ps);
    for (int i = 0; i < n_sess; i++) kvf_session_free(ss[i]);
    free(ss);
    free(ids);
    kvf_model_free(m);
    return 0;
}
