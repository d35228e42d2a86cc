// The stage codes of the next chunk's tokens, fetched a chunk ahead.
//
// A token's stage codes of KV head g are R packed codes of kCodeBits each,
// starting at bit g * R * kCodeBits of its key-code record, which need not
// be 4-byte aligned. The attention kernel copies, per token, the aligned
// 32-bit words that hold them (layout.h code_words) into shared memory at
// the start of each chunk, with the bit where the first code starts; the
// score loop then cuts each code out of a pair of words (key_scores.cuh).
// The words are loaded into registers while the chunk before is scored and
// its values summed, so their latency is not waited for.
//
// Threads share a token's words: thread i takes token i / tpt and words
// i % tpt, i % tpt + tpt, ... (tpt = kThreads / score_chunk), at most
// kMaxCodeWordsPerThread of them (the plan ensures it).
#pragma once

#include "attention/layout.h"
#include "device_common.cuh"

namespace commvq {
namespace cuda {
namespace attention {

struct CodeWords {
    uint32_t word[kMaxCodeWordsPerThread];
    uint32_t bit0 = 0;

    // Loads this thread's words of compressed tokens [c0, c0 + cn) of the
    // row whose block-table row starts at table_row.
    __device__ void fetch(const AttendParams& p, size_t table_row, uint32_t g, uint32_t c0, uint32_t cn) {
        const PoolView& pool = p.pool;
        const uint32_t tpt = code_threads_per_token(p.plan.score_chunk), t = threadIdx.x / tpt;
        if (t >= cn) return;
        const uint32_t ci = c0 + t;
        const uint32_t block = uint32_t(pool.block_tables[table_row + ci / pool.block_tokens]);
        const uint32_t head_bit = g * p.m.key_stages * kCodeBits;
        const uintptr_t first = reinterpret_cast<uintptr_t>(pool.base + size_t(block) * pool.block_bytes +
                                                            pool.key_codes_offset +
                                                            size_t(ci % pool.block_tokens) * pool.key_code_bytes) +
                                head_bit / 8;
        // Reading up to code_words aligned words from `first` stays inside
        // the block: the value codes follow the key codes.
        const uint32_t* w = reinterpret_cast<const uint32_t*>(first & ~uintptr_t(3));
        bit0 = uint32_t(first & 3) * 8 + head_bit % 8;
#pragma unroll
        for (uint32_t k = 0; k < kMaxCodeWordsPerThread; ++k) {
            const uint32_t i = threadIdx.x % tpt + k * tpt;
            if (i < p.plan.code_words) word[k] = __ldg(w + i);
        }
    }

    // Writes the fetched words to the chunk's staging area (L.codes, L.code_bit0).
    __device__ void stage(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t cn) const {
        const uint32_t tpt = code_threads_per_token(p.plan.score_chunk), t = threadIdx.x / tpt;
        if (t >= cn) return;
        uint32_t* codes = reinterpret_cast<uint32_t*>(smem + L.codes) + t * p.plan.code_words;
#pragma unroll
        for (uint32_t k = 0; k < kMaxCodeWordsPerThread; ++k) {
            const uint32_t i = threadIdx.x % tpt + k * tpt;
            if (i < p.plan.code_words) codes[i] = word[k];
        }
        if (threadIdx.x % tpt == 0) reinterpret_cast<uint32_t*>(smem + L.code_bit0)[t] = bit0;
    }
};

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
