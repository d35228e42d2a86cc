// Attention from codes against a float64 reference over the decoded cache
// (tests/support/cache_reference.h). Tolerance for float32 io: relative
// error ||out - ref|| / ||ref|| <= 1e-5 per query row and head set, and
// |lse - ref| <= 1e-5. Outputs are NaN-poisoned before every call.
#include <doctest/doctest.h>

#include <cmath>
#include <memory>

#include "cache.h"
#include "cache_reference.h"
#include "dtype.h"
#include "fixture.h"
#include "random_codebook.h"

using namespace commvq;
using namespace commvq::test;

namespace {

constexpr double kTolF32 = 1e-5;
constexpr double kLseTol = 1e-5;
// f16 / bf16 outputs are rounded to 11 / 8 significant bits (relative error
// up to 2^-11 = 4.9e-4 and 2^-8 = 3.9e-3 per element); twice that.
constexpr double kTolF16 = 1e-3;
constexpr double kTolBF16 = 8e-3;

commvq_cache_params_t default_params() {
    commvq_cache_params_t p{};
    p.struct_size = sizeof p;
    p.device = COMMVQ_DEVICE_CPU;
    p.max_seqs = 4;
    p.max_tokens = 4096;
    p.block_tokens = 16;
    p.window = 16;
    p.sink_tokens = 0;
    p.io_dtype = COMMVQ_DTYPE_F32;
    p.key_convention = COMMVQ_KEYS_PRE_ROPE;
    p.attn_scale = 0;
    p.n_threads = 2;
    return p;
}

// A cache, its float64 model and a random source of tokens and queries.
struct Harness {
    Codebook cb;
    std::unique_ptr<Cache> cache;
    std::unique_ptr<ReferenceCache> ref;
    Rng rng{7};
    double query_scale = 1.0;

    Harness(const Codebook& codebook, const commvq_cache_params_t& params) : cb(codebook) {
        cache = std::make_unique<Cache>(cb, params);
        ref = std::make_unique<ReferenceCache>(*cache);
    }
    int32_t dtype() const { return cache->params().io_dtype; }
    size_t D() const { return cb.value_dim(); }
    size_t q_row() const { return size_t(cb.n_q_heads) * cb.head_dim; }

    // Appends n given tokens (pre-RoPE keys) to one layer; rotates them for
    // a post-RoPE cache.
    void append(uint32_t layer, uint32_t seq, uint32_t n, std::vector<float> k, const std::vector<float>& v) {
        if (cache->params().key_convention == COMMVQ_KEYS_POST_ROPE) {
            const uint64_t first = cache->sequence(seq).layers[layer].length;
            for (uint32_t t = 0; t < n; ++t)
                for (uint32_t g = 0; g < cb.n_kv_heads; ++g) {
                    float* x = k.data() + (size_t(t) * cb.n_kv_heads + g) * cb.head_dim;
                    std::vector<float> r = apply_rope(cb, x, first + t);
                    std::copy(r.begin(), r.end(), x);
                }
        }
        IoTensor ki = make_io(k, dtype()), vi = make_io(v, dtype());
        cache->append(layer, seq, n, ki.data(), vi.data());
        ref->append(layer, seq, n, ki.values.data(), vi.values.data());
    }
    // n random tokens to every layer of seq.
    void append_random(uint32_t seq, uint32_t n) {
        for (uint32_t l = 0; l < cb.n_layers; ++l) append(l, seq, n, rng.normals(n * D()), rng.normals(n * D()));
    }
    std::vector<float> queries(uint32_t n) {
        return make_io(rng.normals(n * q_row(), query_scale), dtype()).values;
    }

    // commvq_cache_attend against the reference; returns the worst relative error.
    double check_attend(uint32_t layer, uint32_t seq, uint32_t nq, uint32_t flags, double tol,
                        const std::vector<float>* given = nullptr) {
        std::vector<float> qf = given ? *given : queries(nq);
        IoTensor q = make_io(qf, dtype());
        std::vector<uint8_t> out = poisoned(dtype(), nq * q_row());
        std::vector<float> lse(size_t(nq) * cb.n_q_heads, NAN);
        cache->attend(layer, seq, nq, q.data(), out.data(), lse.data(), flags);
        std::vector<float> o = from_io(out.data(), dtype(), nq * q_row());
        CHECK(all_finite(o));
        CHECK(all_finite(lse));
        std::vector<double> ro, rl;
        ref->attend_last(layer, seq, nq, q.values.data(), (flags & COMMVQ_ATTEND_NON_CAUSAL) == 0, ro, rl);
        const double err = max_relative_error(o, ro, cb.head_dim);
        CHECK(err <= tol);
        double lse_err = 0;
        for (size_t i = 0; i < rl.size(); ++i) lse_err = std::max(lse_err, std::fabs(lse[i] - rl[i]));
        CHECK(lse_err <= (dtype() == COMMVQ_DTYPE_F32 ? kLseTol : 10 * tol));
        return err;
    }
};

RandomCodebookSpec spec(uint32_t layers, uint32_t hkv, uint32_t hq, uint32_t d, uint64_t seed = 1) {
    RandomCodebookSpec s;
    s.n_layers = layers;
    s.n_kv_heads = hkv;
    s.n_q_heads = hq;
    s.head_dim = d;
    s.seed = seed;
    return s;
}

}  // namespace

TEST_CASE("attend: GQA groups 1, 2, 4 and head_dim 64, 128 match the float64 reference") {
    const uint32_t heads[][2] = {{2, 2}, {2, 4}, {1, 4}};
    for (auto h : heads) {
        for (uint32_t d : {64u, 128u}) {
            INFO("n_kv_heads " << h[0] << ", n_q_heads " << h[1] << ", head_dim " << d);
            Harness t(random_codebook(spec(1, h[0], h[1], d, 3)), default_params());
            // Chunks that start and end inside blocks and inside the window.
            for (uint32_t n : {1u, 37u, 64u, 48u}) t.append_random(0, n);
            REQUIRE(t.cache->sequence(0).layers[0].compressed == 150 - 16);
            t.check_attend(0, 0, 1, COMMVQ_ATTEND_CAUSAL, kTolF32);
            t.check_attend(0, 0, 20, COMMVQ_ATTEND_CAUSAL, kTolF32);
            t.check_attend(0, 0, 5, COMMVQ_ATTEND_NON_CAUSAL, kTolF32);
        }
    }
}

TEST_CASE("attend: window 0 and 128, with and without sinks, every layer") {
    for (uint32_t window : {0u, 128u}) {
        for (uint32_t sinks : {0u, 3u}) {
            INFO("window " << window << ", sinks " << sinks);
            commvq_cache_params_t p = default_params();
            p.window = window;
            p.sink_tokens = sinks;
            Harness t(random_codebook(spec(2, 2, 4, 64, 5)), p);
            t.append_random(0, 2);  // fewer tokens than sinks: nothing compressed yet
            t.check_attend(1, 0, 2, COMMVQ_ATTEND_CAUSAL, kTolF32);
            t.append_random(0, 181);
            t.append_random(0, 77);
            const uint64_t expect = 260 - sinks - window;
            CHECK(t.cache->sequence(0).layers[0].compressed == expect);
            for (uint32_t l = 0; l < 2; ++l) {
                t.check_attend(l, 0, 1, COMMVQ_ATTEND_CAUSAL, kTolF32);
                t.check_attend(l, 0, 33, COMMVQ_ATTEND_CAUSAL, kTolF32);
                t.check_attend(l, 0, 260, COMMVQ_ATTEND_CAUSAL, kTolF32);  // the whole prompt
                t.check_attend(l, 0, 3, COMMVQ_ATTEND_NON_CAUSAL, kTolF32);
            }
        }
    }
}

TEST_CASE("attend: interleaved pairs, per-head key scales, 2-bit values, sharp attention") {
    RandomCodebookSpec s = spec(1, 2, 4, 64, 9);
    s.pair_layout = COMMVQ_PAIRS_INTERLEAVED;
    s.scale_mode = COMMVQ_SCALE_HEAD;
    s.value_bits = 2;
    Harness t(random_codebook(s), default_params());
    t.append_random(0, 140);
    t.check_attend(0, 0, 1, COMMVQ_ATTEND_CAUSAL, kTolF32);
    t.check_attend(0, 0, 9, COMMVQ_ATTEND_CAUSAL, kTolF32);
    t.query_scale = 6;  // scores spread over tens: a few tokens dominate
    t.check_attend(0, 0, 4, COMMVQ_ATTEND_CAUSAL, kTolF32);
    t.check_attend(0, 0, 4, COMMVQ_ATTEND_NON_CAUSAL, kTolF32);
}

TEST_CASE("attend: head_dim 20 (pairs, code bytes and dot products not a multiple of the vector width)") {
    // P = 10 pairs: one 8-pair block and two single pairs; 2n = 40 code bits:
    // four bytes at a time and one alone.
    Harness t(random_codebook(spec(1, 2, 4, 20, 13)), default_params());
    t.append_random(0, 70);
    t.check_attend(0, 0, 1, COMMVQ_ATTEND_CAUSAL, kTolF32);
    t.check_attend(0, 0, 6, COMMVQ_ATTEND_CAUSAL, kTolF32);
}

TEST_CASE("attend: an explicit attn_scale") {
    commvq_cache_params_t p = default_params();
    p.attn_scale = 0.3f;
    Harness t(random_codebook(spec(1, 2, 4, 64, 2)), p);
    t.append_random(0, 90);
    CHECK(t.cache->params().attn_scale == 0.3f);
    t.check_attend(0, 0, 3, COMMVQ_ATTEND_CAUSAL, kTolF32);
}

TEST_CASE("attend: decode split over 1, 2 and 5 threads agrees with the reference") {
    const Codebook cb = random_codebook(spec(1, 2, 4, 64, 4));
    std::vector<std::vector<float>> outs;
    for (uint32_t threads : {1u, 2u, 5u}) {
        INFO("n_threads " << threads);
        commvq_cache_params_t p = default_params();
        p.n_threads = threads;
        p.block_tokens = 64;
        Harness t(cb, p);
        t.append_random(0, 1100);  // long enough to be split into several parts
        Rng qrng(99);
        std::vector<float> q = qrng.normals(2 * t.q_row());
        t.check_attend(0, 0, 1, COMMVQ_ATTEND_CAUSAL, kTolF32, &q);
        t.check_attend(0, 0, 2, COMMVQ_ATTEND_CAUSAL, kTolF32, &q);
    }
}

TEST_CASE("attend_batch: decode queries of sequences of different lengths, duplicates allowed") {
    commvq_cache_params_t p = default_params();
    p.n_threads = 3;
    Harness t(random_codebook(spec(2, 2, 4, 64, 6)), p);
    const uint32_t lengths[4] = {5, 300, 41, 700};
    for (uint32_t s = 0; s < 4; ++s) t.append_random(s, lengths[s]);
    for (uint32_t layer = 0; layer < 2; ++layer) {
        for (std::vector<uint32_t> ids : {std::vector<uint32_t>{3, 0, 1, 2, 1}, std::vector<uint32_t>{2},
                                          std::vector<uint32_t>{3, 3}}) {
            const uint32_t n = uint32_t(ids.size());
            std::vector<float> qf = t.queries(n);
            std::vector<uint8_t> out = poisoned(t.dtype(), n * t.q_row());
            std::vector<float> lse(size_t(n) * 4, NAN);
            t.cache->attend_batch(layer, n, ids.data(), qf.data(), out.data(), lse.data(), 0);
            std::vector<float> o = from_io(out.data(), t.dtype(), n * t.q_row());
            REQUIRE(all_finite(o));
            for (uint32_t i = 0; i < n; ++i) {
                INFO("layer " << layer << ", entry " << i << ", sequence " << ids[i]);
                std::vector<double> ro, rl;
                t.ref->attend_last(layer, ids[i], 1, qf.data() + i * t.q_row(), true, ro, rl);
                std::vector<float> oi(o.begin() + i * t.q_row(), o.begin() + (i + 1) * t.q_row());
                CHECK(max_relative_error(oi, ro, 64) <= kTolF32);
                for (uint32_t h = 0; h < 4; ++h) CHECK(std::fabs(lse[i * 4 + h] - rl[h]) <= kLseTol);
            }
        }
    }
}

TEST_CASE("attend: f16 and bf16 io") {
    for (int32_t dtype : {COMMVQ_DTYPE_F16, COMMVQ_DTYPE_BF16}) {
        INFO("io_dtype " << dtype);
        commvq_cache_params_t p = default_params();
        p.io_dtype = dtype;
        p.sink_tokens = 2;
        Harness t(random_codebook(spec(1, 2, 4, 128, 8)), p);
        t.append_random(0, 120);
        const double tol = dtype == COMMVQ_DTYPE_F16 ? kTolF16 : kTolBF16;
        t.check_attend(0, 0, 1, COMMVQ_ATTEND_CAUSAL, tol);
        t.check_attend(0, 0, 17, COMMVQ_ATTEND_CAUSAL, tol);
    }
}

TEST_CASE("attend: post-RoPE keys give the attention of the same keys pre-RoPE") {
    const Codebook cb = random_codebook(spec(1, 2, 4, 64, 12));
    commvq_cache_params_t pre = default_params(), post = default_params();
    post.key_convention = COMMVQ_KEYS_POST_ROPE;
    pre.sink_tokens = post.sink_tokens = 2;
    Harness a(cb, pre), b(cb, post);
    Rng rng(5);
    for (uint32_t n : {50u, 70u, 1u}) {
        std::vector<float> k = rng.normals(n * a.D()), v = rng.normals(n * a.D());
        a.append(0, 0, n, k, v);
        b.append(0, 0, n, k, v);  // rotated to their positions by the harness
    }
    std::vector<float> q = rng.normals(8 * a.q_row());
    a.check_attend(0, 0, 8, COMMVQ_ATTEND_CAUSAL, kTolF32, &q);
    b.check_attend(0, 0, 8, COMMVQ_ATTEND_CAUSAL, kTolF32, &q);
    std::vector<float> oa(8 * a.q_row()), ob(8 * a.q_row());
    a.cache->attend(0, 0, 8, q.data(), oa.data(), nullptr, 0);
    b.cache->attend(0, 0, 8, q.data(), ob.data(), nullptr, 0);
    std::vector<double> oad(oa.begin(), oa.end());
    CHECK(max_relative_error(ob, oad, 64) <= kTolF32);
}

TEST_CASE("attend: real model keys, values and queries (bytellama fixture) with a random codebook") {
    const KvFixture& fx = kv_fixture();
    RandomCodebookSpec s = spec(2, fx.n_kv_heads, fx.n_q_heads, fx.head_dim, 21);
    s.rope = fx.rope;
    s.pair_layout = fx.pair_layout;
    commvq_cache_params_t p = default_params();
    p.window = 128;
    p.sink_tokens = 4;
    p.block_tokens = 64;
    Harness t(random_codebook(s), p);
    // Cache layers 0, 1 hold the fixture's layers 1 and 3 (its layer 0 is
    // degenerate).
    const uint32_t source[2] = {1, 3};
    const size_t D = t.D();
    auto slice = [&](const std::vector<float>& x, uint32_t from, uint32_t n) {
        return std::vector<float>(x.begin() + size_t(from) * D, x.begin() + size_t(from + n) * D);
    };
    const uint32_t prompt = fx.query_start;  // 1152
    for (uint32_t from = 0; from < prompt; from += 256) {
        const uint32_t n = std::min(256u, prompt - from);
        for (uint32_t l = 0; l < 2; ++l)
            t.append(l, 0, n, slice(fx.keys[source[l]], from, n), slice(fx.values[source[l]], from, n));
    }
    t.cache->seq_fork(0, 1);
    t.ref->fork(0, 1);

    // Sequence 0: the last 128 tokens as one prefill chunk, its 128 queries causal.
    for (uint32_t l = 0; l < 2; ++l) {
        t.append(l, 0, fx.n_queries, slice(fx.keys[source[l]], prompt, fx.n_queries),
                 slice(fx.values[source[l]], prompt, fx.n_queries));
        const auto& qs = fx.queries[source[l]];
        std::vector<float> q(qs.begin(), qs.end());
        INFO("prefill chunk, layer " << l);
        t.check_attend(l, 0, fx.n_queries, COMMVQ_ATTEND_CAUSAL, kTolF32, &q);
    }
    // Sequence 1 (forked at the prompt): the same tokens decoded one by one.
    double worst = 0;
    for (uint32_t i = 0; i < fx.n_queries; ++i) {
        for (uint32_t l = 0; l < 2; ++l) {
            t.append(l, 1, 1, slice(fx.keys[source[l]], prompt + i, 1), slice(fx.values[source[l]], prompt + i, 1));
            const float* qi = fx.query(source[l], i);
            std::vector<float> q(qi, qi + t.q_row());
            INFO("decode step " << i << ", layer " << l);
            worst = std::max(worst, t.check_attend(l, 1, 1, COMMVQ_ATTEND_CAUSAL, kTolF32, &q));
        }
    }
    MESSAGE("fixture decode: worst relative error " << worst);
}
