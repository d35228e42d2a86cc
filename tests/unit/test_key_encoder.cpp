// The key encoder's decomposed search against a brute-force float64 search
// over all C*C materialized centers (docs/METHOD.md "Keys").
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "fixture.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "random_codebook.h"
#include "vector_clones.h"

using namespace commvq;

namespace {

// dot[b][l] = <t_b, c_l> for 4 keys and a panel of 8 centers ([d][8]), all
// 32 sums held in vector registers across the whole dot product.
COMMVQ_VECTOR_CLONES
void panel_dots(const double* panel, const double* const* t, uint32_t d, double (*dot)[8]) {
    typedef double V4 __attribute__((vector_size(32)));
    V4 acc[4][2] = {};
    for (uint32_t e = 0; e < d; ++e) {
        V4 c0, c1;
        std::memcpy(&c0, panel + e * 8, 32);
        std::memcpy(&c1, panel + e * 8 + 4, 32);
        const double t0 = t[0][e], t1 = t[1][e], t2 = t[2][e], t3 = t[3][e];
        acc[0][0] += t0 * c0;
        acc[0][1] += t0 * c1;
        acc[1][0] += t1 * c0;
        acc[1][1] += t1 * c1;
        acc[2][0] += t2 * c0;
        acc[2][1] += t2 * c1;
        acc[3][0] += t3 * c0;
        acc[3][1] += t3 * c1;
    }
    for (int b = 0; b < 4; ++b)
        for (int l = 0; l < 8; ++l) dot[b][l] = acc[b][l / 4][l % 4];
}

// Straight from the definition: scale, t = k / s, then per stage the nearest
// of all C*C centers z_A + i z_B, materialized in float64, by float64 squared
// distance ||t||^2 - 2 <t, c> + ||c||^2, ties to the lower code, and t -= that
// center. Keys are processed as a batch, stage by stage, so each stage's
// centers are built once; the distance loop is blocked (4 keys x 8 centers
// in registers) and split over two threads, which keeps 10,000 real keys
// affordable in a unit test.
void brute_force_encode(const Codebook& cb, uint32_t layer, uint32_t stages, const float* keys, size_t n_keys,
                        uint16_t* codes, float* scales) {
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, C = cb.sub_centers, P = cb.pairs(), R = cb.key_stages;
    const size_t CC = size_t(C) * C, panels = (CC + 7) / 8, n_blocks = (n_keys + 3) / 4;
    // t[key][head][d], padded to whole blocks of 4 keys.
    std::vector<double> t(n_blocks * 4 * H * d, 0.0);
    for (size_t i = 0; i < n_keys; ++i) {
        const float* k = keys + i * H * d;
        std::vector<double> s(H);
        if (cb.scale_mode == COMMVQ_SCALE_TOKEN) {
            double sum = 0;
            for (size_t e = 0; e < size_t(H) * d; ++e) sum += double(k[e]) * k[e];
            for (uint32_t h = 0; h < H; ++h) s[h] = std::sqrt(sum);
            scales[i] = float(s[0]);
        } else {
            for (uint32_t h = 0; h < H; ++h) {
                double sum = 0;
                for (uint32_t e = 0; e < d; ++e) sum += double(k[h * d + e]) * k[h * d + e];
                s[h] = std::sqrt(sum);
                scales[i * H + h] = float(s[h]);
            }
        }
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t e = 0; e < d; ++e) t[(i * H + h) * d + e] = s[h] > 0 ? k[h * d + e] / s[h] : 0.0;
    }
    std::vector<double> panel(panels * d * 8), c_norm(panels * 8);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t r = 0; r < stages; ++r) {
            // Every center c_{A,B} = z_A + i z_B, [panel][d][8]; padding centers can never win.
            for (size_t code = 0; code < panels * 8; ++code) {
                double nn = INFINITY;
                if (code < CC) {
                    const float* za = cb.sub_center(layer, h, r, uint32_t(code / C));
                    const float* zb = cb.sub_center(layer, h, r, uint32_t(code % C));
                    nn = 0;
                    for (uint32_t j = 0; j < P; ++j) {
                        const double re = double(za[2 * j]) - double(zb[2 * j + 1]);
                        const double im = double(za[2 * j + 1]) + double(zb[2 * j]);
                        panel[(code / 8 * d + 2 * j) * 8 + code % 8] = re;
                        panel[(code / 8 * d + 2 * j + 1) * 8 + code % 8] = im;
                        nn += re * re + im * im;
                    }
                }
                c_norm[code] = nn;
            }
            auto search = [&](size_t block_begin, size_t block_end) {
                for (size_t blk = block_begin; blk < block_end; ++blk) {
                    const double* tb[4];
                    double t_norm[4], best[4];
                    uint32_t best_code[4] = {0, 0, 0, 0};
                    for (int b = 0; b < 4; ++b) {
                        tb[b] = t.data() + ((blk * 4 + b) * H + h) * d;
                        t_norm[b] = 0;
                        for (uint32_t e = 0; e < d; ++e) t_norm[b] += tb[b][e] * tb[b][e];
                        best[b] = INFINITY;
                    }
                    for (size_t p = 0; p < panels; ++p) {
                        double dot[4][8];
                        panel_dots(panel.data() + p * d * 8, tb, d, dot);
                        for (int b = 0; b < 4; ++b)
                            for (uint32_t l = 0; l < 8; ++l) {
                                const size_t code = p * 8 + l;
                                const double dist = t_norm[b] - 2 * dot[b][l] + c_norm[code];
                                if (dist < best[b]) {  // increasing codes: ties keep the lower
                                    best[b] = dist;
                                    best_code[b] = uint32_t(code);
                                }
                            }
                    }
                    for (int b = 0; b < 4; ++b) {
                        const size_t i = blk * 4 + b;
                        if (i < n_keys) codes[(i * H + h) * R + r] = uint16_t(best_code[b]);
                    }
                }
            };
            std::thread helper(search, 0, n_blocks / 2);
            search(n_blocks / 2, n_blocks);
            helper.join();
            for (size_t i = 0; i < n_keys; ++i) {
                const uint32_t code = codes[(i * H + h) * R + r];
                const float* za = cb.sub_center(layer, h, r, code / C);
                const float* zb = cb.sub_center(layer, h, r, code % C);
                double* ti = t.data() + (i * H + h) * d;
                for (uint32_t j = 0; j < P; ++j) {
                    ti[2 * j] -= double(za[2 * j]) - double(zb[2 * j + 1]);
                    ti[2 * j + 1] -= double(za[2 * j + 1]) + double(zb[2 * j]);
                }
            }
        }
}

// Encodes each key with the encoder and the brute force and counts the stage
// codes (of the first `stages` stages) and scales that differ.
struct Comparison {
    size_t codes = 0, code_mismatches = 0, scale_mismatches = 0;
};

Comparison compare(const Codebook& cb, uint32_t layer, const std::vector<float>& keys_canonical, uint32_t stages) {
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, R = cb.key_stages, S = cb.n_key_scales();
    const size_t n = keys_canonical.size() / (size_t(H) * d);
    KeyEncoder enc(cb, layer);
    std::vector<uint16_t> codes(n * H * R, 0xffff), expected(n * H * R, 0xffff);
    std::vector<float> scales(n * S, NAN), expected_scales(n * S, NAN);
    for (size_t i = 0; i < n; ++i)
        enc.encode(keys_canonical.data() + i * H * d, codes.data() + i * H * R, scales.data() + i * S);
    brute_force_encode(cb, layer, stages, keys_canonical.data(), n, expected.data(), expected_scales.data());
    Comparison out;
    for (size_t i = 0; i < n; ++i) {
        for (uint32_t h = 0; h < H; ++h)
            for (uint32_t r = 0; r < stages; ++r) {
                ++out.codes;
                out.code_mismatches += codes[(i * H + h) * R + r] != expected[(i * H + h) * R + r];
            }
        for (uint32_t j = 0; j < S; ++j) out.scale_mismatches += !(scales[i * S + j] == expected_scales[i * S + j]);
    }
    return out;
}

std::vector<float> fixture_keys_canonical(const test::KvFixture& fx, uint32_t layer, uint32_t n_tokens,
                                          int32_t pair_layout) {
    const size_t per_token = size_t(fx.n_kv_heads) * fx.head_dim;
    std::vector<float> out(n_tokens * per_token);
    for (uint32_t t = 0; t < n_tokens; ++t)
        for (uint32_t h = 0; h < fx.n_kv_heads; ++h)
            to_canonical(fx.key(layer, t) + h * fx.head_dim, fx.head_dim, pair_layout,
                         out.data() + t * per_token + h * fx.head_dim);
    return out;
}

}  // namespace

TEST_CASE("key encoder equals brute force on every fixture key (first two stages)") {
    // All 4 layers x 1280 tokens x 2 heads = 10240 real keys. The brute force
    // costs C*C*d per stage, so this test checks the first two stages of
    // every key; the next test runs all R stages on a subset.
    const test::KvFixture& fx = test::kv_fixture();
    for (int32_t scale_mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
        const Codebook cb = test::random_codebook(fx.n_layers, fx.n_kv_heads, fx.n_q_heads, fx.head_dim, 1,
                                                  COMMVQ_PAIRS_ROTATE_HALF, scale_mode, 11 + scale_mode);
        size_t codes = 0, mismatches = 0, scale_mismatches = 0;
        // Token scale: every key. Head scale: every key of layer 0.
        const uint32_t tokens = fx.n_tokens, layers = scale_mode == COMMVQ_SCALE_TOKEN ? fx.n_layers : 1;
        for (uint32_t l = 0; l < layers; ++l) {
            const Comparison c = compare(cb, l, fixture_keys_canonical(fx, l, tokens, cb.pair_layout), 2);
            codes += c.codes;
            mismatches += c.code_mismatches;
            scale_mismatches += c.scale_mismatches;
        }
        CAPTURE(scale_mode);
        CHECK(codes == size_t(layers) * tokens * fx.n_kv_heads * 2);
        CHECK(mismatches == 0);
        CHECK(scale_mismatches == 0);
    }
}

TEST_CASE("key encoder equals brute force over all stages (fixture subset, R = 11 and 21)") {
    const test::KvFixture& fx = test::kv_fixture();
    for (uint32_t bits : {1u, 2u}) {
        const Codebook cb = test::random_codebook(fx.n_layers, fx.n_kv_heads, fx.n_q_heads, fx.head_dim, bits,
                                                  COMMVQ_PAIRS_ROTATE_HALF, COMMVQ_SCALE_TOKEN, 5 + bits);
        const uint32_t layer = bits == 1 ? 0 : 3;
        const Comparison c = compare(cb, layer, fixture_keys_canonical(fx, layer, bits == 1 ? 256 : 64, cb.pair_layout),
                                     cb.key_stages);
        CAPTURE(bits);
        CHECK(c.codes > 0);
        CHECK(c.code_mismatches == 0);
        CHECK(c.scale_mismatches == 0);
    }
}

TEST_CASE("key encoder equals brute force on random keys, both layouts, scale modes and head sizes") {
    for (uint32_t head_dim : {64u, 128u})
        for (int32_t layout : {COMMVQ_PAIRS_ROTATE_HALF, COMMVQ_PAIRS_INTERLEAVED})
            for (int32_t scale_mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
                test::RandomCodebookSpec spec;
                spec.n_layers = 1;
                spec.n_kv_heads = 2;
                spec.head_dim = head_dim;
                spec.key_stages = 6;
                spec.pair_layout = layout;
                spec.scale_mode = scale_mode;
                spec.seed = head_dim + 10 * layout + 100 * scale_mode;
                const Codebook cb = test::random_codebook(spec);
                test::Rng rng(spec.seed);
                // Keys of varied scale with a few outlier channels, as real keys have.
                std::vector<float> model_keys = rng.normals(size_t(64) * 2 * head_dim, 3.0);
                for (size_t i = 0; i < model_keys.size(); i += 37) model_keys[i] *= 8;
                std::vector<float> keys(model_keys.size());
                for (size_t v = 0; v < keys.size() / head_dim; ++v)
                    to_canonical(model_keys.data() + v * head_dim, head_dim, layout, keys.data() + v * head_dim);
                const Comparison c = compare(cb, 0, keys, cb.key_stages);
                CAPTURE(head_dim);
                CAPTURE(layout);
                CAPTURE(scale_mode);
                CHECK(c.code_mismatches == 0);
                CHECK(c.scale_mismatches == 0);
            }
}

TEST_CASE("key encoder breaks exact ties toward the lower code") {
    // Stage 0 has sub-centers 3 and 5 identical, so (3, B) and (5, B) are
    // the same center: the encoder must choose A = 3. Stage 1 is all zero, so
    // every code ties and the answer must be code 0.
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = 1;
    spec.n_q_heads = 1;
    spec.head_dim = 8;
    spec.key_stages = 2;
    spec.sub_centers = 8;
    spec.value_bits = 1;
    Codebook cb = test::random_codebook(spec);
    std::vector<float>& z = cb.layers[0].keys.sub_centers;
    for (uint32_t k = 0; k < 8; ++k) z[5 * 8 + k] = z[3 * 8 + k];
    std::fill(z.begin() + 8 * 8, z.end(), 0.0f);
    // The key is the center (3, B), with stage 0 rescaled so that center has
    // norm 1: after normalization t is that center up to rounding.
    const uint32_t B = 6;
    auto center = [&](std::vector<float>& out) {
        const float* za = cb.sub_center(0, 0, 0, 3);
        const float* zb = cb.sub_center(0, 0, 0, B);
        for (uint32_t j = 0; j < 4; ++j) {
            out[2 * j] = za[2 * j] - zb[2 * j + 1];
            out[2 * j + 1] = za[2 * j + 1] + zb[2 * j];
        }
    };
    std::vector<float> key(8);
    center(key);
    double norm = 0;
    for (float x : key) norm += double(x) * x;
    for (size_t i = 0; i < 8 * 8; ++i) z[i] = float(z[i] / std::sqrt(norm));
    cb.finalize();
    center(key);
    KeyEncoder enc(cb, 0);
    uint16_t codes[2] = {0xffff, 0xffff};
    float scale = NAN;
    enc.encode(key.data(), codes, &scale);
    // (3, B) and (5, B) are exactly tied whatever t is.
    CHECK(codes[0] == 3 * 8 + B);
    CHECK(codes[1] == 0);
    CHECK(scale == doctest::Approx(1.0));
}

TEST_CASE("key encoder: zero key gets scale 0 and decodes to zero") {
    for (int32_t scale_mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
        test::RandomCodebookSpec spec;
        spec.n_layers = 1;
        spec.scale_mode = scale_mode;
        const Codebook cb = test::random_codebook(spec);
        KeyEncoder enc(cb, 0);
        std::vector<float> key(cb.value_dim(), 0.0f), scales(cb.n_key_scales(), NAN);
        std::vector<uint16_t> codes(size_t(cb.n_kv_heads) * cb.key_stages, 0xffff), expected(codes.size());
        enc.encode(key.data(), codes.data(), scales.data());
        std::vector<float> expected_scales(scales.size());
        brute_force_encode(cb, 0, cb.key_stages, key.data(), 1, expected.data(), expected_scales.data());
        CHECK(codes == expected);
        for (float s : scales) CHECK(s == 0.0f);
    }
}

TEST_CASE("key decode_head is the sum of the chosen centers, and encode-decode error shrinks with stages") {
    const test::KvFixture& fx = test::kv_fixture();
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.head_dim = fx.head_dim;
    spec.n_kv_heads = fx.n_kv_heads;
    const Codebook cb = test::random_codebook(spec);
    KeyEncoder enc(cb, 0);
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, R = cb.key_stages, C = cb.sub_centers;
    const std::vector<float> keys = fixture_keys_canonical(fx, 0, 64, cb.pair_layout);
    std::vector<uint16_t> codes(size_t(H) * R);
    std::vector<float> out(d, NAN);
    float scale;
    double err_first = 0, err_all = 0, total = 0;
    for (uint32_t i = 0; i < 64; ++i) {
        const float* k = keys.data() + size_t(i) * H * d;
        enc.encode(k, codes.data(), &scale);
        for (uint32_t h = 0; h < H; ++h) {
            std::fill(out.begin(), out.end(), NAN);
            enc.decode_head(h, codes.data() + h * R, out.data());
            std::vector<double> ref(d, 0.0), first(d, 0.0);
            for (uint32_t r = 0; r < R; ++r) {
                const float* za = cb.sub_center(0, h, r, codes[h * R + r] / C);
                const float* zb = cb.sub_center(0, h, r, codes[h * R + r] % C);
                for (uint32_t j = 0; j < d / 2; ++j) {
                    ref[2 * j] += double(za[2 * j]) - zb[2 * j + 1];
                    ref[2 * j + 1] += double(za[2 * j + 1]) + zb[2 * j];
                }
                if (r == 0) first = ref;
            }
            for (uint32_t k2 = 0; k2 < d; ++k2) {
                REQUIRE(std::abs(out[k2] - ref[k2]) <= 1e-5 * (1 + std::abs(ref[k2])));
                const double target = k[h * d + k2] / double(scale);
                err_all += (target - ref[k2]) * (target - ref[k2]);
                err_first += (target - first[k2]) * (target - first[k2]);
                total += target * target;
            }
        }
    }
    // More stages may only refine the greedy approximation.
    CHECK(err_all < err_first);
    CHECK(err_all < total);
}
