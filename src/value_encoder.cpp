#include "value_encoder.h"

#include <cmath>
#include <cstring>

#include "error.h"
#include "vector_clones.h"

namespace commvq {

namespace {

constexpr double kLayerNormEps = 1e-5;

// The two bits of each group's winning option: 0 -> (1,0), 1 -> (0,1),
// 2 -> (1,1), 3 -> (0,0), as bits (2g, 2g+1). SPEC.md "Values".
constexpr uint8_t kOptionBits[4] = {0b01, 0b10, 0b11, 0b00};

// y = W x + b for W [rows][cols]: row dot products with eight partial sums
// in one vector register (GCC/Clang vector extension; strict IEEE order
// would otherwise keep the compiler from vectorizing a sum).
COMMVQ_VECTOR_CLONES
void linear(const float* W, const float* b, const float* x, uint32_t rows, uint32_t cols, float* y) {
    typedef float Lanes __attribute__((vector_size(32)));
    constexpr uint32_t kLanes = 8;
    const uint32_t body = cols / kLanes * kLanes;
    for (uint32_t i = 0; i < rows; ++i) {
        const float* w = W + size_t(i) * cols;
        Lanes acc = {};
        for (uint32_t k = 0; k < body; k += kLanes) {
            Lanes wv, xv;
            std::memcpy(&wv, w + k, sizeof wv);  // unaligned loads
            std::memcpy(&xv, x + k, sizeof xv);
            acc += wv * xv;
        }
        float sum = b[i];
        for (uint32_t k = body; k < cols; ++k) sum += w[k] * x[k];
        y[i] = sum + (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])));
    }
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
    const ValueCodebook& vc = cb_.layers[layer_].values;
    const uint32_t D = cb_.value_dim(), I = cb_.value_hidden, n = cb_.value_groups();
    float* u = scratch;
    float* hidden = u + D;
    float* logits = hidden + I;

    // Per-channel scale, then the token's norm sigma: the encoder sees a unit vector.
    double sigma2 = 0;
    for (uint32_t c = 0; c < D; ++c) {
        u[c] = v[c] / (vc.lambda[c] + kValueEps);
        sigma2 += double(u[c]) * u[c];
    }
    const double sigma = std::sqrt(sigma2);
    double mean = 0;
    for (uint32_t c = 0; c < D; ++c) {
        u[c] = float(u[c] / (sigma + kValueEps));
        mean += u[c];
    }
    mean /= D;
    double var = 0;
    for (uint32_t c = 0; c < D; ++c) var += (u[c] - mean) * (u[c] - mean);
    const double inv_std = 1.0 / std::sqrt(var / D + kLayerNormEps);
    for (uint32_t c = 0; c < D; ++c) u[c] = float((u[c] - mean) * inv_std * vc.norm_weight[c] + vc.norm_bias[c]);

    linear(vc.enc1_weight.data(), vc.enc1_bias.data(), u, I, D, hidden);
    for (uint32_t i = 0; i < I; ++i) {
        const double x = hidden[i];
        hidden[i] = float(0.5 * x * (1.0 + std::erf(x * M_SQRT1_2)));
    }
    linear(vc.enc2_weight.data(), vc.enc2_bias.data(), hidden, 4 * n, I, logits);

    const uint32_t n_bytes = cb_.value_code_bits() / 8;
    for (uint32_t i = 0; i < n_bytes; ++i) bits[i] = 0;
    for (uint32_t g = 0; g < n; ++g) {
        const float* l = logits + 4 * size_t(g);
        uint32_t best = 0;
        for (uint32_t o = 1; o < 4; ++o)
            if (l[o] > l[best]) best = o;  // strict: ties keep the lower option
        const uint32_t bit = 2 * g;  // 2 bits per group, never straddling a byte
        bits[bit / 8] |= uint8_t(kOptionBits[best] << (bit % 8));
    }

    // w = (sigma + eps) / (||y|| + eps), y = sum_i bit_i E_i; u is free again.
    float* y = u;
    sum_codewords(bits, y);
    double y2 = 0;
    for (uint32_t c = 0; c < D; ++c) y2 += double(y[c]) * y[c];
    *weight = float((sigma + kValueEps) / (std::sqrt(y2) + kValueEps));
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
