#include "cache.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <thread>

#include "code_packing.h"
#include "dtype.h"
#include "error.h"
#include "input_check.h"
#include "seq_file.h"

namespace commvq {
namespace {

// Refuses caches whose tables could not be indexed or whose sizes are
// clearly not meant (a negative number passed through an unsigned field).
constexpr uint32_t kMaxBlockTokens = 1u << 16;
constexpr uint32_t kMaxThreads = 1024;

const char* dtype_name(int32_t dtype) {
    switch (dtype) {
    case COMMVQ_DTYPE_F32: return "f32";
    case COMMVQ_DTYPE_F16: return "f16";
    case COMMVQ_DTYPE_BF16: return "bf16";
    default: return "unknown";
    }
}

std::string str(uint64_t x) { return std::to_string(x); }

// The parameters checked, with n_threads and attn_scale resolved.
commvq_cache_params_t resolve_params(const Codebook& cb, commvq_cache_params_t p) {
    const char* fn = "commvq_cache_create: ";
    require(p.device >= COMMVQ_DEVICE_CPU, COMMVQ_ERR_INVALID_ARGUMENT,
            std::string(fn) + "device " + std::to_string(p.device) + " is neither COMMVQ_DEVICE_CPU (-1) nor a CUDA ordinal");
    require(p.max_seqs >= 1, COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + "max_seqs must be at least 1");
    require(p.block_tokens >= 1 && p.block_tokens <= kMaxBlockTokens, COMMVQ_ERR_INVALID_ARGUMENT,
            std::string(fn) + "block_tokens " + str(p.block_tokens) + " is outside 1.." + str(kMaxBlockTokens));
    require(blocks_for(p.max_tokens, p.block_tokens) <= std::numeric_limits<uint32_t>::max(),
            COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + "max_tokens " + str(p.max_tokens) + " needs more than 2^32 blocks");
    require(dtype_valid(p.io_dtype), COMMVQ_ERR_INVALID_ARGUMENT,
            std::string(fn) + "io_dtype " + std::to_string(p.io_dtype) + " is not a COMMVQ_DTYPE_*");
    require(p.key_convention == COMMVQ_KEYS_PRE_ROPE || p.key_convention == COMMVQ_KEYS_POST_ROPE,
            COMMVQ_ERR_INVALID_ARGUMENT,
            std::string(fn) + "key_convention " + std::to_string(p.key_convention) + " is not a COMMVQ_KEYS_*");
    require(p.attn_scale >= 0 && p.attn_scale <= kMaxAttnScale, COMMVQ_ERR_INVALID_ARGUMENT, [&] {
        char scale[32];
        std::snprintf(scale, sizeof scale, "%g", double(p.attn_scale));
        return std::string(fn) + "attn_scale " + scale + " is outside 0.." + std::to_string(int(kMaxAttnScale)) +
               " (0 = 1/sqrt(head_dim)); a larger scale could overflow the scores";
    });
    require(p.n_threads <= kMaxThreads, COMMVQ_ERR_INVALID_ARGUMENT,
            std::string(fn) + "n_threads " + str(p.n_threads) + " is more than " + str(kMaxThreads));
    // What the codes' storage assumes of the codebook.
    require(cb.n_layers >= 1 && cb.n_kv_heads >= 1 && cb.n_q_heads % cb.n_kv_heads == 0,
            COMMVQ_ERR_SHAPE_MISMATCH, std::string(fn) + "the codebook's head counts are inconsistent");
    require(cb.value_code_bits() % 8 == 0 && cb.code_bits() <= 16, COMMVQ_ERR_SHAPE_MISMATCH,
            std::string(fn) + "the codebook's code widths are not supported");
    require(p.kv_head_count <= cb.n_kv_heads && p.kv_head_begin <= cb.n_kv_heads - p.kv_head_count &&
                (p.kv_head_count != 0 || p.kv_head_begin == 0),
            COMMVQ_ERR_INVALID_ARGUMENT, [&] {
                return std::string(fn) + "kv_head_begin " + str(p.kv_head_begin) + ", kv_head_count " +
                       str(p.kv_head_count) + " is not a range of the codebook's " + str(cb.n_kv_heads) +
                       " KV heads (kv_head_count 0 = all heads, with kv_head_begin 0)";
            });
    if (p.kv_head_count == 0) p.kv_head_count = cb.n_kv_heads;
    if (p.n_threads == 0) p.n_threads = std::max(1u, std::thread::hardware_concurrency());
    if (p.attn_scale == 0) p.attn_scale = float(1.0 / std::sqrt(double(cb.head_dim)));
    return p;
}

}  // namespace

Cache::Cache(const Codebook& cb, const commvq_cache_params_t& params)
    : params_(resolve_params(cb, params)),
      cb_(params_.kv_head_count == cb.n_kv_heads ? cb
                                                 : slice_codebook(cb, params_.kv_head_begin, params_.kv_head_count)),
      layout_(make_block_layout(cb_, params_.block_tokens)),
      pool_(uint32_t(blocks_for(params_.max_tokens, params_.block_tokens))) {
    const uint32_t n_blocks = pool_.capacity();

    BackendConfig config;
    config.n_blocks = n_blocks;
    config.max_seqs = params_.max_seqs;
    config.window = params_.window;
    config.sink_tokens = params_.sink_tokens;
    config.io_dtype = params_.io_dtype;
    config.key_convention = params_.key_convention;
    config.attn_scale = params_.attn_scale;
    config.n_threads = params_.n_threads;
    config.layout = layout_;
    if (params_.device == COMMVQ_DEVICE_CPU) {
        backend_ = make_cpu_backend(cb_, config);
    } else {
#ifdef COMMVQ_WITH_CUDA
        backend_ = make_cuda_backend(cb_, config, params_.device);
#else
        throw Error(COMMVQ_ERR_NOT_SUPPORTED, "commvq_cache_create: device " + std::to_string(params_.device) +
                                                  " asked for, but this library was built without CUDA");
#endif
    }

    seqs_.resize(params_.max_seqs);
    for (auto& s : seqs_) {
        // Every block table can hold the whole pool: no allocation later.
        s.blocks.reserve(n_blocks);
        s.layers.resize(cb_.n_layers);
    }
    append_rows_.resize(params_.max_seqs);
    seq_stamps_.assign(params_.max_seqs, 0);
    shared_writers_.assign(n_blocks, 0);
}

void Cache::check_layer(uint32_t layer, const char* fn) const {
    require(layer < cb_.n_layers, COMMVQ_ERR_OUT_OF_RANGE, [&] {
        return std::string(fn) + ": layer " + str(layer) + " out of range (the model has " + str(cb_.n_layers) +
               " layers)";
    });
}

void Cache::require_not_slice(const char* fn) const {
    require(!cb_.is_slice(), COMMVQ_ERR_NOT_SUPPORTED, [&] {
        return std::string(fn) + ": this cache holds KV heads " + str(cb_.kv_head_begin) + ".." +
               str(cb_.kv_head_begin + cb_.n_kv_heads - 1) + " of " + str(cb_.value_kv_heads) +
               "; sequence files hold all heads, and slice caches do not read or write them yet";
    });
}

void Cache::check_seq(uint32_t seq, const char* fn) const {
    require(seq < params_.max_seqs, COMMVQ_ERR_OUT_OF_RANGE, [&] {
        return std::string(fn) + ": sequence " + str(seq) + " out of range (max_seqs is " + str(params_.max_seqs) +
               ")";
    });
}

// Tokens leave the window (oldest first) once it would hold more than W.
uint64_t Cache::compressed_after(uint64_t length, uint64_t compressed) const {
    const uint64_t kept = uint64_t(params_.sink_tokens) + params_.window;
    return length > kept ? std::max(compressed, length - kept) : compressed;
}

uint64_t Cache::blocks_needed(const Sequence& s, uint64_t before, uint64_t after) const {
    if (after == before) return 0;
    const uint32_t bt = params_.block_tokens;
    const uint64_t table = s.blocks.size();
    const uint64_t first = before / bt, end = blocks_for(after, bt);
    uint64_t copies = 0;
    for (uint64_t j = first; j < std::min(end, table); ++j) copies += pool_.shared(s.blocks[j]);
    return (end > table ? end - table : 0) + copies;
}

// Gives the sequence its own copy of every shared block that compressed
// slots [before, after) fall in, and new blocks past its table. The caller
// has checked blocks_needed() against the free blocks, so nothing here can
// fail: the pool has the blocks, a shared block is in use, and the table's
// capacity is the whole pool.
void Cache::make_writable(Sequence& s, uint64_t before, uint64_t after) {
    if (after == before) return;
    const uint32_t bt = params_.block_tokens;
    const uint64_t first = before / bt, end = blocks_for(after, bt);
    for (uint64_t j = first; j < std::min<uint64_t>(end, s.blocks.size()); ++j) {
        if (!pool_.shared(s.blocks[j])) continue;
        const uint32_t copy = pool_.allocate();
        backend_->copy_block(s.blocks[j], copy);
        pool_.release(s.blocks[j]);
        s.blocks[j] = copy;
    }
    while (s.blocks.size() < end) s.blocks.push_back(pool_.allocate());
}

// Drops the table entries past `keep` blocks. release() checks every block
// before it frees any, and shrinking the table cannot fail: either nothing
// changes or all of it does.
void Cache::trim_blocks(Sequence& s, uint64_t keep) {
    if (s.blocks.size() <= keep) return;
    pool_.release(s.blocks.data() + keep, s.blocks.size() - keep);
    s.blocks.resize(keep);
}

LayerState Cache::append_state(const char* fn, uint32_t layer, uint32_t seq, uint32_t n_tokens,
                               int64_t entry) const {
    const Sequence& s = seqs_[seq];
    const LayerState before = s.layers[layer];
    const uint64_t frontier = s.frontier();
    const bool catches_up = before.length + n_tokens <= frontier;
    const bool leads = before.length == frontier && s.in_step();
    require(catches_up || leads, COMMVQ_ERR_INVALID_STATE, [&] {
        std::string lengths;
        for (uint32_t l = 0; l < cb_.n_layers; ++l) lengths += (l ? ", " : "") + str(s.layers[l].length);
        return std::string(fn) + (entry >= 0 ? ": entry " + str(uint64_t(entry)) : std::string()) +
               ": layers out of step: sequence " + str(seq) + " layer " + str(layer) + " holds " +
               str(before.length) + " tokens; " + str(n_tokens) +
               " more would pass the furthest layer before every layer has caught up (layer lengths: " + lengths +
               ")";
    });
    LayerState after;
    after.length = before.length + n_tokens;
    after.compressed = compressed_after(after.length, before.compressed);
    return after;
}

void Cache::append(uint32_t layer, uint32_t seq, uint32_t n_tokens, const void* k, const void* v) {
    const char* fn = "commvq_cache_append";
    check_layer(layer, fn);
    check_seq(seq, fn);
    require(n_tokens > 0, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_append: n_tokens is 0");
    require(k && v, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_append: k or v is NULL");
    Sequence& s = seqs_[seq];
    const LayerState before = s.layers[layer];
    const LayerState after = append_state(fn, layer, seq, n_tokens, -1);
    const uint64_t needed = blocks_needed(s, before.compressed, after.compressed);
    require(needed <= pool_.free_count(), COMMVQ_ERR_CAPACITY, [&] {
        return std::string(fn) + ": the block pool is full: this append needs " + str(needed) + " more blocks, " +
               str(pool_.free_count()) + " of " + str(pool_.capacity()) + " are free";
    });
    require_key_norms(fn, nullptr);
    for (const void* x : {k, v})
        if (backend_->host_readable(x))  // device memory: the host cannot look
            require_inputs(fn, x == k ? "k" : "v", "token", x, params_.io_dtype, n_tokens,
                           x == k ? cb_.key_dim() : cb_.value_dim());

    // Everything is checked; from here on nothing allocates or fails (the
    // CPU back end's append takes its memory at creation), so the cache
    // cannot be left half-changed.
    make_writable(s, before.compressed, after.compressed);
    const LayerView before_view = s.view(seq, layer, params_.sink_tokens);
    s.layers[layer] = after;
    const LayerView after_view = s.view(seq, layer, params_.sink_tokens);
    backend_->append(layer, before_view, after_view, n_tokens, k, v);
}

void Cache::append_batch(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                         const void* k, const void* v) {
    append_rows("commvq_cache_append_batch", layer, n_seqs, seq_ids, n_tokens, k, v, nullptr);
}

void Cache::append_norms2(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                          const void* k, const void* v, const double* key_norms2) {
    append_rows("commvq_cache_append_norms2", layer, n_seqs, seq_ids, n_tokens, k, v, key_norms2);
}

bool Cache::needs_key_norms() const { return cb_.needs_given_key_norms(); }

void Cache::require_key_norms(const char* fn, const double* key_norms2) const {
    require(key_norms2 || !needs_key_norms(), COMMVQ_ERR_INVALID_ARGUMENT, [&] {
        return std::string(fn) + ": this cache holds KV heads " + str(cb_.kv_head_begin) + ".." +
               str(cb_.kv_head_begin + cb_.n_kv_heads - 1) + " of " + str(cb_.value_kv_heads) +
               " in the token scale mode: a key's scale is its norm over all heads, so appends need the "
               "squared key norms of every head (commvq_cache_append_norms2 with key_norms2, docs/PARALLEL.md)";
    });
}

void Cache::key_norms2(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens, const void* k,
                       double* norms2) const {
    const char* fn = "commvq_cache_key_norms2";
    check_layer(layer, fn);
    require(n_seqs > 0, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_key_norms2: n_seqs is 0");
    require(n_tokens > 0, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_key_norms2: n_tokens is 0");
    require(seq_ids && k && norms2, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_key_norms2: seq_ids, k or norms2 is NULL");
    // Grown to the largest call: a steady stream of calls allocates nothing.
    if (norm_positions_.size() < n_seqs) norm_positions_.resize(n_seqs);
    uint64_t* positions = norm_positions_.data();
    for (uint32_t i = 0; i < n_seqs; ++i) {
        require(seq_ids[i] < params_.max_seqs, COMMVQ_ERR_OUT_OF_RANGE, [&] {
            return std::string(fn) + ": entry " + str(i) + ": sequence " + str(seq_ids[i]) +
                   " out of range (max_seqs is " + str(params_.max_seqs) + ")";
        });
        positions[i] = seqs_[seq_ids[i]].layers[layer].length;
    }
    require(uint64_t(n_seqs) * n_tokens <= std::numeric_limits<size_t>::max() / cb_.key_dim() / 8,
            COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_key_norms2: n_seqs * n_tokens is too large");
    if (backend_->host_readable(k)) require_batch_inputs(fn, "k", k, params_.io_dtype, n_seqs, n_tokens, cb_.key_dim());
    backend_->key_head_norms2(n_seqs, positions, n_tokens, k, norms2);
}

void Cache::append_rows(const char* fn, uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids,
                        uint32_t n_tokens, const void* k, const void* v, const double* key_norms2) {
    // Messages are made only on failure: the success path allocates nothing.
    const auto f = [fn] { return std::string(fn); };
    check_layer(layer, fn);
    require(n_seqs > 0, COMMVQ_ERR_INVALID_ARGUMENT, [&] { return f() + ": n_seqs is 0"; });
    require(n_tokens > 0, COMMVQ_ERR_INVALID_ARGUMENT, [&] { return f() + ": n_tokens is 0"; });
    require(seq_ids && k && v, COMMVQ_ERR_INVALID_ARGUMENT, [&] { return f() + ": seq_ids, k or v is NULL"; });
    require_key_norms(fn, key_norms2);

    // Every id in range and named once: a sequence's stamp is this call's
    // once an entry names it. (A new stamp per call; all cleared when the
    // counter wraps.)
    if (++stamp_ == 0) {
        std::fill(seq_stamps_.begin(), seq_stamps_.end(), 0u);
        stamp_ = 1;
    }
    for (uint32_t i = 0; i < n_seqs; ++i) {
        const uint32_t seq = seq_ids[i];
        require(seq < params_.max_seqs, COMMVQ_ERR_OUT_OF_RANGE, [&] {
            return std::string(fn) + ": entry " + str(i) + ": sequence " + str(seq) + " out of range (max_seqs is " +
                   str(params_.max_seqs) + ")";
        });
        require(seq_stamps_[seq] != stamp_, COMMVQ_ERR_INVALID_ARGUMENT, [&] {
            uint32_t first = 0;
            while (seq_ids[first] != seq) ++first;
            return std::string(fn) + ": entries " + str(first) + " and " + str(i) + " both name sequence " + str(seq) +
                   "; a batch appends to each sequence once (give a sequence several tokens with n_tokens)";
        });
        seq_stamps_[seq] = stamp_;
    }
    // Distinct ids: n_seqs <= max_seqs. The caller's rows must fit the
    // address space for their offsets to be computed.
    const uint64_t n_rows = uint64_t(n_seqs) * n_tokens;  // < 2^64
    const uint64_t token_bytes = uint64_t(cb_.value_dim()) * dtype_size(params_.io_dtype);  // >= keys'
    require(n_rows <= std::numeric_limits<size_t>::max() / token_bytes, COMMVQ_ERR_INVALID_ARGUMENT, [&] {
        return std::string(fn) + ": " + str(n_seqs) + " sequences of " + str(n_tokens) + " tokens of " +
               str(token_bytes) + " bytes each: k and v cannot be that large";
    });
    for (uint32_t i = 0; i < n_seqs; ++i) append_state(fn, layer, seq_ids[i], n_tokens, i);

    // Blocks: new table entries, plus a copy for every row that writes into
    // a shared block while it is still shared. Appended one after the
    // other, the writers of a block held by r tables copy it until the last
    // holder has it alone: min(writers, r - 1) copies. Nothing below throws
    // until the marks are cleared again.
    const uint32_t bt = params_.block_tokens;
    // The table entries row i writes into ([first, end)) and the new blocks it adds.
    struct Writes {
        uint64_t first = 0, end = 0, added = 0;
    };
    const auto writes = [&](uint32_t i) {
        const Sequence& s = seqs_[seq_ids[i]];
        const LayerState before = s.layers[layer];
        const uint64_t after = compressed_after(before.length + n_tokens, before.compressed);
        Writes w;
        if (after == before.compressed) return w;
        const uint64_t table = s.blocks.size(), end = blocks_for(after, bt);
        w.first = before.compressed / bt;
        w.end = std::min(end, table);
        w.added = end > table ? end - table : 0;
        return w;
    };
    uint64_t needed = 0;
    for (uint32_t i = 0; i < n_seqs; ++i) {
        const Writes w = writes(i);
        const Sequence& s = seqs_[seq_ids[i]];
        needed += w.added;
        for (uint64_t j = w.first; j < w.end; ++j)
            if (pool_.shared(s.blocks[j])) ++shared_writers_[s.blocks[j]];
    }
    for (uint32_t i = 0; i < n_seqs; ++i) {
        const Writes w = writes(i);
        const Sequence& s = seqs_[seq_ids[i]];
        for (uint64_t j = w.first; j < w.end; ++j) {
            uint32_t& writers = shared_writers_[s.blocks[j]];
            if (writers == 0) continue;
            needed += std::min<uint64_t>(writers, pool_.references(s.blocks[j]) - 1);
            writers = 0;
        }
    }
    require(needed <= pool_.free_count(), COMMVQ_ERR_CAPACITY, [&] {
        return std::string(fn) + ": the block pool is full: this batch needs " + str(needed) + " more blocks, " +
               str(pool_.free_count()) + " of " + str(pool_.capacity()) + " are free";
    });
    for (const void* x : {k, v})
        if (backend_->host_readable(x))
            require_batch_inputs(fn, x == k ? "k" : "v", x, params_.io_dtype, n_seqs, n_tokens,
                                 x == k ? cb_.key_dim() : cb_.value_dim());
    // The norms: every value finite and >= 0, the rows of this cache's own
    // heads what its keys give. Norms in device memory are not checked (the
    // host cannot look), as device inputs are not; the back end sums each
    // token's column in head order (key_scale.h).
    const size_t n_rows_all = size_t(n_rows);
    if (key_norms2 && backend_->host_readable(key_norms2)) {
        const uint32_t H = cb_.model_kv_heads();
        for (size_t i = 0; i < size_t(H) * n_rows_all; ++i)
            require(std::isfinite(key_norms2[i]) && key_norms2[i] >= 0, COMMVQ_ERR_INVALID_ARGUMENT, [&] {
                return f() + ": key_norms2 of head " + str(i / n_rows_all) + ", row " + str(i % n_rows_all) +
                       " is " + std::to_string(key_norms2[i]) + "; squared norms are finite and >= 0";
            });
        if (own_norms2_.size() < size_t(cb_.n_kv_heads) * n_rows_all)
            own_norms2_.resize(size_t(cb_.n_kv_heads) * n_rows_all);
        this->key_norms2(layer, n_seqs, seq_ids, n_tokens, k, own_norms2_.data());
        const double* mine = key_norms2 + size_t(cb_.kv_head_begin) * n_rows_all;
        for (size_t i = 0; i < size_t(cb_.n_kv_heads) * n_rows_all; ++i)
            require(mine[i] == own_norms2_[i], COMMVQ_ERR_INVALID_ARGUMENT, [&] {
                char got[64], want[64];
                std::snprintf(got, sizeof got, "%.17g", mine[i]);
                std::snprintf(want, sizeof want, "%.17g", own_norms2_[i]);
                return f() + ": key_norms2 of head " + str(cb_.kv_head_begin + i / n_rows_all) + ", row " +
                       str(i % n_rows_all) + " is " + got + ", but this cache's keys give " + want +
                       " (commvq_cache_key_norms2 before the append; rows [head][n_seqs][n_tokens])";
            });
    }

    // Everything is checked: the rows change in turn, as appends would,
    // with steps that cannot fail (make_writable has its blocks), then the
    // back end stores and encodes all rows at once.
    for (uint32_t i = 0; i < n_seqs; ++i) {
        const uint32_t seq = seq_ids[i];
        Sequence& s = seqs_[seq];
        const LayerState before = s.layers[layer];
        const LayerState after{before.length + n_tokens, compressed_after(before.length + n_tokens, before.compressed)};
        make_writable(s, before.compressed, after.compressed);
        append_rows_[i].before = s.view(seq, layer, params_.sink_tokens);
        s.layers[layer] = after;
        append_rows_[i].after = s.view(seq, layer, params_.sink_tokens);
    }
    if (needs_key_norms())
        backend_->append_batch_norms(layer, n_seqs, append_rows_.data(), n_tokens, k, v, key_norms2);
    else
        backend_->append_batch(layer, n_seqs, append_rows_.data(), n_tokens, k, v);
}

void Cache::attend(uint32_t layer, uint32_t seq, uint32_t n_queries, const void* q, void* out,
                   float* lse, uint32_t flags) {
    const char* fn = "commvq_cache_attend";
    check_layer(layer, fn);
    check_seq(seq, fn);
    require((flags & ~COMMVQ_ATTEND_NON_CAUSAL) == 0, COMMVQ_ERR_INVALID_ARGUMENT,
            [&] { return std::string(fn) + ": unknown flags " + str(flags); });
    require(n_queries > 0, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_attend: n_queries is 0");
    require(q && out, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_attend: q or out is NULL");
    const LayerView view = seqs_[seq].view(seq, layer, params_.sink_tokens);
    require(view.length > 0, COMMVQ_ERR_OUT_OF_RANGE, [&] {
        return std::string(fn) + ": sequence " + str(seq) + " holds no tokens in layer " + str(layer);
    });
    const bool causal = (flags & COMMVQ_ATTEND_NON_CAUSAL) == 0;
    require(!causal || n_queries <= view.length, COMMVQ_ERR_OUT_OF_RANGE, [&] {
        return std::string(fn) + ": " + str(n_queries) + " causal queries, but layer " + str(layer) +
               " of sequence " + str(seq) + " holds only " + str(view.length) +
               " tokens (query i sits at position length - n_queries + i)";
    });
    const size_t q_row = size_t(cb_.n_q_heads) * cb_.head_dim;
    if (backend_->host_readable(q)) require_inputs(fn, "q", "query", q, params_.io_dtype, n_queries, q_row);
    // Rows live in the cache's own buffer: it grows to the largest call
    // seen, so a steady stream of calls allocates nothing.
    rows_.resize(std::max<size_t>(rows_.size(), n_queries));
    for (uint32_t i = 0; i < n_queries; ++i)
        rows_[i] = {&view, causal ? view.length - n_queries + i + 1 : view.length};
    AttendCall call;
    call.layer = layer;
    call.n_rows = n_queries;
    call.rows = rows_.data();
    call.one_sequence = true;
    call.q = q;
    call.out = out;
    call.lse = lse;
    backend_->attend(call);
}

void Cache::attend_batch(uint32_t layer, uint32_t n_seqs, const uint32_t* seq_ids, const void* q,
                         void* out, float* lse, uint32_t flags) {
    const char* fn = "commvq_cache_attend_batch";
    check_layer(layer, fn);
    require((flags & ~COMMVQ_ATTEND_NON_CAUSAL) == 0, COMMVQ_ERR_INVALID_ARGUMENT,
            [&] { return std::string(fn) + ": unknown flags " + str(flags); });
    require(n_seqs > 0, COMMVQ_ERR_INVALID_ARGUMENT, "commvq_cache_attend_batch: n_seqs is 0");
    require(seq_ids && q && out, COMMVQ_ERR_INVALID_ARGUMENT,
            "commvq_cache_attend_batch: seq_ids, q or out is NULL");
    for (uint32_t i = 0; i < n_seqs; ++i) {
        check_seq(seq_ids[i], fn);
        require(seqs_[seq_ids[i]].layers[layer].length > 0, COMMVQ_ERR_OUT_OF_RANGE, [&] {
            return std::string(fn) + ": sequence " + str(seq_ids[i]) + " (entry " + str(i) +
                   ") holds no tokens in layer " + str(layer);
        });
    }
    const size_t q_row = size_t(cb_.n_q_heads) * cb_.head_dim;
    if (backend_->host_readable(q)) require_inputs(fn, "q", "entry", q, params_.io_dtype, n_seqs, q_row);
    views_.resize(std::max<size_t>(views_.size(), n_seqs));
    rows_.resize(std::max<size_t>(rows_.size(), n_seqs));
    for (uint32_t i = 0; i < n_seqs; ++i) {
        views_[i] = seqs_[seq_ids[i]].view(seq_ids[i], layer, params_.sink_tokens);
        // A decode query sits at its sequence's last position: it sees every
        // token, causal or not.
        rows_[i] = {&views_[i], views_[i].length};
    }
    AttendCall call;
    call.layer = layer;
    call.n_rows = n_seqs;
    call.rows = rows_.data();
    call.one_sequence = false;
    call.q = q;
    call.out = out;
    call.lse = lse;
    backend_->attend(call);
}

uint64_t Cache::seq_length(uint32_t seq) const {
    check_seq(seq, "commvq_cache_seq_length");
    return seqs_[seq].frontier();
}

void Cache::seq_clear(uint32_t seq) {
    check_seq(seq, "commvq_cache_seq_clear");
    Sequence& s = seqs_[seq];
    trim_blocks(s, 0);
    for (auto& l : s.layers) l = LayerState{};
}

void Cache::seq_truncate(uint32_t seq, uint64_t new_length) {
    const char* fn = "commvq_cache_seq_truncate";
    check_seq(seq, fn);
    Sequence& s = seqs_[seq];
    require(new_length <= s.frontier(), COMMVQ_ERR_OUT_OF_RANGE, [&] {
        return std::string(fn) + ": new_length " + str(new_length) + " is past the end of sequence " + str(seq) +
               " (" + str(s.frontier()) + " tokens)";
    });
    // The layers' compressed counts after the cut, first only computed: the
    // blocks are released (all or none), then the states change, which
    // cannot fail.
    const uint64_t S = params_.sink_tokens;
    const uint64_t cap = new_length > S ? new_length - S : 0;
    uint64_t max_compressed = 0;
    for (const auto& l : s.layers)
        max_compressed = std::max(max_compressed, l.length <= new_length ? l.compressed : std::min(l.compressed, cap));
    trim_blocks(s, blocks_for(max_compressed, params_.block_tokens));
    for (auto& l : s.layers) {
        if (l.length <= new_length) continue;
        l.length = new_length;
        l.compressed = std::min(l.compressed, cap);
    }
}

void Cache::seq_fork(uint32_t src, uint32_t dst) {
    const char* fn = "commvq_cache_seq_fork";
    check_seq(src, fn);
    check_seq(dst, fn);
    require(src != dst, COMMVQ_ERR_INVALID_ARGUMENT,
            [&] { return std::string(fn) + ": src and dst are both sequence " + str(src); });
    Sequence& from = seqs_[src];
    Sequence& to = seqs_[dst];
    require(to.frontier() == 0, COMMVQ_ERR_INVALID_STATE, [&] {
        return std::string(fn) + ": destination sequence " + str(dst) + " is not empty (" + str(to.frontier()) +
               " tokens)";
    });
    require(from.in_step(), COMMVQ_ERR_INVALID_STATE,
            [&] { return std::string(fn) + ": the layers of source sequence " + str(src) + " are out of step"; });
    // The copies into dst's own slots come first (dst is empty, so nobody
    // sees them if anything fails); retain() checks every block before it
    // counts any; the table and the layer states are then copied into room
    // reserved at creation, which cannot fail.
    backend_->copy_uncompressed(src, dst);
    pool_.retain(from.blocks.data(), from.blocks.size());
    to.blocks.assign(from.blocks.begin(), from.blocks.end());
    std::copy(from.layers.begin(), from.layers.end(), to.layers.begin());
}

void Cache::check_integrity() const {
    std::vector<uint32_t> refs(pool_.capacity(), 0);
    const uint64_t S = params_.sink_tokens;
    for (uint32_t seq = 0; seq < seqs_.size(); ++seq) {
        const Sequence& s = seqs_[seq];
        const auto fail = [&](const std::string& what) {
            throw Error(COMMVQ_ERR_INTERNAL, "cache integrity: sequence " + str(seq) + ": " + what);
        };
        if (s.blocks.size() != blocks_for(s.max_compressed(), params_.block_tokens))
            fail("its block table has " + str(s.blocks.size()) + " blocks for " + str(s.max_compressed()) +
                 " compressed tokens");
        for (uint32_t l = 0; l < s.layers.size(); ++l) {
            const LayerState& st = s.layers[l];
            const uint64_t sinks = std::min(st.length, S);
            if (st.compressed > st.length - sinks || st.length - sinks - st.compressed > params_.window)
                fail("layer " + str(l) + " holds " + str(st.length) + " tokens, " + str(st.compressed) +
                     " compressed: not sinks, codes and a window of at most " + str(params_.window));
        }
        for (uint32_t b : s.blocks) {
            if (b >= refs.size()) fail("its block table names block " + str(b) + " past the pool");
            ++refs[b];
        }
    }
    pool_.check(refs);
}

commvq_cache_stats_t Cache::stats() const {
    commvq_cache_stats_t st;
    std::memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    // Keys and values at 16 bits, one layer (a slice cache: its keys, all values).
    const uint64_t token_bytes_16 = (uint64_t(cb_.key_dim()) + cb_.value_dim()) * 2;
    const uint64_t token_bytes_io = (uint64_t(cb_.key_dim()) + cb_.value_dim()) * dtype_size(params_.io_dtype);
    for (const auto& s : seqs_) {
        const uint64_t len = s.frontier();
        if (len == 0) continue;
        ++st.n_seqs_used;
        st.tokens += len;
        st.compressed_tokens += s.layers[0].compressed;
        for (const auto& l : s.layers) st.bytes_window += (l.length - l.compressed) * token_bytes_io;
    }
    st.blocks_used = pool_.used_count();
    st.blocks_total = pool_.capacity();
    st.tokens_free = uint64_t(pool_.free_count()) * params_.block_tokens;
    st.bytes_compressed = st.blocks_used * layout_.block_bytes * cb_.n_layers;
    uint64_t codebook_bytes = 0;
    for (const auto& l : cb_.layers) {
        const auto& v = l.values;
        codebook_bytes += (l.keys.sub_centers.size() + v.lambda.size() + v.norm_weight.size() +
                           v.norm_bias.size() + v.enc1_weight.size() + v.enc1_bias.size() +
                           v.enc2_weight.size() + v.enc2_bias.size() + v.codebook.size()) *
                          sizeof(float);
    }
    for (const auto& c : cb_.cross) codebook_bytes += c.size() * sizeof(float);
    for (const auto& n : cb_.norms) codebook_bytes += n.size() * sizeof(float);
    st.bytes_codebook = codebook_bytes + backend_->bytes_codebook();
    st.bytes_reserved = codebook_bytes + backend_->bytes_reserved() +
                        uint64_t(seqs_.size()) * (uint64_t(pool_.capacity()) * sizeof(uint32_t) +
                                                  cb_.n_layers * sizeof(LayerState)) +
                        uint64_t(pool_.capacity()) * 2 * sizeof(uint32_t) +
                        uint64_t(seqs_.size()) * (sizeof(AppendRow) + sizeof(uint32_t)) +
                        uint64_t(shared_writers_.size()) * sizeof(uint32_t);
    st.bytes_per_compressed_token = double(layout_.token_bytes()) * cb_.n_layers;
    st.bytes_per_token_16bit = double(token_bytes_16) * cb_.n_layers;
    return st;
}

SequenceImage Cache::export_sequence(uint32_t seq) const {
    const Sequence& s = seqs_[seq];
    SequenceImage im;
    im.fingerprint = cb_.fingerprint;
    im.n_layers = cb_.n_layers;
    im.n_kv_heads = cb_.n_kv_heads;
    im.head_dim = cb_.head_dim;
    im.io_dtype = params_.io_dtype;
    im.key_convention = params_.key_convention;
    im.sink_tokens = params_.sink_tokens;
    im.token_bytes = uint32_t(layout_.token_bytes());
    im.length = s.frontier();
    const size_t half = size_t(cb_.value_dim()) * dtype_size(params_.io_dtype);
    im.compressed.resize(cb_.n_layers);
    im.codes.resize(cb_.n_layers);
    im.keys.resize(cb_.n_layers);
    im.values.resize(cb_.n_layers);
    for (uint32_t l = 0; l < cb_.n_layers; ++l) {
        const LayerView v = s.view(seq, l, params_.sink_tokens);
        im.compressed[l] = v.compressed;
        im.codes[l].resize(v.compressed * im.token_bytes);
        backend_->read_compressed(l, v, 0, v.compressed, im.codes[l].data());
        im.keys[l].resize((v.sinks + v.window) * half);
        im.values[l].resize((v.sinks + v.window) * half);
        backend_->read_uncompressed(l, v, 0, v.sinks, im.keys[l].data(), im.values[l].data());
        backend_->read_uncompressed(l, v, v.first_window_position(), v.window,
                                    im.keys[l].data() + v.sinks * half, im.values[l].data() + v.sinks * half);
    }
    return im;
}

void Cache::seq_save(uint32_t seq, const std::string& path) const {
    const char* fn = "commvq_cache_seq_save";
    check_seq(seq, fn);
    require_not_slice(fn);
    require(seqs_[seq].in_step(), COMMVQ_ERR_INVALID_STATE,
            [&] { return std::string(fn) + ": the layers of sequence " + str(seq) + " are out of step"; });
    write_sequence_file(export_sequence(seq), path);
}

uint64_t Cache::max_sequence_file_bytes() const {
    // Every layer at most full: all pool slots compressed, sinks and window
    // uncompressed. These products are bounded by the memory the cache holds.
    const uint64_t L = cb_.n_layers;
    const uint64_t compressed = uint64_t(pool_.capacity()) * params_.block_tokens * layout_.token_bytes();
    const uint64_t uncompressed = (uint64_t(params_.sink_tokens) + params_.window) * 2 * cb_.value_dim() *
                                  dtype_size(params_.io_dtype);
    return sequence_file_overhead_bytes(cb_.n_layers) + L * (compressed + uncompressed);
}

// The header's checks against this cache, in the order FORMATS.md lists
// them; the blocks the sequence needs.
uint64_t Cache::check_sequence_header(const SequenceImage& im, const std::string& path) const {
    const char* fn = "commvq_cache_seq_load";
    const auto in_file = [&] { return std::string(fn) + ": '" + path + "' "; };
    require(im.fingerprint == cb_.fingerprint, COMMVQ_ERR_CODEBOOK_MISMATCH, [&] {
        return in_file() + "was written under another codebook (fingerprint " + str(im.fingerprint) +
               ", this cache's " + str(cb_.fingerprint) + ")";
    });
    require(im.n_layers == cb_.n_layers && im.n_kv_heads == cb_.n_kv_heads && im.head_dim == cb_.head_dim &&
                im.token_bytes == layout_.token_bytes(),
            COMMVQ_ERR_SHAPE_MISMATCH, [&] { return in_file() + "has a model shape other than this codebook's"; });
    require(im.io_dtype == params_.io_dtype, COMMVQ_ERR_SHAPE_MISMATCH, [&] {
        return in_file() + "holds " + dtype_name(im.io_dtype) + " tokens; this cache's io_dtype is " +
               dtype_name(params_.io_dtype);
    });
    require(im.key_convention == params_.key_convention, COMMVQ_ERR_SHAPE_MISMATCH, [&] {
        return in_file() + "holds keys of the other key convention (PRE_ROPE / POST_ROPE) than this cache";
    });
    require(im.sink_tokens == params_.sink_tokens, COMMVQ_ERR_SHAPE_MISMATCH, [&] {
        return in_file() + "was saved with " + str(im.sink_tokens) + " sink tokens; this cache keeps " +
               str(params_.sink_tokens);
    });
    const uint64_t S = params_.sink_tokens;
    uint64_t max_compressed = 0;
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        const uint64_t c = im.compressed[l];
        require(c == 0 || im.length >= S + c, COMMVQ_ERR_CORRUPT,
                [&] { return in_file() + "layer " + str(l) + ": compressed tokens overlap the sinks"; });
        const uint64_t window = im.length - std::min(im.length, S) - c;
        require(window <= params_.window, COMMVQ_ERR_CAPACITY, [&] {
            return in_file() + "layer " + str(l) + " holds " + str(window) + " window tokens; this cache's window is " +
                   str(params_.window);
        });
        max_compressed = std::max(max_compressed, c);
    }
    const uint64_t needed = blocks_for(max_compressed, params_.block_tokens);
    require(needed <= pool_.free_count(), COMMVQ_ERR_CAPACITY, [&] {
        return in_file() + "needs " + str(needed) + " blocks; " + str(pool_.free_count()) + " are free";
    });
    return needed;
}

void Cache::seq_load(uint32_t seq, const std::string& path) {
    const char* fn = "commvq_cache_seq_load";
    check_seq(seq, fn);
    require_not_slice(fn);
    Sequence& s = seqs_[seq];
    require(s.frontier() == 0, COMMVQ_ERR_INVALID_STATE, [&] {
        return std::string(fn) + ": sequence " + str(seq) + " is not empty (" + str(s.frontier()) + " tokens)";
    });
    const auto in_file = [&] { return std::string(fn) + ": '" + path + "' "; };
    // The header is read and checked first. A file larger than any this
    // cache could take is judged on its header alone (which must then fail
    // a check: a header that fits the cache implies a file that fits) and
    // its payload is never read.
    SequenceFileReader file(path);
    if (file.size() > max_sequence_file_bytes()) {
        check_sequence_header(file.header(), path);
        throw Error(COMMVQ_ERR_CAPACITY, in_file() + "holds " + str(file.size()) +
                                             " bytes, more than any sequence this cache can take (" +
                                             str(max_sequence_file_bytes()) + ")");
    }
    const SequenceImage im = file.read();
    const uint64_t needed = check_sequence_header(im, path);
    // Codes index the codebook's tables, so they are checked like any input;
    // the uncompressed tokens obey the rule every input does (input_check.h).
    const uint32_t code_limit = cb_.sub_centers * cb_.sub_centers;
    std::vector<uint16_t> codes(size_t(cb_.n_kv_heads) * cb_.key_stages);
    std::vector<float> floats(layout_.n_key_scales + 1);  // the scales and the weight
    // A scale is the norm of a key (token scales: all heads; head scales:
    // one), so a key within the input rule has a scale of at most
    // kMaxInputMagnitude * sqrt(elements); a larger one could only make
    // attention overflow.
    const uint32_t scaled = cb_.scale_mode == COMMVQ_SCALE_TOKEN ? cb_.value_dim() : cb_.head_dim;
    const double max_scale = kMaxInputMagnitude * std::sqrt(double(scaled)) * (1 + 1e-6);
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        for (uint64_t t = 0; t < im.compressed[l]; ++t) {
            const uint8_t* token = im.codes[l].data() + t * im.token_bytes;
            unpack_codes(token, codes.size(), cb_.code_bits(), codes.data());
            for (uint16_t c : codes)
                require(c < code_limit, COMMVQ_ERR_CORRUPT, [&] { return in_file() + "holds a key code out of range"; });
            std::memcpy(floats.data(), token + layout_.key_code_bytes + layout_.value_code_bytes,
                        floats.size() * sizeof(float));  // packed tokens are not aligned
            for (float x : floats)
                require(std::isfinite(x), COMMVQ_ERR_CORRUPT,
                        [&] { return in_file() + "holds a non-finite scale or weight"; });
            for (uint32_t i = 0; i < layout_.n_key_scales; ++i)
                require(floats[i] >= 0 && floats[i] <= max_scale, COMMVQ_ERR_CORRUPT,
                        [&] { return in_file() + "holds a key scale no key within the input rule can have"; });
        }
        const size_t n = im.keys[l].size() / dtype_size(im.io_dtype);
        require(first_bad_input(im.keys[l].data(), im.io_dtype, n) == n &&
                    first_bad_input(im.values[l].data(), im.io_dtype, n) == n,
                COMMVQ_ERR_CORRUPT,
                [&] { return in_file() + "holds a key or value that is not finite or beyond the input bound"; });
    }

    // Everything is checked: taking free blocks (the table has room for the
    // whole pool) and copying the tokens in cannot fail.
    while (s.blocks.size() < needed) s.blocks.push_back(pool_.allocate());
    const size_t half = size_t(cb_.value_dim()) * dtype_size(params_.io_dtype);
    for (uint32_t l = 0; l < im.n_layers; ++l) {
        s.layers[l] = {im.length, im.compressed[l]};
        const LayerView v = s.view(seq, l, params_.sink_tokens);
        backend_->write_compressed(l, v, 0, v.compressed, im.codes[l].data());
        backend_->write_uncompressed(l, v, 0, v.sinks, im.keys[l].data(), im.values[l].data());
        backend_->write_uncompressed(l, v, v.first_window_position(), v.window,
                                     im.keys[l].data() + v.sinks * half, im.values[l].data() + v.sinks * half);
    }
}

void Cache::set_stream(void* stream) { backend_->set_stream(stream); }

void Cache::synchronize() { backend_->synchronize(); }

}  // namespace commvq
