// The bytes of the CPU back end, all allocated when the cache is created:
//   pool          [n_layers][n_blocks][block_bytes]   (block_layout.h)
//   uncompressed  [max_seqs][n_layers][S + W][2][n_kv_heads][head_dim]
//                 in io_dtype: per slot the token's keys, then its values,
//                 exactly as the host appended them (model pair layout, the
//                 host's key convention).
// Sink position p (< S) is slot p; window position p (>= S) is slot
// S + (p - S) % W, a ring: the window's positions are consecutive, so they
// never collide, and nothing moves when the oldest tokens are compressed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend.h"

namespace commvq {

class CpuStorage {
public:
    CpuStorage(const Codebook& cb, const BackendConfig& config);

    const BlockLayout& layout() const { return layout_; }
    size_t token_elements() const { return token_elements_; }  // n_kv_heads * head_dim
    size_t slot_half_bytes() const { return slot_half_bytes_; }  // keys (or values) of one token

    uint8_t* block(uint32_t layer, uint32_t b) {
        return pool_.data() + (size_t(layer) * n_blocks_ + b) * layout_.block_bytes;
    }
    const uint8_t* block(uint32_t layer, uint32_t b) const {
        return pool_.data() + (size_t(layer) * n_blocks_ + b) * layout_.block_bytes;
    }

    // The slot of an uncompressed position: keys at the pointer, values
    // slot_half_bytes() further.
    uint8_t* slot(uint32_t seq, uint32_t layer, uint64_t position) {
        return uncompressed_.data() + slot_offset(seq, layer, position);
    }
    const uint8_t* slot(uint32_t seq, uint32_t layer, uint64_t position) const {
        return uncompressed_.data() + slot_offset(seq, layer, position);
    }
    // All slots of one sequence (every layer), contiguous.
    uint8_t* sequence_slots(uint32_t seq) { return uncompressed_.data() + seq * sequence_bytes_; }
    size_t sequence_bytes() const { return sequence_bytes_; }

    size_t pool_bytes() const { return pool_.size(); }
    size_t uncompressed_bytes() const { return uncompressed_.size(); }
    uint32_t n_blocks() const { return n_blocks_; }

private:
    size_t slot_offset(uint32_t seq, uint32_t layer, uint64_t position) const {
        uint64_t s = position < sinks_ ? position : sinks_ + (position - sinks_) % window_;
        return seq * sequence_bytes_ + (size_t(layer) * slots_per_layer_ + s) * 2 * slot_half_bytes_;
    }

    BlockLayout layout_;
    uint32_t n_blocks_;
    uint32_t sinks_;
    uint32_t window_;
    size_t token_elements_;
    size_t slot_half_bytes_;
    size_t slots_per_layer_;
    size_t sequence_bytes_;
    std::vector<uint8_t> pool_;
    std::vector<uint8_t> uncompressed_;
};

// Where one compressed token's parts sit inside a block (block_layout.h).
struct TokenSlot {
    uint8_t* key_codes;
    uint8_t* value_codes;
    float* key_scales;
    float* value_weight;
};
struct ConstTokenSlot {
    const uint8_t* key_codes;
    const uint8_t* value_codes;
    const float* key_scales;
    const float* value_weight;
};

inline TokenSlot token_slot(const BlockLayout& b, uint8_t* block, uint32_t slot) {
    return {block + b.key_codes_offset + size_t(slot) * b.key_code_bytes,
            block + b.value_codes_offset + size_t(slot) * b.value_code_bytes,
            reinterpret_cast<float*>(block + b.key_scales_offset) + size_t(slot) * b.n_key_scales,
            reinterpret_cast<float*>(block + b.value_weights_offset) + slot};
}
inline ConstTokenSlot token_slot(const BlockLayout& b, const uint8_t* block, uint32_t slot) {
    return {block + b.key_codes_offset + size_t(slot) * b.key_code_bytes,
            block + b.value_codes_offset + size_t(slot) * b.value_code_bytes,
            reinterpret_cast<const float*>(block + b.key_scales_offset) + size_t(slot) * b.n_key_scales,
            reinterpret_cast<const float*>(block + b.value_weights_offset) + slot};
}

}  // namespace commvq
