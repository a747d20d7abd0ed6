/* eval_data.h - the datasets of `kvfuse eval`, loaded or generated into segmented RAG examples
 * (instruction, documents, question, gold answers, metric):
 *
 *   musique          CacheBlend's musique_s.json with its prompt (fusion.md section 5); F1
 *   cacheblend-demo  CacheBlend's pre-chunked demo prompts (a directory of N.json, or one
 *                    file); no gold answers: fidelity and latency only
 *   needle           needle in a haystack: the Paul Graham essays cut into chunks of a fixed
 *                    number of tokens (the documents), one "special magic number" sentence
 *                    inserted at a grid of depths x haystack lengths; substring match
 *   kv-retrieval     lost-in-the-middle's key-value retrieval (gzip JSON lines), the records
 *                    split into documents of N pairs; substring match of the value
 *   ruler-niah       RULER-style needles with adjective-noun keys from the word lists, seeded:
 *                    single (noise haystack), multikey (4 keys, one asked), multivalue (4
 *                    values of one key, all asked); string_match_all
 *
 * Input files are treated as hostile: every failure is a message naming the file, the record
 * and the field. Loaders that cut text into token chunks get the tokenizer as a callback, so
 * they can be tested without a model. */
#ifndef KVF_EVAL_DATA_H
#define KVF_EVAL_DATA_H

#include "eval/eval_metrics.h"

#include <stddef.h>
#include <stdint.h>

typedef struct eval_example {
    char       *id;            /* stable, unique within the dataset, e.g. "musique-0007" */
    int         index;         /* position in the dataset's order */
    char       *instruction;   /* text after the user-turn opening, before the documents */
    char      **docs;          /* [n_docs] document texts, tokenized one by one */
    int         n_docs;
    char       *question;      /* question segment text (the chat template's close follows) */
    char       *answer_prefix; /* text after the assistant-turn opening; NULL = none */
    char      **gold;          /* [n_gold] gold answers (n_gold == 0: none) */
    int         n_gold;
    eval_metric metric;
    /* grid coordinates and metadata; -1 / NULL where they do not apply */
    int    length;     /* needle, ruler-niah: haystack tokens */
    double depth;      /* needle: depth fraction of the needle in the haystack */
    char  *task;       /* ruler-niah: "single", "multikey", "multivalue" */
    int    gold_index; /* kv-retrieval: index of the asked pair among the records */
} eval_example;

typedef struct eval_dataset {
    char         *name;
    eval_example *ex;
    int           n;
} eval_dataset;

/* Cut `text` into n_chunks consecutive pieces of exactly chunk_tokens tokens each (its first
 * n_chunks * chunk_tokens tokens). Return 0 with malloc'd strings in out[0..n_chunks-1], 1 when
 * the text holds fewer tokens, -1 on an error (message in err). */
typedef int (*eval_chunk_fn)(void *ctx, const char *text, int chunk_tokens, int n_chunks,
                             char **out, char *err, size_t errlen);

typedef struct eval_tokenizer {
    eval_chunk_fn chunk;
    void         *ctx;
} eval_tokenizer;

typedef struct eval_options {
    const char *dataset; /* one of the names above */
    const char *data;    /* file or directory of the dataset */
    /* needle and ruler-niah */
    const char   *haystack;     /* ruler-niah: the essays directory for multikey/multivalue
                                   (needle: `data` itself is the essays directory) */
    int           chunk_tokens; /* tokens per haystack document (512) */
    const int    *lengths;      /* haystack tokens, each rounded down to whole chunks */
    int           n_lengths;
    const double *depths;       /* needle depths in [0, 1] */
    int           n_depths;
    int           max_tokens;   /* longest haystack allowed (the model's context minus room
                                   for the rest of the prompt and the answer); 0 = no limit */
    uint64_t      seed;         /* needle values, ruler keys, values and depths */
    /* kv-retrieval */
    int kv_pairs; /* pairs per document (10) */
    /* ruler-niah */
    const char *const *tasks; /* NULL = all three */
    int                n_tasks;
    int                ruler_n;    /* examples per task and length (25) */
    int                ruler_keys; /* needles of multikey / multivalue (4) */
} eval_options;

/* defaults for the optional fields (lengths/depths NULL: the needle grid below) */
eval_options eval_default_options(void);
/* default needle grid: lengths 1024, 2048, 4096, 8192 (clamped to max_tokens); depths 0, 0.1,
 * ..., 1.0 */
extern const int    EVAL_DEFAULT_LENGTHS[4];
extern const double EVAL_DEFAULT_DEPTHS[11];

/* Load (or generate) a dataset. tok is needed by needle and ruler-niah only. Returns 0, or -1
 * with a message in err. */
int  eval_load(const eval_options *o, const eval_tokenizer *tok, eval_dataset *out, char *err,
               size_t errlen);
void eval_dataset_free(eval_dataset *d);

/* the dataset names, NULL-terminated */
extern const char *const EVAL_DATASETS[];

/* Insert `needle` into `text` at fraction frac in [0, 1] of its length, moved back to the
 * last sentence end at or before that point (a '.', '!' or '?' followed by a space, a newline
 * or the end of the text). After a space or newline the needle starts the next sentence
 * (followed by a space); at the end of the text it is appended after a space; with no sentence
 * end before the point it opens the text. malloc'd; NULL when out of memory. */
char *eval_insert_needle(const char *text, double frac, const char *needle);

/* deterministic 64-bit mixing (splitmix64) used for every seeded choice */
uint64_t eval_mix64(uint64_t x);

#endif /* KVF_EVAL_DATA_H */
