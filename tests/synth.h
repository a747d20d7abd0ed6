/* synth.h - header-only test helpers: an in-memory GGUF writer and a tiny synthetic model
 * generator, for unit tests, fuzz seeds and tests/tool_mkmodel.c.
 *
 * 1. GGUF writer (sg_*). Collect key/values of every GGUF type and tensors, then serialise
 *    them with the layout a real file has (header, kvs, tensor infos, padding to the alignment,
 *    data; every tensor padded to the alignment, as ggml writes it). After sg_serialize() each
 *    sg_kv / sg_tensor records the byte offsets of its fields, so a test can patch one field
 *    with sg_put_u32/sg_put_u64 and produce a deliberately malformed file. sg_add_raw and
 *    sg_add_tensor_raw write values and tensor infos that no valid file has (any type id,
 *    n_dims 0..8, zero or huge dimensions).
 *
 * 2. Synthetic model (synth_*). synth_model(cfg, ...) builds a complete llama/qwen2 model in
 *    the layout of a llama.cpp GGUF: hyperparameter keys, a GPT-2 byte-level BPE tokenizer
 *    (256 byte tokens in byte order, then tokens made by merges learned from a fixed English
 *    paragraph, then <|endoftext|>, <|im_start|>, <|im_end|>), a ChatML template and seeded
 *    random weights quantised with kvf_quantize(). The same cfg always gives the same bytes.
 *
 * Every function is static and marked unused, so any test can include this header. Memory is
 * plain malloc (not kvf_malloc), so allocation fault injection in the library never hits it;
 * the writer aborts when out of memory. synth_* report bad configurations through a kvf_status
 * and kvf_errmsg().
 */
#ifndef KVF_TEST_SYNTH_H
#define KVF_TEST_SYNTH_H

#include "common.h"
#include "engine/gguf.h"
#include "engine/quant.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SG_FN static __attribute__((unused))

/* ==== growable byte buffer ============================================================== */

typedef struct {
    uint8_t *p;
    size_t   n, cap;
} sg_bytes;

SG_FN void *sg_xrealloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "synth.h: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

SG_FN void sg_bytes_put(sg_bytes *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n) c *= 2;
        b->p   = sg_xrealloc(b->p, c);
        b->cap = c;
    }
    if (n) {
        if (src)
            memcpy(b->p + b->n, src, n);
        else
            memset(b->p + b->n, 0, n);
    }
    b->n += n;
}

SG_FN void sg_put_u32(uint8_t *p, size_t off, uint32_t v) {
    for (int i = 0; i < 4; i++) p[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}

SG_FN void sg_put_u64(uint8_t *p, size_t off, uint64_t v) {
    for (int i = 0; i < 8; i++) p[off + (size_t)i] = (uint8_t)(v >> (8 * i));
}

SG_FN uint32_t sg_get_u32(const uint8_t *p, size_t off) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[off + (size_t)i] << (8 * i);
    return v;
}

SG_FN uint64_t sg_get_u64(const uint8_t *p, size_t off) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[off + (size_t)i] << (8 * i);
    return v;
}

SG_FN void sg_bytes_u32(sg_bytes *b, uint32_t v) {
    uint8_t t[4];
    sg_put_u32(t, 0, v);
    sg_bytes_put(b, t, 4);
}

SG_FN void sg_bytes_u64(sg_bytes *b, uint64_t v) {
    uint8_t t[8];
    sg_put_u64(t, 0, v);
    sg_bytes_put(b, t, 8);
}

SG_FN void sg_bytes_str(sg_bytes *b, const char *s, size_t n) {
    sg_bytes_u64(b, n);
    sg_bytes_put(b, s, n);
}

/* ==== GGUF writer ======================================================================= */

#define SG_MAX_DIMS 8

typedef struct sg_kv {
    char    *key; /* NUL-terminated copy; key_len may be shorter (embedded NUL) or 0 */
    size_t   key_len;
    uint32_t type;    /* written as-is, valid or not */
    uint8_t *val;     /* the encoded value (the bytes after the type field) */
    size_t   val_len;
    /* absolute file offsets, set by sg_serialize(): */
    size_t off_key;  /* the key's u64 length */
    size_t off_type; /* the u32 value type */
    size_t off_val;  /* the value (for arrays: u32 element type, then u64 count, then items) */
} sg_kv;

typedef struct sg_tensor {
    char    *name;
    size_t   name_len;
    uint32_t n_dims;
    uint64_t ne[SG_MAX_DIMS];
    uint32_t type;
    uint8_t *data; /* nbytes bytes (owned) */
    size_t   nbytes;
    /* set by sg_serialize(): */
    size_t   off_info;   /* the name's u64 length */
    size_t   off_ndims;  /* u32 n_dims */
    size_t   off_ne;     /* n_dims x u64 */
    size_t   off_type;   /* u32 type */
    size_t   off_offset; /* u64 offset relative to the data section */
    uint64_t rel_offset; /* the value written there */
    size_t   off_data;   /* absolute offset of the data */
} sg_tensor;

typedef struct sg_writer {
    uint32_t   version;   /* 3 unless changed */
    uint32_t   alignment; /* layout alignment; set by a valid u32 general.alignment key */
    sg_kv     *kv;
    size_t     n_kv, cap_kv;
    sg_tensor *t;
    size_t     n_t, cap_t;
    /* set by sg_serialize(): */
    size_t data_offset; /* start of the data section */
    size_t min_len;     /* shortest prefix that is still a complete file (end of last data) */
    size_t len;         /* total length, trailing padding included */
} sg_writer;

SG_FN sg_writer *sg_new(void) {
    sg_writer *w = sg_xrealloc(NULL, sizeof *w);
    memset(w, 0, sizeof *w);
    w->version   = 3;
    w->alignment = 32;
    return w;
}

SG_FN void sg_free(sg_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) free(w->kv[i].key), free(w->kv[i].val);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].name), free(w->t[i].data);
    free(w->kv);
    free(w->t);
    free(w);
}

SG_FN char *sg_memdup(const void *s, size_t n) {
    char *r = sg_xrealloc(NULL, n + 1);
    if (n) memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* Any key (key_len bytes, may be 0), any type id, any value bytes. Returns the record. */
SG_FN sg_kv *sg_add_raw(sg_writer *w, const char *key, size_t key_len, uint32_t type,
                        const void *val, size_t val_len) {
    if (w->n_kv == w->cap_kv) {
        w->cap_kv = w->cap_kv ? 2 * w->cap_kv : 16;
        w->kv     = sg_xrealloc(w->kv, w->cap_kv * sizeof *w->kv);
    }
    sg_kv *kv = &w->kv[w->n_kv++];
    memset(kv, 0, sizeof *kv);
    kv->key     = sg_memdup(key, key_len);
    kv->key_len = key_len;
    kv->type    = type;
    kv->val     = (uint8_t *)sg_memdup(val, val_len);
    kv->val_len = val_len;
    if (type == GGUF_T_UINT32 && val_len == 4 && key_len == 17 &&
        memcmp(key, "general.alignment", 17) == 0) {
        uint32_t a = sg_get_u32(kv->val, 0);
        /* honour it in the layout (a huge one would only make a huge file) */
        if (a && (a & (a - 1)) == 0 && a <= (1u << 20)) w->alignment = a;
    }
    return kv;
}

/* Size of one element of a fixed-size value type; 0 for string/array/unknown. */
SG_FN size_t sg_type_size(uint32_t t) {
    switch (t) {
    case GGUF_T_UINT8:
    case GGUF_T_INT8:
    case GGUF_T_BOOL: return 1;
    case GGUF_T_UINT16:
    case GGUF_T_INT16: return 2;
    case GGUF_T_UINT32:
    case GGUF_T_INT32:
    case GGUF_T_FLOAT32: return 4;
    case GGUF_T_UINT64:
    case GGUF_T_INT64:
    case GGUF_T_FLOAT64: return 8;
    default: return 0;
    }
}

/* A scalar of fixed-size type `type` from the host value at `v` (little-endian host). */
SG_FN sg_kv *sg_add_scalar(sg_writer *w, const char *key, uint32_t type, const void *v) {
    return sg_add_raw(w, key, strlen(key), type, v, sg_type_size(type));
}

SG_FN sg_kv *sg_add_u8(sg_writer *w, const char *key, uint8_t v) {
    return sg_add_scalar(w, key, GGUF_T_UINT8, &v);
}
SG_FN sg_kv *sg_add_i8(sg_writer *w, const char *key, int8_t v) {
    return sg_add_scalar(w, key, GGUF_T_INT8, &v);
}
SG_FN sg_kv *sg_add_u16(sg_writer *w, const char *key, uint16_t v) {
    return sg_add_scalar(w, key, GGUF_T_UINT16, &v);
}
SG_FN sg_kv *sg_add_i16(sg_writer *w, const char *key, int16_t v) {
    return sg_add_scalar(w, key, GGUF_T_INT16, &v);
}
SG_FN sg_kv *sg_add_u32(sg_writer *w, const char *key, uint32_t v) {
    return sg_add_scalar(w, key, GGUF_T_UINT32, &v);
}
SG_FN sg_kv *sg_add_i32(sg_writer *w, const char *key, int32_t v) {
    return sg_add_scalar(w, key, GGUF_T_INT32, &v);
}
SG_FN sg_kv *sg_add_f32(sg_writer *w, const char *key, float v) {
    return sg_add_scalar(w, key, GGUF_T_FLOAT32, &v);
}
SG_FN sg_kv *sg_add_u64(sg_writer *w, const char *key, uint64_t v) {
    return sg_add_scalar(w, key, GGUF_T_UINT64, &v);
}
SG_FN sg_kv *sg_add_i64(sg_writer *w, const char *key, int64_t v) {
    return sg_add_scalar(w, key, GGUF_T_INT64, &v);
}
SG_FN sg_kv *sg_add_f64(sg_writer *w, const char *key, double v) {
    return sg_add_scalar(w, key, GGUF_T_FLOAT64, &v);
}
SG_FN sg_kv *sg_add_bool(sg_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return sg_add_scalar(w, key, GGUF_T_BOOL, &b);
}
/* A string of n bytes (may contain NULs). */
SG_FN sg_kv *sg_add_strn(sg_writer *w, const char *key, const char *s, size_t n) {
    sg_bytes b = {0};
    sg_bytes_str(&b, s, n);
    sg_kv *kv = sg_add_raw(w, key, strlen(key), GGUF_T_STRING, b.p, b.n);
    free(b.p);
    return kv;
}
SG_FN sg_kv *sg_add_str(sg_writer *w, const char *key, const char *s) {
    return sg_add_strn(w, key, s, strlen(s));
}

/* Array of n fixed-size elements of `elem_type`, read from the host array `elems`. */
SG_FN sg_kv *sg_add_arr(sg_writer *w, const char *key, uint32_t elem_type, const void *elems,
                        uint64_t n) {
    sg_bytes b  = {0};
    size_t   es = sg_type_size(elem_type);
    sg_bytes_u32(&b, elem_type);
    sg_bytes_u64(&b, n);
    sg_bytes_put(&b, elems, (size_t)n * es);
    sg_kv *kv = sg_add_raw(w, key, strlen(key), GGUF_T_ARRAY, b.p, b.n);
    free(b.p);
    return kv;
}

/* Array of n strings; lens may be NULL (then each string is NUL-terminated). */
SG_FN sg_kv *sg_add_arr_strn(sg_writer *w, const char *key, const char *const *s,
                             const size_t *lens, uint64_t n) {
    sg_bytes b = {0};
    sg_bytes_u32(&b, GGUF_T_STRING);
    sg_bytes_u64(&b, n);
    for (uint64_t i = 0; i < n; i++) sg_bytes_str(&b, s[i], lens ? lens[i] : strlen(s[i]));
    sg_kv *kv = sg_add_raw(w, key, strlen(key), GGUF_T_ARRAY, b.p, b.n);
    free(b.p);
    return kv;
}
SG_FN sg_kv *sg_add_arr_str(sg_writer *w, const char *key, const char *const *s, uint64_t n) {
    return sg_add_arr_strn(w, key, s, NULL, n);
}

/* Any tensor info: n_dims 0..SG_MAX_DIMS, any dimensions and type id; `data` (nbytes, may be
 * NULL for zeros) goes to the data section. Returns the record. */
SG_FN sg_tensor *sg_add_tensor_raw(sg_writer *w, const char *name, uint32_t n_dims,
                                   const uint64_t *ne, uint32_t type, const void *data,
                                   size_t nbytes) {
    if (n_dims > SG_MAX_DIMS) {
        fprintf(stderr, "synth.h: sg_add_tensor_raw: n_dims %u > %d\n", n_dims, SG_MAX_DIMS);
        abort();
    }
    if (w->n_t == w->cap_t) {
        w->cap_t = w->cap_t ? 2 * w->cap_t : 16;
        w->t     = sg_xrealloc(w->t, w->cap_t * sizeof *w->t);
    }
    sg_tensor *t = &w->t[w->n_t++];
    memset(t, 0, sizeof *t);
    t->name     = sg_memdup(name, strlen(name));
    t->name_len = strlen(name);
    t->n_dims   = n_dims;
    for (uint32_t d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->type   = type;
    t->nbytes = nbytes;
    t->data   = sg_xrealloc(NULL, nbytes);
    if (data)
        memcpy(t->data, data, nbytes);
    else
        memset(t->data, 0, nbytes);
    return t;
}

/* Bytes of a tensor of n elements (n a multiple of the block size); 0 for unknown types. */
SG_FN size_t sg_tensor_bytes(uint32_t type, int64_t n) {
    kvf_type_traits tt;
    if (!kvf_type_get(type, &tt) || n % tt.block != 0) return 0;
    return (size_t)(n / tt.block) * tt.bytes;
}

/* A valid tensor (ne[0] contiguous); data holds its bytes in `type`'s encoding (NULL: zeros). */
SG_FN sg_tensor *sg_add_tensor(sg_writer *w, const char *name, uint32_t n_dims, const int64_t *ne,
                               uint32_t type, const void *data) {
    uint64_t u[SG_MAX_DIMS];
    int64_t  n = 1;
    for (uint32_t d = 0; d < n_dims && d < SG_MAX_DIMS; d++) u[d] = (uint64_t)ne[d], n *= ne[d];
    return sg_add_tensor_raw(w, name, n_dims, u, type, data, sg_tensor_bytes(type, n));
}

/* A tensor from floats, quantised to `type` with kvf_quantize(). NULL for a type the
 * reference quantisers do not support or a row length that is not a multiple of its block. */
SG_FN sg_tensor *sg_add_tensor_f32(sg_writer *w, const char *name, uint32_t n_dims,
                                   const int64_t *ne, uint32_t type, const float *x) {
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) n *= ne[d];
    size_t nb = sg_tensor_bytes(type, n);
    if (nb == 0 || (n_dims > 0 && sg_tensor_bytes(type, ne[0]) == 0)) return NULL;
    void *q = sg_xrealloc(NULL, nb);
    if (kvf_quantize(type, x, q, n) != 0) {
        free(q);
        return NULL;
    }
    sg_tensor *t = sg_add_tensor(w, name, n_dims, ne, type, q);
    free(q);
    return t;
}

SG_FN sg_kv *sg_find_kv(sg_writer *w, const char *key) {
    for (size_t i = 0; i < w->n_kv; i++)
        if (w->kv[i].key_len == strlen(key) && strcmp(w->kv[i].key, key) == 0) return &w->kv[i];
    return NULL;
}

SG_FN sg_tensor *sg_find_tensor(sg_writer *w, const char *name) {
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return &w->t[i];
    return NULL;
}

/* Drop a key / tensor (e.g. to test a loader's "missing" errors). Returns 1 if found. */
SG_FN int sg_remove_kv(sg_writer *w, const char *key) {
    sg_kv *kv = sg_find_kv(w, key);
    if (!kv) return 0;
    free(kv->key), free(kv->val);
    size_t i = (size_t)(kv - w->kv);
    memmove(&w->kv[i], &w->kv[i + 1], (w->n_kv - i - 1) * sizeof *w->kv);
    w->n_kv--;
    return 1;
}

SG_FN int sg_remove_tensor(sg_writer *w, const char *name) {
    sg_tensor *t = sg_find_tensor(w, name);
    if (!t) return 0;
    free(t->name), free(t->data);
    size_t i = (size_t)(t - w->t);
    memmove(&w->t[i], &w->t[i + 1], (w->n_t - i - 1) * sizeof *w->t);
    w->n_t--;
    return 1;
}

SG_FN size_t sg_pad(size_t x, size_t a) {
    return (x + a - 1) / a * a;
}

/* The file image (malloc'd; free() it), length in *len. Fills the offsets of every record. */
SG_FN uint8_t *sg_serialize(sg_writer *w, size_t *len) {
    sg_bytes b     = {0};
    size_t   align = w->alignment ? w->alignment : 32;
    sg_bytes_put(&b, "GGUF", 4);
    sg_bytes_u32(&b, w->version);
    sg_bytes_u64(&b, w->n_t);
    sg_bytes_u64(&b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        sg_kv *kv   = &w->kv[i];
        kv->off_key = b.n;
        sg_bytes_str(&b, kv->key, kv->key_len);
        kv->off_type = b.n;
        sg_bytes_u32(&b, kv->type);
        kv->off_val = b.n;
        sg_bytes_put(&b, kv->val, kv->val_len);
    }
    uint64_t rel = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        sg_tensor *t = &w->t[i];
        t->off_info  = b.n;
        sg_bytes_str(&b, t->name, t->name_len);
        t->off_ndims = b.n;
        sg_bytes_u32(&b, t->n_dims);
        t->off_ne = b.n;
        for (uint32_t d = 0; d < t->n_dims; d++) sg_bytes_u64(&b, t->ne[d]);
        t->off_type = b.n;
        sg_bytes_u32(&b, t->type);
        t->off_offset = b.n;
        t->rel_offset = rel;
        sg_bytes_u64(&b, rel);
        rel += sg_pad(t->nbytes, align);
    }
    sg_bytes_put(&b, NULL, sg_pad(b.n, align) - b.n);
    w->data_offset = b.n;
    w->min_len     = b.n;
    for (size_t i = 0; i < w->n_t; i++) {
        sg_tensor *t = &w->t[i];
        t->off_data  = w->data_offset + (size_t)t->rel_offset;
        sg_bytes_put(&b, t->data, t->nbytes);
        if (t->nbytes && t->off_data + t->nbytes > w->min_len) w->min_len = t->off_data + t->nbytes;
        sg_bytes_put(&b, NULL, sg_pad(t->nbytes, align) - t->nbytes);
    }
    if (w->n_t == 0) {
        /* without tensors the file may end right after the kvs: drop the padding */
        size_t end = 24;
        for (size_t i = 0; i < w->n_kv; i++) end = w->kv[i].off_val + w->kv[i].val_len;
        w->min_len = end;
    }
    w->len = b.n;
    *len   = b.n;
    return b.p ? b.p : sg_xrealloc(NULL, 1);
}

SG_FN int sg_write_buf(const char *path, const void *buf, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    int ok = fwrite(buf, 1, len, fp) == len;
    ok     = (fclose(fp) == 0) && ok;
    return ok ? 0 : -1;
}

/* Serialise to a file. Returns 0, or -1 (errno set) on an I/O error. */
SG_FN int sg_write_file(sg_writer *w, const char *path) {
    size_t   len;
    uint8_t *buf = sg_serialize(w, &len);
    int      r   = sg_write_buf(path, buf, len);
    free(buf);
    return r;
}

/* ==== deterministic random numbers ====================================================== */

typedef struct {
    uint64_t s;
} synth_rng;

SG_FN uint64_t synth_rng_next(synth_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z          = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z          = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1] */
SG_FN double synth_rng_unit(synth_rng *r) {
    return (double)((synth_rng_next(r) >> 11) + 1) * (1.0 / 9007199254740992.0);
}

/* standard normal (Box-Muller) */
SG_FN float synth_rng_normal(synth_rng *r) {
    double u1 = synth_rng_unit(r), u2 = synth_rng_unit(r);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

SG_FN uint64_t synth_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* ==== GPT-2 byte-level BPE vocabulary =================================================== */

/* Training text for the merges: a fixed paragraph written for these tests. */
static const char synth_text[] =
    "The old lighthouse keeper walked along the narrow path every morning before the sun came "
    "up over the grey water. He carried a small lamp, a notebook and a flask of warm tea, and "
    "he counted the boats that were still tied to the harbour wall. In the winter of 1987 the "
    "storms were so strong that the waves reached the second window of the tower, and the whole "
    "village stayed inside for eleven days. When the wind finally stopped, the children ran "
    "down to the beach to look for shells, bottles and pieces of wood that the sea had carried "
    "from distant places. Some of them found letters written in languages nobody in the village "
    "could read. The teacher kept the letters in a wooden box on her desk, and every year she "
    "opened the box and asked the new class to guess where each one had come from. Most of the "
    "answers were wrong, but the guessing was the point: it taught them that the world was "
    "larger than the bay, the market and the road to the next town. Years later, one of those "
    "children became a sailor and travelled to the cities whose names she had once imagined. "
    "She wrote back to the school, and her letters were added to the box with the others. "
    "Today the lighthouse is a small museum. Visitors climb the 142 steps, read the notebooks "
    "of the keeper, and look out over the same water, which is calm on most days and still "
    "remembers, in its own way, the storms of that long winter. Questions about the history of "
    "the harbour are answered by volunteers who describe fishing, weather, trade and quiet "
    "evenings (when everyone gathered to hear music) with patience and a great deal of humour.";

/* Unicode code point that GPT-2's byte-level encoding uses for byte b. */
SG_FN int synth_byte_cp(int b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) n++;
    return 256 + n;
}

/* UTF-8 of byte b's code point into out (2 bytes at most); returns the length. */
SG_FN int synth_byte_utf8(int b, char *out) {
    int cp = synth_byte_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

typedef struct {
    char **tok;   /* byte-level encoded strings; [0..256) are the bytes in byte order */
    int    n, cap;
    int  (*merge)[2]; /* merge i joins tokens merge[i][0] and merge[i][1] */
    int    n_merges;
} synth_vocab;

SG_FN void synth_vocab_free(synth_vocab *v) {
    for (int i = 0; i < v->n; i++) free(v->tok[i]);
    free(v->tok);
    free(v->merge);
    memset(v, 0, sizeof *v);
}

SG_FN int synth_vocab_add(synth_vocab *v, const char *s) {
    if (v->n == v->cap) {
        v->cap = v->cap ? 2 * v->cap : 512;
        v->tok = sg_xrealloc(v->tok, (size_t)v->cap * sizeof *v->tok);
    }
    v->tok[v->n] = sg_memdup(s, strlen(s));
    return v->n++;
}

SG_FN int synth_vocab_find(const synth_vocab *v, const char *s) {
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->tok[i], s) == 0) return i;
    return -1;
}

typedef struct {
    int *sym;
    int  n, count;
} synth_word;

/* Split synth_text like GPT-2's pre-tokenizer does for plain ASCII: an optional leading
 * space plus a run of letters, of digits or of other non-space characters. Returns the
 * distinct chunks with their counts, as byte-token sequences. */
SG_FN int synth_words(synth_word **out) {
    const char *t = synth_text;
    size_t      n = strlen(t), i = 0;
    int         nw = 0, cap = 0;
    synth_word *w  = NULL;
    while (i < n) {
        size_t s = i;
        if (t[i] == ' ' && i + 1 < n && t[i + 1] != ' ') i++;
        char c    = t[i];
        int  kind = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? 0
                    : (c >= '0' && c <= '9')                          ? 1
                    : c == ' '                                        ? 2
                                                                      : 3;
        while (i < n) {
            char d = t[i];
            int  k = (d >= 'a' && d <= 'z') || (d >= 'A' && d <= 'Z') ? 0
                     : (d >= '0' && d <= '9')                          ? 1
                     : d == ' '                                        ? 2
                                                                       : 3;
            if (k != kind) break;
            i++;
        }
        size_t len = i - s;
        int    found = -1;
        for (int k = 0; k < nw && found < 0; k++) {
            if ((size_t)w[k].n != len) continue;
            int same = 1;
            for (size_t j = 0; j < len; j++) same &= w[k].sym[j] == (uint8_t)t[s + j];
            if (same) found = k;
        }
        if (found >= 0) {
            w[found].count++;
            continue;
        }
        if (nw == cap) {
            cap = cap ? 2 * cap : 64;
            w   = sg_xrealloc(w, (size_t)cap * sizeof *w);
        }
        w[nw].sym = sg_xrealloc(NULL, len * sizeof(int));
        for (size_t j = 0; j < len; j++) w[nw].sym[j] = (uint8_t)t[s + j];
        w[nw].n     = (int)len;
        w[nw].count = 1;
        nw++;
    }
    *out = w;
    return nw;
}

/* Byte tokens plus up to max_merges merges learned from synth_text: each step joins the most
 * frequent adjacent pair (ties: lowest left id, then lowest right id). A merge whose result
 * already exists as a token reuses it. */
SG_FN void synth_vocab_build(int max_merges, synth_vocab *v) {
    memset(v, 0, sizeof *v);
    for (int b = 0; b < 256; b++) {
        char s[3] = {0};
        synth_byte_utf8(b, s);
        synth_vocab_add(v, s);
    }
    synth_word *w;
    int         nw = synth_words(&w);
    enum { HCAP = 1 << 14 };
    int64_t *hk = sg_xrealloc(NULL, HCAP * sizeof *hk); /* key a * 2^20 + b, or -1 */
    int     *hc = sg_xrealloc(NULL, HCAP * sizeof *hc);
    v->merge    = sg_xrealloc(NULL, (size_t)(max_merges > 0 ? max_merges : 1) * sizeof *v->merge);
    while (v->n_merges < max_merges) {
        memset(hk, 0xff, HCAP * sizeof *hk);
        int64_t best = -1;
        int     bestc = 0;
        for (int k = 0; k < nw; k++)
            for (int j = 0; j + 1 < w[k].n; j++) {
                int64_t  key = ((int64_t)w[k].sym[j] << 20) | w[k].sym[j + 1];
                uint64_t h   = ((uint64_t)key * 0x9E3779B97F4A7C15ull) >> 50;
                while (hk[h] >= 0 && hk[h] != key) h = (h + 1) & (HCAP - 1);
                if (hk[h] < 0) hk[h] = key, hc[h] = 0;
                hc[h] += w[k].count;
                if (hc[h] > bestc || (hc[h] == bestc && key < best)) best = key, bestc = hc[h];
            }
        if (best < 0) break;
        int   a = (int)(best >> 20), bb = (int)(best & 0xFFFFF);
        size_t la = strlen(v->tok[a]), lb = strlen(v->tok[bb]);
        char *s = sg_xrealloc(NULL, la + lb + 1);
        memcpy(s, v->tok[a], la);
        memcpy(s + la, v->tok[bb], lb + 1);
        int id = synth_vocab_find(v, s);
        if (id < 0) id = synth_vocab_add(v, s);
        free(s);
        v->merge[v->n_merges][0] = a;
        v->merge[v->n_merges][1] = bb;
        v->n_merges++;
        for (int k = 0; k < nw; k++) {
            int o = 0;
            for (int j = 0; j < w[k].n; j++) {
                if (j + 1 < w[k].n && w[k].sym[j] == a && w[k].sym[j + 1] == bb) {
                    w[k].sym[o++] = id;
                    j++;
                } else {
                    w[k].sym[o++] = w[k].sym[j];
                }
            }
            w[k].n = o;
        }
    }
    for (int k = 0; k < nw; k++) free(w[k].sym);
    free(w);
    free(hk);
    free(hc);
}

/* ==== synthetic model =================================================================== */

/* A tiny model. Zero fields take the defaults shown; a zeroed struct (or NULL) is the default
 * model: llama, 2 layers, n_embd 64, 4 heads, 2 kv heads, n_ff 128, F32 weights. */
typedef struct synth_cfg {
    const char *arch;      /* "llama" (NULL) or "qwen2" (adds q/k/v biases) */
    const char *name;      /* general.name; NULL = "synth-<arch>" */
    int32_t     n_layer;   /* 0 = 2 */
    int32_t     n_embd;    /* 0 = 64, or 256 when wtype or etype is a K-quant */
    int32_t     n_head;    /* 0 = 4; head_dim = n_embd / n_head (must be even) */
    int32_t     n_head_kv; /* 0 = 2 (1 if n_head is odd); must divide n_head */
    int32_t     n_ff;      /* 0 = 2 * n_embd (128, or 512 with K-quants) */
    int32_t     n_ctx;     /* <arch>.context_length; 0 = 256 */
    int32_t     n_merges;  /* BPE merges to learn; 0 = 300, < 0 = none; the text allows ~470 */
    float       rope_base; /* 0 = 10000 */
    float       eps;       /* rms-norm epsilon; 0 = 1e-5 */
    uint32_t    wtype;     /* KVF_TYPE_* of attn/ffn weights and output.weight; 0 = F32 */
    uint32_t    etype;     /* KVF_TYPE_* of token_embd.weight; 0 = F32 */
    int         untied;    /* 1: write output.weight; 0: the output reuses token_embd */
    uint32_t    alignment; /* 0: no general.alignment key (32); else written and used */
    uint64_t    seed;      /* weight seed (any value, 0 included) */
} synth_cfg;

/* What synth_model produced. */
typedef struct synth_info {
    synth_cfg cfg;             /* defaults filled in; arch/name never NULL (borrowed) */
    int32_t   head_dim;        /* n_embd / n_head = <arch>.rope.dimension_count */
    int32_t   n_vocab;         /* 256 + n_merged_tokens + 3 */
    int32_t   n_merges;        /* merges written to tokenizer.ggml.merges */
    int32_t   n_merged_tokens; /* distinct tokens those merges created (ids 256..) */
    int32_t   tok_endoftext;   /* "<|endoftext|>" = n_vocab - 3 = bos */
    int32_t   tok_im_start;    /* "<|im_start|>"  = n_vocab - 2 */
    int32_t   tok_im_end;      /* "<|im_end|>"    = n_vocab - 1 = eos */
    int32_t   bos, eos;
    size_t    file_bytes;      /* set by synth_model / synth_model_file */
} synth_info;

static const char synth_chat_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* The 11 types kvf_quantize() can write. */
SG_FN int synth_type_ok(uint32_t t) {
    switch (t) {
    case KVF_TYPE_F32:
    case KVF_TYPE_F16:
    case KVF_TYPE_BF16:
    case KVF_TYPE_Q4_0:
    case KVF_TYPE_Q4_1:
    case KVF_TYPE_Q5_0:
    case KVF_TYPE_Q5_1:
    case KVF_TYPE_Q8_0:
    case KVF_TYPE_Q4_K:
    case KVF_TYPE_Q5_K:
    case KVF_TYPE_Q6_K: return 1;
    default: return 0;
    }
}

/* Type id from a name such as "Q4_1" or "f16" (case-insensitive); -1 if unknown. */
SG_FN int synth_type_from_name(const char *s) {
    for (uint32_t t = 0; t < KVF_TYPE_COUNT; t++) {
        kvf_type_traits tt;
        if (!kvf_type_get(t, &tt)) continue;
        size_t i = 0;
        while (s[i] && tt.name[i] &&
               (s[i] == tt.name[i] || (s[i] >= 'a' && s[i] <= 'z' && s[i] - 32 == tt.name[i])))
            i++;
        if (!s[i] && !tt.name[i]) return (int)t;
    }
    return -1;
}

SG_FN uint32_t synth_block(uint32_t type) {
    kvf_type_traits tt;
    return kvf_type_get(type, &tt) ? tt.block : 1;
}

/* Fill defaults and validate. KVF_E_INVAL with a message naming the field on a bad cfg. */
SG_FN kvf_status synth_resolve(const synth_cfg *cfg, synth_info *info) {
    synth_cfg c;
    if (cfg)
        c = *cfg;
    else
        memset(&c, 0, sizeof c);
    memset(info, 0, sizeof *info);
    if (!c.arch) c.arch = "llama";
    int qwen = strcmp(c.arch, "qwen2") == 0;
    if (!qwen && strcmp(c.arch, "llama") != 0)
        return kvf_set_error(KVF_E_INVAL, "synth: arch '%s' is not 'llama' or 'qwen2'", c.arch);
    if (!c.name) c.name = qwen ? "synth-qwen2" : "synth-llama";
    if (!synth_type_ok(c.wtype))
        return kvf_set_error(KVF_E_INVAL,
                             "synth: weight type %s is not one kvf_quantize can write (F32, F16, "
                             "BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                             kvf_type_name(c.wtype));
    if (!synth_type_ok(c.etype))
        return kvf_set_error(KVF_E_INVAL,
                             "synth: token_embd type %s is not one kvf_quantize can write (F32, "
                             "F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                             kvf_type_name(c.etype));
    uint32_t bw = synth_block(c.wtype), be = synth_block(c.etype);
    if (c.n_layer == 0) c.n_layer = 2;
    if (c.n_embd == 0) c.n_embd = (bw == 256 || be == 256) ? 256 : 64;
    if (c.n_head == 0) c.n_head = 4;
    if (c.n_head_kv == 0) c.n_head_kv = c.n_head % 2 == 0 ? 2 : 1;
    if (c.n_ff == 0) c.n_ff = 2 * c.n_embd;
    if (c.n_ctx == 0) c.n_ctx = 256;
    if (c.n_merges == 0) c.n_merges = 300;
    if (c.n_merges < 0) c.n_merges = 0;
    if (c.rope_base == 0) c.rope_base = 10000.0f;
    if (c.eps == 0) c.eps = 1e-5f;
#define SYNTH_RANGE(f, lo, hi)                                                                 \
    if (c.f < (lo) || c.f > (hi))                                                              \
        return kvf_set_error(KVF_E_INVAL, "synth: " #f " %d is outside [%d, %d]", (int)c.f,     \
                             (int)(lo), (int)(hi));
    SYNTH_RANGE(n_layer, 1, 64)
    SYNTH_RANGE(n_embd, 2, 8192)
    SYNTH_RANGE(n_head, 1, 256)
    SYNTH_RANGE(n_head_kv, 1, 256)
    SYNTH_RANGE(n_ff, 1, 32768)
    SYNTH_RANGE(n_ctx, 1, 1 << 24)
    SYNTH_RANGE(n_merges, 0, 100000)
#undef SYNTH_RANGE
    if (!(c.rope_base > 0) || !(c.eps > 0) || !isfinite(c.rope_base) || !isfinite(c.eps))
        return kvf_set_error(KVF_E_INVAL, "synth: rope_base %g and eps %g must be positive",
                             (double)c.rope_base, (double)c.eps);
    if (c.n_embd % c.n_head != 0 || (c.n_embd / c.n_head) % 2 != 0)
        return kvf_set_error(KVF_E_INVAL,
                             "synth: n_embd %d must be a multiple of n_head %d with an even "
                             "head_dim (rope rotates pairs)",
                             c.n_embd, c.n_head);
    if (c.n_head % c.n_head_kv != 0)
        return kvf_set_error(KVF_E_INVAL, "synth: n_head_kv %d must divide n_head %d",
                             c.n_head_kv, c.n_head);
    if (c.n_embd % be != 0)
        return kvf_set_error(KVF_E_INVAL,
                             "synth: n_embd %d is not a multiple of %u, the %s block size of "
                             "token_embd (use n_embd %u or a multiple)",
                             c.n_embd, be, kvf_type_name(c.etype), be);
    if (c.n_embd % bw != 0)
        return kvf_set_error(KVF_E_INVAL,
                             "synth: n_embd %d is not a multiple of %u, the %s block size of the "
                             "weights (use n_embd %u or a multiple)",
                             c.n_embd, bw, kvf_type_name(c.wtype), bw);
    if (c.n_ff % bw != 0)
        return kvf_set_error(KVF_E_INVAL,
                             "synth: n_ff %d is not a multiple of %u, the %s block size of "
                             "ffn_down's rows (use n_ff %u or a multiple)",
                             c.n_ff, bw, kvf_type_name(c.wtype), bw);
    if (c.alignment && ((c.alignment & (c.alignment - 1)) != 0 || c.alignment > (1u << 20)))
        return kvf_set_error(KVF_E_INVAL, "synth: alignment %u is not a power of two <= 1 MiB",
                             c.alignment);
    info->cfg      = c;
    info->head_dim = c.n_embd / c.n_head;
    return KVF_OK;
}

/* One weight tensor: elements N(mean, std) from a stream seeded by (seed, name). */
SG_FN sg_tensor *synth_weight(sg_writer *w, const synth_cfg *c, const char *name, uint32_t n_dims,
                              const int64_t *ne, uint32_t type, float mean, float std) {
    int64_t n = 1;
    for (uint32_t d = 0; d < n_dims; d++) n *= ne[d];
    float    *x = sg_xrealloc(NULL, (size_t)n * sizeof *x);
    synth_rng r = {c->seed * 0xD1B54A32D192ED03ull ^ synth_hash(name)};
    for (int64_t i = 0; i < n; i++) x[i] = mean + std * synth_rng_normal(&r);
    sg_tensor *t = sg_add_tensor_f32(w, name, n_dims, ne, type, x);
    free(x);
    return t;
}

/* Build the model into a writer (not yet serialised), e.g. to drop or change a key or tensor
 * before sg_serialize(). *out is NULL on failure. */
SG_FN kvf_status synth_build(const synth_cfg *cfg, sg_writer **out, synth_info *info) {
    synth_info tmp;
    if (!info) info = &tmp;
    *out         = NULL;
    kvf_status s = synth_resolve(cfg, info);
    if (s != KVF_OK) return s;
    const synth_cfg *c = &info->cfg;
    sg_writer       *w = sg_new();
    char             k[128];
    const char      *a = c->arch;
    const int        qwen = strcmp(a, "qwen2") == 0;

    /* tokenizer */
    synth_vocab v;
    synth_vocab_build(c->n_merges, &v);
    info->n_merges        = v.n_merges;
    info->n_merged_tokens = v.n - 256;
    info->tok_endoftext   = synth_vocab_add(&v, "<|endoftext|>");
    info->tok_im_start    = synth_vocab_add(&v, "<|im_start|>");
    info->tok_im_end      = synth_vocab_add(&v, "<|im_end|>");
    info->n_vocab         = v.n;
    info->bos             = info->tok_endoftext;
    info->eos             = info->tok_im_end;

    sg_add_str(w, "general.architecture", a);
    sg_add_str(w, "general.name", c->name);
    if (c->alignment) sg_add_u32(w, "general.alignment", c->alignment);
#define SYNTH_KEY(suffix) (snprintf(k, sizeof k, "%s." suffix, a), k)
    sg_add_u32(w, SYNTH_KEY("block_count"), (uint32_t)c->n_layer);
    sg_add_u32(w, SYNTH_KEY("context_length"), (uint32_t)c->n_ctx);
    sg_add_u32(w, SYNTH_KEY("embedding_length"), (uint32_t)c->n_embd);
    sg_add_u32(w, SYNTH_KEY("feed_forward_length"), (uint32_t)c->n_ff);
    sg_add_u32(w, SYNTH_KEY("attention.head_count"), (uint32_t)c->n_head);
    sg_add_u32(w, SYNTH_KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv);
    sg_add_f32(w, SYNTH_KEY("rope.freq_base"), c->rope_base);
    sg_add_f32(w, SYNTH_KEY("attention.layer_norm_rms_epsilon"), c->eps);
    sg_add_u32(w, SYNTH_KEY("rope.dimension_count"), (uint32_t)info->head_dim);
    sg_add_u32(w, SYNTH_KEY("vocab_size"), (uint32_t)info->n_vocab);
#undef SYNTH_KEY
    sg_add_str(w, "tokenizer.ggml.model", "gpt2");
    sg_add_str(w, "tokenizer.ggml.pre", "gpt2");
    sg_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, (uint64_t)v.n);
    int32_t *tt = sg_xrealloc(NULL, (size_t)v.n * sizeof *tt);
    for (int i = 0; i < v.n; i++) tt[i] = i >= info->tok_endoftext ? 3 : 1;
    sg_add_arr(w, "tokenizer.ggml.token_type", GGUF_T_INT32, tt, (uint64_t)v.n);
    free(tt);
    char **mg = sg_xrealloc(NULL, (size_t)(v.n_merges ? v.n_merges : 1) * sizeof *mg);
    for (int i = 0; i < v.n_merges; i++) {
        const char *l = v.tok[v.merge[i][0]], *r = v.tok[v.merge[i][1]];
        mg[i]         = sg_xrealloc(NULL, strlen(l) + strlen(r) + 2);
        sprintf(mg[i], "%s %s", l, r);
    }
    sg_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mg, (uint64_t)v.n_merges);
    for (int i = 0; i < v.n_merges; i++) free(mg[i]);
    free(mg);
    sg_add_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)info->bos);
    sg_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)info->eos);
    sg_add_bool(w, "tokenizer.ggml.add_bos_token", 0);
    sg_add_str(w, "tokenizer.chat_template", synth_chat_template);
    synth_vocab_free(&v);

    /* weights: unit-variance outputs for unit-rms inputs (std 1/sqrt(fan_in)); the residual
     * branches' output projections are scaled by 1/sqrt(2 n_layer) so the stream grows
     * slowly; embeddings and output give logits of standard deviation ~2. */
    const int64_t E = c->n_embd, F = c->n_ff, V = info->n_vocab, hd = info->head_dim;
    const int64_t Q = c->n_head * hd, KV = c->n_head_kv * hd;
    const float   se = 2.0f / sqrtf((float)E), sf = 1.0f / sqrtf((float)F);
    const float   si = 1.0f / sqrtf((float)E), res = 1.0f / sqrtf(2.0f * (float)c->n_layer);
    int           ok = 1;
    char          nm[96];
    {
        int64_t ne[2] = {E, V};
        ok &= synth_weight(w, c, "token_embd.weight", 2, ne, c->etype, 0, se) != NULL;
        ok &= synth_weight(w, c, "output_norm.weight", 1, ne, KVF_TYPE_F32, 1, 0.05f) != NULL;
        if (c->untied)
            ok &= synth_weight(w, c, "output.weight", 2, ne, c->wtype, 0, se) != NULL;
    }
    for (int l = 0; l < c->n_layer && ok; l++) {
#define SYNTH_T(suffix, nd, d0, d1, type, mean, std)                                           \
    do {                                                                                       \
        int64_t ne_[2] = {(d0), (d1)};                                                         \
        snprintf(nm, sizeof nm, "blk.%d." suffix, l);                                          \
        ok &= synth_weight(w, c, nm, (nd), ne_, (type), (mean), (std)) != NULL;                \
    } while (0)
        SYNTH_T("attn_norm.weight", 1, E, 1, KVF_TYPE_F32, 1, 0.05f);
        SYNTH_T("attn_q.weight", 2, E, Q, c->wtype, 0, si);
        SYNTH_T("attn_k.weight", 2, E, KV, c->wtype, 0, si);
        SYNTH_T("attn_v.weight", 2, E, KV, c->wtype, 0, si);
        if (qwen) {
            SYNTH_T("attn_q.bias", 1, Q, 1, KVF_TYPE_F32, 0, 0.1f);
            SYNTH_T("attn_k.bias", 1, KV, 1, KVF_TYPE_F32, 0, 0.1f);
            SYNTH_T("attn_v.bias", 1, KV, 1, KVF_TYPE_F32, 0, 0.1f);
        }
        SYNTH_T("attn_output.weight", 2, Q, E, c->wtype, 0, res / sqrtf((float)Q));
        SYNTH_T("ffn_norm.weight", 1, E, 1, KVF_TYPE_F32, 1, 0.05f);
        SYNTH_T("ffn_gate.weight", 2, E, F, c->wtype, 0, si);
        SYNTH_T("ffn_up.weight", 2, E, F, c->wtype, 0, si);
        SYNTH_T("ffn_down.weight", 2, F, E, c->wtype, 0, res * sf);
#undef SYNTH_T
    }
    if (!ok) {
        sg_free(w);
        return kvf_set_error(KVF_E_INVAL, "synth: kvf_quantize failed for %s/%s weights",
                             kvf_type_name(c->wtype), kvf_type_name(c->etype));
    }
    *out = w;
    return KVF_OK;
}

/* The model as a GGUF image: *out is malloc'd (free() it), *len its size. */
SG_FN kvf_status synth_model(const synth_cfg *cfg, uint8_t **out, size_t *len, synth_info *info) {
    synth_info tmp;
    sg_writer *w;
    if (!info) info = &tmp;
    *out         = NULL;
    *len         = 0;
    kvf_status s = synth_build(cfg, &w, info);
    if (s != KVF_OK) return s;
    *out             = sg_serialize(w, len);
    info->file_bytes = *len;
    sg_free(w);
    return KVF_OK;
}

/* The model written to `path`. */
SG_FN kvf_status synth_model_file(const synth_cfg *cfg, const char *path, synth_info *info) {
    uint8_t   *buf;
    size_t     len;
    kvf_status s = synth_model(cfg, &buf, &len, info);
    if (s != KVF_OK) return s;
    int r = sg_write_buf(path, buf, len);
    free(buf);
    if (r != 0) return kvf_set_error(KVF_E_IO, "synth: cannot write '%s'", path);
    return KVF_OK;
}

/* The model of cfg written to a temporary file named after `tag` and the process, loaded with
 * default parameters, the file removed; NULL (kvf_errmsg says why) on failure. */
SG_FN struct kvf_model *synth_model_load(const synth_cfg *cfg, const char *tag) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/kvf-synth-%s-%ld.gguf", tag, (long)getpid());
    struct kvf_model *m = NULL;
    synth_info        info;
    if (synth_model_file(cfg, path, &info) == KVF_OK) {
        kvf_model_params mp = kvf_model_default_params();
        if (kvf_model_load(path, &mp, &m) != KVF_OK) m = NULL;
    }
    unlink(path);
    return m;
}

/* The duplicate-token model and prompt of the needle selection tests: 2 layers, float weights;
 * layer 0 is the identity (zero output projections), layer 1 has Wq = Wk = I (a query attends to
 * earlier occurrences of its own token) and only two rotary dimensions. Written to `path`.
 * ids gets 5 segments of SYNTH_NEEDLE_LENS tokens: documents from the lower half of the
 * vocabulary, the question (segment 4) from the upper half, so the needle token
 * SYNTH_NEEDLE, planted at prompt position SYNTH_NEEDLE_POS (segment 2), is the only token they
 * share; the caller decides whether the question mentions it. */
#define SYNTH_NEEDLE      100
#define SYNTH_NEEDLE_POS  (8 + 60 + 37)
#define SYNTH_NEEDLE_LENS {8, 60, 60, 60, 6}
SG_FN kvf_status synth_needle_file(const char *path, int32_t ids[5][64]) {
    synth_cfg  cfg = {.wtype = KVF_TYPE_F32, .etype = KVF_TYPE_F32, .n_layer = 2, .n_embd = 64,
                      .n_head = 4, .n_head_kv = 4, .n_ctx = 512, .seed = 21};
    synth_info info;
    sg_writer *w;
    kvf_status st = synth_build(&cfg, &w, &info);
    if (st != KVF_OK) return st;
    const char *zero[] = {"blk.0.attn_output.weight", "blk.0.ffn_down.weight"};
    for (int i = 0; i < 2; i++) {
        sg_tensor *t = sg_find_tensor(w, zero[i]);
        memset(t->data, 0, t->nbytes);
    }
    const char *ident[] = {"blk.1.attn_q.weight", "blk.1.attn_k.weight"};
    for (int i = 0; i < 2; i++) {
        sg_tensor *t = sg_find_tensor(w, ident[i]);
        float     *f = (float *)t->data;
        memset(f, 0, t->nbytes);
        for (int r = 0; r < 64; r++) f[r * 64 + r] = 1.0f; /* sharp: scores scale with |e|^2 */
    }
    uint32_t two = 2;
    sg_remove_kv(w, "llama.rope.dimension_count");
    sg_add_scalar(w, "llama.rope.dimension_count", GGUF_T_UINT32, &two);
    int r = sg_write_file(w, path);
    sg_free(w);
    if (r != 0) return kvf_set_error(KVF_E_IO, "synth: cannot write '%s'", path);
    const int lens[5] = SYNTH_NEEDLE_LENS;
    int       half    = (info.n_vocab - 3) / 2;
    uint64_t  x       = 5;
    for (int sgi = 0; sgi < 5; sgi++)
        for (int i = 0; i < lens[sgi]; i++) {
            do {
                x           = x * 6364136223846793005ull + 1442695040888963407ull;
                ids[sgi][i] = (int32_t)((x >> 33) % (uint64_t)half) + (sgi == 4 ? half : 0);
            } while (ids[sgi][i] == SYNTH_NEEDLE);
        }
    ids[2][37] = SYNTH_NEEDLE;
    return KVF_OK;
}

#endif /* KVF_TEST_SYNTH_H */
