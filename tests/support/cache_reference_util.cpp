#include "cache_reference.h"

#include <cmath>
#include <limits>

#include "dtype.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "rope.h"
#include "value_encoder.h"

namespace commvq {
namespace test {
namespace {

void rotate_canonical(std::vector<double>& x, size_t offset, const std::vector<double>& freq,
                      uint64_t position, int sign) {
    for (size_t j = 0; j < freq.size(); ++j) {
        const double a = sign * double(position) * freq[j];
        const double c = std::cos(a), s = std::sin(a);
        const double re = x[offset + 2 * j], im = x[offset + 2 * j + 1];
        x[offset + 2 * j] = re * c - im * s;
        x[offset + 2 * j + 1] = re * s + im * c;
    }
}

std::vector<double> canonical(const Codebook& cb, const float* x) {
    std::vector<float> c(cb.head_dim);
    to_canonical(x, cb.head_dim, cb.pair_layout, c.data());
    return std::vector<double>(c.begin(), c.end());
}

}  // namespace

IoTensor make_io(const std::vector<float>& x, int32_t dtype) {
    IoTensor t;
    t.bytes.resize(x.size() * dtype_size(dtype));
    from_float(x.data(), x.size(), dtype, t.bytes.data());
    t.values.resize(x.size());
    to_float(t.bytes.data(), dtype, x.size(), t.values.data());
    return t;
}

std::vector<float> apply_rope(const Codebook& cb, const float* x, uint64_t position) {
    std::vector<double> c = canonical(cb, x);
    rotate_canonical(c, 0, rope_frequencies(cb.rope, cb.head_dim), position, +1);
    std::vector<float> cf(c.begin(), c.end()), out(cb.head_dim);
    from_canonical(cf.data(), cb.head_dim, cb.pair_layout, out.data());
    return out;
}

ReferenceCache::ReferenceCache(const Cache& cache)
    : cache_(cache), cb_(cache.codebook()), freq_(rope_frequencies(cb_.rope, cb_.head_dim)) {
    seqs_.resize(cache.params().max_seqs, std::vector<std::vector<Token>>(cb_.n_layers));
    key_encoders_.reserve(cb_.n_layers);
    value_encoders_.reserve(cb_.n_layers);
    for (uint32_t l = 0; l < cb_.n_layers; ++l) {
        key_encoders_.emplace_back(cb_, l);
        value_encoders_.emplace_back(cb_, l);
    }
}

void ReferenceCache::append(uint32_t layer, uint32_t seq, uint32_t n, const float* k, const float* v) {
    const size_t D = cb_.value_dim();
    for (uint32_t t = 0; t < n; ++t) {
        Token tok;
        tok.k.assign(k + t * D, k + (t + 1) * D);
        tok.v.assign(v + t * D, v + (t + 1) * D);
        seqs_[seq][layer].push_back(std::move(tok));
    }
}

void ReferenceCache::truncate(uint32_t seq, uint64_t length) {
    for (auto& layer : seqs_[seq])
        if (layer.size() > length) layer.resize(length);
}

// The token as the cache holds it in codes: prepared exactly as the cache
// prepares it (canonical layout, un-rotated if post-RoPE), encoded, decoded,
// then rotated to its position in double.
void ReferenceCache::decode(uint32_t layer, uint64_t position, const Token& t) const {
    const uint32_t d = cb_.head_dim, H = cb_.n_kv_heads, R = cb_.key_stages;
    std::vector<float> k(size_t(H) * d);
    Rope rope(cb_.rope, d);
    for (uint32_t g = 0; g < H; ++g) {
        to_canonical(t.k.data() + size_t(g) * d, d, cb_.pair_layout, k.data() + size_t(g) * d);
        if (cache_.params().key_convention == COMMVQ_KEYS_POST_ROPE)
            rope.rotate(k.data() + size_t(g) * d, position, -1, k.data() + size_t(g) * d);
    }
    const KeyEncoder& keys = key_encoders_[layer];
    std::vector<uint16_t> codes(size_t(H) * R);
    std::vector<float> scales(cb_.n_key_scales()), head(d);
    keys.encode(k.data(), codes.data(), scales.data());
    t.key.assign(size_t(H) * d, 0.0);
    for (uint32_t g = 0; g < H; ++g) {
        keys.decode_head(g, codes.data() + size_t(g) * R, head.data());
        const double s = scales[cb_.n_key_scales() == 1 ? 0 : g];
        for (uint32_t i = 0; i < d; ++i) t.key[size_t(g) * d + i] = s * head[i];
        rotate_canonical(t.key, size_t(g) * d, freq_, position, +1);
    }
    const ValueEncoder& values = value_encoders_[layer];
    std::vector<float> scratch(values.scratch_floats()), v(cb_.value_dim());
    std::vector<uint8_t> bits(cb_.value_code_bits() / 8);
    float w = 0;
    values.encode(t.v.data(), bits.data(), &w, scratch.data());
    values.decode(bits.data(), w, v.data());
    t.value.assign(v.begin(), v.end());
    t.compressed_ready = true;
}

void ReferenceCache::attend(uint32_t layer, uint32_t seq, uint32_t n_rows, const float* q,
                            const uint64_t* visible, std::vector<double>& out,
                            std::vector<double>& lse) const {
    const uint32_t d = cb_.head_dim, Hq = cb_.n_q_heads, G = Hq / cb_.n_kv_heads;
    const uint64_t S = cache_.params().sink_tokens;
    const uint64_t compressed = cache_.sequence(seq).layers[layer].compressed;
    const double scale = cache_.params().attn_scale;
    const auto& tokens = seqs_[seq][layer];
    out.assign(size_t(n_rows) * Hq * d, 0.0);
    lse.assign(size_t(n_rows) * Hq, 0.0);

    // Every visible token's key (canonical, at its position) and value.
    uint64_t n_tokens = 0;
    for (uint32_t r = 0; r < n_rows; ++r) n_tokens = std::max(n_tokens, visible[r]);
    std::vector<std::vector<double>> keys(n_tokens), values(n_tokens);
    for (uint64_t m = 0; m < n_tokens; ++m) {
        const Token& t = tokens.at(m);
        if (m >= S && m < S + compressed) {
            if (!t.compressed_ready) decode(layer, m, t);
            keys[m] = t.key;
            values[m] = t.value;
        } else {
            keys[m].clear();
            for (uint32_t g = 0; g < cb_.n_kv_heads; ++g) {
                std::vector<double> c = canonical(cb_, t.k.data() + size_t(g) * d);
                if (cache_.params().key_convention == COMMVQ_KEYS_PRE_ROPE) rotate_canonical(c, 0, freq_, m, +1);
                keys[m].insert(keys[m].end(), c.begin(), c.end());
            }
            values[m].assign(t.v.begin(), t.v.end());
        }
    }
    std::vector<double> scores(n_tokens);
    for (uint32_t r = 0; r < n_rows; ++r) {
        for (uint32_t h = 0; h < Hq; ++h) {
            const uint32_t g = h / G;
            const std::vector<double> qc = canonical(cb_, q + (size_t(r) * Hq + h) * d);
            double max = -std::numeric_limits<double>::infinity();
            for (uint64_t m = 0; m < visible[r]; ++m) {
                double s = 0;
                for (uint32_t i = 0; i < d; ++i) s += qc[i] * keys[m][size_t(g) * d + i];
                scores[m] = scale * s;
                max = std::max(max, scores[m]);
            }
            double sum = 0;
            double* o = out.data() + (size_t(r) * Hq + h) * d;
            for (uint64_t m = 0; m < visible[r]; ++m) {
                const double p = std::exp(scores[m] - max);
                sum += p;
                for (uint32_t i = 0; i < d; ++i) o[i] += p * values[m][size_t(g) * d + i];
            }
            for (uint32_t i = 0; i < d; ++i) o[i] /= sum;
            lse[size_t(r) * Hq + h] = max + std::log(sum);
        }
    }
}

void ReferenceCache::attend_last(uint32_t layer, uint32_t seq, uint32_t n_queries, const float* q,
                                 bool causal, std::vector<double>& out, std::vector<double>& lse) const {
    const uint64_t len = seqs_[seq][layer].size();
    std::vector<uint64_t> visible(n_queries);
    for (uint32_t i = 0; i < n_queries; ++i) visible[i] = causal ? len - n_queries + i + 1 : len;
    attend(layer, seq, n_queries, q, visible.data(), out, lse);
}

double max_relative_error(const std::vector<float>& out, const std::vector<double>& ref, size_t row_size) {
    double worst = 0;
    for (size_t r = 0; r * row_size < ref.size(); ++r) {
        double diff = 0, norm = 0;
        for (size_t i = r * row_size; i < (r + 1) * row_size; ++i) {
            diff += (out[i] - ref[i]) * (out[i] - ref[i]);
            norm += ref[i] * ref[i];
        }
        if (!std::isfinite(diff)) return std::numeric_limits<double>::infinity();
        worst = std::max(worst, std::sqrt(diff / norm));
    }
    return worst;
}

std::vector<float> from_io(const void* data, int32_t dtype, size_t n) {
    std::vector<float> x(n);
    to_float(data, dtype, n, x.data());
    return x;
}

std::vector<uint8_t> poisoned(int32_t dtype, size_t n) {
    std::vector<float> nan(n, std::numeric_limits<float>::quiet_NaN());
    std::vector<uint8_t> b(n * dtype_size(dtype));
    from_float(nan.data(), n, dtype, b.data());
    return b;
}

bool all_finite(const std::vector<float>& x) {
    for (float v : x)
        if (!std::isfinite(v)) return false;
    return true;
}

}  // namespace test
}  // namespace commvq
