// The cache and codebook the sequence fuzz target and its seeds share: a
// small random codebook (tests/support/random_codebook.h, the same on every
// platform) and a cache with sinks, a window and a pool of 16 blocks, so
// that seeds saved from it carry every part of a sequence file.
#pragma once

#include "commvq/commvq.h"

namespace commvq {
namespace test {

commvq_codebook_t* fuzz_codebook();
// A fresh cache of fuzz_codebook(): 1 sequence, 2 sink tokens, window 8,
// blocks of 16 tokens, 256 tokens of pool, one thread.
commvq_cache_t* fuzz_cache();

}  // namespace test
}  // namespace commvq
