// Timing of the CUDA back end, as a small C ABI that bench/bench.py loads
// with ctypes, so the library and PyTorch's bf16 attention run in one
// process on the same GPU. Codebooks are random (tests/support) with the
// LLaMA-3.1-8B layer shape: 32 query heads, 8 KV heads, head_dim 128.
// Times come from CUDA events; decode attention is timed as CUDA-graph
// replays (what an engine runs), cycling over 4 layers so the pool is not
// one L2-resident buffer.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <vector>

#include "cache.h"
#include "commvq/commvq.h"
#include "launchers.h"
#include "model_shape.h"
#include "random_codebook.h"
#include "rope.h"

namespace {

using namespace commvq;

#define BENCH_CUDA(x)                                                                     \
    do {                                                                                  \
        cudaError_t e_ = (x);                                                             \
        if (e_ != cudaSuccess) {                                                          \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            return -1;                                                                    \
        }                                                                                 \
    } while (0)
#define BENCH_OK(x)                                                                       \
    do {                                                                                  \
        commvq_status_t s_ = (x);                                                         \
        if (s_ != COMMVQ_OK) {                                                            \
            std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, commvq_last_error()); \
            return -1;                                                                    \
        }                                                                                 \
    } while (0)

const Codebook& llama_codebook(uint32_t bits, uint32_t layers) {
    static std::map<std::pair<uint32_t, uint32_t>, std::unique_ptr<Codebook>> made;
    auto& cb = made[{bits, layers}];
    if (!cb) {
        test::RandomCodebookSpec s;
        s.n_layers = layers;
        s.n_kv_heads = 8;
        s.n_q_heads = 32;
        s.head_dim = 128;
        s.value_bits = bits;
        s.rope.theta = 500000;
        s.seed = 42 + bits;
        cb = std::make_unique<Codebook>(test::random_codebook(s));
    }
    return *cb;
}

// Random bf16 rows on the device.
struct DeviceRows {
    void* ptr = nullptr;
    DeviceRows(size_t n, double stddev, uint64_t seed) {
        test::Rng rng(seed);
        std::vector<__nv_bfloat16> h(n);
        for (auto& x : h) x = __float2bfloat16(float(rng.normal() * stddev));
        cudaMalloc(&ptr, n * 2);
        cudaMemcpy(ptr, h.data(), n * 2, cudaMemcpyHostToDevice);
    }
    ~DeviceRows() { cudaFree(ptr); }
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

commvq_cache_params_t params(uint32_t max_seqs, uint64_t max_tokens) {
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.device = 0;
    p.max_seqs = max_seqs;
    p.max_tokens = max_tokens;
    p.block_tokens = 64;
    p.window = 128;
    p.io_dtype = COMMVQ_DTYPE_BF16;
    return p;
}

constexpr uint32_t kChunk = 32768;  // tokens per append

int fill(commvq_cache_t* c, uint32_t layers, uint32_t seq, uint64_t tokens, const DeviceRows& k, const DeviceRows& v) {
    for (uint64_t t = 0; t < tokens; t += kChunk) {
        const uint32_t n = uint32_t(std::min<uint64_t>(kChunk, tokens - t));
        for (uint32_t l = 0; l < layers; ++l) BENCH_OK(commvq_cache_append(c, l, seq, n, k.ptr, v.ptr));
    }
    return 0;
}

}  // namespace

extern "C" {

// Decode attention, µs per layer: `batch` sequences of `ctx` tokens, one
// bf16 query each; median over graph replays. With `shared` != 0 sequence 0
// is filled and the others are forks of it (copy-on-write: they attend the
// same blocks), so a batch far larger than the time to fill it allows can be
// timed; the work per step is the same. Returns < 0 on failure.
__attribute__((visibility("default"))) double cvq_bench_decode(uint32_t bits, uint32_t batch, uint64_t ctx,
                                                                uint32_t replays, uint32_t shared) {
    constexpr uint32_t kLayers = 4;
    const Codebook& cb = llama_codebook(bits, kLayers);
    commvq_codebook_t handle{cb};
    commvq_cache_t* c = nullptr;
    const uint64_t filled = shared ? 1 : batch;
    const commvq_cache_params_t p = params(batch, filled * ctx + 64 * batch);
    BENCH_OK(commvq_cache_create(&handle, &p, &c));
    std::unique_ptr<commvq_cache_t, void (*)(commvq_cache_t*)> guard(c, commvq_cache_destroy);
    const size_t row = size_t(cb.value_dim());
    DeviceRows k(std::min<uint64_t>(ctx, kChunk) * row, 2.0, 1), v(std::min<uint64_t>(ctx, kChunk) * row, 1.0, 2);
    for (uint32_t s = 0; s < filled; ++s)
        if (fill(c, kLayers, s, ctx, k, v)) return -1;
    for (uint32_t s = uint32_t(filled); s < batch; ++s) BENCH_OK(commvq_cache_seq_fork(c, 0, s));
    DeviceRows q(size_t(batch) * cb.n_q_heads * cb.head_dim, 3.0, 3);
    void* out = nullptr;
    BENCH_CUDA(cudaMalloc(&out, size_t(batch) * cb.n_q_heads * cb.head_dim * 2));
    std::vector<uint32_t> seqs(batch);
    for (uint32_t s = 0; s < batch; ++s) seqs[s] = s;
    cudaStream_t stream;
    BENCH_CUDA(cudaStreamCreate(&stream));
    BENCH_OK(commvq_cache_set_stream(c, stream));
    for (uint32_t l = 0; l < kLayers; ++l)  // settle the device state outside the graph
        BENCH_OK(commvq_cache_attend_batch(c, l, batch, seqs.data(), q.ptr, out, nullptr, 0));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    BENCH_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    for (uint32_t l = 0; l < kLayers; ++l)
        BENCH_OK(commvq_cache_attend_batch(c, l, batch, seqs.data(), q.ptr, out, nullptr, 0));
    BENCH_CUDA(cudaStreamEndCapture(stream, &graph));
    BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    std::vector<double> times;
    for (uint32_t i = 0; i < replays + 5; ++i) {
        cudaEventRecord(a, stream);
        cudaGraphLaunch(exec, stream);
        cudaEventRecord(b, stream);
        BENCH_CUDA(cudaEventSynchronize(b));
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        if (i >= 5) times.push_back(ms * 1000.0 / kLayers);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    commvq_cache_set_stream(c, nullptr);
    cudaStreamDestroy(stream);
    cudaFree(out);
    return median(times);
}

// A prefill chunk attended from codes, µs per layer: one sequence of
// `ctx` + `queries` tokens (the chunk's own tokens appended first, as an
// engine appends a chunk before attending it), then `queries` causal bf16
// queries at its last positions (commvq_cache_attend); median over `reps`
// rounds of the 4 layers, timed by events (no graph). Returns < 0 on failure.
__attribute__((visibility("default"))) double cvq_bench_prefill(uint32_t bits, uint64_t ctx, uint32_t queries,
                                                                 uint32_t reps) {
    constexpr uint32_t kLayers = 4;
    const Codebook& cb = llama_codebook(bits, kLayers);
    commvq_codebook_t handle{cb};
    commvq_cache_t* c = nullptr;
    const commvq_cache_params_t p = params(1, ctx + queries + 64);
    BENCH_OK(commvq_cache_create(&handle, &p, &c));
    std::unique_ptr<commvq_cache_t, void (*)(commvq_cache_t*)> guard(c, commvq_cache_destroy);
    const size_t row = size_t(cb.value_dim());
    const uint64_t total = ctx + queries;
    DeviceRows k(std::min<uint64_t>(total, kChunk) * row, 2.0, 1), v(std::min<uint64_t>(total, kChunk) * row, 1.0, 2);
    if (fill(c, kLayers, 0, total, k, v)) return -1;
    DeviceRows q(size_t(queries) * cb.n_q_heads * cb.head_dim, 3.0, 3);
    void* out = nullptr;
    BENCH_CUDA(cudaMalloc(&out, size_t(queries) * cb.n_q_heads * cb.head_dim * 2));
    std::unique_ptr<void, cudaError_t (*)(void*)> out_guard(out, cudaFree);
    // The cache's calls and the events on one stream of our own, as in cvq_bench_decode.
    cudaStream_t stream;
    BENCH_CUDA(cudaStreamCreate(&stream));
    std::unique_ptr<CUstream_st, cudaError_t (*)(cudaStream_t)> stream_guard(stream, cudaStreamDestroy);
    BENCH_OK(commvq_cache_set_stream(c, stream));
    cudaEvent_t a, b;
    BENCH_CUDA(cudaEventCreate(&a));
    std::unique_ptr<CUevent_st, cudaError_t (*)(cudaEvent_t)> a_guard(a, cudaEventDestroy);
    BENCH_CUDA(cudaEventCreate(&b));
    std::unique_ptr<CUevent_st, cudaError_t (*)(cudaEvent_t)> b_guard(b, cudaEventDestroy);
    for (uint32_t l = 0; l < kLayers; ++l) BENCH_OK(commvq_cache_attend(c, l, 0, queries, q.ptr, out, nullptr, 0));
    BENCH_CUDA(cudaStreamSynchronize(stream));
    std::vector<double> times;
    for (uint32_t i = 0; i < reps; ++i) {
        cudaEventRecord(a, stream);
        for (uint32_t l = 0; l < kLayers; ++l) BENCH_OK(commvq_cache_attend(c, l, 0, queries, q.ptr, out, nullptr, 0));
        cudaEventRecord(b, stream);
        BENCH_CUDA(cudaEventSynchronize(b));
        float ms = 0;
        cudaEventElapsedTime(&ms, a, b);
        times.push_back(ms * 1000.0 / kLayers);
    }
    BENCH_OK(commvq_cache_set_stream(c, nullptr));
    return median(times);
}

}  // extern "C"

namespace {

// One layer's encoder tables on the device and n random bf16 tokens, for
// timing the encoders' launchers directly (no cache around them).
struct EncoderBench {
    const Codebook& cb;
    uint32_t n;
    cuda::ModelShape m;
    std::vector<void*> owned;
    cuda::KeyTables kt;
    cuda::ValueTables vt;
    double* freq = nullptr;
    DeviceRows k, v;
    cuda::EncodeSource src;
    cudaEvent_t a = nullptr, b = nullptr;

    template <class T = float>
    T* device(size_t count, const void* host = nullptr) {
        void* d = nullptr;
        if (cudaMalloc(&d, std::max<size_t>(count, 1) * sizeof(T)) != cudaSuccess) return nullptr;
        owned.push_back(d);
        if (host) cudaMemcpy(d, host, count * sizeof(T), cudaMemcpyHostToDevice);
        return static_cast<T*>(d);
    }
    const float* up(const std::vector<float>& h) { return device(h.size(), h.data()); }

    EncoderBench(uint32_t bits, uint32_t n_tokens)
        : cb(llama_codebook(bits, 1)), n(n_tokens), m(cuda::model_shape(cb)),
          k(size_t(n_tokens) * cb.value_dim(), 2.0, 5), v(size_t(n_tokens) * cb.value_dim(), 1.0, 6) {
        const LayerCodebook& lc = cb.layers[0];
        std::vector<float> row_min(cb.norms[0].size());
        cuda::key_cross_row_minima(cb.cross[0].data(), row_min.size(), cb.sub_centers, row_min.data());
        kt = cuda::KeyTables{up(lc.keys.sub_centers), up(cb.cross[0]), up(cb.norms[0]), up(row_min)};
        std::array<const float*, 8> arrays;
        for (size_t i = 0; i < 8; ++i) arrays[i] = up(*cuda::value_arrays(lc.values)[i]);
        vt = cuda::value_tables_at(arrays);
        cuda::launch_value_tables_low_precision(m, &vt, device<uint16_t>(cuda::value_tables_low_precision_elems(m)),
                                                nullptr);
        const std::vector<double> f = rope_frequencies(cb.rope, cb.head_dim);
        freq = device<double>(f.size(), f.data());
        src.slots.key_bytes = uint32_t(cb.key_dim() * 2);
        src.slots.value_bytes = uint32_t(cb.value_dim() * 2);
        src.slots.io_dtype = COMMVQ_DTYPE_BF16;
        src.input_k = k.ptr;
        src.input_v = v.ptr;
        cudaEventCreate(&a);
        cudaEventCreate(&b);
    }
    ~EncoderBench() {
        cudaDeviceSynchronize();
        for (void* p : owned) cudaFree(p);
        cudaEventDestroy(a);
        cudaEventDestroy(b);
    }
    // Tokens per second of `work` (all n tokens): median of 5 after a warm-up.
    template <class Work>
    double rate(Work&& work) {
        std::vector<double> ts;
        for (int i = 0; i < 6; ++i) {
            cudaEventRecord(a);
            if (work() != 0) return -1;
            cudaEventRecord(b);
            if (cudaEventSynchronize(b) != cudaSuccess) return -1;
            float ms = 0;
            cudaEventElapsedTime(&ms, a, b);
            if (i > 0) ts.push_back(ms / 1000.0);
        }
        return n / median(ts);
    }
};

}  // namespace

extern "C" {

// Key encoding of one layer (key preparation and the pruned search),
// tokens per second: out[0]. Returns < 0 on failure.
__attribute__((visibility("default"))) int cvq_bench_encode_keys(uint32_t bits, uint32_t n, double* out) {
    EncoderBench e(bits, n);
    const size_t D = e.cb.value_dim();
    float* t = e.device(size_t(n) * D);
    float* scales = e.device(size_t(n) * e.cb.n_key_scales());
    uint16_t* codes = e.device<uint16_t>(size_t(n) * e.cb.n_kv_heads * e.cb.key_stages);
    if (!t || !scales || !codes) return -1;
    out[0] = e.rate([&] {
        const int err = cuda::launch_prepare_keys(e.m, e.src, n, e.freq, t, scales, nullptr);
        return err ? err : cuda::launch_encode_keys(e.m, e.kt, n, t, codes, nullptr);
    });
    return out[0] > 0 ? 0 : -1;
}

// Value encoding of one layer with products of `precision`
// (cuda::ValuePrecision: 0 fp32, 1 tf32, 2 bf16), n tokens in one pass:
// out[0] tokens per second, out[1] the fraction of code bits that differ
// from the fp32 products' on the same tokens, out[2] the largest relative
// difference of a weight from fp32's among tokens whose bits are equal.
__attribute__((visibility("default"))) int cvq_bench_encode_values(uint32_t bits, uint32_t n, int32_t precision,
                                                                   double* out) {
    EncoderBench e(bits, n);
    float* scratch = e.device(cuda::value_encoder_scratch_floats(e.m, n));
    float* weights = e.device(n);
    const size_t code_bytes = e.cb.value_code_bits() / 8, n_bytes = size_t(n) * code_bytes;
    uint8_t* vbits = e.device<uint8_t>(n_bytes);
    if (!scratch || !weights || !vbits) return -1;
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return -1;
    std::unique_ptr<cublasContext, cublasStatus_t (*)(cublasHandle_t)> guard(h, cublasDestroy);
    auto encode = [&](cuda::ValuePrecision p) {
        return cuda::launch_encode_values(e.m, e.vt, e.src, n, h, p, scratch, vbits, weights, nullptr);
    };
    std::vector<uint8_t> ref_bits(n_bytes), got_bits(n_bytes);
    std::vector<float> ref_w(n), got_w(n);
    BENCH_CUDA(cudaError_t(encode(cuda::ValuePrecision::fp32)));
    BENCH_CUDA(cudaMemcpy(ref_bits.data(), vbits, n_bytes, cudaMemcpyDeviceToHost));
    BENCH_CUDA(cudaMemcpy(ref_w.data(), weights, size_t(n) * 4, cudaMemcpyDeviceToHost));
    const cuda::ValuePrecision p = cuda::ValuePrecision(precision);
    out[0] = e.rate([&] { return encode(p); });
    if (out[0] <= 0) return -1;
    BENCH_CUDA(cudaMemcpy(got_bits.data(), vbits, n_bytes, cudaMemcpyDeviceToHost));
    BENCH_CUDA(cudaMemcpy(got_w.data(), weights, size_t(n) * 4, cudaMemcpyDeviceToHost));
    size_t differ = 0;
    double worst_w = 0;
    for (uint32_t t = 0; t < n; ++t) {
        size_t d = 0;
        for (size_t i = t * code_bytes; i < (t + 1) * code_bytes; ++i)
            d += __builtin_popcount(unsigned(ref_bits[i] ^ got_bits[i]));
        differ += d;
        if (d == 0) worst_w = std::max(worst_w, std::fabs(double(got_w[t]) - ref_w[t]) / std::fabs(double(ref_w[t])));
    }
    out[1] = double(differ) / (8.0 * n_bytes);
    out[2] = worst_w;
    return 0;
}

// A whole append of n tokens through commvq_cache_append into a one-layer
// cache without a window (every token encoded: key and value encoders,
// packing into blocks), tokens per second: out[0]. The value products and
// the encoding batch are the environment's (COMMVQ_CUDA_VALUE_PRODUCTS,
// COMMVQ_CUDA_ENCODE_BATCH), read when the cache is created.
__attribute__((visibility("default"))) int cvq_bench_append(uint32_t bits, uint32_t n, double* out) {
    const Codebook& cb = llama_codebook(bits, 1);
    const size_t D = cb.value_dim();
    DeviceRows k(size_t(n) * D, 2.0, 5), v(size_t(n) * D, 1.0, 6);
    commvq_codebook_t handle{cb};
    commvq_cache_t* c = nullptr;
    commvq_cache_params_t p = params(1, n + 64);
    p.window = 0;
    BENCH_OK(commvq_cache_create(&handle, &p, &c));
    std::unique_ptr<commvq_cache_t, void (*)(commvq_cache_t*)> guard(c, commvq_cache_destroy);
    std::vector<double> ts;
    for (int i = 0; i < 4; ++i) {
        commvq_cache_seq_clear(c, 0);
        BENCH_CUDA(cudaDeviceSynchronize());
        const auto t0 = std::chrono::steady_clock::now();
        BENCH_OK(commvq_cache_append(c, 0, 0, n, k.ptr, v.ptr));
        BENCH_OK(commvq_cache_synchronize(c));
        if (i > 0) ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    out[0] = n / median(ts);
    return 0;
}

// A prompt of `tokens` tokens appended to every layer of a `layers`-layer
// 1-bit cache (bf16 io, window 128): wall seconds (host work included),
// and the cache's device bytes: out[0] seconds, out[1] compressed blocks in
// use, out[2] window bytes, out[3] everything taken at creation.
__attribute__((visibility("default"))) int cvq_bench_prompt(uint64_t tokens, uint32_t layers, double* out) {
    const Codebook& cb = llama_codebook(1, layers);
    commvq_codebook_t handle{cb};
    commvq_cache_t* c = nullptr;
    const commvq_cache_params_t p = params(1, tokens);
    BENCH_OK(commvq_cache_create(&handle, &p, &c));
    std::unique_ptr<commvq_cache_t, void (*)(commvq_cache_t*)> guard(c, commvq_cache_destroy);
    const size_t row = cb.value_dim();
    DeviceRows k(std::min<uint64_t>(tokens, kChunk) * row, 2.0, 7), v(std::min<uint64_t>(tokens, kChunk) * row, 1.0, 8);
    BENCH_CUDA(cudaDeviceSynchronize());
    const auto t0 = std::chrono::steady_clock::now();
    // Chunk by chunk, every layer in turn, as a chunked prefill runs.
    for (uint64_t t = 0; t < tokens; t += kChunk)
        for (uint32_t l = 0; l < layers; ++l)
            BENCH_OK(commvq_cache_append(c, l, 0, uint32_t(std::min<uint64_t>(kChunk, tokens - t)), k.ptr, v.ptr));
    BENCH_OK(commvq_cache_synchronize(c));
    out[0] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    commvq_cache_stats_t st;
    commvq_cache_stats_init(&st);
    BENCH_OK(commvq_cache_get_stats(c, &st));
    out[1] = double(st.bytes_compressed);
    out[2] = double(st.bytes_window);
    out[3] = double(st.bytes_reserved);
    return 0;
}

}  // extern "C"
