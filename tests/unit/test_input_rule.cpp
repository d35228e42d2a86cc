// The one rule for the numbers a caller passes (src/input_check.h,
// docs/API.md): NaN, infinities and magnitudes beyond 1e12 are refused in
// append keys and values, attend and attend_batch queries, encode_keys and
// reconstruct inputs, with INVALID_ARGUMENT, a message naming the call, the
// row and the element, and nothing changed or written; attn_scale must lie
// in 0..1e6. Inputs at the bound give finite outputs.
#include <doctest/doctest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <string>

#include "cache_test_util.h"
#include "input_check.h"

using namespace commvq;
using namespace commvq::test;

namespace {

bool message_names(const std::string& what) {
    return std::string(commvq_last_error()).find(what) != std::string::npos;
}

const float kBad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity(), FLT_MAX, -1.5e12f};

struct Cache2 {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c;
    size_t D, row;
    explicit Cache2(const commvq_cache_params_t& p = small_params()) {
        c = make_cache(cb, p);
        D = c->cache.codebook().value_dim();
        row = size_t(c->cache.codebook().n_q_heads) * c->cache.codebook().head_dim;
    }
    ~Cache2() {
        commvq_cache_destroy(c);
        commvq_codebook_free(cb);
    }
};

}  // namespace

TEST_CASE("input rule: append refuses NaN, Inf and huge keys or values, naming token and element") {
    Cache2 t;
    append_tokens(t.c, 0, 30, 1);
    for (float bad : kBad) {
        CAPTURE(bad);
        for (const char* which : {"k", "v"}) {
            std::vector<float> k(3 * t.D, 0.5f), v(3 * t.D, 0.5f);
            (which[0] == 'k' ? k : v)[2 * t.D + 7] = bad;  // token 2, element 7
            CHECK_FAILS_UNCHANGED(t.c, COMMVQ_ERR_INVALID_ARGUMENT,
                                  commvq_cache_append(t.c, 0, 0, 3, k.data(), v.data()));
            CHECK_MESSAGE(message_names(std::string("commvq_cache_append: ") + which + " of token 2, element 7"),
                          commvq_last_error());
        }
    }
    // bf16 reaches float32's range: its huge values are refused too; f16
    // cannot exceed the bound, its Inf is refused.
    commvq_cache_params_t pb = small_params();
    pb.io_dtype = COMMVQ_DTYPE_BF16;
    Cache2 b(pb);
    std::vector<uint16_t> k16(b.D, float_to_bf16(0.5f)), v16(b.D, float_to_bf16(0.5f));
    k16[3] = float_to_bf16(1e20f);
    CHECK_FAILS_UNCHANGED(b.c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(b.c, 0, 0, 1, k16.data(), v16.data()));
    CHECK(message_names("k of token 0, element 3"));
    commvq_cache_params_t ph = small_params();
    ph.io_dtype = COMMVQ_DTYPE_F16;
    Cache2 h(ph);
    std::vector<uint16_t> kh(h.D, float_to_half(65504.0f)), vh(h.D, 0x7c00);
    CHECK_FAILS_UNCHANGED(h.c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append(h.c, 0, 0, 1, kh.data(), vh.data()));
    CHECK(message_names("v of token 0, element 0"));
}

TEST_CASE("input rule: attend and attend_batch refuse NaN, Inf and huge queries, naming query and element") {
    Cache2 t;
    append_tokens(t.c, 0, 30, 1);
    append_tokens(t.c, 1, 12, 2);
    const uint32_t ids[2] = {1, 0};
    for (float bad : kBad) {
        CAPTURE(bad);
        std::vector<float> q(2 * t.row, 0.25f), out(2 * t.row, 7.0f), lse(2 * 4, 7.0f);
        q[t.row + 9] = bad;
        CHECK_FAILS_UNCHANGED(t.c, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_attend(t.c, 0, 0, 2, q.data(), out.data(), lse.data(), 0));
        CHECK_MESSAGE(message_names("commvq_cache_attend: q of query 1, element 9"), commvq_last_error());
        CHECK_FAILS_UNCHANGED(t.c, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_attend_batch(t.c, 1, 2, ids, q.data(), out.data(), lse.data(), 0));
        CHECK_MESSAGE(message_names("commvq_cache_attend_batch: q of entry 1, element 9"), commvq_last_error());
        CHECK(out == std::vector<float>(2 * t.row, 7.0f));  // nothing written
        CHECK(lse == std::vector<float>(8, 7.0f));
    }
}

TEST_CASE("input rule: attn_scale must be finite and within 0..1e6") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    for (float scale : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), FLT_MAX,
                        1.0001e6f, -0.5f}) {
        CAPTURE(scale);
        commvq_cache_params_t p = small_params();
        p.attn_scale = scale;
        commvq_cache_t* c = reinterpret_cast<commvq_cache_t*>(&p);  // must stay untouched
        CHECK(commvq_cache_create(cb, &p, &c) == COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(c == reinterpret_cast<commvq_cache_t*>(&p));
        CHECK_MESSAGE(message_names("commvq_cache_create: attn_scale"), commvq_last_error());
    }
    commvq_codebook_free(cb);
}

TEST_CASE("input rule: inputs at the bound and attn_scale 1e6 give finite outputs") {
    commvq_cache_params_t p = small_params();
    p.attn_scale = 1e6f;
    Cache2 t(p);
    for (uint32_t l = 0; l < 2; ++l) {
        // 20 tokens: some compressed (window 8), some in the window; signs
        // alternate so scores span both extremes.
        std::vector<float> k(20 * t.D), v(20 * t.D);
        for (size_t i = 0; i < k.size(); ++i) {
            k[i] = float((i % 3 ? 1 : -1) * kMaxInputMagnitude);
            v[i] = float((i % 5 ? -1 : 1) * kMaxInputMagnitude);
        }
        REQUIRE(commvq_cache_append(t.c, l, 0, 20, k.data(), v.data()) == COMMVQ_OK);
    }
    std::vector<float> q(2 * t.row);
    for (size_t i = 0; i < q.size(); ++i) q[i] = float((i % 7 ? 1 : -1) * kMaxInputMagnitude);
    std::vector<float> out(2 * t.row), lse(8);
    REQUIRE(commvq_cache_attend(t.c, 1, 0, 2, q.data(), out.data(), lse.data(), 0) == COMMVQ_OK);
    for (float x : out) CHECK(std::isfinite(x));
    for (float x : lse) CHECK(std::isfinite(x));
}

TEST_CASE("input rule: encode_keys and reconstruct refuse what append refuses, outputs untouched") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    const Codebook& c = cb->cb;
    const size_t D = c.value_dim();
    for (float bad : kBad) {
        CAPTURE(bad);
        std::vector<float> k(2 * D, 0.5f), v(2 * D, 0.5f);
        k[D + 4] = bad;
        std::vector<uint16_t> codes(2 * c.n_kv_heads * c.key_stages, 0xabcd);
        std::vector<float> scales(2 * c.n_key_scales(), 3.0f), k_out(2 * D, 3.0f), v_out(2 * D, 3.0f);
        CHECK(commvq_codebook_encode_keys(cb, 1, 2, k.data(), codes.data(), scales.data()) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK_MESSAGE(message_names("commvq_codebook_encode_keys: k of token 1, element 4"), commvq_last_error());
        CHECK(codes == std::vector<uint16_t>(codes.size(), 0xabcd));
        CHECK(scales == std::vector<float>(scales.size(), 3.0f));
        CHECK(commvq_codebook_reconstruct(cb, 1, 2, k.data(), v.data(), k_out.data(), v_out.data()) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK_MESSAGE(message_names("commvq_codebook_reconstruct: k of token 1, element 4"), commvq_last_error());
        CHECK(commvq_codebook_reconstruct(cb, 1, 2, nullptr, k.data(), nullptr, v_out.data()) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK_MESSAGE(message_names("commvq_codebook_reconstruct: v of token 1, element 4"), commvq_last_error());
        CHECK(k_out == std::vector<float>(k_out.size(), 3.0f));
        CHECK(v_out == std::vector<float>(v_out.size(), 3.0f));
    }
    commvq_codebook_free(cb);
}

TEST_CASE("input rule: commvq_train refuses what append refuses, naming layer, token and element") {
    const uint32_t layers = 2, heads = 1, dim = 16, n = 32;
    commvq_train_params_t p;
    commvq_train_params_init(&p);
    p.sub_centers = 4;
    p.key_max_steps = 1;
    p.value_steps = 1;
    p.n_threads = 1;
    for (float bad : kBad) {
        CAPTURE(bad);
        for (const char* which : {"keys", "values"}) {
            std::vector<float> k(size_t(layers) * n * heads * dim, 0.5f), v = k;
            (which[0] == 'k' ? k : v)[(size_t(1) * n + 3) * dim + 5] = bad;  // layer 1, token 3, element 5
            commvq_codebook_t* out = nullptr;
            CHECK(commvq_train(&p, layers, heads, dim, n, k.data(), v.data(), &out) == COMMVQ_ERR_INVALID_ARGUMENT);
            CHECK(out == nullptr);
            CHECK_MESSAGE(message_names(std::string("commvq_train: ") + which + " of layer 1, token 3, element 5"),
                          commvq_last_error());
        }
    }
}
