// "A failed call changes nothing", under out of memory: every operation is
// run with its 1st, 2nd, 3rd, ... allocation failing (failing_new.h) until
// it runs with no failure. After each failure the status is
// COMMVQ_ERR_OUT_OF_MEMORY, the cache is as before (statistics, lengths,
// block tables, reference counts, the bits of an attention of every layer:
// cache_test_util.h), its bookkeeping passes Cache::check_integrity(), no
// file is left behind, and under the sanitizers nothing leaks. The process
// never ends in std::terminate (a thread pool or a JSON destructor did).
// The success paths of append, append_batch, attend and attend_batch
// allocate nothing.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cache_test_util.h"
#include "failing_new.h"
#include "temp_dir.h"

using namespace commvq;
using namespace commvq::test;
namespace fs = std::filesystem;

namespace {

// Runs op with its nth allocation failing for n = 1, 2, ... until op
// allocates fewer than n times; after every failure, check(). Returns the
// allocations of the call that succeeded.
template <class Op, class Check>
uint64_t sweep(const char* what, Op op, Check check) {
    for (uint64_t n = 1;; ++n) {
        fail_allocation(n);
        const commvq_status_t status = op();
        const AllocationCount count = stop_failing();
        if (!count.failed) {
            CHECK_MESSAGE(status == COMMVQ_OK, std::string(what) << " failed with no allocation failing: "
                                                                << std::string(commvq_last_error()));
            MESSAGE(std::string(what) << ": " << n - 1 << " allocation failures injected, " << count.attempted << " allocations when none fails");
            return count.attempted;
        }
        INFO(std::string(what) << " with allocation " << n << " failing");
        REQUIRE_MESSAGE(status == COMMVQ_ERR_OUT_OF_MEMORY,
                        "returned " << std::string(commvq_status_string(status)) << ": "
                                    << std::string(commvq_last_error()));
        check();
    }
}

std::vector<std::string> names_in(const TempDir& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

// A cache with sinks, compressed tokens and windows in two sequences, the
// second a fork of the first (shared blocks), and a free sequence.
struct Populated {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c;
    Populated() {
        commvq_cache_params_t p = small_params();
        p.sink_tokens = 2;
        p.n_threads = 3;
        c = make_cache(cb, p);
        append_tokens(c, 0, 45, 1);
        REQUIRE(commvq_cache_seq_fork(c, 0, 1) == COMMVQ_OK);
    }
    ~Populated() {
        commvq_cache_destroy(c);
        commvq_codebook_free(cb);
    }
    // The check after every failure.
    std::function<void()> unchanged() {
        auto before = std::make_shared<Snapshot>(snapshot(c));
        return [this, before] {
            CHECK(snapshot(c) == *before);
            CHECK_NOTHROW(c->cache.check_integrity());
        };
    }
};

}  // namespace

TEST_CASE("out of memory: codebook load from memory and from a file") {
    const std::vector<uint8_t> bytes = serialize_codebook(random_codebook(small_spec(2)));
    commvq_codebook_t* cb = nullptr;
    const uint64_t n = sweep(
        "commvq_codebook_load_memory",
        [&] { return commvq_codebook_load_memory(bytes.data(), bytes.size(), &cb); }, [&] { CHECK(cb == nullptr); });
    CHECK(n > 0);
    TempDir dir("oom_load");
    const std::string path = dir.file("cb.safetensors");
    REQUIRE(commvq_codebook_save(cb, path.c_str()) == COMMVQ_OK);
    commvq_codebook_free(cb);
    cb = nullptr;
    sweep("commvq_codebook_load", [&] { return commvq_codebook_load(path.c_str(), &cb); },
          [&] { CHECK(cb == nullptr); });
    commvq_codebook_free(cb);
}

TEST_CASE("out of memory: codebook save leaves the old file and nothing else") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    TempDir dir("oom_cb_save");
    const std::string path = dir.file("cb.safetensors");
    {
        std::ofstream f(path);
        f << "old";
    }
    sweep("commvq_codebook_save", [&] { return commvq_codebook_save(cb, path.c_str()); }, [&] {
        CHECK(names_in(dir) == std::vector<std::string>{"cb.safetensors"});
        CHECK(fs::file_size(path) == 3);
    });
    commvq_codebook_free(cb);
}

TEST_CASE("out of memory: cache create, with worker threads to start") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_params_t p = small_params();
    p.n_threads = 4;
    commvq_cache_t* c = nullptr;
    sweep("commvq_cache_create", [&] { return commvq_cache_create(cb, &p, &c); }, [&] { CHECK(c == nullptr); });
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("out of memory: append (with copy-on-write), fork, truncate and clear change nothing") {
    Populated t;
    const Codebook& cb = t.c->cache.codebook();
    Rng rng(5);
    const std::vector<float> k = rng.normals(20 * cb.value_dim()), v = rng.normals(20 * cb.value_dim());
    // Sequence 1 shares its blocks with 0 (35 compressed tokens in three
    // blocks of 16); these tokens compress into the third, so the append
    // copies it first, then takes a new block.
    const uint32_t used = t.c->cache.block_pool().used_count();
    const uint64_t appended = sweep(
        "commvq_cache_append", [&] { return commvq_cache_append(t.c, 0, 1, 20, k.data(), v.data()); }, t.unchanged());
    CHECK(appended == 0);
    CHECK(t.c->cache.block_pool().used_count() == used + 2);
    CHECK(commvq_cache_append(t.c, 1, 1, 20, k.data(), v.data()) == COMMVQ_OK);
    sweep("commvq_cache_seq_fork", [&] { return commvq_cache_seq_fork(t.c, 0, 2); }, t.unchanged());
    sweep("commvq_cache_seq_truncate", [&] { return commvq_cache_seq_truncate(t.c, 1, 30); }, t.unchanged());
    sweep("commvq_cache_seq_clear", [&] { return commvq_cache_seq_clear(t.c, 2); }, t.unchanged());
    CHECK_NOTHROW(t.c->cache.check_integrity());
}

TEST_CASE("out of memory: append_batch (two rows writing into one shared block) allocates nothing") {
    Populated t;
    const Codebook& cb = t.c->cache.codebook();
    Rng rng(7);
    const std::vector<float> k = rng.normals(2 * 20 * cb.value_dim()), v = rng.normals(2 * 20 * cb.value_dim());
    // Sequences 0 and 1 share their three blocks (35 compressed tokens);
    // both rows compress into the third: the first row copies it, the
    // second then has it alone; each takes a new block after it.
    const uint32_t ids[2] = {1, 0};
    const uint32_t used = t.c->cache.block_pool().used_count();
    for (uint32_t layer = 0; layer < cb.n_layers; ++layer) {
        CAPTURE(layer);
        const uint64_t n = sweep(
            "commvq_cache_append_batch",
            [&] { return commvq_cache_append_batch(t.c, layer, 2, ids, 20, k.data(), v.data()); }, t.unchanged());
        CHECK(n == 0);
    }
    CHECK(t.c->cache.block_pool().used_count() == used + 3);
    CHECK_NOTHROW(t.c->cache.check_integrity());
}

TEST_CASE("out of memory: attend and attend_batch allocate nothing once a call of their size has run") {
    Populated t;
    const Codebook& cb = t.c->cache.codebook();
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    Rng rng(6);
    const std::vector<float> q = rng.normals(3 * row);
    std::vector<float> out(3 * row), lse(3 * cb.n_q_heads);
    const uint32_t ids[3] = {1, 0, 1};
    auto attend = [&] { return commvq_cache_attend(t.c, 1, 0, 3, q.data(), out.data(), lse.data(), 0); };
    auto batch = [&] { return commvq_cache_attend_batch(t.c, 0, 3, ids, q.data(), out.data(), lse.data(), 0); };
    REQUIRE(attend() == COMMVQ_OK);
    REQUIRE(batch() == COMMVQ_OK);
    CHECK(sweep("commvq_cache_attend", attend, t.unchanged()) == 0);
    CHECK(sweep("commvq_cache_attend_batch", batch, t.unchanged()) == 0);
}

TEST_CASE("out of memory: seq_save leaves no file, seq_load changes nothing") {
    Populated t;
    TempDir dir("oom_seq");
    const std::string path = dir.file("seq.cvqseq");
    sweep("commvq_cache_seq_save", [&] { return commvq_cache_seq_save(t.c, 1, path.c_str()); },
          [&, unchanged = t.unchanged()] {
              unchanged();
              CHECK(names_in(dir).empty());
          });
    sweep("commvq_cache_seq_load", [&] { return commvq_cache_seq_load(t.c, 3, path.c_str()); }, t.unchanged());
    CHECK(t.c->cache.sequence(3).layers[1].length == t.c->cache.sequence(1).layers[1].length);
}

TEST_CASE("out of memory: training returns nothing and leaks nothing") {
    const uint32_t layers = 2, heads = 1, dim = 16, n = 48;
    Rng rng(8);
    const std::vector<float> k = rng.normals(size_t(layers) * n * heads * dim), v = rng.normals(k.size());
    commvq_train_params_t p;
    commvq_train_params_init(&p);
    p.sub_centers = 4;
    p.key_max_steps = 2;
    p.value_steps = 2;
    p.value_batch = 16;
    // One thread: a helper thread that cannot start only makes training use
    // fewer threads (src/train/parallel_impl.h), so it succeeds.
    p.n_threads = 1;
    commvq_codebook_t* out = nullptr;
    sweep("commvq_train", [&] { return commvq_train(&p, layers, heads, dim, n, k.data(), v.data(), &out); },
          [&] { CHECK(out == nullptr); });
    commvq_codebook_free(out);
}

TEST_CASE("out of memory: a slice cache's key_norms2 and append_norms2 (token scales) fail unchanged, then allocate nothing") {
    commvq_codebook_t* cb = codebook_handle(small_spec(2));  // 2 KV heads, token scales
    commvq_cache_params_t p = small_params();
    p.sink_tokens = 2;
    p.kv_head_begin = 1;
    p.kv_head_count = 1;
    commvq_cache_t* c = make_cache(cb, p);
    const Codebook& s = c->cache.codebook();
    const uint32_t d = s.head_dim, ids[2] = {1, 0}, n = 5;
    Rng rng(9);
    std::vector<double> norms(2 * 2 * n), mine(2 * n);
    for (uint32_t step = 0; step < 4; ++step)
        for (uint32_t layer = 0; layer < s.n_layers; ++layer) {
            CAPTURE(step);
            CAPTURE(layer);
            const std::vector<float> k = rng.normals(2 * n * d), v = rng.normals(2 * n * 2 * d);
            // Head 0 is another rank's: any finite squares do.
            for (uint32_t i = 0; i < 2 * n; ++i) norms[i] = 0.25 * (i + 1);
            auto before = std::make_shared<Snapshot>(snapshot(c));
            const uint64_t a = sweep(
                "commvq_cache_key_norms2",
                [&] { return commvq_cache_key_norms2(c, layer, 2, ids, n, k.data(), mine.data()); },
                [&] { CHECK(snapshot(c) == *before); });
            std::copy(mine.begin(), mine.end(), norms.begin() + 2 * n);
            const uint64_t b = sweep(
                "commvq_cache_append_norms2",
                [&] { return commvq_cache_append_norms2(c, layer, 2, ids, n, k.data(), v.data(), norms.data()); },
                [&] {
                    CHECK(snapshot(c) == *before);
                    CHECK_NOTHROW(c->cache.check_integrity());
                });
            // The first calls grow the scratch; later ones of the same size take nothing.
            if (step > 0) {
                CHECK(a == 0);
                CHECK(b == 0);
            }
        }
    CHECK(c->cache.sequence(0).layers[1].length == 4 * n);
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}
