/* llama_logits.c - one-off helper for validate_oracle.sh (not built by the Makefile): runs
 * llama.cpp (the build bench/peer.sh makes in third_party/) on given token ids and writes the
 * logits of every position, so the numpy oracle can be checked against an independent engine.
 *
 *   llama_logits MODEL PROMPT_FILE OUT [f16|f32]
 *
 * tokenizes the text of PROMPT_FILE with llama.cpp (special tokens parsed, no BOS added), writes
 * the ids to OUT.ids (text) and the logits to OUT.f32 (float32 [n_tokens][n_vocab]). The last
 * argument picks the KV cache type: f16 (llama.cpp's default, flash attention auto) or f32 (and
 * flash attention off), to see how much of the difference the f16 cache accounts for.
 */
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool no_progress(float progress, void *user) {
    (void)progress;
    (void)user;
    return true;
}

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)user;
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: llama_logits MODEL PROMPT_FILE OUT [f16|f32]\n");
        return 2;
    }
    int   kv_f32 = argc > 4 && strcmp(argv[4], "f32") == 0;
    FILE *f      = fopen(argv[2], "rb");
    if (!f) return 1;
    static char text[1 << 20];
    size_t      len = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.progress_callback         = no_progress;
    struct llama_model *model    = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    llama_token *ids = malloc(sizeof(*ids) * (len + 16));
    int n = llama_tokenize(vocab, text, (int32_t)len, ids, (int32_t)len + 16, false, true);
    if (n <= 0) return 1;
    char path[4096];
    snprintf(path, sizeof path, "%s.ids", argv[3]);
    FILE *fi = fopen(path, "w");
    for (int i = 0; i < n; i++) fprintf(fi, "%d ", ids[i]);
    fclose(fi);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = (uint32_t)n;
    cp.n_threads = cp.n_threads_batch = 2;
    if (kv_f32) {
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) return 1;
    int n_vocab = llama_vocab_n_tokens(vocab);

    struct llama_batch b = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        b.token[i] = ids[i];
        b.pos[i] = i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = 1;
    }
    b.n_tokens = n;
    if (llama_decode(ctx, b) != 0) return 1;
    snprintf(path, sizeof path, "%s.f32", argv[3]);
    FILE *o = fopen(path, "wb");
    for (int i = 0; i < n; i++) fwrite(llama_get_logits_ith(ctx, i), 4, (size_t)n_vocab, o);
    fclose(o);
    llama_batch_free(b);
    llama_free(ctx);
    llama_model_free(model);
    free(ids);
    return 0;
}
