#include "code_packing.h"

#include <cstring>
#include <string>

#include "error.h"

namespace commvq {

namespace {

void require_width(uint32_t bits_per_code) {
    require(bits_per_code >= 1 && bits_per_code <= 16, COMMVQ_ERR_INTERNAL,
            [&] { return "code width " + std::to_string(bits_per_code) + " outside 1..16"; });
}

}  // namespace

// Code i occupies bits [i*b, i*b + b) of the stream, least significant bit
// first; bit k of the stream is bit k%8 of byte k/8. Trailing bits of the last
// byte are zero, so packed tokens compare equal byte for byte.
void pack_codes(const uint16_t* codes, size_t n_codes, uint32_t bits_per_code, uint8_t* out) {
    require_width(bits_per_code);
    std::memset(out, 0, packed_bytes(n_codes, bits_per_code));
    const uint32_t mask = (1u << bits_per_code) - 1u;
    size_t bit = 0;
    for (size_t i = 0; i < n_codes; ++i, bit += bits_per_code) {
        // A code of at most 16 bits starting at bit%8 spans at most 3 bytes.
        const uint32_t shifted = (uint32_t(codes[i]) & mask) << (bit % 8);
        uint8_t* at = out + bit / 8;
        const size_t span = (bit % 8 + bits_per_code + 7) / 8;
        for (size_t k = 0; k < span; ++k) at[k] |= uint8_t(shifted >> (8 * k));
    }
}

void unpack_codes(const uint8_t* packed, size_t n_codes, uint32_t bits_per_code, uint16_t* out) {
    require_width(bits_per_code);
    const uint32_t mask = (1u << bits_per_code) - 1u;
    size_t bit = 0;
    for (size_t i = 0; i < n_codes; ++i, bit += bits_per_code) {
        const uint8_t* at = packed + bit / 8;
        const size_t span = (bit % 8 + bits_per_code + 7) / 8;
        uint32_t word = 0;
        for (size_t k = 0; k < span; ++k) word |= uint32_t(at[k]) << (8 * k);
        out[i] = uint16_t((word >> (bit % 8)) & mask);
    }
}

}  // namespace commvq
