// Device helpers shared by the kernels: element types of the C API, the
// pair layouts, RoPE angles computed in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "commvq/commvq.h"
#include "launchers.h"

namespace commvq {
namespace cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <class T>
__host__ __device__ __forceinline__ T tmin(T a, T b) { return a < b ? a : b; }

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

// The uncompressed slot of a position (launchers.h UncompressedView).
__device__ __forceinline__ uint8_t* slot_address(const UncompressedView& u, uint32_t seq, uint64_t position) {
    const uint64_t s = position < u.sinks ? position : u.sinks + (position - u.sinks) % u.window;
    return u.base + seq * u.seq_stride + s * 2 * u.half_bytes;
}

__device__ __forceinline__ const uint8_t* block_address(const PoolView& p, uint32_t seq, uint64_t index) {
    const int32_t block = p.block_tables[size_t(seq) * p.table_stride + index / p.block_tokens];
    return p.base + size_t(block) * p.block_bytes;
}

// Token i of an encoding launch (launchers.h EncodeSource): its sequence,
// its position and the io-dtype rows of its keys and values.
struct SourceToken {
    uint32_t seq;
    uint64_t position;
    const void* k;
    const void* v;
};

// The row of a batched append that holds token `token` of the batch: the
// last row whose first_token is not above it.
__device__ __forceinline__ uint32_t batch_row(const EncodeSource& src, uint32_t token) {
    uint32_t lo = 0, hi = src.n_rows;  // rows[lo].first_token <= token; rows[hi] (or the end) is above
    while (hi - lo > 1) {
        const uint32_t mid = (lo + hi) / 2;
        if (src.rows[mid].first_token <= token) lo = mid;
        else hi = mid;
    }
    return lo;
}

__device__ __forceinline__ SourceToken source_token(const EncodeSource& src, uint32_t i) {
    SourceToken t;
    uint64_t from_input;
    const uint8_t* k = static_cast<const uint8_t*>(src.input_k);
    const uint8_t* v = static_cast<const uint8_t*>(src.input_v);
    if (src.rows) {
        const uint32_t token = src.first_token + i;
        const uint32_t r = batch_row(src, token);
        const BatchRow row = src.rows[r];
        t.seq = row.seq;
        t.position = row.first_encode + (token - row.first_token);
        from_input = row.length;
        const size_t offset = size_t(r) * src.row_tokens * src.slots.half_bytes;
        k += offset;
        v += offset;
    } else {
        t.seq = src.seq;
        t.position = src.first_position + src.first_token + i;
        from_input = src.from_input_position;
    }
    if (t.position < from_input) {
        const uint8_t* slot = slot_address(src.slots, t.seq, t.position);
        t.k = slot;
        t.v = slot + src.slots.half_bytes;
    } else {
        const size_t offset = size_t(t.position - from_input) * src.slots.half_bytes;
        t.k = k + offset;
        t.v = v + offset;
    }
    return t;
}

}  // namespace cuda
}  // namespace commvq
