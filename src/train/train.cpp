#include "train.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "backend.h"
#include "error.h"
#include "input_check.h"
#include "key_trainer.h"
#include "pair_layout.h"
#include "parallel.h"
#include "value_trainer.h"
#include "value_trainer_cuda.h"

namespace commvq {
namespace train {

namespace {

void validate(const TrainOptions& o, uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
              uint64_t n_tokens, const float* keys, const float* values) {
    auto invalid = [](bool ok, const std::string& message) { require(ok, COMMVQ_ERR_INVALID_ARGUMENT, message); };
    invalid(keys != nullptr && values != nullptr, "keys and values must not be NULL");
    invalid(n_layers > 0 && n_kv_heads > 0 && n_tokens > 0, "n_layers, n_kv_heads and n_tokens must be positive");
    invalid(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even, got " + std::to_string(head_dim));
    invalid(o.value_bits == 1 || o.value_bits == 2, "value_bits must be 1 or 2, got " + std::to_string(o.value_bits));
    invalid(o.sub_centers >= 2 && o.sub_centers <= 256,
            "sub_centers must be 2..256, got " + std::to_string(o.sub_centers));
    invalid(o.pair_layout == COMMVQ_PAIRS_ROTATE_HALF || o.pair_layout == COMMVQ_PAIRS_INTERLEAVED,
            "unknown pair layout " + std::to_string(o.pair_layout));
    invalid(o.scale_mode == COMMVQ_SCALE_TOKEN || o.scale_mode == COMMVQ_SCALE_HEAD,
            "unknown scale mode " + std::to_string(o.scale_mode));
    invalid(o.device >= COMMVQ_DEVICE_CPU,
            "device " + std::to_string(o.device) + " is neither COMMVQ_DEVICE_CPU (-1) nor a CUDA ordinal");
    if (o.device >= 0) {
#ifdef COMMVQ_WITH_CUDA
        const int32_t n_devices = cuda_device_count();
#else
        const int32_t n_devices = 0;
#endif
        require(n_devices > 0, COMMVQ_ERR_NOT_SUPPORTED,
                "training on CUDA device " + std::to_string(o.device) +
                    " asked for, but this library was built without CUDA or no usable CUDA device is present");
        invalid(o.device < n_devices, "training on CUDA device " + std::to_string(o.device) + " asked for, but " +
                                          std::to_string(n_devices) + " usable CUDA device(s) are present");
    }
    invalid(o.value_hidden <= 65536, "value_hidden must be at most 65536 (0 = min(4096, 4n)), got " +
                                         std::to_string(o.value_hidden));
    invalid(is_valid_utf8(o.model_name), "model_name is not valid UTF-8");
    invalid(o.max_samples > 0, "max_samples must be positive");
    invalid(o.key_max_steps > 0, "key_max_steps must be positive");
    invalid(o.value_batch > 0, "value_batch must be positive");
    invalid(std::isfinite(o.value_lr) && o.value_lr > 0, "value_lr must be positive");
    uint32_t q = o.n_q_heads ? o.n_q_heads : n_kv_heads;
    invalid(q % n_kv_heads == 0, "n_q_heads (" + std::to_string(q) + ") must be a multiple of n_kv_heads (" +
                                     std::to_string(n_kv_heads) + ")");
    invalid(uint64_t(n_kv_heads) * head_dim * o.value_bits % 8 == 0,
            "n_kv_heads * head_dim * value_bits must be a multiple of 8 (value codes are whole bytes)");
    // The rule every entry point applies to the numbers it is given
    // (input_check.h), layer by layer so that the message names the layer.
    const size_t D = size_t(n_kv_heads) * head_dim;
    for (uint32_t l = 0; l < n_layers; ++l) {
        const std::string row = "layer " + std::to_string(l) + ", token";
        for (const float* x : {keys, values})
            require_inputs("commvq_train", x == keys ? "keys" : "values", row.c_str(), x + size_t(l) * n_tokens * D,
                           COMMVQ_DTYPE_F32, n_tokens, D);
    }
    if (o.value_weights)
        for (size_t i = 0; i < size_t(n_layers) * n_tokens; ++i)
            if (!(std::isfinite(o.value_weights[i]) && o.value_weights[i] >= 0)) {
                char value[32];
                std::snprintf(value, sizeof value, "%g", double(o.value_weights[i]));
                invalid(false, "value_weights element " + std::to_string(i) + " (layer " +
                                   std::to_string(i / n_tokens) + ", token " + std::to_string(i % n_tokens) + ") is " +
                                   value + "; weights must be finite and >= 0");
            }
}

// The tokens trained on: all of them, or max_samples drawn without
// replacement (in increasing order, so memory is read forward).
std::vector<uint64_t> pick_rows(uint64_t n_tokens, uint64_t max_samples, uint64_t seed) {
    std::vector<uint64_t> rows(n_tokens);
    std::iota(rows.begin(), rows.end(), uint64_t(0));
    if (n_tokens <= max_samples) return rows;
    std::mt19937_64 rng(seed ^ 0x5eed5a3b1e5ull);
    for (uint64_t i = 0; i < max_samples; ++i) std::swap(rows[i], rows[i + rng() % (n_tokens - i)]);
    rows.resize(max_samples);
    std::sort(rows.begin(), rows.end());
    return rows;
}

}  // namespace

void normalized_keys(const float* keys, const std::vector<uint64_t>& rows, uint32_t n_kv_heads,
                     uint32_t head_dim, uint32_t head, int32_t pair_layout, int32_t scale_mode,
                     float* samples, float* scales) {
    const size_t token_floats = size_t(n_kv_heads) * head_dim;
    for (size_t i = 0; i < rows.size(); ++i) {
        const float* k = keys + rows[i] * token_floats;
        const float* kh = k + size_t(head) * head_dim;
        const float* span = scale_mode == COMMVQ_SCALE_TOKEN ? k : kh;
        const size_t span_floats = scale_mode == COMMVQ_SCALE_TOKEN ? token_floats : head_dim;
        double s2 = 0;
        for (size_t c = 0; c < span_floats; ++c) s2 += double(span[c]) * span[c];
        double s = std::sqrt(s2);
        float* t = samples + i * head_dim;
        to_canonical(kh, head_dim, pair_layout, t);
        for (uint32_t c = 0; c < head_dim; ++c) t[c] = s > 0 ? float(t[c] / s) : 0.0f;
        scales[i] = float(s);
    }
}

Codebook train_codebook(const TrainOptions& options, uint32_t n_layers, uint32_t n_kv_heads,
                        uint32_t head_dim, uint64_t n_tokens, const float* keys, const float* values,
                        const TrainProgress& progress, TrainReport* report) {
    validate(options, n_layers, n_kv_heads, head_dim, n_tokens, keys, values);
    const uint32_t threads = resolve_threads(options.n_threads);
    const uint32_t D = n_kv_heads * head_dim;

    Codebook cb;
    cb.n_layers = n_layers;
    cb.n_kv_heads = n_kv_heads;
    cb.n_q_heads = options.n_q_heads ? options.n_q_heads : n_kv_heads;
    cb.head_dim = head_dim;
    cb.key_stages = options.key_stages ? options.key_stages : key_stages_for_bits(options.value_bits);
    cb.sub_centers = options.sub_centers;
    cb.value_bits = options.value_bits;
    cb.value_hidden = options.value_hidden ? options.value_hidden : value_hidden_for(D, options.value_bits);
    cb.pair_layout = options.pair_layout;
    cb.scale_mode = options.scale_mode;
    cb.rope = options.rope;
    cb.model_name = options.model_name;
    cb.layers.resize(n_layers);

    const std::vector<uint64_t> rows = pick_rows(n_tokens, options.max_samples, options.seed);
    const size_t N = rows.size();
    TrainReport local;
    TrainReport& rep = report ? *report : local;
    rep = TrainReport{};
    rep.samples = N;
    rep.key_mse.assign(n_layers, std::vector<std::vector<double>>(n_kv_heads));
    rep.key_steps.assign(n_layers, std::vector<std::vector<uint32_t>>(n_kv_heads));

    // Progress in units of work: one per EM step allowed, one per value step.
    const double key_units = double(cb.key_stages) * options.key_max_steps;
    const double total = double(n_layers) * (n_kv_heads * key_units + options.value_steps);
    double done = 0;
    auto report_progress = [&](const std::string& phase, double units, double detail) {
        if (progress && !progress(phase, std::min(1.0, units / total), detail))
            throw Error(COMMVQ_ERR_CANCELLED, "training cancelled by the progress callback during " + phase);
    };

    KeyTrainConfig key_config;
    key_config.sub_centers = options.sub_centers;
    key_config.max_steps = options.key_max_steps;
    key_config.n_threads = threads;
    key_config.device = options.device;
    ValueTrainConfig value_config;
    value_config.value_bits = options.value_bits;
    value_config.hidden = cb.value_hidden;
    value_config.steps = options.value_steps;
    value_config.batch = options.value_batch;
    value_config.lr = options.value_lr;
    value_config.gumbel = options.value_gumbel;
    value_config.n_threads = threads;

    std::vector<float> samples(N * head_dim), scales(N), layer_values(N * D), layer_weights;
    for (uint32_t l = 0; l < n_layers; ++l) {
        const float* layer_keys = keys + size_t(l) * n_tokens * D;
        std::vector<float>& sub_centers = cb.layers[l].keys.sub_centers;
        for (uint32_t h = 0; h < n_kv_heads; ++h) {
            normalized_keys(layer_keys, rows, n_kv_heads, head_dim, h, options.pair_layout, options.scale_mode,
                            samples.data(), scales.data());
            key_config.name = "keys layer " + std::to_string(l) + " head " + std::to_string(h);
            const double head_start = done;
            auto hook = [&](uint32_t stage, uint32_t step, double mse) {
                report_progress(key_config.name + " stage " + std::to_string(stage),
                                head_start + double(stage) * options.key_max_steps + step + 1, mse);
            };
            std::vector<KeyStageReport> stages;
            uint64_t seed = options.seed * 0x100000001b3ull + (uint64_t(l) << 20) + h;
            std::vector<float> z = train_key_head(samples.data(), scales.data(), N, head_dim, cb.key_stages,
                                                  key_config, seed, hook, &stages);
            sub_centers.insert(sub_centers.end(), z.begin(), z.end());
            for (const KeyStageReport& s : stages) {
                rep.key_mse[l][h].push_back(s.mse);
                rep.key_steps[l][h].push_back(s.steps);
                rep.reseeded += s.reseeded;
            }
            done = head_start + key_units;
        }

        for (size_t i = 0; i < N; ++i)
            std::copy_n(values + (size_t(l) * n_tokens + rows[i]) * D, D, layer_values.data() + i * D);
        if (options.value_weights) {
            layer_weights.resize(N);
            for (size_t i = 0; i < N; ++i) layer_weights[i] = options.value_weights[size_t(l) * n_tokens + rows[i]];
        }
        uint64_t seed = options.seed * 0x100000001b3ull + (uint64_t(l) << 20) + 0xfffff;
        ValueCodebook& vc = cb.layers[l].values;
        vc = init_value_codebook(layer_values.data(), N, D, options.value_bits, cb.value_hidden, seed);
        const double value_start = done;
        const ValueStepHook value_hook = [&](uint32_t step, double loss) {
            report_progress("values layer " + std::to_string(l), value_start + step + 1, loss);
        };
        const float* value_weights = options.value_weights ? layer_weights.data() : nullptr;
        // validate() refused a device in a build without CUDA.
#ifdef COMMVQ_WITH_CUDA
        if (options.device >= 0)
            train_value_codebook_cuda(vc, layer_values.data(), N, D, value_config, seed, value_hook, value_weights,
                                      options.device);
        else
#endif
            train_value_codebook(vc, layer_values.data(), N, D, value_config, seed, value_hook, value_weights);
        done = value_start + options.value_steps;
        rep.value_mse.push_back(
            value_mse(vc, layer_values.data(), N, D, options.value_bits, cb.value_hidden, threads));
    }
    cb.finalize();
    return cb;
}

}  // namespace train
}  // namespace commvq
