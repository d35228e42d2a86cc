// The value encoder's per-element formulas (docs/METHOD.md "Values"), in
// one place for the CPU encoder (src/value_encoder.cpp, the reference) and
// the CUDA kernels (kernels/value_encoder.cu), so both round the same
// float64 expressions to float. On the device the operations are spelled
// as IEEE intrinsics: nvcc would otherwise fuse a multiply and an add into
// one rounding, which the CPU build forbids (-ffp-contract=off).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define COMMVQ_HD __host__ __device__ __forceinline__
#else
#define COMMVQ_HD inline
#endif

namespace commvq {
namespace value_formulas {

COMMVQ_HD double mul(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

COMMVQ_HD double add(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

// GELU with the exact erf (PyTorch's default, not the tanh approximation),
// evaluated in float64 and rounded once.
COMMVQ_HD float gelu(float x) {
    const double xd = x;
    return float(mul(mul(0.5, xd), add(1.0, erf(mul(xd, 0.70710678118654752440)))));
}

// LayerNorm's output of one channel: (u - mean) * inv_std * weight + bias.
COMMVQ_HD float layer_norm(float u, double mean, double inv_std, float weight, float bias) {
    return float(add(mul(mul(add(double(u), -mean), inv_std), double(weight)), double(bias)));
}

// The winning option of a group of 4 logits; strict comparisons, so ties
// keep the lower option.
COMMVQ_HD uint32_t argmax4(float l0, float l1, float l2, float l3) {
    uint32_t best = 0;
    float v = l0;
    if (l1 > v) v = l1, best = 1;
    if (l2 > v) v = l2, best = 2;
    if (l3 > v) best = 3;
    return best;
}

// The two bits of a group's winning option: 0 -> (1,0), 1 -> (0,1),
// 2 -> (1,1), 3 -> (0,0), as bits (2g, 2g+1) of the code.
COMMVQ_HD uint32_t option_bits(uint32_t option) { return (0b00111001u >> (2 * option)) & 3u; }

}  // namespace value_formulas
}  // namespace commvq
