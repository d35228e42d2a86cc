#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "error.h"
#include "pair_layout.h"
#include "random_codebook.h"
#include "rope.h"

using namespace commvq;

namespace {

// Hugging Face transformers' _compute_default_rope_parameters and
// _compute_llama3_parameters, transcribed step by step (torch.where as ?:).
std::vector<double> hf_inv_freq(const RopeSpec& r, uint32_t dim) {
    std::vector<double> inv(dim / 2);
    for (uint32_t i = 0; i < dim; i += 2) inv[i / 2] = 1.0 / std::pow(r.theta, double(i) / dim);
    if (r.scaling == COMMVQ_ROPE_SCALING_LINEAR)
        for (double& w : inv) w /= r.factor;
    if (r.scaling == COMMVQ_ROPE_SCALING_LLAMA3) {
        const double low_freq_wavelen = r.original_max_position / r.low_freq_factor;
        const double high_freq_wavelen = r.original_max_position / r.high_freq_factor;
        for (double& w : inv) {
            const double wavelen = 2 * M_PI / w;
            double llama = wavelen > low_freq_wavelen ? w / r.factor : w;
            const double smooth = (r.original_max_position / wavelen - r.low_freq_factor) /
                                  (r.high_freq_factor - r.low_freq_factor);
            const double smoothed = (1 - smooth) * llama / r.factor + smooth * llama;
            const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            w = medium ? smoothed : llama;
        }
    }
    return inv;
}

RopeSpec llama31() {
    RopeSpec r;
    r.theta = 500000;
    r.scaling = COMMVQ_ROPE_SCALING_LLAMA3;
    r.factor = 8;
    r.low_freq_factor = 1;
    r.high_freq_factor = 4;
    r.original_max_position = 8192;
    return r;
}

}  // namespace

TEST_CASE("rope frequencies equal the Hugging Face formulas") {
    RopeSpec none;
    none.theta = 10000;
    RopeSpec linear = none;
    linear.scaling = COMMVQ_ROPE_SCALING_LINEAR;
    linear.factor = 4;
    RopeSpec small3 = llama31();  // a short original context puts many pairs in the blended band
    small3.original_max_position = 512;
    for (const RopeSpec& r : {none, linear, llama31(), small3})
        for (uint32_t d : {64u, 128u}) {
            const std::vector<double> ours = rope_frequencies(r, d), ref = hf_inv_freq(r, d);
            REQUIRE(ours.size() == ref.size());
            for (size_t j = 0; j < ours.size(); ++j) CHECK(ours[j] == doctest::Approx(ref[j]).epsilon(1e-14));
        }
    // The LLaMA-3.1 case must exercise all three branches.
    const std::vector<double> w = rope_frequencies(llama31(), 128), base = hf_inv_freq(RopeSpec{500000}, 128);
    int kept = 0, divided = 0, blended = 0;
    for (size_t j = 0; j < w.size(); ++j) {
        if (std::abs(w[j] - base[j]) <= 1e-12 * base[j]) ++kept;
        else if (std::abs(w[j] - base[j] / 8) <= 1e-12 * base[j]) ++divided;
        else ++blended;
    }
    CHECK(kept > 0);
    CHECK(divided > 0);
    CHECK(blended > 0);
}

TEST_CASE("rope rotation matches float64 complex multiplication, and -m undoes +m") {
    for (const RopeSpec& r : {RopeSpec{10000}, llama31()}) {
        const uint32_t d = 128;
        Rope rope(r, d);
        const std::vector<double> w = hf_inv_freq(r, d);
        test::Rng rng(2);
        for (uint64_t m : {uint64_t(0), uint64_t(1), uint64_t(77), uint64_t(4095), uint64_t(131071), uint64_t(1) << 30}) {
            const std::vector<float> x = rng.normals(d);
            std::vector<float> y(d, NAN), back(d, NAN), cs(d / 2, NAN), sn(d / 2, NAN);
            rope.rotate(x.data(), m, +1, y.data());
            rope.angles(m, cs.data(), sn.data());
            for (uint32_t j = 0; j < d / 2; ++j) {
                const double a = double(m) * w[j];
                const double re = x[2 * j] * std::cos(a) - x[2 * j + 1] * std::sin(a);
                const double im = x[2 * j] * std::sin(a) + x[2 * j + 1] * std::cos(a);
                CHECK(std::abs(y[2 * j] - re) <= 1e-6 * (1 + std::abs(re)));
                CHECK(std::abs(y[2 * j + 1] - im) <= 1e-6 * (1 + std::abs(im)));
                CHECK(std::abs(cs[j] - std::cos(a)) <= 1e-7);
                CHECK(std::abs(sn[j] - std::sin(a)) <= 1e-7);
            }
            rope.rotate(y.data(), m, -1, back.data());
            for (uint32_t i = 0; i < d; ++i) CHECK(std::abs(back[i] - x[i]) <= 1e-6 * (1 + std::abs(x[i])));
            // in place
            std::vector<float> z = x;
            rope.rotate(z.data(), m, +1, z.data());
            CHECK(z == y);
        }
    }
}

TEST_CASE("rope rejects bad specs") {
    RopeSpec r;
    r.scaling = 9;
    CHECK_THROWS_AS(rope_frequencies(r, 64), Error);
    CHECK_THROWS_AS(rope_frequencies(RopeSpec{}, 63), Error);
}

TEST_CASE("pair layouts: rotate-half and interleaved to canonical and back") {
    const uint32_t d = 8;
    const std::vector<float> x = {0, 1, 2, 3, 4, 5, 6, 7};
    std::vector<float> c(d, NAN), back(d, NAN);
    to_canonical(x.data(), d, COMMVQ_PAIRS_ROTATE_HALF, c.data());
    CHECK(c == std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7});  // pair j = (x[j], x[j + 4])
    from_canonical(c.data(), d, COMMVQ_PAIRS_ROTATE_HALF, back.data());
    CHECK(back == x);
    to_canonical(x.data(), d, COMMVQ_PAIRS_INTERLEAVED, c.data());
    CHECK(c == x);
    std::vector<float> inplace = x;
    to_canonical(inplace.data(), d, COMMVQ_PAIRS_ROTATE_HALF, inplace.data());
    CHECK(inplace == std::vector<float>{0, 4, 1, 5, 2, 6, 3, 7});
    from_canonical(inplace.data(), d, COMMVQ_PAIRS_ROTATE_HALF, inplace.data());
    CHECK(inplace == x);
    CHECK_THROWS_AS(to_canonical(x.data(), d, 5, c.data()), Error);
}
