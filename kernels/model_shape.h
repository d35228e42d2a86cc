// The kernels' view of a codebook's shape (cuda::ModelShape), derived in one
// place for the CUDA back end and the benchmark.
#pragma once

#include "codebook.h"
#include "launchers.h"

namespace commvq {
namespace cuda {

inline ModelShape model_shape(const Codebook& cb) {
    ModelShape m;
    m.n_kv_heads = cb.n_kv_heads;
    m.n_q_heads = cb.n_q_heads;
    m.head_dim = cb.head_dim;
    m.key_stages = cb.key_stages;
    m.sub_centers = cb.sub_centers;
    m.code_bits = cb.code_bits();
    m.value_code_bits = cb.value_code_bits();
    m.value_hidden = cb.value_hidden;
    m.n_key_scales = cb.n_key_scales();
    m.pair_layout = cb.pair_layout;
    return m;
}

}  // namespace cuda
}  // namespace commvq
