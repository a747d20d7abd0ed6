/* gguf.h - reader for GGUF files (versions 2 and 3, little-endian).
 *
 * gguf_parse() works on a caller-provided buffer and treats every byte as hostile: each count,
 * length, offset, dimension, type and alignment is checked before it is used, and an error names
 * the field and its byte offset. gguf_open() maps a file read-only and parses it. Parsed strings
 * and tensor data point into the buffer (zero-copy); nothing is NUL-terminated.
 *
 * Not here: interpreting keys (model.c, tokenizer.c) or tensor contents (quant.c).
 */
#ifndef KVF_GGUF_H
#define KVF_GGUF_H

#include "kvfuse.h"

#include <stddef.h>
#include <stdint.h>

/* Metadata value types, as numbered by the GGUF specification. */
enum {
    GGUF_T_UINT8   = 0,
    GGUF_T_INT8    = 1,
    GGUF_T_UINT16  = 2,
    GGUF_T_INT16   = 3,
    GGUF_T_UINT32  = 4,
    GGUF_T_INT32   = 5,
    GGUF_T_FLOAT32 = 6,
    GGUF_T_BOOL    = 7,
    GGUF_T_STRING  = 8,
    GGUF_T_ARRAY   = 9,
    GGUF_T_UINT64  = 10,
    GGUF_T_INT64   = 11,
    GGUF_T_FLOAT64 = 12,
    GGUF_T_COUNT
};

/* Tensor element types (ggml numbering). Only the ones listed have a known size; the model
 * loader decides which it can compute with. */
enum {
    KVF_TYPE_F32  = 0,
    KVF_TYPE_F16  = 1,
    KVF_TYPE_Q4_0 = 2,
    KVF_TYPE_Q4_1 = 3,
    KVF_TYPE_Q5_0 = 6,
    KVF_TYPE_Q5_1 = 7,
    KVF_TYPE_Q8_0 = 8,
    KVF_TYPE_Q8_1 = 9,
    KVF_TYPE_Q2_K = 10,
    KVF_TYPE_Q3_K = 11,
    KVF_TYPE_Q4_K = 12,
    KVF_TYPE_Q5_K = 13,
    KVF_TYPE_Q6_K = 14,
    KVF_TYPE_Q8_K = 15,
    KVF_TYPE_I8   = 24,
    KVF_TYPE_I16  = 25,
    KVF_TYPE_I32  = 26,
    KVF_TYPE_I64  = 27,
    KVF_TYPE_F64  = 28,
    KVF_TYPE_BF16 = 30,
    KVF_TYPE_COUNT = 40
};

/* Block geometry of a tensor type: `block` elements take `bytes` bytes. Returns 0 (and
 * leaves *out untouched) for a type id it does not know. */
typedef struct {
    const char *name;
    uint32_t    block;
    uint32_t    bytes;
} kvf_type_traits;
int kvf_type_get(uint32_t type, kvf_type_traits *out);
/* Name of a type id, "type<N>" style fallback in a static buffer for unknown ids. */
const char *kvf_type_name(uint32_t type);

typedef struct {
    const char *s; /* points into the GGUF buffer; not NUL-terminated */
    uint64_t    n;
} gguf_str;

typedef struct gguf_kv {
    gguf_str       key;
    uint32_t       type;     /* GGUF_T_*; for arrays GGUF_T_ARRAY */
    uint32_t       arr_type; /* element type of an array (never ARRAY); == type for scalars */
    uint64_t       n;        /* element count; 1 for a scalar */
    const uint8_t *data;     /* raw little-endian elements (fixed-size types); may be unaligned */
    gguf_str      *strs;     /* n strings when arr_type == STRING (owned by the gguf_file) */
    uint64_t       offset;   /* file offset of the key, for messages */
} gguf_kv;

typedef struct gguf_tensor {
    gguf_str       name;
    uint32_t       n_dims;
    int64_t        ne[4];  /* elements per dimension; ne[0] is the contiguous one; unused = 1 */
    uint32_t       type;   /* KVF_TYPE_* */
    uint64_t       offset; /* from the start of the data section */
    uint64_t       nbytes;
    const uint8_t *data;   /* into the buffer; aligned to the file's alignment */
    uint64_t       info_offset; /* file offset of the tensor's info record */
} gguf_tensor;

typedef struct gguf_file {
    uint32_t       version;
    uint32_t       alignment;
    uint64_t       n_kv;
    gguf_kv       *kv;
    uint64_t       n_tensors;
    gguf_tensor   *tensors;
    uint64_t       data_offset; /* start of the tensor data section */
    const uint8_t *buf;         /* the whole file */
    size_t         len;
    void          *map;         /* owned mapping or heap copy (gguf_open), else NULL */
    size_t         map_len;
    int            map_is_heap;
} gguf_file;

/* Parse a GGUF image. `buf` is borrowed and must outlive the result. On success *out owns the
 * parsed index (free with gguf_close). On failure *out is NULL and kvf_errmsg() names the
 * field and offset. */
kvf_status gguf_parse(const void *buf, size_t len, gguf_file **out);
/* Map `path` read-only (falling back to reading it into memory) and parse it. */
kvf_status gguf_open(const char *path, gguf_file **out);
void       gguf_close(gguf_file *f);
/* Tell the kernel that tensor t's bytes are no longer needed (they were packed into another
 * layout): the whole pages inside them leave the process's resident memory (they are clean
 * file pages, read again from the file should anything touch them). No-op for heap copies. */
void       gguf_release_data(const gguf_file *f, const gguf_tensor *t);

const gguf_kv     *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters. Return KVF_OK, KVF_E_NOTFOUND (absent) or KVF_E_FORMAT (wrong type or value
 * out of range; message set). Integer getters accept any integer type whose value fits. */
kvf_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
kvf_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
kvf_status gguf_get_f32(const gguf_file *f, const char *key, float *out);
kvf_status gguf_get_bool(const gguf_file *f, const char *key, int *out);
kvf_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out);
/* Array of a given element type (GGUF_T_*); *out points at the kv. */
kvf_status gguf_get_arr(const gguf_file *f, const char *key, uint32_t elem_type,
                        const gguf_kv **out);

/* Element i of a fixed-size array (no bounds check: i < kv->n is the caller's job). */
float   gguf_arr_f32(const gguf_kv *kv, uint64_t i);
int32_t gguf_arr_i32(const gguf_kv *kv, uint64_t i);

/* 1 if the string equals the NUL-terminated `z`. */
int gguf_str_eq(gguf_str s, const char *z);

#endif /* KVF_GGUF_H */
