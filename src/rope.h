// Rotary position embedding in the canonical pair layout: pair j at position
// m is multiplied by exp(i m w_j). Frequencies follow the codebook's RopeSpec
// (none, linear or LLaMA-3 scaling).
#pragma once

#include <cstdint>
#include <vector>

#include "codebook.h"

namespace commvq {

// w_j for j < head_dim/2, in double precision.
std::vector<double> rope_frequencies(const RopeSpec& rope, uint32_t head_dim);

class Rope {
public:
    Rope(const RopeSpec& rope, uint32_t head_dim);
    uint32_t pairs() const { return uint32_t(freq_.size()); }
    // cos and sin of m * w_j for every pair (angles reduced in double precision).
    void angles(uint64_t position, float* cos_out, float* sin_out) const;
    // out = x rotated by +position (sign = +1) or -position (sign = -1);
    // canonical layout, out may alias x.
    void rotate(const float* x, uint64_t position, int sign, float* out) const;

private:
    std::vector<double> freq_;
};

}  // namespace commvq
