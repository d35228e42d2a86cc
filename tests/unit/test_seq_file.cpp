// Sequence files: a saved and loaded sequence attends bit for bit like the
// original; every damaged or unsuitable file is refused with its status and
// changes nothing.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "cache_reference.h"
#include "cache_test_util.h"
#include "seq_file.h"
#include "temp_dir.h"

using namespace commvq;
using namespace commvq::test;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// Rewrites the checksum so that an edit is seen as intended content.
void reseal(std::vector<uint8_t>& b) {
    const uint64_t h = fnv1a64(b.data(), b.size() - 8);
    for (int i = 0; i < 8; ++i) b[b.size() - 8 + i] = uint8_t(h >> (8 * i));
}

std::vector<float> attention(commvq_cache_t* c, uint32_t layer, uint32_t seq, uint32_t nq) {
    const Codebook& cb = c->cache.codebook();
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    Rng rng(31);
    std::vector<float> q = rng.normals(nq * row), out(nq * row + cb.n_q_heads * nq);
    REQUIRE(commvq_cache_attend(c, layer, seq, nq, q.data(), out.data(), out.data() + nq * row, 0) == COMMVQ_OK);
    return out;
}

// Sequence 0 with sinks, window and compressed tokens, its layers having
// different compressed counts (a truncation between uneven appends).
commvq_cache_params_t saved_params() {
    commvq_cache_params_t p = small_params();
    p.sink_tokens = 2;
    p.window = 8;
    return p;
}

void fill_uneven(commvq_cache_t* c) {
    append_tokens(c, 0, 100, 1);                               // 90 compressed per layer
    REQUIRE(commvq_cache_seq_truncate(c, 0, 60) == COMMVQ_OK);  // 58 compressed, empty window
    // Layer 0 runs ahead and is cut back; layer 1 then catches up with a
    // window of 8 and compresses fewer tokens (73 against 65).
    const Codebook& cb = c->cache.codebook();
    Rng rng(9);
    std::vector<float> k = rng.normals(30 * cb.value_dim()), v = rng.normals(30 * cb.value_dim());
    REQUIRE(commvq_cache_append(c, 0, 0, 30, k.data(), v.data()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_truncate(c, 0, 75) == COMMVQ_OK);  // layer 0 at 75; layer 1 at 60
    REQUIRE(commvq_cache_append(c, 1, 0, 15, k.data(), v.data()) == COMMVQ_OK);
    REQUIRE(c->cache.sequence(0).in_step());
}

}  // namespace

TEST_CASE("seq file: save and load give back the sequence bit for bit") {
    TempDir dir("roundtrip");
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c = make_cache(cb, saved_params());
    fill_uneven(c);
    const Sequence& s0 = c->cache.sequence(0);
    CHECK(s0.layers[0].compressed != s0.layers[1].compressed);
    const std::string path = dir.file("seq0.cvqseq");
    REQUIRE(commvq_cache_seq_save(c, 0, path.c_str()) == COMMVQ_OK);
    CHECK(!fs::exists(path + ".partial"));

    REQUIRE(commvq_cache_seq_load(c, 2, path.c_str()) == COMMVQ_OK);
    const Sequence& s2 = c->cache.sequence(2);
    for (uint32_t l = 0; l < 2; ++l) {
        CHECK(s2.layers[l].length == s0.layers[l].length);
        CHECK(s2.layers[l].compressed == s0.layers[l].compressed);
        CHECK(attention(c, l, 2, 5) == attention(c, l, 0, 5));
    }
    // Both continue alike.
    append_tokens(c, 0, 20, 5);
    append_tokens(c, 2, 20, 5);
    for (uint32_t l = 0; l < 2; ++l) CHECK(attention(c, l, 2, 3) == attention(c, l, 0, 3));

    // Another cache: other block size, larger window, more threads.
    commvq_cache_params_t p = saved_params();
    p.block_tokens = 8;
    p.window = 32;
    p.n_threads = 3;
    commvq_cache_t* other = make_cache(cb, p);
    REQUIRE(commvq_cache_seq_load(other, 1, path.c_str()) == COMMVQ_OK);
    uint64_t len = 0;
    REQUIRE(commvq_cache_seq_length(other, 1, &len) == COMMVQ_OK);
    CHECK(len == 75);
    commvq_cache_t* fresh = make_cache(cb, saved_params());
    REQUIRE(commvq_cache_seq_load(fresh, 0, path.c_str()) == COMMVQ_OK);
    for (uint32_t l = 0; l < 2; ++l) {
        const std::vector<float> a = attention(other, l, 1, 4), b = attention(fresh, l, 0, 4);
        std::vector<double> bd(b.begin(), b.end());
        CHECK(max_relative_error(a, bd, a.size()) <= 1e-6);  // summation order differs with the block size
    }
    commvq_cache_destroy(fresh);
    commvq_cache_destroy(other);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("seq file: an empty sequence and an f16 sequence round trip") {
    TempDir dir("small");
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_params_t p = small_params();
    p.io_dtype = COMMVQ_DTYPE_BF16;
    commvq_cache_t* c = make_cache(cb, p);
    const std::string empty = dir.file("empty.cvqseq"), full = dir.file("bf16.cvqseq");
    REQUIRE(commvq_cache_seq_save(c, 3, empty.c_str()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_load(c, 2, empty.c_str()) == COMMVQ_OK);
    uint64_t len = 1;
    REQUIRE(commvq_cache_seq_length(c, 2, &len) == COMMVQ_OK);
    CHECK(len == 0);
    const size_t D = c->cache.codebook().value_dim();
    std::vector<uint16_t> kv(30 * D);
    for (size_t i = 0; i < kv.size(); ++i) kv[i] = uint16_t(0x3f00 + (i * 7919) % 255);  // bf16 around 0.5
    REQUIRE(commvq_cache_append(c, 0, 0, 30, kv.data(), kv.data()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_save(c, 0, full.c_str()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_load(c, 1, full.c_str()) == COMMVQ_OK);
    std::vector<uint16_t> q(4 * 32, 0x3f80), o0(4 * 32), o1(4 * 32);
    REQUIRE(commvq_cache_attend(c, 0, 0, 1, q.data(), o0.data(), nullptr, 0) == COMMVQ_OK);
    REQUIRE(commvq_cache_attend(c, 0, 1, 1, q.data(), o1.data(), nullptr, 0) == COMMVQ_OK);
    CHECK(o0 == o1);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("seq file: damaged, foreign or unsuitable files are refused and nothing changes") {
    TempDir dir("refuse");
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c = make_cache(cb, saved_params());
    fill_uneven(c);
    append_tokens(c, 1, 10, 3);  // the target cache holds other tokens too
    const std::string good = dir.file("good.cvqseq");
    REQUIRE(commvq_cache_seq_save(c, 0, good.c_str()) == COMMVQ_OK);
    const std::vector<uint8_t> bytes = read_bytes(good);
    const std::string bad = dir.file("bad.cvqseq");

    SUBCASE("missing file, a directory") {
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_IO, commvq_cache_seq_load(c, 2, dir.file("missing.cvqseq").c_str()));
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_IO, commvq_cache_seq_load(c, 2, dir.path.string().c_str()));
    }
    SUBCASE("target sequence not empty") {
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_INVALID_STATE, commvq_cache_seq_load(c, 1, good.c_str()));
    }
    SUBCASE("truncated anywhere") {
        for (size_t keep : {size_t(0), size_t(5), size_t(8), size_t(30), size_t(70), bytes.size() / 2, bytes.size() - 9,
                            bytes.size() - 1}) {
            INFO("kept " << keep << " of " << bytes.size() << " bytes");
            write_bytes(bad, std::vector<uint8_t>(bytes.begin(), bytes.begin() + keep));
            const commvq_status_t want = keep < 8 ? COMMVQ_ERR_FORMAT : COMMVQ_ERR_CORRUPT;
            CHECK_FAILS_UNCHANGED(c, want, commvq_cache_seq_load(c, 2, bad.c_str()));
        }
    }
    SUBCASE("one bit flipped anywhere") {
        for (size_t at : {size_t(0), size_t(9), size_t(13), size_t(20), size_t(50), size_t(60), bytes.size() / 3,
                          bytes.size() / 2, bytes.size() - 20, bytes.size() - 3}) {
            INFO("bit flipped in byte " << at);
            std::vector<uint8_t> b = bytes;
            b[at] ^= 0x10;
            write_bytes(bad, b);
            // The magic and the version are read before the checksum.
            const commvq_status_t want = at < 12 ? COMMVQ_ERR_FORMAT : COMMVQ_ERR_CORRUPT;
            CHECK_FAILS_UNCHANGED(c, want, commvq_cache_seq_load(c, 2, bad.c_str()));
        }
    }
    SUBCASE("a later format version") {
        std::vector<uint8_t> b = bytes;
        b[8] = 2;
        reseal(b);
        write_bytes(bad, b);
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_FORMAT, commvq_cache_seq_load(c, 2, bad.c_str()));
    }
    SUBCASE("a file made under another codebook") {
        commvq_codebook_t* other_cb = codebook_handle(small_spec(2, 99));
        commvq_cache_t* other = make_cache(other_cb, saved_params());
        append_tokens(other, 0, 30, 4);
        REQUIRE(commvq_cache_seq_save(other, 0, bad.c_str()) == COMMVQ_OK);
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CODEBOOK_MISMATCH, commvq_cache_seq_load(c, 2, bad.c_str()));
        commvq_cache_destroy(other);
        commvq_codebook_free(other_cb);
    }
    SUBCASE("caches that cannot hold it") {
        struct Case {
            const char* what;
            commvq_status_t status;
            void (*edit)(commvq_cache_params_t&);
        };
        const Case cases[] = {
            {"smaller window", COMMVQ_ERR_CAPACITY, [](commvq_cache_params_t& p) { p.window = 4; }},
            {"smaller pool", COMMVQ_ERR_CAPACITY, [](commvq_cache_params_t& p) { p.max_tokens = 48; }},
            {"other sinks", COMMVQ_ERR_SHAPE_MISMATCH, [](commvq_cache_params_t& p) { p.sink_tokens = 0; }},
            {"other io_dtype", COMMVQ_ERR_SHAPE_MISMATCH, [](commvq_cache_params_t& p) { p.io_dtype = COMMVQ_DTYPE_F16; }},
            {"other key convention", COMMVQ_ERR_SHAPE_MISMATCH,
             [](commvq_cache_params_t& p) { p.key_convention = COMMVQ_KEYS_POST_ROPE; }},
        };
        for (const Case& k : cases) {
            INFO(k.what);
            commvq_cache_params_t p = saved_params();
            k.edit(p);
            commvq_cache_t* target = make_cache(cb, p);
            append_tokens(target, 1, 3, 8);
            CHECK_FAILS_UNCHANGED(target, k.status, commvq_cache_seq_load(target, 0, good.c_str()));
            commvq_cache_destroy(target);
        }
    }
    CHECK(commvq_cache_seq_load(c, 2, good.c_str()) == COMMVQ_OK);  // the good file still loads
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("seq file: codes and scales are checked even under a valid checksum") {
    TempDir dir("codes");
    RandomCodebookSpec s = small_spec(1);
    s.sub_centers = 48;  // codes < 2304 in 12 bits: 4095 is out of range
    commvq_codebook_t* cb = codebook_handle(s);
    commvq_cache_t* c = make_cache(cb, small_params());
    append_tokens(c, 0, 20, 2);
    const std::string path = dir.file("s.cvqseq"), bad = dir.file("bad.cvqseq");
    REQUIRE(commvq_cache_seq_save(c, 0, path.c_str()) == COMMVQ_OK);
    const std::vector<uint8_t> bytes = read_bytes(path);
    const size_t codes_at = 56 + 8;  // header, one layer's compressed count
    {
        std::vector<uint8_t> b = bytes;
        b[codes_at] = 0xFF;
        b[codes_at + 1] |= 0x0F;  // the first 12-bit code becomes 4095
        reseal(b);
        write_bytes(bad, b);
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CORRUPT, commvq_cache_seq_load(c, 1, bad.c_str()));
    }
    {
        std::vector<uint8_t> b = bytes;
        const BlockLayout& layout = c->cache.layout();
        const size_t scale_at = codes_at + layout.key_code_bytes + layout.value_code_bytes;
        // A NaN, and a finite scale no key within the input rule can have
        // (its attention would overflow).
        for (float scale : {std::numeric_limits<float>::quiet_NaN(), 1e30f}) {
            CAPTURE(scale);
            std::memcpy(b.data() + scale_at, &scale, 4);
            reseal(b);
            write_bytes(bad, b);
            CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CORRUPT, commvq_cache_seq_load(c, 1, bad.c_str()));
        }
    }
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("seq file: a failed save leaves nothing behind, a save replaces a file whole") {
    TempDir dir("save");
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_t* c = make_cache(cb, small_params());
    append_tokens(c, 0, 30, 2);
    const std::string nowhere = dir.file("no/such/dir/s.cvqseq");
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_IO, commvq_cache_seq_save(c, 0, nowhere.c_str()));
    CHECK(fs::is_empty(dir.path));
    const std::string path = dir.file("s.cvqseq");
    write_bytes(path, std::vector<uint8_t>(1 << 16, 0xAB));  // a longer, older file
    REQUIRE(commvq_cache_seq_save(c, 0, path.c_str()) == COMMVQ_OK);
    CHECK(fs::file_size(path) < (1u << 16));
    CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
    REQUIRE(commvq_cache_seq_load(c, 1, path.c_str()) == COMMVQ_OK);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}
