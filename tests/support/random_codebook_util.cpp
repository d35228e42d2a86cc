#include "random_codebook.h"

#include <cmath>

namespace commvq {
namespace test {

uint64_t Rng::next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

double Rng::uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

double Rng::normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log stays finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

std::vector<float> Rng::normals(size_t n, double stddev) {
    std::vector<float> v(n);
    for (float& x : v) x = float(normal() * stddev);
    return v;
}

Codebook random_codebook(const RandomCodebookSpec& spec) {
    Rng rng(spec.seed * 0x2545f4914f6cdd1dull + 17);
    Codebook cb;
    cb.n_layers = spec.n_layers;
    cb.n_kv_heads = spec.n_kv_heads;
    cb.n_q_heads = spec.n_q_heads;
    cb.head_dim = spec.head_dim;
    cb.value_bits = spec.value_bits;
    cb.key_stages = spec.key_stages ? spec.key_stages : key_stages_for_bits(spec.value_bits);
    cb.sub_centers = spec.sub_centers;
    cb.value_hidden = spec.value_hidden ? spec.value_hidden : value_hidden_for(cb.value_dim(), spec.value_bits);
    cb.pair_layout = spec.pair_layout;
    cb.scale_mode = spec.scale_mode;
    cb.rope = spec.rope;
    cb.model_name = "random test codebook";

    const uint32_t D = cb.value_dim(), I = cb.value_hidden, n = cb.value_groups(), d = cb.head_dim;
    // A normalized key has norm 1 over the heads its scale covers.
    const double head_norm = spec.scale_mode == COMMVQ_SCALE_TOKEN ? 1.0 / std::sqrt(double(cb.n_kv_heads)) : 1.0;
    cb.layers.resize(cb.n_layers);
    for (LayerCodebook& layer : cb.layers) {
        auto& z = layer.keys.sub_centers;
        z.reserve(size_t(cb.n_kv_heads) * cb.key_stages * cb.sub_centers * d);
        for (uint32_t h = 0; h < cb.n_kv_heads; ++h)
            for (uint32_t r = 0; r < cb.key_stages; ++r) {
                const double stage_norm = 0.5 * head_norm * std::pow(0.7, r);
                const std::vector<float> stage = rng.normals(size_t(cb.sub_centers) * d, stage_norm / std::sqrt(d));
                z.insert(z.end(), stage.begin(), stage.end());
            }
        ValueCodebook& v = layer.values;
        v.lambda.resize(D);
        for (float& x : v.lambda) x = float(rng.uniform(0.05, 1.0));
        v.norm_weight = rng.normals(D, 0.1);
        for (float& x : v.norm_weight) x += 1.0f;
        v.norm_bias = rng.normals(D, 0.05);
        v.enc1_weight = rng.normals(size_t(I) * D, 1.0 / std::sqrt(D));
        v.enc1_bias = rng.normals(I, 0.05);
        v.enc2_weight = rng.normals(size_t(4) * n * I, 1.0 / std::sqrt(I));
        v.enc2_bias = rng.normals(size_t(4) * n, 0.05);
        v.codebook = rng.normals(size_t(2) * n * D, 1.0 / std::sqrt(D));
    }
    cb.finalize();
    return cb;
}

Codebook random_codebook(uint32_t n_layers, uint32_t n_kv_heads, uint32_t n_q_heads, uint32_t head_dim,
                         uint32_t value_bits, int32_t pair_layout, int32_t scale_mode, uint64_t seed) {
    RandomCodebookSpec spec;
    spec.n_layers = n_layers;
    spec.n_kv_heads = n_kv_heads;
    spec.n_q_heads = n_q_heads;
    spec.head_dim = head_dim;
    spec.value_bits = value_bits;
    spec.pair_layout = pair_layout;
    spec.scale_mode = scale_mode;
    spec.seed = seed;
    return random_codebook(spec);
}

}  // namespace test
}  // namespace commvq
