/* test_model.c - model loading and the forward pass on tiny synthetic GGUF models (no
 * downloads): logits against an independent double-precision reference written here (it
 * shares only the GGUF reader and the dequantiser with the engine, both tested elsewhere),
 * for llama and qwen2 and every weight type; determinism across thread counts and micro-batch
 * sizes; batched prefill == token-by-token decode; truncation; split-K decode attention;
 * sampling; and clear errors for malformed models and bad calls. */
#include "harness.h"
#include "synth.h"

#include "common.h"
#include "engine/gguf.h"
#include "kvfuse.h"
#include "engine/model.h"
#include "engine/quant.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[256];

static const char *tmp_path(const char *name) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    return buf;
}

/* ---- the reference: double precision, written for clarity ------------------------------ */

typedef struct {
    gguf_file *f;
    int        neox, n_layer, n_embd, n_head, n_kv, hd, n_ff, n_vocab, n_rot;
    double     base, eps;
} refm;

static double *tensor_d(refm *r, const char *name, int64_t *n_out) {
    const gguf_tensor *t = gguf_find_tensor(r->f, name);
    if (!t) return NULL;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float  *f = malloc(sizeof(float) * (size_t)n);
    kvf_dequantize(t->type, t->data, f, n);
    double *d = malloc(sizeof(double) * (size_t)n);
    for (int64_t i = 0; i < n; i++) d[i] = f[i];
    free(f);
    if (n_out) *n_out = n;
    return d;
}

static void ref_linear(const double *x, int n, int in, const double *W, int out, const double *b,
                       double *y) {
    for (int i = 0; i < n; i++)
        for (int o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int k = 0; k < in; k++) s += x[(int64_t)i * in + k] * W[(int64_t)o * in + k];
            y[(int64_t)i * out + o] = s;
        }
}

static void ref_norm(const double *x, int n, int d, const double *w, double eps, double *y) {
    for (int i = 0; i < n; i++) {
        double ss = 0;
        for (int k = 0; k < d; k++) ss += x[i * d + k] * x[i * d + k];
        double r = 1.0 / sqrt(ss / d + eps);
        for (int k = 0; k < d; k++) y[i * d + k] = x[i * d + k] * r * w[k];
    }
}

static void ref_rope(refm *r, double *v, int n, int heads) {
    int half = r->n_rot / 2;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++) {
            double *x = v + ((int64_t)i * heads + h) * r->hd;
            for (int j = 0; j < half; j++) {
                double th = i * pow(r->base, -2.0 * j / r->n_rot), c = cos(th), s = sin(th);
                int    a = r->neox ? j : 2 * j, b = r->neox ? j + half : 2 * j + 1;
                double xa = x[a], xb = x[b];
                x[a] = xa * c - xb * s;
                x[b] = xa * s + xb * c;
            }
        }
}

static double *ref_forward(const char *path, const int32_t *ids, int n) {
    refm r;
    if (gguf_open(path, &r.f) != KVF_OK) return NULL;
    gguf_str a;
    gguf_get_str(r.f, "general.architecture", &a);
    char arch[16] = {0};
    memcpy(arch, a.s, a.n < 15 ? a.n : 15);
    char     key[96];
    uint32_t u;
    float    fl;
#define U(k) (snprintf(key, sizeof key, "%s." k, arch), gguf_get_u32(r.f, key, &u), (int)u)
    r.neox    = strcmp(arch, "qwen2") == 0;
    r.n_layer = U("block_count");
    r.n_embd  = U("embedding_length");
    r.n_head  = U("attention.head_count");
    r.n_kv    = U("attention.head_count_kv");
    r.n_ff    = U("feed_forward_length");
    r.hd      = r.n_embd / r.n_head;
    r.n_rot   = r.hd;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    gguf_get_f32(r.f, key, &fl);
    r.base = fl;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    gguf_get_f32(r.f, key, &fl);
    r.eps = fl;
#undef U
    int64_t nemb;
    double *emb = tensor_d(&r, "token_embd.weight", &nemb);
    int     d = r.n_embd, qd = r.n_head * r.hd, kvd = r.n_kv * r.hd, g = r.n_head / r.n_kv;
    r.n_vocab   = (int)(nemb / d);
    double *x   = malloc(sizeof(double) * (size_t)(n * d)), *h = malloc(sizeof(double) * (size_t)(n * d));
    double *q = malloc(sizeof(double) * (size_t)(n * qd)), *k = malloc(sizeof(double) * (size_t)(n * kvd));
    double *v = malloc(sizeof(double) * (size_t)(n * kvd)), *o = malloc(sizeof(double) * (size_t)(n * qd));
    double *gt = malloc(sizeof(double) * (size_t)(n * r.n_ff)), *up = malloc(sizeof(double) * (size_t)(n * r.n_ff));
    double *t2 = malloc(sizeof(double) * (size_t)(n * d)), *sc = malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++) memcpy(x + i * d, emb + (int64_t)ids[i] * d, sizeof(double) * (size_t)d);
    char nm[96];
#define T(s) (snprintf(nm, sizeof nm, "blk.%d." s, l), tensor_d(&r, nm, NULL))
    for (int l = 0; l < r.n_layer; l++) {
        double *an = T("attn_norm.weight"), *wq = T("attn_q.weight"), *wk = T("attn_k.weight");
        double *wv = T("attn_v.weight"), *wo = T("attn_output.weight"), *fn = T("ffn_norm.weight");
        double *wg = T("ffn_gate.weight"), *wu = T("ffn_up.weight"), *wd = T("ffn_down.weight");
        double *bq = T("attn_q.bias"), *bk = T("attn_k.bias"), *bv = T("attn_v.bias");
        ref_norm(x, n, d, an, r.eps, h);
        ref_linear(h, n, d, wq, qd, bq, q);
        ref_linear(h, n, d, wk, kvd, bk, k);
        ref_linear(h, n, d, wv, kvd, bv, v);
        ref_rope(&r, q, n, r.n_head);
        ref_rope(&r, k, n, r.n_kv);
        for (int i = 0; i < n; i++)
            for (int hh = 0; hh < r.n_head; hh++) {
                int    kh = hh / g;
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= i; j++) {
                    double s = 0;
                    for (int c = 0; c < r.hd; c++)
                        s += q[((int64_t)i * r.n_head + hh) * r.hd + c] * k[((int64_t)j * r.n_kv + kh) * r.hd + c];
                    sc[j] = s / sqrt((double)r.hd);
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= i; j++) sum += sc[j] = exp(sc[j] - mx);
                for (int c = 0; c < r.hd; c++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += sc[j] * v[((int64_t)j * r.n_kv + kh) * r.hd + c];
                    o[((int64_t)i * r.n_head + hh) * r.hd + c] = acc / sum;
                }
            }
        ref_linear(o, n, qd, wo, d, NULL, t2);
        for (int i = 0; i < n * d; i++) x[i] += t2[i];
        ref_norm(x, n, d, fn, r.eps, h);
        ref_linear(h, n, d, wg, r.n_ff, NULL, gt);
        ref_linear(h, n, d, wu, r.n_ff, NULL, up);
        for (int i = 0; i < n * r.n_ff; i++) gt[i] = gt[i] / (1 + exp(-gt[i])) * up[i];
        ref_linear(gt, n, r.n_ff, wd, d, NULL, t2);
        for (int i = 0; i < n * d; i++) x[i] += t2[i];
        free(an), free(wq), free(wk), free(wv), free(wo), free(fn), free(wg), free(wu), free(wd);
        free(bq), free(bk), free(bv);
    }
#undef T
    double *onorm = tensor_d(&r, "output_norm.weight", NULL);
    double *wout  = tensor_d(&r, "output.weight", NULL);
    ref_norm(x, n, d, onorm, r.eps, h);
    double *logits = malloc(sizeof(double) * (size_t)n * (size_t)r.n_vocab);
    ref_linear(h, n, d, wout ? wout : emb, r.n_vocab, NULL, logits);
    free(onorm), free(wout), free(emb), free(x), free(h), free(q), free(k), free(v), free(o);
    free(gt), free(up), free(t2), free(sc);
    gguf_close(r.f);
    return logits;
}

/* ---- helpers --------------------------------------------------------------------------- */

static kvf_model *load(const char *path, const char *isa, kvf_precision prec) {
    kvf_model_params p = kvf_model_default_params();
    p.isa              = isa;
    p.precision        = prec;
    p.n_threads        = 2;
    kvf_model *m       = NULL;
    if (kvf_model_load(path, &p, &m) != KVF_OK) fprintf(stderr, "load %s: %s\n", path, kvf_errmsg());
    return m;
}

/* all-position logits of ids, copied out */
static float *run(kvf_model *m, const int32_t *ids, int n, int threads, int ubatch) {
    kvf_session_params sp = kvf_session_default_params();
    sp.n_threads          = threads;
    sp.n_ubatch           = ubatch;
    kvf_session *s;
    if (kvf_session_new(m, &sp, &s) != KVF_OK) return NULL;
    int32_t nv  = kvf_model_n_vocab(m);
    float  *out = NULL;
    if (kvf_session_eval(s, ids, n, KVF_EVAL_ALL_LOGITS) == KVF_OK) {
        out = malloc(sizeof(float) * (size_t)n * (size_t)nv);
        for (int i = 0; i < n; i++) memcpy(out + (int64_t)i * nv, kvf_session_logits(s, i), sizeof(float) * (size_t)nv);
    }
    kvf_session_free(s);
    return out;
}

static void make_ids(int32_t *ids, int n, int n_vocab, uint64_t seed) {
    for (int i = 0; i < n; i++) {
        seed   = seed * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((seed >> 33) % (uint64_t)(n_vocab - 3));
    }
}

/* ---- tests ----------------------------------------------------------------------------- */

typedef struct {
    const char *arch;
    uint32_t    wtype, etype;
    int         untied;
} model_case;

static const model_case cases[] = {
    {"llama", KVF_TYPE_F32, KVF_TYPE_F32, 0},   {"llama", KVF_TYPE_Q4_1, KVF_TYPE_Q8_0, 0},
    {"llama", KVF_TYPE_Q4_0, KVF_TYPE_Q4_0, 1}, {"llama", KVF_TYPE_Q5_0, KVF_TYPE_F16, 0},
    {"llama", KVF_TYPE_Q5_1, KVF_TYPE_Q5_1, 1}, {"llama", KVF_TYPE_Q8_0, KVF_TYPE_BF16, 0},
    {"llama", KVF_TYPE_Q4_K, KVF_TYPE_Q6_K, 0}, {"qwen2", KVF_TYPE_F16, KVF_TYPE_F16, 0},
    {"qwen2", KVF_TYPE_Q5_K, KVF_TYPE_Q4_K, 1}, {"qwen2", KVF_TYPE_Q6_K, KVF_TYPE_Q8_0, 0},
    {"qwen2", KVF_TYPE_BF16, KVF_TYPE_Q4_1, 0},
};

/* compare engine logits with the reference: max |diff| and argmax agreement */
static void compare(const double *ref, const float *l, int n, int nv, double *maxref, double *dmax,
                    double *dmean, int *agree) {
    *maxref = *dmax = *dmean = 0;
    *agree              = 0;
    for (int i = 0; i < n; i++) {
        int ar = 0, al = 0;
        for (int t = 0; t < nv; t++) {
            int64_t j = (int64_t)i * nv + t;
            *maxref   = fmax(*maxref, fabs(ref[j]));
            *dmax     = fmax(*dmax, fabs(l[j] - ref[j]));
            *dmean += fabs(l[j] - ref[j]);
            if (ref[j] > ref[(int64_t)i * nv + ar]) ar = t;
            if (l[j] > l[(int64_t)i * nv + al]) al = t;
        }
        *agree += ar == al;
    }
    *dmean /= (double)n * nv;
}

/* Each precision against the double reference: f32 within float rounding, q16 (default) close,
 * q8 (int8 activations) in distribution. Every kernel set meets the same bounds. */
static void test_against_reference(void) {
    const struct {
        kvf_precision prec;
        double        tol;       /* max |diff| <= tol * (1 + max |logit|) */
        int           min_agree; /* argmax agreement in percent */
    } precs[] = {{KVF_PREC_F32, 1e-4, 100}, {KVF_PREC_Q16, 2e-3, 100}, {KVF_PREC_Q8, 0.05, 80}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const model_case *mc  = &cases[ci];
        synth_cfg         cfg = {.arch = mc->arch, .wtype = mc->wtype, .etype = mc->etype,
                                 .untied = mc->untied, .seed = 100 + ci, .n_layer = 2};
        synth_info        info;
        const char       *path = tmp_path("ref.gguf");
        if (synth_model_file(&cfg, path, &info) != KVF_OK) {
            T_FAILMSG("synth_model_file: %s", kvf_errmsg());
            continue;
        }
        int     n = 37, nv = info.n_vocab;
        int32_t ids[37];
        make_ids(ids, n, nv, ci);
        double *ref = ref_forward(path, ids, n);
        CHECK_MSG(ref != NULL, "reference forward");
        if (!ref) continue;
        char what[96];
        snprintf(what, sizeof what, "%s %s/%s%s", mc->arch, kvf_type_name(mc->wtype),
                 kvf_type_name(mc->etype), mc->untied ? " untied" : "");
        for (size_t pi = 0; pi < 3; pi++)
            for (int isa = 0; isa < 2; isa++) {
                if (isa == 1 && precs[pi].prec != KVF_PREC_Q16) continue; /* ref kernels: q16 */
                kvf_model *m = load(path, isa ? "ref" : NULL, precs[pi].prec);
                float     *l = m ? run(m, ids, n, 2, 0) : NULL;
                CHECK_MSG(l != NULL, "%s: run", what);
                if (l) {
                    double maxref, dmax, dmean;
                    int    agree;
                    compare(ref, l, n, nv, &maxref, &dmax, &dmean, &agree);
                    CHECK_MSG(dmax <= precs[pi].tol * (1 + maxref) && agree * 100 >= precs[pi].min_agree * n,
                              "%s %s%s: max |diff| %.3g (max |logit| %.3g), argmax %d/%d", what,
                              kvf_precision_name(precs[pi].prec), isa ? " (ref kernels)" : "", dmax,
                              maxref, agree, n);
                    if (ci == 1 && !isa)
                        fprintf(stderr, "  %s %s: max |diff| %.2g, mean %.2g (max |logit| %.1f), argmax %d/%d\n",
                                what, kvf_precision_name(precs[pi].prec), dmax, dmean, maxref, agree, n);
                }
                free(l);
                kvf_model_free(m);
            }
        free(ref);
    }
}

/* Batches of a and b rows get the same matmul arithmetic. In q16, kernel sets without VNNI
 * multiply batches of many rows with float activations and small ones (decode) with two-level
 * int8 (kvf_matmul_float_rows); the two agree within q16's accuracy, not bit for bit. */
static int same_arith(const kvf_model *m, int a, int b) {
    return kvf_matmul_float_rows(m->K, a, 1) == kvf_matmul_float_rows(m->K, b, 1);
}

/* l == base bit for bit if `exact`, else within q16's tolerance (test_against_reference) */
static int logits_match(const float *l, const float *base, int64_t n, int exact) {
    if (exact) return memcmp(l, base, sizeof(float) * (size_t)n) == 0;
    double d = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) d = fmax(d, fabs(l[i] - base[i])), mag = fmax(mag, fabs(base[i]));
    return d <= 2e-3 * (1 + mag);
}

/* same logits for every thread count and micro-batch size, and for prefill vs decode (bit for
 * bit where the batches get the same arithmetic, see same_arith) */
static void test_determinism_and_batching(void) {
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q4_1, .etype = KVF_TYPE_Q8_0, .n_layer = 3, .seed = 7};
    synth_info info;
    const char *path = tmp_path("det.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    kvf_model *m = load(path, NULL, KVF_PREC_Q16);
    if (!m) return;
    int     n = 50, nv = info.n_vocab;
    int32_t ids[50];
    make_ids(ids, n, nv, 3);
    float *base = run(m, ids, n, 1, 0);
    int    threads[] = {2, 3}, ubs[] = {1, 7, 64};
    for (int i = 0; i < 2; i++) {
        float *l = run(m, ids, n, threads[i], 0);
        CHECK_MSG(l && memcmp(l, base, sizeof(float) * (size_t)(n * nv)) == 0,
                  "threads=%d differs from threads=1", threads[i]);
        free(l);
    }
    for (int i = 0; i < 3; i++) {
        float *l     = run(m, ids, n, 2, ubs[i]);
        int    exact = same_arith(m, KVF_MIN(ubs[i], n), n) &&
                    same_arith(m, n % ubs[i] ? n % ubs[i] : ubs[i], n);
        CHECK_MSG(l && logits_match(l, base, (int64_t)n * nv, exact),
                  "ubatch=%d differs from the default", ubs[i]);
        free(l);
    }
    /* token-by-token decode gives the same last logits as one prefill */
    kvf_session *s;
    kvf_session_new(m, NULL, &s);
    for (int i = 0; i < n; i++) kvf_session_eval(s, &ids[i], 1, 0);
    CHECK_EQ(kvf_session_n_past(s), n);
    CHECK(logits_match(kvf_session_logits(s, -1), base + (int64_t)(n - 1) * nv, nv, same_arith(m, 1, n)));
    /* truncate and continue == fresh run of the same sequence */
    int32_t alt[50];
    memcpy(alt, ids, sizeof alt);
    for (int i = 30; i < n; i++) alt[i] = (ids[i] + 11) % (nv - 3);
    CHECK_EQ(kvf_session_truncate(s, 30), KVF_OK);
    CHECK_EQ(kvf_session_eval(s, alt + 30, n - 30, 0), KVF_OK);
    float *fresh = run(m, alt, n, 1, 0);
    CHECK(fresh && logits_match(kvf_session_logits(s, -1), fresh + (int64_t)(n - 1) * nv, nv,
                                same_arith(m, 1, n) && same_arith(m, n - 30, n)));
    CHECK(kvf_session_logits(s, 0) == NULL); /* only the last row is kept */
    free(fresh);
    kvf_session_free(s);
    free(base);
    kvf_model_free(m);
}

/* decode with a long context takes the split-K attention path: same result as prefill */
static void test_split_k_decode(void) {
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q8_0, .n_layer = 2, .n_ctx = 2048, .seed = 9};
    synth_info info;
    const char *path = tmp_path("split.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    const char *isas[] = {NULL, "ref"};
    for (int k = 0; k < 2; k++) {
        kvf_model *m = load(path, isas[k], KVF_PREC_Q16);
        if (!m) return;
        int      n   = 700, nv = info.n_vocab;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
        make_ids(ids, n, nv, 5);
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx              = 1024;
        kvf_session *a, *b;
        kvf_session_new(m, &sp, &a);
        kvf_session_new(m, &sp, &b);
        kvf_session_eval(a, ids, n, 0);         /* batched: the 700th row inside a prefill */
        kvf_session_eval(b, ids, n - 1, 0);
        kvf_session_eval(b, &ids[n - 1], 1, 0); /* decode step over 699 cached keys */
        const float *la = kvf_session_logits(a, -1), *lb = kvf_session_logits(b, -1);
        double       dmax = 0, mag = 0;
        int          finite = 1;
        for (int t = 0; t < nv; t++) {
            finite &= isfinite(lb[t]);
            dmax = fmax(dmax, fabs(la[t] - lb[t])), mag = fmax(mag, fabs(la[t]));
        }
        CHECK_MSG(finite && dmax <= 1e-3 * (1 + mag), "%s: split-K decode differs from prefill by %.3g",
                  isas[k] ? isas[k] : "auto", dmax);
        kvf_session_free(a), kvf_session_free(b);
        free(ids);
        kvf_model_free(m);
    }
}

/* kvf_decode_batch == separate decode steps, for sessions at different depths */
static void test_decode_batch(void) {
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q4_1, .etype = KVF_TYPE_Q8_0, .n_layer = 2, .n_ctx = 2048, .seed = 13};
    synth_info info;
    const char *path = tmp_path("batch.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    kvf_model *m = load(path, NULL, KVF_PREC_Q16);
    if (!m) return;
    int                nv = info.n_vocab, lens[3] = {20, 150, 700};
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 1024;
    kvf_session *bat[3], *one[3];
    int32_t     *ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = malloc(sizeof(int32_t) * (size_t)(lens[i] + 8));
        make_ids(ids[i], lens[i] + 8, nv, 40 + (uint64_t)i);
        kvf_session_new(m, &sp, &bat[i]);
        kvf_session_new(m, &sp, &one[i]);
        kvf_session_eval(bat[i], ids[i], lens[i], 0);
        kvf_session_eval(one[i], ids[i], lens[i], 0);
    }
    for (int step = 0; step < 4; step++) {
        int32_t tok[3];
        for (int i = 0; i < 3; i++) tok[i] = ids[i][lens[i] + step];
        CHECK_EQ(kvf_decode_batch(bat, tok, 3), KVF_OK);
        for (int i = 0; i < 3; i++) {
            kvf_session_eval(one[i], &tok[i], 1, 0);
            const float *a = kvf_session_logits(bat[i], -1), *b = kvf_session_logits(one[i], -1);
            double       d = 0, mag = 0;
            for (int t = 0; t < nv; t++) d = fmax(d, fabs(a[t] - b[t])), mag = fmax(mag, fabs(b[t]));
            /* short contexts: the same arithmetic; 700 keys: the single step splits the keys;
             * a batch of 3 rows taking the float-row path: within q16's tolerance */
            double tol = !same_arith(m, 3, 1) ? 2e-3 : i < 2 ? 0 : 1e-4;
            CHECK_MSG(d <= tol * (1 + mag), "session %d step %d: batched differs by %.3g", i, step, d);
            CHECK_EQ(kvf_session_n_past(bat[i]), lens[i] + step + 1);
        }
    }
    /* errors leave every session unchanged */
    int32_t      tok[3] = {1, 2, 3};
    kvf_session *dup[2] = {bat[0], bat[0]};
    CHECK_EQ(kvf_decode_batch(dup, tok, 2), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "twice");
    tok[1] = nv;
    CHECK_EQ(kvf_decode_batch(bat, tok, 3), KVF_E_INVAL);
    CHECK_EQ(kvf_session_n_past(bat[0]), lens[0] + 4);
    kvf_session_params tiny = kvf_session_default_params();
    tiny.n_ctx              = 2;
    kvf_session *full;
    kvf_session_new(m, &tiny, &full);
    int32_t two[2] = {1, 2};
    CHECK_EQ(kvf_session_eval(full, two, 2, 0), KVF_OK);
    kvf_session *mix[2] = {bat[0], full};
    tok[1]              = 5;
    CHECK_EQ(kvf_decode_batch(mix, tok, 2), KVF_E_CTX_FULL);
    CHECK_EQ(kvf_session_n_past(bat[0]), lens[0] + 4);
    kvf_session_free(full);
    for (int i = 0; i < 3; i++) kvf_session_free(bat[i]), kvf_session_free(one[i]), free(ids[i]);
    kvf_model_free(m);
}

/* an f16 KV cache gives logits close to the f32 cache (prefill and decode, every kernel set) */
static void test_f16_cache(void) {
    synth_cfg  cfg = {.wtype = KVF_TYPE_Q8_0, .n_layer = 2, .n_ctx = 1024, .seed = 17};
    synth_info info;
    const char *path = tmp_path("f16.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    const char *isas[] = {NULL, "ref"};
    for (int k = 0; k < 2; k++) {
        kvf_model *m = load(path, isas[k], KVF_PREC_Q16);
        if (!m) return;
        int      n = 300, nv = info.n_vocab;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n + 4));
        make_ids(ids, n + 4, nv, 77);
        kvf_session       *a, *b;
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx              = 512;
        kvf_session_new(m, &sp, &a);
        sp.kv_type = KVF_KV_F16;
        CHECK_EQ(kvf_session_new(m, &sp, &b), KVF_OK);
        kvf_session_eval(a, ids, n, 0);
        kvf_session_eval(b, ids, n, 0);
        for (int step = 0; step <= 4; step++) {
            const float *la = kvf_session_logits(a, -1), *lb = kvf_session_logits(b, -1);
            double       d = 0, mag = 0;
            int          finite = 1;
            for (int t = 0; t < nv; t++) {
                finite &= isfinite(la[t]) && isfinite(lb[t]);
                d = fmax(d, fabs(la[t] - lb[t])), mag = fmax(mag, fabs(la[t]));
            }
            CHECK_MSG(finite && d <= 0.02 * (1 + mag) && d > 0,
                      "%s step %d: f16 cache differs by %.3g (max %.3g, finite %d)",
                      isas[k] ? isas[k] : "auto", step, d, mag, finite);
            if (step < 4) kvf_session_eval(a, &ids[n + step], 1, 0), kvf_session_eval(b, &ids[n + step], 1, 0);
        }
        kvf_session_free(a), kvf_session_free(b);
        free(ids);
        kvf_model_free(m);
    }
}

static void test_session_errors(void) {
    synth_cfg  cfg = {.n_layer = 1, .seed = 1};
    synth_info info;
    const char *path = tmp_path("err.gguf");
    synth_model_file(&cfg, path, &info);
    kvf_model *m = load(path, NULL, KVF_PREC_Q16);
    if (!m) return;
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 8;
    kvf_session *s;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
    int32_t ids[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK_EQ(kvf_session_eval(s, ids, 9, 0), KVF_E_CTX_FULL);
    CHECK_CONTAINS(kvf_errmsg(), "do not fit");
    CHECK_EQ(kvf_session_n_past(s), 0);
    int32_t bad[2] = {1, info.n_vocab};
    CHECK_EQ(kvf_session_eval(s, bad, 2, 0), KVF_E_INVAL);
    CHECK_CONTAINS(kvf_errmsg(), "token id");
    CHECK_EQ(kvf_session_n_past(s), 0);
    CHECK(kvf_session_logits(s, -1) == NULL);
    CHECK_EQ(kvf_session_eval(s, ids, 8, 0), KVF_OK);
    CHECK_EQ(kvf_session_eval(s, ids, 1, 0), KVF_E_CTX_FULL);
    CHECK_EQ(kvf_session_truncate(s, 9), KVF_E_INVAL);
    CHECK_EQ(kvf_session_truncate(s, 0), KVF_OK);
    CHECK_EQ(kvf_session_n_past(s), 0);
    kvf_session_free(s);
    sp.kv_type = (kvf_kv_type)7;
    CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_E_INVAL);
    CHECK(s == NULL);
    kvf_session_free(NULL);
    kvf_model_free(m);
}

/* kvf_session_memory: the KV cache of every layer (n_ctx rounded up to 64 cells) plus scratch,
 * half the KV bytes with f16; invalid parameters give -1. A Qwen2.5-like long context (32k,
 * rope base 1e6) is sized without overflow. */
static void test_session_memory(void) {
    synth_cfg  cfg = {.arch = "qwen2", .n_layer = 3, .n_ctx = 32768, .rope_base = 1e6f, .seed = 5};
    synth_info info;
    const char *path = tmp_path("mem.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    kvf_model *m = load(path, NULL, KVF_PREC_Q16);
    if (!m) return;
    int64_t kv_tok = 2 * 3 * (int64_t)info.cfg.n_head_kv * info.head_dim; /* elements per cell */
    kvf_session_params sp = kvf_session_default_params();
    int64_t def = kvf_session_memory(m, NULL), full = kvf_session_memory(m, &sp);
    CHECK_EQ(def, full); /* n_ctx 0 = the training context */
    CHECK_MSG(full >= kv_tok * 4 * 32768 && full < kv_tok * 4 * 32768 + (64 << 20),
              "32k f32 session: %lld bytes for %lld of KV", (long long)full, (long long)(kv_tok * 4 * 32768));
    sp.kv_type   = KVF_KV_F16;
    int64_t half = kvf_session_memory(m, &sp);
    CHECK_EQ(full - half, kv_tok * 2 * 32768);
    sp.kv_type  = KVF_KV_F32;
    sp.n_ubatch = 64; /* scratch rows: min(n_ubatch, n_ctx) */
    sp.n_ctx    = 100; /* 128 cells */
    int64_t a  = kvf_session_memory(m, &sp);
    sp.n_ctx   = 128;
    CHECK(kvf_session_memory(m, &sp) - a < 64 * kv_tok); /* the same KV cells */
    sp.n_ctx = 1 << 22;
    CHECK_MSG(kvf_session_memory(m, &sp) > kv_tok * 4 * (1LL << 22), "4M tokens: no overflow");
    sp.n_ctx = (1 << 22) + 1;
    CHECK_EQ(kvf_session_memory(m, &sp), -1);
    sp.n_ctx   = 64;
    sp.kv_type = (kvf_kv_type)9;
    CHECK_EQ(kvf_session_memory(m, &sp), -1);
    CHECK_EQ(kvf_session_memory(NULL, NULL), -1);
    kvf_model_free(m);
}

/* The KV cache is demand-paged: a long-context session commits memory only for the cells it
 * fills, exactly page by page, and kvf_session_trim returns what lies above the cells kept
 * without disturbing them. */
static int64_t kv_pages_expected(int64_t cells, int n_layer, int n_head_kv, int hd, int64_t es,
                                 int64_t ps) {
    /* keys: tiles of 64 cells x hd, contiguous per head; values: cells x hd (page aligned) */
    int64_t k_head = ((cells + 63) / 64 * 64 * hd * es + ps - 1) / ps;
    int64_t v_head = (cells * hd * es + ps - 1) / ps;
    return (int64_t)n_layer * n_head_kv * (k_head + v_head) * ps;
}

static void test_demand_paged_kv(void) {
    synth_cfg  cfg = {.arch = "qwen2", .n_layer = 3, .n_ctx = 32768, .rope_base = 1e6f, .seed = 23};
    synth_info info;
    const char *path = tmp_path("paged.gguf");
    CHECK_EQ(synth_model_file(&cfg, path, &info), KVF_OK);
    kvf_model *m = load(path, NULL, KVF_PREC_Q16);
    if (!m) return;
    const int64_t ps = sysconf(_SC_PAGESIZE), L = 3, H = info.cfg.n_head_kv, hd = info.head_dim;
    int           nv = info.n_vocab, n = 300;
    int32_t      *ids = malloc(sizeof(int32_t) * (size_t)n);
    make_ids(ids, n, nv, 91);
    CHECK_EQ(kvf_session_kv_bytes_per_token(m, KVF_KV_F32), 2 * L * H * hd * 4);
    CHECK_EQ(kvf_session_kv_bytes_per_token(m, KVF_KV_F16), 2 * L * H * hd * 2);
    for (int f16 = 0; f16 < 2; f16++) {
        const int64_t      es = f16 ? 2 : 4;
        kvf_session_params sp = kvf_session_default_params();
        sp.n_ctx              = 32768;
        sp.kv_type            = f16 ? KVF_KV_F16 : KVF_KV_F32;
        kvf_session *s = NULL;
        CHECK_EQ(kvf_session_new(m, &sp, &s), KVF_OK);
        if (!s) break;
        CHECK_EQ(kvf_session_kv_resident(s), 0); /* 32k cells reserved, nothing committed */
        CHECK_EQ(kvf_session_kv_reserved(m, &sp), 2 * L * H * hd * es * 32768);
        CHECK_EQ(kvf_session_eval(s, ids, n, 0), KVF_OK);
        int64_t want = kv_pages_expected(n, (int)L, (int)H, (int)hd, es, ps);
        CHECK_MSG(kvf_session_kv_resident(s) == want, "%s: %d cells hold %lld bytes, want %lld",
                  f16 ? "f16" : "f32", n, (long long)kvf_session_kv_resident(s), (long long)want);
        float *last = malloc(sizeof(float) * (size_t)nv);
        memcpy(last, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv);
        /* truncate keeps the pages (a request that refills them pays no faults); trim returns
         * those above the cells kept, which must survive unchanged */
        CHECK_EQ(kvf_session_truncate(s, 100), KVF_OK);
        CHECK_EQ(kvf_session_kv_resident(s), want);
        kvf_session_trim(s);
        want = kv_pages_expected(100, (int)L, (int)H, (int)hd, es, ps);
        CHECK_MSG(kvf_session_kv_resident(s) == want, "%s: trimmed to 100 cells: %lld bytes, want %lld",
                  f16 ? "f16" : "f32", (long long)kvf_session_kv_resident(s), (long long)want);
        CHECK_EQ(kvf_session_eval(s, ids + 100, n - 100, 0), KVF_OK);
        CHECK_MSG(!memcmp(last, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv),
                  "%s: logits after trim and re-evaluation differ", f16 ? "f16" : "f32");
        CHECK_EQ(kvf_session_truncate(s, 0), KVF_OK);
        kvf_session_trim(s);
        CHECK_EQ(kvf_session_kv_resident(s), 0);
        CHECK_EQ(kvf_session_eval(s, ids, n, 0), KVF_OK); /* zero pages again, same answer */
        CHECK(!memcmp(last, kvf_session_logits(s, -1), sizeof(float) * (size_t)nv));
        free(last);
        kvf_session_free(s);
    }
    /* a million-cell session reserves gigabytes of address space but commits none of it */
    kvf_session_params sp = kvf_session_default_params();
    sp.n_ctx              = 1 << 20;
    kvf_session *big      = NULL;
    CHECK_EQ(kvf_session_new(m, &sp, &big), KVF_OK);
    CHECK(kvf_session_memory(m, &sp) > (int64_t)(1 << 20) * 2 * L * H * hd * 4);
    CHECK_EQ(kvf_session_kv_resident(big), 0);
    kvf_session_trim(NULL);
    kvf_session_free(big);
    free(ids);
    kvf_model_free(m);
}

/* malformed models: each must fail to load with a message naming the problem */
static void test_bad_models(void) {
    struct {
        const char *what, *expect;
        int         kind;
    } bad[] = {
        {"missing tensor", "blk.0.ffn_up.weight", 0},
        {"wrong shape", "blk.0.attn_q.weight", 1},
        {"unsupported arch", "not supported", 2},
        {"heads", "head_count", 3},
        {"missing key", "block_count", 4},
        {"tokenizer bigger than embedding", "", 5},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        synth_cfg  cfg = {.n_layer = 1, .seed = 2};
        sg_writer *w;
        synth_info info;
        if (synth_build(&cfg, &w, &info) != KVF_OK) continue;
        switch (bad[i].kind) {
        case 0: sg_remove_tensor(w, "blk.0.ffn_up.weight"); break;
        case 1: {
            sg_tensor *t = sg_find_tensor(w, "blk.0.attn_q.weight");
            t->ne[1] /= 2;
            t->nbytes /= 2;
            break;
        }
        case 2:
            sg_remove_kv(w, "general.architecture");
            sg_add_str(w, "general.architecture", "mamba");
            break;
        case 3: {
            uint32_t v = 3;
            sg_remove_kv(w, "llama.attention.head_count_kv");
            sg_add_scalar(w, "llama.attention.head_count_kv", GGUF_T_UINT32, &v);
            break;
        }
        case 4: sg_remove_kv(w, "llama.block_count"); break;
        case 5: {
            sg_tensor *t = sg_find_tensor(w, "token_embd.weight");
            t->ne[1] -= 5;
            t->nbytes = sg_tensor_bytes(t->type, t->ne[0] * t->ne[1]);
            break;
        }
        }
        const char *path = tmp_path("bad.gguf");
        sg_write_file(w, path);
        sg_free(w);
        kvf_model *m = NULL;
        kvf_status st = kvf_model_load(path, NULL, &m);
        CHECK_MSG(st != KVF_OK && m == NULL, "%s: loaded", bad[i].what);
        CHECK_CONTAINS(kvf_errmsg(), bad[i].expect);
        kvf_model_free(m);
    }
    kvf_model *m = NULL;
    CHECK_EQ(kvf_model_load(tmp_path("nonexistent.gguf"), NULL, &m), KVF_E_IO);
    CHECK_CONTAINS(kvf_errmsg(), "nonexistent.gguf");
    kvf_model_params p = kvf_model_default_params();
    p.isa              = "sse9";
    CHECK(kvf_model_load(tmp_path("x"), &p, &m) != KVF_OK);
    CHECK_CONTAINS(kvf_errmsg(), "sse9");
}

static void test_sampler(void) {
    float logits[100];
    for (int i = 0; i < 100; i++) logits[i] = (float)((i * 37) % 100) / 10.0f;
    int best = 0;
    for (int i = 1; i < 100; i++)
        if (logits[i] > logits[best]) best = i;
    kvf_sampler *g = kvf_sampler_new(NULL);
    CHECK_EQ(kvf_sampler_sample(g, logits, 100), best);
    kvf_sampler_free(g);
    logits[5] = logits[best]; /* tie: lowest id wins */
    g         = kvf_sampler_new(NULL);
    CHECK_EQ(kvf_sampler_sample(g, logits, 100), best < 5 ? best : 5);
    kvf_sampler_free(g);
    kvf_sampler_params p = {.temp = 1.0f, .top_p = 1.0f, .top_k = 0, .seed = 42};
    kvf_sampler       *a = kvf_sampler_new(&p), *b = kvf_sampler_new(&p);
    int                same = 1, distinct = 0, seen[100] = {0};
    for (int i = 0; i < 500; i++) {
        int x = kvf_sampler_sample(a, logits, 100), y = kvf_sampler_sample(b, logits, 100);
        same &= x == y;
        if (!seen[x]++) distinct++;
    }
    CHECK(same);
    CHECK(distinct > 5);
    kvf_sampler_free(a), kvf_sampler_free(b);
    p.top_k = 1;
    a       = kvf_sampler_new(&p);
    CHECK_EQ(kvf_sampler_sample(a, logits, 100), best < 5 ? best : 5);
    kvf_sampler_free(a);
    p.top_k = 0, p.top_p = 0.0001f;
    a       = kvf_sampler_new(&p);
    CHECK_EQ(kvf_sampler_sample(a, logits, 100), best < 5 ? best : 5);
    kvf_sampler_free(a);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/kvf-test-model-%d", (int)getpid());
    char cmd[300];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tmpdir);
    if (system(cmd) != 0) return 1;
    kvf_set_log_level(1);
    RUN(test_against_reference);
    RUN(test_determinism_and_batching);
    RUN(test_split_k_decode);
    RUN(test_decode_batch);
    RUN(test_f16_cache);
    RUN(test_session_errors);
    RUN(test_session_memory);
    RUN(test_demand_paged_kv);
    RUN(test_bad_models);
    RUN(test_sampler);
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return TEST_REPORT();
}
