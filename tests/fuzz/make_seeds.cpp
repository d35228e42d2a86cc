// Writes the seed corpus of the fuzz targets (corpus/codebook,
// corpus/sequence, corpus/api): the fuzz codebook in F32 and F16 storage;
// sequences of the fuzz cache: empty, sinks only, and sinks, compressed
// tokens and a full window after a truncation; call sequences for
// fuzz_api.cpp (three bytes a call: kind, layer | seq << 1 | other << 3, n). Run from the build tree:
//   tests/fuzz/commvq_fuzz_seeds <source>/tests/fuzz/corpus
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cache.h"
#include "fuzz_target.h"
#include "random_codebook.h"

namespace {

void check(bool ok, const std::string& what) {
    if (ok) return;
    std::fprintf(stderr, "commvq_fuzz_seeds: %s: %s\n", what.c_str(), commvq_last_error());
    std::exit(1);
}

void write(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    check(f && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fclose(f) == 0, path);
}

void append(commvq_cache_t* c, uint32_t n, uint64_t seed) {
    const commvq::Codebook& cb = c->cache.codebook();
    commvq::test::Rng rng(seed);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        const std::vector<float> k = rng.normals(size_t(n) * cb.value_dim()), v = rng.normals(size_t(n) * cb.value_dim());
        check(commvq_cache_append(c, l, 0, n, k.data(), v.data()) == COMMVQ_OK, "append");
    }
}

}  // namespace

int main(int argc, char** argv) {
    check(argc == 2, "usage: commvq_fuzz_seeds <corpus directory>");
    const std::string dir = argv[1];
    commvq_codebook_t* cb = commvq::test::fuzz_codebook();
    check(commvq_codebook_save(cb, (dir + "/codebook/f32.safetensors").c_str()) == COMMVQ_OK, "save f32");
    check(commvq_codebook_save_as(cb, (dir + "/codebook/f16.safetensors").c_str(), COMMVQ_DTYPE_F16) == COMMVQ_OK,
          "save f16");
    commvq_codebook_free(cb);

    commvq_cache_t* c = commvq::test::fuzz_cache();
    check(commvq_cache_seq_save(c, 0, (dir + "/sequence/empty.cvqseq").c_str()) == COMMVQ_OK, "save empty");
    append(c, 2, 1);
    check(commvq_cache_seq_save(c, 0, (dir + "/sequence/sinks.cvqseq").c_str()) == COMMVQ_OK, "save sinks");
    append(c, 40, 2);
    check(commvq_cache_seq_truncate(c, 0, 33) == COMMVQ_OK, "truncate");
    append(c, 9, 3);
    check(commvq_cache_seq_save(c, 0, (dir + "/sequence/full.cvqseq").c_str()) == COMMVQ_OK, "save full");
    commvq_cache_destroy(c);

    // Both layers of 0 in step, a fork, appends to the fork, attention,
    // a truncation, a clear and an attend that must fail.
    write(dir + "/api/fork.bin", {0, 0, 19, 0, 1, 19, 5, 8, 0, 0, 2, 4, 0, 3, 4, 1, 3, 2, 2, 8, 0, 3, 2, 10, 4, 0, 0, 1, 0, 0});
    // Layers out of step: an append past the frontier and a fork refused,
    // then caught up and forked.
    write(dir + "/api/out_of_step.bin", {0, 4, 9, 0, 4, 0, 5, 28, 0, 0, 5, 9, 5, 28, 0, 1, 29, 0x83});
    // Batched appends: both layers of two sequences, then a batch naming
    // one sequence twice and one whose rows would lead out of step.
    write(dir + "/api/batch.bin", {0, 0, 5, 0, 1, 5, 6, 2, 2, 6, 3, 2, 6, 20, 0, 6, 8, 0, 6, 8, 0, 2, 8, 0});
    commvq::test::Rng rng(3);
    std::vector<uint8_t> random(144);
    for (auto& b : random) b = uint8_t(rng.next());
    write(dir + "/api/random.bin", random);
    return 0;
}
