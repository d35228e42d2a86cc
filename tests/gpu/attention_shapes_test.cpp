// Decode attention over the shapes the kernel instances cover: group sizes
// 1, 2, 4 and 8, head_dim 64 and 128, 1 and 2 bits, clusters of 1 to 8 KV
// heads (and the same shapes forced to clusters of 1), batches of up to 64
// rows with mixed lengths that are multiples of no tile (1 token, a few
// past the window, a few thousand). Every output is checked against float64
// attention over the cache's own codes; outputs start as NaN.
#include <doctest/doctest.h>

#include <cstdlib>

#include "gpu_test_util.h"

using namespace commvq;
using namespace commvq::gpu_test;

namespace {

struct Shape {
    uint32_t n_kv_heads, n_q_heads, head_dim, bits;
};

// Fills `n` sequences of the given lengths in one layer and checks one
// decode query per sequence (one attend_batch call).
void check_shape(const Shape& s, const std::vector<uint32_t>& lengths, uint64_t seed) {
    test::RandomCodebookSpec spec;
    spec.n_layers = 1;
    spec.n_kv_heads = s.n_kv_heads;
    spec.n_q_heads = s.n_q_heads;
    spec.head_dim = s.head_dim;
    spec.value_bits = s.bits;
    spec.rope.theta = 500000;
    spec.seed = seed;
    const Codebook cb = test::random_codebook(spec);
    CodebookHandle h(cb);
    const uint32_t n = uint32_t(lengths.size());
    uint64_t total = 0;
    for (uint32_t len : lengths) total += len;
    CacheHandle gpu;
    CVQ_OK(commvq_cache_create(h.h, ptr(cache_params(0, 32, 2, COMMVQ_DTYPE_F32, total + 64 * n, n)), &gpu.h));
    const uint32_t E = cb.value_dim(), Q = cb.n_q_heads * cb.head_dim;
    test::Rng rng(seed + 1);
    std::vector<Tensor> ks, vs;
    std::vector<uint32_t> seqs(n);
    for (uint32_t i = 0; i < n; ++i) {
        seqs[i] = n - 1 - i;  // rows in another order than sequences
        ks.emplace_back(size_t(lengths[i]) * E, COMMVQ_DTYPE_F32, rng, 2.0);
        vs.emplace_back(size_t(lengths[i]) * E, COMMVQ_DTYPE_F32, rng);
        for (uint32_t t = 0; t < lengths[i]; t += 997) {
            const uint32_t m = std::min(997u, lengths[i] - t);
            CVQ_OK(commvq_cache_append(gpu.h, 0, seqs[i], m, ks[i].bytes.data() + size_t(t) * E * 4,
                                       vs[i].bytes.data() + size_t(t) * E * 4));
        }
    }
    Tensor q(size_t(n) * Q, COMMVQ_DTYPE_F32, rng, 3.0);
    std::vector<float> out(size_t(n) * Q, NAN), lse(size_t(n) * cb.n_q_heads, NAN);
    CVQ_OK(commvq_cache_attend_batch(gpu.h, 0, n, seqs.data(), q.data(), out.data(), lse.data(), 0));
    double worst = 0;
    for (uint32_t i = 0; i < n; ++i) {
        std::vector<double> ref, ref_lse;
        reference_attention(gpu.cache(), 0, seqs[i], ks[i].values, vs[i].values, q.values.data() + size_t(i) * Q,
                            lengths[i], ref, ref_lse);
        const std::vector<float> row(out.begin() + size_t(i) * Q, out.begin() + size_t(i + 1) * Q);
        const double err = rel_error(row, ref);
        worst = std::max(worst, err);
        CAPTURE(i);
        CAPTURE(lengths[i]);
        CHECK(err < 2e-3);
        for (uint32_t hq = 0; hq < cb.n_q_heads; ++hq)
            CHECK(std::fabs(lse[size_t(i) * cb.n_q_heads + hq] - ref_lse[hq]) < 1e-3 * (1 + std::fabs(ref_lse[hq])));
    }
    MESSAGE("Hkv " << s.n_kv_heads << " Hq " << s.n_q_heads << " d " << s.head_dim << " bits " << s.bits << ", "
                   << n << " rows: worst relative error " << worst);
}

}  // namespace

TEST_CASE("gpu: decode attention over random shapes (groups 1-8, head_dim 64/128, 1/2 bits, clusters, mixed lengths)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    const Shape shapes[] = {
        {8, 8, 128, 1},   // G = 1, clusters of 8
        {8, 64, 64, 2},   // G = 8, head_dim 64, 2 bits: 64 heads per cluster
        {4, 16, 128, 2},  // G = 4, clusters of 4
        {2, 16, 64, 1},   // G = 8, clusters of 2
        {1, 4, 128, 1},   // one KV head: no cluster
        {2, 4, 128, 2},   // bytellama-13m's shape
    };
    const std::vector<uint32_t> lengths = {1, 35, 37, 161, 1000, 2600};
    for (int forced = 0; forced < 2; ++forced) {
        // The same shapes with clusters of 1 (the kernels of GPUs before sm_90).
        if (forced) setenv("COMMVQ_CUDA_ATTEND_CLUSTER", "1", 1);
        uint64_t seed = 100;
        for (const Shape& s : shapes) {
            CAPTURE(forced);
            CAPTURE(s.n_kv_heads);
            CAPTURE(s.n_q_heads);
            CAPTURE(s.head_dim);
            CAPTURE(s.bits);
            check_shape(s, lengths, seed++);
        }
    }
    unsetenv("COMMVQ_CUDA_ATTEND_CLUSTER");
}

TEST_CASE("gpu: decode attention for 64 sequences of mixed lengths in one call") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    test::Rng rng(77);
    std::vector<uint32_t> lengths(64);
    for (uint32_t& len : lengths) len = 1 + uint32_t(rng.uniform() * 400);
    check_shape({8, 32, 128, 1}, lengths, 500);
}
