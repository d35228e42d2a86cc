#include "cpu_backend.h"

#include <algorithm>
#include <cstring>

#include "code_packing.h"
#include "dtype.h"
#include "error.h"
#include "pair_layout.h"

namespace commvq {

// Tokens one work item of the encoder takes: enough to make handing out
// items cheap, few enough to balance short appends over the threads.
constexpr uint64_t kEncodeBatch = 8;

std::unique_ptr<Backend> make_cpu_backend(const Codebook& cb, const BackendConfig& config) {
    return std::make_unique<CpuBackend>(cb, config);
}

CpuBackend::CpuBackend(const Codebook& cb, const BackendConfig& config)
    : cb_(cb),
      config_(config),
      pool_(config.n_threads),
      storage_(cb, config),
      attention_(cb, config, storage_, pool_),
      rope_(cb.rope, cb.head_dim) {
    key_encoders_.reserve(cb.n_layers);
    value_encoders_.reserve(cb.n_layers);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        key_encoders_.emplace_back(cb, l);
        value_encoders_.emplace_back(cb, l);
    }
    encode_scratch_.resize(pool_.size());
    for (auto& s : encode_scratch_) {
        s.key.resize(cb.value_dim());
        s.value.resize(cb.value_dim());
        s.token.resize(cb.value_dim());
        s.codes.resize(size_t(cb.n_kv_heads) * cb.key_stages);
        s.encoder.resize(value_encoders_[0].scratch_floats());
    }
}

// One token into its slot: keys to the canonical pair layout, un-rotated to
// pre-RoPE if the host hands over post-RoPE keys, then both encoders.
void CpuBackend::encode_token(uint32_t layer, uint64_t position, const uint8_t* k,
                              const uint8_t* v, TokenSlot slot, EncodeScratch& s) const {
    const uint32_t d = cb_.head_dim, D = cb_.value_dim();
    to_float(k, config_.io_dtype, D, s.token.data());
    for (uint32_t g = 0; g < cb_.n_kv_heads; ++g) {
        float* key = s.key.data() + size_t(g) * d;
        to_canonical(s.token.data() + size_t(g) * d, d, cb_.pair_layout, key);
        if (config_.key_convention == COMMVQ_KEYS_POST_ROPE) rope_.rotate(key, position, -1, key);
    }
    key_encoders_[layer].encode(s.key.data(), s.codes.data(), slot.key_scales);
    pack_codes(s.codes.data(), s.codes.size(), cb_.code_bits(), slot.key_codes);
    to_float(v, config_.io_dtype, D, s.value.data());
    value_encoders_[layer].encode(s.value.data(), slot.value_codes, slot.value_weight,
                                  s.encoder.data());
}

void CpuBackend::append(uint32_t layer, const LayerView& before, const LayerView& after,
                        uint32_t n_tokens, const void* k, const void* v) {
    const uint64_t S = config_.sink_tokens;
    const uint32_t bt = config_.layout.block_tokens;
    const size_t half = storage_.slot_half_bytes();
    const auto* k_in = static_cast<const uint8_t*>(k);
    const auto* v_in = static_cast<const uint8_t*>(v);
    const uint32_t seq = after.seq;

    // Tokens leaving the window (or never entering it) are encoded first,
    // while the window still holds the old ones.
    const uint64_t first = S + before.compressed;
    const uint64_t n_encode = after.compressed - before.compressed;
    const size_t n_items = (n_encode + kEncodeBatch - 1) / kEncodeBatch;
    pool_.parallel_for(n_items, [&](size_t item, unsigned thread) {
        const uint64_t p0 = first + item * kEncodeBatch;
        const uint64_t p1 = std::min(first + n_encode, p0 + kEncodeBatch);
        for (uint64_t p = p0; p < p1; ++p) {
            const uint8_t *kp, *vp;
            if (p < before.length) {
                kp = storage_.slot(seq, layer, p);
                vp = kp + half;
            } else {
                kp = k_in + (p - before.length) * half;
                vp = v_in + (p - before.length) * half;
            }
            const uint64_t i = p - S;
            uint8_t* block = storage_.block(layer, after.blocks[i / bt]);
            encode_token(layer, p, kp, vp, token_slot(config_.layout, block, uint32_t(i % bt)),
                         encode_scratch_[thread]);
        }
    });

    // New tokens that stay uncompressed: sinks, then the window.
    for (uint64_t p = before.length; p < after.length; ++p) {
        if (p >= S && p < S + after.compressed) continue;
        uint8_t* slot = storage_.slot(seq, layer, p);
        std::memcpy(slot, k_in + (p - before.length) * half, half);
        std::memcpy(slot + half, v_in + (p - before.length) * half, half);
    }
}

void CpuBackend::copy_block(uint32_t src, uint32_t dst) {
    for (uint32_t l = 0; l < cb_.n_layers; ++l)
        std::memcpy(storage_.block(l, dst), storage_.block(l, src), config_.layout.block_bytes);
}

void CpuBackend::copy_uncompressed(uint32_t src, uint32_t dst) {
    std::memcpy(storage_.sequence_slots(dst), storage_.sequence_slots(src), storage_.sequence_bytes());
}

void CpuBackend::attend(const AttendCall& call) { attention_.attend(call); }

void CpuBackend::read_compressed(uint32_t layer, const LayerView& view, uint64_t first,
                                 uint64_t count, uint8_t* out) const {
    const BlockLayout& b = config_.layout;
    for (uint64_t i = first; i < first + count; ++i) {
        ConstTokenSlot slot = token_slot(b, storage_.block(layer, view.blocks[i / b.block_tokens]),
                                         uint32_t(i % b.block_tokens));
        std::memcpy(out, slot.key_codes, b.key_code_bytes);
        out += b.key_code_bytes;
        std::memcpy(out, slot.value_codes, b.value_code_bytes);
        out += b.value_code_bytes;
        std::memcpy(out, slot.key_scales, 4 * size_t(b.n_key_scales));
        out += 4 * size_t(b.n_key_scales);
        std::memcpy(out, slot.value_weight, 4);
        out += 4;
    }
}

void CpuBackend::write_compressed(uint32_t layer, const LayerView& view, uint64_t first,
                                  uint64_t count, const uint8_t* in) {
    const BlockLayout& b = config_.layout;
    for (uint64_t i = first; i < first + count; ++i) {
        TokenSlot slot = token_slot(b, storage_.block(layer, view.blocks[i / b.block_tokens]),
                                    uint32_t(i % b.block_tokens));
        std::memcpy(slot.key_codes, in, b.key_code_bytes);
        in += b.key_code_bytes;
        std::memcpy(slot.value_codes, in, b.value_code_bytes);
        in += b.value_code_bytes;
        std::memcpy(slot.key_scales, in, 4 * size_t(b.n_key_scales));
        in += 4 * size_t(b.n_key_scales);
        std::memcpy(slot.value_weight, in, 4);
        in += 4;
    }
}

void CpuBackend::read_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                   uint64_t count, void* k, void* v) const {
    const size_t half = storage_.slot_half_bytes();
    for (uint64_t t = 0; t < count; ++t) {
        const uint8_t* slot = storage_.slot(view.seq, layer, position + t);
        std::memcpy(static_cast<uint8_t*>(k) + t * half, slot, half);
        std::memcpy(static_cast<uint8_t*>(v) + t * half, slot + half, half);
    }
}

void CpuBackend::write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                    uint64_t count, const void* k, const void* v) {
    const size_t half = storage_.slot_half_bytes();
    for (uint64_t t = 0; t < count; ++t) {
        uint8_t* slot = storage_.slot(view.seq, layer, position + t);
        std::memcpy(slot, static_cast<const uint8_t*>(k) + t * half, half);
        std::memcpy(slot + half, static_cast<const uint8_t*>(v) + t * half, half);
    }
}

uint64_t CpuBackend::bytes_reserved() const {
    uint64_t n = storage_.pool_bytes() + storage_.uncompressed_bytes() + attention_.bytes_tables() +
                 attention_.bytes_scratch();
    for (const auto& s : encode_scratch_)
        n += (s.key.size() + s.value.size() + s.token.size() + s.encoder.size()) * sizeof(float) +
             s.codes.size() * sizeof(uint16_t);
    return n;
}

uint64_t CpuBackend::bytes_codebook() const { return attention_.bytes_tables(); }

void CpuBackend::set_stream(void*) {
    throw Error(COMMVQ_ERR_NOT_SUPPORTED, "commvq_cache_set_stream: this is a CPU cache; streams are for CUDA caches");
}

}  // namespace commvq
