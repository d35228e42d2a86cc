// The seam between the cache's host-side bookkeeping (cache.h: lengths,
// block tables, reference counts, capacity checks) and the place where the
// data lives and the arithmetic runs. A back end owns the bytes of the block
// pool (layout: block_layout.h) and of the uncompressed tokens (sinks and
// windows), encodes tokens on append and computes attention. The cache has
// validated every argument and reserved every block before it calls in, so a
// back end never has to undo anything; it throws commvq::Error only for
// failures of its own device (e.g. COMMVQ_ERR_CUDA).
//
// CpuBackend (cpu_backend.h) and the CUDA back end (kernels/cuda_backend.cu,
// built with COMMVQ_WITH_CUDA) implement it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "block_layout.h"
#include "codebook.h"
#include "sequence.h"

namespace commvq {

// Everything a back end is sized by, fixed at cache creation.
struct BackendConfig {
    uint32_t n_blocks = 0;
    uint32_t max_seqs = 0;
    uint32_t window = 0;       // W
    uint32_t sink_tokens = 0;  // S
    int32_t io_dtype = COMMVQ_DTYPE_F32;
    int32_t key_convention = COMMVQ_KEYS_PRE_ROPE;
    float attn_scale = 0;      // already resolved: never 0
    unsigned n_threads = 1;    // CPU threads, resolved: never 0
    BlockLayout layout;
};

// One query row of an attention call: which layer view it reads and how
// many of its tokens (positions [0, visible)) it sees.
struct AttendRow {
    const LayerView* view = nullptr;
    uint64_t visible = 0;
};

struct AttendCall {
    uint32_t layer = 0;
    uint32_t n_rows = 0;
    const AttendRow* rows = nullptr;
    // true when all rows read one view (commvq_cache_attend): a back end
    // may then form each key once for several rows.
    bool one_sequence = false;
    const void* q = nullptr;  // [n_rows][n_q_heads][head_dim], io_dtype, model pair layout, post-RoPE
    void* out = nullptr;      // same shape and type
    float* lse = nullptr;     // [n_rows][n_q_heads] or null
};

// One row of a batched append: one sequence's layer around the call, as
// Backend::append's before and after.
struct AppendRow {
    LayerView before;
    LayerView after;
};

class Backend {
public:
    virtual ~Backend() = default;

    // Adds n_tokens tokens to one layer of one sequence; `before` and `after`
    // describe the layer around the call (after.length = before.length +
    // n_tokens). Positions [after.sinks + before.compressed, after.sinks +
    // after.compressed) are encoded into after.blocks, taking each token
    // from the window or from k/v; every block they land in belongs to this
    // sequence alone. New tokens that stay uncompressed go to the sinks or
    // the window. k, v: [n_tokens][n_kv_heads][head_dim] in io_dtype.
    virtual void append(uint32_t layer, const LayerView& before, const LayerView& after,
                        uint32_t n_tokens, const void* k, const void* v) = 0;

    // append() for each of n_rows rows of one layer, whose sequences are
    // distinct: row r's tokens are token rows [r * n_tokens, (r + 1) *
    // n_tokens) of k and v, and its blocks are ready as for append(). The
    // result is that of the rows appended one after the other; a back end
    // encodes the tokens of all rows together.
    virtual void append_batch(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                              const void* k, const void* v) = 0;

    // A slice cache's appends in the `token` scale mode (docs/PARALLEL.md):
    // append_batch (n_rows = 1: append) with key_norms2 [value_kv_heads][n_rows
    // * n_tokens], each new token's squared key norm of every one of the
    // model's KV heads, as the caller passed them (host or, on a device back
    // end, device memory). A token's norm is key_scale::token_norm2 of its
    // column; tokens that stay in the window keep it for their encoding.
    virtual void append_batch_norms(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                                    const void* k, const void* v, const double* key_norms2) = 0;

    // Per-head squared norms of pre-RoPE keys (post-RoPE keys un-rotated
    // first, as encoding does), key_head_norm2 of each head in the canonical
    // layout: k [n_rows][n_tokens][n_kv_heads][head_dim] in io_dtype, token
    // t of row r at position positions[r] + t (positions: host memory); out
    // [n_kv_heads][n_rows * n_tokens]. k and out as the caller passed them
    // (host or, on a device back end, device memory).
    virtual void key_head_norms2(uint32_t n_rows, const uint64_t* positions, uint32_t n_tokens, const void* k,
                                 double* out) const = 0;

    // Copies every layer of block src into block dst (copy-on-write).
    virtual void copy_block(uint32_t src, uint32_t dst) = 0;
    // Copies the sinks and window of every layer of sequence src to dst.
    virtual void copy_uncompressed(uint32_t src, uint32_t dst) = 0;

    virtual void attend(const AttendCall& call) = 0;

    // Persistence (host memory on both sides). Compressed tokens [first,
    // first + count) of a layer in the packed token format of seq_file.h:
    // token_bytes() each.
    virtual void read_compressed(uint32_t layer, const LayerView& view, uint64_t first,
                                 uint64_t count, uint8_t* out) const = 0;
    virtual void write_compressed(uint32_t layer, const LayerView& view, uint64_t first,
                                  uint64_t count, const uint8_t* in) = 0;
    // Uncompressed tokens at positions [position, position + count), all
    // sinks or all window positions of the view: keys and values in io_dtype,
    // [count][n_kv_heads][head_dim] each, exactly as they were appended.
    virtual void read_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                   uint64_t count, void* k, void* v) const = 0;
    virtual void write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                    uint64_t count, const void* k, const void* v) = 0;

    // Bytes this back end took at creation (pool, windows, tables, scratch).
    virtual uint64_t bytes_reserved() const = 0;
    // Bytes of codebook-derived tables it holds.
    virtual uint64_t bytes_codebook() const = 0;

    // Whether the host can read a caller's buffer (not so for device memory),
    // so the cache checks input values only where it can see them.
    virtual bool host_readable(const void* p) const {
        (void)p;
        return true;
    }

    // Work queue of a device back end; the CPU back end runs synchronously.
    virtual void set_stream(void* stream) = 0;
    virtual void synchronize() = 0;
};

std::unique_ptr<Backend> make_cpu_backend(const Codebook& cb, const BackendConfig& config);

#ifdef COMMVQ_WITH_CUDA
// Provided by kernels/ when the library is built with CUDA.
std::unique_ptr<Backend> make_cuda_backend(const Codebook& cb, const BackendConfig& config,
                                           int32_t device);
int32_t cuda_device_count();
#endif

}  // namespace commvq
