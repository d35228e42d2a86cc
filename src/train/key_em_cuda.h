// The E-step of the key codebook's EM on a CUDA device (docs/METHOD.md
// "Training"): distances of every sample to all C*C centers through
// one cuBLAS product per chunk, the hard assignment, and the soft statistics
// n_c = sum_n w_nc and S_c = sum_n w_nc t_n. The M-step stays on the host
// (a 2C x 2C factorization in float64, m_step.h), as does the keep/stop
// logic: key_trainer.cpp drives both back ends through the same results.
//
// Plain C++ header: the implementation is kernels/train_key_em.cu, built
// only with CUDA (COMMVQ_WITH_CUDA).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace commvq {
namespace train {

// What one E-step yields, in the host arrays of the stage.
struct EStepResult {
    std::vector<uint32_t>* hard_code;     // [n] argmin code (lowest on ties)
    std::vector<float>* hard_err;         // [n] ||t - c||^2 of that code
    double* squared_error;                // sum_n s_n^2 ||t_n - c_n||^2
    std::vector<double>* weight;          // [C*C] n_c (soft steps only)
    std::vector<double>* weighted_sum;    // [C*C][d] S_c (soft steps only)
};

class KeyEStepCuda {
public:
    // Uploads the stage's samples [n][head_dim] and scales [n] to `device`.
    // Throws Error(COMMVQ_ERR_INVALID_ARGUMENT) for an ordinal that is not a
    // device, COMMVQ_ERR_OUT_OF_MEMORY / COMMVQ_ERR_CUDA on device failures.
    KeyEStepCuda(int32_t device, const float* samples, const float* scales, size_t n, uint32_t head_dim,
                 uint32_t sub_centers);
    ~KeyEStepCuda();
    KeyEStepCuda(const KeyEStepCuda&) = delete;
    KeyEStepCuda& operator=(const KeyEStepCuda&) = delete;

    // E-step against arbitrary centers [C*C][d] (the random start), soft.
    void explicit_step(const float* centers, double temperature, const EStepResult& out);
    // E-step against the commutative centers z_A + i z_B, given as the
    // caller forms them for its own search (key_trainer.cpp): g [2C][d] (rows
    // z_a, then i z_b), zz [C] = ||z_a||^2, gamma [C][C] = 2 <z_A, i z_B>.
    // soft = false only finds the hard assignments.
    void commutative_step(const float* g, const float* zz, const float* gamma, double temperature, bool soft,
                          const EStepResult& out);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace train
}  // namespace commvq
