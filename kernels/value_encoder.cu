// Value encoding on the GPU (docs/METHOD.md, "Values"): per-channel scale and norm
// with LayerNorm in one kernel, the two linear layers and the codeword sum
// y = bits @ E as cuBLAS products, GELU, and argmax-to-bits in small kernels.
// Scratch (floats, n tokens): x [n][D] (later y), hidden [n][max(I, 2n)]
// (later the bits as 0/1 floats), logits [n][4n], sigma [n].
#include <cublas_v2.h>

#include <algorithm>

#include "device_common.cuh"

namespace commvq {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr float kEps = 1e-6f;          // value_encoder.h kValueEps
constexpr double kLayerNormEps = 1e-5;  // value_encoder.cpp

struct Scratch {
    float *x, *hidden, *logits, *sigma;
    Scratch(const ModelShape& m, uint32_t n, float* base) {
        const size_t D = size_t(m.n_kv_heads) * m.head_dim, wide = std::max(m.value_hidden, m.value_code_bits);
        x = base;
        hidden = x + n * D;
        logits = hidden + n * wide;
        sigma = logits + n * size_t(2) * m.value_code_bits;
    }
};

__device__ double block_sum(double x, double* partial) {
    partial[threadIdx.x] = x;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
        if (threadIdx.x < w) partial[threadIdx.x] += partial[threadIdx.x + w];
        __syncthreads();
    }
    const double s = partial[0];
    __syncthreads();
    return s;
}

// u = v / (lambda + eps); sigma = ||u||; u /= sigma + eps; LayerNorm.
__global__ void __launch_bounds__(kThreads)
prepare_values_kernel(const __grid_constant__ ModelShape m, const __grid_constant__ EncodeSource src,
                      const __grid_constant__ ValueTables vt, float* x_all, float* sigma_all) {
    __shared__ double partial[kThreads];
    const uint32_t D = m.n_kv_heads * m.head_dim;
    const void* v = source_row(src, src.first_position + blockIdx.x, true);
    float* x = x_all + size_t(blockIdx.x) * D;
    double s2 = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float u = load_element(v, c, src.slots.io_dtype) / (vt.lambda[c] + kEps);
        x[c] = u;
        s2 += double(u) * u;
    }
    const double sigma = sqrt(block_sum(s2, partial));
    double mean = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float u = float(x[c] / (sigma + kEps));
        x[c] = u;
        mean += u;
    }
    mean = block_sum(mean, partial) / D;
    double var = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) var += (x[c] - mean) * (x[c] - mean);
    const double inv_std = 1.0 / sqrt(block_sum(var, partial) / D + kLayerNormEps);
    for (uint32_t c = threadIdx.x; c < D; c += kThreads)
        x[c] = float((x[c] - mean) * inv_std * vt.norm_weight[c] + vt.norm_bias[c]);
    if (threadIdx.x == 0) sigma_all[blockIdx.x] = float(sigma);
}

__global__ void bias_gelu_kernel(float* h, const float* bias, uint32_t width, size_t n) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        const float x = h[i] + bias[i % width];
        h[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    }
}

// Each thread takes 4 groups (one byte of code bits): the winning option of
// each group of 4 logits (ties keep the lower option) becomes 2 bits:
// 0 -> (1,0), 1 -> (0,1), 2 -> (1,1), 3 -> (0,0).
__global__ void argmax_bits_kernel(const float* logits, const float* bias, uint32_t n_groups, size_t n_bytes,
                                   uint8_t* bits, float* bit_values) {
    constexpr uint32_t kOptionBits[4] = {0b01, 0b10, 0b11, 0b00};
    const uint32_t bytes_per_token = n_groups / 4;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n_bytes; i += size_t(gridDim.x) * blockDim.x) {
        const size_t token = i / bytes_per_token;
        const uint32_t g0 = uint32_t(i % bytes_per_token) * 4;
        uint32_t byte = 0;
        for (uint32_t k = 0; k < 4; ++k) {
            const uint32_t g = g0 + k;
            const float* l = logits + (token * n_groups + g) * 4;
            uint32_t best = 0;
            float best_v = l[0] + bias[4 * g];
            for (uint32_t o = 1; o < 4; ++o) {
                const float v = l[o] + bias[4 * g + o];
                if (v > best_v) { best_v = v; best = o; }
            }
            byte |= kOptionBits[best] << (2 * k);
        }
        bits[i] = uint8_t(byte);
        float* bv = bit_values + i * 8;
        for (int k = 0; k < 8; ++k) bv[k] = float((byte >> k) & 1u);
    }
}

// w = (sigma + eps) / (||y|| + eps), y already formed.
__global__ void __launch_bounds__(kThreads)
weight_kernel(const float* y_all, const float* sigma, uint32_t D, float* weights) {
    __shared__ double partial[kThreads];
    const float* y = y_all + size_t(blockIdx.x) * D;
    double s2 = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) s2 += double(y[c]) * y[c];
    const double norm = sqrt(block_sum(s2, partial));
    if (threadIdx.x == 0) weights[blockIdx.x] = float((double(sigma[blockIdx.x]) + kEps) / (norm + kEps));
}

int grid_for(size_t n) { return int(std::min<size_t>((n + kThreads - 1) / kThreads, 8192)); }

// Row-major out[n][rows] = in[n][cols] @ W^T for W row-major [rows][cols].
cublasStatus_t linear(cublasHandle_t h, const float* W, const float* in, uint32_t rows, uint32_t cols, uint32_t n,
                      float* out) {
    const float one = 1.0f, zero = 0.0f;
    return cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, int(rows), int(n), int(cols), &one, W, int(cols), in, int(cols),
                       &zero, out, int(rows));
}

int from_cublas(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS ? 0 : int(cudaErrorUnknown); }

}  // namespace

size_t value_encoder_scratch_floats(const ModelShape& m, uint32_t n) {
    const size_t D = size_t(m.n_kv_heads) * m.head_dim, wide = std::max(m.value_hidden, m.value_code_bits);
    return size_t(n) * (D + wide + 2 * size_t(m.value_code_bits) + 1);
}

int launch_encode_values(const ModelShape& m, const ValueTables& vt, const EncodeSource& src, uint32_t n,
                         void* cublas, bool tf32, float* scratch, uint8_t* bits, float* weights, void* stream) {
    if (n == 0) return 0;
    cudaStream_t s = cudaStream_t(stream);
    cublasHandle_t h = cublasHandle_t(cublas);
    const uint32_t D = m.n_kv_heads * m.head_dim, I = m.value_hidden, n2 = m.value_code_bits, n4 = 2 * n2;
    Scratch sc(m, n, scratch);
    prepare_values_kernel<<<n, kThreads, 0, s>>>(m, src, vt, sc.x, sc.sigma);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return int(e);

    cublasStatus_t st = cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    if (st == CUBLAS_STATUS_SUCCESS) st = linear(h, vt.enc1_weight, sc.x, I, D, n, sc.hidden);
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    bias_gelu_kernel<<<grid_for(size_t(n) * I), kThreads, 0, s>>>(sc.hidden, vt.enc1_bias, I, size_t(n) * I);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
    st = linear(h, vt.enc2_weight, sc.hidden, n4, I, n, sc.logits);
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    const size_t n_bytes = size_t(n) * n2 / 8;
    float* bit_values = sc.hidden;
    argmax_bits_kernel<<<grid_for(n_bytes), kThreads, 0, s>>>(sc.logits, vt.enc2_bias, n2 / 2, n_bytes, bits,
                                                              bit_values);
    if ((e = cudaGetLastError()) != cudaSuccess) return int(e);
    // y = bits @ E in full fp32: the weight must not carry tensor-core rounding.
    const float one = 1.0f, zero = 0.0f;
    float* y = sc.x;
    st = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, int(D), int(n), int(n2), &one, vt.codebook, int(D), bit_values,
                         int(n2), &zero, y, int(D));
    if (st != CUBLAS_STATUS_SUCCESS) return from_cublas(st);
    weight_kernel<<<n, kThreads, 0, s>>>(y, sc.sigma, D, weights);
    return int(cudaGetLastError());
}

}  // namespace cuda
}  // namespace commvq
