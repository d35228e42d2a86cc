// Values in code space on tensor cores: for a chunk of tokens, the sums
//   acc[bit][head] += sum_t bits[t][bit] * P[head][t]     (P = p * w, fp16)
// as mma.sync m16n8k16 products with fp32 accumulation. A is the bits
// transposed (16 code bits x 16 tokens), expanded from the packed bytes in
// registers: each 32-bit word is shifted so the lane's bit is the top bit of
// its byte, and one byte permute with sign replication turns two tokens'
// bytes into two halves of all ones or zeros, masked to 1.0 or 0. B is P of 8
// query heads (their rows of the probs array). A warp owns MPW 16-bit tiles x
// NPW 8-head tiles, so each expanded A tile serves NPW products.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace commvq {
namespace cuda {
namespace attention {

__device__ __forceinline__ uint32_t byte_permute(uint32_t a, uint32_t b, uint32_t selector) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
    return d;
}

// Selector: result bytes 0-1 replicate the top bit of byte `byte` of a,
// bytes 2-3 that of the same byte of b.
__device__ __forceinline__ uint32_t bit_pair_selector(uint32_t byte) {
    const uint32_t lo = 8 | byte, hi = 8 | (4 + byte);
    return lo | lo << 4 | hi << 8 | hi << 12;
}

__device__ __forceinline__ uint32_t bit_pair(uint32_t a, uint32_t b, uint32_t selector) {
    return byte_permute(a, b, selector) & 0x3C003C00u;  // 1.0 in each half whose bit is set
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int MPW, int NPW>
struct ValueTiles {
    float acc[MPW][NPW][4];
    uint32_t m_tile0 = 0, n_tile0 = 0;  // the warp's first tiles
    bool active = false;

    __device__ void init(uint32_t m_tiles, uint32_t n_tiles) {
        const uint32_t warp = threadIdx.x / 32, m_groups = m_tiles / MPW;
        active = warp < m_groups * (n_tiles / NPW);
        m_tile0 = (warp % m_groups) * MPW;
        n_tile0 = (warp / m_groups) * NPW;
#pragma unroll
        for (int i = 0; i < MPW; ++i)
#pragma unroll
            for (int j = 0; j < NPW; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) acc[i][j][e] = 0;
    }

    // Multiplies each head's sums by factor[head] (heads of the cluster).
    __device__ void rescale(const float* factor) {
        const uint32_t lane = threadIdx.x % 32, c = lane % 4;
#pragma unroll
        for (int j = 0; j < NPW; ++j) {
            const float f0 = factor[(n_tile0 + j) * 8 + 2 * c], f1 = factor[(n_tile0 + j) * 8 + 2 * c + 1];
#pragma unroll
            for (int i = 0; i < MPW; ++i) {
                acc[i][j][0] *= f0;
                acc[i][j][1] *= f1;
                acc[i][j][2] *= f0;
                acc[i][j][3] *= f1;
            }
        }
    }

    // bits: [words][bits_stride] of this CTA's slice, word-major (a word's
    // tokens adjacent, so tokens t, t + 1 come in one 8-byte load);
    // probs: [heads][stride] halves. Per k step every address moves by a
    // constant, so the loop carries pointers, not indices.
    __device__ void accumulate(const uint32_t* bits, uint32_t bits_stride, const __half* probs, uint32_t stride,
                               uint32_t k_steps) {
        const uint32_t lane = threadIdx.x % 32, gq = lane / 4, c = lane % 4;
        const uint32_t shift = 7 - gq;
        const uint2* word[MPW];
        uint32_t s_lo[MPW], s_hi[MPW];
#pragma unroll
        for (int i = 0; i < MPW; ++i) {
            const uint32_t mt = m_tile0 + i, byte = (2 * mt) % 4;
            word[i] = reinterpret_cast<const uint2*>(bits + (mt / 2) * bits_stride + 2 * c);
            s_lo[i] = bit_pair_selector(byte);
            s_hi[i] = bit_pair_selector(byte + 1);
        }
        const __half* row[NPW];
#pragma unroll
        for (int j = 0; j < NPW; ++j) row[j] = probs + size_t((n_tile0 + j) * 8 + gq) * stride + 2 * c;
        for (uint32_t k = 0; k < k_steps; ++k) {
            uint32_t b[NPW][2];
#pragma unroll
            for (int j = 0; j < NPW; ++j) {
                b[j][0] = *reinterpret_cast<const uint32_t*>(row[j] + 16 * k);
                b[j][1] = *reinterpret_cast<const uint32_t*>(row[j] + 16 * k + 8);
            }
#pragma unroll
            for (int i = 0; i < MPW; ++i) {
                const uint2 x01 = word[i][8 * k], x89 = word[i][8 * k + 4];  // tokens t0, t0 + 1 and t0 + 8, t0 + 9
                const uint32_t x0 = x01.x << shift, x1 = x01.y << shift, x8 = x89.x << shift, x9 = x89.y << shift;
                const uint32_t a[4] = {bit_pair(x0, x1, s_lo[i]), bit_pair(x0, x1, s_hi[i]), bit_pair(x8, x9, s_lo[i]),
                                       bit_pair(x8, x9, s_hi[i])};
#pragma unroll
                for (int j = 0; j < NPW; ++j) mma_16816(acc[i][j], a, b[j][0], b[j][1]);
            }
        }
    }

    // Writes factor * sums to out[head][bit] for heads < n_heads (row stride
    // `stride` floats), bits counted from this CTA's slice start.
    __device__ void store(float* out, size_t stride, uint32_t n_heads, float factor) const {
        const uint32_t lane = threadIdx.x % 32, gq = lane / 4, c = lane % 4;
#pragma unroll
        for (int i = 0; i < MPW; ++i)
#pragma unroll
            for (int j = 0; j < NPW; ++j) {
                const uint32_t bit = (m_tile0 + i) * 16 + gq, head = (n_tile0 + j) * 8 + 2 * c;
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const uint32_t h = head + e % 2, b = bit + 8 * (e / 2);
                    if (h < n_heads) out[size_t(h) * stride + b] = acc[i][j][e] * factor;
                }
            }
    }
};

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
