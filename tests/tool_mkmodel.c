/* tool_mkmodel.c - write a tiny synthetic GGUF model (tests/synth.h) for tests and demos, or
 * regenerate the GGUF fuzzing seed corpus.
 *
 *   tool_mkmodel OUT.gguf [--arch llama|qwen2] [--type Q4_1] [--embd-type Q8_0] [--layers N]
 *                [--embd N] [--heads N] [--kv-heads N] [--ff N] [--ctx N] [--merges N]
 *                [--seed S] [--untied] [--alignment N] [--name NAME] [--rope-base F] [--eps F]
 *   tool_mkmodel --corpus DIR
 *
 * Prints one line describing the model on stdout. Exit status 0, 1 on an error, 2 on a usage
 * error.
 */
#include "synth.h"

#include <errno.h>
#include <sys/stat.h>

static void usage(FILE *out) {
    fprintf(out,
            "usage: tool_mkmodel OUT.gguf [options]   write a tiny synthetic model\n"
            "       tool_mkmodel --corpus DIR          write the GGUF fuzzing seed corpus\n"
            "\n"
            "options (defaults in brackets):\n"
            "  --arch llama|qwen2   architecture; qwen2 adds q/k/v biases [llama]\n"
            "  --type T             attn/ffn/output weight type [F32]\n"
            "  --embd-type T        token_embd type [F32]\n"
            "                       T: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K\n"
            "  --layers N           block_count [2]\n"
            "  --embd N             embedding_length [64; 256 with a K-quant type]\n"
            "  --heads N            attention.head_count [4]\n"
            "  --kv-heads N         attention.head_count_kv [2]\n"
            "  --ff N               feed_forward_length [2 * embd]\n"
            "  --ctx N              context_length [256]\n"
            "  --merges N           BPE merges to learn, at most ~470 [300]; vocab ~ 259 + N\n"
            "  --seed S             weight seed [0]\n"
            "  --untied             write a separate output.weight (default: tied embeddings)\n"
            "  --alignment N        write general.alignment N and lay the data out with it\n"
            "  --name NAME          general.name [synth-ARCH]\n"
            "  --rope-base F        rope.freq_base [10000]\n"
            "  --eps F              attention.layer_norm_rms_epsilon [1e-5]\n"
            "  -h, --help           this text\n");
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno  = 0;
    long v = strtol(s, &end, 0);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "tool_mkmodel: %s: '%s' is not an integer in [%ld, %ld]\n", opt, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_type(const char *opt, const char *s, uint32_t *out) {
    int t = synth_type_from_name(s);
    if (t < 0 || !synth_type_ok((uint32_t)t)) {
        fprintf(stderr,
                "tool_mkmodel: %s: unknown or unsupported type '%s' (F32 F16 BF16 Q4_0 Q4_1 "
                "Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)\n",
                opt, s);
        return -1;
    }
    *out = (uint32_t)t;
    return 0;
}

/* ---- seed corpus for fuzz/fuzz_gguf.c ------------------------------------------------- */

static int corpus_put(const char *dir, const char *name, const uint8_t *buf, size_t len,
                      size_t *total) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (sg_write_buf(path, buf, len) != 0) {
        fprintf(stderr, "tool_mkmodel: cannot write '%s': %s\n", path, strerror(errno));
        return -1;
    }
    *total += len;
    return 0;
}

static int corpus_writer(const char *dir, const char *name, sg_writer *w, size_t *total) {
    size_t   len;
    uint8_t *buf = sg_serialize(w, &len);
    int      r   = corpus_put(dir, name, buf, len, total);
    free(buf);
    sg_free(w);
    return r;
}

static int corpus_model(const char *dir, const char *name, const synth_cfg *c, size_t *total) {
    uint8_t *buf;
    size_t   len;
    if (synth_model(c, &buf, &len, NULL) != KVF_OK) {
        fprintf(stderr, "tool_mkmodel: %s: %s\n", name, kvf_errmsg());
        return -1;
    }
    int r = corpus_put(dir, name, buf, len, total);
    free(buf);
    return r;
}

/* A small file with a few kvs and two tensors, the base of the malformed seeds. */
static sg_writer *corpus_base(void) {
    sg_writer *w = sg_new();
    sg_add_str(w, "general.architecture", "llama");
    sg_add_u32(w, "a.u32", 7);
    sg_add_str(w, "a.str", "hello");
    uint32_t u[3] = {1, 2, 3};
    sg_add_arr(w, "a.arr", GGUF_T_UINT32, u, 3);
    const char *s[3] = {"x", "yy", "zzz"};
    sg_add_arr_str(w, "a.strs", s, 3);
    int64_t ne0[2] = {8, 2}, ne1[2] = {32, 2};
    float   x[64];
    for (int i = 0; i < 64; i++) x[i] = (float)i * 0.25f - 4.0f;
    sg_add_tensor_f32(w, "t.f32", 2, ne0, KVF_TYPE_F32, x);
    sg_add_tensor_f32(w, "t.q40", 2, ne1, KVF_TYPE_Q4_0, x);
    return w;
}

/* The base file with one field patched: u32 (size 4) or u64 (size 8) at the offset. */
static int corpus_patched(const char *dir, const char *name, size_t (*where)(sg_writer *),
                          uint64_t v, int size, size_t *total) {
    sg_writer *w = corpus_base();
    size_t     len;
    uint8_t   *buf = sg_serialize(w, &len);
    size_t     off = where(w);
    if (size == 4)
        sg_put_u32(buf, off, (uint32_t)v);
    else
        sg_put_u64(buf, off, v);
    int r = corpus_put(dir, name, buf, len, total);
    free(buf);
    sg_free(w);
    return r;
}

static size_t at_magic(sg_writer *w) {
    (void)w;
    return 0;
}
static size_t at_version(sg_writer *w) {
    (void)w;
    return 4;
}
static size_t at_n_kv(sg_writer *w) {
    (void)w;
    return 16;
}
static size_t at_key_len(sg_writer *w) {
    return sg_find_kv(w, "a.u32")->off_key;
}
static size_t at_value_type(sg_writer *w) {
    return sg_find_kv(w, "a.u32")->off_type;
}
static size_t at_str_len(sg_writer *w) {
    return sg_find_kv(w, "a.str")->off_val;
}
static size_t at_arr_type(sg_writer *w) {
    return sg_find_kv(w, "a.arr")->off_val;
}
static size_t at_arr_count(sg_writer *w) {
    return sg_find_kv(w, "a.strs")->off_val + 4;
}
static size_t at_n_dims(sg_writer *w) {
    return sg_find_tensor(w, "t.q40")->off_ndims;
}
static size_t at_dim1(sg_writer *w) {
    return sg_find_tensor(w, "t.q40")->off_ne + 8;
}
static size_t at_ttype(sg_writer *w) {
    return sg_find_tensor(w, "t.q40")->off_type;
}
static size_t at_toffset(sg_writer *w) {
    return sg_find_tensor(w, "t.q40")->off_offset;
}

static int write_corpus(const char *dir) {
    size_t total = 0;
    int    bad   = 0;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "tool_mkmodel: cannot create '%s': %s\n", dir, strerror(errno));
        return 1;
    }
    /* valid models */
    synth_cfg c;
    memset(&c, 0, sizeof c);
    c.n_layer = 1, c.n_embd = 32, c.n_head = 2, c.n_head_kv = 1, c.n_ff = 32, c.n_merges = 8;
    c.wtype = KVF_TYPE_Q4_0, c.etype = KVF_TYPE_Q4_0, c.seed = 1;
    bad |= corpus_model(dir, "model-llama-q4_0.gguf", &c, &total);
    c.arch = "qwen2", c.wtype = KVF_TYPE_Q8_0, c.etype = KVF_TYPE_Q4_1, c.untied = 1;
    c.alignment = 64, c.n_merges = 4, c.seed = 2;
    bad |= corpus_model(dir, "model-qwen2-q8_0-untied-align64.gguf", &c, &total);
    c.arch = NULL, c.wtype = KVF_TYPE_Q5_1, c.etype = KVF_TYPE_Q5_0, c.untied = 0;
    c.alignment = 0, c.n_merges = 2, c.n_head = 4, c.n_head_kv = 4, c.seed = 3;
    bad |= corpus_model(dir, "model-llama-q5.gguf", &c, &total);

    /* every value type; every tensor type; version 2 */
    {
        sg_writer *w = sg_new();
        sg_add_u8(w, "u8", 200), sg_add_i8(w, "i8", -1), sg_add_u16(w, "u16", 65000);
        sg_add_i16(w, "i16", -2), sg_add_u32(w, "u32", 7), sg_add_i32(w, "i32", -3);
        sg_add_f32(w, "f32", 0.5f), sg_add_bool(w, "bool", 1), sg_add_str(w, "str", "s");
        sg_add_u64(w, "u64", 9), sg_add_i64(w, "i64", -4), sg_add_f64(w, "f64", 0.25);
        int32_t     ai[3] = {1, -2, 3};
        float       af[2] = {1.5f, -1};
        const char *as[3] = {"a", "", "ccc"};
        sg_add_arr(w, "arr.i32", GGUF_T_INT32, ai, 3);
        sg_add_arr(w, "arr.f32", GGUF_T_FLOAT32, af, 2);
        sg_add_arr(w, "arr.u8", GGUF_T_UINT8, "xyz", 3);
        sg_add_arr(w, "arr.f64", GGUF_T_FLOAT64, NULL, 0);
        sg_add_arr_str(w, "arr.str", as, 3);
        bad |= corpus_writer(dir, "values-all-types.gguf", w, &total);
    }
    {
        sg_writer *w = sg_new();
        sg_add_u32(w, "general.alignment", 16);
        static const struct {
            const char *name;
            uint32_t    type;
            int64_t     ne0;
        } ts[] = {
            {"f32", KVF_TYPE_F32, 3},    {"f16", KVF_TYPE_F16, 5},    {"bf16", KVF_TYPE_BF16, 2},
            {"q4_0", KVF_TYPE_Q4_0, 32}, {"q4_1", KVF_TYPE_Q4_1, 32}, {"q5_0", KVF_TYPE_Q5_0, 32},
            {"q5_1", KVF_TYPE_Q5_1, 32}, {"q8_0", KVF_TYPE_Q8_0, 32}, {"q8_1", KVF_TYPE_Q8_1, 32},
            {"q2_k", KVF_TYPE_Q2_K, 256}, {"q3_k", KVF_TYPE_Q3_K, 256},
            {"q4_k", KVF_TYPE_Q4_K, 256}, {"q5_k", KVF_TYPE_Q5_K, 256},
            {"q6_k", KVF_TYPE_Q6_K, 256}, {"q8_k", KVF_TYPE_Q8_K, 256}, {"i8", KVF_TYPE_I8, 3},
            {"i16", KVF_TYPE_I16, 3},    {"i32", KVF_TYPE_I32, 3},    {"i64", KVF_TYPE_I64, 2},
            {"f64", KVF_TYPE_F64, 2},
        };
        synth_rng r = {42};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            int64_t    ne[2] = {ts[i].ne0, 1};
            sg_tensor *t     = sg_add_tensor(w, ts[i].name, 2, ne, ts[i].type, NULL);
            for (size_t j = 0; j < t->nbytes; j++) t->data[j] = (uint8_t)synth_rng_next(&r);
        }
        bad |= corpus_writer(dir, "tensors-all-types.gguf", w, &total);
    }
    {
        sg_writer *w = corpus_base();
        w->version   = 2;
        bad |= corpus_writer(dir, "base-v2.gguf", w, &total);
    }
    bad |= corpus_writer(dir, "base.gguf", corpus_base(), &total);
    {
        sg_writer *w = sg_new();
        bad |= corpus_writer(dir, "empty-v3.gguf", w, &total);
    }

    /* malformed: one bad field each */
    bad |= corpus_patched(dir, "bad-magic.gguf", at_magic, 0x4C4D4747, 4, &total);
    bad |= corpus_patched(dir, "bad-version-1.gguf", at_version, 1, 4, &total);
    bad |= corpus_patched(dir, "bad-big-endian.gguf", at_version, 0x03000000, 4, &total);
    bad |= corpus_patched(dir, "bad-n-kv.gguf", at_n_kv, 1ull << 40, 8, &total);
    bad |= corpus_patched(dir, "bad-key-len.gguf", at_key_len, 0, 8, &total);
    bad |= corpus_patched(dir, "bad-value-type.gguf", at_value_type, 13, 4, &total);
    bad |= corpus_patched(dir, "bad-str-len.gguf", at_str_len, UINT64_MAX, 8, &total);
    bad |= corpus_patched(dir, "bad-nested-array.gguf", at_arr_type, GGUF_T_ARRAY, 4, &total);
    bad |= corpus_patched(dir, "bad-arr-count.gguf", at_arr_count, 1ull << 60, 8, &total);
    bad |= corpus_patched(dir, "bad-n-dims.gguf", at_n_dims, 5, 4, &total);
    bad |= corpus_patched(dir, "bad-dim-zero.gguf", at_dim1, 0, 8, &total);
    bad |= corpus_patched(dir, "bad-tensor-type.gguf", at_ttype, 4, 4, &total);
    bad |= corpus_patched(dir, "bad-offset-unaligned.gguf", at_toffset, 40, 8, &total);
    bad |= corpus_patched(dir, "bad-offset-eof.gguf", at_toffset, 1u << 20, 8, &total);
    {
        sg_writer *w = corpus_base();
        sg_add_u8(w, "a.str", 1);
        bad |= corpus_writer(dir, "bad-duplicate-key.gguf", w, &total);
    }
    {
        sg_writer *w = corpus_base();
        sg_add_u32(w, "general.alignment", 3);
        bad |= corpus_writer(dir, "bad-alignment.gguf", w, &total);
    }
    {
        sg_writer *w      = corpus_base();
        uint64_t   big[2] = {1ull << 32, 1ull << 32};
        sg_add_tensor_raw(w, "huge", 2, big, KVF_TYPE_F32, NULL, 0);
        bad |= corpus_writer(dir, "bad-element-overflow.gguf", w, &total);
    }
    {
        sg_writer *w     = corpus_base();
        uint64_t   ne[1] = {48};
        sg_add_tensor_raw(w, "rows", 1, ne, KVF_TYPE_Q4_0, NULL, 0);
        bad |= corpus_writer(dir, "bad-row-length.gguf", w, &total);
    }
    if (bad) return 1;
    printf("wrote the GGUF seed corpus to %s (%zu bytes)\n", dir, total);
    return 0;
}

int main(int argc, char **argv) {
    synth_cfg   c;
    const char *out = NULL;
    long        v;
    memset(&c, 0, sizeof c);
    for (int i = 1; i < argc; i++) {
        const char *a   = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--untied")) {
            c.untied = 1;
            continue;
        }
        if (a[0] != '-') {
            if (out) {
                fprintf(stderr, "tool_mkmodel: more than one output file ('%s', '%s')\n", out, a);
                return 2;
            }
            out = a;
            continue;
        }
        if (!val) {
            fprintf(stderr, "tool_mkmodel: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--corpus")) return write_corpus(val);
#define INT_OPT(name, field, lo, hi)                                                           \
    if (!strcmp(a, name)) {                                                                    \
        if (parse_int(a, val, lo, hi, &v)) return 2;                                           \
        c.field = (int32_t)v;                                                                  \
        continue;                                                                              \
    }
        INT_OPT("--layers", n_layer, 1, 64)
        INT_OPT("--embd", n_embd, 2, 8192)
        INT_OPT("--heads", n_head, 1, 256)
        INT_OPT("--kv-heads", n_head_kv, 1, 256)
        INT_OPT("--ff", n_ff, 1, 32768)
        INT_OPT("--ctx", n_ctx, 1, 1 << 24)
        INT_OPT("--merges", n_merges, -1, 100000)
#undef INT_OPT
        if (!strcmp(a, "--arch")) {
            if (strcmp(val, "llama") && strcmp(val, "qwen2")) {
                fprintf(stderr, "tool_mkmodel: --arch: '%s' is not llama or qwen2\n", val);
                return 2;
            }
            c.arch = val;
        } else if (!strcmp(a, "--type")) {
            if (parse_type(a, val, &c.wtype)) return 2;
        } else if (!strcmp(a, "--embd-type")) {
            if (parse_type(a, val, &c.etype)) return 2;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno  = 0;
            c.seed = strtoull(val, &end, 0);
            if (errno || end == val || *end || val[0] == '-') {
                fprintf(stderr, "tool_mkmodel: --seed: '%s' is not an unsigned integer\n", val);
                return 2;
            }
        } else if (!strcmp(a, "--alignment")) {
            if (parse_int(a, val, 1, 1 << 20, &v)) return 2;
            c.alignment = (uint32_t)v;
        } else if (!strcmp(a, "--name")) {
            c.name = val;
        } else if (!strcmp(a, "--rope-base") || !strcmp(a, "--eps")) {
            char *end;
            float f = strtof(val, &end);
            if (end == val || *end || !(f > 0)) {
                fprintf(stderr, "tool_mkmodel: %s: '%s' is not a positive number\n", a, val);
                return 2;
            }
            if (a[2] == 'r')
                c.rope_base = f;
            else
                c.eps = f;
        } else {
            fprintf(stderr, "tool_mkmodel: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!out) {
        usage(stderr);
        return 2;
    }
    synth_info in;
    if (synth_model_file(&c, out, &in) != KVF_OK) {
        fprintf(stderr, "tool_mkmodel: %s\n", kvf_errmsg());
        return 1;
    }
    const synth_cfg *r = &in.cfg;
    printf("%s: %s '%s', %d layers, n_embd %d, %d heads (%d kv, head_dim %d), n_ff %d, "
           "n_ctx %d, vocab %d (%d merges), weights %s, token_embd %s, %s, seed %llu, %zu "
           "bytes\n",
           out, r->arch, r->name, r->n_layer, r->n_embd, r->n_head, r->n_head_kv, in.head_dim,
           r->n_ff, r->n_ctx, in.n_vocab, in.n_merges, kvf_type_name(r->wtype),
           kvf_type_name(r->etype), r->untied ? "untied output" : "tied output",
           (unsigned long long)r->seed, in.file_bytes);
    return 0;
}
