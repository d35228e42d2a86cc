// The float pass of the key encoder's stage search (key_encoder.cpp): the
// float costs of all C*C codes of a stage, vectorized. Their only use is to
// choose the candidates that float64 re-evaluates, within a proven bound of
// the float error, so the codes do not depend on how these round. That is
// why this file, unlike the rest of encoding, may fuse multiply-adds (the
// x86-64-v3 clone does, the baseline cannot; a fused operation errs less
// than the bound assumes), and the tests check that both clones give the
// same codes (docs/RELIABILITY.md, "Same codes on every machine").
#pragma once

#include <cstdint>

namespace commvq {

// alpha_a = ||z_a||^2 - 2 <t, z_a> and beta_a = ||z_a||^2 - 2 <t, i z_a>
// for one token t [d] and every sub-center a < C; zt holds the sub-centers
// transposed, [d][C], norm their squared norms [C].
void float_alpha_beta(uint32_t C, uint32_t d, const float* zt, const float* norm, const float* t, float* alpha,
                      float* beta);
// The same for four tokens at once (t[i], alpha[i], beta[i]).
void float_alpha_beta4(uint32_t C, uint32_t d, const float* zt, const float* norm, const float* const* t,
                       float* const* alpha, float* const* beta);
// row_min[A] = min over B of alpha_A + beta_B + gamma_{A,B}, gamma [C][C]
// antisymmetric.
void float_row_minima(uint32_t C, const float* gamma, const float* alpha, const float* beta, float* row_min);

}  // namespace commvq
