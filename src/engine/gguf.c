/* gguf.c - bounds-checked GGUF v2/v3 parser and file mapping.
 *
 * Layout of a GGUF file (all little-endian):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },            string = u64 length + bytes
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset },
 *   padding to `general.alignment` (default 32), then the tensor data section.
 */
#include "engine/gguf.h"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_MAX_DIMS 4
#define GGUF_MAX_NAME 256 /* tensor names; ggml itself uses 64 */
#define GGUF_MAX_KEY 65535
#define GGUF_DEFAULT_ALIGNMENT 32

/* ---- tensor types ---------------------------------------------------------------------- */

static const kvf_type_traits g_types[KVF_TYPE_COUNT] = {
    [KVF_TYPE_F32] = {"F32", 1, 4},        [KVF_TYPE_F16] = {"F16", 1, 2},
    [KVF_TYPE_Q4_0] = {"Q4_0", 32, 18},    [KVF_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [KVF_TYPE_Q5_0] = {"Q5_0", 32, 22},    [KVF_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [KVF_TYPE_Q8_0] = {"Q8_0", 32, 34},    [KVF_TYPE_Q8_1] = {"Q8_1", 32, 36},
    [KVF_TYPE_Q2_K] = {"Q2_K", 256, 84},   [KVF_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [KVF_TYPE_Q4_K] = {"Q4_K", 256, 144},  [KVF_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [KVF_TYPE_Q6_K] = {"Q6_K", 256, 210},  [KVF_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [KVF_TYPE_I8] = {"I8", 1, 1},          [KVF_TYPE_I16] = {"I16", 1, 2},
    [KVF_TYPE_I32] = {"I32", 1, 4},        [KVF_TYPE_I64] = {"I64", 1, 8},
    [KVF_TYPE_F64] = {"F64", 1, 8},        [KVF_TYPE_BF16] = {"BF16", 1, 2},
};

int kvf_type_get(uint32_t type, kvf_type_traits *out) {
    if (type >= KVF_TYPE_COUNT || g_types[type].name == NULL) return 0;
    *out = g_types[type];
    return 1;
}

const char *kvf_type_name(uint32_t type) {
    static _Thread_local char buf[32];
    if (type < KVF_TYPE_COUNT && g_types[type].name) return g_types[type].name;
    snprintf(buf, sizeof buf, "type%u", type);
    return buf;
}

/* ---- reading primitives ---------------------------------------------------------------- */

typedef struct {
    const uint8_t *buf;
    size_t         len;
    size_t         pos;
} reader;

static int rd_bytes(reader *r, void *dst, size_t n) {
    if (n > r->len - r->pos) return -1;
    memcpy(dst, r->buf + r->pos, n);
    r->pos += n;
    return 0;
}

static int rd_u32(reader *r, uint32_t *v) {
    return rd_bytes(r, v, 4);
}

static int rd_u64(reader *r, uint64_t *v) {
    return rd_bytes(r, v, 8);
}

static int rd_str(reader *r, gguf_str *s) {
    uint64_t n;
    if (rd_u64(r, &n)) return -1;
    if (n > r->len - r->pos) return -1;
    s->s = (const char *)r->buf + r->pos;
    s->n = n;
    r->pos += n;
    return 0;
}

static size_t vtype_size(uint32_t t) {
    switch (t) {
    case GGUF_T_UINT8:
    case GGUF_T_INT8:
    case GGUF_T_BOOL:
        return 1;
    case GGUF_T_UINT16:
    case GGUF_T_INT16:
        return 2;
    case GGUF_T_UINT32:
    case GGUF_T_INT32:
    case GGUF_T_FLOAT32:
        return 4;
    case GGUF_T_UINT64:
    case GGUF_T_INT64:
    case GGUF_T_FLOAT64:
        return 8;
    default:
        return 0; /* STRING, ARRAY, unknown */
    }
}

int gguf_str_eq(gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.n == n && memcmp(s.s, z, n) == 0;
}

/* Printable, bounded copy of a (possibly binary) name for messages. */
static const char *str_show(gguf_str s) {
    static _Thread_local char buf[80];
    size_t                    n = s.n < sizeof buf - 4 ? (size_t)s.n : sizeof buf - 4, i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.s[i];
        buf[i]          = (c >= 32 && c < 127) ? (char)c : '?';
    }
    if (n < s.n) buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = 0;
    return buf;
}

/* ---- name index (open addressing; detects duplicates) ---------------------------------- */

static uint64_t str_hash(const char *s, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

/* Returns the index of an existing equal name, or -1 after inserting `idx`. */
static int64_t index_insert(int64_t *slots, uint64_t cap, const gguf_str *names, size_t stride,
                            int64_t idx) {
    const gguf_str *nm = (const gguf_str *)((const char *)names + stride * (size_t)idx);
    uint64_t        h  = str_hash(nm->s, nm->n) & (cap - 1);
    for (;;) {
        if (slots[h] < 0) {
            slots[h] = idx;
            return -1;
        }
        const gguf_str *o = (const gguf_str *)((const char *)names + stride * (size_t)slots[h]);
        if (o->n == nm->n && memcmp(o->s, nm->s, nm->n) == 0) return slots[h];
        h = (h + 1) & (cap - 1);
    }
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ---- parser ---------------------------------------------------------------------------- */

#define FAIL(...)                                                                              \
    do {                                                                                       \
        st = kvf_set_error(KVF_E_FORMAT, __VA_ARGS__);                                         \
        goto fail;                                                                             \
    } while (0)
#define FAIL_NOMEM()                                                                           \
    do {                                                                                       \
        st = kvf_set_error(KVF_E_NOMEM, "gguf: out of memory");                                \
        goto fail;                                                                             \
    } while (0)

static kvf_status parse_value(reader *r, gguf_kv *kv, uint32_t type, uint64_t key_off) {
    kv->type = type;
    if (type == GGUF_T_ARRAY) {
        uint32_t at;
        uint64_t n;
        size_t   vo = r->pos;
        if (rd_u32(r, &at) || rd_u64(r, &n))
            return kvf_set_error(KVF_E_FORMAT,
                                 "gguf: array header of key '%s' at offset %zu: truncated",
                                 str_show(kv->key), vo);
        if (at == GGUF_T_ARRAY || at >= GGUF_T_COUNT)
            return kvf_set_error(KVF_E_FORMAT,
                                 "gguf: key '%s' at offset %llu: unsupported array element type %u",
                                 str_show(kv->key), (unsigned long long)key_off, at);
        kv->arr_type = at;
        kv->n        = n;
        if (at == GGUF_T_STRING) {
            /* each string needs at least its 8-byte length */
            if (n > (r->len - r->pos) / 8)
                return kvf_set_error(KVF_E_FORMAT,
                                     "gguf: key '%s' at offset %llu: array count %llu exceeds the "
                                     "remaining %zu bytes",
                                     str_show(kv->key), (unsigned long long)key_off,
                                     (unsigned long long)n, r->len - r->pos);
            kv->strs = kvf_malloc((size_t)(n ? n : 1) * sizeof(gguf_str));
            if (!kv->strs) return kvf_set_error(KVF_E_NOMEM, "gguf: out of memory");
            for (uint64_t i = 0; i < n; i++) {
                if (rd_str(r, &kv->strs[i]))
                    return kvf_set_error(KVF_E_FORMAT,
                                         "gguf: key '%s': string %llu of %llu at offset %zu runs "
                                         "past the end of the file",
                                         str_show(kv->key), (unsigned long long)i,
                                         (unsigned long long)n, r->pos);
            }
            return KVF_OK;
        }
        size_t es = vtype_size(at);
        if (n > (r->len - r->pos) / es)
            return kvf_set_error(KVF_E_FORMAT,
                                 "gguf: key '%s' at offset %llu: array of %llu elements of %zu "
                                 "bytes exceeds the remaining %zu bytes",
                                 str_show(kv->key), (unsigned long long)key_off,
                                 (unsigned long long)n, es, r->len - r->pos);
        kv->data = r->buf + r->pos;
        r->pos += (size_t)n * es;
        return KVF_OK;
    }
    kv->arr_type = type;
    kv->n        = 1;
    if (type == GGUF_T_STRING) {
        kv->strs = kvf_malloc(sizeof(gguf_str));
        if (!kv->strs) return kvf_set_error(KVF_E_NOMEM, "gguf: out of memory");
        if (rd_str(r, kv->strs))
            return kvf_set_error(KVF_E_FORMAT,
                                 "gguf: string value of key '%s' at offset %zu runs past the end "
                                 "of the file",
                                 str_show(kv->key), r->pos);
        return KVF_OK;
    }
    size_t es = vtype_size(type);
    if (es == 0)
        return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' at offset %llu: unknown value type %u",
                             str_show(kv->key), (unsigned long long)key_off, type);
    if (es > r->len - r->pos)
        return kvf_set_error(KVF_E_FORMAT, "gguf: value of key '%s' at offset %zu: truncated",
                             str_show(kv->key), r->pos);
    kv->data = r->buf + r->pos;
    r->pos += es;
    return KVF_OK;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->kv)
        for (uint64_t i = 0; i < f->n_kv; i++) kvf_free(f->kv[i].strs);
    kvf_free(f->kv);
    kvf_free(f->tensors);
    if (f->map) {
        if (f->map_is_heap)
            kvf_free(f->map);
        else
            munmap(f->map, f->map_len);
    }
    kvf_free(f);
}

kvf_status gguf_parse(const void *buf, size_t len, gguf_file **out) {
    *out           = NULL;
    gguf_file *f   = kvf_calloc(1, sizeof *f);
    int64_t   *idx = NULL;
    kvf_status st  = KVF_OK;
    if (!f) return kvf_set_error(KVF_E_NOMEM, "gguf: out of memory");
    f->buf    = buf;
    f->len    = len;
    reader r  = {buf, len, 0};
    char magic[4];
    if (len < 24) FAIL("gguf: file is %zu bytes, too short for a GGUF header (24 bytes)", len);
    rd_bytes(&r, magic, 4);
    if (memcmp(magic, "GGUF", 4) != 0)
        FAIL("gguf: bad magic at offset 0 (expected \"GGUF\", found %02x %02x %02x %02x)",
             (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2], (uint8_t)magic[3]);
    rd_u32(&r, &f->version);
    if (f->version == 1) FAIL("gguf: version 1 at offset 4 is not supported (only 2 and 3)");
    if (f->version != 2 && f->version != 3) {
        if (f->version == 0x02000000u || f->version == 0x03000000u)
            FAIL("gguf: version field at offset 4 is %u: a big-endian GGUF file, not supported",
                 f->version);
        FAIL("gguf: unsupported version %u at offset 4 (supported: 2, 3)", f->version);
    }
    rd_u64(&r, &f->n_tensors);
    rd_u64(&r, &f->n_kv);
    /* Bound counts by the bytes left before allocating: a kv takes >= 12 bytes, a tensor info
     * >= 24 (8 name length + 4 n_dims + 4 type + 8 offset). */
    if (f->n_kv > (len - r.pos) / 12)
        FAIL("gguf: n_kv at offset 16 is %llu, more than the %zu remaining bytes can hold",
             (unsigned long long)f->n_kv, len - r.pos);
    if (f->n_tensors > (len - r.pos) / 24)
        FAIL("gguf: n_tensors at offset 8 is %llu, more than the %zu remaining bytes can hold",
             (unsigned long long)f->n_tensors, len - r.pos);

    f->kv      = kvf_calloc((size_t)(f->n_kv ? f->n_kv : 1), sizeof(gguf_kv));
    f->tensors = kvf_calloc((size_t)(f->n_tensors ? f->n_tensors : 1), sizeof(gguf_tensor));
    if (!f->kv || !f->tensors) FAIL_NOMEM();

    /* key/value pairs */
    uint64_t cap = pow2_at_least(f->n_kv * 2 + 1);
    idx          = kvf_malloc(cap * sizeof(int64_t));
    if (!idx) FAIL_NOMEM();
    memset(idx, 0xff, cap * sizeof(int64_t));
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < f->n_kv; i++) {
        gguf_kv *kv  = &f->kv[i];
        uint32_t t;
        kv->offset = r.pos;
        if (rd_str(&r, &kv->key))
            FAIL("gguf: key %llu at offset %llu runs past the end of the file",
                 (unsigned long long)i, (unsigned long long)kv->offset);
        if (kv->key.n == 0 || kv->key.n > GGUF_MAX_KEY)
            FAIL("gguf: key %llu at offset %llu has invalid length %llu", (unsigned long long)i,
                 (unsigned long long)kv->offset, (unsigned long long)kv->key.n);
        if (rd_u32(&r, &t))
            FAIL("gguf: type of key '%s' at offset %zu: truncated", str_show(kv->key), r.pos);
        if (t >= GGUF_T_COUNT)
            FAIL("gguf: key '%s' at offset %llu has unknown value type %u", str_show(kv->key),
                 (unsigned long long)kv->offset, t);
        if ((st = parse_value(&r, kv, t, kv->offset)) != KVF_OK) goto fail;
        if (index_insert(idx, cap, &f->kv[0].key, sizeof(gguf_kv), (int64_t)i) >= 0)
            FAIL("gguf: duplicate key '%s' at offset %llu", str_show(kv->key),
                 (unsigned long long)kv->offset);
        if (gguf_str_eq(kv->key, "general.alignment")) {
            uint32_t a;
            if (kv->type != GGUF_T_UINT32)
                FAIL("gguf: general.alignment at offset %llu must be uint32 (type %u found)",
                     (unsigned long long)kv->offset, kv->type);
            memcpy(&a, kv->data, 4);
            if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20))
                FAIL("gguf: general.alignment at offset %llu is %u, not a power of two <= 1 MiB",
                     (unsigned long long)kv->offset, a);
            f->alignment = a;
        }
    }
    kvf_free(idx);
    idx = NULL;

    /* tensor infos */
    cap = pow2_at_least(f->n_tensors * 2 + 1);
    idx = kvf_malloc(cap * sizeof(int64_t));
    if (!idx) FAIL_NOMEM();
    memset(idx, 0xff, cap * sizeof(int64_t));
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        t->info_offset = r.pos;
        if (rd_str(&r, &t->name))
            FAIL("gguf: name of tensor %llu at offset %llu runs past the end of the file",
                 (unsigned long long)i, (unsigned long long)t->info_offset);
        if (t->name.n == 0 || t->name.n > GGUF_MAX_NAME)
            FAIL("gguf: tensor %llu at offset %llu has a name of invalid length %llu",
                 (unsigned long long)i, (unsigned long long)t->info_offset,
                 (unsigned long long)t->name.n);
        if (rd_u32(&r, &t->n_dims))
            FAIL("gguf: tensor '%s': n_dims at offset %zu truncated", str_show(t->name), r.pos);
        if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS)
            FAIL("gguf: tensor '%s' at offset %llu: n_dims is %u (must be 1..%d)",
                 str_show(t->name), (unsigned long long)t->info_offset, t->n_dims, GGUF_MAX_DIMS);
        uint64_t nel = 1;
        for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t ne;
            size_t   at = r.pos;
            if (rd_u64(&r, &ne))
                FAIL("gguf: tensor '%s': dimension %u at offset %zu truncated",
                     str_show(t->name), d, at);
            if (ne == 0 || ne > (uint64_t)INT64_MAX)
                FAIL("gguf: tensor '%s': dimension %u at offset %zu is %llu", str_show(t->name),
                     d, at, (unsigned long long)ne);
            if (__builtin_mul_overflow(nel, ne, &nel) || nel > (uint64_t)INT64_MAX)
                FAIL("gguf: tensor '%s' at offset %llu: element count overflows",
                     str_show(t->name), (unsigned long long)t->info_offset);
            t->ne[d] = (int64_t)ne;
        }
        size_t to = r.pos;
        if (rd_u32(&r, &t->type) || rd_u64(&r, &t->offset))
            FAIL("gguf: tensor '%s': type/offset at offset %zu truncated", str_show(t->name), to);
        kvf_type_traits tt;
        if (!kvf_type_get(t->type, &tt))
            FAIL("gguf: tensor '%s': unknown type %u at offset %zu", str_show(t->name), t->type,
                 to);
        if (t->ne[0] % tt.block != 0)
            FAIL("gguf: tensor '%s': row length %lld is not a multiple of the %s block size %u",
                 str_show(t->name), (long long)t->ne[0], tt.name, tt.block);
        if (__builtin_mul_overflow(nel / tt.block, (uint64_t)tt.bytes, &t->nbytes))
            FAIL("gguf: tensor '%s': byte size overflows", str_show(t->name));
        if (t->offset % f->alignment != 0)
            FAIL("gguf: tensor '%s': data offset %llu is not a multiple of the alignment %u",
                 str_show(t->name), (unsigned long long)t->offset, f->alignment);
        if (index_insert(idx, cap, &f->tensors[0].name, sizeof(gguf_tensor), (int64_t)i) >= 0)
            FAIL("gguf: duplicate tensor name '%s' at offset %llu", str_show(t->name),
                 (unsigned long long)t->info_offset);
    }
    kvf_free(idx);
    idx = NULL;

    /* data section */
    uint64_t data_off = ((uint64_t)r.pos + f->alignment - 1) / f->alignment * f->alignment;
    if (f->n_tensors > 0 && data_off > len)
        FAIL("gguf: the data section would start at offset %llu, past the end of the %zu-byte "
             "file",
             (unsigned long long)data_off, len);
    f->data_offset = data_off;
    uint64_t data_len = data_off <= len ? len - data_off : 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        if (t->offset > data_len || t->nbytes > data_len - t->offset)
            FAIL("gguf: tensor '%s' (info at offset %llu): data [%llu, +%llu) lies outside the "
                 "%llu-byte data section (file truncated?)",
                 str_show(t->name), (unsigned long long)t->info_offset,
                 (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                 (unsigned long long)data_len);
        t->data = f->buf + data_off + t->offset;
    }
    *out = f;
    return KVF_OK;

fail:
    kvf_free(idx);
    gguf_close(f);
    return st;
}

kvf_status gguf_open(const char *path, gguf_file **out) {
    *out   = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kvf_set_error(KVF_E_IO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return kvf_set_error(KVF_E_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return kvf_set_error(KVF_E_IO, "'%s' is not a regular file", path);
    }
    size_t len = (size_t)st.st_size;
    if (len == 0) {
        close(fd);
        return kvf_set_error(KVF_E_FORMAT, "'%s' is empty, not a GGUF file", path);
    }
    void *map  = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    int   heap = 0;
    if (map == MAP_FAILED) {
        /* e.g. a filesystem without mmap: read it into memory instead */
        map = kvf_malloc(len);
        if (!map) {
            close(fd);
            return kvf_set_error(KVF_E_NOMEM, "cannot allocate %zu bytes for '%s'", len, path);
        }
        heap = 1;
        for (size_t got = 0; got < len;) {
            ssize_t k = read(fd, (char *)map + got, len - got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                int e = errno;
                kvf_free(map);
                close(fd);
                return kvf_set_error(KVF_E_IO, "cannot read '%s': %s", path,
                                     k == 0 ? "unexpected end of file" : strerror(e));
            }
            got += (size_t)k;
        }
    }
    close(fd);
    gguf_file *f;
    kvf_status s = gguf_parse(map, len, &f);
    if (s != KVF_OK) {
        kvf_error_prefix("%s: ", path);
        if (heap)
            kvf_free(map);
        else
            munmap(map, len);
        return s;
    }
    f->map         = map;
    f->map_len     = len;
    f->map_is_heap = heap;
    *out           = f;
    return KVF_OK;
}

/* ---- lookups --------------------------------------------------------------------------- */

void gguf_release_data(const gguf_file *f, const gguf_tensor *t) {
    if (!f->map || f->map_is_heap || !t->data) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t a = ((uintptr_t)t->data + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t b = ((uintptr_t)t->data + (uintptr_t)t->nbytes) & ~((uintptr_t)page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static int kv_int(const gguf_kv *kv, int64_t *v, uint64_t *u, int *is_unsigned) {
    uint8_t b[8];
    size_t  es = vtype_size(kv->type);
    if (kv->type == GGUF_T_ARRAY || kv->type == GGUF_T_STRING || es == 0) return -1;
    memcpy(b, kv->data, es);
    *is_unsigned = 0;
    switch (kv->type) {
    case GGUF_T_UINT8: *u = b[0], *is_unsigned = 1; break;
    case GGUF_T_INT8: *v = (int8_t)b[0]; break;
    case GGUF_T_UINT16: { uint16_t x; memcpy(&x, b, 2); *u = x, *is_unsigned = 1; break; }
    case GGUF_T_INT16: { int16_t x; memcpy(&x, b, 2); *v = x; break; }
    case GGUF_T_UINT32: { uint32_t x; memcpy(&x, b, 4); *u = x, *is_unsigned = 1; break; }
    case GGUF_T_INT32: { int32_t x; memcpy(&x, b, 4); *v = x; break; }
    case GGUF_T_UINT64: { uint64_t x; memcpy(&x, b, 8); *u = x, *is_unsigned = 1; break; }
    case GGUF_T_INT64: { int64_t x; memcpy(&x, b, 8); *v = x; break; }
    default: return -1;
    }
    return 0;
}

kvf_status gguf_get_i64(const gguf_file *f, const char *key, int64_t *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return kvf_set_error(KVF_E_NOTFOUND, "gguf: key '%s' not found", key);
    int64_t  v  = 0;
    uint64_t u  = 0;
    int      us = 0;
    if (kv_int(kv, &v, &u, &us))
        return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' at offset %llu is not an integer", key,
                             (unsigned long long)kv->offset);
    if (us) {
        if (u > (uint64_t)INT64_MAX)
            return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' value %llu is out of range", key,
                                 (unsigned long long)u);
        v = (int64_t)u;
    }
    *out = v;
    return KVF_OK;
}

kvf_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    int64_t    v;
    kvf_status s = gguf_get_i64(f, key, &v);
    if (s != KVF_OK) return s;
    if (v < 0 || v > (int64_t)UINT32_MAX)
        return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' value %lld is out of range", key,
                             (long long)v);
    *out = (uint32_t)v;
    return KVF_OK;
}

kvf_status gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return kvf_set_error(KVF_E_NOTFOUND, "gguf: key '%s' not found", key);
    if (kv->type == GGUF_T_FLOAT32) {
        memcpy(out, kv->data, 4);
        return KVF_OK;
    }
    if (kv->type == GGUF_T_FLOAT64) {
        double d;
        memcpy(&d, kv->data, 8);
        if (d == d && (d > 3.4028234663852886e38 || d < -3.4028234663852886e38))
            return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' value %g does not fit a float",
                                 key, d);
        *out = (float)d;
        return KVF_OK;
    }
    return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' at offset %llu is not a float", key,
                         (unsigned long long)kv->offset);
}

kvf_status gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return kvf_set_error(KVF_E_NOTFOUND, "gguf: key '%s' not found", key);
    if (kv->type != GGUF_T_BOOL)
        return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' at offset %llu is not a bool", key,
                             (unsigned long long)kv->offset);
    *out = kv->data[0] != 0;
    return KVF_OK;
}

kvf_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return kvf_set_error(KVF_E_NOTFOUND, "gguf: key '%s' not found", key);
    if (kv->type != GGUF_T_STRING)
        return kvf_set_error(KVF_E_FORMAT, "gguf: key '%s' at offset %llu is not a string", key,
                             (unsigned long long)kv->offset);
    *out = kv->strs[0];
    return KVF_OK;
}

kvf_status gguf_get_arr(const gguf_file *f, const char *key, uint32_t elem_type,
                        const gguf_kv **out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return kvf_set_error(KVF_E_NOTFOUND, "gguf: key '%s' not found", key);
    if (kv->type != GGUF_T_ARRAY || kv->arr_type != elem_type)
        return kvf_set_error(KVF_E_FORMAT,
                             "gguf: key '%s' at offset %llu is not an array of type %u", key,
                             (unsigned long long)kv->offset, elem_type);
    *out = kv;
    return KVF_OK;
}

float gguf_arr_f32(const gguf_kv *kv, uint64_t i) {
    float v;
    memcpy(&v, kv->data + i * 4, 4);
    return v;
}

int32_t gguf_arr_i32(const gguf_kv *kv, uint64_t i) {
    int32_t v;
    memcpy(&v, kv->data + i * 4, 4);
    return v;
}
