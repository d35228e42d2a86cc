// The key trainer's M-step (src/train/m_step.h) against a float64 dense
// least-squares solve built independently from the explicit design matrix.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "error.h"
#include "random_codebook.h"
#include "train/m_step.h"

using namespace commvq;

namespace {

// Normal equations of one pair built row by row from the definition: each
// center c = (A, B) gives two observations, Re: x_A - y_B = Re m_c and
// Im: y_A + x_B = Im m_c, each with weight n_c.
void dense_normal_equations(const std::vector<double>& weight, const std::vector<double>& weighted_sum,
                            uint32_t C, uint32_t d, uint32_t pair, std::vector<double>& h,
                            std::vector<double>& rhs) {
    const uint32_t n = 2 * C;
    h.assign(size_t(n) * n, 0.0);
    rhs.assign(n, 0.0);
    for (uint32_t a = 0; a < C; ++a)
        for (uint32_t b = 0; b < C; ++b) {
            const size_t c = size_t(a) * C + b;
            const double w = weight[c];
            for (int part = 0; part < 2; ++part) {
                std::vector<double> row(n, 0.0);
                if (part == 0) {
                    row[a] += 1;
                    row[C + b] -= 1;
                } else {
                    row[C + a] += 1;
                    row[b] += 1;
                }
                // w * m_c = S_c: the weighted sum is what the E-step hands over.
                const double target_times_w = weighted_sum[c * d + 2 * pair + part];
                for (uint32_t i = 0; i < n; ++i) {
                    rhs[i] += row[i] * target_times_w;
                    for (uint32_t j = 0; j < n; ++j) h[size_t(i) * n + j] += w * row[i] * row[j];
                }
            }
        }
}

// Gaussian elimination with partial pivoting, float64.
std::vector<double> dense_solve(std::vector<double> a, std::vector<double> b) {
    const size_t n = b.size();
    for (size_t col = 0; col < n; ++col) {
        size_t piv = col;
        for (size_t r = col + 1; r < n; ++r)
            if (std::fabs(a[r * n + col]) > std::fabs(a[piv * n + col])) piv = r;
        for (size_t k = 0; k < n; ++k) std::swap(a[col * n + k], a[piv * n + k]);
        std::swap(b[col], b[piv]);
        for (size_t r = col + 1; r < n; ++r) {
            double f = a[r * n + col] / a[col * n + col];
            for (size_t k = col; k < n; ++k) a[r * n + k] -= f * a[col * n + k];
            b[r] -= f * b[col];
        }
    }
    std::vector<double> x(n);
    for (size_t i = n; i-- > 0;) {
        double s = b[i];
        for (size_t k = i + 1; k < n; ++k) s -= a[i * n + k] * x[k];
        x[i] = s / a[i * n + i];
    }
    return x;
}

}  // namespace

TEST_CASE("train: M-step matches a float64 dense least-squares solve") {
    const uint32_t C = 6, d = 8;
    test::Rng rng(7);
    std::vector<double> weight(C * C), weighted_sum(size_t(C) * C * d);
    for (size_t c = 0; c < weight.size(); ++c) {
        // Some centers get no weight at all, as at low EM temperatures.
        weight[c] = rng.uniform() < 0.3 ? 0.0 : rng.uniform(0.1, 5.0);
        for (uint32_t k = 0; k < d; ++k) weighted_sum[c * d + k] = weight[c] * rng.normal();
    }
    const double ridge = 1e-6;
    std::vector<float> z(size_t(C) * d, NAN);
    train::solve_commutative_centers(weight.data(), weighted_sum.data(), C, d, ridge, z.data());

    const std::vector<double> h_lib = train::commutative_normal_matrix(weight.data(), C);
    for (uint32_t j = 0; j < d / 2; ++j) {
        std::vector<double> h, rhs;
        dense_normal_equations(weight, weighted_sum, C, d, j, h, rhs);
        // Same normal matrix and right-hand side as the library builds.
        for (size_t k = 0; k < h.size(); ++k) CHECK(h_lib[k] == doctest::Approx(h[k]).epsilon(1e-12));
        std::vector<double> rhs_lib(2 * C);
        train::commutative_rhs(weighted_sum.data(), C, d, j, rhs_lib.data());
        for (uint32_t k = 0; k < 2 * C; ++k) CHECK(rhs_lib[k] == doctest::Approx(rhs[k]).epsilon(1e-12));

        for (uint32_t k = 0; k < 2 * C; ++k) h[size_t(k) * 2 * C + k] += ridge;
        const std::vector<double> x = dense_solve(h, rhs);
        for (uint32_t a = 0; a < C; ++a) {
            // float32 output of a float64 solve: relative 1e-5 of the solution's scale.
            CHECK(z[size_t(a) * d + 2 * j] == doctest::Approx(x[a]).epsilon(1e-5).scale(1.0));
            CHECK(z[size_t(a) * d + 2 * j + 1] == doctest::Approx(x[C + a]).epsilon(1e-5).scale(1.0));
        }
    }
}

TEST_CASE("train: M-step recovers an exactly commutative set of centers") {
    // Means that ARE z_A + i z_B are reproduced whatever the (positive) weights.
    const uint32_t C = 5, d = 6;
    test::Rng rng(11);
    std::vector<float> truth = rng.normals(size_t(C) * d);
    std::vector<double> weight(C * C), weighted_sum(size_t(C) * C * d);
    for (uint32_t a = 0; a < C; ++a)
        for (uint32_t b = 0; b < C; ++b) {
            const size_t c = size_t(a) * C + b;
            weight[c] = rng.uniform(0.5, 3.0);
            for (uint32_t j = 0; j < d; j += 2) {
                double re = truth[a * d + j] - truth[b * d + j + 1];
                double im = truth[a * d + j + 1] + truth[b * d + j];
                weighted_sum[c * d + j] = weight[c] * re;
                weighted_sum[c * d + j + 1] = weight[c] * im;
            }
        }
    std::vector<float> z(size_t(C) * d, NAN);
    train::solve_commutative_centers(weight.data(), weighted_sum.data(), C, d, 0.0, z.data());
    // The decomposition c = z_A + i z_B is unique up to nothing when every
    // center has weight (the diagonal centers (a, a) pin each z_a).
    for (size_t k = 0; k < z.size(); ++k) CHECK(z[k] == doctest::Approx(truth[k]).epsilon(1e-4).scale(1.0));
}

TEST_CASE("train: Cholesky refuses a matrix that is not positive definite") {
    std::vector<double> a = {1, 2, 2, 1};  // eigenvalues 3 and -1
    try {
        train::cholesky_factor(a.data(), 2);
        FAIL("no error");
    } catch (const Error& e) {
        CHECK(e.status() == COMMVQ_ERR_INTERNAL);
    }
    // Without a ridge, a sub-center that no center uses makes H singular.
    std::vector<double> weight(9, 1.0);
    for (int k = 0; k < 3; ++k) weight[k * 3 + 2] = weight[2 * 3 + k] = 0.0;  // sub-center 2 unused
    std::vector<double> sums(9 * 2);
    for (int c = 0; c < 9; ++c) sums[c * 2] = sums[c * 2 + 1] = 0.5 * weight[c];
    std::vector<float> z(3 * 2, NAN);
    CHECK_THROWS_AS(train::solve_commutative_centers(weight.data(), sums.data(), 3, 2, 0.0, z.data()), Error);
    train::solve_commutative_centers(weight.data(), sums.data(), 3, 2, 1e-6, z.data());
    for (float x : z) CHECK(std::isfinite(x));
    CHECK(z[2 * 2] == 0.0f);  // the unused sub-center comes out as 0
    CHECK(z[2 * 2 + 1] == 0.0f);
}
