/* cmd_ask.c - `kvfuse ask`: answer a question over documents with KV cache fusion. The
 * documents' KV is precomputed first (into an in-memory chunk cache, not timed as TTFT), then
 * each requested method runs on exactly the same token ids. */
#include "cli/cli.h"
#include "cli/rag.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void help(void) {
    printf(
        "usage: kvfuse ask [-m MODEL] (--doc FILE ... | --docs-json FILE) --question TEXT [options]\n"
        "\n"
        "Answers a question over documents, reusing each document's precomputed KV cache.\n"
        "\n"
        "  -m, --model M          GGUF file or model name (`kvfuse models`; default: $KVFUSE_MODEL or %s)\n"
        "  -d, --doc FILE         a document (repeatable; order = order in the prompt)\n"
        "      --docs-json FILE   a JSON array of documents: strings or {\"title\", \"text\"}\n"
        "  -q, --question TEXT    the question\n"
        "      --system TEXT      system message (default: the chat template's own)\n"
        "      --prefix TEXT      instruction after the system message, before the documents\n"
        "      --musique          CacheBlend's MuSiQue prompt (instruction, passage and question\n"
        "                         format of ../shared/docs/fusion.md section 5)\n"
        "      --method M         full, prefix, reuse, epic, cacheblend, a3 (default), kvshare,\n"
        "                         prophet, focus, oracle (diagnostic: full prefill first, then\n"
        "                         the rows whose reused KV deviates most), all (every method\n"
        "                         but oracle), or a\n"
        "                         comma-separated list (e.g. full,a3), run in that order\n"
        "      --ratio R          recompute ratio for the selective methods (default 0.15), or\n"
        "                         auto: picked per request (see --fidelity)\n"
        CLI_FIDELITY_HELP
        "      --epic-k K         epic: tokens recomputed per document (default 16)\n"
        "      --score-layer L    a3/cacheblend: selection layer (default 1)\n"
        "      --per-head         a3: softmax per head then mean (default: heads merged)\n"
        "      --blend-key        cacheblend: K deviation instead of V\n"
        "      --pool W           a3: score smoothing window (default 5)\n"
        "      --chunk-alone      precompute documents at position 0, without the prefix\n"
        "      --dtype T          chunk KV storage: f16 (default), f32 or q8\n"
        "      --evict E          after the prefill: none (default), snapkv, streaming\n"
        "      --budget N         eviction budget in tokens per KV head (default 1024)\n"
        "  -n, --n-predict N      answer tokens at most (default 32; greedy)\n"
        "  -c, --ctx N            context limit: prompt + answer (default: the model's training\n"
        "                         context; a longer prompt is an error)\n"
        "  -t, --threads N        compute threads\n"
        "      --rows             with --json, also list the recomputed positions (\"rows\")\n"
        "                         and each segment's [start, length] (\"segments\")\n"
        "      --json             one JSON object per method: method, ratio, text, tokens,\n"
        "                         total_tokens, recomputed_tokens, ttft_ms, load_ms, rope_ms,\n"
        "                         recompute_ms, first_token_ms, decode_tok_s, ...\n"
        "      --isa NAME         kernels: auto, ref, avx2, avx512\n"
        "      --precision P      q16 (default), q8, f32\n"
        "      --kv T             session KV cache: f32 (default) or f16 (half the memory)\n"
        "\n"
        "Chunk store (default: an in-memory cache for this run; with --store / --redis the\n"
        "document KV is read from and written to a persistent store, see `kvfuse ingest`):\n"
        CLI_STORE_HELP
        "\nSparse attention (of the full prefill and of the rows fusion recomputes):\n"
        CLI_ATTN_HELP,
        KVF_DEFAULT_MODEL_NAME);
}

/* documents from a JSON array of strings or {"title","text"} objects (malloc'd strings) */
static char **read_docs_json(const char *path, int musique, int *n_out, char *err, size_t el) {
    size_t len;
    char  *txt = kvf_read_file(path, &len);
    if (!txt) {
        snprintf(err, el, "cannot read '%s'", path);
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    if (!cJSON_IsArray(root)) {
        snprintf(err, el, "'%s' is not a JSON array of documents", path);
        cJSON_Delete(root);
        return NULL;
    }
    int    n    = cJSON_GetArraySize(root), k = 0;
    char **docs = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    cJSON *it;
    cJSON_ArrayForEach(it, root) {
        const char *title = "", *text = NULL;
        if (cJSON_IsString(it)) {
            text = it->valuestring;
        } else if (cJSON_IsObject(it)) {
            cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "title");
            cJSON *x = cJSON_GetObjectItemCaseSensitive(it, "text");
            if (cJSON_IsString(t)) title = t->valuestring;
            if (cJSON_IsString(x)) text = x->valuestring;
        }
        if (!text) {
            snprintf(err, el, "'%s': element %d is neither a string nor {\"title\",\"text\"}", path, k);
            for (int i = 0; i < k; i++) free(docs[i]);
            free(docs);
            cJSON_Delete(root);
            return NULL;
        }
        size_t sz = strlen(title) + strlen(text) + 8;
        docs[k]   = malloc(sz);
        if (musique)
            snprintf(docs[k], sz, "%s\n\n%s\n\n", title, text);
        else
            snprintf(docs[k], sz, "%s%s%s", title, title[0] ? "\n\n" : "", text);
        k++;
    }
    cJSON_Delete(root);
    *n_out = k;
    return docs;
}

int cmd_ask(int argc, char **argv) {
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"doc", required_argument, 0, 'd'},
        {"docs-json", required_argument, 0, 'D'}, {"question", required_argument, 0, 'q'},
        {"system", required_argument, 0, 'S'},    {"prefix", required_argument, 0, 'P'},
        {"musique", no_argument, 0, 'M'},         {"method", required_argument, 0, 'k'},
        {"ratio", required_argument, 0, 'r'},     {"epic-k", required_argument, 0, 'e'},
        {"score-layer", required_argument, 0, 'L'}, {"per-head", no_argument, 0, 'H'},
        {"blend-key", no_argument, 0, 'B'},       {"pool", required_argument, 0, 'w'},
        {"chunk-alone", no_argument, 0, 'A'},     {"dtype", required_argument, 0, 'T'},
        {"evict", required_argument, 0, 'E'},     {"budget", required_argument, 0, 'b'},
        {"n-predict", required_argument, 0, 'n'}, {"threads", required_argument, 0, 't'},
        {"json", no_argument, 0, 'J'},            {"isa", required_argument, 0, 'I'},
        {"rows", no_argument, 0, 'R'},            {"ctx", required_argument, 0, 'c'},
        {"kv", required_argument, 0, 'V'},        {"fidelity", required_argument, 0, 'F'},
        {"ratio-min", required_argument, 0, 'i'}, {"ratio-max", required_argument, 0, 'x'},
        {"precision", required_argument, 0, 'X'}, {"help", no_argument, 0, 'h'},
        CLI_STORE_OPTIONS,                        CLI_ATTN_OPTIONS, {0, 0, 0, 0}};
    const char     *model = NULL, *docs_json = NULL, *question = NULL, *system = NULL,
               *prefix = NULL, *isa = NULL, *method = "a3";
    const char     *doc_files[256];
    int             n_doc_files = 0;
    bool            musique = false, json = false, show_rows = false;
    long            n_predict = 32, n_threads = 0, n_ctx_opt = 0;
    kvf_precision   prec      = KVF_PREC_Q16;
    kvf_kv_type     kv        = KVF_KV_F32;
    kvf_fuse_params fp        = kvf_fuse_default_params();
    kvf_store_params stp      = kvf_store_default_params();
    cli_attn         ca        = {0};
    int             c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:d:q:n:t:c:h", opts, NULL)) != -1) {
        if (cli_store_opt("ask", c, optarg, &stp)) continue;
        if (cli_attn_opt("ask", c, optarg, &ca)) continue;
        switch (c) {
        case 'm': model = optarg; break;
        case 'd':
            if (n_doc_files == 256) return cli_fail("ask", "at most 256 --doc files");
            doc_files[n_doc_files++] = optarg;
            break;
        case 'D': docs_json = optarg; break;
        case 'q': question = optarg; break;
        case 'S': system = optarg; break;
        case 'P': prefix = optarg; break;
        case 'M': musique = true; break;
        case 'k': method = optarg; break;
        case 'r': cli_ratio("ask", optarg, &fp); break;
        case 'F': fp.fidelity = (float)cli_float("ask", "--fidelity", optarg, 1e-6, 1); break;
        case 'i': fp.ratio_min = (float)cli_float("ask", "--ratio-min", optarg, 0, 1); break;
        case 'x': fp.ratio_max = (float)cli_float("ask", "--ratio-max", optarg, 0, 1); break;
        case 'e': fp.epic_k = (int32_t)cli_int("ask", "--epic-k", optarg, 0, 1 << 20); break;
        case 'L': fp.score_layer = (int32_t)cli_int("ask", "--score-layer", optarg, 1, 1024); break;
        case 'H': fp.a3_per_head = true; break;
        case 'B': fp.blend_on_k = true; break;
        case 'w': fp.pool = (int32_t)cli_int("ask", "--pool", optarg, 1, 101); break;
        case 'A': fp.chunk_alone = true; break;
        case 'T':
            if (!strcmp(optarg, "f16")) fp.dtype = KVF_CHUNK_F16;
            else if (!strcmp(optarg, "f32")) fp.dtype = KVF_CHUNK_F32;
            else if (!strcmp(optarg, "q8")) fp.dtype = KVF_CHUNK_Q8;
            else return cli_fail("ask", "--dtype expects f16, f32 or q8, got '%s'", optarg);
            break;
        case 'E':
            if (kvf_evict_from_name(optarg) < 0)
                return cli_fail("ask", "--evict expects none, snapkv or streaming, got '%s'", optarg);
            fp.evict = (kvf_evict)kvf_evict_from_name(optarg);
            break;
        case 'b': fp.budget = (int32_t)cli_int("ask", "--budget", optarg, 1, 1 << 24); break;
        case 'n': n_predict = cli_int("ask", "-n", optarg, 1, 1 << 20); break;
        case 't': n_threads = cli_int("ask", "--threads", optarg, 0, 1024); break;
        case 'c': n_ctx_opt = cli_int("ask", "--ctx", optarg, 1, 1 << 22); break;
        case 'J': json = true; break;
        case 'R': show_rows = true; break;
        case 'I': isa = optarg; break;
        case 'X': prec = cli_precision("ask", optarg); break;
        case 'V': kv = cli_kv_type("ask", optarg); break;
        case 'h': help(); return 0;
        default: help(); return 2;
        }
    }
    if (optind < argc) return cli_fail("ask", "unexpected argument '%s'", argv[optind]);
    if (!question) return help(), cli_fail("ask", "--question is required");
    if (!n_doc_files == !docs_json) return help(), cli_fail("ask", "give --doc FILE... or --docs-json FILE");
    int methods[KVF_METHOD_COUNT], n_methods = 0;
    if (!strcmp(method, "all")) {
        for (int i = 0; i < KVF_METHOD_ORACLE; i++) methods[n_methods++] = i; /* not the diagnostic */
    } else { /* one method or a comma-separated list, run in the order given */
        for (const char *p = method; *p;) {
            size_t n = strcspn(p, ",");
            char   name[32];
            int    k = -1;
            if (n > 0 && n < sizeof name) {
                memcpy(name, p, n), name[n] = 0;
                k = kvf_method_from_name(name);
            }
            if (k < 0)
                return cli_fail("ask", "unknown method '%.*s' (full, prefix, reuse, epic, cacheblend, a3, kvshare, prophet, focus, oracle, all)",
                                (int)n, p);
            for (int i = 0; i < n_methods; i++)
                if (methods[i] == k) return cli_fail("ask", "method '%.*s' given twice", (int)n, p);
            methods[n_methods++] = k;
            p += n;
            if (*p == ',') p++;
        }
        if (n_methods == 0) return cli_fail("ask", "--method is empty");
    }

    char   err[512] = "";
    char **docs     = NULL;
    int    n_docs   = 0;
    if (docs_json) {
        if (!(docs = read_docs_json(docs_json, musique, &n_docs, err, sizeof err))) return cli_fail("ask", "%s", err);
    } else {
        docs = calloc((size_t)n_doc_files, sizeof(char *));
        for (int i = 0; i < n_doc_files; i++) {
            if (!(docs[i] = kvf_read_file(doc_files[i], NULL))) {
                for (int j = 0; j < i; j++) free(docs[j]);
                free(docs);
                return cli_fail("ask", "cannot read document '%s'", doc_files[i]);
            }
            n_docs++;
        }
    }
    int rc = 0;
    kvf_model *m = cli_load_model(cli_model_path(model), isa, (int)n_threads, prec);
    char      *qtext = musique ? rag_musique_question(question) : strdup(question);
    rag_req    req;
    kvf_session     *s     = NULL;
    kvf_chunk_cache *cache = NULL;
    bool             use_store = stp.dir || stp.redis;
    if (!m) { rc = 1; goto out_docs; }
    if (rag_tokenize(m, system, prefix ? prefix : musique ? RAG_MUSIQUE_PREFIX : NULL,
                     (const char *const *)docs, n_docs, qtext, &req, err, sizeof err) != 0) {
        rc = cli_fail("ask", "%s", err);
        goto out_model;
    }
    /* the prompt must fit in the context with room for one answer token; the answer stops
     * at the context's end */
    int32_t ctx_max = kvf_model_n_ctx_train(m);
    int32_t limit   = n_ctx_opt > 0 ? (int32_t)n_ctx_opt : ctx_max;
    if (req.total >= limit) {
        if (n_ctx_opt > 0)
            rc = cli_fail("ask", "the prompt has %d tokens (prefix %d, %d documents, question %d), "
                                 "more than fit in --ctx %d (leave room for at least one answer "
                                 "token)",
                          req.total, req.segs[0].n, n_docs, req.segs[req.n_segs - 1].n, limit);
        else
            rc = cli_fail("ask", "the prompt has %d tokens (prefix %d, %d documents, question %d), "
                                 "more than fit in the model's context of %d tokens (leave room "
                                 "for at least one answer token); use fewer or shorter documents, "
                                 "or --ctx N to go past the training context",
                          req.total, req.segs[0].n, n_docs, req.segs[req.n_segs - 1].n, limit);
        goto out_req;
    }
    if (limit > ctx_max)
        fprintf(stderr, "kvfuse ask: note: --ctx %d is more than the model's training context "
                        "(%d)\n", limit, ctx_max);
    kvf_session_params sp = kvf_session_default_params();
    sp.n_threads          = (int32_t)n_threads;
    sp.kv_type            = kv;
    sp.n_ctx              = (int64_t)req.total + n_predict + 1 < limit ? req.total + (int32_t)n_predict + 1 : limit;
    /* besides the session: the documents' chunk KV, kept in memory */
    int64_t chunk_bytes = (int64_t)(req.total - req.segs[0].n - req.segs[req.n_segs - 1].n) *
                          kvf_session_kv_bytes_per_token(m, fp.dtype == KVF_CHUNK_F32 ? KVF_KV_F32 : KVF_KV_F16);
    if (cli_check_memory("ask", m, &sp, 1, use_store ? 0 : chunk_bytes, "use fewer or shorter documents") != 0) {
        rc = 1;
        goto out_req;
    }
    if (kvf_session_new(m, &sp, &s) != KVF_OK || cli_attn_apply(s, &ca) != KVF_OK ||
        (use_store ? kvf_store_open(m, &stp, &cache) : kvf_chunk_cache_new_memory(0, &cache)) != KVF_OK) {
        rc = cli_fail("ask", "%s", kvf_errmsg());
        goto out_req;
    }
    kvf_fuse_stats pst;
    fprintf(stderr, "ask: %d tokens (prefix %d, %d documents, question %d); precomputing "
                    "document KV...\n", req.total, req.segs[0].n, n_docs, req.segs[req.n_segs - 1].n);
    if (kvf_session_precompute(s, cache, req.segs, req.n_segs, &fp, &pst) != KVF_OK) {
        rc = cli_fail("ask", "%s", kvf_errmsg());
        goto out_req;
    }
    fprintf(stderr, "ask: %d chunks computed in %.0f ms%s\n", pst.chunk_misses, pst.precompute_ms,
            use_store ? " (the others came from the store)" : "");
    int32_t n_vocab   = kvf_model_n_vocab(m);
    double  full_ttft = 0;
    for (int mi = 0; mi < n_methods && rc == 0; mi++) {
        fp.method = (kvf_method)methods[mi];
        kvf_fuse_stats  st;
        kvf_store_stats st0, st1;
        if (use_store) kvf_store_get_stats(cache, &st0);
        if (kvf_session_fuse(s, cache, req.segs, req.n_segs, &fp, &st) != KVF_OK) {
            rc = cli_fail("ask", "%s: %s", kvf_method_name(fp.method), kvf_errmsg());
            break;
        }
        /* greedy answer */
        size_t  cap = 1024, len = 0;
        char   *text  = malloc(cap);
        int32_t n_tok = 0, steps = 0;
        int32_t tok   = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), n_vocab);
        double  t0    = cli_now_ms();
        while (n_tok < n_predict && !kvf_token_is_eog(m, tok)) {
            n_tok++;
            char    piece[256];
            int32_t k = kvf_token_to_piece(m, tok, piece, sizeof piece, false);
            if (k > 0) {
                if (len + (size_t)k + 1 > cap) text = realloc(text, cap = 2 * (cap + (size_t)k));
                memcpy(text + len, piece, (size_t)k), len += (size_t)k;
            }
            if (n_tok == n_predict) break;
            if (kvf_session_eval(s, &tok, 1, 0) != KVF_OK) {
                fprintf(stderr, "kvfuse ask: note: [%s] the answer stops after %d tokens: %s\n",
                        kvf_method_name(fp.method), n_tok, kvf_errmsg());
                break;
            }
            steps++;
            tok = kvf_sampler_sample(NULL, kvf_session_logits(s, -1), n_vocab);
        }
        double dec_ms = cli_now_ms() - t0;
        if (fp.method == KVF_METHOD_FULL) full_ttft = st.ttft_ms;
        text[len]     = 0;
        double tok_s  = steps > 0 && dec_ms > 0 ? steps / dec_ms * 1e3 : 0;
        if (json) {
            bool sel = kvf_method_has_ratio(fp.method);
            printf("{\"method\": \"%s\", \"ratio\": %.4g, ", kvf_method_name(fp.method),
                   sel ? (fp.ratio_auto ? st.ratio_used : fp.ratio) : 0.0f);
            if (sel && fp.ratio_auto)
                printf("\"ratio_auto\": true, \"fidelity\": %.4g, \"score_mass\": %.4f, ",
                       fp.fidelity, st.score_mass);
            printf("\"text\": ");
            json_str(stdout, text, len);
            printf(", \"tokens\": %d, \"total_tokens\": %d, \"prefix_tokens\": %d, "
                   "\"question_tokens\": %d, \"recomputed_tokens\": %d, \"reused_tokens\": %d, "
                   "\"ttft_ms\": %.3f, \"load_ms\": %.3f, \"rope_ms\": %.3f, \"recompute_ms\": %.3f, "
                   "\"first_token_ms\": %.3f, \"decode_tok_s\": %.2f, \"kv_bytes_loaded\": %lld, "
                   "\"chunk_hits\": %d, \"chunk_misses\": %d, \"kept_after_evict\": %d",
                   n_tok, st.total_tokens, st.prefix_tokens, st.question_tokens,
                   st.recomputed_tokens, st.reused_tokens, st.ttft_ms, st.load_ms, st.rope_ms,
                   st.recompute_ms, st.first_token_ms, tok_s, (long long)st.kv_bytes_loaded,
                   st.chunk_hits, st.chunk_misses, st.kept_after_evict);
            if (use_store && kvf_store_get_stats(cache, &st1) == KVF_OK) { /* this method's lookups */
                for (int t = 0; t < KVF_TIER_COUNT; t++) {
                    kvf_store_tier_stats *a = &st1.tier[t], *b = &st0.tier[t];
                    a->hits -= b->hits, a->misses -= b->misses, a->bad_entries -= b->bad_entries;
                    a->errors -= b->errors, a->writes -= b->writes, a->read_ms -= b->read_ms;
                    a->read_bytes -= b->read_bytes;
                }
                printf(", \"store\": ");
                cli_store_json_stats(stdout, &st1);
            }
            if (show_rows) {
                printf(", \"segments\": [");
                for (int32_t i = 0, o = 0; i < req.n_segs; o += req.segs[i].n, i++)
                    printf("%s[%d, %d]", i ? ", " : "", o, req.segs[i].n);
                printf("]");
                int32_t        nr;
                const int32_t *rows = kvf_session_fused_rows(s, &nr);
                printf(", \"rows\": [");
                for (int32_t i = 0; i < nr; i++) printf("%s%d", i ? ", " : "", rows[i]);
                printf("]");
            }
            printf("}\n");
        } else {
            printf("[%s] %s\n", kvf_method_name(fp.method), text);
            char rel[48] = "";
            if (full_ttft > 0 && fp.method != KVF_METHOD_FULL)
                snprintf(rel, sizeof rel, " = %.2fx full", st.ttft_ms / full_ttft);
            fprintf(stderr,
                    "  [%s] TTFT %.1f ms%s (load %.1f, rope %.1f, recompute %.1f, first token %.1f); "
                    "recomputed %d of %d tokens; %d tokens at %.1f tok/s\n",
                    kvf_method_name(fp.method), st.ttft_ms, rel, st.load_ms, st.rope_ms,
                    st.recompute_ms, st.first_token_ms, st.recomputed_tokens, st.total_tokens,
                    n_tok, tok_s);
            if (fp.ratio_auto && kvf_method_has_ratio(fp.method))
                fprintf(stderr, "  [%s] ratio auto: %.3f (the recomputed tokens hold %.1f%% of the "
                                "selection score; target %.1f%%)\n",
                        kvf_method_name(fp.method), st.ratio_used, 100 * st.score_mass, 100 * fp.fidelity);
        }
        fflush(stdout);
        free(text);
    }
out_req:
    if (use_store && cache) {
        if (kvf_store_flush(cache) != KVF_OK)
            fprintf(stderr, "kvfuse ask: note: computed chunks were not all stored: %s\n", kvf_errmsg());
        if (!json) cli_store_print_stats(stderr, cache, false);
    }
    rag_free(&req);
out_model:
    kvf_chunk_cache_free(cache);
    kvf_session_free(s);
    kvf_model_free(m);
out_docs:
    free(qtext);
    for (int i = 0; i < n_docs; i++) free(docs[i]);
    free(docs);
    return rc;
}
