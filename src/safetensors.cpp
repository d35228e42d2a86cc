#include "safetensors.h"

#include <algorithm>
#include <cstdio>
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

// The fields of one tensor entry as the header gives them.
struct Entry {
    std::string dtype;
    std::vector<uint64_t> shape, offsets;
    bool has_dtype = false, has_shape = false, has_offsets = false;
};

TensorView make_view(const std::string& name, Entry& entry, const uint8_t* data, uint64_t data_size) {
    for (auto [present, field] : {std::pair<bool, const char*>{entry.has_dtype, "dtype"},
                                  {entry.has_shape, "shape"},
                                  {entry.has_offsets, "data_offsets"}})
        if (!present) format_error("tensor '" + name + "' has no " + field);
    TensorView view;
    view.dtype = std::move(entry.dtype);
    const size_t esize = element_size(view.dtype);
    if (esize == 0) format_error("tensor '" + name + "' has unknown dtype '" + view.dtype + "'");
    view.shape = std::move(entry.shape);
    uint64_t numel = 1;
    bool overflow = false;
    for (uint64_t n : view.shape) {
        if (n != 0 && numel > std::numeric_limits<uint64_t>::max() / n) overflow = true;
        numel *= n;
    }
    const uint64_t begin = entry.offsets[0], end = entry.offsets[1];
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

// Reads the header as a stream of JSON events straight into a File: no
// JSON document is ever built. (A document's destructor allocates, inside a
// noexcept destructor: out of memory while one is unwound would end the
// process.) The shape the header must have:
//   { "__metadata__": { key: string, ... },
//     name: { "dtype": string, "shape": [uint, ...], "data_offsets": [uint, uint], other: any }, ... }
// A key given twice is refused (a reader must not pick one silently).
class HeaderReader {
public:
    HeaderReader(const uint8_t* payload, uint64_t payload_size, File& file)
        : payload_(payload), payload_size_(payload_size), file_(file) {}

    using number_integer_t = nlohmann::json::number_integer_t;
    using number_unsigned_t = nlohmann::json::number_unsigned_t;
    using number_float_t = nlohmann::json::number_float_t;
    using string_t = nlohmann::json::string_t;
    using binary_t = nlohmann::json::binary_t;

    bool null() { return value(Kind::other); }
    bool boolean(bool) { return value(Kind::other); }
    bool number_integer(number_integer_t) { return value(Kind::other); }  // negative: the parser reports others as unsigned
    bool number_unsigned(number_unsigned_t x) { return value(Kind::unsigned_integer, x); }
    bool number_float(number_float_t, const string_t&) { return value(Kind::other); }
    bool string(string_t& s) { return value(Kind::string, 0, &s); }
    bool binary(binary_t&) { return value(Kind::other); }
    bool start_object(size_t) { return value(Kind::container); }
    bool start_array(size_t) { return value(Kind::array); }
    bool end_object() { return close(); }
    bool end_array() { return close(); }
    bool key(string_t& k) {
        if (skip_ == 0) (mode_ == Mode::root ? name_ : field_) = std::move(k);
        return true;
    }
    bool parse_error(size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

private:
    enum class Kind { other, unsigned_integer, string, container, array };
    enum class Mode { start, root, metadata, entry, shape, offsets, done };

    bool value(Kind kind, uint64_t number = 0, std::string* text = nullptr) {
        const bool opens = kind == Kind::container || kind == Kind::array;
        if (skip_ > 0) {  // inside a field this reader does not use
            skip_ += opens;
            return true;
        }
        switch (mode_) {
        case Mode::start:
            if (kind != Kind::container) format_error("header is not a JSON object");
            mode_ = Mode::root;
            return true;
        case Mode::root:
            if (name_ == "__metadata__") {
                if (kind != Kind::container) format_error("__metadata__ is not an object");
                if (seen_metadata_) format_error("__metadata__ is given twice");
                seen_metadata_ = true;
                mode_ = Mode::metadata;
                return true;
            }
            if (kind != Kind::container) format_error("entry of tensor '" + name_ + "' is not an object");
            if (file_.tensors.count(name_)) format_error("tensor '" + name_ + "' is given twice");
            entry_ = Entry{};
            mode_ = Mode::entry;
            return true;
        case Mode::metadata:
            if (kind != Kind::string) format_error("metadata '" + field_ + "' is not a string");
            if (!file_.metadata.emplace(field_, std::move(*text)).second)
                format_error("metadata '" + field_ + "' is given twice");
            return true;
        case Mode::entry:
            return entry_field(kind, text);
        case Mode::shape:
            if (kind != Kind::unsigned_integer)
                format_error("a dimension of tensor '" + name_ + "' is not a non-negative integer");
            entry_.shape.push_back(number);
            return true;
        case Mode::offsets:
            if (kind != Kind::unsigned_integer || entry_.offsets.size() == 2)
                format_error("data_offsets of tensor '" + name_ + "' is not [begin, end] of non-negative integers");
            entry_.offsets.push_back(number);
            return true;
        case Mode::done:
            break;
        }
        format_error("header has data after its object");
    }

    bool entry_field(Kind kind, std::string* text) {
        const auto once = [&](bool& seen) {
            if (seen) format_error("tensor '" + name_ + "' gives '" + field_ + "' twice");
            seen = true;
        };
        if (field_ == "dtype") {
            once(entry_.has_dtype);
            if (kind != Kind::string) format_error("dtype of tensor '" + name_ + "' is not a string");
            entry_.dtype = std::move(*text);
        } else if (field_ == "shape") {
            once(entry_.has_shape);
            if (kind != Kind::array) format_error("shape of tensor '" + name_ + "' is not an array");
            mode_ = Mode::shape;
        } else if (field_ == "data_offsets") {
            once(entry_.has_offsets);
            if (kind != Kind::array)
                format_error("data_offsets of tensor '" + name_ + "' is not [begin, end] of non-negative integers");
            mode_ = Mode::offsets;
        } else if (kind == Kind::container || kind == Kind::array) {
            skip_ = 1;
        }
        return true;
    }

    bool close() {
        if (skip_ > 0) {
            --skip_;
            return true;
        }
        switch (mode_) {
        case Mode::shape:
            mode_ = Mode::entry;
            break;
        case Mode::offsets:
            if (entry_.offsets.size() != 2)
                format_error("data_offsets of tensor '" + name_ + "' is not [begin, end] of non-negative integers");
            mode_ = Mode::entry;
            break;
        case Mode::entry:
            file_.tensors.emplace(name_, make_view(name_, entry_, payload_, payload_size_));
            mode_ = Mode::root;
            break;
        case Mode::metadata:
            mode_ = Mode::root;
            break;
        default:
            mode_ = Mode::done;
        }
        return true;
    }

    const uint8_t* payload_;
    uint64_t payload_size_;
    File& file_;
    Mode mode_ = Mode::start;
    unsigned long long skip_ = 0;  // depth inside an unused field's value
    bool seen_metadata_ = false;
    std::string name_;   // the current root key: a tensor name or __metadata__
    std::string field_;  // the current key inside it
    Entry entry_;
};

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
    const uint8_t* header = bytes + 8;
    File file;
    const uint8_t* payload = bytes + 8 + header_len;
    HeaderReader reader(payload, size - 8 - header_len, file);
    if (!nlohmann::json::sax_parse(header, header + header_len, &reader)) format_error("header is not valid JSON");
    std::vector<std::pair<uint64_t, std::string>> extents;  // (begin, name), for the overlap check
    for (const auto& [name, view] : file.tensors)
        if (view.bytes > 0) extents.emplace_back(uint64_t(view.data - payload), name);
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

namespace {

// JSON text of a string, escaped as JSON requires (and as nlohmann's dump
// writes it, so files keep their bytes); the text is UTF-8 already.
void append_json_string(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (c < 0x20) {
                char escaped[8];
                std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
                out += escaped;
            } else {
                out += char(c);
            }
        }
    }
    out += '"';
}

}  // namespace

// The header is written as text directly: a JSON document would allocate in
// its destructor, inside a noexcept destructor (see HeaderReader).
std::vector<uint8_t> Writer::serialize() const {
    std::string text = "{";
    if (!metadata_.empty()) {
        text += "\"__metadata__\":{";
        for (auto it = metadata_.begin(); it != metadata_.end(); ++it) {
            if (it != metadata_.begin()) text += ',';
            append_json_string(text, it->first);
            text += ':';
            append_json_string(text, it->second);
        }
        text += '}';
    }
    uint64_t offset = 0;
    for (const Entry& e : entries_) {
        if (text.size() > 1) text += ',';
        append_json_string(text, e.name);
        text += ":{\"dtype\":";
        append_json_string(text, e.dtype);
        text += ",\"shape\":[";
        for (size_t i = 0; i < e.shape.size(); ++i) text += (i ? "," : "") + std::to_string(e.shape[i]);
        text += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + e.bytes.size()) + "]}";
        offset += e.bytes.size();
    }
    text += '}';
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
