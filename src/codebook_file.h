// Codebook files: safetensors with the model shape, bits, RoPE and format
// version in __metadata__ (docs/FORMATS.md).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "codebook.h"

namespace commvq {

constexpr uint32_t kCodebookFormatVersion = 1;

// Reading accepts F32, F16 and BF16 tensors (any mix), widened exactly to
// float32 in memory; the fingerprint is that of the float32 values.
Codebook load_codebook(const std::string& path);
Codebook parse_codebook(const void* data, size_t size);

// Writing takes a storage dtype (COMMVQ_DTYPE_*): F32 keeps every value as
// it is. F16 and BF16 round the four matrices of a layer (key sub-centers,
// enc1 and enc2 weights, the value codebook E) to that type, to nearest
// even, and keep the five per-channel vectors (lambda, LayerNorm weight and
// bias, the encoder biases) in F32. The file's fingerprint is that of the
// values it holds, so it equals the in-memory codebook's for F32 storage
// (or for a codebook whose values the rounding leaves unchanged, such as
// one loaded from an F16 file) and otherwise identifies the rounded
// codebook, which is what loading the file gives. A value the dtype cannot
// hold (beyond 65504 in F16) is refused with COMMVQ_ERR_INVALID_ARGUMENT.
std::vector<uint8_t> serialize_codebook(const Codebook& cb, int32_t storage = COMMVQ_DTYPE_F32);
void save_codebook(const Codebook& cb, const std::string& path, int32_t storage = COMMVQ_DTYPE_F32);

// Whether tensor t of a layer (layer_tensor_specs order) is one of the
// matrices that F16/BF16 storage rounds.
bool codebook_tensor_rounded(size_t t);
// "F32", "F16" or "BF16"; COMMVQ_ERR_INVALID_ARGUMENT for anything else.
const char* codebook_storage_name(int32_t storage);

}  // namespace commvq
