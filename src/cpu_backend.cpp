#include "cpu_backend.h"

#include <algorithm>
#include <cstring>

#include "batch_rows.h"
#include "code_packing.h"
#include "dtype.h"
#include "error.h"
#include "key_scale.h"
#include "pair_layout.h"

namespace commvq {

// Tokens one work item of the encoder takes: one tile of the encoders (they
// read their tables once per tile), few enough to balance short appends over
// the threads.
constexpr uint64_t kEncodeBatch = KeyEncoder::kTile;
static_assert(KeyEncoder::kTile == ValueEncoder::kTile, "one work item is one tile of both encoders");

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
    encode_scratch_.reserve(pool_.size());
    for (unsigned t = 0; t < pool_.size(); ++t)
        encode_scratch_.push_back(EncodeScratch{{}, {}, {}, {}, {}, {}, KeyEncoder::Scratch(cb)});
    // Each scratch holds one work item of kEncodeBatch tokens; encoder has
    // the value encoder's scratch, then each token's key scales, weight and
    // value code bits.
    batch_first_.resize(size_t(config.max_seqs) + 1);
    norm_scratch_.resize(size_t(cb.key_dim()) + cb.head_dim);
    for (auto& s : encode_scratch_) {
        s.key.resize(kEncodeBatch * cb.key_dim());
        s.value.resize(kEncodeBatch * cb.value_dim());
        s.token.resize(std::max(cb.key_dim(), cb.value_dim()));
        s.norms2.resize(kEncodeBatch);
        s.codes.resize(kEncodeBatch * cb.n_kv_heads * cb.key_stages);
        s.encoder.resize(kEncodeBatch * (value_encoders_[0].scratch_floats() + cb.n_key_scales() + 1 +
                                         (cb.value_code_bits() / 8 + 3) / 4));
    }
}

CpuBackend::EncodeJob CpuBackend::encode_job(uint32_t layer, const LayerView& before, const LayerView& after,
                                              uint64_t position, const uint8_t* k, const uint8_t* v,
                                              const RowNorms& norms2) {
    const uint64_t i = position - config_.sink_tokens;
    const uint32_t bt = config_.layout.block_tokens;
    EncodeJob job;
    job.position = position;
    job.norm2 = 0;
    if (position < before.length) {  // still in the window
        job.k = storage_.slot(after.seq, layer, position);
        job.v = job.k + storage_.key_bytes();
        if (storage_.has_norms2()) job.norm2 = storage_.norm2(after.seq, layer, position);
    } else {
        job.k = k + (position - before.length) * storage_.key_bytes();
        job.v = v + (position - before.length) * storage_.value_bytes();
        if (storage_.has_norms2()) job.norm2 = norms2.token(position - before.length);
    }
    job.slot = token_slot(config_.layout, storage_.block(layer, after.blocks[i / bt]), uint32_t(i % bt));
    return job;
}

// Each tile: its tokens' keys to the canonical pair layout (un-rotated to
// pre-RoPE if the host hands over post-RoPE keys), both encoders over the
// tile, then codes, scales and weights into the slots.
void CpuBackend::canonical_key(const float* head, uint64_t position, float* out) const {
    to_canonical(head, cb_.head_dim, cb_.pair_layout, out);
    if (config_.key_convention == COMMVQ_KEYS_POST_ROPE) rope_.rotate(out, position, -1, out);
}

void CpuBackend::encode(uint32_t layer, unsigned thread, const EncodeJob* jobs, uint32_t n) {
    const uint32_t d = cb_.head_dim, D = cb_.value_dim(), K = cb_.key_dim();
    const uint32_t n_codes = cb_.n_kv_heads * cb_.key_stages;
    const uint32_t n_scales = cb_.n_key_scales(), value_bytes = cb_.value_code_bits() / 8;
    EncodeScratch& s = encode_scratch_[thread];
    float* value_scratch = s.encoder.data();
    float* scales = value_scratch + kEncodeBatch * value_encoders_[layer].scratch_floats();
    float* weights = scales + kEncodeBatch * n_scales;
    auto* value_bits = reinterpret_cast<uint8_t*>(weights + kEncodeBatch);
    for (uint32_t t = 0; t < n; ++t) {
        to_float(jobs[t].k, config_.io_dtype, K, s.token.data());
        for (uint32_t g = 0; g < cb_.n_kv_heads; ++g)
            canonical_key(s.token.data() + size_t(g) * d, jobs[t].position, s.key.data() + size_t(t) * K + size_t(g) * d);
        to_float(jobs[t].v, config_.io_dtype, D, s.value.data() + size_t(t) * D);
        s.norms2[t] = jobs[t].norm2;
    }
    key_encoders_[layer].encode_tile(n, s.key.data(), K, s.codes.data(), n_codes, scales, n_scales, s.keys,
                                     storage_.has_norms2() ? s.norms2.data() : nullptr);
    value_encoders_[layer].encode_tile(n, s.value.data(), D, value_bits, value_bytes, weights, 1, value_scratch);
    for (uint32_t t = 0; t < n; ++t) {
        const TokenSlot& slot = jobs[t].slot;
        pack_codes(s.codes.data() + size_t(t) * n_codes, n_codes, cb_.code_bits(), slot.key_codes);
        std::memcpy(slot.key_scales, scales + size_t(t) * n_scales, 4 * size_t(n_scales));
        std::memcpy(slot.value_codes, value_bits + size_t(t) * value_bytes, value_bytes);
        std::memcpy(slot.value_weight, weights + t, 4);
    }
}

// New tokens that stay uncompressed: sinks, then the window.
void CpuBackend::store_uncompressed(uint32_t layer, const LayerView& before, const LayerView& after,
                                    const uint8_t* k, const uint8_t* v, const RowNorms& norms2) {
    const uint64_t S = config_.sink_tokens;
    const size_t kb = storage_.key_bytes(), vb = storage_.value_bytes();
    for (uint64_t p = before.length; p < after.length; ++p) {
        if (p >= S && p < S + after.compressed) continue;
        uint8_t* slot = storage_.slot(after.seq, layer, p);
        std::memcpy(slot, k + (p - before.length) * kb, kb);
        std::memcpy(slot + kb, v + (p - before.length) * vb, vb);
        if (storage_.has_norms2()) storage_.norm2(after.seq, layer, p) = norms2.token(p - before.length);
    }
}

void CpuBackend::append(uint32_t layer, const LayerView& before, const LayerView& after,
                        uint32_t n_tokens, const void* k, const void* v) {
    const AppendRow row{before, after};
    append_rows(layer, 1, &row, n_tokens, k, v, nullptr);
}

void CpuBackend::append_batch(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                              const void* k, const void* v) {
    append_rows(layer, n_rows, rows, n_tokens, k, v, nullptr);
}

void CpuBackend::append_batch_norms(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                                    const void* k, const void* v, const double* key_norms2) {
    append_rows(layer, n_rows, rows, n_tokens, k, v, key_norms2);
}

void CpuBackend::key_head_norms2(uint32_t n_rows, const uint64_t* positions, uint32_t n_tokens, const void* k,
                                 double* out) const {
    const uint32_t d = cb_.head_dim, K = cb_.key_dim(), H = cb_.n_kv_heads;
    const size_t n = size_t(n_rows) * n_tokens;
    float* token = norm_scratch_.data();  // [K], then one head's canonical key [d]
    float* key = token + K;
    for (size_t i = 0; i < n; ++i) {
        to_float(static_cast<const uint8_t*>(k) + i * storage_.key_bytes(), config_.io_dtype, K, token);
        for (uint32_t g = 0; g < H; ++g) {
            canonical_key(token + size_t(g) * d, positions[i / n_tokens] + i % n_tokens, key);
            out[size_t(g) * n + i] = key_head_norm2(key, d);
        }
    }
}

// The tokens every row compresses, numbered across the rows, encoded in
// tiles that may span rows (a token's codes do not depend on its tile);
// tokens leaving the window (or never entering it) are encoded first, while
// the window still holds the old ones, then the rest are stored.
void CpuBackend::append_rows(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                             const void* k, const void* v, const double* key_norms2) {
    const auto* k_in = static_cast<const uint8_t*>(k);
    const auto* v_in = static_cast<const uint8_t*>(v);
    const size_t k_row = size_t(n_tokens) * storage_.key_bytes(), v_row = size_t(n_tokens) * storage_.value_bytes();
    const auto row_norms = [&](uint32_t r) {
        return RowNorms{key_norms2 ? key_norms2 + size_t(r) * n_tokens : nullptr, size_t(n_rows) * n_tokens,
                        cb_.model_kv_heads()};
    };
    uint64_t total = 0;
    for (uint32_t r = 0; r < n_rows; ++r) {
        batch_first_[r] = total;
        total += rows[r].after.compressed - rows[r].before.compressed;
    }
    batch_first_[n_rows] = total;
    const uint64_t S = config_.sink_tokens;
    const size_t n_items = (total + kEncodeBatch - 1) / kEncodeBatch;
    pool_.parallel_for(n_items, [&](size_t item, unsigned thread) {
        const uint64_t f0 = item * kEncodeBatch;
        const uint32_t n = uint32_t(std::min<uint64_t>(total - f0, kEncodeBatch));
        // The row of token f0, as the CUDA kernels find it.
        uint32_t r = batch_rows::row_of(f0, n_rows, [&](uint32_t i) { return batch_first_[i]; });
        EncodeJob jobs[kEncodeBatch];
        for (uint32_t t = 0; t < n; ++t) {
            const uint64_t f = f0 + t;
            while (f >= batch_first_[r + 1]) ++r;
            const AppendRow& row = rows[r];
            jobs[t] = encode_job(layer, row.before, row.after, S + row.before.compressed + (f - batch_first_[r]),
                                 k_in + r * k_row, v_in + r * v_row, row_norms(r));
        }
        encode(layer, thread, jobs, n);
    });
    for (uint32_t r = 0; r < n_rows; ++r)
        store_uncompressed(layer, rows[r].before, rows[r].after, k_in + r * k_row, v_in + r * v_row, row_norms(r));
}

void CpuBackend::copy_block(uint32_t src, uint32_t dst) {
    for (uint32_t l = 0; l < cb_.n_layers; ++l)
        std::memcpy(storage_.block(l, dst), storage_.block(l, src), config_.layout.block_bytes);
}

void CpuBackend::copy_uncompressed(uint32_t src, uint32_t dst) { storage_.copy_sequence(src, dst); }

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
    const size_t kb = storage_.key_bytes(), vb = storage_.value_bytes();
    for (uint64_t t = 0; t < count; ++t) {
        const uint8_t* slot = storage_.slot(view.seq, layer, position + t);
        std::memcpy(static_cast<uint8_t*>(k) + t * kb, slot, kb);
        std::memcpy(static_cast<uint8_t*>(v) + t * vb, slot + kb, vb);
    }
}

void CpuBackend::write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                    uint64_t count, const void* k, const void* v) {
    const size_t kb = storage_.key_bytes(), vb = storage_.value_bytes();
    for (uint64_t t = 0; t < count; ++t) {
        uint8_t* slot = storage_.slot(view.seq, layer, position + t);
        std::memcpy(slot, static_cast<const uint8_t*>(k) + t * kb, kb);
        std::memcpy(slot + kb, static_cast<const uint8_t*>(v) + t * vb, vb);
    }
}

uint64_t CpuBackend::bytes_reserved() const {
    uint64_t n = storage_.pool_bytes() + storage_.uncompressed_bytes() + attention_.bytes_tables() +
                 attention_.bytes_scratch();
    for (const auto& s : encode_scratch_)
        n += (s.key.size() + s.value.size() + s.token.size() + s.encoder.size()) * sizeof(float) +
             s.codes.size() * sizeof(uint16_t) + s.norms2.size() * sizeof(double);
    return n + batch_first_.size() * sizeof(uint64_t) + norm_scratch_.size() * sizeof(float);
}

uint64_t CpuBackend::bytes_codebook() const { return attention_.bytes_tables(); }

void CpuBackend::set_stream(void*) {
    throw Error(COMMVQ_ERR_NOT_SUPPORTED, "commvq_cache_set_stream: this is a CPU cache; streams are for CUDA caches");
}

}  // namespace commvq
