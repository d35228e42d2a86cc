// The kernels' view of a codebook's shape (cuda::ModelShape), derived in one
// place for the CUDA back end and the benchmark.
#pragma once

#include <array>
#include <vector>

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
    m.value_kv_heads = cb.model_kv_heads();
    m.kv_head_begin = cb.kv_head_begin;
    m.given_key_norms = cb.needs_given_key_norms();
    return m;
}

// The value encoder's arrays of one layer in ValueTables order, and the
// tables over device copies in that order: the order is written once here.
inline std::array<const std::vector<float>*, 8> value_arrays(const ValueCodebook& vc) {
    return {&vc.lambda,      &vc.norm_weight, &vc.norm_bias, &vc.enc1_weight,
            &vc.enc1_bias,   &vc.enc2_weight, &vc.enc2_bias, &vc.codebook};
}

inline ValueTables value_tables_at(const std::array<const float*, 8>& p) {
    ValueTables t;
    t.lambda = p[0];
    t.norm_weight = p[1];
    t.norm_bias = p[2];
    t.enc1_weight = p[3];
    t.enc1_bias = p[4];
    t.enc2_weight = p[5];
    t.enc2_bias = p[6];
    t.codebook = p[7];
    return t;
}

}  // namespace cuda
}  // namespace commvq
