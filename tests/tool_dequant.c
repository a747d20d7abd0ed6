/* tool_dequant.c - helper for tests/integration/test_dequant.sh: exposes the C reference
 * dequantiser (kvf_dequantize) and quantiser (kvf_quantize) to the Python oracle, which checks
 * them against the `gguf` package.
 *
 *   tool_dequant model FILE.gguf       every tensor of FILE, in file order, to stdout as
 *                                      [u32 name_len][name][u32 type][i64 n][n x f32]
 *                                      (n = -1 and no data for a type kvf_dequantize lacks)
 *   tool_dequant dequant TYPE IN OUT   IN holds whole blocks of ggml type id TYPE; OUT gets the
 *                                      dequantised float32 values
 *   tool_dequant quant TYPE IN OUT     IN holds float32 values (a multiple of the block size);
 *                                      OUT gets kvf_quantize's blocks of TYPE
 */
#include "engine/gguf.h"
#include "engine/quant.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        return NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int write_file(const char *path, const void *buf, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(buf, 1, len, f);
    return (fclose(f) == 0 && w == len) ? 0 : -1;
}

static int cmd_model(const char *path) {
    gguf_file *g;
    if (gguf_open(path, &g) != KVF_OK) {
        fprintf(stderr, "tool_dequant: %s: %s\n", path, kvf_errmsg());
        return 1;
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const gguf_tensor *t = &g->tensors[i];
        int64_t            n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        uint32_t           name_len = (uint32_t)t->name.n;
        fwrite(&name_len, 4, 1, stdout);
        fwrite(t->name.s, 1, name_len, stdout);
        fwrite(&t->type, 4, 1, stdout);
        if (!kvf_quant_get(t->type)) {
            int64_t none = -1;
            fwrite(&none, 8, 1, stdout);
            continue;
        }
        fwrite(&n, 8, 1, stdout);
        float *y = malloc((size_t)n * sizeof(float));
        if (!y) return 1;
        kvf_dequantize(t->type, t->data, y, n);
        fwrite(y, sizeof(float), (size_t)n, stdout);
        free(y);
    }
    gguf_close(g);
    return fflush(stdout) == 0 ? 0 : 1;
}

static int cmd_blocks(int quant, const char *type_s, const char *in, const char *out) {
    uint32_t                type = (uint32_t)strtoul(type_s, NULL, 10);
    const kvf_quant_traits *qt   = kvf_quant_get(type);
    if (!qt) {
        fprintf(stderr, "tool_dequant: type %s not supported\n", type_s);
        return 1;
    }
    size_t len;
    void  *src = read_file(in, &len);
    if (!src) {
        fprintf(stderr, "tool_dequant: cannot read %s\n", in);
        return 1;
    }
    int64_t n   = quant ? (int64_t)(len / 4) : (int64_t)(len / qt->bytes) * qt->block;
    size_t  olen = quant ? (size_t)(n / qt->block) * qt->bytes : (size_t)n * 4;
    if (quant ? (len % 4 || n % qt->block) : (len % qt->bytes != 0)) {
        fprintf(stderr, "tool_dequant: %s: %zu bytes is not whole blocks of %s\n", in, len,
                qt->name);
        return 1;
    }
    void *dst = malloc(olen ? olen : 1);
    int   rc  = 0;
    if (quant)
        rc = kvf_quantize(type, src, dst, n);
    else
        kvf_dequantize(type, src, dst, n);
    if (rc == 0) rc = write_file(out, dst, olen);
    if (rc != 0) fprintf(stderr, "tool_dequant: %s %s failed\n", quant ? "quant" : "dequant",
                         qt->name);
    free(src);
    free(dst);
    return rc != 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "model") == 0) return cmd_model(argv[2]);
    if (argc == 5 && strcmp(argv[1], "dequant") == 0)
        return cmd_blocks(0, argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "quant") == 0) return cmd_blocks(1, argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: tool_dequant model FILE | dequant TYPE IN OUT | quant TYPE IN OUT\n");
    return 2;
}
