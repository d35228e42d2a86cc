// The key EM trainer's CUDA path (src/train/key_em_cuda.h): one E-step
// against a float64 reference written out here, then whole stages on real
// keys against the CPU trainer, determinism, and bad device ordinals.
//
// Tolerances:
//   - hard codes: the GPU ranks float32 distances, the reference float64;
//     they may differ only on near-ties (gap under 1e-5 of ||t||^2), and on
//     at most 0.2% of samples;
//   - hard errors and the scale-weighted squared error: 1e-5 relative (they
//     are recomputed from the chosen center in float64);
//   - soft statistics n_c, S_c (relative L2 over all centers): 1e-4 at
//     T = 0.05; 5e-3 at T = 1e-3, where a float32 distance error of ~1e-7
//     moves a weight by about 1e-7 / T;
//   - whole stages: EM is iterative and a flipped hard decision changes
//     later steps, so per-stage MSE of GPU and CPU may differ by up to 10%.
#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "error.h"
#include "fixture.h"
#include "random_codebook.h"
#include "train/key_em_cuda.h"
#include "train/key_trainer.h"
#include "train/train.h"

using namespace commvq;

namespace {

struct Reference {
    std::vector<uint32_t> hard_code;
    std::vector<double> e2;  // [n][CC]
    std::vector<double> weight, weighted_sum;
    double squared_error = 0;
};

// Float64 E-step by the definition: every center formed explicitly.
Reference reference_e_step(const std::vector<float>& t, const std::vector<float>& scales,
                           const std::vector<double>& centers, size_t n, uint32_t d, size_t CC, double T) {
    Reference r;
    r.hard_code.resize(n);
    r.e2.resize(n * CC);
    r.weight.assign(CC, 0.0);
    r.weighted_sum.assign(CC * d, 0.0);
    std::vector<double> w(CC);
    for (size_t i = 0; i < n; ++i) {
        double best = std::numeric_limits<double>::infinity();
        for (size_t c = 0; c < CC; ++c) {
            double e2 = 0;
            for (uint32_t k = 0; k < d; ++k) {
                const double diff = double(t[i * d + k]) - centers[c * d + k];
                e2 += diff * diff;
            }
            r.e2[i * CC + c] = e2;
            if (e2 < best) {
                best = e2;
                r.hard_code[i] = uint32_t(c);
            }
        }
        r.squared_error += best * double(scales[i]) * scales[i];
        const double emin = std::sqrt(best);
        double sum = 0;
        for (size_t c = 0; c < CC; ++c) sum += w[c] = std::exp(-(std::sqrt(r.e2[i * CC + c]) - emin) / T);
        for (size_t c = 0; c < CC; ++c) {
            r.weight[c] += w[c] / sum;
            for (uint32_t k = 0; k < d; ++k) r.weighted_sum[c * d + k] += w[c] / sum * t[i * d + k];
        }
    }
    return r;
}

double relative_l2(const std::vector<double>& x, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        num += (x[i] - ref[i]) * (x[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

struct Outputs {
    std::vector<uint32_t> hard_code;
    std::vector<float> hard_err;
    std::vector<double> weight, weighted_sum;
    double squared_error = std::numeric_limits<double>::quiet_NaN();

    // Poisoned, so that entries the device does not write show.
    Outputs(size_t n, size_t CC, uint32_t d)
        : hard_code(n, 0xffffffffu), hard_err(n, std::numeric_limits<float>::quiet_NaN()),
          weight(CC, std::numeric_limits<double>::quiet_NaN()),
          weighted_sum(CC * d, std::numeric_limits<double>::quiet_NaN()) {}
    train::EStepResult result() { return {&hard_code, &hard_err, &squared_error, &weight, &weighted_sum}; }
};

void check_against(const Outputs& got, const Reference& ref, size_t n, size_t CC, const std::vector<float>& t,
                   uint32_t d, bool soft, double soft_tolerance) {
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) {
        REQUIRE(got.hard_code[i] < CC);
        const double best = ref.e2[i * CC + ref.hard_code[i]];
        const double chosen = ref.e2[i * CC + got.hard_code[i]];
        double tt = 0;
        for (uint32_t k = 0; k < d; ++k) tt += double(t[i * d + k]) * t[i * d + k];
        if (got.hard_code[i] != ref.hard_code[i]) {
            ++differ;
            INFO("sample " << i << ": code " << got.hard_code[i] << " at " << chosen << ", reference "
                           << ref.hard_code[i] << " at " << best);
            CHECK(chosen - best <= 1e-5 * tt);
        }
        CHECK(std::fabs(got.hard_err[i] - chosen) <= 1e-5 * std::max(chosen, 1e-6));
    }
    CHECK(differ <= n / 500);
    CHECK(std::fabs(got.squared_error - ref.squared_error) <= 1e-5 * ref.squared_error);
    if (!soft) return;
    const double we = relative_l2(got.weight, ref.weight), se = relative_l2(got.weighted_sum, ref.weighted_sum);
    INFO("n_c error " << we << ", S_c error " << se);
    CHECK(we <= soft_tolerance);
    CHECK(se <= soft_tolerance);
}

// Unit-norm samples (as normalized keys are) and small random sub-centers.
void random_problem(size_t n, uint32_t d, uint32_t C, uint64_t seed, std::vector<float>& t,
                    std::vector<float>& scales, std::vector<float>& z) {
    test::Rng rng(seed);
    t = rng.normals(n * d);
    for (size_t i = 0; i < n; ++i) {
        double s = 0;
        for (uint32_t k = 0; k < d; ++k) s += double(t[i * d + k]) * t[i * d + k];
        for (uint32_t k = 0; k < d; ++k) t[i * d + k] = float(t[i * d + k] / std::sqrt(s));
    }
    scales.resize(n);
    for (float& s : scales) s = float(rng.uniform(0.5, 2.0));
    z = rng.normals(size_t(C) * d, 0.6 / std::sqrt(double(d)));
}

std::vector<double> commutative_centers(const std::vector<float>& z, uint32_t C, uint32_t d) {
    std::vector<double> centers(size_t(C) * C * d);
    for (uint32_t a = 0; a < C; ++a)
        for (uint32_t b = 0; b < C; ++b)
            for (uint32_t j = 0; j < d; j += 2) {
                double* c = centers.data() + (size_t(a) * C + b) * d;
                c[j] = double(z[a * d + j]) - z[b * d + j + 1];      // Re(z_a + i z_b)
                c[j + 1] = double(z[a * d + j + 1]) + z[b * d + j];  // Im(z_a + i z_b)
            }
    return centers;
}

// What the device step is handed for sub-centers z: g = (z_a, i z_b),
// ||z_a||^2 and 2 <z_A, i z_B>, formed here by the definition.
struct CommutativeTables {
    std::vector<float> g, zz, gamma;
    CommutativeTables(const std::vector<float>& z, uint32_t C, uint32_t d)
        : g(size_t(2) * C * d), zz(C), gamma(size_t(C) * C) {
        for (uint32_t a = 0; a < C; ++a)
            for (uint32_t j = 0; j < d; j += 2) {
                g[size_t(a) * d + j] = z[a * d + j];
                g[size_t(a) * d + j + 1] = z[a * d + j + 1];
                g[size_t(C + a) * d + j] = -z[a * d + j + 1];  // i z = (-y, x)
                g[size_t(C + a) * d + j + 1] = z[a * d + j];
            }
        for (uint32_t a = 0; a < C; ++a) {
            double n2 = 0;
            for (uint32_t k = 0; k < d; ++k) n2 += double(z[a * d + k]) * z[a * d + k];
            zz[a] = float(n2);
            for (uint32_t b = 0; b < C; ++b) {
                double x = 0;
                for (uint32_t k = 0; k < d; ++k) x += double(z[a * d + k]) * g[size_t(C + b) * d + k];
                gamma[size_t(a) * C + b] = float(2.0 * x);
            }
        }
    }
};

}  // namespace

TEST_CASE("gpu train: the key E-step matches a float64 reference (commutative and explicit centers)") {
    struct Case {
        uint32_t C, d;
        size_t n;
    };
    // 5000 samples with C = 16 span two chunks of the device loop.
    for (Case cs : {Case{16, 32, 5000}, Case{64, 128, 600}}) {
        CAPTURE(cs.C);
        const size_t CC = size_t(cs.C) * cs.C;
        std::vector<float> t, scales, z;
        random_problem(cs.n, cs.d, cs.C, 11 + cs.C, t, scales, z);
        train::KeyEStepCuda estep(0, t.data(), scales.data(), cs.n, cs.d, cs.C);
        const std::vector<double> centers = commutative_centers(z, cs.C, cs.d);
        const CommutativeTables tables(z, cs.C, cs.d);
        for (double T : {0.05, 1e-3}) {
            CAPTURE(T);
            Reference ref = reference_e_step(t, scales, centers, cs.n, cs.d, CC, T);
            Outputs soft(cs.n, CC, cs.d);
            estep.commutative_step(tables.g.data(), tables.zz.data(), tables.gamma.data(), T, true, soft.result());
            check_against(soft, ref, cs.n, CC, t, cs.d, true, T >= 0.05 ? 1e-4 : 5e-3);
            Outputs hard(cs.n, CC, cs.d);
            estep.commutative_step(tables.g.data(), tables.zz.data(), tables.gamma.data(), T, false, hard.result());
            check_against(hard, ref, cs.n, CC, t, cs.d, false, 0);
        }
        // The random start: arbitrary centers (samples), T = 1.
        std::vector<float> start(CC * cs.d);
        std::vector<double> start64(CC * cs.d);
        for (size_t c = 0; c < CC; ++c)
            for (uint32_t k = 0; k < cs.d; ++k)
                start64[c * cs.d + k] = start[c * cs.d + k] = t[((c * 7) % cs.n) * cs.d + k] * 0.9f;
        Reference ref = reference_e_step(t, scales, start64, cs.n, cs.d, CC, 1.0);
        Outputs out(cs.n, CC, cs.d);
        estep.explicit_step(start.data(), 1.0, out.result());
        check_against(out, ref, cs.n, CC, t, cs.d, true, 1e-4);
    }
}

TEST_CASE("gpu train: key EM on the GPU fits real keys as well as the CPU, deterministically") {
    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t d = fx.head_dim, stages = 3;
    const size_t n = fx.n_tokens;
    std::vector<uint64_t> rows(n);
    for (size_t i = 0; i < n; ++i) rows[i] = i;
    std::vector<float> samples(n * d), scales(n);
    train::normalized_keys(fx.keys[2].data(), rows, fx.n_kv_heads, d, 0, fx.pair_layout, COMMVQ_SCALE_TOKEN,
                           samples.data(), scales.data());
    train::KeyTrainConfig config;
    config.sub_centers = 64;
    config.max_steps = 30;
    config.n_threads = 4;
    auto run = [&](int32_t device, std::vector<float>& residuals, std::vector<train::KeyStageReport>& reports) {
        residuals = samples;
        train::KeyTrainConfig c = config;
        c.device = device;
        return train::train_key_head(residuals.data(), scales.data(), n, d, stages, c, 77, nullptr, &reports);
    };
    std::vector<float> cpu_res, gpu_res, gpu_res2;
    std::vector<train::KeyStageReport> cpu_rep, gpu_rep, gpu_rep2;
    const std::vector<float> cpu = run(-1, cpu_res, cpu_rep);
    const std::vector<float> gpu = run(0, gpu_res, gpu_rep);
    const std::vector<float> gpu2 = run(0, gpu_res2, gpu_rep2);

    REQUIRE(gpu_rep.size() == stages);
    for (uint32_t r = 0; r < stages; ++r) {
        INFO("stage " << r << ": GPU MSE " << gpu_rep[r].mse << " (" << gpu_rep[r].steps << " steps), CPU "
                      << cpu_rep[r].mse << " (" << cpu_rep[r].steps << " steps)");
        CHECK(std::fabs(gpu_rep[r].mse - cpu_rep[r].mse) <= 0.10 * cpu_rep[r].mse);
        if (r > 0) CHECK(gpu_rep[r].mse < gpu_rep[r - 1].mse);
    }
    // The final residuals are what the last stage's report says they are.
    double sq = 0;
    for (size_t i = 0; i < n; ++i)
        for (uint32_t k = 0; k < d; ++k) sq += double(gpu_res[i * d + k]) * gpu_res[i * d + k] * scales[i] * scales[i];
    CHECK(std::fabs(sq / (double(n) * d) - gpu_rep.back().mse) <= 1e-4 * gpu_rep.back().mse);
    // Same seed, same device: bit for bit.
    CHECK(gpu == gpu2);
    CHECK(gpu_res == gpu_res2);
    CHECK(cpu.size() == gpu.size());
}

TEST_CASE("gpu train: a whole codebook trains on the device through train_codebook") {
    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t L = 2;
    const size_t per_layer = size_t(fx.n_tokens) * fx.n_kv_heads * fx.head_dim;
    std::vector<float> keys, values;
    for (uint32_t l = 2; l < 2 + L; ++l) {
        keys.insert(keys.end(), fx.keys[l].begin(), fx.keys[l].begin() + per_layer);
        values.insert(values.end(), fx.values[l].begin(), fx.values[l].begin() + per_layer);
    }
    train::TrainOptions o;
    o.value_bits = 1;
    o.key_stages = 2;
    o.value_hidden = 64;
    o.n_q_heads = fx.n_q_heads;
    o.rope = fx.rope;
    o.key_max_steps = 20;
    o.value_steps = 150;
    o.n_threads = 4;
    train::TrainReport cpu_report, gpu_report;
    Codebook cpu = train::train_codebook(o, L, fx.n_kv_heads, fx.head_dim, fx.n_tokens, keys.data(), values.data(),
                                         nullptr, &cpu_report);
    o.device = 0;
    Codebook gpu = train::train_codebook(o, L, fx.n_kv_heads, fx.head_dim, fx.n_tokens, keys.data(), values.data(),
                                         nullptr, &gpu_report);
    CHECK(gpu.n_layers == L);
    for (uint32_t l = 0; l < L; ++l) {
        for (uint32_t h = 0; h < fx.n_kv_heads; ++h) {
            const double g = gpu_report.key_mse[l][h].back(), c = cpu_report.key_mse[l][h].back();
            INFO("layer " << l << " head " << h << ": key MSE GPU " << g << ", CPU " << c);
            CHECK(std::fabs(g - c) <= 0.10 * c);
        }
        const double g = gpu_report.value_mse[l], c = cpu_report.value_mse[l];
        INFO("layer " << l << ": value MSE GPU " << g << ", CPU " << c);
        CHECK(std::fabs(g - c) <= 0.10 * c);
    }
}

TEST_CASE("gpu train: a device ordinal past the last device is refused with a clear message") {
    int count = 0;
    REQUIRE(cudaGetDeviceCount(&count) == cudaSuccess);
    std::vector<float> t(64 * 8, 0.1f), s(64, 1.0f);
    try {
        train::KeyEStepCuda estep(count, t.data(), s.data(), 64, 8, 4);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(std::string(e.what()).find("device " + std::to_string(count)) != std::string::npos);
    }
    train::TrainOptions o;
    o.device = count;
    std::vector<float> k(64 * 16, 0.1f), v(64 * 16, 0.1f);
    try {
        train::train_codebook(o, 1, 1, 16, 64, k.data(), v.data(), nullptr, nullptr);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_INVALID_ARGUMENT);
    }
}
