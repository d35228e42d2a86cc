// The value encoder and decoder against a float64 reference written here
// from docs/METHOD.md "Values".
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "fixture.h"
#include "random_codebook.h"
#include "value_encoder.h"

using namespace commvq;

namespace {

struct Reference {
    std::vector<uint8_t> bits;  // one entry per code bit
    double weight = 0;
    double min_margin = INFINITY;  // smallest gap between a group's best and second logit
};

Reference reference_encode(const Codebook& cb, uint32_t layer, const float* v) {
    const ValueCodebook& vc = cb.layers[layer].values;
    const uint32_t D = cb.value_dim(), I = cb.value_hidden, n = cb.value_groups();
    const double eps = 1e-6;
    std::vector<double> u(D);
    double sigma = 0;
    for (uint32_t c = 0; c < D; ++c) {
        u[c] = v[c] / (double(vc.lambda[c]) + eps);
        sigma += u[c] * u[c];
    }
    sigma = std::sqrt(sigma);
    for (double& x : u) x /= sigma + eps;
    double mean = 0, var = 0;
    for (double x : u) mean += x;
    mean /= D;
    for (double x : u) var += (x - mean) * (x - mean);
    var /= D;
    for (uint32_t c = 0; c < D; ++c)
        u[c] = (u[c] - mean) / std::sqrt(var + 1e-5) * vc.norm_weight[c] + vc.norm_bias[c];
    std::vector<double> hidden(I), logits(4 * n);
    for (uint32_t i = 0; i < I; ++i) {
        double acc = vc.enc1_bias[i];
        for (uint32_t c = 0; c < D; ++c) acc += double(vc.enc1_weight[size_t(i) * D + c]) * u[c];
        hidden[i] = 0.5 * acc * (1 + std::erf(acc / std::sqrt(2.0)));
    }
    for (uint32_t o = 0; o < 4 * n; ++o) {
        double acc = vc.enc2_bias[o];
        for (uint32_t i = 0; i < I; ++i) acc += double(vc.enc2_weight[size_t(o) * I + i]) * hidden[i];
        logits[o] = acc;
    }
    Reference ref;
    ref.bits.assign(2 * n, 0);
    static const uint8_t option_bits[4][2] = {{1, 0}, {0, 1}, {1, 1}, {0, 0}};
    for (uint32_t g = 0; g < n; ++g) {
        uint32_t best = 0;
        for (uint32_t o = 1; o < 4; ++o)
            if (logits[4 * g + o] > logits[4 * g + best]) best = o;
        for (uint32_t o = 0; o < 4; ++o)
            if (o != best) ref.min_margin = std::min(ref.min_margin, logits[4 * g + best] - logits[4 * g + o]);
        ref.bits[2 * g] = option_bits[best][0];
        ref.bits[2 * g + 1] = option_bits[best][1];
    }
    double y2 = 0;
    for (uint32_t c = 0; c < D; ++c) {
        double y = 0;
        for (uint32_t i = 0; i < 2 * n; ++i) y += ref.bits[i] * double(vc.codebook[size_t(i) * D + c]);
        y2 += y * y;
    }
    ref.weight = (sigma + eps) / (std::sqrt(y2) + eps);
    return ref;
}

std::vector<double> reference_decode(const Codebook& cb, uint32_t layer, const std::vector<uint8_t>& bits,
                                     double weight) {
    const ValueCodebook& vc = cb.layers[layer].values;
    const uint32_t D = cb.value_dim();
    std::vector<double> out(D);
    for (uint32_t c = 0; c < D; ++c) {
        double y = 0;
        for (size_t i = 0; i < bits.size(); ++i) y += bits[i] * double(vc.codebook[i * D + c]);
        out[c] = weight * y * (double(vc.lambda[c]) + 1e-6);
    }
    return out;
}

// Encodes n tokens and compares with the reference. Groups whose top two
// reference logits are closer than kTieMargin may legitimately flip (float
// vs float64 rounding); they are counted, and must be rare.
constexpr double kTieMargin = 1e-4;

struct Tally {
    size_t tokens = 0, compared = 0, near_ties = 0, code_mismatches = 0, weight_bad = 0, decode_bad = 0;
};

void check_tokens(const Codebook& cb, uint32_t layer, const float* values, size_t n_tokens, Tally& tally) {
    ValueEncoder enc(cb, layer);
    const uint32_t D = cb.value_dim(), n_bits = cb.value_code_bits();
    std::vector<float> scratch(enc.scratch_floats(), NAN), out(D);
    std::vector<uint8_t> packed(n_bits / 8);
    for (size_t t = 0; t < n_tokens; ++t) {
        const float* v = values + t * D;
        std::fill(packed.begin(), packed.end(), uint8_t(0xa5));
        std::fill(scratch.begin(), scratch.end(), NAN);
        float weight = NAN;
        enc.encode(v, packed.data(), &weight, scratch.data());
        const Reference ref = reference_encode(cb, layer, v);
        ++tally.tokens;
        if (ref.min_margin < kTieMargin) {
            ++tally.near_ties;
            continue;
        }
        ++tally.compared;
        std::vector<uint8_t> bits(n_bits);
        for (uint32_t i = 0; i < n_bits; ++i) bits[i] = (packed[i / 8] >> (i % 8)) & 1;
        if (bits != ref.bits) {
            ++tally.code_mismatches;
            continue;
        }
        if (!(std::abs(weight - ref.weight) <= 1e-5 * ref.weight)) ++tally.weight_bad;
        // Decode from our codes and weight against float64 on the same inputs.
        std::fill(out.begin(), out.end(), NAN);
        enc.decode(packed.data(), weight, out.data());
        const std::vector<double> expected = reference_decode(cb, layer, bits, weight);
        double err = 0, norm = 0;
        for (uint32_t c = 0; c < D; ++c) {
            err = std::max(err, std::abs(out[c] - expected[c]));
            norm = std::max(norm, std::abs(expected[c]));
        }
        if (!(err <= 1e-5 * norm)) ++tally.decode_bad;
    }
}

}  // namespace

TEST_CASE("value encoder matches a float64 reference on fixture values") {
    const test::KvFixture& fx = test::kv_fixture();
    for (uint32_t bits : {1u, 2u}) {
        const Codebook cb = test::random_codebook(fx.n_layers, fx.n_kv_heads, fx.n_q_heads, fx.head_dim, bits,
                                                  COMMVQ_PAIRS_ROTATE_HALF, COMMVQ_SCALE_TOKEN, 21 + bits);
        Tally tally;
        for (uint32_t l = 0; l < fx.n_layers; ++l) check_tokens(cb, l, fx.value(l, 0), 64, tally);
        CAPTURE(bits);
        CAPTURE(tally.near_ties);
        CHECK(tally.compared >= tally.tokens * 3 / 4);
        CHECK(tally.code_mismatches == 0);
        CHECK(tally.weight_bad == 0);
        CHECK(tally.decode_bad == 0);
    }
}

TEST_CASE("value encoder matches a float64 reference on random values, odd shapes") {
    struct Shape {
        uint32_t heads, head_dim, bits;
    };
    for (Shape s : {Shape{1, 8, 1}, Shape{3, 32, 2}, Shape{2, 64, 1}, Shape{1, 4, 2}}) {
        test::RandomCodebookSpec spec;
        spec.n_layers = 1;
        spec.n_kv_heads = s.heads;
        spec.n_q_heads = s.heads;
        spec.head_dim = s.head_dim;
        spec.value_bits = s.bits;
        spec.seed = 1000 + s.heads * 7 + s.head_dim;
        const Codebook cb = test::random_codebook(spec);
        test::Rng rng(spec.seed);
        std::vector<float> values = rng.normals(size_t(40) * cb.value_dim(), 2.0);
        Tally tally;
        check_tokens(cb, 0, values.data(), 40, tally);
        CAPTURE(s.heads);
        CAPTURE(s.head_dim);
        CHECK(tally.compared >= 30);
        CHECK(tally.code_mismatches == 0);
        CHECK(tally.weight_bad == 0);
        CHECK(tally.decode_bad == 0);
    }
}

TEST_CASE("value encoder: ties between logits go to the lower option, and the bit mapping") {
    // With zero enc2 weights the logits are the biases: choose them to make
    // each group's winner known, including exact ties.
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = 1;
    spec.n_q_heads = 1;
    spec.head_dim = 8;  // D = 8, 1 bit: n = 4 groups
    Codebook cb = test::random_codebook(spec);
    ValueCodebook& vc = cb.layers[0].values;
    std::fill(vc.enc2_weight.begin(), vc.enc2_weight.end(), 0.0f);
    vc.enc2_bias = {0, 1, 2, 3,    // option 3 -> bits (0,0)
                    5, 5, 1, 1,    // tie 0/1 -> option 0 -> (1,0)
                    0, 2, 2, 2,    // tie 1/2/3 -> option 1 -> (0,1)
                    -1, -1, 4, 4}; // tie 2/3 -> option 2 -> (1,1)
    cb.finalize();
    ValueEncoder enc(cb, 0);
    std::vector<float> v(8, 1.0f), scratch(enc.scratch_floats());
    uint8_t bits = 0xff;
    float w = NAN;
    enc.encode(v.data(), &bits, &w, scratch.data());
    // groups g = 0..3 at bits (2g, 2g+1): (0,0), (1,0), (0,1), (1,1)
    CHECK(bits == uint8_t(0b11100100));
    CHECK(std::isfinite(w));
}
