/*
 * libcommvq: a KV cache compressed with CommVQ (commutative vector
 * quantization) to 1 or 2 bits per element, with attention computed directly
 * from the compressed codes.
 *
 * This header is the whole public contract. It is C99 and C++; no C++ type,
 * CUDA type, bool or enum-sized field crosses it. See docs/API.md for each
 * function's contract and docs/ABI.md for the stability promise.
 *
 * Conventions
 *  - Every fallible call returns commvq_status_t (0 = COMMVQ_OK) and hands
 *    results back through out-parameters, which are written only on success.
 *  - A call that fails changes nothing.
 *  - commvq_last_error() is the calling thread's message for its last failure.
 *  - The caller owns every buffer it passes; the library keeps no caller
 *    pointer after a call returns.
 *  - Parameter structs start with struct_size, are filled by *_init(), and
 *    only ever grow at the end.
 *  - Threads: the library is thread-safe, but one handle must not be used by
 *    two threads at once. Distinct handles are independent.
 */
#ifndef COMMVQ_COMMVQ_H
#define COMMVQ_COMMVQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- export ------------------------------------------------------------ */
#if defined(COMMVQ_STATIC_DEFINE)
#define COMMVQ_API
#elif defined(_WIN32)
#ifdef COMMVQ_BUILDING_LIBRARY
#define COMMVQ_API __declspec(dllexport)
#else
#define COMMVQ_API __declspec(dllimport)
#endif
#else
#define COMMVQ_API __attribute__((visibility("default")))
#endif

/* ---- version ----------------------------------------------------------- */
#define COMMVQ_VERSION_MAJOR 0
#define COMMVQ_VERSION_MINOR 4
#define COMMVQ_VERSION_PATCH 0
#define COMMVQ_VERSION_NUMBER \
    (COMMVQ_VERSION_MAJOR * 10000 + COMMVQ_VERSION_MINOR * 100 + COMMVQ_VERSION_PATCH)

/* The version of the library actually loaded (may differ from the header). */
COMMVQ_API uint32_t commvq_version_number(void);
COMMVQ_API const char* commvq_version_string(void);

/* ---- status ------------------------------------------------------------ */
/* Values are pinned forever; new codes may be added. */
typedef int32_t commvq_status_t;

#define COMMVQ_OK 0
/* caller errors */
#define COMMVQ_ERR_INVALID_ARGUMENT 1 /* null pointer, bad enum, bad flag */
#define COMMVQ_ERR_SHAPE_MISMATCH 2   /* sizes that disagree with the codebook or cache */
#define COMMVQ_ERR_OUT_OF_RANGE 3     /* unknown layer or sequence, position past the end */
#define COMMVQ_ERR_INVALID_STATE 4    /* call not allowed now (e.g. layers of a sequence out of step) */
/* resources */
#define COMMVQ_ERR_CAPACITY 10      /* the block pool or sequence table is full */
#define COMMVQ_ERR_OUT_OF_MEMORY 11 /* host or device allocation failed */
/* files and data */
#define COMMVQ_ERR_IO 20              /* a file could not be opened, read or written */
#define COMMVQ_ERR_FORMAT 21          /* not a file of the expected kind, or a version we cannot read */
#define COMMVQ_ERR_CORRUPT 22         /* truncated file or checksum mismatch */
#define COMMVQ_ERR_CODEBOOK_MISMATCH 23 /* data made under another codebook */
/* environment */
#define COMMVQ_ERR_NOT_SUPPORTED 30 /* e.g. a CUDA device in a build without CUDA */
#define COMMVQ_ERR_CUDA 31          /* a CUDA runtime or cuBLAS call failed */
#define COMMVQ_ERR_CANCELLED 32     /* a callback asked to stop */
#define COMMVQ_ERR_INTERNAL 99      /* a bug in the library; please report */

/* A static name for a status, e.g. "COMMVQ_ERR_CAPACITY". Never NULL. */
COMMVQ_API const char* commvq_status_string(commvq_status_t status);
/* The calling thread's message for its last failed call ("" if none). Valid
 * until the same thread's next call into the library. Never NULL. */
COMMVQ_API const char* commvq_last_error(void);

/* ---- capabilities -------------------------------------------------------- */
/* 1 when the library was built with CUDA and a device is usable, else 0. */
COMMVQ_API int32_t commvq_cuda_available(void);
/* Number of usable CUDA devices (0 without CUDA). */
COMMVQ_API int32_t commvq_device_count(void);

/* ---- enumerations (plain integers in structs) ---------------------------- */
#define COMMVQ_DEVICE_CPU (-1) /* device field: CPU; 0, 1, ... are CUDA ordinals */

#define COMMVQ_DTYPE_F32 0
#define COMMVQ_DTYPE_F16 1
#define COMMVQ_DTYPE_BF16 2

#define COMMVQ_KEYS_PRE_ROPE 0  /* keys handed to append are before RoPE */
#define COMMVQ_KEYS_POST_ROPE 1 /* keys are after RoPE (un-rotated internally) */

#define COMMVQ_PAIRS_ROTATE_HALF 0 /* pair j = (x[j], x[j + d/2]): HF LLaMA, Qwen, Mistral */
#define COMMVQ_PAIRS_INTERLEAVED 1 /* pair j = (x[2j], x[2j + 1]): GPT-J, Meta LLaMA */

#define COMMVQ_SCALE_TOKEN 0 /* one key scale per token: norm over all KV heads */
#define COMMVQ_SCALE_HEAD 1  /* one key scale per token and KV head */

#define COMMVQ_ROPE_SCALING_NONE 0
#define COMMVQ_ROPE_SCALING_LINEAR 1
#define COMMVQ_ROPE_SCALING_LLAMA3 2

/* attend flags */
#define COMMVQ_ATTEND_CAUSAL 0u
#define COMMVQ_ATTEND_NON_CAUSAL 1u /* every query sees every token of the sequence */

/* ---- codebook ------------------------------------------------------------ */
typedef struct commvq_codebook commvq_codebook_t;

typedef struct commvq_rope_info {
    double theta;
    int32_t scaling;            /* COMMVQ_ROPE_SCALING_* */
    double factor;              /* linear and llama3 */
    double low_freq_factor;     /* llama3 */
    double high_freq_factor;    /* llama3 */
    double original_max_position; /* llama3 */
} commvq_rope_info_t;

typedef struct commvq_codebook_info {
    uint32_t struct_size;
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint32_t n_q_heads;
    uint32_t head_dim;
    uint32_t key_stages;   /* R: residual stages of the key codebook */
    uint32_t sub_centers;  /* C: sub-centers per stage (64: codes of 12 bits) */
    uint32_t value_bits;   /* 1 or 2 bits per value element */
    uint32_t value_hidden; /* I: inner width of the value encoder */
    int32_t pair_layout;   /* COMMVQ_PAIRS_* */
    int32_t scale_mode;    /* COMMVQ_SCALE_* */
    uint32_t format_version;
    commvq_rope_info_t rope;
    uint64_t fingerprint; /* hash of the shape and every parameter */
    uint32_t compressed_token_bytes; /* bytes one compressed token takes in one layer */
    uint32_t reserved_;
} commvq_codebook_info_t;

COMMVQ_API void commvq_codebook_info_init(commvq_codebook_info_t* info);

/* Load a codebook from a safetensors file (docs/FORMATS.md); its tensors may
 * be F32, F16 or BF16 and are widened exactly to float32. */
COMMVQ_API commvq_status_t commvq_codebook_load(const char* path, commvq_codebook_t** out);
/* The same from bytes in memory; the bytes are copied. */
COMMVQ_API commvq_status_t commvq_codebook_load_memory(const void* data, size_t size,
                                                      commvq_codebook_t** out);
/* Writes the codebook file with every tensor in float32: loading it gives
 * back the same values and fingerprint. */
COMMVQ_API commvq_status_t commvq_codebook_save(const commvq_codebook_t* cb, const char* path);
/* The same with a storage dtype: COMMVQ_DTYPE_F32 (as commvq_codebook_save),
 * COMMVQ_DTYPE_F16 or COMMVQ_DTYPE_BF16, which round the key sub-centers and
 * the value encoder's and codebook's matrices to that type (about half the
 * file) and keep the per-channel vectors in float32. The file's fingerprint
 * is that of the rounded values (what loading it gives), so it differs from
 * cb's unless the rounding changes nothing (docs/FORMATS.md). */
COMMVQ_API commvq_status_t commvq_codebook_save_as(const commvq_codebook_t* cb, const char* path,
                                                  int32_t dtype);
COMMVQ_API void commvq_codebook_free(commvq_codebook_t* cb); /* NULL is fine */
/* Fills the first min(info->struct_size, sizeof) bytes; set struct_size first
 * (commvq_codebook_info_init does). */
COMMVQ_API commvq_status_t commvq_codebook_get_info(const commvq_codebook_t* cb,
                                                   commvq_codebook_info_t* info);

/* Codes of n_tokens pre-RoPE keys [n_tokens][n_kv_heads][head_dim] (float32,
 * the model's pair layout) of one layer: codes [n_tokens][n_kv_heads][key_stages]
 * (stage code A * sub_centers + B) and scales [n_tokens][n_key_scales]
 * (1 for the token scale mode, n_kv_heads for the head mode). For tools and
 * tests; the cache encodes by itself. */
COMMVQ_API commvq_status_t commvq_codebook_encode_keys(const commvq_codebook_t* cb, uint32_t layer,
                                                      uint32_t n_tokens, const float* k,
                                                      uint16_t* codes, float* scales);
/* Encodes and decodes n_tokens tokens of one layer ("fake quantization"):
 * k and v are float32 [n_tokens][n_kv_heads][head_dim], keys pre-RoPE;
 * k_out and v_out receive what the cache's attention sees for them. Either
 * pair (k, k_out) or (v, v_out) may be NULL to skip it. */
COMMVQ_API commvq_status_t commvq_codebook_reconstruct(const commvq_codebook_t* cb, uint32_t layer,
                                                      uint32_t n_tokens, const float* k,
                                                      const float* v, float* k_out, float* v_out);

/* ---- cache --------------------------------------------------------------- */
typedef struct commvq_cache commvq_cache_t;

typedef struct commvq_cache_params {
    uint32_t struct_size;
    int32_t device;         /* COMMVQ_DEVICE_CPU or a CUDA ordinal; default CPU */
    uint32_t max_seqs;      /* sequence ids are 0 .. max_seqs-1; default 1 */
    uint64_t max_tokens;    /* compressed tokens the block pool holds, all sequences together; default 65536 */
    uint32_t block_tokens;  /* tokens per block of the pool; default 64 */
    uint32_t window;        /* recent tokens kept uncompressed; default 128, 0 allowed */
    uint32_t sink_tokens;   /* first tokens kept uncompressed; default 0 */
    int32_t io_dtype;       /* COMMVQ_DTYPE_* of keys, values, queries and outputs; default F32 */
    int32_t key_convention; /* COMMVQ_KEYS_PRE_ROPE or _POST_ROPE; default PRE_ROPE */
    float attn_scale;       /* 0 = 1/sqrt(head_dim) */
    uint32_t n_threads;     /* CPU worker threads; 0 = all cores; default 0 */
    /* Fields added later; a caller built against an older header passes a
     * smaller struct_size and gets their defaults. Since 0.4.0: */
    uint32_t kv_head_begin; /* the first KV head the cache holds; default 0 */
    uint32_t kv_head_count; /* KV heads [kv_head_begin, kv_head_begin + kv_head_count) the cache holds
                               (a tensor-parallel rank's slice, docs/PARALLEL.md); 0 = all (default).
                               A slice cache's k, q, out and lse carry its heads only (query heads follow
                               by group), v all of the model's KV heads. CPU and CUDA caches. */
} commvq_cache_params_t;

/* Fills the defaults into the first min(size, sizeof) bytes of *params and
 * sets struct_size to that. Pass sizeof *params, as the macro
 * commvq_cache_params_init(params) does: a program built against this header
 * then never has more written than its struct holds, whatever the
 * library's version. Since 0.4.0. */
COMMVQ_API void commvq_cache_params_init_size(commvq_cache_params_t* params, size_t size);
/* The function programs built before 0.4.0 call: it fills the struct as it
 * was until then (up to n_threads) and no more. New code reaches
 * commvq_cache_params_init_size through the macro below; a binding that
 * loads symbols by name calls commvq_cache_params_init_size with its
 * struct's size. */
COMMVQ_API void commvq_cache_params_init(commvq_cache_params_t* params);
#define commvq_cache_params_init(params) commvq_cache_params_init_size((params), sizeof *(params))

/* Creates a cache for the model the codebook describes. The cache keeps its
 * own copy of what it needs of the codebook; cb may be freed afterwards. All
 * memory (block pool, windows, tables) is taken here, none later. */
COMMVQ_API commvq_status_t commvq_cache_create(const commvq_codebook_t* cb,
                                              const commvq_cache_params_t* params,
                                              commvq_cache_t** out);
COMMVQ_API void commvq_cache_destroy(commvq_cache_t* cache); /* NULL is fine */

/* Appends n_tokens new tokens of sequence seq to one layer. k and v are
 * [n_tokens][n_kv_heads][head_dim] in io_dtype; their positions continue the
 * layer's tokens. The layers of a sequence move in step: a layer may catch up
 * to the sequence's furthest layer, and may go beyond it only when every
 * layer has caught up (COMMVQ_ERR_INVALID_STATE otherwise). Tokens that leave
 * the window are encoded here. */
COMMVQ_API commvq_status_t commvq_cache_append(commvq_cache_t* cache, uint32_t layer,
                                              uint32_t seq, uint32_t n_tokens,
                                              const void* k, const void* v);

/* Appends n_tokens new tokens to each of n_seqs sequences of one layer in one
 * call (a decode step of a batch: n_tokens = 1). k and v are
 * [n_seqs][n_tokens][n_kv_heads][head_dim] in io_dtype; row s belongs to
 * seq_ids[s], and the ids are distinct. The result is that of
 * commvq_cache_append for each row in turn, but all or nothing: every row is
 * checked (ids, layers in step, blocks for all rows together, the input
 * rule) before any changes. Since 0.3.0. */
COMMVQ_API commvq_status_t commvq_cache_append_batch(commvq_cache_t* cache, uint32_t layer,
                                                    uint32_t n_seqs, const uint32_t* seq_ids,
                                                    uint32_t n_tokens, const void* k, const void* v);

/* Tensor parallelism (docs/PARALLEL.md). A key's scale in the token scale
 * mode is its norm over ALL the model's KV heads, so a cache holding a slice
 * of them (kv_head_count) needs the other ranks' share: per token and KV
 * head, the squared norm ||k_h||^2 (float64) of the pre-RoPE key (post-RoPE
 * keys un-rotated first, as encoding does).
 *
 * commvq_cache_key_norms2 computes them for the cache's own heads: k as
 * commvq_cache_append_batch takes it ([n_seqs][n_tokens][heads held][head_dim],
 * io_dtype, token t of entry s at position (that layer's length) + t, so
 * call it before the append); norms2 [heads held][n_seqs][n_tokens]
 * float64, head-major so that an all-gather of the ranks' outputs in head
 * order (or an all-reduce of a zero-filled full array, each rank writing its
 * rows: adding zeros is exact) gives the full array. Changes nothing.
 *
 * commvq_cache_append_norms2 is commvq_cache_append_batch with that full
 * array: key_norms2 [n_kv_heads of the model][n_seqs][n_tokens]. The token
 * scale is the square root of the heads' values summed in head order, as a
 * cache of all heads computes it, so slice caches encode exactly what one
 * full cache does. A slice cache in the token scale mode needs key_norms2
 * (commvq_cache_append and _append_batch refuse it); in the head scale mode,
 * and in a cache of all heads, key_norms2 may be NULL. Given, the rows of the
 * cache's own heads must equal what commvq_cache_key_norms2 computes and every
 * value must be finite and >= 0 (COMMVQ_ERR_INVALID_ARGUMENT); on a CUDA
 * cache k, norms2 and key_norms2 may be device memory, and norms in device
 * memory are not checked (the host cannot read them), as device inputs are
 * not. Since 0.4.0. */
COMMVQ_API commvq_status_t commvq_cache_key_norms2(const commvq_cache_t* cache, uint32_t layer,
                                                  uint32_t n_seqs, const uint32_t* seq_ids,
                                                  uint32_t n_tokens, const void* k, double* norms2);
COMMVQ_API commvq_status_t commvq_cache_append_norms2(commvq_cache_t* cache, uint32_t layer,
                                                     uint32_t n_seqs, const uint32_t* seq_ids,
                                                     uint32_t n_tokens, const void* k, const void* v,
                                                     const double* key_norms2);

/* Attention of n_queries post-RoPE queries [n_queries][n_q_heads][head_dim]
 * of sequence seq over the layer's tokens. Query i sits at position
 * len - n_queries + i (len: the layer's token count) and, unless flags has
 * COMMVQ_ATTEND_NON_CAUSAL, sees positions up to its own. out has the query
 * layout in io_dtype; lse, if not NULL, receives float32
 * [n_queries][n_q_heads] natural-log sum of exp(scaled scores), so results
 * can be merged with attention computed elsewhere. */
COMMVQ_API commvq_status_t commvq_cache_attend(commvq_cache_t* cache, uint32_t layer,
                                              uint32_t seq, uint32_t n_queries, const void* q,
                                              void* out, float* lse, uint32_t flags);

/* One decode query per sequence: q is [n_seqs][n_q_heads][head_dim], query s
 * belongs to seq_ids[s] and sits at that sequence's last position. out and
 * lse as in commvq_cache_attend. */
COMMVQ_API commvq_status_t commvq_cache_attend_batch(commvq_cache_t* cache, uint32_t layer,
                                                    uint32_t n_seqs, const uint32_t* seq_ids,
                                                    const void* q, void* out, float* lse,
                                                    uint32_t flags);

/* ---- sequences ----------------------------------------------------------- */
/* Tokens of the sequence's furthest layer (0 for an unused sequence). */
COMMVQ_API commvq_status_t commvq_cache_seq_length(const commvq_cache_t* cache, uint32_t seq,
                                                  uint64_t* length);
/* Drops every token of the sequence and frees its blocks. */
COMMVQ_API commvq_status_t commvq_cache_seq_clear(commvq_cache_t* cache, uint32_t seq);
/* Keeps the first new_length tokens of every layer (new_length <= length).
 * Tokens that were already compressed stay compressed: the window then holds
 * fewer tokens until new ones arrive. */
COMMVQ_API commvq_status_t commvq_cache_seq_truncate(commvq_cache_t* cache, uint32_t seq,
                                                    uint64_t new_length);
/* Makes dst (which must be empty) a copy of src. Compressed blocks are
 * shared, copy-on-write; the window is copied. src's layers must be in step. */
COMMVQ_API commvq_status_t commvq_cache_seq_fork(commvq_cache_t* cache, uint32_t src,
                                                uint32_t dst);

/* ---- statistics ---------------------------------------------------------- */
typedef struct commvq_cache_stats {
    uint32_t struct_size;
    uint32_t n_seqs_used;         /* sequences holding at least one token */
    uint64_t tokens;              /* tokens held, summed over sequences (furthest layer) */
    uint64_t compressed_tokens;   /* of those, tokens held as codes (layer 0) */
    uint64_t blocks_used;         /* pool blocks in use (a shared block counts once) */
    uint64_t blocks_total;
    uint64_t tokens_free;         /* compressed tokens the free blocks can still hold */
    uint64_t bytes_compressed;    /* bytes of the blocks in use, all layers */
    uint64_t bytes_window;        /* bytes of the tokens held uncompressed (window and sinks), all layers */
    uint64_t bytes_codebook;      /* bytes of codebook data the cache holds */
    uint64_t bytes_reserved;      /* bytes taken at create time, all together */
    double bytes_per_compressed_token; /* all layers: keys, values and scales */
    double bytes_per_token_16bit;      /* all layers, keys and values at 16 bits */
} commvq_cache_stats_t;

COMMVQ_API void commvq_cache_stats_init(commvq_cache_stats_t* stats);
COMMVQ_API commvq_status_t commvq_cache_get_stats(const commvq_cache_t* cache,
                                                 commvq_cache_stats_t* stats);

/* ---- persistence --------------------------------------------------------- */
/* Writes one sequence (all layers, codes and window) with magic, format
 * version, the codebook fingerprint and a checksum. The layers must be in step. */
COMMVQ_API commvq_status_t commvq_cache_seq_save(const commvq_cache_t* cache, uint32_t seq,
                                                const char* path);
/* Loads a file written by commvq_cache_seq_save into the empty sequence seq.
 * A file from another codebook (COMMVQ_ERR_CODEBOOK_MISMATCH), a truncated or
 * corrupted file (COMMVQ_ERR_CORRUPT), or a cache whose window, sinks or
 * block pool cannot hold it is refused and nothing changes. */
COMMVQ_API commvq_status_t commvq_cache_seq_load(commvq_cache_t* cache, uint32_t seq,
                                                const char* path);

/* ---- GPU ----------------------------------------------------------------- */
/* Work of a CUDA cache is queued on this stream (a cudaStream_t; NULL = the
 * default stream). Calls return once work is queued. NOT_SUPPORTED on CPU. */
COMMVQ_API commvq_status_t commvq_cache_set_stream(commvq_cache_t* cache, void* cuda_stream);
/* Waits for the cache's queued work. A no-op on a CPU cache. */
COMMVQ_API commvq_status_t commvq_cache_synchronize(commvq_cache_t* cache);

/* ---- training ------------------------------------------------------------ */
/* Progress: stage names a phase ("keys layer 2 head 1 stage 3", "values
 * layer 0"), fraction runs 0..1 over the whole job. Return nonzero to cancel
 * (the call then fails with COMMVQ_ERR_CANCELLED). */
typedef int32_t (*commvq_progress_fn)(void* user, const char* stage, double fraction);

typedef struct commvq_train_params {
    uint32_t struct_size;
    uint32_t value_bits;      /* 1 (R = 11) or 2 (R = 21); default 1 */
    uint32_t key_stages;      /* 0 = from value_bits */
    uint32_t sub_centers;     /* default 64 */
    int32_t pair_layout;      /* COMMVQ_PAIRS_*; default ROTATE_HALF */
    int32_t scale_mode;       /* COMMVQ_SCALE_*; default TOKEN */
    uint32_t n_q_heads;       /* for the model description; 0 = n_kv_heads */
    commvq_rope_info_t rope;  /* default theta 10000, no scaling */
    uint64_t max_samples;     /* cap on tokens per layer; default 1048576 */
    uint32_t key_max_steps;   /* EM steps per stage; default 100 */
    uint32_t value_steps;     /* optimizer steps for the value encoder; default 2000 */
    uint32_t value_batch;     /* tokens per value step; default 256 */
    float value_lr;           /* default 1e-3 */
    uint64_t seed;            /* default 0 */
    uint32_t n_threads;       /* 0 = all cores */
    int32_t device;           /* COMMVQ_DEVICE_CPU or a CUDA ordinal (EM and value training on that GPU) */
    commvq_progress_fn progress; /* may be NULL */
    void* progress_user;
    /* Fields added later; a caller built against an older header passes a
     * smaller struct_size and gets their defaults. */
    uint32_t value_hidden;    /* I, the value encoder's width; 0 = min(4096, 4n), n = n_kv_heads*head_dim*value_bits/2 */
    const char* model_name;   /* recorded in the codebook (UTF-8, copied); NULL = "" */
    const float* value_weights; /* NULL, or float32 [n_layers][n_tokens]: weight (finite, >= 0) of each
                                   token's value reconstruction error in training; NULL = all 1 */
} commvq_train_params_t;

COMMVQ_API void commvq_train_params_init(commvq_train_params_t* params);

/* Trains a codebook from pre-RoPE keys and values:
 * keys and values are float32 [n_layers][n_tokens][n_kv_heads][head_dim]. */
COMMVQ_API commvq_status_t commvq_train(const commvq_train_params_t* params, uint32_t n_layers,
                                       uint32_t n_kv_heads, uint32_t head_dim, uint64_t n_tokens,
                                       const float* keys, const float* values,
                                       commvq_codebook_t** out);

#ifdef __cplusplus
}
#endif

#endif /* COMMVQ_COMMVQ_H */
