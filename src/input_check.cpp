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

namespace {

// "name of <where>, is <value>; inputs must be ..." for the element at `bad`.
[[noreturn]] void refuse_input(const char* fn, const char* name, const std::string& where, const void* data,
                               int32_t dtype, size_t bad) {
    float x;
    to_float(static_cast<const uint8_t*>(data) + bad * dtype_size(dtype), dtype, 1, &x);
    char value[32];
    std::snprintf(value, sizeof value, "%g", double(x));
    char bound[16];
    std::snprintf(bound, sizeof bound, "%g", kMaxInputMagnitude);
    throw Error(COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + name + " of " + where + ", is " + value +
                                                 "; inputs must be finite with magnitude at most " + bound +
                                                 " (larger ones would overflow attention)");
}

}  // namespace

void require_inputs(const char* fn, const char* name, const char* row, const void* data, int32_t dtype,
                    size_t n_rows, size_t row_elements) {
    const size_t n = n_rows * row_elements;
    const size_t bad = first_bad_input(data, dtype, n);
    if (bad == n) return;
    refuse_input(fn, name,
                 std::string(row) + " " + std::to_string(bad / row_elements) + ", element " +
                     std::to_string(bad % row_elements),
                 data, dtype, bad);
}

void require_batch_inputs(const char* fn, const char* name, const void* data, int32_t dtype, size_t n_entries,
                          size_t n_tokens, size_t token_elements) {
    const size_t n = n_entries * n_tokens * token_elements;
    const size_t bad = first_bad_input(data, dtype, n);
    if (bad == n) return;
    const size_t token = bad / token_elements;
    refuse_input(fn, name,
                 "entry " + std::to_string(token / n_tokens) + ", token " + std::to_string(token % n_tokens) +
                     ", element " + std::to_string(bad % token_elements),
                 data, dtype, bad);
}

}  // namespace commvq
