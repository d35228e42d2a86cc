#include "fuzz_target.h"

#include <cstdlib>
#include <vector>

#include "codebook_file.h"
#include "random_codebook.h"

namespace commvq {
namespace test {

commvq_codebook_t* fuzz_codebook() {
    RandomCodebookSpec spec;
    spec.n_layers = 2;
    spec.n_kv_heads = 1;
    spec.n_q_heads = 2;
    spec.head_dim = 8;
    spec.sub_centers = 4;
    spec.seed = 14;
    const std::vector<uint8_t> bytes = serialize_codebook(random_codebook(spec));
    commvq_codebook_t* cb = nullptr;
    if (commvq_codebook_load_memory(bytes.data(), bytes.size(), &cb) != COMMVQ_OK) std::abort();
    return cb;
}

commvq_cache_t* fuzz_cache(uint32_t max_seqs, uint64_t max_tokens) {
    static commvq_codebook_t* cb = fuzz_codebook();
    commvq_cache_params_t p;
    commvq_cache_params_init(&p);
    p.max_seqs = max_seqs;
    p.max_tokens = max_tokens;
    p.block_tokens = 16;
    p.window = 8;
    p.sink_tokens = 2;
    p.n_threads = 1;
    commvq_cache_t* c = nullptr;
    if (commvq_cache_create(cb, &p, &c) != COMMVQ_OK) std::abort();
    return c;
}

}  // namespace test
}  // namespace commvq
