// The stage search runs in two passes. A float pass evaluates all C*C costs
// alpha_A + beta_B + gamma_{A,B} (vectorized, the bulk of the work) and keeps
// the rows whose minimum lies within a proven float error bound of the best.
// Only those candidates are re-evaluated in float64, which decides the code.
// So the result is the float64 argmin (what a brute-force float64 search over
// all centers finds) at close to float speed. Tokens go through in tiles
// (encode_tile): a stage's float pass reads its sub-centers once per tile.
// The float pass lives in key_float_pass.cpp; this file, which decides the
// codes and the scales, is compiled without fused multiply-adds.
#include "key_encoder.h"

#include <cmath>

#include "error.h"
#include "key_float_pass.h"
#include "key_scale.h"

namespace commvq {

namespace {

// float64 alpha_a = ||z_a||^2 - 2 <t, z_a> (beta: false) or beta_a =
// ||z_a||^2 - 2 <t, i z_a> (beta: true) for the sub-centers a listed in
// which[0..n), into out[a]. Each dot product is summed pair by pair in the
// order of the definition; four run side by side only to overlap their
// latencies, which changes no rounding.
void exact_alpha_beta(bool beta, uint32_t P, const double* t, const float* centers, size_t stride,
                      const double* norm, const uint32_t* which, uint32_t n, double* out) {
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float* z[4];
        for (uint32_t q = 0; q < 4; ++q) z[q] = centers + which[i + q] * stride;
        double dot[4] = {0, 0, 0, 0};
        for (uint32_t j = 0; j < P; ++j)
            for (uint32_t q = 0; q < 4; ++q)
                dot[q] += beta ? t[2 * j + 1] * z[q][2 * j] - t[2 * j] * z[q][2 * j + 1]
                               : t[2 * j] * z[q][2 * j] + t[2 * j + 1] * z[q][2 * j + 1];
        for (uint32_t q = 0; q < 4; ++q) out[which[i + q]] = norm[which[i + q]] - 2 * dot[q];
    }
    for (; i < n; ++i) {
        const float* z = centers + which[i] * stride;
        double dot = 0;
        for (uint32_t j = 0; j < P; ++j)
            dot += beta ? t[2 * j + 1] * z[2 * j] - t[2 * j] * z[2 * j + 1]
                        : t[2 * j] * z[2 * j] + t[2 * j + 1] * z[2 * j + 1];
        out[which[i]] = norm[which[i]] - 2 * dot;
    }
}

}  // namespace

KeyEncoder::Scratch::Scratch(const Codebook& cb)
    : d(cb.head_dim), C(cb.sub_centers), scale(size_t(kTile) * cb.n_kv_heads), residual(size_t(kTile) * d),
      t(size_t(kTile) * d), t_norm2(kTile), alpha_f(size_t(kTile) * C), beta_f(size_t(kTile) * C), row_min(C),
      alpha(C), beta(C), candidates(size_t(C) * C), need_a(C), need_b(C), list_a(C), list_b(C), code(kTile) {}

KeyEncoder::KeyEncoder(const Codebook& cb, uint32_t layer) : cb_(cb), layer_(layer) {
    require(layer < cb.n_layers, COMMVQ_ERR_OUT_OF_RANGE,
            "layer " + std::to_string(layer) + " of a codebook with " + std::to_string(cb.n_layers) + " layers");
    require(cb.cross.size() == cb.n_layers, COMMVQ_ERR_INTERNAL, "key encoder needs a finalized codebook");
    const uint32_t H = cb.n_kv_heads, R = cb.key_stages, C = cb.sub_centers, d = cb.head_dim;
    centers_t_.resize(size_t(H) * R * d * C);
    norms_.resize(size_t(H) * R * C);
    max_norm_.resize(size_t(H) * R);
    cross_.resize(size_t(H) * R * C * C);
    const uint32_t P = cb.pairs();
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
            for (uint32_t A = 0; A < C; ++A) {
                const float* za = cb.sub_center(layer, h, r, A);
                for (uint32_t B = 0; B < C; ++B) {
                    const float* zb = cb.sub_center(layer, h, r, B);
                    double cross = 0;  // <z_A, i z_B>
                    for (uint32_t j = 0; j < P; ++j)
                        cross += double(za[2 * j + 1]) * zb[2 * j] - double(za[2 * j]) * zb[2 * j + 1];
                    cross_[(hr * C + A) * C + B] = cross;
                }
            }
        }
}

// The float pass of a stage for tokens 0..m-1 of the tile, then each
// token's exact search among its candidates.
void KeyEncoder::search_stage(uint32_t head, uint32_t stage, uint32_t m, Scratch& w) const {
    const uint32_t C = cb_.sub_centers, d = cb_.head_dim;
    const size_t hr = size_t(head) * cb_.key_stages + stage;
    for (uint32_t i = 0; i < m; ++i) {
        const double* t = w.residual.data() + size_t(i) * d;
        float* tf = w.t.data() + size_t(i) * d;
        double t_norm2 = 0;
        for (uint32_t k = 0; k < d; ++k) {
            tf[k] = float(t[k]);
            t_norm2 += t[k] * t[k];
        }
        w.t_norm2[i] = t_norm2;
    }
    const float* zt = centers_t_.data() + hr * d * C;
    const float* norm_f = cb_.norms[layer_].data() + hr * C;
    uint32_t i = 0;
    for (; i + 4 <= m; i += 4) {
        const float* t[4];
        float* alpha[4];
        float* beta[4];
        for (uint32_t q = 0; q < 4; ++q) {
            t[q] = w.t.data() + size_t(i + q) * d;
            alpha[q] = w.alpha_f.data() + size_t(i + q) * C;
            beta[q] = w.beta_f.data() + size_t(i + q) * C;
        }
        float_alpha_beta4(C, d, zt, norm_f, t, alpha, beta);
    }
    for (; i < m; ++i)
        float_alpha_beta(C, d, zt, norm_f, w.t.data() + size_t(i) * d, w.alpha_f.data() + size_t(i) * C,
                         w.beta_f.data() + size_t(i) * C);
    for (i = 0; i < m; ++i) w.code[i] = best_code(head, stage, i, w);
}

// ||t - c_{A,B}||^2 = ||t||^2 + alpha_A + beta_B + gamma_{A,B} (docs/METHOD.md),
// for token i of the tile, whose float alpha and beta are computed.
uint32_t KeyEncoder::best_code(uint32_t head, uint32_t stage, uint32_t i, Scratch& w) const {
    const uint32_t C = cb_.sub_centers, d = cb_.head_dim;
    const size_t hr = size_t(head) * cb_.key_stages + stage;
    const double* t = w.residual.data() + size_t(i) * d;
    const float* gamma_f = cb_.cross[layer_].data() + hr * C * C;
    const float* alpha_f = w.alpha_f.data() + size_t(i) * C;
    const float* beta_f = w.beta_f.data() + size_t(i) * C;
    float_row_minima(C, gamma_f, alpha_f, beta_f, w.row_min.data());
    float best_f = INFINITY;
    for (uint32_t A = 0; A < C; ++A) best_f = std::min(best_f, w.row_min[A]);

    // Bound on |float cost - exact cost| with u = 2^-24 (rounding of t and of
    // the stored norms and gamma, d-term float dot products, three roundings
    // of sums), doubled for margin:
    //   |err| <= 2u (16 zmax^2 + (4d + 32) ||t|| zmax)
    // Every code whose exact cost is the minimum has a float cost within
    // 2 * bound of the float minimum, so it is among the candidates.
    const double u = std::ldexp(1.0, -24), zmax = max_norm_[hr];
    const double bound = 2 * u * (16 * zmax * zmax + (4.0 * d + 32) * std::sqrt(w.t_norm2[i]) * zmax);
    double limit = double(best_f) + 2 * bound;

    const uint32_t P = cb_.pairs();
    const float* centers = cb_.sub_center(layer_, head, stage, 0);
    const size_t stride = d;  // sub-centers are [C][d]
    const double* norm = norms_.data() + hr * C;
    const double* cross = cross_.data() + hr * C * C;

    // The exact cost e of the code with the least float cost is at least the
    // minimum; a code whose float cost exceeds e + bound costs more than e
    // exactly, so it can be neither the minimum nor tied with it. The window
    // above the float minimum shrinks from two bounds to one bound plus that
    // code's actual float error, usually far below a bound.
    uint32_t A0 = 0, B0 = 0;
    while (A0 + 1 < C && !(w.row_min[A0] == best_f)) ++A0;
    {
        const float* g = gamma_f + size_t(A0) * C;
        float v0 = INFINITY;
        for (uint32_t B = 0; B < C; ++B) {
            const float v = alpha_f[A0] + (beta_f[B] + g[B]);
            if (v < v0) {
                v0 = v;
                B0 = B;
            }
        }
    }
    exact_alpha_beta(false, P, t, centers, stride, norm, &A0, 1, w.alpha.data());
    exact_alpha_beta(true, P, t, centers, stride, norm, &B0, 1, w.beta.data());
    const double e0 = w.alpha[A0] + w.beta[B0] + 2 * cross[size_t(A0) * C + B0];
    if (e0 + bound < limit) limit = e0 + bound;  // false for a NaN e0: keeps the wider window

    // The candidates, then float64 alpha_A and beta_B for those that occur,
    // then the exact costs alpha_A + beta_B + gamma_{A,B}, each term from its
    // definition (gamma_{A,B} = 2 <z_A, i z_B>, precomputed).
    uint32_t n_candidates = 0;
    std::fill(w.need_a.begin(), w.need_a.end(), 0);
    std::fill(w.need_b.begin(), w.need_b.end(), 0);
    for (uint32_t A = 0; A < C; ++A) {
        if (!(double(w.row_min[A]) <= limit)) continue;
        const float* g = gamma_f + size_t(A) * C;
        for (uint32_t B = 0; B < C; ++B) {
            const float v = alpha_f[A] + (beta_f[B] + g[B]);
            if (!(double(v) <= limit)) continue;
            w.candidates[n_candidates++] = A * C + B;
            w.need_a[A] = w.need_b[B] = 1;
        }
    }
    uint32_t n_a = 0, n_b = 0;
    for (uint32_t a = 0; a < C; ++a) {
        if (w.need_a[a]) w.list_a[n_a++] = a;
        if (w.need_b[a]) w.list_b[n_b++] = a;
    }
    exact_alpha_beta(false, P, t, centers, stride, norm, w.list_a.data(), n_a, w.alpha.data());
    exact_alpha_beta(true, P, t, centers, stride, norm, w.list_b.data(), n_b, w.beta.data());
    double best = INFINITY;
    uint32_t best_code = 0;
    for (uint32_t c = 0; c < n_candidates; ++c) {
        const uint32_t code = w.candidates[c];
        const double cost = w.alpha[code / C] + w.beta[code % C] + 2 * cross[code];
        if (cost < best) {  // codes in increasing order: ties keep the lower code
            best = cost;
            best_code = code;
        }
    }
    return best_code;
}

void KeyEncoder::encode(const float* k, uint16_t* codes, float* scales) const {
    Scratch scratch(cb_);
    encode_tile(1, k, 0, codes, 0, scales, 0, scratch);
}

double key_head_norm2(const float* x, uint32_t d) { return key_scale::head_norm2(x, d); }

// A zero key (scale 0) is encoded as t = 0: its codes name the centers
// nearest the origin, its scale is 0, and it decodes to exactly zero.
// Non-finite input gives a non-finite scale (codes stay in range).
void KeyEncoder::encode_tile(uint32_t n, const float* k, size_t k_stride, uint16_t* codes, size_t codes_stride,
                             float* scales, size_t scales_stride, Scratch& w, const double* token_norms2) const {
    const uint32_t H = cb_.n_kv_heads, d = cb_.head_dim, R = cb_.key_stages, C = cb_.sub_centers;
    for (uint32_t t0 = 0; t0 < n; t0 += kTile) {
        const uint32_t m = std::min(kTile, n - t0);
        for (uint32_t i = 0; i < m; ++i) {
            const float* ki = k + (t0 + i) * k_stride;
            float* si = scales + (t0 + i) * scales_stride;
            if (cb_.scale_mode == COMMVQ_SCALE_TOKEN) {
                double norm2;
                if (token_norms2) {
                    norm2 = token_norms2[t0 + i];
                } else {
                    double* heads = w.scale.data() + size_t(i) * H;  // the heads' norms, then their scale
                    for (uint32_t h = 0; h < H; ++h) heads[h] = key_head_norm2(ki + size_t(h) * d, d);
                    norm2 = key_scale::token_norm2(heads, H, 1);
                }
                const double s = std::sqrt(norm2);
                si[0] = float(s);
                for (uint32_t h = 0; h < H; ++h) w.scale[size_t(i) * H + h] = s;
            } else {
                for (uint32_t h = 0; h < H; ++h) {
                    const double s = std::sqrt(key_head_norm2(ki + size_t(h) * d, d));
                    si[h] = float(s);
                    w.scale[size_t(i) * H + h] = s;
                }
            }
        }
        for (uint32_t h = 0; h < H; ++h) {
            for (uint32_t i = 0; i < m; ++i) {
                const float* kh = k + (t0 + i) * k_stride + size_t(h) * d;
                const double scale = w.scale[size_t(i) * H + h];
                double* t = w.residual.data() + size_t(i) * d;
                for (uint32_t x = 0; x < d; ++x) t[x] = scale > 0 ? kh[x] / scale : 0.0;
            }
            for (uint32_t r = 0; r < R; ++r) {
                search_stage(h, r, m, w);
                for (uint32_t i = 0; i < m; ++i) {
                    const uint32_t code = w.code[i];
                    codes[(t0 + i) * codes_stride + size_t(h) * R + r] = uint16_t(code);
                    const float* za = cb_.sub_center(layer_, h, r, code / C);
                    const float* zb = cb_.sub_center(layer_, h, r, code % C);
                    double* t = w.residual.data() + size_t(i) * d;
                    for (uint32_t j = 0; j < d / 2; ++j) {  // t -= z_A + i z_B
                        t[2 * j] -= double(za[2 * j]) - double(zb[2 * j + 1]);
                        t[2 * j + 1] -= double(za[2 * j + 1]) + double(zb[2 * j]);
                    }
                }
            }
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
