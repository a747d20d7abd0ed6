/* steps.c - the steps-to-execution hint map (steps.h): open addressing, linear probing. */
#include "store/steps.h"
#include "common.h"

#include <string.h>

kvf_status kvf_steps_init(kvf_steps *t, uint32_t cap_hint) {
    memset(t, 0, sizeof *t);
    uint32_t cap = 64;
    while (cap < (cap_hint ? cap_hint : 16384u) && cap < (1u << 24)) cap <<= 1;
    t->keys  = kvf_malloc(sizeof *t->keys * cap);
    t->steps = kvf_malloc(sizeof *t->steps * cap);
    t->used  = kvf_calloc(cap, 1);
    if (!t->keys || !t->steps || !t->used) {
        kvf_steps_free(t);
        return kvf_set_error(KVF_E_NOMEM, "out of memory for the cache's step hints");
    }
    t->cap = cap;
    return KVF_OK;
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

uint32_t kvf_steps_get(const kvf_steps *t, const uint8_t key[16]) {
    if (!t->cap || !t->n) return KVF_STEPS_NONE;
    uint32_t i = slot_of(t, key);
    return t->used[i] ? t->steps[i] : KVF_STEPS_NONE;
}

void kvf_steps_set(kvf_steps *t, const uint8_t key[16], uint32_t steps) {
    if (!t->cap) return;
    uint32_t i = slot_of(t, key);
    if (t->used[i]) { /* a cleared hint keeps its slot (no tombstones): it reads as none */
        t->steps[i] = steps;
        return;
    }
    if (steps == KVF_STEPS_NONE) return;
    if (t->n + 1 > t->cap - t->cap / 4) { /* 3/4 full: forget every hint (advisory) */
        memset(t->used, 0, t->cap);
        t->n = 0;
        i    = slot_of(t, key);
    }
    t->used[i]  = 1;
    memcpy(t->keys[i], key, 16);
    t->steps[i] = steps;
    t->n++;
}
