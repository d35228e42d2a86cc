#include "input_check.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "dtype.h"
#include "error.h"

namespace commvq {

namespace {

bool acceptable(float x) { return std::fabs(x) <= kMaxInputMagnitude; }  // false for NaN

}  // namespace

size_t first_bad_input(const void* data, int32_t dtype, size_t n) {
    if (dtype == COMMVQ_DTYPE_F32) {
        const float* f = static_cast<const float*>(data);
        for (size_t i = 0; i < n; ++i)
            if (!acceptable(f[i])) return i;
        return n;
    }
    const uint16_t* h = static_cast<const uint16_t*>(data);
    if (dtype == COMMVQ_DTYPE_F16) {
        // Every finite f16 is below the bound: only the exponent field all
        // ones (Inf, NaN) is refused.
        for (size_t i = 0; i < n; ++i)
            if ((h[i] & 0x7C00) == 0x7C00) return i;
        return n;
    }
    // bf16 spans float32's range: widen and compare.
    for (size_t i = 0; i < n; ++i) {
        if (!acceptable(bf16_to_float(h[i]))) return i;
    }
    return n;
}

void require_inputs(const char* fn, const char* name, const char* row, const void* data, int32_t dtype,
                    size_t n_rows, size_t row_elements) {
    const size_t n = n_rows * row_elements;
    const size_t bad = first_bad_input(data, dtype, n);
    if (bad == n) return;
    float x;
    to_float(static_cast<const uint8_t*>(data) + bad * dtype_size(dtype), dtype, 1, &x);
    char value[32];
    std::snprintf(value, sizeof value, "%g", double(x));
    char bound[16];
    std::snprintf(bound, sizeof bound, "%g", kMaxInputMagnitude);
    throw Error(COMMVQ_ERR_INVALID_ARGUMENT,
                std::string(fn) + ": " + name + " of " + row + " " + std::to_string(bad / row_elements) +
                    ", element " + std::to_string(bad % row_elements) + ", is " + value +
                    "; inputs must be finite with magnitude at most " + bound +
                    " (larger ones would overflow attention)");
}

}  // namespace commvq
