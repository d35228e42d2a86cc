// Row-major float32 matrix products for the trainers. Single-threaded: the
// callers split rows over threads. Each output element sums over k in
// ascending order, so results do not depend on how rows were split.
#pragma once

#include <cstddef>

#include "vector_clones.h"

namespace commvq {
namespace train {

// y[i] += a * x[i]
void axpy(size_t n, float a, const float* x, float* y);

// Minimum of x[0..n), n > 0.
float min_of(const float* x, size_t n);

// C[M][N] = A[M][K] @ B[K][N]   (C += ... when accumulate)
void matmul_nn(const float* A, const float* B, float* C, size_t M, size_t N, size_t K,
               bool accumulate);

// out[N][M] = in[M][N]^T
void transpose(const float* in, float* out, size_t M, size_t N);

}  // namespace train
}  // namespace commvq
