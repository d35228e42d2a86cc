#include "model_settings.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

namespace train_tool {
namespace {

const char* const kScalingNames[] = {"none", "linear", "llama3"};  // COMMVQ_ROPE_SCALING_*

std::string show_number(double x) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.10g", x);
    return buf;
}

std::string show_layout(int32_t layout) {
    return layout == COMMVQ_PAIRS_INTERLEAVED ? "interleaved" : "rotate-half";
}

std::string show_scaling(int32_t scaling) {
    return scaling >= 0 && scaling < 3 ? kScalingNames[scaling] : std::to_string(scaling);
}

// Doubles written by Python's repr() and read by strtod are exact; the
// tolerance only forgives a flag typed with fewer digits than the file.
bool same_number(double a, double b) { return std::fabs(a - b) <= 1e-9 * std::max(std::fabs(a), std::fabs(b)); }

class FileReader {
public:
    explicit FileReader(const KvModel& file) : file_(file) {}

    std::optional<std::string> text(const std::string& key) const {
        auto it = file_.metadata.find(key);
        if (it == file_.metadata.end()) return std::nullopt;
        return it->second;
    }

    std::optional<double> number(const std::string& key) const {
        std::optional<std::string> t = text(key);
        if (!t) return std::nullopt;
        char* end = nullptr;
        double x = std::strtod(t->c_str(), &end);
        if (end == t->c_str() || *end != '\0' || !std::isfinite(x)) malformed(key, *t);
        return x;
    }

    std::optional<uint32_t> count(const std::string& key) const {
        std::optional<double> x = number(key);
        if (!x) return std::nullopt;
        if (*x < 0 || *x != std::floor(*x) || *x > 4294967295.0) malformed(key, *text(key));
        return uint32_t(*x);
    }

    // The tensors are what training reads: metadata that disagrees with them
    // describes some other file.
    void expect_shape(const std::string& key, uint32_t actual, const char* what) const {
        std::optional<uint32_t> recorded = count(key);
        if (recorded && *recorded != actual)
            throw SettingsConflict(file_.path + ": the metadata says " + key + " " + std::to_string(*recorded) +
                                   " but the tensors have " + std::to_string(actual) + " " + what);
    }

    [[noreturn]] void malformed(const std::string& key, const std::string& value) const {
        throw SettingsConflict(file_.path + ": metadata " + key + " is '" + value + "', not a valid value");
    }

    const KvModel& file() const { return file_; }

private:
    const KvModel& file_;
};

// One setting: the flag wins when the file says nothing, the file's value
// when the flag is absent; both present and different is a conflict.
template <class T, class Show, class Same>
void settle(const FileReader& reader, const char* flag, const std::string& key, const std::optional<T>& from_flag,
            const std::optional<T>& from_file, T& target, Show show, Same same, std::vector<std::string>& notes,
            const char* unrecorded_warning) {
    const KvModel& file = reader.file();
    if (from_flag && from_file && !same(*from_flag, *from_file)) {
        std::optional<std::string> model = reader.text("model");
        throw SettingsConflict(std::string(flag) + " " + show(*from_flag) + " contradicts " + file.path +
                               ", which records " + key + " " + show(*from_file) +
                               (model ? " (model " + *model + ")" : std::string()) +
                               ": a codebook trained so would not match the model its keys come from. Leave " +
                               flag + " out to use the file's value.");
    }
    std::string source;
    if (from_flag) {
        target = *from_flag;
        source = from_file ? "command line, as the file records" : "command line";
    } else if (from_file) {
        target = *from_file;
        source = "from the KV file";
    } else {
        source = unrecorded_warning ? std::string("default; warning: ") + unrecorded_warning : "default";
    }
    notes.push_back(key + " " + show(target) + " (" + source + ")");
}

}  // namespace

std::vector<std::string> resolve_model_settings(const ModelFlags& flags, const KvModel& file,
                                                commvq::train::TrainOptions& options) {
    const FileReader reader(file);
    std::vector<std::string> notes;
    const auto equal = [](const auto& a, const auto& b) { return a == b; };

    reader.expect_shape("n_layers", file.n_layers, "layers");
    reader.expect_shape("n_kv_heads", file.n_kv_heads, "KV heads");
    reader.expect_shape("head_dim", file.head_dim, "dimensions per head");
    if (std::optional<std::string> keys = reader.text("keys"); keys && *keys != "pre-RoPE")
        throw SettingsConflict(file.path + " holds " + *keys + " keys; codebooks are trained on keys before RoPE");

    std::optional<uint32_t> q_heads = reader.count("n_q_heads");
    if (q_heads && file.n_q_heads_seen && *q_heads != file.n_q_heads_seen)
        throw SettingsConflict(file.path + ": the metadata says n_q_heads " + std::to_string(*q_heads) +
                               " but its queries have " + std::to_string(file.n_q_heads_seen) + " heads");
    if (!q_heads && file.n_q_heads_seen) q_heads = file.n_q_heads_seen;
    const auto show_count = [](uint32_t n) { return std::to_string(n); };
    if (!flags.n_q_heads && !q_heads) options.n_q_heads = file.n_kv_heads;  // the library's own default, said aloud
    settle(reader, "--q-heads", "n_q_heads", flags.n_q_heads, q_heads, options.n_q_heads, show_count, equal, notes,
           "the file records no query heads; assuming as many as KV heads (pass --q-heads)");

    std::optional<int32_t> layout;
    if (std::optional<std::string> t = reader.text("rope_layout")) {
        if (*t == "rotate_half") layout = COMMVQ_PAIRS_ROTATE_HALF;
        else if (*t == "interleaved") layout = COMMVQ_PAIRS_INTERLEAVED;
        else reader.malformed("rope_layout", *t);
    }
    settle(reader, "--pairs", "pair layout", flags.pair_layout, layout, options.pair_layout, show_layout, equal, notes,
           "the file records no rope_layout (pass --pairs)");

    settle(reader, "--rope-theta", "rope_theta", flags.rope_theta, reader.number("rope_theta"), options.rope.theta,
           show_number, same_number, notes, "the file records no rope_theta (pass --rope-theta)");

    std::optional<int32_t> scaling;
    if (std::optional<std::string> t = reader.text("rope_scaling")) {
        auto it = std::find(std::begin(kScalingNames), std::end(kScalingNames), *t);
        if (it == std::end(kScalingNames)) reader.malformed("rope_scaling", *t);
        scaling = int32_t(it - std::begin(kScalingNames));
    }
    settle(reader, "--rope-scaling", "rope_scaling", flags.rope_scaling, scaling, options.rope.scaling, show_scaling,
           equal, notes, nullptr);

    // The parameters of the file's scaling kind: collect_kv.py records only
    // those the kind uses, under Hugging Face's names.
    nlohmann::json params = nlohmann::json::object();
    if (std::optional<std::string> t = reader.text("rope_scaling_params")) {
        params = nlohmann::json::parse(*t, nullptr, /*allow_exceptions=*/false);
        if (!params.is_object()) reader.malformed("rope_scaling_params", *t);
    }
    const auto param = [&](const char* name) -> std::optional<double> {
        if (!params.contains(name)) return std::nullopt;
        if (!params[name].is_number()) reader.malformed("rope_scaling_params", params.dump());
        return params[name].get<double>();
    };
    const bool scaled = options.rope.scaling != COMMVQ_ROPE_SCALING_NONE;
    struct Param {
        const char* flag;
        const char* key;
        const char* hf_name;
        const std::optional<double>& from_flag;
        double& target;
    };
    const Param rope_params[] = {
        {"--rope-factor", "rope factor", "factor", flags.rope_factor, options.rope.factor},
        {"--rope-low-freq-factor", "rope low_freq_factor", "low_freq_factor", flags.rope_low_freq_factor,
         options.rope.low_freq_factor},
        {"--rope-high-freq-factor", "rope high_freq_factor", "high_freq_factor", flags.rope_high_freq_factor,
         options.rope.high_freq_factor},
        {"--rope-original-max-position", "rope original_max_position", "original_max_position_embeddings",
         flags.rope_original_max_position, options.rope.original_max_position},
    };
    for (const Param& p : rope_params) {
        std::optional<double> from_file = param(p.hf_name);
        if (scaled || p.from_flag || from_file)
            settle(reader, p.flag, p.key, p.from_flag, from_file, p.target, show_number, same_number, notes, nullptr);
    }

    // Free text, not part of the fingerprint: a flag may name a variant.
    std::optional<std::string> model = reader.text("model");
    if (flags.model_name) {
        options.model_name = *flags.model_name;
        notes.push_back("model name " + options.model_name + " (command line" +
                        (model && *model != options.model_name ? "; the file records " + *model : std::string()) +
                        ")");
    } else if (model) {
        options.model_name = *model;
        notes.push_back("model name " + options.model_name + " (from the KV file)");
    }
    return notes;
}

}  // namespace train_tool
