// The value trainer (src/train/value_trainer.h): its hand-written backward
// pass against central finite differences, and training that lowers the
// reconstruction error.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "random_codebook.h"
#include "train/value_trainer.h"

using namespace commvq;

namespace {

// Values with per-channel scales that differ, as real values do.
std::vector<float> make_values(size_t n, uint32_t D, uint64_t seed) {
    test::Rng rng(seed);
    std::vector<float> v(n * D);
    for (size_t t = 0; t < n; ++t)
        for (uint32_t c = 0; c < D; ++c) v[t * D + c] = float(rng.normal() * (0.5 + 0.1 * (c % 5)));
    return v;
}

// Every parameter moved off its initial value so no gradient is trivially
// zero (LayerNorm weight 1, bias 0 would hide mistakes).
void perturb(ValueCodebook& vc, uint64_t seed) {
    test::Rng rng(seed);
    for (std::vector<float>* p : train::value_parameters(vc))
        for (float& x : *p) x += float(0.2 * rng.normal());
}

}  // namespace

TEST_CASE("train: value backward pass equals finite differences (relaxed options)") {
    // Relaxed: the options are the softmax itself, a smooth loss, so the
    // backward code (shared with the straight-through path) must give its
    // exact gradient.
    const uint32_t D = 8, bits = 1, I = 12, B = 5;
    std::vector<float> v = make_values(B, D, 1);
    ValueCodebook vc = train::init_value_codebook(v.data(), B, D, bits, I, 2);
    perturb(vc, 3);
    test::Rng rng(4);
    std::vector<float> noise = rng.normals(size_t(B) * 2 * D * bits);  // Gumbel-like offsets
    train::ValueObjective objective(D, bits, I, 1);
    ValueCodebook grads;
    objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, &grads);

    auto params = train::value_parameters(vc);
    auto g = train::value_parameters(grads);
    const char* names[] = {"norm_weight", "norm_bias", "enc1_weight", "enc1_bias", "enc2_weight", "enc2_bias", "E"};
    for (size_t t = 0; t < params.size(); ++t) {
        std::vector<float>& p = *params[t];
        double max_err = 0, max_grad = 0;
        for (size_t k = 0; k < p.size(); k += 1 + p.size() / 16) {
            const float keep = p[k];
            const float h = 1e-2f;
            p[k] = keep + h;
            double up = objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr);
            p[k] = keep - h;
            double down = objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr);
            p[k] = keep;
            double fd = (up - down) / (2.0 * h);
            max_err = std::max(max_err, std::fabs(fd - (*g[t])[k]));
            max_grad = std::max(max_grad, std::fabs(fd));
        }
        INFO("tensor " << names[t] << ": max |fd - grad| " << max_err << ", max |grad| " << max_grad);
        CHECK(max_grad > 1e-5);  // the check is not vacuous
        // float32 forward, h = 1e-2: truncation O(h^2) plus rounding O(1e-7 / h).
        CHECK(max_err <= 2e-3 * max_grad + 1e-5);
    }
}

TEST_CASE("train: value gradient of E equals finite differences on the hard path") {
    // With hard options the loss is smooth in E (the codes do not depend on
    // E), so the straight-through path's E gradient is exact there.
    const uint32_t D = 16, bits = 2, I = 8, B = 6;
    std::vector<float> v = make_values(B, D, 5);
    ValueCodebook vc = train::init_value_codebook(v.data(), B, D, bits, I, 6);
    perturb(vc, 7);
    train::ValueObjective objective(D, bits, I, 2);
    ValueCodebook grads;
    objective.evaluate(vc, v.data(), B, nullptr, train::OptionChoice::kHard, &grads);
    double max_err = 0, max_grad = 0;
    for (size_t k = 0; k < vc.codebook.size(); k += 7) {
        const float keep = vc.codebook[k], h = 1e-2f;
        vc.codebook[k] = keep + h;
        double up = objective.evaluate(vc, v.data(), B, nullptr, train::OptionChoice::kHard, nullptr);
        vc.codebook[k] = keep - h;
        double down = objective.evaluate(vc, v.data(), B, nullptr, train::OptionChoice::kHard, nullptr);
        vc.codebook[k] = keep;
        double fd = (up - down) / (2.0 * h);
        max_err = std::max(max_err, std::fabs(fd - grads.codebook[k]));
        max_grad = std::max(max_grad, std::fabs(fd));
    }
    CHECK(max_grad > 1e-5);
    CHECK(max_err <= 2e-3 * max_grad + 1e-5);
}

TEST_CASE("train: value training lowers the reconstruction error, deterministically") {
    const uint32_t D = 32, bits = 1, I = 32;
    const size_t n = 512;
    std::vector<float> v = make_values(n, D, 8);
    train::ValueTrainConfig config;
    config.value_bits = bits;
    config.hidden = I;
    config.steps = 150;
    config.batch = 64;
    config.n_threads = 1;
    ValueCodebook start = train::init_value_codebook(v.data(), n, D, bits, I, 9);
    const double before = train::value_mse(start, v.data(), n, D, bits, I, 1);

    ValueCodebook one = start;
    std::vector<double> losses;
    train::train_value_codebook(one, v.data(), n, D, config, 10,
                                [&](uint32_t, double loss) { losses.push_back(loss); });
    const double after = train::value_mse(one, v.data(), n, D, bits, I, 1);
    INFO("MSE before " << before << ", after " << after);
    CHECK(losses.size() == config.steps);
    CHECK(after < 0.8 * before);
    double first = 0, last = 0;
    for (size_t k = 0; k < 20; ++k) {
        first += losses[k];
        last += losses[losses.size() - 1 - k];
    }
    CHECK(last < first);
    // The lambda of docs/METHOD.md: mean |v| per channel, fixed.
    double mean_abs = 0;
    for (size_t t = 0; t < n; ++t) mean_abs += std::fabs(v[t * D + 3]);
    CHECK(one.lambda[3] == doctest::Approx(mean_abs / n).epsilon(1e-5));
    CHECK(one.lambda == start.lambda);

    config.n_threads = 2;
    ValueCodebook two = start;
    train::train_value_codebook(two, v.data(), n, D, config, 10, nullptr);
    CHECK(two.codebook == one.codebook);
    CHECK(two.enc1_weight == one.enc1_weight);
    CHECK(two.enc2_weight == one.enc2_weight);
}
