// Token weights for the optional attention-weighted term of the value loss.
//
// What the reference optimizes. CommVQ trains the value codebook with
// MSE(v_hat, v)/2 plus the MSE between the attention block's output
// projection computed with v_hat and with v (docs/METHOD.md, "Training"). That second
// term needs the model's W_o and runs the language model; the library has
// neither. What it can see is where the error of a value lands: the
// attention output of query head h is sum_t p_{h,t} v_t, so an error e_t in
// v_t reaches the output scaled by the probabilities p_{h,t} queries put on
// token t. A token that queries hardly attend to can be reconstructed badly
// at no cost, one that draws much attention (the first token, a recent
// delimiter) cannot. Weighting each token's squared error by the attention
// it receives is the part of the output error the cache controls, and it
// bounds that error: ||sum_t p_{h,t} e_t||^2 <= sum_t p_{h,t} ||e_t||^2
// (Jensen), so the weighted term summed over queries and heads is at least
// the attention output error before W_o. W_o's mixing of channels and the
// cancellation between tokens inside one output are not modelled, and a_t
// below is summed over all query heads and weights the token's whole value
// vector (all KV heads' channels), as the value codebook encodes it whole.
//
// Definition. For one layer: keys k_t (pre-RoPE, at position m_t), queries
// q_i (post-RoPE, at position n_i, each seeing a set S_i of key rows:
// causal, same context). Query head h uses KV head h / (Hq / Hkv).
//
//   p_{i,h,t} = softmax over t in S_i of <q_{i,h}, R_{m_t} k_{t,g(h)}> / sqrt(d)
//   a_t       = sum over i and h of p_{i,h,t}          (0 if no query sees t)
//   w_t       = 1 + beta * a_t / mean_t(a)             (w = 1 if every a_t = 0)
//
// mean(w) = 1 + beta, and the weighted loss sum_t w_t e_t / n equals
// mean(e) + beta * sum_t (a_t / sum a) e_t: the reconstruction MSE plus beta
// times the attention-weighted MSE. beta = 0 is plain MSE.
//
// The mass a_t is measured with the full-precision keys and the model's
// queries (what the model attends to), not with the quantized keys.
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {
namespace train {

struct AttentionShape {
    uint32_t n_kv_heads = 0;
    uint32_t n_q_heads = 0;  // a multiple of n_kv_heads
    uint32_t head_dim = 0;   // even
    int32_t pair_layout = COMMVQ_PAIRS_ROTATE_HALF;  // of keys and queries alike
    RopeSpec rope;
};

// One query: its position and the key rows [key_begin, key_end) it attends to.
struct QuerySpan {
    uint64_t position = 0;
    uint64_t key_begin = 0;
    uint64_t key_end = 0;
};

// Positions of n_keys rows cut into independent contexts (chunks) that start
// at chunk_rows (strictly increasing, first 0): row - start of its chunk.
std::vector<uint64_t> chunk_positions(const std::vector<uint64_t>& chunk_rows, uint64_t n_keys);

// The causal spans of queries that are the tokens at key rows query_rows:
// each sees the rows of its own chunk up to and including its own row, and
// sits at that row's position.
std::vector<QuerySpan> causal_query_spans(const std::vector<uint64_t>& chunk_rows, uint64_t n_keys,
                                          const std::vector<uint64_t>& query_rows);

// a_t for every key row (see the top of this file). keys: [n_keys][Hkv][d]
// before RoPE, key_positions: [n_keys]; queries: [n_queries][Hq][d] after
// RoPE; spans: [n_queries]. A span must lie inside [0, n_keys), be non-empty
// and hold no key at a later position than its query (Error otherwise).
// The result does not depend on n_threads.
std::vector<double> attention_mass(const AttentionShape& shape, const float* keys, const uint64_t* key_positions,
                                   uint64_t n_keys, const float* queries, const QuerySpan* spans,
                                   uint64_t n_queries, uint32_t n_threads);

// w_t = 1 + beta * a_t / mean(a), or all 1 when every a_t is 0; beta >= 0.
std::vector<float> attention_token_weights(const std::vector<double>& mass, double beta);

}  // namespace train
}  // namespace commvq
