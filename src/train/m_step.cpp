#include "m_step.h"

#include <cmath>
#include <string>

#include "error.h"

namespace commvq {
namespace train {

std::vector<double> commutative_normal_matrix(const double* weight, uint32_t C) {
    const size_t n = 2 * size_t(C);
    std::vector<double> h(n * n, 0.0);
    for (uint32_t a = 0; a < C; ++a) {
        for (uint32_t b = 0; b < C; ++b) {
            double w = weight[size_t(a) * C + b];
            // Center (a, b) = (x_a - y_b) + i (y_a + x_b): its real part couples
            // x_a and y_b, its imaginary part y_a and x_b.
            h[a * n + a] += w;                // x_a from the real part
            h[(C + b) * n + (C + b)] += w;    // y_b from the real part
            h[(C + a) * n + (C + a)] += w;    // y_a from the imaginary part
            h[b * n + b] += w;                // x_b from the imaginary part
            h[a * n + (C + b)] -= w;          // real: x_a * (-y_b)
            h[(C + b) * n + a] -= w;
            h[(C + a) * n + b] += w;          // imaginary: y_a * x_b
            h[b * n + (C + a)] += w;
        }
    }
    return h;
}

void commutative_rhs(const double* weighted_sum, uint32_t C, uint32_t head_dim, uint32_t pair,
                     double* rhs) {
    for (uint32_t k = 0; k < 2 * C; ++k) rhs[k] = 0.0;
    for (uint32_t a = 0; a < C; ++a) {
        for (uint32_t b = 0; b < C; ++b) {
            const double* s = weighted_sum + (size_t(a) * C + b) * head_dim + 2 * pair;
            double re = s[0], im = s[1];
            rhs[a] += re;      // x_a, real part
            rhs[C + b] -= re;  // y_b, real part (enters as -y_b)
            rhs[C + a] += im;  // y_a, imaginary part
            rhs[b] += im;      // x_b, imaginary part
        }
    }
}

void cholesky_factor(double* a, uint32_t n) {
    for (uint32_t j = 0; j < n; ++j) {
        double d = a[size_t(j) * n + j];
        for (uint32_t k = 0; k < j; ++k) d -= a[size_t(j) * n + k] * a[size_t(j) * n + k];
        require(d > 0.0 && std::isfinite(d), COMMVQ_ERR_INTERNAL,
                "M-step normal matrix is not positive definite at pivot " + std::to_string(j));
        double ljj = std::sqrt(d);
        a[size_t(j) * n + j] = ljj;
        for (uint32_t i = j + 1; i < n; ++i) {
            double s = a[size_t(i) * n + j];
            for (uint32_t k = 0; k < j; ++k) s -= a[size_t(i) * n + k] * a[size_t(j) * n + k];
            a[size_t(i) * n + j] = s / ljj;
        }
    }
}

void cholesky_solve(const double* l, uint32_t n, double* b) {
    for (uint32_t i = 0; i < n; ++i) {
        double s = b[i];
        for (uint32_t k = 0; k < i; ++k) s -= l[size_t(i) * n + k] * b[k];
        b[i] = s / l[size_t(i) * n + i];
    }
    for (uint32_t i = n; i-- > 0;) {
        double s = b[i];
        for (uint32_t k = i + 1; k < n; ++k) s -= l[size_t(k) * n + i] * b[k];
        b[i] = s / l[size_t(i) * n + i];
    }
}

void solve_commutative_centers(const double* weight, const double* weighted_sum, uint32_t C,
                               uint32_t head_dim, double ridge, float* sub_centers) {
    const uint32_t n = 2 * C;
    std::vector<double> h = commutative_normal_matrix(weight, C);
    for (uint32_t k = 0; k < n; ++k) h[size_t(k) * n + k] += ridge;
    cholesky_factor(h.data(), n);
    std::vector<double> rhs(n);
    for (uint32_t j = 0; j < head_dim / 2; ++j) {
        commutative_rhs(weighted_sum, C, head_dim, j, rhs.data());
        cholesky_solve(h.data(), n, rhs.data());
        for (uint32_t a = 0; a < C; ++a) {
            sub_centers[size_t(a) * head_dim + 2 * j] = float(rhs[a]);
            sub_centers[size_t(a) * head_dim + 2 * j + 1] = float(rhs[C + a]);
        }
    }
}

}  // namespace train
}  // namespace commvq
