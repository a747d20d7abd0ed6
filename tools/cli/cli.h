/* cli.h - shared helpers of the kvfuse command-line tool: model resolution, errors, JSON
 * output, statistics. Each subcommand lives in its own tools/cmd_*.c file. */
#ifndef KVF_CLI_H
#define KVF_CLI_H

#include "common.h" /* kvf_read_file */
#include "kvfuse.h"

#include <stdint.h>
#include <stdio.h>

#define KVF_DEFAULT_MODEL_NAME "smollm2-135m" /* tools/cli/models.c */

/* Subcommands: argc/argv start at the subcommand name. Return the process exit status. */
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_ask(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_ingest(int argc, char **argv);
int cmd_store(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_models(int argc, char **argv);
int cmd_conv_profile(int argc, char **argv);

/* Chunk store options shared by ask, ingest and store (implemented in tools/cmd_store.c).
 * Add CLI_STORE_OPTIONS to a getopt_long table and call cli_store_opt() on every option code
 * first: it returns 1 when it consumed the option (exiting with a message on a bad value). */
#define CLI_STORE_OPT_BASE 1000
#define CLI_STORE_OPTIONS                                                                      \
    {"store", required_argument, 0, CLI_STORE_OPT_BASE + 0},                                   \
        {"redis", required_argument, 0, CLI_STORE_OPT_BASE + 1},                               \
        {"map-size", required_argument, 0, CLI_STORE_OPT_BASE + 2},                            \
        {"disk-budget", required_argument, 0, CLI_STORE_OPT_BASE + 3},                         \
        {"mem-budget", required_argument, 0, CLI_STORE_OPT_BASE + 4},                          \
        {"compress", required_argument, 0, CLI_STORE_OPT_BASE + 5},                            \
        {"redis-ttl", required_argument, 0, CLI_STORE_OPT_BASE + 6},                           \
        {"redis-timeout", required_argument, 0, CLI_STORE_OPT_BASE + 7}
#define CLI_STORE_HELP                                                                         \
    "      --store DIR        chunk store directory (LMDB disk tier; created if missing)\n"      \
    "      --redis HOST:PORT  Redis tier (also unix:/path.sock), shared by servers\n"          \
    "      --map-size SIZE    LMDB map size, the most the store file can hold (16G)\n"          \
    "      --disk-budget SIZE evict least recently used entries above SIZE (none)\n"           \
    "      --mem-budget SIZE  in-process memory tier (ask: 0 = every lookup reads the\n"       \
    "                         lower tiers; ingest: 64M)\n"                                     \
    "      --compress C       entries written: none (default) or zstd\n"                       \
    "      --redis-ttl SECS   expiry of Redis entries (none)\n"                                \
    "      --redis-timeout MS connect / command timeout (1000)\n"                              \
    "                         SIZE: bytes, or with K, M, G, T (powers of 1024)\n"
int cli_store_opt(const char *cmd, int c, const char *arg, kvf_store_params *p);
/* "16G" etc. to bytes; exits with a message when malformed. */
uint64_t cli_size(const char *cmd, const char *opt, const char *val);
/* Per-tier statistics of a store: a table on f, or a JSON object (no newline). */
void cli_store_print_stats(FILE *f, kvf_chunk_cache *c, bool totals);
void cli_store_json_stats(FILE *f, const kvf_store_stats *st);

/* -m value, else $KVFUSE_MODEL, else the default model: a path, or a model name of the
 * registry (`kvfuse models`) resolved to its file (tools/cli/models.c). */
const char *cli_model_path(const char *opt);
/* Load a model, printing a clear message (with a hint for the default model) on failure. */
kvf_model *cli_load_model(const char *path, const char *isa, int n_threads, kvf_precision prec);
/* "f32" / "f16" to a session KV cache type; exits with a message when unknown. */
kvf_kv_type cli_kv_type(const char *cmd, const char *val);
/* "q16" / "q8" / "f32" to a precision; exits with a message when unknown. */
kvf_precision cli_precision(const char *cmd, const char *val);
/* Print "kvfuse <cmd>: <message>" to stderr (printf-style). Returns 1 (an exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse a non-negative integer / float option strictly; exits with a message when bad. */
long   cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi);
double cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi);
/* --ratio: a number in [0, 1] (fixed ratio) or "auto" (fp->ratio_auto: the ratio is picked per
 * request to reach fp->fidelity); exits with a message when bad. */
void cli_ratio(const char *cmd, const char *val, kvf_fuse_params *fp);
/* the options and help lines of the adaptive ratio, shared by ask, eval and serve */
#define CLI_FIDELITY_HELP                                                                        \
    "      --fidelity F       --ratio auto: share of the selection score's mass (the question's\n" \
    "                         attention for a3, the KV deviation for cacheblend) the recomputed\n" \
    "                         tokens must hold, in (0, 1] (default 0.95)\n"                      \
    "      --ratio-min R      --ratio auto: least ratio (default 0.05)\n"                        \
    "      --ratio-max R      --ratio auto: largest ratio (default 0.5)\n"

/* Sparse prefill attention options (tools/cli/cli_attn.c), shared by generate, ask, bench, eval
 * and serve: add CLI_ATTN_OPTIONS to a getopt_long table, call cli_attn_opt() on every option
 * code (1 when consumed; exits with a message on a bad value), then cli_attn_params() for the
 * mode's defaults with the options given applied, whatever their order. */
#define CLI_ATTN_OPT_BASE 1100
#define CLI_ATTN_OPTIONS                                                                       \
    {"attn", required_argument, 0, CLI_ATTN_OPT_BASE + 0},                                     \
        {"attn-threshold", required_argument, 0, CLI_ATTN_OPT_BASE + 1},                       \
        {"attn-local", required_argument, 0, CLI_ATTN_OPT_BASE + 2},                           \
        {"attn-block", required_argument, 0, CLI_ATTN_OPT_BASE + 3},                           \
        {"attn-window", required_argument, 0, CLI_ATTN_OPT_BASE + 4},                          \
        {"attn-dense", required_argument, 0, CLI_ATTN_OPT_BASE + 5},                           \
        {"attn-min", required_argument, 0, CLI_ATTN_OPT_BASE + 6},                             \
        {"decode-attn", required_argument, 0, CLI_ATTN_OPT_BASE + 7},                          \
        {"mac-tau", required_argument, 0, CLI_ATTN_OPT_BASE + 8},                              \
        {"mac-lookback", required_argument, 0, CLI_ATTN_OPT_BASE + 9},                         \
        {"mac-band", required_argument, 0, CLI_ATTN_OPT_BASE + 10},                            \
        {"mac-min", required_argument, 0, CLI_ATTN_OPT_BASE + 11},                             \
        {"louis-tau", required_argument, 0, CLI_ATTN_OPT_BASE + 12},                           \
        {"louis-budget", required_argument, 0, CLI_ATTN_OPT_BASE + 13},                        \
        {"louis-window", required_argument, 0, CLI_ATTN_OPT_BASE + 14},                        \
        {"louis-cluster", required_argument, 0, CLI_ATTN_OPT_BASE + 15},                       \
        {"louis-min", required_argument, 0, CLI_ATTN_OPT_BASE + 16},                           \
        {"louis-dense", required_argument, 0, CLI_ATTN_OPT_BASE + 17}
#define CLI_ATTN_HELP                                                                          \
    "      --attn MODE        prefill attention: dense (default), sale (block-sparse from an\n" \
    "                         8-bit estimate), power (PowerAttention's static pattern)\n"       \
    "      --attn-threshold T sale: relative weight that keeps a 64-key block (0.008)\n"       \
    "      --attn-local N     sale: recent keys always attended (128)\n"                       \
    "      --attn-block B     power: block size, a multiple of 64 (256)\n"                     \
    "      --attn-window W    power: recent blocks always attended (5)\n"                      \
    "      --attn-dense N[/P] dense layers: the first N, or l %% P < N (sale 2, power 2/7)\n"  \
    "      --attn-min N       rows with fewer keys stay dense (sale 1024, power 0)\n"       \
    "      --decode-attn M    decode attention: dense (default), mac (MAC-Attention: reuse\n" \
    "                         the attention of a recent similar query over old keys) or\n" \
    "                         louis (LouisKV: attend to clusters of keys chosen at\n"      \
    "                         semantic boundaries)\n"                                       \
    "      --mac-tau T        mac: match when |q - q'| <= (1 - T) |q| (0.9)\n"              \
    "      --mac-lookback N   mac: recent steps matched against, <= 512 (512)\n"           \
    "      --mac-band N       mac: recent keys always recomputed (256)\n"                  \
    "      --mac-min N        mac: rows with fewer keys stay dense (2048)\n"               \
    "      --louis-tau T      louis: boundary when the queries' mean cosine with the last\n" \
    "                         step's is below T (0.7)\n"                                    \
    "      --louis-budget N   louis: keys of the selected clusters per KV head (2048)\n"   \
    "      --louis-window N   louis: recent keys always attended (256)\n"                  \
    "      --louis-cluster N  louis: mean keys per input cluster, 4..256 (16)\n"           \
    "      --louis-min N      louis: rows with fewer keys stay dense (2048)\n"             \
    "      --louis-dense N    louis: the first N layers stay dense (2)\n"
typedef struct cli_attn {
    int                    mode, dmode, set; /* set: bit i = option CLI_ATTN_OPT_BASE + i given */
    kvf_attn_params        v;                /* the values given */
    kvf_decode_attn_params d;
} cli_attn;
int                    cli_attn_opt(const char *cmd, int c, const char *arg, cli_attn *a);
kvf_attn_params        cli_attn_params(const cli_attn *a);
kvf_decode_attn_params cli_decode_attn_params(const cli_attn *a);
/* both on a session; KVF_OK or the library's status (message in kvf_errmsg()) */
kvf_status             cli_attn_apply(kvf_session *s, const cli_attn *a);

/* Tokenize `text` (special tokens parsed, BOS if the model wants it). With chat, wrap it as a
 * user message (after an optional system message) in the model's chat template and open the
 * assistant turn. Returns a malloc'd array (count in *n) or NULL with a message printed. */
int32_t *cli_tokenize_prompt(const char *cmd, const kvf_model *m, const char *text, bool chat,
                             const char *system, int32_t *n);
/* Memory (tools/cli/cli_mem.c). Bytes the system can give now: /proc/meminfo MemAvailable,
 * else free pages (sysconf); -1 if unknown. */
int64_t cli_mem_available(void);
/* "1.50 GiB", "12.0 KiB", ... into buf; returns buf. */
const char *cli_bytes(char *buf, size_t n, int64_t b);
/* 0 if n_sessions sessions with params sp (plus `extra` bytes) fit in the available memory;
 * else prints "kvfuse <cmd>: a context of N tokens needs X ..., more than the Y available:
 * <hint>" and returns -1. Unknown available memory counts as enough. */
int cli_check_memory(const char *cmd, const kvf_model *m, const kvf_session_params *sp,
                     int n_sessions, int64_t extra, const char *hint);

/* The machine's fp32 FMA throughput (GFLOP/s) and read bandwidth (GB/s) on `threads` threads,
 * measured in about a second (cli_peak.c) with the widest vectors the CPU has, or AVX2 when
 * want is "avx2" (the kernels in use); *isa names the width used. -1 when the CPU has neither
 * AVX2+FMA nor AVX-512 (or out of memory). */
int cli_measure_peak(int threads, const char *want, double *gflops, double *gbps, const char **isa);
/* Monotonic clock in milliseconds (for timings). */
double cli_now_ms(void);

/* Minimal JSON writing to a FILE. */
void json_str(FILE *f, const char *s, size_t n); /* quoted, escaped; invalid UTF-8 -> U+FFFD */

/* mean and sample standard deviation */
void cli_stats(const double *v, int n, double *mean, double *sd);

#endif /* KVF_CLI_H */
