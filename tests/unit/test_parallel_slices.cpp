// Tensor-parallel slice caches (kv_head_begin / kv_head_count,
// docs/PARALLEL.md): for every rank count that divides the KV heads, one
// cache per rank, fed its heads' keys, all heads' values and the all-gathered
// squared key norms (commvq_cache_key_norms2, commvq_cache_append_norms2),
// holds bit for bit what one cache of all heads holds for those heads (key
// codes, scales, value codes and weights, window and sink tokens) and
// attends bit for bit as it does (attend and attend_batch, outputs and lse
// of every query head); on random codebooks of 4 KV heads (token and head
// scale modes, f32 and bf16, pre- and post-RoPE keys, sinks, forks) and on
// the real fixture through the shipped codebook. Every refusal (bad ranges,
// missing or wrong norms, CUDA, sequence files) says why and changes nothing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cache_test_util.h"
#include "code_packing.h"
#include "codebook_file.h"
#include "fixture.h"

using namespace commvq;
using namespace commvq::test;

namespace {

commvq_codebook_t* handle_of(const Codebook& cb) {
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    commvq_codebook_t* h = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &h) == COMMVQ_OK);
    return h;
}

// One full cache and `ranks` slice caches of equal shares of the heads,
// driven alike; what an engine does, with the all-gather done here.
struct Ranks {
    commvq_cache_t* full = nullptr;
    std::vector<commvq_cache_t*> slice;
    uint32_t H, G, d, L, count;
    size_t esize;
    bool token_mode;

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

    // Attention of every cache: each slice's outputs must be the full
    // cache's for its query heads, bit for bit.
    void check_attend(uint32_t layer, uint32_t seq, uint32_t n_q, const uint8_t* q, uint32_t flags) const {
        const uint32_t Hq = H * G;
        const size_t qh = size_t(d) * esize;
        std::vector<uint8_t> out(size_t(n_q) * Hq * qh);
        std::vector<float> lse(size_t(n_q) * Hq);
        REQUIRE(commvq_cache_attend(full, layer, seq, n_q, q, out.data(), lse.data(), flags) == COMMVQ_OK);
        for (uint32_t r = 0; r < slice.size(); ++r) {
            const uint32_t h0 = r * count * G, nh = count * G;
            const auto qs = heads(q, n_q, Hq, h0, nh);
            std::vector<uint8_t> o(size_t(n_q) * nh * qh);
            std::vector<float> l(size_t(n_q) * nh);
            REQUIRE(commvq_cache_attend(slice[r], layer, seq, n_q, qs.data(), o.data(), l.data(), flags) == COMMVQ_OK);
            CHECK(o == heads(out.data(), n_q, Hq, h0, nh));
            for (uint32_t i = 0; i < n_q; ++i)
                CHECK(std::memcmp(l.data() + size_t(i) * nh, lse.data() + size_t(i) * Hq + h0, nh * 4) == 0);
        }
    }

    void check_attend_batch(uint32_t layer, const std::vector<uint32_t>& ids, const uint8_t* q) const {
        const uint32_t Hq = H * G, m = uint32_t(ids.size());
        const size_t qh = size_t(d) * esize;
        std::vector<uint8_t> out(size_t(m) * Hq * qh);
        std::vector<float> lse(size_t(m) * Hq);
        REQUIRE(commvq_cache_attend_batch(full, layer, m, ids.data(), q, out.data(), lse.data(), 0) == COMMVQ_OK);
        for (uint32_t r = 0; r < slice.size(); ++r) {
            const uint32_t h0 = r * count * G, nh = count * G;
            const auto qs = heads(q, m, Hq, h0, nh);
            std::vector<uint8_t> o(size_t(m) * nh * qh);
            std::vector<float> l(size_t(m) * nh);
            REQUIRE(commvq_cache_attend_batch(slice[r], layer, m, ids.data(), qs.data(), o.data(), l.data(), 0) ==
                    COMMVQ_OK);
            CHECK(o == heads(out.data(), m, Hq, h0, nh));
            for (uint32_t i = 0; i < m; ++i)
                CHECK(std::memcmp(l.data() + size_t(i) * nh, lse.data() + size_t(i) * Hq + h0, nh * 4) == 0);
        }
    }

    // Everything each slice holds against the full cache: lengths, every
    // compressed token's key codes and scales of its heads, value codes and
    // weight, every sink and window token's keys of its heads and values.
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

std::vector<uint8_t> io_tokens(Rng& rng, size_t n, int32_t dtype) {
    const std::vector<float> x = rng.normals(n);
    std::vector<uint8_t> b(n * dtype_size(dtype));
    from_float(x.data(), n, dtype, b.data());
    return b;
}

// Prompts of two sequences, a fork, decode steps of three sequences with
// attend and attend_batch along the way; then everything compared.
void run_random(commvq_codebook_t* cb, commvq_cache_params_t p, uint32_t ranks, uint64_t seed) {
    Ranks t(cb, p, ranks);
    Rng rng(seed);
    const size_t D = size_t(t.H) * t.d, Q = size_t(t.H) * t.G * t.d;
    const uint32_t prompt[2] = {37, 5};
    for (uint32_t seq = 0; seq < 2; ++seq)
        for (uint32_t l = 0; l < t.L; ++l) {
            const auto k = io_tokens(rng, prompt[seq] * D, p.io_dtype), v = io_tokens(rng, prompt[seq] * D, p.io_dtype);
            t.append(l, {seq}, prompt[seq], k.data(), v.data());
        }
    REQUIRE(commvq_cache_seq_fork(t.full, 0, 2) == COMMVQ_OK);
    for (auto* c : t.slice) REQUIRE(commvq_cache_seq_fork(c, 0, 2) == COMMVQ_OK);
    const std::vector<uint32_t> ids = {2, 0, 1};
    for (uint32_t step = 0; step < 24; ++step)
        for (uint32_t l = 0; l < t.L; ++l) {
            const uint32_t n = step % 5 == 0 ? 3 : 1;  // now and then several tokens per row
            const auto k = io_tokens(rng, ids.size() * n * D, p.io_dtype);
            const auto v = io_tokens(rng, ids.size() * n * D, p.io_dtype);
            t.append(l, ids, n, k.data(), v.data());
            const auto q = io_tokens(rng, ids.size() * Q, p.io_dtype);
            t.check_attend_batch(l, ids, q.data());
            if (step % 6 == 5) {
                const auto qs = io_tokens(rng, 4 * Q, p.io_dtype);
                t.check_attend(l, 0, 4, qs.data(), COMMVQ_ATTEND_CAUSAL);
                t.check_attend(l, 1, 4, qs.data(), COMMVQ_ATTEND_NON_CAUSAL);
            }
        }
    t.check_contents();
}

RandomCodebookSpec four_heads(int32_t scale_mode, uint64_t seed) {
    RandomCodebookSpec s;
    s.n_layers = 2;
    s.n_kv_heads = 4;
    s.n_q_heads = 8;
    s.head_dim = 32;
    s.scale_mode = scale_mode;
    s.seed = seed;
    return s;
}

commvq_cache_params_t slice_params() {
    commvq_cache_params_t p = small_params();
    p.max_seqs = 3;
    p.max_tokens = 512;
    p.block_tokens = 16;
    p.window = 8;
    p.sink_tokens = 2;
    p.n_threads = 2;
    return p;
}

}  // namespace

TEST_CASE("parallel slices: 1, 2 and 4 ranks of 4 KV heads reproduce one full cache bit for bit") {
    for (int32_t mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
        commvq_codebook_t* cb = codebook_handle(four_heads(mode, 7));
        for (int32_t dtype : {COMMVQ_DTYPE_F32, COMMVQ_DTYPE_BF16})
            for (int32_t conv : {COMMVQ_KEYS_PRE_ROPE, COMMVQ_KEYS_POST_ROPE})
                for (uint32_t ranks : {1u, 2u, 4u}) {
                    CAPTURE(mode);
                    CAPTURE(dtype);
                    CAPTURE(conv);
                    CAPTURE(ranks);
                    commvq_cache_params_t p = slice_params();
                    p.io_dtype = dtype;
                    p.key_convention = conv;
                    run_random(cb, p, ranks, 100 + ranks);
                }
        commvq_codebook_free(cb);
    }
}

TEST_CASE("parallel slices: window 0 and no sinks (every token encoded at its append)") {
    commvq_codebook_t* cb = codebook_handle(four_heads(COMMVQ_SCALE_TOKEN, 9));
    commvq_cache_params_t p = slice_params();
    p.window = 0;
    p.sink_tokens = 0;
    for (uint32_t ranks : {2u, 4u}) run_random(cb, p, ranks, 7);
    commvq_codebook_free(cb);
}

TEST_CASE("parallel slices: the bytellama fixture through the shipped 1-bit codebook, 1 and 2 ranks") {
    const KvFixture& fx = kv_fixture();
    commvq_codebook_t* cb =
        handle_of(load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/bytellama-13m-1bit.safetensors"));
    for (uint32_t ranks : {1u, 2u}) {
        CAPTURE(ranks);
        commvq_cache_params_t p = slice_params();
        p.max_tokens = 1024;
        p.window = 16;
        p.sink_tokens = 4;
        Ranks t(cb, p, ranks);
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
        CHECK(t.full->cache.sequence(0).layers[0].compressed == 90 + 20 - 4 - 16);
        // docs/PARALLEL.md's table: 73 bytes per compressed token and layer on
        // one GPU, 57 on each of 2 ranks.
        CHECK(t.full->cache.layout().token_bytes() == 73);
        for (auto* c : t.slice) CHECK(c->cache.layout().token_bytes() == (ranks == 1 ? 73u : 57u));
        t.check_contents();
    }
    commvq_codebook_free(cb);
}

TEST_CASE("parallel slices: bad ranges are refused at create, naming the sizes") {
    commvq_codebook_t* cb = codebook_handle(four_heads(COMMVQ_SCALE_TOKEN, 3));
    struct Bad {
        uint32_t begin, count;
    };
    for (const Bad& b : {Bad{0, 5}, Bad{3, 2}, Bad{4, 1}, Bad{1, 0}, Bad{0xffffffffu, 2}}) {
        commvq_cache_params_t p = slice_params();
        p.kv_head_begin = b.begin;
        p.kv_head_count = b.count;
        commvq_cache_t* c = nullptr;
        CHECK(commvq_cache_create(cb, &p, &c) == COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(c == nullptr);
        const std::string msg = commvq_last_error();
        CHECK(msg.find("commvq_cache_create") != std::string::npos);
        CHECK(msg.find("kv_head_count " + std::to_string(b.count)) != std::string::npos);
        CHECK(msg.find("4 KV heads") != std::string::npos);
    }
    // All heads spelled out is a full cache; so is a struct from before the
    // fields existed, whatever its padding holds.
    commvq_cache_params_t p = slice_params();
    p.kv_head_count = 4;
    commvq_cache_t* c = make_cache(cb, p);
    CHECK_FALSE(c->cache.codebook().is_slice());
    commvq_cache_destroy(c);
    p = slice_params();
    p.kv_head_begin = 3;  // in the old struct's padding
    p.struct_size = offsetof(commvq_cache_params_t, kv_head_count);
    c = make_cache(cb, p);
    CHECK(c->cache.codebook().n_kv_heads == 4);
    commvq_cache_destroy(c);
    // A slice on a CUDA device: refused, naming the call and the range.
    p = slice_params();
    p.device = 0;
    p.kv_head_begin = 2;
    p.kv_head_count = 2;
    CHECK(commvq_cache_create(cb, &p, &c) == COMMVQ_ERR_NOT_SUPPORTED);
    const std::string msg = commvq_last_error();
    CHECK(msg.find("commvq_cache_create") != std::string::npos);
    CHECK(msg.find("KV heads 2..3 of 4") != std::string::npos);
    commvq_codebook_free(cb);
}

TEST_CASE("parallel slices: appends without or with wrong norms, and sequence files, are refused unchanged") {
    commvq_codebook_t* cb = codebook_handle(four_heads(COMMVQ_SCALE_TOKEN, 5));
    commvq_cache_params_t p = slice_params();
    p.kv_head_begin = 2;
    p.kv_head_count = 2;
    commvq_cache_t* c = make_cache(cb, p);
    Rng rng(11);
    const uint32_t d = 32, n = 12;
    const auto k = io_tokens(rng, size_t(n) * 2 * d, COMMVQ_DTYPE_F32);
    const auto v = io_tokens(rng, size_t(n) * 4 * d, COMMVQ_DTYPE_F32);
    const auto k_other = io_tokens(rng, size_t(n) * 2 * d, COMMVQ_DTYPE_F32);
    const uint32_t seq = 0;
    std::vector<double> norms(4 * n);
    REQUIRE(commvq_cache_key_norms2(c, 0, 1, &seq, n, k.data(), norms.data() + 2 * n) == COMMVQ_OK);
    // Ranks 0's heads, as its cache would give them.
    {
        commvq_cache_params_t p0 = p;
        p0.kv_head_begin = 0;
        commvq_cache_t* c0 = make_cache(cb, p0);
        REQUIRE(commvq_cache_key_norms2(c0, 0, 1, &seq, n, k_other.data(), norms.data()) == COMMVQ_OK);
        commvq_cache_destroy(c0);
    }
    REQUIRE(commvq_cache_append_norms2(c, 0, 1, &seq, n, k.data(), v.data(), norms.data()) == COMMVQ_OK);

    // The token scale needs all heads: plain appends and a NULL are refused.
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(c, 1, 0, n, k.data(), v.data()));
    CHECK(std::string(commvq_last_error()).find("commvq_cache_append_norms2") != std::string::npos);
    CHECK(std::string(commvq_last_error()).find("KV heads 2..3 of 4") != std::string::npos);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_batch(c, 1, 1, &seq, n, k.data(), v.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_norms2(c, 1, 1, &seq, n, k.data(), v.data(), nullptr));
    // Norms of its own heads that are not what its keys give (another
    // token's, a row shifted), and values no norm can have.
    std::vector<double> wrong = norms;
    wrong[2 * n + 3] = std::nextafter(wrong[2 * n + 3], 1e300);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_norms2(c, 1, 1, &seq, n, k.data(), v.data(), wrong.data()));
    CHECK(std::string(commvq_last_error()).find("key_norms2 of head 2, row 3") != std::string::npos);
    for (double bad : {-1.0, double(NAN), double(INFINITY)}) {
        wrong = norms;
        wrong[n + 5] = bad;  // head 1: another rank's
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_append_norms2(c, 1, 1, &seq, n, k.data(), v.data(), wrong.data()));
        CHECK(std::string(commvq_last_error()).find("key_norms2 of head 1, row 5") != std::string::npos);
    }
    // Other refusals of the new calls.
    std::vector<double> out(2 * n);
    const uint32_t far = 9;
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_key_norms2(c, 0, 1, &far, n, k.data(), out.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_key_norms2(c, 2, 1, &seq, n, k.data(), out.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_key_norms2(c, 0, 1, &seq, 0, k.data(), out.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_key_norms2(c, 0, 1, &seq, n, k.data(), nullptr));
    std::vector<float> nan_k(size_t(n) * 2 * d, 0.5f);
    nan_k[40] = NAN;
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_key_norms2(c, 0, 1, &seq, n, nan_k.data(), out.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_norms2(c, 1, 0, &seq, n, k.data(), v.data(), norms.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_norms2(c, 1, 1, &seq, n, k.data(), nullptr, norms.data()));
    // Sequence files hold all heads.
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_NOT_SUPPORTED, commvq_cache_seq_save(c, 0, "/nonexistent/x.cvqs"));
    CHECK(std::string(commvq_last_error()).find("commvq_cache_seq_save") != std::string::npos);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_NOT_SUPPORTED, commvq_cache_seq_load(c, 1, "/nonexistent/x.cvqs"));
    commvq_cache_destroy(c);

    // A cache of all heads checks given norms too, and appends with them.
    commvq_cache_params_t pf = slice_params();
    commvq_cache_t* f = make_cache(cb, pf);
    const auto kf = io_tokens(rng, size_t(n) * 4 * d, COMMVQ_DTYPE_F32);
    std::vector<double> nf(4 * n);
    REQUIRE(commvq_cache_key_norms2(f, 0, 1, &seq, n, kf.data(), nf.data()) == COMMVQ_OK);
    nf[7] *= 2;
    CHECK_FAILS_UNCHANGED(f, COMMVQ_ERR_INVALID_ARGUMENT,
                          commvq_cache_append_norms2(f, 0, 1, &seq, n, kf.data(), v.data(), nf.data()));
    nf[7] /= 2;
    CHECK(commvq_cache_append_norms2(f, 0, 1, &seq, n, kf.data(), v.data(), nf.data()) == COMMVQ_OK);
    commvq_cache_destroy(f);
    commvq_codebook_free(cb);
}

TEST_CASE("parallel slices: a slice cache's statistics count its keys and all values") {
    commvq_codebook_t* cb = codebook_handle(four_heads(COMMVQ_SCALE_HEAD, 5));
    commvq_cache_params_t p = slice_params();
    commvq_cache_t* f = make_cache(cb, p);
    p.kv_head_begin = 1;
    p.kv_head_count = 1;
    commvq_cache_t* s = make_cache(cb, p);
    commvq_cache_stats_t a, b;
    commvq_cache_stats_init(&a);
    commvq_cache_stats_init(&b);
    REQUIRE(commvq_cache_get_stats(f, &a) == COMMVQ_OK);
    REQUIRE(commvq_cache_get_stats(s, &b) == COMMVQ_OK);
    const BlockLayout& fl = f->cache.layout();
    const BlockLayout& sl = s->cache.layout();
    // Keys: one head's codes and scale instead of four; values whole.
    CHECK(sl.value_code_bytes == fl.value_code_bytes);
    CHECK(sl.n_key_scales == 1);
    CHECK(sl.key_code_bytes == packed_bytes(size_t(1) * f->cache.codebook().key_stages, 12));
    CHECK(b.bytes_per_compressed_token == double(sl.token_bytes()) * 2);
    CHECK(b.bytes_per_token_16bit == double((1 + 4) * 32 * 2) * 2);
    commvq_cache_destroy(f);
    commvq_cache_destroy(s);
    commvq_codebook_free(cb);
}
