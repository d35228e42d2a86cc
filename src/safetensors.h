// A small reader and writer for safetensors files: an 8-byte little-endian
// header length N, N bytes of JSON header (tensor name -> {dtype, shape,
// data_offsets [begin, end) relative to the end of the header}, plus an
// optional "__metadata__" object of strings), then the raw little-endian
// tensor bytes. Codebook files, the test fixture, the trainer and the tools
// all go through this one reader.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace commvq {
namespace safetensors {

// One tensor of a parsed file. `data` points into the buffer that was parsed
// (not necessarily aligned); the view is valid as long as that buffer is.
struct TensorView {
    std::string dtype;  // "F32", "F16", "BF16", ... as written in the header
    std::vector<uint64_t> shape;
    const uint8_t* data = nullptr;
    size_t bytes = 0;

    uint64_t numel() const;
    // The elements as float32; F32, F16 and BF16 only (COMMVQ_ERR_FORMAT otherwise).
    std::vector<float> to_float() const;
};

struct File {
    std::map<std::string, std::string> metadata;
    std::map<std::string, TensorView> tensors;

    // The tensor, or COMMVQ_ERR_FORMAT naming it when it is absent.
    const TensorView& tensor(const std::string& name) const;
};

// Parses a whole file held in memory. Never reads outside [data, data+size):
// a truncated file, a header length beyond the file or data offsets outside
// the data region or overlapping throw Error(COMMVQ_ERR_CORRUPT); malformed
// JSON, a non-string metadata value, an unknown dtype or a byte count that
// disagrees with dtype and shape throw Error(COMMVQ_ERR_FORMAT).
File parse(const void* data, size_t size);

// Reads a whole regular file into memory; Error(COMMVQ_ERR_IO) naming it if
// it cannot, or if it is a directory, a FIFO or a device (file_io.h).
std::vector<uint8_t> read_file(const std::string& path);
// Writes bytes to path through a temporary name of its own, then renamed
// (file_io.h): a failed write never leaves a half-written file under the
// final name, and concurrent writers of one path do not collide.
void write_file(const std::string& path, const std::vector<uint8_t>& bytes);

// Builds a file: tensors are laid out in the order they are added, and the
// header is padded with spaces so the data starts 8-byte aligned.
class Writer {
public:
    void set_metadata(const std::string& key, const std::string& value);
    void add_f32(const std::string& name, const std::vector<uint64_t>& shape, const float* values);
    void add_f16(const std::string& name, const std::vector<uint64_t>& shape, const float* values);
    // A tensor already in its stored form: bytes must hold exactly the
    // shape's element count times the dtype's size.
    void add_bytes(const std::string& name, const std::string& dtype, const std::vector<uint64_t>& shape,
                   std::vector<uint8_t> bytes);
    std::vector<uint8_t> serialize() const;

private:
    struct Entry {
        std::string name;
        std::string dtype;
        std::vector<uint64_t> shape;
        std::vector<uint8_t> bytes;
    };
    void add(const std::string& name, const std::string& dtype, const std::vector<uint64_t>& shape,
             std::vector<uint8_t> bytes);
    std::map<std::string, std::string> metadata_;
    std::vector<Entry> entries_;
};

}  // namespace safetensors
}  // namespace commvq
