// Training a whole codebook from collected keys and values: per layer, the
// key codebook of every KV head (EM, key_trainer.h) and the value codebook
// (value_trainer.h). The C API (commvq_train) and the commvq-train tool both
// come through here.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "codebook.h"

namespace commvq {
namespace train {

struct TrainOptions {
    uint32_t value_bits = 1;
    uint32_t key_stages = 0;    // 0 = from value_bits (11 or 21)
    uint32_t sub_centers = 64;  // C
    uint32_t value_hidden = 0;  // I; 0 = min(4096, 4n)
    int32_t pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    int32_t scale_mode = COMMVQ_SCALE_TOKEN;
    uint32_t n_q_heads = 0;  // 0 = n_kv_heads
    RopeSpec rope;
    std::string model_name;
    uint64_t max_samples = 1048576;  // tokens per layer
    uint32_t key_max_steps = 100;
    uint32_t value_steps = 2000;
    uint32_t value_batch = 256;
    float value_lr = 1e-3f;
    bool value_gumbel = true;
    uint64_t seed = 0;
    uint32_t n_threads = 0;  // 0 = all cores
    int32_t device = -1;     // COMMVQ_DEVICE_CPU, or the CUDA ordinal that runs EM and the value trainer
    // Weight of each token's value reconstruction error, float32
    // [n_layers][n_tokens], or nullptr for 1 (attention_weights.h makes
    // 1 + beta * attention mass from queries: the attention-weighted term).
    const float* value_weights = nullptr;
};

// What training measured, on the training tokens.
struct TrainReport {
    // [layer][head][stage]: best hard-assignment MSE of the stage (keys'
    // units, residual after the stage), and EM steps run.
    std::vector<std::vector<std::vector<double>>> key_mse;
    std::vector<std::vector<std::vector<uint32_t>>> key_steps;
    uint64_t reseeded = 0;       // dead sub-centers re-seeded, all stages
    std::vector<double> value_mse;  // [layer]
    uint64_t samples = 0;           // tokens per layer used
};

// Progress: phase names what runs ("keys layer 2 head 1 stage 3"), fraction
// runs 0..1 over the whole job, detail is the latest MSE or loss. Returning
// false cancels: train_codebook then throws Error(COMMVQ_ERR_CANCELLED).
using TrainProgress = std::function<bool(const std::string& phase, double fraction, double detail)>;

// keys and values: float32 [n_layers][n_tokens][n_kv_heads][head_dim], keys
// before RoPE in the model's pair layout. Returns a finalized codebook.
Codebook train_codebook(const TrainOptions& options, uint32_t n_layers, uint32_t n_kv_heads,
                        uint32_t head_dim, uint64_t n_tokens, const float* keys, const float* values,
                        const TrainProgress& progress, TrainReport* report);

// The normalized keys of one layer and head in the canonical layout, as the
// key trainer and encoder see them: t = k / s with s the token's norm over
// all heads (token scale) or over the head (head scale); s = 0 gives t = 0.
// keys: [n_tokens][n_kv_heads][head_dim] of one layer; rows picks tokens.
void normalized_keys(const float* keys, const std::vector<uint64_t>& rows, uint32_t n_kv_heads,
                     uint32_t head_dim, uint32_t head, int32_t pair_layout, int32_t scale_mode,
                     float* samples, float* scales);

}  // namespace train
}  // namespace commvq
