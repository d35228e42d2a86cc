// Every bad input of the C API: the status it returns, a message, and a
// cache left exactly as it was (statistics, block tables, reference counts
// and the bits of an attention of every layer: cache_test_util.h).
#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>

#include "cache_test_util.h"

using namespace commvq;
using namespace commvq::test;

namespace {

bool message_names(const char* what) { return std::string(commvq_last_error()).find(what) != std::string::npos; }

// A cache with tokens in two sequences, one of them forked (shared blocks).
struct Populated {
    commvq_codebook_t* cb;
    commvq_cache_t* c;
    size_t D, row;
    std::vector<float> kv, q, out;
    Populated() {
        cb = codebook_handle(small_spec(2));
        c = make_cache(cb, small_params());
        append_tokens(c, 0, 40, 1);
        REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
        append_tokens(c, 1, 3, 2);
        D = c->cache.codebook().value_dim();
        row = size_t(c->cache.codebook().n_q_heads) * c->cache.codebook().head_dim;
        kv.assign(4 * D, 0.5f);
        q.assign(4 * row, 0.25f);
        out.assign(4 * row, 0.0f);
    }
    ~Populated() {
        commvq_cache_destroy(c);
        commvq_codebook_free(cb);
    }
};

}  // namespace

// A NULL argument: INVALID_ARGUMENT, a message naming it, and the cache `c`
// in scope unchanged.
#define CHECK_NULL(call, name)                                             \
    do {                                                                   \
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, call);       \
        CHECK_MESSAGE(message_names(name), commvq_last_error());           \
    } while (0)

TEST_CASE("C API errors: NULL pointers to cache functions are refused with a message naming the argument") {
    Populated p;
    commvq_cache_t* c = p.c;
    const float* kv = p.kv.data();
    float* out = p.out.data();
    const float* q = p.q.data();
    const uint32_t ids[1] = {0};
    uint64_t len = 0;
    commvq_cache_stats_t st;
    commvq_cache_stats_init(&st);
    CHECK_NULL(commvq_cache_append(nullptr, 0, 0, 1, kv, kv), "cache");
    CHECK_NULL(commvq_cache_append(c, 0, 0, 1, nullptr, kv), "k is NULL");
    CHECK_NULL(commvq_cache_append(c, 0, 0, 1, kv, nullptr), "v is NULL");
    CHECK_NULL(commvq_cache_attend(nullptr, 0, 0, 1, q, out, nullptr, 0), "cache");
    CHECK_NULL(commvq_cache_attend(c, 0, 0, 1, nullptr, out, nullptr, 0), "q is NULL");
    CHECK_NULL(commvq_cache_attend(c, 0, 0, 1, q, nullptr, nullptr, 0), "out is NULL");
    CHECK_NULL(commvq_cache_attend_batch(nullptr, 0, 1, ids, q, out, nullptr, 0), "cache");
    CHECK_NULL(commvq_cache_attend_batch(c, 0, 1, nullptr, q, out, nullptr, 0), "seq_ids");
    CHECK_NULL(commvq_cache_attend_batch(c, 0, 1, ids, nullptr, out, nullptr, 0), "q is NULL");
    CHECK_NULL(commvq_cache_attend_batch(c, 0, 1, ids, q, nullptr, nullptr, 0), "out is NULL");
    CHECK_NULL(commvq_cache_seq_length(nullptr, 0, &len), "cache");
    CHECK_NULL(commvq_cache_seq_length(c, 0, nullptr), "length");
    CHECK_NULL(commvq_cache_seq_clear(nullptr, 0), "cache");
    CHECK_NULL(commvq_cache_seq_truncate(nullptr, 0, 0), "cache");
    CHECK_NULL(commvq_cache_seq_fork(nullptr, 0, 2), "cache");
    CHECK_NULL(commvq_cache_get_stats(nullptr, &st), "cache");
    CHECK_NULL(commvq_cache_get_stats(c, nullptr), "stats");
    CHECK_NULL(commvq_cache_seq_save(nullptr, 0, "x.cvqseq"), "cache");
    CHECK_NULL(commvq_cache_seq_save(c, 0, nullptr), "path");
    CHECK_NULL(commvq_cache_seq_load(nullptr, 2, "x.cvqseq"), "cache");
    CHECK_NULL(commvq_cache_seq_load(c, 2, nullptr), "path");
    CHECK_NULL(commvq_cache_set_stream(nullptr, nullptr), "cache");
    CHECK_NULL(commvq_cache_synchronize(nullptr), "cache");
}

TEST_CASE("C API errors: NULL pointers to codebook functions and cache_create") {
    Populated p;
    commvq_cache_t* c = p.c;
    const float* kv = p.kv.data();
    commvq_codebook_t* cb_out = reinterpret_cast<commvq_codebook_t*>(0x1);
    commvq_cache_t* cache_out = reinterpret_cast<commvq_cache_t*>(0x1);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    commvq_cache_params_t params = small_params();
    CHECK_NULL(commvq_codebook_load(nullptr, &cb_out), "path");
    CHECK_NULL(commvq_codebook_load("x.safetensors", nullptr), "out");
    CHECK_NULL(commvq_codebook_load_memory(nullptr, 10, &cb_out), "data");
    CHECK_NULL(commvq_codebook_load_memory(kv, 10, nullptr), "out");
    CHECK_NULL(commvq_codebook_save(nullptr, "x.safetensors"), "cb");
    CHECK_NULL(commvq_codebook_save(p.cb, nullptr), "path");
    CHECK_NULL(commvq_codebook_get_info(nullptr, &info), "cb");
    CHECK_NULL(commvq_codebook_get_info(p.cb, nullptr), "info");
    CHECK_NULL(commvq_cache_create(nullptr, &params, &cache_out), "cb");
    CHECK_NULL(commvq_cache_create(p.cb, nullptr, &cache_out), "params");
    CHECK_NULL(commvq_cache_create(p.cb, &params, nullptr), "out");
    CHECK(cb_out == reinterpret_cast<commvq_codebook_t*>(0x1));
    CHECK(cache_out == reinterpret_cast<commvq_cache_t*>(0x1));
}

TEST_CASE("C API errors: bad layer, sequence, counts, positions and flags") {
    Populated p;
    commvq_cache_t* c = p.c;
    const float* kv = p.kv.data();
    float* out = p.out.data();
    const float* q = p.q.data();
    float lse[16];
    uint64_t len = 12345;

    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append(c, 2, 0, 1, kv, kv));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append(c, 0, 4, 1, kv, kv));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(c, 0, 0, 0, kv, kv));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend(c, 7, 0, 1, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend(c, 0, 9, 1, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_attend(c, 0, 0, 0, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_attend(c, 0, 0, 1, q, out, lse, 2u));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_attend(c, 0, 0, 1, q, out, lse, 0xFFFFFFFFu));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend(c, 0, 2, 1, q, out, lse, 0));  // empty
    {
        // More causal queries than tokens: the first would sit before position 0.
        Populated small;
        commvq_cache_t* s = small.c;
        REQUIRE(commvq_cache_seq_truncate(s, 0, 3) == COMMVQ_OK);
        CHECK_FAILS_UNCHANGED(s, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend(s, 0, 0, 4, q, out, lse, 0));
        CHECK(commvq_cache_attend(s, 0, 0, 4, q, out, lse, COMMVQ_ATTEND_NON_CAUSAL) == COMMVQ_OK);
    }

    const uint32_t bad_seq[3] = {0, 4, 1};
    const uint32_t empty_seq[2] = {1, 3};
    const uint32_t good[2] = {0, 1};
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend_batch(c, 0, 3, bad_seq, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend_batch(c, 0, 2, empty_seq, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_attend_batch(c, 0, 0, good, q, out, lse, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_attend_batch(c, 0, 2, good, q, out, lse, 4u));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_attend_batch(c, 2, 2, good, q, out, lse, 0));

    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_length(c, 4, &len));
    CHECK(len == 12345);  // out-parameter untouched on failure
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_clear(c, 4));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_truncate(c, 4, 0));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_truncate(c, 0, 41));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_fork(c, 4, 2));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_fork(c, 0, 4));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_seq_fork(c, 2, 2));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_seq_fork(c, 0, 1));  // dst not empty
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_save(c, 4, "x.cvqseq"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_seq_load(c, 4, "x.cvqseq"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_NOT_SUPPORTED, commvq_cache_set_stream(c, nullptr));

    commvq_cache_stats_t st;
    commvq_cache_stats_init(&st);
    st.struct_size = 0;
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_get_stats(c, &st));
    CHECK(st.tokens == 0);
}

TEST_CASE("C API errors: non-finite keys or values are refused") {
    Populated p;
    commvq_cache_t* c = p.c;
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
        std::vector<float> k = p.kv, v = p.kv;
        k[p.D + 5] = bad;  // token 1
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(c, 0, 0, 2, k.data(), v.data()));
        CHECK(message_names("token 1"));
        std::swap(k, v);
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(c, 0, 0, 2, k.data(), v.data()));
    }
    // The same for 16-bit input: an f16 NaN.
    commvq_cache_params_t pf = small_params();
    pf.io_dtype = COMMVQ_DTYPE_F16;
    commvq_cache_t* h = make_cache(p.cb, pf);
    std::vector<uint16_t> k16(p.D, 0x3c00), v16(p.D, 0x7e00);
    CHECK_FAILS_UNCHANGED(h, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(h, 0, 0, 1, k16.data(), v16.data()));
    commvq_cache_destroy(h);
}

TEST_CASE("C API errors: cache_create refuses bad parameters and leaves *out alone") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    struct Bad {
        const char* what;
        commvq_status_t status;
        void (*edit)(commvq_cache_params_t&);
    };
    const Bad bad[] = {
        {"struct_size 0", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.struct_size = 0; }},
        {"io_dtype 3", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.io_dtype = 3; }},
        {"io_dtype -1", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.io_dtype = -1; }},
        {"key_convention 2", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.key_convention = 2; }},
        {"block_tokens 0", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.block_tokens = 0; }},
        {"block_tokens 2^20", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.block_tokens = 1u << 20; }},
        {"max_seqs 0", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.max_seqs = 0; }},
        {"attn_scale NaN", COMMVQ_ERR_INVALID_ARGUMENT,
         [](commvq_cache_params_t& p) { p.attn_scale = std::numeric_limits<float>::quiet_NaN(); }},
        {"attn_scale inf", COMMVQ_ERR_INVALID_ARGUMENT,
         [](commvq_cache_params_t& p) { p.attn_scale = std::numeric_limits<float>::infinity(); }},
        {"attn_scale -1", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.attn_scale = -1; }},
        {"device -2", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.device = -2; }},
        {"n_threads 100000", COMMVQ_ERR_INVALID_ARGUMENT, [](commvq_cache_params_t& p) { p.n_threads = 100000; }},
        {"max_tokens 2^63 in 1-token blocks", COMMVQ_ERR_INVALID_ARGUMENT,
         [](commvq_cache_params_t& p) {
             p.max_tokens = uint64_t(1) << 63;
             p.block_tokens = 1;
         }},
        {"windows beyond the address space", COMMVQ_ERR_OUT_OF_MEMORY,
         [](commvq_cache_params_t& p) {
             p.max_seqs = 0xFFFFFFFFu;
             p.window = 0xFFFFFFFFu;
         }},
    };
    for (const Bad& b : bad) {
        INFO(b.what);
        commvq_cache_params_t p = small_params();
        b.edit(p);
        commvq_cache_t* out = reinterpret_cast<commvq_cache_t*>(0x1);
        commvq::capi::set_last_error("", "");
        CHECK(commvq_cache_create(cb, &p, &out) == b.status);
        CHECK(std::strlen(commvq_last_error()) > 0);
        CHECK(out == reinterpret_cast<commvq_cache_t*>(0x1));
    }
    if (!commvq_cuda_available()) {
        commvq_cache_params_t p = small_params();
        p.device = 0;
        commvq_cache_t* out = nullptr;
        CHECK(commvq_cache_create(cb, &p, &out) == COMMVQ_ERR_NOT_SUPPORTED);
        CHECK(message_names("without CUDA"));
        CHECK(out == nullptr);
    }
    commvq_codebook_free(cb);
}

TEST_CASE("C API errors: codebook loading failures leave *out alone") {
    commvq_codebook_t* out = reinterpret_cast<commvq_codebook_t*>(0x1);
    CHECK(commvq_codebook_load("/nonexistent/dir/codebook.safetensors", &out) == COMMVQ_ERR_IO);
    CHECK(std::strlen(commvq_last_error()) > 0);
    const char garbage[] = "this is not a safetensors file at all";
    CHECK(commvq_codebook_load_memory(garbage, sizeof garbage, &out) != COMMVQ_OK);
    CHECK(std::strlen(commvq_last_error()) > 0);
    CHECK(out == reinterpret_cast<commvq_codebook_t*>(0x1));
}
