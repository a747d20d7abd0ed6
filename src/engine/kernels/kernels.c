/* kernels.c - run-time choice of the kernel table from the CPU's features. */
#include "engine/kernels/kernels.h"
#include "common.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#    include <cpuid.h>
static int has_f16c(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    return (c >> 29) & 1;
}
#endif

int kvf_kernels_supported(const char *isa) {
    if (strcmp(isa, "ref") == 0) return 1;
#ifdef KVF_REF_ONLY
    return 0; /* built without the SIMD kernels */
#endif
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    if (strcmp(isa, "avx2") == 0) return avx2;
    if (strcmp(isa, "avx512") == 0)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

const kvf_kernels *kvf_kernels_select(const char *isa) {
    if (!isa || strcmp(isa, "auto") == 0 || isa[0] == 0) {
        const char *env = getenv("KVFUSE_ISA");
        if (env && env[0] && strcmp(env, "auto") != 0) return kvf_kernels_select(env);
        if (kvf_kernels_supported("avx512")) return &kvf_kernels_avx512;
        if (kvf_kernels_supported("avx2")) return &kvf_kernels_avx2;
        return &kvf_kernels_ref;
    }
    const kvf_kernels *k = strcmp(isa, "ref") == 0      ? &kvf_kernels_ref
                           : strcmp(isa, "avx2") == 0   ? &kvf_kernels_avx2
                           : strcmp(isa, "avx512") == 0 ? &kvf_kernels_avx512
                                                        : NULL;
    if (!k) {
        kvf_set_error(KVF_E_INVAL, "unknown kernel set '%s' (use auto, ref, avx2 or avx512)", isa);
        return NULL;
    }
    if (!kvf_kernels_supported(isa)) {
        kvf_set_error(KVF_E_UNSUPPORTED, "this CPU does not support the '%s' kernels", isa);
        return NULL;
    }
    return k;
}
