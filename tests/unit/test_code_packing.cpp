#include <doctest/doctest.h>

#include <vector>

#include "code_packing.h"
#include "random_codebook.h"

using namespace commvq;

TEST_CASE("code packing: random codes round-trip at 12 bits and other widths") {
    test::Rng rng(9);
    for (uint32_t bits : {12u, 1u, 7u, 8u, 13u, 16u})
        for (size_t n : {size_t(0), size_t(1), size_t(2), size_t(3), size_t(22), size_t(168), size_t(1001)}) {
            std::vector<uint16_t> codes(n);
            for (auto& c : codes) c = uint16_t(rng.next() & ((1u << bits) - 1));
            std::vector<uint8_t> packed(packed_bytes(n, bits) + 1, 0xcd);  // one guard byte
            pack_codes(codes.data(), n, bits, packed.data());
            CHECK(packed.back() == 0xcd);
            std::vector<uint16_t> back(n, 0xffff);
            unpack_codes(packed.data(), n, bits, back.data());
            CAPTURE(bits);
            CAPTURE(n);
            CHECK(back == codes);
        }
}

TEST_CASE("code packing: 12-bit layout is LSB first, little-endian") {
    const uint16_t codes[3] = {0xabc, 0x123, 0xfff};
    uint8_t packed[5];
    pack_codes(codes, 3, 12, packed);
    // bits 0..11 = 0xabc, 12..23 = 0x123, 24..35 = 0xfff, 36..39 = 0
    CHECK(packed[0] == 0xbc);
    CHECK(packed[1] == 0x3a);
    CHECK(packed[2] == 0x12);
    CHECK(packed[3] == 0xff);
    CHECK(packed[4] == 0x0f);
    CHECK(packed_bytes(2 * 11, 12) == 33);
}
