// The attention-weighted value loss (src/train/attention_weights.h): the
// attention mass against a float64 reference written here from the
// definition, causality, the token weights, the weighted objective's
// gradient, and training that the weights actually steer.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "error.h"
#include "random_codebook.h"
#include "train/attention_weights.h"
#include "train/value_trainer.h"

using namespace commvq;

namespace {

// Pair j of a head vector in the model's layout, as docs/METHOD.md "RoPE pairs"
// defines it: rotate-half (x[j], x[j+P]), interleaved (x[2j], x[2j+1]).
void pair_of(const float* x, uint32_t d, int32_t layout, uint32_t j, double& re, double& im) {
    if (layout == COMMVQ_PAIRS_ROTATE_HALF) {
        re = x[j];
        im = x[j + d / 2];
    } else {
        re = x[2 * j];
        im = x[2 * j + 1];
    }
}

// The mass by the definition, everything in float64: RoPE applied to each
// key at its position (pair j times exp(i m w_j), w_j = theta^(-2j/d) / factor
// for linear scaling), score = Re sum_j conj(q_j) k_j / sqrt(d), a softmax
// over the keys each query may see (same chunk, not after the query), the
// probabilities summed over queries and query heads; query head h uses KV
// head h / (Hq / Hkv).
std::vector<double> reference_mass(uint32_t Hkv, uint32_t Hq, uint32_t d, int32_t layout, double theta,
                                   double linear_factor, const std::vector<float>& keys,
                                   const std::vector<uint64_t>& chunk_of_row, const std::vector<uint64_t>& pos_of_row,
                                   const std::vector<float>& queries, const std::vector<uint64_t>& query_rows) {
    const size_t T = chunk_of_row.size();
    const uint32_t P = d / 2;
    std::vector<double> mass(T, 0.0);
    for (size_t i = 0; i < query_rows.size(); ++i) {
        const uint64_t qr = query_rows[i];
        for (uint32_t h = 0; h < Hq; ++h) {
            const uint32_t g = h / (Hq / Hkv);
            const float* q = queries.data() + (i * Hq + h) * d;
            std::vector<double> score(T, 0.0);
            std::vector<bool> seen(T, false);
            double top = -1e300;
            for (size_t t = 0; t < T; ++t) {
                if (chunk_of_row[t] != chunk_of_row[qr] || t > qr) continue;
                seen[t] = true;
                const float* k = keys.data() + (t * Hkv + g) * d;
                double s = 0;
                for (uint32_t j = 0; j < P; ++j) {
                    double kr, ki, qre, qim;
                    pair_of(k, d, layout, j, kr, ki);
                    pair_of(q, d, layout, j, qre, qim);
                    const double w = std::pow(theta, -2.0 * j / d) / linear_factor;
                    const double angle = double(pos_of_row[t]) * w;
                    const double rr = kr * std::cos(angle) - ki * std::sin(angle);
                    const double ri = kr * std::sin(angle) + ki * std::cos(angle);
                    s += qre * rr + qim * ri;  // Re(conj(q) * rotated k)
                }
                score[t] = s / std::sqrt(double(d));
                top = std::max(top, score[t]);
            }
            double denom = 0;
            for (size_t t = 0; t < T; ++t)
                if (seen[t]) denom += std::exp(score[t] - top);
            for (size_t t = 0; t < T; ++t)
                if (seen[t]) mass[t] += std::exp(score[t] - top) / denom;
        }
    }
    return mass;
}

struct MassCase {
    uint32_t Hkv, Hq, d;
    int32_t layout;
    double theta, linear_factor;
};

}  // namespace

TEST_CASE("train: attention mass equals a float64 reference (GQA, both pair layouts)") {
    const MassCase cases[] = {
        {2, 4, 16, COMMVQ_PAIRS_ROTATE_HALF, 10000.0, 1.0},   // GQA group 2
        {2, 4, 12, COMMVQ_PAIRS_INTERLEAVED, 500.0, 2.0},     // GQA group 2, linear scaling
        {1, 3, 8, COMMVQ_PAIRS_INTERLEAVED, 10000.0, 1.0},    // group 3
        {3, 3, 10, COMMVQ_PAIRS_ROTATE_HALF, 100.0, 1.0},     // no GQA
    };
    uint64_t seed = 100;
    for (const MassCase& mc : cases) {
        // Three chunks of 23, 40 and 37 rows; queries in every chunk, the
        // first and last row of a chunk among them.
        const std::vector<uint64_t> chunk_rows = {0, 23, 63};
        const uint64_t T = 100;
        const std::vector<uint64_t> query_rows = {0, 5, 22, 23, 40, 62, 63, 70, 80, 90, 99, 98, 97, 64, 65, 66, 67, 68};
        test::Rng rng(seed++);
        std::vector<float> keys = rng.normals(T * mc.Hkv * mc.d, 1.2);
        std::vector<float> queries = rng.normals(query_rows.size() * mc.Hq * mc.d, 1.5);
        std::vector<uint64_t> chunk_of_row(T), pos_of_row(T);
        for (uint64_t t = 0; t < T; ++t) {
            chunk_of_row[t] = t < 23 ? 0 : t < 63 ? 1 : 2;
            pos_of_row[t] = t - chunk_rows[chunk_of_row[t]];
        }
        const std::vector<double> want = reference_mass(mc.Hkv, mc.Hq, mc.d, mc.layout, mc.theta, mc.linear_factor,
                                                        keys, chunk_of_row, pos_of_row, queries, query_rows);

        train::AttentionShape shape;
        shape.n_kv_heads = mc.Hkv;
        shape.n_q_heads = mc.Hq;
        shape.head_dim = mc.d;
        shape.pair_layout = mc.layout;
        shape.rope.theta = mc.theta;
        if (mc.linear_factor != 1.0) {
            shape.rope.scaling = COMMVQ_ROPE_SCALING_LINEAR;
            shape.rope.factor = mc.linear_factor;
        }
        const std::vector<uint64_t> positions = train::chunk_positions(chunk_rows, T);
        CHECK(positions == pos_of_row);
        const std::vector<train::QuerySpan> spans = train::causal_query_spans(chunk_rows, T, query_rows);
        const std::vector<double> got = train::attention_mass(shape, keys.data(), positions.data(), T, queries.data(),
                                                              spans.data(), spans.size(), 1);
        REQUIRE(got.size() == T);
        // Both sides work in float64 on the same float32 inputs; they differ
        // only in the order of operations and libm's rounding, ~1e-15
        // relative. 1e-10 leaves room for that and for nothing else.
        double max_err = 0, total = 0;
        for (uint64_t t = 0; t < T; ++t) {
            max_err = std::max(max_err, std::fabs(got[t] - want[t]) / (1.0 + want[t]));
            total += got[t];
        }
        INFO("Hkv " << mc.Hkv << " Hq " << mc.Hq << " d " << mc.d << " layout " << mc.layout << ": max rel err "
                    << max_err);
        CHECK(max_err <= 1e-10);
        // Every query head's softmax sums to 1.
        CHECK(total == doctest::Approx(double(query_rows.size()) * mc.Hq).epsilon(1e-12));
        // The mass is not flat (the check above would be weak if it were).
        CHECK(*std::max_element(want.begin(), want.end()) > 3.0 * total / T);
        // Threads change nothing, bit for bit.
        const std::vector<double> threaded = train::attention_mass(shape, keys.data(), positions.data(), T,
                                                                   queries.data(), spans.data(), spans.size(), 3);
        CHECK(threaded == got);
    }
}

TEST_CASE("train: attention mass is causal and stays inside the chunk") {
    const uint32_t Hkv = 2, Hq = 4, d = 8;
    const std::vector<uint64_t> chunk_rows = {0, 10, 25};
    const uint64_t T = 40;
    train::AttentionShape shape;
    shape.n_kv_heads = Hkv;
    shape.n_q_heads = Hq;
    shape.head_dim = d;
    test::Rng rng(7);
    std::vector<float> keys = rng.normals(T * Hkv * d);
    const std::vector<uint64_t> positions = train::chunk_positions(chunk_rows, T);
    CHECK(positions[9] == 9);
    CHECK(positions[10] == 0);
    CHECK(positions[39] == 14);
    for (uint64_t row : {uint64_t(0), uint64_t(9), uint64_t(10), uint64_t(17), uint64_t(25), uint64_t(39)}) {
        std::vector<float> q = rng.normals(size_t(Hq) * d, 2.0);
        const std::vector<train::QuerySpan> spans = train::causal_query_spans(chunk_rows, T, {row});
        const uint64_t start = row < 10 ? 0 : row < 25 ? 10 : 25;
        CHECK(spans[0].key_begin == start);
        CHECK(spans[0].key_end == row + 1);
        CHECK(spans[0].position == row - start);
        const std::vector<double> mass =
            train::attention_mass(shape, keys.data(), positions.data(), T, q.data(), spans.data(), 1, 1);
        for (uint64_t t = 0; t < T; ++t) {
            INFO("query row " << row << ", key row " << t);
            if (t < start || t > row) CHECK(mass[t] == 0.0);  // other chunk, or later
            else CHECK(mass[t] > 0.0);
        }
        // What comes after the query, or in another chunk, cannot move its
        // mass: replace every such key with something large and compare bits.
        std::vector<float> other = keys;
        for (uint64_t t = 0; t < T; ++t)
            if (t < start || t > row)
                for (size_t e = 0; e < size_t(Hkv) * d; ++e) other[t * Hkv * d + e] = 50.0f;
        CHECK(train::attention_mass(shape, other.data(), positions.data(), T, q.data(), spans.data(), 1, 1) == mass);
    }
    // A span that holds a key at a later position than its query is refused.
    train::QuerySpan bad{3, 0, 5};
    std::vector<float> q = rng.normals(size_t(Hq) * d);
    CHECK_THROWS_AS(train::attention_mass(shape, keys.data(), positions.data(), T, q.data(), &bad, 1, 1), Error);
    train::QuerySpan past_end{5, 38, 41};
    CHECK_THROWS_AS(train::attention_mass(shape, keys.data(), positions.data(), T, q.data(), &past_end, 1, 1), Error);
    CHECK_THROWS_AS(train::causal_query_spans({0, 10, 10}, T, {3}), Error);
    CHECK_THROWS_AS(train::causal_query_spans(chunk_rows, T, {40}), Error);
    // No queries: no mass anywhere.
    const std::vector<double> none =
        train::attention_mass(shape, keys.data(), positions.data(), T, nullptr, nullptr, 0, 1);
    CHECK(none == std::vector<double>(T, 0.0));
}

TEST_CASE("train: attention token weights") {
    const std::vector<double> mass = {0.0, 2.0, 0.5, 0.0, 1.5};  // mean 0.8
    for (double beta : {0.0, 0.5, 3.0}) {
        const std::vector<float> w = train::attention_token_weights(mass, beta);
        REQUIRE(w.size() == mass.size());
        double mean = 0;
        for (size_t t = 0; t < w.size(); ++t) {
            CHECK(w[t] == doctest::Approx(1.0 + beta * mass[t] / 0.8).epsilon(1e-7));
            mean += w[t];
        }
        CHECK(mean / w.size() == doctest::Approx(1.0 + beta).epsilon(1e-7));  // mean(w) = 1 + beta
        CHECK(w[0] == 1.0f);  // unseen tokens keep the plain MSE weight
    }
    CHECK(train::attention_token_weights(mass, 0.0) == std::vector<float>(mass.size(), 1.0f));
    CHECK(train::attention_token_weights(std::vector<double>(4, 0.0), 5.0) == std::vector<float>(4, 1.0f));
    // Scaling the mass changes nothing: the weights see a / mean(a).
    std::vector<double> scaled = mass;
    for (double& a : scaled) a *= 64.0;
    CHECK(train::attention_token_weights(scaled, 2.0) == train::attention_token_weights(mass, 2.0));
    CHECK_THROWS_AS(train::attention_token_weights(mass, -1.0), Error);
    CHECK_THROWS_AS(train::attention_token_weights(mass, NAN), Error);
    CHECK_THROWS_AS(train::attention_token_weights({1.0, -0.5}, 1.0), Error);
}

namespace {

std::vector<float> make_values(size_t n, uint32_t D, uint64_t seed) {
    test::Rng rng(seed);
    std::vector<float> v(n * D);
    for (size_t t = 0; t < n; ++t)
        for (uint32_t c = 0; c < D; ++c) v[t * D + c] = float(rng.normal() * (0.5 + 0.1 * (c % 5)));
    return v;
}

}  // namespace

TEST_CASE("train: weighted value objective equals finite differences and the per-row sum") {
    const uint32_t D = 8, bits = 1, I = 12, B = 5;
    std::vector<float> v = make_values(B, D, 11);
    ValueCodebook vc = train::init_value_codebook(v.data(), B, D, bits, I, 12);
    test::Rng rng(13);
    for (std::vector<float>* p : train::value_parameters(vc))
        for (float& x : *p) x += float(0.2 * rng.normal());
    std::vector<float> noise = rng.normals(size_t(B) * 2 * D * bits);
    const std::vector<float> weight = {0.25f, 4.0f, 1.0f, 0.0f, 2.5f};
    train::ValueObjective objective(D, bits, I, 1);

    // Unit weights are the unweighted loss, bit for bit.
    const std::vector<float> ones(B, 1.0f);
    CHECK(objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr, ones.data()) ==
          objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr));
    // The weighted loss is the weighted mean of the rows' own losses
    // (each row evaluated alone as a batch of one).
    const double weighted =
        objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr, weight.data());
    double sum = 0;
    for (uint32_t b = 0; b < B; ++b)
        sum += weight[b] * objective.evaluate(vc, v.data() + size_t(b) * D, 1, noise.data() + size_t(b) * 2 * D * bits,
                                              train::OptionChoice::kRelaxed, nullptr);
    CHECK(weighted == doctest::Approx(sum / B).epsilon(1e-5));

    ValueCodebook grads;
    objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, &grads, weight.data());
    auto params = train::value_parameters(vc);
    auto g = train::value_parameters(grads);
    const char* names[] = {"norm_weight", "norm_bias", "enc1_weight", "enc1_bias", "enc2_weight", "enc2_bias", "E"};
    for (size_t t = 0; t < params.size(); ++t) {
        std::vector<float>& p = *params[t];
        double max_err = 0, max_grad = 0;
        for (size_t k = 0; k < p.size(); k += 1 + p.size() / 16) {
            const float keep = p[k], h = 1e-2f;
            p[k] = keep + h;
            double up = objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr,
                                           weight.data());
            p[k] = keep - h;
            double down = objective.evaluate(vc, v.data(), B, noise.data(), train::OptionChoice::kRelaxed, nullptr,
                                             weight.data());
            p[k] = keep;
            double fd = (up - down) / (2.0 * h);
            max_err = std::max(max_err, std::fabs(fd - (*g[t])[k]));
            max_grad = std::max(max_grad, std::fabs(fd));
        }
        INFO("tensor " << names[t] << ": max |fd - grad| " << max_err << ", max |grad| " << max_grad);
        CHECK(max_grad > 1e-5);
        // As test_train_value.cpp: float32 forward, h = 1e-2, truncation
        // O(h^2) plus rounding O(1e-7 / h).
        CHECK(max_err <= 2e-3 * max_grad + 1e-5);
    }
}

TEST_CASE("train: attention weights steer value training toward the attended tokens") {
    // One token in eight draws all the attention, and those tokens look
    // unlike the rest (energy in every fourth channel, as attention-sink
    // tokens have values of their own). With beta = 4 their weight is
    // 1 + 4 * 8 = 33 against 1. Same data, start, seed and steps: the
    // weighted codebook must reconstruct them clearly better than the
    // uniform one (measured: 0.44 against 0.72, so the bound 0.8x has room;
    // the uniform codebook, seeing them 1/8 of the time, fits the rest).
    const uint32_t D = 32, bits = 1, I = 32;
    const size_t n = 512;
    test::Rng rng(21);
    std::vector<float> v(n * D), attended;
    std::vector<double> mass(n, 0.0);
    for (size_t t = 0; t < n; ++t) {
        const bool hot = t % 8 == 0;
        for (uint32_t c = 0; c < D; ++c) {
            const double scale = hot ? (c % 4 == 0 ? 2.0 : 0.2) : 0.5 + 0.1 * (c % 5);
            v[t * D + c] = float(rng.normal() * scale);
        }
        if (hot) {
            mass[t] = 1.0;
            attended.insert(attended.end(), v.begin() + t * D, v.begin() + (t + 1) * D);
        }
    }
    const std::vector<float> w = train::attention_token_weights(mass, 4.0);
    CHECK(w[0] == doctest::Approx(33.0));
    CHECK(w[1] == 1.0f);
    train::ValueTrainConfig config;
    config.value_bits = bits;
    config.hidden = I;
    config.steps = 300;
    config.batch = 64;
    config.n_threads = 1;
    const ValueCodebook start = train::init_value_codebook(v.data(), n, D, bits, I, 22);
    ValueCodebook uniform = start, weighted = start;
    train::train_value_codebook(uniform, v.data(), n, D, config, 23, nullptr);
    train::train_value_codebook(weighted, v.data(), n, D, config, 23, nullptr, w.data());
    const size_t m = attended.size() / D;
    const double err_uniform = train::value_mse(uniform, attended.data(), m, D, bits, I, 1);
    const double err_weighted = train::value_mse(weighted, attended.data(), m, D, bits, I, 1);
    const double all_uniform = train::value_mse(uniform, v.data(), n, D, bits, I, 1);
    const double all_weighted = train::value_mse(weighted, v.data(), n, D, bits, I, 1);
    INFO("attended-token MSE uniform " << err_uniform << ", weighted " << err_weighted << "; all tokens uniform "
                                       << all_uniform << ", weighted " << all_weighted);
    CHECK(err_weighted < 0.8 * err_uniform);
    // The price: the plain MSE over all tokens is what uniform training
    // minimizes, and it is higher for the weighted codebook.
    CHECK(all_weighted > all_uniform);
    // Unit weights give the unweighted training exactly.
    ValueCodebook ones = start;
    const std::vector<float> unit(n, 1.0f);
    train::train_value_codebook(ones, v.data(), n, D, config, 23, nullptr, unit.data());
    CHECK(ones.codebook == uniform.codebook);
    CHECK(ones.enc2_weight == uniform.enc2_weight);
}
