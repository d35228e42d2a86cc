// Helpers of the GPU tests: caches on either device through the C API, the
// compressed tokens a cache holds, and a float64 reference attention over
// the keys and values those codes decode to.
#pragma once

#include <cuda_runtime.h>

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
