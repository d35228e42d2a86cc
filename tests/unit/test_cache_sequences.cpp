// Sequences of a cache: fork with copy-on-write blocks, truncate, clear,
// layers in step, and the statistics that describe them. Numbers are checked
// against the float64 reference (cache_reference.h) at 1e-5 relative.
#include <doctest/doctest.h>

#include <cstring>

#include "cache_reference.h"
#include "cache_test_util.h"
#include "code_packing.h"
#include "dtype.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "value_encoder.h"

using namespace commvq;
using namespace commvq::test;

namespace {

// Tokens for a cache and its reference model at once.
struct Feed {
    commvq_cache_t* c;
    ReferenceCache ref;
    Rng rng;
    explicit Feed(commvq_cache_t* cache) : c(cache), ref(cache->cache), rng(3) {}

    void append(uint32_t seq, uint32_t n, uint32_t only_layer = UINT32_MAX) {
        const Codebook& cb = c->cache.codebook();
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            if (only_layer != UINT32_MAX && l != only_layer) continue;
            std::vector<float> k = rng.normals(size_t(n) * cb.value_dim()), v = rng.normals(size_t(n) * cb.value_dim());
            REQUIRE(commvq_cache_append(c, l, seq, n, k.data(), v.data()) == COMMVQ_OK);
            ref.append(l, seq, n, k.data(), v.data());
        }
    }
    // Worst relative error of a 3-query causal attention over every layer.
    double error(uint32_t seq) {
        const Codebook& cb = c->cache.codebook();
        const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
        double worst = 0;
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            const uint32_t nq = uint32_t(std::min<uint64_t>(3, c->cache.sequence(seq).layers[l].length));
            std::vector<float> q = rng.normals(nq * row), out(nq * row, NAN);
            REQUIRE(commvq_cache_attend(c, l, seq, nq, q.data(), out.data(), nullptr, 0) == COMMVQ_OK);
            std::vector<double> ro, rl;
            ref.attend_last(l, seq, nq, q.data(), true, ro, rl);
            worst = std::max(worst, max_relative_error(out, ro, cb.head_dim));
        }
        return worst;
    }
};

commvq_cache_stats_t stats(commvq_cache_t* c) {
    commvq_cache_stats_t s;
    commvq_cache_stats_init(&s);
    REQUIRE(commvq_cache_get_stats(c, &s) == COMMVQ_OK);
    return s;
}

std::vector<uint8_t> attention_bits(commvq_cache_t* c, uint32_t seq) {
    const Codebook& cb = c->cache.codebook();
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    Rng rng(77);
    std::vector<float> q = rng.normals(2 * row);
    std::vector<uint8_t> bits;
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        std::vector<float> out(2 * row), lse(2 * cb.n_q_heads);
        REQUIRE(commvq_cache_attend(c, l, seq, 2, q.data(), out.data(), lse.data(), 0) == COMMVQ_OK);
        const auto* o = reinterpret_cast<const uint8_t*>(out.data());
        bits.insert(bits.end(), o, o + out.size() * 4);
        const auto* s = reinterpret_cast<const uint8_t*>(lse.data());
        bits.insert(bits.end(), s, s + lse.size() * 4);
    }
    return bits;
}

}  // namespace

TEST_CASE("fork: blocks shared copy-on-write, parent and child diverge, parent unchanged") {
    commvq_codebook_t* cb = codebook_handle(small_spec());
    commvq_cache_t* c = make_cache(cb, small_params());  // 16-token blocks, window 8
    Feed f(c);
    f.append(0, 100);  // 92 compressed: 6 blocks, the last one holds 12
    CHECK(stats(c).blocks_used == 6);
    const std::vector<uint8_t> parent_before = attention_bits(c, 0);

    REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    f.ref.fork(0, 1);
    commvq_cache_stats_t s = stats(c);
    CHECK(s.blocks_used == 6);  // shared blocks count once
    CHECK(s.n_seqs_used == 2);
    CHECK(s.tokens == 200);
    CHECK(s.compressed_tokens == 184);
    for (uint32_t b : c->cache.sequence(1).blocks) CHECK(c->cache.block_pool().references(b) == 2);
    CHECK(attention_bits(c, 1) == parent_before);  // the window was copied too

    // The child writes into the shared last block (copied) and one new block.
    f.append(1, 10);
    CHECK(stats(c).blocks_used == 8);
    CHECK(c->cache.sequence(1).blocks[5] != c->cache.sequence(0).blocks[5]);
    for (int j = 0; j < 5; ++j) CHECK(c->cache.sequence(1).blocks[j] == c->cache.sequence(0).blocks[j]);
    CHECK(attention_bits(c, 0) == parent_before);
    CHECK(f.error(1) <= 1e-5);

    // The parent's last block is its own again: no copy, one new block.
    f.append(0, 5);
    CHECK(stats(c).blocks_used == 9);
    CHECK(f.error(0) <= 1e-5);
    CHECK(f.error(1) <= 1e-5);

    // Clearing one side keeps the blocks the other still uses.
    REQUIRE(commvq_cache_seq_clear(c, 0) == COMMVQ_OK);
    f.ref.clear(0);
    CHECK(stats(c).blocks_used == 7);
    CHECK(f.error(1) <= 1e-5);
    for (uint32_t b : c->cache.sequence(1).blocks) CHECK(c->cache.block_pool().references(b) == 1);
    REQUIRE(commvq_cache_seq_clear(c, 1) == COMMVQ_OK);
    s = stats(c);
    CHECK(s.blocks_used == 0);
    CHECK(s.n_seqs_used == 0);
    CHECK(s.tokens == 0);
    CHECK(s.tokens_free == 256);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("fork of a fork, then the parent truncated: every sequence keeps its tokens") {
    commvq_codebook_t* cb = codebook_handle(small_spec());
    commvq_cache_t* c = make_cache(cb, small_params());
    Feed f(c);
    f.append(0, 60);
    REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    f.ref.fork(0, 1);
    f.append(1, 20);
    REQUIRE(commvq_cache_seq_fork(c, 1, 2) == COMMVQ_OK);
    f.ref.fork(1, 2);
    f.append(2, 33);
    REQUIRE(commvq_cache_seq_truncate(c, 0, 17) == COMMVQ_OK);
    f.ref.truncate(0, 17);
    f.append(0, 40);
    for (uint32_t s = 0; s < 3; ++s) CHECK(f.error(s) <= 1e-5);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("truncate keeps compressed tokens compressed, frees blocks past the end, re-append") {
    commvq_codebook_t* cb = codebook_handle(small_spec());
    commvq_cache_params_t p = small_params();
    p.sink_tokens = 4;
    commvq_cache_t* c = make_cache(cb, p);
    Feed f(c);
    f.append(0, 100);  // sinks 4, compressed 88, window 8
    const Sequence& s = c->cache.sequence(0);
    CHECK(s.layers[0].compressed == 88);
    CHECK(s.blocks.size() == 6);

    REQUIRE(commvq_cache_seq_truncate(c, 0, 95) == COMMVQ_OK);  // window keeps 3
    f.ref.truncate(0, 95);
    CHECK(s.layers[0].compressed == 88);
    CHECK(f.error(0) <= 1e-5);

    REQUIRE(commvq_cache_seq_truncate(c, 0, 50) == COMMVQ_OK);  // inside the compressed range
    f.ref.truncate(0, 50);
    CHECK(s.layers[1].compressed == 46);
    CHECK(s.blocks.size() == 3);
    CHECK(stats(c).blocks_used == 3);
    CHECK(f.error(0) <= 1e-5);

    f.append(0, 30);  // the window fills up to 8 before anything is compressed again
    CHECK(s.layers[0].compressed == 68);
    CHECK(f.error(0) <= 1e-5);

    REQUIRE(commvq_cache_seq_truncate(c, 0, 3) == COMMVQ_OK);  // inside the sinks
    f.ref.truncate(0, 3);
    CHECK(s.layers[0].compressed == 0);
    CHECK(s.blocks.empty());
    CHECK(f.error(0) <= 1e-5);
    f.append(0, 20);
    CHECK(s.layers[0].compressed == 11);  // 23 - 4 sinks - 8 window
    CHECK(f.error(0) <= 1e-5);

    REQUIRE(commvq_cache_seq_truncate(c, 0, 0) == COMMVQ_OK);
    uint64_t len = 1;
    REQUIRE(commvq_cache_seq_length(c, 0, &len) == COMMVQ_OK);
    CHECK(len == 0);
    CHECK(stats(c).blocks_used == 0);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("layers move in step: a layer catches up, leads only when all have caught up") {
    commvq_codebook_t* cb = codebook_handle(small_spec(3));
    commvq_cache_t* c = make_cache(cb, small_params());
    Feed f(c);
    f.append(0, 5, 0);  // layer 0 leads from an even start
    uint64_t len = 0;
    REQUIRE(commvq_cache_seq_length(c, 0, &len) == COMMVQ_OK);
    CHECK(len == 5);
    std::vector<float> kv(6 * c->cache.codebook().value_dim(), 0.5f);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_append(c, 0, 0, 1, kv.data(), kv.data()));
    f.append(0, 3, 1);  // catching up part of the way
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_append(c, 1, 0, 3, kv.data(), kv.data()));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_append(c, 2, 0, 6, kv.data(), kv.data()));
    f.append(0, 2, 1);
    f.append(0, 5, 2);
    f.append(0, 1, 2);  // all at 5: any layer may lead
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_seq_fork(c, 0, 1));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_seq_save(c, 0, "unused.cvqseq"));
    // Truncation past a lagging layer leaves that layer alone.
    REQUIRE(commvq_cache_seq_truncate(c, 0, 5) == COMMVQ_OK);
    f.ref.truncate(0, 5);
    CHECK(c->cache.sequence(0).in_step());
    f.append(0, 30);
    CHECK(f.error(0) <= 1e-5);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("stats describe the cache") {
    commvq_codebook_t* cb = codebook_handle(small_spec());
    commvq_cache_params_t p = small_params();
    p.io_dtype = COMMVQ_DTYPE_F16;
    p.sink_tokens = 2;
    commvq_cache_t* c = make_cache(cb, p);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    const uint64_t D = info.n_kv_heads * info.head_dim;

    commvq_cache_stats_t s = stats(c);
    CHECK(s.struct_size == sizeof s);
    CHECK(s.n_seqs_used == 0);
    CHECK(s.blocks_total == 16);
    CHECK(s.tokens_free == 256);
    CHECK(s.bytes_window == 0);
    CHECK(s.bytes_per_compressed_token == double(info.compressed_token_bytes) * info.n_layers);
    CHECK(s.bytes_per_token_16bit == double(2 * D * 2 * info.n_layers));
    CHECK(s.bytes_codebook > 0);
    const BlockLayout& layout = c->cache.layout();
    // Pool and windows at least; tables and scratch on top.
    CHECK(s.bytes_reserved >= 16 * layout.block_bytes * info.n_layers + 4 * info.n_layers * (8 + 2) * 2 * D * 2);

    std::vector<uint16_t> kv(40 * D, 0x3c00);  // f16 1.0
    for (uint32_t l = 0; l < info.n_layers; ++l) REQUIRE(commvq_cache_append(c, l, 0, 40, kv.data(), kv.data()) == COMMVQ_OK);
    for (uint32_t l = 0; l < info.n_layers; ++l) REQUIRE(commvq_cache_append(c, l, 3, 5, kv.data(), kv.data()) == COMMVQ_OK);
    s = stats(c);
    CHECK(s.n_seqs_used == 2);
    CHECK(s.tokens == 45);
    CHECK(s.compressed_tokens == 30);  // 40 - 2 sinks - 8 window
    CHECK(s.blocks_used == 2);
    CHECK(s.tokens_free == 14 * 16);
    CHECK(s.bytes_compressed == 2 * layout.block_bytes * info.n_layers);
    CHECK(s.bytes_window == (10 + 5) * 2 * D * 2 * info.n_layers);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("append encodes tokens leaving the window exactly as the encoders do, into the right slots") {
    commvq_codebook_t* cbh = codebook_handle(small_spec(1));
    commvq_cache_params_t p = small_params();
    p.n_threads = 3;
    p.block_tokens = 4;
    commvq_cache_t* c = make_cache(cbh, p);
    const Codebook& cb = c->cache.codebook();
    Rng rng(8);
    const size_t D = cb.value_dim();
    std::vector<float> k = rng.normals(70 * D), v = rng.normals(70 * D);
    REQUIRE(commvq_cache_append(c, 0, 0, 3, k.data(), v.data()) == COMMVQ_OK);
    REQUIRE(commvq_cache_append(c, 0, 0, 67, k.data() + 3 * D, v.data() + 3 * D) == COMMVQ_OK);
    const LayerView view = c->cache.sequence(0).view(0, 0, 0);
    REQUIRE(view.compressed == 62);
    const uint32_t tb = uint32_t(c->cache.layout().token_bytes());
    std::vector<uint8_t> stored(62 * tb);
    c->cache.backend().read_compressed(0, view, 0, 62, stored.data());
    KeyEncoder ke(cb, 0);
    ValueEncoder ve(cb, 0);
    std::vector<float> canon(D), scratch(ve.scratch_floats());
    std::vector<uint16_t> codes(cb.n_kv_heads * cb.key_stages);
    std::vector<uint8_t> expect(tb);
    for (uint32_t t = 0; t < 62; ++t) {
        for (uint32_t g = 0; g < cb.n_kv_heads; ++g)
            to_canonical(k.data() + t * D + g * cb.head_dim, cb.head_dim, cb.pair_layout, canon.data() + g * cb.head_dim);
        // The packed token format: key codes, value codes, scales, weight
        // (unaligned: the floats go through aligned copies).
        const BlockLayout& b = c->cache.layout();
        std::vector<float> floats(b.n_key_scales + 1);
        ke.encode(canon.data(), codes.data(), floats.data());
        pack_codes(codes.data(), codes.size(), cb.code_bits(), expect.data());
        ve.encode(v.data() + t * D, expect.data() + b.key_code_bytes, &floats[b.n_key_scales], scratch.data());
        std::memcpy(expect.data() + b.key_code_bytes + b.value_code_bytes, floats.data(), floats.size() * 4);
        INFO("token " << t);
        CHECK(std::memcmp(expect.data(), stored.data() + size_t(t) * tb, tb) == 0);
    }
    commvq_cache_destroy(c);
    commvq_codebook_free(cbh);
}

TEST_CASE("fork: a cache with neither sinks nor window forks and diverges (no slots to copy)") {
    // Its sequences have no uncompressed slots at all, so the fork copies
    // nothing; copying null slots was undefined behaviour (UBSan aborts).
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_params_t p = small_params();
    p.window = 0;
    p.sink_tokens = 0;
    commvq_cache_t* c = make_cache(cb, p);
    append_tokens(c, 0, 20, 1);
    const std::vector<uint8_t> parent = attention_bits(c, 0);
    REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    CHECK(attention_bits(c, 1) == parent);
    append_tokens(c, 1, 5, 2);
    CHECK(attention_bits(c, 0) == parent);
    c->cache.check_integrity();
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}
