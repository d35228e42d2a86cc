// commvq_cache_append_batch: the same cache, bit for bit, as one
// commvq_cache_append per row in turn (codes, windows, block tables,
// reference counts, attention outputs), on random data in every io dtype
// and key convention, with sinks, window 0, several tokens per row, rows
// that catch up beside rows that lead, forks whose shared block two rows of
// one batch write into, and on the real fixture through a shipped codebook;
// and every refusal (layer, ids, duplicates, layers out of step, capacity,
// the input rule) changes nothing.
#include <doctest/doctest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cache_test_util.h"
#include "codebook_file.h"
#include "fixture.h"

using namespace commvq;
using namespace commvq::test;

namespace {

// Random tokens in the cache's io dtype: n rows of D elements.
std::vector<uint8_t> tokens_io(Rng& rng, size_t n, size_t D, int32_t dtype, double scale = 1.0) {
    const std::vector<float> x = rng.normals(n * D, scale);
    std::vector<uint8_t> b(x.size() * dtype_size(dtype));
    from_float(x.data(), x.size(), dtype, b.data());
    return b;
}

// Two caches made alike: `batched` takes append_batch, `single` one append
// per row; both take the same single appends otherwise.
struct Pair {
    commvq_codebook_t* cb;
    commvq_cache_t* batched;
    commvq_cache_t* single;
    size_t D, token_bytes;
    uint32_t L;
    Pair(commvq_codebook_t* codebook, const commvq_cache_params_t& p) : cb(codebook) {
        batched = make_cache(cb, p);
        single = make_cache(cb, p);
        D = batched->cache.codebook().value_dim();
        token_bytes = D * dtype_size(p.io_dtype);
        L = batched->cache.codebook().n_layers;
    }
    ~Pair() {
        commvq_cache_destroy(batched);
        commvq_cache_destroy(single);
        commvq_codebook_free(cb);
    }
    void append(uint32_t layer, uint32_t seq, uint32_t n, const uint8_t* k, const uint8_t* v) {
        REQUIRE(commvq_cache_append(batched, layer, seq, n, k, v) == COMMVQ_OK);
        REQUIRE(commvq_cache_append(single, layer, seq, n, k, v) == COMMVQ_OK);
    }
    void fork(uint32_t src, uint32_t dst) {
        REQUIRE(commvq_cache_seq_fork(batched, src, dst) == COMMVQ_OK);
        REQUIRE(commvq_cache_seq_fork(single, src, dst) == COMMVQ_OK);
    }
    // The batch into one cache, the same rows one by one into the other.
    void batch(uint32_t layer, const std::vector<uint32_t>& ids, uint32_t n_tokens, const uint8_t* k,
               const uint8_t* v) {
        const commvq_status_t st =
            commvq_cache_append_batch(batched, layer, uint32_t(ids.size()), ids.data(), n_tokens, k, v);
        REQUIRE_MESSAGE(st == COMMVQ_OK, commvq_last_error());
        const size_t row = n_tokens * token_bytes;
        for (size_t i = 0; i < ids.size(); ++i)
            REQUIRE(commvq_cache_append(single, layer, ids[i], n_tokens, k + i * row, v + i * row) == COMMVQ_OK);
    }
    void check_same() {
        CHECK_NOTHROW(batched->cache.check_integrity());
        CHECK_NOTHROW(single->cache.check_integrity());
        CHECK(contents(batched) == contents(single));
    }
};

void decode_steps(const commvq_cache_params_t& p, uint32_t n_tokens, uint64_t seed) {
    Pair t(codebook_handle(small_spec(2, seed)), p);
    Rng rng(seed);
    // Sequences at different stages: empty, in the window, compressing,
    // and 4 a fork of 2 (its blocks shared until one of them writes).
    const uint32_t prefix[4] = {0, 5, 30, 17};
    for (uint32_t s = 0; s < 4; ++s)
        for (uint32_t l = 0; prefix[s] && l < t.L; ++l) {
            const auto k = tokens_io(rng, prefix[s], t.D, p.io_dtype), v = tokens_io(rng, prefix[s], t.D, p.io_dtype);
            t.append(l, s, prefix[s], k.data(), v.data());
        }
    t.fork(2, 4);
    t.check_same();
    const std::vector<std::vector<uint32_t>> steps = {{2, 4, 0, 1, 3}, {4, 2}, {1, 3, 0}, {0, 1, 2, 3, 4}, {3}};
    for (uint32_t step = 0; step < 14; ++step) {
        CAPTURE(step);
        std::vector<uint32_t> ids = steps[step % steps.size()];
        // Some steps give their first row layer 0 by a single append: the
        // batch of layer 0 leaves it out, that of layer 1 has it catch up
        // while the other rows lead.
        const bool catch_up = step % 3 == 1;
        for (uint32_t l = 0; l < t.L; ++l) {
            std::vector<uint32_t> rows = ids;
            if (catch_up && l == 0) {
                const auto k = tokens_io(rng, n_tokens, t.D, p.io_dtype), v = tokens_io(rng, n_tokens, t.D, p.io_dtype);
                t.append(0, ids[0], n_tokens, k.data(), v.data());
                rows.erase(rows.begin());
                if (rows.empty()) continue;
            }
            const auto k = tokens_io(rng, rows.size() * n_tokens, t.D, p.io_dtype);
            const auto v = tokens_io(rng, rows.size() * n_tokens, t.D, p.io_dtype);
            t.batch(l, rows, n_tokens, k.data(), v.data());
        }
        t.check_same();
    }
}

commvq_cache_params_t batch_params(int32_t dtype, int32_t keys, uint32_t sinks, uint32_t window,
                                   uint32_t threads) {
    commvq_cache_params_t p = small_params();
    p.max_seqs = 5;
    p.max_tokens = 1024;
    p.block_tokens = 16;
    p.io_dtype = dtype;
    p.key_convention = keys;
    p.sink_tokens = sinks;
    p.window = window;
    p.n_threads = threads;
    return p;
}

bool message_names(const std::string& what) {
    return std::string(commvq_last_error()).find(what) != std::string::npos;
}

}  // namespace

TEST_CASE("append_batch: equals one append per row, bit for bit (dtypes, conventions, sinks, windows, threads)") {
    struct Config {
        int32_t dtype, keys;
        uint32_t sinks, window, threads;
    };
    const Config configs[] = {{COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE, 0, 8, 3},
                              {COMMVQ_DTYPE_F16, COMMVQ_KEYS_POST_ROPE, 2, 8, 2},
                              {COMMVQ_DTYPE_BF16, COMMVQ_KEYS_PRE_ROPE, 3, 0, 1},
                              {COMMVQ_DTYPE_F32, COMMVQ_KEYS_POST_ROPE, 0, 0, 3}};
    uint64_t seed = 40;
    for (const Config& c : configs) {
        for (uint32_t n_tokens : {1u, 3u}) {
            CAPTURE(c.dtype);
            CAPTURE(c.keys);
            CAPTURE(c.sinks);
            CAPTURE(c.window);
            CAPTURE(n_tokens);
            decode_steps(batch_params(c.dtype, c.keys, c.sinks, c.window, c.threads), n_tokens, ++seed);
        }
    }
}

TEST_CASE("append_batch: a block shared by two rows of one batch is copied once, as appends in turn copy it") {
    // Sequences 0 and 1 share two blocks of 16 (fork): 24 compressed
    // tokens, the second block half full. Both rows compress into it: the
    // first copies it, the second then holds it alone. One block is free,
    // which is exactly what appends in turn need.
    commvq_cache_params_t p = batch_params(COMMVQ_DTYPE_F32, COMMVQ_KEYS_PRE_ROPE, 0, 8, 2);
    p.max_seqs = 2;
    p.max_tokens = 48;  // 3 blocks
    Pair t(codebook_handle(small_spec(2, 7)), p);
    Rng rng(7);
    for (uint32_t l = 0; l < t.L; ++l) {
        const auto k = tokens_io(rng, 32, t.D, p.io_dtype), v = tokens_io(rng, 32, t.D, p.io_dtype);
        t.append(l, 0, 32, k.data(), v.data());
    }
    t.fork(0, 1);
    CHECK(t.batched->cache.block_pool().free_count() == 1);
    for (uint32_t l = 0; l < t.L; ++l) {
        const auto k = tokens_io(rng, 2, t.D, p.io_dtype), v = tokens_io(rng, 2, t.D, p.io_dtype);
        t.batch(l, {1, 0}, 1, k.data(), v.data());
    }
    CHECK(t.batched->cache.block_pool().free_count() == 0);
    t.check_same();
    // The pool is full now: a row that needs a new block is refused, and
    // the bookkeeping of the refused batch leaves no trace in the next one.
    const auto k = tokens_io(rng, 2 * 8, t.D, p.io_dtype), v = tokens_io(rng, 2 * 8, t.D, p.io_dtype);
    const uint32_t ids[2] = {0, 1};
    CHECK_FAILS_UNCHANGED(t.batched, COMMVQ_ERR_CAPACITY,
                          commvq_cache_append_batch(t.batched, 0, 2, ids, 8, k.data(), v.data()));
    for (uint32_t l = 0; l < t.L; ++l) t.batch(l, {0, 1}, 2, k.data(), v.data());
    t.check_same();
}

TEST_CASE("append_batch: real keys and values (bytellama fixture) through the shipped 1-bit codebook") {
    const KvFixture& fx = kv_fixture();
    const Codebook cb = load_codebook(std::string(COMMVQ_TEST_DATA) + "/../../data/codebooks/bytellama-13m-1bit.safetensors");
    REQUIRE(cb.n_layers == fx.n_layers);
    const std::vector<uint8_t> bytes = serialize_codebook(cb);
    commvq_codebook_t* h = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &h) == COMMVQ_OK);
    commvq_cache_params_t p = small_params();
    p.max_seqs = 3;
    p.max_tokens = 1024;
    p.block_tokens = 16;
    p.window = 16;
    p.sink_tokens = 4;
    p.n_threads = 2;
    Pair t(h, p);
    const size_t D = t.D;
    // Three sequences cut from the fixture at different places, prompts of
    // different lengths, then decode steps of one token per row.
    const uint32_t start[3] = {0, 300, 700}, prompt[3] = {40, 7, 25};
    auto rows = [&](uint32_t layer, const std::vector<uint32_t>& at, bool values) {
        std::vector<uint8_t> out(at.size() * D * 4);
        for (size_t i = 0; i < at.size(); ++i)
            std::memcpy(out.data() + i * D * 4, values ? fx.value(layer, at[i]) : fx.key(layer, at[i]), D * 4);
        return out;
    };
    for (uint32_t s = 0; s < 3; ++s)
        for (uint32_t l = 0; l < t.L; ++l)
            t.append(l, s, prompt[s], reinterpret_cast<const uint8_t*>(fx.key(l, start[s])),
                     reinterpret_cast<const uint8_t*>(fx.value(l, start[s])));
    const std::vector<uint32_t> ids = {2, 0, 1};
    const size_t q_row = size_t(fx.n_q_heads) * fx.head_dim;
    for (uint32_t step = 0; step < 30; ++step) {
        std::vector<uint32_t> at;
        for (uint32_t s : ids) at.push_back(start[s] + prompt[s] + step);
        for (uint32_t l = 0; l < t.L; ++l) {
            const auto k = rows(l, at, false), v = rows(l, at, true);
            t.batch(l, ids, 1, k.data(), v.data());
            // The decode attention of the step, from both caches: the same bits.
            std::vector<float> q(ids.size() * q_row);
            for (size_t i = 0; i < ids.size(); ++i)
                std::memcpy(q.data() + i * q_row, fx.query(l, (step + uint32_t(i)) % fx.n_queries), q_row * 4);
            std::vector<float> oa(q.size()), ob(q.size()), la(ids.size() * fx.n_q_heads), lb(la.size());
            REQUIRE(commvq_cache_attend_batch(t.batched, l, 3, ids.data(), q.data(), oa.data(), la.data(), 0) ==
                    COMMVQ_OK);
            REQUIRE(commvq_cache_attend_batch(t.single, l, 3, ids.data(), q.data(), ob.data(), lb.data(), 0) ==
                    COMMVQ_OK);
            CHECK(std::memcmp(oa.data(), ob.data(), oa.size() * 4) == 0);
            CHECK(std::memcmp(la.data(), lb.data(), la.size() * 4) == 0);
        }
    }
    CHECK(t.batched->cache.sequence(0).layers[0].compressed == 40 + 30 - 4 - 16);
    t.check_same();
}

TEST_CASE("append_batch: every refusal changes nothing and says why") {
    commvq_codebook_t* cbh = codebook_handle(small_spec(2, 3));
    commvq_cache_params_t p = small_params();  // 4 sequences, blocks of 16, window 8
    p.max_tokens = 96;                          // 6 blocks
    commvq_cache_t* c = make_cache(cbh, p);
    const size_t D = c->cache.codebook().value_dim();
    append_tokens(c, 0, 24, 1);  // 16 compressed: one block
    append_tokens(c, 1, 24, 2);  // one block
    append_tokens(c, 2, 5, 3);   // window only
    Rng rng(4);
    const std::vector<float> k = rng.normals(2 * 32 * D), v = rng.normals(2 * 32 * D);
    const uint32_t ids[3] = {0, 1, 2};

    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append_batch(c, 2, 2, ids, 1, k.data(), v.data()));
    CHECK(message_names("layer 2 out of range"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c, 0, 0, ids, 1, k.data(), v.data()));
    CHECK(message_names("n_seqs is 0"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c, 0, 2, ids, 0, k.data(), v.data()));
    CHECK(message_names("n_tokens is 0"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c, 0, 2, nullptr, 1, k.data(), v.data()));
    CHECK(message_names("commvq_cache_append_batch: seq_ids is NULL"));
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c, 0, 2, ids, 1, k.data(), nullptr));
    CHECK(message_names("commvq_cache_append_batch: v is NULL"));
    CHECK(commvq_cache_append_batch(nullptr, 0, 2, ids, 1, k.data(), v.data()) == COMMVQ_ERR_INVALID_ARGUMENT);
    CHECK(message_names("commvq_cache_append_batch: cache is NULL"));

    // A bad id in a later entry: no row changes, not even the good ones before it.
    const uint32_t bad_id[3] = {0, 1, 4};
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_OUT_OF_RANGE, commvq_cache_append_batch(c, 0, 3, bad_id, 1, k.data(), v.data()));
    CHECK(message_names("entry 2: sequence 4 out of range (max_seqs is 4)"));
    const uint32_t dup[3] = {1, 0, 1};
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(c, 0, 3, dup, 1, k.data(), v.data()));
    CHECK(message_names("entries 0 and 2 both name sequence 1"));

    // Layers out of step: sequence 2's layer 0 is a token ahead, so its
    // layer 0 may not lead again; the rows before it stay as they are.
    {
        const std::vector<float> one = rng.normals(D);
        REQUIRE(commvq_cache_append(c, 0, 2, 1, one.data(), one.data()) == COMMVQ_OK);
    }
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_append_batch(c, 0, 3, ids, 1, k.data(), v.data()));
    CHECK(message_names("commvq_cache_append_batch: entry 2: layers out of step: sequence 2 layer 0 holds 6 tokens"));
    // Layer 1 of the same rows is fine: sequence 2 catches up there.
    {
        const std::vector<float> k3 = rng.normals(3 * D), v3 = rng.normals(3 * D);
        REQUIRE(commvq_cache_append_batch(c, 1, 3, ids, 1, k3.data(), v3.data()) == COMMVQ_OK);
        REQUIRE(commvq_cache_append_batch(c, 0, 2, ids, 1, k3.data(), v3.data()) == COMMVQ_OK);
        CHECK_NOTHROW(c->cache.check_integrity());
    }

    // Capacity: sequences 0 and 1 hold 17 compressed tokens (2 blocks
    // each), 2 blocks are free. 32 more tokens compress into 2 new blocks
    // for either sequence alone, 4 for both.
    CHECK(c->cache.block_pool().free_count() == 2);
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_append_batch(c, 0, 2, ids, 32, k.data(), v.data()));
    CHECK(message_names("this batch needs 4 more blocks, 2 of 6 are free"));
    for (uint32_t seq : {0u, 1u}) {
        REQUIRE(commvq_cache_append_batch(c, 0, 1, &seq, 32, k.data(), v.data()) == COMMVQ_OK);
        REQUIRE(commvq_cache_seq_truncate(c, seq, 25) == COMMVQ_OK);
    }
    // A length no pool holds.
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY,
                          commvq_cache_append_batch(c, 0, 1, ids, std::numeric_limits<uint32_t>::max(), k.data(),
                                                    v.data()));

    // The input rule: a bad element in the last row names entry, token and element.
    const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                                FLT_MAX, -2e12f};
    for (float bad : bad_values) {
        CAPTURE(bad);
        std::vector<float> kb(k.begin(), k.begin() + 2 * 3 * D), vb(v.begin(), v.begin() + 2 * 3 * D);
        vb[(1 * 3 + 2) * D + 5] = bad;  // entry 1, token 2, element 5
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_append_batch(c, 0, 2, ids, 3, kb.data(), vb.data()));
        CHECK_MESSAGE(message_names("commvq_cache_append_batch: v of entry 1, token 2, element 5"), commvq_last_error());
        kb[7] = bad;  // k is checked first: entry 0, token 0, element 7
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_ARGUMENT,
                              commvq_cache_append_batch(c, 0, 2, ids, 3, kb.data(), vb.data()));
        CHECK(message_names("k of entry 0, token 0, element 7"));
    }
    commvq_cache_destroy(c);
    commvq_codebook_free(cbh);

    // bf16 reaches float32's range: a huge bf16 is refused too.
    commvq_codebook_t* cb2 = codebook_handle(small_spec(2, 3));
    commvq_cache_params_t pb = small_params();
    pb.io_dtype = COMMVQ_DTYPE_BF16;
    commvq_cache_t* b = make_cache(cb2, pb);
    std::vector<uint16_t> kh(2 * D, float_to_bf16(0.5f)), vh(2 * D, float_to_bf16(0.5f));
    kh[D + 3] = float_to_bf16(1e20f);
    CHECK_FAILS_UNCHANGED(b, COMMVQ_ERR_INVALID_ARGUMENT, commvq_cache_append_batch(b, 0, 2, ids, 1, kh.data(), vh.data()));
    CHECK(message_names("k of entry 1, token 0, element 3"));
    commvq_cache_destroy(b);
    commvq_codebook_free(cb2);
}
