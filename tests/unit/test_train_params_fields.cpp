// The fields at the end of commvq_train_params_t: value_hidden, model_name
// and value_weights; callers built against the older, shorter struct.
#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "codebook.h"
#include "codebook_file.h"
#include "commvq/commvq.h"
#include "random_codebook.h"
#include "safetensors.h"
#include "value_encoder.h"

using namespace commvq;

namespace {

constexpr uint32_t kLayers = 2, kHeads = 1, kDim = 16;

// Values [kLayers][n][1][16]: tokens of the first half lie near one set of
// directions, those of the second half near another (keys: noise).
struct Data {
    uint64_t n;
    std::vector<float> keys, values;
};

Data two_groups(uint64_t n, uint64_t seed) {
    test::Rng basis_rng(77);
    const std::vector<float> basis = basis_rng.normals(size_t(2) * 3 * kDim);
    test::Rng rng(seed);
    Data d{n, rng.normals(size_t(kLayers) * n * kDim), std::vector<float>(size_t(kLayers) * n * kDim)};
    for (uint32_t l = 0; l < kLayers; ++l)
        for (uint64_t t = 0; t < n; ++t) {
            float* x = d.values.data() + (size_t(l) * n + t) * kDim;
            const size_t group = t < n / 2 ? 0 : 1;
            for (uint32_t k = 0; k < kDim; ++k) x[k] = float(0.02 * rng.normal());
            for (int r = 0; r < 3; ++r) {
                const double a = rng.normal() / (r + 1);
                for (uint32_t k = 0; k < kDim; ++k) x[k] += float(a * basis[(group * 3 + r) * kDim + k]);
            }
        }
    return d;
}

commvq_train_params_t tiny_params() {
    commvq_train_params_t p;
    commvq_train_params_init(&p);
    p.sub_centers = 4;
    p.key_stages = 1;
    p.key_max_steps = 3;
    p.value_steps = 300;
    p.value_batch = 32;
    p.n_threads = 2;
    return p;
}

// Value MSE of layer l's codebook on tokens [begin, end) of d.
double value_mse(const Codebook& cb, const Data& d, uint32_t l, uint64_t begin, uint64_t end) {
    ValueEncoder enc(cb, l);
    std::vector<float> scratch(enc.scratch_floats()), v_hat(kDim);
    std::vector<uint8_t> bits(cb.value_code_bits() / 8);
    double err = 0;
    for (uint64_t t = begin; t < end; ++t) {
        const float* v = d.values.data() + (size_t(l) * d.n + t) * kDim;
        float w = 0;
        enc.encode(v, bits.data(), &w, scratch.data());
        enc.decode(bits.data(), w, v_hat.data());
        for (uint32_t c = 0; c < kDim; ++c) err += (double(v_hat[c]) - v[c]) * (double(v_hat[c]) - v[c]);
    }
    return err / (double(end - begin) * kDim);
}

}  // namespace

TEST_CASE("C API: train params: value_hidden, model_name and value_weights default to none") {
    commvq_train_params_t p;
    std::memset(&p, 0xab, sizeof p);
    commvq_train_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    CHECK(p.value_hidden == 0);
    CHECK(p.model_name == nullptr);
    CHECK(p.value_weights == nullptr);
    // The new fields come after every older one.
    CHECK(offsetof(commvq_train_params_t, value_hidden) >= offsetof(commvq_train_params_t, progress_user) + sizeof(void*));
    CHECK(offsetof(commvq_train_params_t, model_name) > offsetof(commvq_train_params_t, value_hidden));
    CHECK(offsetof(commvq_train_params_t, value_weights) > offsetof(commvq_train_params_t, model_name));
}

TEST_CASE("C API: train params: value_hidden and model_name reach the codebook and its file") {
    const Data d = two_groups(200, 1);
    commvq_train_params_t p = tiny_params();
    p.value_hidden = 12;
    p.model_name = "tiny-model \xc3\xa9";  // UTF-8
    commvq_codebook_t* cb = nullptr;
    REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &cb) == COMMVQ_OK);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(info.value_hidden == 12);
    CHECK(cb->cb.layers[0].values.enc1_weight.size() == size_t(12) * kDim);
    const std::vector<uint8_t> bytes = serialize_codebook(cb->cb);
    const safetensors::File f = safetensors::parse(bytes.data(), bytes.size());
    CHECK(f.metadata.at("model") == "tiny-model \xc3\xa9");
    CHECK(f.metadata.at("value_hidden") == "12");
    commvq_codebook_free(cb);

    // 0 keeps the standard width min(4096, 4n), n = 16 * 1 / 2.
    p.value_hidden = 0;
    p.model_name = nullptr;
    REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &cb) == COMMVQ_OK);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(info.value_hidden == 32);
    CHECK(cb->cb.model_name.empty());
    commvq_codebook_free(cb);
}

TEST_CASE("C API: train params: a caller's older, shorter struct gets the new fields' defaults") {
    const Data d = two_groups(120, 2);
    commvq_train_params_t p = tiny_params();
    // Garbage where the old struct ends: the library must not read it.
    p.value_hidden = 99999999;
    p.model_name = reinterpret_cast<const char*>(0x1);
    p.value_weights = reinterpret_cast<const float*>(0x1);
    p.struct_size = uint32_t(offsetof(commvq_train_params_t, value_hidden));
    commvq_codebook_t* old_caller = nullptr;
    REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &old_caller) == COMMVQ_OK);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    REQUIRE(commvq_codebook_get_info(old_caller, &info) == COMMVQ_OK);
    CHECK(info.value_hidden == 32);
    CHECK(old_caller->cb.model_name.empty());

    // The same as a current caller that leaves the new fields at their defaults.
    commvq_train_params_t q = tiny_params();
    commvq_codebook_t* current = nullptr;
    REQUIRE(commvq_train(&q, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &current) == COMMVQ_OK);
    commvq_codebook_info_t info2;
    commvq_codebook_info_init(&info2);
    REQUIRE(commvq_codebook_get_info(current, &info2) == COMMVQ_OK);
    CHECK(info.fingerprint == info2.fingerprint);
    commvq_codebook_free(old_caller);
    commvq_codebook_free(current);
}

TEST_CASE("C API: train params: value_weights steer the value codebook; bad weights are refused") {
    const Data d = two_groups(400, 3);
    const uint64_t half = d.n / 2;
    commvq_train_params_t p = tiny_params();
    auto train = [&](const float* weights) {
        p.value_weights = weights;
        commvq_codebook_t* cb = nullptr;
        REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &cb) == COMMVQ_OK);
        Codebook out = cb->cb;
        commvq_codebook_free(cb);
        return out;
    };
    std::vector<float> ones(size_t(kLayers) * d.n, 1.0f), first(ones.size(), 0.0f), second(ones.size(), 0.0f);
    for (uint32_t l = 0; l < kLayers; ++l)
        for (uint64_t t = 0; t < d.n; ++t) (t < half ? first : second)[size_t(l) * d.n + t] = 1.0f;

    const Codebook unweighted = train(nullptr);
    // Weights of 1 are the unweighted loss, bit for bit.
    CHECK(train(ones.data()).fingerprint == unweighted.fingerprint);
    // Only the first (second) group's error counts: the codebook fits that group better.
    const Codebook fit_first = train(first.data()), fit_second = train(second.data());
    CHECK(fit_first.fingerprint != unweighted.fingerprint);
    for (uint32_t l = 0; l < kLayers; ++l) {
        const double a1 = value_mse(fit_first, d, l, 0, half), a2 = value_mse(fit_first, d, l, half, d.n);
        const double b1 = value_mse(fit_second, d, l, 0, half), b2 = value_mse(fit_second, d, l, half, d.n);
        INFO("layer " << l << ": trained on group 1: " << a1 << " / " << a2 << "; on group 2: " << b1 << " / " << b2);
        CHECK(a1 < b1);
        CHECK(b2 < a2);
    }

    // Negative, NaN or infinite weights: INVALID_ARGUMENT naming the element, nothing returned.
    for (const float bad : {-1.0f, NAN, INFINITY, -0.001f}) {
        std::vector<float> w = ones;
        w[size_t(1) * d.n + 17] = bad;
        p.value_weights = w.data();
        commvq_codebook_t* out = reinterpret_cast<commvq_codebook_t*>(0x1);
        CHECK(commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &out) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(out == reinterpret_cast<commvq_codebook_t*>(0x1));
        const std::string m = commvq_last_error();
        CAPTURE(m);
        CHECK(m.find("value_weights") != std::string::npos);
        CHECK(m.find("layer 1, token 17") != std::string::npos);
    }
    // Zero weights are allowed.
    std::vector<float> zeros(ones.size(), 0.0f);
    train(zeros.data());
}

TEST_CASE("C API: train params: a model name that is not UTF-8, or a huge value_hidden, is refused") {
    const Data d = two_groups(60, 4);
    auto attempt = [&](const commvq_train_params_t& p) {
        commvq_codebook_t* out = reinterpret_cast<commvq_codebook_t*>(0x1);
        const commvq_status_t s = commvq_train(&p, kLayers, kHeads, kDim, d.n, d.keys.data(), d.values.data(), &out);
        CHECK(out == reinterpret_cast<commvq_codebook_t*>(0x1));
        return s;
    };
    commvq_train_params_t p = tiny_params();
    p.model_name = "bad \xff name";
    CHECK(attempt(p) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(std::string(commvq_last_error()).find("UTF-8") != std::string::npos);
    p.model_name = "overlong \xc0\xaf";
    CHECK(attempt(p) == COMMVQ_ERR_INVALID_ARGUMENT);
    p.model_name = "cut \xe2\x82";
    CHECK(attempt(p) == COMMVQ_ERR_INVALID_ARGUMENT);
    p = tiny_params();
    p.value_hidden = 65537;
    CHECK(attempt(p) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(std::string(commvq_last_error()).find("value_hidden") != std::string::npos);

    CHECK(is_valid_utf8(""));
    CHECK(is_valid_utf8("plain ascii"));
    CHECK(is_valid_utf8("\xf0\x9f\x98\x80 \xe2\x82\xac \xc3\xa9"));
    CHECK_FALSE(is_valid_utf8("\xed\xa0\x80"));      // a surrogate
    CHECK_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
    CHECK_FALSE(is_valid_utf8("\x80"));
}
