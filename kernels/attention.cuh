// Attention from codes: one query row per blockIdx.z, one KV head per
// blockIdx.y, and blockIdx.x splitting the compressed tokens of the row's
// sequence into ranges (split-K, so one long sequence fills the GPU); the
// last x-block takes the uncompressed tokens (sinks and window).
//
// A compressed token's key is formed from its codes with the KV head's
// sub-center table held in shared memory as half2 (one complex number per
// entry), once per KV head and shared by the G query heads of the group; it
// is rotated to its position with angles computed in registers and dotted
// with the G queries in fp32. Values are accumulated in code space: each
// thread owns BPT code bits of the 2n and sums p * w over the tokens whose
// bit is set; E is applied once per query by the merge kernels
// (attention.cu), which also combine the splits (each split's max and sum,
// log2 domain).
#pragma once

#include <cfloat>

#include "device_common.cuh"

namespace commvq {
namespace cuda {
namespace attention {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;        // tokens whose codes are unpacked together
constexpr int kFlushStages = 4;  // stages summed in half precision before fp32

// Code bits whose codewords one merge block applies (merge kernels).
constexpr uint32_t kMergeBits = 64;

// Where the partial results of the splits sit in the caller's workspace:
//   codes  [rows][splits][n_q_heads][2n]     code-space sums of p * w * bits
//   values [rows][n_q_heads][head_dim]       uncompressed tokens' sums of p * v
//   ml     [rows][splits + 1][n_q_heads][2]  running max (log2) and sum of p
//   applied [rows][2n / kMergeBits][n_q_heads][head_dim]  E applied to slices of the merged code sums
struct PartialLayout {
    size_t codes = 0, values, ml, applied, total;
    __host__ __device__ PartialLayout(const ModelShape& m, uint32_t rows, uint32_t splits) {
        values = size_t(rows) * splits * m.n_q_heads * m.value_code_bits;
        ml = values + size_t(rows) * m.n_q_heads * m.head_dim;
        applied = ml + size_t(rows) * (splits + 1) * m.n_q_heads * 2;
        total = applied + size_t(rows) * (m.value_code_bits / kMergeBits) * m.n_q_heads * m.head_dim;
    }
};

__host__ __device__ inline uint32_t align_up(uint32_t x, uint32_t a) { return (x + a - 1) / a * a; }

// Offsets inside the dynamic shared memory after the table.
template <int G>
struct SmemLayout {
    uint32_t scores, codes, value_codes, tile_block, token_scale, token_weight, run_max, run_sum, rescale, total;
    __host__ __device__ SmemLayout(uint32_t table_bytes, uint32_t chunk, uint32_t stages, uint32_t value_code_bytes) {
        scores = align_up(table_bytes, 16);
        codes = scores + G * chunk * 4;
        value_codes = align_up(codes + kTile * stages * 2, 16);
        tile_block = value_codes + kTile * value_code_bytes;
        token_scale = tile_block + kTile * 4;
        token_weight = token_scale + chunk * 4;
        run_max = token_weight + chunk * 4;
        run_sum = run_max + G * 4;
        rescale = run_sum + G * 4;
        total = rescale + G * 4;
    }
};

// One row's running softmax over a chunk of scores already in shared
// memory: updates max and sum, turns scores[h][i] into p * weight[i] and
// leaves the factor by which older accumulators must be scaled.
template <int G>
__device__ void softmax_chunk(float* scores, uint32_t chunk, uint32_t n, const float* weight, float* run_max,
                              float* run_sum, float* rescale) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int h = warp; h < G; h += kWarps) {
        float* s = scores + h * chunk;
        float mx = -FLT_MAX;
        for (uint32_t i = lane; i < n; i += 32) mx = fmaxf(mx, s[i]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_old = run_max[h];
        const float m_new = fmaxf(m_old, mx);
        float sum = 0;
        for (uint32_t i = lane; i < n; i += 32) {
            const float p = exp2f(s[i] - m_new);
            sum += p;
            s[i] = weight ? p * weight[i] : p;
        }
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        __syncwarp();  // every lane has read run_max[h] before lane 0 replaces it
        if (lane == 0) {
            const float a = m_old == -FLT_MAX ? 0.0f : exp2f(m_old - m_new);
            rescale[h] = a;
            run_sum[h] = run_sum[h] * a + sum;
            run_max[h] = m_new;
        }
    }
}

// Sum of the lane's part of a dot product over the LPT lanes of one token.
template <int LPT>
__device__ __forceinline__ float token_sum(float x) {
#pragma unroll
    for (int o = LPT / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// HEAD_DIM: 64 or 128; G: query heads per KV head; BPT: value code bits per
// thread (2n / kThreads).
template <int HEAD_DIM, int G, int BPT>
__global__ void __launch_bounds__(kThreads, 1)
attend_kernel(const __grid_constant__ AttendParams p, uint32_t stages_per_group, uint32_t chunk) {
    constexpr int P = HEAD_DIM / 2;
    constexpr int LPT = HEAD_DIM / 8;  // lanes per token: 4 pairs (16 bytes of half2) each
    constexpr int TPW = 32 / LPT;      // tokens per warp at a time
    extern __shared__ __align__(16) uint8_t smem[];

    const ModelShape& m = p.m;
    const uint32_t row = blockIdx.z, g = blockIdx.y, split = blockIdx.x;
    const uint32_t seq = p.seq[row];
    const SeqState st = p.states[seq];
    const uint64_t visible = st.length - min(st.length, p.hidden[row]);
    const uint32_t R = m.key_stages, C = m.sub_centers;

    const SmemLayout<G> L(stages_per_group * C * P * 4, chunk, stages_per_group, m.value_code_bits / 8);
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    uint16_t* codes = reinterpret_cast<uint16_t*>(smem + L.codes);
    float* token_scale = reinterpret_cast<float*>(smem + L.token_scale);
    float* token_weight = reinterpret_cast<float*>(smem + L.token_weight);
    uint32_t* value_codes = reinterpret_cast<uint32_t*>(smem + L.value_codes);
    uint32_t* tile_block = reinterpret_cast<uint32_t*>(smem + L.tile_block);
    float* run_max = reinterpret_cast<float*>(smem + L.run_max);
    float* run_sum = reinterpret_cast<float*>(smem + L.run_sum);
    float* rescale = reinterpret_cast<float*>(smem + L.rescale);
    if (threadIdx.x < G) {
        run_max[threadIdx.x] = -FLT_MAX;
        run_sum[threadIdx.x] = 0;
    }

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int sub = lane / LPT;   // which token of the warp's TPW
    const int part = lane % LPT;  // pairs 4 * part .. 4 * part + 3

    // The G queries of this KV head, the lane's 4 pairs each.
    float q[G][8];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        const float4* qp = reinterpret_cast<const float4*>(p.q + (size_t(row) * m.n_q_heads + g * G + h) * HEAD_DIM + 8 * part);
        const float4 a = qp[0], b = qp[1];
        q[h][0] = a.x; q[h][1] = a.y; q[h][2] = a.z; q[h][3] = a.w;
        q[h][4] = b.x; q[h][5] = b.y; q[h][6] = b.z; q[h][7] = b.w;
    }
    double freq[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) freq[k] = p.rope_freq[4 * part + k];

    const uint32_t n_splits = gridDim.x - 1;
    const PartialLayout pl(m, p.n_rows, n_splits);
    float* ml = p.partials + pl.ml + (size_t(row) * (n_splits + 1) + split) * m.n_q_heads * 2;

    if (split == n_splits) {
        // ---- uncompressed tokens: sinks and window, values in value space ----
        const UncompressedView& u = p.slots;
        const uint32_t element_bytes = u.half_bytes / (m.n_kv_heads * HEAD_DIM);
        const uint64_t n_sink = tmin<uint64_t>(st.sinks, visible);
        const uint64_t first_window = uint64_t(st.sinks) + st.compressed;
        const uint64_t n_window = visible > first_window ? visible - first_window : 0;
        const uint64_t n = n_sink + n_window;
        float acc[G];
#pragma unroll
        for (int h = 0; h < G; ++h) acc[h] = 0;
        const uint32_t c = threadIdx.x;  // value channel of this thread (if < HEAD_DIM)
        for (uint64_t t0 = 0; t0 < n; t0 += chunk) {
            const uint32_t tn = uint32_t(tmin<uint64_t>(chunk, n - t0));
            // Warp-uniform loop (the shuffles need every lane): lanes past
            // the end redo the last token and write nothing.
            for (uint32_t base = warp * TPW; base < tn; base += kWarps * TPW) {
                const uint32_t i = tmin<uint32_t>(base + sub, tn - 1);
                const bool valid = base + sub < tn;
                const uint64_t idx = t0 + i;
                const uint64_t pos = idx < n_sink ? idx : first_window + (idx - n_sink);
                const uint8_t* key = slot_address(u, seq, pos) + size_t(g) * HEAD_DIM * element_bytes;
                float kr[4], ki[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    const uint32_t j = 4 * part + k;
                    kr[k] = load_element(key, model_index(j, 0, HEAD_DIM, m.pair_layout), u.io_dtype);
                    ki[k] = load_element(key, model_index(j, 1, HEAD_DIM, m.pair_layout), u.io_dtype);
                    if (u.key_convention == COMMVQ_KEYS_PRE_ROPE) {
                        float cs, sn;
                        rope_angle(pos, freq[k], &cs, &sn);
                        const float r = kr[k] * cs - ki[k] * sn;
                        ki[k] = kr[k] * sn + ki[k] * cs;
                        kr[k] = r;
                    }
                }
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    float s = 0;
#pragma unroll
                    for (int k = 0; k < 4; ++k) s += q[h][2 * k] * kr[k] + q[h][2 * k + 1] * ki[k];
                    s = token_sum<LPT>(s);
                    if (part == 0 && valid) scores[h * chunk + i] = s;
                }
            }
            __syncthreads();
            softmax_chunk<G>(scores, chunk, tn, nullptr, run_max, run_sum, rescale);
            __syncthreads();
            if (c < HEAD_DIM) {
#pragma unroll
                for (int h = 0; h < G; ++h) acc[h] *= rescale[h];
                for (uint32_t i = 0; i < tn; ++i) {
                    const uint64_t idx = t0 + i;
                    const uint64_t pos = idx < n_sink ? idx : first_window + (idx - n_sink);
                    const uint8_t* val = slot_address(u, seq, pos) + u.half_bytes;
                    const float v = load_element(val, size_t(g) * HEAD_DIM + c, u.io_dtype);
#pragma unroll
                    for (int h = 0; h < G; ++h) acc[h] += scores[h * chunk + i] * v;
                }
            }
            __syncthreads();
        }
        float* out = p.partials + pl.values + size_t(row) * m.n_q_heads * HEAD_DIM;
        if (c < HEAD_DIM) {
#pragma unroll
            for (int h = 0; h < G; ++h) out[(g * G + h) * HEAD_DIM + c] = acc[h];
        }
        if (threadIdx.x < G) {
            ml[2 * (g * G + threadIdx.x)] = run_max[threadIdx.x];
            ml[2 * (g * G + threadIdx.x) + 1] = run_sum[threadIdx.x];
        }
        return;
    }

    // ---- compressed tokens [t_begin, t_end) of this split ----
    const PoolView& pool = p.pool;
    const uint64_t n_comp = visible > st.sinks ? tmin<uint64_t>(st.compressed, visible - st.sinks) : 0;
    const uint64_t per_split = (n_comp + n_splits - 1) / n_splits;
    const uint64_t t_begin = tmin<uint64_t>(n_comp, uint64_t(split) * per_split);
    const uint64_t t_end = tmin<uint64_t>(n_comp, t_begin + per_split);
    const uint32_t n_groups = (R + stages_per_group - 1) / stages_per_group;
    const __half2* table = reinterpret_cast<const __half2*>(smem);
    const uint4* table_src = reinterpret_cast<const uint4*>(p.key_table) + size_t(g) * R * C * P / 4;
    const uint32_t key_bit0 = g * R * m.code_bits;
    const uint32_t code_mask = (1u << m.code_bits) - 1;
    const uint32_t scale_index = m.n_key_scales == 1 ? 0 : g;
    const size_t table_row = size_t(seq) * pool.table_stride;

    float acc[G][BPT];
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
        for (int k = 0; k < BPT; ++k) acc[h][k] = 0;

    uint32_t loaded_group = ~0u;
    for (uint64_t c0 = t_begin; c0 < t_end; c0 += chunk) {
        const uint32_t cn = uint32_t(tmin<uint64_t>(chunk, t_end - c0));
        for (uint32_t grp = 0; grp < n_groups; ++grp) {
            const uint32_t r0 = grp * stages_per_group;
            const uint32_t rn = min(stages_per_group, R - r0);
            if (grp != loaded_group) {
                __syncthreads();
                uint4* dst = reinterpret_cast<uint4*>(smem);
                const uint32_t n16 = rn * C * P / 4;
                for (uint32_t i = threadIdx.x; i < n16; i += kThreads) dst[i] = table_src[size_t(r0) * C * P / 4 + i];
                loaded_group = grp;
            }
            for (uint32_t t0 = 0; t0 < cn; t0 += kTile) {
                const uint32_t tn = tmin<uint32_t>(kTile, cn - t0);
                __syncthreads();
                // The tile's blocks (one table lookup per token), scales and weights.
                if (threadIdx.x < tn) {
                    const uint32_t ci = uint32_t(c0) + t0 + threadIdx.x;
                    const uint32_t blk = uint32_t(pool.block_tables[table_row + ci / pool.block_tokens]);
                    tile_block[threadIdx.x] = blk;
                    if (grp == 0) {
                        const uint8_t* b = pool.base + size_t(blk) * pool.block_bytes;
                        const uint32_t slot = ci % pool.block_tokens;
                        token_scale[t0 + threadIdx.x] =
                            reinterpret_cast<const float*>(b + pool.key_scales_offset)[slot * m.n_key_scales + scale_index];
                        token_weight[t0 + threadIdx.x] = reinterpret_cast<const float*>(b + pool.value_weights_offset)[slot];
                    }
                }
                __syncthreads();
                // Unpack the tile's codes of this head and stage group.
                for (uint32_t i = threadIdx.x; i < tn * rn; i += kThreads) {
                    const uint32_t tok = i / rn, r = i % rn;
                    const uint32_t slot = (uint32_t(c0) + t0 + tok) % pool.block_tokens;
                    const uint8_t* kc = pool.base + size_t(tile_block[tok]) * pool.block_bytes + pool.key_codes_offset +
                                        slot * pool.key_code_bytes;
                    const uint32_t bit = key_bit0 + (r0 + r) * m.code_bits;
                    const uint8_t* b = kc + bit / 8;
                    const uint32_t word = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16;
                    codes[tok * stages_per_group + r] = uint16_t((word >> (bit % 8)) & code_mask);
                }
                __syncthreads();
                for (uint32_t base = warp * TPW; base < tn; base += kWarps * TPW) {  // warp-uniform, as above
                    const uint32_t tok = tmin<uint32_t>(base + sub, tn - 1);
                    const bool valid = base + sub < tn;
                    const uint16_t* tc = codes + tok * stages_per_group;
                    float kr[4] = {0, 0, 0, 0}, ki[4] = {0, 0, 0, 0};
                    for (uint32_t r = 0; r < rn; r += kFlushStages) {
                        __half2 sa[4], sb[4];
#pragma unroll
                        for (int k = 0; k < 4; ++k) sa[k] = sb[k] = __float2half2_rn(0.0f);
#pragma unroll
                        for (int f = 0; f < kFlushStages; ++f) {
                            if (r + f < rn) {
                                const uint32_t code = tc[r + f];  // A * C + B
                                const uint32_t code_a = code / C, code_b = code % C;
                                const uint4 za = *reinterpret_cast<const uint4*>(table + ((r + f) * C + code_a) * P + 4 * part);
                                const uint4 zb = *reinterpret_cast<const uint4*>(table + ((r + f) * C + code_b) * P + 4 * part);
                                const __half2* ha = reinterpret_cast<const __half2*>(&za);
                                const __half2* hb = reinterpret_cast<const __half2*>(&zb);
#pragma unroll
                                for (int k = 0; k < 4; ++k) {
                                    sa[k] = __hadd2(sa[k], ha[k]);
                                    sb[k] = __hadd2(sb[k], hb[k]);
                                }
                            }
                        }
                        // z_A + i z_B: (a.re - b.im, a.im + b.re)
#pragma unroll
                        for (int k = 0; k < 4; ++k) {
                            const float2 fa = __half22float2(sa[k]), fb = __half22float2(sb[k]);
                            kr[k] += fa.x - fb.y;
                            ki[k] += fa.y + fb.x;
                        }
                    }
                    const uint64_t pos = uint64_t(p.slots.sinks) + c0 + t0 + tok;
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        float cs, sn;
                        rope_angle(pos, freq[k], &cs, &sn);
                        const float r = kr[k] * cs - ki[k] * sn;
                        ki[k] = kr[k] * sn + ki[k] * cs;
                        kr[k] = r;
                    }
                    const float ks = token_scale[t0 + tok];
#pragma unroll
                    for (int h = 0; h < G; ++h) {
                        float s = 0;
#pragma unroll
                        for (int k = 0; k < 4; ++k) s += q[h][2 * k] * kr[k] + q[h][2 * k + 1] * ki[k];
                        s = token_sum<LPT>(s) * ks;
                        if (part == 0 && valid) {
                            float* dst = scores + h * chunk + t0 + tok;
                            *dst = grp == 0 ? s : *dst + s;
                        }
                    }
                }
            }
        }
        __syncthreads();
        softmax_chunk<G>(scores, chunk, cn, token_weight, run_max, run_sum, rescale);
        __syncthreads();
        // Values in code space: thread owns bits [threadIdx.x * BPT, + BPT);
        // each tile's value codes are staged in shared memory first.
#pragma unroll
        for (int h = 0; h < G; ++h) {
            const float a = rescale[h];
#pragma unroll
            for (int k = 0; k < BPT; ++k) acc[h][k] *= a;
        }
        const uint32_t bit0 = threadIdx.x * BPT, words = pool.value_code_bytes / 4;
        for (uint32_t t0 = 0; t0 < cn; t0 += kTile) {
            const uint32_t tn = tmin<uint32_t>(kTile, cn - t0);
            __syncthreads();
            for (uint32_t i = threadIdx.x; i < tn * words; i += kThreads) {
                const uint32_t tok = i / words, w = i % words;
                const uint32_t ci = uint32_t(c0) + t0 + tok;
                const uint32_t blk = uint32_t(pool.block_tables[table_row + ci / pool.block_tokens]);
                value_codes[i] = reinterpret_cast<const uint32_t*>(pool.base + size_t(blk) * pool.block_bytes +
                                                                   pool.value_codes_offset +
                                                                   (ci % pool.block_tokens) * pool.value_code_bytes)[w];
            }
            __syncthreads();
            for (uint32_t i = 0; i < tn; ++i) {
                const uint32_t word = value_codes[i * words + bit0 / 32] >> (bit0 % 32);
                float bit[BPT];
#pragma unroll
                for (int k = 0; k < BPT; ++k) bit[k] = __uint_as_float(((word >> k) & 1u) * 0x3f800000u);
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    const float pw = scores[h * chunk + t0 + i];
#pragma unroll
                    for (int k = 0; k < BPT; ++k) acc[h][k] = fmaf(bit[k], pw, acc[h][k]);
                }
            }
        }
        __syncthreads();
    }
    float* out = p.partials + (size_t(row) * n_splits + split) * m.n_q_heads * m.value_code_bits;
#pragma unroll
    for (int h = 0; h < G; ++h)
#pragma unroll
        for (int k = 0; k < BPT; ++k) out[size_t(g * G + h) * m.value_code_bits + threadIdx.x * BPT + k] = acc[h][k];
    if (threadIdx.x < G) {
        ml[2 * (g * G + threadIdx.x)] = run_max[threadIdx.x];
        ml[2 * (g * G + threadIdx.x) + 1] = run_sum[threadIdx.x];
    }
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
