// Scores of compressed tokens against the G queries of one KV head, formed
// from the codes with the head's sub-center table in shared memory.
//
// A token's key is sum_r z_{r,A_r} + i z_{r,B_r}: 2R table rows of P half2
// pairs. LPT = head_dim / 8 lanes share a token, each holding 4 pairs (one
// 16-byte load per row). Per warp step a warp scores TPW = 32 / LPT tokens
// per lane slot, TPL of them per lane (ScoreLanes): its lanes first turn the tokens' packed codes into table byte offsets (a
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

// s += a + b, pair by pair (the two rows summed first: two stages of one
// token's A or B parts).
__device__ __forceinline__ void add_rows(__half2 (&s)[4], uint4 a, uint4 b) {
    const __half2* ha = reinterpret_cast<const __half2*>(&a);
    const __half2* hb = reinterpret_cast<const __half2*>(&b);
#pragma unroll
    for (int k = 0; k < 4; ++k) s[k] = __hadd2(s[k], __hadd2(ha[k], hb[k]));
}

// How the lanes of a warp share the chunk's tokens: LPT lanes per token,
// TPW tokens side by side in a warp, each lane on TPL tokens at once, so a
// warp step scores kWarpTokens tokens and a lane's next step comes kStep
// tokens later.
template <int HEAD_DIM, int G>
struct ScoreLanes {
    static constexpr int LPT = lanes_per_token(HEAD_DIM);
    static constexpr int TPW = 32 / LPT;
    static constexpr int TPL = tokens_per_lane(HEAD_DIM, G);
    static constexpr int kWarpTokens = TPW * TPL;
    static constexpr int kStep = kWarps * kWarpTokens;
    // The chunk token of a lane's u-th token in its first step.
    static __device__ uint32_t first_token(uint32_t u) {
        return (threadIdx.x / 32) * kWarpTokens + u * TPW + (threadIdx.x % 32) / LPT;
    }
};

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
// as broadcasts. A lane works on TPL tokens at once (ScoreLanes), so that
// the gathers of one token are in flight while another's are summed.
template <int HEAD_DIM, int G>
__device__ void score_chunk(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t cn, uint32_t r0,
                            uint32_t rn, bool first_group, const float (&q)[G][8],
                            LaneRotation (&rot)[ScoreLanes<HEAD_DIM, G>::TPL]) {
    using S = ScoreLanes<HEAD_DIM, G>;
    constexpr int LPT = S::LPT, TPW = S::TPW, TPL = S::TPL;
    constexpr int kPasses = (32 + LPT - 1) / LPT;  // stage groups hold at most 32 stages
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / LPT, part = lane % LPT;
    const float* tok_scale = reinterpret_cast<const float*>(smem + L.tok_scale);
    const uint32_t* codes = reinterpret_cast<const uint32_t*>(smem + L.codes);
    const uint32_t* code_bit0 = reinterpret_cast<const uint32_t*>(smem + L.code_bit0);
    const float2* rot_step = reinterpret_cast<const float2*>(smem + L.rot_step);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    uint2* offsets = reinterpret_cast<uint2*>(smem + L.offsets) + warp * S::kWarpTokens * L.offsets_stages;
    const uint32_t table = shared_address(smem + L.table) + part * 16;
    constexpr uint32_t row_bytes = HEAD_DIM * 2, code_mask = (1u << kCodeBits) - 1;
    const uint32_t stages = L.offsets_stages, words = p.plan.code_words;
    // Token u of a lane's step is the step's token u * TPW + sub.
    uint32_t to[TPL];
#pragma unroll
    for (int u = 0; u < TPL; ++u) to[u] = shared_address(offsets + (u * TPW + sub) * stages);

    for (uint32_t base = warp * S::kWarpTokens; base < cn; base += S::kStep) {  // warp-uniform: shuffles
        __syncwarp();  // the previous step's offsets have been read
#pragma unroll
        for (int u = 0; u < TPL; ++u) {
            const uint32_t ts = u * TPW + sub, t = base + ts, tc = min(t, cn - 1);
            const uint32_t* w = codes + tc * words;
            const uint32_t bit0 = code_bit0[tc] + r0 * kCodeBits;
            const bool live = t < cn;
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
                if (r < stages) offsets[ts * stages + r] = o;
            }
        }
        __syncwarp();
        __half2 sa[TPL][4], sb[TPL][4];
#pragma unroll
        for (int u = 0; u < TPL; ++u)
#pragma unroll
            for (int k = 0; k < 4; ++k) sa[u][k] = sb[u][k] = __float2half2_rn(0.0f);
        // Two stages per token per iteration (offsets A_r, B_r, A_r+1, B_r+1
        // in one 16-byte read; stages is a multiple of 4); the next
        // iteration's offsets are read while this one's rows are gathered
        // (after the last, the same ones again).
        uint4 o[TPL];
#pragma unroll
        for (int u = 0; u < TPL; ++u) o[u] = lds128_after_stores(to[u]);
        for (uint32_t r = 0; r < stages; r += 2) {
            const uint32_t next = (r + 2 < stages ? r + 2 : r) * 8;
            uint4 n[TPL], a0[TPL], a1[TPL], b0[TPL], b1[TPL];
#pragma unroll
            for (int u = 0; u < TPL; ++u) {
                n[u] = lds128_after_stores(to[u] + next);
                a0[u] = lds128(table + o[u].x);
                a1[u] = lds128(table + o[u].z);
                b0[u] = lds128(table + o[u].y);
                b1[u] = lds128(table + o[u].w);
            }
#pragma unroll
            for (int u = 0; u < TPL; ++u) {
                add_rows(sa[u], a0[u], a1[u]);
                add_rows(sb[u], b0[u], b1[u]);
                o[u] = n[u];
            }
        }
        // k = z_A + i z_B, rotated by the token's position, dotted with the queries.
        float dot[TPL * G];
#pragma unroll
        for (int u = 0; u < TPL; ++u) {
#pragma unroll
            for (int h = 0; h < G; ++h) dot[u * G + h] = 0;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float2 f =
                    __half22float2(__hfma2(__lowhigh2highlow(sb[u][k]), __floats2half2_rn(-1.0f, 1.0f), sa[u][k]));
                const float x = f.x * rot[u].c[k] - f.y * rot[u].s[k], y = f.x * rot[u].s[k] + f.y * rot[u].c[k];
#pragma unroll
                for (int h = 0; h < G; ++h) dot[u * G + h] = fmaf(q[h][2 * k], x, fmaf(q[h][2 * k + 1], y, dot[u * G + h]));
            }
            rot[u].advance(rot_step, part);
        }
        // Each lane ends with the total of one (token, head): value index part / kLanesPerValue.
        const float total = HeadSums<LPT / 2, TPL * G>::run(dot, part);
        constexpr uint32_t kLanesPerValue = LPT / (TPL * G);
        const uint32_t vi = part / kLanesPerValue, h = vi % G, t = base + (vi / G) * TPW + sub;
        if (t < cn && part % kLanesPerValue == 0) {
            float* dst = scores + h * L.score_chunk + t;
            const float v = total * tok_scale[t];
            *dst = first_group ? v : *dst + v;
        }
    }
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
