/* tool_fusecheck.c - the fusion invariants of ../shared/docs/fusion.md §3 checked on a real model
 * (tests/integration/qwen_fusion.sh runs it on the Qwen2.5 models; any GGUF with a chat template
 * works). Usage: tool_fusecheck MODEL [THREADS]. Prints one line per check and
 * "N passed, N failed".
 *
 * The prompt is built exactly as `kvfuse eval` and `kvfuse ask` build it (tools/cli/rag.c: chat
 * template head with the model's default system message + instruction | documents | question +
 * template tail), with three short documents. The checks:
 *   context   the segments concatenated equal the tokenization of the whole chat-formatted prompt
 *             in one piece (what a plain chat request prefills), segment 0 starts with the
 *             template's system turn (Qwen's default system message, <|im_start|> as one special
 *             token) and the question segment ends with the assistant turn's opening;
 *   rope      layer 0 of the fused cache (reuse: every document's K rotated from its chunk's
 *             pre-RoPE keys to its position in the prompt, V copied) equals full prefill's layer
 *             0 cell by cell (layer 0's K and V do not depend on context, so this isolates the
 *             RoPE recovery: NeoX pairing, the K bias added before the rotation); and, as a
 *             control that the comparison can fail, differs from full's keys one position away;
 *   exact     the first document, precomputed after the same prefix, is exact: its K and V at
 *             every layer equal full's, and with a single document `reuse` gives full's
 *             first-token distribution and greedy answer;
 *   ratio 1   every selective method at ratio 1.0 gives full's first-token distribution and
 *             greedy answer.
 * Sessions and chunks are f32 so that differences are float rounding, not storage. */
#include "../tools/cli/rag.c"
#include "engine/kv_cells.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s: ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    if (ok) n_pass++;
    else n_fail++;
    fflush(stdout);
}

static const char *const DOCS[] = {
    "Marlow Bridge is a stone arch bridge over the river Teme in the village of Ashcombe. It was "
    "designed by the engineer Harriet Vane in 1832 and replaced a wooden ferry crossing. The "
    "bridge has five arches and carries a single lane of traffic.\n\n",
    "Harriet Vane (1790-1861) was a civil engineer born in the port town of Kelsby. After an "
    "apprenticeship at the Kelsby docks she built canals, two lighthouses and several bridges. "
    "She is buried in the churchyard of St Aldhelm in Kelsby.\n\n",
    "The river Teme rises in the Clun hills and flows east for about 130 kilometres before it "
    "joins a larger river south of Worcester. Its valley is known for orchards and hop "
    "gardens, and several old mills still stand along its banks.\n\n",
};
static const char QUESTION[] = "\n\nAnswer the question directly based on the given passages. "
                               "The answer should be within 5 words.\nQuestion: In which town "
                               "was the designer of Marlow Bridge born?\nAnswer:";
static const char INSTRUCTION[] = "You will be asked a question after reading several passages. "
                                  "Please directly answer the question based on the given "
                                  "passages.\nPassages:\n";

/* ---- helpers ------------------------------------------------------------------------ */

static double kl_div(const float *p_logits, const float *q_logits, int32_t n) {
    double mp = -INFINITY, mq = -INFINITY, sp = 0, sq = 0, kl = 0;
    for (int32_t i = 0; i < n; i++) mp = fmax(mp, p_logits[i]), mq = fmax(mq, q_logits[i]);
    for (int32_t i = 0; i < n; i++) sp += exp(p_logits[i] - mp), sq += exp(q_logits[i] - mq);
    for (int32_t i = 0; i < n; i++) {
        double lp = p_logits[i] - mp - log(sp), lq = q_logits[i] - mq - log(sq);
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy continuation of a session holding a prefilled prompt: n tokens (stops at EOG). */
static int greedy(kvf_session *s, const kvf_model *m, int n, int32_t *out) {
    int32_t nv = kvf_model_n_vocab(m), k = 0;
    for (; k < n; k++) {
        int32_t t = argmax(kvf_session_logits(s, -1), nv);
        out[k]    = t;
        if (kvf_token_is_eog(m, t) || kvf_session_eval(s, &t, 1, 0) != KVF_OK) {
            k++;
            break;
        }
    }
    return k;
}

/* K (post-RoPE) or V of one cell, layer l, all KV heads: out[kvd] */
static void cell_kv(const kvf_session *s, int l, int32_t cell, int v, float *out) {
    int hd = s->m->hp.head_dim;
    for (int h = 0; h < s->m->hp.n_head_kv; h++)
        for (int i = 0; i < hd; i++)
            out[h * hd + i] = v ? kvf_kv_get(s, kvf_v_at(s, l, h), (int64_t)cell * hd + i)
                                : kvf_kv_get(s, kvf_kt_at(s, l, h), kvf_kt_idx(i, cell, s->m->hp.head_dim));
}

/* max |a - b| / max(1, max |a|) over cells [c0, c1) of layer l, K or V; the fused cache cell
 * ca[j] is compared with the reference's cell cb[j] = j + shift */
static double cache_diff(const kvf_session *a, const kvf_session *b, int l, int v, int32_t c0,
                         int32_t c1, int32_t shift) {
    int64_t kvd = (int64_t)a->m->hp.n_head_kv * a->m->hp.head_dim;
    float  *x = malloc(sizeof(float) * (size_t)kvd), *y = malloc(sizeof(float) * (size_t)kvd);
    double  d = 0, mx = 1;
    for (int32_t c = c0; x && y && c < c1; c++) {
        cell_kv(a, l, c, v, x);
        cell_kv(b, l, c + shift, v, y);
        for (int64_t i = 0; i < kvd; i++) d = fmax(d, fabs((double)x[i] - y[i])), mx = fmax(mx, fabs((double)y[i]));
    }
    free(x), free(y);
    return d / mx;
}

typedef struct {
    const kvf_model *m;
    kvf_session     *full, *fused;
    kvf_chunk_cache *cache;
    int32_t          nv;
    float           *ref_logits;
    int32_t          ref[16], n_ref;
} ctx;

static kvf_status fuse(ctx *c, const rag_req *r, kvf_method method, float ratio) {
    kvf_fuse_params fp = kvf_fuse_default_params();
    fp.method          = method;
    fp.ratio           = ratio;
    fp.dtype           = KVF_CHUNK_F32;
    kvf_status st      = kvf_session_fuse(c->fused, c->cache, r->segs, r->n_segs, &fp, NULL);
    if (st != KVF_OK) fprintf(stderr, "fuse %s: %s\n", kvf_method_name(method), kvf_errmsg());
    return st;
}

static int run_full(ctx *c, const rag_req *r) {
    kvf_fuse_params fp = kvf_fuse_default_params();
    fp.method          = KVF_METHOD_FULL;
    if (kvf_session_fuse(c->full, NULL, r->segs, r->n_segs, &fp, NULL) != KVF_OK) return -1;
    memcpy(c->ref_logits, kvf_session_logits(c->full, -1), sizeof(float) * (size_t)c->nv);
    return 0;
}

/* first-token KL and greedy answer of the fused session against the reference */
static void same_answer(ctx *c, const char *what) {
    double  kl = kl_div(c->ref_logits, kvf_session_logits(c->fused, -1), c->nv);
    int32_t g[16];
    int     n    = greedy(c->fused, c->m, (int)(sizeof g / sizeof g[0]), g);
    int     same = n == c->n_ref && memcmp(g, c->ref, sizeof(int32_t) * (size_t)n) == 0;
    check(kl < 2e-3, "%s: first-token KL(full || fused) = %.2e (< 2e-3)", what, kl);
    check(same, "%s: greedy answer (%d tokens) equals full's", what, n);
}

static int build(const kvf_model *m, int n_docs, rag_req *r) {
    char err[256] = "";
    if (rag_tokenize(m, NULL, INSTRUCTION, DOCS, n_docs, QUESTION, r, err, sizeof err) != 0) {
        fprintf(stderr, "tool_fusecheck: %s\n", err);
        return -1;
    }
    return 0;
}

/* ---- checks ------------------------------------------------------------------------- */

static void check_context(const kvf_model *m, const rag_req *r, int n_docs) {
    /* the whole prompt as one chat message, tokenized in one piece */
    size_t len = strlen(INSTRUCTION) + strlen(QUESTION) + 1;
    for (int i = 0; i < n_docs; i++) len += strlen(DOCS[i]);
    char *user = malloc(len);
    strcpy(user, INSTRUCTION);
    for (int i = 0; i < n_docs; i++) strcat(user, DOCS[i]);
    strcat(user, QUESTION);
    kvf_chat_msg msg  = {"user", user};
    int32_t      need = -kvf_chat_format(m, &msg, 1, true, NULL, 0);
    char        *text = malloc((size_t)need + 1);
    kvf_chat_format(m, &msg, 1, true, text, need + 1);
    int32_t  cap = r->total + 64, n = 0;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cap);
    n            = kvf_tokenize(m, text, strlen(text), ids, cap, KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL);
    /* the same text: the concatenated segments detokenize to the chat-formatted prompt */
    int32_t *cat = malloc(sizeof(int32_t) * (size_t)r->total);
    for (int32_t sgi = 0, p = 0; sgi < r->n_segs; p += r->segs[sgi].n, sgi++)
        memcpy(cat + p, r->segs[sgi].ids, sizeof(int32_t) * (size_t)r->segs[sgi].n);
    char   *back = malloc((size_t)need * 2 + 64);
    int32_t nb   = kvf_detokenize(m, cat, r->total, back, need * 2 + 63, true);
    check(nb == (int32_t)strlen(text) && memcmp(back, text, (size_t)nb) == 0,
          "context: the %d segments (%d tokens) detokenize to exactly the chat-formatted prompt "
          "(%d bytes, special tokens included)", r->n_segs, r->total, (int)strlen(text));
    /* the ids may differ where a segment boundary splits what the one-piece tokenization
     * merges (each segment is tokenized on its own, by design): say where */
    int32_t first = -1;
    for (int32_t i = 0; i < r->total && i < n && first < 0; i++)
        if (cat[i] != ids[i]) first = i;
    char pa[64] = "", pb[64] = "";
    if (first >= 0) {
        kvf_detokenize(m, cat + first, first + 2 <= r->total ? 2 : 1, pa, sizeof pa - 1, true);
        kvf_detokenize(m, ids + first, 1, pb, sizeof pb - 1, true);
        for (char *q = pa; *q; q++) if (*q == '\n') *q = '|';
        for (char *q = pb; *q; q++) if (*q == '\n') *q = '|';
    }
    printf("info: one-piece tokenization %d tokens, segmented %d; first difference at %d: "
           "segmented '%s' vs one-piece '%s' ('|' = newline)\n", n, r->total, first, pa, pb);
    free(cat), free(back);
    /* the system turn and the assistant opening */
    char head[512], tail[256];
    int32_t nh = kvf_detokenize(m, r->segs[0].ids, r->segs[0].n < 40 ? r->segs[0].n : 40, head,
                                (int32_t)sizeof head - 1, true);
    head[nh > 0 ? nh : 0] = 0;
    const kvf_segment *qs = &r->segs[r->n_segs - 1];
    int32_t nt = kvf_detokenize(m, qs->ids + qs->n - 5, 5, tail, (int32_t)sizeof tail - 1, true);
    tail[nt > 0 ? nt : 0] = 0;
    if (strcmp(kvf_chat_template_name(m), "chatml") == 0) {
        int32_t tmp[4];
        int32_t im = kvf_tokenize(m, "<|im_start|>", 12, tmp, 4, KVF_TOK_PARSE_SPECIAL);
        check(im == 1, "context: <|im_start|> is a single special token");
        check(r->segs[0].n > 0 && r->segs[0].ids[0] == tmp[0] && strstr(head, "system\n") &&
                  strstr(head, "<|im_end|>\n<|im_start|>user\n"),
              "context: segment 0 opens with the system turn, then the user turn");
        check(strstr(tail, "<|im_end|>\n<|im_start|>assistant\n") != NULL,
              "context: the question segment ends with the assistant opening");
        kvf_model_info info;
        kvf_model_get_info(m, &info);
        if (strcmp(info.arch, "qwen2") == 0)
            check(strstr(head, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") != NULL,
                  "context: Qwen's default system message is in segment 0: %.70s", head + 13);
    }
    free(user), free(text), free(ids);
}

static void set_ref(ctx *c) {
    c->n_ref = greedy(c->full, c->m, (int)(sizeof c->ref / sizeof c->ref[0]), c->ref);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tool_fusecheck MODEL [THREADS]\n");
        return 2;
    }
    kvf_model *m = NULL;
    if (kvf_model_load(argv[1], NULL, &m) != KVF_OK) {
        fprintf(stderr, "tool_fusecheck: %s\n", kvf_errmsg());
        return 2;
    }
    ctx                c  = {.m = m, .nv = kvf_model_n_vocab(m)};
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 1024;
    sp.n_threads          = argc > 2 ? atoi(argv[2]) : 0;
    sp.kv_type            = KVF_KV_F32;
    c.ref_logits          = malloc(sizeof(float) * (size_t)c.nv);
    rag_req r3 = {0}, r1 = {0};
    if (!c.ref_logits || kvf_session_new(m, &sp, &c.full) != KVF_OK ||
        kvf_session_new(m, &sp, &c.fused) != KVF_OK || kvf_chunk_cache_new_memory(0, &c.cache) != KVF_OK ||
        build(m, 3, &r3) != 0 || build(m, 1, &r1) != 0 || run_full(&c, &r3) != 0) {
        fprintf(stderr, "tool_fusecheck: setup failed: %s\n", kvf_errmsg());
        return 2;
    }
    const kvf_hparams *hp = &m->hp;
    int32_t            P = r3.segs[0].n, T = r3.total, q0 = T - r3.segs[r3.n_segs - 1].n;
    int32_t            d1 = P + r3.segs[1].n;
    printf("model %s: %d layers, %d heads, %d KV heads, head_dim %d, n_rot %d; prompt %d tokens "
           "(prefix %d, documents %d, %d, %d, question %d)\n",
           argv[1], hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_rot, T, P,
           r3.segs[1].n, r3.segs[2].n, r3.segs[3].n, T - q0);

    check_context(m, &r3, 3);

    /* reuse: the fused cache holds every document's rotated chunk KV */
    if (fuse(&c, &r3, KVF_METHOD_REUSE, 0) == KVF_OK) {
        double dk = cache_diff(c.fused, c.full, 0, 0, 0, T, 0), dv = cache_diff(c.fused, c.full, 0, 1, 0, T, 0);
        check(dk < 1e-4, "rope: layer-0 K of all %d cells (chunks rotated to their positions) equals "
                         "full's: max rel diff %.2e (< 1e-4)", T, dk);
        check(dv < 1e-4, "rope: layer-0 V of all %d cells equals full's: max rel diff %.2e", T, dv);
        double ek = 0, ev = 0;
        for (int l = 0; l < hp->n_layer; l++) {
            ek = fmax(ek, cache_diff(c.fused, c.full, l, 0, 0, d1, 0));
            ev = fmax(ev, cache_diff(c.fused, c.full, l, 1, 0, d1, 0));
        }
        check(ek < 2e-3 && ev < 2e-3, "exact: prefix and first document (cells 0..%d, precomputed after "
                                      "the same prefix) K and V equal full's at every layer: max rel "
                                      "diff K %.2e, V %.2e (< 2e-3)", d1 - 1, ek, ev);
        double lk = cache_diff(c.fused, c.full, hp->n_layer - 1, 0, d1, q0, 0);
        check(lk > 1e-2, "control: deeper layers of the later documents do differ from full's "
                         "(last layer K rel diff %.2e > 1e-2): the comparison sees the fused cache", lk);
    }
    /* control: document 2 computed right after the prefix (its chunk's positions) has other
     * layer-0 keys than at its place in the prompt, but the same values */
    kvf_session_truncate(c.fused, 0);
    if (kvf_session_eval(c.fused, r3.segs[0].ids, P, 0) == KVF_OK &&
        kvf_session_eval(c.fused, r3.segs[2].ids, r3.segs[2].n, 0) == KVF_OK) {
        double dk = cache_diff(c.fused, c.full, 0, 0, P, P + r3.segs[2].n, d1 - P);
        double dv = cache_diff(c.fused, c.full, 0, 1, P, P + r3.segs[2].n, d1 - P);
        check(dk > 1e-2 && dv < 1e-4, "control: unrotated, document 2's layer-0 K differs from full's "
                                      "(%.2e > 1e-2) while its V matches (%.2e)", dk, dv);
    }
    set_ref(&c);
    static const kvf_method sel[] = {KVF_METHOD_A3, KVF_METHOD_CACHEBLEND, KVF_METHOD_KVSHARE,
                                     KVF_METHOD_PROPHET, KVF_METHOD_FOCUS};
    for (size_t i = 0; i < sizeof sel / sizeof sel[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "ratio 1: %s", kvf_method_name(sel[i]));
        if (fuse(&c, &r3, sel[i], 1.0f) == KVF_OK) same_answer(&c, what);
    }
    /* a single document precomputed after the prefix: reuse is exact */
    if (run_full(&c, &r1) == 0) {
        set_ref(&c);
        if (fuse(&c, &r1, KVF_METHOD_REUSE, 0) == KVF_OK) same_answer(&c, "exact: one document, reuse");
    }
    rag_free(&r3), rag_free(&r1);
    kvf_chunk_cache_free(c.cache);
    kvf_session_free(c.full), kvf_session_free(c.fused);
    free(c.ref_logits);
    kvf_model_free(m);
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
