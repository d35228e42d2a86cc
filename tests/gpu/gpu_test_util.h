// Helpers of the GPU tests: caches on either device through the C API, the
// compressed tokens a cache holds, their codes and whole contents compared
// between two caches, and a float64 reference attention over the keys and
// values those codes decode to.
#pragma once

#include <cuda_runtime.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cache.h"
#include "code_packing.h"
#include "codebook.h"
#include "commvq/commvq.h"
#include "dtype.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "random_codebook.h"
#include "rope.h"
#include "value_encoder.h"

namespace commvq {
namespace gpu_test {

inline bool have_gpu() { return commvq_cuda_available() == 1; }

// An environment variable the library reads when a cache is created
// (COMMVQ_CUDA_*), set for the caches created while it lives, then restored.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) {
            had_ = true;
            old_ = old;
        }
        setenv(name, value, 1);
    }
    ~ScopedEnv() {
        if (had_)
            setenv(name_, old_.c_str(), 1);
        else
            unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    bool had_ = false;
    std::string old_;
};

#define GPU_CHECK(call) REQUIRE((call) == cudaSuccess)
#define CVQ_OK(call)                                                      \
    do {                                                                  \
        const commvq_status_t s_ = (call);                                \
        INFO("status " << commvq_status_string(s_) << ": " << commvq_last_error()); \
        REQUIRE(s_ == COMMVQ_OK);                                         \
    } while (0)

struct CodebookHandle {
    commvq_codebook_t* h;
    explicit CodebookHandle(const Codebook& cb) : h(new commvq_codebook{cb}) {}
    ~CodebookHandle() { commvq_codebook_free(h); }
};

struct CacheHandle {
    commvq_cache_t* h = nullptr;
    ~CacheHandle() { commvq_cache_destroy(h); }
    Cache& cache() { return h->cache; }
};

inline commvq_cache_params_t cache_params(int32_t device, uint32_t window, uint32_t sinks, int32_t dtype,
                                          uint64_t max_tokens = 8192, uint32_t max_seqs = 4) {
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.device = device;
    p.window = window;
    p.sink_tokens = sinks;
    p.io_dtype = dtype;
    p.max_tokens = max_tokens;
    p.max_seqs = max_seqs;
    p.block_tokens = 16;
    p.n_threads = 2;
    return p;
}

inline const commvq_cache_params_t* ptr(const commvq_cache_params_t& p) { return &p; }

// Random values in io dtype, and the same values as float after rounding.
struct Tensor {
    std::vector<uint8_t> bytes;
    std::vector<float> values;
    int32_t dtype;
    Tensor(size_t n, int32_t dt, test::Rng& rng, double stddev = 1.0) : dtype(dt) {
        values = rng.normals(n, stddev);
        bytes.resize(n * dtype_size(dt));
        from_float(values.data(), n, dt, bytes.data());
        to_float(bytes.data(), dt, n, values.data());
    }
    Tensor(const std::vector<float>& src, int32_t dt) : dtype(dt) {
        bytes.resize(src.size() * dtype_size(dt));
        from_float(src.data(), src.size(), dt, bytes.data());
        values.resize(src.size());
        to_float(bytes.data(), dt, src.size(), values.data());
    }
    const void* data() const { return bytes.data(); }
};

// A device copy of host bytes.
struct DeviceCopy {
    void* ptr = nullptr;
    explicit DeviceCopy(size_t bytes, const void* src = nullptr) {
        if (cudaMalloc(&ptr, bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc");
        if (src && cudaMemcpy(ptr, src, bytes, cudaMemcpyHostToDevice) != cudaSuccess)
            throw std::runtime_error("cudaMemcpy");
    }
    ~DeviceCopy() { cudaFree(ptr); }
    std::vector<uint8_t> to_host(size_t bytes) const {
        std::vector<uint8_t> out(bytes);
        if (cudaMemcpy(out.data(), ptr, bytes, cudaMemcpyDeviceToHost) != cudaSuccess)
            throw std::runtime_error("cudaMemcpy");
        return out;
    }
};

// A Llama-like random codebook: 2 layers, 2 KV heads of 4 query heads each,
// head_dim 128, RoPE theta 500000.
inline test::RandomCodebookSpec llama_like(uint32_t value_bits, uint64_t seed) {
    test::RandomCodebookSpec s;
    s.n_layers = 2;
    s.n_kv_heads = 2;
    s.n_q_heads = 8;
    s.head_dim = 128;
    s.value_bits = value_bits;
    s.seed = seed;
    s.rope.theta = 500000;
    return s;
}

// Appends the same tokens to a CPU and a GPU cache in chunks.
inline void append_both(commvq_cache_t* cpu, commvq_cache_t* gpu, uint32_t n_layers, uint32_t seq, const Tensor& k,
                        const Tensor& v, uint32_t n_tokens, uint32_t token_elems, uint32_t chunk) {
    const size_t es = dtype_size(k.dtype);
    for (uint32_t t = 0; t < n_tokens; t += chunk) {
        const uint32_t n = std::min(chunk, n_tokens - t);
        for (uint32_t l = 0; l < n_layers; ++l) {
            const uint8_t* kp = k.bytes.data() + (size_t(l) * n_tokens + t) * token_elems * es;
            const uint8_t* vp = v.bytes.data() + (size_t(l) * n_tokens + t) * token_elems * es;
            if (cpu) CVQ_OK(commvq_cache_append(cpu, l, seq, n, kp, vp));
            if (gpu) CVQ_OK(commvq_cache_append(gpu, l, seq, n, kp, vp));
        }
    }
}

// What a cache holds for one compressed token of one layer.
struct CompressedToken {
    std::vector<uint16_t> key_codes;  // [n_kv_heads][R]
    std::vector<uint8_t> value_bits;
    std::vector<float> key_scales;
    float value_weight;
};

inline std::vector<CompressedToken> compressed_tokens(Cache& c, uint32_t layer, uint32_t seq) {
    const Codebook& cb = c.codebook();
    const BlockLayout& b = c.layout();
    const LayerView v = c.sequence(seq).view(seq, layer, c.params().sink_tokens);
    std::vector<uint8_t> raw(v.compressed * b.token_bytes());
    c.backend().read_compressed(layer, v, 0, v.compressed, raw.data());
    std::vector<CompressedToken> out(v.compressed);
    const uint8_t* p = raw.data();
    for (auto& t : out) {
        t.key_codes.resize(size_t(cb.n_kv_heads) * cb.key_stages);
        unpack_codes(p, t.key_codes.size(), cb.code_bits(), t.key_codes.data());
        p += b.key_code_bytes;
        t.value_bits.assign(p, p + b.value_code_bytes);
        p += b.value_code_bytes;
        t.key_scales.resize(b.n_key_scales);
        std::memcpy(t.key_scales.data(), p, 4 * b.n_key_scales);
        p += 4 * b.n_key_scales;
        std::memcpy(&t.value_weight, p, 4);
        p += 4;
    }
    return out;
}

// The compressed tokens of two caches compared: key codes per token-head,
// key scales, value bits, and the weights of tokens whose value bits agree.
struct CodeDiff {
    size_t token_heads = 0, token_heads_differ = 0, bits = 0, bits_differ = 0;
    size_t tokens = 0, weights_differ = 0;  // weights_differ: of tokens whose bits agree, bitwise
    double max_scale_err = 0, max_weight_err = 0;
    void add(const CodeDiff& d) {
        token_heads += d.token_heads;
        token_heads_differ += d.token_heads_differ;
        bits += d.bits;
        bits_differ += d.bits_differ;
        tokens += d.tokens;
        weights_differ += d.weights_differ;
        max_scale_err = std::max(max_scale_err, d.max_scale_err);
        max_weight_err = std::max(max_weight_err, d.max_weight_err);
    }
};

inline CodeDiff compare_codes(Cache& a, Cache& b, uint32_t layer, uint32_t seq) {
    const Codebook& cb = a.codebook();
    const auto ta = compressed_tokens(a, layer, seq), tb = compressed_tokens(b, layer, seq);
    REQUIRE(ta.size() == tb.size());
    CodeDiff d;
    d.tokens = ta.size();
    for (size_t i = 0; i < ta.size(); ++i) {
        for (uint32_t g = 0; g < cb.n_kv_heads; ++g) {
            ++d.token_heads;
            bool differ = false;
            for (uint32_t r = 0; r < cb.key_stages; ++r)
                differ |= ta[i].key_codes[g * cb.key_stages + r] != tb[i].key_codes[g * cb.key_stages + r];
            d.token_heads_differ += differ;
        }
        for (size_t s = 0; s < ta[i].key_scales.size(); ++s)
            d.max_scale_err = std::max(d.max_scale_err, double(std::fabs(ta[i].key_scales[s] - tb[i].key_scales[s]) /
                                                               std::max(1e-30f, std::fabs(tb[i].key_scales[s]))));
        bool bits_equal = true;
        for (size_t k = 0; k < ta[i].value_bits.size(); ++k) {
            const uint8_t x = ta[i].value_bits[k] ^ tb[i].value_bits[k];
            d.bits += 8;
            d.bits_differ += __builtin_popcount(x);
            bits_equal &= x == 0;
        }
        if (bits_equal) {
            d.max_weight_err = std::max(d.max_weight_err, double(std::fabs(ta[i].value_weight - tb[i].value_weight) /
                                                                 std::fabs(tb[i].value_weight)));
            d.weights_differ += std::memcmp(&ta[i].value_weight, &tb[i].value_weight, 4) != 0;
        }
    }
    return d;
}

// Codes of two encoders of the same tokens: at most 0.1% of token-heads
// (keys) and of value bits differ (near-ties), scales within 1e-5 and the
// weights of equal bits within 1e-4, relative.
inline void check_codes(const CodeDiff& d) {
    INFO("token-heads " << d.token_heads << ", differing " << d.token_heads_differ << "; value bits " << d.bits
                        << ", differing " << d.bits_differ << "; scale err " << d.max_scale_err << ", weight err "
                        << d.max_weight_err);
    MESSAGE("codes: " << d.token_heads_differ << " of " << d.token_heads << " token-heads differ, " << d.bits_differ
                      << " of " << d.bits << " value bits differ");
    CHECK(d.token_heads > 0);
    CHECK(d.token_heads_differ <= d.token_heads / 1000);
    CHECK(d.bits_differ <= d.bits / 1000);
    CHECK(d.max_scale_err < 1e-5);
    CHECK(d.max_weight_err < 1e-4);
}

// Everything two GPU caches of one codebook and parameters hold, compared:
// every sequence's block table, layer states and block references exactly,
// its sinks and window (keys and values) bit for bit, and its compressed
// tokens' codes into the returned CodeDiff.
inline CodeDiff compare_caches(Cache& a, Cache& b) {
    const Codebook& cb = a.codebook();
    const size_t es = dtype_size(a.params().io_dtype);
    const size_t kb = size_t(cb.key_dim()) * es, vb = size_t(cb.value_dim()) * es;
    REQUIRE(a.block_pool().capacity() == b.block_pool().capacity());
    for (uint32_t i = 0; i < a.block_pool().capacity(); ++i) {
        CAPTURE(i);
        CHECK(a.block_pool().references(i) == b.block_pool().references(i));
    }
    CodeDiff codes;
    for (uint32_t seq = 0; seq < a.params().max_seqs; ++seq) {
        CAPTURE(seq);
        CHECK(a.sequence(seq).blocks == b.sequence(seq).blocks);
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            CAPTURE(l);
            const LayerView view_a = a.sequence(seq).view(seq, l, a.params().sink_tokens);
            const LayerView view_b = b.sequence(seq).view(seq, l, b.params().sink_tokens);
            REQUIRE(view_a.length == view_b.length);
            REQUIRE(view_a.compressed == view_b.compressed);
            // Keys, then values, of the sinks and the window.
            const auto uncompressed = [&](Cache& c, const LayerView& v) {
                std::vector<uint8_t> k((v.sinks + v.window) * kb), x((v.sinks + v.window) * vb);
                c.backend().read_uncompressed(l, v, 0, v.sinks, k.data(), x.data());
                c.backend().read_uncompressed(l, v, v.first_window_position(), v.window, k.data() + v.sinks * kb,
                                              x.data() + v.sinks * vb);
                k.insert(k.end(), x.begin(), x.end());
                return k;
            };
            CHECK(uncompressed(a, view_a) == uncompressed(b, view_b));
            codes.add(compare_codes(a, b, l, seq));
        }
    }
    return codes;
}

// Post-RoPE canonical key (double) of one head at a position, from a
// model-layout key given pre- or post-RoPE.
inline std::vector<double> post_rope_canonical(const float* key_model, uint32_t head_dim, int32_t layout,
                                               bool pre_rope, const std::vector<double>& freq, uint64_t pos) {
    std::vector<float> c(head_dim);
    to_canonical(key_model, head_dim, layout, c.data());
    std::vector<double> out(head_dim);
    for (uint32_t j = 0; j < head_dim / 2; ++j) {
        double re = c[2 * j], im = c[2 * j + 1];
        if (pre_rope) {
            const double a = double(pos) * freq[j], cs = std::cos(a), sn = std::sin(a);
            const double r = re * cs - im * sn;
            im = re * sn + im * cs;
            re = r;
        }
        out[2 * j] = re;
        out[2 * j + 1] = im;
    }
    return out;
}

// Float64 attention of one query row (post-RoPE, model layout) over the
// first `visible` tokens of a sequence whose uncompressed tokens are
// `keys`/`values` (model layout, as appended, all positions) and whose
// compressed tokens are decoded from the cache's own codes.
inline void reference_attention(Cache& c, uint32_t layer, uint32_t seq, const std::vector<float>& keys,
                                const std::vector<float>& values, const float* q, uint64_t visible,
                                std::vector<double>& out, std::vector<double>& lse) {
    const Codebook& cb = c.codebook();
    const commvq_cache_params_t& prm = c.params();
    const uint32_t H = cb.n_kv_heads, Hq = cb.n_q_heads, d = cb.head_dim, D = cb.value_dim(), G = Hq / H;
    const LayerView v = c.sequence(seq).view(seq, layer, prm.sink_tokens);
    const std::vector<CompressedToken> comp = compressed_tokens(c, layer, seq);
    const std::vector<double> freq = rope_frequencies(cb.rope, d);
    KeyEncoder ke(cb, layer);
    ValueEncoder ve(cb, layer);
    const bool pre = prm.key_convention == COMMVQ_KEYS_PRE_ROPE;
    const double scale = prm.attn_scale;

    std::vector<std::vector<double>> k_post(visible, std::vector<double>(size_t(H) * d));
    std::vector<std::vector<double>> v_tok(visible, std::vector<double>(D));
    std::vector<float> tmp(D), head(d);
    for (uint64_t m = 0; m < visible; ++m) {
        if (m >= v.sinks && m < v.sinks + v.compressed) {
            const CompressedToken& t = comp[m - prm.sink_tokens];
            for (uint32_t g = 0; g < H; ++g) {
                ke.decode_head(g, t.key_codes.data() + size_t(g) * cb.key_stages, head.data());
                const float s = t.key_scales[cb.n_key_scales() == 1 ? 0 : g];
                for (uint32_t j = 0; j < d / 2; ++j) {
                    const double re = double(head[2 * j]) * s, im = double(head[2 * j + 1]) * s;
                    const double a = double(m) * freq[j], cs = std::cos(a), sn = std::sin(a);
                    k_post[m][g * d + 2 * j] = re * cs - im * sn;
                    k_post[m][g * d + 2 * j + 1] = re * sn + im * cs;
                }
            }
            ve.decode(t.value_bits.data(), t.value_weight, tmp.data());
            for (uint32_t i = 0; i < D; ++i) v_tok[m][i] = tmp[i];
        } else {
            for (uint32_t g = 0; g < H; ++g) {
                const std::vector<double> kp =
                    post_rope_canonical(keys.data() + (m * H + g) * d, d, cb.pair_layout, pre, freq, m);
                std::copy(kp.begin(), kp.end(), k_post[m].begin() + size_t(g) * d);
            }
            for (uint32_t i = 0; i < D; ++i) v_tok[m][i] = values[m * D + i];
        }
    }
    out.assign(size_t(Hq) * d, 0.0);
    lse.assign(Hq, 0.0);
    std::vector<double> s(visible);
    for (uint32_t h = 0; h < Hq; ++h) {
        const uint32_t g = h / G;
        std::vector<float> qc(d);
        to_canonical(q + size_t(h) * d, d, cb.pair_layout, qc.data());
        double mx = -INFINITY;
        for (uint64_t m = 0; m < visible; ++m) {
            double dot = 0;
            for (uint32_t i = 0; i < d; ++i) dot += double(qc[i]) * k_post[m][g * d + i];
            s[m] = dot * scale;
            mx = std::max(mx, s[m]);
        }
        double sum = 0;
        for (uint64_t m = 0; m < visible; ++m) sum += (s[m] = std::exp(s[m] - mx));
        for (uint64_t m = 0; m < visible; ++m)
            for (uint32_t c2 = 0; c2 < d; ++c2) out[h * d + c2] += s[m] / sum * v_tok[m][g * d + c2];
        lse[h] = mx + std::log(sum);
    }
}

inline double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    return std::sqrt(num / den);
}

}  // namespace gpu_test
}  // namespace commvq
