// Scores of compressed tokens against the G queries of one KV head, formed
// from the codes with the head's sub-center table in shared memory.
//
// A token's key is sum_r z_{r,A_r} + i z_{r,B_r}: 2R table rows of P half2
// pairs. LPT = head_dim / 8 lanes share a token, each holding 4 pairs (one
// 16-byte load per row). Per warp step a warp scores TPW = 32 / LPT tokens:
// its lanes first turn the tokens' packed codes into table byte offsets (a
// per-warp scratch in shared memory, read back as broadcasts), then each
// lane gathers its 2R rows, sums them in half2 (pairwise within groups of
// four stages), rotates the key to its position and dots it with the G
// queries in fp32. The rotation angle advances by a fixed step per warp
// step (angle addition, LaneRotation); the G dot products
// are reduced over the LPT lanes with one butterfly that leaves each lane
// one head's sum.
#pragma once

#include <cuda_fp16.h>

#include "attention/async_copy.cuh"
#include "attention/layout.h"
#include "device_common.cuh"

namespace commvq {
namespace cuda {
namespace attention {

// The lane's 4 pairs of the G queries of KV head g, scaled into log2 units.
template <int HEAD_DIM, int G>
__device__ __forceinline__ void load_queries(const AttendParams& p, uint32_t row, uint32_t g, uint32_t part,
                                             float (&q)[G][8]) {
    const ModelShape& m = p.m;
#pragma unroll
    for (int h = 0; h < G; ++h) {
        const size_t head = (size_t(row) * m.n_q_heads + g * G + h) * HEAD_DIM;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t j = 4 * part + k;
            q[h][2 * k] = load_element(p.q, head + model_index(j, 0, HEAD_DIM, m.pair_layout), p.slots.io_dtype) * p.q_scale;
            q[h][2 * k + 1] = load_element(p.q, head + model_index(j, 1, HEAD_DIM, m.pair_layout), p.slots.io_dtype) * p.q_scale;
        }
    }
}

// Sums v[0..N) over the lanes of one token (xor offsets O, O/2, ..., 1): on
// each of the first log2(N) levels a lane keeps half of its values and adds
// its partner's copy of them, so each lane ends with the total of head
// part / (2 O_first / N) (O_first = LPT / 2), with about half the shuffles
// of N separate reductions.
template <int O, int N>
struct HeadSums {
    static __device__ __forceinline__ float run(const float* v, uint32_t part) {
        if constexpr (N == 1) {
            if constexpr (O == 0) {
                return v[0];
            } else {
                const float t[1] = {v[0] + __shfl_xor_sync(0xffffffffu, v[0], O)};
                return HeadSums<O / 2, 1>::run(t, part);
            }
        } else {
            const bool upper = part & O;
            float t[N / 2];
#pragma unroll
            for (int i = 0; i < N / 2; ++i) {
                const float send = upper ? v[i] : v[i + N / 2];
                const float keep = upper ? v[i + N / 2] : v[i];
                t[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
            }
            return HeadSums<O / 2, N / 2>::run(t, part);
        }
    }
};

__device__ __forceinline__ uint4 lds128(uint32_t address) {
    uint4 v;
    asm("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(address));
    return v;
}

// The same, ordered after the shared-memory stores before it (the scratch
// written by other lanes of the warp just before).
__device__ __forceinline__ uint4 lds128_after_stores(uint32_t address) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(address)
                 : "memory");
    return v;
}

__device__ __forceinline__ void add_rows(__half2 (&s)[4], uint4 a, uint4 b, uint4 c, uint4 d) {
    const __half2* ha = reinterpret_cast<const __half2*>(&a);
    const __half2* hb = reinterpret_cast<const __half2*>(&b);
    const __half2* hc = reinterpret_cast<const __half2*>(&c);
    const __half2* hd = reinterpret_cast<const __half2*>(&d);
#pragma unroll
    for (int k = 0; k < 4; ++k) s[k] = __hadd2(s[k], __hadd2(__hadd2(ha[k], hb[k]), __hadd2(hc[k], hd[k])));
}

// The RoPE rotation of one lane's current token for the lane's 4 pairs,
// advanced from token to token by angle addition (one complex product per
// pair) rather than computed: set() is exact (a double-precision angle
// reduced modulo one turn), advance() moves by the lane's token step, whose
// rotations (per pair) sit in shared memory (L.rot_step, written once by
// write_steps). The state is carried from chunk to chunk (a lane's last
// token of one chunk is one step before its first of the next) and set
// exactly again every kExactEvery chunks, so the fp32 recurrence never runs
// long.
struct LaneRotation {
    static constexpr uint32_t kExactEvery = 16;
    float c[4], s[4];

    __device__ void set(const AttendParams& p, uint32_t part, uint64_t position) {
#pragma unroll
        for (int k = 0; k < 4; ++k) rope_angle(position, p.rope_freq[4 * part + k], &c[k], &s[k]);
    }
    // step[j] = (cos, sin) of pair j's angle over `tokens` tokens, for all P pairs.
    static __device__ void write_steps(const AttendParams& p, float2* step, uint32_t pairs, uint32_t tokens) {
        for (uint32_t j = threadIdx.x; j < pairs; j += kThreads) rope_angle(tokens, p.rope_freq[j], &step[j].x, &step[j].y);
    }
    __device__ __forceinline__ void advance(const float2* step, uint32_t part) {
        const float4 a = reinterpret_cast<const float4*>(step)[2 * part];
        const float4 b = reinterpret_cast<const float4*>(step)[2 * part + 1];
        const float sc[4] = {a.x, a.z, b.x, b.z}, ss[4] = {a.y, a.w, b.y, b.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float c_next = c[k] * sc[k] - s[k] * ss[k];
            s[k] = c[k] * ss[k] + s[k] * sc[k];
            c[k] = c_next;
        }
    }
};

// Scores of the chunk's tokens [0, cn) (compressed indices c0 + i) for the
// table's stages r0 .. r0 + rn - 1: written to scores[h][i] for the first
// stage group, added for later ones. tok_scale holds each token's key
// scale, codes / code_bit0 the words that hold its stage codes of this head
// (staged by the caller a chunk ahead, so no global load is waited for
// here). Per warp step, lane `part` of a token takes that token's stages
// part, part + LPT, ... out of the staged words and writes their table
// offsets to the warp's scratch, which every lane of the token then reads
// as broadcasts.
template <int HEAD_DIM, int G>
__device__ void score_chunk(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t cn, uint32_t r0,
                            uint32_t rn, bool first_group, const float (&q)[G][8], LaneRotation& rot) {
    constexpr int LPT = HEAD_DIM / 8;
    constexpr int TPW = 32 / LPT;
    constexpr int kStep = kWarps * TPW;  // tokens between a lane's consecutive tokens
    constexpr int kPasses = (32 + LPT - 1) / LPT;  // stage groups hold at most 32 stages
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / LPT, part = lane % LPT;
    const float* tok_scale = reinterpret_cast<const float*>(smem + L.tok_scale);
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(smem + L.codes);
    const uint32_t* code_bit0 = reinterpret_cast<const uint32_t*>(smem + L.code_bit0);
    const float2* rot_step = reinterpret_cast<const float2*>(smem + L.rot_step);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    uint2* offsets = reinterpret_cast<uint2*>(smem + L.offsets) + warp * TPW * L.offsets_stages;
    const uint32_t table = shared_address(smem + L.table) + part * 16;
    const uint32_t to = shared_address(offsets + sub * L.offsets_stages);
    constexpr uint32_t row_bytes = HEAD_DIM * 2, code_mask = (1u << kCodeBits) - 1;
    const uint32_t stages = L.offsets_stages, words = p.plan.code_words;

    for (uint32_t base = warp * TPW; base < cn; base += kStep) {  // warp-uniform: the shuffles need every lane
        const uint32_t t = base + sub, tc = min(t, cn - 1);
        const uint32_t* w = codes + tc * words;
        const uint32_t bit0 = code_bit0[tc] + r0 * kCodeBits;
        const bool live = t < cn;
        __syncwarp();  // the previous step's offsets have been read
#pragma unroll
        for (int k = 0; k < kPasses; ++k) {
            if (k > 0 && stages <= k * LPT) break;  // warp-uniform
            // Computed by every lane without branches; lanes past the
            // group's stages read staged words they do not use.
            const uint32_t r = part + k * LPT, bit = bit0 + r * kCodeBits, i = bit / 32;
            const uint32_t code = __funnelshift_r(w[i], w[i + 1], bit) & code_mask;
            const uint32_t row0 = r * kSubCenters * row_bytes;
            const bool used = live && r < rn;
            const uint2 o = make_uint2(used ? row0 + (code / kSubCenters) * row_bytes : L.zero_row,
                                       used ? row0 + (code % kSubCenters) * row_bytes : L.zero_row);
            if (r < stages) offsets[sub * stages + r] = o;
        }
        __syncwarp();
        __half2 sa[4], sb[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) sa[k] = sb[k] = __float2half2_rn(0.0f);
        // The offsets of the next 4 stages are read while this 4's rows are
        // gathered (after the last 4, the same ones again).
        uint4 o01 = lds128_after_stores(to), o23 = lds128_after_stores(to + 16);
        for (uint32_t r = 0; r < stages; r += 4) {
            const uint32_t next_r = r + 4 < stages ? r + 4 : r;
            const uint4 n01 = lds128_after_stores(to + next_r * 8), n23 = lds128_after_stores(to + next_r * 8 + 16);
            add_rows(sa, lds128(table + o01.x), lds128(table + o01.z), lds128(table + o23.x), lds128(table + o23.z));
            add_rows(sb, lds128(table + o01.y), lds128(table + o01.w), lds128(table + o23.y), lds128(table + o23.w));
            o01 = n01;
            o23 = n23;
        }
        // k = z_A + i z_B, rotated by the token's position, dotted with the queries.
        float dot[G];
#pragma unroll
        for (int h = 0; h < G; ++h) dot[h] = 0;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float2 f = __half22float2(__hfma2(__lowhigh2highlow(sb[k]), __floats2half2_rn(-1.0f, 1.0f), sa[k]));
            const float x = f.x * rot.c[k] - f.y * rot.s[k], y = f.x * rot.s[k] + f.y * rot.c[k];
#pragma unroll
            for (int h = 0; h < G; ++h) dot[h] = fmaf(q[h][2 * k], x, fmaf(q[h][2 * k + 1], y, dot[h]));
        }
        rot.advance(rot_step, part);
        const float total = HeadSums<LPT / 2, G>::run(dot, part);
        constexpr uint32_t kLanesPerHead = LPT / G;
        if (t < cn && part % kLanesPerHead == 0) {
            float* dst = scores + (part / kLanesPerHead) * L.score_chunk + t;
            const float v = total * tok_scale[t];
            *dst = first_group ? v : *dst + v;
        }
    }
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
