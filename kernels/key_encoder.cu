// Launchers of key encoding: gathering and normalizing the keys, then the
// residual search of key_encoder.cuh.
#include <algorithm>
#include <cmath>

#include "key_encoder.cuh"
#include "key_scale.h"

namespace commvq {
namespace cuda {

namespace {

constexpr int kPrepareThreads = 256;

// One token's keys (io dtype, model layout) to the canonical pre-RoPE key
// [n_kv_heads][head_dim] in shared memory, un-rotated when the host hands
// post-RoPE keys; then every head's ||k_h||^2 (key_scale.h, one thread per
// head), into head_norm2. Ends with a barrier.
__device__ void canonical_key_norms2(const ModelShape& m, const void* row, uint64_t position, int32_t io_dtype,
                                     int32_t key_convention, const double* rope_freq, float* key,
                                     double* head_norm2) {
    const uint32_t P = m.head_dim / 2, n_pairs = m.n_kv_heads * P;
    const bool post_rope = key_convention == COMMVQ_KEYS_POST_ROPE;
    for (uint32_t i = threadIdx.x; i < n_pairs; i += blockDim.x) {
        const uint32_t h = i / P, j = i % P;
        const size_t base = size_t(h) * m.head_dim;
        float re = load_element(row, base + model_index(j, 0, m.head_dim, m.pair_layout), io_dtype);
        float im = load_element(row, base + model_index(j, 1, m.head_dim, m.pair_layout), io_dtype);
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
    for (uint32_t h = threadIdx.x; h < m.n_kv_heads; h += blockDim.x)
        head_norm2[h] = key_scale::head_norm2(key + size_t(h) * m.head_dim, m.head_dim);
    __syncthreads();
}

// Dynamic shared memory of the kernels below: the heads' norms, then the key.
size_t key_smem_bytes(const ModelShape& m) { return size_t(m.n_kv_heads) * 8 + size_t(m.n_kv_heads) * m.head_dim * 4; }

// One block per token: canonical pre-RoPE key, its scale (per head, or per
// token: the heads' norms, or with given_key_norms the model's heads' given
// norms, summed in head order: key_scale.h) and t = k / scale.
__global__ void __launch_bounds__(kPrepareThreads)
prepare_keys_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ EncodeSource src,
                    const double* rope_freq, float* t, float* scales) {
    extern __shared__ double head_norm2[];  // [n_kv_heads], then the key [n_kv_heads * head_dim] floats
    float* key = reinterpret_cast<float*>(head_norm2 + m.n_kv_heads);
    __shared__ double token_scale;
    const SourceToken token = block_source_token(src);
    canonical_key_norms2(m, token.k, token.position, src.slots.io_dtype, src.slots.key_convention, rope_freq, key,
                         head_norm2);
    const bool per_head = m.n_key_scales != 1;
    if (!per_head && threadIdx.x == 0) {
        double norm2;
        if (!m.given_key_norms)
            norm2 = key_scale::token_norm2(head_norm2, m.n_kv_heads, 1);
        else if (token.from_slot)
            norm2 = slot_norm2(src.slots, token.seq, token.position);  // given when it entered the window
        else
            norm2 = key_scale::token_norm2(src.input_norms2 + token.column, m.value_kv_heads, src.norms2_head_stride);
        token_scale = sqrt(norm2);
        scales[blockIdx.x] = float(token_scale);
    }
    if (per_head)
        for (uint32_t h = threadIdx.x; h < m.n_kv_heads; h += blockDim.x)
            scales[size_t(blockIdx.x) * m.n_kv_heads + h] = float(sqrt(head_norm2[h]));
    __syncthreads();
    const uint32_t K = m.n_kv_heads * m.head_dim;
    float* out = t + size_t(blockIdx.x) * K;
    for (uint32_t i = threadIdx.x; i < K; i += blockDim.x) {
        const double scale = per_head ? sqrt(head_norm2[i / m.head_dim]) : token_scale;
        out[i] = scale > 0 ? float(key[i] / scale) : 0.0f;
    }
}

// One block per token (grid: tokens, rows): its heads' ||k_h||^2.
__global__ void __launch_bounds__(kPrepareThreads)
key_head_norms2_kernel(const __grid_constant__ ModelShape m, int32_t io_dtype, int32_t key_convention,
                       const double* rope_freq, const __grid_constant__ KeyNormRows rows, const void* k,
                       uint64_t row_stride, double* out, uint64_t head_stride, uint64_t out_row_stride) {
    extern __shared__ double head_norm2[];
    float* key = reinterpret_cast<float*>(head_norm2 + m.n_kv_heads);
    const uint32_t t = blockIdx.x, r = blockIdx.y;
    const size_t key_bytes = size_t(m.n_kv_heads) * m.head_dim * io_element_bytes(io_dtype);
    const void* row = static_cast<const uint8_t*>(k) + (r * row_stride + t) * key_bytes;
    canonical_key_norms2(m, row, rows.positions[r] + t, io_dtype, key_convention, rope_freq, key, head_norm2);
    for (uint32_t h = threadIdx.x; h < m.n_kv_heads; h += blockDim.x)
        out[h * head_stride + r * out_row_stride + t] = head_norm2[h];
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
    // Given norms: a batch's rows may take tokens from their input, one
    // sequence's from its first_position + first_token + n - 1 on.
    if (m.given_key_norms && !src.input_norms2 &&
        (src.rows || src.first_position + src.first_token + n > src.from_input_position))
        return int(cudaErrorInvalidValue);
    prepare_keys_kernel<<<n, kPrepareThreads, key_smem_bytes(m), cudaStream_t(stream)>>>(m, src, rope_freq, t,
                                                                                         scales);
    return int(cudaGetLastError());
}

int launch_key_head_norms2(const ModelShape& m, int32_t io_dtype, int32_t key_convention, const double* rope_freq,
                           uint32_t n_rows, const KeyNormRows& rows, uint32_t n_tokens, const void* k,
                           uint64_t row_stride, double* out, uint64_t head_stride, uint64_t out_row_stride,
                           void* stream) {
    if (n_rows == 0 || n_tokens == 0) return 0;
    if (n_rows > kMaxNormRowsPerLaunch) return int(cudaErrorInvalidValue);
    key_head_norms2_kernel<<<dim3(n_tokens, n_rows), kPrepareThreads, key_smem_bytes(m), cudaStream_t(stream)>>>(
        m, io_dtype, key_convention, rope_freq, rows, k, row_stride, out, head_stride, out_row_stride);
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
