// Editing a safetensors file's bytes in tests: its header as JSON and its
// data, and a file rebuilt from an edited header (for corruption cases).
#pragma once

#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

namespace commvq {
namespace test {

struct SafetensorsSplit {
    nlohmann::json header;
    std::vector<uint8_t> data;
};

// The 8-byte little-endian header length, the JSON header, the data.
SafetensorsSplit split_safetensors(const std::vector<uint8_t>& file);
std::vector<uint8_t> join_safetensors(const nlohmann::json& header, const std::vector<uint8_t>& data);

}  // namespace test
}  // namespace commvq
