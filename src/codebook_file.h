// Codebook files: safetensors with the model shape, bits, RoPE and format
// version in __metadata__ (docs/FORMATS.md).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "codebook.h"

namespace commvq {

constexpr uint32_t kCodebookFormatVersion = 1;

Codebook load_codebook(const std::string& path);
Codebook parse_codebook(const void* data, size_t size);
std::vector<uint8_t> serialize_codebook(const Codebook& cb);
void save_codebook(const Codebook& cb, const std::string& path);

}  // namespace commvq
