// The cache functions of the C API: argument checks that need the C view
// (NULL pointers, struct sizes), then the cache (cache.h).
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "cache.h"
#include "guard.h"

using commvq::capi::guard;
using commvq::capi::require_arg;

namespace {

// sizeof(commvq_cache_params_t) up to 0.3.x: the struct ended at n_threads.
constexpr size_t kCacheParamsAlign = alignof(commvq_cache_params_t);
constexpr size_t kCacheParamsSize0_3 =
    (offsetof(commvq_cache_params_t, n_threads) + sizeof(uint32_t) + kCacheParamsAlign - 1) / kCacheParamsAlign *
    kCacheParamsAlign;
static_assert(kCacheParamsSize0_3 <= sizeof(commvq_cache_params_t), "the 0.3 struct is a prefix");

// What commvq_cache_create could not allocate: the sizes that decide the
// memory it takes at create time (a wrapped negative number from a binding
// shows up here as a value near 2^32).
std::string create_failure_message(const char* fn, const commvq_codebook_t* cb, const commvq_cache_params_t& p) {
    commvq_codebook_info_t info;
    commvq_codebook_info_init(&info);
    commvq_codebook_get_info(cb, &info);
    const unsigned long long uncompressed =
        static_cast<unsigned long long>(p.max_seqs) * (static_cast<unsigned long long>(p.window) + p.sink_tokens);
    return std::string(fn) + ": out of host memory for max_seqs " + std::to_string(p.max_seqs) + ", window " +
           std::to_string(p.window) + ", sink_tokens " + std::to_string(p.sink_tokens) + ", max_tokens " +
           std::to_string(p.max_tokens) + ", block_tokens " + std::to_string(p.block_tokens) + " (" +
           std::to_string(uncompressed) + " uncompressed tokens per layer = max_seqs x (window + sink_tokens); n_layers " +
           std::to_string(info.n_layers) + ", n_kv_heads " + std::to_string(info.n_kv_heads) + ", head_dim " +
           std::to_string(info.head_dim) + ")";
}

}  // namespace

extern "C" {

// The header's commvq_cache_params_init is a macro over the sized form;
// this file defines the function of that name for programs built before it.
#undef commvq_cache_params_init

COMMVQ_API void commvq_cache_params_init_size(commvq_cache_params_t* params, size_t size) {
    if (!params || size < sizeof(uint32_t)) return;
    commvq_cache_params_t d;
    std::memset(&d, 0, sizeof d);
    d.device = COMMVQ_DEVICE_CPU;
    d.max_seqs = 1;
    d.max_tokens = 65536;
    d.block_tokens = 64;
    d.window = 128;
    d.sink_tokens = 0;
    d.io_dtype = COMMVQ_DTYPE_F32;
    d.key_convention = COMMVQ_KEYS_PRE_ROPE;
    d.attn_scale = 0.0f;
    d.n_threads = 0;
    d.kv_head_begin = 0;
    d.kv_head_count = 0;
    // Only the caller's bytes are written: a struct from an older header is
    // shorter than ours.
    const size_t n = std::min(size, sizeof d);
    d.struct_size = uint32_t(n);
    std::memcpy(params, &d, n);
}

// Programs built before 0.4.0 call this with the struct they knew, which
// ended at n_threads: no more than that is written.
COMMVQ_API void commvq_cache_params_init(commvq_cache_params_t* params) {
    commvq_cache_params_init_size(params, kCacheParamsSize0_3);
}

COMMVQ_API commvq_status_t commvq_cache_create(const commvq_codebook_t* cb,
                                              const commvq_cache_params_t* params,
                                              commvq_cache_t** out) {
    return guard([&] {
        const char* fn = "commvq_cache_create";
        require_arg(cb, fn, "cb");
        require_arg(out, fn, "out");
        commvq_cache_params_t defaults;
        commvq_cache_params_init_size(&defaults, sizeof defaults);
        commvq_cache_params_t p = commvq::capi::read_params(params, defaults, fn, "params");
        // A struct from before 0.4.0 ends at n_threads; its size may count
        // the padding where kv_head_begin now sits: both new fields take
        // their defaults unless the caller's struct has kv_head_count.
        if (params->struct_size < offsetof(commvq_cache_params_t, kv_head_count) + sizeof(uint32_t)) {
            p.kv_head_begin = defaults.kv_head_begin;
            p.kv_head_count = defaults.kv_head_count;
        }
        try {
            auto cache = std::make_unique<commvq_cache>(cb->cb, p);
            *out = cache.release();
        } catch (const std::bad_alloc&) {
            throw commvq::Error(COMMVQ_ERR_OUT_OF_MEMORY, create_failure_message(fn, cb, p));
        } catch (const std::length_error&) {
            throw commvq::Error(COMMVQ_ERR_OUT_OF_MEMORY, create_failure_message(fn, cb, p));
        }
    });
}

COMMVQ_API void commvq_cache_destroy(commvq_cache_t* cache) { delete cache; }

COMMVQ_API commvq_status_t commvq_cache_append(commvq_cache_t* cache, uint32_t layer, uint32_t seq,
                                              uint32_t n_tokens, const void* k, const void* v) {
    return guard([&] {
        const char* fn = "commvq_cache_append";
        require_arg(cache, fn, "cache");
        require_arg(k, fn, "k");
        require_arg(v, fn, "v");
        cache->cache.append(layer, seq, n_tokens, k, v);
    });
}

COMMVQ_API commvq_status_t commvq_cache_append_batch(commvq_cache_t* cache, uint32_t layer, uint32_t n_seqs,
                                                    const uint32_t* seq_ids, uint32_t n_tokens, const void* k,
                                                    const void* v) {
    return guard([&] {
        const char* fn = "commvq_cache_append_batch";
        require_arg(cache, fn, "cache");
        require_arg(seq_ids, fn, "seq_ids");
        require_arg(k, fn, "k");
        require_arg(v, fn, "v");
        cache->cache.append_batch(layer, n_seqs, seq_ids, n_tokens, k, v);
    });
}

COMMVQ_API commvq_status_t commvq_cache_key_norms2(const commvq_cache_t* cache, uint32_t layer,
                                                  uint32_t n_seqs, const uint32_t* seq_ids,
                                                  uint32_t n_tokens, const void* k, double* norms2) {
    return guard([&] {
        const char* fn = "commvq_cache_key_norms2";
        require_arg(cache, fn, "cache");
        require_arg(seq_ids, fn, "seq_ids");
        require_arg(k, fn, "k");
        require_arg(norms2, fn, "norms2");
        cache->cache.key_norms2(layer, n_seqs, seq_ids, n_tokens, k, norms2);
    });
}

COMMVQ_API commvq_status_t commvq_cache_append_norms2(commvq_cache_t* cache, uint32_t layer,
                                                     uint32_t n_seqs, const uint32_t* seq_ids,
                                                     uint32_t n_tokens, const void* k, const void* v,
                                                     const double* key_norms2) {
    return guard([&] {
        const char* fn = "commvq_cache_append_norms2";
        require_arg(cache, fn, "cache");
        require_arg(seq_ids, fn, "seq_ids");
        require_arg(k, fn, "k");
        require_arg(v, fn, "v");
        cache->cache.append_norms2(layer, n_seqs, seq_ids, n_tokens, k, v, key_norms2);
    });
}

COMMVQ_API commvq_status_t commvq_cache_attend(commvq_cache_t* cache, uint32_t layer, uint32_t seq,
                                              uint32_t n_queries, const void* q, void* out,
                                              float* lse, uint32_t flags) {
    return guard([&] {
        const char* fn = "commvq_cache_attend";
        require_arg(cache, fn, "cache");
        require_arg(q, fn, "q");
        require_arg(out, fn, "out");
        cache->cache.attend(layer, seq, n_queries, q, out, lse, flags);
    });
}

COMMVQ_API commvq_status_t commvq_cache_attend_batch(commvq_cache_t* cache, uint32_t layer,
                                                    uint32_t n_seqs, const uint32_t* seq_ids,
                                                    const void* q, void* out, float* lse,
                                                    uint32_t flags) {
    return guard([&] {
        const char* fn = "commvq_cache_attend_batch";
        require_arg(cache, fn, "cache");
        require_arg(seq_ids, fn, "seq_ids");
        require_arg(q, fn, "q");
        require_arg(out, fn, "out");
        cache->cache.attend_batch(layer, n_seqs, seq_ids, q, out, lse, flags);
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_length(const commvq_cache_t* cache, uint32_t seq,
                                                  uint64_t* length) {
    return guard([&] {
        const char* fn = "commvq_cache_seq_length";
        require_arg(cache, fn, "cache");
        require_arg(length, fn, "length");
        *length = cache->cache.seq_length(seq);
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_clear(commvq_cache_t* cache, uint32_t seq) {
    return guard([&] {
        require_arg(cache, "commvq_cache_seq_clear", "cache");
        cache->cache.seq_clear(seq);
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_truncate(commvq_cache_t* cache, uint32_t seq,
                                                    uint64_t new_length) {
    return guard([&] {
        require_arg(cache, "commvq_cache_seq_truncate", "cache");
        cache->cache.seq_truncate(seq, new_length);
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_fork(commvq_cache_t* cache, uint32_t src, uint32_t dst) {
    return guard([&] {
        require_arg(cache, "commvq_cache_seq_fork", "cache");
        cache->cache.seq_fork(src, dst);
    });
}

COMMVQ_API void commvq_cache_stats_init(commvq_cache_stats_t* stats) {
    if (!stats) return;
    std::memset(stats, 0, sizeof *stats);
    stats->struct_size = sizeof *stats;
}

COMMVQ_API commvq_status_t commvq_cache_get_stats(const commvq_cache_t* cache,
                                                 commvq_cache_stats_t* stats) {
    return guard([&] {
        const char* fn = "commvq_cache_get_stats";
        require_arg(cache, fn, "cache");
        commvq::capi::write_struct(stats, cache->cache.stats(), fn, "stats");
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_save(const commvq_cache_t* cache, uint32_t seq,
                                                const char* path) {
    return guard([&] {
        require_arg(cache, "commvq_cache_seq_save", "cache");
        require_arg(path, "commvq_cache_seq_save", "path");
        cache->cache.seq_save(seq, path);
    });
}

COMMVQ_API commvq_status_t commvq_cache_seq_load(commvq_cache_t* cache, uint32_t seq,
                                                const char* path) {
    return guard([&] {
        require_arg(cache, "commvq_cache_seq_load", "cache");
        require_arg(path, "commvq_cache_seq_load", "path");
        cache->cache.seq_load(seq, path);
    });
}

COMMVQ_API commvq_status_t commvq_cache_set_stream(commvq_cache_t* cache, void* cuda_stream) {
    return guard([&] {
        require_arg(cache, "commvq_cache_set_stream", "cache");
        cache->cache.set_stream(cuda_stream);
    });
}

COMMVQ_API commvq_status_t commvq_cache_synchronize(commvq_cache_t* cache) {
    return guard([&] {
        require_arg(cache, "commvq_cache_synchronize", "cache");
        cache->cache.synchronize();
    });
}

}  // extern "C"
