// The bytes of the CPU back end, all allocated when the cache is created:
//   pool          [n_layers][n_blocks][block_bytes]   (block_layout.h)
//   uncompressed  [max_seqs][n_layers][S + W] slots in io_dtype: per slot
//                 the token's keys [n_kv_heads][head_dim], then its values
//                 [value heads][head_dim], exactly as the host appended them
//                 (model pair layout, the host's key convention). A slice
//                 cache keeps the keys of its own heads and the values of
//                 all of the model's heads (they are encoded together).
//   norms2        [max_seqs][n_layers][S + W] float64, slice caches in the
//                 token scale mode only: each slot's squared key norm over
//                 all the model's KV heads, given at append, needed when the
//                 token leaves the window and is encoded.
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
    size_t key_bytes() const { return key_bytes_; }      // keys of one token, io_dtype
    size_t value_bytes() const { return value_bytes_; }  // values of one token, io_dtype
    // Whether the slots keep a squared key norm each (norm2()).
    bool has_norms2() const { return has_norms2_; }

    uint8_t* block(uint32_t layer, uint32_t b) {
        return pool_.data() + (size_t(layer) * n_blocks_ + b) * layout_.block_bytes;
    }
    const uint8_t* block(uint32_t layer, uint32_t b) const {
        return pool_.data() + (size_t(layer) * n_blocks_ + b) * layout_.block_bytes;
    }

    // The slot of an uncompressed position: keys at the pointer, values
    // key_bytes() further.
    uint8_t* slot(uint32_t seq, uint32_t layer, uint64_t position) {
        return uncompressed_.data() + slot_index(seq, layer, position) * slot_bytes_;
    }
    const uint8_t* slot(uint32_t seq, uint32_t layer, uint64_t position) const {
        return uncompressed_.data() + slot_index(seq, layer, position) * slot_bytes_;
    }
    // The slot's squared key norm (has_norms2() only).
    double& norm2(uint32_t seq, uint32_t layer, uint64_t position) {
        return norms2_[slot_index(seq, layer, position)];
    }
    double norm2(uint32_t seq, uint32_t layer, uint64_t position) const {
        return norms2_[slot_index(seq, layer, position)];
    }
    // Copies every slot (and norm) of sequence src to dst.
    void copy_sequence(uint32_t src, uint32_t dst);
    size_t sequence_bytes() const { return sequence_bytes_; }

    size_t pool_bytes() const { return pool_.size(); }
    size_t uncompressed_bytes() const { return uncompressed_.size() + norms2_.size() * sizeof(double); }
    uint32_t n_blocks() const { return n_blocks_; }

private:
    size_t slot_index(uint32_t seq, uint32_t layer, uint64_t position) const {
        uint64_t s = position < sinks_ ? position : sinks_ + (position - sinks_) % window_;
        return (size_t(seq) * n_layers_ + layer) * slots_per_layer_ + s;
    }

    BlockLayout layout_;
    uint32_t n_blocks_;
    uint32_t sinks_;
    uint32_t window_;
    uint32_t n_layers_;
    size_t key_bytes_;
    size_t value_bytes_;
    size_t slot_bytes_;
    size_t slots_per_layer_;
    size_t sequence_bytes_;
    std::vector<uint8_t> pool_;
    std::vector<uint8_t> uncompressed_;
    bool has_norms2_;
    std::vector<double> norms2_;
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
