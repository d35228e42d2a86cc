// CPU encoding speed (docs/PERF.md): tokens/s of the key and value encoders
// per layer on the real bytellama-13m keys and values at 1 and 2 bits, one
// token at a time and in tiles of kTile tokens, and the time to append a
// 4K-token prompt (4 layers) through the C API with 1 and 2 threads. Also
// prints a hash of every code and scale it made, so runs before and after a
// change of the encoders can be compared bit for bit.
//
//   cpu_encode [codebook dir]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "codebook_file.h"
#include "commvq/commvq.h"
#include "fixture.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "value_encoder.h"

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The encoder rates are in CPU time of the calling thread, so that other
// load on a shared machine shows less; the appends are in wall time.
double thread_seconds() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// FNV-1a over raw bytes.
struct Hash {
    uint64_t h = 1469598103934665603ull;
    void add(const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    }
};

constexpr uint32_t kTile = 8;

void bench_encoders(const std::string& cb_path, const commvq::test::KvFixture& fx, int bits) {
    const commvq::Codebook cb = commvq::load_codebook(cb_path);
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, D = cb.value_dim(), R = cb.key_stages;
    const uint32_t T = fx.n_tokens;
    double key_s = 0, key_tile_s = 0, value_s = 0, value_tile_s = 0;
    Hash key_hash, value_hash;
    bool same = true;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const commvq::KeyEncoder ke(cb, l);
        const commvq::ValueEncoder ve(cb, l);
        std::vector<float> keys(size_t(T) * D);
        for (uint32_t t = 0; t < T; ++t)
            for (uint32_t h = 0; h < H; ++h)
                commvq::to_canonical(fx.key(l, t) + size_t(h) * d, d, fx.pair_layout,
                                     keys.data() + (size_t(t) * H + h) * d);
        const size_t n_codes = size_t(H) * R, n_scales = cb.n_key_scales(), vbytes = cb.value_code_bits() / 8;
        std::vector<uint16_t> codes(T * n_codes), codes_tile(T * n_codes);
        std::vector<float> scales(T * n_scales), scales_tile(T * n_scales);
        std::vector<uint8_t> vbits(T * vbytes), vbits_tile(T * vbytes);
        std::vector<float> weights(T), weights_tile(T);
        std::vector<float> scratch(ve.scratch_floats() * kTile);

        double t0 = thread_seconds();
        for (uint32_t t = 0; t < T; ++t)
            ke.encode(keys.data() + size_t(t) * D, codes.data() + t * n_codes, scales.data() + t * n_scales);
        key_s += (thread_seconds() - t0);
        t0 = thread_seconds();
        for (uint32_t t = 0; t < T; ++t)
            ve.encode(fx.value(l, t), vbits.data() + t * vbytes, &weights[t], scratch.data());
        value_s += (thread_seconds() - t0);

        commvq::KeyEncoder::Scratch key_scratch(cb);
        t0 = thread_seconds();
        for (uint32_t t = 0; t < T; t += kTile) {
            const uint32_t n = std::min(kTile, T - t);
            ke.encode_tile(n, keys.data() + size_t(t) * D, D, codes_tile.data() + t * n_codes, n_codes,
                           scales_tile.data() + t * n_scales, n_scales, key_scratch);
        }
        key_tile_s += (thread_seconds() - t0);
        t0 = thread_seconds();
        for (uint32_t t = 0; t < T; t += kTile) {
            const uint32_t n = std::min(kTile, T - t);
            ve.encode_tile(n, fx.value(l, t), D, vbits_tile.data() + t * vbytes, vbytes, weights_tile.data() + t, 1,
                           scratch.data());
        }
        value_tile_s += (thread_seconds() - t0);
        same = same && codes == codes_tile && vbits == vbits_tile &&
               std::memcmp(scales.data(), scales_tile.data(), scales.size() * 4) == 0 &&
               std::memcmp(weights.data(), weights_tile.data(), weights.size() * 4) == 0;

        key_hash.add(codes.data(), codes.size() * 2);
        key_hash.add(scales.data(), scales.size() * 4);
        value_hash.add(vbits.data(), vbits.size());
        value_hash.add(weights.data(), weights.size() * 4);
    }
    const double n = double(T) * cb.n_layers;
    std::printf("%d-bit  keys   %9.0f tok/s/layer (%5.1f us/tok CPU)  tiles of %u: %9.0f tok/s/layer (%5.1f us/tok CPU)  hash %016llx\n",
                bits, n / key_s, 1e6 * key_s / n, kTile, n / key_tile_s, 1e6 * key_tile_s / n,
                (unsigned long long)key_hash.h);
    std::printf("%d-bit  values %9.0f tok/s/layer (%5.1f us/tok CPU)  tiles of %u: %9.0f tok/s/layer (%5.1f us/tok CPU)  hash %016llx\n",
                bits, n / value_s, 1e6 * value_s / n, kTile, n / value_tile_s, 1e6 * value_tile_s / n,
                (unsigned long long)value_hash.h);
    std::printf("%d-bit  tiles give the same codes, scales and weights as single tokens: %s\n", bits,
                same ? "yes" : "NO");
}

bool check(commvq_status_t s, const char* what) {
    if (s == COMMVQ_OK) return true;
    std::fprintf(stderr, "%s: %s\n", what, commvq_last_error());
    return false;
}

// The 4K-token prompt: the fixture's tokens repeated (pre-RoPE keys, so any
// position is fine), appended in one call per layer.
void bench_append(const std::string& cb_path, const commvq::test::KvFixture& fx, int bits, uint32_t n_threads) {
    constexpr uint32_t kPrompt = 4096;
    commvq_codebook_t* cb = nullptr;
    if (!check(commvq_codebook_load(cb_path.c_str(), &cb), "codebook_load")) return;
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_tokens = kPrompt;
    p.n_threads = n_threads;
    commvq_cache_t* cache = nullptr;
    if (!check(commvq_cache_create(cb, &p, &cache), "cache_create")) return;
    const size_t row = size_t(fx.n_kv_heads) * fx.head_dim;
    std::vector<std::vector<float>> k(fx.n_layers), v(fx.n_layers);
    for (uint32_t l = 0; l < fx.n_layers; ++l) {
        k[l].resize(kPrompt * row);
        v[l].resize(kPrompt * row);
        for (uint32_t t = 0; t < kPrompt; ++t) {
            std::memcpy(k[l].data() + t * row, fx.key(l, t % fx.n_tokens), row * 4);
            std::memcpy(v[l].data() + t * row, fx.value(l, t % fx.n_tokens), row * 4);
        }
    }
    const auto t0 = Clock::now();
    for (uint32_t l = 0; l < fx.n_layers; ++l)
        if (!check(commvq_cache_append(cache, l, 0, kPrompt, k[l].data(), v[l].data()), "cache_append")) break;
    const double s = seconds_since(t0);
    std::printf("%d-bit  append %u tokens x %u layers, n_threads %u: %.3f s\n", bits, kPrompt, fx.n_layers,
                n_threads, s);
    commvq_cache_destroy(cache);
    commvq_codebook_free(cb);
}

}  // namespace

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : COMMVQ_SOURCE_DIR "/data/codebooks";
    try {
        const commvq::test::KvFixture& fx = commvq::test::kv_fixture();
        for (int bits = 1; bits <= 2; ++bits) {
            const std::string path = dir + "/bytellama-13m-" + std::to_string(bits) + "bit.safetensors";
            bench_encoders(path, fx, bits);
            for (uint32_t n_threads = 1; n_threads <= 2; ++n_threads) bench_append(path, fx, bits, n_threads);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "cpu_encode: %s\n", e.what());
        return 1;
    }
    return 0;
}
