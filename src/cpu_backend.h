// The CPU back end: storage in host memory (cpu_storage.h), encoding on
// append spread over a thread pool, attention from codes (attention_cpu.h).
#pragma once

#include <memory>
#include <vector>

#include "attention_cpu.h"
#include "backend.h"
#include "cpu_storage.h"
#include "key_encoder.h"
#include "key_scale.h"
#include "rope.h"
#include "thread_pool.h"
#include "value_encoder.h"

namespace commvq {

class CpuBackend final : public Backend {
public:
    CpuBackend(const Codebook& cb, const BackendConfig& config);

    void append(uint32_t layer, const LayerView& before, const LayerView& after, uint32_t n_tokens,
                const void* k, const void* v) override;
    void append_batch(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens, const void* k,
                      const void* v) override;
    void append_batch_norms(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                            const void* k, const void* v, const double* key_norms2) override;
    void key_head_norms2(uint32_t n_rows, const uint64_t* positions, uint32_t n_tokens, const void* k,
                         double* out) const override;
    void copy_block(uint32_t src, uint32_t dst) override;
    void copy_uncompressed(uint32_t src, uint32_t dst) override;
    void attend(const AttendCall& call) override;
    void read_compressed(uint32_t layer, const LayerView& view, uint64_t first, uint64_t count,
                         uint8_t* out) const override;
    void write_compressed(uint32_t layer, const LayerView& view, uint64_t first, uint64_t count,
                          const uint8_t* in) override;
    void read_uncompressed(uint32_t layer, const LayerView& view, uint64_t position, uint64_t count,
                           void* k, void* v) const override;
    void write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                            uint64_t count, const void* k, const void* v) override;
    uint64_t bytes_reserved() const override;
    uint64_t bytes_codebook() const override;
    void set_stream(void* stream) override;
    void synchronize() override {}

private:
    // Per-thread working memory of the encoders, for one tile of
    // KeyEncoder::kTile tokens (the sizes below are per token).
    struct EncodeScratch {
        std::vector<float> key;    // [kTile][n_kv_heads * head_dim] canonical, pre-RoPE
        std::vector<float> value;  // [kTile][D]
        std::vector<float> token;  // [max(key dim, D)] model layout
        std::vector<double> norms2;  // [kTile] token squared key norms (slice caches, token mode)
        std::vector<uint16_t> codes;  // [n_kv_heads * key_stages]
        std::vector<float> encoder;   // ValueEncoder scratch
        KeyEncoder::Scratch keys;
    };

    // One token to encode: its position, where its keys and values are
    // read (a window slot or the caller's row) and the slot its codes go to;
    // its squared key norm over all heads where the storage keeps them.
    struct EncodeJob {
        uint64_t position;
        const uint8_t* k;
        const uint8_t* v;
        TokenSlot slot;
        double norm2;
    };
    // One row's tokens' squared key norms of every head of the model
    // (append_batch_norms' key_norms2 from the row's first token on), or
    // nothing (first null) where the storage keeps none.
    struct RowNorms {
        const double* first;
        size_t head_stride;
        uint32_t n_heads;
        double token(uint64_t t) const { return key_scale::token_norm2(first + t, n_heads, head_stride); }
    };
    // The job of the token at `position`, compressed by an append of the
    // rows k, v (norms2: their tokens' squared key norms) to the layer
    // (before -> after).
    EncodeJob encode_job(uint32_t layer, const LayerView& before, const LayerView& after, uint64_t position,
                         const uint8_t* k, const uint8_t* v, const RowNorms& norms2);
    void append_rows(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens, const void* k,
                     const void* v, const double* key_norms2);
    // One head's key of a token to the canonical layout, un-rotated to
    // pre-RoPE if the host hands over post-RoPE keys.
    void canonical_key(const float* head, uint64_t position, float* out) const;
    // Encodes up to kEncodeBatch tokens of one layer on one thread.
    void encode(uint32_t layer, unsigned thread, const EncodeJob* jobs, uint32_t n);
    // Copies an append's new tokens that stay uncompressed into their sink
    // or window slots.
    void store_uncompressed(uint32_t layer, const LayerView& before, const LayerView& after, const uint8_t* k,
                            const uint8_t* v, const RowNorms& norms2);

    const Codebook& cb_;
    BackendConfig config_;
    ThreadPool pool_;
    CpuStorage storage_;
    CpuAttention attention_;
    Rope rope_;
    std::vector<KeyEncoder> key_encoders_;      // per layer
    std::vector<ValueEncoder> value_encoders_;  // per layer
    std::vector<EncodeScratch> encode_scratch_; // per thread
    // append_batch: row r's first token to encode, counted over the rows
    // before it; [max_seqs + 1], taken at creation.
    std::vector<uint64_t> batch_first_;
    // key_head_norms2 (a const call, on the caller's thread): one token's
    // keys [key dim] and one head's canonical key [head_dim].
    mutable std::vector<float> norm_scratch_;
};

}  // namespace commvq
