// commvq-train's model settings (query heads, RoPE, pair layout, model name)
// from the command line and from the KV file's metadata.
//
// A codebook records the model's RoPE and query heads, and a cache built from
// it uses them for every attention call; a codebook trained with the wrong
// ones is unusable for its model without any error saying so. The KV file
// knows them (tools/collect_kv.py records them), so they default to the
// file's, and a flag that contradicts the file is refused.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "train/train.h"

namespace train_tool {

// What the command line set; unset means "the file's, else the library's default".
struct ModelFlags {
    std::optional<uint32_t> n_q_heads;
    std::optional<int32_t> pair_layout;
    std::optional<double> rope_theta;
    std::optional<int32_t> rope_scaling;
    std::optional<double> rope_factor, rope_low_freq_factor, rope_high_freq_factor, rope_original_max_position;
    std::optional<std::string> model_name;
};

// What the KV file says about its model: its metadata, and the shapes of its
// tensors (n_q_heads_seen: the heads of queries.{l}, 0 without queries).
struct KvModel {
    std::string path;
    std::map<std::string, std::string> metadata;
    uint32_t n_layers = 0, n_kv_heads = 0, head_dim = 0, n_q_heads_seen = 0;
};

// A flag that contradicts the file, or metadata that contradicts itself or
// the tensors; what() says which and what to do.
class SettingsConflict : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Sets options' n_q_heads, pair_layout, rope and model_name: each from its
// flag, else from the file, else left at the library's default. Returns one
// line per setting saying where it came from (with a warning where the file
// records nothing and the default is a guess). Throws SettingsConflict.
std::vector<std::string> resolve_model_settings(const ModelFlags& flags, const KvModel& file,
                                                commvq::train::TrainOptions& options);

}  // namespace train_tool
