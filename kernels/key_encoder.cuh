// Key encoding on the GPU: greedy residual search with the decomposition of
// docs/METHOD.md, so the C*C centers are never formed:
//   ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}
// One block takes kTokens tokens of one KV head through all R stages. Per
// stage the head's sub-centers (transposed, so a lane reads two sub-centers
// with one 16-byte load), the 64x64 cross table and the norms sit in shared
// memory; a warp scores 8 tokens: lane l forms the four dot products of
// sub-centers 2l and 2l+1, then scans B for A = l and l + 32; the warp's
// minimum (ties to the lower code) names the stage code.
#pragma once

#include <cfloat>

#include "device_common.cuh"

namespace commvq {
namespace cuda {
namespace key_encoding {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTokensPerWarp = 8;
constexpr int kTokens = kWarps * kTokensPerWarp;
constexpr int kC = 64;

template <int HEAD_DIM>
constexpr size_t smem_bytes() {
    return (size_t(kTokens) * HEAD_DIM + size_t(HEAD_DIM / 2) * kC * 2 + kC * kC + kC + size_t(kTokens) * 2 * kC) * 4;
}

template <int HEAD_DIM>
__global__ void __launch_bounds__(kThreads)
encode_kernel(const __grid_constant__ KeyTables tb, uint32_t n, uint32_t n_heads, uint32_t R, const float* t_all,
              uint16_t* codes) {
    constexpr int P = HEAD_DIM / 2;
    extern __shared__ __align__(16) float sm[];
    float* t = sm;                                            // [kTokens][HEAD_DIM] residuals
    float2* zt = reinterpret_cast<float2*>(t + kTokens * HEAD_DIM);  // [P][C] sub-centers, transposed
    float* gt = reinterpret_cast<float*>(zt + P * kC);         // [C][C]: gt[B][A] = gamma_{A,B}
    float* norm = gt + kC * kC;                               // [C]
    float* ab = norm + kC;                                    // [kTokens][2C]: alpha, then beta

    const uint32_t h = blockIdx.y, tok0 = blockIdx.x * kTokens;
    const uint32_t tn = tmin<uint32_t>(kTokens, n - tok0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    for (uint32_t i = threadIdx.x; i < kTokens * HEAD_DIM; i += kThreads)
        t[i] = i / HEAD_DIM < tn ? t_all[(size_t(tok0 + i / HEAD_DIM) * n_heads + h) * HEAD_DIM + i % HEAD_DIM] : 0.0f;

    for (uint32_t r = 0; r < R; ++r) {
        __syncthreads();
        const size_t hr = size_t(h) * R + r;
        const float* z = tb.sub_centers + hr * kC * HEAD_DIM;
        // Transposed on the way in; consecutive threads write consecutive
        // shared-memory words (no bank conflicts) and read from L2.
        for (uint32_t i = threadIdx.x; i < kC * P; i += kThreads) {
            const uint32_t a = i % kC, j = i / kC;
            zt[i] = *reinterpret_cast<const float2*>(z + a * HEAD_DIM + 2 * j);
        }
        for (uint32_t i = threadIdx.x; i < kC * kC; i += kThreads) gt[i] = tb.cross[hr * kC * kC + (i % kC) * kC + i / kC];
        if (threadIdx.x < kC) norm[threadIdx.x] = tb.norms[hr * kC + threadIdx.x];
        __syncthreads();

        const uint32_t first = warp * kTokensPerWarp;
        if (first >= tn) continue;
        // alpha_a = ||z_a||^2 - 2 <t, z_a>, beta_a = ||z_a||^2 - 2 <t, i z_a>
        float da[kTokensPerWarp][2], db[kTokensPerWarp][2];
#pragma unroll
        for (int k = 0; k < kTokensPerWarp; ++k) da[k][0] = da[k][1] = db[k][0] = db[k][1] = 0;
        for (int j = 0; j < P; ++j) {
            const float4 zz = *reinterpret_cast<const float4*>(zt + j * kC + 2 * lane);
#pragma unroll
            for (int k = 0; k < kTokensPerWarp; ++k) {
                const float2 tt = *reinterpret_cast<const float2*>(t + (first + k) * HEAD_DIM + 2 * j);
                da[k][0] += tt.x * zz.x + tt.y * zz.y;
                db[k][0] += tt.y * zz.x - tt.x * zz.y;
                da[k][1] += tt.x * zz.z + tt.y * zz.w;
                db[k][1] += tt.y * zz.z - tt.x * zz.w;
            }
        }
#pragma unroll
        for (int k = 0; k < kTokensPerWarp; ++k) {
            float* row = ab + (first + k) * 2 * kC;
            row[2 * lane] = norm[2 * lane] - 2 * da[k][0];
            row[2 * lane + 1] = norm[2 * lane + 1] - 2 * da[k][1];
            row[kC + 2 * lane] = norm[2 * lane] - 2 * db[k][0];
            row[kC + 2 * lane + 1] = norm[2 * lane + 1] - 2 * db[k][1];
        }
        __syncwarp();
        // Lane l scans B for A = l and A = l + 32; B increases, so a strict <
        // keeps the lower code on ties.
        float best[kTokensPerWarp][2];
        uint32_t best_b[kTokensPerWarp][2];
        float alpha[kTokensPerWarp][2];
#pragma unroll
        for (int k = 0; k < kTokensPerWarp; ++k) {
            alpha[k][0] = ab[(first + k) * 2 * kC + lane];
            alpha[k][1] = ab[(first + k) * 2 * kC + lane + 32];
            best[k][0] = best[k][1] = FLT_MAX;
            best_b[k][0] = best_b[k][1] = 0;
        }
        for (int b = 0; b < kC; ++b) {
            const float g0 = gt[b * kC + lane], g1 = gt[b * kC + lane + 32];
#pragma unroll
            for (int k = 0; k < kTokensPerWarp; ++k) {
                const float beta = ab[(first + k) * 2 * kC + kC + b];
                const float v0 = alpha[k][0] + (beta + g0), v1 = alpha[k][1] + (beta + g1);
                if (v0 < best[k][0]) { best[k][0] = v0; best_b[k][0] = b; }
                if (v1 < best[k][1]) { best[k][1] = v1; best_b[k][1] = b; }
            }
        }
#pragma unroll
        for (int k = 0; k < kTokensPerWarp; ++k) {
            if (first + k >= tn) break;
            float v = best[k][0];
            uint32_t code = lane * kC + best_b[k][0];
            if (best[k][1] < v) {
                v = best[k][1];
                code = (lane + 32) * kC + best_b[k][1];
            }
#pragma unroll
            for (int o = 16; o > 0; o /= 2) {
                const float ov = __shfl_xor_sync(0xffffffffu, v, o);
                const uint32_t oc = __shfl_xor_sync(0xffffffffu, code, o);
                if (ov < v || (ov == v && oc < code)) { v = ov; code = oc; }
            }
            const uint32_t A = code / kC, B = code % kC;
            float* tt = t + (first + k) * HEAD_DIM;
            for (int j = lane; j < P; j += 32) {  // t -= z_A + i z_B
                const float2 za = zt[j * kC + A], zb = zt[j * kC + B];
                tt[2 * j] -= za.x - zb.y;
                tt[2 * j + 1] -= za.y + zb.x;
            }
            if (lane == 0) codes[(size_t(tok0 + first + k) * n_heads + h) * R + r] = uint16_t(code);
        }
        __syncwarp();
    }
}

}  // namespace key_encoding
}  // namespace cuda
}  // namespace commvq
