// The closed-form M-step of the key codebook's EM (docs/METHOD.md): given the soft
// weight n_c of every center c = (A, B) and the weighted sum S_c = sum_n
// w_nc t_n, find the sub-centers z_a minimizing
//
//     sum_c n_c |m_{c,j} - (z_{A(c),j} + i z_{B(c),j})|^2     for each pair j
//
// (m_c = S_c / n_c). Pair by pair this is linear least squares in the 2C real
// unknowns (Re z_{a,j}, Im z_{a,j}); its normal matrix depends only on n_c,
// so it is factored once and every pair is a right-hand side.
#pragma once

#include <cstdint>
#include <vector>

namespace commvq {
namespace train {

// The normal matrix H (2C x 2C, row-major, float64) for the unknowns
// u = [x_0..x_{C-1}, y_0..y_{C-1}] (z_a = x_a + i y_a), without ridge:
//   H_xx = H_yy = diag(r + s),  H_xy = N^T - N,  H_yx = N - N^T,
// with N[A][B] = n_c, r_a = sum_B N[a][B], s_a = sum_A N[A][a].
std::vector<double> commutative_normal_matrix(const double* weight, uint32_t C);

// The right-hand side of pair j, [x part (C), y part (C)], from the weighted
// sums S_c (canonical layout: element 2j real, 2j+1 imaginary part).
void commutative_rhs(const double* weighted_sum, uint32_t C, uint32_t head_dim, uint32_t pair,
                     double* rhs);

// Solves the M-step: weight [C*C], weighted_sum [C*C][head_dim]; writes the
// sub-centers [C][head_dim] (canonical layout). ridge is added to the
// diagonal of H so that sub-centers without weight leave it positive
// definite (they come out as 0; the caller re-seeds them).
void solve_commutative_centers(const double* weight, const double* weighted_sum, uint32_t C,
                               uint32_t head_dim, double ridge, float* sub_centers);

// In-place Cholesky factorization of a symmetric positive definite n x n
// matrix (lower triangle, row-major) and the matching solve. Throws
// Error(COMMVQ_ERR_INTERNAL) when a pivot is not positive.
void cholesky_factor(double* a, uint32_t n);
void cholesky_solve(const double* l, uint32_t n, double* b);

}  // namespace train
}  // namespace commvq
