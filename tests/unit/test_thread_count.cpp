// Encoding does not depend on the thread count or on the CPU clone: a cache
// with 1, 2, 3 or 16 threads (more than this machine's cores), encoding with
// the baseline or the x86-64-v3 clone of the hot loops (src/vector_clones.h;
// only the baseline where the build or CPU has no v3), stores the same codes,
// bit for bit, and they are the codes the encoders give one token at a time
// (what commvq_codebook_reconstruct uses). Real keys and values (the
// bytellama fixture) through the shipped 2-bit codebook (the 1-bit one runs
// the same code with fewer stages), appended in uneven chunks so tiles start
// at different positions.
// Attention over those codes may differ in its last bits (with fewer query
// rows than threads a row's tokens are split over the threads and the parts
// merged: another order of summation), by far less than its 1e-5
// tolerance.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "cache_test_util.h"
#include "code_packing.h"
#include "codebook_file.h"
#include "fixture.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "value_encoder.h"
#include "vector_clones.h"

using namespace commvq;
using namespace commvq::test;

namespace {

constexpr uint32_t kTokens = 600;

// ThreadSanitizer (COMMVQ_SANITIZE=thread, several times slower) runs the
// machine's clone only: races do not depend on it, and the other builds
// compare the clones.
#if defined(__SANITIZE_THREAD__)
constexpr bool kBothClones = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kBothClones = false;
#else
constexpr bool kBothClones = true;
#endif
#else
constexpr bool kBothClones = true;
#endif

// Every layer's compressed tokens in the packed token format.
std::vector<uint8_t> codes_of(const Cache& cache, uint32_t seq) {
    std::vector<uint8_t> all;
    const Sequence& s = cache.sequence(seq);
    for (uint32_t l = 0; l < cache.codebook().n_layers; ++l) {
        const LayerView v = s.view(seq, l, cache.params().sink_tokens);
        std::vector<uint8_t> codes(v.compressed * cache.layout().token_bytes());
        cache.backend().read_compressed(l, v, 0, v.compressed, codes.data());
        all.insert(all.end(), codes.begin(), codes.end());
    }
    return all;
}

// The same tokens encoded one at a time by the encoders, packed the same way.
std::vector<uint8_t> one_by_one(const Codebook& cb, const KvFixture& fx, const BlockLayout& layout,
                                uint64_t compressed) {
    std::vector<uint8_t> all;
    const uint32_t D = cb.value_dim(), d = cb.head_dim, n_codes = cb.n_kv_heads * cb.key_stages;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const KeyEncoder keys(cb, l);
        const ValueEncoder values(cb, l);
        std::vector<float> canonical(D), scales(cb.n_key_scales()), scratch(values.scratch_floats());
        std::vector<uint16_t> codes(n_codes);
        std::vector<uint8_t> token(layout.token_bytes()), bits(cb.value_code_bits() / 8);
        for (uint64_t t = 0; t < compressed; ++t) {
            for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
                to_canonical(fx.key(l, uint32_t(t)) + size_t(h) * d, d, cb.pair_layout, &canonical[size_t(h) * d]);
            keys.encode(canonical.data(), codes.data(), scales.data());
            float weight = 0;
            values.encode(fx.value(l, uint32_t(t)), bits.data(), &weight, scratch.data());
            pack_codes(codes.data(), n_codes, cb.code_bits(), token.data());
            std::memcpy(token.data() + layout.key_code_bytes, bits.data(), bits.size());
            std::memcpy(token.data() + layout.key_code_bytes + layout.value_code_bytes, scales.data(),
                        scales.size() * 4);
            std::memcpy(token.data() + layout.key_code_bytes + layout.value_code_bytes + scales.size() * 4, &weight, 4);
            all.insert(all.end(), token.begin(), token.end());
        }
    }
    return all;
}

void check_thread_counts(const char* codebook_file) {
    const KvFixture& fx = kv_fixture();
    const Codebook cb = load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/" + codebook_file);
    struct Restore {
        ~Restore() { reset_encoder_clone(); }
    } restore;
    std::vector<CpuClone> clones{encoder_clone()};
    if (kBothClones && cpu_clone_available(CpuClone::v3)) clones = {CpuClone::baseline, CpuClone::v3};
    else if (kBothClones) MESSAGE("no x86-64-v3 clone in this build or on this CPU: only the baseline clone ran");
    std::vector<std::pair<CpuClone, uint32_t>> runs;  // (clone, threads)
    for (CpuClone clone : clones)
        for (uint32_t threads : {1u, 2u, 3u, 16u}) runs.emplace_back(clone, threads);
    std::vector<std::vector<uint8_t>> codes;
    std::vector<std::vector<float>> outputs;
    uint64_t compressed = 0;
    BlockLayout layout;
    for (const auto& [clone, threads] : runs) {
        CAPTURE(cpu_clone_name(clone));
        CAPTURE(threads);
        REQUIRE(set_encoder_clone(clone));
        commvq_cache_params_t p = small_params();
        p.max_seqs = 1;
        p.max_tokens = kTokens;
        p.window = 16;
        p.n_threads = threads;
        Cache cache(cb, p);
        uint32_t at = 0;
        for (uint32_t n : {1u, 37u, 5u, 300u, 257u}) {
            for (uint32_t l = 0; l < cb.n_layers; ++l) cache.append(l, 0, n, fx.key(l, at), fx.value(l, at));
            at += n;
        }
        REQUIRE(at == kTokens);
        codes.push_back(codes_of(cache, 0));
        // A decode query (split over 16 threads) and three queries (one
        // tile), against the last layer.
        const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
        std::vector<float> out(4 * row);
        cache.attend(cb.n_layers - 1, 0, 1, fx.query(cb.n_layers - 1, 0), out.data(), nullptr, 0);
        cache.attend(cb.n_layers - 1, 0, 3, fx.query(cb.n_layers - 1, 0), out.data() + row, nullptr, 0);
        outputs.push_back(out);
        compressed = cache.sequence(0).layers[0].compressed;
        layout = cache.layout();
    }
    REQUIRE(compressed == kTokens - 16);
    for (size_t i = 1; i < codes.size(); ++i) {
        CAPTURE(cpu_clone_name(runs[i].first));
        CAPTURE(runs[i].second);
        CHECK(codes[i] == codes[0]);
    }
    for (CpuClone clone : clones) {
        CAPTURE(cpu_clone_name(clone));
        REQUIRE(set_encoder_clone(clone));
        CHECK(one_by_one(cb, fx, layout, compressed) == codes[0]);
    }
    for (size_t i = 1; i < outputs.size(); ++i) {
        double diff = 0, scale = 0;
        for (size_t j = 0; j < outputs[0].size(); ++j) {
            diff = std::max(diff, double(std::fabs(outputs[i][j] - outputs[0][j])));
            scale = std::max(scale, double(std::fabs(outputs[0][j])));
        }
        CHECK(diff <= 1e-6 * scale);
    }
}

}  // namespace

TEST_CASE("thread count: 1, 2, 3 and 16 threads, either CPU clone, store the codes of one-token encoding") {
    check_thread_counts("bytellama-13m-2bit.safetensors");
}
