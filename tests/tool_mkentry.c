/* tool_mkentry.c - writes the named seeds of fuzz/corpus/entry/ (the store entry decoder's
 * fuzz target): valid entries of every dtype, raw and zstd, one and several layers, each with
 * the fuzz target's mode byte in front (0: checksums as they are; 1: the target recomputes
 * them after mutation), and a few broken ones. Deterministic: the same bytes every run.
 *
 *   build/tests/tool_mkentry DIR
 */
#include "common.h"
#include "store/chunk_io.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int write_seed(const char *dir, const char *name, uint8_t mode, const uint8_t *e, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        return 1;
    }
    int bad = fputc(mode, f) == EOF || fwrite(e, 1, n, f) != n;
    bad |= fclose(f) != 0;
    if (bad) perror(path);
    return bad;
}

/* one entry: dtype, layers, KV heads x head dim, tokens; values are a smooth pattern (zstd
 * shrinks them) or, with noisy, pseudo-random (zstd keeps them raw) */
static uint8_t *make(kvf_chunk_dtype dt, int nl, int nh, int hd, int nt, int compress, int noisy,
                     size_t *len) {
    int32_t ids[64];
    for (int i = 0; i < nt; i++) ids[i] = 17 + 3 * i;
    kvf_chunk *c = kvf_chunk_alloc(dt, nt, nl, nh * hd, ids, 5);
    if (!c) return NULL;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    float    row[256];
    for (int l = 0; l < nl; l++)
        for (int kv = 0; kv < 2; kv++)
            for (int t = 0; t < nt; t++) {
                for (int j = 0; j < nh * hd; j++) {
                    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                    row[j] = noisy ? (float)((double)(x >> 11) / 9007199254740992.0 - 0.5)
                                   : (float)(0.01 * (j % 8) - 0.02 * kv + 0.001 * l);
                }
                kvf_chunk_write(NULL, c, l, kv, t, 1, row);
            }
    kvf_chunk_key key;
    for (int i = 0; i < 16; i++) key.b[i] = (uint8_t)(i * 11 + dt);
    c->key = key;
    uint8_t mid[16];
    for (int i = 0; i < 16; i++) mid[i] = (uint8_t)(0xA0 + i);
    uint8_t *e = NULL;
    if (kvf_entry_encode(c, &key, mid, nh, hd,
                         compress ? KVF_STORE_COMPRESS_ZSTD : KVF_STORE_COMPRESS_NONE, 3, &e, len) != KVF_OK)
        e = NULL;
    kvf_chunk_release(c);
    return e;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    static const struct {
        const char     *name;
        kvf_chunk_dtype dt;
        int             nl, nh, hd, nt, z, noisy;
    } S[] = {
        {"f16-1layer-raw", KVF_CHUNK_F16, 1, 1, 4, 3, 0, 0},
        {"f16-2layers-zstd", KVF_CHUNK_F16, 2, 2, 8, 6, 1, 0},
        {"f16-mixed-codecs", KVF_CHUNK_F16, 3, 1, 16, 4, 1, 1},
        {"f32-2layers-raw", KVF_CHUNK_F32, 2, 1, 4, 2, 0, 0},
        {"f32-zstd", KVF_CHUNK_F32, 1, 2, 8, 5, 1, 0},
        {"q8-raw", KVF_CHUNK_Q8, 1, 1, 32, 2, 0, 0},
        {"q8-zstd-2layers", KVF_CHUNK_Q8, 2, 2, 32, 3, 1, 0},
        {"q8-odd-width", KVF_CHUNK_Q8, 1, 3, 12, 2, 0, 1},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof S / sizeof S[0]; i++) {
        size_t   n;
        uint8_t *e = make(S[i].dt, S[i].nl, S[i].nh, S[i].hd, S[i].nt, S[i].z, S[i].noisy, &n);
        if (!e) {
            fprintf(stderr, "tool_mkentry: %s: %s\n", S[i].name, kvf_errmsg());
            return 1;
        }
        char name[128];
        snprintf(name, sizeof name, "%s", S[i].name);
        bad |= write_seed(dir, name, 0, e, n);
        snprintf(name, sizeof name, "%s.fix", S[i].name);
        bad |= write_seed(dir, name, 1, e, n);
        if (i == 1) { /* broken variants of one zstd entry */
            bad |= write_seed(dir, "bad-truncated", 0, e, n - 7);
            uint8_t *m = malloc(n);
            if (!m) return 1;
            memcpy(m, e, n);
            m[n - 3] ^= 0x55; /* a payload byte: layer checksum */
            bad |= write_seed(dir, "bad-payload-byte", 0, m, n);
            memcpy(m, e, n);
            m[68] = 0xff, m[69] = 0xff; /* n_tokens, checksums recomputed by the target */
            bad |= write_seed(dir, "bad-n-tokens.fix", 1, m, n);
            memcpy(m, e, n);
            m[56] = 9; /* n_layer */
            bad |= write_seed(dir, "bad-n-layer.fix", 1, m, n);
            free(m);
        }
        kvf_free(e);
    }
    return bad;
}
