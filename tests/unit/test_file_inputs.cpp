// Files that are not what a loader expects, and saves that must not
// collide: a directory, a FIFO or a device passed as a file is an IO error
// naming the path, never read (src/file_io.h); a sequence file is judged by
// its header before its payload is read; codebook_save writes through a
// temporary name of its own, like seq_save.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "cache_test_util.h"
#include "seq_file.h"
#include "temp_dir.h"

using namespace commvq;
using namespace commvq::test;
namespace fs = std::filesystem;

namespace {

bool message_names(const std::string& what) {
    return std::string(commvq_last_error()).find(what) != std::string::npos;
}

std::vector<std::string> names_in(const TempDir& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}

}  // namespace

TEST_CASE("file inputs: a directory, a FIFO or /dev/zero is an IO error naming the path, for both loaders") {
    TempDir dir("not_files");
    const std::string fifo = dir.file("fifo");
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c = make_cache(cb, small_params());
    append_tokens(c, 0, 20, 1);
    for (const std::string& path : {dir.path.string(), fifo, std::string("/dev/zero")}) {
        CAPTURE(path);
        commvq_codebook_t* loaded = nullptr;
        CHECK(commvq_codebook_load(path.c_str(), &loaded) == COMMVQ_ERR_IO);
        CHECK(loaded == nullptr);
        CHECK_MESSAGE(message_names("'" + path + "'"), commvq_last_error());
        // Opening the FIFO does not wait for a writer, and nothing is read.
        CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_IO, commvq_cache_seq_load(c, 1, path.c_str()));
        CHECK_MESSAGE(message_names("'" + path + "'"), commvq_last_error());
    }
    CHECK(message_names("not a regular file"));
    CHECK(commvq_cache_seq_load(c, 1, dir.path.string().c_str()) == COMMVQ_ERR_IO);
    CHECK(message_names("is a directory"));
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("file inputs: a sequence file far larger than the cache could take is refused from its header") {
    TempDir dir("huge");
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_t* c = make_cache(cb, small_params());
    const std::string path = dir.file("huge.cvqseq");
    REQUIRE(commvq_cache_seq_save(c, 0, path.c_str()) == COMMVQ_OK);  // an empty sequence: header and checksum
    // The header now claims 2^24 uncompressed tokens per layer (4 GiB in
    // all), and the file is extended to exactly that size, sparsely: it is
    // consistent, and reading it would take 4 GiB and seconds.
    std::vector<uint8_t> b;
    {
        std::ifstream f(path, std::ios::binary);
        b.assign(std::istreambuf_iterator<char>(f), {});
    }
    const uint64_t length = uint64_t(1) << 24;
    for (int i = 0; i < 8; ++i) b[48 + i] = uint8_t(length >> (8 * i));  // SequenceImage::length
    const uint64_t token_bytes = 2ull * c->cache.codebook().value_dim() * 4;
    const uint64_t size = b.size() + 2 * length * token_bytes;
    {
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
    }
    fs::resize_file(path, size);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK_FAILS_UNCHANGED(c, COMMVQ_ERR_CAPACITY, commvq_cache_seq_load(c, 1, path.c_str()));
    CHECK_MESSAGE(message_names("window tokens"), commvq_last_error());
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    commvq_cache_destroy(c);
    commvq_codebook_free(cb);
}

TEST_CASE("file inputs: codebook_save leaves an existing <path>.tmp alone and no temporary file behind") {
    TempDir dir("cb_save");
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    const std::string path = dir.file("cb.safetensors");
    {
        std::ofstream f(path + ".tmp");
        f << "someone else's file";
    }
    REQUIRE(commvq_codebook_save(cb, path.c_str()) == COMMVQ_OK);
    std::ifstream f(path + ".tmp");
    CHECK(std::string(std::istreambuf_iterator<char>(f), {}) == "someone else's file");
    CHECK(names_in(dir) == std::vector<std::string>{"cb.safetensors", "cb.safetensors.tmp"});
    commvq_codebook_t* back = nullptr;
    CHECK(commvq_codebook_load(path.c_str(), &back) == COMMVQ_OK);
    commvq_codebook_free(back);
    commvq_codebook_free(cb);
}

TEST_CASE("file inputs: two threads saving one codebook path never collide") {
    TempDir dir("cb_race");
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    const std::string path = dir.file("cb.safetensors");
    int failures[2] = {0, 0};
    auto save = [&](int t) {
        for (int i = 0; i < 40; ++i) failures[t] += commvq_codebook_save(cb, path.c_str()) != COMMVQ_OK;
    };
    std::thread a(save, 0), b(save, 1);
    a.join();
    b.join();
    CHECK(failures[0] + failures[1] == 0);
    CHECK(names_in(dir) == std::vector<std::string>{"cb.safetensors"});
    commvq_codebook_t* back = nullptr;
    CHECK(commvq_codebook_load(path.c_str(), &back) == COMMVQ_OK);
    commvq_codebook_free(back);
    commvq_codebook_free(cb);
}
