// Bit packing of a compressed token: key stage codes of code_bits() (12 for
// C = 64) each, LSB first in a little-endian bit stream, head-major then
// stage; value code bits, bit i at byte i/8, position i%8.
#pragma once

#include <cstddef>
#include <cstdint>

namespace commvq {

inline size_t packed_bytes(size_t n_codes, uint32_t bits_per_code) {
    return (n_codes * bits_per_code + 7) / 8;
}

void pack_codes(const uint16_t* codes, size_t n_codes, uint32_t bits_per_code, uint8_t* out);
void unpack_codes(const uint8_t* packed, size_t n_codes, uint32_t bits_per_code, uint16_t* out);

}  // namespace commvq
