#include "key_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>

#include "dense.h"
#include "error.h"
#include "key_em_cuda.h"
#include "m_step.h"
#include "parallel.h"

namespace commvq {
namespace train {

namespace {

// Samples whose distances are formed together (one matrix product).
constexpr size_t kChunk = 64;
// The samples are cut into slabs of at least kSlabSamples (at most
// kMaxSlabs slabs), each with its own partial sums, reduced in slab order:
// the result does not depend on the thread count, only on the sample count.
constexpr size_t kMaxSlabs = 16;
constexpr size_t kSlabSamples = 2048;
// Soft weights below exp(-kSoftCut) times the largest weight of the sample
// are dropped (4e-18: far below float32 resolution of the sums they join).
constexpr double kSoftCut = 40.0;
// A sample's soft weights are exp(-(e - emin) / T) with e a float32 square
// root and emin the float64 one of the nearest code's squared distance: the
// nearest code's own weight is exp(+-(half a float32 ulp of e) / T), up to
// exp(+-150) at T = 1e-10 (2-bit stages 17-20), past float32's range. Within
// exp(+-kMaxShift) it cancels in the normalization; beyond, the nearest
// code's float32 e is the reference instead (its weight exactly 1).
constexpr double kMaxShift = 80.0;
// A sub-center whose soft weight (summed over the 2C centers it is part of)
// is below this receives no weight in practice: it is re-seeded.
constexpr double kDeadWeight = 1e-3;
// Ridge on the M-step normal matrix, relative to its mean diagonal.
constexpr double kRelativeRidge = 1e-6;
// docs/TRAINING.md "Keep and stop": stop once the MSE increases by less than this.
constexpr double kStopIncrease = 1e-5;

uint64_t mix_seed(uint64_t x) {
    // splitmix64 finalizer: decorrelates seeds that differ in a few bits.
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// i * z pair by pair, canonical layout: (x, y) -> (-y, x).
void times_i(const float* z, uint32_t head_dim, float* out) {
    for (uint32_t j = 0; j < head_dim; j += 2) {
        out[j] = -z[j + 1];
        out[j + 1] = z[j];
    }
}

// out[b] = alpha + beta[b] + gamma[b]: squared distances of one run of C
// codes (A fixed); returns their minimum.
COMMVQ_VECTOR_CLONES
float distance_block(float alpha, const float* beta, const float* gamma, uint32_t C, float* out) {
    for (uint32_t b = 0; b < C; ++b) out[b] = alpha + beta[b] + gamma[b];
    return min_of(out, C);
}

// A soft weight that survived the cut: sample (within its chunk), code, weight.
struct Survivor {
    uint32_t sample;
    uint32_t code;
    float weight;
};

// One stage's EM state over a fixed set of samples.
class StageEm {
public:
    StageEm(const float* samples, const float* scales, size_t n, uint32_t head_dim,
            uint32_t sub_centers, uint32_t n_threads, int32_t device)
        : t_(samples), scales_(scales), n_(n), d_(head_dim), C_(sub_centers),
          CC_(size_t(sub_centers) * sub_centers), n_threads_(n_threads),
          n_slabs_(std::clamp<size_t>(n / kSlabSamples, 1, kMaxSlabs)),
          hard_code_(n), hard_err_(n), slabs_(n_slabs_) {
        if (device < 0) return;
#ifdef COMMVQ_WITH_CUDA
        cuda_ = std::make_unique<KeyEStepCuda>(device, samples, scales, n, head_dim, sub_centers);
#else
        throw Error(COMMVQ_ERR_NOT_SUPPORTED, "key training on CUDA device " + std::to_string(device) +
                                                  ": this library was built without CUDA");
#endif
    }

    // E-step against arbitrary centers [C*C][d] (the random start).
    void e_step_explicit(const float* centers, double temperature) {
#ifdef COMMVQ_WITH_CUDA
        if (cuda_) return cuda_->explicit_step(centers, temperature, result());
#endif
        std::vector<float> ct(size_t(d_) * CC_);
        transpose(centers, ct.data(), CC_, d_);
        std::vector<float> cc(CC_);
        for (size_t c = 0; c < CC_; ++c) cc[c] = squared_norm(centers + c * d_);
        auto distances = [&](const float* t, size_t m, const float* tt, float* e2, float* block_min) {
            matmul_nn(t, ct.data(), e2, m, CC_, d_, false);
            for (size_t i = 0; i < m; ++i) {
                for (size_t c = 0; c < CC_; ++c) e2[i * CC_ + c] = tt[i] + cc[c] - 2.0f * e2[i * CC_ + c];
                for (uint32_t a = 0; a < C_; ++a) block_min[i * C_ + a] = min_of(e2 + i * CC_ + size_t(a) * C_, C_);
            }
        };
        auto center = [&](size_t c, float* out) { std::memcpy(out, centers + c * d_, d_ * sizeof(float)); };
        run(distances, center, temperature, true);
    }

    // E-step against commutative sub-centers z [C][d]; soft = false only
    // finds the hard assignments (for the residuals).
    void e_step(const float* z, double temperature, bool soft) {
        // g: [2C][d], rows z_a then i z_b.
        std::vector<float> iz(size_t(C_) * d_), g(size_t(2) * C_ * d_);
        for (uint32_t a = 0; a < C_; ++a) times_i(z + size_t(a) * d_, d_, iz.data() + size_t(a) * d_);
        std::memcpy(g.data(), z, size_t(C_) * d_ * sizeof(float));
        std::memcpy(g.data() + size_t(C_) * d_, iz.data(), size_t(C_) * d_ * sizeof(float));
        // gamma_{A,B} = 2 <z_A, i z_B>, norms ||z_a||^2 (= ||i z_a||^2).
        std::vector<float> gamma(CC_), zz(C_);
        for (uint32_t a = 0; a < C_; ++a) {
            zz[a] = squared_norm(z + size_t(a) * d_);
            for (uint32_t b = 0; b < C_; ++b) {
                double s = 0;
                for (uint32_t k = 0; k < d_; ++k) s += double(z[size_t(a) * d_ + k]) * iz[size_t(b) * d_ + k];
                gamma[size_t(a) * C_ + b] = float(2.0 * s);
            }
        }
#ifdef COMMVQ_WITH_CUDA
        if (cuda_) return cuda_->commutative_step(g.data(), zz.data(), gamma.data(), temperature, soft, result());
#endif
        std::vector<float> gt(g.size());  // [d][2C] for the row-major products
        transpose(g.data(), gt.data(), 2 * C_, d_);
        auto distances = [&](const float* t, size_t m, const float* tt, float* e2, float* block_min) {
            std::vector<float> dots(m * 2 * C_);
            matmul_nn(t, gt.data(), dots.data(), m, 2 * C_, d_, false);
            std::vector<float> alpha(C_), beta(C_);
            for (size_t i = 0; i < m; ++i) {
                const float* p = dots.data() + i * 2 * C_;
                for (uint32_t a = 0; a < C_; ++a) {
                    alpha[a] = tt[i] + zz[a] - 2.0f * p[a];
                    beta[a] = zz[a] - 2.0f * p[C_ + a];
                }
                for (uint32_t a = 0; a < C_; ++a)
                    block_min[i * C_ + a] = distance_block(alpha[a], beta.data(), gamma.data() + size_t(a) * C_, C_,
                                                           e2 + i * CC_ + size_t(a) * C_);
            }
        };
        auto center = [&](size_t c, float* out) {
            const float* za = z + (c / C_) * d_;
            const float* izb = iz.data() + (c % C_) * d_;
            for (uint32_t k = 0; k < d_; ++k) out[k] = za[k] + izb[k];
        };
        run(distances, center, temperature, soft);
    }

    // Hard-assignment MSE of the last E-step, in the keys' own units.
    double mse() const { return squared_error_ / (double(n_) * d_); }
    uint32_t hard_code(size_t i) const { return hard_code_[i]; }
    // The last E-step's soft weights summed over samples and codes: n when
    // every sample's weights are finite (they sum to 1).
    double total_weight() const { return std::accumulate(weight_.begin(), weight_.end(), 0.0); }

    // The M-step on the last E-step's statistics. Writes z [C][d]; returns
    // the number of dead sub-centers re-seeded.
    uint32_t m_step(float* z) const {
        double total = total_weight();
        double ridge = kRelativeRidge * 2.0 * total / C_ + std::numeric_limits<double>::min();
        solve_commutative_centers(weight_.data(), weighted_sum_.data(), C_, d_, ridge, z);
        return reseed_dead(z);
    }

private:
    struct Slab {
        std::vector<float> scratch;       // [kChunk][C*C]: squared distances, then dense weights
        std::vector<float> block_min;     // [kChunk][C]: minimum of each run of C codes
        std::vector<Survivor> survivors;  // soft weights kept, for the chunk
        std::vector<float> weighted_sum;  // [C*C][d]
        std::vector<double> weight;       // [C*C]
        double squared_error = 0;
    };

    // Where a device E-step leaves its results: the same arrays as the CPU's.
    EStepResult result() { return {&hard_code_, &hard_err_, &squared_error_, &weight_, &weighted_sum_}; }

    float squared_norm(const float* x) const {
        double s = 0;
        for (uint32_t k = 0; k < d_; ++k) s += double(x[k]) * x[k];
        return float(s);
    }

    template <typename Distances, typename Center>
    void run(const Distances& distances, const Center& center, double temperature, bool soft) {
        parallel_for(n_slabs_, n_threads_, [&](size_t s) {
            Slab& slab = slabs_[s];
            size_t begin = n_ * s / n_slabs_, end = n_ * (s + 1) / n_slabs_;
            if (soft) {
                slab.weighted_sum.assign(CC_ * d_, 0.0f);
                slab.weight.assign(CC_, 0.0);
            }
            slab.squared_error = 0;
            slab.scratch.resize(kChunk * CC_);
            slab.block_min.resize(kChunk * C_);
            std::vector<float> tt(kChunk), best(d_);
            for (size_t c0 = begin; c0 < end; c0 += kChunk) {
                size_t m = std::min(kChunk, end - c0);
                const float* t = t_ + c0 * d_;
                for (size_t i = 0; i < m; ++i) tt[i] = squared_norm(t + i * d_);
                float* e2 = slab.scratch.data();
                distances(t, m, tt.data(), e2, slab.block_min.data());
                slab.survivors.clear();
                for (size_t i = 0; i < m; ++i) {
                    const float* row = e2 + i * CC_;
                    const float* bmin = slab.block_min.data() + i * C_;
                    // Hard assignment: the first (lowest) code at the minimum.
                    float e2min = min_of(bmin, C_);
                    size_t a = 0;
                    while (bmin[a] != e2min) ++a;
                    size_t arg = a * C_;
                    while (row[arg] != e2min) ++arg;
                    center(arg, best.data());
                    double err = 0;
                    for (uint32_t k = 0; k < d_; ++k) {
                        double diff = double(t[i * d_ + k]) - best[k];
                        err += diff * diff;
                    }
                    hard_code_[c0 + i] = uint32_t(arg);
                    hard_err_[c0 + i] = float(err);
                    double scale = scales_[c0 + i];
                    slab.squared_error += err * scale * scale;
                    if (soft) soft_weights(row, bmin, e2min, temperature, uint32_t(i), slab.survivors);
                }
                if (soft) accumulate(slab, t, m);
            }
        });
        squared_error_ = 0;
        for (const Slab& slab : slabs_) squared_error_ += slab.squared_error;
        if (!soft) return;
        weight_.assign(CC_, 0.0);
        weighted_sum_.assign(CC_ * d_, 0.0);
        for (const Slab& slab : slabs_) {
            for (size_t c = 0; c < CC_; ++c) weight_[c] += slab.weight[c];
            for (size_t k = 0; k < CC_ * d_; ++k) weighted_sum_[k] += slab.weighted_sum[k];
        }
    }

    // The soft weights softmax(-e / T) of one sample (e the unsquared
    // distance), those above exp(-kSoftCut) of the largest, to survivors.
    void soft_weights(const float* row, const float* block_min, float e2min, double temperature,
                      uint32_t sample, std::vector<Survivor>& survivors) const {
        double emin = std::sqrt(std::max(0.0, double(e2min)));
        double reach = emin + kSoftCut * temperature;
        float cut = float(reach * reach);
        double nearest = std::sqrt(std::max(0.0f, e2min));  // e of the nearest code, as below
        double ref = std::abs(nearest - emin) <= kMaxShift * temperature ? emin : nearest;
        size_t first = survivors.size();
        double sum = 0;
        for (uint32_t a = 0; a < C_; ++a) {
            if (block_min[a] > cut) continue;
            const float* r = row + size_t(a) * C_;
            for (uint32_t b = 0; b < C_; ++b) {
                if (r[b] > cut) continue;
                double e = std::sqrt(std::max(0.0f, r[b]));
                double w = std::exp(-(e - ref) / temperature);
                survivors.push_back({sample, uint32_t(size_t(a) * C_ + b), float(w)});
                sum += w;
            }
        }
        for (size_t k = first; k < survivors.size(); ++k) survivors[k].weight = float(survivors[k].weight / sum);
    }

    // Adds a chunk's weights to the slab: n_c += w, S_c += w t. Few weights
    // per sample (low temperature) go one by one; many (the start at T = 1)
    // through a dense matrix product.
    void accumulate(Slab& slab, const float* t, size_t m) const {
        for (const Survivor& s : slab.survivors) slab.weight[s.code] += s.weight;
        if (slab.survivors.size() * 8 < m * CC_) {
            for (const Survivor& s : slab.survivors)
                axpy(d_, s.weight, t + size_t(s.sample) * d_, slab.weighted_sum.data() + size_t(s.code) * d_);
            return;
        }
        float* wt = slab.scratch.data();  // [C*C][m]: the weights, transposed
        std::fill(wt, wt + m * CC_, 0.0f);
        for (const Survivor& s : slab.survivors) wt[size_t(s.code) * m + s.sample] = s.weight;
        matmul_nn(wt, t, slab.weighted_sum.data(), CC_, d_, m, true);
    }

    // Sub-centers without weight are moved onto the samples the current
    // centers fit worst: z_k = t / (1 + i) makes the center (k, k) equal t.
    uint32_t reseed_dead(float* z) const {
        std::vector<double> usage(C_, 0.0);
        for (uint32_t a = 0; a < C_; ++a)
            for (uint32_t b = 0; b < C_; ++b) {
                double w = weight_[size_t(a) * C_ + b];
                usage[a] += w;
                usage[b] += w;
            }
        std::vector<uint32_t> dead;
        for (uint32_t a = 0; a < C_; ++a)
            if (usage[a] < kDeadWeight) dead.push_back(a);
        if (dead.empty()) return 0;
        size_t k = std::min(dead.size(), n_);
        std::vector<size_t> order(n_);
        std::iota(order.begin(), order.end(), size_t(0));
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](size_t x, size_t y) {
            return hard_err_[x] > hard_err_[y] || (hard_err_[x] == hard_err_[y] && x < y);
        });
        for (size_t i = 0; i < k; ++i) {
            const float* t = t_ + order[i] * d_;
            float* za = z + size_t(dead[i]) * d_;
            for (uint32_t j = 0; j < d_; j += 2) {
                za[j] = 0.5f * (t[j] + t[j + 1]);
                za[j + 1] = 0.5f * (t[j + 1] - t[j]);
            }
        }
        return uint32_t(k);
    }

    const float* t_;
    const float* scales_;
    size_t n_;
    uint32_t d_, C_;
    size_t CC_;
    uint32_t n_threads_;
    size_t n_slabs_;
    std::vector<uint32_t> hard_code_;
    std::vector<float> hard_err_;
    mutable std::vector<Slab> slabs_;
    std::vector<double> weight_, weighted_sum_;
    double squared_error_ = 0;
#ifdef COMMVQ_WITH_CUDA
    std::unique_ptr<KeyEStepCuda> cuda_;
#endif
};

KeyStageReport train_stage(float* residuals, const float* scales, size_t n, uint32_t head_dim,
                           uint32_t stage, const KeyTrainConfig& config, uint64_t seed,
                           const KeyStepHook& hook, float* sub_centers) {
    const uint32_t C = config.sub_centers, d = head_dim;
    const size_t CC = size_t(C) * C;
    StageEm em(residuals, scales, n, d, C, config.n_threads, config.device);
    KeyStageReport report;

    // Start: C*C random samples as centers, one E-step at T = 1 and one
    // M-step, which projects them onto the commutative form.
    std::mt19937_64 rng(mix_seed(seed));
    std::vector<size_t> pick(n);
    std::iota(pick.begin(), pick.end(), size_t(0));
    std::vector<float> start(CC * d);
    for (size_t c = 0; c < CC; ++c) {
        size_t i;
        if (n >= CC) {  // distinct samples: a partial Fisher-Yates shuffle
            std::swap(pick[c], pick[c + rng() % (n - c)]);
            i = pick[c];
        } else {
            i = rng() % n;
        }
        std::memcpy(start.data() + c * d, residuals + i * d, d * sizeof(float));
    }
    em.e_step_explicit(start.data(), 1.0);
    std::vector<float> z(size_t(C) * d);
    // The M-step; a failure names the head, the stage and the step
    // (config.max_steps for the start) and the weights that fed it.
    auto m_step = [&](uint32_t step) {
        try {
            return em.m_step(z.data());
        } catch (const Error& e) {
            char total[32];
            std::snprintf(total, sizeof total, "%g", em.total_weight());
            throw Error(e.status(), (config.name.empty() ? std::string() : config.name + " ") + "stage " +
                                        std::to_string(stage) +
                                        (step == config.max_steps ? " start" : " step " + std::to_string(step)) +
                                        ": " + e.what() + " (E-step soft weights summing to " + total + ")");
        }
    };
    report.reseeded += m_step(config.max_steps);

    std::vector<float> best_z = z;
    double best = std::numeric_limits<double>::infinity();
    for (uint32_t step = 0; step < config.max_steps; ++step) {
        em.e_step(z.data(), em_temperature(stage, step, config.max_steps), true);
        double mse = em.mse();
        report.steps = step + 1;
        if (hook) hook(stage, step, mse);
        if (mse < best) {
            best = mse;
            best_z = z;
        } else if (mse - best < kStopIncrease) {
            break;
        }
        report.reseeded += m_step(step);
    }
    report.mse = best;
    std::memcpy(sub_centers, best_z.data(), best_z.size() * sizeof(float));

    // Next stage's samples: t - nearest center.
    em.e_step(best_z.data(), 1.0, false);
    std::vector<float> iz(d);
    for (size_t i = 0; i < n; ++i) {
        uint32_t code = em.hard_code(i);
        const float* za = best_z.data() + size_t(code / C) * d;
        times_i(best_z.data() + size_t(code % C) * d, d, iz.data());
        float* t = residuals + i * d;
        for (uint32_t k = 0; k < d; ++k) t[k] -= za[k] + iz[k];
    }
    return report;
}

}  // namespace

double em_temperature(uint32_t stage, uint32_t step, uint32_t max_steps) {
    double f = std::pow(10.0, -double((stage + 3) / 4));
    double progress = max_steps > 1 ? double(step) / (max_steps - 1) : 0.0;
    return 1e-3 * f * std::pow(1e-5 / 1e-3, progress);
}

std::vector<float> train_key_head(float* residuals, const float* scales, size_t n,
                                  uint32_t head_dim, uint32_t stages, const KeyTrainConfig& config,
                                  uint64_t seed, const KeyStepHook& hook,
                                  std::vector<KeyStageReport>* reports) {
    require(n > 0, COMMVQ_ERR_INVALID_ARGUMENT, "key training needs at least one sample");
    require(config.sub_centers >= 2, COMMVQ_ERR_INVALID_ARGUMENT, "key training needs at least 2 sub-centers");
    require(head_dim > 0 && head_dim % 2 == 0, COMMVQ_ERR_INVALID_ARGUMENT, "head_dim must be even");
    const size_t stage_floats = size_t(config.sub_centers) * head_dim;
    std::vector<float> sub_centers(stages * stage_floats);
    for (uint32_t r = 0; r < stages; ++r) {
        KeyStageReport report = train_stage(residuals, scales, n, head_dim, r, config,
                                            mix_seed(seed + r), hook, sub_centers.data() + r * stage_floats);
        if (reports) reports->push_back(report);
    }
    return sub_centers;
}

}  // namespace train
}  // namespace commvq
