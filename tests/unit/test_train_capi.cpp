// Training through the C API (commvq_train): a tiny codebook trained, saved,
// loaded and used by the library's own encoders on held-out tokens; bad
// input, unsupported devices and cancellation.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "codebook.h"
#include "commvq/commvq.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "random_codebook.h"
#include "value_encoder.h"

using namespace commvq;

namespace {

constexpr uint32_t kLayers = 2, kHeads = 1, kDim = 16;

// Keys and values [kLayers][n][kHeads][kDim] with the structure real ones
// have: a few dominant directions, a per-token norm that varies, and noise.
struct Synthetic {
    uint64_t n;
    std::vector<float> keys, values;
};

Synthetic synthetic(uint64_t n, uint64_t seed) {
    test::Rng basis_rng(1000);  // same directions for training and held-out data
    std::vector<float> basis = basis_rng.normals(size_t(kLayers) * 2 * 4 * kDim);
    test::Rng rng(seed);
    Synthetic s{n, {}, {}};
    for (std::vector<float>* out : {&s.keys, &s.values}) {
        const size_t which = out == &s.keys ? 0 : 1;
        out->resize(size_t(kLayers) * n * kHeads * kDim);
        for (uint32_t l = 0; l < kLayers; ++l)
            for (uint64_t t = 0; t < n; ++t) {
                float* x = out->data() + (size_t(l) * n + t) * kDim;
                const double norm = 0.5 + rng.uniform();
                for (uint32_t k = 0; k < kDim; ++k) x[k] = float(0.05 * rng.normal());
                for (int r = 0; r < 4; ++r) {
                    const float* dir = basis.data() + ((size_t(l) * 2 + which) * 4 + r) * kDim;
                    const double a = rng.normal() * norm / (r + 1);
                    for (uint32_t k = 0; k < kDim; ++k) x[k] += float(a * dir[k]);
                }
            }
    }
    return s;
}

commvq_train_params_t tiny_params() {
    commvq_train_params_t p;
    commvq_train_params_init(&p);
    p.sub_centers = 8;
    p.key_stages = 3;
    p.key_max_steps = 15;
    p.value_steps = 300;
    p.value_batch = 64;
    p.n_q_heads = 2;
    p.rope.theta = 500000;
    p.n_threads = 2;
    return p;
}

double mean_square(const float* x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += double(x[i]) * x[i];
    return s / double(n);
}

}  // namespace

TEST_CASE("C API: commvq_train_params_init defaults") {
    commvq_train_params_t p;
    std::memset(&p, 0xab, sizeof p);
    commvq_train_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    CHECK(p.value_bits == 1);
    CHECK(p.key_stages == 0);
    CHECK(p.sub_centers == 64);
    CHECK(p.pair_layout == COMMVQ_PAIRS_ROTATE_HALF);
    CHECK(p.scale_mode == COMMVQ_SCALE_TOKEN);
    CHECK(p.rope.theta == 10000.0);
    CHECK(p.rope.scaling == COMMVQ_ROPE_SCALING_NONE);
    CHECK(p.max_samples == 1048576);
    CHECK(p.key_max_steps == 100);
    CHECK(p.value_steps == 2000);
    CHECK(p.value_batch == 256);
    CHECK(p.value_lr == doctest::Approx(1e-3));
    CHECK(p.device == COMMVQ_DEVICE_CPU);
    const bool no_callback = p.progress == nullptr && p.progress_user == nullptr;
    CHECK(no_callback);
    commvq_train_params_init(nullptr);  // harmless
}

TEST_CASE("C API: a trained codebook saves, loads and beats trivial baselines on held-out tokens") {
    const Synthetic train = synthetic(1200, 1), held = synthetic(300, 2);
    commvq_train_params_t p = tiny_params();
    commvq_codebook_t* trained = nullptr;
    REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, train.n, train.keys.data(), train.values.data(), &trained) ==
            COMMVQ_OK);
    REQUIRE(trained != nullptr);

    const std::string path =
        (std::filesystem::temp_directory_path() / ("commvq_test_trained_" + std::to_string(std::rand()) + ".safetensors"))
            .string();
    REQUIRE(commvq_codebook_save(trained, path.c_str()) == COMMVQ_OK);
    commvq_codebook_t* loaded = nullptr;
    REQUIRE(commvq_codebook_load(path.c_str(), &loaded) == COMMVQ_OK);
    std::filesystem::remove(path);
    commvq_codebook_info_t a, b;
    commvq_codebook_info_init(&a);
    commvq_codebook_info_init(&b);
    REQUIRE(commvq_codebook_get_info(trained, &a) == COMMVQ_OK);
    REQUIRE(commvq_codebook_get_info(loaded, &b) == COMMVQ_OK);
    CHECK(a.fingerprint == b.fingerprint);
    CHECK(b.key_stages == 3);
    CHECK(b.sub_centers == 8);
    CHECK(b.n_q_heads == 2);
    CHECK(b.value_hidden == 32);  // min(4096, 4n), n = 16 * 1 / 2
    CHECK(b.rope.theta == 500000.0);

    const Codebook& cb = loaded->cb;
    for (uint32_t l = 0; l < kLayers; ++l) {
        KeyEncoder keys(cb, l);
        ValueEncoder values(cb, l);
        std::vector<float> canonical(kDim), decoded(kDim), k_hat(kDim), scratch(values.scratch_floats()), v_hat(kDim);
        std::vector<uint16_t> codes(cb.key_stages);
        std::vector<uint8_t> bits(cb.value_code_bits() / 8);
        float scale = 0, weight = 0;
        double key_err = 0, value_err = 0;
        for (uint64_t t = 0; t < held.n; ++t) {
            const float* k = held.keys.data() + (size_t(l) * held.n + t) * kDim;
            to_canonical(k, kDim, cb.pair_layout, canonical.data());
            keys.encode(canonical.data(), codes.data(), &scale);
            keys.decode_head(0, codes.data(), decoded.data());
            for (float& x : decoded) x *= scale;
            from_canonical(decoded.data(), kDim, cb.pair_layout, k_hat.data());
            for (uint32_t c = 0; c < kDim; ++c) key_err += (k_hat[c] - k[c]) * double(k_hat[c] - k[c]);

            const float* v = held.values.data() + (size_t(l) * held.n + t) * kDim;
            values.encode(v, bits.data(), &weight, scratch.data());
            values.decode(bits.data(), weight, v_hat.data());
            for (uint32_t c = 0; c < kDim; ++c) value_err += (v_hat[c] - v[c]) * double(v_hat[c] - v[c]);
        }
        const size_t count = size_t(held.n) * kDim;
        const double key_mse = key_err / count, value_mse = value_err / count;
        const double key_zero = mean_square(held.keys.data() + size_t(l) * count, count);
        const double value_zero = mean_square(held.values.data() + size_t(l) * count, count);
        INFO("layer " << l << ": key MSE " << key_mse << " (predicting 0: " << key_zero << "), value MSE "
                      << value_mse << " (predicting 0: " << value_zero << ")");
        // 3 stages of 64 centers on 16 numbers: well under a tenth of the
        // energy is left. 1-bit values (16 bits for 16 numbers): under half.
        CHECK(key_mse < 0.1 * key_zero);
        CHECK(value_mse < 0.5 * value_zero);
    }
    commvq_codebook_free(trained);
    commvq_codebook_free(loaded);
}

TEST_CASE("C API: commvq_train refuses bad input and changes nothing") {
    const Synthetic data = synthetic(100, 3);
    commvq_codebook_t* const sentinel = reinterpret_cast<commvq_codebook_t*>(0x1);
    auto attempt = [&](commvq_train_params_t p, const float* keys, const float* values, uint64_t n, uint32_t dim) {
        commvq_codebook_t* out = sentinel;
        commvq_status_t s = commvq_train(&p, kLayers, kHeads, dim, n, keys, values, &out);
        CHECK(out == sentinel);
        CHECK(std::strlen(commvq_last_error()) > 0);
        return s;
    };
    const float* k = data.keys.data();
    const float* v = data.values.data();
    commvq_train_params_t p = tiny_params();
    CHECK(attempt(p, nullptr, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(attempt(p, k, nullptr, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(attempt(p, k, v, 0, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(attempt(p, k, v, 100, 15) == COMMVQ_ERR_INVALID_ARGUMENT);  // odd head_dim
    commvq_train_params_t q = p;
    q.value_bits = 3;
    CHECK(attempt(q, k, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    q = p;
    q.sub_centers = 1;
    CHECK(attempt(q, k, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    q = p;
    q.scale_mode = 7;
    CHECK(attempt(q, k, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    q = p;
    q.struct_size = 0;
    CHECK(attempt(q, k, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    q = p;
    // One past the last device: not supported at all without a GPU (CI),
    // an ordinal out of range with one.
    q.device = commvq_device_count();
    CHECK(attempt(q, k, v, 100, kDim) ==
          (q.device == 0 ? COMMVQ_ERR_NOT_SUPPORTED : COMMVQ_ERR_INVALID_ARGUMENT));
    q.device = -2;
    CHECK(attempt(q, k, v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    std::vector<float> bad = data.keys;
    bad[37] = NAN;
    CHECK(attempt(p, bad.data(), v, 100, kDim) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(std::string(commvq_last_error()).find("finite") != std::string::npos);
    CHECK(commvq_train(&p, kLayers, kHeads, kDim, 100, k, v, nullptr) == COMMVQ_ERR_INVALID_ARGUMENT);
}

TEST_CASE("C API: the progress callback sees the phases and can cancel training") {
    const Synthetic data = synthetic(300, 4);
    struct Seen {
        int calls = 0;
        int cancel_at = -1;
        double last = -1;
        bool monotone = true;
        bool saw_keys = false, saw_values = false;
    };
    auto callback = [](void* user, const char* stage, double fraction) -> int32_t {
        Seen* s = static_cast<Seen*>(user);
        if (fraction < s->last || fraction < 0 || fraction > 1) s->monotone = false;
        s->last = fraction;
        if (std::strncmp(stage, "keys layer", 10) == 0) s->saw_keys = true;
        if (std::strncmp(stage, "values layer", 12) == 0) s->saw_values = true;
        return ++s->calls == s->cancel_at ? 1 : 0;
    };
    commvq_train_params_t p = tiny_params();
    p.key_max_steps = 3;
    p.value_steps = 5;
    p.progress = callback;

    Seen full;
    p.progress_user = &full;
    commvq_codebook_t* cb = nullptr;
    REQUIRE(commvq_train(&p, kLayers, kHeads, kDim, data.n, data.keys.data(), data.values.data(), &cb) == COMMVQ_OK);
    commvq_codebook_free(cb);
    CHECK(full.monotone);
    CHECK(full.saw_keys);
    CHECK(full.saw_values);
    CHECK(full.last == doctest::Approx(1.0));

    Seen cancel;
    cancel.cancel_at = 4;
    p.progress_user = &cancel;
    commvq_codebook_t* out = reinterpret_cast<commvq_codebook_t*>(0x1);
    CHECK(commvq_train(&p, kLayers, kHeads, kDim, data.n, data.keys.data(), data.values.data(), &out) ==
          COMMVQ_ERR_CANCELLED);
    CHECK(out == reinterpret_cast<commvq_codebook_t*>(0x1));
    CHECK(cancel.calls == 4);
    CHECK(std::string(commvq_last_error()).find("cancel") != std::string::npos);
}
