// Launchers of key encoding: gathering and normalizing the keys, then the
// residual search of key_encoder.cuh.
#include <algorithm>
#include <cmath>

#include "key_encoder.cuh"

namespace commvq {
namespace cuda {

namespace {

constexpr int kPrepareThreads = 256;

// One block per token: canonical pre-RoPE key (un-rotated when the host
// hands post-RoPE keys), its scale (norm over all heads or per head, in
// double) and t = k / scale.
__global__ void __launch_bounds__(kPrepareThreads)
prepare_keys_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ EncodeSource src,
                    const double* rope_freq, float* t, float* scales) {
    extern __shared__ float key[];  // [n_kv_heads * head_dim]
    __shared__ double partial[kPrepareThreads];
    const uint64_t position = src.first_position + blockIdx.x;
    const void* row = source_row(src, position, false);
    const uint32_t P = m.head_dim / 2, n_pairs = m.n_kv_heads * P;
    const bool post_rope = src.slots.key_convention == COMMVQ_KEYS_POST_ROPE;
    for (uint32_t i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        const uint32_t h = i / P, j = i % P;
        const size_t base = size_t(h) * m.head_dim;
        float re = load_element(row, base + model_index(j, 0, m.head_dim, m.pair_layout), src.slots.io_dtype);
        float im = load_element(row, base + model_index(j, 1, m.head_dim, m.pair_layout), src.slots.io_dtype);
        if (post_rope) {
            float c, s;
            rope_angle(position, rope_freq[j], &c, &s);
            const float r = re * c + im * s;  // times exp(-i m w_j)
            im = im * c - re * s;
            re = r;
        }
        key[base + 2 * j] = re;
        key[base + 2 * j + 1] = im;
    }
    __syncthreads();
    const uint32_t n_scales = m.n_key_scales, per_scale = m.n_kv_heads * m.head_dim / n_scales;
    for (uint32_t s = 0; s < n_scales; ++s) {
        double sum = 0;
        for (uint32_t i = threadIdx.x; i < per_scale; i += blockDim.x) {
            const double x = key[s * per_scale + i];
            sum += x * x;
        }
        partial[threadIdx.x] = sum;
        __syncthreads();
        for (uint32_t w = blockDim.x / 2; w > 0; w /= 2) {
            if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
            __syncthreads();
        }
        const double scale = sqrt(partial[0]);
        __syncthreads();
        float* out = t + size_t(blockIdx.x) * m.n_kv_heads * m.head_dim + s * per_scale;
        for (uint32_t i = threadIdx.x; i < per_scale; i += blockDim.x)
            out[i] = scale > 0 ? float(key[s * per_scale + i] / scale) : 0.0f;
        if (threadIdx.x == 0) scales[size_t(blockIdx.x) * n_scales + s] = float(scale);
    }
}

template <int HEAD_DIM, key_encoding::KeySearch SEARCH>
int launch_encode_t(const ModelShape& m, const KeyTables& tables, uint32_t n, float* t, uint16_t* codes,
                    cudaStream_t stream) {
    auto kernel = key_encoding::encode_kernel<HEAD_DIM, SEARCH>;
    constexpr size_t smem = key_encoding::smem_bytes<HEAD_DIM>();
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
    const dim3 grid((n + key_encoding::kTokens - 1) / key_encoding::kTokens, m.n_kv_heads);
    kernel<<<grid, key_encoding::kThreads, smem, stream>>>(tables, n, m.n_kv_heads, m.key_stages, t, codes);
    return int(cudaGetLastError());
}

template <int HEAD_DIM>
int launch_encode_t(const ModelShape& m, const KeyTables& tables, uint32_t n, float* t, uint16_t* codes,
                    bool full_scan, cudaStream_t stream) {
    using key_encoding::KeySearch;
    return full_scan ? launch_encode_t<HEAD_DIM, KeySearch::full_scan>(m, tables, n, t, codes, stream)
                     : launch_encode_t<HEAD_DIM, KeySearch::pruned>(m, tables, n, t, codes, stream);
}

}  // namespace

int launch_prepare_keys(const ModelShape& m, const EncodeSource& src, uint32_t n, const double* rope_freq,
                        float* t, float* scales, void* stream) {
    if (n == 0) return 0;
    const size_t smem = size_t(m.n_kv_heads) * m.head_dim * 4;
    prepare_keys_kernel<<<n, kPrepareThreads, smem, cudaStream_t(stream)>>>(m, src, rope_freq, t, scales);
    return int(cudaGetLastError());
}

int launch_encode_keys(const ModelShape& m, const KeyTables& tables, uint32_t n, float* t, uint16_t* codes,
                       void* stream, bool full_scan) {
    if (n == 0) return 0;
    if (m.sub_centers != key_encoding::kC || !tables.cross_row_min) return int(cudaErrorInvalidValue);
    switch (m.head_dim) {
    case 64: return launch_encode_t<64>(m, tables, n, t, codes, full_scan, cudaStream_t(stream));
    case 128: return launch_encode_t<128>(m, tables, n, t, codes, full_scan, cudaStream_t(stream));
    default: return int(cudaErrorInvalidValue);
    }
}

void key_cross_row_minima(const float* cross, size_t n_rows, uint32_t C, float* row_min) {
    for (size_t i = 0; i < n_rows; ++i) {
        float m = INFINITY;  // exactly the least float of the row, as the pruning bound needs
        for (uint32_t b = 0; b < C; ++b) m = cross[i * C + b] < m ? cross[i * C + b] : m;
        row_min[i] = m;
    }
}

}  // namespace cuda
}  // namespace commvq
