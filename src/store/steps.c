/* steps.c - the steps-to-execution hint map (steps.h): open addressing, linear probing. */
#include "store/steps.h"
#include "common.h"

#include <string.h>

#define STEPS_MAX_CAP (1u << 20) /* 25 MiB of hints at most */

static kvf_status alloc_table(kvf_steps *t, uint32_t cap) {
    t->keys  = kvf_malloc(sizeof *t->keys * cap);
    t->steps = kvf_malloc(sizeof *t->steps * cap);
    t->used  = kvf_calloc(cap, 1);
    if (!t->keys || !t->steps || !t->used) {
        kvf_steps_free(t);
        return kvf_set_error(KVF_E_NOMEM, "out of memory for the cache's step hints");
    }
    t->cap = cap, t->n = 0;
    return KVF_OK;
}

kvf_status kvf_steps_init(kvf_steps *t, uint32_t cap_hint) {
    memset(t, 0, sizeof *t);
    uint32_t cap = 64;
    while (cap < (cap_hint ? cap_hint : 16384u) && cap < STEPS_MAX_CAP) cap <<= 1;
    return alloc_table(t, cap);
}

void kvf_steps_free(kvf_steps *t) {
    kvf_free(t->keys), kvf_free(t->steps), kvf_free(t->used);
    memset(t, 0, sizeof *t);
}

static uint32_t slot_of(const kvf_steps *t, const uint8_t key[16]) {
    uint64_t h;
    memcpy(&h, key + 8, 8); /* the key is a hash: any 8 bytes are uniform */
    uint32_t i = (uint32_t)h & (t->cap - 1);
    while (t->used[i] && memcmp(t->keys[i], key, 16) != 0) i = (i + 1) & (t->cap - 1);
    return i;
}

/* a key's hint: the nearest of its lanes' (KVF_STEPS_NONE when no lane hints it) */
static uint32_t nearest(const uint32_t steps[KVF_HINT_LANES]) {
    uint32_t best = KVF_STEPS_NONE;
    for (int l = 0; l < KVF_HINT_LANES; l++) best = KVF_MIN(best, steps[l]);
    return best;
}

uint32_t kvf_steps_get(const kvf_steps *t, const uint8_t key[16]) {
    if (!t->cap || !t->n) return KVF_STEPS_NONE;
    uint32_t i = slot_of(t, key);
    return t->used[i] ? nearest(t->steps[i]) : KVF_STEPS_NONE;
}

/* The table is 3/4 full: rebuild it from the keys some lane still hints, in a table twice
 * the size when those fill half of this one. Forgets everything only when no table can be
 * had (advisory hints: the caches fall back to LRU). */
static void rebuild(kvf_steps *t) {
    uint32_t n_live = 0;
    for (uint32_t i = 0; i < t->cap; i++) n_live += t->used[i] && nearest(t->steps[i]) != KVF_STEPS_NONE;
    uint32_t  cap = t->cap;
    if (n_live >= cap / 2 && cap < STEPS_MAX_CAP) cap <<= 1;
    kvf_steps old = *t;
    if (n_live >= cap / 2 || alloc_table(t, cap) != KVF_OK) { /* cannot grow: forget all */
        *t = old; /* alloc_table failed (or was not tried): the old table stands */
        memset(t->used, 0, t->cap);
        t->n = 0;
        return;
    }
    for (uint32_t i = 0; i < old.cap; i++) {
        if (!old.used[i] || nearest(old.steps[i]) == KVF_STEPS_NONE) continue;
        uint32_t j = slot_of(t, old.keys[i]);
        t->used[j] = 1;
        memcpy(t->keys[j], old.keys[i], 16);
        memcpy(t->steps[j], old.steps[i], sizeof t->steps[j]);
        t->n++;
    }
    kvf_steps_free(&old);
}

void kvf_steps_set(kvf_steps *t, const uint8_t key[16], int lane, uint32_t steps) {
    if (!t->cap || lane < 0 || lane >= KVF_HINT_LANES) return;
    uint32_t i = slot_of(t, key);
    if (t->used[i]) { /* a cleared hint keeps its slot until the next rebuild */
        t->steps[i][lane] = steps;
        return;
    }
    if (steps == KVF_STEPS_NONE) return;
    if (t->n + 1 > t->cap - t->cap / 4) {
        rebuild(t);
        i = slot_of(t, key);
    }
    t->used[i] = 1;
    memcpy(t->keys[i], key, 16);
    for (int l = 0; l < KVF_HINT_LANES; l++) t->steps[i][l] = KVF_STEPS_NONE;
    t->steps[i][lane] = steps;
    t->n++;
}
