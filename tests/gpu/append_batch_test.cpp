// commvq_cache_append_batch (and append_norms2) on a GPU cache, all rows in
// one pass (one staging copy of host rows, one encoding of every token that
// leaves a window, one store of the new uncompressed tokens), against the
// same rows appended one by one through the single-row path: the reference
// cache is made with COMMVQ_CUDA_APPEND_BATCH=rows and takes one row per
// call (commvq_cache_append; append_norms2 of one row for a slice cache
// that needs key norms). Random codebooks at 1 and 2 bits and the bytellama
// fixture through its shipped codebooks; batches of 1, 3, 64 rows and of
// more tokens to encode than one encoder pass takes; rows of different
// lengths (empty, in the sinks, in the window, crossing its edge in this
// append, long compressed, a fork whose shared block two rows of one batch
// write); host, device and mixed pointers; slice caches with given norms
// (host and device) and with head scales; refusals; a captured graph.
//
// What must agree:
//   - block tables, layer states, block references, sinks and windows:
//     exactly;
//   - every compressed token's key codes and key scales: bit for bit (the
//     key kernels work per token: a token's result does not depend on the
//     pass it is encoded in);
//   - value codes and weights: bit for bit but for near-ties. The value
//     encoder's products are cuBLAS calls whose kernel (and so the order of
//     its sums) may change with the tokens per pass, one row's against all
//     rows' here; a logit near a tie may then pick the other option
//     (check_codes: at most 0.1% of value bits; weights of equal bits
//     within 1e-4). The counts are printed. A wrong row, position or
//     sequence in the one-pass indexing changes about half the value bits
//     and the key codes of the token: far outside these bounds;
//   - attend_batch outputs and lse of each sequence: bit for bit when
//     every code and weight of that sequence agrees. Where a near-tie value
//     code differs, keys and probabilities still agree (lse within 1e-5),
//     so each head's output may move by at most the largest change of a
//     decoded value plus each output's own error (relative L2 2e-3; bf16
//     io 1e-2). A flipped bit in a sequence of a few tokens moves its
//     output by more than any fixed tolerance would allow: a batch-wide
//     2e-3 failed on an H100 (2026-12-07: 0.0089 for 3 rows appending one
//     token a step, window 0).
// Outputs are poisoned (NaN) before every call.
#include <doctest/doctest.h>

#include <cfloat>
#include <limits>
#include <memory>
#include <numeric>

#include "cache_test_util.h"
#include "fixture.h"
#include "gpu_test_util.h"
#include "parallel_ranks.h"

using namespace commvq;
using namespace commvq::gpu_test;

// A refused call (CHECK_FAILS_UNCHANGED: its status, a message, the same
// snapshot, the bookkeeping intact) that leaves every code and window byte
// of the cache as it was too.
#define CHECK_REFUSED(handle, status, call)                                            \
    do {                                                                               \
        const std::vector<uint8_t> contents_before_ = commvq::test::contents(handle);  \
        CHECK_FAILS_UNCHANGED(handle, status, call);                                   \
        CHECK(commvq::test::contents(handle) == contents_before_);                     \
    } while (0)

namespace {

// Which inputs of the one-pass call are device memory (the reference
// always gets host rows).
struct Where {
    bool k = false, v = false, norms = false;
};

// The inputs of one batch, host copies: k [ids][n][key elems], v
// [ids][n][value elems] in io dtype; norms2 [model heads][ids * n] when the
// cache needs them.
struct Batch {
    std::vector<uint32_t> ids;
    uint32_t n = 0;
    std::vector<uint8_t> k, v;
    std::vector<double> norms2;
};

// The largest L2 difference between two caches' decoded values of one
// sequence's compressed tokens at a layer (0 where all their codes agree).
double max_value_difference(Cache& a, Cache& b, uint32_t layer, uint32_t seq) {
    const Codebook& cb = a.codebook();
    const auto ta = compressed_tokens(a, layer, seq), tb = compressed_tokens(b, layer, seq);
    REQUIRE(ta.size() == tb.size());
    ValueEncoder ve(cb, layer);
    std::vector<float> va(cb.value_dim()), vb(cb.value_dim());
    double worst = 0;
    for (size_t i = 0; i < ta.size(); ++i) {
        ve.decode(ta[i].value_bits.data(), ta[i].value_weight, va.data());
        ve.decode(tb[i].value_bits.data(), tb[i].value_weight, vb.data());
        double s = 0;
        for (size_t j = 0; j < va.size(); ++j) s += (double(va[j]) - vb[j]) * (double(va[j]) - vb[j]);
        worst = std::max(worst, std::sqrt(s));
    }
    return worst;
}

// A one-pass cache and its reference, made alike, fed alike.
struct Twin {
    CacheHandle one_pass, in_turn;
    uint32_t L, key_elems, value_elems, model_heads, own_heads, max_seqs;
    int32_t dtype;
    size_t es;
    bool given_norms;

    Twin(commvq_codebook_t* cb, const commvq_cache_params_t& p) {
        CVQ_OK(commvq_cache_create(cb, &p, &one_pass.h));
        {
            ScopedEnv rows("COMMVQ_CUDA_APPEND_BATCH", "rows");
            CVQ_OK(commvq_cache_create(cb, &p, &in_turn.h));
        }
        const Codebook& c = one_pass.cache().codebook();
        L = c.n_layers;
        key_elems = c.key_dim();
        value_elems = c.value_dim();
        model_heads = c.model_kv_heads();
        own_heads = c.n_kv_heads;
        max_seqs = p.max_seqs;
        dtype = p.io_dtype;
        es = dtype_size(dtype);
        given_norms = c.needs_given_key_norms();
    }

    // Random tokens for rows ids of one layer; given norms: the cache's own
    // heads' from commvq_cache_key_norms2 (as an engine's rank computes
    // them), the other heads' any squared norms (another rank's keys).
    Batch batch(test::Rng& rng, uint32_t layer, const std::vector<uint32_t>& ids, uint32_t n) {
        Batch b;
        b.ids = ids;
        b.n = n;
        const size_t rows = ids.size() * n;
        b.k = test::io_tokens(rng, rows * key_elems, dtype);
        b.v = test::io_tokens(rng, rows * value_elems, dtype);
        if (given_norms) {
            const uint32_t begin = one_pass.cache().codebook().kv_head_begin;
            b.norms2.resize(model_heads * rows);
            for (double& x : b.norms2) x = 100.0 * rng.uniform();
            CVQ_OK(commvq_cache_key_norms2(one_pass.h, layer, uint32_t(ids.size()), ids.data(), n, b.k.data(),
                                           b.norms2.data() + begin * rows));
        }
        return b;
    }

    void append(uint32_t layer, const Batch& b, Where where = {}) {
        const uint32_t m = uint32_t(b.ids.size());
        std::unique_ptr<DeviceCopy> dk, dv, dn;
        const void* k = b.k.data();
        const void* v = b.v.data();
        const double* norms = given_norms ? b.norms2.data() : nullptr;
        if (where.k) k = (dk = std::make_unique<DeviceCopy>(b.k.size(), b.k.data()))->ptr;
        if (where.v) v = (dv = std::make_unique<DeviceCopy>(b.v.size(), b.v.data()))->ptr;
        if (where.norms && norms)
            norms = static_cast<const double*>((dn = std::make_unique<DeviceCopy>(b.norms2.size() * 8, norms))->ptr);
        if (given_norms)
            CVQ_OK(commvq_cache_append_norms2(one_pass.h, layer, m, b.ids.data(), b.n, k, v, norms));
        else
            CVQ_OK(commvq_cache_append_batch(one_pass.h, layer, m, b.ids.data(), b.n, k, v));
        const size_t rows = size_t(m) * b.n;
        for (uint32_t i = 0; i < m; ++i) {
            const uint8_t* kr = b.k.data() + size_t(i) * b.n * key_elems * es;
            const uint8_t* vr = b.v.data() + size_t(i) * b.n * value_elems * es;
            if (!given_norms) {
                CVQ_OK(commvq_cache_append(in_turn.h, layer, b.ids[i], b.n, kr, vr));
                continue;
            }
            std::vector<double> nr(size_t(model_heads) * b.n);  // this row's columns, [heads][n]
            for (uint32_t h = 0; h < model_heads; ++h)
                std::copy_n(b.norms2.begin() + h * rows + size_t(i) * b.n, b.n, nr.begin() + size_t(h) * b.n);
            CVQ_OK(commvq_cache_append_norms2(in_turn.h, layer, 1, &b.ids[i], b.n, kr, vr, nr.data()));
        }
        CVQ_OK(commvq_cache_synchronize(one_pass.h));  // before the device copies are freed
    }

    void fork(uint32_t src, uint32_t dst) {
        CVQ_OK(commvq_cache_seq_fork(one_pass.h, src, dst));
        CVQ_OK(commvq_cache_seq_fork(in_turn.h, src, dst));
    }

    // Contents, then the attention of every non-empty sequence, every layer.
    void check(test::Rng& rng) {
        CHECK_NOTHROW(one_pass.cache().check_integrity());
        const CodeDiff codes = compare_caches(one_pass.cache(), in_turn.cache());
        MESSAGE("one pass vs rows in turn: " << codes.tokens << " compressed tokens; key codes of "
                                             << codes.token_heads_differ << " token-heads, " << codes.bits_differ
                                             << " of " << codes.bits << " value bits, " << codes.weights_differ
                                             << " weights of equal bits differ (largest " << codes.max_weight_err
                                             << ")");
        CHECK(codes.token_heads_differ == 0);
        CHECK(codes.max_scale_err == 0);
        check_codes(codes);

        std::vector<uint32_t> ids;
        for (uint32_t s = 0; s < max_seqs; ++s)
            if (one_pass.cache().sequence(s).layers[0].length) ids.push_back(s);
        const Codebook& cb = one_pass.cache().codebook();
        const size_t row = size_t(cb.n_q_heads) * cb.head_dim, q_elems = ids.size() * row;
        const double tol = dtype == COMMVQ_DTYPE_BF16 ? 1e-2 : 2e-3;
        for (uint32_t l = 0; l < L; ++l) {
            CAPTURE(l);
            // Per sequence: do its codes agree, and if not, the largest
            // difference of a token's decoded value between the caches.
            std::vector<double> value_diff(ids.size(), 0.0);
            std::vector<char> same(ids.size());
            for (size_t i = 0; i < ids.size(); ++i) {
                const CodeDiff d = compare_codes(one_pass.cache(), in_turn.cache(), l, ids[i]);
                same[i] = d.bits_differ == 0 && d.weights_differ == 0;
                if (!same[i]) value_diff[i] = max_value_difference(one_pass.cache(), in_turn.cache(), l, ids[i]);
            }
            const std::vector<uint8_t> q = test::io_tokens(rng, q_elems, dtype);
            std::vector<uint8_t> oa(q.size(), 0xff), ob(q.size(), 0xff);
            std::vector<float> la(ids.size() * cb.n_q_heads, NAN), lb(la.size(), NAN);
            const uint32_t m = uint32_t(ids.size());
            CVQ_OK(commvq_cache_attend_batch(one_pass.h, l, m, ids.data(), q.data(), oa.data(), la.data(), 0));
            CVQ_OK(commvq_cache_attend_batch(in_turn.h, l, m, ids.data(), q.data(), ob.data(), lb.data(), 0));
            std::vector<float> fa(q_elems), fb(q_elems);
            to_float(oa.data(), dtype, q_elems, fa.data());
            to_float(ob.data(), dtype, q_elems, fb.data());
            size_t differing = 0;
            double worst = 0;  // largest output difference over its bound
            for (size_t i = 0; i < ids.size(); ++i) {
                CAPTURE(ids[i]);
                const size_t o = i * row;
                if (same[i]) {
                    CHECK(std::memcmp(oa.data() + o * es, ob.data() + o * es, row * es) == 0);
                    CHECK(std::memcmp(la.data() + i * cb.n_q_heads, lb.data() + i * cb.n_q_heads, cb.n_q_heads * 4) == 0);
                    continue;
                }
                // Keys, scales and the uncompressed tokens agree (checked
                // above), so the probabilities do: each head's output moves by
                // at most the largest change of a decoded value (probabilities
                // sum to 1), plus each output's own error against exact.
                ++differing;
                for (uint32_t h = 0; h < cb.n_q_heads; ++h) {
                    double na = 0, nb = 0, nd = 0;
                    for (uint32_t j = 0; j < cb.head_dim; ++j) {
                        const double a = fa[o + h * cb.head_dim + j], b = fb[o + h * cb.head_dim + j];
                        na += a * a;
                        nb += b * b;
                        nd += (a - b) * (a - b);
                    }
                    const double bound = value_diff[i] + tol * (std::sqrt(na) + std::sqrt(nb));
                    worst = std::max(worst, std::sqrt(nd) / bound);
                    CHECK(std::sqrt(nd) <= bound);
                    CHECK(std::fabs(la[i * cb.n_q_heads + h] - lb[i * cb.n_q_heads + h]) <=
                          1e-5 * std::fabs(lb[i * cb.n_q_heads + h]));
                }
            }
            if (differing)
                MESSAGE("layer " << l << ": " << differing << " of " << ids.size()
                                 << " sequences with near-tie value codes; largest output difference over its bound "
                                 << worst);
        }
    }
};

// Prompt lengths of B rows around the window's edge E = S + W (the length
// from which each new token compresses one): E - 1 (crosses it with the
// first token), an empty row (its first tokens are sinks; later a fork
// target), E + 37 (compressing, a block part full), 1, E, E - 3, then a
// spread over [0, E + 50). past_edge: every row past the edge instead, all
// lengths different (each step then encodes a token of every row).
std::vector<uint32_t> prompts(uint32_t B, uint32_t S, uint32_t W, bool past_edge = false) {
    const uint32_t E = S + W;
    const uint32_t first[6] = {E ? E - 1 : 0, 0, E + 37, 1, E, E > 3 ? E - 3 : 2};
    std::vector<uint32_t> p(B);
    for (uint32_t i = 0; i < B; ++i)
        p[i] = past_edge ? E + 3 * i : i < 6 ? first[i] : (i * 11 + i / 7) % (E + 50);
    return p;
}

struct Run {
    uint32_t rows, n_tokens, steps = 6;
    Where where;
    bool past_edge = false;
};

// Prompts one row at a time, row 1 made a fork of row 2 (when there are 3
// rows or more and row 2 holds tokens), then `steps` batches of every layer:
// all rows, in turn in order, reversed, and every other row.
void run(Twin& t, const Run& r, uint32_t S, uint32_t W, uint64_t seed) {
    test::Rng rng(seed);
    const std::vector<uint32_t> p = prompts(r.rows, S, W, r.past_edge);
    const bool fork = r.rows >= 3 && !r.past_edge;
    for (uint32_t s = 0; s < r.rows; ++s)
        for (uint32_t l = 0; p[s] && l < t.L; ++l) t.append(l, t.batch(rng, l, {s}, p[s]));
    if (fork) t.fork(2, 1);
    for (uint32_t step = 0; step < r.steps; ++step) {
        CAPTURE(step);
        std::vector<uint32_t> ids(r.rows);
        std::iota(ids.begin(), ids.end(), 0u);
        if (step % 3 == 1) std::reverse(ids.begin(), ids.end());
        if (step % 3 == 2 && r.rows > 1) {
            std::vector<uint32_t> half;
            for (uint32_t i = 0; i < r.rows; i += 2) half.push_back(ids[i]);
            ids = half;
        }
        for (uint32_t l = 0; l < t.L; ++l) t.append(l, t.batch(rng, l, ids, r.n_tokens), r.where);
    }
    t.check(rng);
}

commvq_cache_params_t twin_params(uint32_t max_seqs, uint32_t window, uint32_t sinks, int32_t dtype, int32_t keys) {
    commvq_cache_params_t p = cache_params(0, window, sinks, dtype, 32768, max_seqs);
    p.key_convention = keys;
    return p;
}

}  // namespace

TEST_CASE("gpu: append_batch in one pass equals rows in turn: random codebooks, 1 and 2 bits, 1 to 64 rows, "
          "several encoder passes, host, device and mixed pointers") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    struct Config {
        Run run;
        uint32_t window, sinks;
        int32_t dtype, keys;
        const char* encode_batch;  // COMMVQ_CUDA_ENCODE_BATCH, or null: the default
        const char* products;      // COMMVQ_CUDA_VALUE_PRODUCTS, or null: the default
    };
    const Config configs[] = {
        {{1, 1, 6, {true, true}}, 16, 0, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_POST_ROPE, nullptr, nullptr},
        {{3, 5, 6, {false, false}}, 16, 2, COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE, nullptr, nullptr},
        {{3, 1, 6, {true, false}}, 0, 3, COMMVQ_DTYPE_F16, COMMVQ_KEYS_POST_ROPE, nullptr, nullptr},
        {{64, 1, 6, {false, true}}, 16, 3, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_PRE_ROPE, nullptr, nullptr},
        {{64, 2, 6, {true, true}}, 8, 0, COMMVQ_DTYPE_F16, COMMVQ_KEYS_POST_ROPE, nullptr, "fp32"},
        // 33 rows past their edge: 33 tokens to encode per call, passes of 32 and 1.
        {{33, 1, 4, {true, true}, true}, 8, 1, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_POST_ROPE, "32", nullptr},
        // Host rows staged in groups of 10 (32 / 3 tokens).
        {{33, 3, 4, {false, false}, true}, 8, 1, COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE, "32", nullptr},
        // Rows longer than the staging buffers: host rows in turn, device rows in one pass.
        {{5, 40, 3, {false, false}}, 8, 2, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_PRE_ROPE, "32", nullptr},
        {{5, 40, 3, {true, true}}, 8, 2, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_POST_ROPE, "32", nullptr},
    };
    uint64_t seed = 300;
    for (uint32_t bits : {1u, 2u})
        for (const Config& c : configs) {
            CAPTURE(bits);
            CAPTURE(c.run.rows);
            CAPTURE(c.run.n_tokens);
            CAPTURE(c.run.where.k);
            CAPTURE(c.run.where.v);
            CAPTURE(c.window);
            CAPTURE(c.sinks);
            CAPTURE(c.dtype);
            CAPTURE(c.keys);
            const std::string encode_batch = c.encode_batch ? c.encode_batch : "default";
            const std::string products = c.products ? c.products : "default";
            CAPTURE(encode_batch);
            CAPTURE(products);
            std::unique_ptr<ScopedEnv> batch_env, products_env;
            if (c.encode_batch) batch_env = std::make_unique<ScopedEnv>("COMMVQ_CUDA_ENCODE_BATCH", c.encode_batch);
            if (c.products) products_env = std::make_unique<ScopedEnv>("COMMVQ_CUDA_VALUE_PRODUCTS", c.products);
            CodebookHandle h(test::random_codebook(llama_like(bits, ++seed)));
            Twin t(h.h, twin_params(c.run.rows, c.window, c.sinks, c.dtype, c.keys));
            run(t, c.run, c.sinks, c.window, seed);
        }
}

TEST_CASE("gpu: append_batch in one pass equals rows in turn: the bytellama fixture through the shipped 1- and "
          "2-bit codebooks") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    const size_t D = size_t(fx.n_kv_heads) * fx.head_dim;
    for (const char* file : {"bytellama-13m-1bit.safetensors", "bytellama-13m-2bit.safetensors"})
        for (const Run& r : {Run{3, 4, 8, {false, false}}, Run{64, 1, 8, {true, false}}}) {
            CAPTURE(file);
            CAPTURE(r.rows);
            CAPTURE(r.n_tokens);
            commvq_codebook_t* cb = test::fixture_codebook_handle(file);
            {
                // The fixture's tokens: float32, keys before RoPE.
                Twin t(cb, twin_params(r.rows, 16, 4, COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE));
                REQUIRE(t.L == fx.n_layers);
                REQUIRE(t.key_elems == D);
                // Row s reads the fixture from token start[s] on: its prompt, then its new tokens.
                const std::vector<uint32_t> p = prompts(r.rows, 4, 16);
                std::vector<uint32_t> start(r.rows), at(r.rows);
                for (uint32_t s = 0; s < r.rows; ++s) {
                    start[s] = (s * 97) % (fx.n_tokens - p[s] - r.steps * r.n_tokens);
                    at[s] = start[s];
                }
                // Rows ids of n tokens each, from each row's next fixture token on.
                const auto fixture_batch = [&](uint32_t l, const std::vector<uint32_t>& ids, uint32_t n) {
                    Batch b;
                    b.ids = ids;
                    b.n = n;
                    for (uint32_t s : ids) {
                        const auto* k = reinterpret_cast<const uint8_t*>(fx.key(l, at[s]));
                        const auto* v = reinterpret_cast<const uint8_t*>(fx.value(l, at[s]));
                        b.k.insert(b.k.end(), k, k + size_t(n) * D * 4);
                        b.v.insert(b.v.end(), v, v + size_t(n) * D * 4);
                    }
                    return b;
                };
                for (uint32_t s = 0; s < r.rows; ++s) {
                    for (uint32_t l = 0; p[s] && l < t.L; ++l) t.append(l, fixture_batch(l, {s}, p[s]));
                    at[s] += p[s];
                }
                std::vector<uint32_t> ids(r.rows);
                std::iota(ids.begin(), ids.end(), 0u);
                for (uint32_t step = 0; step < r.steps; ++step) {
                    std::reverse(ids.begin(), ids.end());
                    for (uint32_t l = 0; l < t.L; ++l) t.append(l, fixture_batch(l, ids, r.n_tokens), r.where);
                    for (uint32_t s : ids) at[s] += r.n_tokens;
                }
                test::Rng rng(17);
                t.check(rng);
            }
            commvq_codebook_free(cb);
        }
}

TEST_CASE("gpu: append_batch in one pass equals rows in turn on slice caches (given key norms on the host and "
          "the device, head scales)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    struct Config {
        int32_t scale_mode;
        Run run;
        int32_t dtype, keys;
    };
    const Config configs[] = {
        {COMMVQ_SCALE_TOKEN, {3, 2, 6, {true, false, true}}, COMMVQ_DTYPE_F32, COMMVQ_KEYS_POST_ROPE},
        {COMMVQ_SCALE_TOKEN, {17, 1, 6, {false, false, false}}, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_PRE_ROPE},
        {COMMVQ_SCALE_TOKEN, {5, 3, 6, {true, true, false}}, COMMVQ_DTYPE_BF16, COMMVQ_KEYS_POST_ROPE},
        {COMMVQ_SCALE_HEAD, {5, 3, 6, {true, true}}, COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE},
    };
    uint64_t seed = 400;
    for (const Config& c : configs) {
        CAPTURE(c.scale_mode);
        CAPTURE(c.run.rows);
        CAPTURE(c.run.where.norms);
        commvq_codebook_t* cb = test::codebook_handle(test::four_heads(c.scale_mode, ++seed, 128));
        {
            // KV heads 1 and 2 of 4.
            commvq_cache_params_t p = twin_params(c.run.rows, 8, 2, c.dtype, c.keys);
            p.kv_head_begin = 1;
            p.kv_head_count = 2;
            Twin t(cb, p);
            REQUIRE(t.given_norms == (c.scale_mode == COMMVQ_SCALE_TOKEN));
            REQUIRE(t.own_heads == 2);
            run(t, c.run, 2, 8, seed);
        }
        commvq_codebook_free(cb);
    }
}

TEST_CASE("gpu: append_batch refusals change nothing on a GPU cache (sizes, duplicate rows, capacity, layers out "
          "of step, bad values, bad COMMVQ_CUDA_APPEND_BATCH)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    CodebookHandle h(test::random_codebook(llama_like(1, 501)));
    commvq_cache_params_t p = cache_params(0, 8, 2, COMMVQ_DTYPE_F32, 96, 4);  // 6 blocks of 16
    CacheHandle c;
    CVQ_OK(commvq_cache_create(h.h, &p, &c.h));
    test::append_tokens(c.h, 0, 26, 1);  // 16 compressed: one block
    test::append_tokens(c.h, 1, 26, 2);  // one block
    test::append_tokens(c.h, 2, 5, 3);   // sinks and window only
    const size_t D = c.cache().codebook().value_dim();
    test::Rng rng(4);
    const std::vector<float> k = rng.normals(2 * 32 * D), v = rng.normals(2 * 32 * D);
    DeviceCopy dk(k.size() * 4, k.data()), dv(v.size() * 4, v.data());
    const uint32_t ids[3] = {0, 1, 2};
    const auto says = [](const char* what) { return std::string(commvq_last_error()).find(what) != std::string::npos; };

    for (const void* kp : {static_cast<const void*>(k.data()), static_cast<const void*>(dk.ptr)}) {
        const void* vp = kp == k.data() ? static_cast<const void*>(v.data()) : dv.ptr;
        CAPTURE(kp == k.data());
        CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c.h, 0, 0, ids, 1, kp, vp));
        CHECK(says("n_seqs is 0"));
        CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c.h, 0, 2, ids, 0, kp, vp));
        CHECK(says("n_tokens is 0"));
        CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_append_batch(c.h, 0, 2, nullptr, 1, kp, vp));
        CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_append_batch(c.h, 0, 2, ids, 1, kp, nullptr));
        CHECK_REFUSED(c.h, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append_batch(c.h, 2, 2, ids, 1, kp, vp));
        const uint32_t bad_id[3] = {0, 1, 4};
        CHECK_REFUSED(c.h, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append_batch(c.h, 0, 3, bad_id, 1, kp, vp));
        CHECK(says("entry 2: sequence 4 out of range (max_seqs is 4)"));
        const uint32_t dup[3] = {1, 0, 1};
        CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c.h, 0, 3, dup, 1, kp, vp));
        CHECK(says("entries 0 and 2 both name sequence 1"));
        // A row over capacity: 4 blocks free; 32 more tokens each compress
        // into 2 new blocks for sequences 0 and 1 and 2 for sequence 2.
        CHECK(c.cache().block_pool().free_count() == 4);
        CHECK_REFUSED(c.h, COMMVQ_ERR_CAPACITY, commvq_cache_append_batch(c.h, 0, 3, ids, 32, kp, vp));
        CHECK(says("this batch needs 6 more blocks, 4 of 6 are free"));
        CHECK_REFUSED(c.h, COMMVQ_ERR_CAPACITY,
                              commvq_cache_append_batch(c.h, 0, 1, ids, std::numeric_limits<uint32_t>::max(), kp, vp));
    }
    // Host values are checked: a NaN in the last row, named.
    std::vector<float> vb(v.begin(), v.begin() + 3 * D);
    vb[2 * D + 5] = NAN;
    CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_batch(c.h, 0, 3, ids, 1, k.data(), vb.data()));
    CHECK(says("v of entry 2, token 0, element 5"));
    // Layers out of step: sequence 2's layer 0 one token ahead may not lead again.
    CVQ_OK(commvq_cache_append(c.h, 0, 2, 1, k.data(), v.data()));
    CHECK_REFUSED(c.h, COMMVQ_ERR_INVALID_STATE, commvq_cache_append_batch(c.h, 0, 3, ids, 1, dk.ptr, dv.ptr));
    CHECK(says("entry 2: layers out of step"));
    // The cache goes on: layer 1 catches sequence 2 up within the batch.
    CVQ_OK(commvq_cache_append_batch(c.h, 1, 3, ids, 1, dk.ptr, dv.ptr));
    CVQ_OK(commvq_cache_synchronize(c.h));
    CHECK_NOTHROW(c.cache().check_integrity());

    // A slice in the token scale mode (KV heads 2 and 3 of 4): appends need
    // every head's norms, those of its own heads what its keys give, all
    // finite and >= 0.
    {
        commvq_codebook_t* cb4 = test::codebook_handle(test::four_heads(COMMVQ_SCALE_TOKEN, 502, 128));
        commvq_cache_params_t ps = cache_params(0, 8, 2, COMMVQ_DTYPE_F32, 512, 3);
        ps.kv_head_begin = 2;
        ps.kv_head_count = 2;
        CacheHandle sl;
        CVQ_OK(commvq_cache_create(cb4, &ps, &sl.h));
        const uint32_t n = 3, rows = 2 * n, K = 2 * 128, V = 4 * 128;
        const std::vector<uint8_t> ks = test::io_tokens(rng, rows * K, COMMVQ_DTYPE_F32);
        const std::vector<uint8_t> vs = test::io_tokens(rng, rows * V, COMMVQ_DTYPE_F32);
        // Heads 0 and 1 another rank's, 2 and 3 this cache's own.
        const auto norms = [&](uint32_t layer) {
            std::vector<double> x(4 * rows, 1.5);
            CVQ_OK(commvq_cache_key_norms2(sl.h, layer, 2, ids, n, ks.data(), x.data() + 2 * rows));
            return x;
        };
        for (uint32_t l = 0; l < 2; ++l)
            CVQ_OK(commvq_cache_append_norms2(sl.h, l, 2, ids, n, ks.data(), vs.data(), norms(l).data()));
        CHECK_REFUSED(sl.h, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(sl.h, 0, 2, ids, n, ks.data(), vs.data()));
        CHECK(says("squared key norms of every head"));
        std::vector<double> bad = norms(0);
        bad[2 * rows + 4] *= 1.5;  // head 2, row 4
        CHECK_REFUSED(sl.h, COMMVQ_ERR_INVALID_ARGUMENT,
                      commvq_cache_append_norms2(sl.h, 0, 2, ids, n, ks.data(), vs.data(), bad.data()));
        CHECK(says("key_norms2 of head 2, row 4"));
        bad = norms(0);
        bad[rows + 1] = -1;  // head 1, row 1
        CHECK_REFUSED(sl.h, COMMVQ_ERR_INVALID_ARGUMENT,
                      commvq_cache_append_norms2(sl.h, 0, 2, ids, n, ks.data(), vs.data(), bad.data()));
        CHECK(says("key_norms2 of head 1, row 1"));
        commvq_codebook_free(cb4);
    }

    // The variable that picks the path is checked when a cache is made.
    ScopedEnv bad("COMMVQ_CUDA_APPEND_BATCH", "fast");
    commvq_cache_t* none = nullptr;
    CHECK(commvq_cache_create(h.h, &p, &none) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(none == nullptr);
    CHECK(says("COMMVQ_CUDA_APPEND_BATCH is \"fast\""));
}

TEST_CASE("gpu: append_batch of every layer is captured in one CUDA graph and replays as direct calls") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    const Codebook cb = test::random_codebook(llama_like(1, 91));
    CodebookHandle h(cb);
    const commvq_cache_params_t p = cache_params(0, 16, 0, COMMVQ_DTYPE_BF16, 8192, 4);
    CacheHandle graphed, direct;
    CVQ_OK(commvq_cache_create(h.h, &p, &graphed.h));
    CVQ_OK(commvq_cache_create(h.h, &p, &direct.h));
    const uint32_t E = cb.value_dim(), Q = cb.n_q_heads * cb.head_dim;
    test::Rng rng(92);
    // Sequence 0 compresses a token per step, 1 stays in its window, 2
    // fills its window with this token and compresses from the next.
    const uint32_t prefix[3] = {30, 5, 16};
    for (uint32_t s = 0; s < 3; ++s) {
        Tensor k(size_t(cb.n_layers) * prefix[s] * E, COMMVQ_DTYPE_BF16, rng, 2.0);
        Tensor v(size_t(cb.n_layers) * prefix[s] * E, COMMVQ_DTYPE_BF16, rng);
        append_both(graphed.h, direct.h, cb.n_layers, s, k, v, prefix[s], E, prefix[s]);
    }
    const uint32_t ids[3] = {2, 0, 1};
    const uint32_t steps = 3;
    Tensor k(size_t(steps) * cb.n_layers * 3 * E, COMMVQ_DTYPE_BF16, rng, 2.0);
    Tensor v(size_t(steps) * cb.n_layers * 3 * E, COMMVQ_DTYPE_BF16, rng);
    DeviceCopy dk(k.bytes.size(), k.data()), dv(v.bytes.size(), v.data());
    auto rows = [&](const DeviceCopy& d, uint32_t step, uint32_t l) {
        return static_cast<const uint8_t*>(d.ptr) + (size_t(step) * cb.n_layers + l) * 3 * E * 2;
    };
    cudaStream_t stream;
    GPU_CHECK(cudaStreamCreate(&stream));
    CVQ_OK(commvq_cache_set_stream(graphed.h, stream));
    for (uint32_t step = 0; step < steps; ++step) {
        CAPTURE(step);
        // One decode step's appends, all layers, captured in one graph (the
        // host bookkeeping runs now; the tokens land when the graph runs).
        cudaGraph_t graph;
        GPU_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
        commvq_status_t st = COMMVQ_OK;
        for (uint32_t l = 0; l < cb.n_layers && st == COMMVQ_OK; ++l)
            st = commvq_cache_append_batch(graphed.h, l, 3, ids, 1, rows(dk, step, l), rows(dv, step, l));
        const std::string message = commvq_last_error();
        GPU_CHECK(cudaStreamEndCapture(stream, &graph));
        INFO(message);
        REQUIRE(st == COMMVQ_OK);
        cudaGraphExec_t exec;
        GPU_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        GPU_CHECK(cudaGraphLaunch(exec, stream));
        GPU_CHECK(cudaStreamSynchronize(stream));
        GPU_CHECK(cudaGraphExecDestroy(exec));
        GPU_CHECK(cudaGraphDestroy(graph));
        for (uint32_t l = 0; l < cb.n_layers; ++l)
            CVQ_OK(commvq_cache_append_batch(direct.h, l, 3, ids, 1, rows(dk, step, l), rows(dv, step, l)));
        CVQ_OK(commvq_cache_synchronize(direct.h));
    }
    // The same launches with the same token counts: windows and key codes
    // bit for bit, value codes too unless cuBLAS rounds differently in a
    // graph (reported).
    for (uint32_t s = 0; s < 3; ++s) {
        CAPTURE(s);
        uint64_t len = 0;
        CVQ_OK(commvq_cache_seq_length(graphed.h, s, &len));
        CHECK(len == prefix[s] + steps);
    }
    const CodeDiff codes = compare_caches(graphed.cache(), direct.cache());
    check_codes(codes);
    CHECK(codes.token_heads_differ == 0);
    CHECK(codes.max_scale_err == 0);
    CVQ_OK(commvq_cache_set_stream(graphed.h, nullptr));
    Tensor q(size_t(3) * Q, COMMVQ_DTYPE_BF16, rng, 3.0);
    std::vector<uint16_t> oa(size_t(3) * Q, 0xffff), ob(oa.size(), 0xffff);  // NaN
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        CVQ_OK(commvq_cache_attend_batch(graphed.h, l, 3, ids, q.data(), oa.data(), nullptr, 0));
        CVQ_OK(commvq_cache_attend_batch(direct.h, l, 3, ids, q.data(), ob.data(), nullptr, 0));
        std::vector<float> fa(oa.size()), fb(ob.size());
        to_float(oa.data(), COMMVQ_DTYPE_BF16, fa.size(), fa.data());
        to_float(ob.data(), COMMVQ_DTYPE_BF16, fb.size(), fb.data());
        const std::vector<double> db(fb.begin(), fb.end());
        MESSAGE("layer " << l << ": graph vs direct attention " << std::string(oa == ob ? "identical" : "differ")
                         << ", relative difference " << rel_error(fa, db));
        CHECK(rel_error(fa, db) < 1e-2);
    }
    GPU_CHECK(cudaStreamDestroy(stream));
}
