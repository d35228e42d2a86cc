// The tiled encoders (what append uses) against one-token encoding: the
// same codes, scales, bits and weights, bit for bit, for tile counts that
// fill a tile, leave a tail, and span several tiles.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "key_encoder.h"
#include "random_codebook.h"
#include "value_encoder.h"

using commvq::test::random_codebook;

namespace {

void check_tiles(const commvq::Codebook& cb, uint64_t seed) {
    commvq::test::Rng rng(seed);
    const uint32_t dim = cb.value_dim(), hkv = cb.n_kv_heads, stages = cb.key_stages;
    const uint32_t n_scales = cb.n_key_scales(), value_bytes = cb.value_code_bits() / 8;
    const commvq::KeyEncoder keys(cb, 0);
    const commvq::ValueEncoder values(cb, 0);
    for (uint32_t n : {1u, 3u, 4u, 8u, 13u}) {
        CAPTURE(n);
        const std::vector<float> k = rng.normals(size_t(n) * dim);
        const std::vector<float> v = rng.normals(size_t(n) * dim);

        std::vector<uint16_t> codes_one(size_t(n) * hkv * stages), codes_tile(codes_one.size(), 0xffff);
        std::vector<float> scales_one(size_t(n) * n_scales), scales_tile(scales_one.size(), NAN);
        for (uint32_t t = 0; t < n; ++t)
            keys.encode(&k[size_t(t) * dim], &codes_one[size_t(t) * hkv * stages], &scales_one[size_t(t) * n_scales]);
        commvq::KeyEncoder::Scratch key_scratch(cb);
        keys.encode_tile(n, k.data(), dim, codes_tile.data(), size_t(hkv) * stages, scales_tile.data(), n_scales,
                         key_scratch);
        CHECK(codes_tile == codes_one);
        CHECK(std::memcmp(scales_tile.data(), scales_one.data(), scales_one.size() * 4) == 0);

        std::vector<uint8_t> bits_one(size_t(n) * value_bytes), bits_tile(bits_one.size(), 0xa5);
        std::vector<float> w_one(n), w_tile(n, NAN);
        std::vector<float> scratch(commvq::ValueEncoder::kTile * values.scratch_floats());
        for (uint32_t t = 0; t < n; ++t)
            values.encode(&v[size_t(t) * dim], &bits_one[size_t(t) * value_bytes], &w_one[t], scratch.data());
        values.encode_tile(n, v.data(), dim, bits_tile.data(), value_bytes, w_tile.data(), 1, scratch.data());
        CHECK(bits_tile == bits_one);
        CHECK(std::memcmp(w_tile.data(), w_one.data(), size_t(n) * 4) == 0);
    }
}

}  // namespace

TEST_CASE("tiled encoders equal one-token encoding, 1-bit, token scale") {
    check_tiles(random_codebook(1, 2, 4, 64, 1, COMMVQ_PAIRS_ROTATE_HALF, COMMVQ_SCALE_TOKEN, 11), 21);
}

TEST_CASE("tiled encoders equal one-token encoding, 2-bit, head scale, interleaved pairs") {
    check_tiles(random_codebook(1, 2, 2, 128, 2, COMMVQ_PAIRS_INTERLEAVED, COMMVQ_SCALE_HEAD, 12), 22);
}
