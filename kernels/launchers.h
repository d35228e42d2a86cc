// Host launchers of the CUDA kernels. Plain C++ types only, so the C++ core
// can call them without CUDA headers: a stream is a cudaStream_t passed as
// void*, every launcher returns a cudaError_t as int (0 = cudaSuccess) and
// queues work without synchronizing. Every pointer here is device memory.
//
// Runtime sizes (head_dim, query group, value bits per thread) are mapped to
// template parameters in one dispatch place per kernel family (*.cu).
#pragma once

#include <cstddef>
#include <cstdint>

namespace commvq {
namespace cuda {

// ---- shapes and tables shared by several kernels -----------------------

// The model shape as the kernels see it.
struct ModelShape {
    uint32_t n_kv_heads = 0;
    uint32_t n_q_heads = 0;
    uint32_t head_dim = 0;
    uint32_t key_stages = 0;       // R
    uint32_t sub_centers = 0;      // C (64 on the GPU)
    uint32_t code_bits = 0;        // bits of one stage code
    uint32_t value_code_bits = 0;  // 2n
    uint32_t value_hidden = 0;     // I
    uint32_t n_key_scales = 0;     // 1 (token) or n_kv_heads (head)
    int32_t pair_layout = 0;       // COMMVQ_PAIRS_*
    // A slice cache (docs/PARALLEL.md) holds KV heads [kv_head_begin,
    // kv_head_begin + n_kv_heads) of a model of value_kv_heads: keys, key
    // tables and queries are the slice's (n_kv_heads, n_q_heads), values
    // and their codebook the model's (D = value_kv_heads * head_dim). A
    // cache of all heads: value_kv_heads = n_kv_heads, kv_head_begin = 0.
    uint32_t value_kv_heads = 0;
    uint32_t kv_head_begin = 0;
    // Whether appends bring each token's squared key norms of all the
    // model's heads (a slice in the token scale mode; EncodeSource).
    bool given_key_norms = false;
};

#if defined(__CUDACC__)
#define COMMVQ_SHAPE_HD __host__ __device__
#else
#define COMMVQ_SHAPE_HD
#endif
// D: the channels of a token's values, all of the model's heads (a slice's too).
COMMVQ_SHAPE_HD inline uint32_t value_dim(const ModelShape& m) { return m.value_kv_heads * m.head_dim; }

// One layer of the block pool (block_layout.h), with the device block tables.
struct PoolView {
    uint8_t* base = nullptr;  // this layer: [n_blocks][block_bytes]
    uint64_t block_bytes = 0;
    uint32_t block_tokens = 0;
    uint32_t key_code_bytes = 0;
    uint32_t value_code_bytes = 0;
    uint32_t key_codes_offset = 0;
    uint32_t value_codes_offset = 0;
    uint32_t key_scales_offset = 0;
    uint32_t value_weights_offset = 0;
    const int32_t* block_tables = nullptr;  // [max_seqs][table_stride]
    uint32_t table_stride = 0;
};

// The uncompressed tokens (sinks and window) of one layer, stored as the
// host appended them (io dtype, model pair layout, host key convention):
// per sequence and layer, S + W slots of the token's keys [n_kv_heads]
// [head_dim] then its values [value_kv_heads][head_dim] (a slice cache keeps
// its own heads' keys and all values, as the CPU's storage does). Sink
// position p < S is slot p; window position p >= S is slot S + (p - S) % W.
// A slice in the token scale mode also keeps each slot's squared key norm
// over all heads (norms2, same slot numbering), for when it is encoded.
struct UncompressedView {
    uint8_t* base = nullptr;     // slot 0 of sequence 0 of this layer
    uint64_t seq_stride = 0;     // bytes from one sequence to the next
    uint32_t sinks = 0;          // S
    uint32_t window = 0;         // W
    uint32_t key_bytes = 0;      // bytes of the keys of one token (a multiple of 4)
    uint32_t value_bytes = 0;    // bytes of the values of one token (a multiple of 4)
    int32_t io_dtype = 0;
    int32_t key_convention = 0;  // COMMVQ_KEYS_*
    double* norms2 = nullptr;    // slot 0 of sequence 0 of this layer, or null
    uint64_t norms2_seq_stride = 0;  // elements from one sequence to the next
};

// Device mirror of a layer's sequence state (sequence.h LayerView), read by
// the attention kernels so a captured graph sees the current lengths.
struct SeqState {
    uint32_t length;
    uint32_t sinks;
    uint32_t compressed;
    uint32_t window;
};

// ---- state uploads (graph-capturable: values travel as kernel arguments) ---

// Entry `entry` of sequence seq's block table holds block `id`.
struct TableCell {
    uint32_t seq;
    uint32_t entry;
    uint32_t id;
};
constexpr uint32_t kMaxTableCellsPerLaunch = 512;
// tables[seq * stride + entry] = id for each of n cells (any sequences).
int launch_set_table_cells(int32_t* tables, uint32_t stride, uint32_t n, const TableCell* cells, void* stream);
int launch_set_state(SeqState* state, SeqState value, void* stream);

// One row of a batched append (commvq_cache_append_batch), in device memory
// for the kernels of the call: the row's sequence, where its new tokens go
// and which of its tokens are encoded.
struct BatchRow {
    uint32_t seq = 0;
    uint32_t first_token = 0;   // its first token to encode, counted over the rows before it (src/batch_rows.h)
    uint64_t length = 0;        // the layer's tokens before the call: new token t sits at position length + t
    uint64_t first_encode = 0;  // positions [first_encode, first_window) are encoded: S + compressed before
    uint64_t first_window = 0;  // S + compressed after: new positions from here on go to the window
};
constexpr uint32_t kMaxBatchRowsPerLaunch = 256;
// rows_dev[first + i] = rows[i] and layer_states[rows[i].seq] = states[i]
// for i < n (the values travel as kernel arguments).
int launch_set_batch_rows(BatchRow* rows_dev, SeqState* layer_states, uint32_t first, uint32_t n,
                          const BatchRow* rows, const SeqState* states, void* stream);

// ---- encoding --------------------------------------------------------------

// Where the tokens to encode come from, and where their codes go. Token i
// of a launch is token first_token + i of the call. With one sequence
// (rows null) it sits at position first_position + first_token + i of
// `seq`; position p < from_input_position is read from the uncompressed
// slots of `seq`, later positions from the input rows (row p -
// from_input_position), both in io dtype.
//
// A batched append sets `rows` instead: token j of the call belongs to the
// last row r whose rows[r].first_token is not above it (src/batch_rows.h),
// and sits at position rows[r].first_encode + (j - rows[r].first_token) of
// rows[r].seq; that row's tokens come from its slots below rows[r].length
// and from input row r * row_tokens + (p - rows[r].length) from there on.
struct EncodeSource {
    UncompressedView slots;
    uint32_t seq = 0;
    uint64_t first_position = 0;       // of the call's first token to encode
    uint64_t from_input_position = 0;  // positions from here on are input rows
    const void* input_k = nullptr;     // [rows][n_kv_heads][head_dim]
    const void* input_v = nullptr;     // [rows][value_kv_heads][head_dim]
    // ModelShape::given_key_norms: the input rows' squared key norms of
    // every head of the model, head h of row i at input_norms2[h *
    // norms2_head_stride + i] (the caller's [heads][rows] array).
    const double* input_norms2 = nullptr;
    uint64_t norms2_head_stride = 0;
    uint32_t first_token = 0;        // of this launch, counted over the call
    const BatchRow* rows = nullptr;  // device, [n_rows]; null: one sequence, as above
    uint32_t n_rows = 0;
    uint32_t row_tokens = 0;         // input rows per batch row (n_tokens)
};

// Keys of n tokens -> normalized pre-RoPE keys t [n][n_kv_heads][head_dim]
// (canonical pair layout) and scales [n][n_key_scales]. rope_freq: w_j /
// (2 pi) per pair, double, on the device. Scales are square roots of the
// sums of key_scale.h: per head, or per token over its heads' (or, with
// given_key_norms, over the model's heads' given norms).
int launch_prepare_keys(const ModelShape& m, const EncodeSource& src, uint32_t n, const double* rope_freq,
                        float* t, float* scales, void* stream);
// The squared norm of each head of n_rows rows of n_tokens keys
// (key_scale::head_norm2 of the pre-RoPE canonical key, post-RoPE keys
// un-rotated first, as launch_prepare_keys does): key token t of row r at
// k + (r * row_stride + t) * key bytes, at position positions[r] + t; its
// head h into out[h * head_stride + r * out_row_stride + t].
constexpr uint32_t kMaxNormRowsPerLaunch = 128;
struct KeyNormRows {
    uint64_t positions[kMaxNormRowsPerLaunch];
};
int launch_key_head_norms2(const ModelShape& m, int32_t io_dtype, int32_t key_convention, const double* rope_freq,
                           uint32_t n_rows, const KeyNormRows& rows, uint32_t n_tokens, const void* k,
                           uint64_t row_stride, double* out, uint64_t head_stride, uint64_t out_row_stride,
                           void* stream);
// Greedy residual search over the key codebook of one layer:
// codes [n][n_kv_heads][key_stages] of the residuals t [n][n_kv_heads][head_dim].
struct KeyTables {
    const float* sub_centers = nullptr;    // [n_kv_heads][R][C][head_dim], canonical
    const float* cross = nullptr;          // [n_kv_heads][R][C][C] gamma_{A,B}
    const float* norms = nullptr;          // [n_kv_heads][R][C]
    const float* cross_row_min = nullptr;  // [n_kv_heads][R][C] min_B gamma_{A,B} (key_cross_row_minima)
};
// full_scan examines every candidate instead of pruning rows by their
// bound; the codes are the same (the tests check it).
int launch_encode_keys(const ModelShape& m, const KeyTables& tables, uint32_t n, float* t, uint16_t* codes,
                       void* stream, bool full_scan = false);
// KeyTables::cross_row_min from cross (host memory, n_rows rows of C floats).
void key_cross_row_minima(const float* cross, size_t n_rows, uint32_t C, float* row_min);

// The value encoder's tables of one layer (codebook.h ValueCodebook), and
// the low-precision copies the tensor-core products read
// (launch_value_tables_low_precision; null when only fp32 products run).
struct ValueTables {
    const float* lambda = nullptr;
    const float* norm_weight = nullptr;
    const float* norm_bias = nullptr;
    const float* enc1_weight = nullptr;  // [I][D]
    const float* enc1_bias = nullptr;
    const float* enc2_weight = nullptr;  // [4n][I]
    const float* enc2_bias = nullptr;
    const float* codebook = nullptr;     // E [2n][D]
    const uint16_t* enc1_weight_bf16 = nullptr;  // [I][D], bf16 bit patterns
    const uint16_t* enc2_weight_bf16 = nullptr;  // [4n][I]
    // E split exactly into three bf16 parts, stacked along the code bits:
    // [3][2n][D] = hi, mid, lo with E = hi + mid + lo (8 + 8 + 8 significant bits).
    const uint16_t* codebook_bf16x3 = nullptr;
};

// How the value encoder's matrix products run. fp32 is the reference
// (cuBLAS SGEMM, every product in full single precision). tf32 and bf16 run
// the two encoder layers on tensor cores (tf32: fp32 inputs rounded to 10
// mantissa bits inside cuBLAS; bf16: the normalized values and the GELU
// output stored as bf16, weights converted once): the logits move by a few
// units in the last place of those formats, so near-tie groups may pick
// another option (the allowance: 0.1% of value bits). Both also form
// y = bits @ E on bf16 tensor cores from E's exact three-part split, so y
// keeps fp32 accuracy (the weight must not carry the products' rounding).
enum class ValuePrecision : int32_t { fp32 = 0, tf32 = 1, bf16 = 2 };
// The default of a cache: tf32, 4.9x the fp32 throughput on an H100 with
// 0.016% of value bits changed (docs/PERF.md); COMMVQ_CUDA_VALUE_PRODUCTS=fp32|tf32|bf16 in the
// environment when a cache is created overrides it (COMMVQ_CUDA_TF32=1:
// tf32, the older name).
constexpr ValuePrecision kDefaultValuePrecision = ValuePrecision::tf32;
const char* value_precision_name(ValuePrecision p);
// Parses "fp32", "tf32" or "bf16"; false for anything else.
bool parse_value_precision(const char* name, ValuePrecision* out);

// Scratch of the value encoder for n tokens, in floats.
size_t value_encoder_scratch_floats(const ModelShape& m, uint32_t n);
// Elements (bf16) of one layer's low-precision tables.
size_t value_tables_low_precision_elems(const ModelShape& m);
// Points tables' bf16 members at one layer's low-precision tables (`low`,
// value_tables_low_precision_elems of them).
void point_value_tables_low_precision(const ModelShape& m, const uint16_t* low, ValueTables* tables);
// Fills out (value_tables_low_precision_elems, device memory) from the
// fp32 tables in *tables and points tables' bf16 members at it.
int launch_value_tables_low_precision(const ModelShape& m, ValueTables* tables, uint16_t* out, void* stream);
// Values of n tokens -> code bits [n][2n/8] and weights [n]. cublas is a
// cublasHandle_t already bound to the stream. tf32 and bf16 need the
// low-precision tables (cudaErrorInvalidValue without them).
int launch_encode_values(const ModelShape& m, const ValueTables& tables, const EncodeSource& src, uint32_t n,
                         void* cublas, ValuePrecision precision, float* scratch, uint8_t* bits, float* weights,
                         void* stream);

// Writes the n encoded tokens of a launch into the pool: token i (as src
// names it) into compressed index position - S of its sequence (block
// table row seq).
int launch_store_compressed(const ModelShape& m, const PoolView& pool, const EncodeSource& src, uint32_t n,
                            const uint16_t* codes, const float* scales, const uint8_t* bits,
                            const float* weights, void* stream);
// Copies the uncompressed ones among n new tokens (positions first_position
// + i) into their slots: sink positions below `sinks`, window positions from
// `first_window` on; the others are skipped. Where the slots keep norms
// (slots.norms2), each token's key_scale::token_norm2 of the given norms
// (head h of token i at norms2[h * norms2_head_stride + i], n_heads heads).
int launch_store_uncompressed(const UncompressedView& slots, uint32_t seq, uint64_t first_position, uint32_t n,
                              uint64_t sinks, uint64_t first_window, const void* k, const void* v,
                              const double* norms2, uint64_t norms2_head_stride, uint32_t n_heads, void* stream);
// The same for every row of a batched append: n_rows rows (device) of
// n_tokens new tokens each, row r's token t at input row r * n_tokens + t
// (its norms at column r * n_tokens + t of norms2).
int launch_store_uncompressed_batch(const UncompressedView& slots, const BatchRow* rows, uint32_t n_rows,
                                    uint32_t n_tokens, const void* k, const void* v, const double* norms2,
                                    uint64_t norms2_head_stride, uint32_t n_heads, void* stream);

// ---- attention ----------------------------------------------------------

constexpr uint32_t kMaxRowsPerLaunch = 128;

// How decode attention runs for one codebook on one device, decided once
// when the cache is created (kernels/attention/plan.cu), so that a captured
// graph and a direct call launch the same thing whatever the lengths.
struct AttendPlan {
    uint32_t cluster = 1;           // KV heads whose CTAs share values (a thread-block cluster when > 1)
    uint32_t stages_per_group = 0;  // key stages whose tables sit in shared memory at once
    uint32_t score_chunk = 0;       // tokens scored before one softmax update
    uint32_t value_chunk = 0;       // tokens per value product (a multiple of 16)
    uint32_t value_m_tiles = 0;     // per warp: 16-bit tiles of value code bits
    uint32_t value_n_tiles = 0;     // per warp: 8-head tiles of query heads
    uint32_t code_words = 0;        // 32-bit words staged per token for one head's stage codes (layout.h)
    uint32_t smem_bytes = 0;
    uint32_t resident_ctas = 0;     // CTAs of the attention kernel that run at once
    uint32_t forced_splits = 0;     // COMMVQ_CUDA_ATTEND_SPLITS when set (attend_splits), else 0
};
// Fills *plan for this shape on the current device; returns a cudaError_t
// (cudaErrorNotSupported when no plan fits).
int plan_attend(const ModelShape& m, AttendPlan* plan);

struct AttendParams {
    ModelShape m;
    AttendPlan plan;
    PoolView pool;
    UncompressedView slots;
    const SeqState* states = nullptr;  // this layer, [max_seqs]
    const void* key_table = nullptr;   // half [n_kv_heads][R][C][head_dim], canonical
    const float* value_codebook = nullptr;  // E [2n][D], all of the model's heads (a slice reads its columns)
    const float* value_lambda = nullptr;    // [D]
    const double* rope_freq = nullptr;      // [head_dim / 2], w_j / (2 pi)
    const void* q = nullptr;                // [n_rows][n_q_heads][head_dim], io dtype, model layout
    float q_scale = 0;                      // attention scale times log2(e)
    uint32_t n_rows = 0;
    uint32_t seq[kMaxRowsPerLaunch];
    // Row r sees positions [0, length - hidden[r]) of its sequence.
    uint32_t hidden[kMaxRowsPerLaunch];
    uint32_t n_splits = 0;  // compressed-token splits per row: attend_splits(plan, n_rows)
    float* partials = nullptr;  // attend_partial_floats(m, n_rows, n_splits)
    void* out = nullptr;        // [n_rows][n_q_heads][head_dim], io dtype
    int32_t out_dtype = 0;
    float* lse = nullptr;       // [n_rows][n_q_heads] or null
};
size_t attend_partial_floats(const ModelShape& m, uint32_t n_rows, uint32_t n_splits);
// Whether the attention kernels support this shape (head_dim, group, bits).
bool attend_supported(const ModelShape& m);
// Splits of the compressed tokens of each of n_rows rows: the fewest waves
// of CTAs that keep 90% of the resident ones busy. Depends on the plan and
// the row count only, never on lengths (a captured graph keeps it).
uint32_t attend_splits(const ModelShape& m, const AttendPlan& plan, uint32_t n_rows);
// Three kernels: scores, softmax and code-space values (kernels/attention/decode.cu),
// then the merge that applies E once per query head (kernels/attention/merge.cu).
int launch_attend(const AttendParams& p, void* stream);

// ---- devices ----------------------------------------------------------------

int device_count();
// Converts float32 values to half (for the attention key table).
int launch_float_to_half(const float* in, size_t n, void* out, void* stream);
const char* error_string(int error);

}  // namespace cuda
}  // namespace commvq
