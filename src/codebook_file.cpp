#include "codebook_file.h"

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "error.h"
#include "safetensors.h"

namespace commvq {

namespace {

constexpr const char* kFormatName = "commvq-codebook";

[[noreturn]] void bad(const std::string& message) { throw Error(COMMVQ_ERR_FORMAT, "codebook file: " + message); }

const std::string& meta(const safetensors::File& f, const std::string& key) {
    auto it = f.metadata.find(key);
    if (it == f.metadata.end()) bad("metadata '" + key + "' is missing");
    return it->second;
}

uint32_t meta_u32(const safetensors::File& f, const std::string& key) {
    const std::string& s = meta(f, key);
    if (s.empty() || s.size() > 10 || s.find_first_not_of("0123456789") != std::string::npos)
        bad("metadata '" + key + "' = '" + s + "' is not an unsigned integer");
    const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
    if (v > UINT32_MAX) bad("metadata '" + key + "' = '" + s + "' is too large");
    return uint32_t(v);
}

double meta_double(const safetensors::File& f, const std::string& key) {
    const std::string& s = meta(f, key);
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE || !std::isfinite(v))
        bad("metadata '" + key + "' = '" + s + "' is not a finite number");
    return v;
}

int32_t meta_enum(const safetensors::File& f, const std::string& key,
                  std::initializer_list<std::pair<const char*, int32_t>> names) {
    const std::string& s = meta(f, key);
    std::string allowed;
    for (const auto& [name, value] : names) {
        if (s == name) return value;
        allowed += std::string(allowed.empty() ? "" : ", ") + name;
    }
    bad("metadata '" + key + "' = '" + s + "' is not one of " + allowed);
}

std::string fingerprint_hex(uint64_t fp) {
    char buf[20];
    std::snprintf(buf, sizeof buf, "%016" PRIx64, fp);
    return buf;
}

}  // namespace

Codebook parse_codebook(const void* data, size_t size) {
    const safetensors::File file = safetensors::parse(data, size);
    auto fmt = file.metadata.find("format");
    if (fmt == file.metadata.end() || fmt->second != kFormatName)
        bad("not a commvq codebook (metadata 'format' is not '" + std::string(kFormatName) + "')");
    const std::string& version = meta(file, "format_version");
    if (version != std::to_string(kCodebookFormatVersion))
        bad("format_version '" + version + "' is not supported (this library reads version " +
            std::to_string(kCodebookFormatVersion) + ")");

    Codebook cb;
    cb.n_layers = meta_u32(file, "n_layers");
    cb.n_kv_heads = meta_u32(file, "n_kv_heads");
    cb.n_q_heads = meta_u32(file, "n_q_heads");
    cb.head_dim = meta_u32(file, "head_dim");
    cb.key_stages = meta_u32(file, "key_stages");
    cb.sub_centers = meta_u32(file, "sub_centers");
    cb.value_bits = meta_u32(file, "value_bits");
    cb.value_hidden = meta_u32(file, "value_hidden");
    cb.pair_layout = meta_enum(file, "pair_layout",
                               {{"rotate_half", COMMVQ_PAIRS_ROTATE_HALF}, {"interleaved", COMMVQ_PAIRS_INTERLEAVED}});
    cb.scale_mode = meta_enum(file, "scale_mode", {{"token", COMMVQ_SCALE_TOKEN}, {"head", COMMVQ_SCALE_HEAD}});
    cb.rope.theta = meta_double(file, "rope_theta");
    cb.rope.scaling = meta_enum(file, "rope_scaling",
                                {{"none", COMMVQ_ROPE_SCALING_NONE},
                                 {"linear", COMMVQ_ROPE_SCALING_LINEAR},
                                 {"llama3", COMMVQ_ROPE_SCALING_LLAMA3}});
    cb.rope.factor = meta_double(file, "rope_factor");
    cb.rope.low_freq_factor = meta_double(file, "rope_low_freq_factor");
    cb.rope.high_freq_factor = meta_double(file, "rope_high_freq_factor");
    cb.rope.original_max_position = meta_double(file, "rope_original_max_position");
    auto model = file.metadata.find("model");
    if (model != file.metadata.end()) cb.model_name = model->second;
    // Bound the layer count before allocating per layer; finalize() checks the rest.
    if (cb.n_layers == 0 || cb.n_layers > file.tensors.size())
        bad("n_layers = " + std::to_string(cb.n_layers) + " does not match the " +
            std::to_string(file.tensors.size()) + " tensors in the file");

    cb.layers.resize(cb.n_layers);
    std::set<std::string> expected;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto specs = layer_tensor_specs(cb, l);
        const auto data = layer_tensor_data(cb.layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) {
            const safetensors::TensorView& view = file.tensor(specs[t].name);
            if (view.dtype != "F32") bad("tensor " + specs[t].name + " is " + view.dtype + ", expected F32");
            if (view.shape != specs[t].shape) {
                std::string got, want;
                for (uint64_t d : view.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
                for (uint64_t d : specs[t].shape) want += (want.empty() ? "" : ", ") + std::to_string(d);
                bad("tensor " + specs[t].name + " has shape [" + got + "], expected [" + want + "]");
            }
            *data[t] = view.to_float();
            expected.insert(specs[t].name);
        }
    }
    for (const auto& [name, view] : file.tensors)
        if (!expected.count(name)) bad("unexpected tensor '" + name + "'");

    cb.finalize();
    const std::string stored = meta(file, "fingerprint");
    const std::string computed = fingerprint_hex(cb.fingerprint);
    if (stored != computed)
        throw Error(COMMVQ_ERR_CORRUPT, "codebook file: fingerprint " + computed +
                                            " of the contents does not match the stored " + stored);
    return cb;
}

std::vector<uint8_t> serialize_codebook(const Codebook& cb) {
    // The writer copies whole tensors: their sizes must be the ones finalize() checked.
    require(cb.layers.size() == cb.n_layers, COMMVQ_ERR_INVALID_ARGUMENT, "codebook is not finalized");
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto specs = layer_tensor_specs(cb, l);
        const auto data = layer_tensor_data(cb.layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) {
            uint64_t n = 1;
            for (uint64_t d : specs[t].shape) n *= d;
            require(data[t]->size() == n, COMMVQ_ERR_INVALID_ARGUMENT,
                    "codebook is not finalized: tensor " + specs[t].name + " has the wrong size");
        }
    }
    safetensors::Writer w;
    w.set_metadata("format", kFormatName);
    w.set_metadata("format_version", std::to_string(kCodebookFormatVersion));
    for (const auto& [key, value] : codebook_shape_metadata(cb)) w.set_metadata(key, value);
    w.set_metadata("model", cb.model_name);
    w.set_metadata("fingerprint", fingerprint_hex(cb.fingerprint));
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto specs = layer_tensor_specs(cb, l);
        const auto data = layer_tensor_data(cb.layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) w.add_f32(specs[t].name, specs[t].shape, data[t]->data());
    }
    return w.serialize();
}

Codebook load_codebook(const std::string& path) {
    const std::vector<uint8_t> bytes = safetensors::read_file(path);
    return parse_codebook(bytes.data(), bytes.size());
}

void save_codebook(const Codebook& cb, const std::string& path) {
    safetensors::write_file(path, serialize_codebook(cb));
}

}  // namespace commvq
