// Tensor-parallel slice caches on the CUDA back end (docs/PARALLEL.md): the
// GPU twin of tests/unit/test_parallel_slices.cpp, through the same harness
// (tests/support/parallel_ranks.h). For 1, 2 and 4 ranks of a random
// 4-KV-head codebook (token and head scale modes, f32 and bf16, pre- and
// post-RoPE keys, sinks, a fork, several tokens per row, window 0) and 1 and
// 2 ranks of the bytellama fixture through the shipped 1-bit codebook, slice
// caches on the GPU fed the same tokens plus the exchanged norms hold bit
// for bit what one full GPU cache holds for their heads (key codes, scales,
// value codes and weights, sinks and windows): the encoders see the same
// inputs, and a token scale is the same float64 sum of per-head norms
// (src/key_scale.h) whether the cache computed all of them or was given them.
//
// Attention:
//   - bit for bit when every cache runs one attention plan: the kernels'
//     geometry depends on the cache's KV heads (the cluster of KV heads,
//     hence the shared-memory chunks; the splits of each row), so the test
//     fixes it with COMMVQ_CUDA_ATTEND_CLUSTER=1 and COMMVQ_CUDA_ATTEND_SPLITS
//     (read when a cache is created); each CTA then does for its head what
//     the full cache's CTA does for that head;
//   - within a tolerance under each cache's own plan (what an engine runs):
//     the chunks and split boundaries differ, so the fp16 probabilities are
//     rounded at other running maxima and partial sums merge in another
//     order. Both caches are within the attention tolerance of a float64
//     reference over the same codes (cuda_backend_test.cpp: relative L2 2e-3
//     f32, 1e-2 bf16; lse 1e-3 (1 + |lse|)) and their codes are identical, so
//     they differ by at most twice that: 4e-3 f32, 2e-2 bf16, lse 2e-3.
// Device pointers for the exchanged norms, keys, values, queries and
// outputs give what host pointers give. Outputs are poisoned before every
// call (the harness fills them with NaN).
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "gpu_test_util.h"
#include "parallel_ranks.h"

using namespace commvq;
using namespace commvq::gpu_test;
using commvq::test::io_tokens;
using commvq::test::Ranks;

namespace {

commvq_cache_params_t slice_params() {
    commvq_cache_params_t p = test::small_params();
    p.device = 0;
    p.max_seqs = 3;
    p.max_tokens = 512;
    p.block_tokens = 16;
    p.window = 8;
    p.sink_tokens = 2;
    return p;
}

// One attention plan for caches of any number of KV heads: no clusters, 5
// splits per row.
struct OnePlan {
    ScopedEnv cluster{"COMMVQ_CUDA_ATTEND_CLUSTER", "1"};
    ScopedEnv splits{"COMMVQ_CUDA_ATTEND_SPLITS", "5"};
};

void own_plan_tolerances(Ranks& t) {
    t.out_tolerance = t.dtype == COMMVQ_DTYPE_BF16 ? 2e-2 : 4e-3;
    t.lse_tolerance = 2e-3;
}

}  // namespace

TEST_CASE("gpu: parallel slices: 1, 2 and 4 ranks of 4 KV heads reproduce one full GPU cache bit for bit") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    for (int32_t mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
        commvq_codebook_t* cb = test::codebook_handle(test::four_heads(mode, 7, 64));
        CAPTURE(mode);
        test::for_each_random_case(slice_params(), [&](const commvq_cache_params_t& p, uint32_t ranks) {
            OnePlan plan;
            Ranks t(cb, p, ranks);
            test::run_random(t, 100 + ranks);
        });
        commvq_codebook_free(cb);
    }
}

TEST_CASE("gpu: parallel slices: each cache's own attention plan stays within the attention tolerance") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    for (int32_t mode : {COMMVQ_SCALE_TOKEN, COMMVQ_SCALE_HEAD}) {
        commvq_codebook_t* cb = test::codebook_handle(test::four_heads(mode, 8, 64));
        for (int32_t dtype : {COMMVQ_DTYPE_F32, COMMVQ_DTYPE_BF16})
            for (uint32_t ranks : {2u, 4u}) {
                CAPTURE(mode);
                CAPTURE(dtype);
                CAPTURE(ranks);
                commvq_cache_params_t p = slice_params();
                p.io_dtype = dtype;
                Ranks t(cb, p, ranks);
                own_plan_tolerances(t);
                test::run_random(t, 200 + ranks);
                MESSAGE("own plans, mode " << mode << ", dtype " << dtype << ", " << ranks
                                           << " ranks: largest relative output difference " << t.worst_out
                                           << ", lse " << t.worst_lse);
            }
        commvq_codebook_free(cb);
    }
}

TEST_CASE("gpu: parallel slices: window 0 and no sinks (every token encoded at its append)") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    commvq_codebook_t* cb = test::codebook_handle(test::four_heads(COMMVQ_SCALE_TOKEN, 9, 64));
    commvq_cache_params_t p = slice_params();
    p.window = 0;
    p.sink_tokens = 0;
    for (uint32_t ranks : {2u, 4u}) {
        CAPTURE(ranks);
        OnePlan plan;
        Ranks t(cb, p, ranks);
        test::run_random(t, 7);
    }
    commvq_codebook_free(cb);
}

TEST_CASE("gpu: parallel slices: the bytellama fixture through the shipped 1-bit codebook, 1 and 2 ranks") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    commvq_codebook_t* cb = test::fixture_codebook_handle();
    for (bool one_plan : {true, false})
        for (uint32_t ranks : {1u, 2u}) {
            CAPTURE(one_plan);
            CAPTURE(ranks);
            commvq_cache_params_t p = slice_params();
            p.max_tokens = 1024;
            p.window = 16;
            p.sink_tokens = 4;
            p.io_dtype = COMMVQ_DTYPE_F32;  // the fixture's tokens are float32
            std::unique_ptr<OnePlan> plan(one_plan ? new OnePlan : nullptr);
            Ranks t(cb, p, ranks);
            if (!one_plan) own_plan_tolerances(t);
            test::run_fixture(t);
            CHECK(t.full->cache.sequence(0).layers[0].compressed == 90 + 20 - 4 - 16);
            for (auto* c : t.slice) CHECK(c->cache.layout().token_bytes() == (ranks == 1 ? 73u : 57u));
            if (!one_plan) MESSAGE("fixture, own plans, " << ranks << " ranks: largest relative output difference "
                                                          << t.worst_out << ", lse " << t.worst_lse);
        }
    commvq_codebook_free(cb);
}

TEST_CASE("gpu: parallel slices: device-pointer norms, keys, values, queries and outputs give what host pointers give") {
    REQUIRE_MESSAGE(have_gpu(), "gpu tests need a CUDA device");
    commvq_codebook_t* cb = test::codebook_handle(test::four_heads(COMMVQ_SCALE_TOKEN, 11, 64));
    for (int32_t dtype : {COMMVQ_DTYPE_F32, COMMVQ_DTYPE_BF16}) {
        CAPTURE(dtype);
        commvq_cache_params_t p = slice_params();
        p.io_dtype = dtype;
        p.kv_head_begin = 2;
        p.kv_head_count = 2;
        const size_t es = dtype_size(dtype);
        // Rank 1 of 2, twice: host pointers and device pointers. Rank 0's
        // norms (the other half of the exchange) come from a cache of its own.
        commvq_cache_t* host = test::make_cache(cb, p);
        commvq_cache_t* dev = test::make_cache(cb, p);
        commvq_cache_params_t p0 = p;
        p0.kv_head_begin = 0;
        commvq_cache_t* other = test::make_cache(cb, p0);
        test::Rng rng(5);
        const uint32_t d = 64, H = 4, count = 2, G = 2;
        const std::vector<uint32_t> ids = {1, 0};
        const uint32_t m = uint32_t(ids.size());
        for (uint32_t n : {21u, 1u, 3u, 1u, 1u, 12u})
            for (uint32_t l = 0; l < 2; ++l) {
                const size_t rows = size_t(m) * n;
                const auto k = io_tokens(rng, rows * count * d, dtype);
                const auto k_other = io_tokens(rng, rows * count * d, dtype);
                const auto v = io_tokens(rng, rows * H * d, dtype);
                // Host: the harness's exchange.
                std::vector<double> norms(H * rows, NAN);
                REQUIRE(commvq_cache_key_norms2(other, l, m, ids.data(), n, k_other.data(), norms.data()) == COMMVQ_OK);
                REQUIRE(commvq_cache_key_norms2(host, l, m, ids.data(), n, k.data(), norms.data() + count * rows) ==
                        COMMVQ_OK);
                // Device: this rank's norms computed into device memory, the
                // other rank's copied next to them, as an all-gather would.
                DeviceCopy dk(k.size(), k.data()), dv(v.size(), v.data()), dn(norms.size() * 8);
                GPU_CHECK(cudaMemset(dn.ptr, 0xff, norms.size() * 8));
                GPU_CHECK(cudaMemcpy(dn.ptr, norms.data(), count * rows * 8, cudaMemcpyHostToDevice));
                double* dn_mine = static_cast<double*>(dn.ptr) + count * rows;
                CVQ_OK(commvq_cache_key_norms2(dev, l, m, ids.data(), n, dk.ptr, dn_mine));
                CVQ_OK(commvq_cache_synchronize(dev));
                CHECK(dn.to_host(norms.size() * 8) ==
                      std::vector<uint8_t>(reinterpret_cast<uint8_t*>(norms.data()),
                                           reinterpret_cast<uint8_t*>(norms.data() + norms.size())));
                CVQ_OK(commvq_cache_append_norms2(host, l, m, ids.data(), n, k.data(), v.data(), norms.data()));
                CVQ_OK(commvq_cache_append_norms2(dev, l, m, ids.data(), n, dk.ptr, dv.ptr,
                                                  static_cast<const double*>(dn.ptr)));
                // The other rank appends too, so its lengths (the positions
                // of its next norms) keep up.
                CVQ_OK(commvq_cache_append_norms2(other, l, m, ids.data(), n, k_other.data(), v.data(), norms.data()));
                // Attention from device memory against host memory, bit for bit.
                const size_t q_bytes = size_t(m) * count * G * d * es;
                const auto q = io_tokens(rng, size_t(m) * count * G * d, dtype);
                std::vector<uint8_t> out_h(q_bytes, 0xff);
                std::vector<float> lse_h(size_t(m) * count * G, NAN);
                CVQ_OK(commvq_cache_attend_batch(host, l, m, ids.data(), q.data(), out_h.data(), lse_h.data(), 0));
                DeviceCopy dq(q_bytes, q.data()), dout(q_bytes), dlse(lse_h.size() * 4);
                GPU_CHECK(cudaMemset(dout.ptr, 0xff, q_bytes));
                GPU_CHECK(cudaMemset(dlse.ptr, 0xff, lse_h.size() * 4));
                CVQ_OK(commvq_cache_attend_batch(dev, l, m, ids.data(), dq.ptr, dout.ptr,
                                                 static_cast<float*>(dlse.ptr), 0));
                CVQ_OK(commvq_cache_synchronize(dev));
                CHECK(dout.to_host(q_bytes) == out_h);
                const std::vector<uint8_t> lse_d = dlse.to_host(lse_h.size() * 4);
                CHECK(std::memcmp(lse_d.data(), lse_h.data(), lse_d.size()) == 0);
            }
        // Everything the two hold, bit for bit.
        for (uint32_t seq : ids)
            for (uint32_t l = 0; l < 2; ++l) {
                const Cache& a = host->cache;
                const Cache& b = dev->cache;
                const LayerView va = a.sequence(seq).view(seq, l, p.sink_tokens);
                const LayerView vb = b.sequence(seq).view(seq, l, p.sink_tokens);
                REQUIRE(va.compressed == vb.compressed);
                std::vector<uint8_t> ta(va.compressed * a.layout().token_bytes()), tb(ta.size());
                a.backend().read_compressed(l, va, 0, va.compressed, ta.data());
                b.backend().read_compressed(l, vb, 0, vb.compressed, tb.data());
                CHECK(ta == tb);
                const size_t kb = size_t(count) * d * es, vbytes = size_t(H) * d * es;
                std::vector<uint8_t> ka(va.window * kb), xa(va.window * vbytes), kb2(ka.size()), xb(xa.size());
                a.backend().read_uncompressed(l, va, va.first_window_position(), va.window, ka.data(), xa.data());
                b.backend().read_uncompressed(l, vb, vb.first_window_position(), vb.window, kb2.data(), xb.data());
                CHECK(ka == kb2);
                CHECK(xa == xb);
            }
        // Still refused on a GPU slice: sequence files (they hold all heads).
        CHECK(commvq_cache_seq_save(dev, 0, "/nonexistent/x.cvqs") == COMMVQ_ERR_NOT_SUPPORTED);
        CHECK(std::string(commvq_last_error()).find("commvq_cache_seq_save") != std::string::npos);
        commvq_cache_destroy(host);
        commvq_cache_destroy(dev);
        commvq_cache_destroy(other);
    }
    commvq_codebook_free(cb);
}
