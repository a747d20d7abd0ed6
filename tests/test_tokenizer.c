/* test_tokenizer.c - unit tests of the tokenizer (src/engine/tokenizer.c) and its Unicode tables
 * (src/engine/unicode.c) on small vocabularies built here, with hand-checked expectations:
 * BPE merge order, the four regex pre-tokenizers, special tokens, SentencePiece scores, byte
 * fallback and <unk>, buffer-size returns, bad ids and arguments, invalid UTF-8, chat
 * template families, GGUF metadata validation, allocation failures, threads and speed on
 * pathological input. Parity with real vocabularies is tests/integration/tokenizer_parity.py.
 */
#include "harness.h"
#include "synth.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"

#include <limits.h>
#include <pthread.h>
#include <time.h>

/* ---- helpers --------------------------------------------------------------------------- */

#define MAXTOK 1024

/* A byte-level BPE vocabulary under construction. Ids 0..255 are the bytes in byte order;
 * texts of normal tokens are written here as raw bytes and stored GPT-2 encoded (with
 * synth.h's independent statement of the byte map). */
typedef struct {
    char *tok[MAXTOK];
    size_t len[MAXTOK];
    int32_t type[MAXTOK];
    int n;
    char *merge[MAXTOK];
    int n_merges;
} tbpe;

static size_t gpt2_text(const char *raw, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)synth_byte_utf8((unsigned char)raw[i], out + o);
    return o;
}

static int tb_add_stored(tbpe *b, const char *s, size_t n, int32_t type) {
    KVF_ASSERT(b->n < MAXTOK);
    b->tok[b->n] = sg_memdup(s, n);
    b->len[b->n] = n;
    b->type[b->n] = type;
    return b->n++;
}

static int tb_find(const tbpe *b, const char *s, size_t n) {
    for (int i = 0; i < b->n; i++)
        if (b->len[i] == n && memcmp(b->tok[i], s, n) == 0) return i;
    return -1;
}

static void tb_init(tbpe *b) {
    memset(b, 0, sizeof *b);
    for (int c = 0; c < 256; c++) {
        char s[4];
        int n = synth_byte_utf8(c, s);
        tb_add_stored(b, s, (size_t)n, KVF_TOKT_NORMAL);
    }
}

/* A special (or user-defined) token, stored raw. */
static int tb_special(tbpe *b, const char *text, int32_t type) {
    return tb_add_stored(b, text, strlen(text), type);
}

/* Append the merge (left, right), both raw; returns the id of the merged token. */
static int tb_merge(tbpe *b, const char *left, const char *right) {
    char l[256], r[256], m[600];
    size_t nl = gpt2_text(left, strlen(left), l), nr = gpt2_text(right, strlen(right), r);
    memcpy(m, l, nl);
    m[nl] = ' ';
    memcpy(m + nl + 1, r, nr);
    KVF_ASSERT(b->n_merges < MAXTOK);
    b->merge[b->n_merges++] = sg_memdup(m, nl + 1 + nr);
    memcpy(m, l, nl);
    memcpy(m + nl, r, nr);
    int id = tb_find(b, m, nl + nr);
    return id >= 0 ? id : tb_add_stored(b, m, nl + nr, KVF_TOKT_NORMAL);
}

static void tb_free(tbpe *b) {
    for (int i = 0; i < b->n; i++)
        free(b->tok[i]);
    for (int i = 0; i < b->n_merges; i++)
        free(b->merge[i]);
}

static kvf_vocab_spec tb_spec(const tbpe *b, gguf_str *toks, gguf_str *merges, const char *pre) {
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    for (int i = 0; i < b->n; i++)
        toks[i] = (gguf_str){b->tok[i], b->len[i]};
    for (int i = 0; i < b->n_merges; i++)
        merges[i] = (gguf_str){b->merge[i], strlen(b->merge[i])};
    sp.model = "gpt2";
    sp.pre = pre;
    sp.tokens = toks;
    sp.n_tokens = b->n;
    sp.types = b->type;
    sp.merges = merges;
    sp.n_merges = b->n_merges;
    return sp;
}

static kvf_vocab *tb_build(const tbpe *b, const char *pre) {
    static gguf_str toks[MAXTOK], merges[MAXTOK];
    kvf_vocab_spec sp = tb_spec(b, toks, merges, pre);
    kvf_vocab *v = NULL;
    kvf_status st = kvf_vocab_build(&sp, &v);
    CHECK_MSG(st == KVF_OK, "kvf_vocab_build: %s", kvf_errmsg());
    return v;
}

/* Encode and compare with the expected ids (n_exp of them). */
static void check_ids_(const kvf_vocab *v, const char *text, size_t len, uint32_t flags,
                       const int32_t *exp, int n_exp, int line) {
    int32_t got[4096];
    int32_t n = kvf_vocab_encode(v, text, len, got, 4096, flags);
    int ok = n == n_exp;
    for (int i = 0; ok && i < n; i++)
        ok = got[i] == exp[i];
    if (ok) {
        t_pass++;
        return;
    }
    char buf[512];
    int o = snprintf(buf, sizeof buf, "got %d ids [", n);
    for (int i = 0; i < n && i < 24 && o < 400; i++)
        o += snprintf(buf + o, sizeof buf - o, " %d", got[i]);
    o += snprintf(buf + o, sizeof buf - o, " ], expected %d [", n_exp);
    for (int i = 0; i < n_exp && i < 24 && o < 480; i++)
        o += snprintf(buf + o, sizeof buf - o, " %d", exp[i]);
    T_FAILMSG("line %d: encode(\"%.40s\"): %s ]", line, text, buf);
}
#define CHECK_IDS(v, text, flags, ...)                                                             \
    do {                                                                                           \
        const int32_t exp_[] = {__VA_ARGS__};                                                      \
        check_ids_(v, text, strlen(text), flags, exp_, (int)(sizeof exp_ / sizeof exp_[0]),        \
                   __LINE__);                                                                      \
    } while (0)
#define CHECK_NO_IDS(v, text, flags) check_ids_(v, text, strlen(text), flags, NULL, 0, __LINE__)

/* The pre-tokens of text, compared with a NULL-terminated list. */
static void check_split_(const kvf_vocab *v, const char *text, const char *const *exp, int line) {
    size_t ends[512];
    int32_t n = kvf_vocab_pretokenize(v, text, strlen(text), ends, 512);
    int n_exp = 0;
    while (exp[n_exp])
        n_exp++;
    int ok = n == n_exp;
    size_t at = 0;
    for (int i = 0; ok && i < n; i++) {
        size_t len = ends[i] - at;
        ok = strlen(exp[i]) == len && memcmp(text + at, exp[i], len) == 0;
        at = ends[i];
    }
    if (ok) {
        t_pass++;
        return;
    }
    char buf[600];
    int o = snprintf(buf, sizeof buf, "got %d pieces:", n);
    at = 0;
    for (int i = 0; i < n && o < 500; i++) {
        o += snprintf(buf + o, sizeof buf - o, " [%.*s]", (int)(ends[i] - at), text + at);
        at = ends[i];
    }
    T_FAILMSG("line %d: split(\"%s\"): %s (expected %d)", line, text, buf, n_exp);
}
#define CHECK_SPLIT(v, text, ...)                                                                  \
    do {                                                                                           \
        const char *const exp_[] = {__VA_ARGS__, NULL};                                            \
        check_split_(v, text, exp_, __LINE__);                                                     \
    } while (0)

/* decode(ids) as a NUL-terminated string in a static buffer. */
static const char *dec(const kvf_vocab *v, const int32_t *ids, int32_t n, bool special) {
    static char buf[8192];
    int32_t r = kvf_vocab_decode(v, ids, n, buf, sizeof buf, special);
    if (r < 0) return "(decode failed)";
    return buf;
}

/* ---- Unicode --------------------------------------------------------------------------- */

static void test_unicode_classes(void) {
    CHECK_EQ(kvf_unicode_class('a'), KVF_U_LETTER);
    CHECK_EQ(kvf_unicode_class('Z'), KVF_U_LETTER);
    CHECK_EQ(kvf_unicode_class(0xE9), KVF_U_LETTER);   /* é */
    CHECK_EQ(kvf_unicode_class(0x4E2D), KVF_U_LETTER); /* 中 */
    CHECK_EQ(kvf_unicode_class(0x3042), KVF_U_LETTER); /* あ */
    CHECK_EQ(kvf_unicode_class(0x02B0), KVF_U_LETTER); /* ʰ, Lm */
    CHECK_EQ(kvf_unicode_class('7'), KVF_U_NUMBER);
    CHECK_EQ(kvf_unicode_class(0x0663), KVF_U_NUMBER); /* Arabic-Indic 3, Nd */
    CHECK_EQ(kvf_unicode_class(0x00BD), KVF_U_NUMBER); /* ½, No */
    CHECK_EQ(kvf_unicode_class(0x216B), KVF_U_NUMBER); /* Ⅻ, Nl */
    CHECK_EQ(kvf_unicode_class(0x00B2), KVF_U_NUMBER); /* ², No */
    CHECK_EQ(kvf_unicode_class(' '), KVF_U_SPACE);
    CHECK_EQ(kvf_unicode_class('\t'), KVF_U_SPACE);
    CHECK_EQ(kvf_unicode_class('\r'), KVF_U_SPACE);
    CHECK_EQ(kvf_unicode_class(0x0B), KVF_U_SPACE);
    CHECK_EQ(kvf_unicode_class(0x85), KVF_U_SPACE);   /* NEL */
    CHECK_EQ(kvf_unicode_class(0xA0), KVF_U_SPACE);   /* NBSP */
    CHECK_EQ(kvf_unicode_class(0x2003), KVF_U_SPACE); /* em space */
    CHECK_EQ(kvf_unicode_class(0x2028), KVF_U_SPACE); /* line separator */
    CHECK_EQ(kvf_unicode_class(0x3000), KVF_U_SPACE); /* ideographic space */
    CHECK_EQ(kvf_unicode_class(0x1C), 0);             /* isspace() in Python, not White_Space */
    CHECK_EQ(kvf_unicode_class(0x200B), 0);           /* zero width space is Cf */
    CHECK_EQ(kvf_unicode_class(0x0301), 0);           /* combining acute, Mn */
    CHECK_EQ(kvf_unicode_class(0x1F999), 0);          /* 🦙 */
    CHECK_EQ(kvf_unicode_class('!'), 0);
    CHECK_EQ(kvf_unicode_class(0x10FFFF), 0);
    CHECK_EQ(kvf_unicode_class(0x110000), 0);
    CHECK_EQ(kvf_unicode_class(KVF_U_INVALID), 0);
    CHECK_EQ(kvf_unicode_class(0x20000), KVF_U_LETTER); /* CJK extension B */
}

static void test_utf8(void) {
    size_t len;
    CHECK_EQ(kvf_utf8_decode("A", 1, &len), 'A');
    CHECK_EQ(len, 1);
    CHECK_EQ(kvf_utf8_decode("\xC3\xA9", 2, &len), 0xE9);
    CHECK_EQ(len, 2);
    CHECK_EQ(kvf_utf8_decode("\xE4\xB8\xAD", 3, &len), 0x4E2D);
    CHECK_EQ(len, 3);
    CHECK_EQ(kvf_utf8_decode("\xF0\x9F\xA6\x99", 4, &len), 0x1F999);
    CHECK_EQ(len, 4);
    /* invalid: one byte at a time */
    static const char *const bad[] = {
        "\x80",         "\xBF",         "\xC0\xAF",         "\xC1\xBF",
        "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80",
        "\xFF",         "\xC3(",        "\xE2\x82("};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(kvf_utf8_decode(bad[i], strlen(bad[i]), &len), KVF_U_INVALID);
        CHECK_EQ(len, 1);
    }
    CHECK_EQ(kvf_utf8_decode("\xE2\x82\xAC", 2, &len), KVF_U_INVALID); /* truncated */
    CHECK_EQ(len, 1);
    uint32_t cps[] = {0, 0x7F, 0x80, 0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF};
    for (size_t i = 0; i < sizeof cps / sizeof cps[0]; i++) {
        char b[4];
        size_t n = kvf_utf8_encode(cps[i], b);
        CHECK(n >= 1 && n <= 4);
        CHECK_EQ(kvf_utf8_decode(b, n, &len), cps[i]);
        CHECK_EQ(len, n);
    }
    char b[4];
    CHECK_EQ(kvf_utf8_encode(0xD800, b), 0);
    CHECK_EQ(kvf_utf8_encode(0x110000, b), 0);
}

/* ---- byte-level BPE -------------------------------------------------------------------- */

static void test_bpe_merge_order(void) {
    tbpe b;
    tb_init(&b);
    int ab = tb_merge(&b, "a", "b"); /* rank 0 */
    int bc = tb_merge(&b, "b", "c"); /* rank 1 */
    int aa = tb_merge(&b, "a", "a"); /* rank 2 */
    int a4 = tb_merge(&b, "aa", "aa");
    int he = tb_merge(&b, "h", "e");
    int ll = tb_merge(&b, "l", "l");
    int hel = tb_merge(&b, "he", "ll");
    int hlo = tb_merge(&b, "hell", "o");
    int xc = tb_merge(&b, "x", "bc");
    kvf_vocab *v = tb_build(&b, "gpt2");
    if (!v) {
        tb_free(&b);
        return;
    }
    CHECK_EQ(kvf_vocab_n_tokens(v), b.n);
    CHECK_IDS(v, "abc", 0, ab, 'c'); /* (a,b) ranks before (b,c) */
    CHECK_IDS(v, "xbc", 0, xc);      /* b+c, then x+bc */
    CHECK_IDS(v, "bcab", 0, bc, ab);
    CHECK_IDS(v, "aaa", 0, aa, 'a'); /* equal ranks: leftmost first */
    CHECK_IDS(v, "aaaa", 0, a4);
    CHECK_IDS(v, "aaaaa", 0, a4, 'a');
    CHECK_IDS(v, "hello", 0, hlo);
    CHECK_IDS(v, "hell", 0, hel);
    CHECK_IDS(v, "helo", 0, he, 'l', 'o');
    CHECK_IDS(v, "llo", 0, ll, 'o');
    CHECK_IDS(v, "ab ab", 0, ab, ' ', ab); /* " ab" is one word; no merge joins " " and "a" */
    CHECK_NO_IDS(v, "", 0);
    kvf_vocab_free(v);

    /* Llama 3 (ignore_merges): a word that is itself a token is that token */
    int abcd = tb_add_stored(&b, "abcd", 4, KVF_TOKT_NORMAL);
    v = tb_build(&b, "llama3");
    if (v) {
        CHECK_IDS(v, "abcd", 0, abcd);
        CHECK_IDS(v, "abcd abc", 0, abcd, ' ', ab, 'c');
        kvf_vocab_free(v);
    }
    v = tb_build(&b, "gpt2");
    if (v) {
        CHECK_IDS(v, "abcd", 0, ab, 'c', 'd');
        kvf_vocab_free(v);
    }

    /* the same pairs in the other order of rank */
    tbpe b2;
    tb_init(&b2);
    int bc2 = tb_merge(&b2, "b", "c");
    int ab2 = tb_merge(&b2, "a", "b");
    v = tb_build(&b2, "gpt2");
    if (v) {
        CHECK_IDS(v, "abc", 0, 'a', bc2);
        CHECK_IDS(v, "abab", 0, ab2, ab2);
        kvf_vocab_free(v);
    }
    tb_free(&b2);
    tb_free(&b);
}

/* Pieces as the regexes define them, worked out by hand. */
static void test_pretokenizers(void) {
    tbpe b;
    tb_init(&b);
    kvf_vocab *g = tb_build(&b, "gpt2"), *s = tb_build(&b, "smollm"),
              *l = tb_build(&b, "llama-bpe"), *q = tb_build(&b, "qwen2");
    size_t e[4];
    if (!g || !s || !l || !q) goto done;
    CHECK_STR(kvf_vocab_pre_name(g), "gpt2");
    CHECK_STR(kvf_vocab_pre_name(s), "smollm");
    CHECK_STR(kvf_vocab_pre_name(l), "llama3");
    CHECK_STR(kvf_vocab_pre_name(q), "qwen2");

    /* GPT-2 */
    CHECK_SPLIT(g, "Hello world", "Hello", " world");
    CHECK_SPLIT(g, "I'm don't we're I'll he'd they've", "I", "'m", " don", "'t", " we", "'re", " I",
                "'ll", " he", "'d", " they", "'ve");
    CHECK_SPLIT(g, "DON'T", "DON", "'", "T"); /* contractions are case-sensitive */
    CHECK_SPLIT(g, "'hello", "'", "hello");
    CHECK_SPLIT(g, "a  b", "a", " ", " b");
    CHECK_SPLIT(g, "a   \n", "a", "   \n");
    CHECK_SPLIT(g, "x\t\ty", "x", "\t", "\t", "y");
    CHECK_SPLIT(g, "123abc 45", "123", "abc", " 45");
    CHECK_SPLIT(g, "abc!!! ?? $5", "abc", "!!!", " ??", " $", "5");
    CHECK_SPLIT(g, "h\xC3\xA9llo w\xC3\xB6rld", "h\xC3\xA9llo", " w\xC3\xB6rld");
    CHECK_SPLIT(g, "\xE4\xB8\xAD\xE6\x96\x87 \xE5\xAD\x97", "\xE4\xB8\xAD\xE6\x96\x87",
                " \xE5\xAD\x97");                       /* 中文 字 */
    CHECK_SPLIT(g, "e\xCC\x81x", "e", "\xCC\x81", "x"); /* a mark is not \p{L} */
    CHECK_SPLIT(g, "hi \xF0\x9F\xA6\x99\xF0\x9F\xA6\x99!", "hi",
                " \xF0\x9F\xA6\x99\xF0\x9F\xA6\x99!");
    CHECK_SPLIT(g,
                "a\xC2\xA0"
                "b",
                "a", "\xC2\xA0", "b"); /* NBSP is \s, not ' ' */
    CHECK_SPLIT(g, "  ", "  ");
    CHECK_SPLIT(g, "x\n\n", "x", "\n\n");
    CHECK_SPLIT(g, "\xFF\xFEok", "\xFF\xFE", "ok"); /* invalid bytes: "other" */
    CHECK_EQ(kvf_vocab_pretokenize(g, "", 0, e, 4), 0);
    CHECK_EQ(kvf_vocab_pretokenize(g, "a b c", 5, e, 1), -3);

    /* SmolLM2 / StarCoder: every number character alone, then GPT-2 */
    CHECK_SPLIT(s, "abc 123", "abc", " ", "1", "2", "3");
    CHECK_SPLIT(s, "a1b", "a", "1", "b");
    CHECK_SPLIT(s, " 12 ", " ", "1", "2", " ");
    CHECK_SPLIT(s, "x\xC2\xB2 \xC2\xBD", "x", "\xC2\xB2", " ", "\xC2\xBD"); /* x² ½ */
    CHECK_SPLIT(s, "I'm 3", "I", "'m", " ", "3");
    CHECK_SPLIT(s, "v2.0", "v", "2", ".", "0");

    /* Llama 3 */
    CHECK_SPLIT(l, "I'M DON'T", "I", "'M", " DON", "'T");
    CHECK_SPLIT(l,
                "x'\xC5\xBF"
                "a",
                "x", "'\xC5\xBF", "a"); /* ſ folds to s */
    CHECK_SPLIT(l, "1234567", "123", "456", "7");
    CHECK_SPLIT(l, "hello\n\nworld", "hello", "\n\n", "world");
    CHECK_SPLIT(l, "  hello", " ", " hello");
    CHECK_SPLIT(l, "\thello", "\thello");
    CHECK_SPLIT(l, "'hello", "'hello");
    CHECK_SPLIT(l, "!!!\n\nx", "!!!\n\n", "x");
    CHECK_SPLIT(l, "a \n b", "a", " \n", " b");
    CHECK_SPLIT(l, "a  \n\n  b", "a", "  \n\n", " ", " b");
    CHECK_SPLIT(l, "x 42", "x", " ", "42");
    CHECK_SPLIT(l, "(x)", "(x", ")");
    CHECK_SPLIT(l, "\r\n\r\n", "\r\n\r\n");

    /* Qwen2: like Llama 3 with single digits */
    CHECK_SPLIT(q, "1234", "1", "2", "3", "4");
    CHECK_SPLIT(q, "I'M x 42", "I", "'M", " x", " ", "4", "2");
done:
    kvf_vocab_free(g);
    kvf_vocab_free(s);
    kvf_vocab_free(l);
    kvf_vocab_free(q);
    tb_free(&b);
}

static void test_bpe_special_tokens(void) {
    tbpe b;
    tb_init(&b);
    int ims = tb_special(&b, "<|im_start|>", KVF_TOKT_CONTROL);
    int ime = tb_special(&b, "<|im_end|>", KVF_TOKT_CONTROL);
    int x = tb_special(&b, "<x>", KVF_TOKT_CONTROL);
    int xy = tb_special(&b, "<x><y>", KVF_TOKT_CONTROL);
    int user = tb_special(&b, "@user", KVF_TOKT_USER_DEFINED);
    int hi = tb_merge(&b, "h", "i");
    tb_special(&b, "", KVF_TOKT_CONTROL); /* an empty special never matches */
    kvf_vocab *v = tb_build(&b, "gpt2");
    if (!v) {
        tb_free(&b);
        return;
    }
    const uint32_t P = KVF_TOK_PARSE_SPECIAL;
    CHECK_IDS(v, "<|im_start|>hi<|im_end|>", P, ims, hi, ime);
    CHECK_IDS(v, "<|im_start|>hi", 0, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't', '|', '>',
              hi);
    CHECK_IDS(v, "<|im_start", P, '<', '|', 'i', 'm', '_', 's', 't', 'a', 'r', 't');
    CHECK_IDS(v, "<x><y>", P, xy); /* longest match first */
    CHECK_IDS(v, "<x><z>", P, x, '<', 'z', '>');
    CHECK_IDS(v, "hi @user!", P, hi, ' ', user, '!');
    CHECK_IDS(v, "hi @user!", 0, hi, ' ', user, '!'); /* user-defined: matched without P too */
    CHECK_IDS(v, "a<|im_end|> b", P, 'a', ime, ' ', 'b'); /* text on each side tokenized alone */
    CHECK_IDS(v, "<|im_end|><|im_end|>", P, ime, ime);

    /* pieces: control text only with render_special, user-defined always */
    char buf[64];
    CHECK_EQ(kvf_vocab_piece(v, ims, buf, sizeof buf, false), 0);
    CHECK_EQ(kvf_vocab_piece(v, ims, buf, sizeof buf, true), 12);
    CHECK(memcmp(buf, "<|im_start|>", 12) == 0);
    CHECK_EQ(kvf_vocab_piece(v, user, buf, sizeof buf, false), 5);
    int32_t ids[] = {ims, hi, ime};
    CHECK_STR(dec(v, ids, 3, true), "<|im_start|>hi<|im_end|>");
    CHECK_STR(dec(v, ids, 3, false), "hi");
    /* GPT-2 characters decode to bytes: Ġ is a space */
    CHECK_EQ(kvf_vocab_piece(v, ' ', buf, sizeof buf, false), 1);
    CHECK_EQ(buf[0], ' ');
    CHECK_EQ(kvf_vocab_find(v, "\xC4\xA0", 2), ' '); /* "Ġ" is the token of byte 0x20 */

    /* end of generation: <|im_end|> (by name) and EOS */
    CHECK(kvf_vocab_is_eog(v, ime));
    CHECK(!kvf_vocab_is_eog(v, ims));
    CHECK(!kvf_vocab_is_eog(v, -1));
    CHECK(!kvf_vocab_is_eog(v, b.n));
    CHECK_EQ(kvf_vocab_bos(v), -1);
    CHECK_EQ(kvf_vocab_eos(v), -1);
    /* gpt2 without add_bos_token: ADD_BOS adds nothing */
    CHECK(!kvf_vocab_add_bos(v));
    CHECK_IDS(v, "hi", KVF_TOK_ADD_BOS, hi);
    kvf_vocab_free(v);
    tb_free(&b);
}

static void test_bpe_bos_eos(void) {
    tbpe b;
    tb_init(&b);
    int bos = tb_special(&b, "<|begin_of_text|>", KVF_TOKT_CONTROL);
    int eos = tb_special(&b, "<|end_of_text|>", KVF_TOKT_CONTROL);
    int eot = tb_special(&b, "<|eot_id|>", KVF_TOKT_CONTROL);
    int fake = tb_add_stored(&b, "</s>", 4, KVF_TOKT_NORMAL); /* text, not special */
    tb_special(&b, "<|start_header_id|>", KVF_TOKT_CONTROL);
    static gguf_str toks[MAXTOK], merges[MAXTOK];
    kvf_vocab_spec sp = tb_spec(&b, toks, merges, "llama-bpe");
    sp.bos = bos;
    sp.eos = eos;
    sp.add_bos = 1;
    kvf_vocab *v = NULL;
    CHECK(kvf_vocab_build(&sp, &v) == KVF_OK);
    if (v) {
        CHECK(kvf_vocab_add_bos(v));
        CHECK_IDS(v, "a", KVF_TOK_ADD_BOS, bos, 'a');
        CHECK_IDS(v, "a", 0, 'a');
        /* the text already starts with BOS (e.g. a Llama 3 chat prompt): no second one */
        CHECK_IDS(v, "<|begin_of_text|>a", KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL, bos, 'a');
        CHECK_IDS(v, "<|begin_of_text|>a", KVF_TOK_PARSE_SPECIAL, bos, 'a');
        CHECK(kvf_vocab_is_eog(v, eos));
        CHECK(kvf_vocab_is_eog(v, eot));
        CHECK(!kvf_vocab_is_eog(v, bos));
        CHECK(!kvf_vocab_is_eog(v, fake));
        CHECK_EQ(kvf_vocab_bos(v), bos);
        CHECK_EQ(kvf_vocab_eos(v), eos);
        CHECK_STR(kvf_vocab_chat_template_name(v), "llama3"); /* by its header tokens */
        kvf_vocab_free(v);
    }
    tb_free(&b);
}

static void test_buffers_and_bad_ids(void) {
    tbpe b;
    tb_init(&b);
    int ab = tb_merge(&b, "a", "b");
    int c = tb_special(&b, "<c>", KVF_TOKT_CONTROL);
    kvf_vocab *v = tb_build(&b, "gpt2");
    if (!v) {
        tb_free(&b);
        return;
    }
    int32_t ids[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
    CHECK_EQ(kvf_vocab_encode(v, "ab ab", 5, ids, 0, 0), -3);
    CHECK_EQ(kvf_vocab_encode(v, "ab ab", 5, NULL, 0, 0), -3);
    CHECK_EQ(kvf_vocab_encode(v, "ab ab", 5, ids, 2, 0), -3);
    CHECK_EQ(ids[0], -7); /* nothing written when it does not fit */
    CHECK_EQ(kvf_vocab_encode(v, "ab ab", 5, ids, 3, 0), 3);
    CHECK_EQ(ids[0], ab);
    CHECK_EQ(ids[1], ' ');
    CHECK_EQ(ids[2], ab);
    CHECK_EQ(ids[3], -7);
    CHECK_EQ(kvf_vocab_encode(v, "", 0, NULL, 0, 0), 0);
    CHECK_EQ(kvf_vocab_encode(v, NULL, 0, ids, 8, 0), 0);
    CHECK_EQ(kvf_vocab_encode(v, NULL, 3, ids, 8, 0), INT32_MIN);
    CHECK_EQ(kvf_vocab_encode(v, "a", 1, ids, -1, 0), INT32_MIN);
    CHECK_EQ(kvf_vocab_encode(v, "a", 1, NULL, 4, 0), INT32_MIN);
    CHECK_EQ(kvf_vocab_encode(NULL, "a", 1, ids, 4, 0), INT32_MIN);

    char buf[16];
    memset(buf, 'X', sizeof buf);
    CHECK_EQ(kvf_vocab_piece(v, ab, buf, 1, false), -2);
    CHECK_EQ(buf[0], 'X');
    CHECK_EQ(kvf_vocab_piece(v, ab, NULL, 0, false), -2);
    CHECK_EQ(kvf_vocab_piece(v, ab, buf, 2, false), 2);
    CHECK_EQ(buf[2], 'X'); /* no NUL from piece */
    CHECK_EQ(kvf_vocab_piece(v, c, buf, 0, true), -3);
    CHECK_EQ(kvf_vocab_piece(v, -1, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_piece(v, b.n, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_piece(v, INT32_MAX, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_piece(NULL, 0, buf, 16, false), INT32_MIN);

    int32_t seq[] = {ab, ' ', ab, c};
    memset(buf, 'X', sizeof buf);
    CHECK_EQ(kvf_vocab_decode(v, seq, 4, buf, 4, false), -5);
    CHECK_EQ(kvf_vocab_decode(v, seq, 4, buf, 5, false), 5); /* exact fit: no NUL */
    CHECK(memcmp(buf, "ab ab", 5) == 0);
    CHECK_EQ(buf[5], 'X');
    CHECK_EQ(kvf_vocab_decode(v, seq, 4, buf, 6, false), 5);
    CHECK_EQ(buf[5], 0);
    CHECK_EQ(kvf_vocab_decode(v, seq, 4, buf, 16, true), 8);
    CHECK_STR(buf, "ab ab<c>");
    CHECK_EQ(kvf_vocab_decode(v, seq, 4, NULL, 0, true), -8);
    CHECK_EQ(kvf_vocab_decode(v, seq, 0, buf, 16, true), 0);
    CHECK_EQ(buf[0], 0);
    int32_t bad[] = {ab, b.n};
    CHECK_EQ(kvf_vocab_decode(v, bad, 2, buf, 16, false), INT32_MIN);
    CHECK_CONTAINS(kvf_errmsg(), "out of range");
    int32_t neg[] = {-1};
    CHECK_EQ(kvf_vocab_decode(v, neg, 1, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_decode(v, NULL, 1, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_decode(v, seq, -1, buf, 16, false), INT32_MIN);
    CHECK_EQ(kvf_vocab_token_type(v, c), KVF_TOKT_CONTROL);
    CHECK_EQ(kvf_vocab_token_type(v, -1), -1);
    kvf_vocab_free(v);
    kvf_vocab_free(NULL);
    tb_free(&b);
}

/* Any bytes round-trip through a vocabulary that has all 256 byte tokens. */
static void test_bpe_roundtrip_random_bytes(void) {
    tbpe b;
    tb_init(&b);
    tb_merge(&b, "\xC3", "\xA9");
    tb_merge(&b, " ", "t");
    tb_merge(&b, "\xFF", "\xFF");
    kvf_vocab *vs[4] = {tb_build(&b, "gpt2"), tb_build(&b, "smollm"), tb_build(&b, "llama3"),
                        tb_build(&b, "qwen2")};
    static const char alphabet[] = "ab t\n\t\r 1'\xC3\xA9\xFF\xE4\xB8\xAD\xF0\x9F\xA6\x99\x80\xC2";
    int fails = 0;
    for (int round = 0; round < 300; round++) {
        char text[200];
        size_t n = (size_t)(t_rand64() % sizeof text);
        for (size_t i = 0; i < n; i++)
            text[i] = round % 2 ? (char)(t_rand64() & 0xFF)
                                : alphabet[t_rand64() % (sizeof alphabet - 1)];
        for (int k = 0; k < 4; k++) {
            if (!vs[k]) continue;
            int32_t ids[256];
            int32_t m = kvf_vocab_encode(vs[k], text, n, ids, 256, 0);
            char out[256];
            int32_t r = m >= 0 ? kvf_vocab_decode(vs[k], ids, m, out, sizeof out, false) : -1;
            if (r != (int32_t)n || memcmp(out, text, n) != 0) fails++;
        }
    }
    CHECK_EQ(fails, 0);
    for (int k = 0; k < 4; k++)
        kvf_vocab_free(vs[k]);
    tb_free(&b);
}

/* A vocabulary without some byte tokens drops those bytes, as Hugging Face's BPE without an
 * unknown token does (never the unknown id, which gpt2 GGUFs often set to <|endoftext|>). */
static void test_bpe_missing_bytes(void) {
    tbpe b;
    memset(&b, 0, sizeof b);
    for (int c = 0; c < 256; c++) {
        char s[4];
        int n = synth_byte_utf8(c, s);
        if (c != 0xFF) tb_add_stored(&b, s, (size_t)n, KVF_TOKT_NORMAL);
    }
    int eot = tb_special(&b, "<|endoftext|>", KVF_TOKT_CONTROL);
    static gguf_str toks[MAXTOK], merges[MAXTOK];
    kvf_vocab_spec sp = tb_spec(&b, toks, merges, "gpt2");
    sp.unk = eot;
    kvf_vocab *v = NULL;
    CHECK(kvf_vocab_build(&sp, &v) == KVF_OK);
    if (v) {
        CHECK_IDS(v,
                  "a\xFF"
                  "b",
                  0, 'a', 'b');
        CHECK_NO_IDS(v, "\xFF", 0);
        kvf_vocab_free(v);
    }
    tb_free(&b);
}

/* CPU time of this thread (ms): unaffected by other processes competing for the CPU */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Whether work on 4x the input took less than 10x the CPU time (linear: ~4x, quadratic: 16x).
 * A ratio, not a time bound, so sanitizers and busy machines do not matter; below 200 ms for
 * the large input nothing quadratic can be hiding. */
static int near_linear(double small_ms, double big_ms) {
    return big_ms < 200 || big_ms < 10 * small_ms;
}

/* Long and pathological input must stay near-linear (no quadratic scans). */
static void test_bpe_long_input(void) {
    tbpe b;
    tb_init(&b);
    tb_merge(&b, "a", "a");
    tb_merge(&b, "aa", "aa");
    tb_merge(&b, "aaaa", "aaaa");
    tb_merge(&b, "!", "!");
    kvf_vocab *v = tb_build(&b, "smollm");
    if (!v) {
        tb_free(&b);
        return;
    }
    size_t n = 200000;
    char *text = malloc(n);
    int32_t *ids = malloc(n * sizeof *ids);
    static const char fill[] = {'a', '!', ' ', '\n', '7', 'x'};
    double small = 0, big = 0;
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(text, fill[k], n);
        double t0 = cpu_ms();
        CHECK(kvf_vocab_encode(v, text, n / 4, ids, (int32_t)n, 0) > 0);
        double t1 = cpu_ms();
        int32_t m = kvf_vocab_encode(v, text, n, ids, (int32_t)n, 0);
        small += t1 - t0, big += cpu_ms() - t1;
        CHECK_MSG(m > 0, "fill '%c': %d", fill[k], m);
        if (fill[k] == 'a') CHECK_EQ(m, (int32_t)(n / 8)); /* every 8 a's one token */
        if (fill[k] == '!') CHECK_EQ(m, (int32_t)(n / 2));
        if (fill[k] == '7') CHECK_EQ(m, (int32_t)n);
        char *out = malloc(n + 1);
        int32_t r = kvf_vocab_decode(v, ids, m, out, (int32_t)n + 1, false);
        CHECK(r == (int32_t)n && memcmp(out, text, n) == 0);
        free(out);
    }
    CHECK_MSG(near_linear(small, big), "encoding 4x the bytes took %.0f ms vs %.0f ms (CPU)", big, small);
    free(text);
    free(ids);
    kvf_vocab_free(v);
    tb_free(&b);
}

/* ---- SentencePiece ------------------------------------------------------------------- */

typedef struct {
    const char *tok[400];
    float score[400];
    int32_t type[400];
    int n;
} tspm;

static int ts_add(tspm *s, const char *text, float score, int32_t type) {
    KVF_ASSERT(s->n < 400);
    s->tok[s->n] = text;
    s->score[s->n] = score;
    s->type[s->n] = type;
    return s->n++;
}

/* <unk> 0, <s> 1, </s> 2, then (with bytes) <0x00>..<0xFF> at 3..258. */
static void ts_init(tspm *s, bool bytes) {
    static char names[256][8];
    memset(s, 0, sizeof *s);
    ts_add(s, "<unk>", 0, KVF_TOKT_UNKNOWN);
    ts_add(s, "<s>", 0, KVF_TOKT_CONTROL);
    ts_add(s, "</s>", 0, KVF_TOKT_CONTROL);
    if (!bytes) return;
    for (int b = 0; b < 256; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        ts_add(s, names[b], 0, KVF_TOKT_BYTE);
    }
}

static kvf_vocab *ts_build(const tspm *s, int add_space_prefix, int add_bos) {
    static gguf_str toks[400];
    for (int i = 0; i < s->n; i++)
        toks[i] = (gguf_str){s->tok[i], strlen(s->tok[i])};
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    sp.model = "llama";
    sp.tokens = toks;
    sp.n_tokens = s->n;
    sp.types = s->type;
    sp.scores = s->score;
    sp.bos = 1;
    sp.eos = 2;
    sp.unk = 0;
    sp.add_space_prefix = add_space_prefix;
    sp.add_bos = add_bos;
    kvf_vocab *v = NULL;
    kvf_status st = kvf_vocab_build(&sp, &v);
    CHECK_MSG(st == KVF_OK, "kvf_vocab_build (spm): %s", kvf_errmsg());
    return v;
}

#define U       "\xE2\x96\x81" /* ▁ */
#define BYTE(b) (3 + (b))

static void test_spm_scores(void) {
    tspm s;
    ts_init(&s, true);
    int a = ts_add(&s, "a", -10, 1), bb = ts_add(&s, "b", -10, 1), c = ts_add(&s, "c", -10, 1);
    int ab = ts_add(&s, "ab", -2, 1), bc = ts_add(&s, "bc", -1, 1), aa = ts_add(&s, "aa", -3, 1);
    kvf_vocab *v = ts_build(&s, 0, -1);
    if (v) {
        CHECK_STR(kvf_vocab_pre_name(v), "spm");
        CHECK_IDS(v, "abc", 0, a, bc); /* bc scores higher than ab */
        CHECK_IDS(v, "ab", 0, ab);
        CHECK_IDS(v, "aaa", 0, aa, a); /* equal scores: leftmost first */
        CHECK_IDS(v, "cab", 0, c, ab);
        CHECK_IDS(v, "b", 0, bb);
        kvf_vocab_free(v);
    }
    s.score[ab] = -1, s.score[bc] = -2;
    v = ts_build(&s, 0, -1);
    if (v) {
        CHECK_IDS(v, "abc", 0, ab, c);
        kvf_vocab_free(v);
    }
}

static void test_spm_spaces_bytes_unk(void) {
    tspm s;
    ts_init(&s, true);
    int sp = ts_add(&s, U, -5, 1);
    int a = ts_add(&s, "a", -5, 1);
    int ua = ts_add(&s, U "a", -1, 1);
    int bb = ts_add(&s, "b", -5, 1);
    int ub = ts_add(&s, U "b", -1, 1);
    int uu = ts_add(&s, U U, -4, 1);
    int lt = ts_add(&s, "<", -5, 1);
    int ss = ts_add(&s, "s", -5, 1);
    int gt = ts_add(&s, ">", -5, 1);
    int lts = ts_add(&s, "<s", -2, 1);
    kvf_vocab *v = ts_build(&s, -1, -1); /* defaults: space prefix on, add BOS on */
    if (!v) return;
    CHECK(kvf_vocab_add_bos(v));
    CHECK_IDS(v, "a b", 0, ua, ub);
    CHECK_IDS(v, "a b", KVF_TOK_ADD_BOS, 1, ua, ub);
    CHECK_IDS(v, " a", 0, sp, ua);
    CHECK_IDS(v, "  a", 0, uu, ua); /* ▁a scores highest, then the first ▁▁ */
    CHECK_IDS(v, "a\xC3\xA9", 0, ua, BYTE(0xC3), BYTE(0xA9)); /* é: byte fallback */
    CHECK_IDS(v, "\t", 0, sp, BYTE('\t'));
    CHECK_NO_IDS(v, "", 0);
    CHECK_IDS(v, "", KVF_TOK_ADD_BOS, 1);
    /* control text is not merged into the control token */
    CHECK_IDS(v, "<s>", 0, sp, lts, gt);
    CHECK_IDS(v, "<s>", KVF_TOK_PARSE_SPECIAL, 1);
    CHECK_IDS(v, "<s>a", KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL, 1, ua); /* one BOS */
    /* after a special token the text gets the space prefix again */
    CHECK_IDS(v, "a</s>a", KVF_TOK_PARSE_SPECIAL, ua, 2, ua);
    /* decode: ▁ is a space, the prefix space goes, bytes come back */
    int32_t ids1[] = {ua, ub};
    CHECK_STR(dec(v, ids1, 2, false), "a b");
    int32_t ids2[] = {sp, ua};
    CHECK_STR(dec(v, ids2, 2, false), " a");
    CHECK_EQ(kvf_vocab_decode(v, ids2, 1, NULL, 0, false), 0); /* "▁" alone: nothing left */
    int32_t ids3[] = {1, ua, BYTE(0xC3), BYTE(0xA9), 2};
    CHECK_STR(dec(v, ids3, 5, false), "a\xC3\xA9");
    CHECK_STR(dec(v, ids3, 5, true), "<s> a\xC3\xA9</s>");
    char buf[8];
    CHECK_EQ(kvf_vocab_piece(v, ua, buf, sizeof buf, false), 2);
    CHECK(memcmp(buf, " a", 2) == 0); /* a single piece keeps its space */
    CHECK_EQ(kvf_vocab_piece(v, BYTE(0xC3), buf, sizeof buf, false), 1);
    CHECK_EQ((unsigned char)buf[0], 0xC3);
    CHECK_EQ(kvf_vocab_piece(v, 0, buf, sizeof buf, false), 0); /* <unk> is not text */
    CHECK_EQ(kvf_vocab_piece(v, 0, buf, sizeof buf, true), 5);
    CHECK(kvf_vocab_is_eog(v, 2));
    CHECK(!kvf_vocab_is_eog(v, 1));
    /* invalid UTF-8 and every byte round-trip through byte fallback */
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    int32_t ids[600], m = kvf_vocab_encode(v, all, 256, ids, 600, 0);
    char out[300];
    CHECK_EQ(kvf_vocab_decode(v, ids, m, out, sizeof out, false), 256);
    CHECK(memcmp(out, all, 256) == 0);
    (void)a, (void)bb, (void)lt, (void)ss;
    kvf_vocab_free(v);

    /* no space prefix; no BOS */
    v = ts_build(&s, 0, 0);
    if (v) {
        CHECK(!kvf_vocab_add_bos(v));
        CHECK_IDS(v, "a b", KVF_TOK_ADD_BOS, a, ub);
        int32_t ids4[] = {sp, ua};
        CHECK_STR(dec(v, ids4, 2, false), "  a"); /* nothing to strip without the prefix */
        kvf_vocab_free(v);
    }

    /* without byte tokens an unknown character is <unk> */
    tspm s2;
    ts_init(&s2, false);
    int ua2 = ts_add(&s2, U "a", -1, 1);
    ts_add(&s2, U, -5, 1);
    int a2 = ts_add(&s2, "a", -5, 1);
    v = ts_build(&s2, 1, 0);
    if (v) {
        CHECK_IDS(v,
                  "a\xC3\xA9"
                  "a",
                  0, ua2, 0, a2); /* ▁a <unk> a */
        kvf_vocab_free(v);
    }
}

/* sentencepiece: an unused piece may be formed while merging, but is split back at the end */
static void test_spm_unused(void) {
    tspm s;
    ts_init(&s, true);
    int a = ts_add(&s, "a", -5, 1), b = ts_add(&s, "b", -5, 1);
    ts_add(&s, "c", -5, 1);
    int d = ts_add(&s, "d", -5, 1);
    ts_add(&s, "ab", 0, KVF_TOKT_UNUSED);
    int abc = ts_add(&s, "abc", -1, 1);
    kvf_vocab *v = ts_build(&s, 0, 0);
    if (!v) return;
    CHECK_IDS(v, "abc", 0, abc);
    CHECK_IDS(v, "abd", 0, a, b, d);
    CHECK_IDS(v, "ab", 0, a, b);
    kvf_vocab_free(v);
}

static void test_spm_long_input(void) {
    tspm s;
    ts_init(&s, true);
    ts_add(&s, U, -5, 1);
    ts_add(&s, "x", -5, 1);
    ts_add(&s, "xx", -1, 1);
    ts_add(&s, "xxxx", -0.5f, 1);
    kvf_vocab *v = ts_build(&s, 1, 0);
    if (!v) return;
    size_t n = 100000;
    char *text = malloc(n);
    int32_t *ids = malloc((3 * n + 8) * sizeof *ids);
    char *out = malloc(n + 1);
    memset(text, 'x', n);
    double t0 = cpu_ms();
    CHECK(kvf_vocab_encode(v, text, n / 4, ids, (int32_t)(3 * n + 8), 0) > 0);
    double t1 = cpu_ms();
    int32_t m = kvf_vocab_encode(v, text, n, ids, (int32_t)(3 * n + 8), 0);
    double small = t1 - t0, big = cpu_ms() - t1;
    CHECK_EQ(m, (int32_t)(1 + n / 4)); /* ▁ then xxxx... */
    CHECK_EQ(kvf_vocab_decode(v, ids, m, out, (int32_t)n + 1, false), (int32_t)n);
    CHECK(memcmp(out, text, n) == 0);
    for (size_t i = 0; i < n; i++)
        text[i] = "\xC3\xA9 x"[i % 4]; /* bytes, spaces, x */
    m = kvf_vocab_encode(v, text, n, ids, (int32_t)(3 * n + 8), 0);
    CHECK(m > 0);
    CHECK_EQ(kvf_vocab_decode(v, ids, m, out, (int32_t)n + 1, false), (int32_t)n);
    CHECK(memcmp(out, text, n) == 0);
    CHECK_MSG(near_linear(small, big), "SentencePiece on 4x the characters took %.0f ms vs %.0f ms (CPU)", big, small);
    free(text);
    free(ids);
    free(out);
    kvf_vocab_free(v);
}

/* ---- chat templates ------------------------------------------------------------------ */

static const char SMOL_TMPL[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

/* A vocabulary with the given template text (NULL: none) and architecture. */
static kvf_vocab *chat_vocab(const char *tmpl, const char *arch, bool llama_tokens) {
    tbpe b;
    tb_init(&b);
    int bos = tb_special(&b, llama_tokens ? "<|begin_of_text|>" : "<s>", KVF_TOKT_CONTROL);
    int eos = tb_special(&b, llama_tokens ? "<|eot_id|>" : "</s>", KVF_TOKT_CONTROL);
    static gguf_str toks[MAXTOK], merges[MAXTOK];
    kvf_vocab_spec sp = tb_spec(&b, toks, merges, "gpt2");
    sp.bos = bos;
    sp.eos = eos;
    sp.arch = arch;
    if (tmpl) sp.chat_template = (gguf_str){tmpl, strlen(tmpl)};
    kvf_vocab *v = NULL;
    CHECK_MSG(kvf_vocab_build(&sp, &v) == KVF_OK, "%s", kvf_errmsg());
    tb_free(&b);
    return v;
}

static void check_chat_(const kvf_vocab *v, const kvf_chat_msg *m, size_t n, bool gen,
                        const char *want, int line) {
    char buf[2048];
    int32_t r = kvf_vocab_chat_format(v, m, n, gen, buf, sizeof buf);
    int ok = r == (int32_t)strlen(want) && strcmp(buf, want) == 0;
    if (ok) {
        /* the size query and an exact-size buffer agree */
        char *exact = malloc((size_t)r + 1);
        int32_t q = kvf_vocab_chat_format(v, m, n, gen, NULL, 0);
        exact[r] = '#';
        int32_t e = kvf_vocab_chat_format(v, m, n, gen, exact, r);
        ok = q == -r && e == r && memcmp(exact, want, (size_t)r) == 0 && exact[r] == '#';
        free(exact);
    }
    if (ok)
        t_pass++;
    else
        T_FAILMSG("line %d: chat: got %d \"%s\"\n  expected \"%s\"", line, r, r >= 0 ? buf : "",
                  want);
}
#define CHECK_CHAT(v, msgs, n, gen, want) check_chat_(v, msgs, n, gen, want, __LINE__)

static void test_chat_templates(void) {
    const kvf_chat_msg su[] = {{"system", "Be brief."}, {"user", "Hi there"}};
    const kvf_chat_msg u[] = {{"user", "Hi"}};
    const kvf_chat_msg suau[] = {
        {"system", " S "}, {"user", " U1\n"}, {"assistant", "A1 "}, {"user", "U2"}};

    kvf_vocab *v = chat_vocab(SMOL_TMPL, "llama", false);
    if (v) {
        CHECK_STR(kvf_vocab_chat_template_name(v), "chatml");
        CHECK_CHAT(v, u, 1, true,
                   "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n");
        CHECK_CHAT(v, su, 2, false,
                   "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi "
                   "there<|im_end|>\n");
        CHECK_CHAT(v, NULL, 0, true, "<|im_start|>assistant\n");
        CHECK_CHAT(v, NULL, 0, false, "");
        char small[10] = "#########";
        int32_t r = kvf_vocab_chat_format(v, u, 1, true, small, 5);
        CHECK(r < -5);
        CHECK_EQ(small[0], '#');
        const kvf_chat_msg bad[] = {{"user", NULL}};
        CHECK_EQ(kvf_vocab_chat_format(v, bad, 1, true, small, 10), INT32_MIN);
        const kvf_chat_msg bad2[] = {{NULL, "x"}};
        CHECK_EQ(kvf_vocab_chat_format(v, bad2, 1, true, small, 10), INT32_MIN);
        CHECK_EQ(kvf_vocab_chat_format(v, NULL, 1, true, small, 10), INT32_MIN);
        CHECK_EQ(kvf_vocab_chat_format(v, u, 1, true, small, -1), INT32_MIN);
        kvf_vocab_free(v);
    }
    /* ChatML without a default system message (escaped newlines in the template) */
    v = chat_vocab("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] "
                   "+ '<|im_end|>\\n'}}{% endfor %}",
                   "qwen2", false);
    if (v) {
        CHECK_CHAT(v, u, 1, true, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
        kvf_vocab_free(v);
    }
    /* Qwen2: the default system message is in an else branch, with escaped newlines */
    v = chat_vocab("{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + "
                   "messages[0]['content'] }}{% else %}{{ '<|im_start|>system\\nYou are a helpful "
                   "assistant.<|im_end|>\\n' }}{% endif %}",
                   "qwen2", false);
    if (v) {
        CHECK_CHAT(v, u, 1, false,
                   "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n");
        kvf_vocab_free(v);
    }

    v = chat_vocab("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}",
                   "llama", true);
    if (v) {
        CHECK_STR(kvf_vocab_chat_template_name(v), "llama3");
        CHECK_CHAT(v, su, 2, true,
                   "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe "
                   "brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi "
                   "there<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        const kvf_chat_msg ws[] = {{"user", " \t spaced\n\n "}};
        CHECK_CHAT(v, ws, 1, false,
                   "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nspaced"
                   "<|eot_id|>");
        CHECK_CHAT(v, NULL, 0, true, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        kvf_vocab_free(v);
    }

    v = chat_vocab("{{ '<|user|>\\n' + message['content'] + eos_token }}", "llama", false);
    if (v) {
        CHECK_STR(kvf_vocab_chat_template_name(v), "zephyr");
        CHECK_CHAT(v, su, 2, true,
                   "<|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n");
        CHECK_CHAT(v, NULL, 0, true, "");
        kvf_vocab_free(v);
    }

    v = chat_vocab("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}", "llama", false);
    if (v) {
        CHECK_STR(kvf_vocab_chat_template_name(v), "llama2");
        CHECK_CHAT(v, suau, 4, true,
                   "<s>[INST] <<SYS>>\n S \n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]");
        CHECK_CHAT(v, u, 1, false, "<s>[INST] Hi [/INST]");
        kvf_vocab_free(v);
    }

    /* unknown template: no family */
    kvf_set_log_level(KVF_LOG_WARN);
    v = chat_vocab("{{ '<start_of_turn>' + role }}", "gemma", false);
    kvf_set_log_level(KVF_LOG_INFO);
    if (v) {
        CHECK_STR(kvf_vocab_chat_template_name(v), "none");
        char buf[64];
        CHECK_EQ(kvf_vocab_chat_format(v, u, 1, true, buf, sizeof buf), INT32_MIN);
        kvf_vocab_free(v);
    }
    /* no template: by architecture */
    v = chat_vocab(NULL, "llama", false);
    if (v) CHECK_STR(kvf_vocab_chat_template_name(v), "llama2");
    kvf_vocab_free(v);
    v = chat_vocab(NULL, "qwen2", false);
    if (v) CHECK_STR(kvf_vocab_chat_template_name(v), "chatml");
    kvf_vocab_free(v);
    v = chat_vocab(NULL, "gpt2", false);
    if (v) CHECK_STR(kvf_vocab_chat_template_name(v), "none");
    kvf_vocab_free(v);
    CHECK_STR(kvf_vocab_chat_template_name(NULL), "none");
}

/* ---- GGUF metadata ----------------------------------------------------------------------- */

/* A small but complete gpt2 tokenizer in GGUF metadata. */
static sg_writer *gguf_vocab(void) {
    static const char *tokens[] = {"a", "b", "ab", "\xC4\xA0", "<|im_end|>"};
    static const int32_t types[] = {1, 1, 1, 1, 3};
    static const char *merges[] = {"a b"};
    sg_writer *w = sg_new();
    sg_add_str(w, "general.architecture", "llama");
    sg_add_str(w, "tokenizer.ggml.model", "gpt2");
    sg_add_str(w, "tokenizer.ggml.pre", "smollm");
    sg_add_arr_str(w, "tokenizer.ggml.tokens", tokens, 5);
    sg_add_arr(w, "tokenizer.ggml.token_type", GGUF_T_INT32, types, 5);
    sg_add_arr_str(w, "tokenizer.ggml.merges", merges, 1);
    sg_add_u32(w, "tokenizer.ggml.bos_token_id", 4);
    sg_add_u32(w, "tokenizer.ggml.eos_token_id", 4);
    sg_add_bool(w, "tokenizer.ggml.add_bos_token", 0);
    sg_add_str(w, "tokenizer.chat_template", "{{ '<|im_start|>' }}");
    return w;
}

/* Load from w; returns the status and leaves the message in kvf_errmsg(). */
static kvf_status load_from(sg_writer *w, kvf_vocab **v) {
    size_t len;
    uint8_t *buf = sg_serialize(w, &len);
    gguf_file *f = NULL;
    kvf_status st = gguf_parse(buf, len, &f);
    *v = NULL;
    if (st == KVF_OK) st = kvf_vocab_load(f, v);
    gguf_close(f);
    memset(buf, 0xAB, len); /* the vocabulary must have copied what it needs */
    free(buf);
    return st;
}

static void test_gguf_load(void) {
    kvf_vocab *v;
    sg_writer *w = gguf_vocab();
    CHECK_MSG(load_from(w, &v) == KVF_OK, "%s", kvf_errmsg());
    if (v) {
        CHECK_EQ(kvf_vocab_n_tokens(v), 5);
        CHECK_IDS(v, "ab ab", 0, 2, 3, 2); /* "ab", "Ġ", "ab" */
        CHECK_IDS(v, "ab<|im_end|>", KVF_TOK_PARSE_SPECIAL, 2, 4);
        CHECK(kvf_vocab_is_eog(v, 4));
        CHECK_STR(kvf_vocab_pre_name(v), "smollm");
        CHECK_STR(kvf_vocab_chat_template_name(v), "chatml");
        kvf_vocab_free(v);
    }
    sg_free(w);

    struct {
        const char *what, *key;
        kvf_status st;
        const char *msg;
    } cases[] = {
        {"types", "tokenizer.ggml.token_type", KVF_E_FORMAT, "tokenizer.ggml.token_type"},
        {"merge", "tokenizer.ggml.merges", KVF_E_FORMAT, "tokenizer.ggml.merges[0]"},
        {"merge2", "tokenizer.ggml.merges", KVF_E_FORMAT, "tokenizer.ggml.merges[0]"},
        {"merge3", "tokenizer.ggml.merges", KVF_E_FORMAT, "merged token is not in"},
        {"nomerge", "tokenizer.ggml.merges", KVF_E_FORMAT, "tokenizer.ggml.merges"},
        {"bos", "tokenizer.ggml.bos_token_id", KVF_E_FORMAT, "tokenizer.ggml.bos_token_id"},
        {"eos", "tokenizer.ggml.eos_token_id", KVF_E_FORMAT, "tokenizer.ggml.eos_token_id"},
        {"model", "tokenizer.ggml.model", KVF_E_UNSUPPORTED, "tokenizer.ggml.model"},
        {"nomodel", "tokenizer.ggml.model", KVF_E_FORMAT, "tokenizer.ggml.model"},
        {"tokens", "tokenizer.ggml.tokens", KVF_E_FORMAT, "tokenizer.ggml.tokens"},
        {"notokens", "tokenizer.ggml.tokens", KVF_E_FORMAT, "tokenizer.ggml.tokens"},
        {"typeval", "tokenizer.ggml.token_type", KVF_E_FORMAT, "tokenizer.ggml.token_type[1]"},
        {"scores", "tokenizer.ggml.scores", KVF_E_FORMAT, "tokenizer.ggml.scores"},
        {"bool", "tokenizer.ggml.add_bos_token", KVF_E_FORMAT, "tokenizer.ggml.add_bos_token"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        w = gguf_vocab();
        const char *wt = cases[i].what;
        sg_remove_kv(w, cases[i].key);
        if (!strcmp(wt, "types")) {
            int32_t t[4] = {1, 1, 1, 1};
            sg_add_arr(w, cases[i].key, GGUF_T_INT32, t, 4);
        } else if (!strcmp(wt, "merge")) {
            const char *m[] = {"a c"};
            sg_add_arr_str(w, cases[i].key, m, 1);
        } else if (!strcmp(wt, "merge2")) {
            const char *m[] = {"ab"};
            sg_add_arr_str(w, cases[i].key, m, 1);
        } else if (!strcmp(wt, "merge3")) {
            const char *m[] = {"a b", "b a"}; /* "ba" is not a token */
            sg_add_arr_str(w, cases[i].key, m, 2);
        } else if (!strcmp(wt, "bos")) {
            sg_add_u32(w, cases[i].key, 5);
        } else if (!strcmp(wt, "eos")) {
            sg_add_i32(w, cases[i].key, -2);
        } else if (!strcmp(wt, "model")) {
            sg_add_str(w, cases[i].key, "bert");
        } else if (!strcmp(wt, "tokens")) {
            int32_t t[5] = {0};
            sg_add_arr(w, cases[i].key, GGUF_T_INT32, t, 5);
        } else if (!strcmp(wt, "typeval")) {
            int32_t t[5] = {1, 9, 1, 1, 1};
            sg_add_arr(w, cases[i].key, GGUF_T_INT32, t, 5);
        } else if (!strcmp(wt, "scores")) {
            float s[3] = {0};
            sg_add_arr(w, cases[i].key, GGUF_T_FLOAT32, s, 3);
        } else if (!strcmp(wt, "bool")) {
            sg_add_str(w, cases[i].key, "yes");
        }
        kvf_status st = load_from(w, &v);
        CHECK_MSG(st == cases[i].st, "case %s: status %d, expected %d (%s)", wt, st, cases[i].st,
                  kvf_errmsg());
        CHECK_CONTAINS(kvf_errmsg(), cases[i].msg);
        CHECK(v == NULL);
        kvf_vocab_free(v);
        sg_free(w);
    }
    /* -1 means "none" for an id */
    w = gguf_vocab();
    sg_remove_kv(w, "tokenizer.ggml.bos_token_id");
    sg_add_i32(w, "tokenizer.ggml.bos_token_id", -1);
    CHECK(load_from(w, &v) == KVF_OK);
    CHECK_EQ(kvf_vocab_bos(v), -1);
    kvf_vocab_free(v);
    sg_free(w);
    /* unknown pre-tokenizer: GPT-2's, with a warning */
    w = gguf_vocab();
    sg_remove_kv(w, "tokenizer.ggml.pre");
    sg_add_str(w, "tokenizer.ggml.pre", "no-such-pre");
    kvf_set_log_level(KVF_LOG_ERROR);
    CHECK(load_from(w, &v) == KVF_OK);
    kvf_set_log_level(KVF_LOG_INFO);
    CHECK_STR(kvf_vocab_pre_name(v), "gpt2");
    kvf_vocab_free(v);
    sg_free(w);
    /* SentencePiece: a BYTE token that is not <0xXX> */
    w = sg_new();
    const char *st_toks[] = {"<unk>", "<0xZZ>", "a"};
    const int32_t st_types[] = {2, 6, 1};
    sg_add_str(w, "tokenizer.ggml.model", "llama");
    sg_add_arr_str(w, "tokenizer.ggml.tokens", st_toks, 3);
    sg_add_arr(w, "tokenizer.ggml.token_type", GGUF_T_INT32, st_types, 3);
    CHECK(load_from(w, &v) == KVF_E_FORMAT);
    CHECK_CONTAINS(kvf_errmsg(), "tokenizer.ggml.tokens[1]");
    sg_free(w);
    CHECK(kvf_vocab_load(NULL, &v) == KVF_E_INVAL);
    CHECK(kvf_vocab_build(NULL, &v) == KVF_E_INVAL);
    kvf_vocab_spec empty = kvf_vocab_spec_default();
    empty.model = "gpt2";
    CHECK(kvf_vocab_build(&empty, &v) == KVF_E_FORMAT);
}

/* The synthetic model generator's tokenizer (tests/synth.h) loads and round-trips. */
static void test_synth_model_vocab(void) {
    synth_vocab sv;
    synth_vocab_build(300, &sv);
    gguf_str *toks = malloc((size_t)sv.n * sizeof *toks);
    gguf_str *merges = malloc((size_t)sv.n_merges * sizeof *merges);
    char **ms = malloc((size_t)sv.n_merges * sizeof *ms);
    for (int i = 0; i < sv.n; i++)
        toks[i] = (gguf_str){sv.tok[i], strlen(sv.tok[i])};
    for (int i = 0; i < sv.n_merges; i++) {
        const char *l = sv.tok[sv.merge[i][0]], *r = sv.tok[sv.merge[i][1]];
        size_t nl = strlen(l), nr = strlen(r);
        ms[i] = malloc(nl + nr + 2);
        memcpy(ms[i], l, nl);
        ms[i][nl] = ' ';
        memcpy(ms[i] + nl + 1, r, nr + 1);
        merges[i] = (gguf_str){ms[i], nl + nr + 1};
    }
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    sp.model = "gpt2";
    sp.tokens = toks;
    sp.n_tokens = sv.n;
    sp.merges = merges;
    sp.n_merges = sv.n_merges;
    kvf_vocab *v = NULL;
    CHECK_MSG(kvf_vocab_build(&sp, &v) == KVF_OK, "%s", kvf_errmsg());
    if (v) {
        const char *text = synth_text;
        size_t n = strlen(text);
        int32_t *ids = malloc(n * sizeof *ids);
        int32_t m = kvf_vocab_encode(v, text, n, ids, (int32_t)n, 0);
        CHECK(m > 0 && m < (int32_t)n / 2); /* the learned merges compress their own text */
        char *out = malloc(n + 1);
        CHECK_EQ(kvf_vocab_decode(v, ids, m, out, (int32_t)n + 1, false), (int32_t)n);
        CHECK(memcmp(out, text, n) == 0);
        free(out);
        free(ids);
        kvf_vocab_free(v);
    }
    for (int i = 0; i < sv.n_merges; i++)
        free(ms[i]);
    free(ms);
    free(merges);
    free(toks);
    synth_vocab_free(&sv);
}

/* ---- robustness -------------------------------------------------------------------------- */

static void test_alloc_failures(void) {
    tbpe b;
    tb_init(&b);
    tb_merge(&b, "a", "b");
    tb_merge(&b, "ab", "c");
    tb_special(&b, "<|im_end|>", KVF_TOKT_CONTROL);
    static gguf_str toks[MAXTOK], merges[MAXTOK];
    kvf_vocab_spec sp = tb_spec(&b, toks, merges, "llama3");
    sp.chat_template = (gguf_str){SMOL_TMPL, strlen(SMOL_TMPL)};
    kvf_vocab *v = NULL;
    int n_failed = 0;
    int n_wrong = 0;
    for (long k = 1; k < 200; k++) {
        kvf_alloc_fail_after(k);
        kvf_status st = kvf_vocab_build(&sp, &v);
        kvf_alloc_fail_after(0);
        if (st == KVF_OK) break;
        n_failed++;
        n_wrong += st != KVF_E_NOMEM || v != NULL;
    }
    CHECK(n_failed > 3);
    CHECK_EQ(n_wrong, 0);
    CHECK(v != NULL);
    if (v) {
        const char text[] = "abc abcd\n\n<|im_end|> x 123 \xC3\xA9";
        int32_t ref[64], ids[64];
        int32_t nref = kvf_vocab_encode(v, text, sizeof text - 1, ref, 64, KVF_TOK_PARSE_SPECIAL);
        CHECK(nref > 0);
        int fails = 0;
        for (long k = 1; k < 100; k++) {
            kvf_alloc_fail_after(k);
            int32_t n = kvf_vocab_encode(v, text, sizeof text - 1, ids, 64, KVF_TOK_PARSE_SPECIAL);
            kvf_alloc_fail_after(0);
            if (n == INT32_MIN) {
                fails++;
                CHECK_CONTAINS(kvf_errmsg(), "out of memory");
                continue;
            }
            CHECK(n == nref && memcmp(ids, ref, (size_t)n * sizeof *ids) == 0);
            break;
        }
        CHECK(fails > 0);
        const kvf_chat_msg m[] = {{"user", "hello"}};
        char buf[256];
        kvf_alloc_fail_after(1);
        CHECK_EQ(kvf_vocab_chat_format(v, m, 1, true, buf, sizeof buf), INT32_MIN);
        kvf_alloc_fail_after(0);
        CHECK(kvf_vocab_chat_format(v, m, 1, true, buf, sizeof buf) > 0);
        kvf_vocab_free(v);
    }
    tb_free(&b);
}

typedef struct {
    const kvf_vocab *v;
    const char *text;
    const int32_t *ref;
    int32_t nref;
    int bad;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    int32_t *ids = malloc((size_t)j->nref * sizeof *ids + 4);
    for (int r = 0; r < 20; r++) {
        int32_t n = kvf_vocab_encode(j->v, j->text, strlen(j->text), ids, j->nref, 0);
        if (n != j->nref || memcmp(ids, j->ref, (size_t)n * sizeof *ids) != 0) j->bad++;
    }
    free(ids);
    return NULL;
}

/* A vocabulary is shared by threads without locks. */
static void test_threads(void) {
    tbpe b;
    tb_init(&b);
    tb_merge(&b, "t", "h");
    tb_merge(&b, "th", "e");
    tb_merge(&b, " ", "the");
    kvf_vocab *v = tb_build(&b, "gpt2");
    if (!v) {
        tb_free(&b);
        return;
    }
    size_t n = strlen(synth_text);
    char *text = malloc(4 * n + 1);
    for (int i = 0; i < 4; i++)
        memcpy(text + i * n, synth_text, n);
    text[4 * n] = 0;
    int32_t *ref = malloc(4 * n * sizeof *ref);
    int32_t nref = kvf_vocab_encode(v, text, 4 * n, ref, (int32_t)(4 * n), 0);
    CHECK(nref > 0);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){v, text, ref, nref, 0};
        pthread_create(&th[i], NULL, thread_main, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ(jobs[i].bad, 0);
    }
    free(ref);
    free(text);
    kvf_vocab_free(v);
    tb_free(&b);
}

int main(void) {
    RUN(test_unicode_classes);
    RUN(test_utf8);
    RUN(test_bpe_merge_order);
    RUN(test_pretokenizers);
    RUN(test_bpe_special_tokens);
    RUN(test_bpe_bos_eos);
    RUN(test_buffers_and_bad_ids);
    RUN(test_bpe_roundtrip_random_bytes);
    RUN(test_bpe_missing_bytes);
    RUN(test_bpe_long_input);
    RUN(test_spm_scores);
    RUN(test_spm_spaces_bytes_unk);
    RUN(test_spm_unused);
    RUN(test_spm_long_input);
    RUN(test_chat_templates);
    RUN(test_gguf_load);
    RUN(test_synth_model_vocab);
    RUN(test_alloc_failures);
    RUN(test_threads);
    return TEST_REPORT();
}
