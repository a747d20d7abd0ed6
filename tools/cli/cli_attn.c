/* cli_attn.c - the sparse attention options shared by the commands (cli.h). */
#include "cli/cli.h"

#include <stdlib.h>
#include <string.h>

int cli_attn_opt(const char *cmd, int c, const char *arg, cli_attn *a) {
    int i = c - CLI_ATTN_OPT_BASE;
    if (i < 0 || i > 17) return 0;
    switch (i) {
    case 0:
        if ((a->mode = kvf_attn_from_name(arg)) < 0) {
            cli_fail(cmd, "--attn: unknown mode '%s' (dense, sale, power)", arg);
            exit(2);
        }
        break;
    case 1: a->v.threshold = (float)cli_float(cmd, "--attn-threshold", arg, 0, 0.999999); break;
    case 2: a->v.local = (int32_t)cli_int(cmd, "--attn-local", arg, 0, 1 << 22); break;
    case 3:
        a->v.block = (int32_t)cli_int(cmd, "--attn-block", arg, 64, 1 << 20);
        if (a->v.block % 64) {
            cli_fail(cmd, "--attn-block: %d is not a multiple of 64", (int)a->v.block);
            exit(2);
        }
        break;
    case 4: a->v.window = (int32_t)cli_int(cmd, "--attn-window", arg, 1, 1 << 20); break;
    case 5: {
        char        buf[32];
        const char *slash = strchr(arg, '/');
        size_t      n     = slash ? (size_t)(slash - arg) : strlen(arg);
        if (n == 0 || n >= sizeof buf) {
            cli_fail(cmd, "--attn-dense: '%s' is not N or N/P", arg);
            exit(2);
        }
        memcpy(buf, arg, n), buf[n] = 0;
        a->v.dense_layers = (int32_t)cli_int(cmd, "--attn-dense", buf, 0, 4096);
        a->v.dense_period = slash ? (int32_t)cli_int(cmd, "--attn-dense", slash + 1, 1, 4096) : 0;
        break;
    }
    case 6: a->v.min_keys = (int32_t)cli_int(cmd, "--attn-min", arg, 0, 1 << 22); break;
    case 7:
        if ((a->dmode = kvf_decode_attn_from_name(arg)) < 0) {
            cli_fail(cmd, "--decode-attn: unknown mode '%s' (dense, mac, louis)", arg);
            exit(2);
        }
        break;
    case 8: a->d.tau = (float)cli_float(cmd, "--mac-tau", arg, 0, 1); break;
    case 9: a->d.lookback = (int32_t)cli_int(cmd, "--mac-lookback", arg, 1, 512); break;
    case 10: a->d.band = (int32_t)cli_int(cmd, "--mac-band", arg, 1, 1 << 22); break;
    case 11: a->d.min_keys = (int32_t)cli_int(cmd, "--mac-min", arg, 0, 1 << 22); break;
    /* LouisKV's tau, window and min set the fields MAC's options set */
    case 12: a->d.tau = (float)cli_float(cmd, "--louis-tau", arg, 0, 1), i = 8; break;
    case 13: a->d.budget = (int32_t)cli_int(cmd, "--louis-budget", arg, 1, 1 << 22); break;
    case 14: a->d.band = (int32_t)cli_int(cmd, "--louis-window", arg, 1, 1 << 22), i = 10; break;
    case 15: a->d.cluster = (int32_t)cli_int(cmd, "--louis-cluster", arg, 4, 256); break;
    case 16: a->d.min_keys = (int32_t)cli_int(cmd, "--louis-min", arg, 0, 1 << 22), i = 11; break;
    case 17: a->d.dense_layers = (int32_t)cli_int(cmd, "--louis-dense", arg, 0, 4096); break;
    }
    a->set |= 1 << i;
    return 1;
}

kvf_attn_params cli_attn_params(const cli_attn *a) {
    kvf_attn_params p = kvf_attn_default_params((kvf_attn_mode)a->mode);
    if (a->set & 2) p.threshold = a->v.threshold;
    if (a->set & 4) p.local = a->v.local;
    if (a->set & 8) p.block = a->v.block;
    if (a->set & 16) p.window = a->v.window;
    if (a->set & 32) p.dense_layers = a->v.dense_layers, p.dense_period = a->v.dense_period;
    if (a->set & 64) p.min_keys = a->v.min_keys;
    return p;
}

kvf_decode_attn_params cli_decode_attn_params(const cli_attn *a) {
    kvf_decode_attn_params p = kvf_decode_attn_default_params((kvf_decode_mode)a->dmode);
    if (a->set & (1 << 8)) p.tau = a->d.tau;
    if (a->set & (1 << 9)) p.lookback = a->d.lookback;
    if (a->set & (1 << 10)) p.band = a->d.band;
    if (a->set & (1 << 11)) p.min_keys = a->d.min_keys;
    if (a->set & (1 << 13)) p.budget = a->d.budget;
    if (a->set & (1 << 15)) p.cluster = a->d.cluster;
    if (a->set & (1 << 17)) p.dense_layers = a->d.dense_layers;
    return p;
}

kvf_status cli_attn_apply(kvf_session *s, const cli_attn *a) {
    kvf_attn_params        p = cli_attn_params(a);
    kvf_decode_attn_params d = cli_decode_attn_params(a);
    kvf_status             st = kvf_session_set_attn(s, &p);
    return st != KVF_OK ? st : kvf_session_set_decode_attn(s, &d);
}
