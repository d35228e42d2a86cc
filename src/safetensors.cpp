#include "safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "dtype.h"
#include "error.h"
#include "file_io.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as is"
#endif

namespace commvq {
namespace safetensors {

namespace {

// The header limit of the reference implementation: a corrupt length must not
// make us allocate or scan gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

size_t element_size(const std::string& dtype) {
    if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
    if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
    if (dtype == "I8" || dtype == "U8" || dtype == "BOOL" || dtype == "F8_E4M3" || dtype == "F8_E5M2")
        return 1;
    return 0;
}

[[noreturn]] void format_error(const std::string& message) {
    throw Error(COMMVQ_ERR_FORMAT, "safetensors: " + message);
}

[[noreturn]] void corrupt(const std::string& message) {
    throw Error(COMMVQ_ERR_CORRUPT, "safetensors: " + message);
}

uint64_t read_u64_le(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

uint64_t json_u64(const nlohmann::json& j, const std::string& what) {
    if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0))
        format_error(what + " is not a non-negative integer");
    return j.get<uint64_t>();
}

TensorView parse_entry(const std::string& name, const nlohmann::json& entry, const uint8_t* data,
                       uint64_t data_size) {
    if (!entry.is_object()) format_error("entry of tensor '" + name + "' is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
        if (!entry.contains(key)) format_error("tensor '" + name + "' has no " + key);
    if (!entry["dtype"].is_string()) format_error("dtype of tensor '" + name + "' is not a string");
    TensorView view;
    view.dtype = entry["dtype"].get<std::string>();
    const size_t esize = element_size(view.dtype);
    if (esize == 0) format_error("tensor '" + name + "' has unknown dtype '" + view.dtype + "'");
    const auto& shape = entry["shape"];
    if (!shape.is_array()) format_error("shape of tensor '" + name + "' is not an array");
    uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : shape) {
        const uint64_t n = json_u64(dim, "a dimension of tensor '" + name + "'");
        view.shape.push_back(n);
        if (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n) overflow = true;
        numel *= n;
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2)
        format_error("data_offsets of tensor '" + name + "' is not [begin, end]");
    const uint64_t begin = json_u64(offsets[0], "data_offsets of '" + name + "'");
    const uint64_t end = json_u64(offsets[1], "data_offsets of '" + name + "'");
    if (begin > end) corrupt("tensor '" + name + "' has data_offsets with begin > end");
    if (end > data_size)
        corrupt("tensor '" + name + "' ends at byte " + std::to_string(end) + " of a data region of " +
                std::to_string(data_size) + " bytes (truncated file?)");
    if (overflow || numel > (end - begin) / esize || numel * esize != end - begin)
        format_error("tensor '" + name + "' holds " + std::to_string(end - begin) +
                     " bytes, which does not match its dtype and shape");
    view.data = data + begin;
    view.bytes = size_t(end - begin);
    return view;
}

}  // namespace

uint64_t TensorView::numel() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
}

std::vector<float> TensorView::to_float() const {
    int32_t dt;
    if (dtype == "F32") dt = COMMVQ_DTYPE_F32;
    else if (dtype == "F16") dt = COMMVQ_DTYPE_F16;
    else if (dtype == "BF16") dt = COMMVQ_DTYPE_BF16;
    else format_error("cannot read dtype '" + dtype + "' as float");
    const size_t n = size_t(numel());
    std::vector<float> out(n);
    if (dt == COMMVQ_DTYPE_F32) {
        if (n) std::memcpy(out.data(), data, n * 4);
        return out;
    }
    // f16/bf16 data may be unaligned: go through a copy.
    std::vector<uint16_t> raw(n);
    if (n) std::memcpy(raw.data(), data, n * 2);
    commvq::to_float(raw.data(), dt, n, out.data());
    return out;
}

const TensorView& File::tensor(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) format_error("missing tensor '" + name + "'");
    return it->second;
}

File parse(const void* data, size_t size) {
    const auto* bytes = static_cast<const uint8_t*>(data);
    if (size < 8) corrupt("file of " + std::to_string(size) + " bytes is shorter than the 8-byte header length");
    const uint64_t header_len = read_u64_le(bytes);
    if (header_len > size - 8)
        corrupt("header length " + std::to_string(header_len) + " runs past the end of a " +
                std::to_string(size) + "-byte file (truncated, or not a safetensors file)");
    if (header_len > kMaxHeaderBytes) format_error("header length " + std::to_string(header_len) + " is too large");
    const char* header = reinterpret_cast<const char*>(bytes + 8);
    nlohmann::json j = nlohmann::json::parse(header, header + header_len, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) format_error("header is not valid JSON");
    if (!j.is_object()) format_error("header is not a JSON object");

    File file;
    const uint8_t* payload = bytes + 8 + header_len;
    const uint64_t payload_size = size - 8 - header_len;
    std::vector<std::pair<uint64_t, std::string>> extents;  // (begin, name), for the overlap check
    for (auto it = j.begin(); it != j.end(); ++it) {
        if (it.key() == "__metadata__") {
            if (!it.value().is_object()) format_error("__metadata__ is not an object");
            for (auto m = it.value().begin(); m != it.value().end(); ++m) {
                if (!m.value().is_string()) format_error("metadata '" + m.key() + "' is not a string");
                file.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        TensorView view = parse_entry(it.key(), it.value(), payload, payload_size);
        if (view.bytes > 0) extents.emplace_back(uint64_t(view.data - payload), it.key());
        file.tensors.emplace(it.key(), std::move(view));
    }
    std::sort(extents.begin(), extents.end());
    for (size_t i = 1; i < extents.size(); ++i) {
        const TensorView& prev = file.tensors.at(extents[i - 1].second);
        if (extents[i - 1].first + prev.bytes > extents[i].first)
            corrupt("tensors '" + extents[i - 1].second + "' and '" + extents[i].second + "' overlap");
    }
    return file;
}

std::vector<uint8_t> read_file(const std::string& path) {
    InputFile file(path);
    require(file.size() <= std::numeric_limits<size_t>::max(), COMMVQ_ERR_OUT_OF_MEMORY,
            [&] { return "'" + path + "' is larger than this machine can address"; });
    std::vector<uint8_t> bytes(size_t(file.size()));
    file.read(bytes.data(), bytes.size());
    return bytes;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
    write_file_atomically(path, bytes.data(), bytes.size());
}

void Writer::set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

void Writer::add(const std::string& name, const std::string& dtype, const std::vector<uint64_t>& shape,
                 std::vector<uint8_t> bytes) {
    require(name != "__metadata__", COMMVQ_ERR_INVALID_ARGUMENT, "'__metadata__' is not a tensor name");
    for (const Entry& e : entries_)
        require(e.name != name, COMMVQ_ERR_INVALID_ARGUMENT, "tensor '" + name + "' added twice");
    entries_.push_back(Entry{name, dtype, shape, std::move(bytes)});
}

void Writer::add_f32(const std::string& name, const std::vector<uint64_t>& shape, const float* values) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * 4);
    if (n) std::memcpy(bytes.data(), values, bytes.size());
    add(name, "F32", shape, std::move(bytes));
}

void Writer::add_f16(const std::string& name, const std::vector<uint64_t>& shape, const float* values) {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    std::vector<uint16_t> half(static_cast<size_t>(n));
    from_float(values, size_t(n), COMMVQ_DTYPE_F16, half.data());
    std::vector<uint8_t> bytes(static_cast<size_t>(n) * 2);
    if (n) std::memcpy(bytes.data(), half.data(), bytes.size());
    add(name, "F16", shape, std::move(bytes));
}

void Writer::add_bytes(const std::string& name, const std::string& dtype, const std::vector<uint64_t>& shape,
                       std::vector<uint8_t> bytes) {
    const size_t esize = element_size(dtype);
    require(esize != 0, COMMVQ_ERR_INVALID_ARGUMENT, "unknown dtype '" + dtype + "'");
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    require(n * esize == bytes.size(), COMMVQ_ERR_INVALID_ARGUMENT,
            "tensor '" + name + "': " + std::to_string(bytes.size()) + " bytes for " + std::to_string(n) + " " +
                dtype + " elements");
    add(name, dtype, shape, std::move(bytes));
}

std::vector<uint8_t> Writer::serialize() const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    uint64_t offset = 0;
    for (const Entry& e : entries_) {
        header[e.name] = {{"dtype", e.dtype},
                          {"shape", e.shape},
                          {"data_offsets", {offset, offset + e.bytes.size()}}};
        offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<uint8_t> out(8 + text.size() + offset);
    for (int i = 0; i < 8; ++i) out[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
    std::memcpy(out.data() + 8, text.data(), text.size());
    uint8_t* at = out.data() + 8 + text.size();
    for (const Entry& e : entries_) {
        if (!e.bytes.empty()) std::memcpy(at, e.bytes.data(), e.bytes.size());
        at += e.bytes.size();
    }
    return out;
}

}  // namespace safetensors
}  // namespace commvq
