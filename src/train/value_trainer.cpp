#include "value_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "dense.h"
#include "error.h"
#include "parallel.h"
#include "value_encoder.h"
#include "value_formulas.h"

namespace commvq {
namespace train {

namespace {

constexpr double kLayerNormEps = 1e-5;  // as torch.nn.LayerNorm and value_encoder.cpp
constexpr double kAdamEps = 1e-8;
// Rows of a matrix product handed to one thread at a time.
constexpr size_t kRowBlock = 16;

// The two bits of option o: 0 -> (1,0), 1 -> (0,1), 2 -> (1,1), 3 -> (0,0).
constexpr float kOptionBit[4][2] = {{1, 0}, {0, 1}, {1, 1}, {0, 0}};

// C[M][N] = A[M][K] @ B[K][N] with rows spread over threads. Every element
// is summed in the same order whatever the split, so results do not depend
// on the thread count.
void matmul(const float* A, const float* B, float* C, size_t M, size_t N, size_t K, uint32_t n_threads) {
    size_t blocks = (M + kRowBlock - 1) / kRowBlock;
    parallel_for(blocks, n_threads, [&](size_t b) {
        size_t r0 = b * kRowBlock, rows = std::min(kRowBlock, M - r0);
        matmul_nn(A + r0 * K, B, C + r0 * N, rows, N, K, false);
    });
}

// Weight gradient dW[M][N] = dOut[B][M]^T @ in[B][N].
void weight_gradient(const float* d_out, const float* in, float* dw, size_t B, size_t M, size_t N,
                     std::vector<float>& scratch, uint32_t n_threads) {
    scratch.resize(M * B);
    transpose(d_out, scratch.data(), B, M);
    matmul(scratch.data(), in, dw, M, N, B, n_threads);
}

void column_sum(const float* x, size_t rows, size_t cols, float* out) {
    std::vector<double> acc(cols, 0.0);
    for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < cols; ++c) acc[c] += x[r * cols + c];
    for (size_t c = 0; c < cols; ++c) out[c] = float(acc[c]);
}

uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Gumbel(0, 1) noise from a counter, so it does not depend on threads.
float gumbel(uint64_t seed, uint64_t counter) {
    double u = (double(mix(seed ^ mix(counter)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    return float(-std::log(-std::log(u)));
}

void resize_like(ValueCodebook& g, const ValueCodebook& p) {
    g.lambda.assign(p.lambda.size(), 0.0f);
    g.norm_weight.assign(p.norm_weight.size(), 0.0f);
    g.norm_bias.assign(p.norm_bias.size(), 0.0f);
    g.enc1_weight.assign(p.enc1_weight.size(), 0.0f);
    g.enc1_bias.assign(p.enc1_bias.size(), 0.0f);
    g.enc2_weight.assign(p.enc2_weight.size(), 0.0f);
    g.enc2_bias.assign(p.enc2_bias.size(), 0.0f);
    g.codebook.assign(p.codebook.size(), 0.0f);
}

}  // namespace

std::vector<std::vector<float>*> value_parameters(ValueCodebook& vc) {
    return {&vc.norm_weight, &vc.norm_bias, &vc.enc1_weight, &vc.enc1_bias,
            &vc.enc2_weight, &vc.enc2_bias, &vc.codebook};
}

ValueObjective::ValueObjective(uint32_t value_dim, uint32_t value_bits, uint32_t hidden, uint32_t n_threads)
    : D_(value_dim), bits_(value_bits), I_(hidden), n_(value_dim * value_bits / 2),
      n_threads_(std::max<uint32_t>(n_threads, 1)) {}

double ValueObjective::evaluate(const ValueCodebook& vc, const float* v, uint32_t batch,
                                const float* noise, OptionChoice choice, ValueCodebook* grads,
                                const float* row_weight) {
    const size_t B = batch, D = D_, I = I_, O = 4 * size_t(n_), K = 2 * size_t(n_);
    u_.resize(B * D); xhat_.resize(B * D); h0_.resize(B * D); rstd_.resize(B);
    a1_.resize(B * I); h1_.resize(B * I);
    logits_.resize(B * O); prob_.resize(B * O); option_.resize(B * O);
    code_.resize(B * K); y_.resize(B * D); vhat_.resize(B * D);
    sigma_.resize(B); ynorm_.resize(B);

    // u = v / (lambda + eps), normalized by sigma = ||u||; LayerNorm.
    for (size_t b = 0; b < B; ++b) {
        const float* vb = v + b * D;
        float* ub = u_.data() + b * D;
        double s2 = 0;
        for (size_t c = 0; c < D; ++c) {
            ub[c] = vb[c] / (vc.lambda[c] + kValueEps);
            s2 += double(ub[c]) * ub[c];
        }
        double sigma = std::sqrt(s2), mean = 0;
        sigma_[b] = float(sigma);
        for (size_t c = 0; c < D; ++c) {
            ub[c] = float(ub[c] / (sigma + kValueEps));
            mean += ub[c];
        }
        mean /= D;
        double var = 0;
        for (size_t c = 0; c < D; ++c) var += (ub[c] - mean) * (ub[c] - mean);
        double rstd = 1.0 / std::sqrt(var / D + kLayerNormEps);
        rstd_[b] = float(rstd);
        for (size_t c = 0; c < D; ++c) {
            float xh = float((ub[c] - mean) * rstd);
            xhat_[b * D + c] = xh;
            h0_[b * D + c] = xh * vc.norm_weight[c] + vc.norm_bias[c];
        }
    }

    // Encoder: a1 = h0 W1^T + b1, h1 = GELU(a1), logits = h1 W2^T + b2.
    std::vector<float> wt(std::max(D * I, I * O));
    transpose(vc.enc1_weight.data(), wt.data(), I, D);
    matmul(h0_.data(), wt.data(), a1_.data(), B, I, D, n_threads_);
    for (size_t b = 0; b < B; ++b)
        for (size_t i = 0; i < I; ++i) {
            a1_[b * I + i] += vc.enc1_bias[i];
            h1_[b * I + i] = value_formulas::gelu(a1_[b * I + i]);
        }
    transpose(vc.enc2_weight.data(), wt.data(), O, I);
    matmul(h1_.data(), wt.data(), logits_.data(), B, O, I, n_threads_);

    // Options: softmax of each group (tau = 1), hard or relaxed choice, bits.
    for (size_t b = 0; b < B; ++b) {
        for (size_t g = 0; g < n_; ++g) {
            float* l = logits_.data() + b * O + 4 * g;
            float* p = prob_.data() + b * O + 4 * g;
            float* o = option_.data() + b * O + 4 * g;
            double z[4], zmax = -INFINITY;
            for (int k = 0; k < 4; ++k) {
                l[k] += vc.enc2_bias[4 * g + k];
                z[k] = l[k] + (noise ? noise[b * O + 4 * g + k] : 0.0f);
                zmax = std::max(zmax, z[k]);
            }
            double sum = 0;
            for (int k = 0; k < 4; ++k) sum += std::exp(z[k] - zmax);
            int best = 0;
            for (int k = 0; k < 4; ++k) {
                p[k] = float(std::exp(z[k] - zmax) / sum);
                if (z[k] > z[best]) best = k;
            }
            for (int k = 0; k < 4; ++k)
                o[k] = choice == OptionChoice::kHard ? (k == best ? 1.0f : 0.0f) : p[k];
            float* bits = code_.data() + b * K + 2 * g;
            bits[0] = o[0] * kOptionBit[0][0] + o[1] * kOptionBit[1][0] + o[2] * kOptionBit[2][0];
            bits[1] = o[0] * kOptionBit[0][1] + o[1] * kOptionBit[1][1] + o[2] * kOptionBit[2][1];
        }
    }

    // y = bits @ E; v_hat = y / (||y|| + eps) * (sigma + eps) * (lambda + eps).
    matmul(code_.data(), vc.codebook.data(), y_.data(), B, D, K, n_threads_);
    double loss = 0;
    for (size_t b = 0; b < B; ++b) {
        double y2 = 0;
        for (size_t c = 0; c < D; ++c) y2 += double(y_[b * D + c]) * y_[b * D + c];
        ynorm_[b] = float(std::sqrt(y2));
        double scale = (sigma_[b] + kValueEps) / (ynorm_[b] + kValueEps);
        double row = 0;
        for (size_t c = 0; c < D; ++c) {
            vhat_[b * D + c] = float(y_[b * D + c] * scale * (vc.lambda[c] + kValueEps));
            double diff = double(vhat_[b * D + c]) - v[b * D + c];
            row += diff * diff;
        }
        loss += (row_weight ? row_weight[b] : 1.0) * row;
    }
    loss /= 2.0 * double(B) * D;
    if (!grads) return loss;

    // ---- backward ----
    resize_like(*grads, vc);
    dy_.resize(B * D); dcode_.resize(B * K); dlogits_.resize(B * O);
    dh1_.resize(B * I); da1_.resize(B * I); dh0_.resize(B * D);
    const double inv_count = 1.0 / (double(B) * D);
    for (size_t b = 0; b < B; ++b) {
        // q = dL/dv_hat * (lambda + eps); v_hat = (sigma+eps) * y / (|y|+eps) * (lambda+eps).
        double ny = ynorm_[b], den = ny + kValueEps, qy = 0;
        const double w = (row_weight ? row_weight[b] : 1.0) * inv_count;
        std::vector<double> q(D);
        for (size_t c = 0; c < D; ++c) {
            q[c] = (double(vhat_[b * D + c]) - v[b * D + c]) * w * (vc.lambda[c] + kValueEps);
            qy += q[c] * y_[b * D + c];
        }
        double s = sigma_[b] + kValueEps;
        double radial = ny > 0 ? qy / (den * den * ny) : 0.0;
        for (size_t c = 0; c < D; ++c) dy_[b * D + c] = float(s * (q[c] / den - radial * y_[b * D + c]));
    }
    // dE = bits^T dy; dbits = dy E^T.
    weight_gradient(code_.data(), dy_.data(), grads->codebook.data(), B, K, D, scratch_, n_threads_);
    std::vector<float> et(D * K);
    transpose(vc.codebook.data(), et.data(), K, D);
    matmul(dy_.data(), et.data(), dcode_.data(), B, K, D, n_threads_);
    // Through the option table, then the softmax (straight-through for kHard).
    for (size_t b = 0; b < B; ++b) {
        for (size_t g = 0; g < n_; ++g) {
            const float* db = dcode_.data() + b * K + 2 * g;
            const float* p = prob_.data() + b * O + 4 * g;
            double dopt[4], dot = 0;
            for (int k = 0; k < 4; ++k) {
                dopt[k] = db[0] * kOptionBit[k][0] + db[1] * kOptionBit[k][1];
                dot += dopt[k] * p[k];
            }
            for (int k = 0; k < 4; ++k) dlogits_[b * O + 4 * g + k] = float(p[k] * (dopt[k] - dot));
        }
    }
    // logits = h1 W2^T + b2.
    weight_gradient(dlogits_.data(), h1_.data(), grads->enc2_weight.data(), B, O, I, scratch_, n_threads_);
    column_sum(dlogits_.data(), B, O, grads->enc2_bias.data());
    matmul(dlogits_.data(), vc.enc2_weight.data(), dh1_.data(), B, I, O, n_threads_);
    // GELU'(x) = Phi(x) + x phi(x).
    for (size_t k = 0; k < B * I; ++k) {
        double x = a1_[k];
        double d = 0.5 * (1.0 + std::erf(x * M_SQRT1_2)) + x * std::exp(-0.5 * x * x) * 0.3989422804014327;
        da1_[k] = float(dh1_[k] * d);
    }
    // a1 = h0 W1^T + b1.
    weight_gradient(da1_.data(), h0_.data(), grads->enc1_weight.data(), B, I, D, scratch_, n_threads_);
    column_sum(da1_.data(), B, I, grads->enc1_bias.data());
    matmul(da1_.data(), vc.enc1_weight.data(), dh0_.data(), B, D, I, n_threads_);
    // h0 = xhat * weight + bias (the input side needs no gradient).
    std::vector<double> dw(D, 0.0), dbias(D, 0.0);
    for (size_t b = 0; b < B; ++b)
        for (size_t c = 0; c < D; ++c) {
            dw[c] += double(dh0_[b * D + c]) * xhat_[b * D + c];
            dbias[c] += dh0_[b * D + c];
        }
    for (size_t c = 0; c < D; ++c) {
        grads->norm_weight[c] = float(dw[c]);
        grads->norm_bias[c] = float(dbias[c]);
    }
    return loss;
}

ValueCodebook init_value_codebook(const float* values, size_t n_tokens, uint32_t value_dim,
                                  uint32_t value_bits, uint32_t hidden, uint64_t seed) {
    require(n_tokens > 0, COMMVQ_ERR_INVALID_ARGUMENT, "value training needs at least one token");
    const size_t D = value_dim, I = hidden, n = size_t(value_dim) * value_bits / 2;
    ValueCodebook vc;
    std::vector<double> mean_abs(D, 0.0);
    for (size_t t = 0; t < n_tokens; ++t)
        for (size_t c = 0; c < D; ++c) mean_abs[c] += std::fabs(values[t * D + c]);
    vc.lambda.resize(D);
    for (size_t c = 0; c < D; ++c) vc.lambda[c] = float(mean_abs[c] / double(n_tokens));
    vc.norm_weight.assign(D, 1.0f);
    vc.norm_bias.assign(D, 0.0f);
    std::mt19937_64 rng(mix(seed));
    auto uniform = [&](std::vector<float>& p, size_t count, size_t fan_in) {
        double bound = 1.0 / std::sqrt(double(fan_in));
        p.resize(count);
        for (float& x : p) x = float((double(rng() >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0) * bound);
    };
    uniform(vc.enc1_weight, I * D, D);
    uniform(vc.enc1_bias, I, D);
    uniform(vc.enc2_weight, 4 * n * I, I);
    uniform(vc.enc2_bias, 4 * n, I);
    uniform(vc.codebook, 2 * n * D, D);
    return vc;
}

void train_value_codebook(ValueCodebook& vc, const float* values, size_t n_tokens,
                          uint32_t value_dim, const ValueTrainConfig& config, uint64_t seed,
                          const ValueStepHook& hook, const float* token_weight) {
    require(n_tokens > 0 && config.batch > 0, COMMVQ_ERR_INVALID_ARGUMENT,
            "value training needs tokens and a batch size");
    const size_t D = value_dim, O = 2 * size_t(value_dim) * config.value_bits;
    const uint32_t batch = uint32_t(std::min<size_t>(config.batch, n_tokens));
    ValueObjective objective(value_dim, config.value_bits, config.hidden, config.n_threads);
    ValueCodebook grads;
    auto params = value_parameters(vc);
    std::vector<std::vector<float>> m1, m2;
    for (auto* p : params) {
        m1.emplace_back(p->size(), 0.0f);
        m2.emplace_back(p->size(), 0.0f);
    }
    std::mt19937_64 rng(mix(seed));
    std::vector<float> v(size_t(batch) * D), noise(size_t(batch) * O), weight(batch);
    for (uint32_t step = 0; step < config.steps; ++step) {
        for (uint32_t b = 0; b < batch; ++b) {
            size_t t = rng() % n_tokens;
            std::memcpy(v.data() + size_t(b) * D, values + t * D, D * sizeof(float));
            if (token_weight) weight[b] = token_weight[t];
        }
        if (config.gumbel)
            for (size_t k = 0; k < noise.size(); ++k) noise[k] = gumbel(seed, (uint64_t(step) << 32) + k);
        double loss = objective.evaluate(vc, v.data(), batch, config.gumbel ? noise.data() : nullptr,
                                         OptionChoice::kHard, &grads, token_weight ? weight.data() : nullptr);
        auto g = value_parameters(grads);
        double norm2 = 0;
        for (auto* p : g)
            for (float x : *p) norm2 += double(x) * x;
        double clip = std::sqrt(norm2) > config.grad_clip ? config.grad_clip / std::sqrt(norm2) : 1.0;
        // AdamW (decoupled weight decay), bias-corrected moments.
        double c1 = 1.0 - std::pow(double(config.beta1), step + 1);
        double c2 = 1.0 - std::pow(double(config.beta2), step + 1);
        for (size_t i = 0; i < params.size(); ++i) {
            std::vector<float>& p = *params[i];
            const std::vector<float>& gi = *g[i];
            for (size_t k = 0; k < p.size(); ++k) {
                double gk = gi[k] * clip;
                m1[i][k] = float(config.beta1 * m1[i][k] + (1.0 - config.beta1) * gk);
                m2[i][k] = float(config.beta2 * m2[i][k] + (1.0 - config.beta2) * gk * gk);
                p[k] *= float(1.0 - double(config.lr) * config.weight_decay);
                p[k] -= float(config.lr * (m1[i][k] / c1) / (std::sqrt(m2[i][k] / c2) + kAdamEps));
            }
        }
        if (hook) hook(step, loss);
    }
}

double value_mse(const ValueCodebook& vc, const float* values, size_t n_tokens, uint32_t value_dim,
                 uint32_t value_bits, uint32_t hidden, uint32_t n_threads) {
    constexpr uint32_t kBatch = 512;
    ValueObjective objective(value_dim, value_bits, hidden, n_threads);
    double total = 0;
    for (size_t t0 = 0; t0 < n_tokens; t0 += kBatch) {
        uint32_t m = uint32_t(std::min<size_t>(kBatch, n_tokens - t0));
        // evaluate() returns half the mean squared error of the batch.
        total += 2.0 * objective.evaluate(vc, values + t0 * value_dim, m, nullptr, OptionChoice::kHard, nullptr) *
                 double(m) * value_dim;
    }
    return total / (double(n_tokens) * value_dim);
}

}  // namespace train
}  // namespace commvq
