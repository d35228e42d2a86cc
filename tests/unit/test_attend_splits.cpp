// How decode attention divides a row's compressed tokens among its splits
// (kernels/attention/layout.h split_tokens, the function the CUDA kernel
// calls): the splits' ranges tile [0, n_comp) in order, with nothing left
// out and nothing attended twice, and split 0, which also attends the
// uncompressed tokens, takes that many fewer compressed ones.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>

#include "attention/layout.h"

using commvq::cuda::attention::split_tokens;
using commvq::cuda::attention::TokenRange;

namespace {

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

void check_tiling(uint64_t n_comp, uint64_t n_unc, uint32_t n_splits) {
    CAPTURE(n_comp);
    CAPTURE(n_unc);
    CAPTURE(n_splits);
    uint64_t next = 0, longest_other = 0;
    for (uint32_t s = 0; s < n_splits; ++s) {
        const TokenRange r = split_tokens(n_comp, n_unc, n_splits, s);
        REQUIRE(r.begin <= r.end);
        if (r.begin != r.end) {
            REQUIRE(r.begin == next);  // in order, no gap, no overlap
            next = r.end;
        } else {
            REQUIRE(r.begin <= n_comp);
        }
        if (s > 0) longest_other = std::max(longest_other, r.end - r.begin);
    }
    CHECK(next == n_comp);
    const uint64_t even = ceil_div(n_comp, n_splits);
    const TokenRange first = split_tokens(n_comp, n_unc, n_splits, 0);
    if (n_splits == 1) {
        CHECK(first.end == n_comp);
        return;
    }
    // Split 0 gives up as many compressed tokens as it has uncompressed ones
    // (down to none); the others share the rest evenly.
    CHECK(first.end - first.begin == (even > n_unc ? even - n_unc : 0));
    CHECK(longest_other == std::min<uint64_t>(n_comp - first.end, ceil_div(n_comp - first.end, n_splits - 1)));
}

}  // namespace

TEST_CASE("attention splits tile the compressed tokens; split 0's share shrinks by the uncompressed ones") {
    // The cases the benchmark runs (8 KV heads x 15 splits for one row,
    // window 128 plus a few sinks), edges, and random sizes.
    check_tiling(1024 - 132, 132, 15);
    check_tiling(131072 - 132, 132, 15);
    check_tiling(0, 0, 15);
    check_tiling(0, 200, 15);
    check_tiling(5, 0, 15);
    check_tiling(5, 3, 15);
    check_tiling(7, 100, 2);
    check_tiling(1000, 0, 1);
    check_tiling(1000, 50, 1);
    check_tiling(uint64_t(1) << 33, 4096, 255);
    std::mt19937_64 rng(17);
    for (int i = 0; i < 20000; ++i) {
        const uint64_t n_comp = rng() % (i % 2 ? 300 : 300000), n_unc = rng() % 600;
        const uint32_t n_splits = 1 + uint32_t(rng() % 255);
        check_tiling(n_comp, n_unc, n_splits);
    }
    // Without uncompressed tokens split 0 keeps the even share.
    const TokenRange r = split_tokens(1000, 0, 8, 0);
    CHECK(r.begin == 0);
    CHECK(r.end == 125);
}
