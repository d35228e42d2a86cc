// Value encoding on the GPU (docs/METHOD.md, "Values"): per-channel scale,
// norm and LayerNorm in one kernel, the two linear layers and the codeword
// sum y = bits @ E as cuBLAS products, bias + GELU in one elementwise pass,
// bias + argmax + packing (and the bits as product operands) in one pass,
// the weight in one. The formulas are those of the CPU encoder
// (src/value_formulas.h). The products' precision is a ValuePrecision
// (launchers.h): fp32 SGEMMs, or tf32 / bf16 tensor cores.
#include <cublas_v2.h>

#include <algorithm>
#include <string_view>

#include "device_common.cuh"
#include "value_formulas.h"

namespace commvq {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr float kEps = 1e-6f;          // value_encoder.h kValueEps
constexpr double kLayerNormEps = 1e-5;  // value_encoder.cpp
constexpr uint16_t kBf16One = 0x3f80;   // 1.0 in bf16

size_t round_up(size_t x) { return (x + 63) / 64 * 64; }  // 256-byte aligned regions for cuBLAS

// Scratch regions (in floats, n tokens). x holds the LayerNorm output (fp32,
// or bf16 in its first half), later y; hidden the first layer's output
// (pre-activation, fp32), later the bits as product operands; hidden_bf16
// the GELU output for bf16 products; logits the second layer's output.
struct Scratch {
    float *x, *hidden, *hidden_bf16, *logits, *sigma;
    size_t total;
    Scratch(const ModelShape& m, uint32_t n, float* base) {
        const size_t D = size_t(value_dim(m)), I = m.value_hidden, n2 = m.value_code_bits;
        // hidden later holds the bit operands: 2n floats (fp32), or 3 x 2n bf16 (the split product).
        const size_t wide = std::max(I, (3 * n2 + 1) / 2);
        size_t at = 0;
        auto take = [&](size_t floats) {
            float* p = base ? base + at : nullptr;
            at += round_up(floats);
            return p;
        };
        x = take(n * D);
        hidden = take(n * wide);
        hidden_bf16 = take(n * ((I + 1) / 2));
        logits = take(n * 2 * n2);
        sigma = take(n);
        total = at;
    }
};

// The sum of x over the block, every thread getting the same value: a
// fixed order (lanes by butterfly, then warps in turn), so repeatable.
__device__ double block_sum(double x, double* warp_partial) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    if ((threadIdx.x & 31) == 0) warp_partial[threadIdx.x / 32] = x;
    __syncthreads();
    double s = 0;
    for (int w = 0; w < kWarps; ++w) s += warp_partial[w];
    __syncthreads();
    return s;
}

// One token per block: u = v / (lambda + eps); sigma = ||u||;
// u /= sigma + eps; LayerNorm; out as fp32 or bf16 (the product's input).
// u stays in shared memory between the passes.
__global__ void __launch_bounds__(kThreads)
prepare_values_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ EncodeSource src,
                      const __grid_constant__ ValueTables vt, bool bf16_out, void* x_all, float* sigma_all) {
    extern __shared__ float u[];  // [D]
    __shared__ double partial[kWarps];
    const uint32_t D = value_dim(m);
    const void* v = block_source_token(src).v;
    double s2 = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float x = load_element(v, c, src.slots.io_dtype) / (vt.lambda[c] + kEps);
        u[c] = x;
        s2 += double(x) * x;
    }
    const double sigma = sqrt(block_sum(s2, partial));
    double mean = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float x = float(u[c] / (sigma + kEps));
        u[c] = x;
        mean += x;
    }
    mean = block_sum(mean, partial) / D;
    double var = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) var += (u[c] - mean) * (u[c] - mean);
    const double inv_std = 1.0 / sqrt(block_sum(var, partial) / D + kLayerNormEps);
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float x = value_formulas::layer_norm(u[c], mean, inv_std, vt.norm_weight[c], vt.norm_bias[c]);
        if (bf16_out)
            static_cast<__nv_bfloat16*>(x_all)[size_t(blockIdx.x) * D + c] = __float2bfloat16_rn(x);
        else
            static_cast<float*>(x_all)[size_t(blockIdx.x) * D + c] = x;
    }
    if (threadIdx.x == 0) sigma_all[blockIdx.x] = float(sigma);
}

// GELU(h + bias) over [n][width], 4 elements a thread; written back in
// place (fp32) or to out_bf16 (the next product's input).
__global__ void bias_gelu_kernel(float* h, const float* bias, uint32_t width, size_t n_quads,
                                 __nv_bfloat16* out_bf16) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n_quads; i += size_t(gridDim.x) * blockDim.x) {
        float4 x = reinterpret_cast<const float4*>(h)[i];
        const float4 b = reinterpret_cast<const float4*>(bias)[i % (width / 4)];
        x.x = value_formulas::gelu(x.x + b.x);
        x.y = value_formulas::gelu(x.y + b.y);
        x.z = value_formulas::gelu(x.z + b.z);
        x.w = value_formulas::gelu(x.w + b.w);
        if (out_bf16) {
            reinterpret_cast<__nv_bfloat162*>(out_bf16)[2 * i] = __floats2bfloat162_rn(x.x, x.y);
            reinterpret_cast<__nv_bfloat162*>(out_bf16)[2 * i + 1] = __floats2bfloat162_rn(x.z, x.w);
        } else {
            reinterpret_cast<float4*>(h)[i] = x;
        }
    }
}

// Each thread takes 4 groups (one byte of code bits): logits + bias, the
// winning option of each group becomes 2 bits (value_formulas.h). The byte
// goes to `bits`, and its 8 bits as the operand of y = bits @ E: 8 floats
// at bit_values (fp32 product), or 8 bf16 at three places, one per part
// of E's split (bit_values as [n][3][2n] bf16).
__global__ void argmax_bits_kernel(const float* logits, const float* bias, uint32_t n_groups, size_t n_bytes,
                                   uint8_t* bits, float* bit_values, bool split) {
    const uint32_t bytes_per_token = n_groups / 4;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n_bytes; i += size_t(gridDim.x) * blockDim.x) {
        const size_t token = i / bytes_per_token;
        const uint32_t byte_in_token = uint32_t(i % bytes_per_token), g0 = byte_in_token * 4;
        const float4* l = reinterpret_cast<const float4*>(logits) + token * n_groups + g0;
        const float4* b = reinterpret_cast<const float4*>(bias) + g0;
        uint32_t byte = 0;
        for (uint32_t k = 0; k < 4; ++k) {
            const float4 x = l[k], y = b[k];
            byte |= value_formulas::option_bits(value_formulas::argmax4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w))
                    << (2 * k);
        }
        bits[i] = uint8_t(byte);
        if (split) {
            uint16_t h[8];
            for (int k = 0; k < 8; ++k) h[k] = (byte >> k) & 1u ? kBf16One : 0;
            uint4 word;
            word.x = h[0] | uint32_t(h[1]) << 16;
            word.y = h[2] | uint32_t(h[3]) << 16;
            word.z = h[4] | uint32_t(h[5]) << 16;
            word.w = h[6] | uint32_t(h[7]) << 16;
            const size_t n2 = 2 * size_t(n_groups);
            uint16_t* row = reinterpret_cast<uint16_t*>(bit_values) + token * 3 * n2 + 8 * size_t(byte_in_token);
            for (int part = 0; part < 3; ++part) *reinterpret_cast<uint4*>(row + part * n2) = word;
        } else {
            float4* bv = reinterpret_cast<float4*>(bit_values + i * 8);
            bv[0] = make_float4(byte & 1u, (byte >> 1) & 1u, (byte >> 2) & 1u, (byte >> 3) & 1u);
            bv[1] = make_float4((byte >> 4) & 1u, (byte >> 5) & 1u, (byte >> 6) & 1u, (byte >> 7) & 1u);
        }
    }
}

// w = (sigma + eps) / (||y|| + eps), y already formed; one warp per token.
__global__ void __launch_bounds__(kThreads)
weight_kernel(const float* y_all, const float* sigma, uint32_t D, uint32_t n, float* weights) {
    const uint32_t token = blockIdx.x * kWarps + threadIdx.x / 32, lane = threadIdx.x & 31;
    if (token >= n) return;
    const float* y = y_all + size_t(token) * D;
    double s2 = 0;
    for (uint32_t c = lane; c < D; c += 32) s2 += double(y[c]) * y[c];
    for (int o = 16; o > 0; o /= 2) s2 += __shfl_xor_sync(0xffffffffu, s2, o);
    if (lane == 0) weights[token] = float((double(sigma[token]) + kEps) / (sqrt(s2) + kEps));
}

// The bf16 tables: weights rounded to nearest; E split as hi = bf16(e),
// mid = bf16(e - hi), lo = bf16(e - hi - mid), each difference exact in
// fp32, so hi + mid + lo = e (24 significant bits in three 8-bit parts).
__global__ void low_precision_tables_kernel(const float* enc1, size_t n1, const float* enc2, size_t n2_elems,
                                            const float* E, size_t nE, __nv_bfloat16* out) {
    const size_t total = n1 + n2_elems + nE;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total; i += size_t(gridDim.x) * blockDim.x) {
        if (i < n1) {
            out[i] = __float2bfloat16_rn(enc1[i]);
        } else if (i < n1 + n2_elems) {
            out[i] = __float2bfloat16_rn(enc2[i - n1]);
        } else {
            const size_t j = i - n1 - n2_elems;
            const float e = E[j];
            const __nv_bfloat16 hi = __float2bfloat16_rn(e);
            const float r = e - __bfloat162float(hi);
            const __nv_bfloat16 mid = __float2bfloat16_rn(r);
            const __nv_bfloat16 lo = __float2bfloat16_rn(r - __bfloat162float(mid));
            __nv_bfloat16* parts = out + n1 + n2_elems;
            parts[j] = hi;
            parts[nE + j] = mid;
            parts[2 * nE + j] = lo;
        }
    }
}

int grid_for(size_t n) { return int(std::min<size_t>((n + kThreads - 1) / kThreads, 8192)); }

// Row-major out[n][rows] = in[n][cols] @ W^T for W row-major [rows][cols],
// inputs of `type`, fp32 output.
cublasStatus_t linear(cublasHandle_t h, const void* W, const void* in, cudaDataType type,
                      cublasComputeType_t compute, uint32_t rows, uint32_t cols, uint32_t n, float* out) {
    const float one = 1.0f, zero = 0.0f;
    return cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &one, W, type, int(cols), in, type,
                        int(cols), &zero, out, CUDA_R_32F, int(rows), compute, CUBLAS_GEMM_DEFAULT);
}

int from_cublas(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? 0 : int(cudaErrorUnknown); }

}  // namespace

const char* value_precision_name(ValuePrecision p) {
    switch (p) {
    case ValuePrecision::fp32: return "fp32";
    case ValuePrecision::tf32: return "tf32";
    case ValuePrecision::bf16: return "bf16";
    }
    return "?";
}

bool parse_value_precision(const char* name, ValuePrecision* out) {
    for (ValuePrecision p : {ValuePrecision::fp32, ValuePrecision::tf32, ValuePrecision::bf16})
        if (std::string_view(name) == value_precision_name(p)) {
            *out = p;
            return true;
        }
    return false;
}

size_t value_encoder_scratch_floats(const ModelShape& m, uint32_t n) { return Scratch(m, n, nullptr).total; }

size_t value_tables_low_precision_elems(const ModelShape& m) {
    const size_t D = size_t(value_dim(m)), I = m.value_hidden, n2 = m.value_code_bits;
    return I * D + 2 * n2 * I + 3 * n2 * D;
}

void point_value_tables_low_precision(const ModelShape& m, const uint16_t* low, ValueTables* vt) {
    const size_t D = size_t(value_dim(m)), I = m.value_hidden, n2 = m.value_code_bits;
    vt->enc1_weight_bf16 = low;
    vt->enc2_weight_bf16 = low + I * D;
    vt->codebook_bf16x3 = low + I * D + 2 * n2 * I;
}

int launch_value_tables_low_precision(const ModelShape& m, ValueTables* vt, uint16_t* out, void* stream) {
    const size_t D = size_t(value_dim(m)), I = m.value_hidden, n2 = m.value_code_bits;
    const size_t n1 = I * D, n_enc2 = 2 * n2 * I, nE = n2 * D;
    low_precision_tables_kernel<<<grid_for(n1 + n_enc2 + nE), kThreads, 0, cudaStream_t(stream)>>>(
        vt->enc1_weight, n1, vt->enc2_weight, n_enc2, vt->codebook, nE, reinterpret_cast<__nv_bfloat16*>(out));
    point_value_tables_low_precision(m, out, vt);
    return int(cudaGetLastError());
}

int launch_encode_values(const ModelShape& m, const ValueTables& vt, const EncodeSource& src, uint32_t n,
                         void* cublas, ValuePrecision precision, float* scratch, uint8_t* bits, float* weights,
                         void* stream) {
    if (n == 0) return 0;
    const bool bf16 = precision == ValuePrecision::bf16, split = precision != ValuePrecision::fp32;
    if (split && (!vt.enc1_weight_bf16 || !vt.enc2_weight_bf16 || !vt.codebook_bf16x3))
        return int(cudaErrorInvalidValue);
    const uint32_t D = value_dim(m), I = m.value_hidden, n2 = m.value_code_bits, n4 = 2 * n2;
    if (D % 4 || I % 4 || n2 % 64) return int(cudaErrorInvalidValue);  // the vector loads above
    cudaStream_t s = cudaStream_t(stream);
    cublasHandle_t h = cublasHandle_t(cublas);
    Scratch sc(m, n, scratch);
    const size_t smem = size_t(D) * 4;
    cudaError_t e = cudaSuccess;
    if (smem > 48 * 1024)
        e = cudaFuncSetAttribute(prepare_values_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (e != cudaSuccess) return int(e);
    prepare_values_kernel<<<n, kThreads, smem, s>>>(m, src, vt, bf16, sc.x, sc.sigma);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);

    // The math mode stays the default: fp32 products are full SGEMMs, and
    // the compute type alone selects tensor cores.
    cublasStatus_t st = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    const cublasComputeType_t compute =
        precision == ValuePrecision::tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = bf16 ? linear(h, vt.enc1_weight_bf16, sc.x, CUDA_R_16BF, compute, I, D, n, sc.hidden)
                  : linear(h, vt.enc1_weight, sc.x, CUDA_R_32F, compute, I, D, n, sc.hidden);
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    __nv_bfloat16* hidden_bf16 = bf16 ? reinterpret_cast<__nv_bfloat16*>(sc.hidden_bf16) : nullptr;
    const size_t n_quads = size_t(n) * I / 4;
    bias_gelu_kernel<<<grid_for(n_quads), kThreads, 0, s>>>(sc.hidden, vt.enc1_bias, I, n_quads, hidden_bf16);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
    st = bf16 ? linear(h, vt.enc2_weight_bf16, hidden_bf16, CUDA_R_16BF, compute, n4, I, n, sc.logits)
              : linear(h, vt.enc2_weight, sc.hidden, CUDA_R_32F, compute, n4, I, n, sc.logits);
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    const size_t n_bytes = size_t(n) * n2 / 8;
    float* bit_values = sc.hidden;  // the hidden activations are spent
    argmax_bits_kernel<<<grid_for(n_bytes), kThreads, 0, s>>>(sc.logits, vt.enc2_bias, n2 / 2, n_bytes, bits,
                                                              bit_values, split);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);

    // Column-major: y^T [D][n] = E^T [D][K] bits^T [K][n]; K = 2n for fp32
    // (an SGEMM), 3 * 2n for the split (bits repeated against hi, mid, lo:
    // 0/1 and the parts are exact in bf16, the sums accumulate in fp32).
    const float one = 1.0f, zero = 0.0f;
    float* y = sc.x;  // the normalized values are spent
    if (split)
        st = cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(n), int(3 * n2), &one, vt.codebook_bf16x3,
                          CUDA_R_16BF, int(D), bit_values, CUDA_R_16BF, int(3 * n2), &zero, y, CUDA_R_32F, int(D),
                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    else
        st = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(n), int(n2), &one, vt.codebook, int(D), bit_values,
                         int(n2), &zero, y, int(D));
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    weight_kernel<<<(n + kWarps - 1) / kWarps, kThreads, 0, s>>>(y, sc.sigma, D, n, weights);
    return int(cudaGetLastError());
}

}  // namespace cuda
}  // namespace commvq
