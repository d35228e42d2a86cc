#include "seq_file.h"

#include <algorithm>
#include <cstring>

#include "dtype.h"
#include "error.h"
#include "file_io.h"

namespace commvq {
namespace {

// Fixed part of the header, before the per-layer compressed counts.
constexpr size_t kFixedHeaderBytes = 56;
constexpr size_t kChecksumBytes = 8;
// More layers than any model has: a header claiming this many is damaged.
constexpr uint32_t kMaxLayers = 1u << 16;

class Writer {
public:
    explicit Writer(std::vector<uint8_t>& out) : out_(out) {}
    void u32(uint32_t x) { le(x, 4); }
    void i32(int32_t x) { le(uint32_t(x), 4); }
    void u64(uint64_t x) { le(x, 8); }
    void bytes(const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        out_.insert(out_.end(), b, b + n);
    }

private:
    void le(uint64_t x, int n) {
        for (int i = 0; i < n; ++i) out_.push_back(uint8_t(x >> (8 * i)));
    }
    std::vector<uint8_t>& out_;
};

class Reader {
public:
    Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
    uint32_t u32() { return uint32_t(le(4)); }
    int32_t i32() { return int32_t(uint32_t(le(4))); }
    uint64_t u64() { return le(8); }
    const uint8_t* bytes(size_t n) {
        const uint8_t* p = data_ + at_;
        at_ += n;
        return p;
    }

private:
    // Callers check the total size first; reading past it is a bug.
    uint64_t le(int n) {
        require(at_ + n <= size_, COMMVQ_ERR_INTERNAL, "sequence file: read past the end");
        uint64_t x = 0;
        for (int i = 0; i < n; ++i) x |= uint64_t(data_[at_ + i]) << (8 * i);
        at_ += n;
        return x;
    }
    const uint8_t* data_;
    size_t size_;
    size_t at_ = 0;
};

// a * b + c with overflow reported as a corrupt header.
uint64_t mul_add(uint64_t a, uint64_t b, uint64_t c) {
    require(b == 0 || a <= (UINT64_MAX - c) / b, COMMVQ_ERR_CORRUPT,
            "sequence file: sizes in the header overflow (corrupt header)");
    return a * b + c;
}

}  // namespace

uint64_t fnv1a64(const uint8_t* data, size_t size) {
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < size; ++i) {
        h ^= data[i];
        h *= 1099511628211ull;
    }
    return h;
}

std::vector<uint8_t> serialize_sequence(const SequenceImage& image) {
    std::vector<uint8_t> out;
    Writer w(out);
    w.bytes(kSeqFileMagic, sizeof kSeqFileMagic);
    w.u32(kSeqFileVersion);
    w.u32(image.n_layers);
    w.u64(image.fingerprint);
    w.u32(image.n_kv_heads);
    w.u32(image.head_dim);
    w.i32(image.io_dtype);
    w.i32(image.key_convention);
    w.u32(image.sink_tokens);
    w.u32(image.token_bytes);
    w.u64(image.length);
    for (uint32_t l = 0; l < image.n_layers; ++l) w.u64(image.compressed[l]);
    for (uint32_t l = 0; l < image.n_layers; ++l) w.bytes(image.codes[l].data(), image.codes[l].size());
    for (uint32_t l = 0; l < image.n_layers; ++l) {
        w.bytes(image.keys[l].data(), image.keys[l].size());
        w.bytes(image.values[l].data(), image.values[l].size());
    }
    w.u64(fnv1a64(out.data(), out.size()));
    return out;
}

namespace {

// The header of a file of `size` bytes, of which the first n are at data (n
// is at least the header's length, or all of a shorter file): every field
// checked and the size it implies equal to `size`. Leaves codes, keys and
// values empty.
SequenceImage parse_header(const uint8_t* data, size_t n, uint64_t size) {
    require(n >= sizeof kSeqFileMagic && std::memcmp(data, kSeqFileMagic, sizeof kSeqFileMagic) == 0,
            COMMVQ_ERR_FORMAT, "not a commvq sequence file (bad magic)");
    require(size >= kFixedHeaderBytes + kChecksumBytes, COMMVQ_ERR_CORRUPT, [&] {
        return "sequence file truncated: " + std::to_string(size) + " bytes, shorter than its header";
    });
    Reader r(data, n);
    r.bytes(sizeof kSeqFileMagic);
    const uint32_t version = r.u32();
    require(version == kSeqFileVersion, COMMVQ_ERR_FORMAT, [&] {
        return "sequence file format version " + std::to_string(version) +
               " is not supported (this library reads version " + std::to_string(kSeqFileVersion) + ")";
    });
    SequenceImage im;
    im.n_layers = r.u32();
    im.fingerprint = r.u64();
    im.n_kv_heads = r.u32();
    im.head_dim = r.u32();
    im.io_dtype = r.i32();
    im.key_convention = r.i32();
    im.sink_tokens = r.u32();
    im.token_bytes = r.u32();
    im.length = r.u64();
    require(im.n_layers <= kMaxLayers, COMMVQ_ERR_CORRUPT, [&] {
        return "sequence file header claims " + std::to_string(im.n_layers) + " layers (corrupt header)";
    });
    require(size >= sequence_file_overhead_bytes(im.n_layers), COMMVQ_ERR_CORRUPT, [&] {
        return "sequence file truncated: " + std::to_string(size) + " bytes, shorter than its header";
    });
    require(dtype_valid(im.io_dtype), COMMVQ_ERR_CORRUPT, "sequence file: unknown element type (corrupt header)");
    im.compressed.resize(im.n_layers);
    for (uint32_t l = 0; l < im.n_layers; ++l) im.compressed[l] = r.u64();

    // The size the header implies, computed without overflow.
    const uint64_t token_elements = mul_add(im.n_kv_heads, im.head_dim, 0);
    const uint64_t uncompressed_token_bytes = mul_add(token_elements, 2 * dtype_size(im.io_dtype), 0);
    uint64_t expected = sequence_file_overhead_bytes(im.n_layers);
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        require(im.compressed[l] <= im.length, COMMVQ_ERR_CORRUPT, [&] {
            return "sequence file: layer " + std::to_string(l) +
                   " has more compressed tokens than tokens (corrupt header)";
        });
        expected = mul_add(im.compressed[l], im.token_bytes, expected);
        expected = mul_add(im.length - im.compressed[l], uncompressed_token_bytes, expected);
    }
    require(size == expected, COMMVQ_ERR_CORRUPT, [&] {
        return "sequence file truncated or damaged: " + std::to_string(size) + " bytes, its header says " +
               std::to_string(expected);
    });
    return im;
}

}  // namespace

uint64_t sequence_file_overhead_bytes(uint32_t n_layers) {
    return kFixedHeaderBytes + 8ull * n_layers + kChecksumBytes;
}

SequenceImage parse_sequence(const uint8_t* data, size_t size) {
    SequenceImage im = parse_header(data, size, size);
    uint64_t stored = 0;
    for (int i = 0; i < 8; ++i) stored |= uint64_t(data[size - 8 + i]) << (8 * i);
#ifndef COMMVQ_FUZZING
    require(stored == fnv1a64(data, size - kChecksumBytes), COMMVQ_ERR_CORRUPT,
            "sequence file checksum mismatch: the file is corrupted");
#else
    (void)stored;  // fuzzing builds (COMMVQ_FUZZ): mutated files reach the checks below
#endif

    Reader r(data, size);
    r.bytes(sequence_file_overhead_bytes(im.n_layers) - kChecksumBytes);
    im.codes.resize(im.n_layers);
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        const size_t n = size_t(im.compressed[l]) * im.token_bytes;
        const uint8_t* p = r.bytes(n);
        im.codes[l].assign(p, p + n);
    }
    im.keys.resize(im.n_layers);
    im.values.resize(im.n_layers);
    const size_t half = size_t(im.n_kv_heads) * im.head_dim * dtype_size(im.io_dtype);
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        const size_t n = size_t(im.uncompressed(l)) * half;
        const uint8_t* k = r.bytes(n);
        im.keys[l].assign(k, k + n);
        const uint8_t* v = r.bytes(n);
        im.values[l].assign(v, v + n);
    }
    return im;
}

void write_sequence_file(const SequenceImage& image, const std::string& path) {
    const std::vector<uint8_t> bytes = serialize_sequence(image);
    write_file_atomically(path, bytes.data(), bytes.size());
}

SequenceFileReader::SequenceFileReader(const std::string& path) : file_(path) {
    // At most the longest possible header is read before the file's size
    // has been checked against it.
    const uint64_t longest = sequence_file_overhead_bytes(kMaxLayers);
    head_.resize(size_t(std::min(file_.size(), longest)));
    file_.read(head_.data(), head_.size());
    header_ = parse_header(head_.data(), head_.size(), file_.size());
}

SequenceImage SequenceFileReader::read() {
    std::vector<uint8_t> bytes(size_t(file_.size()));
    std::copy(head_.begin(), head_.end(), bytes.begin());
    file_.read(bytes.data() + head_.size(), bytes.size() - head_.size());
    return parse_sequence(bytes.data(), bytes.size());
}

}  // namespace commvq
