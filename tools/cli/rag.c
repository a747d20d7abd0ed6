/* rag.c - segmented RAG prompts (see rag.h). */
#include "cli/rag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const RAG_MUSIQUE_PREFIX =
    "You will be asked a question after reading several passages. Please directly answer the "
    "question based on the given passages. Do NOT repeat the question. The answer should be "
    "within 5 words.\nPassages:\n";

char *rag_musique_question(const char *question) {
    static const char head[] = "\n\nAnswer the question directly based on the given passages. "
                               "Do NOT repeat the question. The answer should be within 5 words. "
                               "\nQuestion:";
    static const char tail[] = "\nAnswer:";
    size_t            n      = strlen(question);
    int               mark   = n == 0 || question[n - 1] != '?';
    char             *s      = malloc(sizeof head + n + 1 + sizeof tail);
    if (!s) return NULL;
    sprintf(s, "%s%s%s%s", head, question, mark ? "?" : "", tail);
    return s;
}

int rag_append_tokens(const kvf_model *m, const char *text, uint32_t flags, int32_t **ids,
                      int32_t *n, int32_t *cap) {
    size_t  len  = strlen(text);
    int32_t need = kvf_tokenize(m, text, len, NULL, 0, flags);
    if (need == INT32_MIN) return -1;
    if (need < 0) need = -need;
    if (*n + need > *cap) {
        int32_t  nc = (*n + need) * 2 + 16;
        int32_t *p  = realloc(*ids, sizeof(int32_t) * (size_t)nc);
        if (!p) return -1;
        *ids = p, *cap = nc;
    }
    int32_t k = kvf_tokenize(m, text, len, *ids + *n, *cap - *n, flags);
    if (k < 0) return -1;
    *n += k;
    return 0;
}

/* Split the chat template around the user message: head = everything before it, tail =
 * everything after it up to and including the opening of the assistant turn. */
static int template_parts(const kvf_model *m, const char *system, char **head, char **tail) {
    static const char marker[] = "\x01KVF_USER\x01";
    kvf_chat_msg      msgs[2];
    size_t            k = 0;
    if (system) msgs[k].role = "system", msgs[k++].content = system;
    msgs[k].role = "user", msgs[k++].content = marker;
    int32_t need = kvf_chat_format(m, msgs, k, true, NULL, 0);
    if (need == INT32_MIN) return -1;
    if (need < 0) need = -need;
    char *buf = malloc((size_t)need + 1);
    if (!buf || kvf_chat_format(m, msgs, k, true, buf, need + 1) < 0) return free(buf), -1;
    char *at = strstr(buf, marker);
    if (!at) return free(buf), -1;
    *at   = 0;
    *head = strdup(buf);
    *tail = strdup(at + sizeof marker - 1);
    free(buf);
    return *head && *tail ? 0 : -1;
}

void rag_free(rag_req *r) {
    if (r->ids)
        for (int32_t i = 0; i < r->n_segs; i++) free(r->ids[i]);
    free(r->ids);
    free(r->segs);
    memset(r, 0, sizeof *r);
}

int rag_tokenize(const kvf_model *m, const char *system, const char *instruction,
                 const char *const *docs, int n_docs, const char *question, rag_req *out,
                 char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    char *head = NULL, *tail = NULL;
    int   chat = strcmp(kvf_chat_template_name(m), "none") != 0;
    if (chat && template_parts(m, system, &head, &tail) != 0) {
        snprintf(err, errlen, "cannot apply the chat template: %s", kvf_errmsg());
        return -1;
    }
    out->n_segs = n_docs + 2;
    out->ids    = calloc((size_t)out->n_segs, sizeof(int32_t *));
    out->segs   = calloc((size_t)out->n_segs, sizeof(kvf_segment));
    int ok      = out->ids && out->segs;
    for (int32_t s = 0; ok && s < out->n_segs; s++) {
        int32_t n = 0, cap = 0;
        if (s == 0) {
            ok = (!head || rag_append_tokens(m, head, KVF_TOK_ADD_BOS | KVF_TOK_PARSE_SPECIAL,
                                             &out->ids[s], &n, &cap) == 0) &&
                 (!instruction || !instruction[0] ||
                  rag_append_tokens(m, instruction, head ? 0 : KVF_TOK_ADD_BOS, &out->ids[s], &n, &cap) == 0);
        } else if (s < out->n_segs - 1) {
            ok = rag_append_tokens(m, docs[s - 1], 0, &out->ids[s], &n, &cap) == 0;
            if (ok && n == 0) {
                snprintf(err, errlen, "document %d is empty after tokenization", s);
                ok = 0;
                break;
            }
        } else {
            ok = rag_append_tokens(m, question, 0, &out->ids[s], &n, &cap) == 0 &&
                 (!tail || rag_append_tokens(m, tail, KVF_TOK_PARSE_SPECIAL, &out->ids[s], &n, &cap) == 0);
            if (ok && n == 0) {
                snprintf(err, errlen, "the question is empty");
                ok = 0;
                break;
            }
        }
        out->segs[s].ids = out->ids[s];
        out->segs[s].n   = n;
        out->total += n;
    }
    free(head), free(tail);
    if (!ok) {
        if (!err[0]) snprintf(err, errlen, "tokenization failed: %s", kvf_errmsg());
        rag_free(out);
        return -1;
    }
    return 0;
}
