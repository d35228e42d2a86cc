// EM training of one key head's residual stages (docs/METHOD.md "Training",
// docs/TRAINING.md). Samples are normalized pre-RoPE keys t_n in the canonical pair
// layout; their scales s_n only weight the reported MSE, which is measured
// in the keys' own units: mean over samples and elements of (s_n (t_n - c))^2.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace commvq {
namespace train {

struct KeyTrainConfig {
    uint32_t sub_centers = 64;  // C
    uint32_t max_steps = 100;   // EM steps per stage
    uint32_t n_threads = 1;
    // COMMVQ_DEVICE_CPU (-1), or a CUDA ordinal: the E-steps then run there
    // (key_em_cuda.h); the M-step and the keep/stop logic stay on the host.
    int32_t device = -1;
    // Names the head in error messages ("keys layer 3 head 0"); may be empty.
    std::string name;
};

struct KeyStageReport {
    double mse = 0;          // best hard-assignment MSE (the kept parameters)
    uint32_t steps = 0;      // EM steps run
    uint32_t reseeded = 0;   // dead sub-centers re-seeded over the stage
};

// Called after each EM step of a stage with the step's hard MSE; throwing
// (e.g. Error(COMMVQ_ERR_CANCELLED)) stops training.
using KeyStepHook = std::function<void(uint32_t stage, uint32_t step, double mse)>;

// Trains `stages` residual stages. residuals: [n][head_dim], the normalized
// samples on entry, their final residuals on return. Returns the sub-centers
// [stages][C][head_dim]; one report per stage goes to reports.
std::vector<float> train_key_head(float* residuals, const float* scales, size_t n,
                                  uint32_t head_dim, uint32_t stages, const KeyTrainConfig& config,
                                  uint64_t seed, const KeyStepHook& hook,
                                  std::vector<KeyStageReport>* reports);

// Temperature of EM step `step` of a stage: exponential decay from 1e-3*f to
// 1e-5*f over max_steps, f = 10^-(number of stages before `stage` that are
// 0, 4, 8, ...), i.e. 1 for stage 0, 0.1 for stages 1-4, 0.01 for 5-8, ...
double em_temperature(uint32_t stage, uint32_t step, uint32_t max_steps);

}  // namespace train
}  // namespace commvq
