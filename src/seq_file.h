// Sequence files (docs/FORMATS.md, "Sequence files"): one sequence of a
// cache, every layer, its codes and its uncompressed tokens, independent of
// the cache's block size and pool. This file reads and writes the bytes and
// checks that they are whole and well formed; whether a file fits a given
// cache is the cache's question (Cache::seq_load).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "file_io.h"

namespace commvq {

constexpr char kSeqFileMagic[8] = {'C', 'V', 'Q', 'S', 'E', 'Q', '\0', '\0'};
constexpr uint32_t kSeqFileVersion = 1;

struct SequenceImage {
    uint64_t fingerprint = 0;  // of the codebook the codes were made with
    uint32_t n_layers = 0;
    uint32_t n_kv_heads = 0;
    uint32_t head_dim = 0;
    int32_t io_dtype = 0;
    int32_t key_convention = 0;
    uint32_t sink_tokens = 0;
    uint32_t token_bytes = 0;  // one compressed token of one layer (packed token format)
    uint64_t length = 0;       // tokens of every layer (saved in step)
    std::vector<uint64_t> compressed;           // [n_layers]
    std::vector<std::vector<uint8_t>> codes;    // [n_layers][compressed * token_bytes]
    // [n_layers][(length - compressed) * n_kv_heads * head_dim * dtype size]:
    // the uncompressed tokens (sinks, then window) in position order.
    std::vector<std::vector<uint8_t>> keys;
    std::vector<std::vector<uint8_t>> values;

    uint64_t uncompressed(uint32_t layer) const { return length - compressed[layer]; }
};

// 64-bit FNV-1a, the file's checksum.
uint64_t fnv1a64(const uint8_t* data, size_t size);

std::vector<uint8_t> serialize_sequence(const SequenceImage& image);
// COMMVQ_ERR_FORMAT (not a sequence file, unknown version) or
// COMMVQ_ERR_CORRUPT (truncated, checksum, inconsistent sizes).
SequenceImage parse_sequence(const uint8_t* data, size_t size);
// Bytes of a file of n_layers layers besides its codes and tokens: the
// header and the checksum.
uint64_t sequence_file_overhead_bytes(uint32_t n_layers);

// Writes to a temporary file next to path and renames it over path, so a
// failed save never leaves a half-written file under the name.
void write_sequence_file(const SequenceImage& image, const std::string& path);

// A sequence file opened for loading. The constructor reads only the header
// and checks it, and that the file's size is the one the header implies
// (COMMVQ_ERR_FORMAT / CORRUPT), so a foreign, damaged or huge file is
// judged before its payload is read; a directory or anything but a regular
// file is COMMVQ_ERR_IO (file_io.h). read() then reads the rest and checks
// it as parse_sequence does.
class SequenceFileReader {
public:
    explicit SequenceFileReader(const std::string& path);
    // Every header field and the compressed counts; no codes or tokens.
    const SequenceImage& header() const { return header_; }
    uint64_t size() const { return file_.size(); }
    SequenceImage read();

private:
    InputFile file_;
    std::vector<uint8_t> head_;
    SequenceImage header_;
};

}  // namespace commvq
