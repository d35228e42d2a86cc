// Small kernels that move a cache's data: block-table, sequence-state and
// batch-row updates (values travel as kernel arguments, so a captured graph
// needs no host memory), storing encoded tokens into their blocks, and
// copying new uncompressed tokens into their sink or window slots.
#include <algorithm>

#include "device_common.cuh"
#include "key_scale.h"

namespace commvq {
namespace cuda {

namespace {

struct TableCells {
    TableCell cells[kMaxTableCellsPerLaunch];
};

__global__ void set_table_cells_kernel(int32_t* tables, uint32_t stride, uint32_t n,
                                       const __grid_constant__ TableCells c) {
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
        tables[size_t(c.cells[i].seq) * stride + c.cells[i].entry] = int32_t(c.cells[i].id);
}

__global__ void set_state_kernel(SeqState* state, SeqState value) { *state = value; }

struct BatchRows {
    BatchRow rows[kMaxBatchRowsPerLaunch];
    SeqState states[kMaxBatchRowsPerLaunch];
};

__global__ void set_batch_rows_kernel(BatchRow* rows_dev, SeqState* layer_states, uint32_t first, uint32_t n,
                                      const __grid_constant__ BatchRows r) {
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        rows_dev[first + i] = r.rows[i];
        layer_states[r.rows[i].seq] = r.states[i];
    }
}

// One block per token: key codes packed LSB first (code_packing.h), scales,
// value code bits, weight. Token blockIdx.x of the launch, as src names it,
// goes to compressed index position - S of its sequence.
__global__ void store_compressed_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ PoolView pool,
                                        const __grid_constant__ EncodeSource src, const uint16_t* codes,
                                        const float* scales, const uint8_t* bits, const float* weights) {
    const SourceToken token = block_source_token(src);
    const uint64_t index = token.position - src.slots.sinks;
    uint8_t* block = const_cast<uint8_t*>(block_address(pool, token.seq, index));
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

// Copies input row `row` of k and v into the uncompressed slot of a
// position, by the block's threads, in 4-byte words (key_bytes and
// value_bytes are multiples of 4); where the slots keep norms, the row's
// token_norm2 of the given norms (column `row` of norms2).
__device__ void store_token(const UncompressedView& u, uint32_t seq, uint64_t position, size_t row, const void* k,
                            const void* v, const double* norms2, uint64_t norms2_head_stride, uint32_t n_heads) {
    uint32_t* slot = reinterpret_cast<uint32_t*>(slot_address(u, seq, position));
    const uint32_t key_words = u.key_bytes / 4, value_words = u.value_bytes / 4;
    const uint32_t* ks = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(k) + row * u.key_bytes);
    const uint32_t* vs = reinterpret_cast<const uint32_t*>(static_cast<const uint8_t*>(v) + row * u.value_bytes);
    for (uint32_t i = threadIdx.x; i < key_words; i += blockDim.x) slot[i] = ks[i];
    for (uint32_t i = threadIdx.x; i < value_words; i += blockDim.x) slot[key_words + i] = vs[i];
    if (u.norms2 && threadIdx.x == 0)
        slot_norm2(u, seq, position) = key_scale::token_norm2(norms2 + row, n_heads, norms2_head_stride);
}

// One block per new token.
__global__ void store_uncompressed_kernel(const __grid_constant__ UncompressedView u, uint32_t seq,
                                          uint64_t first_position, uint64_t sinks, uint64_t first_window,
                                          const void* k, const void* v, const double* norms2,
                                          uint64_t norms2_head_stride, uint32_t n_heads) {
    const uint64_t position = first_position + blockIdx.x;
    if (position >= sinks && position < first_window) return;  // compressed already
    store_token(u, seq, position, blockIdx.x, k, v, norms2, norms2_head_stride, n_heads);
}

// One block per new token of a batched append: row blockIdx.x / n_tokens.
__global__ void store_uncompressed_batch_kernel(const __grid_constant__ UncompressedView u, const BatchRow* rows,
                                                uint32_t n_tokens, const void* k, const void* v,
                                                const double* norms2, uint64_t norms2_head_stride, uint32_t n_heads) {
    const BatchRow& row = rows[blockIdx.x / n_tokens];
    const uint64_t position = row.length + blockIdx.x % n_tokens;
    if (position >= u.sinks && position < row.first_window) return;  // compressed already
    store_token(u, row.seq, position, blockIdx.x, k, v, norms2, norms2_head_stride, n_heads);
}

__global__ void float_to_half_kernel(const float* in, size_t n, __half* out) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}

}  // namespace

int launch_set_table_cells(int32_t* tables, uint32_t stride, uint32_t n, const TableCell* cells, void* stream) {
    for (uint32_t done = 0; done < n;) {
        const uint32_t m = std::min(n - done, kMaxTableCellsPerLaunch);
        TableCells c;
        std::copy(cells + done, cells + done + m, c.cells);
        set_table_cells_kernel<<<1, 256, 0, cudaStream_t(stream)>>>(tables, stride, m, c);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return int(err);
        done += m;
    }
    return 0;
}

int launch_set_state(SeqState* state, SeqState value, void* stream) {
    set_state_kernel<<<1, 1, 0, cudaStream_t(stream)>>>(state, value);
    return int(cudaGetLastError());
}

int launch_set_batch_rows(BatchRow* rows_dev, SeqState* layer_states, uint32_t first, uint32_t n,
                          const BatchRow* rows, const SeqState* states, void* stream) {
    for (uint32_t done = 0; done < n;) {
        const uint32_t m = std::min(n - done, kMaxBatchRowsPerLaunch);
        BatchRows r;
        std::copy(rows + done, rows + done + m, r.rows);
        std::copy(states + done, states + done + m, r.states);
        set_batch_rows_kernel<<<1, 256, 0, cudaStream_t(stream)>>>(rows_dev, layer_states, first + done, m, r);
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return int(err);
        done += m;
    }
    return 0;
}

int launch_store_compressed(const ModelShape& m, const PoolView& pool, const EncodeSource& src, uint32_t n,
                            const uint16_t* codes, const float* scales, const uint8_t* bits, const float* weights,
                            void* stream) {
    if (n == 0) return 0;
    store_compressed_kernel<<<n, 128, 0, cudaStream_t(stream)>>>(m, pool, src, codes, scales, bits, weights);
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

int launch_store_uncompressed_batch(const UncompressedView& slots, const BatchRow* rows, uint32_t n_rows,
                                    uint32_t n_tokens, const void* k, const void* v, const double* norms2,
                                    uint64_t norms2_head_stride, uint32_t n_heads, void* stream) {
    const uint64_t n = uint64_t(n_rows) * n_tokens;
    if (n == 0) return 0;
    if (n > 0x7fffffffu) return int(cudaErrorInvalidConfiguration);
    if (slots.norms2 && !norms2) return int(cudaErrorInvalidValue);
    store_uncompressed_batch_kernel<<<uint32_t(n), 128, 0, cudaStream_t(stream)>>>(slots, rows, n_tokens, k, v, norms2,
                                                                                 norms2_head_stride, n_heads);
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
