#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "dtype.h"
#include "error.h"
#include "random_codebook.h"

using namespace commvq;

namespace {

float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// float64 reference: the representable value of the target format nearest
// to x, ties to the one with an even mantissa, found by search over the
// format's own decoding (which is exact). Works for finite x.
uint16_t nearest_even(float x, float (*decode)(uint16_t)) {
    uint16_t best = 0;
    double best_err = INFINITY;
    const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
    for (uint32_t m = 0; m < 0x8000; ++m) {
        const float v = decode(uint16_t(m));
        if (!std::isfinite(v)) continue;
        const double err = std::abs(std::abs(double(x)) - double(v));
        if (err < best_err || (err == best_err && (m & 1) == 0)) {
            best_err = err;
            best = uint16_t(m);
        }
    }
    return uint16_t(best | sign);
}

}  // namespace

TEST_CASE("dtype: f16 decodes every bit pattern exactly and round-trips") {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = half_to_float(uint16_t(h));
        const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        const double sign = (h & 0x8000) ? -1 : 1;
        if (e == 0x1f) {
            REQUIRE((m == 0 ? std::isinf(f) : std::isnan(f)));
            continue;
        }
        const double expected = e == 0 ? sign * m * std::ldexp(1.0, -24) : sign * (1024 + m) * std::ldexp(1.0, int(e) - 25);
        REQUIRE(double(f) == expected);
        REQUIRE(float_to_half(f) == h);  // every half is a float: exact round trip
    }
}

TEST_CASE("dtype: float -> f16 rounds to nearest even, overflows to Inf, keeps NaN") {
    test::Rng rng(3);
    for (int i = 0; i < 300; ++i) {
        // values spread over the whole half range, subnormals included
        const float x = float(rng.uniform(-1, 1) * std::ldexp(1.0, int(rng.uniform(-26, 16))));
        CAPTURE(x);
        REQUIRE(float_to_half(x) == nearest_even(x, half_to_float));
    }
    // Exact midpoints: 1 + 2^-11 lies between 1 and 1 + 2^-10 -> even (1).
    CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
    CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
    CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);         // half the smallest subnormal: to even 0
    CHECK(float_to_half(3 * std::ldexp(1.0f, -25)) == 0x0002);     // 1.5 ulps: to even 2
    CHECK(float_to_half(65504.0f) == 0x7bff);
    CHECK(float_to_half(65519.0f) == 0x7bff);
    CHECK(float_to_half(65520.0f) == 0x7c00);
    CHECK(float_to_half(-1e10f) == 0xfc00);
    CHECK(float_to_half(INFINITY) == 0x7c00);
    CHECK(float_to_half(-0.0f) == 0x8000);
    CHECK(std::isnan(half_to_float(float_to_half(NAN))));
    CHECK(std::isnan(half_to_float(float_to_half(from_bits(0x7f800001u)))));  // tiny payload stays NaN
}

TEST_CASE("dtype: bf16 rounds to nearest even, keeps Inf and NaN") {
    test::Rng rng(4);
    for (int i = 0; i < 300; ++i) {
        const float x = float(rng.uniform(-1, 1) * std::ldexp(1.0, int(rng.uniform(-130, 120))));
        CAPTURE(x);
        REQUIRE(float_to_bf16(x) == nearest_even(x, bf16_to_float));
    }
    for (uint32_t b = 0; b < 0x10000; ++b) {
        const float f = bf16_to_float(uint16_t(b));
        if (std::isnan(f)) {
            REQUIRE(std::isnan(bf16_to_float(float_to_bf16(f))));
            continue;
        }
        REQUIRE(float_to_bf16(f) == b);
    }
    CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);       // midpoint -> even
    CHECK(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
    CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // rounds up to Inf
    CHECK(float_to_bf16(-INFINITY) == 0xff80);
    CHECK(std::isnan(bf16_to_float(float_to_bf16(from_bits(0x7f800001u)))));
}

TEST_CASE("dtype: array conversions and sizes") {
    const std::vector<float> x = {0.0f, -1.5f, 3.14159f, 1e-6f, 70000.0f, -INFINITY};
    for (int32_t dt : {COMMVQ_DTYPE_F32, COMMVQ_DTYPE_F16, COMMVQ_DTYPE_BF16}) {
        CHECK(dtype_valid(dt));
        std::vector<uint8_t> buf(x.size() * dtype_size(dt));
        from_float(x.data(), x.size(), dt, buf.data());
        std::vector<float> back(x.size(), NAN);
        to_float(buf.data(), dt, x.size(), back.data());
        for (size_t i = 0; i < x.size(); ++i) {
            float expected = x[i];
            if (dt == COMMVQ_DTYPE_F16) expected = half_to_float(float_to_half(x[i]));
            if (dt == COMMVQ_DTYPE_BF16) expected = bf16_to_float(float_to_bf16(x[i]));
            CHECK(back[i] == expected);
        }
    }
    CHECK(dtype_size(COMMVQ_DTYPE_F32) == 4);
    CHECK(dtype_size(COMMVQ_DTYPE_F16) == 2);
    CHECK(!dtype_valid(3));
    CHECK_THROWS_AS(dtype_size(7), Error);
}
