#include "codebook_file.h"

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "dtype.h"
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
            if (view.dtype != "F32" && view.dtype != "F16" && view.dtype != "BF16")
                bad("tensor " + specs[t].name + " is " + view.dtype + "; codebook tensors are F32, F16 or BF16");
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

bool codebook_tensor_rounded(size_t t) {
    // layer_tensor_specs order: sub_centers, lambda, norm.weight, norm.bias,
    // enc1.weight, enc1.bias, enc2.weight, enc2.bias, codebook.
    return t == 0 || t == 4 || t == 6 || t == 8;
}

const char* codebook_storage_name(int32_t storage) {
    switch (storage) {
        case COMMVQ_DTYPE_F32: return "F32";
        case COMMVQ_DTYPE_F16: return "F16";
        case COMMVQ_DTYPE_BF16: return "BF16";
        default:
            throw Error(COMMVQ_ERR_INVALID_ARGUMENT, "codebook storage dtype " + std::to_string(storage) +
                                                         " is not COMMVQ_DTYPE_F32, _F16 or _BF16");
    }
}

std::vector<uint8_t> serialize_codebook(const Codebook& cb, int32_t storage) {
    const char* storage_name = codebook_storage_name(storage);
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
    require(is_valid_utf8(cb.model_name), COMMVQ_ERR_INVALID_ARGUMENT,
            "codebook: the model name is not valid UTF-8 (a codebook file's header is JSON)");
    safetensors::Writer w;
    // The fingerprint of the values the file holds: for rounded tensors,
    // the stored halves widened back to float32, exactly as a reader sees them.
    CodebookFingerprint hash(cb);
    std::vector<uint16_t> half;
    std::vector<float> widened;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const auto specs = layer_tensor_specs(cb, l);
        const auto data = layer_tensor_data(cb.layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) {
            const std::vector<float>& x = *data[t];
            if (storage == COMMVQ_DTYPE_F32 || !codebook_tensor_rounded(t)) {
                w.add_f32(specs[t].name, specs[t].shape, x.data());
                hash.add(x.data(), x.size());
                continue;
            }
            half.resize(x.size());
            widened.resize(x.size());
            from_float(x.data(), x.size(), storage, half.data());
            to_float(half.data(), storage, x.size(), widened.data());
            for (size_t i = 0; i < x.size(); ++i)
                if (!std::isfinite(widened[i])) {
                    char value[32];
                    std::snprintf(value, sizeof value, "%.9g", double(x[i]));
                    throw Error(COMMVQ_ERR_INVALID_ARGUMENT,
                                std::string("codebook: cannot store tensor ") + specs[t].name + " as " + storage_name +
                                    ": element " + std::to_string(i) + " = " + value +
                                    " is beyond its range (store it as F32" +
                                    (storage == COMMVQ_DTYPE_F16 ? " or BF16)" : ")"));
                }
            std::vector<uint8_t> bytes(x.size() * 2);
            if (!bytes.empty()) std::memcpy(bytes.data(), half.data(), bytes.size());
            w.add_bytes(specs[t].name, storage_name, specs[t].shape, std::move(bytes));
            hash.add(widened.data(), widened.size());
        }
    }
    w.set_metadata("format", kFormatName);
    w.set_metadata("format_version", std::to_string(kCodebookFormatVersion));
    for (const auto& [key, value] : codebook_shape_metadata(cb)) w.set_metadata(key, value);
    w.set_metadata("model", cb.model_name);
    w.set_metadata("fingerprint", fingerprint_hex(hash.value()));
    return w.serialize();
}

Codebook load_codebook(const std::string& path) {
    const std::vector<uint8_t> bytes = safetensors::read_file(path);
    return parse_codebook(bytes.data(), bytes.size());
}

void save_codebook(const Codebook& cb, const std::string& path, int32_t storage) {
    safetensors::write_file(path, serialize_codebook(cb, storage));
}

}  // namespace commvq
