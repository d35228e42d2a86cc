// The value trainer's CUDA path (src/train/value_trainer_cuda.h) against the
// CPU one (value_trainer.h): the objective's loss and every gradient on the
// same inputs, the gradient against float64 finite differences, the
// trainer's batch and noise stream, one AdamW step, whole training runs on
// real values, determinism, and bad device ordinals.
//
// Tolerances:
//   - objective: loss 1e-5 relative; each gradient tensor 1e-4 in relative
//     L2 (||g_gpu - g_cpu|| / ||g_cpu||); v_hat 1e-5 relative L2. The
//     products sum in another order on the GPU (about 1e-6 relative). With
//     hard options a near-tie of two logits can pick another option on one
//     side: such tokens show as a v_hat row that differs by far more than
//     rounding; at most 2 of 64 may, and they are then compared with row
//     weight 0 (which removes a token from the loss and every gradient);
//   - trainer stream (learning rate 0, so every step sees the initial
//     parameters): per-step loss 1e-5 relative on at least 9 of 10 steps
//     (a near-tie may flip one), 2e-3 on all; other batches or noise would
//     move the loss by percents;
//   - one AdamW step: parameter update 1e-3 relative L2 (the first Adam step
//     is g / |g|, so only gradient entries within rounding of zero differ);
//   - 100 steps on real values: a flipped decision changes every later step,
//     so the trajectories drift apart; the final value MSE of GPU and CPU
//     may differ by 2% of the CPU's (the CPU trainer started from
//     initial parameters moved by 1e-6 relative drifts by under 5e-4 on
//     this data). Two GPU runs must agree bit for bit.
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "error.h"
#include "fixture.h"
#include "random_codebook.h"
#include "train/value_trainer.h"
#include "train/value_trainer_cuda.h"

using namespace commvq;
using train::OptionChoice;

namespace {

const char* const kTensorNames[] = {"norm_weight", "norm_bias", "enc1_weight", "enc1_bias",
                                    "enc2_weight", "enc2_bias", "E"};

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

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
void perturb(ValueCodebook& vc, uint64_t seed, double amount) {
    test::Rng rng(seed);
    for (std::vector<float>* p : train::value_parameters(vc))
        for (float& x : *p) x += float(amount * rng.normal());
}

std::vector<float> gumbel_noise(size_t n, uint64_t seed) {
    test::Rng rng(seed);
    std::vector<float> g(n);
    for (float& x : g) x = float(-std::log(-std::log(rng.uniform(1e-12, 1.0 - 1e-12))));
    return g;
}

// A codebook of vc's shape whose every entry is NaN.
ValueCodebook poisoned_like(const ValueCodebook& vc) {
    ValueCodebook p = vc;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    p.lambda.assign(p.lambda.size(), nan);
    for (std::vector<float>* t : train::value_parameters(p)) t->assign(t->size(), nan);
    return p;
}

bool all_finite(const std::vector<float>& x) {
    for (float v : x)
        if (!std::isfinite(v)) return false;
    return true;
}

// ||a - ref|| / ||ref|| (or ||a - ref|| when ref is zero).
double relative_l2(const std::vector<float>& a, const std::vector<float>& ref) {
    REQUIRE(a.size() == ref.size());
    double d2 = 0, r2 = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = double(a[i]) - ref[i];
        d2 += d * d;
        r2 += double(ref[i]) * ref[i];
    }
    return r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
}

double relative(double a, double ref) { return std::fabs(a - ref) / std::max(std::fabs(ref), 1e-300); }

struct Run {
    double loss = 0;
    ValueCodebook grads;
    std::vector<float> vhat;
};

template <class Objective>
Run run(Objective& objective, const ValueCodebook& vc, const std::vector<float>& v, uint32_t B, const float* noise,
        OptionChoice choice, const float* weight) {
    Run r;
    r.grads = poisoned_like(vc);
    r.loss = objective.evaluate(vc, v.data(), B, noise, choice, &r.grads, weight);
    r.vhat = objective.reconstruction();
    return r;
}

// Tokens whose v_hat differs by far more than rounding: another option won a
// near-tie on one side.
std::vector<uint32_t> flipped_rows(const Run& gpu, const Run& cpu, uint32_t B, uint32_t D) {
    std::vector<uint32_t> rows;
    for (uint32_t b = 0; b < B; ++b) {
        double d2 = 0, r2 = 0;
        for (uint32_t c = 0; c < D; ++c) {
            const double d = double(gpu.vhat[size_t(b) * D + c]) - cpu.vhat[size_t(b) * D + c];
            d2 += d * d;
            r2 += double(cpu.vhat[size_t(b) * D + c]) * cpu.vhat[size_t(b) * D + c];
        }
        if (!(d2 <= 1e-6 * r2)) rows.push_back(b);  // relative 1e-3 (NaN counts as differing)
    }
    return rows;
}

train::ValueTrainConfig real_config(uint32_t bits) {
    train::ValueTrainConfig c;
    c.value_bits = bits;
    c.hidden = 64;
    c.steps = 100;
    c.batch = 128;
    c.n_threads = 4;
    return c;
}

}  // namespace

TEST_CASE("gpu train: the value objective matches the CPU one (1 and 2 bits, hard and relaxed, noise, row weights)") {
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const uint32_t D = 256, I = 64, B = 64;
    for (uint32_t bits : {1u, 2u}) {
        const size_t O = 2 * size_t(D) * bits;
        const std::vector<float> v = make_values(B, D, 100 + bits);
        ValueCodebook vc = train::init_value_codebook(v.data(), B, D, bits, I, 200 + bits);
        perturb(vc, 300 + bits, 0.05);
        const std::vector<float> noise = gumbel_noise(size_t(B) * O, 400 + bits);
        std::vector<float> weights(B);
        test::Rng wrng(500 + bits);
        for (float& w : weights) w = float(wrng.uniform(0.25, 2.0));
        weights[5] = 0.0f;  // a token that does not count

        train::ValueObjective cpu(D, bits, I, 2);
        train::ValueObjectiveCuda gpu(D, bits, I, 0);
        // A smaller batch first: the device buffers must grow for the next.
        gpu.evaluate(vc, v.data(), 3, nullptr, OptionChoice::kHard, nullptr);

        for (OptionChoice choice : {OptionChoice::kHard, OptionChoice::kRelaxed}) {
            for (bool extras : {true, false}) {
                const bool hard = choice == OptionChoice::kHard;
                CAPTURE(bits);
                CAPTURE(hard);
                CAPTURE(extras);
                const float* nz = extras ? noise.data() : nullptr;
                std::vector<float> w = extras ? weights : std::vector<float>();
                Run c = run(cpu, vc, v, B, nz, choice, extras ? w.data() : nullptr);
                Run g = run(gpu, vc, v, B, nz, choice, extras ? w.data() : nullptr);
                REQUIRE(g.vhat.size() == size_t(B) * D);
                CHECK(all_finite(g.vhat));

                const std::vector<uint32_t> flipped = flipped_rows(g, c, B, D);
                MESSAGE("bits " << bits << (hard ? " hard" : " relaxed") << (extras ? " with" : " without")
                                << " noise and weights: " << flipped.size() << " of " << B
                                << " tokens chose another option on a near-tie");
                if (hard) {
                    REQUIRE(flipped.size() <= 2);
                } else {
                    REQUIRE(flipped.empty());  // the relaxed path has no discontinuity
                }
                if (!flipped.empty()) {
                    if (w.empty()) w.assign(B, 1.0f);
                    for (uint32_t b : flipped) w[b] = 0.0f;
                    c = run(cpu, vc, v, B, nz, choice, w.data());
                    g = run(gpu, vc, v, B, nz, choice, w.data());
                }

                INFO("loss gpu " << g.loss << ", cpu " << c.loss);
                CHECK(std::isfinite(g.loss));
                CHECK(c.loss > 0);
                CHECK(relative(g.loss, c.loss) <= 1e-5);

                // v_hat, over the tokens both sides coded alike.
                std::vector<float> vg, vc_rows;
                for (uint32_t b = 0; b < B; ++b) {
                    bool skip = false;
                    for (uint32_t f : flipped) skip |= f == b;
                    if (skip) continue;
                    vg.insert(vg.end(), g.vhat.begin() + size_t(b) * D, g.vhat.begin() + size_t(b + 1) * D);
                    vc_rows.insert(vc_rows.end(), c.vhat.begin() + size_t(b) * D, c.vhat.begin() + size_t(b + 1) * D);
                }
                CHECK(relative_l2(vg, vc_rows) <= 1e-5);

                // Float64 sanity: the loss is the weighted squared error of v_hat.
                double loss64 = 0;
                for (uint32_t b = 0; b < B; ++b) {
                    double row = 0;
                    for (uint32_t cc = 0; cc < D; ++cc) {
                        const double d = double(g.vhat[size_t(b) * D + cc]) - v[size_t(b) * D + cc];
                        row += d * d;
                    }
                    loss64 += (w.empty() ? 1.0 : double(w[b])) * row;
                }
                loss64 /= 2.0 * B * D;
                CHECK(relative(g.loss, loss64) <= 1e-9);

                auto gg = train::value_parameters(g.grads);
                auto cg = train::value_parameters(c.grads);
                for (size_t t = 0; t < gg.size(); ++t) {
                    const double err = relative_l2(*gg[t], *cg[t]);
                    double norm = 0;
                    for (float x : *cg[t]) norm += double(x) * x;
                    INFO("gradient " << kTensorNames[t] << ": relative L2 difference " << err << ", CPU norm "
                                     << std::sqrt(norm));
                    CHECK(gg[t]->size() == cg[t]->size());
                    CHECK(all_finite(*gg[t]));  // every entry written (they started as NaN)
                    CHECK(norm > 0);            // the comparison is not vacuous
                    CHECK(err <= 1e-4);
                }
                CHECK(g.grads.lambda == std::vector<float>(D, 0.0f));
            }
        }

        // Without gradients: the same loss, and no output needed.
        const double plain = gpu.evaluate(vc, v.data(), B, nullptr, OptionChoice::kRelaxed, nullptr);
        const double plain_cpu = cpu.evaluate(vc, v.data(), B, nullptr, OptionChoice::kRelaxed, nullptr);
        CHECK(relative(plain, plain_cpu) <= 1e-5);
    }
}

TEST_CASE("gpu train: the GPU value gradient equals float64 finite differences (relaxed options)") {
    // As the CPU unit test: relaxed options make the loss smooth, so the
    // backward pass must give its exact gradient; the differences are taken
    // in float64 from the GPU's own losses.
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const uint32_t D = 8, bits = 1, I = 12, B = 5;
    const std::vector<float> v = make_values(B, D, 1);
    ValueCodebook vc = train::init_value_codebook(v.data(), B, D, bits, I, 2);
    perturb(vc, 3, 0.2);
    test::Rng rng(4);
    const std::vector<float> noise = rng.normals(size_t(B) * 2 * D * bits);
    const std::vector<float> weights = {1.0f, 0.5f, 2.0f, 1.5f, 0.75f};
    train::ValueObjectiveCuda objective(D, bits, I, 0);
    ValueCodebook grads = poisoned_like(vc);
    objective.evaluate(vc, v.data(), B, noise.data(), OptionChoice::kRelaxed, &grads, weights.data());

    auto params = train::value_parameters(vc);
    auto g = train::value_parameters(grads);
    for (size_t t = 0; t < params.size(); ++t) {
        std::vector<float>& p = *params[t];
        double max_err = 0, max_grad = 0;
        for (size_t k = 0; k < p.size(); k += 1 + p.size() / 16) {
            const float keep = p[k], h = 1e-2f;
            p[k] = keep + h;
            const double up =
                objective.evaluate(vc, v.data(), B, noise.data(), OptionChoice::kRelaxed, nullptr, weights.data());
            p[k] = keep - h;
            const double down =
                objective.evaluate(vc, v.data(), B, noise.data(), OptionChoice::kRelaxed, nullptr, weights.data());
            p[k] = keep;
            const double fd = (up - down) / (2.0 * h);
            max_err = std::max(max_err, std::fabs(fd - (*g[t])[k]));
            max_grad = std::max(max_grad, std::fabs(fd));
        }
        INFO("tensor " << kTensorNames[t] << ": max |fd - grad| " << max_err << ", max |grad| " << max_grad);
        CHECK(all_finite(*g[t]));
        CHECK(max_grad > 1e-5);
        // float32 forward, h = 1e-2: truncation O(h^2) plus rounding O(1e-7 / h).
        CHECK(max_err <= 2e-3 * max_grad + 1e-5);
    }
}

TEST_CASE("gpu train: the value trainer draws the CPU trainer's batches and Gumbel noise (learning rate 0, token weights)") {
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t D = fx.n_kv_heads * fx.head_dim;
    const size_t n = fx.n_tokens;
    const float* values = fx.values[2].data();
    std::vector<float> token_weight(n);
    for (size_t t = 0; t < n; ++t) token_weight[t] = 0.5f + 0.25f * float(t % 7);

    train::ValueTrainConfig config;
    config.value_bits = 2;
    config.hidden = 64;
    config.steps = 10;
    config.batch = 64;
    config.lr = 0.0f;  // the parameters never move: each step's loss depends only on its batch and noise
    config.n_threads = 4;
    const ValueCodebook start = train::init_value_codebook(values, n, D, config.value_bits, config.hidden, 31);

    std::vector<double> cpu_losses, gpu_losses;
    ValueCodebook cpu = start, gpu = start;
    train::train_value_codebook(cpu, values, n, D, config, 32, [&](uint32_t, double l) { cpu_losses.push_back(l); },
                                token_weight.data());
    train::train_value_codebook_cuda(gpu, values, n, D, config, 32,
                                     [&](uint32_t, double l) { gpu_losses.push_back(l); }, token_weight.data(), 0);
    REQUIRE(gpu_losses.size() == config.steps);
    REQUIRE(cpu_losses.size() == config.steps);
    size_t close = 0;
    for (uint32_t s = 0; s < config.steps; ++s) {
        INFO("step " << s << ": loss gpu " << gpu_losses[s] << ", cpu " << cpu_losses[s]);
        CHECK(relative(gpu_losses[s], cpu_losses[s]) <= 2e-3);
        close += relative(gpu_losses[s], cpu_losses[s]) <= 1e-5;
    }
    CHECK(close >= 9);
    // Losses of different batches differ (the check above is not vacuous).
    CHECK(relative(cpu_losses[0], cpu_losses[1]) > 1e-4);
    // lr 0: AdamW leaves every parameter exactly where it was.
    auto gp = train::value_parameters(gpu);
    auto sp = train::value_parameters(const_cast<ValueCodebook&>(start));
    for (size_t t = 0; t < gp.size(); ++t) {
        INFO("tensor " << kTensorNames[t]);
        CHECK(*gp[t] == *sp[t]);
    }
    CHECK(gpu.lambda == start.lambda);
}

TEST_CASE("gpu train: one AdamW step on the GPU moves the value parameters as the CPU step does") {
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t D = fx.n_kv_heads * fx.head_dim;
    const size_t n = fx.n_tokens;
    const float* values = fx.values[1].data();
    train::ValueTrainConfig config = real_config(1);
    config.steps = 1;
    const ValueCodebook start = train::init_value_codebook(values, n, D, 1, config.hidden, 41);
    ValueCodebook cpu = start, gpu = start;
    train::train_value_codebook(cpu, values, n, D, config, 42, nullptr);
    train::train_value_codebook_cuda(gpu, values, n, D, config, 42, nullptr, nullptr, 0);
    auto s = train::value_parameters(const_cast<ValueCodebook&>(start));
    auto c = train::value_parameters(cpu);
    auto g = train::value_parameters(gpu);
    for (size_t t = 0; t < s.size(); ++t) {
        std::vector<float> dc(s[t]->size()), dg(s[t]->size());
        for (size_t k = 0; k < dc.size(); ++k) {
            dc[k] = (*c[t])[k] - (*s[t])[k];
            dg[k] = (*g[t])[k] - (*s[t])[k];
        }
        const double err = relative_l2(dg, dc);
        INFO("tensor " << kTensorNames[t] << ": update relative L2 difference " << err);
        CHECK(all_finite(*g[t]));
        CHECK(relative_l2(dc, std::vector<float>(dc.size(), 0.0f)) > 0);  // the step moved it
        CHECK(err <= 1e-3);
    }
}

TEST_CASE("gpu train: value training on real values matches the CPU trainer, and two GPU runs are identical") {
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t D = fx.n_kv_heads * fx.head_dim;
    const size_t n = fx.n_tokens;
    for (uint32_t bits : {1u, 2u}) {
        CAPTURE(bits);
        const float* values = fx.values[1].data();
        const train::ValueTrainConfig config = real_config(bits);
        const ValueCodebook start = train::init_value_codebook(values, n, D, bits, config.hidden, 11 + bits);
        const double before = train::value_mse(start, values, n, D, bits, config.hidden, 4);

        std::vector<double> cpu_losses, gpu_losses, again_losses;
        ValueCodebook cpu = start, gpu = start, again = start;
        train::train_value_codebook(cpu, values, n, D, config, 21 + bits,
                                    [&](uint32_t, double l) { cpu_losses.push_back(l); });
        train::train_value_codebook_cuda(gpu, values, n, D, config, 21 + bits,
                                         [&](uint32_t, double l) { gpu_losses.push_back(l); }, nullptr, 0);
        train::train_value_codebook_cuda(again, values, n, D, config, 21 + bits,
                                         [&](uint32_t, double l) { again_losses.push_back(l); }, nullptr, 0);

        const double after_cpu = train::value_mse(cpu, values, n, D, bits, config.hidden, 4);
        const double after_gpu = train::value_mse(gpu, values, n, D, bits, config.hidden, 4);
        MESSAGE("bits " << bits << ": value MSE at init " << before << ", after 100 steps CPU " << after_cpu
                        << ", GPU " << after_gpu << "; first loss CPU " << cpu_losses.front() << ", GPU "
                        << gpu_losses.front());
        REQUIRE(gpu_losses.size() == config.steps);
        // Same start, batch and noise: the first losses agree (a near-tie
        // flip moves one token's error, hence the 2e-3).
        CHECK(relative(gpu_losses.front(), cpu_losses.front()) <= 2e-3);
        CHECK(after_gpu < before);
        CHECK(after_cpu < before);
        CHECK(std::fabs(after_gpu - after_cpu) <= 0.02 * after_cpu);
        double first = 0, last = 0;
        for (size_t k = 0; k < 10; ++k) {
            first += gpu_losses[k];
            last += gpu_losses[gpu_losses.size() - 1 - k];
        }
        CHECK(last < first);
        CHECK(gpu.lambda == start.lambda);

        // Determinism: the same bits on every run.
        CHECK(again_losses == gpu_losses);
        auto a = train::value_parameters(again);
        auto g = train::value_parameters(gpu);
        for (size_t t = 0; t < a.size(); ++t) {
            INFO("tensor " << kTensorNames[t]);
            CHECK(*a[t] == *g[t]);
        }
    }
}

TEST_CASE("gpu train: the value trainer refuses a device ordinal that does not exist, with a clear message") {
    REQUIRE_MESSAGE(device_count() > 0, "gpu tests need a CUDA device");
    const uint32_t D = 16, bits = 1, I = 8;
    const size_t n = 32;
    const std::vector<float> v = make_values(n, D, 7);
    train::ValueTrainConfig config;
    config.value_bits = bits;
    config.hidden = I;
    config.steps = 2;
    config.batch = 8;
    for (int32_t bad : {device_count() + 7, -2}) {
        CAPTURE(bad);
        ValueCodebook vc = train::init_value_codebook(v.data(), n, D, bits, I, 8);
        const ValueCodebook start = vc;
        bool thrown = false;
        try {
            train::train_value_codebook_cuda(vc, v.data(), n, D, config, 9, nullptr, nullptr, bad);
        } catch (const Error& e) {
            thrown = true;
            const std::string what = e.what();
            INFO("message: " << what);
            CHECK(e.status() == COMMVQ_ERR_INVALID_ARGUMENT);
            CHECK(what.find("device " + std::to_string(bad)) != std::string::npos);
            CHECK(what.find("not a CUDA device") != std::string::npos);
        }
        CHECK(thrown);
        CHECK(vc.codebook == start.codebook);  // nothing changed
        CHECK_THROWS_AS(train::ValueObjectiveCuda(D, bits, I, bad), Error);
    }
    // The device still works after the refusals.
    ValueCodebook vc = train::init_value_codebook(v.data(), n, D, bits, I, 8);
    CHECK_NOTHROW(train::train_value_codebook_cuda(vc, v.data(), n, D, config, 9, nullptr, nullptr, 0));
}
