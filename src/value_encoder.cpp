#include "value_encoder.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "error.h"
#include "value_formulas.h"
#include "vector_clones.h"

namespace commvq {

namespace {

constexpr double kLayerNormEps = 1e-5;

// y = W x + b for W [rows][cols]: row dot products with eight partial sums
// in one vector register (GCC/Clang vector extension; strict IEEE order
// would otherwise keep the compiler from vectorizing a sum).
COMMVQ_CLONE_BODY
void linear_body(const float* W, const float* b, const float* x, uint32_t rows, uint32_t cols, float* y) {
    constexpr uint32_t kLanes = 8;
    const uint32_t body = cols / kLanes * kLanes;
    for (uint32_t i = 0; i < rows; ++i) {
        const float* w = W + size_t(i) * cols;
        F8 acc = {};
        for (uint32_t k = 0; k < body; k += kLanes) acc += load8(w + k) * load8(x + k);
        float sum = b[i];
        for (uint32_t k = body; k < cols; ++k) sum += w[k] * x[k];
        y[i] = sum + (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
    }
}
COMMVQ_TWO_CLONES(linear, (const float* W, const float* b, const float* x, uint32_t rows, uint32_t cols, float* y),
                  (W, b, x, rows, cols, y))

// The same for a full tile of kTile tokens: one vector register of partial
// sums per token, and each row of W loaded once for the whole tile. Every
// token's arithmetic is that of linear, so results do not depend on tiling.
COMMVQ_CLONE_BODY
void linear_tile_body(const float* W, const float* b, const float* const* x, uint32_t rows, uint32_t cols,
                      float* const* y) {
    constexpr uint32_t kTile = ValueEncoder::kTile, kLanes = 8;
    const uint32_t body = cols / kLanes * kLanes;
    for (uint32_t i = 0; i < rows; ++i) {
        const float* w = W + size_t(i) * cols;
        F8 acc[kTile] = {};
        for (uint32_t k = 0; k < body; k += kLanes) {
            const F8 wv = load8(w + k);
#pragma GCC unroll 8
            for (uint32_t t = 0; t < kTile; ++t) acc[t] += wv * load8(x[t] + k);
        }
        for (uint32_t t = 0; t < kTile; ++t) {
            float sum = b[i];
            for (uint32_t k = body; k < cols; ++k) sum += w[k] * x[t][k];
            const F8& a = acc[t];
            y[t][i] = sum + (((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])));
        }
    }
}
COMMVQ_TWO_CLONES(linear_tile, (const float* W, const float* b, const float* const* x, uint32_t rows, uint32_t cols,
                                float* const* y),
                  (W, b, x, rows, cols, y))

// y_t = W x_t + b for n tokens: a full tile at once, fewer one by one.
void linear_tokens(const float* W, const float* b, const float* const* x, uint32_t n, uint32_t rows,
                   uint32_t cols, float* const* y) {
    if (n == ValueEncoder::kTile) {
        linear_tile(W, b, x, rows, cols, y);
        return;
    }
    for (uint32_t t = 0; t < n; ++t) linear(W, b, x[t], rows, cols, y[t]);
}

}  // namespace

ValueEncoder::ValueEncoder(const Codebook& cb, uint32_t layer) : cb_(cb), layer_(layer) {
    require(layer < cb.n_layers, COMMVQ_ERR_OUT_OF_RANGE,
            "layer " + std::to_string(layer) + " of a codebook with " + std::to_string(cb.n_layers) + " layers");
}

size_t ValueEncoder::scratch_floats() const {
    return size_t(cb_.value_dim()) + cb_.value_hidden + 4 * size_t(cb_.value_groups());
}

void ValueEncoder::encode(const float* v, uint8_t* bits, float* weight, float* scratch) const {
    encode_some(1, &v, &bits, &weight, scratch);
}

void ValueEncoder::encode_tile(uint32_t n, const float* v, size_t v_stride, uint8_t* bits, size_t bits_stride,
                               float* weights, size_t weight_stride, float* scratch) const {
    for (uint32_t t0 = 0; t0 < n; t0 += kTile) {
        const uint32_t m = std::min(kTile, n - t0);
        const float* vs[kTile];
        uint8_t* bs[kTile];
        float* ws[kTile];
        for (uint32_t t = 0; t < m; ++t) {
            vs[t] = v + (t0 + t) * v_stride;
            bs[t] = bits + (t0 + t) * bits_stride;
            ws[t] = weights + (t0 + t) * weight_stride;
        }
        encode_some(m, vs, bs, ws, scratch);
    }
}

void ValueEncoder::encode_some(uint32_t n, const float* const* v, uint8_t* const* bits, float* const* weights,
                               float* scratch) const {
    const ValueCodebook& vc = cb_.layers[layer_].values;
    const uint32_t D = cb_.value_dim(), I = cb_.value_hidden, n_groups = cb_.value_groups();
    float* u[kTile] = {};
    float* hidden[kTile] = {};
    float* logits[kTile] = {};
    double sigma[kTile];
    for (uint32_t t = 0; t < n; ++t) {
        u[t] = scratch + t * scratch_floats();
        hidden[t] = u[t] + D;
        logits[t] = hidden[t] + I;

        // Per-channel scale, then the token's norm sigma: the encoder sees a unit vector.
        float* ut = u[t];
        double sigma2 = 0;
        for (uint32_t c = 0; c < D; ++c) {
            ut[c] = v[t][c] / (vc.lambda[c] + kValueEps);
            sigma2 += double(ut[c]) * ut[c];
        }
        sigma[t] = std::sqrt(sigma2);
        double mean = 0;
        for (uint32_t c = 0; c < D; ++c) {
            ut[c] = float(ut[c] / (sigma[t] + kValueEps));
            mean += ut[c];
        }
        mean /= D;
        double var = 0;
        for (uint32_t c = 0; c < D; ++c) var += (ut[c] - mean) * (ut[c] - mean);
        const double inv_std = 1.0 / std::sqrt(var / D + kLayerNormEps);
        for (uint32_t c = 0; c < D; ++c)
            ut[c] = value_formulas::layer_norm(ut[c], mean, inv_std, vc.norm_weight[c], vc.norm_bias[c]);
    }

    linear_tokens(vc.enc1_weight.data(), vc.enc1_bias.data(), u, n, I, D, hidden);
    for (uint32_t t = 0; t < n; ++t)
        for (uint32_t i = 0; i < I; ++i) hidden[t][i] = value_formulas::gelu(hidden[t][i]);
    linear_tokens(vc.enc2_weight.data(), vc.enc2_bias.data(), hidden, n, 4 * n_groups, I, logits);

    const uint32_t n_bytes = cb_.value_code_bits() / 8;
    for (uint32_t t = 0; t < n; ++t) {
        uint8_t* b = bits[t];
        for (uint32_t i = 0; i < n_bytes; ++i) b[i] = 0;
        for (uint32_t g = 0; g < n_groups; ++g) {
            const float* l = logits[t] + 4 * size_t(g);
            const uint32_t best = value_formulas::argmax4(l[0], l[1], l[2], l[3]);
            const uint32_t bit = 2 * g;  // 2 bits per group, never straddling a byte
            b[bit / 8] |= uint8_t(value_formulas::option_bits(best) << (bit % 8));
        }
    }

    // w = (sigma + eps) / (||y|| + eps), y = sum_i bit_i E_i; u is free again.
    sum_codewords_tile(n, bits, u);
    for (uint32_t t = 0; t < n; ++t) {
        const float* y = u[t];
        double y2 = 0;
        for (uint32_t c = 0; c < D; ++c) y2 += double(y[c]) * y[c];
        *weights[t] = float((sigma[t] + kValueEps) / (std::sqrt(y2) + kValueEps));
    }
}

// y_t = sum_i bit_i E_i for up to kTile tokens: each codeword is read once
// for the tile and added, in the order of i, to the sums of the tokens that
// have its bit.
void ValueEncoder::sum_codewords_tile(uint32_t n, const uint8_t* const* bits, float* const* y) const {
    const uint32_t D = cb_.value_dim(), n_bits = cb_.value_code_bits();
    const float* E = cb_.layers[layer_].values.codebook.data();
    for (uint32_t t = 0; t < n; ++t)
        for (uint32_t c = 0; c < D; ++c) y[t][c] = 0.0f;
    for (uint32_t i = 0; i < n_bits; ++i) {
        const float* e = E + size_t(i) * D;
        for (uint32_t t = 0; t < n; ++t)
            if ((bits[t][i / 8] >> (i % 8)) & 1u) {
                float* yt = y[t];
                for (uint32_t c = 0; c < D; ++c) yt[c] += e[c];
            }
    }
}

void ValueEncoder::sum_codewords(const uint8_t* bits, float* y) const {
    const uint32_t D = cb_.value_dim(), n_bits = cb_.value_code_bits();
    const float* E = cb_.layers[layer_].values.codebook.data();
    for (uint32_t c = 0; c < D; ++c) y[c] = 0.0f;
    for (uint32_t i = 0; i < n_bits; ++i)
        if ((bits[i / 8] >> (i % 8)) & 1u)
            for (uint32_t c = 0; c < D; ++c) y[c] += E[size_t(i) * D + c];
}

void ValueEncoder::decode(const uint8_t* bits, float weight, float* out) const {
    const std::vector<float>& lambda = cb_.layers[layer_].values.lambda;
    sum_codewords(bits, out);
    for (uint32_t c = 0; c < cb_.value_dim(); ++c) out[c] = weight * out[c] * (lambda[c] + kValueEps);
}

}  // namespace commvq
