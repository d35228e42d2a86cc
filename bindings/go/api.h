/* The C side of the Go binding: a table of libcommvq's functions, resolved
 * with dlopen/dlsym when the library is opened. The function pointer types
 * come from include/commvq/commvq.h itself (__typeof__), so the table cannot
 * disagree with the header; only the call trampolines below repeat parameter
 * lists, and the compiler checks those against the same types (and
 * bindings/tools/check_declarations.py compares them with the header). */
#ifndef COMMVQ_GO_API_H
#define COMMVQ_GO_API_H

#include <stddef.h>
#include <stdint.h>

#include "commvq/commvq.h"

/* Every public function of commvq.h, without its commvq_ prefix. */
#define COMMVQ_GO_FUNCTIONS(X)                                                                  \
    X(version_number) X(version_string) X(status_string) X(last_error) X(cuda_available)        \
    X(device_count) X(codebook_info_init) X(codebook_load) X(codebook_load_memory)               \
    X(codebook_save) X(codebook_save_as) X(codebook_free) X(codebook_get_info)                   \
    X(codebook_encode_keys) X(codebook_reconstruct) X(cache_params_init_size) X(cache_params_init) X(cache_create)         \
    X(cache_destroy) X(cache_append) X(cache_append_batch) X(cache_key_norms2)             \
    X(cache_append_norms2) X(cache_attend) X(cache_attend_batch)  \
    X(cache_seq_length) X(cache_seq_clear) X(cache_seq_truncate) X(cache_seq_fork) X(cache_stats_init) \
    X(cache_get_stats) X(cache_seq_save) X(cache_seq_load) X(cache_set_stream)                   \
    X(cache_synchronize) X(train_params_init) X(train)

typedef struct commvq_go_api {
    void* handle;
#define COMMVQ_GO_FIELD(name) __typeof__(&commvq_##name) name;
    COMMVQ_GO_FUNCTIONS(COMMVQ_GO_FIELD)
#undef COMMVQ_GO_FIELD
} commvq_go_api;

/* Opens the library at path (a file, or a name for the loader's search
 * path), checks its major version and resolves every function. Returns NULL
 * and a message in error on failure. The table is never freed: handles
 * finalized late still need it. */
commvq_go_api* commvq_go_open(const char* path, char* error, size_t error_size);

/* Call trampolines: Go cannot call through a C function pointer. */
static inline uint32_t cq_version_number(const commvq_go_api* a) { return a->version_number(); }
static inline const char* cq_version_string(const commvq_go_api* a) { return a->version_string(); }
static inline const char* cq_status_string(const commvq_go_api* a, commvq_status_t status) {
    return a->status_string(status);
}
static inline const char* cq_last_error(const commvq_go_api* a) { return a->last_error(); }
static inline int32_t cq_cuda_available(const commvq_go_api* a) { return a->cuda_available(); }
static inline int32_t cq_device_count(const commvq_go_api* a) { return a->device_count(); }
static inline void cq_codebook_info_init(const commvq_go_api* a, commvq_codebook_info_t* info) {
    a->codebook_info_init(info);
}
static inline commvq_status_t cq_codebook_load(const commvq_go_api* a, const char* path, commvq_codebook_t** out) {
    return a->codebook_load(path, out);
}
static inline commvq_status_t cq_codebook_load_memory(const commvq_go_api* a, const void* data, size_t size,
                                                      commvq_codebook_t** out) {
    return a->codebook_load_memory(data, size, out);
}
static inline commvq_status_t cq_codebook_save(const commvq_go_api* a, const commvq_codebook_t* cb,
                                               const char* path) {
    return a->codebook_save(cb, path);
}
static inline commvq_status_t cq_codebook_save_as(const commvq_go_api* a, const commvq_codebook_t* cb,
                                                  const char* path, int32_t dtype) {
    return a->codebook_save_as(cb, path, dtype);
}
static inline void cq_codebook_free(const commvq_go_api* a, commvq_codebook_t* cb) { a->codebook_free(cb); }
static inline commvq_status_t cq_codebook_get_info(const commvq_go_api* a, const commvq_codebook_t* cb,
                                                   commvq_codebook_info_t* info) {
    return a->codebook_get_info(cb, info);
}
static inline commvq_status_t cq_codebook_encode_keys(const commvq_go_api* a, const commvq_codebook_t* cb,
                                                      uint32_t layer, uint32_t n_tokens, const float* k,
                                                      uint16_t* codes, float* scales) {
    return a->codebook_encode_keys(cb, layer, n_tokens, k, codes, scales);
}
static inline commvq_status_t cq_codebook_reconstruct(const commvq_go_api* a, const commvq_codebook_t* cb,
                                                      uint32_t layer, uint32_t n_tokens, const float* k,
                                                      const float* v, float* k_out, float* v_out) {
    return a->codebook_reconstruct(cb, layer, n_tokens, k, v, k_out, v_out);
}
static inline void cq_cache_params_init_size(const commvq_go_api* a, commvq_cache_params_t* params, size_t size) {
    a->cache_params_init_size(params, size);
}
static inline void cq_cache_params_init(const commvq_go_api* a, commvq_cache_params_t* params) {
    a->cache_params_init(params);
}
static inline commvq_status_t cq_cache_create(const commvq_go_api* a, const commvq_codebook_t* cb,
                                              const commvq_cache_params_t* params, commvq_cache_t** out) {
    return a->cache_create(cb, params, out);
}
static inline void cq_cache_destroy(const commvq_go_api* a, commvq_cache_t* cache) { a->cache_destroy(cache); }
static inline commvq_status_t cq_cache_append(const commvq_go_api* a, commvq_cache_t* cache, uint32_t layer,
                                              uint32_t seq, uint32_t n_tokens, const void* k, const void* v) {
    return a->cache_append(cache, layer, seq, n_tokens, k, v);
}
static inline commvq_status_t cq_cache_append_batch(const commvq_go_api* a, commvq_cache_t* cache, uint32_t layer,
                                                    uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                                                    const void* k, const void* v) {
    return a->cache_append_batch(cache, layer, n_seqs, seq_ids, n_tokens, k, v);
}
static inline commvq_status_t cq_cache_key_norms2(const commvq_go_api* a, const commvq_cache_t* cache, uint32_t layer,
                                                  uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                                                  const void* k, double* norms2) {
    return a->cache_key_norms2(cache, layer, n_seqs, seq_ids, n_tokens, k, norms2);
}
static inline commvq_status_t cq_cache_append_norms2(const commvq_go_api* a, commvq_cache_t* cache, uint32_t layer,
                                                     uint32_t n_seqs, const uint32_t* seq_ids, uint32_t n_tokens,
                                                     const void* k, const void* v, const double* key_norms2) {
    return a->cache_append_norms2(cache, layer, n_seqs, seq_ids, n_tokens, k, v, key_norms2);
}
static inline commvq_status_t cq_cache_attend(const commvq_go_api* a, commvq_cache_t* cache, uint32_t layer,
                                              uint32_t seq, uint32_t n_queries, const void* q, void* out,
                                              float* lse, uint32_t flags) {
    return a->cache_attend(cache, layer, seq, n_queries, q, out, lse, flags);
}
static inline commvq_status_t cq_cache_attend_batch(const commvq_go_api* a, commvq_cache_t* cache, uint32_t layer,
                                                    uint32_t n_seqs, const uint32_t* seq_ids, const void* q,
                                                    void* out, float* lse, uint32_t flags) {
    return a->cache_attend_batch(cache, layer, n_seqs, seq_ids, q, out, lse, flags);
}
static inline commvq_status_t cq_cache_seq_length(const commvq_go_api* a, const commvq_cache_t* cache, uint32_t seq,
                                                  uint64_t* length) {
    return a->cache_seq_length(cache, seq, length);
}
static inline commvq_status_t cq_cache_seq_clear(const commvq_go_api* a, commvq_cache_t* cache, uint32_t seq) {
    return a->cache_seq_clear(cache, seq);
}
static inline commvq_status_t cq_cache_seq_truncate(const commvq_go_api* a, commvq_cache_t* cache, uint32_t seq,
                                                    uint64_t new_length) {
    return a->cache_seq_truncate(cache, seq, new_length);
}
static inline commvq_status_t cq_cache_seq_fork(const commvq_go_api* a, commvq_cache_t* cache, uint32_t src,
                                                uint32_t dst) {
    return a->cache_seq_fork(cache, src, dst);
}
static inline void cq_cache_stats_init(const commvq_go_api* a, commvq_cache_stats_t* stats) {
    a->cache_stats_init(stats);
}
static inline commvq_status_t cq_cache_get_stats(const commvq_go_api* a, const commvq_cache_t* cache,
                                                 commvq_cache_stats_t* stats) {
    return a->cache_get_stats(cache, stats);
}
static inline commvq_status_t cq_cache_seq_save(const commvq_go_api* a, const commvq_cache_t* cache, uint32_t seq,
                                                const char* path) {
    return a->cache_seq_save(cache, seq, path);
}
static inline commvq_status_t cq_cache_seq_load(const commvq_go_api* a, commvq_cache_t* cache, uint32_t seq,
                                                const char* path) {
    return a->cache_seq_load(cache, seq, path);
}
static inline commvq_status_t cq_cache_set_stream(const commvq_go_api* a, commvq_cache_t* cache,
                                                  void* cuda_stream) {
    return a->cache_set_stream(cache, cuda_stream);
}
static inline commvq_status_t cq_cache_synchronize(const commvq_go_api* a, commvq_cache_t* cache) {
    return a->cache_synchronize(cache);
}
static inline void cq_train_params_init(const commvq_go_api* a, commvq_train_params_t* params) {
    a->train_params_init(params);
}
static inline commvq_status_t cq_train(const commvq_go_api* a, const commvq_train_params_t* params,
                                       uint32_t n_layers, uint32_t n_kv_heads, uint32_t head_dim,
                                       uint64_t n_tokens, const float* keys, const float* values,
                                       commvq_codebook_t** out) {
    return a->train(params, n_layers, n_kv_heads, head_dim, n_tokens, keys, values, out);
}

#endif
