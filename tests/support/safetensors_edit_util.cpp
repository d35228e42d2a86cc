#include "safetensors_edit.h"

#include <string>

namespace commvq {
namespace test {

SafetensorsSplit split_safetensors(const std::vector<uint8_t>& file) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];
    SafetensorsSplit s;
    s.header = nlohmann::json::parse(file.begin() + 8, file.begin() + 8 + long(n));
    s.data.assign(file.begin() + 8 + long(n), file.end());
    return s;
}

std::vector<uint8_t> join_safetensors(const nlohmann::json& header, const std::vector<uint8_t>& data) {
    const std::string text = header.dump();
    std::vector<uint8_t> out(8);
    for (int i = 0; i < 8; ++i) out[i] = uint8_t(uint64_t(text.size()) >> (8 * i));
    out.insert(out.end(), text.begin(), text.end());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

}  // namespace test
}  // namespace commvq
