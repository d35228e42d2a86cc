// The GPU key search (kernels/key_encoder.cuh) called directly on residuals
// t [n][n_kv_heads][head_dim]:
// - pruned rows must give exactly the codes of the full scan (the same float
//   costs, every row examined), on random keys, keys of very different
//   norms, exact and near ties, zero keys and codebooks with duplicate
//   sub-centers (so many candidates cost exactly the same);
// - against the CPU encoder (float64), every differing token-head must be a
//   near-tie: at its first differing stage the float64 costs of the two
//   codes, from the same residual, differ by at most a float rounding bound;
//   on natural data at most 0.1% of token-heads may differ.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "fixture.h"
#include "gpu_test_util.h"
#include "launchers.h"
#include "model_shape.h"

using namespace commvq;
using namespace commvq::gpu_test;

namespace {

template <typename T>
struct DeviceArray {
    T* p = nullptr;
    explicit DeviceArray(const std::vector<T>& h) {
        REQUIRE(cudaMalloc(&p, std::max<size_t>(1, h.size()) * sizeof(T)) == cudaSuccess);
        REQUIRE(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    ~DeviceArray() { cudaFree(p); }
};

// The GPU codes [n][H][R] of residuals t [n][H][d] in layer `layer`.
std::vector<uint16_t> gpu_codes(const Codebook& cb, uint32_t layer, const std::vector<float>& t, bool full_scan) {
    const uint32_t H = cb.n_kv_heads, R = cb.key_stages, d = cb.head_dim;
    const uint32_t n = uint32_t(t.size() / (size_t(H) * d));
    std::vector<float> row_min(cb.norms[layer].size());
    cuda::key_cross_row_minima(cb.cross[layer].data(), row_min.size(), cb.sub_centers, row_min.data());
    DeviceArray<float> z(cb.layers[layer].keys.sub_centers), cross(cb.cross[layer]), norms(cb.norms[layer]),
        mins(row_min), dt(t);
    DeviceArray<uint16_t> codes(std::vector<uint16_t>(size_t(n) * H * R, 0xffff));
    cuda::KeyTables tables{z.p, cross.p, norms.p, mins.p};
    GPU_CHECK(cudaError_t(cuda::launch_encode_keys(cuda::model_shape(cb), tables, n, dt.p, codes.p, nullptr, full_scan)));
    GPU_CHECK(cudaDeviceSynchronize());
    std::vector<uint16_t> out(size_t(n) * H * R);
    GPU_CHECK(cudaMemcpy(out.data(), codes.p, out.size() * 2, cudaMemcpyDeviceToHost));
    return out;
}

size_t count_differences(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b) {
    REQUIRE(a.size() == b.size());
    size_t n = 0;
    for (size_t i = 0; i < a.size(); ++i) n += a[i] != b[i];
    return n;
}

// Keys [n][H][d] of the kinds the search must get right, in canonical layout.
std::vector<float> hard_keys(const Codebook& cb, uint32_t layer, uint32_t n, uint64_t seed) {
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, C = cb.sub_centers;
    test::Rng rng(seed);
    std::vector<float> k(size_t(n) * H * d);
    for (uint32_t i = 0; i < n; ++i)
        for (uint32_t h = 0; h < H; ++h) {
            float* x = k.data() + (size_t(i) * H + h) * d;
            const float* z0 = cb.sub_center(layer, h, 0, 0);
            auto center = [&](uint32_t code, uint32_t j, uint32_t part) {  // stage-0 center c_{A,B}, pair j
                const float* za = z0 + size_t(code / C) * d;
                const float* zb = z0 + size_t(code % C) * d;
                return part == 0 ? za[2 * j] - zb[2 * j + 1] : za[2 * j + 1] + zb[2 * j];
            };
            const uint32_t c1 = uint32_t(rng.next() % (C * C)), c2 = uint32_t(rng.next() % (C * C));
            const double norm = std::pow(10.0, rng.uniform(-3, 3));  // heads of very different norms
            switch (i % 6) {
            case 0:  // random direction
                for (uint32_t x_ = 0; x_ < d; ++x_) x[x_] = float(rng.normal() * norm);
                break;
            case 1:  // exactly a stage-0 center: its residual is 0 at stage 1
                for (uint32_t j = 0; j < d / 2; ++j) x[2 * j] = center(c1, j, 0), x[2 * j + 1] = center(c1, j, 1);
                break;
            case 2:  // midway between two centers: a tie in exact arithmetic
            case 3:  // the same, nudged by one part in 10^7
                for (uint32_t j = 0; j < d / 2; ++j)
                    for (uint32_t p = 0; p < 2; ++p)
                        x[2 * j + p] = float(0.5 * (double(center(c1, j, p)) + center(c2, j, p)) *
                                             (i % 6 == 3 ? 1 + 1e-7 * rng.normal() : 1.0));
                break;
            case 4:  // zero key
                break;
            case 5:  // a center scaled far out
                for (uint32_t j = 0; j < d / 2; ++j)
                    for (uint32_t p = 0; p < 2; ++p) x[2 * j + p] = float(center(c1, j, p) * norm);
                break;
            }
        }
    return k;
}

// What the key preparation does (kernels/key_encoder.cu): t = k / scale in
// double, rounded to float, per token or per head.
std::vector<float> normalized(const Codebook& cb, const std::vector<float>& k) {
    const uint32_t H = cb.n_kv_heads, d = cb.head_dim, per = cb.scale_mode == COMMVQ_SCALE_TOKEN ? H * d : d;
    std::vector<float> t(k.size());
    for (size_t s = 0; s < k.size(); s += per) {
        double sum = 0;
        for (uint32_t i = 0; i < per; ++i) sum += double(k[s + i]) * k[s + i];
        const double scale = std::sqrt(sum);
        for (uint32_t i = 0; i < per; ++i) t[s + i] = scale > 0 ? float(k[s + i] / scale) : 0.0f;
    }
    return t;
}

// float64 ||t - c_{r,code}||^2.
double exact_cost(const Codebook& cb, uint32_t layer, uint32_t h, uint32_t r, uint32_t code, const double* t) {
    const uint32_t C = cb.sub_centers, d = cb.head_dim;
    const float* za = cb.sub_center(layer, h, r, code / C);
    const float* zb = cb.sub_center(layer, h, r, code % C);
    double s = 0;
    for (uint32_t j = 0; j < d / 2; ++j) {
        const double re = t[2 * j] - (double(za[2 * j]) - zb[2 * j + 1]);
        const double im = t[2 * j + 1] - (double(za[2 * j + 1]) + zb[2 * j]);
        s += re * re + im * im;
    }
    return s;
}

struct TieReport {
    size_t token_heads = 0, differ = 0, not_near_tie = 0;
    double worst_gap = 0;  // largest (cost of the GPU code - cost of the CPU code) / tolerance
};

// Compares the GPU codes of normalized(k) with the CPU encoder's codes of k.
TieReport compare_with_cpu(const Codebook& cb, uint32_t layer, const std::vector<float>& k,
                           const std::vector<uint16_t>& gpu) {
    const uint32_t H = cb.n_kv_heads, R = cb.key_stages, d = cb.head_dim, C = cb.sub_centers;
    const uint32_t n = uint32_t(k.size() / (size_t(H) * d));
    KeyEncoder enc(cb, layer);
    std::vector<uint16_t> cpu(size_t(H) * R);
    std::vector<float> scales(cb.n_key_scales());
    TieReport rep;
    for (uint32_t i = 0; i < n; ++i) {
        const float* ki = k.data() + size_t(i) * H * d;
        enc.encode(ki, cpu.data(), scales.data());
        for (uint32_t h = 0; h < H; ++h) {
            ++rep.token_heads;
            const uint16_t* g = gpu.data() + (size_t(i) * H + h) * R;
            const uint16_t* c = cpu.data() + size_t(h) * R;
            uint32_t r = 0;
            while (r < R && g[r] == c[r]) ++r;
            if (r == R) continue;
            ++rep.differ;
            // The CPU's residual before stage r (both took the same codes so far).
            const double s = cb.scale_mode == COMMVQ_SCALE_TOKEN ? scales[0] : scales[h];
            std::vector<double> t(d);
            for (uint32_t x = 0; x < d; ++x) t[x] = s > 0 ? ki[size_t(h) * d + x] / s : 0.0;
            for (uint32_t q = 0; q < r; ++q) {
                const float* za = cb.sub_center(layer, h, q, c[q] / C);
                const float* zb = cb.sub_center(layer, h, q, c[q] % C);
                for (uint32_t j = 0; j < d / 2; ++j) {
                    t[2 * j] -= double(za[2 * j]) - double(zb[2 * j + 1]);
                    t[2 * j + 1] -= double(za[2 * j + 1]) + double(zb[2 * j]);
                }
            }
            double t_norm = 0, z_max = 0;
            for (double x : t) t_norm += x * x;
            t_norm = std::sqrt(t_norm);
            for (uint32_t a = 0; a < C; ++a) {
                double zz = 0;
                for (uint32_t x = 0; x < d; ++x) zz += double(cb.sub_center(layer, h, r, a)[x]) * cb.sub_center(layer, h, r, a)[x];
                z_max = std::max(z_max, std::sqrt(zz));
            }
            // fp32 costs: rounding of t, of the tables and of the sums, each
            // about 2^-24 of (||t|| + 2 z_max)^2, times d-term dot products;
            // 1e-5 is ~100x above what 3xTF32 and fp32 sums lose.
            const double tol = 1e-5 * (t_norm + 2 * z_max) * (t_norm + 2 * z_max);
            const double gap = exact_cost(cb, layer, h, r, g[r], t.data()) - exact_cost(cb, layer, h, r, c[r], t.data());
            rep.worst_gap = std::max(rep.worst_gap, gap / tol);
            rep.not_near_tie += gap > tol;
        }
    }
    return rep;
}

Codebook llama_like_codebook(uint32_t bits, uint32_t head_dim, int32_t scale_mode, bool duplicates, uint64_t seed) {
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = 8;
    spec.n_q_heads = 8;
    spec.head_dim = head_dim;
    spec.value_bits = bits;
    spec.scale_mode = scale_mode;
    spec.seed = seed;
    Codebook cb = test::random_codebook(spec);
    if (duplicates) {
        // Sub-centers 9 and 40 copy 5 in every stage and head (all of row 5's
        // costs recur in rows 9 and 40, and columns likewise), and stage 0's
        // sub-center 63 is zero: exact ties that must go to the lower code.
        std::vector<float>& z = cb.layers[0].keys.sub_centers;
        const uint32_t d = cb.head_dim, C = cb.sub_centers;
        for (uint32_t hr = 0; hr < cb.n_kv_heads * cb.key_stages; ++hr) {
            float* s = z.data() + size_t(hr) * C * d;
            std::copy(s + 5 * d, s + 6 * d, s + 9 * d);
            std::copy(s + 5 * d, s + 6 * d, s + 40 * d);
            if (hr % cb.key_stages == 0) std::fill(s + 63 * d, s + 64 * d, 0.0f);
        }
        cb.finalize();
    }
    return cb;
}

}  // namespace

TEST_CASE("gpu: key search, pruned rows give exactly the full scan's codes") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    for (uint32_t head_dim : {128u, 64u})
        for (uint32_t bits : {1u, 2u})
            for (bool duplicates : {false, true}) {
                const Codebook cb = llama_like_codebook(bits, head_dim, COMMVQ_SCALE_TOKEN, duplicates, 3 + bits);
                CAPTURE(head_dim);
                CAPTURE(bits);
                CAPTURE(duplicates);
                // Raw keys of any norm (t need not be normalized for the search
                // to be exact), then the same keys normalized; 64 * 37 + 19
                // tokens, so the last block is partial.
                const std::vector<float> k = hard_keys(cb, 0, 64 * 37 + 19, 17 + bits);
                for (bool raw : {true, false}) {
                    const std::vector<float> tt = raw ? k : normalized(cb, k);
                    const std::vector<uint16_t> pruned = gpu_codes(cb, 0, tt, false);
                    const std::vector<uint16_t> full = gpu_codes(cb, 0, tt, true);
                    CAPTURE(raw);
                    CHECK(count_differences(pruned, full) == 0);
                    CHECK(*std::max_element(pruned.begin(), pruned.end()) < cb.sub_centers * cb.sub_centers);
                }
            }
}

TEST_CASE("gpu: key search matches the CPU encoder up to near-ties (random, ties, norms)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    for (uint32_t bits : {1u, 2u})
        for (int32_t scale_mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
            const Codebook cb = llama_like_codebook(bits, 128, scale_mode, bits == 2, 7 + bits);
            CAPTURE(bits);
            CAPTURE(scale_mode);
            // Natural keys: the allowance of 0.1% of token-heads.
            {
                test::Rng rng(40 + bits);
                const std::vector<float> k = rng.normals(size_t(1500) * cb.n_kv_heads * cb.head_dim, 2.0);
                const std::vector<uint16_t> gpu = gpu_codes(cb, 0, normalized(cb, k), false);
                const TieReport rep = compare_with_cpu(cb, 0, k, gpu);
                MESSAGE("random keys: " << rep.differ << " of " << rep.token_heads << " token-heads differ, worst gap "
                                        << rep.worst_gap << " of the tolerance");
                CHECK(rep.not_near_tie == 0);
                CHECK(rep.differ <= rep.token_heads / 1000);
            }
            // Constructed ties: any number may differ, each only as a near-tie.
            {
                const std::vector<float> k = hard_keys(cb, 0, 600, 50 + bits);
                const std::vector<uint16_t> gpu = gpu_codes(cb, 0, normalized(cb, k), false);
                const TieReport rep = compare_with_cpu(cb, 0, k, gpu);
                MESSAGE("hard keys: " << rep.differ << " of " << rep.token_heads << " token-heads differ, worst gap "
                                      << rep.worst_gap << " of the tolerance");
                CHECK(rep.not_near_tie == 0);
            }
        }
}

TEST_CASE("gpu: key search on the real fixture keys: full scan and CPU") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    const test::KvFixture& fx = test::kv_fixture();
    test::RandomCodebookSpec spec;
    spec.n_layers = fx.n_layers;
    spec.n_kv_heads = fx.n_kv_heads;
    spec.n_q_heads = fx.n_q_heads;
    spec.head_dim = fx.head_dim;
    spec.rope = fx.rope;
    for (uint32_t bits : {1u, 2u}) {
        spec.value_bits = bits;
        spec.seed = 21 + bits;
        const Codebook cb = test::random_codebook(spec);
        const uint32_t d = cb.head_dim, H = cb.n_kv_heads, N = fx.n_tokens;
        for (uint32_t l = 1; l < fx.n_layers; ++l) {  // layer 0 is degenerate (tests/data/README.md)
            CAPTURE(bits);
            CAPTURE(l);
            std::vector<float> k(size_t(N) * H * d);
            for (uint32_t t = 0; t < N; ++t)
                for (uint32_t h = 0; h < H; ++h)
                    to_canonical(fx.key(l, t) + h * d, d, fx.pair_layout, k.data() + (size_t(t) * H + h) * d);
            const std::vector<float> t = normalized(cb, k);
            const std::vector<uint16_t> pruned = gpu_codes(cb, l, t, false);
            CHECK(count_differences(pruned, gpu_codes(cb, l, t, true)) == 0);
            const TieReport rep = compare_with_cpu(cb, l, k, pruned);
            MESSAGE("fixture layer " << l << ": " << rep.differ << " of " << rep.token_heads << " token-heads differ");
            CHECK(rep.not_near_tie == 0);
            CHECK(rep.differ <= rep.token_heads / 1000);
        }
    }
}
