// Helpers of the cache and C API tests: codebook handles made from random
// codebooks, random tokens, and a snapshot of everything a cache holds, to
// show that a failed call changed nothing.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cache.h"
#include "capi/guard.h"
#include "codebook_file.h"
#include "dtype.h"
#include "commvq/commvq.h"
#include "random_codebook.h"

namespace commvq {
namespace test {

// A C handle of a random codebook, loaded through the C API from memory.
inline commvq_codebook_t* codebook_handle(const RandomCodebookSpec& spec) {
    const std::vector<uint8_t> bytes = serialize_codebook(random_codebook(spec));
    commvq_codebook_t* cb = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &cb) == COMMVQ_OK);
    return cb;
}

inline RandomCodebookSpec small_spec(uint32_t layers = 2, uint64_t seed = 1) {
    RandomCodebookSpec s;
    s.n_layers = layers;
    s.n_kv_heads = 2;
    s.n_q_heads = 4;
    s.head_dim = 32;
    s.seed = seed;
    return s;
}

inline commvq_cache_params_t small_params() {
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_seqs = 4;
    p.max_tokens = 256;
    p.block_tokens = 16;
    p.window = 8;
    p.n_threads = 2;
    return p;
}

inline commvq_cache_t* make_cache(commvq_codebook_t* cb, const commvq_cache_params_t& p) {
    commvq_cache_t* c = nullptr;
    REQUIRE(commvq_cache_create(cb, &p, &c) == COMMVQ_OK);
    return c;
}

// Appends n random tokens (in the cache's io_dtype) to every layer of seq.
inline void append_tokens(commvq_cache_t* c, uint32_t seq, uint32_t n, uint64_t seed) {
    const Codebook& cb = c->cache.codebook();
    const int32_t dtype = c->cache.params().io_dtype;
    Rng rng(seed);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        std::vector<float> k = rng.normals(size_t(n) * cb.value_dim()), v = rng.normals(size_t(n) * cb.value_dim());
        std::vector<uint8_t> kb(k.size() * dtype_size(dtype)), vb(v.size() * dtype_size(dtype));
        from_float(k.data(), k.size(), dtype, kb.data());
        from_float(v.data(), v.size(), dtype, vb.data());
        REQUIRE(commvq_cache_append(c, l, seq, n, kb.data(), vb.data()) == COMMVQ_OK);
    }
}

// Everything observable about a cache: statistics, sequence lengths, block
// tables, layer states, reference counts, and the bits of an attention
// output of every non-empty layer of every sequence (fixed queries).
struct Snapshot {
    std::vector<uint8_t> bytes;
    bool operator==(const Snapshot& o) const { return bytes == o.bytes; }
};

inline Snapshot snapshot(commvq_cache_t* c) {
    Snapshot s;
    auto add = [&](const void* p, size_t n) {
        const auto* b = static_cast<const uint8_t*>(p);
        s.bytes.insert(s.bytes.end(), b, b + n);
    };
    commvq_cache_stats_t st;
    commvq_cache_stats_init(&st);
    REQUIRE(commvq_cache_get_stats(c, &st) == COMMVQ_OK);
    add(&st, sizeof st);
    const Cache& cache = c->cache;
    const Codebook& cb = cache.codebook();
    for (uint32_t b = 0; b < cache.block_pool().capacity(); ++b) {
        uint32_t r = cache.block_pool().references(b);
        add(&r, sizeof r);
    }
    Rng rng(12345);
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    const std::vector<float> q = rng.normals(row);
    const size_t esize = cache.params().io_dtype == COMMVQ_DTYPE_F32 ? 4 : 2;
    std::vector<uint8_t> q_io(row * esize);
    if (esize == 4) std::memcpy(q_io.data(), q.data(), q_io.size());
    else std::memset(q_io.data(), 0x3c, q_io.size());  // 1.0 in f16-ish bits; any fixed finite query
    for (uint32_t seq = 0; seq < cache.params().max_seqs; ++seq) {
        const Sequence& sq = cache.sequence(seq);
        add(sq.blocks.data(), sq.blocks.size() * sizeof(uint32_t));
        for (uint32_t l = 0; l < cb.n_layers; ++l) {
            add(&sq.layers[l], sizeof(LayerState));
            if (sq.layers[l].length == 0) continue;
            std::vector<uint8_t> out(row * esize);
            std::vector<float> lse(cb.n_q_heads);
            REQUIRE(commvq_cache_attend(c, l, seq, 1, q_io.data(), out.data(), lse.data(), 0) == COMMVQ_OK);
            add(out.data(), out.size());
            add(lse.data(), lse.size() * sizeof(float));
        }
    }
    return s;
}

// Everything snapshot() sees, plus the bytes of every compressed token and
// every uncompressed slot (sinks and window) of every layer of every
// sequence.
inline std::vector<uint8_t> contents(commvq_cache_t* c) {
    std::vector<uint8_t> all = snapshot(c).bytes;
    const Cache& cache = c->cache;
    const size_t es = dtype_size(cache.params().io_dtype);
    const size_t kb = size_t(cache.codebook().key_dim()) * es, vb = size_t(cache.codebook().value_dim()) * es;
    for (uint32_t seq = 0; seq < cache.params().max_seqs; ++seq) {
        for (uint32_t l = 0; l < cache.codebook().n_layers; ++l) {
            const LayerView v = cache.sequence(seq).view(seq, l, cache.params().sink_tokens);
            std::vector<uint8_t> codes(v.compressed * cache.layout().token_bytes());
            cache.backend().read_compressed(l, v, 0, v.compressed, codes.data());
            std::vector<uint8_t> k((v.sinks + v.window) * kb), vv((v.sinks + v.window) * vb);
            cache.backend().read_uncompressed(l, v, 0, v.sinks, k.data(), vv.data());
            cache.backend().read_uncompressed(l, v, v.first_window_position(), v.window, k.data() + v.sinks * kb,
                                              vv.data() + v.sinks * vb);
            for (const auto* part : {&codes, &k, &vv}) all.insert(all.end(), part->begin(), part->end());
        }
    }
    return all;
}

// A call that must fail with `status`, say why, and change nothing; the
// cache's bookkeeping then passes its integrity check (block tables,
// reference counts, free list: Cache::check_integrity).
#define CHECK_FAILS_UNCHANGED(handle, status, call)                                 \
    do {                                                                            \
        const commvq::test::Snapshot before_ = commvq::test::snapshot(handle);      \
        commvq::capi::set_last_error("", "");                                       \
        const commvq_status_t got_ = (call);                                        \
        CHECK_MESSAGE(got_ == (status), #call " returned " << commvq_status_string(got_)); \
        CHECK_MESSAGE(std::strlen(commvq_last_error()) > 0, #call " left no message"); \
        CHECK_MESSAGE(commvq::test::snapshot(handle) == before_, #call " changed the cache"); \
        CHECK_NOTHROW((handle)->cache.check_integrity());                           \
    } while (0)

}  // namespace test
}  // namespace commvq
