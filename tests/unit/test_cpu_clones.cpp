// The encoders give the same bits on every machine: the baseline clone of
// their hot loops and the x86-64-v3 one (AVX2, FMA), which the machine picks
// (src/vector_clones.h), are run one after the other on the same tokens and
// must give the same key codes, value codes, and bitwise the same key scales
// and value weights. Inputs: a codebook with near-ties built in on purpose
// (where a fused multiply-add's one rounding instead of two decides a code),
// and the shipped codebooks on the real tokens of the bytellama fixture.
// Where the build or the CPU has no v3 clone only the baseline runs (a
// message says so). docs/RELIABILITY.md, "Same codes on every machine".
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "codebook_file.h"
#include "fixture.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "random_codebook.h"
#include "rope.h"
#include "value_encoder.h"
#include "vector_clones.h"

using namespace commvq;
using namespace commvq::test;

namespace {

// Everything the encoders give for a set of tokens, all layers: tiles of 8
// (the cache's work items) for all n tokens, and one-token encoding (what
// commvq_codebook_encode_keys and _reconstruct use) for the first n_single.
struct Encoded {
    std::vector<uint16_t> key_codes;
    std::vector<float> key_scales;
    std::vector<uint8_t> value_bits;
    std::vector<float> value_weights;
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// keys[l] and values[l]: [n][D] per layer, keys in the canonical pair layout.
Encoded encode_all(const Codebook& cb, const std::vector<std::vector<float>>& keys,
                   const std::vector<std::vector<float>>& values, uint32_t n_all, uint32_t n_single) {
    const uint32_t D = cb.value_dim(), n_codes = cb.n_kv_heads * cb.key_stages, n_scales = cb.n_key_scales();
    const uint32_t n_bytes = cb.value_code_bits() / 8;
    Encoded e;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const KeyEncoder ke(cb, l);
        const ValueEncoder ve(cb, l);
        KeyEncoder::Scratch key_scratch(cb);
        std::vector<float> scratch(ValueEncoder::kTile * ve.scratch_floats());
        for (bool tiles : {false, true}) {
            const uint32_t n = tiles ? n_all : std::min(n_all, n_single);
            std::vector<uint16_t> codes(size_t(n) * n_codes);
            std::vector<float> scales(size_t(n) * n_scales), weights(n);
            std::vector<uint8_t> bits(size_t(n) * n_bytes);
            const float* k = keys[l].data();
            const float* v = values[l].data();
            if (tiles) {
                ke.encode_tile(n, k, D, codes.data(), n_codes, scales.data(), n_scales, key_scratch);
                ve.encode_tile(n, v, D, bits.data(), n_bytes, weights.data(), 1, scratch.data());
            } else {
                for (uint32_t t = 0; t < n; ++t) {
                    ke.encode(k + size_t(t) * D, &codes[size_t(t) * n_codes], &scales[size_t(t) * n_scales]);
                    ve.encode(v + size_t(t) * D, &bits[size_t(t) * n_bytes], &weights[t], scratch.data());
                }
            }
            e.key_codes.insert(e.key_codes.end(), codes.begin(), codes.end());
            e.key_scales.insert(e.key_scales.end(), scales.begin(), scales.end());
            e.value_bits.insert(e.value_bits.end(), bits.begin(), bits.end());
            e.value_weights.insert(e.value_weights.end(), weights.begin(), weights.end());
        }
    }
    return e;
}

// Runs the encoders with each available clone and requires the same bits
// (the counts of differing codes and bytes are shown on failure).
void check_clones_agree(const Codebook& cb, const std::vector<std::vector<float>>& keys,
                        const std::vector<std::vector<float>>& values, uint32_t n, uint32_t n_single) {
    struct Restore {
        ~Restore() { reset_encoder_clone(); }
    } restore;
    REQUIRE(set_encoder_clone(CpuClone::baseline));
    const Encoded base = encode_all(cb, keys, values, n, n_single);
    if (!set_encoder_clone(CpuClone::v3)) {
        MESSAGE("no x86-64-v3 clone in this build or on this CPU: only the baseline clone ran");
        return;
    }
    REQUIRE(encoder_clone() == CpuClone::v3);
    const Encoded v3 = encode_all(cb, keys, values, n, n_single);
    size_t key_diff = 0, bit_diff = 0;
    for (size_t i = 0; i < base.key_codes.size(); ++i) key_diff += base.key_codes[i] != v3.key_codes[i];
    for (size_t i = 0; i < base.value_bits.size(); ++i) bit_diff += base.value_bits[i] != v3.value_bits[i];
    CAPTURE(key_diff);
    CAPTURE(bit_diff);
    CHECK(v3.key_codes == base.key_codes);
    CHECK(same_bits(v3.key_scales, base.key_scales));
    CHECK(v3.value_bits == base.value_bits);
    CHECK(same_bits(v3.value_weights, base.value_weights));
}

float ulp_step(Rng& rng, float x) { return std::nextafter(x, rng.uniform() < 0.5 ? -INFINITY : INFINITY); }

// A codebook whose searches tie or nearly tie everywhere:
//  - values: in every group, two options' rows of the second linear layer
//    differ only by one unit in the last place per weight, with the same
//    bias, and the other two options are far below. Which of the two wins
//    is decided by the rounding of the two dot products, so a fused
//    multiply-add (one rounding instead of two) flips a good share of them.
//  - keys: in every stage, sub-center 5 equals sub-center 3 (exact ties in
//    the float64 search, to the lower code) and sub-center 7 is sub-center 3
//    moved by one unit in the last place per element (costs that differ
//    below the float pass's resolution).
Codebook near_tie_codebook(uint32_t value_bits, int32_t scale_mode, uint64_t seed) {
    RandomCodebookSpec spec;
    spec.n_layers = 2;
    spec.n_kv_heads = 2;
    spec.n_q_heads = 4;
    spec.head_dim = 128;  // the fixture's shape, so its real tokens fit too
    spec.value_bits = value_bits;
    spec.key_stages = 3;
    spec.scale_mode = scale_mode;
    spec.seed = seed;
    Codebook cb = random_codebook(spec);
    Rng rng(seed * 7919 + 1);
    const uint32_t I = cb.value_hidden, d = cb.head_dim, C = cb.sub_centers;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        ValueCodebook& vc = cb.layers[l].values;
        for (uint32_t g = 0; g < cb.value_groups(); ++g) {
            const uint32_t a = 4 * g + 2 * (g % 2), b = a + 1;  // options 0/1 or 2/3
            const uint32_t c = 4 * g + 2 * (1 - g % 2);         // the other pair
            for (uint32_t i = 0; i < I; ++i)
                vc.enc2_weight[size_t(b) * I + i] = ulp_step(rng, vc.enc2_weight[size_t(a) * I + i]);
            vc.enc2_bias[b] = vc.enc2_bias[a];
            vc.enc2_bias[c] = vc.enc2_bias[c + 1] = vc.enc2_bias[a] - 100.0f;
        }
        std::vector<float>& z = cb.layers[l].keys.sub_centers;
        for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
            for (uint32_t r = 0; r < cb.key_stages; ++r) {
                float* s = z.data() + (size_t(h) * cb.key_stages + r) * C * d;
                for (uint32_t k = 0; k < d; ++k) {
                    s[size_t(5) * d + k] = s[size_t(3) * d + k];
                    s[size_t(7) * d + k] = ulp_step(rng, s[size_t(3) * d + k]);
                }
            }
    }
    cb.finalize();
    return cb;
}

// Per layer [n][D]: random normal keys and values, then keys that sit on a
// tie (sub-center 3 of every stage, summed, which sub-center 5 equals) and
// the fixture's real tokens (layer 0 and 1's), in canonical layout.
void near_tie_tokens(const Codebook& cb, uint32_t n_random, std::vector<std::vector<float>>& keys,
                     std::vector<std::vector<float>>& values, uint32_t& n) {
    const KvFixture& fx = kv_fixture();
    const uint32_t D = cb.value_dim(), d = cb.head_dim;
    REQUIRE(fx.n_kv_heads * fx.head_dim == D);
    const uint32_t n_real = 200, n_center = 8;
    n = n_random + n_center + n_real;
    Rng rng(99);
    keys.assign(cb.n_layers, {});
    values.assign(cb.n_layers, {});
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        keys[l] = rng.normals(size_t(n_random) * D);
        values[l] = rng.normals(size_t(n_random) * D);
        for (uint32_t t = 0; t < n_center; ++t) {
            std::vector<float> k(D, 0.0f);
            for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
                for (uint32_t r = 0; r < cb.key_stages; ++r) {
                    // z_3 + i z_3, stage by stage, scaled per token.
                    const float* z = cb.sub_center(l, h, r, 3);
                    for (uint32_t j = 0; j < d / 2; ++j) {
                        k[size_t(h) * d + 2 * j] += (z[2 * j] - z[2 * j + 1]) * float(t + 1);
                        k[size_t(h) * d + 2 * j + 1] += (z[2 * j + 1] + z[2 * j]) * float(t + 1);
                    }
                }
            keys[l].insert(keys[l].end(), k.begin(), k.end());
            const std::vector<float> v = rng.normals(D);
            values[l].insert(values[l].end(), v.begin(), v.end());
        }
        for (uint32_t t = 0; t < n_real; ++t) {
            std::vector<float> k(D);
            for (uint32_t h = 0; h < fx.n_kv_heads; ++h)
                to_canonical(fx.key(l, t) + size_t(h) * d, d, fx.pair_layout, &k[size_t(h) * d]);
            keys[l].insert(keys[l].end(), k.begin(), k.end());
            values[l].insert(values[l].end(), fx.value(l, t), fx.value(l, t) + D);
        }
    }
}

void check_near_ties(uint32_t value_bits, int32_t scale_mode, uint64_t seed) {
    const Codebook cb = near_tie_codebook(value_bits, scale_mode, seed);
    std::vector<std::vector<float>> keys, values;
    uint32_t n = 0;
    near_tie_tokens(cb, 93, keys, values, n);  // 301 tokens: a tail of 5 after the tiles, of 1 after groups of 4
    check_clones_agree(cb, keys, values, n, n);
    // The exact ties went to the lower code: no code names sub-center 5.
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const KeyEncoder ke(cb, l);
        KeyEncoder::Scratch scratch(cb);
        const uint32_t n_codes = cb.n_kv_heads * cb.key_stages, C = cb.sub_centers;
        std::vector<uint16_t> codes(size_t(n) * n_codes);
        std::vector<float> scales(size_t(n) * cb.n_key_scales());
        ke.encode_tile(n, keys[l].data(), cb.value_dim(), codes.data(), n_codes, scales.data(), cb.n_key_scales(),
                       scratch);
        size_t named_5 = 0, named_3 = 0;
        for (uint16_t c : codes) {
            named_5 += c / C == 5 || c % C == 5;
            named_3 += c / C == 3 || c % C == 3;
        }
        CHECK(named_5 == 0);
        CHECK(named_3 > 0);
    }
}

// The first 259 real tokens of every layer in tiles, 64 of them one by one
// (test_thread_count.cpp runs 600 through caches of both clones).
void check_shipped(const char* file) {
    const KvFixture& fx = kv_fixture();
    const Codebook cb = load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/" + file);
    const uint32_t D = cb.value_dim(), d = cb.head_dim, n = std::min(fx.n_tokens, 259u);
    std::vector<std::vector<float>> keys(cb.n_layers), values(cb.n_layers);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        keys[l].resize(size_t(n) * D);
        for (uint32_t t = 0; t < n; ++t)
            for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
                to_canonical(fx.key(l, t) + size_t(h) * d, d, cb.pair_layout, &keys[l][size_t(t) * D + size_t(h) * d]);
        values[l].assign(fx.values[l].begin(), fx.values[l].begin() + size_t(n) * D);
    }
    check_clones_agree(cb, keys, values, n, 64);
}

// FNV-1a over the codes and scales of post-RoPE keys far into a sequence:
// the fixture's keys rotated to positions 1,000,000 + t, un-rotated as a
// cache with post-RoPE keys does, and encoded. Key encoding uses only IEEE
// arithmetic (sqrt included) and portable_math.h, no libm function that
// differs between machines, so this is one number everywhere.
uint64_t far_key_digest(const Codebook& cb, uint32_t n) {
    const KvFixture& fx = kv_fixture();
    const uint32_t D = cb.value_dim(), d = cb.head_dim, n_codes = cb.n_kv_heads * cb.key_stages;
    const Rope rope(cb.rope, d);
    uint64_t h = 1469598103934665603ull;
    auto add = [&h](const void* p, size_t bytes) {
        for (size_t i = 0; i < bytes; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
    };
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const KeyEncoder ke(cb, l);
        KeyEncoder::Scratch scratch(cb);
        std::vector<float> keys(size_t(n) * D);
        for (uint32_t t = 0; t < n; ++t)
            for (uint32_t hd = 0; hd < cb.n_kv_heads; ++hd) {
                float* k = &keys[size_t(t) * D + size_t(hd) * d];
                to_canonical(fx.key(l, t) + size_t(hd) * d, d, cb.pair_layout, k);
                rope.rotate(k, 1000000 + t, +1, k);  // what the host would hand over
                rope.rotate(k, 1000000 + t, -1, k);  // what the cache does first
            }
        std::vector<uint16_t> codes(size_t(n) * n_codes);
        std::vector<float> scales(size_t(n) * cb.n_key_scales());
        ke.encode_tile(n, keys.data(), D, codes.data(), n_codes, scales.data(), cb.n_key_scales(), scratch);
        add(codes.data(), codes.size() * 2);
        add(scales.data(), scales.size() * 4);
    }
    return h;
}

}  // namespace

TEST_CASE("cpu clones: the encoder clone is one this machine can run") {
    CHECK(cpu_clone_available(CpuClone::baseline));
    CHECK(cpu_clone_available(encoder_clone()));
    const std::string running = cpu_clone_name(encoder_clone());
    const std::string v3 = cpu_clone_available(CpuClone::v3) ? "available" : "not available";
    const std::string message = "encoders run the " + running + " clone; x86-64-v3 " + v3;
    MESSAGE(message);
}

TEST_CASE("cpu clones: built-in near-ties encode the same on both clones, 1-bit, token scale") {
    check_near_ties(1, COMMVQ_SCALE_TOKEN, 31);
}

TEST_CASE("cpu clones: built-in near-ties encode the same on both clones, 2-bit, head scale") {
    check_near_ties(2, COMMVQ_SCALE_HEAD, 32);
}

TEST_CASE("cpu clones: the shipped codebooks encode the real tokens the same on both clones") {
    check_shipped("bytellama-13m-1bit.safetensors");
    check_shipped("bytellama-13m-2bit.safetensors");
}

TEST_CASE("cpu clones: key codes of far post-RoPE keys are the same number on every machine") {
    const Codebook cb = load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/bytellama-13m-1bit.safetensors");
    struct Restore {
        ~Restore() { reset_encoder_clone(); }
    } restore;
    for (CpuClone clone : {CpuClone::baseline, CpuClone::v3}) {
        if (!set_encoder_clone(clone)) continue;
        CAPTURE(cpu_clone_name(clone));
        // Changes with the codebook, the fixture or the encoder's definition;
        // never with the machine, the thread count or the clone.
        CHECK(far_key_digest(cb, 160) == 0xf5eff7de450aed0eull);
    }
}
