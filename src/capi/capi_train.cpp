// C API: codebook training (commvq_train_params_init, commvq_train).
#include <cmath>
#include <memory>
#include <string>

#include "capi/guard.h"
#include "train/train.h"

using commvq::Error;
using commvq::capi::guard;
using commvq::capi::require_arg;

namespace {

commvq_train_params_t default_train_params() {
    commvq_train_params_t p{};
    p.struct_size = sizeof(p);
    p.value_bits = 1;
    p.key_stages = 0;
    p.sub_centers = 64;
    p.pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    p.scale_mode = COMMVQ_SCALE_TOKEN;
    p.n_q_heads = 0;
    const commvq::RopeSpec rope;
    p.rope.theta = rope.theta;
    p.rope.scaling = rope.scaling;
    p.rope.factor = rope.factor;
    p.rope.low_freq_factor = rope.low_freq_factor;
    p.rope.high_freq_factor = rope.high_freq_factor;
    p.rope.original_max_position = rope.original_max_position;
    p.max_samples = 1048576;
    p.key_max_steps = 100;
    p.value_steps = 2000;
    p.value_batch = 256;
    p.value_lr = 1e-3f;
    p.seed = 0;
    p.n_threads = 0;
    p.device = COMMVQ_DEVICE_CPU;
    p.progress = nullptr;
    p.progress_user = nullptr;
    p.value_hidden = 0;
    p.model_name = nullptr;
    p.value_weights = nullptr;
    return p;
}

}  // namespace

extern "C" {

COMMVQ_API void commvq_train_params_init(commvq_train_params_t* params) {
    if (params) *params = default_train_params();
}

COMMVQ_API commvq_status_t commvq_train(const commvq_train_params_t* params, uint32_t n_layers,
                                       uint32_t n_kv_heads, uint32_t head_dim, uint64_t n_tokens,
                                       const float* keys, const float* values, commvq_codebook_t** out) {
    return guard([&] {
        constexpr const char* fn = "commvq_train";
        const commvq_train_params_t p =
            commvq::capi::read_params(params, default_train_params(), fn, "params");
        require_arg(keys, fn, "keys");
        require_arg(values, fn, "values");
        require_arg(out, fn, "out");
        commvq::train::TrainOptions o;
        o.device = p.device;  // checked by train_codebook
        o.value_bits = p.value_bits;
        o.key_stages = p.key_stages;
        o.sub_centers = p.sub_centers;
        o.pair_layout = p.pair_layout;
        o.scale_mode = p.scale_mode;
        o.n_q_heads = p.n_q_heads;
        o.rope.theta = p.rope.theta;
        o.rope.scaling = p.rope.scaling;
        o.rope.factor = p.rope.factor;
        o.rope.low_freq_factor = p.rope.low_freq_factor;
        o.rope.high_freq_factor = p.rope.high_freq_factor;
        o.rope.original_max_position = p.rope.original_max_position;
        o.max_samples = p.max_samples;
        o.key_max_steps = p.key_max_steps;
        o.value_steps = p.value_steps;
        o.value_batch = p.value_batch;
        o.value_lr = p.value_lr;
        o.seed = p.seed;
        o.n_threads = p.n_threads;
        o.value_hidden = p.value_hidden;
        if (p.model_name) o.model_name = p.model_name;
        o.value_weights = p.value_weights;  // checked by train_codebook
        commvq::train::TrainProgress progress;
        if (p.progress) {
            progress = [&p](const std::string& phase, double fraction, double) {
                return p.progress(p.progress_user, phase.c_str(), fraction) == 0;
            };
        }
        auto cb = std::make_unique<commvq_codebook>(commvq_codebook{commvq::train::train_codebook(
            o, n_layers, n_kv_heads, head_dim, n_tokens, keys, values, progress, nullptr)});
        *out = cb.release();
    });
}

}  // extern "C"
