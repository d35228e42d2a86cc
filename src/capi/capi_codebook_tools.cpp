// Encoding and reconstruction through a codebook alone, without a cache:
// what tools (the quality harness, the converter's test) need to measure a
// codebook. The cache never goes through here.
#include <string>
#include <vector>

#include "codebook.h"
#include "guard.h"
#include "input_check.h"
#include "key_encoder.h"
#include "pair_layout.h"
#include "value_encoder.h"

using commvq::Error;
using commvq::capi::guard;
using commvq::capi::require_arg;

namespace {

void require_layer(const commvq::Codebook& cb, uint32_t layer, const char* fn) {
    if (layer >= cb.n_layers)
        throw Error(COMMVQ_ERR_OUT_OF_RANGE, std::string(fn) + ": layer " + std::to_string(layer) +
                                                 " out of range (codebook has " +
                                                 std::to_string(cb.n_layers) + " layers)");
}

// Keys of n tokens in the model's layout -> codes and scales.
void encode_keys(const commvq::Codebook& cb, uint32_t layer, uint32_t n_tokens, const float* k,
                 uint16_t* codes, float* scales) {
    const commvq::KeyEncoder encoder(cb, layer);
    const uint32_t d = cb.head_dim, hkv = cb.n_kv_heads;
    std::vector<float> canonical(size_t(hkv) * d);
    for (uint32_t t = 0; t < n_tokens; ++t) {
        for (uint32_t h = 0; h < hkv; ++h)
            commvq::to_canonical(k + (size_t(t) * hkv + h) * d, d, cb.pair_layout, &canonical[size_t(h) * d]);
        encoder.encode(canonical.data(), codes + size_t(t) * hkv * cb.key_stages,
                       scales + size_t(t) * cb.n_key_scales());
    }
}

}  // namespace

extern "C" {

COMMVQ_API commvq_status_t commvq_codebook_encode_keys(const commvq_codebook_t* cb, uint32_t layer,
                                                      uint32_t n_tokens, const float* k,
                                                      uint16_t* codes, float* scales) {
    return guard([&] {
        const char* fn = "commvq_codebook_encode_keys";
        require_arg(cb, fn, "cb");
        require_arg(k, fn, "k");
        require_arg(codes, fn, "codes");
        require_arg(scales, fn, "scales");
        require_layer(cb->cb, layer, fn);
        const commvq::Codebook& c = cb->cb;
        commvq::require_inputs(fn, "k", "token", k, COMMVQ_DTYPE_F32, n_tokens, c.value_dim());
        // Encode into scratch first so a failure leaves the outputs untouched.
        std::vector<uint16_t> code_buf(size_t(n_tokens) * c.n_kv_heads * c.key_stages);
        std::vector<float> scale_buf(size_t(n_tokens) * c.n_key_scales());
        encode_keys(c, layer, n_tokens, k, code_buf.data(), scale_buf.data());
        std::copy(code_buf.begin(), code_buf.end(), codes);
        std::copy(scale_buf.begin(), scale_buf.end(), scales);
    });
}

COMMVQ_API commvq_status_t commvq_codebook_reconstruct(const commvq_codebook_t* cb, uint32_t layer,
                                                      uint32_t n_tokens, const float* k,
                                                      const float* v, float* k_out, float* v_out) {
    return guard([&] {
        const char* fn = "commvq_codebook_reconstruct";
        require_arg(cb, fn, "cb");
        if ((k == nullptr) != (k_out == nullptr) || (v == nullptr) != (v_out == nullptr))
            throw Error(COMMVQ_ERR_INVALID_ARGUMENT,
                        std::string(fn) + ": k and k_out (and v and v_out) must both be given or both be NULL");
        const commvq::Codebook& c = cb->cb;
        require_layer(c, layer, fn);
        const uint32_t d = c.head_dim, hkv = c.n_kv_heads, dim = c.value_dim();
        if (k) commvq::require_inputs(fn, "k", "token", k, COMMVQ_DTYPE_F32, n_tokens, dim);
        if (v) commvq::require_inputs(fn, "v", "token", v, COMMVQ_DTYPE_F32, n_tokens, dim);
        std::vector<float> k_buf, v_buf;
        if (k) {
            std::vector<uint16_t> codes(size_t(n_tokens) * hkv * c.key_stages);
            std::vector<float> scales(size_t(n_tokens) * c.n_key_scales());
            encode_keys(c, layer, n_tokens, k, codes.data(), scales.data());
            const commvq::KeyEncoder encoder(c, layer);
            k_buf.resize(size_t(n_tokens) * dim);
            std::vector<float> head(d);
            for (uint32_t t = 0; t < n_tokens; ++t)
                for (uint32_t h = 0; h < hkv; ++h) {
                    encoder.decode_head(h, &codes[(size_t(t) * hkv + h) * c.key_stages], head.data());
                    const float s = scales[size_t(t) * c.n_key_scales() + (c.n_key_scales() > 1 ? h : 0)];
                    for (float& x : head) x *= s;
                    commvq::from_canonical(head.data(), d, c.pair_layout, &k_buf[(size_t(t) * hkv + h) * d]);
                }
        }
        if (v) {
            const commvq::ValueEncoder encoder(c, layer);
            std::vector<float> scratch(encoder.scratch_floats());
            std::vector<uint8_t> bits(c.value_code_bits() / 8);
            v_buf.resize(size_t(n_tokens) * dim);
            for (uint32_t t = 0; t < n_tokens; ++t) {
                float weight = 0;
                encoder.encode(v + size_t(t) * dim, bits.data(), &weight, scratch.data());
                encoder.decode(bits.data(), weight, &v_buf[size_t(t) * dim]);
            }
        }
        if (k) std::copy(k_buf.begin(), k_buf.end(), k_out);
        if (v) std::copy(v_buf.begin(), v_buf.end(), v_out);
    });
}

}  // extern "C"
