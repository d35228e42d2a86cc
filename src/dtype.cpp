// f16 and bf16 are converted bit by bit rather than through compiler
// intrinsics, so the result is the same on every host compiler and the
// rounding is exactly round-to-nearest-even.
#include "dtype.h"

#include <cstring>

#include "commvq/commvq.h"
#include "error.h"

namespace commvq {

namespace {

uint32_t float_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

float bits_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

}  // namespace

size_t dtype_size(int32_t dtype) {
    switch (dtype) {
        case COMMVQ_DTYPE_F32: return 4;
        case COMMVQ_DTYPE_F16: return 2;
        case COMMVQ_DTYPE_BF16: return 2;
        default: throw Error(COMMVQ_ERR_INVALID_ARGUMENT, "unknown dtype " + std::to_string(dtype));
    }
}

bool dtype_valid(int32_t dtype) {
    return dtype == COMMVQ_DTYPE_F32 || dtype == COMMVQ_DTYPE_F16 || dtype == COMMVQ_DTYPE_BF16;
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    const uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f)  // Inf or NaN: keep the payload's top bits, NaN stays NaN
        return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0) return bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
    // Zero or subnormal: mantissa * 2^-24 is exact in float.
    const float magnitude = float(mantissa) * bits_float(0x33800000u);  // 2^-24
    return bits_float(sign | float_bits(magnitude));
}

uint16_t float_to_half(float f) {
    const uint32_t u = float_bits(f);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
    const uint32_t abs = u & 0x7fffffffu;
    if (abs >= 0x7f800000u) {  // Inf or NaN; a NaN keeps a nonzero (quiet) mantissa
        if (abs == 0x7f800000u) return uint16_t(sign | 0x7c00u);
        return uint16_t(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
    }
    if (abs >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // rounds to >= 65520: Inf
    if (abs < 0x38800000u) {
        // Result is subnormal (or zero) in half: value / 2^-24, rounded to
        // nearest even. Adding 0.5 (as float 2^-1 offset trick) does the
        // rounding in the float adder, which rounds to nearest even.
        const float scaled = bits_float(abs) + 0.5f;  // 0.5 = 2^-1: ulp of the sum is 2^-24
        return uint16_t(sign | (float_bits(scaled) - float_bits(0.5f)));
    }
    // Normal: rebias the exponent and round the 13 dropped bits to nearest even.
    const uint32_t lsb = (abs >> 13) & 1u;
    const uint32_t rounded = abs + 0xfffu + lsb;
    return uint16_t(sign | ((rounded - 0x38000000u) >> 13));
}

float bf16_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

uint16_t float_to_bf16(float f) {
    const uint32_t u = float_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)  // NaN: truncating could clear the mantissa
        return uint16_t((u >> 16) | 0x0040u);
    const uint32_t lsb = (u >> 16) & 1u;
    return uint16_t((u + 0x7fffu + lsb) >> 16);
}

void to_float(const void* src, int32_t dtype, size_t n, float* dst) {
    switch (dtype) {
        case COMMVQ_DTYPE_F32: std::memcpy(dst, src, n * 4); return;
        case COMMVQ_DTYPE_F16: {
            const auto* s = static_cast<const uint16_t*>(src);
            for (size_t i = 0; i < n; ++i) dst[i] = half_to_float(s[i]);
            return;
        }
        case COMMVQ_DTYPE_BF16: {
            const auto* s = static_cast<const uint16_t*>(src);
            for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(s[i]);
            return;
        }
        default: throw Error(COMMVQ_ERR_INVALID_ARGUMENT, "unknown dtype " + std::to_string(dtype));
    }
}

void from_float(const float* src, size_t n, int32_t dtype, void* dst) {
    switch (dtype) {
        case COMMVQ_DTYPE_F32: std::memcpy(dst, src, n * 4); return;
        case COMMVQ_DTYPE_F16: {
            auto* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = float_to_half(src[i]);
            return;
        }
        case COMMVQ_DTYPE_BF16: {
            auto* d = static_cast<uint16_t*>(dst);
            for (size_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i]);
            return;
        }
        default: throw Error(COMMVQ_ERR_INVALID_ARGUMENT, "unknown dtype " + std::to_string(dtype));
    }
}

}  // namespace commvq
