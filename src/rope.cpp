#include "rope.h"

#include <cmath>

#include "error.h"
#include "portable_math.h"

namespace commvq {

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;

// LLaMA-3 scaling as Hugging Face's _compute_llama3_parameters: long
// wavelengths are slowed by `factor`, short ones kept, and the band between
// the two thresholds blends linearly in original_max / wavelength.
double llama3_frequency(double w, const RopeSpec& rope) {
    const double wavelen = kTwoPi / w;
    const double low_freq_wavelen = rope.original_max_position / rope.low_freq_factor;
    const double high_freq_wavelen = rope.original_max_position / rope.high_freq_factor;
    if (wavelen > low_freq_wavelen) return w / rope.factor;
    if (wavelen < high_freq_wavelen) return w;
    const double smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) /
                          (rope.high_freq_factor - rope.low_freq_factor);
    return (1.0 - smooth) * w / rope.factor + smooth * w;
}

}  // namespace

std::vector<double> rope_frequencies(const RopeSpec& rope, uint32_t head_dim) {
    require(head_dim > 0 && head_dim % 2 == 0, COMMVQ_ERR_INVALID_ARGUMENT,
            "RoPE needs an even head_dim, got " + std::to_string(head_dim));
    std::vector<double> freq(head_dim / 2);
    for (uint32_t j = 0; j < freq.size(); ++j) {
        // portable::pow: glibc's pow differs between machines in the last bit
        // (RELIABILITY.md), which positions multiply.
        const double w = portable::pow(rope.theta, -2.0 * j / head_dim);
        switch (rope.scaling) {
            case COMMVQ_ROPE_SCALING_NONE: freq[j] = w; break;
            case COMMVQ_ROPE_SCALING_LINEAR: freq[j] = w / rope.factor; break;
            case COMMVQ_ROPE_SCALING_LLAMA3: freq[j] = llama3_frequency(w, rope); break;
            default:
                throw Error(COMMVQ_ERR_INVALID_ARGUMENT,
                            "unknown RoPE scaling " + std::to_string(rope.scaling));
        }
    }
    return freq;
}

Rope::Rope(const RopeSpec& rope, uint32_t head_dim) : freq_(rope_frequencies(rope, head_dim)) {}

void Rope::angles(uint64_t position, float* cos_out, float* sin_out) const {
    // m * w_j in double keeps the angle accurate to far beyond any context
    // length; float would lose whole radians past a few million positions.
    const double m = double(position);
    for (size_t j = 0; j < freq_.size(); ++j) {
        double sn = 0, c = 0;
        portable::sincos(m * freq_[j], &sn, &c);
        cos_out[j] = float(c);
        sin_out[j] = float(sn);
    }
}

void Rope::rotate(const float* x, uint64_t position, int sign, float* out) const {
    const double m = double(position);
    const double s = sign < 0 ? -1.0 : 1.0;
    for (size_t j = 0; j < freq_.size(); ++j) {
        double sn = 0, c = 0;  // the same bits on every machine (portable_math.h)
        portable::sincos(s * m * freq_[j], &sn, &c);
        const double re = x[2 * j], im = x[2 * j + 1];
        out[2 * j] = float(re * c - im * sn);
        out[2 * j + 1] = float(re * sn + im * c);
    }
}

}  // namespace commvq
