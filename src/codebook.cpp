#include "codebook.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "error.h"
#include "value_encoder.h"

namespace commvq {

namespace {

// Bounds that keep every size product far from overflow; no real model is
// near them.
constexpr uint64_t kMaxDim = 1u << 16;
constexpr uint64_t kMaxTensorElements = uint64_t(1) << 31;
// Key codes travel as uint16_t, so C*C codes must fit in 16 bits.
constexpr uint32_t kMaxSubCenters = 256;

[[noreturn]] void bad(const std::string& message) { throw Error(COMMVQ_ERR_FORMAT, "codebook: " + message); }

std::string format_double(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    return buf;
}

void require_dim(uint64_t v, uint64_t lo, uint64_t hi, const char* what) {
    if (v < lo || v > hi)
        bad(std::string(what) + " = " + std::to_string(v) + " is outside " + std::to_string(lo) + ".." +
            std::to_string(hi));
}

void validate_rope(const RopeSpec& r) {
    auto positive = [](double v) { return std::isfinite(v) && v > 0; };
    if (!positive(r.theta) || r.theta == 1.0) bad("rope_theta must be finite, positive and not 1");
    switch (r.scaling) {
        case COMMVQ_ROPE_SCALING_NONE: break;
        case COMMVQ_ROPE_SCALING_LINEAR:
            if (!positive(r.factor)) bad("linear RoPE scaling needs a finite positive factor");
            break;
        case COMMVQ_ROPE_SCALING_LLAMA3:
            if (!positive(r.factor) || !positive(r.low_freq_factor) || !positive(r.high_freq_factor) ||
                !positive(r.original_max_position))
                bad("llama3 RoPE scaling needs finite positive factor, low/high_freq_factor and "
                    "original_max_position");
            if (r.high_freq_factor == r.low_freq_factor) bad("llama3 RoPE scaling needs high_freq_factor != low_freq_factor");
            break;
        default: bad("unknown RoPE scaling " + std::to_string(r.scaling));
    }
}

void require_finite(const std::vector<float>& v, const std::string& name) {
    for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i])) bad("tensor " + name + " has a non-finite value at element " + std::to_string(i));
}

}  // namespace

// FNV-1a, 64 bit: simple, byte-order free and easy to reproduce in any
// language (docs/FORMATS.md gives a Python version).
CodebookFingerprint::CodebookFingerprint(const Codebook& cb) {
    const std::string name = "commvq-codebook\n";
    add_bytes(name.data(), name.size());
    for (const auto& [key, value] : codebook_shape_metadata(cb)) {
        const std::string line = key + "=" + value + "\n";
        add_bytes(line.data(), line.size());
    }
}

void CodebookFingerprint::add_bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint64_t h = h_;
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
    h_ = h;
}

// The values' little-endian float32 bytes (the host is little-endian; the
// safetensors reader refuses to build otherwise).
void CodebookFingerprint::add(const float* values, size_t n) { add_bytes(values, n * sizeof(float)); }

uint32_t Codebook::code_bits() const {
    uint32_t bits = 1;  // a single-code stage still takes a bit, so packing stays uniform
    while ((uint64_t(1) << bits) < uint64_t(sub_centers) * sub_centers) ++bits;
    return bits;
}

const char* pair_layout_name(int32_t pair_layout) {
    switch (pair_layout) {
        case COMMVQ_PAIRS_ROTATE_HALF: return "rotate_half";
        case COMMVQ_PAIRS_INTERLEAVED: return "interleaved";
        default: bad("unknown pair layout " + std::to_string(pair_layout));
    }
}

const char* scale_mode_name(int32_t scale_mode) {
    switch (scale_mode) {
        case COMMVQ_SCALE_TOKEN: return "token";
        case COMMVQ_SCALE_HEAD: return "head";
        default: bad("unknown scale mode " + std::to_string(scale_mode));
    }
}

const char* rope_scaling_name(int32_t scaling) {
    switch (scaling) {
        case COMMVQ_ROPE_SCALING_NONE: return "none";
        case COMMVQ_ROPE_SCALING_LINEAR: return "linear";
        case COMMVQ_ROPE_SCALING_LLAMA3: return "llama3";
        default: bad("unknown RoPE scaling " + std::to_string(scaling));
    }
}

std::vector<std::pair<std::string, std::string>> codebook_shape_metadata(const Codebook& cb) {
    return {
        {"n_layers", std::to_string(cb.n_layers)},
        {"n_kv_heads", std::to_string(cb.n_kv_heads)},
        {"n_q_heads", std::to_string(cb.n_q_heads)},
        {"head_dim", std::to_string(cb.head_dim)},
        {"key_stages", std::to_string(cb.key_stages)},
        {"sub_centers", std::to_string(cb.sub_centers)},
        {"value_bits", std::to_string(cb.value_bits)},
        {"value_hidden", std::to_string(cb.value_hidden)},
        {"pair_layout", pair_layout_name(cb.pair_layout)},
        {"scale_mode", scale_mode_name(cb.scale_mode)},
        {"rope_theta", format_double(cb.rope.theta)},
        {"rope_scaling", rope_scaling_name(cb.rope.scaling)},
        {"rope_factor", format_double(cb.rope.factor)},
        {"rope_low_freq_factor", format_double(cb.rope.low_freq_factor)},
        {"rope_high_freq_factor", format_double(cb.rope.high_freq_factor)},
        {"rope_original_max_position", format_double(cb.rope.original_max_position)},
    };
}

std::vector<CodebookTensorSpec> layer_tensor_specs(const Codebook& cb, uint32_t layer) {
    const std::string p = "layers." + std::to_string(layer) + ".";
    const uint64_t D = cb.value_dim(), I = cb.value_hidden, n = cb.value_groups();
    return {
        {p + "keys.sub_centers", {cb.n_kv_heads, cb.key_stages, cb.sub_centers, cb.head_dim}},
        {p + "values.lambda", {D}},
        {p + "values.norm.weight", {D}},
        {p + "values.norm.bias", {D}},
        {p + "values.enc1.weight", {I, D}},
        {p + "values.enc1.bias", {I}},
        {p + "values.enc2.weight", {4 * n, I}},
        {p + "values.enc2.bias", {4 * n}},
        {p + "values.codebook", {2 * n, D}},
    };
}

std::vector<const std::vector<float>*> layer_tensor_data(const LayerCodebook& l) {
    const ValueCodebook& v = l.values;
    return {&l.keys.sub_centers, &v.lambda,    &v.norm_weight, &v.norm_bias, &v.enc1_weight,
            &v.enc1_bias,        &v.enc2_weight, &v.enc2_bias,   &v.codebook};
}

std::vector<std::vector<float>*> layer_tensor_data(LayerCodebook& l) {
    ValueCodebook& v = l.values;
    return {&l.keys.sub_centers, &v.lambda,    &v.norm_weight, &v.norm_bias, &v.enc1_weight,
            &v.enc1_bias,        &v.enc2_weight, &v.enc2_bias,   &v.codebook};
}

void Codebook::finalize() {
    require_dim(n_layers, 1, kMaxDim, "n_layers");
    require_dim(n_kv_heads, 1, kMaxDim, "n_kv_heads");
    require_dim(n_q_heads, 1, kMaxDim, "n_q_heads");
    if (n_q_heads % n_kv_heads != 0)
        bad("n_q_heads (" + std::to_string(n_q_heads) + ") is not a multiple of n_kv_heads (" +
            std::to_string(n_kv_heads) + ")");
    require_dim(head_dim, 2, kMaxDim, "head_dim");
    if (head_dim % 2 != 0) bad("head_dim " + std::to_string(head_dim) + " is odd; RoPE pairs need it even");
    require_dim(key_stages, 1, kMaxDim, "key_stages");
    require_dim(sub_centers, 1, kMaxSubCenters, "sub_centers");
    if (value_bits != 1 && value_bits != 2) bad("value_bits must be 1 or 2, got " + std::to_string(value_bits));
    // Value codes are whole bytes per token: 2n = D*b bits must be a multiple of 8.
    if (uint64_t(value_dim()) * value_bits % 8 != 0)
        bad("n_kv_heads * head_dim * value_bits = " + std::to_string(uint64_t(value_dim()) * value_bits) +
            " must be a multiple of 8 (value codes are whole bytes)");
    require_dim(value_hidden, 1, kMaxDim, "value_hidden");
    pair_layout_name(pair_layout);
    scale_mode_name(scale_mode);
    validate_rope(rope);
    if (layers.size() != n_layers)
        bad("holds " + std::to_string(layers.size()) + " layers, expected n_layers = " + std::to_string(n_layers));

    for (uint32_t l = 0; l < n_layers; ++l) {
        const auto specs = layer_tensor_specs(*this, l);
        const auto data = layer_tensor_data(layers[l]);
        for (size_t t = 0; t < specs.size(); ++t) {
            uint64_t expected = 1;
            for (uint64_t d : specs[t].shape) expected *= d;  // every factor <= 2^17: no overflow
            if (expected > kMaxTensorElements) bad("tensor " + specs[t].name + " is too large");
            if (data[t]->size() != expected)
                bad("tensor " + specs[t].name + " has " + std::to_string(data[t]->size()) +
                    " elements, expected " + std::to_string(expected));
            require_finite(*data[t], specs[t].name);
        }
        // lambda + eps divides the values: it must stay positive.
        for (float lam : layers[l].values.lambda)
            if (!(lam > -kValueEps)) bad("layers." + std::to_string(l) + ".values.lambda must be > -1e-6");
    }

    const uint32_t C = sub_centers, d = head_dim, P = pairs();
    cross.assign(n_layers, {});
    norms.assign(n_layers, {});
    for (uint32_t l = 0; l < n_layers; ++l) {
        cross[l].resize(size_t(n_kv_heads) * key_stages * C * C);
        norms[l].resize(size_t(n_kv_heads) * key_stages * C);
        for (uint32_t h = 0; h < n_kv_heads; ++h)
            for (uint32_t r = 0; r < key_stages; ++r) {
                const size_t hr = size_t(h) * key_stages + r;
                for (uint32_t a = 0; a < C; ++a) {
                    const float* za = sub_center(l, h, r, a);
                    double nn = 0;
                    for (uint32_t k = 0; k < d; ++k) nn += double(za[k]) * za[k];
                    norms[l][hr * C + a] = float(nn);
                    for (uint32_t b = 0; b < C; ++b) {
                        // <z_A, i z_B> with i (x, y) = (-y, x)
                        const float* zb = sub_center(l, h, r, b);
                        double g = 0;
                        for (uint32_t j = 0; j < P; ++j)
                            g += -double(za[2 * j]) * zb[2 * j + 1] + double(za[2 * j + 1]) * zb[2 * j];
                        cross[l][(hr * C + a) * C + b] = float(2 * g);
                    }
                }
            }
    }

    CodebookFingerprint hash(*this);
    for (uint32_t l = 0; l < n_layers; ++l)
        for (const std::vector<float>* t : layer_tensor_data(layers[l])) hash.add(t->data(), t->size());
    fingerprint = hash.value();
}

bool is_valid_utf8(const std::string& s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const uint8_t c = p[i];
        size_t len;
        uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n) return false;
        for (size_t k = 1; k < len; ++k) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
        static const uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

uint32_t key_stages_for_bits(uint32_t value_bits) {
    require(value_bits == 1 || value_bits == 2, COMMVQ_ERR_INVALID_ARGUMENT,
            "value_bits must be 1 or 2, got " + std::to_string(value_bits));
    return value_bits == 1 ? 11 : 21;
}

uint32_t value_hidden_for(uint32_t value_dim, uint32_t value_bits) {
    const uint64_t four_n = 2 * uint64_t(value_dim) * value_bits;  // 4n = 4 * D*b/2
    return uint32_t(std::min<uint64_t>(4096, four_n));
}

}  // namespace commvq

namespace commvq {

Codebook slice_codebook(const Codebook& cb, uint32_t begin, uint32_t count) {
    const uint32_t H = cb.n_kv_heads, G = cb.n_q_heads / cb.n_kv_heads;
    const uint32_t R = cb.key_stages, C = cb.sub_centers, d = cb.head_dim;
    // Everything as cb has it (fields added later included), then the
    // per-head key data cut to the slice.
    Codebook s = cb;
    s.n_kv_heads = count;
    s.n_q_heads = count * G;
    s.value_kv_heads = H;
    s.kv_head_begin = begin;
    const auto cut = [&](std::vector<float>& all, size_t per_head) {
        all = std::vector<float>(all.begin() + std::ptrdiff_t(begin * per_head),
                                 all.begin() + std::ptrdiff_t((begin + count) * per_head));
    };
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        cut(s.layers[l].keys.sub_centers, size_t(R) * C * d);
        cut(s.cross[l], size_t(R) * C * C);
        cut(s.norms[l], size_t(R) * C);
    }
    return s;
}

}  // namespace commvq
