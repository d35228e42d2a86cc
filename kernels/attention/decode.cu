// Decode attention from codes: the attention kernel, its plan and its launch.
//
// Grid (KV heads, splits, rows). A CTA takes one KV head g of one row and one
// split of the row's compressed tokens; the CTAs of `plan.cluster` adjacent
// KV heads of the same row and split form a thread-block cluster. Per chunk
// of tokens each CTA
//   1. scores the tokens for its G query heads from the codes
//      (key_scores.cuh; the head's sub-center table sits in shared memory),
//   2. updates its heads' running softmax (softmax.cuh),
//   3. writes p * w of its heads, as fp16, into the probability array of
//      every CTA of the cluster (distributed shared memory),
// and then, after a cluster barrier, every CTA accumulates the code-space
// value sums of all the cluster's query heads for its own slice of the value
// code bits on tensor cores (value_mma.cuh). So each token's value bits are
// expanded once per cluster, not once per KV head. Split 0 also attends the
// uncompressed tokens (window.cuh). The merge (merge.cu) combines the splits
// and applies E once per query head.
//
// The accumulators hold sums of p * w * 2^-e with e the running maximum
// exponent of the weights w, so that p * w * 2^-e <= 1 fits fp16 whatever the
// codebook's scale; e is the same on every CTA (it depends on the tokens only).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "attention/async_copy.cuh"
#include "attention/cluster.cuh"
#include "attention/code_words.cuh"
#include "attention/key_scores.cuh"
#include "attention/merge.h"
#include "attention/softmax.cuh"
#include "attention/value_mma.cuh"
#include "attention/window.cuh"

namespace commvq {
namespace cuda {

namespace {

using namespace attention;

// Copies stage group [r0, r0 + rn) of KV head g's table into shared memory
// (asynchronously: all of it in flight at once; the caller waits).
__device__ void load_table(const AttendParams& p, const SharedLayout& L, uint8_t* smem, uint32_t g, uint32_t r0,
                           uint32_t rn) {
    const uint32_t stage_bytes = kSubCenters * L.table_row_bytes;
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(p.key_table) +
                                                      (size_t(g) * p.m.key_stages + r0) * stage_bytes);
    uint4* dst = reinterpret_cast<uint4*>(smem + L.table);
    const uint32_t n16 = rn * stage_bytes / 16;
    for (uint32_t i = threadIdx.x; i < n16; i += kThreads) copy_async16(dst + i, src + i);
}

// One token's place in the pool and its two scalars.
struct TokenInfo {
    uint32_t block = 0, slot = 0;
    float scale = 0, weight = 0;
};

__device__ __forceinline__ TokenInfo token_info(const PoolView& pool, size_t table_row, uint32_t ci,
                                                uint32_t n_key_scales, uint32_t scale_index) {
    TokenInfo t;
    t.block = uint32_t(pool.block_tables[table_row + ci / pool.block_tokens]);
    t.slot = ci % pool.block_tokens;
    const uint8_t* b = pool.base + size_t(t.block) * pool.block_bytes;
    t.scale = reinterpret_cast<const float*>(b + pool.key_scales_offset)[t.slot * n_key_scales + scale_index];
    t.weight = reinterpret_cast<const float*>(b + pool.value_weights_offset)[t.slot];
    return t;
}

template <int HEAD_DIM, int G, int MPW, int NPW>
__global__ void __launch_bounds__(kThreads, 1) attend_kernel(const __grid_constant__ AttendParams p) {
    extern __shared__ __align__(16) uint8_t smem[];
    const ModelShape& m = p.m;
    const PoolView& pool = p.pool;
    const SharedLayout L(m, p.plan);
    const uint32_t K = p.plan.cluster;
    const uint32_t g = blockIdx.x, split = blockIdx.y, row = blockIdx.z;
    const uint32_t rank = cluster_rank(K), g0 = g - rank;
    const uint32_t seq = p.seq[row];
    const SeqState st = p.states[seq];
    const uint64_t visible = st.length - tmin<uint64_t>(st.length, p.hidden[row]);
    const uint32_t R = m.key_stages, spg = p.plan.stages_per_group, n_groups = (R + spg - 1) / spg;
    const uint32_t SC = L.score_chunk, VC = L.value_chunk, heads = L.heads, words = L.slice_words;
    // Compressed indices fit 32 bits: a sequence holds at most the pool's n_blocks * block_tokens.
    constexpr int LPT = HEAD_DIM / 8;

    float* scores = reinterpret_cast<float*>(smem + L.scores);
    __half* probs = reinterpret_cast<__half*>(smem + L.probs);
    uint32_t* bits = reinterpret_cast<uint32_t*>(smem + L.bits);
    uint32_t* tok_block = reinterpret_cast<uint32_t*>(smem + L.tok_block);
    uint32_t* tok_slot = reinterpret_cast<uint32_t*>(smem + L.tok_slot);
    float* tok_scale = reinterpret_cast<float*>(smem + L.tok_scale);
    float* tok_weight = reinterpret_cast<float*>(smem + L.tok_weight);
    float* rescale = reinterpret_cast<float*>(smem + L.rescale);
    float* run_max = reinterpret_cast<float*>(smem + L.run_max);
    float* run_sum = reinterpret_cast<float*>(smem + L.run_sum);
    float* own_rescale = reinterpret_cast<float*>(smem + L.own_rescale);
    int* chunk_exp = reinterpret_cast<int*>(smem + L.chunk_exp);

    // Probabilities of padded heads and tokens stay 0; peers write only after
    // the barrier below.
    for (uint32_t i = threadIdx.x; i < 2 * heads * L.probs_stride / 2; i += kThreads)
        reinterpret_cast<uint32_t*>(probs)[i] = 0;
    for (uint32_t i = threadIdx.x; i < 2 * heads; i += kThreads) rescale[i] = 1.0f;
    for (uint32_t i = threadIdx.x; i < L.table_row_bytes / 4; i += kThreads)
        reinterpret_cast<uint32_t*>(smem + L.zero_row)[i] = 0;
    if (threadIdx.x < G) {
        run_max[threadIdx.x] = -FLT_MAX;
        run_sum[threadIdx.x] = 0;
    }
    float q[G][8];
    load_queries<HEAD_DIM, G>(p, row, g, (threadIdx.x % 32) % LPT, q);
    cluster_barrier(K);

    const uint32_t n_splits = gridDim.y;
    const uint64_t n_comp = visible > st.sinks ? tmin<uint64_t>(st.compressed, visible - st.sinks) : 0;
    const TokenRange range = split_tokens(n_comp, visible - n_comp, n_splits, split);
    const uint64_t t_begin = range.begin, t_end = range.end;
    const uint32_t scale_index = m.n_key_scales == 1 ? 0 : g;
    const size_t table_row = size_t(seq) * pool.table_stride;

    ValueTiles<MPW, NPW> tiles;
    tiles.init(slice_bits(m, p.plan) / 16, heads / 8);
    int w_exp = -1000;  // running exponent of the weights (2^-1000 is 0 in fp32)
    uint32_t step = 0;  // value steps so far: which half of probs
    uint32_t loaded_group = ~0u;
    // Token info of a chunk is loaded one chunk ahead (thread i: token i),
    // so its latency hides behind the chunk before.
    // So are the chunk's stage codes (code_words.cuh).
    TokenInfo ahead;
    CodeWords codes_ahead;
    if (t_begin < t_end) {
        const uint32_t cn = uint32_t(tmin<uint64_t>(SC, t_end - t_begin));
        if (threadIdx.x < cn)
            ahead = token_info(pool, table_row, uint32_t(t_begin) + threadIdx.x, m.n_key_scales, scale_index);
        codes_ahead.fetch(p, table_row, g, uint32_t(t_begin), cn);
    }
    // The rotation of this lane's token (key_scores.cuh), carried from chunk to chunk.
    constexpr uint32_t TPW = 32 / LPT;
    const uint32_t lane_token = (threadIdx.x / 32) * TPW + (threadIdx.x % 32) / LPT;
    // A lane advances SC / (kWarps * TPW) tokens per full chunk, so the
    // carried state is the next chunk's only when that divides evenly.
    LaneRotation::write_steps(p, reinterpret_cast<float2*>(smem + L.rot_step), HEAD_DIM / 2, kWarps * TPW);
    LaneRotation rot;
    const uint32_t exact_every = SC % (kWarps * TPW) == 0 ? LaneRotation::kExactEvery : 1;
    for (uint32_t c0 = uint32_t(t_begin), chunk = 0; c0 < t_end; c0 += SC, ++chunk) {
        const uint32_t cn = uint32_t(tmin<uint64_t>(SC, t_end - c0));
        if (chunk % exact_every == 0) rot.set(p, (threadIdx.x % 32) % LPT, uint64_t(p.slots.sinks) + c0 + lane_token);
        const uint32_t next_cn = c0 + SC < t_end ? uint32_t(tmin<uint64_t>(SC, t_end - c0 - SC)) : 0;
        if (threadIdx.x < cn) {
            tok_block[threadIdx.x] = ahead.block;
            tok_slot[threadIdx.x] = ahead.slot;
            tok_scale[threadIdx.x] = ahead.scale;
            tok_weight[threadIdx.x] = ahead.weight;
        }
        codes_ahead.stage(p, L, smem, cn);
        __syncthreads();
        if (threadIdx.x < next_cn) ahead = token_info(pool, table_row, c0 + SC + threadIdx.x, m.n_key_scales, scale_index);
        // This CTA's slice of the chunk's value bits, copied while the chunk is scored.
        for (uint32_t i = threadIdx.x; i < cn * words; i += kThreads) {
            const uint32_t t = i / words, w = i % words;
            const uint8_t* b = pool.base + size_t(tok_block[t]) * pool.block_bytes + pool.value_codes_offset +
                               size_t(tok_slot[t]) * pool.value_code_bytes;
            copy_async4(bits + w * L.bits_stride + t, reinterpret_cast<const uint32_t*>(b) + rank * words + w);
        }
        const LaneRotation chunk_rot = rot;  // every stage group starts from the chunk's first tokens
        for (uint32_t grp = 0; grp < n_groups; ++grp) {
            const uint32_t r0 = grp * spg, rn = min(spg, R - r0);
            if (grp != loaded_group) {
                __syncthreads();
                load_table(p, L, smem, g, r0, rn);
                loaded_group = grp;
                wait_async_copies();  // the value bits' copies too
                __syncthreads();
            }
            rot = chunk_rot;
            score_chunk<HEAD_DIM, G>(p, L, smem, cn, r0, rn, grp == 0, q, rot);
        }
        // The next chunk's codes, after this chunk's scores have read the
        // staged ones (their block-table entries were read at the chunk's
        // start, so only the words themselves are waited for, next chunk).
        if (next_cn) codes_ahead.fetch(p, table_row, g, c0 + SC, next_cn);
        wait_async_copies();
        __syncthreads();
        softmax_chunk<G>(scores, SC, cn, run_max, run_sum, own_rescale);
        if (threadIdx.x / 32 == kWarps - 1) {
            float wmax = 0;
            for (uint32_t i = threadIdx.x % 32; i < cn; i += 32) wmax = fmaxf(wmax, tok_weight[i]);
            for (int o = 16; o > 0; o /= 2) wmax = fmaxf(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
            int e = INT_MIN / 2;
            if (wmax > 0) frexpf(wmax, &e);  // wmax < 2^e
            if (threadIdx.x % 32 == 0) *chunk_exp = e;
        }
        __syncthreads();
        const int e_new = max(w_exp, *chunk_exp);
        const float old_factor = ldexpf(1.0f, w_exp - e_new), inv_w = ldexpf(1.0f, -e_new);
        w_exp = e_new;

        for (uint32_t v0 = 0; v0 < cn; v0 += VC, ++step) {
            const uint32_t buf = step & 1, vn = min(VC, cn - v0), vpad = align_up(vn, 16), half_cols = vpad / 2;
            __half* pb = probs + size_t(buf) * heads * L.probs_stride;
            for (uint32_t i = threadIdx.x; i < G * half_cols; i += kThreads) {
                const uint32_t h = i / half_cols, t = 2 * (i % half_cols);
                const float a = t < vn ? scores[h * SC + v0 + t] * tok_weight[v0 + t] * inv_w : 0.0f;
                const float b = t + 1 < vn ? scores[h * SC + v0 + t + 1] * tok_weight[v0 + t + 1] * inv_w : 0.0f;
                const __half2 v = __floats2half2_rn(a, b);
                __half2* dst = reinterpret_cast<__half2*>(pb + size_t(rank * G + h) * L.probs_stride + t);
                for (uint32_t r = 0; r < K; ++r) *cluster_peer(dst, r, K) = v;
            }
            if (v0 == 0 && threadIdx.x < G)
                for (uint32_t r = 0; r < K; ++r)
                    *cluster_peer(rescale + buf * heads + rank * G + threadIdx.x, r, K) = own_rescale[threadIdx.x] * old_factor;
            cluster_barrier(K);
            if (tiles.active) {
                if (v0 == 0) tiles.rescale(rescale + buf * heads);
                tiles.accumulate(bits + v0, L.bits_stride, pb, L.probs_stride, vpad / 16);
            }
        }
        __syncthreads();  // the chunk's token info and bits are no longer read
    }

    const PartialLayout pl(m, p.n_rows, n_splits);
    if (tiles.active) {
        float* out = p.partials + ((size_t(row) * n_splits + split) * m.n_q_heads + g0 * G) * m.value_code_bits +
                     rank * slice_bits(m, p.plan);
        tiles.store(out, m.value_code_bits, K * G, ldexpf(1.0f, w_exp));
    }
    float* ml = p.partials + pl.ml + (size_t(row) * (n_splits + 1) + split) * m.n_q_heads * 2;
    if (threadIdx.x < G) {
        ml[2 * (g * G + threadIdx.x)] = run_max[threadIdx.x];
        ml[2 * (g * G + threadIdx.x) + 1] = run_sum[threadIdx.x];
    }
    if (split == 0) {
        __syncthreads();
        attend_uncompressed<HEAD_DIM, G>(p, L, smem, row, g, seq, st, visible, q);
    }
}

// ---- the one dispatch place: supported shapes and kernel instances ---------

using KernelFn = void (*)(AttendParams);

template <int HEAD_DIM, int G>
KernelFn kernel_tiles(uint32_t mpw, uint32_t npw) {
    if (npw == 1) {
        switch (mpw) {
        case 1: return attend_kernel<HEAD_DIM, G, 1, 1>;
        case 2: return attend_kernel<HEAD_DIM, G, 2, 1>;
        case 4: return attend_kernel<HEAD_DIM, G, 4, 1>;
        case 8: return attend_kernel<HEAD_DIM, G, 8, 1>;
        }
    } else if (npw == 2) {
        switch (mpw) {
        case 1: return attend_kernel<HEAD_DIM, G, 1, 2>;
        case 2: return attend_kernel<HEAD_DIM, G, 2, 2>;
        case 4: return attend_kernel<HEAD_DIM, G, 4, 2>;
        }
    } else if (npw == 4) {
        switch (mpw) {
        case 1: return attend_kernel<HEAD_DIM, G, 1, 4>;
        case 2: return attend_kernel<HEAD_DIM, G, 2, 4>;
        }
    }
    return nullptr;
}

template <int HEAD_DIM>
KernelFn kernel_group(uint32_t group, uint32_t mpw, uint32_t npw) {
    switch (group) {
    case 1: return kernel_tiles<HEAD_DIM, 1>(mpw, npw);
    case 2: return kernel_tiles<HEAD_DIM, 2>(mpw, npw);
    case 4: return kernel_tiles<HEAD_DIM, 4>(mpw, npw);
    case 8: return kernel_tiles<HEAD_DIM, 8>(mpw, npw);
    }
    return nullptr;
}

KernelFn kernel_for(const ModelShape& m, const AttendPlan& plan) {
    const uint32_t G = m.n_q_heads / m.n_kv_heads;
    if (m.head_dim == 128) return kernel_group<128>(G, plan.value_m_tiles, plan.value_n_tiles);
    if (m.head_dim == 64) return kernel_group<64>(G, plan.value_m_tiles, plan.value_n_tiles);
    return nullptr;
}

// Value tiles per warp for a cluster of k KV heads: every 16-bit x 8-head
// tile of the CTA's slice covered by at most kWarps warps. A warp's NPW
// head tiles share each expanded bit tile (value_mma.cuh).
// COMMVQ_CUDA_ATTEND_NPW (1, 2 or 4; default 2) sets NPW (for measurements).
bool choose_tiles(const ModelShape& m, uint32_t k, AttendPlan* plan) {
    const uint32_t G = m.n_q_heads / m.n_kv_heads;
    if (m.value_code_bits % (32 * k)) return false;
    const uint32_t m_tiles = m.value_code_bits / k / 16, n_tiles = align_up(k * G, 8) / 8;
    uint32_t widest = 2;
    if (const char* forced = std::getenv("COMMVQ_CUDA_ATTEND_NPW")) widest = std::max(1, std::atoi(forced));
    uint32_t npw = 1;
    while (npw * 2 <= std::min(n_tiles, widest) && n_tiles % (npw * 2) == 0) npw *= 2;
    uint32_t mpw = 1;
    while (mpw < m_tiles && (m_tiles / mpw) * (n_tiles / npw) > uint32_t(kWarps)) mpw *= 2;
    if (m_tiles % mpw || (m_tiles / mpw) * (n_tiles / npw) > uint32_t(kWarps)) return false;
    plan->cluster = k;
    plan->value_m_tiles = mpw;
    plan->value_n_tiles = npw;
    return kernel_for(m, *plan) != nullptr;
}

// The largest stage groups, then the largest chunks, that fit shared memory.
// COMMVQ_CUDA_ATTEND_CHUNKS="score,value" (multiples of 32 and 16) is tried
// first (for measurements).
bool choose_chunks(const ModelShape& m, int max_smem, AttendPlan* plan) {
    std::vector<std::pair<uint32_t, uint32_t>> chunks = {{512, 128}, {256, 128}, {512, 64}, {256, 64},
                                                         {256, 32},  {128, 32},  {64, 32},  {32, 32}};
    if (const char* forced = std::getenv("COMMVQ_CUDA_ATTEND_CHUNKS")) {
        unsigned sc = 0, vc = 0;
        if (std::sscanf(forced, "%u,%u", &sc, &vc) == 2 && sc % 32 == 0 && vc % 16 == 0 && vc && vc <= sc &&
            sc <= kThreads)
            chunks.insert(chunks.begin(), {sc, vc});
    }
    plan->code_words = code_words(m.key_stages, m.code_bits);
    for (uint32_t groups = 1; groups <= m.key_stages; ++groups) {
        plan->stages_per_group = (m.key_stages + groups - 1) / groups;
        if (plan->stages_per_group > 32) continue;  // score_chunk turns at most 32 stages into offsets
        for (const auto& c : chunks) {
            // Each thread prefetches at most kMaxCodeWordsPerThread code words (code_words.cuh).
            const uint32_t tpt = code_threads_per_token(c.first);
            if ((plan->code_words + tpt - 1) / tpt > kMaxCodeWordsPerThread) continue;
            plan->score_chunk = c.first;
            plan->value_chunk = c.second;
            const SharedLayout L(m, *plan);
            if (L.total <= uint32_t(max_smem)) {
                plan->smem_bytes = L.total;
                return true;
            }
        }
    }
    return false;
}

}  // namespace

bool attend_supported(const ModelShape& m) {
    const uint32_t G = m.n_kv_heads ? m.n_q_heads / m.n_kv_heads : 0;
    AttendPlan plan;
    return (m.head_dim == 64 || m.head_dim == 128) && (G == 1 || G == 2 || G == 4 || G == 8) &&
           G * m.n_kv_heads == m.n_q_heads && m.sub_centers == kSubCenters && m.code_bits == kCodeBits &&
           m.value_code_bits % kMergeBits == 0 && choose_tiles(m, 1, &plan);
}

int plan_attend(const ModelShape& m, AttendPlan* out) {
    if (!attend_supported(m)) return int(cudaErrorNotSupported);
    int dev = 0, major = 0, max_smem = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess) return int(e);
    // The widest cluster of KV heads (at most 8, the portable limit) that
    // the device can run; a cluster of 1 needs no sm_90 feature.
    // COMMVQ_CUDA_ATTEND_CLUSTER caps it (for measurements).
    uint32_t widest = 8;
    if (const char* cap = std::getenv("COMMVQ_CUDA_ATTEND_CLUSTER")) widest = std::max(1, std::atoi(cap));
    for (uint32_t k = 8; k >= 1; k /= 2) {
        if (k > widest) continue;
        if (m.n_kv_heads % k || (k > 1 && major < 9)) continue;
        AttendPlan plan;
        if (!choose_tiles(m, k, &plan) || !choose_chunks(m, max_smem, &plan)) continue;
        const KernelFn kernel = kernel_for(m, plan);
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem_bytes));
        if (e != cudaSuccess) return int(e);
        int resident = 0;
        if (k > 1) {
            cudaLaunchConfig_t cfg = {};
            cudaLaunchAttribute attr;
            attr.id = cudaLaunchAttributeClusterDimension;
            attr.val.clusterDim.x = k;
            attr.val.clusterDim.y = 1;
            attr.val.clusterDim.z = 1;
            cfg.gridDim = dim3(m.n_kv_heads, 1, 1);
            cfg.blockDim = dim3(kThreads);
            cfg.dynamicSmemBytes = plan.smem_bytes;
            cfg.attrs = &attr;
            cfg.numAttrs = 1;
            int clusters = 0;
            if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
                cudaGetLastError();
                clusters = 0;
            }
            resident = clusters * int(k);
        } else {
            int per_sm = 0;
            e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan.smem_bytes);
            if (e != cudaSuccess) return int(e);
            resident = per_sm * sms;
        }
        if (resident <= 0) continue;
        plan.resident_ctas = uint32_t(resident);
        // COMMVQ_CUDA_ATTEND_SPLITS fixes the splits of every call (for
        // measurements, and for the slice test: caches of different head
        // counts then split rows alike and sum in the same order).
        if (const char* splits = std::getenv("COMMVQ_CUDA_ATTEND_SPLITS"))
            plan.forced_splits = uint32_t(std::min<long>(kMaxSplits, std::max<long>(0, std::atol(splits))));
        *out = plan;
        return int(cudaSuccess);
    }
    return int(cudaErrorNotSupported);
}

size_t attend_partial_floats(const ModelShape& m, uint32_t n_rows, uint32_t n_splits) {
    return PartialLayout(m, n_rows, n_splits).total;
}

uint32_t attend_splits(const ModelShape& m, const AttendPlan& plan, uint32_t n_rows) {
    if (plan.forced_splits) return plan.forced_splits;
    // The fewest waves of resident CTAs that keep 90% of them busy: one
    // wave of 8 heads x 15 splits for one row; 7 splits over 4 waves for 8
    // rows of 8 heads on 120 resident CTAs (1 split would leave half idle).
    const uint64_t units = std::max<uint64_t>(1, uint64_t(n_rows) * m.n_kv_heads), resident = plan.resident_ctas;
    for (uint64_t waves = 1;; ++waves) {
        const uint64_t splits = std::min<uint64_t>(kMaxSplits, waves * resident / units);
        if (splits >= 1 && (splits == kMaxSplits || 10 * units * splits >= 9 * waves * resident))
            return uint32_t(splits);
        if (waves * resident >= 64 * units) return uint32_t(std::max<uint64_t>(1, splits));
    }
}

int launch_attend(const AttendParams& p, void* stream) {
    const KernelFn kernel = kernel_for(p.m, p.plan);
    if (!kernel || p.n_rows == 0 || p.n_rows > kMaxRowsPerLaunch || p.n_splits == 0 || p.n_splits > kMaxSplits)
        return int(cudaErrorInvalidValue);
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = p.plan.cluster;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cfg.gridDim = dim3(p.m.n_kv_heads, p.n_splits, p.n_rows);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = p.plan.smem_bytes;
    cfg.stream = cudaStream_t(stream);
    cfg.attrs = &attr;
    cfg.numAttrs = p.plan.cluster > 1 ? 1 : 0;
    cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, p);
    if (e != cudaSuccess) return int(e);
    return launch_merge(p, cudaStream_t(stream));
}

}  // namespace cuda
}  // namespace commvq
