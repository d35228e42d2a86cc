// Value encoding: the learned encoder of SPEC.md (per-channel scale, norm,
// LayerNorm, Linear, GELU, Linear) and argmax over each group of 4 logits,
// which becomes 2 bits. Also the per-token weight w = (sigma+eps)/(||y||+eps).
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {

constexpr float kValueEps = 1e-6f;

class ValueEncoder {
public:
    ValueEncoder(const Codebook& cb, uint32_t layer);

    // v: one token's values [D] (all KV heads). Writes the packed code bits
    // (value_code_bits()/8 bytes, bit i of the code at byte i/8, bit i%8)
    // and the token's weight w. scratch must hold scratch_floats() floats.
    void encode(const float* v, uint8_t* bits, float* weight, float* scratch) const;
    size_t scratch_floats() const;

    // Decoded value of one token: v_hat = w * (sum_i bit_i E_i) * (lambda + eps).
    void decode(const uint8_t* bits, float weight, float* out) const;

private:
    // y = sum_i bit_i E_i, [D].
    void sum_codewords(const uint8_t* bits, float* y) const;

    const Codebook& cb_;
    uint32_t layer_;
};

}  // namespace commvq
