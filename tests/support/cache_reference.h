// A float64 model of a compressed cache for tests: it keeps every token
// appended to a cache (as the cache received it) and computes attention the
// straightforward way over the DECODED cache: tokens the cache holds as codes
// are encoded here with KeyEncoder / ValueEncoder (exactly as the cache
// prepares them), decoded, the keys rotated to their positions in double;
// sink and window tokens are used as given. Which tokens are codes is read
// from the cache (Cache::sequence), so the model follows any history of
// appends, truncations and forks.
#pragma once

#include <cstdint>
#include <vector>

#include "cache.h"
#include "key_encoder.h"
#include "value_encoder.h"
#include "random_codebook.h"

namespace commvq {
namespace test {

// x rounded to io_dtype: the bytes to hand to the cache and the float values
// they hold.
struct IoTensor {
    std::vector<uint8_t> bytes;
    std::vector<float> values;
    const void* data() const { return bytes.data(); }
};
IoTensor make_io(const std::vector<float>& x, int32_t dtype);

// Rotates one head vector in the model's pair layout by +m (RoPE) in double.
std::vector<float> apply_rope(const Codebook& cb, const float* x, uint64_t position);

class ReferenceCache {
public:
    explicit ReferenceCache(const Cache& cache);

    // k, v: [n][n_kv_heads][head_dim] floats the cache received (io-rounded).
    void append(uint32_t layer, uint32_t seq, uint32_t n, const float* k, const float* v);
    void truncate(uint32_t seq, uint64_t length);
    void clear(uint32_t seq) { truncate(seq, 0); }
    void fork(uint32_t src, uint32_t dst) { seqs_[dst] = seqs_[src]; }

    // Attention of n_rows query rows (q: [n_rows][n_q_heads][head_dim],
    // post-RoPE, model layout) over layer `layer` of sequence seq; row r
    // sees positions [0, visible[r]). out: [n_rows][n_q_heads][head_dim],
    // lse: [n_rows][n_q_heads].
    void attend(uint32_t layer, uint32_t seq, uint32_t n_rows, const float* q, const uint64_t* visible,
                std::vector<double>& out, std::vector<double>& lse) const;

    // The same for commvq_cache_attend's positions (causal or not).
    void attend_last(uint32_t layer, uint32_t seq, uint32_t n_queries, const float* q, bool causal,
                     std::vector<double>& out, std::vector<double>& lse) const;

private:
    struct Token {
        std::vector<float> k, v;
        // Decoded form, filled on first use: keys canonical and rotated to
        // the token's position, values as decoded.
        mutable bool compressed_ready = false;
        mutable std::vector<double> key, value;
    };
    void decode(uint32_t layer, uint64_t position, const Token& t) const;

    const Cache& cache_;
    const Codebook& cb_;
    std::vector<double> freq_;
    std::vector<KeyEncoder> key_encoders_;      // per layer
    std::vector<ValueEncoder> value_encoders_;  // per layer
    std::vector<std::vector<std::vector<Token>>> seqs_;  // [seq][layer][position]
};

// max over rows of ||out - ref|| / ||ref|| (rows of row_size elements).
double max_relative_error(const std::vector<float>& out, const std::vector<double>& ref, size_t row_size);
// Converts n elements of io_dtype to float (outputs of the cache).
std::vector<float> from_io(const void* data, int32_t dtype, size_t n);
// A buffer of n io_dtype elements filled with NaN, to show unwritten outputs.
std::vector<uint8_t> poisoned(int32_t dtype, size_t n);
bool all_finite(const std::vector<float>& x);

}  // namespace test
}  // namespace commvq
