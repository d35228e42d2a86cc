// The real-model fixture tests/data/bytellama_kv.safetensors (made by
// tools/collect_kv.py from bytellama-13m: 4 layers, 2 KV heads, 4 query
// heads, head_dim 128, RoPE theta 500000, rotate-half pairs), as float32.
//
//   const commvq::test::KvFixture& fx = commvq::test::kv_fixture();
//   const float* k = fx.key(layer, token);   // [n_kv_heads][head_dim], pre-RoPE
//
// Keys and values are [n_tokens][n_kv_heads][head_dim] per layer, in the
// model's own pair layout (rotate-half), keys BEFORE RoPE at positions
// 0..n_tokens-1. Queries are [n_queries][n_q_heads][head_dim] per layer,
// AFTER RoPE, at positions query_start .. query_start + n_queries - 1.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "codebook.h"

namespace commvq {
namespace test {

struct KvFixture {
    uint32_t n_layers = 0, n_kv_heads = 0, n_q_heads = 0, head_dim = 0;
    uint32_t n_tokens = 0, n_queries = 0, query_start = 0;
    int32_t pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    RopeSpec rope;  // theta from the file; the fixture model uses no scaling
    std::string model;
    std::map<std::string, std::string> metadata;  // everything the file carries
    std::vector<std::vector<float>> keys, values, queries;  // per layer

    const float* key(uint32_t layer, uint32_t token) const {
        return keys[layer].data() + size_t(token) * n_kv_heads * head_dim;
    }
    const float* value(uint32_t layer, uint32_t token) const {
        return values[layer].data() + size_t(token) * n_kv_heads * head_dim;
    }
    const float* query(uint32_t layer, uint32_t i) const {
        return queries[layer].data() + size_t(i) * n_q_heads * head_dim;
    }
};

std::string kv_fixture_path();
// Loaded on first use and kept; throws commvq::Error if the file is missing
// or not what this header describes.
const KvFixture& kv_fixture();

}  // namespace test
}  // namespace commvq
