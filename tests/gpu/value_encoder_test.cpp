// The GPU value encoder (kernels/value_encoder.cu) against the CPU encoder
// (src/value_encoder.cpp, the reference), for each precision of its matrix
// products (cuda::ValuePrecision: fp32, tf32, bf16), on random values with
// random codebooks and on the real fixture's values with the shipped
// trained codebooks. The launcher is called directly on float32 rows, and
// once through a cache created with COMMVQ_CUDA_VALUE_PRODUCTS.
//
// Allowances: a group whose best two logits are closer than the products'
// rounding may pick another option, so at most 0.1% of value bits may
// differ from the CPU's with fp32 or tf32 products (issue 12's near-tie
// allowance; tf32 measured 0.016-0.019% on an H100, 2026-12-06). bf16
// products (8 significant bits) are an opt-in outside that allowance: they
// measured 0.12-0.14% there, and are held to 0.3%. Tokens whose bits are all equal have the CPU's
// weight within 1e-4 relative (the codeword sum is formed in fp32 by every
// precision; the CPU sums in another order). E's three-part bf16 split is
// exact.
#include <cublas_v2.h>
#include <doctest/doctest.h>

#include <array>
#include <string>
#include <cstdlib>

#include "codebook_file.h"
#include "fixture.h"
#include "gpu_test_util.h"
#include "launchers.h"
#include "model_shape.h"

using namespace commvq;
using namespace commvq::gpu_test;

namespace {

using cuda::ValuePrecision;
constexpr ValuePrecision kPrecisions[] = {ValuePrecision::fp32, ValuePrecision::tf32, ValuePrecision::bf16};

// Value bits per thousand that may differ from the CPU encoder's (above).
uint32_t allowed_per_mille(ValuePrecision p) { return p == ValuePrecision::bf16 ? 3 : 1; }

struct Encoded {
    std::vector<uint8_t> bits;  // [n][2n/8]
    std::vector<float> weights;
};

// One layer's value tables on the device (fp32 and the bf16 copies).
struct DeviceValueTables {
    std::vector<std::unique_ptr<DeviceCopy>> owned;
    cuda::ValueTables vt;
    std::vector<uint16_t> low;  // the bf16 tables, read back

    const float* up(const std::vector<float>& h) {
        owned.push_back(std::make_unique<DeviceCopy>(h.size() * 4, h.data()));
        return static_cast<const float*>(owned.back()->ptr);
    }
    DeviceValueTables(const Codebook& cb, uint32_t layer) {
        std::array<const float*, 8> arrays;
        for (size_t i = 0; i < 8; ++i) arrays[i] = up(*cuda::value_arrays(cb.layers[layer].values)[i]);
        vt = cuda::value_tables_at(arrays);
        const cuda::ModelShape m = cuda::model_shape(cb);
        const size_t elems = cuda::value_tables_low_precision_elems(m);
        owned.push_back(std::make_unique<DeviceCopy>(elems * 2));
        GPU_CHECK(cudaError_t(cuda::launch_value_tables_low_precision(
            m, &vt, static_cast<uint16_t*>(owned.back()->ptr), nullptr)));
        GPU_CHECK(cudaDeviceSynchronize());
        std::vector<uint8_t> raw = owned.back()->to_host(elems * 2);
        low.resize(elems);
        std::memcpy(low.data(), raw.data(), elems * 2);
    }
};

// The GPU encoder on float32 rows v [n][D]; outputs poisoned first.
Encoded gpu_values(const Codebook& cb, const DeviceValueTables& t, const std::vector<float>& v, ValuePrecision p) {
    const cuda::ModelShape m = cuda::model_shape(cb);
    const uint32_t D = cb.value_dim(), n = uint32_t(v.size() / D), code_bytes = cb.value_code_bits() / 8;
    DeviceCopy rows(v.size() * 4, v.data()), scratch(cuda::value_encoder_scratch_floats(m, n) * 4),
        bits(size_t(n) * code_bytes), weights(size_t(n) * 4);
    GPU_CHECK(cudaMemset(bits.ptr, 0xa5, size_t(n) * code_bytes));
    GPU_CHECK(cudaMemset(weights.ptr, 0xff, size_t(n) * 4));  // NaN
    GPU_CHECK(cudaMemset(scratch.ptr, 0xff, cuda::value_encoder_scratch_floats(m, n) * 4));
    cuda::EncodeSource src;
    src.slots.key_bytes = D * 4;
    src.slots.value_bytes = D * 4;
    src.slots.io_dtype = COMMVQ_DTYPE_F32;
    src.input_v = rows.ptr;
    src.input_k = rows.ptr;
    cublasHandle_t h = nullptr;
    REQUIRE(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS);
    const int err = cuda::launch_encode_values(m, t.vt, src, n, h, p, static_cast<float*>(scratch.ptr),
                                               static_cast<uint8_t*>(bits.ptr), static_cast<float*>(weights.ptr),
                                               nullptr);
    const cudaError_t sync = cudaDeviceSynchronize();
    cublasDestroy(h);
    REQUIRE(err == 0);
    GPU_CHECK(sync);
    Encoded e;
    e.bits = bits.to_host(size_t(n) * code_bytes);
    const std::vector<uint8_t> w = weights.to_host(size_t(n) * 4);
    e.weights.resize(n);
    std::memcpy(e.weights.data(), w.data(), size_t(n) * 4);
    return e;
}

Encoded cpu_values(const Codebook& cb, uint32_t layer, const std::vector<float>& v) {
    const uint32_t D = cb.value_dim(), n = uint32_t(v.size() / D), code_bytes = cb.value_code_bits() / 8;
    ValueEncoder enc(cb, layer);
    std::vector<float> scratch(ValueEncoder::kTile * enc.scratch_floats());
    Encoded e;
    e.bits.assign(size_t(n) * code_bytes, 0);
    e.weights.assign(n, 0.0f);
    enc.encode_tile(n, v.data(), D, e.bits.data(), code_bytes, e.weights.data(), 1, scratch.data());
    return e;
}

struct BitDiff {
    size_t bits = 0, differ = 0, tokens = 0, tokens_equal = 0, non_finite = 0;
    double worst_weight = 0;
};

BitDiff compare(const Encoded& gpu, const Encoded& cpu, uint32_t code_bytes) {
    BitDiff d;
    d.tokens = cpu.weights.size();
    for (size_t t = 0; t < d.tokens; ++t) {
        size_t differ = 0;
        for (size_t i = t * code_bytes; i < (t + 1) * code_bytes; ++i)
            differ += __builtin_popcount(unsigned(gpu.bits[i] ^ cpu.bits[i]));
        d.bits += 8 * size_t(code_bytes);
        d.differ += differ;
        d.non_finite += !std::isfinite(gpu.weights[t]);
        if (differ == 0) {
            ++d.tokens_equal;
            d.worst_weight = std::max(d.worst_weight, std::fabs(double(gpu.weights[t]) - cpu.weights[t]) /
                                                          std::fabs(double(cpu.weights[t])));
        }
    }
    return d;
}

// Every precision on the rows v of one layer against the CPU encoder.
void check_all_precisions(const Codebook& cb, uint32_t layer, const std::vector<float>& v, const char* what) {
    const DeviceValueTables t(cb, layer);
    const Encoded cpu = cpu_values(cb, layer, v);
    for (ValuePrecision p : kPrecisions) {
        const BitDiff d = compare(gpu_values(cb, t, v, p), cpu, cb.value_code_bits() / 8);
        const std::string name = cuda::value_precision_name(p);
        CAPTURE(name);
        MESSAGE(std::string(what) << ", layer " << layer << ", " << name << " products: " << d.differ << " of "
                                  << d.bits << " value bits differ from the CPU (" << 100.0 * d.differ / d.bits
                                  << "%, allowance " << 0.1 * allowed_per_mille(p) << "%); weights of the " << d.tokens_equal << " of " << d.tokens
                     << " tokens with equal bits within " << d.worst_weight << " relative");
        CHECK(d.non_finite == 0);
        CHECK(d.differ * 1000 <= d.bits * allowed_per_mille(p));
        CHECK(d.worst_weight < 1e-4);
        CHECK(d.tokens_equal > 0);
    }
}

}  // namespace

TEST_CASE("gpu: value encoder, E's bf16 split is exact") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    for (uint32_t bits : {1u, 2u}) {
        test::RandomCodebookSpec spec;
        spec.n_layers = 1;
        spec.n_kv_heads = 2;
        spec.head_dim = 128;
        spec.value_bits = bits;
        spec.seed = 61 + bits;
        const Codebook cb = test::random_codebook(spec);
        const DeviceValueTables t(cb, 0);
        const std::vector<float>& E = cb.layers[0].values.codebook;
        const size_t D = cb.value_dim(), I = cb.value_hidden, n2 = cb.value_code_bits();
        const uint16_t* parts = t.low.data() + I * D + 2 * n2 * I;
        size_t inexact = 0;
        for (size_t j = 0; j < E.size(); ++j)
            inexact += double(bf16_to_float(parts[j])) + bf16_to_float(parts[E.size() + j]) +
                           bf16_to_float(parts[2 * E.size() + j]) != double(E[j]);
        CHECK(inexact == 0);
        // The weights are the nearest bf16: 8 significant bits, so within
        // 2^-8 relative (half a unit in the last place).
        double worst = 0;
        for (size_t j = 0; j < I * D; ++j) {
            const double w = cb.layers[0].values.enc1_weight[j];
            if (w != 0) worst = std::max(worst, std::fabs(bf16_to_float(t.low[j]) - w) / std::fabs(w));
        }
        CHECK(worst <= 1.0 / 256);
    }
}

TEST_CASE("gpu: value encoder precisions match the CPU encoder up to near-ties (random values)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    struct Shape {
        uint32_t kv_heads, bits, tokens;
    };
    // LLaMA-3.1-8B's 8 KV heads of 128 (D = 1024), and a narrower 2-bit codebook.
    for (const Shape s : {Shape{8, 1, 700}, Shape{2, 1, 2000}, Shape{2, 2, 2000}}) {
        test::RandomCodebookSpec spec;
        spec.n_layers = 1;
        spec.n_kv_heads = s.kv_heads;
        spec.n_q_heads = s.kv_heads;
        spec.head_dim = 128;
        spec.value_bits = s.bits;
        spec.seed = 71 + s.bits + s.kv_heads;
        const Codebook cb = test::random_codebook(spec);
        CAPTURE(s.kv_heads);
        CAPTURE(s.bits);
        test::Rng rng(81 + s.bits);
        check_all_precisions(cb, 0, rng.normals(size_t(s.tokens) * cb.value_dim(), 0.5), "random values");
    }
}

TEST_CASE("gpu: value encoder precisions match the CPU encoder up to near-ties (real fixture, trained codebooks)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    for (const char* file : {"bytellama-13m-1bit.safetensors", "bytellama-13m-2bit.safetensors"}) {
        const Codebook cb = load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/" + file);
        REQUIRE(cb.value_dim() == fx.n_kv_heads * fx.head_dim);
        CAPTURE(file);
        for (uint32_t l = 0; l < fx.n_layers; ++l) {
            const std::vector<float> v(fx.value(l, 0), fx.value(l, 0) + size_t(fx.n_tokens) * cb.value_dim());
            check_all_precisions(cb, l, v, file);
        }
    }
}

TEST_CASE("gpu: COMMVQ_CUDA_VALUE_PRODUCTS selects the products of a cache; bad values are refused") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = 2;
    spec.n_q_heads = 8;
    spec.head_dim = 128;
    spec.seed = 91;
    const Codebook cb = test::random_codebook(spec);
    CodebookHandle h(cb);
    {
        ScopedEnv env("COMMVQ_CUDA_VALUE_PRODUCTS", "fp16");
        CacheHandle c;
        CHECK(commvq_cache_create(h.h, ptr(cache_params(0, 0, 0, COMMVQ_DTYPE_F32)), &c.h) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(std::string(commvq_last_error()).find("COMMVQ_CUDA_VALUE_PRODUCTS") != std::string::npos);
        CHECK(c.h == nullptr);
    }
    {
        ScopedEnv env("COMMVQ_CUDA_ENCODE_BATCH", "0");
        CacheHandle c;
        CHECK(commvq_cache_create(h.h, ptr(cache_params(0, 0, 0, COMMVQ_DTYPE_F32)), &c.h) ==
              COMMVQ_ERR_INVALID_ARGUMENT);
        CHECK(std::string(commvq_last_error()).find("COMMVQ_CUDA_ENCODE_BATCH") != std::string::npos);
    }
    // Each precision, with a small encoding batch so an append spans several
    // passes: the cache's value bits against the CPU encoder's.
    const uint32_t N = 1500, D = cb.value_dim(), code_bytes = cb.value_code_bits() / 8;
    test::Rng rng(92);
    const Tensor k(size_t(N) * D, COMMVQ_DTYPE_F32, rng, 2.0), v(size_t(N) * D, COMMVQ_DTYPE_F32, rng, 0.5);
    const Encoded cpu = cpu_values(cb, 0, v.values);
    for (ValuePrecision p : kPrecisions) {
        ScopedEnv env("COMMVQ_CUDA_VALUE_PRODUCTS", cuda::value_precision_name(p));
        ScopedEnv batch("COMMVQ_CUDA_ENCODE_BATCH", "320");
        CacheHandle c;
        CVQ_OK(commvq_cache_create(h.h, ptr(cache_params(0, 0, 0, COMMVQ_DTYPE_F32)), &c.h));
        CVQ_OK(commvq_cache_append(c.h, 0, 0, N, k.data(), v.data()));
        CVQ_OK(commvq_cache_synchronize(c.h));
        const std::vector<CompressedToken> got = compressed_tokens(c.cache(), 0, 0);
        REQUIRE(got.size() == N);
        Encoded gpu;
        for (const CompressedToken& t : got) {
            gpu.bits.insert(gpu.bits.end(), t.value_bits.begin(), t.value_bits.end());
            gpu.weights.push_back(t.value_weight);
        }
        const BitDiff d = compare(gpu, cpu, code_bytes);
        const std::string name = cuda::value_precision_name(p);
        CAPTURE(name);
        MESSAGE("cache with " << name << " products, batches of 320: " << d.differ << " of " << d.bits
                              << " value bits differ from the CPU");
        CHECK(d.non_finite == 0);
        CHECK(d.differ * 1000 <= d.bits * allowed_per_mille(p));
        CHECK(d.worst_weight < 1e-4);
    }
}
