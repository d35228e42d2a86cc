// Where the parts of a compressed token live in the block pool. The pool is
// [n_layers][n_blocks][block_bytes]; one block of one layer holds
// block_tokens tokens as four regions (structure of arrays, so a kernel
// reads each kind of data contiguously):
//   key codes     [block_tokens][key_code_bytes]   packed stage codes
//   value codes   [block_tokens][value_code_bytes] packed code bits
//   key scales    [block_tokens][n_key_scales]     float32
//   value weights [block_tokens]                   float32 (w of docs/METHOD.md)
// Each region starts on a 16-byte boundary. CPU and CUDA back ends share it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "code_packing.h"
#include "codebook.h"

namespace commvq {

struct BlockLayout {
    uint32_t block_tokens = 0;
    uint32_t key_code_bytes = 0;
    uint32_t value_code_bytes = 0;
    uint32_t n_key_scales = 0;
    size_t key_codes_offset = 0;
    size_t value_codes_offset = 0;
    size_t key_scales_offset = 0;
    size_t value_weights_offset = 0;
    size_t block_bytes = 0;

    // Bytes one compressed token takes, without the alignment padding.
    size_t token_bytes() const {
        return size_t(key_code_bytes) + value_code_bytes + 4 * (size_t(n_key_scales) + 1);
    }
};

inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

inline BlockLayout make_block_layout(const Codebook& cb, uint32_t block_tokens) {
    BlockLayout b;
    b.block_tokens = block_tokens;
    b.key_code_bytes = uint32_t(packed_bytes(size_t(cb.n_kv_heads) * cb.key_stages, cb.code_bits()));
    b.value_code_bytes = cb.value_code_bits() / 8;
    b.n_key_scales = cb.n_key_scales();
    size_t at = 0;
    b.key_codes_offset = at;
    at = align16(at + size_t(block_tokens) * b.key_code_bytes);
    b.value_codes_offset = at;
    at = align16(at + size_t(block_tokens) * b.value_code_bytes);
    b.key_scales_offset = at;
    at = align16(at + size_t(block_tokens) * b.n_key_scales * 4);
    b.value_weights_offset = at;
    at = align16(at + size_t(block_tokens) * 4);
    b.block_bytes = at;
    return b;
}

}  // namespace commvq
