/* fuzz_chat.c - libFuzzer target for the chat-template renderer (src/engine/tokenizer.c): the
 * template text comes from a GGUF file (tokenizer.chat_template, parsed for its family and a
 * default system message) and the messages from HTTP requests.
 *
 * Input: a flags byte, then fields separated by 0x00: the template text, then role, content,
 * role, content, ... Flags bit 0: add the assistant opening; bits 1-2: general.architecture
 * (llama, qwen2, gemma, none); bit 3: Llama 3 style BOS/EOS token texts.
 *
 * Checked: building the vocabulary succeeds or fails with a message; the family is one of the
 * five names; "none" refuses to render; otherwise the size query (length 0) says exactly how
 * many bytes an exact buffer receives, nothing is written past a short or exact buffer, a
 * buffer with room gets a NUL, and the rendered text tokenizes (special tokens parsed) and
 * decodes back to itself. A broken promise aborts.
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
            fprintf(stderr, "fuzz_chat: broken invariant at line %d: %s\n", __LINE__, #c);     \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

enum { MAX_MSGS = 16 };

static kvf_vocab *build(const char *tmpl, size_t tn, const char *arch, bool llama3) {
    static const char *const sp_chatml[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
    static const char *const sp_llama3[] = {"<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                            "<|end_header_id|>"};
    static const char *const sp_other[]  = {"<s>", "</s>", "<|user|>", "<|system|>", "<|assistant|>"};
    gguf_str toks[256 + 16];
    int32_t  types[256 + 16];
    char     bytes[256][4];
    int      n = 0;
    for (int b = 0; b < 256; b++) {
        int k     = synth_byte_utf8(b, bytes[b]);
        toks[n]   = (gguf_str){bytes[b], (size_t)k};
        types[n++] = KVF_TOKT_NORMAL;
    }
    int bos = -1, eos = -1;
#define ADD(list)                                                                              \
    for (size_t i = 0; i < sizeof list / sizeof list[0]; i++) {                                \
        toks[n] = (gguf_str){list[i], strlen(list[i])};                                        \
        types[n++] = KVF_TOKT_CONTROL;                                                         \
    }
    if (llama3) {
        bos = n, eos = n + 1;
        ADD(sp_llama3);
    } else {
        ADD(sp_chatml);
        ADD(sp_other);
        bos = 256 + 3, eos = 256 + 4; /* <s> </s> */
    }
#undef ADD
    kvf_vocab_spec sp = kvf_vocab_spec_default();
    sp.model = "gpt2", sp.pre = "gpt2", sp.tokens = toks, sp.n_tokens = n, sp.types = types;
    sp.bos = bos, sp.eos = eos, sp.arch = arch;
    sp.chat_template = (gguf_str){tmpl, tn};
    kvf_vocab *v = NULL;
    kvf_status st = kvf_vocab_build(&sp, &v);
    if (st != KVF_OK) {
        REQUIRE(v == NULL && kvf_errmsg()[0] != '\0');
        return NULL;
    }
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int quiet;
    if (!quiet) kvf_set_log_level(0), quiet = 1;
    if (size < 1) return 0;
    uint8_t flags = data[0];
    /* fields: NUL-terminated copies */
    char *copy = malloc(size);
    REQUIRE(copy);
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    const char *field[1 + 2 * MAX_MSGS];
    size_t      flen[1 + 2 * MAX_MSGS];
    int         nf = 0;
    for (size_t i = 0, start = 0; i < size && nf < 1 + 2 * MAX_MSGS; i++)
        if (copy[i] == '\0') field[nf] = copy + start, flen[nf++] = i - start, start = i + 1;
    static const char *const arch[4] = {"llama", "qwen2", "gemma", NULL};
    kvf_vocab *v = build(field[0], flen[0], arch[(flags >> 1) & 3], flags & 8);
    if (!v) {
        free(copy);
        return 0;
    }
    kvf_chat_msg msgs[MAX_MSGS];
    size_t       nm = 0;
    for (int i = 1; i + 1 < nf; i += 2) msgs[nm++] = (kvf_chat_msg){field[i], field[i + 1]};
    bool        gen  = flags & 1;
    const char *name = kvf_vocab_chat_template_name(v);
    REQUIRE(!strcmp(name, "none") || !strcmp(name, "chatml") || !strcmp(name, "llama3") ||
            !strcmp(name, "zephyr") || !strcmp(name, "llama2"));
    int32_t q = kvf_vocab_chat_format(v, msgs, nm, gen, NULL, 0);
    if (!strcmp(name, "none")) {
        REQUIRE(q == INT32_MIN);
    } else {
        REQUIRE(q <= 0 && q != INT32_MIN);
        int32_t n   = -q;
        char   *out = malloc((size_t)n + 2);
        REQUIRE(out);
        memset(out, '#', (size_t)n + 2);
        if (n > 0) {
            REQUIRE(kvf_vocab_chat_format(v, msgs, nm, gen, out, n - 1) == q);
            REQUIRE(out[n - 1] == '#' && out[n] == '#');
        }
        REQUIRE(kvf_vocab_chat_format(v, msgs, nm, gen, out, n) == n);
        REQUIRE(out[n] == '#');
        REQUIRE(kvf_vocab_chat_format(v, msgs, nm, gen, out, n + 1) == n);
        REQUIRE(out[n] == '\0' && out[n + 1] == '#');
        /* the role and content texts are in there, in order, for ChatML */
        if (!strcmp(name, "chatml")) {
            const char *at = out;
            for (size_t i = 0; i < nm; i++) {
                const char *r = strstr(at, msgs[i].role);
                REQUIRE(r != NULL);
                const char *c = strstr(r + strlen(msgs[i].role), msgs[i].content);
                REQUIRE(c != NULL);
                at = c + strlen(msgs[i].content);
            }
        }
        int32_t ni = kvf_vocab_encode(v, out, (size_t)n, NULL, 0, KVF_TOK_PARSE_SPECIAL);
        REQUIRE(ni <= 0 && ni != INT32_MIN);
        int32_t *ids = malloc(sizeof *ids * ((size_t)-ni + 1));
        REQUIRE(ids);
        REQUIRE(kvf_vocab_encode(v, out, (size_t)n, ids, -ni, KVF_TOK_PARSE_SPECIAL) == -ni);
        char *back = malloc((size_t)n + 1);
        REQUIRE(back);
        REQUIRE(kvf_vocab_decode(v, ids, -ni, back, n + 1, true) == n);
        REQUIRE(memcmp(back, out, (size_t)n) == 0);
        free(back);
        free(ids);
        free(out);
    }
    kvf_vocab_free(v);
    free(copy);
    return 0;
}
