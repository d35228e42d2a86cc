// The squared norms behind a key's scale (docs/METHOD.md "Keys"), one
// definition for the CPU encoder, the cache's slice appends and the CUDA
// kernels, so that every cache (CPU or CUDA, all heads or a slice of them,
// docs/PARALLEL.md) rounds the same float64 sums:
//   ||k_h||^2   one head's pre-RoPE key, canonical layout, summed in element order;
//   ||k||^2     the token's, its heads' values summed in head order.
// A slice cache gets the other heads' values from the engine, so only a sum
// per head, then over heads in a fixed order, lets it form the scale of a
// cache that holds every head. On the device the operations are spelled as
// IEEE intrinsics: nvcc would otherwise fuse the multiply and the add into
// one rounding. On the host, key_head_norm2 (key_encoder.h) is the one
// caller of head_norm2: key_encoder.cpp is compiled without contraction.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define COMMVQ_KEY_SCALE_HD __host__ __device__ __forceinline__
#else
#define COMMVQ_KEY_SCALE_HD inline
#endif

namespace commvq {
namespace key_scale {

COMMVQ_KEY_SCALE_HD double head_norm2(const float* x, uint32_t d) {
    double s = 0;
    for (uint32_t i = 0; i < d; ++i) {
#if defined(__CUDA_ARCH__)
        s = __dadd_rn(s, __dmul_rn(double(x[i]), double(x[i])));
#else
        s += double(x[i]) * x[i];
#endif
    }
    return s;
}

// ||k||^2 of one token from its heads' ||k_h||^2: head h's value at
// head_norms2[h * head_stride].
COMMVQ_KEY_SCALE_HD double token_norm2(const double* head_norms2, uint32_t n_heads, size_t head_stride) {
    double s = 0;
    for (uint32_t h = 0; h < n_heads; ++h) {
#if defined(__CUDA_ARCH__)
        s = __dadd_rn(s, head_norms2[h * head_stride]);
#else
        s += head_norms2[h * head_stride];
#endif
    }
    return s;
}

}  // namespace key_scale
}  // namespace commvq
