// Value encoding: the learned encoder of docs/METHOD.md (per-channel scale, norm,
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

    // The same for n tokens at once (any n; bit-identical to n calls of
    // encode): token t reads v + t * v_stride, writes bits + t * bits_stride
    // and weights[t * weight_stride]. The linear layers and the codeword sums
    // run over tiles of kTile tokens, so each weight is read once per tile
    // instead of once per token. scratch must hold kTile * scratch_floats().
    static constexpr uint32_t kTile = 8;
    void encode_tile(uint32_t n, const float* v, size_t v_stride, uint8_t* bits, size_t bits_stride,
                     float* weights, size_t weight_stride, float* scratch) const;

    // Decoded value of one token: v_hat = w * (sum_i bit_i E_i) * (lambda + eps).
    void decode(const uint8_t* bits, float weight, float* out) const;

private:
    // y = sum_i bit_i E_i, [D].
    void sum_codewords(const uint8_t* bits, float* y) const;
    // y_t = sum_i bit_i E_i for up to kTile tokens, each codeword read once.
    void sum_codewords_tile(uint32_t n, const uint8_t* const* bits, float* const* y) const;
    // encode for up to kTile tokens (scratch regions of scratch_floats() per token).
    void encode_some(uint32_t n, const float* const* v, uint8_t* const* bits, float* const* weights,
                     float* scratch) const;

    const Codebook& cb_;
    uint32_t layer_;
};

}  // namespace commvq
