/* cli.h - shared helpers of the kvfuse command-line tool: model resolution, errors, JSON
 * output, statistics. Each subcommand lives in its own tools/cmd_*.c file. */
#ifndef KVF_CLI_H
#define KVF_CLI_H

#include "kvfuse.h"

#include <stdint.h>
#include <stdio.h>

#define KVF_DEFAULT_MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* Subcommands: argc/argv start at the subcommand name. Return the process exit status. */
int cmd_generate(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_ask(int argc, char **argv);

/* -m value, else $KVFUSE_MODEL, else the default model path. */
const char *cli_model_path(const char *opt);
/* Load a model, printing a clear message (with a hint for the default model) on failure. */
kvf_model *cli_load_model(const char *path, const char *isa, int n_threads, kvf_precision prec);
/* "q16" / "q8" / "f32" to a precision; exits with a message when unknown. */
kvf_precision cli_precision(const char *cmd, const char *val);
/* Print "kvfuse <cmd>: <message>" to stderr (printf-style). Returns 1 (an exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse a non-negative integer / float option strictly; exits with a message when bad. */
long   cli_int(const char *cmd, const char *opt, const char *val, long lo, long hi);
double cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi);

/* Tokenize `text` (special tokens parsed, BOS if the model wants it). With chat, wrap it as a
 * user message (after an optional system message) in the model's chat template and open the
 * assistant turn. Returns a malloc'd array (count in *n) or NULL with a message printed. */
int32_t *cli_tokenize_prompt(const char *cmd, const kvf_model *m, const char *text, bool chat,
                             const char *system, int32_t *n);
/* Read a whole file (malloc'd, NUL-terminated); NULL with errno set on failure. */
char *cli_read_file(const char *path, size_t *len);

/* Minimal JSON writing to a FILE. */
void json_str(FILE *f, const char *s, size_t n); /* quoted, escaped; invalid UTF-8 -> U+FFFD */

/* mean and sample standard deviation */
void cli_stats(const double *v, int n, double *mean, double *sd);

#endif /* KVF_CLI_H */
