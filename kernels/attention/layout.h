// The two memory contracts of decode attention, shared by the plan (host),
// the attention kernel and the merge kernels:
//   PartialLayout  where each split leaves its results in the caller's workspace;
//   SharedLayout   how one attention CTA divides its shared memory.
#pragma once

#include <cstddef>
#include <cstdint>

#include "launchers.h"

#ifdef __CUDACC__
#define COMMVQ_HD __host__ __device__
#else
#define COMMVQ_HD
#endif

namespace commvq {
namespace cuda {
namespace attention {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kMaxSplits = 255;  // the merge keeps one factor per split in shared memory
constexpr uint32_t kSubCenters = 64;  // C: the codes A * 64 + B
constexpr uint32_t kCodeBits = 12;    // bits of one stage code: log2(C * C)
// Code bits whose codewords one merge block applies (merge kernels).
constexpr uint32_t kMergeBits = 64;

COMMVQ_HD inline uint32_t align_up(uint32_t x, uint32_t a) { return (x + a - 1) / a * a; }

// Where the partial results of the splits sit in the caller's workspace:
//   codes  [rows][splits][n_q_heads][2n]     code-space sums of p * w * bits
//   values [rows][n_q_heads][head_dim]       uncompressed tokens' sums of p * v
//   ml     [rows][splits + 1][n_q_heads][2]  running max (log2) and sum of p
//   applied [rows][2n / kMergeBits][n_q_heads][head_dim]  E applied to slices of the merged code sums
struct PartialLayout {
    size_t codes = 0, values, ml, applied, total;
    COMMVQ_HD PartialLayout(const ModelShape& m, uint32_t rows, uint32_t splits) {
        values = size_t(rows) * splits * m.n_q_heads * m.value_code_bits;
        ml = values + size_t(rows) * m.n_q_heads * m.head_dim;
        applied = ml + size_t(rows) * (splits + 1) * m.n_q_heads * 2;
        total = applied + size_t(rows) * (m.value_code_bits / kMergeBits) * m.n_q_heads * m.head_dim;
    }
};

// The compressed tokens [begin, end) that split `split` of a row attends.
// Split 0 also attends the row's n_uncompressed tokens (window.cuh) after
// its compressed share, so its share is shortened by that many tokens
// (taking an uncompressed token to cost about what a compressed one does)
// and the other splits share the rest evenly: otherwise split 0 finishes
// last, a tail that dominates short rows. One split takes every token.
struct TokenRange {
    uint64_t begin, end;
};
COMMVQ_HD inline TokenRange split_tokens(uint64_t n_comp, uint64_t n_uncompressed, uint32_t n_splits, uint32_t split) {
    if (n_splits <= 1) return {0, n_comp};
    const uint64_t even = (n_comp + n_splits - 1) / n_splits;  // <= n_comp
    const uint64_t first = even > n_uncompressed ? even - n_uncompressed : 0;
    if (split == 0) return {0, first};
    const uint64_t per = (n_comp - first + n_splits - 2) / (n_splits - 1);
    const uint64_t begin = first + uint64_t(split - 1) * per, end = begin + per;
    return {begin < n_comp ? begin : n_comp, end < n_comp ? end : n_comp};
}

// Query heads of the KV heads of one cluster, padded to whole 8-head tiles.
COMMVQ_HD inline uint32_t cluster_heads_padded(const ModelShape& m, const AttendPlan& p) {
    return align_up(p.cluster * (m.n_q_heads / m.n_kv_heads), 8);
}
// Value code bits whose code-space sums one CTA of a cluster accumulates.
COMMVQ_HD inline uint32_t slice_bits(const ModelShape& m, const AttendPlan& p) {
    return m.value_code_bits / p.cluster;
}
// Lanes that share one token's key (16 bytes of half2 pairs each).
COMMVQ_HD inline uint32_t lanes_per_token(uint32_t head_dim) { return head_dim / 8; }

// The stage codes of one KV head of a token are staged in shared memory as
// the aligned 32-bit words that hold them: the first code starts at bit
// bit0 <= 31 of word 0, and the word after the last code's is read too
// (each code is taken from a pair of words), so
//   words = floor((31 + (R - 1) * code_bits) / 32) + 2.
COMMVQ_HD inline uint32_t code_words(uint32_t key_stages, uint32_t code_bits) {
    return (31 + (key_stages - 1) * code_bits) / 32 + 2;
}
// Each thread prefetches at most this many code words of the next chunk.
constexpr uint32_t kMaxCodeWordsPerThread = 5;
// Threads that share the prefetch of one token's code words.
COMMVQ_HD inline uint32_t code_threads_per_token(uint32_t score_chunk) { return kThreads / score_chunk; }

// Byte offsets in the dynamic shared memory of one attention CTA.
//   table      [stages_per_group][C][P] half2, then one zero row (padding stages read it)
//   scores     [G][score_chunk] float: scores, then probabilities
//   probs      [2][heads_padded][value_chunk + 8] half: p * w of the cluster's query heads (B operand)
//   bits       [slice words][score_chunk] uint32: this CTA's value code bits (A operand), word-major
//   tok_block, tok_slot, tok_scale, tok_weight [score_chunk]
//   offsets    [warps][tokens per warp][stages rounded to 4] uint2: table byte offsets of A and B rows
//   codes      [score_chunk][code_words] uint32: the words holding each token's stage codes of this head
//   code_bit0  [score_chunk] uint32: the bit of word 0 where each token's first code starts
//   rot_step   [head_dim / 2] float2: RoPE rotation of each pair over one step of a lane's tokens
//   rescale    [2][heads_padded] float: factors of the accumulators, from each head's owner
//   run_max, run_sum, own_rescale [G] float; chunk_exp int
struct SharedLayout {
    uint32_t table, scores, probs, bits, tok_block, tok_slot, tok_scale, tok_weight, offsets, codes, code_bit0,
        rot_step, rescale, run_max, run_sum, own_rescale, chunk_exp, total;
    uint32_t table_row_bytes, zero_row, probs_stride, slice_words, bits_stride, offsets_stages, score_chunk, value_chunk, heads;
    COMMVQ_HD SharedLayout(const ModelShape& m, const AttendPlan& p) {
        const uint32_t G = m.n_q_heads / m.n_kv_heads, P = m.head_dim / 2;
        heads = cluster_heads_padded(m, p);
        score_chunk = p.score_chunk;
        value_chunk = p.value_chunk;
        table_row_bytes = P * 4;
        zero_row = p.stages_per_group * kSubCenters * table_row_bytes;
        table = 0;
        scores = align_up(zero_row + table_row_bytes, 16);
        probs = scores + G * p.score_chunk * 4;
        probs_stride = p.value_chunk + 8;
        bits = align_up(probs + 2 * heads * probs_stride * 2, 16);
        slice_words = slice_bits(m, p) / 32;
        bits_stride = p.score_chunk;  // word-major: a word's tokens are adjacent (value_mma.cuh)
        tok_block = bits + slice_words * bits_stride * 4;
        tok_slot = tok_block + p.score_chunk * 4;
        tok_scale = tok_slot + p.score_chunk * 4;
        tok_weight = tok_scale + p.score_chunk * 4;
        offsets = align_up(tok_weight + p.score_chunk * 4, 16);
        offsets_stages = align_up(p.stages_per_group, 4);
        const uint32_t tokens_per_warp = 32 / lanes_per_token(m.head_dim);
        codes = offsets + kWarps * tokens_per_warp * offsets_stages * 8;
        code_bit0 = codes + p.score_chunk * p.code_words * 4;
        rot_step = align_up(code_bit0 + p.score_chunk * 4, 16);
        rescale = rot_step + m.head_dim / 2 * 8;
        run_max = rescale + 2 * heads * 4;
        run_sum = run_max + G * 4;
        own_rescale = run_sum + G * 4;
        chunk_exp = own_rescale + G * 4;
        total = chunk_exp + 4;
    }
};

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
