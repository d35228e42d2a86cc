// The cache and codebook the sequence fuzz target and its seeds share: a
// small random codebook (tests/support/random_codebook.h, the same on every
// platform) and a cache with sinks, a window and a pool of 16 blocks, so
// that seeds saved from it carry every part of a sequence file.
#pragma once

#include <cstdint>

#include "commvq/commvq.h"

namespace commvq {
namespace test {

commvq_codebook_t* fuzz_codebook();
// A fresh cache of fuzz_codebook(): 2 sink tokens, window 8, blocks of 16
// tokens, one thread; max_seqs sequences and a pool of max_tokens.
commvq_cache_t* fuzz_cache(uint32_t max_seqs = 1, uint64_t max_tokens = 256);

}  // namespace test
}  // namespace commvq
