/* adaptive.h - `--ratio auto`: the recompute budget of a selective fusion method chosen per
 * request from the method's own token scores (see adaptive.c for the rule). */
#ifndef KVF_FUSION_ADAPTIVE_H
#define KVF_FUSION_ADAPTIVE_H

#include "kvfuse.h"

#include <stdint.h>

/* Check the auto-ratio fields of fp (fidelity, ratio_min, ratio_max); KVF_E_INVAL with a
 * message when one is out of range. Fixed-ratio parameters are always valid here. */
kvf_status kvf_adaptive_check(const kvf_fuse_params *fp);

/* The number of candidate tokens to recompute. score[0..n) are the candidates' selection
 * scores (higher = more in need of recompute; negative scores count as 0); base is the
 * ratio's denominator (T - q). With fp->ratio_auto unset: floor(base * fp->ratio), at most
 * n. With it: the smallest k whose top-k scores hold fp->fidelity of the scores' total mass,
 * clamped to [ceil(base * ratio_min), floor(base * ratio_max)] and to n, every score first
 * capped at the ceil(base * ratio_min)-th largest (the floor's tokens are recomputed anyway;
 * attention sinks would otherwise meet the target alone). *mass (may be NULL) receives the
 * fraction of the (capped) mass the returned k covers (1 when the mass is zero).
 * Deterministic, monotone in fp->fidelity. Returns -1 only when out of memory. */
int32_t kvf_adaptive_k(const float *score, int32_t n, int32_t base, const kvf_fuse_params *fp,
                       float *mass);

#endif /* KVF_FUSION_ADAPTIVE_H */
