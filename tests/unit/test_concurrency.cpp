// Distinct handles are independent and a codebook may be read by many
// threads at once (API.md, "Threads"): caches created, filled, attended,
// saved, loaded and destroyed on four threads from one shared codebook give
// exactly what one thread alone gives; codebooks load and save on several
// threads at once; two trainings run side by side. Run under the
// ThreadSanitizer build (COMMVQ_SANITIZE=thread, RELIABILITY.md) these are
// the library's data-race tests.
#include <doctest/doctest.h>

#include <string>
#include <thread>
#include <vector>

#include "cache_test_util.h"
#include "temp_dir.h"

using namespace commvq;
using namespace commvq::test;

namespace {

constexpr int kThreads = 4;

// One worker's whole life of a cache: everything it attends and saves,
// as bytes, so that runs can be compared.
std::vector<uint8_t> cache_life(commvq_codebook_t* cb, int id, const std::string& file) {
    commvq_cache_params_t p = small_params();
    p.n_threads = 2;  // each cache runs its own worker too
    commvq_cache_t* c = make_cache(cb, p);
    append_tokens(c, 0, 40 + id, 10 + id);
    REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    append_tokens(c, 1, 7, 20 + id);
    REQUIRE(commvq_cache_seq_save(c, 1, file.c_str()) == COMMVQ_OK);
    REQUIRE(commvq_cache_seq_load(c, 2, file.c_str()) == COMMVQ_OK);
    std::vector<uint8_t> bytes = snapshot(c).bytes;
    commvq_cache_destroy(c);
    return bytes;
}

}  // namespace

TEST_CASE("concurrency: caches of one shared codebook on four threads give what one thread gives") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    TempDir dir("concurrent_caches");
    std::vector<std::vector<uint8_t>> alone(kThreads), together(kThreads);
    for (int i = 0; i < kThreads; ++i) alone[i] = cache_life(cb, i, dir.file("alone" + std::to_string(i)));
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i)
        threads.emplace_back([&, i] {
            for (int round = 0; round < 3; ++round)
                together[i] = cache_life(cb, i, dir.file("together" + std::to_string(i)));
        });
    for (auto& t : threads) t.join();
    for (int i = 0; i < kThreads; ++i) CHECK(together[i] == alone[i]);
    commvq_codebook_free(cb);
}

TEST_CASE("concurrency: codebooks load, are read and saved on four threads at once") {
    const std::vector<uint8_t> bytes = serialize_codebook(random_codebook(small_spec(2, 9)));
    TempDir dir("concurrent_codebooks");
    commvq_codebook_t* shared = nullptr;
    REQUIRE(commvq_codebook_load_memory(bytes.data(), bytes.size(), &shared) == COMMVQ_OK);
    int failures[kThreads] = {};
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i)
        threads.emplace_back([&, i] {
            const std::string path = dir.file("cb" + std::to_string(i) + ".safetensors");
            for (int round = 0; round < 5; ++round) {
                commvq_codebook_t* own = nullptr;
                failures[i] += commvq_codebook_load_memory(bytes.data(), bytes.size(), &own) != COMMVQ_OK;
                failures[i] += commvq_codebook_save(shared, path.c_str()) != COMMVQ_OK;
                commvq_codebook_t* back = nullptr;
                failures[i] += commvq_codebook_load(path.c_str(), &back) != COMMVQ_OK;
                commvq_codebook_info_t a, b;
                commvq_codebook_info_init(&a);
                commvq_codebook_info_init(&b);
                failures[i] += commvq_codebook_get_info(own, &a) != COMMVQ_OK;
                failures[i] += commvq_codebook_get_info(back, &b) != COMMVQ_OK;
                failures[i] += a.fingerprint != b.fingerprint;
                commvq_codebook_free(back);
                commvq_codebook_free(own);
            }
        });
    for (auto& t : threads) t.join();
    for (int i = 0; i < kThreads; ++i) CHECK(failures[i] == 0);
    commvq_codebook_free(shared);
}

TEST_CASE("concurrency: two trainings side by side give what each gives alone") {
    const uint32_t layers = 2, heads = 1, dim = 16, n = 64;
    Rng rng(4);
    const std::vector<float> k = rng.normals(size_t(layers) * n * heads * dim), v = rng.normals(k.size());
    commvq_train_params_t p;
    commvq_train_params_init(&p);
    p.sub_centers = 4;
    p.key_max_steps = 3;
    p.value_steps = 3;
    p.value_batch = 16;
    p.n_threads = 2;
    auto fingerprint = [&](uint64_t seed) {
        commvq_train_params_t q = p;
        q.seed = seed;
        commvq_codebook_t* cb = nullptr;
        REQUIRE(commvq_train(&q, layers, heads, dim, n, k.data(), v.data(), &cb) == COMMVQ_OK);
        commvq_codebook_info_t info;
        commvq_codebook_info_init(&info);
        REQUIRE(commvq_codebook_get_info(cb, &info) == COMMVQ_OK);
        commvq_codebook_free(cb);
        return info.fingerprint;
    };
    const uint64_t a = fingerprint(1), b = fingerprint(2);
    uint64_t a2 = 0, b2 = 0;
    std::thread ta([&] { a2 = fingerprint(1); }), tb([&] { b2 = fingerprint(2); });
    ta.join();
    tb.join();
    CHECK(a2 == a);
    CHECK(b2 == b);
}
