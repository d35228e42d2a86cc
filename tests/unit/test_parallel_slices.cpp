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
// missing or wrong norms, sequence files) says why and changes nothing.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cache_test_util.h"
#include "code_packing.h"
#include "codebook_file.h"
#include "fixture.h"
#include "parallel_ranks.h"

using namespace commvq;
using namespace commvq::test;

namespace {

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
        CAPTURE(mode);
        for_each_random_case(slice_params(), [&](const commvq_cache_params_t& p, uint32_t ranks) {
            Ranks t(cb, p, ranks);
            run_random(t, 100 + ranks);
        });
        commvq_codebook_free(cb);
    }
}

TEST_CASE("parallel slices: window 0 and no sinks (every token encoded at its append)") {
    commvq_codebook_t* cb = codebook_handle(four_heads(COMMVQ_SCALE_TOKEN, 9));
    commvq_cache_params_t p = slice_params();
    p.window = 0;
    p.sink_tokens = 0;
    for (uint32_t ranks : {2u, 4u}) {
        Ranks t(cb, p, ranks);
        run_random(t, 7);
    }
    commvq_codebook_free(cb);
}

TEST_CASE("parallel slices: the bytellama fixture through the shipped 1-bit codebook, 1 and 2 ranks") {
    commvq_codebook_t* cb = fixture_codebook_handle();
    for (uint32_t ranks : {1u, 2u}) {
        CAPTURE(ranks);
        commvq_cache_params_t p = slice_params();
        p.max_tokens = 1024;
        p.window = 16;
        p.sink_tokens = 4;
        Ranks t(cb, p, ranks);
        run_fixture(t);
        CHECK(t.full->cache.sequence(0).layers[0].compressed == 90 + 20 - 4 - 16);
        // docs/PARALLEL.md's table: 73 bytes per compressed token and layer on
        // one GPU, 57 on each of 2 ranks.
        CHECK(t.full->cache.layout().token_bytes() == 73);
        for (auto* c : t.slice) CHECK(c->cache.layout().token_bytes() == (ranks == 1 ? 73u : 57u));
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
    // A slice on a CUDA device is a CUDA cache like any other (the GPU test
    // tests/gpu/parallel_slices_test.cpp); where no device can run it, it is
    // refused as a cache of all heads would be, naming the call.
    if (commvq_cuda_available() != 1) {
        p = slice_params();
        p.device = 0;
        p.kv_head_begin = 2;
        p.kv_head_count = 2;
        CHECK(commvq_cache_create(cb, &p, &c) == COMMVQ_ERR_NOT_SUPPORTED);
        CHECK(std::string(commvq_last_error()).find("commvq_cache_create") != std::string::npos);
    }
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
