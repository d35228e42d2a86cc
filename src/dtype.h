// Element types the C API accepts for keys, values, queries and outputs,
// and their conversion to and from float32, the library's working precision.
#pragma once

#include <cstddef>
#include <cstdint>

namespace commvq {

size_t dtype_size(int32_t dtype);
bool dtype_valid(int32_t dtype);

// Converts n elements of dtype at src to float32.
void to_float(const void* src, int32_t dtype, size_t n, float* dst);
// Converts n float32 values to dtype at dst (round to nearest even).
void from_float(const float* src, size_t n, int32_t dtype, void* dst);

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

}  // namespace commvq
