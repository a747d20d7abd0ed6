/* convbudget.h - what the conversation budget (convbudget.c) and its layer budgets
 * (convlayers.c) must agree on. Private to src/fusion. */
#ifndef KVF_FUSION_CONVBUDGET_H
#define KVF_FUSION_CONVBUDGET_H

#include "common.h"
#include "kvfuse.h"

#include <stdint.h>

/* Cells an eviction round's probe occupies on top of the cells kept: the caller's probe of
 * n_probe tokens, or without one (n_probe 0) the window's newest tokens, at least 16. */
static inline int32_t kvf_conv_probe_cells(const kvf_conv_budget_params *p, int32_t n_probe) {
    return n_probe > 0 ? n_probe : KVF_MAX(p->window, 16);
}

#endif
