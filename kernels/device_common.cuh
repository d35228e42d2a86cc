// Device helpers shared by the kernels: element types of the C API, the
// pair layouts, RoPE angles computed in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "batch_rows.h"
#include "commvq/commvq.h"
#include "launchers.h"

namespace commvq {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <class T>
__host__ __device__ __forceinline__ T tmin(T a, T b) { return a < b ? a : b; }

// Bytes of one element of a COMMVQ_DTYPE_*.
__host__ __device__ __forceinline__ uint32_t io_element_bytes(int32_t dtype) {
    return dtype == COMMVQ_DTYPE_F32 ? 4 : 2;
}

__device__ __forceinline__ float load_element(const void* base, size_t i, int32_t dtype) {
    switch (dtype) {
    case COMMVQ_DTYPE_F16: return __half2float(static_cast<const __half*>(base)[i]);
    case COMMVQ_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
    }
}

__device__ __forceinline__ void store_element(void* base, size_t i, int32_t dtype, float x) {
    switch (dtype) {
    case COMMVQ_DTYPE_F16: static_cast<__half*>(base)[i] = __float2half_rn(x); break;
    case COMMVQ_DTYPE_BF16: static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(x); break;
    default: static_cast<float*>(base)[i] = x; break;
    }
}

// Index in the model's layout of the real (part 0) or imaginary (part 1)
// element of pair j.
__device__ __forceinline__ uint32_t model_index(uint32_t j, uint32_t part, uint32_t head_dim, int32_t layout) {
    return layout == COMMVQ_PAIRS_INTERLEAVED ? 2 * j + part : j + part * (head_dim / 2);
}

// cos and sin of 2 pi * position * freq, freq = w_j / (2 pi). The product is
// reduced modulo one turn in double precision, so the angle stays accurate
// at any position; only the final sine and cosine are single precision.
__device__ __forceinline__ void rope_angle(uint64_t position, double freq, float* c, float* s) {
    double turns = double(position) * freq;
    turns -= rint(turns);  // [-0.5, 0.5]
    sincospif(float(2.0 * turns), s, c);
}

// The uncompressed slot index of a position (launchers.h UncompressedView).
__host__ __device__ __forceinline__ uint64_t slot_index(const UncompressedView& u, uint64_t position) {
    return position < u.sinks ? position : u.sinks + (position - u.sinks) % u.window;
}
// Its keys; the values follow at key_bytes.
__host__ __device__ __forceinline__ uint8_t* slot_address(const UncompressedView& u, uint32_t seq, uint64_t position) {
    return u.base + seq * u.seq_stride + slot_index(u, position) * (uint64_t(u.key_bytes) + u.value_bytes);
}
// Its squared key norm over all heads (u.norms2 set).
__device__ __forceinline__ double& slot_norm2(const UncompressedView& u, uint32_t seq, uint64_t position) {
    return u.norms2[seq * u.norms2_seq_stride + slot_index(u, position)];
}

__device__ __forceinline__ const uint8_t* block_address(const PoolView& p, uint32_t seq, uint64_t index) {
    const int32_t block = p.block_tables[size_t(seq) * p.table_stride + index / p.block_tokens];
    return p.base + size_t(block) * p.block_bytes;
}

// Token i of an encoding launch (launchers.h EncodeSource): its sequence,
// its position and the io-dtype rows of its keys and values, from its
// window slot or from the input; from the input, also its column of the
// given key norms (input_norms2 + column, head stride norms2_head_stride).
struct SourceToken {
    uint32_t seq;
    bool from_slot;
    uint64_t position;
    const void* k;
    const void* v;
    uint64_t column;  // its input row, when not from_slot
};

__device__ __forceinline__ SourceToken source_token(const EncodeSource& src, uint32_t i) {
    SourceToken t;
    uint64_t from_input;  // positions from here on are input rows ...
    uint64_t first_row;   // ... from this one on
    if (src.rows) {
        const uint32_t token = src.first_token + i;
        const uint32_t r = batch_rows::row_of(token, src.n_rows, [&](uint32_t j) { return src.rows[j].first_token; });
        const BatchRow& row = src.rows[r];
        t.seq = row.seq;
        t.position = row.first_encode + (token - row.first_token);
        from_input = row.length;
        first_row = uint64_t(r) * src.row_tokens;
    } else {
        t.seq = src.seq;
        t.position = src.first_position + src.first_token + i;
        from_input = src.from_input_position;
        first_row = 0;
    }
    t.from_slot = t.position < from_input;
    if (t.from_slot) {
        const uint8_t* slot = slot_address(src.slots, t.seq, t.position);
        t.k = slot;
        t.v = slot + src.slots.key_bytes;
        t.column = 0;
    } else {
        t.column = first_row + (t.position - from_input);
        t.k = static_cast<const uint8_t*>(src.input_k) + t.column * src.slots.key_bytes;
        t.v = static_cast<const uint8_t*>(src.input_v) + t.column * src.slots.value_bytes;
    }
    return t;
}

// source_token of the block's token (blockIdx.x), looked up once by thread
// 0 for the whole block. Every thread of the block must call it.
__device__ __forceinline__ SourceToken block_source_token(const EncodeSource& src) {
    __shared__ SourceToken token;
    if (threadIdx.x == 0) token = source_token(src, blockIdx.x);
    __syncthreads();
    return token;
}

}  // namespace cuda
}  // namespace commvq
