// Training of one layer's value codebook (docs/METHOD.md "Values"): the encoder
// (LayerNorm -> Linear D->I -> GELU -> Linear I->4n) and the additive binary
// codebook E [2n][D], jointly, by AdamW on MSE(v_hat, v)/2. The discrete
// choice of each group's option uses a straight-through estimator: the
// forward pass takes the hard one-hot of the argmax (with Gumbel noise while
// training, tau = 1), the backward pass the gradient of the softmax.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "codebook.h"

namespace commvq {
namespace train {

struct ValueTrainConfig {
    uint32_t value_bits = 1;
    uint32_t hidden = 0;  // I
    uint32_t steps = 2000;
    uint32_t batch = 256;
    float lr = 1e-3f;
    float weight_decay = 0.1f;
    float beta1 = 0.9f;
    float beta2 = 0.95f;
    float grad_clip = 1.0f;  // on the global gradient norm
    bool gumbel = true;      // Gumbel noise on the logits while training
    uint32_t n_threads = 1;
};

// Called after each optimizer step with the batch loss; throwing stops training.
using ValueStepHook = std::function<void(uint32_t step, double loss)>;

// How the options enter the forward pass.
enum class OptionChoice {
    kHard,     // one-hot of the argmax; backward through the softmax (STE)
    kRelaxed,  // the softmax itself: a smooth loss whose exact gradient the
               // same backward code computes (used to check that code)
};

// The parameters of ValueCodebook in one flat list, in a fixed order, so the
// optimizer and the gradient check can walk them uniformly.
std::vector<std::vector<float>*> value_parameters(ValueCodebook& vc);

// Loss and gradients of the value model on one batch.
class ValueObjective {
public:
    ValueObjective(uint32_t value_dim, uint32_t value_bits, uint32_t hidden, uint32_t n_threads);

    // v: [batch][D]. noise: Gumbel noise [batch][4n] added to the logits, or
    // nullptr. row_weight: [batch] weight of each token's error, or nullptr
    // for 1. Returns sum over the batch of row_weight * sum over channels of
    // (v_hat - v)^2, divided by 2 * batch * D (with unit weights: half the
    // mean squared error) and, when grads is not null, writes its gradient
    // w.r.t. value_parameters() (lambda's entry is left zero: lambda is fixed).
    double evaluate(const ValueCodebook& vc, const float* v, uint32_t batch, const float* noise,
                    OptionChoice choice, ValueCodebook* grads, const float* row_weight = nullptr);

    // v_hat of the batch of the last evaluate() call, [batch][D].
    const std::vector<float>& reconstruction() const { return vhat_; }

private:
    uint32_t D_, bits_, I_, n_, n_threads_;
    std::vector<float> u_, xhat_, rstd_, h0_, a1_, h1_, logits_, prob_, option_, code_, y_, vhat_;
    std::vector<float> sigma_, ynorm_;
    std::vector<float> dvhat_, dy_, dcode_, dlogits_, dh1_, da1_, dh0_, scratch_;
};

// A freshly initialized value codebook: lambda = mean |v| per channel of the
// training tokens, LayerNorm weight 1 and bias 0, Linear layers and E
// uniform in +-1/sqrt(fan_in) (the fan-in of E is taken as D).
ValueCodebook init_value_codebook(const float* values, size_t n_tokens, uint32_t value_dim,
                                  uint32_t value_bits, uint32_t hidden, uint64_t seed);

// Trains vc in place on values [n_tokens][D] (batches drawn with the seed).
// token_weight: [n_tokens] weight of each token's reconstruction error in
// the loss (e.g. 1 + beta * its attention mass), or nullptr for 1.
void train_value_codebook(ValueCodebook& vc, const float* values, size_t n_tokens,
                          uint32_t value_dim, const ValueTrainConfig& config, uint64_t seed,
                          const ValueStepHook& hook, const float* token_weight = nullptr);

// Mean squared error (v_hat - v)^2 of the trained model (argmax, no noise)
// over all tokens, in the values' own units.
double value_mse(const ValueCodebook& vc, const float* values, size_t n_tokens, uint32_t value_dim,
                 uint32_t value_bits, uint32_t hidden, uint32_t n_threads);

}  // namespace train
}  // namespace commvq
