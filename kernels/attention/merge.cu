// The merge of decode attention: the splits' code-space sums combined and E
// applied once per query head (apply_codebook_kernel, per slice of
// kMergeBits code bits), then the slices summed with the uncompressed
// tokens' part, normalized and written (finish_kernel).
#include "attention/merge.h"

#include <cfloat>

#include "device_common.cuh"

namespace commvq {
namespace cuda {

namespace {

// The largest split max of one query head (log2 domain) and each split's
// factor 2^(m_s - M); both merge kernels compute them the same way.
__device__ float split_factors(const float* ml, uint32_t n_splits, uint32_t n_q_heads, uint32_t h, float* factor,
                               float* total) {
    const int lane = threadIdx.x % 32;
    float mx = -FLT_MAX;
    for (uint32_t s = lane; s <= n_splits; s += 32) mx = fmaxf(mx, ml[(s * n_q_heads + h) * 2]);
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (uint32_t s = lane; s <= n_splits; s += 32) {
        const float ms = ml[(s * n_q_heads + h) * 2], ls = ml[(s * n_q_heads + h) * 2 + 1];
        const float w = ls > 0 ? exp2f(ms - mx) : 0.0f;
        factor[s] = w;
        sum += ls * w;
    }
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    *total = sum;
    return mx;
}

constexpr int kMaxGroup = 8;

// One KV group, one row, one slice of kMergeBits code bits: the splits'
// code-space sums combined (unnormalized), then E of those bits applied:
// applied[h][c] = sum_i merged[h][i] E[i][g d + c] over the slice.
template <int HEAD_DIM>
__global__ void __launch_bounds__(2 * HEAD_DIM)
apply_codebook_kernel(const __grid_constant__ AttendParams p) {
    using attention::kMergeBits;
    __shared__ float factor[kMaxGroup][attention::kMaxSplits + 1];
    __shared__ float merged[kMaxGroup][kMergeBits];
    __shared__ float half_sum[kMaxGroup][HEAD_DIM];
    __shared__ float unused_total[kMaxGroup];
    const ModelShape& m = p.m;
    const uint32_t g = blockIdx.x, row = blockIdx.y, slice = blockIdx.z, G = m.n_q_heads / m.n_kv_heads;
    const uint32_t n_splits = p.n_splits, n2 = m.value_code_bits, D = value_dim(m), i0 = slice * kMergeBits;
    const attention::PartialLayout pl(m, p.n_rows, n_splits);
    const float* ml = p.partials + pl.ml + size_t(row) * (n_splits + 1) * m.n_q_heads * 2;
    const uint32_t warp = threadIdx.x / 32;
    for (uint32_t h = warp; h < G; h += blockDim.x / 32)
        split_factors(ml, n_splits, m.n_q_heads, g * G + h, factor[h], &unused_total[h]);
    __syncthreads();
    const float* codes = p.partials + size_t(row) * n_splits * m.n_q_heads * n2;
    for (uint32_t idx = threadIdx.x; idx < G * kMergeBits; idx += blockDim.x) {
        const uint32_t h = idx / kMergeBits, i = idx % kMergeBits;
        float s = 0;
        for (uint32_t k = 0; k < n_splits; ++k) s += factor[h][k] * codes[(size_t(k) * m.n_q_heads + g * G + h) * n2 + i0 + i];
        merged[h][i] = s;
    }
    __syncthreads();
    const uint32_t c = threadIdx.x % HEAD_DIM, half = threadIdx.x / HEAD_DIM;
    float acc[kMaxGroup];
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) acc[h] = 0;
    // E's columns of the model's KV head kv_head_begin + g (a slice's g counts from its first head).
    const float* E = p.value_codebook + size_t(i0) * D + size_t(m.kv_head_begin + g) * HEAD_DIM + c;
#pragma unroll 8
    for (uint32_t i = half; i < kMergeBits; i += 2) {
        const float e = E[size_t(i) * D];
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h)
            if (h < int(G)) acc[h] = fmaf(merged[h][i], e, acc[h]);
    }
    if (half == 1)
        for (uint32_t h = 0; h < G; ++h) half_sum[h][c] = acc[h];
    __syncthreads();
    if (half == 0) {
        float* out = p.partials + pl.applied + (size_t(row) * (n2 / kMergeBits) + slice) * m.n_q_heads * HEAD_DIM;
        for (uint32_t h = 0; h < G; ++h) out[(g * G + h) * HEAD_DIM + c] = acc[h] + half_sum[h][c];
    }
}

// One query head of one row: the slices summed in order, lambda, the
// uncompressed tokens' part, normalization, output and lse.
template <int HEAD_DIM>
__global__ void __launch_bounds__(HEAD_DIM)
finish_kernel(const __grid_constant__ AttendParams p) {
    __shared__ float factor[attention::kMaxSplits + 1];
    __shared__ float total, max_log2;
    const ModelShape& m = p.m;
    const uint32_t h = blockIdx.x, row = blockIdx.y, G = m.n_q_heads / m.n_kv_heads, g = h / G;
    const uint32_t n_splits = p.n_splits, slices = m.value_code_bits / attention::kMergeBits;
    const attention::PartialLayout pl(m, p.n_rows, n_splits);
    const float* ml = p.partials + pl.ml + size_t(row) * (n_splits + 1) * m.n_q_heads * 2;
    if (threadIdx.x < 32) {
        float t;
        const float mx = split_factors(ml, n_splits, m.n_q_heads, h, factor, &t);
        if (threadIdx.x == 0) {
            total = t;
            max_log2 = mx;
        }
    }
    __syncthreads();
    const uint32_t c = threadIdx.x;
    const float inv = total > 0 ? 1.0f / total : 0.0f;
    const float* applied = p.partials + pl.applied + size_t(row) * slices * m.n_q_heads * HEAD_DIM + size_t(h) * HEAD_DIM + c;
    float s = 0;
    for (uint32_t k = 0; k < slices; ++k) s += applied[size_t(k) * m.n_q_heads * HEAD_DIM];
    const float lam = p.value_lambda[(m.kv_head_begin + g) * HEAD_DIM + c] + 1e-6f;
    const float* vals = p.partials + pl.values + (size_t(row) * m.n_q_heads + h) * HEAD_DIM;
    const float o = (lam * s + factor[n_splits] * vals[c]) * inv;
    store_element(p.out, (size_t(row) * m.n_q_heads + h) * HEAD_DIM + c, p.out_dtype, o);
    if (p.lse && c == 0) p.lse[size_t(row) * m.n_q_heads + h] = total > 0 ? (max_log2 + log2f(total)) * kLn2 : -INFINITY;
}

}  // namespace

int launch_merge(const AttendParams& p, cudaStream_t stream) {
    const dim3 apply_grid(p.m.n_kv_heads, p.n_rows, p.m.value_code_bits / attention::kMergeBits);
    if (p.m.head_dim == 128) {
        apply_codebook_kernel<128><<<apply_grid, 2 * 128, 0, stream>>>(p);
        finish_kernel<128><<<dim3(p.m.n_q_heads, p.n_rows), 128, 0, stream>>>(p);
    } else {
        apply_codebook_kernel<64><<<apply_grid, 2 * 64, 0, stream>>>(p);
        finish_kernel<64><<<dim3(p.m.n_q_heads, p.n_rows), 64, 0, stream>>>(p);
    }
    return int(cudaGetLastError());
}

}  // namespace cuda
}  // namespace commvq
