// The C API's plumbing: versions, status names, thread-local messages,
// capabilities, *_init defaults, struct_size in both directions, codebook
// handles, CPU streams, and independent handles on concurrent threads.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "block_layout.h"
#include "cache_test_util.h"

using namespace commvq;
using namespace commvq::test;

namespace {

// The codebook of tests/data/test_codebook_small.safetensors, which the C
// API test (tests/c/c_api_test.c) loads: 2 layers, 1 KV head, 2 query heads,
// head_dim 16, 1 bit.
RandomCodebookSpec c_test_spec() {
    RandomCodebookSpec s;
    s.n_layers = 2;
    s.n_kv_heads = 1;
    s.n_q_heads = 2;
    s.head_dim = 16;
    s.seed = 2024;
    return s;
}

}  // namespace

TEST_CASE("C API: versions, status names, capabilities") {
    CHECK(commvq_version_number() == COMMVQ_VERSION_NUMBER);
    const std::string v = std::to_string(COMMVQ_VERSION_MAJOR) + "." + std::to_string(COMMVQ_VERSION_MINOR) + "." +
                          std::to_string(COMMVQ_VERSION_PATCH);
    CHECK(std::string(commvq_version_string()) == v);
    const std::pair<commvq_status_t, const char*> names[] = {
        {COMMVQ_OK, "COMMVQ_OK"},
        {COMMVQ_ERR_INVALID_ARGUMENT, "COMMVQ_ERR_INVALID_ARGUMENT"},
        {COMMVQ_ERR_SHAPE_MISMATCH, "COMMVQ_ERR_SHAPE_MISMATCH"},
        {COMMVQ_ERR_OUT_OF_RANGE, "COMMVQ_ERR_OUT_OF_RANGE"},
        {COMMVQ_ERR_INVALID_STATE, "COMMVQ_ERR_INVALID_STATE"},
        {COMMVQ_ERR_CAPACITY, "COMMVQ_ERR_CAPACITY"},
        {COMMVQ_ERR_OUT_OF_MEMORY, "COMMVQ_ERR_OUT_OF_MEMORY"},
        {COMMVQ_ERR_IO, "COMMVQ_ERR_IO"},
        {COMMVQ_ERR_FORMAT, "COMMVQ_ERR_FORMAT"},
        {COMMVQ_ERR_CORRUPT, "COMMVQ_ERR_CORRUPT"},
        {COMMVQ_ERR_CODEBOOK_MISMATCH, "COMMVQ_ERR_CODEBOOK_MISMATCH"},
        {COMMVQ_ERR_NOT_SUPPORTED, "COMMVQ_ERR_NOT_SUPPORTED"},
        {COMMVQ_ERR_CUDA, "COMMVQ_ERR_CUDA"},
        {COMMVQ_ERR_CANCELLED, "COMMVQ_ERR_CANCELLED"},
        {COMMVQ_ERR_INTERNAL, "COMMVQ_ERR_INTERNAL"},
    };
    for (const auto& [status, name] : names) CHECK(std::string(commvq_status_string(status)) == name);
    CHECK(std::string(commvq_status_string(12345)) == "COMMVQ_ERR_UNKNOWN");
    CHECK(std::string(commvq_status_string(-1)) == "COMMVQ_ERR_UNKNOWN");
    CHECK((commvq_cuda_available() == 0) == (commvq_device_count() == 0));
}

TEST_CASE("C API: the last error is per thread, and empty in a thread that never failed") {
    CHECK(commvq_cache_seq_clear(nullptr, 0) == COMMVQ_ERR_INVALID_ARGUMENT);
    const std::string mine = commvq_last_error();
    CHECK(mine.find("cache is NULL") != std::string::npos);
    std::string fresh, failed;
    std::thread t([&] {
        fresh = commvq_last_error();
        commvq_codebook_load("/nonexistent.safetensors", nullptr);
        failed = commvq_last_error();
    });
    t.join();
    CHECK(fresh.empty());
    CHECK(failed.find("out is NULL") != std::string::npos);
    CHECK(std::string(commvq_last_error()) == mine);
    // A success leaves the message of the last failure.
    commvq_cache_stats_t s;
    commvq_cache_stats_init(&s);
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    CHECK(commvq_codebook_get_info(cb, nullptr) == COMMVQ_ERR_INVALID_ARGUMENT);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    CHECK(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(std::string(commvq_last_error()).find("info is NULL") != std::string::npos);
    commvq_codebook_free(cb);
}

TEST_CASE("C API: init functions, NULL-tolerant destroy and free") {
    commvq_cache_params_t p;
    std::memset(&p, 0xAB, sizeof p);
    commvq_cache_params_init(&p);
    CHECK(p.struct_size == sizeof p);
    CHECK(p.device == COMMVQ_DEVICE_CPU);
    CHECK(p.max_seqs == 1);
    CHECK(p.max_tokens == 65536);
    CHECK(p.block_tokens == 64);
    CHECK(p.window == 128);
    CHECK(p.sink_tokens == 0);
    CHECK(p.io_dtype == COMMVQ_DTYPE_F32);
    CHECK(p.key_convention == COMMVQ_KEYS_PRE_ROPE);
    CHECK(p.attn_scale == 0.0f);
    CHECK(p.n_threads == 0);
    commvq_cache_stats_t s;
    std::memset(&s, 0xAB, sizeof s);
    commvq_cache_stats_init(&s);
    CHECK(s.struct_size == sizeof s);
    CHECK(s.tokens == 0);
    commvq_codebook_info_t i;
    std::memset(&i, 0xAB, sizeof i);
    commvq_codebook_info_init(&i);
    CHECK(i.struct_size == sizeof i);
    CHECK(i.n_layers == 0);
    (commvq_cache_params_init)(nullptr);  // the function itself, not the header's macro
    commvq_cache_params_init_size(nullptr, sizeof p);
    commvq_cache_stats_init(nullptr);
    commvq_codebook_info_init(nullptr);
    commvq_cache_destroy(nullptr);
    commvq_codebook_free(nullptr);
}

TEST_CASE("C API: cache params init writes no more than the caller's struct holds") {
    // A program built before 0.4.0 calls the function commvq_cache_params_init
    // with the struct it knew, which ended at n_threads: nothing after it is
    // written, and struct_size says how far the struct goes.
    const size_t old_size = (offsetof(commvq_cache_params_t, n_threads) + 4 + alignof(commvq_cache_params_t) - 1) /
                            alignof(commvq_cache_params_t) * alignof(commvq_cache_params_t);
    REQUIRE(old_size < sizeof(commvq_cache_params_t));
    unsigned char buf[sizeof(commvq_cache_params_t) + 16];
    std::memset(buf, 0xAB, sizeof buf);
    auto* p = reinterpret_cast<commvq_cache_params_t*>(buf);
    (commvq_cache_params_init)(p);
    CHECK(p->struct_size == old_size);
    CHECK(p->window == 128);
    CHECK(p->n_threads == 0);
    for (size_t i = old_size; i < sizeof buf; ++i) CHECK(buf[i] == 0xAB);
    // The sized form writes min(size, sizeof) bytes; the header's macro passes sizeof.
    std::memset(buf, 0xAB, sizeof buf);
    commvq_cache_params_init_size(p, 8);
    CHECK(p->struct_size == 8);
    CHECK(p->device == COMMVQ_DEVICE_CPU);
    for (size_t i = 8; i < sizeof buf; ++i) CHECK(buf[i] == 0xAB);
    std::memset(buf, 0xAB, sizeof buf);
    commvq_cache_params_init_size(p, sizeof buf);
    CHECK(p->struct_size == sizeof(commvq_cache_params_t));
    CHECK(p->kv_head_count == 0);
    for (size_t i = sizeof(commvq_cache_params_t); i < sizeof buf; ++i) CHECK(buf[i] == 0xAB);
    commvq_cache_params_t q;
    std::memset(&q, 0xAB, sizeof q);
    commvq_cache_params_init(&q);  // the macro
    CHECK(q.struct_size == sizeof q);
    CHECK(q.kv_head_begin == 0);
    CHECK(q.kv_head_count == 0);
}

TEST_CASE("C API: struct_size: older, shorter structs are read and written only as far as they go") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    // A caller built when the params ended before `window`: the rest are
    // defaults, whatever bytes follow in memory.
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_seqs = 3;
    p.max_tokens = 512;
    p.block_tokens = 32;
    p.window = 77;
    p.io_dtype = 99;  // past the struct the caller knows: never read
    p.struct_size = offsetof(commvq_cache_params_t, window);
    commvq_cache_t* c = nullptr;
    REQUIRE(commvq_cache_create(cb, &p, &c) == COMMVQ_OK);
    CHECK(c->cache.params().max_seqs == 3);
    CHECK(c->cache.params().block_tokens == 32);
    CHECK(c->cache.params().window == 128);
    CHECK(c->cache.params().io_dtype == COMMVQ_DTYPE_F32);
    CHECK(c->cache.params().n_threads >= 1);  // 0 resolved to the cores
    append_tokens(c, 0, 5, 1);

    // Stats into a short struct: the prefix is written, the rest untouched.
    commvq_cache_stats_t s;
    std::memset(&s, 0xCD, sizeof s);
    s.struct_size = offsetof(commvq_cache_stats_t, blocks_used);
    REQUIRE(commvq_cache_get_stats(c, &s) == COMMVQ_OK);
    CHECK(s.struct_size == offsetof(commvq_cache_stats_t, blocks_used));
    CHECK(s.n_seqs_used == 1);
    CHECK(s.tokens == 5);
    CHECK(s.blocks_total == 0xCDCDCDCDCDCDCDCDull);
    // A struct from a newer header (bigger): our part is written.
    struct Bigger {
        commvq_cache_stats_t stats;
        uint64_t future;
    } big;
    std::memset(&big, 0xCD, sizeof big);
    big.stats.struct_size = sizeof big;
    REQUIRE(commvq_cache_get_stats(c, &big.stats) == COMMVQ_OK);
    CHECK(big.stats.struct_size == sizeof big);
    CHECK(big.stats.blocks_total == 16);
    CHECK(big.future == 0xCDCDCDCDCDCDCDCDull);

    commvq_codebook_info_t info;
    std::memset(&info, 0xCD, sizeof info);
    info.struct_size = offsetof(commvq_codebook_info_t, head_dim);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(info.n_layers == 2);
    CHECK(info.n_q_heads == 4);
    CHECK(info.head_dim == 0xCDCDCDCDu);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("C API: codebook info, save and load") {
    RandomCodebookSpec spec = small_spec(2, 5);
    spec.scale_mode = COMMVQ_SCALE_HEAD;
    spec.pair_layout = COMMVQ_PAIRS_INTERLEAVED;
    spec.rope.theta = 500000;
    const Codebook ref = random_codebook(spec);
    commvq_codebook_t* cb = codebook_handle(spec);
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(info.n_layers == 2);
    CHECK(info.n_kv_heads == 2);
    CHECK(info.n_q_heads == 4);
    CHECK(info.head_dim == 32);
    CHECK(info.key_stages == 11);
    CHECK(info.sub_centers == 64);
    CHECK(info.value_bits == 1);
    CHECK(info.value_hidden == ref.value_hidden);
    CHECK(info.pair_layout == COMMVQ_PAIRS_INTERLEAVED);
    CHECK(info.scale_mode == COMMVQ_SCALE_HEAD);
    CHECK(info.format_version == kCodebookFormatVersion);
    CHECK(info.rope.theta == 500000);
    CHECK(info.rope.scaling == COMMVQ_ROPE_SCALING_NONE);
    CHECK(info.fingerprint == ref.fingerprint);
    // 2 heads x 11 stages x 12 bits = 33 B, 64 value bits = 8 B, 2 scales + 1 weight.
    CHECK(info.compressed_token_bytes == 33 + 8 + 3 * 4);
    CHECK(info.compressed_token_bytes == make_block_layout(ref, 1).token_bytes());

    const std::string path =
        (std::filesystem::temp_directory_path() / ("commvq_test_cb_" + std::to_string(std::rand()) + ".safetensors"))
            .string();
    REQUIRE(commvq_codebook_save(cb, path.c_str()) == COMMVQ_OK);
    commvq_codebook_t* loaded = nullptr;
    REQUIRE(commvq_codebook_load(path.c_str(), &loaded) == COMMVQ_OK);
    commvq_codebook_info_t info2;
    commvq_codebook_info_init(&info2);
    REQUIRE(commvq_codebook_get_info(loaded, &info2) == COMMVQ_OK);
    CHECK(std::memcmp(&info, &info2, sizeof info) == 0);
    std::filesystem::remove(path);
    CHECK(commvq_codebook_save(cb, "/nonexistent/dir/cb.safetensors") == COMMVQ_ERR_IO);
    commvq_codebook_free(loaded);
    commvq_codebook_free(cb);
}

TEST_CASE("C API: the codebook may be freed after the cache is created") {
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_t* c = make_cache(cb, small_params());
    commvq_codebook_free(cb);
    append_tokens(c, 0, 30, 1);
    std::vector<float> q(4 * 32, 0.1f), out(4 * 32);
    CHECK(commvq_cache_attend(c, 0, 0, 1, q.data(), out.data(), nullptr, 0) == COMMVQ_OK);
    commvq_cache_destroy(c);
}

TEST_CASE("C API: a CPU cache has no stream and nothing to wait for") {
    commvq_codebook_t* cb = codebook_handle(small_spec(1));
    commvq_cache_t* c = make_cache(cb, small_params());
    CHECK(commvq_cache_set_stream(c, nullptr) == COMMVQ_ERR_NOT_SUPPORTED);
    CHECK(std::string(commvq_last_error()).find("CPU") != std::string::npos);
    CHECK(commvq_cache_synchronize(c) == COMMVQ_OK);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("C API: distinct handles on concurrent threads are independent") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    auto run = [&](uint64_t seed) {
        commvq_cache_t* c = make_cache(cb, small_params());
        append_tokens(c, 0, 60, seed);
        std::vector<float> q(2 * 4 * 32, 0.3f), out(q.size());
        REQUIRE(commvq_cache_attend(c, 1, 0, 2, q.data(), out.data(), nullptr, 0) == COMMVQ_OK);
        commvq_cache_destroy(c);
        return out;
    };
    const std::vector<float> a = run(1), b = run(2);
    std::vector<float> ta, tb;
    std::thread t1([&] { ta = run(1); }), t2([&] { tb = run(2); });
    t1.join();
    t2.join();
    CHECK(ta == a);
    CHECK(tb == b);
    commvq_codebook_free(cb);
}

TEST_CASE("test data: test_codebook_small.safetensors is the C test's random codebook") {
    const std::string path = std::string(COMMVQ_TEST_DATA) + "/test_codebook_small.safetensors";
    const Codebook expected = random_codebook(c_test_spec());
    // COMMVQ_WRITE_TEST_DATA=1 (re)writes the file, e.g. after a format change.
    if (const char* w = std::getenv("COMMVQ_WRITE_TEST_DATA"); w && std::string(w) == "1")
        save_codebook(expected, path);
    commvq_codebook_t* cb = nullptr;
    REQUIRE_MESSAGE(commvq_codebook_load(path.c_str(), &cb) == COMMVQ_OK, commvq_last_error());
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
    CHECK(info.fingerprint == expected.fingerprint);
    CHECK(std::filesystem::file_size(path) < 200 * 1024);
    commvq_codebook_free(cb);
}
