// The tokens a batched append encodes (Backend::append_batch), numbered
// one after the other across its rows: row r's are numbers [first(r),
// first(r + 1)), first(0) = 0, and a row that encodes none starts where the
// next one does. One lookup of a number's row for the CPU back end and the
// CUDA kernels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COMMVQ_BATCH_ROWS_HD __host__ __device__ __forceinline__
#else
#define COMMVQ_BATCH_ROWS_HD inline
#endif

namespace commvq {
namespace batch_rows {

// The row of number `token` (below the rows' total): the last of rows
// [0, n_rows) whose first number is not above it, by bisection; first(r)
// is row r's first number.
template <class First>
COMMVQ_BATCH_ROWS_HD uint32_t row_of(uint64_t token, uint32_t n_rows, const First& first) {
    uint32_t lo = 0, hi = n_rows;  // first(lo) <= token; row hi (or the end) starts above it
    while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (first(mid) <= token) lo = mid;
        else hi = mid;
    }
    return lo;
}

}  // namespace batch_rows
}  // namespace commvq
