// Key encoding by greedy residual search with the exact decomposition of
// SPEC.md: ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}, so a
// stage costs 2C dot products and C*C additions instead of C*C distances.
// Ties go to the lower code A * C + B.
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {

class KeyEncoder {
public:
    KeyEncoder(const Codebook& cb, uint32_t layer);

    // k: pre-RoPE key of one token, [n_kv_heads][head_dim] in the CANONICAL
    // pair layout. Writes codes [n_kv_heads][key_stages] (values < C*C) and
    // scales [cb.n_key_scales()].
    void encode(const float* k, uint16_t* codes, float* scales) const;

    // The decoded pre-RoPE key of one head without its scale, canonical
    // layout: sum over stages of z_A + i z_B.
    void decode_head(uint32_t head, const uint16_t* head_codes, float* out) const;

    // Construction builds per-layer tables (about the size of the layer's key
    // codebook): build one encoder per layer and reuse it.

private:
    struct Work;
    // The code A * C + B of the stage that minimizes ||t - (z_A + i z_B)||^2,
    // ties to the lower code.
    uint32_t best_code(uint32_t head, uint32_t stage, const double* t, Work& work) const;
    double exact_cost(uint32_t head, uint32_t stage, uint32_t A, uint32_t B, const double* t, Work& work) const;
    void encode_head(uint32_t head, const float* k, double scale, uint16_t* codes, Work& work) const;

    const Codebook& cb_;
    uint32_t layer_;
    std::vector<float> centers_t_;  // [Hkv][R][d][C] sub-centers transposed, for vector-friendly dot products
    std::vector<double> norms_;     // [Hkv][R][C] ||z_a||^2 in float64
    std::vector<double> max_norm_;  // [Hkv][R]    max_a ||z_a||, for the float error bound
};

}  // namespace commvq
