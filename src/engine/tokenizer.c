/* tokenizer.c - byte-level BPE and SentencePiece tokenizers over GGUF vocabularies, and the
 * chat template families (see tokenizer.h for the contracts).
 *
 * Reading order: vocabulary construction and validation (hash maps for token texts and
 * merge pairs, GPT-2 byte map, decoded pieces, special-token table), GGUF loading, the regex
 * pre-tokenizers as hand-written matchers, BPE and SentencePiece merging (both with a
 * priority queue, O(n log n) per word/fragment), encode/decode entry points, chat templates.
 * Not here: Jinja interpretation (template families are recognised, then rendered in C),
 * WordPiece/Unigram models, Unicode normalization.
 */
#include "engine/tokenizer.h"

#include "common.h"
#include "engine/unicode.h"

#include <limits.h>
#include <math.h>
#include <string.h>

enum { MODEL_BPE = 1, MODEL_SPM = 2 };
enum { PRE_GPT2, PRE_SMOLLM, PRE_LLAMA3, PRE_QWEN2, PRE_SPM };
enum { CHAT_NONE, CHAT_CHATML, CHAT_LLAMA3, CHAT_ZEPHYR, CHAT_LLAMA2 };

/* Per-token flag bits (vocab->tflags). */
#define TF_EOG     1u /* ends generation */
#define TF_SPECIAL 2u /* matched in text with KVF_TOK_PARSE_SPECIAL */
#define TF_SPM_OUT 4u /* SentencePiece: a piece the encoder may output (normal, user-defined) */
#define TF_SPM_MRG 8u /* SentencePiece: a piece merging may form (the above, plus unused) */

/* GPT-2 maps bytes to these many code points (0..323). */
#define GPT2_NCP 324

typedef struct {
    uint64_t key; /* left id << 32 | right id; MERGE_EMPTY for a free slot */
    int32_t rank; /* position in tokenizer.ggml.merges: lower merges first */
    int32_t id;   /* the merged token */
} merge_slot;
#define MERGE_EMPTY UINT64_MAX

typedef struct {
    uint8_t first; /* first byte of the text */
    uint32_t len;
    int32_t id;
} special_ent;

struct kvf_vocab {
    int model; /* MODEL_* */
    int pre;   /* PRE_* */
    int32_t n_tokens;

    char *text;        /* token texts as in tokenizer.ggml.tokens, back to back */
    size_t *text_off;  /* [n_tokens + 1]: token i is text[text_off[i] .. text_off[i+1]) */
    char *piece;       /* decoded bytes of each token (GPT-2 bytes, "▁" -> " ", <0xXX>) */
    size_t *piece_off; /* [n_tokens + 1] */
    uint8_t *type;     /* [n_tokens] KVF_TOKT_* */
    uint8_t *tflags;   /* [n_tokens] TF_* */
    float *score;      /* [n_tokens] SentencePiece scores (NaN replaced by -inf) */

    int32_t *map; /* open addressing, token text -> lowest id with that text; -1 = free */
    size_t map_mask;

    merge_slot *merges; /* open addressing over (left, right) id pairs */
    unsigned merge_bits;

    int32_t byte_tok[256];     /* BPE: token of the byte's GPT-2 character; SPM: <0xXX>; -1 */
    char byte_chr[256][2];     /* BPE: UTF-8 of the byte's GPT-2 character ... */
    uint8_t byte_chr_len[256]; /* ... which is 1 or 2 bytes long */
    bool ignore_merges;        /* BPE: a word that is a token is that token (Llama 3) */

    special_ent *special; /* by first byte, then longest first */
    int32_t n_special;
    int32_t n_user_defined;     /* of them USER_DEFINED: matched even without PARSE_SPECIAL */
    int32_t special_start[257]; /* special[special_start[b] .. special_start[b+1]) */

    int32_t bos, eos, unk, eot, eom;
    bool add_bos, add_space_prefix;

    int chat;          /* CHAT_* */
    char *chat_system; /* ChatML default system message, when the template has one */
};

/* ---- small helpers --------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static const char *tok_text(const kvf_vocab *v, int32_t id) {
    return v->text + v->text_off[id];
}
static size_t tok_len(const kvf_vocab *v, int32_t id) {
    return v->text_off[id + 1] - v->text_off[id];
}

int32_t kvf_vocab_find(const kvf_vocab *v, const char *s, size_t n) {
    if (!v || (!s && n)) return -1;
    size_t i = (size_t)hash_bytes(s, n) & v->map_mask;
    for (;;) {
        int32_t id = v->map[i];
        if (id < 0) return -1;
        if (tok_len(v, id) == n && (n == 0 || memcmp(tok_text(v, id), s, n) == 0)) return id;
        i = (i + 1) & v->map_mask;
    }
}

static const merge_slot *merge_find(const kvf_vocab *v, int32_t a, int32_t b) {
    if (!v->merges) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = ((size_t)1 << v->merge_bits) - 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - v->merge_bits));
    for (;;) {
        const merge_slot *m = &v->merges[i];
        if (m->key == key) return m;
        if (m->key == MERGE_EMPTY) return NULL;
        i = (i + 1) & mask;
    }
}

/* GPT-2's reversible byte -> code point map: printable Latin-1 bytes stand for themselves,
 * the other 68 bytes are moved to U+0100.. in byte order. */
static void gpt2_byte_map(uint32_t cp_of_byte[256], int16_t byte_of_cp[GPT2_NCP]) {
    uint32_t n = 0;
    for (int i = 0; i < GPT2_NCP; i++)
        byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        cp_of_byte[b] = keep ? (uint32_t)b : 256 + n++;
        byte_of_cp[cp_of_byte[b]] = (int16_t)b;
    }
}

/* Python's str.isspace() (White_Space plus U+001C..U+001F), which Jinja's trim uses. */
static bool py_space(uint32_t cp) {
    return (kvf_unicode_class(cp) & KVF_U_SPACE) || (cp >= 0x1C && cp <= 0x1F);
}

/* A growable byte buffer; `oom` sticks once an allocation fails. */
typedef struct {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom || n == 0) return;
    if (n > SIZE_MAX / 2 - b->n) {
        b->oom = true;
        return;
    }
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        char *p = kvf_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p, b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void sb_puts(sbuf *b, const char *s) {
    sb_put(b, s, strlen(s));
}

/* ---- building a vocabulary ----------------------------------------------------------- */

kvf_vocab_spec kvf_vocab_spec_default(void) {
    kvf_vocab_spec s;
    memset(&s, 0, sizeof s);
    s.bos = s.eos = s.unk = s.eot = s.eom = -1;
    s.add_bos = s.add_space_prefix = -1;
    return s;
}

void kvf_vocab_free(kvf_vocab *v) {
    if (!v) return;
    kvf_free(v->text);
    kvf_free(v->text_off);
    kvf_free(v->piece);
    kvf_free(v->piece_off);
    kvf_free(v->type);
    kvf_free(v->tflags);
    kvf_free(v->score);
    kvf_free(v->map);
    kvf_free(v->merges);
    kvf_free(v->special);
    kvf_free(v->chat_system);
    kvf_free(v);
}

static size_t pow2_at_least(size_t n) {
    size_t p = 16;
    while (p < n)
        p *= 2;
    return p;
}

static kvf_status build_map(kvf_vocab *v) {
    size_t cap = pow2_at_least((size_t)v->n_tokens * 2);
    v->map = kvf_malloc(cap * sizeof *v->map);
    if (!v->map) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
    memset(v->map, 0xFF, cap * sizeof *v->map);
    v->map_mask = cap - 1;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        const char *s = tok_text(v, id);
        size_t n = tok_len(v, id), i = (size_t)hash_bytes(s, n) & v->map_mask;
        for (;;) {
            int32_t o = v->map[i];
            if (o < 0) {
                v->map[i] = id;
                break;
            }
            if (tok_len(v, o) == n && (n == 0 || memcmp(tok_text(v, o), s, n) == 0)) break;
            i = (i + 1) & v->map_mask;
        }
    }
    return KVF_OK;
}

static kvf_status build_merges(kvf_vocab *v, const kvf_vocab_spec *spec) {
    if (spec->n_merges < 0 || (spec->n_merges > 0 && !spec->merges))
        return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.merges: bad count %d", spec->n_merges);
    if (spec->n_merges == 0) return KVF_OK;
    unsigned bits = 4;
    while (((size_t)1 << bits) < (size_t)spec->n_merges * 2)
        bits++;
    size_t cap = (size_t)1 << bits;
    v->merge_bits = bits;
    v->merges = kvf_malloc(cap * sizeof *v->merges);
    if (!v->merges) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < cap; i++)
        v->merges[i].key = MERGE_EMPTY;

    sbuf cat = {0};
    kvf_status st = KVF_OK;
    for (int32_t r = 0; r < spec->n_merges; r++) {
        const char *m = spec->merges[r].s;
        size_t n = (size_t)spec->merges[r].n;
        const char *sp = n ? memchr(m, ' ', n) : NULL;
        if (!sp) {
            st = kvf_set_error(KVF_E_FORMAT,
                               "tokenizer.ggml.merges[%d] '%.*s' is not \"left right\"", r,
                               (int)KVF_MIN(n, 64), m ? m : "");
            break;
        }
        size_t nl = (size_t)(sp - m), nr = n - nl - 1;
        int32_t a = kvf_vocab_find(v, m, nl), b = kvf_vocab_find(v, sp + 1, nr);
        if (a < 0 || b < 0) {
            st = kvf_set_error(
                KVF_E_FORMAT, "tokenizer.ggml.merges[%d] '%.*s': '%.*s' is not a token", r,
                (int)KVF_MIN(n, 64), m, (int)KVF_MIN(a < 0 ? nl : nr, 64), a < 0 ? m : sp + 1);
            break;
        }
        cat.n = 0;
        sb_put(&cat, m, nl);
        sb_put(&cat, sp + 1, nr);
        if (cat.oom) {
            st = kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
            break;
        }
        int32_t c = kvf_vocab_find(v, cat.p ? cat.p : "", cat.n);
        if (c < 0) {
            st = kvf_set_error(KVF_E_FORMAT,
                               "tokenizer.ggml.merges[%d] '%.*s': the merged token is not in "
                               "tokenizer.ggml.tokens",
                               r, (int)KVF_MIN(n, 64), m);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> (64 - bits));
        while (v->merges[i].key != MERGE_EMPTY && v->merges[i].key != key)
            i = (i + 1) & (cap - 1);
        if (v->merges[i].key == MERGE_EMPTY) { /* a repeated pair keeps its first rank */
            v->merges[i].key = key;
            v->merges[i].rank = r;
            v->merges[i].id = c;
        }
    }
    kvf_free(cat.p);
    return st;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decoded bytes of every token, and the byte -> token table. */
static kvf_status build_pieces(kvf_vocab *v) {
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[GPT2_NCP];
    gpt2_byte_map(cp_of_byte, byte_of_cp);
    for (int b = 0; b < 256; b++)
        v->byte_tok[b] = -1;

    v->piece = kvf_malloc(v->text_off[v->n_tokens] + 1); /* pieces never grow */
    v->piece_off = kvf_malloc(((size_t)v->n_tokens + 1) * sizeof *v->piece_off);
    if (!v->piece || !v->piece_off) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");

    size_t o = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        const char *s = tok_text(v, id);
        size_t n = tok_len(v, id);
        int t = v->type[id];
        v->piece_off[id] = o;
        bool raw = t == KVF_TOKT_CONTROL || t == KVF_TOKT_UNKNOWN ||
                   (v->model == MODEL_BPE && t == KVF_TOKT_USER_DEFINED);
        if (raw) {
            memcpy(v->piece + o, s, n);
            o += n;
        } else if (v->model == MODEL_SPM && t == KVF_TOKT_BYTE) {
            int hi = n == 6 ? hexval(s[3]) : -1, lo = n == 6 ? hexval(s[4]) : -1;
            if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>' || hi < 0 || lo < 0)
                return kvf_set_error(KVF_E_FORMAT,
                                     "tokenizer.ggml.tokens[%d] '%.*s' has type BYTE but is not "
                                     "<0xXX>",
                                     id, (int)KVF_MIN(n, 64), s);
            int byte = hi * 16 + lo;
            v->piece[o++] = (char)byte;
            if (v->byte_tok[byte] < 0) v->byte_tok[byte] = id;
        } else if (v->model == MODEL_SPM) { /* "▁" (U+2581) stands for a space */
            for (size_t i = 0; i < n;) {
                if (i + 3 <= n && memcmp(s + i, "\xE2\x96\x81", 3) == 0) {
                    v->piece[o++] = ' ';
                    i += 3;
                } else {
                    v->piece[o++] = s[i++];
                }
            }
        } else { /* byte-level BPE: each GPT-2 character is one byte */
            for (size_t i = 0; i < n;) {
                size_t cl;
                uint32_t cp = kvf_utf8_decode(s + i, n - i, &cl);
                if (cp < GPT2_NCP && byte_of_cp[cp] >= 0) {
                    v->piece[o++] = (char)byte_of_cp[cp];
                } else { /* not a GPT-2 character: keep its bytes */
                    memcpy(v->piece + o, s + i, cl);
                    o += cl;
                }
                i += cl;
            }
        }
    }
    v->piece_off[v->n_tokens] = o;

    if (v->model == MODEL_BPE) {
        for (int b = 0; b < 256; b++) {
            char u[4];
            size_t n = kvf_utf8_encode(cp_of_byte[b], u);
            KVF_ASSERT(n == 1 || n == 2);
            v->byte_tok[b] = kvf_vocab_find(v, u, n);
            memcpy(v->byte_chr[b], u, n);
            v->byte_chr_len[b] = (uint8_t)n;
        }
    }
    return KVF_OK;
}

static int cmp_special(const void *pa, const void *pb) {
    const special_ent *a = pa, *b = pb;
    if (a->first != b->first) return a->first < b->first ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

static kvf_status build_specials(kvf_vocab *v) {
    int32_t n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        if ((v->type[id] == KVF_TOKT_CONTROL || v->type[id] == KVF_TOKT_USER_DEFINED) &&
            tok_len(v, id) > 0 && tok_len(v, id) <= UINT32_MAX)
            n++;
    v->special = kvf_malloc(((size_t)n + 1) * sizeof *v->special);
    if (!v->special) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
    n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        size_t len = tok_len(v, id);
        if ((v->type[id] == KVF_TOKT_CONTROL || v->type[id] == KVF_TOKT_USER_DEFINED) && len > 0 &&
            len <= UINT32_MAX) {
            v->special[n++] = (special_ent){(uint8_t)tok_text(v, id)[0], (uint32_t)len, id};
            v->tflags[id] |= TF_SPECIAL;
            v->n_user_defined += v->type[id] == KVF_TOKT_USER_DEFINED;
        }
    }
    v->n_special = n;
    qsort(v->special, (size_t)n, sizeof *v->special, cmp_special);
    int32_t k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < n && v->special[k].first < b)
            k++;
        v->special_start[b] = k;
    }
    return KVF_OK;
}

static void mark_eog(kvf_vocab *v) {
    static const char *const eog_texts[] = {
        "<|im_end|>",    "<|eot_id|>",    "<|eom_id|>", "<|end_of_text|>",
        "<|endoftext|>", "<end_of_turn>", "</s>",       "<|end|>",
    };
    int32_t ids[] = {v->eos, v->eot, v->eom};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i] >= 0) v->tflags[ids[i]] |= TF_EOG;
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++) {
        int32_t id = kvf_vocab_find(v, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0 && (v->type[id] == KVF_TOKT_CONTROL || v->type[id] == KVF_TOKT_USER_DEFINED))
            v->tflags[id] |= TF_EOG;
    }
}

static bool has_sub(const char *hay, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m > n) return false;
    for (size_t i = 0; i + m <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, m) == 0) return true;
    return false;
}

/* A ChatML template that inserts a default system turn holds it as one string literal:
 * '<|im_start|>system\n...<|im_end|>' with a real newline or a "\n" escape. Returns it
 * (unescaped, allocated) or NULL. */
static char *chatml_default_system(const char *t, size_t n, bool *oom) {
    static const char head[] = "<|im_start|>system";
    static const char tail[] = "<|im_end|>";
    const size_t nh = sizeof head - 1, nt = sizeof tail - 1;
    for (size_t i = 0; i + nh <= n; i++) {
        if (memcmp(t + i, head, nh) != 0) continue;
        size_t j = i + nh;
        if (j < n && t[j] == '\n')
            j += 1;
        else if (j + 1 < n && t[j] == '\\' && t[j + 1] == 'n')
            j += 2;
        else
            continue;
        size_t k = j;
        while (k + nt <= n && memcmp(t + k, tail, nt) != 0 && !strchr("'\"{}", t[k]))
            k++;
        if (k + nt > n || memcmp(t + k, tail, nt) != 0 || k == j) continue;
        char *out = kvf_malloc(k - j + 1);
        if (!out) {
            *oom = true;
            return NULL;
        }
        size_t o = 0;
        for (size_t p = j; p < k; p++) {
            if (t[p] == '\\' && p + 1 < k && t[p + 1] == 'n') {
                out[o++] = '\n';
                p++;
            } else {
                out[o++] = t[p];
            }
        }
        out[o] = 0;
        return out;
    }
    return NULL;
}

static kvf_status detect_chat(kvf_vocab *v, const kvf_vocab_spec *spec) {
    const char *t = spec->chat_template.s;
    size_t n = t ? (size_t)spec->chat_template.n : 0;
    if (n > 0) {
        if (has_sub(t, n, "<|im_start|>"))
            v->chat = CHAT_CHATML;
        else if (has_sub(t, n, "<|start_header_id|>"))
            v->chat = CHAT_LLAMA3;
        else if (has_sub(t, n, "[INST]"))
            v->chat = CHAT_LLAMA2;
        else if (has_sub(t, n, "<|user|>") && !has_sub(t, n, "<|end|>"))
            v->chat = CHAT_ZEPHYR;
        else
            kvf_log(KVF_LOG_INFO, "tokenizer: chat template not recognised; chat formatting is "
                                  "unavailable");
        if (v->chat == CHAT_CHATML) {
            bool oom = false;
            v->chat_system = chatml_default_system(t, n, &oom);
            if (oom) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
        }
        return KVF_OK;
    }
    /* No template: the vocabulary's turn tokens, then the architecture. */
    const char *arch = spec->arch ? spec->arch : "";
    if (kvf_vocab_find(v, "<|im_start|>", 12) >= 0)
        v->chat = CHAT_CHATML;
    else if (kvf_vocab_find(v, "<|start_header_id|>", 19) >= 0)
        v->chat = CHAT_LLAMA3;
    else if (strcmp(arch, "qwen2") == 0 || strcmp(arch, "qwen2moe") == 0)
        v->chat = CHAT_CHATML;
    else if (strcmp(arch, "llama") == 0)
        v->chat = CHAT_LLAMA2;
    return KVF_OK;
}

static int pre_from_name(const char *pre) {
    static const struct {
        const char *name;
        int pre;
    } names[] = {
        {"default", PRE_GPT2},  {"gpt2", PRE_GPT2},        {"gpt-2", PRE_GPT2},
        {"smollm", PRE_SMOLLM}, {"starcoder", PRE_SMOLLM}, {"refact", PRE_SMOLLM},
        {"llama3", PRE_LLAMA3}, {"llama-bpe", PRE_LLAMA3}, {"smaug-bpe", PRE_LLAMA3},
        {"qwen2", PRE_QWEN2},
    };
    if (!pre || !*pre) return PRE_GPT2;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(pre, names[i].name) == 0) return names[i].pre;
    kvf_log(KVF_LOG_WARN, "tokenizer: unknown pre-tokenizer '%s'; using the GPT-2 one", pre);
    return PRE_GPT2;
}

static kvf_status check_id(const char *key, int64_t id, int32_t n_tokens, int32_t *out) {
    if (id < -1 || id >= n_tokens)
        return kvf_set_error(KVF_E_FORMAT, "%s = %lld is out of range (%d tokens)", key,
                             (long long)id, n_tokens);
    *out = (int32_t)id;
    return KVF_OK;
}

kvf_status kvf_vocab_build(const kvf_vocab_spec *spec, kvf_vocab **out) {
    if (!out) return kvf_set_error(KVF_E_INVAL, "kvf_vocab_build: out is NULL");
    *out = NULL;
    if (!spec) return kvf_set_error(KVF_E_INVAL, "kvf_vocab_build: spec is NULL");
    int model = 0;
    if (spec->model && strcmp(spec->model, "gpt2") == 0) model = MODEL_BPE;
    if (spec->model && strcmp(spec->model, "llama") == 0) model = MODEL_SPM;
    if (!model)
        return kvf_set_error(KVF_E_UNSUPPORTED,
                             "tokenizer.ggml.model '%s' is not supported (gpt2 or llama)",
                             spec->model ? spec->model : "(none)");
    const int32_t n = spec->n_tokens;
    if (n <= 0 || !spec->tokens)
        return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens: no tokens");
    if (n > (1 << 28))
        return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens: %d tokens is too many", n);

    kvf_vocab *v = kvf_calloc(1, sizeof *v);
    if (!v) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
    kvf_status st = KVF_OK;
    v->model = model;
    v->n_tokens = n;
    v->pre = model == MODEL_SPM ? PRE_SPM : pre_from_name(spec->pre);
    v->ignore_merges = v->pre == PRE_LLAMA3;

    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (spec->tokens[i].n && !spec->tokens[i].s) {
            st = kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens[%d]: NULL text", i);
            goto fail;
        }
        if (spec->tokens[i].n > SIZE_MAX / 4 ||
            kvf_add_size(total, (size_t)spec->tokens[i].n, &total)) {
            st = kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens: texts too large");
            goto fail;
        }
    }
    v->text = kvf_malloc(total + 1);
    v->text_off = kvf_malloc(((size_t)n + 1) * sizeof *v->text_off);
    v->type = kvf_malloc((size_t)n);
    v->tflags = kvf_calloc((size_t)n, 1);
    v->score = kvf_malloc((size_t)n * sizeof *v->score);
    if (!v->text || !v->text_off || !v->type || !v->tflags || !v->score) {
        st = kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
        goto fail;
    }
    size_t o = 0;
    for (int32_t i = 0; i < n; i++) {
        v->text_off[i] = o;
        if (spec->tokens[i].n) memcpy(v->text + o, spec->tokens[i].s, (size_t)spec->tokens[i].n);
        o += (size_t)spec->tokens[i].n;
        int32_t t = spec->types ? spec->types[i] : KVF_TOKT_NORMAL;
        if (t < KVF_TOKT_UNDEFINED || t > KVF_TOKT_BYTE) {
            st = kvf_set_error(KVF_E_FORMAT,
                               "tokenizer.ggml.token_type[%d] = %d is not a token type", i, t);
            goto fail;
        }
        v->type[i] = (uint8_t)(t == KVF_TOKT_UNDEFINED ? KVF_TOKT_NORMAL : t);
        float s = spec->scores ? spec->scores[i] : 0.0f;
        v->score[i] = isnan(s) ? -INFINITY : s;
        if (v->type[i] == KVF_TOKT_NORMAL || v->type[i] == KVF_TOKT_USER_DEFINED)
            v->tflags[i] |= TF_SPM_OUT | TF_SPM_MRG;
        if (v->type[i] == KVF_TOKT_UNUSED) v->tflags[i] |= TF_SPM_MRG;
    }
    v->text_off[n] = o;

    if ((st = check_id("tokenizer.ggml.bos_token_id", spec->bos, n, &v->bos)) ||
        (st = check_id("tokenizer.ggml.eos_token_id", spec->eos, n, &v->eos)) ||
        (st = check_id("tokenizer.ggml.unknown_token_id", spec->unk, n, &v->unk)) ||
        (st = check_id("tokenizer.ggml.eot_token_id", spec->eot, n, &v->eot)) ||
        (st = check_id("tokenizer.ggml.eom_token_id", spec->eom, n, &v->eom)))
        goto fail;
    v->add_bos = spec->add_bos >= 0 ? spec->add_bos != 0 : model == MODEL_SPM;
    v->add_space_prefix =
        model == MODEL_SPM && (spec->add_space_prefix >= 0 ? spec->add_space_prefix != 0 : true);

    if ((st = build_map(v)) || (st = build_pieces(v)) || (st = build_specials(v))) goto fail;
    if (model == MODEL_BPE && (st = build_merges(v, spec))) goto fail;
    if (model == MODEL_BPE) {
        int missing = 0;
        for (int b = 0; b < 256; b++)
            missing += v->byte_tok[b] < 0;
        if (missing) kvf_log(KVF_LOG_DEBUG, "tokenizer: no token for %d of the 256 bytes", missing);
    }
    mark_eog(v);
    if ((st = detect_chat(v, spec))) goto fail;
    *out = v;
    return KVF_OK;
fail:
    kvf_vocab_free(v);
    return st;
}

/* ---- loading from GGUF --------------------------------------------------------------- */

/* Optional string key copied into buf (NUL-terminated); "" when absent. */
static kvf_status get_small_str(const gguf_file *f, const char *key, char *buf, size_t cap) {
    gguf_str s;
    kvf_status st = gguf_get_str(f, key, &s);
    buf[0] = 0;
    if (st == KVF_E_NOTFOUND) return KVF_OK;
    if (st) return st;
    if (s.n >= cap || (s.n && memchr(s.s, 0, (size_t)s.n)))
        return kvf_set_error(KVF_E_FORMAT, "%s: value too long or contains NUL", key);
    if (s.n) memcpy(buf, s.s, (size_t)s.n);
    buf[s.n] = 0;
    return KVF_OK;
}

static kvf_status get_opt_id(const gguf_file *f, const char *key, int64_t *out) {
    kvf_status st = gguf_get_i64(f, key, out);
    if (st == KVF_E_NOTFOUND) {
        *out = -1;
        return KVF_OK;
    }
    return st;
}

static kvf_status get_opt_bool(const gguf_file *f, const char *key, int *out) {
    kvf_status st = gguf_get_bool(f, key, out);
    if (st == KVF_E_NOTFOUND) {
        *out = -1;
        return KVF_OK;
    }
    if (st == KVF_OK) *out = *out != 0;
    return st;
}

kvf_status kvf_vocab_load(const gguf_file *f, kvf_vocab **out) {
    if (!out) return kvf_set_error(KVF_E_INVAL, "kvf_vocab_load: out is NULL");
    *out = NULL;
    if (!f) return kvf_set_error(KVF_E_INVAL, "kvf_vocab_load: file is NULL");
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    char model[32], pre[64], arch[64];
    int32_t *types = NULL;
    float *scores = NULL;
    const gguf_kv *kv;
    kvf_status st;

    if ((st = get_small_str(f, "tokenizer.ggml.model", model, sizeof model))) return st;
    if (!model[0])
        return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.model: missing (no tokenizer in file)");
    if ((st = get_small_str(f, "tokenizer.ggml.pre", pre, sizeof pre)) ||
        (st = get_small_str(f, "general.architecture", arch, sizeof arch)))
        return st;
    sp.model = model;
    sp.pre = pre;
    sp.arch = arch;

    st = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_T_STRING, &kv);
    if (st == KVF_E_NOTFOUND) return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens: missing");
    if (st) return st;
    if (kv->n == 0 || kv->n > (1u << 28))
        return kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.tokens: bad count %llu",
                             (unsigned long long)kv->n);
    sp.tokens = kv->strs;
    sp.n_tokens = (int32_t)kv->n;
    uint64_t n = kv->n;

    st = gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_T_INT32, &kv);
    if (st == KVF_OK) {
        if (kv->n != n)
            return kvf_set_error(KVF_E_FORMAT,
                                 "tokenizer.ggml.token_type has %llu entries but "
                                 "tokenizer.ggml.tokens has %llu",
                                 (unsigned long long)kv->n, (unsigned long long)n);
        types = kvf_malloc((size_t)n * sizeof *types);
        if (!types) return kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
        for (uint64_t i = 0; i < n; i++)
            types[i] = gguf_arr_i32(kv, i);
        sp.types = types;
    } else if (st != KVF_E_NOTFOUND) {
        return st;
    }

    st = gguf_get_arr(f, "tokenizer.ggml.scores", GGUF_T_FLOAT32, &kv);
    if (st == KVF_OK) {
        if (kv->n != n) {
            st = kvf_set_error(KVF_E_FORMAT,
                               "tokenizer.ggml.scores has %llu entries but tokenizer.ggml.tokens "
                               "has %llu",
                               (unsigned long long)kv->n, (unsigned long long)n);
            goto done;
        }
        scores = kvf_malloc((size_t)n * sizeof *scores);
        if (!scores) {
            st = kvf_set_error(KVF_E_NOMEM, "tokenizer: out of memory");
            goto done;
        }
        for (uint64_t i = 0; i < n; i++)
            scores[i] = gguf_arr_f32(kv, i);
        sp.scores = scores;
    } else if (st != KVF_E_NOTFOUND) {
        goto done;
    }

    st = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_T_STRING, &kv);
    if (st == KVF_OK) {
        if (kv->n > INT32_MAX) {
            st = kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.merges: bad count %llu",
                               (unsigned long long)kv->n);
            goto done;
        }
        sp.merges = kv->strs;
        sp.n_merges = (int32_t)kv->n;
    } else if (st != KVF_E_NOTFOUND) {
        goto done;
    } else if (strcmp(model, "gpt2") == 0) {
        st = kvf_set_error(KVF_E_FORMAT, "tokenizer.ggml.merges: missing (required by gpt2)");
        goto done;
    }

    if ((st = get_opt_id(f, "tokenizer.ggml.bos_token_id", &sp.bos)) ||
        (st = get_opt_id(f, "tokenizer.ggml.eos_token_id", &sp.eos)) ||
        (st = get_opt_id(f, "tokenizer.ggml.unknown_token_id", &sp.unk)) ||
        (st = get_opt_id(f, "tokenizer.ggml.eot_token_id", &sp.eot)) ||
        (st = get_opt_id(f, "tokenizer.ggml.eom_token_id", &sp.eom)) ||
        (st = get_opt_bool(f, "tokenizer.ggml.add_bos_token", &sp.add_bos)) ||
        (st = get_opt_bool(f, "tokenizer.ggml.add_space_prefix", &sp.add_space_prefix)))
        goto done;

    st = gguf_get_str(f, "tokenizer.chat_template", &sp.chat_template);
    if (st == KVF_E_NOTFOUND) {
        sp.chat_template = (gguf_str){NULL, 0};
    } else if (st) {
        goto done;
    }
    st = kvf_vocab_build(&sp, out);
done:
    kvf_free(types);
    kvf_free(scores);
    return st;
}

/* ---- accessors ------------------------------------------------------------------------- */

int32_t kvf_vocab_n_tokens(const kvf_vocab *v) {
    return v ? v->n_tokens : 0;
}
int32_t kvf_vocab_bos(const kvf_vocab *v) {
    return v ? v->bos : -1;
}
int32_t kvf_vocab_eos(const kvf_vocab *v) {
    return v ? v->eos : -1;
}
bool kvf_vocab_is_eog(const kvf_vocab *v, int32_t id) {
    return v && id >= 0 && id < v->n_tokens && (v->tflags[id] & TF_EOG);
}
int kvf_vocab_token_type(const kvf_vocab *v, int32_t id) {
    return v && id >= 0 && id < v->n_tokens ? v->type[id] : -1;
}
bool kvf_vocab_add_bos(const kvf_vocab *v) {
    return v && v->add_bos && v->bos >= 0;
}
const char *kvf_vocab_pre_name(const kvf_vocab *v) {
    static const char *const names[] = {"gpt2", "smollm", "llama3", "qwen2", "spm"};
    return v ? names[v->pre] : "none";
}
const char *kvf_vocab_chat_template_name(const kvf_vocab *v) {
    static const char *const names[] = {"none", "chatml", "llama3", "zephyr", "llama2"};
    return v ? names[v->chat] : "none";
}

/* ---- encoding: scratch state --------------------------------------------------------- */

/* Character classes for the pre-tokenizer matchers: KVF_U_* plus these. */
#define C_L         KVF_U_LETTER
#define C_N         KVF_U_NUMBER
#define C_S         KVF_U_SPACE
#define C_NL        8u  /* \r or \n */
#define C_SP        16u /* ' ' */
#define C_AP        32u /* '\'' */
#define IS_OTHER(c) (!((c) & (C_L | C_N | C_S)))

/* Priority-queue entry: lower `pri` first, then lower `l` (the left symbol's position). */
typedef struct {
    double pri;
    int32_t l, r; /* left and right symbol */
    int32_t a, b; /* BPE: their ids when queued; SPM: a = merged length in bytes */
    int32_t m;    /* the merged token */
} qent;

typedef struct {
    /* output ids */
    int32_t *ids;
    size_t n_ids, cap_ids;
    /* characters of the current fragment */
    uint32_t *cp;
    uint8_t *cl;
    size_t *off; /* byte offset of each character, plus one past the end */
    size_t cap_ch;
    /* merge symbols: a linked list over positions */
    int32_t *sid, *prev, *next, *node;
    size_t *sstart, *slen;
    size_t cap_sym;
    /* SentencePiece merge tree: node = a byte span with its two halves (-1 for a leaf) */
    size_t *nstart, *nlen;
    int32_t *nleft, *nright;
    size_t n_nodes, cap_nodes;
    /* priority queue */
    qent *q;
    size_t n_q, cap_q;
    /* normalized SentencePiece text; Llama 3 whole-word lookups */
    sbuf norm;
    /* kvf_vocab_pretokenize: end offsets of the pre-tokens */
    const char *base;
    size_t *ends;
    size_t n_ends, cap_ends;
    bool oom;
} enc;

static bool grow(enc *e, void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 64;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) {
            e->oom = true;
            return false;
        }
        c *= 2;
    }
    void *np = kvf_realloc(*p, c * elem);
    if (!np) {
        e->oom = true;
        return false;
    }
    *p = np, *cap = c;
    return true;
}

static void push_id(enc *e, int32_t id) {
    if (id < 0) return;
    if (e->n_ids == e->cap_ids &&
        !grow(e, (void **)&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids))
        return;
    e->ids[e->n_ids++] = id;
}

static bool sym_reserve(enc *e, size_t n) {
    if (n <= e->cap_sym) return true;
    size_t c = e->cap_sym;
    /* all arrays share one capacity */
    size_t c0 = c;
    if (!grow(e, (void **)&e->sid, &c, n, sizeof *e->sid)) return false;
    c = c0;
    if (!grow(e, (void **)&e->prev, &c, n, sizeof *e->prev)) return false;
    c = c0;
    if (!grow(e, (void **)&e->next, &c, n, sizeof *e->next)) return false;
    c = c0;
    if (!grow(e, (void **)&e->node, &c, n, sizeof *e->node)) return false;
    c = c0;
    if (!grow(e, (void **)&e->sstart, &c, n, sizeof *e->sstart)) return false;
    c = c0;
    if (!grow(e, (void **)&e->slen, &c, n, sizeof *e->slen)) return false;
    e->cap_sym = c;
    return true;
}

static bool ch_reserve(enc *e, size_t n) {
    if (n <= e->cap_ch) return true;
    size_t c0 = e->cap_ch, c = c0;
    if (!grow(e, (void **)&e->cp, &c, n, sizeof *e->cp)) return false;
    c = c0;
    if (!grow(e, (void **)&e->cl, &c, n, sizeof *e->cl)) return false;
    c = c0;
    if (!grow(e, (void **)&e->off, &c, n, sizeof *e->off)) return false;
    e->cap_ch = c;
    return true;
}

static void enc_free(enc *e) {
    kvf_free(e->ids);
    kvf_free(e->cp);
    kvf_free(e->cl);
    kvf_free(e->off);
    kvf_free(e->sid);
    kvf_free(e->prev);
    kvf_free(e->next);
    kvf_free(e->node);
    kvf_free(e->sstart);
    kvf_free(e->slen);
    kvf_free(e->nstart);
    kvf_free(e->nlen);
    kvf_free(e->nleft);
    kvf_free(e->nright);
    kvf_free(e->q);
    kvf_free(e->norm.p);
    kvf_free(e->ends);
}

static bool q_less(const qent *x, const qent *y) {
    return x->pri < y->pri || (x->pri == y->pri && x->l < y->l);
}

static void q_push(enc *e, qent x) {
    if (e->n_q == e->cap_q && !grow(e, (void **)&e->q, &e->cap_q, e->n_q + 1, sizeof *e->q)) return;
    size_t i = e->n_q++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!q_less(&x, &e->q[p])) break;
        e->q[i] = e->q[p];
        i = p;
    }
    e->q[i] = x;
}

static bool q_pop(enc *e, qent *out) {
    if (e->n_q == 0) return false;
    *out = e->q[0];
    qent x = e->q[--e->n_q];
    size_t i = 0, n = e->n_q;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && q_less(&e->q[c + 1], &e->q[c])) c++;
        if (!q_less(&e->q[c], &x)) break;
        e->q[i] = e->q[c];
        i = c;
    }
    if (n) e->q[i] = x;
    return true;
}

/* Decode s[0..n) into e->cp / e->cl / e->off. Returns the number of characters. */
static size_t decode_chars(enc *e, const char *s, size_t n) {
    if (!ch_reserve(e, n + 1)) return 0;
    size_t k = 0;
    for (size_t i = 0; i < n; k++) {
        size_t len;
        uint32_t cp = kvf_utf8_decode(s + i, n - i, &len);
        unsigned c = kvf_unicode_class(cp);
        if (cp == '\r' || cp == '\n') c |= C_NL;
        if (cp == ' ') c |= C_SP;
        if (cp == '\'') c |= C_AP;
        e->cp[k] = cp;
        e->cl[k] = (uint8_t)c;
        e->off[k] = i;
        i += len;
    }
    e->off[k] = n;
    return k;
}

/* ---- pre-tokenizers ------------------------------------------------------------------ */
/* Each matcher returns the end of the match that its regex finds at character i of
 * [i, end). The regexes' alternatives are tried in order, as a backtracking engine would;
 * every character is matched by some alternative, so matches tile the text. */

static size_t run_of(const uint8_t *cl, size_t i, size_t end, unsigned cls) {
    while (i < end && (cl[i] & cls))
        i++;
    return i;
}
static size_t run_other(const uint8_t *cl, size_t i, size_t end) {
    while (i < end && IS_OTHER(cl[i]))
        i++;
    return i;
}

/* \s+(?!\S)|\s+ at a white-space character i. */
static size_t match_space_tail(const uint8_t *cl, size_t i, size_t end) {
    size_t j = run_of(cl, i, end, C_S);
    if (j == end) return j;       /* \s+ up to the end */
    if (j - i >= 2) return j - 1; /* leave the last one to prefix the next word */
    return j;                     /* \s+ */
}

/* Simple case folding, as far as the contraction letters need it: ASCII, and U+017F (long s),
 * which folds to 's'. */
static int fold_char(uint32_t c) {
    if (c >= 'A' && c <= 'Z') return (int)(c + 32);
    if (c == 0x17F) return 's';
    return c < 128 ? (int)c : -1;
}

/* 's|'t|'re|'ve|'m|'ll|'d (case-insensitive when ci). Returns 0 when no match. */
static size_t match_contraction(const uint32_t *cp, size_t i, size_t end, bool ci) {
    if (i + 1 >= end) return 0;
    int a = ci ? fold_char(cp[i + 1]) : (cp[i + 1] < 128 ? (int)cp[i + 1] : -1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 >= end) return 0;
    int b = ci ? fold_char(cp[i + 2]) : (cp[i + 2] < 128 ? (int)cp[i + 2] : -1);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    return 0;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint32_t *cp, const uint8_t *cl, size_t i, size_t end) {
    uint8_t c0 = cl[i];
    if (c0 & C_AP) {
        size_t k = match_contraction(cp, i, end, false);
        if (k) return k;
    }
    size_t j = (c0 & C_SP) && i + 1 < end ? i + 1 : i; /* the optional leading space */
    uint8_t c1 = cl[j];
    if (c0 & C_L) return run_of(cl, i, end, C_L);
    if (j > i && (c1 & C_L)) return run_of(cl, j, end, C_L);
    if (c0 & C_N) return run_of(cl, i, end, C_N);
    if (j > i && (c1 & C_N)) return run_of(cl, j, end, C_N);
    if (IS_OTHER(c0)) return run_other(cl, i, end);
    if (j > i && IS_OTHER(c1)) return run_other(cl, j, end);
    return match_space_tail(cl, i, end);
}

/* Llama 3 (max_digits 3) and Qwen2 (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t match_llama3(const uint32_t *cp, const uint8_t *cl, size_t i, size_t end,
                           size_t max_digits) {
    uint8_t c0 = cl[i];
    if (c0 & C_AP) {
        size_t k = match_contraction(cp, i, end, true);
        if (k) return k;
    }
    if (c0 & C_L) return run_of(cl, i, end, C_L);
    if (!(c0 & (C_NL | C_L | C_N)) && i + 1 < end && (cl[i + 1] & C_L))
        return run_of(cl, i + 1, end, C_L);
    if (c0 & C_N) {
        size_t k = i + 1;
        while (k < end && k - i < max_digits && (cl[k] & C_N))
            k++;
        return k;
    }
    size_t s = SIZE_MAX;
    if (IS_OTHER(c0))
        s = i;
    else if ((c0 & C_SP) && i + 1 < end && IS_OTHER(cl[i + 1]))
        s = i + 1;
    if (s != SIZE_MAX) return run_of(cl, run_other(cl, s, end), end, C_NL);
    /* c0 is white space here */
    size_t j = run_of(cl, i, end, C_S), last_nl = SIZE_MAX;
    for (size_t k = i; k < j; k++)
        if (cl[k] & C_NL) last_nl = k;
    if (last_nl != SIZE_MAX) return last_nl + 1; /* \s*[\r\n]+ */
    return match_space_tail(cl, i, end);
}

/* Split chars [0, n) into pre-tokens; calls word() with each one's byte range. */
static void pretokenize(enc *e, const kvf_vocab *v, const char *s, size_t n_ch,
                        void (*word)(enc *, const kvf_vocab *, const unsigned char *, size_t)) {
    const uint32_t *cp = e->cp;
    const uint8_t *cl = e->cl;
    size_t i = 0, seg = 0; /* smollm: end of the current run without numbers */
    while (i < n_ch && !e->oom) {
        size_t j;
        switch (v->pre) {
        case PRE_SMOLLM: /* Digits(individual) first: each number character stands alone */
            if (cl[i] & C_N) {
                j = i + 1;
            } else {
                if (seg <= i)
                    for (seg = i; seg < n_ch && !(cl[seg] & C_N);)
                        seg++;
                j = match_gpt2(cp, cl, i, seg);
            }
            break;
        case PRE_LLAMA3:
            j = match_llama3(cp, cl, i, n_ch, 3);
            break;
        case PRE_QWEN2:
            j = match_llama3(cp, cl, i, n_ch, 1);
            break;
        default:
            j = match_gpt2(cp, cl, i, n_ch);
            break;
        }
        KVF_ASSERT(j > i && j <= n_ch);
        word(e, v, (const unsigned char *)s + e->off[i], e->off[j] - e->off[i]);
        i = j;
    }
}

/* ---- byte-level BPE ------------------------------------------------------------------ */

static void bpe_queue_pair(enc *e, const kvf_vocab *v, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t a = e->sid[l], b = e->sid[r];
    if (a < 0 || b < 0) return;
    const merge_slot *m = merge_find(v, a, b);
    if (m) q_push(e, (qent){(double)m->rank, l, r, a, b, m->id});
}

static void bpe_word(enc *e, const kvf_vocab *v, const unsigned char *s, size_t n) {
    if (n == 1) {
        push_id(e, v->byte_tok[s[0]]);
        return;
    }
    if (n > INT32_MAX / 2) {
        e->oom = true;
        return;
    }
    if (v->ignore_merges) { /* the word's GPT-2 text, if it is a token */
        sbuf *w = &e->norm;
        w->n = 0;
        for (size_t i = 0; i < n; i++)
            sb_put(w, v->byte_chr[s[i]], v->byte_chr_len[s[i]]);
        if (w->oom) {
            e->oom = true;
            return;
        }
        int32_t id = kvf_vocab_find(v, w->p, w->n);
        if (id >= 0) {
            push_id(e, id);
            return;
        }
    }
    if (!sym_reserve(e, n)) return;
    for (size_t i = 0; i < n; i++) {
        e->sid[i] = v->byte_tok[s[i]];
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->n_q = 0;
    for (size_t i = 0; i + 1 < n; i++)
        bpe_queue_pair(e, v, (int32_t)i, (int32_t)i + 1);
    qent x;
    while (q_pop(e, &x)) {
        /* stale when either side changed since it was queued */
        if (e->next[x.l] != x.r || e->sid[x.l] != x.a || e->sid[x.r] != x.b) continue;
        e->sid[x.l] = x.m;
        int32_t nr = e->next[x.r];
        e->next[x.l] = nr;
        if (nr >= 0) e->prev[nr] = x.l;
        e->next[x.r] = -2, e->sid[x.r] = -1; /* dead */
        bpe_queue_pair(e, v, e->prev[x.l], x.l);
        bpe_queue_pair(e, v, x.l, nr);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i])
        push_id(e, e->sid[i]);
}

static void bpe_fragment(enc *e, const kvf_vocab *v, const char *s, size_t n) {
    size_t n_ch = decode_chars(e, s, n);
    if (e->oom) return;
    pretokenize(e, v, s, n_ch, bpe_word);
}

static void record_word(enc *e, const kvf_vocab *v, const unsigned char *s, size_t n) {
    if (!grow(e, (void **)&e->ends, &e->cap_ends, e->n_ends + 1, sizeof *e->ends)) return;
    e->ends[e->n_ends++] = (size_t)((const char *)s - e->base) + n;
}

int32_t kvf_vocab_pretokenize(const kvf_vocab *v, const char *text, size_t len, size_t *ends,
                              int32_t n_max) {
    if (!v || v->model != MODEL_BPE || (!text && len) || n_max < 0 || (!ends && n_max > 0)) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_pretokenize: bad argument");
        return INT32_MIN;
    }
    enc e = {0};
    size_t n_ch = decode_chars(&e, text ? text : "", len);
    e.base = text;
    if (!e.oom) pretokenize(&e, v, text, n_ch, record_word);
    int32_t ret;
    if (e.oom || e.n_ends > INT32_MAX) {
        kvf_set_error(KVF_E_NOMEM, "kvf_vocab_pretokenize: out of memory");
        ret = INT32_MIN;
    } else if (e.n_ends > (size_t)n_max) {
        ret = -(int32_t)e.n_ends;
    } else {
        if (e.n_ends) memcpy(ends, e.ends, e.n_ends * sizeof *ends);
        ret = (int32_t)e.n_ends;
    }
    enc_free(&e);
    return ret;
}

/* ---- SentencePiece ------------------------------------------------------------------- */

static int32_t spm_piece(const kvf_vocab *v, const char *s, size_t n, unsigned flag) {
    int32_t id = kvf_vocab_find(v, s, n);
    return id >= 0 && (v->tflags[id] & flag) ? id : -1;
}

static int32_t spm_new_node(enc *e, size_t start, size_t len, int32_t l, int32_t r) {
    size_t c0 = e->cap_nodes, c = c0, need = e->n_nodes + 1;
    if (need > c0) {
        if (!grow(e, (void **)&e->nstart, &c, need, sizeof *e->nstart)) return -1;
        c = c0;
        if (!grow(e, (void **)&e->nlen, &c, need, sizeof *e->nlen)) return -1;
        c = c0;
        if (!grow(e, (void **)&e->nleft, &c, need, sizeof *e->nleft)) return -1;
        c = c0;
        if (!grow(e, (void **)&e->nright, &c, need, sizeof *e->nright)) return -1;
        e->cap_nodes = c;
    }
    size_t k = e->n_nodes++;
    e->nstart[k] = start, e->nlen[k] = len, e->nleft[k] = l, e->nright[k] = r;
    return (int32_t)k;
}

static void spm_queue_pair(enc *e, const kvf_vocab *v, const char *t, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    size_t len = e->slen[l] + e->slen[r];
    int32_t id = spm_piece(v, t + e->sstart[l], len, TF_SPM_MRG);
    if (id >= 0 && len <= INT32_MAX)
        q_push(e, (qent){-(double)v->score[id], l, r, (int32_t)len, 0, id});
}

/* Emit the tokens of one final symbol: its piece, else (an unused piece) its halves, else
 * its bytes as <0xXX> tokens, else <unk>. Iterative, so deep merge trees are fine. */
static void spm_emit(enc *e, const kvf_vocab *v, const char *t, int32_t root) {
    size_t base = e->n_nodes; /* stack of node ids, kept above the tree in nleft[] */
    int32_t top = root;
    for (;;) {
        int32_t nd = top;
        int32_t id = spm_piece(v, t + e->nstart[nd], e->nlen[nd], TF_SPM_OUT);
        if (id >= 0) {
            push_id(e, id);
        } else if (e->nleft[nd] >= 0) {
            /* visit left now, right later */
            if (spm_new_node(e, 0, 0, e->nright[nd], -1) < 0) return;
            top = e->nleft[nd];
            continue;
        } else {
            const unsigned char *b = (const unsigned char *)t + e->nstart[nd];
            bool ok = true;
            for (size_t i = 0; i < e->nlen[nd]; i++)
                ok = ok && v->byte_tok[b[i]] >= 0;
            if (ok)
                for (size_t i = 0; i < e->nlen[nd]; i++)
                    push_id(e, v->byte_tok[b[i]]);
            else
                push_id(e, v->unk);
        }
        if (e->n_nodes == base || e->oom) break;
        top = e->nleft[--e->n_nodes];
    }
}

static void spm_fragment(enc *e, const kvf_vocab *v, const char *s, size_t n, bool prefix) {
    if (n == 0) return;
    sbuf *nb = &e->norm;
    nb->n = 0;
    if (prefix) sb_put(nb, "\xE2\x96\x81", 3);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && s[j] != ' ')
            j++;
        sb_put(nb, s + i, j - i);
        if (j < n) sb_put(nb, "\xE2\x96\x81", 3);
        i = j + 1;
    }
    if (nb->oom) {
        e->oom = true;
        return;
    }
    const char *t = nb->p;
    size_t n_ch = decode_chars(e, t, nb->n);
    if (e->oom || n_ch > INT32_MAX / 2 || !sym_reserve(e, n_ch)) {
        e->oom = true;
        return;
    }
    e->n_nodes = 0;
    for (size_t i = 0; i < n_ch; i++) {
        e->sstart[i] = e->off[i];
        e->slen[i] = e->off[i + 1] - e->off[i];
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < n_ch ? (int32_t)i + 1 : -1;
        e->node[i] = spm_new_node(e, e->sstart[i], e->slen[i], -1, -1);
    }
    if (e->oom) return;
    e->n_q = 0;
    for (size_t i = 0; i + 1 < n_ch; i++)
        spm_queue_pair(e, v, t, (int32_t)i, (int32_t)i + 1);
    qent x;
    while (q_pop(e, &x)) {
        if (e->next[x.l] != x.r || e->slen[x.l] + e->slen[x.r] != (size_t)x.a) continue;
        int32_t nd = spm_new_node(e, e->sstart[x.l], (size_t)x.a, e->node[x.l], e->node[x.r]);
        if (nd < 0) return;
        e->node[x.l] = nd;
        e->slen[x.l] = (size_t)x.a;
        int32_t nr = e->next[x.r];
        e->next[x.l] = nr;
        if (nr >= 0) e->prev[nr] = x.l;
        e->next[x.r] = -2; /* dead */
        spm_queue_pair(e, v, t, e->prev[x.l], x.l);
        spm_queue_pair(e, v, t, x.l, nr);
    }
    for (int32_t i = 0; i >= 0 && !e->oom; i = e->next[i])
        spm_emit(e, v, t, e->node[i]);
}

/* ---- encode / decode ------------------------------------------------------------------- */

/* Longest special token starting at s[0..n) (with control = false: USER_DEFINED ones only),
 * or -1. */
static int32_t match_special(const kvf_vocab *v, const char *s, size_t n, size_t *len,
                             bool control) {
    unsigned char b = (unsigned char)s[0];
    for (int32_t k = v->special_start[b]; k < v->special_start[b + 1]; k++) {
        const special_ent *sp = &v->special[k];
        if (!control && v->type[sp->id] != KVF_TOKT_USER_DEFINED) continue;
        if (sp->len <= n && memcmp(s, tok_text(v, sp->id), sp->len) == 0) {
            *len = sp->len;
            return sp->id;
        }
    }
    return -1;
}

static void encode_text(enc *e, const kvf_vocab *v, const char *s, size_t n, bool after_special) {
    if (v->model == MODEL_BPE)
        bpe_fragment(e, v, s, n);
    else
        spm_fragment(e, v, s, n, v->add_space_prefix && after_special);
}

int32_t kvf_vocab_encode(const kvf_vocab *v, const char *text, size_t len, int32_t *out,
                         int32_t n_max, uint32_t flags) {
    if (!v || (!text && len) || n_max < 0 || (!out && n_max > 0)) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_encode: bad argument");
        return INT32_MIN;
    }
    enc e = {0};
    bool add_bos = (flags & KVF_TOK_ADD_BOS) && v->add_bos && v->bos >= 0;
    if (add_bos) push_id(&e, v->bos);
    /* The first fragment counts as following a special token: it gets the space prefix. */
    bool prev_special = true;
    size_t frag = 0;
    /* Control tokens are matched with PARSE_SPECIAL only; user-defined ones always, as Hugging
     * Face does for non-special added tokens (Qwen2's <tool_call>) and llama.cpp for
     * USER_DEFINED tokens. */
    bool parse = (flags & KVF_TOK_PARSE_SPECIAL) != 0;
    if ((parse && v->n_special > 0) || v->n_user_defined > 0) {
        for (size_t i = 0; i < len && !e.oom;) {
            size_t sl = 0;
            int32_t id = match_special(v, text + i, len - i, &sl, parse);
            if (id < 0) {
                i++;
                continue;
            }
            if (i > frag) {
                encode_text(&e, v, text + frag, i - frag, prev_special);
                prev_special = false;
            }
            push_id(&e, id);
            prev_special = true;
            i += sl;
            frag = i;
        }
    }
    if (len > frag && !e.oom) encode_text(&e, v, text + frag, len - frag, prev_special);

    int32_t ret;
    if (e.oom) {
        kvf_set_error(KVF_E_NOMEM, "kvf_vocab_encode: out of memory");
        ret = INT32_MIN;
    } else {
        size_t skip = add_bos && e.n_ids >= 2 && e.ids[1] == v->bos; /* text had its own BOS */
        size_t n = e.n_ids - skip;
        if (n > INT32_MAX) {
            kvf_set_error(KVF_E_INVAL, "kvf_vocab_encode: more than INT32_MAX tokens");
            ret = INT32_MIN;
        } else if (n > (size_t)n_max) {
            ret = -(int32_t)n;
        } else {
            if (n) memcpy(out, e.ids + skip, n * sizeof *out);
            ret = (int32_t)n;
        }
    }
    enc_free(&e);
    return ret;
}

static bool piece_shown(const kvf_vocab *v, int32_t id, bool render_special) {
    int t = v->type[id];
    return render_special ||
           !(t == KVF_TOKT_CONTROL || t == KVF_TOKT_UNKNOWN || t == KVF_TOKT_UNUSED);
}

int32_t kvf_vocab_piece(const kvf_vocab *v, int32_t id, char *buf, int32_t len,
                        bool render_special) {
    if (!v || id < 0 || id >= v->n_tokens) {
        kvf_set_error(KVF_E_INVAL, "token id %d is out of range", id);
        return INT32_MIN;
    }
    if (len < 0 || (!buf && len > 0)) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_piece: bad buffer");
        return INT32_MIN;
    }
    size_t n = piece_shown(v, id, render_special) ? v->piece_off[id + 1] - v->piece_off[id] : 0;
    if (n > INT32_MAX) {
        kvf_set_error(KVF_E_INVAL, "token %d: piece too long", id);
        return INT32_MIN;
    }
    if (n > (size_t)len) return -(int32_t)n;
    if (n) memcpy(buf, v->piece + v->piece_off[id], n);
    return (int32_t)n;
}

int32_t kvf_vocab_decode(const kvf_vocab *v, const int32_t *ids, int32_t n, char *buf, int32_t len,
                         bool render_special) {
    if (!v || n < 0 || (!ids && n > 0) || len < 0 || (!buf && len > 0)) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_decode: bad argument");
        return INT32_MIN;
    }
    size_t total = 0;
    bool at_start = true;
    for (int32_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= v->n_tokens) {
            kvf_set_error(KVF_E_INVAL, "kvf_vocab_decode: ids[%d] = %d is out of range", i, id);
            return INT32_MIN;
        }
        if (!piece_shown(v, id, render_special)) continue;
        const char *p = v->piece + v->piece_off[id];
        size_t m = v->piece_off[id + 1] - v->piece_off[id];
        if (m == 0) continue;
        if (at_start && v->add_space_prefix && p[0] == ' ') p++, m--;
        at_start = false;
        if (m && total + m <= (size_t)len) memcpy(buf + total, p, m);
        total += m;
        if (total > INT32_MAX) {
            kvf_set_error(KVF_E_INVAL, "kvf_vocab_decode: text longer than INT32_MAX");
            return INT32_MIN;
        }
    }
    if (total > (size_t)len) return -(int32_t)total;
    if (total < (size_t)len) buf[total] = 0;
    return (int32_t)total;
}

/* ---- chat templates -------------------------------------------------------------------- */

/* The token's text, or `dflt` when the vocabulary has no such token. */
static const char *tok_or(const kvf_vocab *v, int32_t id, const char *dflt, size_t *n) {
    if (id >= 0) {
        *n = tok_len(v, id);
        return tok_text(v, id);
    }
    *n = strlen(dflt);
    return dflt;
}

/* s without leading and trailing white space (Python's str.strip()). */
static void put_stripped(sbuf *b, const char *s) {
    size_t n = strlen(s), start = 0, end = 0;
    bool lead = true;
    for (size_t i = 0; i < n;) {
        size_t len;
        uint32_t cp = kvf_utf8_decode(s + i, n - i, &len);
        if (!py_space(cp)) {
            if (lead) start = i;
            lead = false;
            end = i + len;
        }
        i += len;
    }
    if (!lead) sb_put(b, s + start, end - start);
}

static void chat_chatml(const kvf_vocab *v, sbuf *b, const kvf_chat_msg *m, size_t n, bool gen) {
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && v->chat_system && strcmp(m[0].role, "system") != 0) {
            sb_puts(b, "<|im_start|>system\n");
            sb_puts(b, v->chat_system);
            sb_puts(b, "<|im_end|>\n");
        }
        sb_puts(b, "<|im_start|>");
        sb_puts(b, m[i].role);
        sb_puts(b, "\n");
        sb_puts(b, m[i].content);
        sb_puts(b, "<|im_end|>\n");
    }
    if (gen) sb_puts(b, "<|im_start|>assistant\n");
}

static void chat_llama3(const kvf_vocab *v, sbuf *b, const kvf_chat_msg *m, size_t n, bool gen) {
    size_t nb;
    const char *bos = tok_or(v, v->bos, "<|begin_of_text|>", &nb);
    for (size_t i = 0; i < n; i++) {
        if (i == 0) sb_put(b, bos, nb);
        sb_puts(b, "<|start_header_id|>");
        sb_puts(b, m[i].role);
        sb_puts(b, "<|end_header_id|>\n\n");
        put_stripped(b, m[i].content);
        sb_puts(b, "<|eot_id|>");
    }
    if (gen) sb_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Zephyr / TinyLlama: "<|role|>\ncontent</s>\n" for the system, user and assistant roles
 * (others are left out, as the template does). The generation prompt follows the last
 * message, so there is none without messages. */
static void chat_zephyr(const kvf_vocab *v, sbuf *b, const kvf_chat_msg *m, size_t n, bool gen) {
    size_t ne;
    const char *eos = tok_or(v, v->eos, "</s>", &ne);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(m[i].role, "system") != 0 && strcmp(m[i].role, "user") != 0 &&
            strcmp(m[i].role, "assistant") != 0)
            continue;
        sb_puts(b, "<|");
        sb_puts(b, m[i].role);
        sb_puts(b, "|>\n");
        sb_puts(b, m[i].content);
        sb_put(b, eos, ne);
        sb_puts(b, "\n");
    }
    if (gen && n > 0) sb_puts(b, "<|assistant|>\n");
}

/* Llama 2: a leading system message is folded into the first user turn; each user turn is
 * "<s>[INST] ... [/INST]", each assistant turn " ... </s>". There is no generation prompt:
 * the text after [/INST] is the assistant's. */
static void chat_llama2(const kvf_vocab *v, sbuf *b, const kvf_chat_msg *m, size_t n) {
    size_t nb, ne;
    const char *bos = tok_or(v, v->bos, "<s>", &nb), *eos = tok_or(v, v->eos, "</s>", &ne);
    const char *sys = NULL;
    size_t first = 0;
    if (n > 0 && strcmp(m[0].role, "system") == 0) sys = m[0].content, first = 1;
    for (size_t i = first; i < n; i++) {
        sbuf c = {0}; /* the turn's content before stripping */
        if (i == first && sys) {
            sb_puts(&c, "<<SYS>>\n");
            sb_puts(&c, sys);
            sb_puts(&c, "\n<</SYS>>\n\n");
        }
        sb_puts(&c, m[i].content);
        sb_put(&c, "", 1); /* NUL */
        if (c.oom) {
            b->oom = true;
            kvf_free(c.p);
            return;
        }
        if (strcmp(m[i].role, "user") == 0) {
            sb_put(b, bos, nb);
            sb_puts(b, "[INST] ");
            put_stripped(b, c.p);
            sb_puts(b, " [/INST]");
        } else if (strcmp(m[i].role, "assistant") == 0) {
            sb_puts(b, " ");
            put_stripped(b, c.p);
            sb_puts(b, " ");
            sb_put(b, eos, ne);
        }
        kvf_free(c.p);
    }
}

int32_t kvf_vocab_chat_format(const kvf_vocab *v, const kvf_chat_msg *msgs, size_t n,
                              bool add_assistant, char *buf, int32_t len) {
    if (!v || (!msgs && n > 0) || len < 0 || (!buf && len > 0)) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_chat_format: bad argument");
        return INT32_MIN;
    }
    for (size_t i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content) {
            kvf_set_error(KVF_E_INVAL, "kvf_vocab_chat_format: message %zu has no %s", i,
                          msgs[i].role ? "content" : "role");
            return INT32_MIN;
        }
    sbuf b = {0};
    switch (v->chat) {
    case CHAT_CHATML:
        chat_chatml(v, &b, msgs, n, add_assistant);
        break;
    case CHAT_LLAMA3:
        chat_llama3(v, &b, msgs, n, add_assistant);
        break;
    case CHAT_ZEPHYR:
        chat_zephyr(v, &b, msgs, n, add_assistant);
        break;
    case CHAT_LLAMA2:
        chat_llama2(v, &b, msgs, n);
        break;
    default:
        kvf_set_error(KVF_E_UNSUPPORTED, "the model has no chat template kvfuse knows");
        return INT32_MIN;
    }
    int32_t ret;
    if (b.oom) {
        kvf_set_error(KVF_E_NOMEM, "kvf_vocab_chat_format: out of memory");
        ret = INT32_MIN;
    } else if (b.n > INT32_MAX) {
        kvf_set_error(KVF_E_INVAL, "kvf_vocab_chat_format: text longer than INT32_MAX");
        ret = INT32_MIN;
    } else if (b.n > (size_t)len) {
        ret = -(int32_t)b.n;
    } else {
        if (b.n) memcpy(buf, b.p, b.n);
        if (b.n < (size_t)len) buf[b.n] = 0;
        ret = (int32_t)b.n;
    }
    kvf_free(b.p);
    return ret;
}
