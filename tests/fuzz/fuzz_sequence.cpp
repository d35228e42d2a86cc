// Fuzz target: the sequence loader (commvq_cache_seq_load) on any bytes,
// written to a file and loaded into a cache of the seeds' codebook
// (fuzz_target.h). Every input must end in a status with the cache
// unchanged when it fails: no crash, no leak, no undefined behaviour. A
// sequence that loads is attended in every layer and saved again, and the
// file it saves must load too.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cache.h"
#include "fuzz_target.h"

namespace {

// The input as a file, removed again when the input is done.
struct InputFile {
    std::string path;
    InputFile(const std::string& p, const uint8_t* data, size_t size) : path(p) {
        std::FILE* f = std::fopen(path.c_str(), "wb");
        if (!f || std::fwrite(data, 1, size, f) != size || std::fclose(f) != 0) std::abort();
    }
    ~InputFile() { std::remove(path.c_str()); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static commvq_cache_t* c = commvq::test::fuzz_cache();
    static const std::string name = "/tmp/commvq_fuzz_sequence_" + std::to_string(::getpid());
    const InputFile file(name, data, size);
    const std::string& path = file.path;
    commvq_cache_seq_clear(c, 0);
    const commvq_status_t status = commvq_cache_seq_load(c, 0, path.c_str());
    c->cache.check_integrity();  // throws, and so aborts, on a damaged pool
    if (status != COMMVQ_OK) {
        uint64_t length = 1;
        if (commvq_cache_seq_length(c, 0, &length) != COMMVQ_OK || length != 0) std::abort();
        return 0;
    }
    const commvq::Codebook& cb = c->cache.codebook();
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    std::vector<float> q(row, 0.5f), out(row), lse(cb.n_q_heads);
    for (uint32_t l = 0; l < cb.n_layers; ++l)
        if (c->cache.sequence(0).layers[l].length > 0 &&
            commvq_cache_attend(c, l, 0, 1, q.data(), out.data(), lse.data(), 0) != COMMVQ_OK)
            std::abort();
    // What loads must save and load again.
    if (commvq_cache_seq_save(c, 0, path.c_str()) != COMMVQ_OK) std::abort();
    commvq_cache_seq_clear(c, 0);
    if (commvq_cache_seq_load(c, 0, path.c_str()) != COMMVQ_OK) std::abort();
    return 0;
}
