/* cli_mem.c - memory the machine can give, and whether sessions (KV caches) of a given context
 * fit in it: shared by generate, ask, bench, info and serve. */
#include "cli/cli.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int64_t cli_mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        long long kb = -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
        fclose(f);
        if (kb >= 0) return (int64_t)kb * 1024;
    }
#ifdef _SC_AVPHYS_PAGES
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) return (int64_t)pages * psz;
#endif
    return -1;
}

const char *cli_bytes(char *buf, size_t n, int64_t b) {
    double v = (double)b;
    if (v >= 1024.0 * 1024 * 1024)
        snprintf(buf, n, "%.2f GiB", v / (1024.0 * 1024 * 1024));
    else if (v >= 1024.0 * 1024)
        snprintf(buf, n, "%.1f MiB", v / (1024.0 * 1024));
    else if (v >= 1024.0)
        snprintf(buf, n, "%.1f KiB", v / 1024.0);
    else
        snprintf(buf, n, "%lld B", (long long)b);
    return buf;
}

int cli_check_memory(const char *cmd, const kvf_model *m, const kvf_session_params *sp,
                     int n_sessions, int64_t extra, const char *hint) {
    int64_t one = kvf_session_memory(m, sp);
    int64_t avail = cli_mem_available();
    if (one < 0 || avail < 0) return 0; /* invalid parameters are reported by kvf_session_new */
    int64_t need = one * n_sessions + extra;
    if (need <= avail) return 0;
    char b1[32], b2[32];
    int32_t n_ctx = sp->n_ctx > 0 ? sp->n_ctx : kvf_model_n_ctx_train(m);
    if (n_sessions > 1)
        cli_fail(cmd, "a context of %d tokens for %d sessions needs %s of %s KV cache and scratch, "
                      "more than the %s of memory available%s%s",
                 n_ctx, n_sessions, cli_bytes(b1, sizeof b1, need),
                 sp->kv_type == KVF_KV_F16 ? "f16" : "f32", cli_bytes(b2, sizeof b2, avail),
                 hint ? ": " : "", hint ? hint : "");
    else
        cli_fail(cmd, "a context of %d tokens needs %s of %s KV cache and scratch, more than the "
                      "%s of memory available%s%s",
                 n_ctx, cli_bytes(b1, sizeof b1, need), sp->kv_type == KVF_KV_F16 ? "f16" : "f32",
                 cli_bytes(b2, sizeof b2, avail), hint ? ": " : "", hint ? hint : "");
    return -1;
}
