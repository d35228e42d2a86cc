// One row's running softmax (log2 domain) over a chunk of scores in shared
// memory, for the G query heads of one KV head: one warp per head.
#pragma once

#include <cfloat>

#include "attention/layout.h"

namespace commvq {
namespace cuda {
namespace attention {

// Updates run_max and run_sum, turns scores[h][i] (i < n) into p, and leaves
// in rescale[h] the factor by which older accumulators must be multiplied.
template <int G>
__device__ void softmax_chunk(float* scores, uint32_t stride, uint32_t n, float* run_max, float* run_sum,
                              float* rescale) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int h = warp; h < G; h += kWarps) {
        float* s = scores + h * stride;
        float mx = -FLT_MAX;
        for (uint32_t i = lane; i < n; i += 32) mx = fmaxf(mx, s[i]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        const float m_old = run_max[h];
        const float m_new = fmaxf(m_old, mx);
        float sum = 0;
        for (uint32_t i = lane; i < n; i += 32) {
            const float p = exp2f(s[i] - m_new);
            sum += p;
            s[i] = p;
        }
        for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        __syncwarp();  // every lane has read run_max[h] before lane 0 replaces it
        if (lane == 0) {
            const float a = m_old == -FLT_MAX ? 0.0f : exp2f(m_old - m_new);
            rescale[h] = a;
            run_sum[h] = run_sum[h] * a + sum;
            run_max[h] = m_new;
        }
    }
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
