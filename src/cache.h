// The compressed KV cache: sequences, their layers and block tables, the
// block pool's bookkeeping and every check the C API promises (commvq.h).
// Everything is validated here, before anything changes, so a failed call
// leaves the cache exactly as it was; the back end (backend.h) then stores,
// encodes and attends.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "block_pool.h"
#include "codebook.h"
#include "sequence.h"

namespace commvq {

struct SequenceImage;

class Cache {
public:
    // params: every field set (the C shim fills missing ones with defaults).
    Cache(const Codebook& cb, const commvq_cache_params_t& params);

    void append(uint32_t layer, uint32_t seq, uint32_t n_tokens, const void* k, const void* v);
    // n_tokens tokens for each of n_seqs distinct sequences of one layer:
    // append() row by row, but every row is checked before any changes.
    void append_batch(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                      const void* k, const void* v);
    // append_batch with the squared key norms of every KV head (slice
    // caches, docs/PARALLEL.md); key_norms2 may be null where not needed.
    void append_norms2(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                       const void* k, const void* v, const double* key_norms2);
    // The squared key norms of this cache's heads, norms2 [heads][n_seqs * n_tokens].
    void key_norms2(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens, const void* k,
                    double* norms2) const;
    void attend(uint32_t layer, uint32_t seq, uint32_t n_queries, const void* q, void* out,
                float* lse, uint32_t flags);
    void attend_batch(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, const void* q,
                      void* out, float* lse, uint32_t flags);

    uint64_t seq_length(uint32_t seq) const;
    void seq_clear(uint32_t seq);
    void seq_truncate(uint32_t seq, uint64_t new_length);
    void seq_fork(uint32_t src, uint32_t dst);

    commvq_cache_stats_t stats() const;

    void seq_save(uint32_t seq, const std::string& path) const;
    void seq_load(uint32_t seq, const std::string& path);

    // Checks the bookkeeping against itself: every block table as long as
    // its sequence's compressed tokens need, every layer state possible,
    // reference counts equal to the number of tables holding each block,
    // the free list exactly the unreferenced blocks. COMMVQ_ERR_INTERNAL
    // naming the first disagreement. For tests; allocates.
    void check_integrity() const;

    void set_stream(void* stream);
    void synchronize();

    // Read access for tests and tools.
    const Codebook& codebook() const { return cb_; }
    const commvq_cache_params_t& params() const { return params_; }
    const BlockLayout& layout() const { return layout_; }
    const Sequence& sequence(uint32_t seq) const { return seqs_.at(seq); }
    const BlockPool& block_pool() const { return pool_; }
    const Backend& backend() const { return *backend_; }

private:
    void check_layer(uint32_t layer, const char* fn) const;
    void check_seq(uint32_t seq, const char* fn) const;
    void require_not_slice(const char* fn) const;
    // Whether appends need key_norms2 (a slice in the token scale mode), and
    // the refusal of an append without them.
    bool needs_key_norms() const;
    void require_key_norms(const char* fn, const double* key_norms2) const;
    void append_rows(const char* fn, uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                     const void* k, const void* v, const double* key_norms2);
    uint64_t compressed_after(uint64_t length, uint64_t compressed) const;
    // The layer state after n_tokens more, or INVALID_STATE if the layers
    // of the sequence are not in step for it (entry >= 0: a batch's row).
    LayerState append_state(const char* fn, uint32_t layer, uint32_t seq, uint32_t n_tokens,
                            int64_t entry) const;
    // Blocks an append needs beyond those the sequence holds alone: new
    // table entries plus copies of shared blocks it would write to.
    uint64_t blocks_needed(const Sequence& s, uint64_t compressed_before,
                           uint64_t compressed_after) const;
    void make_writable(Sequence& s, uint64_t compressed_before, uint64_t compressed_after);
    void trim_blocks(Sequence& s, uint64_t keep);
    SequenceImage export_sequence(uint32_t seq) const;
    // The largest sequence file this cache could take: seq_load reads no
    // further than this.
    uint64_t max_sequence_file_bytes() const;
    uint64_t check_sequence_header(const SequenceImage& im, const std::string& path) const;

    commvq_cache_params_t params_;  // resolved: no 0 meaning "default" left
    // The cache's own copy (a slice cache's: slice_codebook); the back end
    // refers to it.
    Codebook cb_;
    BlockLayout layout_;
    BlockPool pool_;
    std::vector<Sequence> seqs_;
    std::unique_ptr<Backend> backend_;
    // Scratch of attend and attend_batch, grown to the largest call.
    std::vector<AttendRow> rows_;
    std::vector<LayerView> views_;
    // Scratch of append_batch, taken at creation (its ids are distinct, so
    // it has at most max_seqs rows): the rows for the back end; per
    // sequence, the stamp of the last batch that named it (duplicates);
    // per block, how many rows of the batch write into it while it is
    // shared (copy-on-write copies), zero between calls.
    std::vector<AppendRow> append_rows_;
    std::vector<uint32_t> seq_stamps_;
    uint32_t stamp_ = 0;
    std::vector<uint32_t> shared_writers_;
    // Scratch of append_norms2 with host norms, grown to the largest call:
    // the norms of this cache's heads as its keys give them.
    std::vector<double> own_norms2_;
    // Scratch of key_norms2 (a const call): the rows' first positions.
    mutable std::vector<uint64_t> norm_positions_;
};

}  // namespace commvq

// The C handle is the C++ object.
struct commvq_cache {
    commvq::Cache cache;
    commvq_cache(const commvq::Codebook& cb, const commvq_cache_params_t& params) : cache(cb, params) {}
};
