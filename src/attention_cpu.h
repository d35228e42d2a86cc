// Attention on the CPU, computed from the compressed codes (docs/METHOD.md):
//  - keys: per token and KV head, the key is formed once from its codewords
//    (sum over stages of z_A + i z_B, times the scale) and rotated by +m;
//    all query heads of the group then take their dot product with it;
//  - one softmax over sinks, compressed tokens and window (online, in
//    chunks of tokens, sums in double);
//  - values: compressed tokens are accumulated in code space (2n numbers per
//    query head: acc_i += p_m w_m bit_i) and E is applied once per query at
//    the end; window and sink values are accumulated directly.
// Work is spread over the thread pool by query rows, and when there are
// fewer rows than threads also by token ranges whose partial softmax states
// are merged at the end.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"
#include "cpu_storage.h"
#include "thread_pool.h"

namespace commvq {

class CpuAttention {
public:
    CpuAttention(const Codebook& cb, const BackendConfig& config, const CpuStorage& storage,
                 ThreadPool& pool);

    void attend(const AttendCall& call);

    uint64_t bytes_tables() const;
    uint64_t bytes_scratch() const;

private:
    // Per-thread working memory, sized at creation.
    struct Scratch {
        std::vector<float> q;        // [tile][n_q_heads][head_dim], planar pairs
        std::vector<float> cos, sin; // [kChunk][P] rotation of each token of a chunk
        std::vector<double> rot_cos, rot_sin;  // [P] rotation at rot_position
        uint64_t rot_position = 0;
        bool rot_valid = false;
        std::vector<float> keys;     // [n_kv_heads][kChunk][head_dim] formed, rotated keys
        std::vector<float> values;   // [kChunk][D] uncompressed values of a chunk
        std::vector<const uint8_t*> bits;  // [kChunk] value code bits of a chunk
        std::vector<float> weights;  // [kChunk] value weights w
        std::vector<uint16_t> codes; // [n_kv_heads * key_stages]
        std::vector<float> token;    // [max(D, n_q_heads * head_dim)] conversion buffer
        std::vector<float> canonical;  // [head_dim]
        std::vector<float> p;        // [kChunk] scores, then probabilities
        std::vector<float> pw;       // [kChunk] probabilities times value weights
        std::vector<float> chunk_acc;  // [head_dim] a chunk's uncompressed values
        std::vector<const float*> za, zb;  // [key_stages] sub-centers of one key
        std::vector<double> states;  // [tile][n_q_heads][state_stride]
        std::vector<double> out;     // [head_dim]
    };
    // A token range of one row (split mode), with its partial state.
    struct Part {
        uint32_t row;
        uint64_t begin, end;
    };

    void load_queries(const AttendCall& call, uint32_t r0, uint32_t r1, Scratch& s) const;
    void accumulate(const AttendCall& call, uint32_t r0, uint32_t r1, uint64_t begin, uint64_t end,
                    double* states, Scratch& s) const;
    void prepare_rotation(uint64_t position, uint32_t n, Scratch& s) const;
    void form_compressed_keys(uint32_t layer, const LayerView& view, uint64_t position,
                              uint32_t n, Scratch& s) const;
    void load_uncompressed(uint32_t layer, const LayerView& view, uint64_t position, uint32_t n,
                           bool rotate, Scratch& s) const;
    void update(double* state, const float* q, const float* keys, uint32_t n, bool compressed,
                uint32_t group, Scratch& s) const;
    void merge(double* into, const double* part) const;
    void finish(uint32_t layer, uint32_t head, const double* state, void* out, float* lse,
                Scratch& s) const;
    void init_states(double* states, size_t n_rows) const;

    const Codebook& cb_;
    BackendConfig config_;
    const CpuStorage& storage_;
    ThreadPool& pool_;
    uint32_t group_size_;    // G
    uint32_t code_count_;    // 2n: value code bits per token
    size_t state_stride_;    // doubles per query head: m, l, code accumulator, dense accumulator
    uint32_t tile_rows_;     // query rows one work item takes (commvq_cache_attend)
    std::vector<std::vector<float>> planar_;     // per layer [Hkv][R][C][head_dim]: re[P], im[P]
    std::vector<std::vector<float>> lambda_eps_; // per layer [D]: lambda + eps
    std::vector<double> freq_, step_cos_, step_sin_;  // [P]
    std::vector<Scratch> scratch_;   // one per thread
    std::vector<Part> parts_;        // split mode; capacity reserved
    std::vector<double> part_states_;  // [max parts][n_q_heads][state_stride]
    std::vector<uint32_t> row_first_part_;  // split mode, [n_threads + 1]
};

}  // namespace commvq
