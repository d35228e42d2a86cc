// Key encoding on the GPU: greedy residual search with the decomposition of
// docs/METHOD.md, so the C*C centers are never formed:
//   ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B}
// One block takes kTokens tokens of one KV head through all R stages; the
// residuals stay in registers from the first stage to the last. Per stage:
//
// 1. The stage's tables go to shared memory once for the block: sub-centers
//    (rows padded, so fragment loads hit 32 distinct banks), the cross table
//    gamma, the norms ||z_a||^2 and the row minima min_B gamma_{A,B}.
// 2. Dot products on tensor cores: per warp, tiles of 8 tokens form a 16-row
//    matrix (rows 0-7 the residuals t, rows 8-15 the same tokens' -i t)
//    times the 64 sub-centers, mma.m16n8k8 in TF32. Each operand is split
//    as x = big + small (both TF32) and big*big + big*small + small*big is
//    accumulated in fp32 ("3xTF32"): the dropped small*small term is below
//    2^-22 of each product, so <t, z_a> keeps about fp32 accuracy.
//    The K order within each group of 8 is (re of pairs 4kb..4kb+3, then
//    their im), so a lane's A fragment is the (re, im) of one pair of its
//    token: the -i t rows come from the same two registers, (x, y) -> (y, -x).
// 3. The argmin over the C*C candidates alpha_A + (beta_B + gamma_{A,B}),
//    by the four lanes (a quad) that hold the token's accumulators, pruned
//    with the row bound of key_row_bound: a row whose bound exceeds a
//    candidate's value cannot hold the minimum or a tie with it. The quad
//    first scans the row of least bound, then every row whose bound is not
//    above that row's minimum. Rounding to nearest is monotone, so the bound,
//    evaluated with the same association as the candidates, is a true lower
//    bound of every float candidate of its row: the pruned search returns
//    exactly the code of the full scan (lowest code among equal values), which
//    KeySearch::full_scan keeps for the tests.
// 4. t -= z_A + i z_B, each lane for its own 16 (or 8) pairs of the token.
#pragma once

#include <cfloat>

#include "device_common.cuh"

namespace commvq {
namespace cuda {
namespace key_encoding {

constexpr int kC = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTilesPerWarp = 2;              // tiles of 8 tokens; more reuse each sub-center fragment more
constexpr int kTokensPerWarp = 8 * kTilesPerWarp;
constexpr int kTokens = kWarps * kTokensPerWarp;
constexpr int kRowStride = kC + 8;            // floats per padded row of gamma
constexpr int kCostStride = 2 * kC + 8;       // floats per padded row of the alpha, beta scratch
// Blocks per SM the registers are capped for: 3 caps them at 168 (ptxas,
// sm_90: 152 bytes of spills for head_dim 128); 2 allows 255 without spills
// but leaves 8 warps per SM. Shared memory (71 KB per block) allows 3.
constexpr int kMinBlocksPerSM = 3;

template <int HEAD_DIM>
constexpr int center_stride() { return HEAD_DIM + 8; }  // floats per padded sub-center row

template <int HEAD_DIM>
constexpr size_t smem_bytes() {
    return (size_t(kC) * center_stride<HEAD_DIM>() + size_t(kC) * kRowStride + 2 * kC +
            size_t(kWarps) * 8 * kCostStride) * 4;
}

// The candidate cost without ||t||^2, in this association: the scan's
// formula, shared by the bound below.
__device__ __forceinline__ float key_cost(float alpha, float beta, float gamma) { return alpha + (beta + gamma); }

// Lower bound of key_cost(alpha_A, beta_B, gamma_{A,B}) over all B, given
// beta_min <= every beta_B and gamma_min <= every gamma_{A,B}: float addition
// rounds monotonically, so each partial sum is at least its bound's.
__device__ __forceinline__ float key_row_bound(float alpha, float beta_min, float gamma_row_min) {
    return key_cost(alpha, beta_min, gamma_row_min);
}

// Round to the nearest TF32 (10 mantissa bits); the result is exact in fp32.
__device__ __forceinline__ float tf32_round(float x) {
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
}

struct Split {
    uint32_t big, small;
};
__device__ __forceinline__ Split split_tf32(float x) {
    const float big = tf32_round(x);
    return {__float_as_uint(big), __float_as_uint(tf32_round(x - big))};
}

// d += a * b, one m16n8k8 TF32 product with fp32 accumulation.
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* global) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(uint32_t(__cvta_generic_to_shared(smem))),
                 "l"(global));
}

// Lexicographic minimum of (value, code): ties go to the lower code. NaN
// values never win (every comparison with them is false).
__device__ __forceinline__ void take_min(float& v, uint32_t& code, float ov, uint32_t oc) {
    if (ov < v || (ov == v && oc < code)) {
        v = ov;
        code = oc;
    }
}

enum class KeySearch { pruned, full_scan };

template <int HEAD_DIM, KeySearch SEARCH>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSM)
encode_kernel(const __grid_constant__ KeyTables tb, uint32_t n, uint32_t n_heads, uint32_t R, const float* t_all,
              uint16_t* codes) {
    constexpr int P = HEAD_DIM / 2;
    constexpr int KB = P / 4;          // k-groups of 8 (4 pairs) per dot product
    constexpr int NB = kC / 8;         // n-groups of 8 sub-centers
    constexpr int ZS = center_stride<HEAD_DIM>();
    extern __shared__ __align__(16) float sm[];
    float* z = sm;                           // [C][ZS] sub-centers, canonical pairs
    float* gamma = z + kC * ZS;              // [C][kRowStride] gamma_{A,B}
    float* norm = gamma + kC * kRowStride;   // [C] ||z_a||^2
    float* gamma_min = norm + kC;            // [C] min_B gamma_{A,B}
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // [8][kCostStride] alpha_a (a < C) then beta_a of this warp's tokens of
    // one tile: the scan reads them from here, which frees registers.
    float* costs = gamma_min + kC + warp * 8 * kCostStride;

    const uint32_t h = blockIdx.y;
    // Lane (g, c) of the mma layout: token g of each tile, pairs j = 4 kb + c,
    // sub-centers 8 nb + 2c + e (e = 0, 1) of the accumulators.
    const int g = lane / 4, c = lane % 4;
    const uint32_t tok0 = blockIdx.x * kTokens + warp * kTokensPerWarp;

    float2 t[kTilesPerWarp][KB];  // the residuals, re and im of pair 4 kb + c of token 8 tile + g
#pragma unroll
    for (int m = 0; m < kTilesPerWarp; ++m) {
        const uint32_t tok = tok0 + m * 8 + g;
#pragma unroll
        for (int kb = 0; kb < KB; ++kb)
            t[m][kb] = tok < n ? *reinterpret_cast<const float2*>(t_all + (size_t(tok) * n_heads + h) * HEAD_DIM +
                                                                 2 * (4 * kb + c))
                               : make_float2(0.0f, 0.0f);
    }

    for (uint32_t r = 0; r < R; ++r) {
        __syncthreads();  // every warp is done with the last stage's tables
        const size_t hr = size_t(h) * R + r;
        {
            const float* zg = tb.sub_centers + hr * kC * HEAD_DIM;
            for (int i = threadIdx.x; i < kC * HEAD_DIM / 4; i += kThreads) {
                const int a = i / (HEAD_DIM / 4), x = i % (HEAD_DIM / 4);
                cp_async16(z + a * ZS + 4 * x, zg + a * HEAD_DIM + 4 * x);
            }
            const float* gg = tb.cross + hr * kC * kC;
            for (int i = threadIdx.x; i < kC * kC / 4; i += kThreads) {
                const int a = i / (kC / 4), x = i % (kC / 4);
                cp_async16(gamma + a * kRowStride + 4 * x, gg + a * kC + 4 * x);
            }
            if (threadIdx.x < kC / 4) cp_async16(norm + 4 * threadIdx.x, tb.norms + hr * kC + 4 * threadIdx.x);
            else if (threadIdx.x < kC / 2)
                cp_async16(gamma_min + 4 * (threadIdx.x - kC / 4), tb.cross_row_min + hr * kC + 4 * (threadIdx.x - kC / 4));
            asm volatile("cp.async.wait_all;" ::: "memory");
        }
        __syncthreads();

        // <t, z_n> (acc 0, 1) and <t, i z_n> = <-i t, z_n> (acc 2, 3) for
        // n = 8 nb + 2c + (0, 1), by 3xTF32 products.
        float acc[kTilesPerWarp][NB][4];
#pragma unroll
        for (int m = 0; m < kTilesPerWarp; ++m)
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) acc[m][nb][0] = acc[m][nb][1] = acc[m][nb][2] = acc[m][nb][3] = 0.0f;
#pragma unroll
        for (int kb = 0; kb < KB; ++kb) {
            uint32_t a_big[kTilesPerWarp][4], a_small[kTilesPerWarp][4];
#pragma unroll
            for (int m = 0; m < kTilesPerWarp; ++m) {
                // Row g: (re, im) at k = c, c + 4; row g + 8: -i t = (im, -re).
                const Split x = split_tf32(t[m][kb].x), y = split_tf32(t[m][kb].y);
                a_big[m][0] = x.big, a_big[m][1] = y.big, a_big[m][2] = y.big, a_big[m][3] = x.big ^ 0x80000000u;
                a_small[m][0] = x.small, a_small[m][1] = y.small, a_small[m][2] = y.small,
                a_small[m][3] = x.small ^ 0x80000000u;
            }
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
                // B fragment: k = c, c + 4 of sub-center 8 nb + g = re, im of its pair 4 kb + c.
                const float2 zz = *reinterpret_cast<const float2*>(z + (8 * nb + g) * ZS + 2 * (4 * kb + c));
                const Split zr = split_tf32(zz.x), zi = split_tf32(zz.y);
#pragma unroll
                for (int m = 0; m < kTilesPerWarp; ++m) {
                    mma_tf32(acc[m][nb], a_small[m], zr.big, zi.big);  // small terms first
                    mma_tf32(acc[m][nb], a_big[m], zr.small, zi.small);
                    mma_tf32(acc[m][nb], a_big[m], zr.big, zi.big);
                }
            }
        }

#pragma unroll
        for (int m = 0; m < kTilesPerWarp; ++m) {
            // alpha_a = ||z_a||^2 - 2 <t, z_a>, beta_a = ||z_a||^2 - 2 <t, i z_a>;
            // this lane holds a = 8 nb + 2c + e.
            float* alpha_g = costs + g * kCostStride;
            float* beta_g = alpha_g + kC;
            float beta_min = FLT_MAX;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
                const float2 nn = *reinterpret_cast<const float2*>(norm + 8 * nb + 2 * c);
                const float2 beta = make_float2(nn.x - 2 * acc[m][nb][2], nn.y - 2 * acc[m][nb][3]);
                *reinterpret_cast<float2*>(beta_g + 8 * nb + 2 * c) = beta;
                beta_min = fminf(beta_min, fminf(beta.x, beta.y));
            }
            beta_min = fminf(beta_min, __shfl_xor_sync(0xffffffffu, beta_min, 1));
            beta_min = fminf(beta_min, __shfl_xor_sync(0xffffffffu, beta_min, 2));
            float bound_min = INFINITY;
            uint32_t A0 = 0;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
                const float2 nn = *reinterpret_cast<const float2*>(norm + 8 * nb + 2 * c);
                const float2 gm = *reinterpret_cast<const float2*>(gamma_min + 8 * nb + 2 * c);
                const float2 alpha = make_float2(nn.x - 2 * acc[m][nb][0], nn.y - 2 * acc[m][nb][1]);
                *reinterpret_cast<float2*>(alpha_g + 8 * nb + 2 * c) = alpha;
                const float bound[2] = {key_row_bound(alpha.x, beta_min, gm.x), key_row_bound(alpha.y, beta_min, gm.y)};
#pragma unroll
                for (int e = 0; e < 2; ++e)
                    if (bound[e] < bound_min) bound_min = bound[e], A0 = 8 * nb + 2 * c + e;
            }
            // The quad's row of least bound (any row would be correct; the
            // least bound is the likeliest to hold the minimum).
#pragma unroll
            for (int o = 1; o <= 2; o *= 2) {
                const float ob = __shfl_xor_sync(0xffffffffu, bound_min, o);
                const uint32_t oa = __shfl_xor_sync(0xffffffffu, A0, o);
                take_min(bound_min, A0, ob, oa);
            }
            __syncwarp();  // the costs written by the whole quad

            // Scans row A: B = 8 nb + 2c + e of this lane, in increasing
            // order, so a strict < keeps the lower code on ties.
            auto scan_row = [&](uint32_t A, float& best, uint32_t& best_code) {
                const float alpha = alpha_g[A];
                const float* grow = gamma + A * kRowStride;
#pragma unroll
                for (int nb = 0; nb < NB; ++nb) {
                    const float2 gg = *reinterpret_cast<const float2*>(grow + 8 * nb + 2 * c);
                    const float2 beta = *reinterpret_cast<const float2*>(beta_g + 8 * nb + 2 * c);
                    const float v0 = key_cost(alpha, beta.x, gg.x), v1 = key_cost(alpha, beta.y, gg.y);
                    if (v0 < best) best = v0, best_code = A * kC + 8 * nb + 2 * c;
                    if (v1 < best) best = v1, best_code = A * kC + 8 * nb + 2 * c + 1;
                }
            };
            // FLT_MAX and code 0 start both searches, as a full scan with a
            // strict < would: it names code 0 when no cost is below FLT_MAX.
            float first = FLT_MAX;
            uint32_t first_code = 0;
            scan_row(A0, first, first_code);
            float limit = fminf(first, __shfl_xor_sync(0xffffffffu, first, 1));
            limit = fminf(limit, __shfl_xor_sync(0xffffffffu, limit, 2));

            // The other rows that may hold the minimum or a tie with it: bound
            // not above limit (so NaN bounds are kept too), as a 64-bit set.
            // The bounds are formed again from the same floats (fewer live
            // registers than keeping them).
            uint64_t rows = 0;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
                const float2 alpha = *reinterpret_cast<const float2*>(alpha_g + 8 * nb + 2 * c);
                const float2 gm = *reinterpret_cast<const float2*>(gamma_min + 8 * nb + 2 * c);
                const float bound[2] = {key_row_bound(alpha.x, beta_min, gm.x), key_row_bound(alpha.y, beta_min, gm.y)};
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const bool keep = SEARCH == KeySearch::full_scan || !(bound[e] > limit);
                    rows |= uint64_t(keep) << (8 * nb + e);
                }
            }
            rows <<= 2 * c;
            rows |= __shfl_xor_sync(0xffffffffu, rows, 1);
            rows |= __shfl_xor_sync(0xffffffffu, rows, 2);
            rows &= ~(uint64_t(1) << A0);

            float best = FLT_MAX;
            uint32_t best_code = 0;
            while (rows) {  // quad-uniform: no shuffles inside
                const uint32_t A = __ffsll(static_cast<long long>(rows)) - 1;
                rows &= rows - 1;
                scan_row(A, best, best_code);
            }
            take_min(best, best_code, first, first_code);
#pragma unroll
            for (int o = 1; o <= 2; o *= 2) {
                const float ov = __shfl_xor_sync(0xffffffffu, best, o);
                const uint32_t oc = __shfl_xor_sync(0xffffffffu, best_code, o);
                take_min(best, best_code, ov, oc);
            }

            const uint32_t tok = tok0 + m * 8 + g;
            if (c == 0 && tok < n) codes[(size_t(tok) * n_heads + h) * R + r] = uint16_t(best_code);
            const uint32_t A = best_code / kC, B = best_code % kC;
#pragma unroll
            for (int kb = 0; kb < KB; ++kb) {  // t -= z_A + i z_B
                const float2 za = *reinterpret_cast<const float2*>(z + A * ZS + 2 * (4 * kb + c));
                const float2 zb = *reinterpret_cast<const float2*>(z + B * ZS + 2 * (4 * kb + c));
                t[m][kb].x -= za.x - zb.y;
                t[m][kb].y -= za.y + zb.x;
            }
            __syncwarp();  // costs are rewritten by the next tile
        }
    }
}

}  // namespace key_encoding
}  // namespace cuda
}  // namespace commvq
