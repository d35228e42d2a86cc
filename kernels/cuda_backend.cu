// The CUDA back end (backend.h): the block pool, the sinks and windows, the
// block tables and the per-layer sequence state live in device memory taken
// once at creation; append and attend only queue kernels and cuBLAS calls
// on the cache's stream (no allocation, no host synchronization when the
// caller's pointers are device memory), so a decode step can be captured in
// a CUDA graph. The attention kernels read lengths and block tables from
// device memory: a captured attention replayed later sees the tokens
// appended since. Host pointers are accepted too; they are staged through
// device buffers and such calls wait for their copies.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "backend.h"
#include "device_common.cuh"
#include "dtype.h"
#include "error.h"
#include "launchers.h"
#include "model_shape.h"
#include "rope.h"

namespace commvq {

namespace {

constexpr double kTwoPi = 6.283185307179586476925286766559;
// Tokens encoded per batch of kernels and cuBLAS products, unless
// COMMVQ_CUDA_ENCODE_BATCH says otherwise when the cache is created (the
// encoding scratch grows with it: about 25 KB per token at 1 bit and 8 KV
// heads of 128: about 240 MB more at 8192 than at 1024). Larger batches
// fill the GPU better on long prompts: with tf32 products a 128K-token
// prompt encoded 1.6x faster at 8192 than at 1024 on an H100 (docs/PERF.md).
constexpr uint32_t kEncodeBatch = 8192;
constexpr uint32_t kMaxEncodeBatch = 65536;
// cuBLAS workspace, set once so products never allocate (graph capture).
constexpr size_t kCublasWorkspace = size_t(32) << 20;

void check_cuda(int err, const char* what) {
    if (err != 0) throw Error(COMMVQ_ERR_CUDA, std::string(what) + ": " + cuda::error_string(err));
}

// One plain device allocation, freed on destruction.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }
    void allocate(size_t bytes, const char* what) {
        bytes_ = std::max<size_t>(bytes, 16);
        const cudaError_t e = cudaMalloc(&ptr_, bytes_);
        if (e != cudaSuccess) {
            ptr_ = nullptr;
            cudaGetLastError();
            throw Error(e == cudaErrorMemoryAllocation ? COMMVQ_ERR_OUT_OF_MEMORY : COMMVQ_ERR_CUDA,
                        std::string("commvq_cache_create: cannot take ") + std::to_string(bytes_) +
                            " bytes of device memory for " + what + ": " + cudaGetErrorString(e));
        }
    }
    template <class T = void>
    T* get() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return ptr_ ? bytes_ : 0; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// Makes the cache's device current for the duration of a call.
class DeviceScope {
public:
    explicit DeviceScope(int device) {
        cudaGetDevice(&previous_);
        if (previous_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
    }
    ~DeviceScope() {
        int now = previous_;
        cudaGetDevice(&now);
        if (now != previous_) cudaSetDevice(previous_);
    }

private:
    int previous_ = 0;
};

// A pointer the kernels can read directly (device, managed or mapped host
// memory), or null for plain host memory.
const void* device_view(const void* p) {
    cudaPointerAttributes a{};
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    switch (a.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged: return p;
    case cudaMemoryTypeHost: return a.devicePointer;
    default: return nullptr;
    }
}

class CudaBackend final : public Backend {
public:
    CudaBackend(const Codebook& cb, const BackendConfig& config, int32_t device);
    ~CudaBackend() override;

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
    void write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position, uint64_t count,
                            const void* k, const void* v) override;
    uint64_t bytes_reserved() const override;
    uint64_t bytes_codebook() const override;
    bool host_readable(const void* p) const override {
        cudaPointerAttributes a{};
        if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
            cudaGetLastError();
            return true;
        }
        return a.type != cudaMemoryTypeDevice;
    }
    void set_stream(void* stream) override { stream_ = cudaStream_t(stream); }
    void synchronize() override {
        DeviceScope scope(device_);
        check_cuda(cudaStreamSynchronize(stream_), "commvq_cache_synchronize");
    }

private:
    cuda::PoolView pool_view(uint32_t layer) const;
    cuda::UncompressedView slots_view(uint32_t layer) const;
    cuda::KeyTables key_tables(uint32_t layer) const;
    cuda::ValueTables value_tables(uint32_t layer) const;
    // Brings the device block table and layer state up to the host's view.
    void sync_view(uint32_t layer, const LayerView& view);
    void sync_table(const LayerView& view, uint64_t compressed);
    // Queues the entries of the blocks of a view's first `compressed`
    // tokens that the device's table lacks; flush_tables() sends them, in
    // as few launches as the cells fit (any sequences together).
    void queue_table(const LayerView& view, uint64_t compressed);
    void flush_tables();
    // One row's append; norms2: its tokens' squared key norms of every
    // head of the model, head h of token t at norms2[h * norms2_head_stride
    // + t] (given_key_norms only, else null).
    void append_row(uint32_t layer, const LayerView& before, const LayerView& after, uint32_t n_tokens,
                    const void* k, const void* v, const double* norms2, uint64_t norms2_head_stride);
    // A batched append of rows whose tokens (and norms, column r * n_tokens
    // + t of row r's token t) are device memory, all rows in one pass.
    void append_rows(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens, const void* k,
                     const void* v, const double* norms2, uint64_t norms2_head_stride);
    // Encodes the n tokens src names (first_token from 0) into the pool.
    void encode(uint32_t layer, cuda::EncodeSource src, uint32_t n);
    void wait() const { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
    uint8_t* block_ptr(uint32_t layer, uint32_t block) const {
        return pool_.get<uint8_t>() + (size_t(layer) * config_.n_blocks + block) * config_.layout.block_bytes;
    }
    uint8_t* slot_ptr(uint32_t seq, uint32_t layer, uint64_t position) const;

    const Codebook& cb_;
    BackendConfig config_;
    int device_;
    cuda::ValuePrecision value_precision_ = cuda::kDefaultValuePrecision;
    uint32_t encode_batch_ = kEncodeBatch;
    // COMMVQ_CUDA_APPEND_BATCH=rows: append_batch appends its rows in turn
    // through append_row (the one-pass form's reference in the tests).
    bool append_rows_in_turn_ = false;
    cudaStream_t stream_ = nullptr;
    cublasHandle_t cublas_ = nullptr;
    cuda::ModelShape shape_;
    size_t key_bytes_ = 0;       // keys of one token (the cache's heads), io dtype
    size_t value_bytes_ = 0;     // values of one token (all of the model's heads), io dtype
    uint32_t norm_heads_ = 0;    // heads of appends' key norms: the model's
    size_t layer_slots_bytes_ = 0;
    size_t seq_slots_bytes_ = 0;
    uint32_t rows_per_launch_ = 0;
    size_t partial_floats_ = 0;
    cuda::AttendPlan attend_plan_;

    // Device memory.
    DeviceBuffer pool_, slots_, tables_, states_;
    DeviceBuffer key_half_, key_centers_, key_cross_, key_norms_, key_row_min_, rope_freq_, value_tables_;
    DeviceBuffer value_tables_bf16_;  // launch_value_tables_low_precision, per layer; only for tf32/bf16 products
    DeviceBuffer enc_t_, enc_scales_, enc_codes_, enc_bits_, enc_weights_, enc_scratch_, stage_k_, stage_v_;
    DeviceBuffer q_in_, partials_, out_stage_, lse_stage_, cublas_workspace_;
    // Slices in the token scale mode: the slots' squared key norms
    // [max_seqs][n_layers][S + W], and host norms staged [model heads][E].
    DeviceBuffer slot_norms2_, stage_norms_;
    // key_head_norms2: host keys staged [E] tokens, results [heads][E].
    DeviceBuffer stage_head_norms_;
    DeviceBuffer batch_rows_;  // [max_seqs] cuda::BatchRow: the rows of the current batched append
    std::vector<size_t> value_offsets_;  // per layer, 8 arrays each, in floats

    // What the device holds, as last uploaded.
    std::vector<std::vector<uint32_t>> table_shadow_;  // per sequence
    std::vector<cuda::SeqState> state_shadow_;        // [n_layers][max_seqs]
    // Table entries queued for the device (at most kMaxTableCellsPerLaunch).
    std::vector<cuda::TableCell> table_cells_;
    // Host side of a batched append's rows and new states, [max_seqs] each.
    std::vector<cuda::BatchRow> batch_host_;
    std::vector<cuda::SeqState> batch_states_;
};

CudaBackend::CudaBackend(const Codebook& cb, const BackendConfig& config, int32_t device)
    : cb_(cb), config_(config), device_(device) {
    const int n_devices = cuda::device_count();
    require(n_devices > 0, COMMVQ_ERR_NOT_SUPPORTED,
            "commvq_cache_create: CUDA device " + std::to_string(device) +
                " asked for, but this process runs without CUDA: no usable CUDA device is present");
    require(device >= 0 && device < n_devices, COMMVQ_ERR_INVALID_ARGUMENT,
            "commvq_cache_create: CUDA device " + std::to_string(device) + " asked for, but " +
                std::to_string(n_devices) + " usable CUDA device(s) are present");
    DeviceScope scope(device_);
    // The value products' precision and the encoding batch: environment
    // variables read here, so one process can time every variant.
    const char* tf32 = std::getenv("COMMVQ_CUDA_TF32");
    if (tf32 && tf32[0] == '1') value_precision_ = cuda::ValuePrecision::tf32;
    if (const char* products = std::getenv("COMMVQ_CUDA_VALUE_PRODUCTS"); products && products[0])
        require(cuda::parse_value_precision(products, &value_precision_), COMMVQ_ERR_INVALID_ARGUMENT,
                std::string("commvq_cache_create: COMMVQ_CUDA_VALUE_PRODUCTS is \"") + products +
                    "\"; it must be fp32, tf32 or bf16");
    if (const char* batch = std::getenv("COMMVQ_CUDA_ENCODE_BATCH"); batch && batch[0]) {
        char* end = nullptr;
        const unsigned long b = std::strtoul(batch, &end, 10);
        require(*end == 0 && b >= 1 && b <= kMaxEncodeBatch, COMMVQ_ERR_INVALID_ARGUMENT,
                std::string("commvq_cache_create: COMMVQ_CUDA_ENCODE_BATCH is \"") + batch +
                    "\"; it must be a token count from 1 to " + std::to_string(kMaxEncodeBatch));
        encode_batch_ = uint32_t(b);
    }
    if (const char* mode = std::getenv("COMMVQ_CUDA_APPEND_BATCH"); mode && mode[0]) {
        const std::string_view m(mode);
        require(m == "batched" || m == "rows", COMMVQ_ERR_INVALID_ARGUMENT,
                std::string("commvq_cache_create: COMMVQ_CUDA_APPEND_BATCH is \"") + mode +
                    "\"; it must be batched (all rows in one pass, the default) or rows (in turn)");
        append_rows_in_turn_ = m == "rows";
    }

    shape_ = cuda::model_shape(cb);
    require(cuda::attend_supported(shape_), COMMVQ_ERR_NOT_SUPPORTED,
            "commvq_cache_create: the CUDA back end supports head_dim 64 or 128, 1, 2, 4 or 8 query heads per KV "
            "head, 64 sub-centers and value code bits in multiples of 64; this codebook has head_dim " +
                std::to_string(cb.head_dim) + ", " + std::to_string(cb.n_q_heads) + " query and " +
                std::to_string(cb.n_kv_heads) + " KV heads, " + std::to_string(cb.sub_centers) + " sub-centers, " +
                std::to_string(cb.value_code_bits()) + " value code bits");
    // The value encoder reads its hidden layer four floats at a time.
    require(cb.value_hidden % 4 == 0, COMMVQ_ERR_NOT_SUPPORTED,
            "commvq_cache_create: the CUDA back end supports value encoder widths in multiples of 4; this codebook's "
            "is " + std::to_string(cb.value_hidden));

    const uint32_t L = cb.n_layers, H = cb.n_kv_heads, R = cb.key_stages, C = cb.sub_centers, d = cb.head_dim;
    const uint32_t D = cb.value_dim(), I = cb.value_hidden, n2 = cb.value_code_bits();
    key_bytes_ = size_t(cb.key_dim()) * dtype_size(config.io_dtype);
    value_bytes_ = size_t(D) * dtype_size(config.io_dtype);
    norm_heads_ = cb.model_kv_heads();
    layer_slots_bytes_ = (size_t(config.sink_tokens) + config.window) * (key_bytes_ + value_bytes_);
    seq_slots_bytes_ = layer_slots_bytes_ * L;

    pool_.allocate(size_t(L) * config.n_blocks * config.layout.block_bytes, "the block pool");
    slots_.allocate(seq_slots_bytes_ * config.max_seqs, "the sinks and windows");
    tables_.allocate(size_t(config.max_seqs) * config.n_blocks * 4, "the block tables");
    states_.allocate(size_t(L) * config.max_seqs * sizeof(cuda::SeqState), "the sequence states");
    check_cuda(cudaMemset(states_.get(), 0, states_.bytes()), "cudaMemset");
    check_cuda(cudaMemset(tables_.get(), 0, tables_.bytes()), "cudaMemset");
    if (shape_.given_key_norms)
        slot_norms2_.allocate(size_t(config.max_seqs) * L * (size_t(config.sink_tokens) + config.window) * 8,
                              "the window tokens' key norms");

    // Codebook tables: fp32 for the encoders, half2 pairs for attention.
    const size_t n_centers = size_t(L) * H * R * C * d;
    key_centers_.allocate(n_centers * 4, "the key codebook");
    key_half_.allocate(n_centers * 2, "the key codebook (half)");
    key_cross_.allocate(size_t(L) * H * R * C * C * 4, "the key cross tables");
    key_norms_.allocate(size_t(L) * H * R * C * 4, "the key norms");
    key_row_min_.allocate(size_t(L) * H * R * C * 4, "the key cross tables' row minima");
    std::vector<float> row_min(size_t(H) * R * C);
    for (uint32_t l = 0; l < L; ++l) {
        const size_t per = size_t(H) * R * C * d;
        check_cuda(cudaMemcpy(key_centers_.get<float>() + l * per, cb.layers[l].keys.sub_centers.data(), per * 4,
                              cudaMemcpyHostToDevice), "cudaMemcpy");
        check_cuda(cudaMemcpy(key_cross_.get<float>() + l * size_t(H) * R * C * C, cb.cross[l].data(),
                              size_t(H) * R * C * C * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
        check_cuda(cudaMemcpy(key_norms_.get<float>() + l * size_t(H) * R * C, cb.norms[l].data(),
                              size_t(H) * R * C * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
        cuda::key_cross_row_minima(cb.cross[l].data(), size_t(H) * R * C, C, row_min.data());
        check_cuda(cudaMemcpy(key_row_min_.get<float>() + l * size_t(H) * R * C, row_min.data(),
                              size_t(H) * R * C * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    check_cuda(cuda::launch_float_to_half(key_centers_.get<float>(), n_centers, key_half_.get(), nullptr),
               "float_to_half");
    std::vector<double> freq = rope_frequencies(cb.rope, d);
    for (double& f : freq) f /= kTwoPi;
    rope_freq_.allocate(freq.size() * 8, "the RoPE frequencies");
    check_cuda(cudaMemcpy(rope_freq_.get(), freq.data(), freq.size() * 8, cudaMemcpyHostToDevice), "cudaMemcpy");

    const size_t per_layer = size_t(D) * 3 + size_t(I) * D + I + size_t(2 * n2) * I + 2 * n2 + size_t(n2) * D;
    value_tables_.allocate(per_layer * L * 4, "the value codebook");
    for (uint32_t l = 0; l < L; ++l) {
        const ValueCodebook& vc = cb.layers[l].values;
        size_t at = per_layer * l;
        for (const std::vector<float>* a : cuda::value_arrays(vc)) {
            value_offsets_.push_back(at);
            check_cuda(cudaMemcpy(value_tables_.get<float>() + at, a->data(), a->size() * 4, cudaMemcpyHostToDevice),
                       "cudaMemcpy");
            at += a->size();
        }
    }
    if (value_precision_ != cuda::ValuePrecision::fp32) {
        const size_t elems = cuda::value_tables_low_precision_elems(shape_);
        value_tables_bf16_.allocate(elems * L * 2, "the value encoder's bf16 tables");
        for (uint32_t l = 0; l < L; ++l) {
            cuda::ValueTables t = value_tables(l);
            check_cuda(cuda::launch_value_tables_low_precision(shape_, &t, value_tables_bf16_.get<uint16_t>() + elems * l,
                                                               nullptr),
                       "commvq_cache_create: the value encoder's bf16 tables");
        }
    }

    // Encoding scratch.
    const uint32_t E = encode_batch_;
    enc_t_.allocate(size_t(E) * cb.key_dim() * 4, "key encoding");
    enc_scales_.allocate(size_t(E) * shape_.n_key_scales * 4, "key scales");
    enc_codes_.allocate(size_t(E) * H * R * 2, "key codes");
    enc_bits_.allocate(size_t(E) * n2 / 8, "value codes");
    enc_weights_.allocate(size_t(E) * 4, "value weights");
    enc_scratch_.allocate(cuda::value_encoder_scratch_floats(shape_, E) * 4, "value encoding");
    stage_k_.allocate(size_t(E) * key_bytes_, "staging host keys");
    stage_v_.allocate(size_t(E) * value_bytes_, "staging host values");
    if (shape_.given_key_norms) stage_norms_.allocate(size_t(E) * norm_heads_ * 8, "staging host key norms");
    stage_head_norms_.allocate(size_t(E) * H * 8, "key norms");
    batch_rows_.allocate(size_t(config.max_seqs) * sizeof(cuda::BatchRow), "the rows of batched appends");

    // Attention: the plan (launch geometry, shared memory) is fixed here, so
    // every call and every captured graph launches the same kernels; scratch
    // for the split partials of any row count up to a launch.
    check_cuda(cuda::plan_attend(shape_, &attend_plan_), "commvq_cache_create: planning attention");
    rows_per_launch_ = std::min<uint32_t>(cuda::kMaxRowsPerLaunch, std::max<uint32_t>(config.max_seqs, 16));
    for (uint32_t n = 1; n <= rows_per_launch_; ++n)
        partial_floats_ = std::max(partial_floats_, cuda::attend_partial_floats(
                                                         shape_, n, cuda::attend_splits(shape_, attend_plan_, n)));
    const size_t q_elems = size_t(rows_per_launch_) * cb.n_q_heads * d;
    q_in_.allocate(q_elems * dtype_size(config.io_dtype), "staging host queries");
    partials_.allocate(partial_floats_ * 4, "attention partial results");
    out_stage_.allocate(q_elems * dtype_size(config.io_dtype), "staging outputs");
    lse_stage_.allocate(size_t(rows_per_launch_) * cb.n_q_heads * 4, "staging lse");

    cublas_workspace_.allocate(kCublasWorkspace, "the cuBLAS workspace");
    if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS)
        throw Error(COMMVQ_ERR_CUDA, "commvq_cache_create: cublasCreate failed");
    if (cublasSetWorkspace(cublas_, cublas_workspace_.get(), kCublasWorkspace) != CUBLAS_STATUS_SUCCESS)
        throw Error(COMMVQ_ERR_CUDA, "commvq_cache_create: cublasSetWorkspace failed");
    check_cuda(cudaDeviceSynchronize(), "commvq_cache_create");

    table_shadow_.assign(config.max_seqs, std::vector<uint32_t>());
    for (auto& t : table_shadow_) t.assign(config.n_blocks, 0);
    state_shadow_.assign(size_t(L) * config.max_seqs, cuda::SeqState{0, 0, 0, 0});
    table_cells_.reserve(cuda::kMaxTableCellsPerLaunch);
    batch_host_.resize(config.max_seqs);
    batch_states_.resize(config.max_seqs);
}

CudaBackend::~CudaBackend() {
    DeviceScope scope(device_);
    cudaDeviceSynchronize();  // queued work may still use the buffers freed next
    if (cublas_) cublasDestroy(cublas_);
}

cuda::PoolView CudaBackend::pool_view(uint32_t layer) const {
    const BlockLayout& b = config_.layout;
    cuda::PoolView p;
    p.base = pool_.get<uint8_t>() + size_t(layer) * config_.n_blocks * b.block_bytes;
    p.block_bytes = b.block_bytes;
    p.block_tokens = b.block_tokens;
    p.key_code_bytes = b.key_code_bytes;
    p.value_code_bytes = b.value_code_bytes;
    p.key_codes_offset = uint32_t(b.key_codes_offset);
    p.value_codes_offset = uint32_t(b.value_codes_offset);
    p.key_scales_offset = uint32_t(b.key_scales_offset);
    p.value_weights_offset = uint32_t(b.value_weights_offset);
    p.block_tables = tables_.get<int32_t>();
    p.table_stride = config_.n_blocks;
    return p;
}

cuda::UncompressedView CudaBackend::slots_view(uint32_t layer) const {
    cuda::UncompressedView u;
    u.base = slots_.get<uint8_t>() + size_t(layer) * layer_slots_bytes_;
    u.seq_stride = seq_slots_bytes_;
    u.sinks = config_.sink_tokens;
    u.window = config_.window;
    u.key_bytes = uint32_t(key_bytes_);
    u.value_bytes = uint32_t(value_bytes_);
    if (slot_norms2_.bytes()) {
        const size_t slots = size_t(config_.sink_tokens) + config_.window;
        u.norms2 = slot_norms2_.get<double>() + size_t(layer) * slots;
        u.norms2_seq_stride = slots * cb_.n_layers;
    }
    u.io_dtype = config_.io_dtype;
    u.key_convention = config_.key_convention;
    return u;
}

uint8_t* CudaBackend::slot_ptr(uint32_t seq, uint32_t layer, uint64_t position) const {
    return cuda::slot_address(slots_view(layer), seq, position);
}

cuda::KeyTables CudaBackend::key_tables(uint32_t layer) const {
    const size_t H = cb_.n_kv_heads, R = cb_.key_stages, C = cb_.sub_centers;
    cuda::KeyTables t;
    t.sub_centers = key_centers_.get<float>() + layer * H * R * C * cb_.head_dim;
    t.cross = key_cross_.get<float>() + layer * H * R * C * C;
    t.norms = key_norms_.get<float>() + layer * H * R * C;
    t.cross_row_min = key_row_min_.get<float>() + layer * H * R * C;
    return t;
}

cuda::ValueTables CudaBackend::value_tables(uint32_t layer) const {
    const float* base = value_tables_.get<float>();
    const size_t* o = value_offsets_.data() + size_t(layer) * 8;
    std::array<const float*, 8> arrays;
    for (size_t i = 0; i < 8; ++i) arrays[i] = base + o[i];
    cuda::ValueTables t = cuda::value_tables_at(arrays);
    if (value_tables_bf16_.bytes())
        cuda::point_value_tables_low_precision(
            shape_, value_tables_bf16_.get<uint16_t>() + cuda::value_tables_low_precision_elems(shape_) * layer, &t);
    return t;
}

void CudaBackend::queue_table(const LayerView& view, uint64_t compressed) {
    std::vector<uint32_t>& shadow = table_shadow_[view.seq];
    const uint64_t n = blocks_for(compressed, config_.layout.block_tokens);
    for (uint64_t i = 0; i < n; ++i) {
        if (shadow[i] == view.blocks[i]) continue;
        if (table_cells_.size() == cuda::kMaxTableCellsPerLaunch) flush_tables();
        table_cells_.push_back(cuda::TableCell{view.seq, uint32_t(i), view.blocks[i]});
        shadow[i] = view.blocks[i];
    }
}

void CudaBackend::flush_tables() {
    if (table_cells_.empty()) return;
    const int err = cuda::launch_set_table_cells(tables_.get<int32_t>(), config_.n_blocks, uint32_t(table_cells_.size()),
                                                 table_cells_.data(), stream_);
    table_cells_.clear();
    check_cuda(err, "block table update");
}

void CudaBackend::sync_table(const LayerView& view, uint64_t compressed) {
    queue_table(view, compressed);
    flush_tables();
}

void CudaBackend::sync_view(uint32_t layer, const LayerView& view) {
    sync_table(view, view.compressed);
    const cuda::SeqState s{uint32_t(view.length), uint32_t(view.sinks), uint32_t(view.compressed),
                           uint32_t(view.window)};
    cuda::SeqState& shadow = state_shadow_[size_t(layer) * config_.max_seqs + view.seq];
    if (std::memcmp(&s, &shadow, sizeof s) != 0) {
        check_cuda(cuda::launch_set_state(states_.get<cuda::SeqState>() + size_t(layer) * config_.max_seqs + view.seq,
                                          s, stream_),
                   "sequence state update");
        shadow = s;
    }
}

// In passes of encode_batch_ tokens: keys prepared and searched, values
// encoded, codes stored.
void CudaBackend::encode(uint32_t layer, cuda::EncodeSource src, uint32_t n) {
    src.slots = slots_view(layer);
    for (uint32_t done = 0; done < n;) {
        const uint32_t m = std::min(n - done, encode_batch_);
        src.first_token = done;
        check_cuda(cuda::launch_prepare_keys(shape_, src, m, rope_freq_.get<double>(), enc_t_.get<float>(),
                                             enc_scales_.get<float>(), stream_),
                   "key preparation");
        check_cuda(cuda::launch_encode_keys(shape_, key_tables(layer), m, enc_t_.get<float>(),
                                            enc_codes_.get<uint16_t>(), stream_),
                   "key encoding");
        check_cuda(cuda::launch_encode_values(shape_, value_tables(layer), src, m, cublas_, value_precision_,
                                              enc_scratch_.get<float>(), enc_bits_.get<uint8_t>(),
                                              enc_weights_.get<float>(), stream_),
                   "value encoding");
        check_cuda(cuda::launch_store_compressed(shape_, pool_view(layer), src, m, enc_codes_.get<uint16_t>(),
                                                 enc_scales_.get<float>(), enc_bits_.get<uint8_t>(),
                                                 enc_weights_.get<float>(), stream_),
                   "storing codes");
        done += m;
    }
}

void CudaBackend::append_batch(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                               const void* k, const void* v) {
    append_batch_norms(layer, n_rows, rows, n_tokens, k, v, nullptr);
}

// Device inputs: all rows in one pass (append_rows). Host inputs, or a mix
// of host and device pointers: staged, as many rows at a time as the
// staging buffers hold (encode_batch_ tokens; cudaMemcpyDefault copies each
// pointer by what it is), each group waited for before the next reuses
// them. Rows longer than the staging buffers, or more than 2^31 - 1 tokens
// in all (a launch's grid), go in turn through append_row, which stages in
// steps; so does every batch under COMMVQ_CUDA_APPEND_BATCH=rows.
void CudaBackend::append_batch_norms(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                                     const void* k, const void* v, const double* key_norms2) {
    DeviceScope scope(device_);
    const size_t k_row = size_t(n_tokens) * key_bytes_, v_row = size_t(n_tokens) * value_bytes_;
    const uint64_t head_stride = uint64_t(n_rows) * n_tokens;  // key_norms2 [heads][n_rows * n_tokens]
    const void* k_dev = device_view(k);
    const void* v_dev = device_view(v);
    const double* n_dev = key_norms2 ? static_cast<const double*>(device_view(key_norms2)) : nullptr;
    const bool staged = !k_dev || !v_dev || (key_norms2 && !n_dev);
    if (!append_rows_in_turn_ && !staged && head_stride <= 0x7fffffffu) {
        append_rows(layer, n_rows, rows, n_tokens, k_dev, v_dev, n_dev, head_stride);
        return;
    }
    if (!append_rows_in_turn_ && staged && n_tokens <= encode_batch_) {
        const uint32_t per_group = encode_batch_ / n_tokens;
        for (uint32_t r0 = 0; r0 < n_rows; r0 += per_group) {
            const uint32_t g = std::min(per_group, n_rows - r0);
            check_cuda(cudaMemcpyAsync(stage_k_.get(), static_cast<const uint8_t*>(k) + r0 * k_row, g * k_row,
                                       cudaMemcpyDefault, stream_), "copying keys");
            check_cuda(cudaMemcpyAsync(stage_v_.get(), static_cast<const uint8_t*>(v) + r0 * v_row, g * v_row,
                                       cudaMemcpyDefault, stream_), "copying values");
            if (key_norms2)
                // Each head's run of the group's tokens, into rows of encode_batch_.
                check_cuda(cudaMemcpy2DAsync(stage_norms_.get(), size_t(encode_batch_) * 8,
                                             key_norms2 + size_t(r0) * n_tokens, head_stride * 8,
                                             size_t(g) * n_tokens * 8, norm_heads_, cudaMemcpyDefault, stream_),
                           "copying key norms");
            append_rows(layer, g, rows + r0, n_tokens, stage_k_.get(), stage_v_.get(),
                        key_norms2 ? stage_norms_.get<double>() : nullptr, encode_batch_);
            wait();  // the staging buffers are reused by the next group
        }
        return;
    }
    for (uint32_t r = 0; r < n_rows; ++r)
        append_row(layer, rows[r].before, rows[r].after, n_tokens, static_cast<const uint8_t*>(k) + r * k_row,
                   static_cast<const uint8_t*>(v) + r * v_row,
                   key_norms2 ? key_norms2 + size_t(r) * n_tokens : nullptr, head_stride);
}

// The rows' block tables (one launch for all rows' new entries), the rows
// and their new states as kernel arguments, then one encoding of every
// token that leaves a window (all rows together, in passes of encode_batch_
// tokens) and one copy of the new tokens into their slots. No host
// synchronization: a captured graph holds it all.
void CudaBackend::append_rows(uint32_t layer, uint32_t n_rows, const AppendRow* rows, uint32_t n_tokens,
                              const void* k, const void* v, const double* norms2, uint64_t norms2_head_stride) {
    check_cuda(cublasSetStream(cublas_, stream_) == CUBLAS_STATUS_SUCCESS ? 0 : int(cudaErrorUnknown),
               "cublasSetStream");
    // The cache passes norms exactly when the shape needs them.
    if (bool(norms2) != shape_.given_key_norms)
        throw Error(COMMVQ_ERR_INTERNAL, "CUDA append: key norms given to a cache that takes none, or missing");
    const uint64_t S = config_.sink_tokens;
    uint32_t total = 0;  // tokens to encode: at most n_rows * n_tokens < 2^31 (the caller's limit)
    for (uint32_t r = 0; r < n_rows; ++r) {
        const LayerView& before = rows[r].before;
        const LayerView& after = rows[r].after;
        queue_table(after, after.compressed);
        cuda::BatchRow& b = batch_host_[r];
        b.seq = after.seq;
        b.first_token = total;
        b.length = before.length;
        b.first_encode = S + before.compressed;
        b.first_window = S + after.compressed;
        total += uint32_t(after.compressed - before.compressed);
        const cuda::SeqState state{uint32_t(after.length), uint32_t(after.sinks), uint32_t(after.compressed),
                                   uint32_t(after.window)};
        batch_states_[r] = state;
        state_shadow_[size_t(layer) * config_.max_seqs + after.seq] = state;
    }
    flush_tables();
    cuda::BatchRow* rows_dev = batch_rows_.get<cuda::BatchRow>();
    check_cuda(cuda::launch_set_batch_rows(rows_dev, states_.get<cuda::SeqState>() + size_t(layer) * config_.max_seqs,
                                           0, n_rows, batch_host_.data(), batch_states_.data(), stream_),
               "batch rows update");
    // Tokens leaving the windows are encoded while the windows still hold them.
    cuda::EncodeSource src;
    src.input_k = k;
    src.input_v = v;
    src.input_norms2 = norms2;
    src.norms2_head_stride = norms2_head_stride;
    src.rows = rows_dev;
    src.n_rows = n_rows;
    src.row_tokens = n_tokens;
    encode(layer, src, total);
    check_cuda(cuda::launch_store_uncompressed_batch(slots_view(layer), rows_dev, n_rows, n_tokens, k, v, norms2,
                                                     norms2_head_stride, norm_heads_, stream_),
               "storing uncompressed tokens");
}

void CudaBackend::append(uint32_t layer, const LayerView& before, const LayerView& after, uint32_t n_tokens,
                         const void* k, const void* v) {
    append_row(layer, before, after, n_tokens, k, v, nullptr, 0);
}

void CudaBackend::append_row(uint32_t layer, const LayerView& before, const LayerView& after, uint32_t n_tokens,
                             const void* k, const void* v, const double* norms2, uint64_t norms2_head_stride) {
    DeviceScope scope(device_);
    check_cuda(cublasSetStream(cublas_, stream_) == CUBLAS_STATUS_SUCCESS ? 0 : int(cudaErrorUnknown),
               "cublasSetStream");
    // The cache passes norms exactly when the shape needs them.
    if (bool(norms2) != shape_.given_key_norms)
        throw Error(COMMVQ_ERR_INTERNAL, "CUDA append: key norms given to a cache that takes none, or missing");
    const uint32_t seq = after.seq;
    sync_table(after, after.compressed);
    const uint64_t S = config_.sink_tokens, kept = S + config_.window;
    const void* k_dev = device_view(k);
    const void* v_dev = device_view(v);
    const double* n_dev = norms2 ? static_cast<const double*>(device_view(norms2)) : nullptr;
    const bool staged = !k_dev || !v_dev || (norms2 && !n_dev);
    // Host rows travel in batches of encode_batch_ tokens, each one append
    // step of its own; device rows go in one step. A mix of host and device
    // pointers is staged too (cudaMemcpyDefault copies each by what it is).
    const uint32_t step = staged ? encode_batch_ : std::max<uint32_t>(n_tokens, 1);
    uint64_t length = before.length, compressed = before.compressed;
    for (uint32_t i0 = 0; i0 < n_tokens; i0 += step) {
        const uint32_t n = std::min(step, n_tokens - i0);
        const void *kr, *vr;
        const double* nr = nullptr;
        uint64_t n_stride = norms2_head_stride;
        if (staged) {
            check_cuda(cudaMemcpyAsync(stage_k_.get(), static_cast<const uint8_t*>(k) + i0 * key_bytes_,
                                       n * key_bytes_, cudaMemcpyDefault, stream_), "copying keys");
            check_cuda(cudaMemcpyAsync(stage_v_.get(), static_cast<const uint8_t*>(v) + i0 * value_bytes_,
                                       n * value_bytes_, cudaMemcpyDefault, stream_), "copying values");
            kr = stage_k_.get();
            vr = stage_v_.get();
            if (norms2) {
                // Each head's run of this batch's tokens, into rows of encode_batch_.
                check_cuda(cudaMemcpy2DAsync(stage_norms_.get(), size_t(encode_batch_) * 8, norms2 + i0,
                                             norms2_head_stride * 8, size_t(n) * 8, norm_heads_, cudaMemcpyDefault,
                                             stream_),
                           "copying key norms");
                nr = stage_norms_.get<double>();
                n_stride = encode_batch_;
            }
        } else {
            kr = static_cast<const uint8_t*>(k_dev) + i0 * key_bytes_;
            vr = static_cast<const uint8_t*>(v_dev) + i0 * value_bytes_;
            if (norms2) nr = n_dev + i0;
        }
        const uint64_t new_length = length + n;
        const uint64_t new_compressed = new_length > kept ? std::max(compressed, new_length - kept) : compressed;
        // Tokens leaving the window are encoded while the window still holds them.
        cuda::EncodeSource src;
        src.seq = seq;
        src.first_position = S + compressed;
        src.from_input_position = length;
        src.input_k = kr;
        src.input_v = vr;
        src.input_norms2 = nr;
        src.norms2_head_stride = n_stride;
        encode(layer, src, uint32_t(new_compressed - compressed));
        check_cuda(cuda::launch_store_uncompressed(slots_view(layer), seq, length, n, S, S + new_compressed, kr, vr,
                                                   nr, n_stride, norm_heads_, stream_),
                   "storing uncompressed tokens");
        if (staged) wait();  // the staging buffers are reused by the next batch
        length = new_length;
        compressed = new_compressed;
    }
    sync_view(layer, after);
}

// Rows in groups of at most kMaxNormRowsPerLaunch (their positions travel
// as a kernel argument). Device keys and output: one launch per group.
// Host keys or output: batches of at most encode_batch_ tokens through the
// staging buffers, waited for.
void CudaBackend::key_head_norms2(uint32_t n_rows, const uint64_t* positions, uint32_t n_tokens, const void* k,
                                  double* out) const {
    DeviceScope scope(device_);
    const void* k_dev = device_view(k);
    double* out_dev = static_cast<double*>(const_cast<void*>(device_view(out)));
    const bool staged = !k_dev || !out_dev;
    const uint64_t n_all = uint64_t(n_rows) * n_tokens;  // out [heads][n_rows * n_tokens]
    const uint32_t H = cb_.n_kv_heads;
    // Per launch: rows nr of tokens tn each (staged: nr * tn <= encode_batch_).
    const uint32_t tn_max = staged ? std::min(n_tokens, encode_batch_) : n_tokens;
    const uint32_t nr_max = staged ? std::max<uint32_t>(1, std::min(cuda::kMaxNormRowsPerLaunch, encode_batch_ / tn_max))
                                   : cuda::kMaxNormRowsPerLaunch;
    for (uint32_t r0 = 0; r0 < n_rows; r0 += nr_max) {
        const uint32_t nr = std::min(nr_max, n_rows - r0);
        for (uint32_t t0 = 0; t0 < n_tokens; t0 += tn_max) {
            const uint32_t tn = std::min(tn_max, n_tokens - t0);
            cuda::KeyNormRows rows;
            for (uint32_t i = 0; i < nr; ++i) rows.positions[i] = positions[r0 + i] + t0;
            const size_t first = size_t(r0) * n_tokens + t0;  // token (r0, t0)
            if (!staged) {
                check_cuda(cuda::launch_key_head_norms2(shape_, config_.io_dtype, config_.key_convention,
                                                        rope_freq_.get<double>(), nr, rows, tn,
                                                        static_cast<const uint8_t*>(k_dev) + first * key_bytes_,
                                                        n_tokens, out_dev + first, n_all, n_tokens, stream_),
                           "commvq_cache_key_norms2");
                continue;
            }
            check_cuda(cudaMemcpy2DAsync(stage_k_.get(), size_t(tn) * key_bytes_,
                                         static_cast<const uint8_t*>(k) + first * key_bytes_,
                                         size_t(n_tokens) * key_bytes_, size_t(tn) * key_bytes_, nr,
                                         cudaMemcpyDefault, stream_),
                       "copying keys");
            const uint64_t staged_n = uint64_t(nr) * tn;  // stage_head_norms_ [heads][nr * tn]
            check_cuda(cuda::launch_key_head_norms2(shape_, config_.io_dtype, config_.key_convention,
                                                    rope_freq_.get<double>(), nr, rows, tn, stage_k_.get(), tn,
                                                    stage_head_norms_.get<double>(), staged_n, tn, stream_),
                       "commvq_cache_key_norms2");
            for (uint32_t h = 0; h < H; ++h)
                check_cuda(cudaMemcpy2DAsync(out + h * n_all + first, size_t(n_tokens) * 8,
                                             stage_head_norms_.get<double>() + h * staged_n, size_t(tn) * 8,
                                             size_t(tn) * 8, nr, cudaMemcpyDefault, stream_),
                           "copying key norms");
            wait();  // the staging buffers are reused, and host memory is read or written
        }
    }
}

void CudaBackend::copy_block(uint32_t src, uint32_t dst) {
    DeviceScope scope(device_);
    const size_t pitch = size_t(config_.n_blocks) * config_.layout.block_bytes;
    check_cuda(cudaMemcpy2DAsync(block_ptr(0, dst), pitch, block_ptr(0, src), pitch, config_.layout.block_bytes,
                                 cb_.n_layers, cudaMemcpyDeviceToDevice, stream_),
               "copying a block");
}

void CudaBackend::copy_uncompressed(uint32_t src, uint32_t dst) {
    DeviceScope scope(device_);
    if (seq_slots_bytes_ == 0) return;
    check_cuda(cudaMemcpyAsync(slots_.get<uint8_t>() + dst * seq_slots_bytes_,
                               slots_.get<uint8_t>() + src * seq_slots_bytes_, seq_slots_bytes_,
                               cudaMemcpyDeviceToDevice, stream_),
               "copying a window");
    if (slot_norms2_.bytes()) {
        const size_t per_seq = slot_norms2_.bytes() / config_.max_seqs;
        check_cuda(cudaMemcpyAsync(slot_norms2_.get<uint8_t>() + dst * per_seq,
                                   slot_norms2_.get<uint8_t>() + src * per_seq, per_seq, cudaMemcpyDeviceToDevice,
                                   stream_),
                   "copying a window's key norms");
    }
}

void CudaBackend::attend(const AttendCall& call) {
    DeviceScope scope(device_);
    for (uint32_t r = 0; r < call.n_rows; ++r)
        if (r == 0 || !call.one_sequence) sync_view(call.layer, *call.rows[r].view);

    const size_t io = dtype_size(config_.io_dtype);
    const size_t row_elems = size_t(cb_.n_q_heads) * cb_.head_dim;
    const void* q_dev = device_view(call.q);
    void* out_dev = const_cast<void*>(device_view(call.out));
    float* lse_dev = call.lse ? static_cast<float*>(const_cast<void*>(device_view(call.lse))) : nullptr;
    const bool host_io = !q_dev || !out_dev || (call.lse && !lse_dev);

    const float scale = config_.attn_scale;
    for (uint32_t r0 = 0; r0 < call.n_rows;) {
        const uint32_t n = std::min(call.n_rows - r0, rows_per_launch_);
        cuda::AttendParams p;
        p.m = shape_;
        p.pool = pool_view(call.layer);
        p.slots = slots_view(call.layer);
        p.states = states_.get<cuda::SeqState>() + size_t(call.layer) * config_.max_seqs;
        p.key_table = key_half_.get<uint16_t>() + size_t(call.layer) * cb_.n_kv_heads * cb_.key_stages *
                                                   cb_.sub_centers * cb_.head_dim;
        const cuda::ValueTables vt = value_tables(call.layer);
        p.value_codebook = vt.codebook;
        p.value_lambda = vt.lambda;
        p.rope_freq = rope_freq_.get<double>();
        p.n_rows = n;
        for (uint32_t i = 0; i < n; ++i) {
            const AttendRow& row = call.rows[r0 + i];
            p.seq[i] = row.view->seq;
            p.hidden[i] = uint32_t(row.view->length - row.visible);
        }
        p.plan = attend_plan_;
        p.n_splits = cuda::attend_splits(shape_, attend_plan_, n);
        p.partials = partials_.get<float>();

        const void* q_rows;
        if (q_dev) {
            q_rows = static_cast<const uint8_t*>(q_dev) + r0 * row_elems * io;
        } else {
            check_cuda(cudaMemcpyAsync(q_in_.get(), static_cast<const uint8_t*>(call.q) + r0 * row_elems * io,
                                       n * row_elems * io, cudaMemcpyHostToDevice, stream_),
                       "copying queries");
            q_rows = q_in_.get();
        }
        p.q = q_rows;
        p.q_scale = scale * 1.4426950408889634f;  // log2(e): the kernels work in the log2 domain
        p.out = out_dev ? static_cast<uint8_t*>(out_dev) + r0 * row_elems * io : out_stage_.get();
        p.out_dtype = config_.io_dtype;
        p.lse = call.lse ? (lse_dev ? lse_dev + size_t(r0) * cb_.n_q_heads : lse_stage_.get<float>()) : nullptr;
        check_cuda(cuda::launch_attend(p, stream_), "attention");
        if (!out_dev)
            check_cuda(cudaMemcpyAsync(static_cast<uint8_t*>(call.out) + r0 * row_elems * io, out_stage_.get(),
                                       n * row_elems * io, cudaMemcpyDeviceToHost, stream_),
                       "copying outputs");
        if (call.lse && !lse_dev)
            check_cuda(cudaMemcpyAsync(call.lse + size_t(r0) * cb_.n_q_heads, lse_stage_.get(),
                                       size_t(n) * cb_.n_q_heads * 4, cudaMemcpyDeviceToHost, stream_),
                       "copying lse");
        if (host_io) wait();  // host memory is read or written, and staging is reused
        r0 += n;
    }
}

void CudaBackend::read_compressed(uint32_t layer, const LayerView& view, uint64_t first, uint64_t count,
                                  uint8_t* out) const {
    DeviceScope scope(device_);
    wait();
    const BlockLayout& b = config_.layout;
    std::vector<uint8_t> block(b.block_bytes);
    int64_t loaded = -1;
    for (uint64_t i = first; i < first + count; ++i) {
        const uint32_t id = view.blocks[i / b.block_tokens];
        if (int64_t(id) != loaded) {
            check_cuda(cudaMemcpy(block.data(), block_ptr(layer, id), b.block_bytes, cudaMemcpyDeviceToHost),
                       "reading a block");
            loaded = id;
        }
        const uint32_t s = uint32_t(i % b.block_tokens);
        std::memcpy(out, block.data() + b.key_codes_offset + size_t(s) * b.key_code_bytes, b.key_code_bytes);
        out += b.key_code_bytes;
        std::memcpy(out, block.data() + b.value_codes_offset + size_t(s) * b.value_code_bytes, b.value_code_bytes);
        out += b.value_code_bytes;
        std::memcpy(out, block.data() + b.key_scales_offset + size_t(s) * b.n_key_scales * 4, 4 * size_t(b.n_key_scales));
        out += 4 * size_t(b.n_key_scales);
        std::memcpy(out, block.data() + b.value_weights_offset + size_t(s) * 4, 4);
        out += 4;
    }
}

void CudaBackend::write_compressed(uint32_t layer, const LayerView& view, uint64_t first, uint64_t count,
                                   const uint8_t* in) {
    DeviceScope scope(device_);
    wait();
    const BlockLayout& b = config_.layout;
    std::vector<uint8_t> block(b.block_bytes);
    for (uint64_t i = first; i < first + count;) {
        const uint32_t id = view.blocks[i / b.block_tokens];
        check_cuda(cudaMemcpy(block.data(), block_ptr(layer, id), b.block_bytes, cudaMemcpyDeviceToHost),
                   "reading a block");
        const uint64_t end = std::min(first + count, (i / b.block_tokens + 1) * b.block_tokens);
        for (; i < end; ++i) {
            const uint32_t s = uint32_t(i % b.block_tokens);
            std::memcpy(block.data() + b.key_codes_offset + size_t(s) * b.key_code_bytes, in, b.key_code_bytes);
            in += b.key_code_bytes;
            std::memcpy(block.data() + b.value_codes_offset + size_t(s) * b.value_code_bytes, in, b.value_code_bytes);
            in += b.value_code_bytes;
            std::memcpy(block.data() + b.key_scales_offset + size_t(s) * b.n_key_scales * 4, in, 4 * size_t(b.n_key_scales));
            in += 4 * size_t(b.n_key_scales);
            std::memcpy(block.data() + b.value_weights_offset + size_t(s) * 4, in, 4);
            in += 4;
        }
        check_cuda(cudaMemcpy(block_ptr(layer, id), block.data(), b.block_bytes, cudaMemcpyHostToDevice),
                   "writing a block");
    }
    // The cache may hand these blocks to attention next: the device table must know them.
    const_cast<CudaBackend*>(this)->sync_table(view, first + count);
    wait();
}

void CudaBackend::read_uncompressed(uint32_t layer, const LayerView& view, uint64_t position, uint64_t count,
                                    void* k, void* v) const {
    DeviceScope scope(device_);
    wait();
    for (uint64_t t = 0; t < count; ++t) {
        const uint8_t* slot = slot_ptr(view.seq, layer, position + t);
        check_cuda(cudaMemcpy(static_cast<uint8_t*>(k) + t * key_bytes_, slot, key_bytes_, cudaMemcpyDeviceToHost),
                   "reading a window");
        check_cuda(cudaMemcpy(static_cast<uint8_t*>(v) + t * value_bytes_, slot + key_bytes_, value_bytes_,
                              cudaMemcpyDeviceToHost),
                   "reading a window");
    }
}

void CudaBackend::write_uncompressed(uint32_t layer, const LayerView& view, uint64_t position, uint64_t count,
                                     const void* k, const void* v) {
    DeviceScope scope(device_);
    wait();
    for (uint64_t t = 0; t < count; ++t) {
        uint8_t* slot = slot_ptr(view.seq, layer, position + t);
        check_cuda(cudaMemcpy(slot, static_cast<const uint8_t*>(k) + t * key_bytes_, key_bytes_,
                              cudaMemcpyHostToDevice),
                   "writing a window");
        check_cuda(cudaMemcpy(slot + key_bytes_, static_cast<const uint8_t*>(v) + t * value_bytes_, value_bytes_,
                              cudaMemcpyHostToDevice),
                   "writing a window");
    }
}

uint64_t CudaBackend::bytes_codebook() const {
    return key_half_.bytes() + key_centers_.bytes() + key_cross_.bytes() + key_norms_.bytes() + key_row_min_.bytes() +
           rope_freq_.bytes() + value_tables_.bytes() + value_tables_bf16_.bytes();
}

uint64_t CudaBackend::bytes_reserved() const {
    uint64_t n = bytes_codebook();
    for (const DeviceBuffer* b : {&pool_, &slots_, &tables_, &states_, &enc_t_, &enc_scales_, &enc_codes_,
                                  &enc_bits_, &enc_weights_, &enc_scratch_, &stage_k_, &stage_v_, &q_in_,
                                  &partials_, &out_stage_, &lse_stage_, &cublas_workspace_, &slot_norms2_,
                                  &stage_norms_, &stage_head_norms_, &batch_rows_})
        n += b->bytes();
    return n + table_cells_.capacity() * sizeof(cuda::TableCell) +
           batch_host_.size() * sizeof(cuda::BatchRow) + batch_states_.size() * sizeof(cuda::SeqState);
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const Codebook& cb, const BackendConfig& config, int32_t device) {
    return std::make_unique<CudaBackend>(cb, config, device);
}

int32_t cuda_device_count() { return cuda::device_count(); }

}  // namespace commvq
