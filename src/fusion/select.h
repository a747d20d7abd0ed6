/* select.h - the question-attention signal shared by the multi-layer selection methods
 * (prophet, focus; docs/selection.md): the attention of the question rows to the document
 * columns, recorded per layer while the question rows run through the fused cache, then
 * combined into one score per document token; and the index orders every selection sorts
 * with. Private to src/fusion. */
#ifndef KVF_FUSION_SELECT_H
#define KVF_FUSION_SELECT_H

#include "engine/forward.h"
#include "engine/kv_cells.h"

typedef struct kvf_qattn {
    int     n_layer;
    int32_t c0, c1;    /* scored columns (document positions) [c0, c1) */
    int32_t qpos0;     /* rows at positions >= qpos0 are question rows */
    int     per_head;  /* softmax per query head, mean over heads (else heads merged: the
                          queries sharing a KV head summed before one softmax, as a3) */
    float  *score;     /* [n_layer][c1 - c0]: sum over question rows of the attention mass */
    uint8_t *seen;     /* [n_layer]: layer recorded */
    /* scratch */
    float  *kf;        /* [kvd][c_end]: one layer's keys as float rows */
    float  *prob;      /* [rows][c1 - c0] */
    int64_t kf_cap;
    int32_t prob_rows;
} kvf_qattn;

kvf_status kvf_qattn_init(kvf_qattn *a, int n_layer, int32_t c0, int32_t c1, int32_t qpos0,
                          int per_head);
void       kvf_qattn_free(kvf_qattn *a);

/* Record layer l for the question rows of batch b (after kvf_fwd_qkv: post-RoPE queries in
 * s->q, the rows' own keys in their cells): for each such row at position p, the causal
 * softmax over cells [0, p] (cells == positions), mean over heads, added to score[l][j] for
 * document columns j. Uses the session's thread pool. */
kvf_status kvf_qattn_layer(kvf_qattn *a, kvf_session *s, int l, const kvf_batch *b);

/* One score per column from the recorded layers l_from .. l_to (inclusive): the layers' scores
 * summed, each first divided by its total over the columns when `normalize` (every layer then
 * votes with the same weight), then average-pooled with window `pool` (1 = none). out [c1-c0]. */
void kvf_qattn_combine(const kvf_qattn *a, int l_from, int l_to, int normalize, int pool,
                       float *out);

/* Index orders for qsort_r / qsort: indices by score (arg: the float scores they index)
 * descending, ties by the lower index; indices ascending. */
int kvf_by_score_desc(const void *a, const void *b, void *score);
int kvf_by_index(const void *a, const void *b);

#endif
