/* rag.h - building the segments of a retrieval-augmented prompt (system prefix, documents,
 * question) with the model's chat template, shared by `ask` and `eval`. */
#ifndef KVF_RAG_H
#define KVF_RAG_H

#include "kvfuse.h"

typedef struct rag_req {
    int32_t      n_segs; /* prefix + documents + question */
    int32_t    **ids;    /* [n_segs] token ids of each segment (owned) */
    kvf_segment *segs;   /* [n_segs] views of ids */
    int32_t      total;  /* tokens in all segments */
} rag_req;

/* The prompt style of CacheBlend's MuSiQue evaluation (../shared/docs/fusion.md section 5). */
extern const char *const RAG_MUSIQUE_PREFIX;
/* question -> question segment text for the MuSiQue style ("?" appended if missing) */
char *rag_musique_question(const char *question);

/* Tokenize a request. The prefix segment is the chat template's opening (system message and
 * the start of the user turn; the template's default system message when system == NULL)
 * followed by `instruction`; each document is tokenized on its own as plain text (special-token
 * text inside documents is not interpreted); the question segment is `question` followed by
 * the close of the user turn and the opening of the assistant turn. Without a chat template
 * the texts are used as they are. Returns 0, or -1 with a message in err. */
int  rag_tokenize(const kvf_model *m, const char *system, const char *instruction,
                  const char *const *docs, int n_docs, const char *question, rag_req *out,
                  char *err, size_t errlen);
void rag_free(rag_req *r);

/* Tokenize text (flags as kvf_tokenize) appending to a growable array. Returns 0 or -1. */
int rag_append_tokens(const kvf_model *m, const char *text, uint32_t flags, int32_t **ids,
                      int32_t *n, int32_t *cap);

#endif /* KVF_RAG_H */
