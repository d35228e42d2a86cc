// Tools for the hot loops of the CPU back end:
//  - COMMVQ_VECTOR_CLONES compiles a function twice, for x86-64-v3 (AVX2,
//    FMA) and for the baseline the library is built for; the loader picks
//    one when the library is loaded (GNU ifunc). One binary runs everywhere
//    and uses 8-wide vectors where they exist. The AVX2 version may fuse
//    multiply-adds, so the last bit of a result can depend on the machine;
//    on one machine results are always the same. Attention and training use
//    it.
//  - COMMVQ_TWO_CLONES does the same for the encoders, whose results must
//    not depend on the machine (docs/RELIABILITY.md, "Same codes on every
//    machine"): both versions are plain functions, the one to run is chosen
//    at the call by encoder_clone() (the CPU, or the environment variable
//    COMMVQ_ENCODER_CLONE, read once), and tests can run either
//    (set_encoder_clone). The encoder sources that decide codes are
//    compiled with -ffp-contract=off (CMakeLists.txt): both versions do the
//    same IEEE operations in the same order, so they give the same bits;
//    only the vector width differs, which changes no rounding (F8
//    arithmetic is element by element). key_float_pass.cpp may fuse: its
//    results only pick candidates within a bound.
//  - F8, eight floats as one value (GCC/Clang vector extension): the
//    compiler maps it to one AVX register, two SSE registers or plain
//    floats, whatever the target has. Loops written with it vectorize where
//    the auto-vectorizer would not (sums kept in registers across stages).
#pragma once

#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(COMMVQ_NO_VECTOR_CLONES)
#define COMMVQ_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define COMMVQ_VECTOR_CLONES
#endif

// The encoders' two versions need no ifunc (so ThreadSanitizer builds have
// them too), only GCC's target attribute and __builtin_cpu_supports.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define COMMVQ_HAVE_V3_CLONE 1
#else
#define COMMVQ_HAVE_V3_CLONE 0
#endif

namespace commvq {

enum class CpuClone { baseline, v3 };

// Whether this build has the clone and this CPU can run it (baseline: always).
bool cpu_clone_available(CpuClone clone);
// The clone the encoders run now: the one set by set_encoder_clone, else the
// machine's: v3 where available, unless COMMVQ_ENCODER_CLONE=baseline (or
// =v3) in the environment says otherwise when first asked.
CpuClone encoder_clone();
// For tests (and benchmarks): run the encoders' clone from now on, in every
// thread; false, changing nothing, where it is not available. Not while
// another thread encodes.
bool set_encoder_clone(CpuClone clone);
// Back to the machine's clone.
void reset_encoder_clone();
const char* cpu_clone_name(CpuClone clone);

// COMMVQ_TWO_CLONES(name, (parameters), (arguments)) defines
// void name(parameters) that runs name##_body(arguments), compiled for the
// baseline or for x86-64-v3 as encoder_clone() says. name##_body must be
// COMMVQ_CLONE_BODY (always inlined, so each version is compiled for its
// own target).
#define COMMVQ_CLONE_BODY __attribute__((always_inline)) inline
#if COMMVQ_HAVE_V3_CLONE
#define COMMVQ_TWO_CLONES(name, params, args)                                                    \
    __attribute__((noinline)) void name##_baseline params { name##_body args; }                 \
    __attribute__((noinline, target("arch=x86-64-v3"))) void name##_v3 params { name##_body args; } \
    void name params {                                                                           \
        if (encoder_clone() == CpuClone::v3)                                                     \
            name##_v3 args;                                                                      \
        else                                                                                     \
            name##_baseline args;                                                                \
    }
#else
#define COMMVQ_TWO_CLONES(name, params, args) \
    void name params { name##_body args; }
#endif

typedef float F8 __attribute__((vector_size(32)));

// F8 values only pass between inline functions of the file using them,
// never across a call boundary, so GCC's note that an AVX-sized vector is
// passed differently with AVX enabled does not apply (for that whole file).
#pragma GCC diagnostic ignored "-Wpsabi"

inline F8 load8(const float* p) {
    F8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store8(float* p, F8 v) { std::memcpy(p, &v, sizeof v); }

}  // namespace commvq
