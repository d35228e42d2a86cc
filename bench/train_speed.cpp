// Training speed, CPU against CUDA, in one process (docs/TRAINING.md): the
// key EM of one head (C = 64, d = 128) on N samples, and the value trainer
// (D = 256, I = 256) at batch 256, both at 1 and 2 bits where it matters.
// Prints a markdown table of time per EM step / optimizer step. The samples
// are the real bytellama-13m fixture keys and values, repeated with a small
// perturbation up to N (speed does not depend on which samples, and EM
// steps are timed one by one, so early stopping does not change the rate).
//
//   train_speed [N=65536] [cpu threads=0 (all)] [em steps=10] [value steps=100]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "backend.h"
#include "fixture.h"
#include "train/key_trainer.h"
#include "train/train.h"
#include "train/value_trainer.h"
#ifdef COMMVQ_WITH_CUDA
#include "train/value_trainer_cuda.h"
#endif

using namespace commvq;

namespace {

using Clock = std::chrono::steady_clock;

struct Timing {
    double seconds = 0;
    uint32_t steps = 0;
};

// One EM stage with max_steps; the time from the first to the last step
// hook, divided by the steps between them, excludes the start (upload,
// random-start E-step) which a long run amortizes.
Timing time_em(const std::vector<float>& samples, const std::vector<float>& scales, size_t n, uint32_t steps,
               int32_t device, uint32_t threads) {
    train::KeyTrainConfig config;
    config.sub_centers = 64;
    config.max_steps = steps;
    config.n_threads = threads;
    config.device = device;
    std::vector<float> residuals = samples;
    Clock::time_point first;
    Timing t;
    uint32_t seen = 0;
    train::train_key_head(residuals.data(), scales.data(), n, 128, 1, config, 1,
                          [&](uint32_t, uint32_t, double) {
                              if (seen++ == 0) first = Clock::now();
                              else t.seconds = std::chrono::duration<double>(Clock::now() - first).count();
                          },
                          nullptr);
    t.steps = seen > 1 ? seen - 1 : 0;
    return t;
}

Timing time_values(const std::vector<float>& values, size_t n, uint32_t bits, uint32_t steps, int32_t device,
                   uint32_t threads) {
    const uint32_t D = 256, I = 256;
    ValueCodebook vc = train::init_value_codebook(values.data(), n, D, bits, I, 3);
    train::ValueTrainConfig config;
    config.value_bits = bits;
    config.hidden = I;
    config.steps = steps;
    config.batch = 256;
    config.n_threads = threads;
    Clock::time_point first;
    Timing t;
    uint32_t seen = 0;
    auto hook = [&](uint32_t, double) {
        if (seen++ == 0) first = Clock::now();
        else t.seconds = std::chrono::duration<double>(Clock::now() - first).count();
    };
    if (device < 0) {
        train::train_value_codebook(vc, values.data(), n, D, config, 3, hook);
    } else {
#ifdef COMMVQ_WITH_CUDA
        train::train_value_codebook_cuda(vc, values.data(), n, D, config, 3, hook, nullptr, device);
#endif
    }
    t.steps = seen > 1 ? seen - 1 : 0;
    return t;
}

double ms_per_step(const Timing& t) { return t.steps ? 1e3 * t.seconds / t.steps : NAN; }

}  // namespace

int main(int argc, char** argv) {
    const size_t N = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 65536;
    uint32_t threads = argc > 2 ? uint32_t(std::atoi(argv[2])) : 0;
    const uint32_t em_steps = argc > 3 ? uint32_t(std::atoi(argv[3])) : 10;
    const uint32_t value_steps = argc > 4 ? uint32_t(std::atoi(argv[4])) : 100;
    if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());

    const test::KvFixture& fx = test::kv_fixture();
    const uint32_t layer = 2, d = fx.head_dim, D = fx.n_kv_heads * d;
    std::vector<uint64_t> rows(N);
    for (size_t i = 0; i < N; ++i) rows[i] = i % fx.n_tokens;
    std::vector<float> samples(N * d), scales(N), values(N * D);
    train::normalized_keys(fx.keys[layer].data(), rows, fx.n_kv_heads, d, 0, fx.pair_layout, COMMVQ_SCALE_TOKEN,
                           samples.data(), scales.data());
    // Repeats get a small deterministic perturbation so they are not exact ties.
    for (size_t i = fx.n_tokens; i < N; ++i)
        for (uint32_t k = 0; k < d; ++k) samples[i * d + k] *= 1.0f + 1e-3f * std::sin(float(i * 131 + k));
    for (size_t i = 0; i < N; ++i)
        for (uint32_t c = 0; c < D; ++c) values[i * D + c] = fx.value(layer, rows[i])[c];

    int gpus = 0;
#ifdef COMMVQ_WITH_CUDA
    gpus = cuda_device_count();
#endif
    std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::printf("# Training speed, %s: N = %zu samples, CPU %u threads, %s\n\n", date, N, threads,
                gpus ? "CUDA device 0" : "no CUDA device");
    std::printf("| part | device | steps timed | ms per step | speed-up vs CPU |\n| --- | --- | --- | --- | --- |\n");

    Timing cpu = time_em(samples, scales, N, em_steps, -1, threads);
    const double cpu_em = ms_per_step(cpu);
    std::printf("| key EM step, C=64, d=128 | CPU | %u | %.1f | 1.00 |\n", cpu.steps, cpu_em);
    if (gpus) {
        Timing gpu = time_em(samples, scales, N, em_steps, 0, threads);
        const double ms = ms_per_step(gpu);
        std::printf("| key EM step, C=64, d=128 | CUDA | %u | %.2f | %.1f |\n", gpu.steps, ms, cpu_em / ms);
    }
    for (uint32_t bits : {1u, 2u}) {
        Timing c = time_values(values, N, bits, value_steps, -1, threads);
        const double cpu_ms = ms_per_step(c);
        std::printf("| value step, %u bit, D=256, I=256, batch 256 | CPU | %u | %.2f | 1.00 |\n", bits, c.steps,
                    cpu_ms);
        if (gpus) {
            Timing g = time_values(values, N, bits, value_steps, 0, threads);
            const double ms = ms_per_step(g);
            std::printf("| value step, %u bit, D=256, I=256, batch 256 | CUDA | %u | %.3f | %.1f |\n", bits,
                        g.steps, ms, cpu_ms / ms);
        }
    }
    return 0;
}
