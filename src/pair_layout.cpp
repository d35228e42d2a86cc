#include "pair_layout.h"

#include <cstring>
#include <vector>

#include "commvq/commvq.h"
#include "error.h"

namespace commvq {

namespace {

// Both directions allow out == x; a rotate-half permutation then needs a copy.
const float* unaliased(const float* x, uint32_t head_dim, const float* out, std::vector<float>& copy) {
    if (x != out) return x;
    copy.assign(x, x + head_dim);
    return copy.data();
}

void require_layout(int32_t pair_layout) {
    require(pair_layout == COMMVQ_PAIRS_ROTATE_HALF || pair_layout == COMMVQ_PAIRS_INTERLEAVED,
            COMMVQ_ERR_INVALID_ARGUMENT, [&] { return "unknown pair layout " + std::to_string(pair_layout); });
}

}  // namespace

void to_canonical(const float* x, uint32_t head_dim, int32_t pair_layout, float* out) {
    require_layout(pair_layout);
    if (pair_layout == COMMVQ_PAIRS_INTERLEAVED) {
        if (out != x) std::memcpy(out, x, size_t(head_dim) * 4);
        return;
    }
    std::vector<float> copy;
    const float* in = unaliased(x, head_dim, out, copy);
    const uint32_t P = head_dim / 2;
    for (uint32_t j = 0; j < P; ++j) {
        out[2 * j] = in[j];
        out[2 * j + 1] = in[j + P];
    }
}

void from_canonical(const float* x, uint32_t head_dim, int32_t pair_layout, float* out) {
    require_layout(pair_layout);
    if (pair_layout == COMMVQ_PAIRS_INTERLEAVED) {
        if (out != x) std::memcpy(out, x, size_t(head_dim) * 4);
        return;
    }
    std::vector<float> copy;
    const float* in = unaliased(x, head_dim, out, copy);
    const uint32_t P = head_dim / 2;
    for (uint32_t j = 0; j < P; ++j) {
        out[j] = in[2 * j];
        out[j + P] = in[2 * j + 1];
    }
}

}  // namespace commvq
