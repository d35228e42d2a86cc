// Key encoding by greedy residual search with the exact decomposition of
// docs/METHOD.md: ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}, so a
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

    // The same for n tokens (bit-identical to n calls of encode): token t
    // reads k + t * k_stride and writes codes + t * codes_stride and
    // scales + t * scales_stride. Each stage searches kTile tokens at once,
    // so its sub-centers are read once per tile.
    static constexpr uint32_t kTile = 8;
    void encode_tile(uint32_t n, const float* k, size_t k_stride, uint16_t* codes, size_t codes_stride,
                     float* scales, size_t scales_stride) const;

    // The decoded pre-RoPE key of one head without its scale, canonical
    // layout: sum over stages of z_A + i z_B.
    void decode_head(uint32_t head, const uint16_t* head_codes, float* out) const;

    // Construction builds per-layer tables (about twice the size of the layer's key
    // codebook): build one encoder per layer and reuse it.

private:
    struct Work;
    // For tokens 0..m-1 of the tile (residuals in work), the code A * C + B of
    // the stage that minimizes ||t - (z_A + i z_B)||^2, ties to the lower code.
    void search_stage(uint32_t head, uint32_t stage, uint32_t m, Work& work) const;
    uint32_t best_code(uint32_t head, uint32_t stage, uint32_t token, Work& work) const;

    const Codebook& cb_;
    uint32_t layer_;
    std::vector<float> centers_t_;  // [Hkv][R][d][C] sub-centers transposed, for vector-friendly dot products
    std::vector<double> norms_;     // [Hkv][R][C] ||z_a||^2 in float64
    std::vector<double> max_norm_;  // [Hkv][R]    max_a ||z_a||, for the float error bound
    std::vector<double> cross_;     // [Hkv][R][C][C] <z_A, i z_B> in float64, for the candidates' exact costs
};

}  // namespace commvq
