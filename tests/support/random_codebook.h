// Random but valid, finalized codebooks of any shape for tests, and the
// small deterministic random generator they are drawn from.
//
//   commvq::test::RandomCodebookSpec spec;     // defaults: 2 layers, 2 KV heads,
//   spec.head_dim = 128;                       // 4 query heads, head_dim 64, 1 bit
//   commvq::Codebook cb = commvq::test::random_codebook(spec);
//
// Sub-centers of stage r have norm about 0.5 * 0.7^r of the normalized key
// (so the residual search behaves like a trained codebook: each stage refines
// the last); lambda is positive; encoder weights are small. The same spec
// always gives the same codebook (and the same fingerprint) on every platform.
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {
namespace test {

// splitmix64 with Box-Muller normals: reproducible everywhere, unlike the
// distributions of <random>.
class Rng {
public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t next();
    double uniform();                     // [0, 1)
    double uniform(double lo, double hi);  // [lo, hi)
    double normal();                      // mean 0, standard deviation 1
    // n values from normal() * stddev.
    std::vector<float> normals(size_t n, double stddev = 1.0);

private:
    uint64_t state_;
};

struct RandomCodebookSpec {
    uint32_t n_layers = 2;
    uint32_t n_kv_heads = 2;
    uint32_t n_q_heads = 4;
    uint32_t head_dim = 64;
    uint32_t value_bits = 1;
    uint32_t key_stages = 0;    // 0: key_stages_for_bits(value_bits)
    uint32_t sub_centers = 64;
    uint32_t value_hidden = 0;  // 0: value_hidden_for(D, value_bits)
    int32_t pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    int32_t scale_mode = COMMVQ_SCALE_TOKEN;
    RopeSpec rope;              // theta 10000, no scaling
    uint64_t seed = 1;
};

Codebook random_codebook(const RandomCodebookSpec& spec);

// The same with the common fields as arguments.
Codebook random_codebook(uint32_t n_layers, uint32_t n_kv_heads, uint32_t n_q_heads, uint32_t head_dim,
                         uint32_t value_bits, int32_t pair_layout, int32_t scale_mode, uint64_t seed);

}  // namespace test
}  // namespace commvq
