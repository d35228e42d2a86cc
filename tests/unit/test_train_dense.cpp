// The trainers' matrix product (src/train/dense.h) against a float64 loop,
// on shapes that exercise the register tiles and every edge.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include "random_codebook.h"
#include "train/dense.h"

using namespace commvq;

TEST_CASE("train: matmul_nn and transpose match float64 references") {
    test::Rng rng(21);
    const size_t shapes[][3] = {{1, 1, 1}, {4, 16, 8}, {7, 35, 13}, {64, 300, 128}, {5, 17, 1}};
    for (const auto& s : shapes) {
        const size_t M = s[0], N = s[1], K = s[2];
        std::vector<float> A = rng.normals(M * K), B = rng.normals(K * N), C0 = rng.normals(M * N);
        for (bool accumulate : {false, true}) {
            std::vector<float> C = accumulate ? C0 : std::vector<float>(M * N, NAN);
            train::matmul_nn(A.data(), B.data(), C.data(), M, N, K, accumulate);
            for (size_t i = 0; i < M; ++i)
                for (size_t j = 0; j < N; ++j) {
                    double ref = accumulate ? C0[i * N + j] : 0.0, mag = std::fabs(ref);
                    for (size_t k = 0; k < K; ++k) {
                        ref += double(A[i * K + k]) * B[k * N + j];
                        mag += std::fabs(double(A[i * K + k]) * B[k * N + j]);
                    }
                    // float32 sums: error bounded by K ulps of the magnitude.
                    CHECK(std::fabs(C[i * N + j] - ref) <= 1e-6 * double(K + 1) * mag + 1e-30);
                }
        }
        std::vector<float> T(M * K, NAN);
        train::transpose(A.data(), T.data(), M, K);
        for (size_t i = 0; i < M; ++i)
            for (size_t k = 0; k < K; ++k) CHECK(T[k * M + i] == A[i * K + k]);
    }
    std::vector<float> x = {3, -1, 2, -1, 7, 0, 5, 4, 9, -1.5f};
    CHECK(train::min_of(x.data(), x.size()) == -1.5f);
    CHECK(train::min_of(x.data(), 3) == -1.0f);
    std::vector<float> y(10, 1.0f);
    train::axpy(10, 2.0f, x.data(), y.data());
    CHECK(y[4] == 15.0f);
}
