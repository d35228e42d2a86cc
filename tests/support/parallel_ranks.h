// The harness of the tensor-parallel slice tests (docs/PARALLEL.md), shared
// by the CPU test (tests/unit/test_parallel_slices.cpp) and the GPU test
// (tests/gpu/parallel_slices_test.cpp): one cache of all heads and `ranks`
// slice caches of equal shares of the heads, on one device, driven alike,
// with the engine's all-gather of the key norms done here. Attention of
// each slice is compared with the full cache's for its query heads: bit for
// bit (tolerance 0), or within a relative L2 error per output row and an
// absolute lse error (where the caches' attention plans differ: GPU).
// Outputs are poisoned (all bits set: NaN) before every call.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cache.h"
#include "cache_test_util.h"
#include "code_packing.h"
#include "codebook_file.h"
#include "dtype.h"
#include "fixture.h"

namespace commvq {
namespace test {

inline std::vector<uint8_t> io_tokens(Rng& rng, size_t n, int32_t dtype) {
    const std::vector<float> x = rng.normals(n);
    std::vector<uint8_t> b(n * dtype_size(dtype));
    from_float(x.data(), n, dtype, b.data());
    return b;
}

// The random codebook of the slice tests: 2 layers, 4 KV heads of 8 query
// heads (head_dim 32 on the CPU; the CUDA back end needs 64 or 128).
inline RandomCodebookSpec four_heads(int32_t scale_mode, uint64_t seed, uint32_t head_dim = 32) {
    RandomCodebookSpec s;
    s.n_layers = 2;
    s.n_kv_heads = 4;
    s.n_q_heads = 8;
    s.head_dim = head_dim;
    s.scale_mode = scale_mode;
    s.seed = seed;
    return s;
}

struct Ranks {
    commvq_cache_t* full = nullptr;
    std::vector<commvq_cache_t*> slice;
    uint32_t H, G, d, L, count;
    int32_t dtype;
    size_t esize;
    bool token_mode;
    // Attention: 0 = bit for bit; else the largest relative L2 error of a
    // row's outputs of a slice's heads, and lse_tolerance the largest
    // |lse difference| / (1 + |lse|).
    double out_tolerance = 0, lse_tolerance = 0;
    double worst_out = 0, worst_lse = 0;  // the largest seen, for the log

    Ranks(commvq_codebook_t* cb, commvq_cache_params_t p, uint32_t ranks) {
        commvq_codebook_info_t info;
        commvq_codebook_info_init(&info);
        REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
        H = info.n_kv_heads;
        G = info.n_q_heads / H;
        d = info.head_dim;
        L = info.n_layers;
        token_mode = info.scale_mode == COMMVQ_SCALE_TOKEN;
        REQUIRE(H % ranks == 0);
        count = H / ranks;
        dtype = p.io_dtype;
        esize = dtype_size(p.io_dtype);
        full = make_cache(cb, p);
        for (uint32_t r = 0; r < ranks; ++r) {
            p.kv_head_begin = r * count;
            p.kv_head_count = count;
            slice.push_back(make_cache(cb, p));
        }
    }
    ~Ranks() {
        commvq_cache_destroy(full);
        for (auto* c : slice) commvq_cache_destroy(c);
    }
    Ranks(const Ranks&) = delete;
    Ranks& operator=(const Ranks&) = delete;

    // Rows of n_rows [heads][d] elements: heads [h0, h0 + nh) of each row.
    std::vector<uint8_t> heads(const uint8_t* x, size_t n_rows, uint32_t n_heads, uint32_t h0, uint32_t nh) const {
        const size_t hb = size_t(d) * esize;
        std::vector<uint8_t> out(n_rows * nh * hb);
        for (size_t i = 0; i < n_rows; ++i)
            std::memcpy(out.data() + i * nh * hb, x + (i * n_heads + h0) * hb, nh * hb);
        return out;
    }

    // One append_batch of k, v [ids][n][H][d] (io dtype) to every cache.
    void append(uint32_t layer, const std::vector<uint32_t>& ids, uint32_t n, const uint8_t* k, const uint8_t* v) {
        const uint32_t m = uint32_t(ids.size());
        const size_t rows = size_t(m) * n;
        REQUIRE(commvq_cache_append_batch(full, layer, m, ids.data(), n, k, v) == COMMVQ_OK);
        // Each rank's share of the keys and its norms; the all-gather.
        std::vector<std::vector<uint8_t>> ks;
        std::vector<double> norms(size_t(H) * rows);
        for (uint32_t r = 0; r < slice.size(); ++r) {
            ks.push_back(heads(k, rows, H, r * count, count));
            REQUIRE(commvq_cache_key_norms2(slice[r], layer, m, ids.data(), n, ks[r].data(),
                                            norms.data() + size_t(r) * count * rows) == COMMVQ_OK);
        }
        for (uint32_t r = 0; r < slice.size(); ++r) {
            // Head mode needs no exchange: every other rank appends without norms.
            const double* given = token_mode || r % 2 == 0 ? norms.data() : nullptr;
            REQUIRE_MESSAGE(commvq_cache_append_norms2(slice[r], layer, m, ids.data(), n, ks[r].data(), v, given) ==
                                COMMVQ_OK,
                            commvq_last_error());
        }
    }

    // A slice's outputs o, l [n_rows][nh heads] against the full cache's
    // out, lse [n_rows][H * G] from query head h0 on.
    void compare(const std::vector<uint8_t>& o, const std::vector<float>& l, const std::vector<uint8_t>& out,
                 const std::vector<float>& lse, size_t n_rows, uint32_t h0, uint32_t nh) {
        const uint32_t Hq = H * G;
        const std::vector<uint8_t> want = heads(out.data(), n_rows, Hq, h0, nh);
        if (out_tolerance == 0) {
            CHECK(o == want);
            for (size_t i = 0; i < n_rows; ++i)
                CHECK(std::memcmp(l.data() + i * nh, lse.data() + i * Hq + h0, nh * 4) == 0);
            return;
        }
        const size_t row = size_t(nh) * d;
        std::vector<float> a(row), b(row);
        for (size_t i = 0; i < n_rows; ++i) {
            to_float(o.data() + i * row * esize, dtype, row, a.data());
            to_float(want.data() + i * row * esize, dtype, row, b.data());
            double diff = 0, norm = 0;
            for (size_t j = 0; j < row; ++j) {
                diff += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
                norm += double(b[j]) * b[j];
            }
            const double err = std::sqrt(diff / std::max(norm, 1e-30));
            worst_out = std::max(worst_out, err);
            CHECK(err <= out_tolerance);
            for (uint32_t h = 0; h < nh; ++h) {
                const double x = l[i * nh + h], y = lse[i * Hq + h0 + h];
                const double e = std::fabs(x - y) / (1 + std::fabs(y));
                worst_lse = std::max(worst_lse, e);
                CHECK(e <= lse_tolerance);
            }
        }
    }

    // Attention of every cache: each slice's outputs against the full
    // cache's for its query heads.
    void check_attend(uint32_t layer, uint32_t seq, uint32_t n_q, const uint8_t* q, uint32_t flags) {
        const uint32_t Hq = H * G;
        const size_t qh = size_t(d) * esize;
        std::vector<uint8_t> out(size_t(n_q) * Hq * qh, 0xff);
        std::vector<float> lse(size_t(n_q) * Hq, NAN);
        REQUIRE(commvq_cache_attend(full, layer, seq, n_q, q, out.data(), lse.data(), flags) == COMMVQ_OK);
        for (uint32_t r = 0; r < slice.size(); ++r) {
            const uint32_t h0 = r * count * G, nh = count * G;
            const auto qs = heads(q, n_q, Hq, h0, nh);
            std::vector<uint8_t> o(size_t(n_q) * nh * qh, 0xff);
            std::vector<float> l(size_t(n_q) * nh, NAN);
            REQUIRE(commvq_cache_attend(slice[r], layer, seq, n_q, qs.data(), o.data(), l.data(), flags) == COMMVQ_OK);
            compare(o, l, out, lse, n_q, h0, nh);
        }
    }

    void check_attend_batch(uint32_t layer, const std::vector<uint32_t>& ids, const uint8_t* q) {
        const uint32_t Hq = H * G, m = uint32_t(ids.size());
        const size_t qh = size_t(d) * esize;
        std::vector<uint8_t> out(size_t(m) * Hq * qh, 0xff);
        std::vector<float> lse(size_t(m) * Hq, NAN);
        REQUIRE(commvq_cache_attend_batch(full, layer, m, ids.data(), q, out.data(), lse.data(), 0) == COMMVQ_OK);
        for (uint32_t r = 0; r < slice.size(); ++r) {
            const uint32_t h0 = r * count * G, nh = count * G;
            const auto qs = heads(q, m, Hq, h0, nh);
            std::vector<uint8_t> o(size_t(m) * nh * qh, 0xff);
            std::vector<float> l(size_t(m) * nh, NAN);
            REQUIRE(commvq_cache_attend_batch(slice[r], layer, m, ids.data(), qs.data(), o.data(), l.data(), 0) ==
                    COMMVQ_OK);
            compare(o, l, out, lse, m, h0, nh);
        }
    }

    // Everything each slice holds against the full cache, bit for bit:
    // lengths, every compressed token's key codes and scales of its heads,
    // value codes and weight, every sink and window token's keys of its
    // heads and values.
    void check_contents() const {
        const Cache& f = full->cache;
        const Codebook& cb = f.codebook();
        const uint32_t R = cb.key_stages, bits = cb.code_bits();
        const BlockLayout& fl = f.layout();
        for (uint32_t r = 0; r < slice.size(); ++r) {
            const Cache& s = slice[r]->cache;
            const BlockLayout& sl = s.layout();
            CHECK(sl.value_code_bytes == fl.value_code_bytes);
            for (uint32_t seq = 0; seq < f.params().max_seqs; ++seq)
                for (uint32_t l = 0; l < L; ++l) {
                    const LayerView fv = f.sequence(seq).view(seq, l, f.params().sink_tokens);
                    const LayerView sv = s.sequence(seq).view(seq, l, s.params().sink_tokens);
                    REQUIRE(fv.length == sv.length);
                    REQUIRE(fv.compressed == sv.compressed);
                    std::vector<uint8_t> ft(fv.compressed * fl.token_bytes()), st(sv.compressed * sl.token_bytes());
                    f.backend().read_compressed(l, fv, 0, fv.compressed, ft.data());
                    s.backend().read_compressed(l, sv, 0, sv.compressed, st.data());
                    std::vector<uint16_t> fc(size_t(H) * R), sc(size_t(count) * R);
                    for (uint64_t t = 0; t < fv.compressed; ++t) {
                        const uint8_t* a = ft.data() + t * fl.token_bytes();
                        const uint8_t* b = st.data() + t * sl.token_bytes();
                        unpack_codes(a, fc.size(), bits, fc.data());
                        unpack_codes(b, sc.size(), bits, sc.data());
                        CHECK(std::memcmp(fc.data() + size_t(r) * count * R, sc.data(), sc.size() * 2) == 0);
                        a += fl.key_code_bytes;
                        b += sl.key_code_bytes;
                        CHECK(std::memcmp(a, b, fl.value_code_bytes) == 0);
                        a += fl.value_code_bytes;
                        b += sl.value_code_bytes;
                        const size_t own = token_mode ? 0 : size_t(r) * count;  // scales of its heads
                        CHECK(std::memcmp(a + 4 * own, b, 4 * size_t(sl.n_key_scales)) == 0);
                        CHECK(std::memcmp(a + 4 * fl.n_key_scales, b + 4 * sl.n_key_scales, 4) == 0);  // weight
                    }
                    const size_t n_unc = fv.sinks + fv.window;
                    const size_t kb_full = size_t(H) * d * esize, kb = size_t(count) * d * esize;
                    std::vector<uint8_t> fk(n_unc * kb_full), fvv(n_unc * kb_full), sk(n_unc * kb), svv(n_unc * kb_full);
                    f.backend().read_uncompressed(l, fv, 0, fv.sinks, fk.data(), fvv.data());
                    f.backend().read_uncompressed(l, fv, fv.first_window_position(), fv.window,
                                                  fk.data() + fv.sinks * kb_full, fvv.data() + fv.sinks * kb_full);
                    s.backend().read_uncompressed(l, sv, 0, sv.sinks, sk.data(), svv.data());
                    s.backend().read_uncompressed(l, sv, sv.first_window_position(), sv.window,
                                                  sk.data() + sv.sinks * kb, svv.data() + sv.sinks * kb_full);
                    CHECK(sk == heads(fk.data(), n_unc, H, r * count, count));
                    CHECK(svv == fvv);
                }
            CHECK_NOTHROW(s.check_integrity());
        }
    }
};

// The grid of the random cases: f(params, ranks) for every io dtype, key
// convention and rank count, the other parameters from `base`.
template <class F>
void for_each_random_case(const commvq_cache_params_t& base, F&& f) {
    for (int32_t dtype : {COMMVQ_DTYPE_F32, COMMVQ_DTYPE_BF16})
        for (int32_t conv : {COMMVQ_KEYS_PRE_ROPE, COMMVQ_KEYS_POST_ROPE})
            for (uint32_t ranks : {1u, 2u, 4u}) {
                CAPTURE(dtype);
                CAPTURE(conv);
                CAPTURE(ranks);
                commvq_cache_params_t p = base;
                p.io_dtype = dtype;
                p.key_convention = conv;
                f(p, ranks);
            }
}

// Prompts of two sequences, a fork, decode steps of three sequences with
// attend and attend_batch along the way (now and then several tokens per
// row); then everything compared.
inline void run_random(Ranks& t, uint64_t seed) {
    Rng rng(seed);
    const int32_t dt = t.dtype;
    const size_t D = size_t(t.H) * t.d, Q = size_t(t.H) * t.G * t.d;
    const uint32_t prompt[2] = {37, 5};
    for (uint32_t seq = 0; seq < 2; ++seq)
        for (uint32_t l = 0; l < t.L; ++l) {
            const auto k = io_tokens(rng, prompt[seq] * D, dt), v = io_tokens(rng, prompt[seq] * D, dt);
            t.append(l, {seq}, prompt[seq], k.data(), v.data());
        }
    REQUIRE(commvq_cache_seq_fork(t.full, 0, 2) == COMMVQ_OK);
    for (auto* c : t.slice) REQUIRE(commvq_cache_seq_fork(c, 0, 2) == COMMVQ_OK);
    const std::vector<uint32_t> ids = {2, 0, 1};
    for (uint32_t step = 0; step < 24; ++step)
        for (uint32_t l = 0; l < t.L; ++l) {
            const uint32_t n = step % 5 == 0 ? 3 : 1;
            const auto k = io_tokens(rng, ids.size() * n * D, dt);
            const auto v = io_tokens(rng, ids.size() * n * D, dt);
            t.append(l, ids, n, k.data(), v.data());
            const auto q = io_tokens(rng, ids.size() * Q, dt);
            t.check_attend_batch(l, ids, q.data());
            if (step % 6 == 5) {
                const auto qs = io_tokens(rng, 4 * Q, dt);
                t.check_attend(l, 0, 4, qs.data(), COMMVQ_ATTEND_CAUSAL);
                t.check_attend(l, 1, 4, qs.data(), COMMVQ_ATTEND_NON_CAUSAL);
            }
        }
    t.check_contents();
}

// A shipped codebook of the bytellama fixture (the 1-bit one unless named),
// through the C API.
inline commvq_codebook_t* fixture_codebook_handle(const char* file = "bytellama-13m-1bit.safetensors") {
    const std::vector<uint8_t> bytes =
        serialize_codebook(load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/" + file));
    commvq_codebook_t* h = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &h) == COMMVQ_OK);
    return h;
}

// Real keys and values: prompts of 90 and 20 tokens of the fixture's
// sequences at positions 0 and 500, 20 decode steps of both with
// attend_batch, causal prefill queries; then everything compared.
inline void run_fixture(Ranks& t) {
    const KvFixture& fx = kv_fixture();
    const size_t D = size_t(fx.n_kv_heads) * fx.head_dim, Q = size_t(fx.n_q_heads) * fx.head_dim;
    const uint32_t start[2] = {0, 500}, prompt[2] = {90, 20};
    for (uint32_t s = 0; s < 2; ++s)
        for (uint32_t l = 0; l < t.L; ++l)
            t.append(l, {s}, prompt[s], reinterpret_cast<const uint8_t*>(fx.key(l, start[s])),
                     reinterpret_cast<const uint8_t*>(fx.value(l, start[s])));
    const std::vector<uint32_t> ids = {1, 0};
    for (uint32_t step = 0; step < 20; ++step)
        for (uint32_t l = 0; l < t.L; ++l) {
            std::vector<float> k(ids.size() * D), v(k.size()), q(ids.size() * Q);
            for (size_t i = 0; i < ids.size(); ++i) {
                const uint32_t at = start[ids[i]] + prompt[ids[i]] + step;
                std::memcpy(k.data() + i * D, fx.key(l, at), D * 4);
                std::memcpy(v.data() + i * D, fx.value(l, at), D * 4);
                std::memcpy(q.data() + i * Q, fx.query(l, (step + uint32_t(i)) % fx.n_queries), Q * 4);
            }
            t.append(l, ids, 1, reinterpret_cast<const uint8_t*>(k.data()),
                     reinterpret_cast<const uint8_t*>(v.data()));
            t.check_attend_batch(l, ids, reinterpret_cast<const uint8_t*>(q.data()));
        }
    for (uint32_t l = 0; l < t.L; ++l)
        t.check_attend(l, 0, 8, reinterpret_cast<const uint8_t*>(fx.query(l, 0)), COMMVQ_ATTEND_CAUSAL);
    t.check_contents();
}

}  // namespace test
}  // namespace commvq
