// The block pool's capacity: used to the last slot, refused one token past
// it (copy-on-write copies included), and nothing changes on refusal.
#include <doctest/doctest.h>

#include "cache_test_util.h"

using namespace commvq;
using namespace commvq::test;

namespace {

commvq_cache_params_t four_blocks() {
    commvq_cache_params_t p = small_params();
    p.max_tokens = 64;  // 4 blocks of 16
    p.block_tokens = 16;
    p.window = 8;
    return p;
}

uint64_t free_tokens(commvq_cache_t* c) {
    commvq_cache_stats_t s;
    commvq_cache_stats_init(&s);
    REQUIRE(commvq_cache_get_stats(c, &s) == COMMVQ_OK);
    return s.tokens_free;
}

}  // namespace

TEST_CASE("capacity: the pool fills exactly to its last slot, one more token is refused") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c = make_cache(cb, four_blocks());
    const size_t D = c->cache.codebook().value_dim();
    std::vector<float> kv(80 * D, 0.25f);
    append_tokens(c, 0, 70, 1);  // 62 compressed
    CHECK(free_tokens(c) == 0);
    // Layer 0 takes the last two slots; layer 1 then needs no new block.
    REQUIRE(commvq_cache_append(c, 0, 0, 2, kv.data(), kv.data()) == COMMVQ_OK);
    REQUIRE(commvq_cache_append(c, 1, 0, 2, kv.data(), kv.data()) == COMMVQ_OK);
    CHECK(c->cache.sequence(0).layers[1].compressed == 64);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 0, 1, kv.data(), kv.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 0, 9, kv.data(), kv.data()));

    // Another sequence still has its window, and not one token more.
    append_tokens(c, 1, 8, 2);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 1, 1, kv.data(), kv.data()));

    // Truncation gives blocks back.
    REQUIRE(commvq_cache_seq_truncate(c, 0, 60) == COMMVQ_OK);  // 60 compressed: still 4 blocks
    CHECK(free_tokens(c) == 0);
    REQUIRE(commvq_cache_seq_truncate(c, 0, 48) == COMMVQ_OK);  // 48 compressed: 3 blocks
    CHECK(free_tokens(c) == 16);
    append_tokens(c, 1, 16, 3);  // 16 compressed: exactly the free block
    CHECK(free_tokens(c) == 0);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 1, 1, kv.data(), kv.data()));
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("capacity: a copy-on-write copy counts, refused when no block is free") {
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_t* c = make_cache(cb, four_blocks());
    const size_t D = c->cache.codebook().value_dim();
    std::vector<float> kv(D, 0.5f);
    append_tokens(c, 0, 68, 1);  // 60 compressed: 4 blocks, the last one shared after the fork
    REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    CHECK(free_tokens(c) == 0);
    // Slot 60 is free in the block table, but the block is shared.
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 1, 1, kv.data(), kv.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 0, 1, kv.data(), kv.data()));
    REQUIRE(commvq_cache_seq_clear(c, 0) == COMMVQ_OK);
    CHECK(free_tokens(c) == 0);  // the child still holds all four
    REQUIRE(commvq_cache_append(c, 0, 1, 4, std::vector<float>(4 * D, 0.5f).data(),
                                std::vector<float>(4 * D, 0.5f).data()) == COMMVQ_OK);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("capacity: a cache without a pool (max_tokens 0) holds sinks and window only") {
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_params_t p = four_blocks();
    p.max_tokens = 0;
    p.sink_tokens = 2;
    commvq_cache_t* c = make_cache(cb, p);
    const size_t D = c->cache.codebook().value_dim();
    std::vector<float> kv(D, 0.5f);
    append_tokens(c, 0, 10, 4);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append(c, 0, 0, 1, kv.data(), kv.data()));
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}
