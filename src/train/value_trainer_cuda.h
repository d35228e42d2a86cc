// The value codebook trainer (value_trainer.h) on a CUDA device: the same
// objective (LayerNorm -> Linear -> GELU -> Linear, straight-through hard
// options with Gumbel noise, additive binary codebook E, v_hat normalized by
// ||y|| and rescaled by sigma and lambda), the same hand-written backward
// pass, the same AdamW with global-norm clipping and the same random stream,
// with the matrix products in cuBLAS (float32, TF32 off) and everything else
// in kernels that reduce in a fixed order (no float atomics): one GPU gives
// the same bits for the same inputs on every run.
//
// Plain C++ header: the implementation is kernels/train_value.cu, built only
// with CUDA (COMMVQ_WITH_CUDA).
//
// Errors: an ordinal that is not a CUDA device -> Error(COMMVQ_ERR_INVALID_ARGUMENT);
// device memory exhausted -> COMMVQ_ERR_OUT_OF_MEMORY; any other CUDA or
// cuBLAS failure -> COMMVQ_ERR_CUDA. Nothing aborts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "codebook.h"
#include "value_trainer.h"

namespace commvq {
namespace train {

// ValueObjective with its work on a CUDA device. Same contract: host
// pointers in and out, so it can be compared with the CPU one. Each call
// uploads the parameters and the batch, runs the forward (and backward)
// pass on the device and downloads the loss, v_hat and the gradients.
// Device buffers are filled with NaN when taken, so an entry a kernel
// forgot to write shows up as NaN in the outputs.
class ValueObjectiveCuda {
public:
    ValueObjectiveCuda(uint32_t value_dim, uint32_t value_bits, uint32_t hidden, int32_t device);
    ~ValueObjectiveCuda();
    ValueObjectiveCuda(const ValueObjectiveCuda&) = delete;
    ValueObjectiveCuda& operator=(const ValueObjectiveCuda&) = delete;

    // As ValueObjective::evaluate: v [batch][D], noise [batch][4n] or
    // nullptr, row_weight [batch] or nullptr for 1. Returns the loss; when
    // grads is not null, writes the gradient of every value_parameters()
    // tensor (grads->lambda is set to zeros: lambda is fixed).
    double evaluate(const ValueCodebook& vc, const float* v, uint32_t batch, const float* noise,
                    OptionChoice choice, ValueCodebook* grads, const float* row_weight = nullptr);

    // v_hat of the batch of the last evaluate() call, [batch][D].
    const std::vector<float>& reconstruction() const { return vhat_; }

    struct Model;  // the device state (kernels/train_value.cu)

private:
    std::unique_ptr<Model> model_;
    std::vector<float> vhat_;
};

// train_value_codebook on CUDA device `device`: same algorithm, same batches
// (rows drawn by the host mt19937_64 of the seed, rng() % n_tokens), same
// Gumbel noise (the counter-based gumbel(seed, (step << 32) + k) of the CPU
// trainer, computed on the device in float64 from the same 64-bit hash),
// same AdamW arithmetic. The values (and token weights) go up once; per step
// only the batch's row indices go up, and the loss comes back only when
// there is a hook. The parameters stay on the device until the end.
// Results are not bit-identical to the CPU's (the products sum in another
// order, and a near-tie can then pick the other option), but the same for
// every run on one GPU.
void train_value_codebook_cuda(ValueCodebook& vc, const float* values, size_t n_tokens, uint32_t value_dim,
                               const ValueTrainConfig& config, uint64_t seed, const ValueStepHook& hook,
                               const float* token_weight, int32_t device);

}  // namespace train
}  // namespace commvq
