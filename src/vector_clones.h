// Two tools for the hot loops of the CPU back end:
//  - COMMVQ_VECTOR_CLONES compiles a function twice, for x86-64-v3 (AVX2,
//    FMA) and for the baseline the library is built for; the loader picks
//    one when the library is loaded (GNU ifunc). One binary runs everywhere
//    and uses 8-wide vectors where they exist. The AVX2 version may fuse
//    multiply-adds, so the last bit of a result can depend on the machine;
//    on one machine results are always the same.
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

namespace commvq {

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
