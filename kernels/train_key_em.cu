// Key EM E-step on the GPU (src/train/key_em_cuda.h).
//
// Per chunk of m samples:
//   1. one cuBLAS product gives <t, g> for every sample and every column g:
//      the 2C vectors z_a and i z_b (commutative step) or the C*C explicit
//      centers (the random start);
//   2. one block per sample forms the C*C squared distances from those
//      products (docs/METHOD.md's decomposition ||t||^2 + alpha_A + beta_B +
//      gamma_AB, as the CPU trainer does), finds the hard assignment, its
//      exact error, and writes the soft weights softmax(-e / T) of the
//      sample as one row of W [m][C*C];
//   3. a second product S += W^T T and a column sum n += W^T 1 give the soft
//      statistics; both are added, in a fixed order, to float64 totals.
// No atomics and a fixed reduction order: the result is the same bit for bit
// on every run on one GPU, which makes training deterministic for a seed.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "error.h"
#include "train/key_em_cuda.h"
#include "train_device.cuh"

namespace commvq {
namespace train {

namespace {

using gpu::block_sum;
using gpu::check;
using gpu::check_blas;
using gpu::DeviceArray;
using gpu::Scope;

constexpr int kThreads = 256;
// Soft weights below exp(-kSoftCut) of the sample's largest are dropped, as
// on the CPU (key_trainer.cpp): they are far below float resolution.
constexpr double kSoftCut = 40.0;
// Floats of one chunk's W (and of the explicit step's products): 64 MB.
constexpr size_t kChunkFloats = size_t(16) << 20;
constexpr size_t kMaxChunk = 4096;

// What the per-sample kernel reads. In the commutative step `dots` holds
// [m][2C] products with g = (z_0..z_{C-1}, i z_0..i z_{C-1}) and `vectors` is
// g itself; in the explicit step `dots` holds [m][C*C] products with the
// centers and `vectors` the centers.
struct DistanceArgs {
    const float* t;        // [m][d] samples of the chunk
    const float* tt;       // [m] their squared norms
    const float* dots;     // see above
    const float* vectors;  // see above
    const float* zz;       // [C] ||z_a||^2 (commutative)
    const float* gamma;    // [C*C] 2 <z_A, i z_B> (commutative)
    const float* cc;       // [C*C] squared norms of the centers (explicit)
    uint32_t C, d;
    bool explicit_centers;
};

__device__ __forceinline__ float squared_distance(const DistanceArgs& a, uint32_t i, uint32_t c) {
    const size_t CC = size_t(a.C) * a.C;
    if (a.explicit_centers) return a.tt[i] + a.cc[c] - 2.0f * a.dots[i * CC + c];
    const uint32_t A = c / a.C, B = c % a.C;
    const float* p = a.dots + size_t(i) * 2 * a.C;
    const float alpha = a.tt[i] + a.zz[A] - 2.0f * p[A];
    const float beta = a.zz[B] - 2.0f * p[a.C + B];
    return alpha + beta + a.gamma[c];
}

__device__ __forceinline__ float center_element(const DistanceArgs& a, uint32_t c, uint32_t k) {
    if (a.explicit_centers) return a.vectors[size_t(c) * a.d + k];
    const uint32_t A = c / a.C, B = c % a.C;
    return a.vectors[size_t(A) * a.d + k] + a.vectors[size_t(a.C + B) * a.d + k];
}

// One block per sample: hard assignment, its error, and the soft weights.
__global__ void __launch_bounds__(kThreads) assign_kernel(DistanceArgs a, float temperature, bool soft,
                                                          float* weights, uint32_t* hard_code,
                                                          double* hard_err) {
    __shared__ double sum_shared[kThreads];
    __shared__ float min_value[kThreads];
    __shared__ uint32_t min_code[kThreads];
    const uint32_t i = blockIdx.x;
    const uint32_t CC = a.C * a.C;

    // Minimum squared distance, lowest code on ties (as the CPU's scan).
    float best = INFINITY;
    uint32_t best_code = 0xffffffffu;
    for (uint32_t c = threadIdx.x; c < CC; c += kThreads) {
        const float e2 = squared_distance(a, i, c);
        if (e2 < best) {  // c increases within a thread: keeps the lowest
            best = e2;
            best_code = c;
        }
    }
    min_value[threadIdx.x] = best;
    min_code[threadIdx.x] = best_code;
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float v = min_value[threadIdx.x + s];
            const uint32_t c = min_code[threadIdx.x + s];
            if (v < min_value[threadIdx.x] || (v == min_value[threadIdx.x] && c < min_code[threadIdx.x])) {
                min_value[threadIdx.x] = v;
                min_code[threadIdx.x] = c;
            }
        }
        __syncthreads();
    }
    const float e2min = min_value[0];
    const uint32_t code = min_code[0];

    // The hard error from the center itself, in float64 (not from e2min,
    // which carries the cancellation of the decomposition).
    double err = 0;
    for (uint32_t k = threadIdx.x; k < a.d; k += kThreads) {
        const double diff = double(a.t[size_t(i) * a.d + k]) - center_element(a, code, k);
        err += diff * diff;
    }
    err = block_sum(err, sum_shared);
    if (threadIdx.x == 0) {
        hard_code[i] = code;
        hard_err[i] = err;
    }
    if (!soft) return;

    // softmax(-e / T) over the codes within reach of the nearest; e = sqrt(e2).
    const double emin = sqrt(fmax(0.0, double(e2min)));
    const double reach = emin + kSoftCut * temperature;
    const float cut = float(reach * reach);
    double sum = 0;
    for (uint32_t c = threadIdx.x; c < CC; c += kThreads) {
        const float e2 = squared_distance(a, i, c);
        if (e2 <= cut) sum += exp(-(sqrt(fmax(0.0, double(e2))) - emin) / temperature);
    }
    sum = block_sum(sum, sum_shared);
    float* row = weights + size_t(i) * CC;
    for (uint32_t c = threadIdx.x; c < CC; c += kThreads) {
        const float e2 = squared_distance(a, i, c);
        row[c] = e2 <= cut ? float(exp(-(sqrt(fmax(0.0, double(e2))) - emin) / temperature) / sum) : 0.0f;
    }
}

// Squared norms of rows [rows][d] (float64 sums, as the CPU's).
__global__ void row_norms_kernel(const float* x, size_t rows, uint32_t d, float* out) {
    const size_t r = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    double s = 0;
    for (uint32_t k = 0; k < d; ++k) s += double(x[r * d + k]) * x[r * d + k];
    out[r] = float(s);
}

// weight[c] += sum over the chunk's rows of W[i][c], rows in order.
__global__ void column_sum_kernel(const float* w, uint32_t m, uint32_t CC, double* weight) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= CC) return;
    double s = 0;
    for (uint32_t i = 0; i < m; ++i) s += w[size_t(i) * CC + c];
    weight[c] += s;
}

__global__ void accumulate_kernel(const float* chunk, size_t count, double* total) {
    const size_t k = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k < count) total[k] += chunk[k];
}

unsigned blocks_for(size_t count) { return unsigned((count + kThreads - 1) / kThreads); }

}  // namespace

struct KeyEStepCuda::Impl {
    int device = 0;
    size_t n = 0, chunk = 0;
    uint32_t d = 0, C = 0;
    size_t CC = 0;
    std::vector<float> scales;
    cublasHandle_t blas = nullptr;
    DeviceArray<float> t, tt, dots, vectors, zz, gamma, cc, weights, sum_chunk;
    DeviceArray<uint32_t> hard_code;
    DeviceArray<double> hard_err, weight, weighted_sum;

    ~Impl() {
        if (blas) {
            gpu::QuietScope scope(device);
            cublasDestroy(blas);
        }
    }

    // row-major out[m][cols] = x[m][d] @ g[cols][d]^T (column-major view:
    // out^T = g^T(^T) x^T).
    void products(const float* x, size_t m, const float* g, size_t cols, float* out) {
        const float one = 1.0f, zero = 0.0f;
        check_blas(cublasSgemm(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(cols), int(m), int(d), &one, g, int(d), x,
                               int(d), &zero, out, int(cols)),
                   "the distance product");
    }

    void run(DistanceArgs args, double temperature, bool soft, const EStepResult& out) {
        Scope scope(device);
        if (soft) {
            check(cudaMemset(weight.get(), 0, CC * sizeof(double)), "cudaMemset");
            check(cudaMemset(weighted_sum.get(), 0, CC * d * sizeof(double)), "cudaMemset");
        }
        const size_t cols = args.explicit_centers ? CC : 2 * size_t(C);
        for (size_t c0 = 0; c0 < n; c0 += chunk) {
            const size_t m = std::min(chunk, n - c0);
            const float* x = t.get() + c0 * d;
            products(x, m, args.vectors, cols, dots.get());
            args.t = x;
            args.tt = tt.get() + c0;
            args.dots = dots.get();
            assign_kernel<<<unsigned(m), kThreads>>>(args, float(temperature), soft, weights.get(),
                                                     hard_code.get() + c0, hard_err.get() + c0);
            check(cudaGetLastError(), "the assignment kernel");
            if (!soft) continue;
            // S_chunk[CC][d] = W^T x  (column-major: S^T[d][CC] = x^T W).
            const float one = 1.0f, zero = 0.0f;
            check_blas(cublasSgemm(blas, CUBLAS_OP_N, CUBLAS_OP_T, int(d), int(CC), int(m), &one, x, int(d),
                                   weights.get(), int(CC), &zero, sum_chunk.get(), int(d)),
                       "the weighted-sum product");
            accumulate_kernel<<<blocks_for(CC * d), kThreads>>>(sum_chunk.get(), CC * d, weighted_sum.get());
            column_sum_kernel<<<blocks_for(CC), kThreads>>>(weights.get(), uint32_t(m), uint32_t(CC),
                                                           weight.get());
            check(cudaGetLastError(), "the accumulation kernels");
        }
        out.hard_code->resize(n);
        out.hard_err->resize(n);
        hard_code.download(out.hard_code->data(), n);
        std::vector<double> err(n);
        hard_err.download(err.data(), n);
        double total = 0;
        for (size_t i = 0; i < n; ++i) {
            (*out.hard_err)[i] = float(err[i]);
            total += err[i] * double(scales[i]) * scales[i];
        }
        *out.squared_error = total;
        if (!soft) return;
        out.weight->resize(CC);
        out.weighted_sum->resize(CC * d);
        weight.download(out.weight->data(), CC);
        weighted_sum.download(out.weighted_sum->data(), CC * d);
    }
};

KeyEStepCuda::KeyEStepCuda(int32_t device, const float* samples, const float* scales, size_t n,
                           uint32_t head_dim, uint32_t sub_centers)
    : impl_(new Impl) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        count = 0;
    }
    require(device >= 0 && device < count, COMMVQ_ERR_INVALID_ARGUMENT,
            "key training: device " + std::to_string(device) + " is not a CUDA device (this machine has " +
                std::to_string(count) + ")");
    Impl& s = *impl_;
    s.device = device;
    s.n = n;
    s.d = head_dim;
    s.C = sub_centers;
    s.CC = size_t(sub_centers) * sub_centers;
    s.chunk = std::clamp<size_t>(kChunkFloats / s.CC, 1, kMaxChunk);
    s.scales.assign(scales, scales + n);
    Scope scope(device);
    check_blas(cublasCreate(&s.blas), "cublasCreate");
    // Plain float32 products: TF32 would lose the distances' precision.
    check_blas(cublasSetMathMode(s.blas, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
    s.t.allocate(n * head_dim, device, "the samples");
    s.t.upload(samples, n * head_dim);
    s.tt.allocate(n, device, "the sample norms");
    row_norms_kernel<<<blocks_for(n), kThreads>>>(s.t.get(), n, head_dim, s.tt.get());
    check(cudaGetLastError(), "the norm kernel");
    s.dots.allocate(s.chunk * s.CC, device, "the distance products");
    s.vectors.allocate(s.CC * head_dim, device, "the centers");
    s.zz.allocate(sub_centers, device, "the sub-center norms");
    s.gamma.allocate(s.CC, device, "the cross terms");
    s.cc.allocate(s.CC, device, "the center norms");
    s.weights.allocate(s.chunk * s.CC, device, "the soft weights");
    s.sum_chunk.allocate(s.CC * head_dim, device, "a chunk's weighted sums");
    s.hard_code.allocate(n, device, "the hard codes");
    s.hard_err.allocate(n, device, "the hard errors");
    s.weight.allocate(s.CC, device, "the center weights");
    s.weighted_sum.allocate(s.CC * head_dim, device, "the weighted sums");
}

KeyEStepCuda::~KeyEStepCuda() = default;

void KeyEStepCuda::explicit_step(const float* centers, double temperature, const EStepResult& out) {
    Impl& s = *impl_;
    Scope scope(s.device);
    s.vectors.upload(centers, s.CC * s.d);
    row_norms_kernel<<<blocks_for(s.CC), kThreads>>>(s.vectors.get(), s.CC, s.d, s.cc.get());
    check(cudaGetLastError(), "the norm kernel");
    DistanceArgs args{};
    args.vectors = s.vectors.get();
    args.cc = s.cc.get();
    args.C = s.C;
    args.d = s.d;
    args.explicit_centers = true;
    s.run(args, temperature, true, out);
}

void KeyEStepCuda::commutative_step(const float* g, const float* zz, const float* gamma, double temperature,
                                    bool soft, const EStepResult& out) {
    Impl& s = *impl_;
    const uint32_t C = s.C, d = s.d;
    Scope scope(s.device);
    s.vectors.upload(g, size_t(2) * C * d);
    s.zz.upload(zz, C);
    s.gamma.upload(gamma, s.CC);
    DistanceArgs args{};
    args.vectors = s.vectors.get();
    args.zz = s.zz.get();
    args.gamma = s.gamma.get();
    args.C = C;
    args.d = d;
    args.explicit_centers = false;
    s.run(args, temperature, soft, out);
}

}  // namespace train
}  // namespace commvq
