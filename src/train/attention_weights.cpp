#include "attention_weights.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "error.h"
#include "pair_layout.h"
#include "parallel.h"
#include "rope.h"

namespace commvq {
namespace train {

namespace {

// Queries per work item. Fixed (not derived from the thread count), so the
// partial sums and their reduction order, hence the result, are the same
// whatever n_threads is.
constexpr uint64_t kQueriesPerItem = 16;

void invalid(bool ok, const std::string& message) { require(ok, COMMVQ_ERR_INVALID_ARGUMENT, message); }

void check_chunks(const std::vector<uint64_t>& chunk_rows, uint64_t n_keys) {
    invalid(!chunk_rows.empty() && chunk_rows[0] == 0, "chunk rows must start with 0");
    for (size_t c = 1; c < chunk_rows.size(); ++c)
        invalid(chunk_rows[c] > chunk_rows[c - 1] && chunk_rows[c] < n_keys,
                "chunk rows must increase strictly and lie below n_keys");
}

}  // namespace

std::vector<uint64_t> chunk_positions(const std::vector<uint64_t>& chunk_rows, uint64_t n_keys) {
    check_chunks(chunk_rows, n_keys);
    std::vector<uint64_t> positions(n_keys);
    size_t c = 0;
    for (uint64_t r = 0; r < n_keys; ++r) {
        while (c + 1 < chunk_rows.size() && chunk_rows[c + 1] <= r) ++c;
        positions[r] = r - chunk_rows[c];
    }
    return positions;
}

std::vector<QuerySpan> causal_query_spans(const std::vector<uint64_t>& chunk_rows, uint64_t n_keys,
                                          const std::vector<uint64_t>& query_rows) {
    check_chunks(chunk_rows, n_keys);
    std::vector<QuerySpan> spans(query_rows.size());
    for (size_t i = 0; i < query_rows.size(); ++i) {
        const uint64_t r = query_rows[i];
        invalid(r < n_keys, "query row " + std::to_string(r) + " is not below n_keys " + std::to_string(n_keys));
        // Start of the chunk holding r: the last chunk row <= r.
        const uint64_t start = *(std::upper_bound(chunk_rows.begin(), chunk_rows.end(), r) - 1);
        spans[i] = QuerySpan{r - start, start, r + 1};
    }
    return spans;
}

std::vector<double> attention_mass(const AttentionShape& shape, const float* keys, const uint64_t* key_positions,
                                   uint64_t n_keys, const float* queries, const QuerySpan* spans,
                                   uint64_t n_queries, uint32_t n_threads) {
    const uint32_t Hkv = shape.n_kv_heads, Hq = shape.n_q_heads, d = shape.head_dim;
    invalid(Hkv > 0 && Hq > 0 && Hq % Hkv == 0,
            "n_q_heads (" + std::to_string(Hq) + ") must be a positive multiple of n_kv_heads (" +
                std::to_string(Hkv) + ")");
    invalid(d > 0 && d % 2 == 0, "head_dim must be positive and even, got " + std::to_string(d));
    std::vector<double> mass(n_keys, 0.0);
    if (n_queries == 0) return mass;
    invalid(keys && key_positions && queries && spans, "keys, positions, queries and spans must not be NULL");

    // Every span: inside the keys, non-empty, and causal (no key at a later
    // position than the query). Also the range of rows any query sees.
    uint64_t lo = n_keys, hi = 0;
    for (uint64_t i = 0; i < n_queries; ++i) {
        const QuerySpan& s = spans[i];
        invalid(s.key_begin < s.key_end && s.key_end <= n_keys,
                "query " + std::to_string(i) + " sees rows [" + std::to_string(s.key_begin) + ", " +
                    std::to_string(s.key_end) + "), not a non-empty range below " + std::to_string(n_keys));
        for (uint64_t r = s.key_begin; r < s.key_end; ++r)
            invalid(key_positions[r] <= s.position, "query " + std::to_string(i) + " at position " +
                                                        std::to_string(s.position) + " sees key row " +
                                                        std::to_string(r) + " at later position " +
                                                        std::to_string(key_positions[r]));
        lo = std::min(lo, s.key_begin);
        hi = std::max(hi, s.key_end);
    }
    const size_t q_floats = size_t(n_queries) * Hq * d;
    for (size_t e = 0; e < q_floats; ++e)
        invalid(std::isfinite(queries[e]), "query element " + std::to_string(e) + " is not finite");

    // Post-RoPE keys of the rows seen, canonical layout, in double: the
    // angle m * w_j needs double at long positions (as in Rope), and keeping
    // the rotated key in double means the scores carry only the inputs'
    // own rounding.
    const std::vector<double> freq = rope_frequencies(shape.rope, d);
    const uint32_t P = d / 2;
    const size_t key_doubles = size_t(Hkv) * d;
    std::vector<double> rotated(size_t(hi - lo) * key_doubles);
    {
        std::vector<float> canonical(d);
        for (uint64_t r = lo; r < hi; ++r) {
            const double m = double(key_positions[r]);
            for (uint32_t g = 0; g < Hkv; ++g) {
                to_canonical(keys + (size_t(r) * Hkv + g) * d, d, shape.pair_layout, canonical.data());
                double* out = rotated.data() + size_t(r - lo) * key_doubles + size_t(g) * d;
                for (uint32_t j = 0; j < P; ++j) {
                    const double angle = m * freq[j], c = std::cos(angle), sn = std::sin(angle);
                    const double re = canonical[2 * j], im = canonical[2 * j + 1];
                    out[2 * j] = re * c - im * sn;
                    out[2 * j + 1] = re * sn + im * c;
                }
            }
        }
    }

    // Each item sums the probabilities of its queries over the union of
    // their spans; the partials are added in item order below.
    const uint64_t n_items = (n_queries + kQueriesPerItem - 1) / kQueriesPerItem;
    std::vector<uint64_t> item_lo(n_items);
    std::vector<std::vector<double>> partial(n_items);
    const uint32_t G = Hq / Hkv;
    const double scale = 1.0 / std::sqrt(double(d));
    parallel_for(n_items, n_threads, [&](size_t item) {
        const uint64_t first = item * kQueriesPerItem, last = std::min(n_queries, first + kQueriesPerItem);
        uint64_t a = n_keys, b = 0;
        for (uint64_t i = first; i < last; ++i) {
            a = std::min(a, spans[i].key_begin);
            b = std::max(b, spans[i].key_end);
        }
        item_lo[item] = a;
        // Double accumulation: a token that draws attention collects up to
        // n_queries * Hq probabilities, most of them tiny next to the running
        // total, and a softmax denominator adds up to a whole context of
        // exponentials. In float the small terms would be rounded away
        // (anything under ~6e-8 of the sum), and small masses are exactly
        // what tells lightly attended tokens apart.
        std::vector<double>& acc = partial[item];
        acc.assign(b - a, 0.0);
        std::vector<double> q(d), score;
        std::vector<float> canonical(d);
        for (uint64_t i = first; i < last; ++i) {
            const QuerySpan& s = spans[i];
            score.resize(s.key_end - s.key_begin);
            for (uint32_t h = 0; h < Hq; ++h) {
                to_canonical(queries + (size_t(i) * Hq + h) * d, d, shape.pair_layout, canonical.data());
                for (uint32_t e = 0; e < d; ++e) q[e] = canonical[e];
                const uint32_t g = h / G;  // GQA: the KV head of this query head's group
                double top = -HUGE_VAL;
                for (uint64_t r = s.key_begin; r < s.key_end; ++r) {
                    const double* k = rotated.data() + size_t(r - lo) * key_doubles + size_t(g) * d;
                    double dot = 0;
                    for (uint32_t e = 0; e < d; ++e) dot += q[e] * k[e];
                    score[r - s.key_begin] = dot * scale;
                    top = std::max(top, dot * scale);
                }
                double denom = 0;
                for (double& x : score) {
                    x = std::exp(x - top);
                    denom += x;
                }
                for (uint64_t r = s.key_begin; r < s.key_end; ++r) acc[r - a] += score[r - s.key_begin] / denom;
            }
        }
    });
    for (uint64_t item = 0; item < n_items; ++item)
        for (size_t r = 0; r < partial[item].size(); ++r) mass[item_lo[item] + r] += partial[item][r];
    return mass;
}

std::vector<float> attention_token_weights(const std::vector<double>& mass, double beta) {
    invalid(std::isfinite(beta) && beta >= 0, "the attention weight beta must be finite and >= 0");
    double total = 0;
    for (double a : mass) {
        invalid(std::isfinite(a) && a >= 0, "attention mass must be finite and >= 0");
        total += a;
    }
    std::vector<float> w(mass.size(), 1.0f);
    if (total <= 0) return w;
    const double mean = total / double(mass.size());
    for (size_t t = 0; t < mass.size(); ++t) w[t] = float(1.0 + beta * mass[t] / mean);
    return w;
}

}  // namespace train
}  // namespace commvq
