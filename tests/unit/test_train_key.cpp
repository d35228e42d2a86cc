// The key codebook's EM trainer (src/train/key_trainer.h) on data drawn
// from a known commutative codebook.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "error.h"
#include "random_codebook.h"
#include "train/key_trainer.h"

using namespace commvq;

namespace {

struct Drawn {
    std::vector<float> samples, scales;
};

// n samples t = z_A + i z_B + noise, (A, B) uniform, from a random table of
// C sub-centers with entries of standard deviation 0.3.
Drawn draw(uint32_t C, uint32_t d, size_t n, double noise, uint64_t seed) {
    test::Rng rng(seed);
    std::vector<float> z = rng.normals(size_t(C) * d, 0.3);
    Drawn out;
    out.samples.resize(n * d);
    out.scales.assign(n, 1.0f);
    for (size_t i = 0; i < n; ++i) {
        uint32_t a = uint32_t(rng.next() % C), b = uint32_t(rng.next() % C);
        for (uint32_t j = 0; j < d; j += 2) {
            out.samples[i * d + j] = float(z[a * d + j] - z[b * d + j + 1] + noise * rng.normal());
            out.samples[i * d + j + 1] = float(z[a * d + j + 1] + z[b * d + j] + noise * rng.normal());
        }
    }
    return out;
}

double mean_square(const std::vector<float>& x) {
    double s = 0;
    for (float v : x) s += double(v) * v;
    return s / double(x.size());
}

}  // namespace

TEST_CASE("train: EM improves on its start and every residual stage lowers the MSE") {
    const uint32_t C = 8, d = 16, stages = 3;
    Drawn data = draw(C, d, 3000, 0.02, 3);
    const double baseline = mean_square(data.samples);  // the MSE of predicting 0
    std::vector<float> residuals = data.samples;
    train::KeyTrainConfig config;
    config.sub_centers = C;
    config.max_steps = 30;
    std::vector<double> first_mse(stages, -1.0);
    std::vector<train::KeyStageReport> reports;
    std::vector<float> z = train::train_key_head(
        residuals.data(), data.scales.data(), 3000, d, stages, config, 5,
        [&](uint32_t stage, uint32_t step, double mse) {
            if (step == 0) first_mse[stage] = mse;
        },
        &reports);
    REQUIRE(reports.size() == stages);
    REQUIRE(z.size() == size_t(stages) * C * d);
    for (float v : z) REQUIRE(std::isfinite(v));

    // EM beats the projected random start; stage 0 removes most of the
    // energy, and the later stages reach the noise floor of the generating
    // codebook (0.02^2 = 4e-4 per element; predicting 0 costs about 0.17).
    INFO("stage MSEs " << reports[0].mse << " " << reports[1].mse << " " << reports[2].mse << ", start "
                       << first_mse[0] << ", steps " << reports[0].steps << ", baseline " << baseline);
    CHECK(reports[0].mse < first_mse[0]);
    CHECK(reports[0].mse < 0.2 * baseline);
    CHECK(reports[2].mse < 1.5 * 0.02 * 0.02);
    for (uint32_t r = 1; r < stages; ++r) CHECK(reports[r].mse < reports[r - 1].mse);
    // The residuals handed back are what the last stage's MSE measured.
    CHECK(mean_square(residuals) == doctest::Approx(reports.back().mse).epsilon(1e-4));
}

TEST_CASE("train: EM is bitwise deterministic for a seed whatever the thread count") {
    const uint32_t C = 8, d = 16;
    const size_t n = 6000;  // several slabs of partial sums
    Drawn data = draw(C, d, n, 0.05, 9);
    train::KeyTrainConfig config;
    config.sub_centers = C;
    config.max_steps = 8;
    std::vector<std::vector<float>> result;
    for (uint32_t threads : {1u, 2u, 3u}) {
        config.n_threads = threads;
        std::vector<float> residuals = data.samples;
        result.push_back(
            train::train_key_head(residuals.data(), data.scales.data(), n, d, 2, config, 42, nullptr, nullptr));
    }
    CHECK(result[0] == result[1]);
    CHECK(result[0] == result[2]);
    std::vector<float> residuals = data.samples;
    std::vector<float> other =
        train::train_key_head(residuals.data(), data.scales.data(), n, d, 2, config, 43, nullptr, nullptr);
    CHECK(other != result[0]);  // and the seed matters
}

TEST_CASE("train: EM survives sub-centers that receive no weight") {
    // Every sample the same vector: at any temperature below 1 the weight
    // collapses onto one center and most sub-centers die. The reference
    // trainer fails here with a singular matrix; ours re-seeds them.
    const uint32_t C = 8, d = 8;
    const size_t n = 200;
    std::vector<float> samples(n * d), scales(n, 2.0f);
    for (size_t i = 0; i < n; ++i)
        for (uint32_t k = 0; k < d; ++k) samples[i * d + k] = 0.1f * float(k + 1) + (i % 2 ? 0.05f : 0.0f);
    train::KeyTrainConfig config;
    config.sub_centers = C;
    config.max_steps = 20;
    std::vector<train::KeyStageReport> reports;
    std::vector<float> z =
        train::train_key_head(samples.data(), scales.data(), n, d, 2, config, 1, nullptr, &reports);
    for (float v : z) REQUIRE(std::isfinite(v));
    CHECK(reports[0].reseeded > 0);
    CHECK(reports[1].mse < 1e-6);  // two distinct vectors, two stages: exact
}

TEST_CASE("train: EM keeps its soft weights finite at the lowest temperatures (2-bit stages 17-20)") {
    // Unit keys in 128 dimensions and only C = 4: 21 stages leave residuals of
    // norm about 0.5, whose float32 distances carry rounding of about 1e-8,
    // while stages 17-20 anneal T down to 1e-10. A reference distance off by
    // 1e-8 then put the nearest code's weight at exp(100) (past float32) or
    // exp(-100) (zero): the weights summed to inf and the M-step's normal
    // matrix failed at pivot 0 (a 2-bit training of bytellama keys, layer 3).
    const uint32_t C = 4, d = 128, stages = 21;
    const size_t n = 1024;
    test::Rng rng(17);
    std::vector<float> samples = rng.normals(n * d), scales(n, 20.0f);
    for (size_t i = 0; i < n; ++i) {
        double s2 = 0;
        for (uint32_t k = 0; k < d; ++k) s2 += double(samples[i * d + k]) * samples[i * d + k];
        for (uint32_t k = 0; k < d; ++k) samples[i * d + k] = float(samples[i * d + k] / std::sqrt(s2));
    }
    train::KeyTrainConfig config;
    config.sub_centers = C;
    config.max_steps = 10;
    config.n_threads = 2;
    std::vector<train::KeyStageReport> reports;
    std::vector<float> z;
    REQUIRE_NOTHROW(z = train::train_key_head(samples.data(), scales.data(), n, d, stages, config, 9, nullptr,
                                              &reports));
    for (float v : z) REQUIRE(std::isfinite(v));
    REQUIRE(reports.size() == stages);
    for (uint32_t r = 1; r < stages; ++r) CHECK(reports[r].mse <= reports[r - 1].mse);
}

TEST_CASE("train: an M-step that cannot be factored names the head, the stage and the step") {
    // A sample whose squared norm overflows float32 gives infinite distances,
    // so no soft weight is finite: the error says where, and what the weights
    // summed to.
    const uint32_t C = 4, d = 8;
    const size_t n = 64;
    test::Rng rng(5);
    std::vector<float> samples = rng.normals(n * d), scales(n, 1.0f);
    for (uint32_t k = 0; k < d; ++k) samples[7 * d + k] = 1e30f;
    train::KeyTrainConfig config;
    config.sub_centers = C;
    config.max_steps = 4;
    config.name = "keys layer 3 head 0";
    try {
        train::train_key_head(samples.data(), scales.data(), n, d, 2, config, 1, nullptr, nullptr);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_INTERNAL);
        const std::string message = e.what();
        CAPTURE(message);
        CHECK(message.rfind("keys layer 3 head 0 stage 0 start: M-step normal matrix is not positive definite", 0) == 0);
        CHECK(message.find("(E-step soft weights summing to ") != std::string::npos);
        CHECK(message.find("nan)") != std::string::npos);
    }
}

TEST_CASE("train: EM temperature schedule") {
    // f = 1 for stage 0, divided by 10 after stages 0, 4, 8, ...
    CHECK(train::em_temperature(0, 0, 100) == doctest::Approx(1e-3));
    CHECK(train::em_temperature(0, 99, 100) == doctest::Approx(1e-5));
    CHECK(train::em_temperature(0, 50, 101) == doctest::Approx(1e-4));
    CHECK(train::em_temperature(1, 0, 100) == doctest::Approx(1e-4));
    CHECK(train::em_temperature(4, 0, 100) == doctest::Approx(1e-4));
    CHECK(train::em_temperature(5, 0, 100) == doctest::Approx(1e-5));
    CHECK(train::em_temperature(8, 99, 100) == doctest::Approx(1e-7));
    CHECK(train::em_temperature(9, 0, 100) == doctest::Approx(1e-6));
    CHECK(train::em_temperature(3, 0, 1) == doctest::Approx(1e-4));
}
