// Launchers of the attention from codes (attention.cuh): query preparation,
// the split kernel, and the merge that applies E once per query head.
#include <algorithm>

#include "attention.cuh"

namespace commvq {
namespace cuda {

namespace {

__global__ void prepare_queries_kernel(const void* q, int32_t dtype, uint32_t rows, uint32_t head_dim,
                                       int32_t layout, float scale, float* out) {
    const size_t n = size_t(rows) * head_dim;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const size_t head = i / head_dim;
        const uint32_t e = uint32_t(i % head_dim);  // canonical element: pair e/2, part e%2
        const uint32_t src = model_index(e / 2, e % 2, head_dim, layout);
        out[i] = load_element(q, head * head_dim + src, dtype) * scale;
    }
}

// The largest split max of one query head (log2 domain) and each split's
// factor 2^(m_s - M); both merge kernels compute them the same way.
__device__ float split_factors(const float* ml, uint32_t n_splits, uint32_t n_q_heads, uint32_t h, float* factor,
                               float* total) {
    const int lane = threadIdx.x % 32;
    float mx = -FLT_MAX;
    for (uint32_t s = lane; s <= n_splits; s += 32) mx = fmaxf(mx, ml[(s * n_q_heads + h) * 2]);
    for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (uint32_t s = lane; s <= n_splits; s += 32) {
        const float ms = ml[(s * n_q_heads + h) * 2], ls = ml[(s * n_q_heads + h) * 2 + 1];
        const float w = ls > 0 ? exp2f(ms - mx) : 0.0f;
        factor[s] = w;
        sum += ls * w;
    }
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    *total = sum;
    return mx;
}

constexpr int kMaxGroup = 8;

// One KV group, one row, one slice of kMergeBits code bits: the splits'
// code-space sums combined (unnormalized), then E of those bits applied:
// applied[h][c] = sum_i merged[h][i] E[i][g d + c] over the slice.
template <int HEAD_DIM>
__global__ void __launch_bounds__(2 * HEAD_DIM)
apply_codebook_kernel(const __grid_constant__ AttendParams p) {
    using attention::kMergeBits;
    __shared__ float factor[kMaxGroup][attention::kThreads];
    __shared__ float merged[kMaxGroup][kMergeBits];
    __shared__ float half_sum[kMaxGroup][HEAD_DIM];
    __shared__ float unused_total[kMaxGroup];
    const ModelShape& m = p.m;
    const uint32_t g = blockIdx.x, row = blockIdx.y, slice = blockIdx.z, G = m.n_q_heads / m.n_kv_heads;
    const uint32_t n_splits = p.n_splits, n2 = m.value_code_bits, D = m.n_kv_heads * HEAD_DIM, i0 = slice * kMergeBits;
    const attention::PartialLayout pl(m, p.n_rows, n_splits);
    const float* ml = p.partials + pl.ml + size_t(row) * (n_splits + 1) * m.n_q_heads * 2;
    const uint32_t warp = threadIdx.x / 32;
    for (uint32_t h = warp; h < G; h += blockDim.x / 32)
        split_factors(ml, n_splits, m.n_q_heads, g * G + h, factor[h], &unused_total[h]);
    __syncthreads();
    const float* codes = p.partials + size_t(row) * n_splits * m.n_q_heads * n2;
    for (uint32_t idx = threadIdx.x; idx < G * kMergeBits; idx += blockDim.x) {
        const uint32_t h = idx / kMergeBits, i = idx % kMergeBits;
        float s = 0;
        for (uint32_t k = 0; k < n_splits; ++k) s += factor[h][k] * codes[(size_t(k) * m.n_q_heads + g * G + h) * n2 + i0 + i];
        merged[h][i] = s;
    }
    __syncthreads();
    const uint32_t c = threadIdx.x % HEAD_DIM, half = threadIdx.x / HEAD_DIM;
    float acc[kMaxGroup];
#pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) acc[h] = 0;
    const float* E = p.value_codebook + size_t(i0) * D + size_t(g) * HEAD_DIM + c;
#pragma unroll 8
    for (uint32_t i = half; i < kMergeBits; i += 2) {
        const float e = E[size_t(i) * D];
#pragma unroll
        for (int h = 0; h < kMaxGroup; ++h)
            if (h < int(G)) acc[h] = fmaf(merged[h][i], e, acc[h]);
    }
    if (half == 1)
        for (uint32_t h = 0; h < G; ++h) half_sum[h][c] = acc[h];
    __syncthreads();
    if (half == 0) {
        float* out = p.partials + pl.applied + (size_t(row) * (n2 / kMergeBits) + slice) * m.n_q_heads * HEAD_DIM;
        for (uint32_t h = 0; h < G; ++h) out[(g * G + h) * HEAD_DIM + c] = acc[h] + half_sum[h][c];
    }
}

// One query head of one row: the slices summed in order, lambda, the
// uncompressed tokens' part, normalization, output and lse.
template <int HEAD_DIM>
__global__ void __launch_bounds__(HEAD_DIM)
finish_kernel(const __grid_constant__ AttendParams p) {
    __shared__ float factor[attention::kThreads];
    __shared__ float total, max_log2;
    const ModelShape& m = p.m;
    const uint32_t h = blockIdx.x, row = blockIdx.y, G = m.n_q_heads / m.n_kv_heads, g = h / G;
    const uint32_t n_splits = p.n_splits, slices = m.value_code_bits / attention::kMergeBits;
    const attention::PartialLayout pl(m, p.n_rows, n_splits);
    const float* ml = p.partials + pl.ml + size_t(row) * (n_splits + 1) * m.n_q_heads * 2;
    if (threadIdx.x < 32) {
        float t;
        const float mx = split_factors(ml, n_splits, m.n_q_heads, h, factor, &t);
        if (threadIdx.x == 0) {
            total = t;
            max_log2 = mx;
        }
    }
    __syncthreads();
    const uint32_t c = threadIdx.x;
    const float inv = total > 0 ? 1.0f / total : 0.0f;
    const float* applied = p.partials + pl.applied + size_t(row) * slices * m.n_q_heads * HEAD_DIM + size_t(h) * HEAD_DIM + c;
    float s = 0;
    for (uint32_t k = 0; k < slices; ++k) s += applied[size_t(k) * m.n_q_heads * HEAD_DIM];
    const float lam = p.value_lambda[g * HEAD_DIM + c] + 1e-6f;
    const float* vals = p.partials + pl.values + (size_t(row) * m.n_q_heads + h) * HEAD_DIM;
    const float o = (lam * s + factor[n_splits] * vals[c]) * inv;
    store_element(p.out, (size_t(row) * m.n_q_heads + h) * HEAD_DIM + c, p.out_dtype, o);
    if (p.lse && c == 0) p.lse[size_t(row) * m.n_q_heads + h] = total > 0 ? (max_log2 + log2f(total)) * kLn2 : -INFINITY;
}

int max_smem_optin() {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    return v;
}

struct Plan {
    uint32_t stages_per_group = 0, chunk = 0, smem = 0;
};

// The largest chunk that keeps the fewest table reloads (stage groups).
template <int G>
Plan plan_smem(const ModelShape& m, int max_smem) {
    const uint32_t stage_bytes = m.sub_centers * (m.head_dim / 2) * 4;
    Plan best;
    uint32_t best_groups = ~0u;
    for (uint32_t chunk : {2048u, 1024u, 512u, 256u}) {
        for (uint32_t spg = m.key_stages; spg >= 1; --spg) {
            const attention::SmemLayout<G> L(spg * stage_bytes, chunk, spg, m.value_code_bits / 8);
            if (L.total > uint32_t(max_smem)) continue;
            const uint32_t groups = (m.key_stages + spg - 1) / spg;
            if (groups < best_groups) {
                best_groups = groups;
                best = {spg, chunk, L.total};
            }
            break;
        }
    }
    return best;
}

template <int HEAD_DIM, int G, int BPT>
int launch_attend_t(const AttendParams& p, cudaStream_t stream) {
    const Plan plan = plan_smem<G>(p.m, max_smem_optin());
    if (plan.chunk == 0) return int(cudaErrorInvalidConfiguration);
    auto kernel = attention::attend_kernel<HEAD_DIM, G, BPT>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
    if (e != cudaSuccess) return int(e);
    const dim3 grid(p.n_splits + 1, p.m.n_kv_heads, p.n_rows);
    kernel<<<grid, attention::kThreads, plan.smem, stream>>>(p, plan.stages_per_group, plan.chunk);
    e = cudaGetLastError();
    if (e != cudaSuccess) return int(e);
    const dim3 apply_grid(p.m.n_kv_heads, p.n_rows, p.m.value_code_bits / attention::kMergeBits);
    apply_codebook_kernel<HEAD_DIM><<<apply_grid, 2 * HEAD_DIM, 0, stream>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
    finish_kernel<HEAD_DIM><<<dim3(p.m.n_q_heads, p.n_rows), HEAD_DIM, 0, stream>>>(p);
    return int(cudaGetLastError());
}

template <int HEAD_DIM, int G>
int dispatch_bits(const AttendParams& p, cudaStream_t s) {
    switch (p.m.value_code_bits / attention::kThreads) {
    case 1: return launch_attend_t<HEAD_DIM, G, 1>(p, s);
    case 2: return launch_attend_t<HEAD_DIM, G, 2>(p, s);
    case 4: return launch_attend_t<HEAD_DIM, G, 4>(p, s);
    case 8: return launch_attend_t<HEAD_DIM, G, 8>(p, s);
    default: return int(cudaErrorInvalidValue);
    }
}

template <int HEAD_DIM>
int dispatch_group(const AttendParams& p, cudaStream_t s) {
    switch (p.m.n_q_heads / p.m.n_kv_heads) {
    case 1: return dispatch_bits<HEAD_DIM, 1>(p, s);
    case 2: return dispatch_bits<HEAD_DIM, 2>(p, s);
    case 4: return dispatch_bits<HEAD_DIM, 4>(p, s);
    case 8: return dispatch_bits<HEAD_DIM, 8>(p, s);
    default: return int(cudaErrorInvalidValue);
    }
}

}  // namespace

bool attend_supported(const ModelShape& m) {
    const uint32_t G = m.n_kv_heads ? m.n_q_heads / m.n_kv_heads : 0;
    const uint32_t bpt = m.value_code_bits / attention::kThreads;
    return (m.head_dim == 64 || m.head_dim == 128) && (G == 1 || G == 2 || G == 4 || G == 8) &&
           G * m.n_kv_heads == m.n_q_heads && m.value_code_bits % attention::kThreads == 0 &&
           (bpt == 1 || bpt == 2 || bpt == 4 || bpt == 8) && m.sub_centers == 64 && m.code_bits <= 16;
}

size_t attend_partial_floats(const ModelShape& m, uint32_t n_rows, uint32_t n_splits) {
    return attention::PartialLayout(m, n_rows, n_splits).total;
}

uint32_t attend_splits(const ModelShape& m, uint32_t n_rows, uint64_t max_compressed, int sm_count) {
    constexpr uint64_t kMinTokensPerSplit = 128;
    const uint64_t blocks_per_split = uint64_t(n_rows) * m.n_kv_heads;
    const uint64_t fill = std::max<uint64_t>(1, uint64_t(sm_count) / std::max<uint64_t>(1, blocks_per_split));
    const uint64_t worth = std::max<uint64_t>(1, (max_compressed + kMinTokensPerSplit - 1) / kMinTokensPerSplit);
    return uint32_t(std::min<uint64_t>({fill, worth, attention::kThreads - 1}));
}

int launch_prepare_queries(const ModelShape& m, const void* q, int32_t io_dtype, uint32_t rows, float scale,
                           float* out, void* stream) {
    const uint32_t heads = rows * m.n_q_heads;
    const size_t n = size_t(heads) * m.head_dim;
    const int blocks = int(std::min<size_t>((n + 255) / 256, 4096));
    prepare_queries_kernel<<<blocks, 256, 0, cudaStream_t(stream)>>>(q, io_dtype, heads, m.head_dim, m.pair_layout,
                                                                      scale * kLog2e, out);
    return int(cudaGetLastError());
}

int launch_attend(const AttendParams& p, void* stream) {
    if (!attend_supported(p.m) || p.n_rows == 0 || p.n_rows > kMaxRowsPerLaunch || p.n_splits == 0 ||
        p.n_splits >= uint32_t(attention::kThreads))
        return int(cudaErrorInvalidValue);
    cudaStream_t s = cudaStream_t(stream);
    return p.m.head_dim == 128 ? dispatch_group<128>(p, s) : dispatch_group<64>(p, s);
}

}  // namespace cuda
}  // namespace commvq
