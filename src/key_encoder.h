// Key encoding by greedy residual search with the exact decomposition of
// SPEC.md: ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}, so a
// stage costs 2C dot products and C*C additions instead of C*C distances.
// Ties go to the lower code A * C + B.
#pragma once

#include <cstdint>

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

private:
    const Codebook& cb_;
    uint32_t layer_;
};

}  // namespace commvq
