#include "dense.h"

#include <algorithm>
#include <cstring>

namespace commvq {
namespace train {

namespace {
// Columns of C (and rows of B) handled together, so that a block of C rows
// and the matching panel of B stay in cache.
constexpr size_t kColumnBlock = 256;
}  // namespace

COMMVQ_VECTOR_CLONES
void axpy(size_t n, float a, const float* x, float* y) {
    for (size_t i = 0; i < n; ++i) y[i] += a * x[i];
}

COMMVQ_VECTOR_CLONES
float min_of(const float* x, size_t n) {
    // Eight independent lanes: the compiler turns them into one vector min.
    constexpr size_t kLanes = 8;
    float lane[kLanes];
    for (size_t k = 0; k < kLanes; ++k) lane[k] = x[0];
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (size_t k = 0; k < kLanes; ++k) lane[k] = x[i + k] < lane[k] ? x[i + k] : lane[k];
    float m = x[0];
    for (size_t k = 0; k < kLanes; ++k) m = lane[k] < m ? lane[k] : m;
    for (; i < n; ++i) m = x[i] < m ? x[i] : m;
    return m;
}

namespace {

// A tile of kTileRows x kTileCols outputs lives in registers while k runs
// over the whole inner dimension: each B row segment loaded serves
// kTileRows rows of A. Written with GCC/Clang vector types (8 floats), which
// the AVX2 clone maps to one register and the baseline clone to two.
constexpr size_t kTileRows = 4;
constexpr size_t kTileCols = 16;
typedef float Vec8 __attribute__((vector_size(32)));

// Unaligned loads and stores through memcpy (the vector ABI is never crossed).
#define COMMVQ_LOAD8(v, p) std::memcpy(&(v), (p), sizeof(Vec8))

__attribute__((always_inline)) inline void tile(const float* A, const float* B, float* C, size_t N, size_t K,
                                                bool accumulate) {
    Vec8 acc[kTileRows][2];
    for (size_t r = 0; r < kTileRows; ++r)
        for (size_t h = 0; h < 2; ++h) {
            acc[r][h] = Vec8{};
            if (accumulate) COMMVQ_LOAD8(acc[r][h], C + r * N + 8 * h);
        }
    for (size_t k = 0; k < K; ++k) {
        Vec8 b0, b1;
        COMMVQ_LOAD8(b0, B + k * N);
        COMMVQ_LOAD8(b1, B + k * N + 8);
        for (size_t r = 0; r < kTileRows; ++r) {
            const float a = A[r * K + k];
            acc[r][0] += a * b0;
            acc[r][1] += a * b1;
        }
    }
    for (size_t r = 0; r < kTileRows; ++r)
        for (size_t h = 0; h < 2; ++h) std::memcpy(C + r * N + 8 * h, &acc[r][h], sizeof(Vec8));
}

// Any rectangle, one output at a time (the edges the tiles leave).
__attribute__((always_inline)) inline void edge(const float* A, const float* B, float* C, size_t rows, size_t cols, size_t N, size_t K,
                 bool accumulate) {
    for (size_t r = 0; r < rows; ++r)
        for (size_t j = 0; j < cols; ++j) {
            float acc = accumulate ? C[r * N + j] : 0.0f;
            for (size_t k = 0; k < K; ++k) acc += A[r * K + k] * B[k * N + j];
            C[r * N + j] = acc;
        }
}

}  // namespace

COMMVQ_VECTOR_CLONES
void matmul_nn(const float* A, const float* B, float* C, size_t M, size_t N, size_t K,
               bool accumulate) {
    const size_t m_tiles = M / kTileRows * kTileRows, n_tiles = N / kTileCols * kTileCols;
    for (size_t j0 = 0; j0 < n_tiles; j0 += kColumnBlock)
        for (size_t i = 0; i < m_tiles; i += kTileRows)
            for (size_t j = j0; j < std::min(n_tiles, j0 + kColumnBlock); j += kTileCols)
                tile(A + i * K, B + j, C + i * N + j, N, K, accumulate);
    if (n_tiles < N) edge(A, B + n_tiles, C + n_tiles, m_tiles, N - n_tiles, N, K, accumulate);
    if (m_tiles < M) edge(A + m_tiles * K, B, C + m_tiles * N, M - m_tiles, N, N, K, accumulate);
}

void transpose(const float* in, float* out, size_t M, size_t N) {
    constexpr size_t kTile = 32;
    for (size_t i0 = 0; i0 < M; i0 += kTile)
        for (size_t j0 = 0; j0 < N; j0 += kTile)
            for (size_t i = i0; i < std::min(M, i0 + kTile); ++i)
                for (size_t j = j0; j < std::min(N, j0 + kTile); ++j) out[j * M + i] = in[i * N + j];
}

}  // namespace train
}  // namespace commvq
