/* bench_io.h - what the benchmark programs share: reading a whole file. Header-only: each
 * benchmark is one translation unit linked against libkvfuse. */
#ifndef KVF_BENCH_IO_H
#define KVF_BENCH_IO_H

#include <stdio.h>
#include <stdlib.h>

/* The file's bytes, NUL-terminated (its length in *len when len is not NULL); NULL when it
 * cannot be opened or read, or out of memory. The caller frees. */
static inline char *bench_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0;
    char  *b   = malloc(cap);
    while (b) {
        size_t k = fread(b + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
        if (n == cap - 1) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) free(b);
            b = nb;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!b || err) {
        free(b);
        return NULL;
    }
    b[n] = 0;
    if (len) *len = n;
    return b;
}

#endif
