// Attention over the uncompressed tokens of one row and KV head (sinks and
// window, as appended: io dtype, model pair layout, host key convention),
// in value space: one softmax of their own (its max and sum go to the
// split slot after the compressed splits), values summed per channel.
#pragma once

#include "attention/key_scores.cuh"
#include "attention/softmax.cuh"

namespace commvq {
namespace cuda {
namespace attention {

template <int HEAD_DIM, int G>
__device__ void attend_uncompressed(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t row,
                                    uint32_t g, uint32_t seq, const SeqState& st, uint64_t visible,
                                    const float (&q)[G][8]) {
    constexpr int LPT = HEAD_DIM / 8;
    constexpr int TPW = 32 / LPT;
    const ModelShape& m = p.m;
    const UncompressedView& u = p.slots;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / LPT, part = lane % LPT;
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    float* run_max = reinterpret_cast<float*>(smem + L.run_max);
    float* run_sum = reinterpret_cast<float*>(smem + L.run_sum);
    float* rescale = reinterpret_cast<float*>(smem + L.own_rescale);
    const uint32_t chunk = L.score_chunk;
    if (threadIdx.x < G) {
        run_max[threadIdx.x] = -FLT_MAX;
        run_sum[threadIdx.x] = 0;
    }
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
        __syncthreads();
        // Warp-uniform loop (the shuffles need every lane): lanes past the
        // end redo the last token and write nothing.
        for (uint32_t base = warp * TPW; base < tn; base += kWarps * TPW) {
            const uint32_t i = tmin<uint32_t>(base + sub, tn - 1);
            const bool valid = base + sub < tn;
            const uint64_t idx = t0 + i;
            const uint64_t pos = idx < n_sink ? idx : first_window + (idx - n_sink);
            const uint8_t* key = slot_address(u, seq, pos) + size_t(g) * HEAD_DIM * element_bytes;
            float dot[G];
#pragma unroll
            for (int h = 0; h < G; ++h) dot[h] = 0;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const uint32_t j = 4 * part + k;
                float kr = load_element(key, model_index(j, 0, HEAD_DIM, m.pair_layout), u.io_dtype);
                float ki = load_element(key, model_index(j, 1, HEAD_DIM, m.pair_layout), u.io_dtype);
                if (u.key_convention == COMMVQ_KEYS_PRE_ROPE) {
                    float cs, sn;
                    rope_angle(pos, p.rope_freq[j], &cs, &sn);
                    const float r = kr * cs - ki * sn;
                    ki = kr * sn + ki * cs;
                    kr = r;
                }
#pragma unroll
                for (int h = 0; h < G; ++h) dot[h] = fmaf(q[h][2 * k], kr, fmaf(q[h][2 * k + 1], ki, dot[h]));
            }
            const float total = HeadSums<LPT / 2, G>::run(dot, part);
            constexpr uint32_t kLanesPerHead = LPT / G;
            if (valid && part % kLanesPerHead == 0) scores[(part / kLanesPerHead) * chunk + i] = total;
        }
        __syncthreads();
        softmax_chunk<G>(scores, chunk, tn, run_max, run_sum, rescale);
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
    }
    __syncthreads();
    const PartialLayout pl(m, p.n_rows, p.n_splits);
    float* out = p.partials + pl.values + size_t(row) * m.n_q_heads * HEAD_DIM;
    if (c < HEAD_DIM) {
#pragma unroll
        for (int h = 0; h < G; ++h) out[(g * G + h) * HEAD_DIM + c] = acc[h];
    }
    float* ml = p.partials + pl.ml + (size_t(row) * (p.n_splits + 1) + p.n_splits) * m.n_q_heads * 2;
    if (threadIdx.x < G) {
        ml[2 * (g * G + threadIdx.x)] = run_max[threadIdx.x];
        ml[2 * (g * G + threadIdx.x) + 1] = run_sum[threadIdx.x];
    }
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
