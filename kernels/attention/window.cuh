// Attention over the uncompressed tokens of one row and KV head (sinks and
// window, as appended: io dtype, model pair layout, host key convention),
// in value space: one softmax of their own (its max and sum go to the
// split slot after the compressed splits), values summed per channel.
#pragma once

#include "attention/async_copy.cuh"
#include "attention/key_scores.cuh"
#include "attention/softmax.cuh"

namespace commvq {
namespace cuda {
namespace attention {

// The free table area of the CTA (the compressed tokens are done) holds a
// chunk of the uncompressed tokens' keys and values at a time, copied with
// all threads at once, so their global-memory latency is paid once per chunk
// rather than once per token; scores and value sums then read shared memory.
// The values are summed by all threads: thread (c, j) takes channel c of
// tokens j, j + J, ... (J = kThreads / HEAD_DIM), and the J partial sums are
// added at the end.
template <int HEAD_DIM, int G>
__device__ void attend_uncompressed(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t row,
                                    uint32_t g, uint32_t seq, const SeqState& st, uint64_t visible,
                                    const float (&q)[G][8]) {
    constexpr int LPT = HEAD_DIM / 8;
    constexpr int TPW = 32 / LPT;
    constexpr uint32_t J = kThreads / HEAD_DIM;  // token lanes of the value sums
    const ModelShape& m = p.m;
    const UncompressedView& u = p.slots;
    const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / LPT, part = lane % LPT;
    float* scores = reinterpret_cast<float*>(smem + L.scores);
    float* run_max = reinterpret_cast<float*>(smem + L.run_max);
    float* run_sum = reinterpret_cast<float*>(smem + L.run_sum);
    float* rescale = reinterpret_cast<float*>(smem + L.own_rescale);
    const uint32_t head_bytes = HEAD_DIM * io_element_bytes(u.io_dtype);  // one token's keys (or values) of one head
    // Head g's keys, and its values: a slice's slots hold all of the model's
    // values (launchers.h UncompressedView), g is its head kv_head_begin + g.
    const size_t key_offset = size_t(g) * head_bytes;
    const size_t value_offset = u.key_bytes + size_t(m.kv_head_begin + g) * head_bytes;
    // Tokens per chunk: as many keys and values as the table area holds, at
    // most the scores' chunk.
    const uint32_t chunk = tmin<uint32_t>(L.score_chunk, L.zero_row / (2 * head_bytes));
    uint8_t* keys = smem + L.table;
    uint8_t* values = keys + size_t(chunk) * head_bytes;
    const bool aligned16 = (reinterpret_cast<uintptr_t>(u.base) | u.seq_stride | u.key_bytes | u.value_bytes | head_bytes) % 16 == 0;
    if (threadIdx.x < G) {
        run_max[threadIdx.x] = -FLT_MAX;
        run_sum[threadIdx.x] = 0;
    }
    const uint64_t n_sink = tmin<uint64_t>(st.sinks, visible);
    const uint64_t first_window = uint64_t(st.sinks) + st.compressed;
    const uint64_t n_window = visible > first_window ? visible - first_window : 0;
    const uint64_t n = n_sink + n_window;
    float acc[G];
#pragma unroll
    for (int h = 0; h < G; ++h) acc[h] = 0;
    const uint32_t c = threadIdx.x % HEAD_DIM, j = threadIdx.x / HEAD_DIM;  // value channel and token lane
    for (uint64_t t0 = 0; t0 < n; t0 += chunk) {
        const uint32_t tn = uint32_t(tmin<uint64_t>(chunk, n - t0));
        __syncthreads();  // the table, or the previous chunk, is no longer read
        // Every thread copies 16-byte (or 4-byte) pieces of the chunk's keys
        // and values: piece w of token i, keys first.
        const uint32_t piece = aligned16 ? 16 : 4, per_token = head_bytes / piece;
        for (uint32_t w = threadIdx.x; w < 2 * tn * per_token; w += kThreads) {
            const uint32_t is_value = w >= tn * per_token, k = w - is_value * tn * per_token;
            const uint32_t i = k / per_token, offset = (k % per_token) * piece;
            const uint64_t idx = t0 + i;
            const uint64_t pos = idx < n_sink ? idx : first_window + (idx - n_sink);
            const uint8_t* src = slot_address(u, seq, pos) + (is_value ? value_offset : key_offset) + offset;
            uint8_t* dst = (is_value ? values : keys) + size_t(i) * head_bytes + offset;
            if (aligned16)
                copy_async16(dst, src);
            else
                copy_async4(dst, src);
        }
        wait_async_copies();
        __syncthreads();
        // Warp-uniform loop (the shuffles need every lane): lanes past the
        // end redo the last token and write nothing.
        for (uint32_t base = warp * TPW; base < tn; base += kWarps * TPW) {
            const uint32_t i = tmin<uint32_t>(base + sub, tn - 1);
            const bool valid = base + sub < tn;
            const uint64_t idx = t0 + i;
            const uint64_t pos = idx < n_sink ? idx : first_window + (idx - n_sink);
            const uint8_t* key = keys + size_t(i) * head_bytes;
            float dot[G];
#pragma unroll
            for (int h = 0; h < G; ++h) dot[h] = 0;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const uint32_t jp = 4 * part + k;
                float kr = load_element(key, model_index(jp, 0, HEAD_DIM, m.pair_layout), u.io_dtype);
                float ki = load_element(key, model_index(jp, 1, HEAD_DIM, m.pair_layout), u.io_dtype);
                if (u.key_convention == COMMVQ_KEYS_PRE_ROPE) {
                    float cs, sn;
                    rope_angle(pos, p.rope_freq[jp], &cs, &sn);
                    const float r = kr * cs - ki * sn;
                    ki = kr * sn + ki * cs;
                    kr = r;
                }
#pragma unroll
                for (int h = 0; h < G; ++h) dot[h] = fmaf(q[h][2 * k], kr, fmaf(q[h][2 * k + 1], ki, dot[h]));
            }
            const float total = HeadSums<LPT / 2, G>::run(dot, part);
            constexpr uint32_t kLanesPerHead = LPT / G;
            if (valid && part % kLanesPerHead == 0) scores[(part / kLanesPerHead) * L.score_chunk + i] = total;
        }
        __syncthreads();
        softmax_chunk<G>(scores, L.score_chunk, tn, run_max, run_sum, rescale);
        __syncthreads();
#pragma unroll
        for (int h = 0; h < G; ++h) acc[h] *= rescale[h];
        for (uint32_t i = j; i < tn; i += J) {
            const float v = load_element(values + size_t(i) * head_bytes, c, u.io_dtype);
#pragma unroll
            for (int h = 0; h < G; ++h) acc[h] = fmaf(scores[h * L.score_chunk + i], v, acc[h]);
        }
    }
    // The J partial sums of each channel, added in a fixed order.
    __syncthreads();
    float* part_sums = reinterpret_cast<float*>(smem + L.table);  // [J][G][HEAD_DIM]
#pragma unroll
    for (int h = 0; h < G; ++h) part_sums[(j * G + h) * HEAD_DIM + c] = acc[h];
    __syncthreads();
    const PartialLayout pl(m, p.n_rows, p.n_splits);
    float* out = p.partials + pl.values + size_t(row) * m.n_q_heads * HEAD_DIM;
    for (uint32_t i = threadIdx.x; i < G * HEAD_DIM; i += kThreads) {
        float s = 0;
        for (uint32_t k = 0; k < J; ++k) s += part_sums[k * G * HEAD_DIM + i];
        out[size_t(g) * G * HEAD_DIM + i] = s;
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
