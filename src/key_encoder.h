// Key encoding by greedy residual search with the exact decomposition of
// docs/METHOD.md: ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}, so a
// stage costs 2C dot products and C*C additions instead of C*C distances.
// Ties go to the lower code A * C + B.
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {

// ||x||^2 of one head's key (d elements, float64, summed in element order;
// key_scale.h). A token's scale in `token` mode is the square root of these
// summed over its KV heads in head order (key_scale::token_norm2), so a
// slice of the heads (parallel caches, docs/PARALLEL.md) gives the same
// float64 sum from the per-head values.
double key_head_norm2(const float* x, uint32_t d);

class KeyEncoder {
public:
    KeyEncoder(const Codebook& cb, uint32_t layer);

    // k: pre-RoPE key of one token, [n_kv_heads][head_dim] in the CANONICAL
    // pair layout. Writes codes [n_kv_heads][key_stages] (values < C*C) and
    // scales [cb.n_key_scales()].
    void encode(const float* k, uint16_t* codes, float* scales) const;

    // Working memory of encode_tile for one tile of tokens. The caller
    // keeps it (the cache makes one per thread at creation), so encoding
    // allocates nothing and cannot fail once the cache exists.
    static constexpr uint32_t kTile = 8;
    struct Scratch {
        explicit Scratch(const Codebook& cb);
        uint32_t d, C;
        std::vector<double> scale;                  // [kTile][Hkv] each token's scale of each head
        std::vector<double> residual;               // t, [kTile][d]
        std::vector<float> t;                       // t in float, [kTile][d]
        std::vector<double> t_norm2;                // ||t||^2, [kTile]
        std::vector<float> alpha_f, beta_f;         // float pass, [kTile][C]
        std::vector<float> row_min;                 // float pass, [C]
        std::vector<double> alpha, beta;            // float64 alpha_A, beta_B of the candidates, [C]
        std::vector<uint32_t> candidates;           // codes A * C + B within the float bound, increasing, [C*C]
        std::vector<uint8_t> need_a, need_b;        // whether a candidate has A = a / B = b, [C]
        std::vector<uint32_t> list_a, list_b;       // those a / b, [C]
        std::vector<uint32_t> code;                 // the stage's codes, [kTile]
    };

    // The same for n tokens (bit-identical to n calls of encode): token t
    // reads k + t * k_stride and writes codes + t * codes_stride and
    // scales + t * scales_stride. Each stage searches kTile tokens at once,
    // so its sub-centers are read once per tile. token_norms2 (token scale
    // mode only; may be null): token t's squared norm over ALL the model's
    // KV heads, token_norms2[t], used instead of the norm of k's heads (a
    // slice codebook has only some of them).
    void encode_tile(uint32_t n, const float* k, size_t k_stride, uint16_t* codes, size_t codes_stride,
                     float* scales, size_t scales_stride, Scratch& scratch,
                     const double* token_norms2 = nullptr) const;

    // The decoded pre-RoPE key of one head without its scale, canonical
    // layout: sum over stages of z_A + i z_B.
    void decode_head(uint32_t head, const uint16_t* head_codes, float* out) const;

    // Construction builds per-layer tables (about twice the size of the layer's key
    // codebook): build one encoder per layer and reuse it.

private:
    // For tokens 0..m-1 of the tile (residuals in work), the code A * C + B of
    // the stage that minimizes ||t - (z_A + i z_B)||^2, ties to the lower code.
    void search_stage(uint32_t head, uint32_t stage, uint32_t m, Scratch& work) const;
    uint32_t best_code(uint32_t head, uint32_t stage, uint32_t token, Scratch& work) const;

    const Codebook& cb_;
    uint32_t layer_;
    std::vector<float> centers_t_;  // [Hkv][R][d][C] sub-centers transposed, for vector-friendly dot products
    std::vector<double> norms_;     // [Hkv][R][C] ||z_a||^2 in float64
    std::vector<double> max_norm_;  // [Hkv][R]    max_a ||z_a||, for the float error bound
    std::vector<double> cross_;     // [Hkv][R][C][C] <z_A, i z_B> in float64, for the candidates' exact costs
};

}  // namespace commvq
