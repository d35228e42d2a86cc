// Small kernels that move a cache's data: block-table and sequence-state
// updates (values travel as kernel arguments, so a captured graph needs no
// host memory), storing encoded tokens into their blocks, and copying new
// uncompressed tokens into their sink or window slots.
#include <algorithm>

#include "device_common.cuh"
#include "key_scale.h"

namespace commvq {
namespace cuda {

namespace {

struct TableEntries {
    uint32_t ids[kMaxTableEntriesPerLaunch];
};

__global__ void set_table_entries_kernel(int32_t* row, uint32_t first, uint32_t count,
                                         const __grid_constant__ TableEntries e) {
    for (uint32_t i = threadIdx.x; i < count; i += blockDim.x) row[first + i] = int32_t(e.ids[i]);
}

__global__ void set_state_kernel(SeqState* state, SeqState value) { *state = value; }

// One block per token: key codes packed LSB first (code_packing.h), scales,
// value code bits, weight.
__global__ void store_compressed_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ PoolView pool,
                                        uint32_t seq, uint64_t first, const uint16_t* codes, const float* scales,
                                        const uint8_t* bits, const float* weights) {
    const uint64_t index = first + blockIdx.x;
    uint8_t* block = const_cast<uint8_t*>(block_address(pool, seq, index));
    const uint32_t slot = uint32_t(index % pool.block_tokens);
    const uint32_t n_codes = m.n_kv_heads * m.key_stages;
    const uint16_t* tc = codes + size_t(blockIdx.x) * n_codes;
    uint8_t* kc = block + pool.key_codes_offset + size_t(slot) * pool.key_code_bytes;
    for (uint32_t b = threadIdx.x; b < pool.key_code_bytes; b += blockDim.x) {
        uint32_t byte = 0;
        for (uint32_t k = 0; k < 8; ++k) {
            const uint32_t bit = 8 * b + k, c = bit / m.code_bits;
            if (c < n_codes) byte |= ((uint32_t(tc[c]) >> (bit % m.code_bits)) & 1u) << k;
        }
        kc[b] = uint8_t(byte);
    }
    uint8_t* vc = block + pool.value_codes_offset + size_t(slot) * pool.value_code_bytes;
    const uint8_t* tb = bits + size_t(blockIdx.x) * pool.value_code_bytes;
    for (uint32_t b = threadIdx.x; b < pool.value_code_bytes; b += blockDim.x) vc[b] = tb[b];
    float* ks = reinterpret_cast<float*>(block + pool.key_scales_offset) + size_t(slot) * m.n_key_scales;
    for (uint32_t s = threadIdx.x; s < m.n_key_scales; s += blockDim.x) ks[s] = scales[size_t(blockIdx.x) * m.n_key_scales + s];
    if (threadIdx.x == 0) reinterpret_cast<float*>(block + pool.value_weights_offset)[slot] = weights[blockIdx.x];
}

// One block per new token; 4-byte words (key_bytes and value_bytes are
// multiples of 4).
__global__ void store_uncompressed_kernel(const __grid_constant__ UncompressedView u, uint32_t seq,
                                          uint64_t first_position, uint64_t sinks, uint64_t first_window,
                                          const void* k, const void* v, const double* norms2,
                                          uint64_t norms2_head_stride, uint32_t n_heads) {
    const uint64_t position = first_position + blockIdx.x;
    if (position >= sinks && position < first_window) return;  // compressed already
    uint32_t* slot = reinterpret_cast<uint32_t*>(slot_address(u, seq, position));
    const uint32_t key_words = u.key_bytes / 4, value_words = u.value_bytes / 4;
    const uint32_t* ks = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(k) + size_t(blockIdx.x) * u.key_bytes);
    const uint32_t* vs = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(v) + size_t(blockIdx.x) * u.value_bytes);
    for (uint32_t i = threadIdx.x; i < key_words; i += blockDim.x) slot[i] = ks[i];
    for (uint32_t i = threadIdx.x; i < value_words; i += blockDim.x) slot[key_words + i] = vs[i];
    if (u.norms2 && threadIdx.x == 0)
        slot_norm2(u, seq, position) = key_scale::token_norm2(norms2 + blockIdx.x, n_heads, norms2_head_stride);
}

__global__ void float_to_half_kernel(const float* in, size_t n, __half* out) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}

}  // namespace

int launch_set_table_entries(int32_t* table_row, uint32_t first, uint32_t count, const uint32_t* ids, void* stream) {
    for (uint32_t done = 0; done < count;) {
        const uint32_t n = std::min(count - done, kMaxTableEntriesPerLaunch);
        TableEntries e;
        std::copy(ids + done, ids + done + n, e.ids);
        set_table_entries_kernel<<<1, 256, 0, cudaStream_t(stream)>>>(table_row, first + done, n, e);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return int(err);
        done += n;
    }
    return 0;
}

int launch_set_state(SeqState* state, SeqState value, void* stream) {
    set_state_kernel<<<1, 1, 0, cudaStream_t(stream)>>>(state, value);
    return int(cudaGetLastError());
}

int launch_store_compressed(const ModelShape& m, const PoolView& pool, uint32_t seq, uint64_t first, uint32_t n,
                            const uint16_t* codes, const float* scales, const uint8_t* bits, const float* weights,
                            void* stream) {
    if (n == 0) return 0;
    store_compressed_kernel<<<n, 128, 0, cudaStream_t(stream)>>>(m, pool, seq, first, codes, scales, bits, weights);
    return int(cudaGetLastError());
}

int launch_store_uncompressed(const UncompressedView& slots, uint32_t seq, uint64_t first_position, uint32_t n,
                              uint64_t sinks, uint64_t first_window, const void* k, const void* v,
                              const double* norms2, uint64_t norms2_head_stride, uint32_t n_heads, void* stream) {
    if (n == 0) return 0;
    if (slots.norms2 && !norms2) return int(cudaErrorInvalidValue);
    store_uncompressed_kernel<<<n, 128, 0, cudaStream_t(stream)>>>(slots, seq, first_position, sinks, first_window, k, v,
                                                                   norms2, norms2_head_stride, n_heads);
    return int(cudaGetLastError());
}

int launch_float_to_half(const float* in, size_t n, void* out, void* stream) {
    if (n == 0) return 0;
    const int blocks = int(std::min<size_t>((n + 255) / 256, 8192));
    float_to_half_kernel<<<blocks, 256, 0, cudaStream_t(stream)>>>(in, n, static_cast<__half*>(out));
    return int(cudaGetLastError());
}

int device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
}

const char* error_string(int error) { return cudaGetErrorString(cudaError_t(error)); }

}  // namespace cuda
}  // namespace commvq
