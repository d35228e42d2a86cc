#include "key_float_pass.h"

#include <cmath>

#include "vector_clones.h"

namespace commvq {

// Float costs of one stage, first the dot products of t with every sub-
// center (sub-centers transposed, [d][C], so each inner loop is one vector
// operation): alpha_a = ||z_a||^2 - 2 <t, z_a>, beta_a = ||z_a||^2 - 2 <t, i z_a>.
COMMVQ_CLONE_BODY
void float_alpha_beta_body(uint32_t C, uint32_t d, const float* zt, const float* norm, const float* t, float* alpha,
                           float* beta) {
    float* dot_a = alpha;
    float* dot_b = beta;
    for (uint32_t a = 0; a < C; ++a) dot_a[a] = dot_b[a] = 0.0f;
    for (uint32_t j = 0; j < d / 2; ++j) {
        const float re = t[2 * j], im = t[2 * j + 1];
        const float* z_re = zt + size_t(2 * j) * C;
        const float* z_im = z_re + C;
        for (uint32_t a = 0; a < C; ++a) {
            dot_a[a] += re * z_re[a] + im * z_im[a];  // <t, z_a>
            dot_b[a] += im * z_re[a] - re * z_im[a];  // <t, i z_a> = <-i t, z_a>, -i (x, y) = (y, -x)
        }
    }
    for (uint32_t a = 0; a < C; ++a) {
        alpha[a] = norm[a] - 2.0f * dot_a[a];
        beta[a] = norm[a] - 2.0f * dot_b[a];
    }
}
COMMVQ_TWO_CLONES(float_alpha_beta,
                  (uint32_t C, uint32_t d, const float* zt, const float* norm, const float* t, float* alpha,
                   float* beta),
                  (C, d, zt, norm, t, alpha, beta))

// The same for four tokens at once (t[i] is token i's [d]): the dot products
// of eight sub-centers with four tokens stay in registers over all of d, and
// each sub-center element is loaded once for the four tokens.
COMMVQ_CLONE_BODY
void float_alpha_beta4_body(uint32_t C, uint32_t d, const float* zt, const float* norm, const float* const* t,
                            float* const* alpha, float* const* beta) {
    constexpr uint32_t kTokens = 4;
    const uint32_t body = C / 8 * 8;
    for (uint32_t a0 = 0; a0 < body; a0 += 8) {
        F8 dot_a[kTokens] = {}, dot_b[kTokens] = {};
        for (uint32_t j = 0; j < d / 2; ++j) {
            const F8 z_re = load8(zt + size_t(2 * j) * C + a0);
            const F8 z_im = load8(zt + size_t(2 * j + 1) * C + a0);
#pragma GCC unroll 4
            for (uint32_t i = 0; i < kTokens; ++i) {
                const float re = t[i][2 * j], im = t[i][2 * j + 1];
                dot_a[i] += re * z_re + im * z_im;
                dot_b[i] += im * z_re - re * z_im;
            }
        }
        const F8 n = load8(norm + a0);
        for (uint32_t i = 0; i < kTokens; ++i) {
            store8(alpha[i] + a0, n - 2.0f * dot_a[i]);
            store8(beta[i] + a0, n - 2.0f * dot_b[i]);
        }
    }
    for (uint32_t a = body; a < C; ++a)  // C not a multiple of 8
        for (uint32_t i = 0; i < kTokens; ++i) {
            float dot_a = 0.0f, dot_b = 0.0f;
            for (uint32_t j = 0; j < d / 2; ++j) {
                const float re = t[i][2 * j], im = t[i][2 * j + 1];
                dot_a += re * zt[size_t(2 * j) * C + a] + im * zt[size_t(2 * j + 1) * C + a];
                dot_b += im * zt[size_t(2 * j) * C + a] - re * zt[size_t(2 * j + 1) * C + a];
            }
            alpha[i][a] = norm[a] - 2.0f * dot_a;
            beta[i][a] = norm[a] - 2.0f * dot_b;
        }
}
COMMVQ_TWO_CLONES(float_alpha_beta4,
                  (uint32_t C, uint32_t d, const float* zt, const float* norm, const float* const* t,
                   float* const* alpha, float* const* beta),
                  (C, d, zt, norm, t, alpha, beta))

// The minimum over B of alpha_A + beta_B + gamma_{A,B} for each A. gamma is
// antisymmetric (gamma_{A,B} = -gamma_{B,A}), so row B of the table, negated,
// is column B: the minimum over B then runs as one vector operation across
// all rows A at once.
COMMVQ_CLONE_BODY
void float_row_minima_body(uint32_t C, const float* gamma, const float* alpha, const float* beta, float* row_min) {
    for (uint32_t A = 0; A < C; ++A) row_min[A] = INFINITY;
    for (uint32_t B = 0; B < C; ++B) {
        const float beta_b = beta[B];
        const float* g = gamma + size_t(B) * C;
        for (uint32_t A = 0; A < C; ++A) {
            const float v = alpha[A] + (beta_b - g[A]);
            row_min[A] = v < row_min[A] ? v : row_min[A];
        }
    }
}
COMMVQ_TWO_CLONES(float_row_minima, (uint32_t C, const float* gamma, const float* alpha, const float* beta,
                                     float* row_min),
                  (C, gamma, alpha, beta, row_min))

}  // namespace commvq
