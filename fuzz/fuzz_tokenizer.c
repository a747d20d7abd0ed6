/* fuzz_tokenizer.c - libFuzzer target for the tokenizer (src/engine/tokenizer.c, unicode.c) on
 * arbitrary bytes: request text, documents and files reach kvf_vocab_encode unfiltered.
 *
 * Input: a selector byte, a flags byte, then the text. The selector picks one of six
 * vocabularies built once: byte-level BPE (synth.h's merges, with <|endoftext|>, <|im_start|>,
 * <|im_end|> as control tokens and <tool_call> as a user-defined one) under each pre-tokenizer
 * (gpt2, smollm, llama3, qwen2), and SentencePiece BPE with byte fallback, with and without the
 * space prefix. Flags bit 0: KVF_TOK_PARSE_SPECIAL, bit 1: KVF_TOK_ADD_BOS.
 *
 * Checked: the size query (n_max 0) agrees with the ids written into an exact buffer, and a
 * buffer one short is refused without writing past it; every id is in the vocabulary and has
 * a piece; without ADD_BOS, decoding the ids with special tokens rendered gives back exactly
 * the input bytes (invalid UTF-8 included); the BPE pre-tokenizer's split ends are strictly
 * increasing and end at the text's end. A broken promise aborts.
 *
 * Build and run through scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
 * fuzz-sources: engine/tokenizer engine/unicode engine/gguf common engine/quant
 */
#include "../tests/synth.h"
#include "engine/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(c)                                                                             \
    do {                                                                                       \
        if (!(c)) {                                                                            \
            fprintf(stderr, "fuzz_tokenizer: broken invariant at line %d: %s\n", __LINE__, #c); \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

enum { N_VOCABS = 6 };
static kvf_vocab *g_vocab[N_VOCABS];

static kvf_vocab *build_bpe(const char *pre) {
    synth_vocab sv;
    synth_vocab_build(300, &sv);
    int eot = synth_vocab_add(&sv, "<|endoftext|>");
    synth_vocab_add(&sv, "<|im_start|>");
    int ime = synth_vocab_add(&sv, "<|im_end|>");
    synth_vocab_add(&sv, "<tool_call>");
    gguf_str *toks   = calloc((size_t)sv.n, sizeof *toks);
    gguf_str *merges = calloc((size_t)sv.n_merges + 1, sizeof *merges);
    int32_t  *types  = calloc((size_t)sv.n, sizeof *types);
    char    **mtext  = calloc((size_t)sv.n_merges + 1, sizeof *mtext);
    REQUIRE(toks && merges && types && mtext);
    for (int i = 0; i < sv.n; i++) {
        toks[i]  = (gguf_str){sv.tok[i], strlen(sv.tok[i])};
        types[i] = i >= sv.n - 4 ? (i == sv.n - 1 ? KVF_TOKT_USER_DEFINED : KVF_TOKT_CONTROL) : KVF_TOKT_NORMAL;
    }
    for (int i = 0; i < sv.n_merges; i++) {
        const char *l = sv.tok[sv.merge[i][0]], *r = sv.tok[sv.merge[i][1]];
        size_t      nl = strlen(l), nr = strlen(r);
        mtext[i] = malloc(nl + nr + 2);
        REQUIRE(mtext[i]);
        memcpy(mtext[i], l, nl);
        mtext[i][nl] = ' ';
        memcpy(mtext[i] + nl + 1, r, nr + 1);
        merges[i] = (gguf_str){mtext[i], nl + nr + 1};
    }
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    sp.model = "gpt2", sp.pre = pre, sp.tokens = toks, sp.n_tokens = sv.n, sp.types = types;
    sp.merges = merges, sp.n_merges = sv.n_merges, sp.bos = eot, sp.eos = ime, sp.add_bos = 1;
    kvf_vocab *v = NULL;
    if (kvf_vocab_build(&sp, &v) != KVF_OK) {
        fprintf(stderr, "fuzz_tokenizer: bpe vocabulary: %s\n", kvf_errmsg());
        abort();
    }
    for (int i = 0; i < sv.n_merges; i++) free(mtext[i]);
    free(mtext), free(toks), free(merges), free(types);
    synth_vocab_free(&sv);
    return v;
}

/* <unk> <s> </s>, the 256 byte tokens, then pieces with scores (longer = higher) */
static kvf_vocab *build_spm(int space_prefix) {
    static const char *const pieces[] = {
        "\xE2\x96\x81", "\xE2\x96\x81t", "\xE2\x96\x81th", "\xE2\x96\x81the", "he", "th", "in",
        "\xE2\x96\x81" "a", "an", "and", "\xE2\x96\x81" "and", "er", "on", "\xE2\x96\x81" "o", "of",
        "\xE2\x96\x81of", "es", "ing", "\xE2\x96\x81in", "\xC3\xA9", "\xE4\xB8\xAD", "\xE6\x96\x87",
        "\xE4\xB8\xAD\xE6\x96\x87", "e", "t", "a", "o", "n", "s", "h", "r", "d", "i", "g"};
    enum { NP = sizeof pieces / sizeof pieces[0], N = 3 + 256 + NP };
    static char names[256][8];
    gguf_str    toks[N];
    float       scores[N];
    int32_t     types[N];
    const char *sp3[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++) {
        toks[i]   = (gguf_str){sp3[i], strlen(sp3[i])};
        scores[i] = 0, types[i] = i == 0 ? KVF_TOKT_UNKNOWN : KVF_TOKT_CONTROL;
    }
    for (int b = 0; b < 256; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        toks[3 + b] = (gguf_str){names[b], strlen(names[b])};
        scores[3 + b] = 0, types[3 + b] = KVF_TOKT_BYTE;
    }
    for (int i = 0; i < NP; i++) {
        toks[259 + i]   = (gguf_str){pieces[i], strlen(pieces[i])};
        scores[259 + i] = -(float)(NP - (int)strlen(pieces[i])) - 0.01f * (float)i;
        types[259 + i]  = KVF_TOKT_NORMAL;
    }
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    sp.model = "llama", sp.tokens = toks, sp.n_tokens = N, sp.types = types, sp.scores = scores;
    sp.bos = 1, sp.eos = 2, sp.unk = 0, sp.add_space_prefix = space_prefix, sp.add_bos = 1;
    kvf_vocab *v = NULL;
    if (kvf_vocab_build(&sp, &v) != KVF_OK) {
        fprintf(stderr, "fuzz_tokenizer: spm vocabulary: %s\n", kvf_errmsg());
        abort();
    }
    return v;
}

static void setup(void) {
    kvf_set_log_level(0);
    static const char *const pre[4] = {"gpt2", "smollm", "llama3", "qwen2"};
    for (int i = 0; i < 4; i++) g_vocab[i] = build_bpe(pre[i]);
    g_vocab[4] = build_spm(1);
    g_vocab[5] = build_spm(0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_vocab[0]) setup();
    if (size < 2) return 0;
    const kvf_vocab *v     = g_vocab[data[0] % N_VOCABS];
    uint32_t         flags = (data[1] & 1 ? KVF_TOK_PARSE_SPECIAL : 0) | (data[1] & 2 ? KVF_TOK_ADD_BOS : 0);
    const char      *text  = (const char *)data + 2;
    size_t           len   = size - 2;

    int32_t need = kvf_vocab_encode(v, text, len, NULL, 0, flags);
    REQUIRE(need != INT32_MIN && need <= 0); /* nothing fits in no room: -(ids needed) */
    need = -need;
    int32_t *ids = malloc(sizeof *ids * ((size_t)need + 1));
    REQUIRE(ids);
    if (need > 0) {
        ids[need - 1] = -7;
        REQUIRE(kvf_vocab_encode(v, text, len, ids, need - 1, flags) == -need);
        REQUIRE(ids[need - 1] == -7);
    }
    int32_t n = kvf_vocab_encode(v, text, len, ids, need, flags);
    REQUIRE(n == need);
    int32_t nv = kvf_vocab_n_tokens(v);
    for (int32_t i = 0; i < n; i++) {
        REQUIRE(ids[i] >= 0 && ids[i] < nv);
        char piece[256];
        REQUIRE(kvf_vocab_piece(v, ids[i], piece, sizeof piece, true) != INT32_MIN);
    }
    bool spm = strcmp(kvf_vocab_pre_name(v), "spm") == 0;
    /* SentencePiece with special tokens parsed: like llama.cpp, each text fragment after a
     * special token gets the space prefix too, and decoding removes only the first: no exact
     * round trip there by design */
    if (!(flags & KVF_TOK_ADD_BOS) && !(spm && (flags & KVF_TOK_PARSE_SPECIAL))) {
        int32_t dn = kvf_vocab_decode(v, ids, n, NULL, 0, true);
        REQUIRE(dn <= 0 && dn != INT32_MIN);
        char *out = malloc((size_t)-dn + 1);
        REQUIRE(out);
        int32_t w = kvf_vocab_decode(v, ids, n, out, -dn + 1, true);
        REQUIRE(w == -dn);
        if (spm) {
            /* SentencePiece writes spaces as U+2581 and reads every U+2581 back as a space:
             * a "\xE2\x96\x81" in the text decodes as " " (as in SentencePiece itself) */
            char  *want = malloc(len + 1);
            size_t k    = 0;
            REQUIRE(want);
            for (size_t i = 0; i < len;) {
                if (i + 3 <= len && memcmp(text + i, "\xE2\x96\x81", 3) == 0) want[k++] = ' ', i += 3;
                else want[k++] = text[i++];
            }
            REQUIRE((size_t)w == k && memcmp(out, want, k) == 0);
            free(want);
        } else {
            REQUIRE((size_t)w == len && memcmp(out, text, len) == 0);
        }
        free(out);
    }
    free(ids);

    if (strcmp(kvf_vocab_pre_name(v), "spm") != 0) {
        int32_t k = kvf_vocab_pretokenize(v, text, len, NULL, 0);
        REQUIRE(k != INT32_MIN && k <= 0);
        size_t *ends = malloc(sizeof *ends * ((size_t)-k + 1));
        REQUIRE(ends);
        REQUIRE(kvf_vocab_pretokenize(v, text, len, ends, -k) == -k);
        for (int32_t i = 0; i < -k; i++) REQUIRE(ends[i] > (i ? ends[i - 1] : 0) && ends[i] <= len);
        REQUIRE(k == 0 ? len == 0 : ends[-k - 1] == len);
        free(ends);
    }
    return 0;
}
