// The stage search runs in two passes. A float pass evaluates all C*C costs
// alpha_A + beta_B + gamma_{A,B} (vectorized, the bulk of the work) and keeps
// the rows whose minimum lies within a proven float error bound of the best.
// Only those candidates are re-evaluated in float64, which decides the code.
// So the result is the float64 argmin (what a brute-force float64 search over
// all centers finds) at close to float speed.
#include "key_encoder.h"

#include <cmath>

#include "error.h"
#include "vector_clones.h"


namespace commvq {

namespace {

// Float costs of one stage: dot products of t with every sub-center (sub-
// centers transposed, [d][C], so each inner loop is one vector operation),
// then the minimum over B of alpha_A + beta_B + gamma_{A,B} for each A.
COMMVQ_VECTOR_CLONES
void float_row_minima(uint32_t C, uint32_t d, const float* zt, const float* norm, const float* gamma,
                      const float* t, float* dot_a, float* dot_b, float* row_min) {
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
    float* alpha = dot_a;
    float* beta = dot_b;
    for (uint32_t a = 0; a < C; ++a) {
        alpha[a] = norm[a] - 2.0f * dot_a[a];
        beta[a] = norm[a] - 2.0f * dot_b[a];
    }
    // gamma is antisymmetric (gamma_{A,B} = -gamma_{B,A}), so row B of the
    // table, negated, is column B: the minimum over B then runs as one
    // vector operation across all rows A at once.
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

}  // namespace

struct KeyEncoder::Work {
    std::vector<double> residual;              // t, [d]
    std::vector<float> t;                      // t in float, [d]
    std::vector<float> dot_a, dot_b, row_min;  // float pass, [C]
    std::vector<double> alpha, beta;           // float64 alpha_A, beta_B, computed on demand; NaN = not yet
    Work(uint32_t d, uint32_t C) : residual(d), t(d), dot_a(C), dot_b(C), row_min(C), alpha(C), beta(C) {}
};

KeyEncoder::KeyEncoder(const Codebook& cb, uint32_t layer) : cb_(cb), layer_(layer) {
    require(layer < cb.n_layers, COMMVQ_ERR_OUT_OF_RANGE,
            "layer " + std::to_string(layer) + " of a codebook with " + std::to_string(cb.n_layers) + " layers");
    require(cb.cross.size() == cb.n_layers, COMMVQ_ERR_INTERNAL, "key encoder needs a finalized codebook");
    const uint32_t H = cb.n_kv_heads, R = cb.key_stages, C = cb.sub_centers, d = cb.head_dim;
    centers_t_.resize(size_t(H) * R * d * C);
    norms_.resize(size_t(H) * R * C);
    max_norm_.resize(size_t(H) * R);
    for (uint32_t h = 0; h < H; ++h)
        for (uint32_t r = 0; r < R; ++r) {
            const size_t hr = size_t(h) * R + r;
            float* zt = centers_t_.data() + hr * d * C;
            double max_norm2 = 0;
            for (uint32_t a = 0; a < C; ++a) {
                const float* za = cb.sub_center(layer, h, r, a);
                double nn = 0;
                for (uint32_t k = 0; k < d; ++k) {
                    zt[size_t(k) * C + a] = za[k];
                    nn += double(za[k]) * za[k];
                }
                norms_[hr * C + a] = nn;
                max_norm2 = std::max(max_norm2, nn);
            }
            max_norm_[hr] = std::sqrt(max_norm2);
        }
}

// alpha_A + beta_B + gamma_{A,B} in float64, each term from its definition.
double KeyEncoder::exact_cost(uint32_t head, uint32_t stage, uint32_t A, uint32_t B, const double* t,
                              Work& w) const {
    const uint32_t P = cb_.pairs(), C = cb_.sub_centers;
    const size_t hr = size_t(head) * cb_.key_stages + stage;
    const float* za = cb_.sub_center(layer_, head, stage, A);
    const float* zb = cb_.sub_center(layer_, head, stage, B);
    if (std::isnan(w.alpha[A])) {
        double dot = 0;  // <t, z_A>
        for (uint32_t j = 0; j < P; ++j) dot += t[2 * j] * za[2 * j] + t[2 * j + 1] * za[2 * j + 1];
        w.alpha[A] = norms_[hr * C + A] - 2 * dot;
    }
    if (std::isnan(w.beta[B])) {
        double dot = 0;  // <t, i z_B>
        for (uint32_t j = 0; j < P; ++j) dot += t[2 * j + 1] * zb[2 * j] - t[2 * j] * zb[2 * j + 1];
        w.beta[B] = norms_[hr * C + B] - 2 * dot;
    }
    double cross = 0;  // <z_A, i z_B>
    for (uint32_t j = 0; j < P; ++j) cross += double(za[2 * j + 1]) * zb[2 * j] - double(za[2 * j]) * zb[2 * j + 1];
    return w.alpha[A] + w.beta[B] + 2 * cross;
}

// ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B} (SPEC.md).
uint32_t KeyEncoder::best_code(uint32_t head, uint32_t stage, const double* t, Work& w) const {
    const uint32_t C = cb_.sub_centers, d = cb_.head_dim;
    const size_t hr = size_t(head) * cb_.key_stages + stage;
    double t_norm2 = 0;
    for (uint32_t k = 0; k < d; ++k) {
        w.t[k] = float(t[k]);
        t_norm2 += t[k] * t[k];
    }
    const float* norm_f = cb_.norms[layer_].data() + hr * C;
    const float* gamma_f = cb_.cross[layer_].data() + hr * C * C;
    float_row_minima(C, d, centers_t_.data() + hr * d * C, norm_f, gamma_f, w.t.data(), w.dot_a.data(),
                     w.dot_b.data(), w.row_min.data());
    float best_f = INFINITY;
    for (uint32_t A = 0; A < C; ++A) best_f = std::min(best_f, w.row_min[A]);

    // Bound on |float cost - exact cost| with u = 2^-24 (rounding of t and of
    // the stored norms and gamma, d-term float dot products, three roundings
    // of sums), doubled for margin:
    //   |err| <= 2u (16 zmax^2 + (4d + 32) ||t|| zmax)
    // Every code whose exact cost is the minimum has a float cost within
    // 2 * bound of the float minimum, so it is among the candidates.
    const double u = std::ldexp(1.0, -24), zmax = max_norm_[hr];
    const double bound = 2 * u * (16 * zmax * zmax + (4.0 * d + 32) * std::sqrt(t_norm2) * zmax);
    const double limit = double(best_f) + 2 * bound;

    std::fill(w.alpha.begin(), w.alpha.end(), NAN);
    std::fill(w.beta.begin(), w.beta.end(), NAN);
    const float* dot_alpha = w.dot_a.data();  // float_row_minima left alpha and beta here
    const float* dot_beta = w.dot_b.data();
    double best = INFINITY;
    uint32_t best_code = 0;
    for (uint32_t A = 0; A < C; ++A) {
        if (!(double(w.row_min[A]) <= limit)) continue;
        const float* g = gamma_f + size_t(A) * C;
        for (uint32_t B = 0; B < C; ++B) {
            const float v = dot_alpha[A] + (dot_beta[B] + g[B]);
            if (!(double(v) <= limit)) continue;
            const double cost = exact_cost(head, stage, A, B, t, w);
            if (cost < best) {  // codes in increasing order: ties keep the lower code
                best = cost;
                best_code = A * C + B;
            }
        }
    }
    return best_code;
}

void KeyEncoder::encode_head(uint32_t head, const float* k, double scale, uint16_t* codes, Work& w) const {
    const uint32_t C = cb_.sub_centers, d = cb_.head_dim, R = cb_.key_stages;
    std::vector<double>& t = w.residual;
    for (uint32_t i = 0; i < d; ++i) t[i] = scale > 0 ? k[i] / scale : 0.0;
    for (uint32_t r = 0; r < R; ++r) {
        const uint32_t code = best_code(head, r, t.data(), w);
        codes[r] = uint16_t(code);
        const float* za = cb_.sub_center(layer_, head, r, code / C);
        const float* zb = cb_.sub_center(layer_, head, r, code % C);
        for (uint32_t j = 0; j < d / 2; ++j) {  // t -= z_A + i z_B
            t[2 * j] -= double(za[2 * j]) - double(zb[2 * j + 1]);
            t[2 * j + 1] -= double(za[2 * j + 1]) + double(zb[2 * j]);
        }
    }
}

// A zero key (scale 0) is encoded as t = 0: its codes name the centers
// nearest the origin, its scale is 0, and it decodes to exactly zero.
// Non-finite input gives a non-finite scale (codes stay in range).
void KeyEncoder::encode(const float* k, uint16_t* codes, float* scales) const {
    const uint32_t H = cb_.n_kv_heads, d = cb_.head_dim, R = cb_.key_stages;
    Work w(d, cb_.sub_centers);
    auto norm_of = [d](const float* x, uint32_t n_heads) {
        double s = 0;
        for (size_t i = 0; i < size_t(n_heads) * d; ++i) s += double(x[i]) * x[i];
        return std::sqrt(s);
    };
    if (cb_.scale_mode == COMMVQ_SCALE_TOKEN) {
        const double s = norm_of(k, H);
        scales[0] = float(s);
        for (uint32_t h = 0; h < H; ++h) encode_head(h, k + size_t(h) * d, s, codes + size_t(h) * R, w);
    } else {
        for (uint32_t h = 0; h < H; ++h) {
            const double s = norm_of(k + size_t(h) * d, 1);
            scales[h] = float(s);
            encode_head(h, k + size_t(h) * d, s, codes + size_t(h) * R, w);
        }
    }
}

void KeyEncoder::decode_head(uint32_t head, const uint16_t* head_codes, float* out) const {
    const uint32_t C = cb_.sub_centers, d = cb_.head_dim;
    for (uint32_t i = 0; i < d; ++i) out[i] = 0;
    for (uint32_t r = 0; r < cb_.key_stages; ++r) {
        require(head_codes[r] < C * C, COMMVQ_ERR_CORRUPT, "key code " + std::to_string(head_codes[r]) + " out of range");
        const float* za = cb_.sub_center(layer_, head, r, head_codes[r] / C);
        const float* zb = cb_.sub_center(layer_, head, r, head_codes[r] % C);
        for (uint32_t j = 0; j < d / 2; ++j) {
            out[2 * j] += za[2 * j] - zb[2 * j + 1];
            out[2 * j + 1] += za[2 * j + 1] + zb[2 * j];
        }
    }
}

}  // namespace commvq
