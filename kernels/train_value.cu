// Value codebook training on the GPU (src/train/value_trainer_cuda.h).
//
// One step for a batch of B tokens (D channels, hidden width I, n groups,
// K = 2n code bits, O = 4n logits), all queued on one stream:
//
//   forward
//     prepare_kernel      one block per token: u = v / (lambda + eps),
//                         sigma = ||u||, u / (sigma + eps), LayerNorm -> xhat, h0
//     cuBLAS              a1 = h0 W1^T
//     bias_gelu_kernel    a1 += b1, h1 = GELU(a1) (erf form)
//     cuBLAS              logits = h1 W2^T
//     options_kernel      one thread per group: + b2, + Gumbel noise, softmax p,
//                         the hard (argmax) or relaxed option, its two bits
//     cuBLAS              y = bits E
//     reconstruct_kernel  one block per token: ||y||, v_hat, the token's
//                         weighted squared error and (backward) dL/dy
//     loss_kernel         the batch loss, rows summed in order
//   backward (straight-through: the softmax's Jacobian stands for the argmax)
//     cuBLAS              dE = bits^T dy, dbits = dy E^T
//     dlogits_kernel      through the option table and the softmax
//     cuBLAS + columns    dW2 = dlogits^T h1, db2, dh1 = dlogits W2
//     gelu_backward       da1 = dh1 * GELU'(a1)
//     cuBLAS + columns    dW1 = da1^T h0, db1, dh0 = da1 W1
//     layer_norm_grad     LayerNorm weight and bias
//   optimizer
//     square_sum_kernel + clip_kernel   global gradient norm -> clip factor
//     adamw_kernel        the CPU trainer's AdamW, element by element
//
// Every elementwise formula is value_trainer.cpp's, in the same precisions
// (float storage, float64 where the CPU uses float64), so the two back ends
// differ only by the summation order of the products and reductions.
//
// Determinism: the products are cuBLAS SGEMMs in pedantic float32 (no TF32),
// on one stream with a workspace of our own and atomics disallowed, which
// cuBLAS documents as bitwise reproducible on one GPU. Every reduction here
// has a fixed order: block sums are trees over a fixed thread count, column
// sums run over the batch rows in order (as the CPU does), and the global
// gradient norm uses a fixed number of blocks whatever the GPU. No atomics.
//
// Memory: the parameters, their gradients and the two AdamW moments are each
// one flat array (value_parameters() order, every tensor starting on a
// 256-byte boundary, padding kept zero), so the norm and the optimizer walk
// them in one launch. Activations are [B][...] arrays sized for the batch.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "error.h"
#include "train/value_trainer_cuda.h"
#include "train_device.cuh"
#include "value_encoder.h"
#include "value_formulas.h"

namespace commvq {
namespace train {

namespace {

using gpu::block_sum;
using gpu::check;
using gpu::check_blas;
using gpu::DeviceArray;
using gpu::fail;
using gpu::QuietScope;
using gpu::Scope;

constexpr int kThreads = 256;
constexpr float kEps = 1e-6f;            // value_encoder.h kValueEps
static_assert(kEps == kValueEps, "the device eps must be the library's");
constexpr double kLayerNormEps = 1e-5;   // value_trainer.cpp
constexpr double kAdamEps = 1e-8;        // value_trainer.cpp
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.3989422804014327;
// Blocks of the first pass of the gradient norm: a constant, so the order
// of the sum never depends on the GPU it runs on.
constexpr int kNormBlocks = 256;
// Tensors of the flat parameter array start on multiples of this many floats
// (256 bytes), so every matrix handed to cuBLAS is aligned alike on every run.
constexpr size_t kAlignFloats = 64;
// cuBLAS workspace of our own: with it, products on our stream are
// reproducible (cuBLAS "Results reproducibility").
constexpr size_t kCublasWorkspace = size_t(32) << 20;
constexpr size_t kTensors = 7;  // value_parameters(): norm w, norm b, W1, b1, W2, b2, E


// ---- the batch's rows and noise, as the kernels see them ------------------

// Token b of the batch: row index[b] of values (the trainer: all training
// tokens are on the device) or row b (evaluate: the batch was uploaded).
// weight, when not null, is indexed the same way.
struct Rows {
    const float* values;
    const uint64_t* index;
    const float* weight;
    __device__ size_t row(uint32_t b) const { return index ? size_t(index[b]) : size_t(b); }
};

// splitmix64's finalizer, as value_trainer.cpp mix().
__host__ __device__ __forceinline__ uint64_t mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Noise on the logits: a host-given table [B][O], or the CPU trainer's
// counter-based Gumbel(0, 1) of (seed, step), or none. The hash is integer
// arithmetic, identical to the host's; the two logarithms are float64 (CUDA's
// log is within 1 ulp of glibc's), so after rounding to float the noise is
// the CPU trainer's, bar a double-rounding case about once in 10^8 draws.
struct Noise {
    const float* table;
    uint64_t seed;
    uint64_t step;
    bool gumbel;
    __device__ float at(size_t k) const {
        if (table) return table[k];
        if (!gumbel) return 0.0f;
        const uint64_t counter = (step << 32) + k;
        const double u = (double(mix(seed ^ mix(counter)) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
        return float(-log(-log(u)));
    }
};

// The per-step constants of AdamW, computed on the host exactly as the CPU
// trainer computes them.
struct AdamStep {
    float beta1, beta2, lr;
    float decay;  // float(1 - lr * weight_decay)
    double c1, c2;  // bias corrections 1 - beta^(step + 1)
};

// ---- kernels ---------------------------------------------------------------


// One block per token: u = v / (lambda + eps), sigma = ||u||,
// u / (sigma + eps), then LayerNorm (eps 1e-5): xhat and h0 = xhat w + b.
// xhat's row holds u on the way.
__global__ void __launch_bounds__(kThreads)
prepare_kernel(Rows rows, const float* lambda, const float* norm_weight, const float* norm_bias, uint32_t D,
               float* xhat_all, float* h0_all, float* sigma_all) {
    __shared__ double partial[kThreads];
    const uint32_t b = blockIdx.x;
    const float* v = rows.values + rows.row(b) * D;
    float* u = xhat_all + size_t(b) * D;
    float* h0 = h0_all + size_t(b) * D;
    double s2 = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float uc = v[c] / (lambda[c] + kEps);
        u[c] = uc;
        s2 += double(uc) * uc;
    }
    const double sigma = sqrt(block_sum(s2, partial));
    double mean = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float uc = float(u[c] / (sigma + kEps));
        u[c] = uc;
        mean += uc;
    }
    mean = block_sum(mean, partial) / D;
    double var = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) var += (u[c] - mean) * (u[c] - mean);
    const double rstd = 1.0 / sqrt(block_sum(var, partial) / D + kLayerNormEps);
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float xh = float((u[c] - mean) * rstd);
        u[c] = xh;
        h0[c] = __fadd_rn(__fmul_rn(xh, norm_weight[c]), norm_bias[c]);
    }
    if (threadIdx.x == 0) sigma_all[b] = float(sigma);
}

// a1 += b1 (kept: GELU' needs it), h1 = GELU(a1) = a1 Phi(a1), in float64.
__global__ void bias_gelu_kernel(float* a1, const float* bias, float* h1, uint32_t width, size_t count) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        const float xf = __fadd_rn(a1[i], bias[i % width]);
        a1[i] = xf;
        h1[i] = value_formulas::gelu(xf);
    }
}

// One thread per (token, group) i: the group's 4 logits (+ b2) plus noise,
// their softmax p (tau 1), the option (argmax, lowest on ties, or p itself
// when relaxed) and its bits 0 -> (1,0), 1 -> (0,1), 2 -> (1,1), 3 -> (0,0):
// bit0 = o0 + o2, bit1 = o1 + o2 (the CPU's sums with the zero terms, which
// round the same). Group i's logits start at 4 i, its bits at 2 i.
__global__ void options_kernel(float* logits, const float* bias, Noise noise, bool hard, uint32_t n_groups,
                               size_t count, float* prob, float* code) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        const uint32_t g = uint32_t(i % n_groups);
        float* l = logits + 4 * i;
        double z[4], zmax = -INFINITY;
        for (int k = 0; k < 4; ++k) {
            l[k] = __fadd_rn(l[k], bias[4 * g + k]);
            z[k] = __fadd_rn(l[k], noise.at(4 * i + k));
            zmax = fmax(zmax, z[k]);
        }
        double sum = 0;
        for (int k = 0; k < 4; ++k) sum += exp(z[k] - zmax);
        int best = 0;
        float p[4];
        for (int k = 0; k < 4; ++k) {
            p[k] = float(exp(z[k] - zmax) / sum);
            prob[4 * i + k] = p[k];
            if (z[k] > z[best]) best = k;
        }
        float o[4];
        for (int k = 0; k < 4; ++k) o[k] = hard ? (k == best ? 1.0f : 0.0f) : p[k];
        code[2 * i] = __fadd_rn(o[0], o[2]);
        code[2 * i + 1] = __fadd_rn(o[1], o[2]);
    }
}

// One block per token: ||y||, v_hat = y / (||y|| + eps) (sigma + eps)
// (lambda + eps), the weighted squared error of the token, and, for the
// backward pass, dL/dy through the normalization by ||y||:
//   q = dL/dv_hat (lambda + eps) = (v_hat - v) w / (B D) (lambda + eps)
//   dy = (sigma + eps) (q / (||y|| + eps) - <q, y> y / ((||y|| + eps)^2 ||y||))
__global__ void __launch_bounds__(kThreads)
reconstruct_kernel(const float* y_all, Rows rows, const float* sigma_all, const float* lambda, uint32_t D,
                   double inv_count, bool gradients, float* vhat_all, float* ynorm_all, double* row_loss,
                   float* dy_all) {
    __shared__ double partial[kThreads];
    const uint32_t b = blockIdx.x;
    const float* y = y_all + size_t(b) * D;
    const float* v = rows.values + rows.row(b) * D;
    float* vhat = vhat_all + size_t(b) * D;
    double y2 = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) y2 += double(y[c]) * y[c];
    const float ny = float(sqrt(block_sum(y2, partial)));
    const float sigma = sigma_all[b];
    // float arithmetic, as the CPU's (sigma + eps) / (ynorm + eps) on floats
    const double scale = __fdiv_rn(__fadd_rn(sigma, kEps), __fadd_rn(ny, kEps));
    double row = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const float vh = float(double(y[c]) * scale * double(__fadd_rn(lambda[c], kEps)));
        vhat[c] = vh;
        const double diff = double(vh) - v[c];
        row += diff * diff;
    }
    row = block_sum(row, partial);
    const double w = rows.weight ? double(rows.weight[rows.row(b)]) : 1.0;
    if (threadIdx.x == 0) {
        ynorm_all[b] = ny;
        row_loss[b] = w * row;
    }
    if (!gradients) return;
    const double den = double(ny) + kEps, wc = w * inv_count;
    double qy = 0;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const double q = (double(vhat[c]) - v[c]) * wc * double(__fadd_rn(lambda[c], kEps));
        qy += q * y[c];
    }
    qy = block_sum(qy, partial);
    const double s = double(__fadd_rn(sigma, kEps));
    const double radial = ny > 0 ? qy / (den * den * ny) : 0.0;
    float* dy = dy_all + size_t(b) * D;
    for (uint32_t c = threadIdx.x; c < D; c += kThreads) {
        const double q = (double(vhat[c]) - v[c]) * wc * double(__fadd_rn(lambda[c], kEps));
        dy[c] = float(s * (q / den - radial * y[c]));
    }
}

// The batch loss: rows summed in order (as the CPU), over 2 B D.
__global__ void loss_kernel(const double* row_loss, uint32_t B, uint32_t D, double* loss) {
    double total = 0;
    for (uint32_t b = 0; b < B; ++b) total += row_loss[b];
    *loss = total / (2.0 * double(B) * D);
}

// One thread per (token, group) i: dbits -> d option (the option table:
// option 0 reads bit 0, 1 bit 1, 2 both, 3 neither), then the softmax's
// Jacobian dlogit_k = p_k (dopt_k - sum_o p_o dopt_o).
__global__ void dlogits_kernel(const float* dcode, const float* prob, size_t count, float* dlogits) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        const float d0 = dcode[2 * i], d1 = dcode[2 * i + 1];
        const float dopt[4] = {d0, d1, __fadd_rn(d0, d1), 0.0f};
        const float* p = prob + 4 * i;
        double dot = 0;
        for (int k = 0; k < 4; ++k) dot += double(dopt[k]) * p[k];
        for (int k = 0; k < 4; ++k) dlogits[4 * i + k] = float(p[k] * (dopt[k] - dot));
    }
}

// da1 = dh1 GELU'(a1), GELU'(x) = Phi(x) + x phi(x); in place over dh1.
__global__ void gelu_backward_kernel(const float* a1, float* dh1, size_t count) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        const double x = a1[i];
        const double d = 0.5 * (1.0 + erf(x * kSqrtHalf)) + x * exp(-0.5 * x * x) * kInvSqrt2Pi;
        dh1[i] = float(dh1[i] * d);
    }
}

// Bias gradient: out[c] = sum over rows of x[r][c], float64, rows in order.
__global__ void column_sum_kernel(const float* x, uint32_t rows, uint32_t cols, float* out) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    double acc = 0;
    for (uint32_t r = 0; r < rows; ++r) acc += x[size_t(r) * cols + c];
    out[c] = float(acc);
}

// LayerNorm affine gradients: dw[c] = sum_b dh0 xhat, db[c] = sum_b dh0.
__global__ void layer_norm_grad_kernel(const float* dh0, const float* xhat, uint32_t rows, uint32_t D, float* dw,
                                       float* dbias) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    double w = 0, bsum = 0;
    for (uint32_t r = 0; r < rows; ++r) {
        const float g = dh0[size_t(r) * D + c];
        w += double(g) * xhat[size_t(r) * D + c];
        bsum += g;
    }
    dw[c] = float(w);
    dbias[c] = float(bsum);
}

// First pass of ||g||^2: kNormBlocks blocks, each a fixed strided share.
__global__ void __launch_bounds__(kThreads) square_sum_kernel(const float* g, size_t count, double* partial) {
    __shared__ double shared[kThreads];
    double acc = 0;
    for (size_t i = blockIdx.x * size_t(kThreads) + threadIdx.x; i < count; i += size_t(gridDim.x) * kThreads)
        acc += double(g[i]) * g[i];
    acc = block_sum(acc, shared);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Second pass: the clip factor grad_clip / ||g|| when ||g|| > grad_clip, else 1.
__global__ void __launch_bounds__(kThreads) clip_kernel(const double* partial, uint32_t n_partial, float grad_clip,
                                                        double* clip) {
    __shared__ double shared[kThreads];
    double acc = 0;
    for (uint32_t i = threadIdx.x; i < n_partial; i += kThreads) acc += partial[i];
    const double norm = sqrt(block_sum(acc, shared));
    if (threadIdx.x == 0) *clip = norm > grad_clip ? grad_clip / norm : 1.0;
}

// AdamW with decoupled weight decay and bias-corrected moments, the CPU
// trainer's arithmetic operation for operation (the _rn intrinsics keep the
// compiler from fusing multiply-adds the CPU rounds separately):
//   g  = grad * clip                               (float64)
//   m1 = float(float(beta1 * m1) + (1 - beta1) g)
//   m2 = float(float(beta2 * m2) + (1 - beta2) g g)
//   p  = p * float(1 - lr wd)
//   p  = p - float(lr (m1 / c1) / (sqrt(m2 / c2) + 1e-8))
__global__ void adamw_kernel(float* param, const float* grad, float* m1, float* m2, size_t count, const double* clip,
                             AdamStep a) {
    const double k = *clip;
    const double one_minus_b1 = 1.0 - double(a.beta1), one_minus_b2 = 1.0 - double(a.beta2);
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count; i += size_t(gridDim.x) * blockDim.x) {
        const double g = __dmul_rn(double(grad[i]), k);
        const float first = float(__dadd_rn(double(__fmul_rn(a.beta1, m1[i])), __dmul_rn(one_minus_b1, g)));
        const float second =
            float(__dadd_rn(double(__fmul_rn(a.beta2, m2[i])), __dmul_rn(__dmul_rn(one_minus_b2, g), g)));
        m1[i] = first;
        m2[i] = second;
        const double step = __ddiv_rn(__dmul_rn(double(a.lr), __ddiv_rn(double(first), a.c1)),
                                      __dadd_rn(__dsqrt_rn(__ddiv_rn(double(second), a.c2)), kAdamEps));
        param[i] = __fsub_rn(__fmul_rn(param[i], a.decay), float(step));
    }
}

unsigned grid_for(size_t count) {
    return unsigned(std::max<size_t>(1, std::min<size_t>((count + kThreads - 1) / kThreads, size_t(1) << 16)));
}

void check_launch(const char* what) { check(cudaGetLastError(), what); }

// ---- row-major products through column-major cuBLAS ------------------------
// A row-major [M][N] matrix is a column-major N x M one, so C = A B becomes
// C^T = B^T A^T with the operands swapped.

const float kOne = 1.0f, kZero = 0.0f;

// C[M][N] = A[M][K] @ B[K][N]
void mm_nn(cublasHandle_t h, const float* A, const float* B, float* C, size_t M, size_t N, size_t K, const char* what) {
    check_blas(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, int(N), int(M), int(K), &kOne, B, int(N), A, int(K), &kZero, C,
                           int(N)),
               what);
}

// C[M][N] = A[M][K] @ B[N][K]^T  (a Linear layer: B is its weight)
void mm_nt(cublasHandle_t h, const float* A, const float* B, float* C, size_t M, size_t N, size_t K, const char* what) {
    check_blas(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, int(N), int(M), int(K), &kOne, B, int(K), A, int(K), &kZero, C,
                           int(N)),
               what);
}

// C[M][N] = A[K][M]^T @ B[K][N]  (a weight gradient: sums over the batch)
void mm_tn(cublasHandle_t h, const float* A, const float* B, float* C, size_t M, size_t N, size_t K, const char* what) {
    check_blas(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, int(N), int(M), int(K), &kOne, B, int(N), A, int(M), &kZero, C,
                           int(N)),
               what);
}

int checked_device(int32_t device) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no device" error
        count = 0;
    }
    require(device >= 0 && device < count, COMMVQ_ERR_INVALID_ARGUMENT,
            "value training: device " + std::to_string(device) + " is not a CUDA device (this machine has " +
                std::to_string(count) + ")");
    return device;
}

// The stream and cuBLAS handle of a model, made and destroyed on its device.
class Stream {
public:
    explicit Stream(int device) : device_(device) {
        Scope scope(device);
        check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    }
    ~Stream() {
        QuietScope scope(device_);
        cudaStreamDestroy(stream_);
    }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    cudaStream_t get() const { return stream_; }

private:
    int device_;
    cudaStream_t stream_ = nullptr;
};

class Blas {
public:
    explicit Blas(int device) : device_(device) {
        Scope scope(device);
        check_blas(cublasCreate(&handle_), "cublasCreate");
    }
    ~Blas() {
        QuietScope scope(device_);
        cublasDestroy(handle_);
    }
    Blas(const Blas&) = delete;
    Blas& operator=(const Blas&) = delete;
    cublasHandle_t get() const { return handle_; }

private:
    int device_;
    cublasHandle_t handle_ = nullptr;
};

}  // namespace

// ---- the device model --------------------------------------------------------

// Parameters, gradients, activations and the work of one forward/backward
// pass on one device. Methods other than the constructor expect the caller
// to hold a Scope of the device.
struct ValueObjectiveCuda::Model {
    int device;
    uint32_t D, I, n, K, O;
    size_t offset[kTensors], count[kTensors], total = 0;
    uint32_t capacity = 0;  // batch rows the activations hold
    Stream stream;
    DeviceArray<uint8_t> workspace;  // outlives the handle that uses it
    Blas blas;
    DeviceArray<float> params, grads, lambda;
    DeviceArray<float> xhat, h0, sigma, a1, h1, logits, prob, code, y, vhat, ynorm, dy, dcode, dlogits, dh1, dh0;
    DeviceArray<double> row_loss, loss;
    DeviceArray<float> v_in, noise_in, weight_in;  // evaluate()'s uploads

    Model(int32_t dev, uint32_t value_dim, uint32_t value_bits, uint32_t hidden)
        : device(checked_device(dev)), D(value_dim), I(hidden), n(value_dim * value_bits / 2), K(2 * n), O(4 * n),
          stream(device), blas(device) {
        require(value_bits == 1 || value_bits == 2, COMMVQ_ERR_INVALID_ARGUMENT,
                "value training: value_bits must be 1 or 2, got " + std::to_string(value_bits));
        require(value_dim > 0 && hidden > 0 && value_dim * value_bits % 2 == 0, COMMVQ_ERR_INVALID_ARGUMENT,
                "value training: bad shape (value_dim " + std::to_string(value_dim) + ", hidden " +
                    std::to_string(hidden) + ")");
        Scope scope(device);
        cublasHandle_t h = blas.get();
        check_blas(cublasSetStream(h, stream.get()), "cublasSetStream");
        workspace.allocate(kCublasWorkspace, device, "the cuBLAS workspace");
        check_blas(cublasSetWorkspace(h, workspace.get(), kCublasWorkspace), "cublasSetWorkspace");
        // Plain float32 products (no TF32, no reduced-precision shortcuts).
        check_blas(cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
        check_blas(cublasSetAtomicsMode(h, CUBLAS_ATOMICS_NOT_ALLOWED), "cublasSetAtomicsMode");

        const size_t sizes[kTensors] = {D, D, size_t(I) * D, I, size_t(O) * I, O, size_t(K) * D};
        for (size_t t = 0; t < kTensors; ++t) {
            offset[t] = total;
            count[t] = sizes[t];
            total += (sizes[t] + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
        }
        params.allocate(total, device, "the parameters");
        params.fill_bytes(0, stream.get());
        // Gradient padding stays zero (it enters the norm); the tensors start
        // as NaN so an entry the backward pass misses shows.
        grads.allocate(total, device, "the gradients");
        grads.fill_bytes(0, stream.get());
        for (size_t t = 0; t < kTensors; ++t)
            check(cudaMemsetAsync(grads.get() + offset[t], 0xFF, count[t] * sizeof(float), stream.get()),
                  "cudaMemsetAsync");
        lambda.allocate(D, device, "lambda");
        loss.allocate(1, device, "the loss");
    }

    float* param(size_t t) const { return params.get() + offset[t]; }
    float* grad(size_t t) const { return grads.get() + offset[t]; }

    // Activations for batches of up to `batch` tokens (NaN-filled).
    void reserve(uint32_t batch) {
        if (batch <= capacity) return;
        const size_t B = batch;
        struct Entry {
            DeviceArray<float>* array;
            size_t per_row;
            const char* what;
        };
        const Entry entries[] = {
            {&xhat, D, "xhat"},         {&h0, D, "h0"},         {&sigma, 1, "sigma"},
            {&a1, I, "a1"},             {&h1, I, "h1"},         {&logits, O, "the logits"},
            {&prob, O, "the softmax"},  {&code, K, "the bits"}, {&y, D, "y"},
            {&vhat, D, "v_hat"},        {&ynorm, 1, "||y||"},   {&dy, D, "dy"},
            {&dcode, K, "dbits"},       {&dlogits, O, "dlogits"}, {&dh1, I, "dh1"},
            {&dh0, D, "dh0"},
        };
        for (const Entry& e : entries) {
            e.array->allocate(B * e.per_row, device, e.what);
            e.array->fill_bytes(0xFF, stream.get());
        }
        row_loss.allocate(B, device, "the row errors");
        row_loss.fill_bytes(0xFF, stream.get());
        capacity = batch;
    }

    void upload_parameters(const ValueCodebook& vc) {
        // value_parameters() order (it takes a non-const codebook).
        const std::vector<float>* p[kTensors] = {&vc.norm_weight, &vc.norm_bias,   &vc.enc1_weight, &vc.enc1_bias,
                                                 &vc.enc2_weight, &vc.enc2_bias, &vc.codebook};
        for (size_t t = 0; t < kTensors; ++t) {
            require(p[t]->size() == count[t], COMMVQ_ERR_INVALID_ARGUMENT,
                    "value training: parameter tensor " + std::to_string(t) + " has " + std::to_string(p[t]->size()) +
                        " elements, the shape needs " + std::to_string(count[t]));
            check(cudaMemcpyAsync(param(t), p[t]->data(), count[t] * sizeof(float), cudaMemcpyHostToDevice,
                                  stream.get()),
                  "copy of the parameters to the device");
        }
        require(vc.lambda.size() == D, COMMVQ_ERR_INVALID_ARGUMENT,
                "value training: lambda has " + std::to_string(vc.lambda.size()) + " elements, expected " +
                    std::to_string(D));
        check(cudaMemcpyAsync(lambda.get(), vc.lambda.data(), D * sizeof(float), cudaMemcpyHostToDevice, stream.get()),
              "copy of lambda to the device");
    }

    // Copies the device's tensors (params or grads) into vc's tensors.
    void download(const DeviceArray<float>& flat, ValueCodebook& vc) {
        const std::vector<std::vector<float>*> p = value_parameters(vc);
        for (size_t t = 0; t < kTensors; ++t) {
            p[t]->resize(count[t]);
            check(cudaMemcpyAsync(p[t]->data(), flat.get() + offset[t], count[t] * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream.get()),
                  "copy from the device");
        }
        check(cudaStreamSynchronize(stream.get()), "the value training kernels");
    }

    double download_loss() {
        double out = 0;
        check(cudaMemcpyAsync(&out, loss.get(), sizeof(double), cudaMemcpyDeviceToHost, stream.get()),
              "copy of the loss from the device");
        check(cudaStreamSynchronize(stream.get()), "the value training kernels");
        return out;
    }

    // Loss (left in `loss` on the device) and, when gradients, the gradient
    // of every parameter tensor, for `batch` tokens (batch <= capacity).
    void evaluate(const Rows& rows, const Noise& noise, OptionChoice choice, bool gradients, uint32_t batch) {
        const cudaStream_t s = stream.get();
        const cublasHandle_t h = blas.get();
        const size_t B = batch, groups = B * n;
        const float *norm_w = param(0), *norm_b = param(1), *W1 = param(2), *b1 = param(3), *W2 = param(4),
                    *b2 = param(5), *E = param(6);

        prepare_kernel<<<batch, kThreads, 0, s>>>(rows, lambda.get(), norm_w, norm_b, D, xhat.get(), h0.get(),
                                                  sigma.get());
        check_launch("the LayerNorm kernel");
        mm_nt(h, h0.get(), W1, a1.get(), B, I, D, "the first Linear layer");
        bias_gelu_kernel<<<grid_for(B * I), kThreads, 0, s>>>(a1.get(), b1, h1.get(), I, B * I);
        check_launch("the GELU kernel");
        mm_nt(h, h1.get(), W2, logits.get(), B, O, I, "the second Linear layer");
        options_kernel<<<grid_for(groups), kThreads, 0, s>>>(logits.get(), b2, noise, choice == OptionChoice::kHard, n,
                                                             groups, prob.get(), code.get());
        check_launch("the option kernel");
        mm_nn(h, code.get(), E, y.get(), B, D, K, "the codeword sum y = bits E");
        const double inv_count = 1.0 / (double(B) * D);
        reconstruct_kernel<<<batch, kThreads, 0, s>>>(y.get(), rows, sigma.get(), lambda.get(), D, inv_count,
                                                      gradients, vhat.get(), ynorm.get(), row_loss.get(), dy.get());
        check_launch("the reconstruction kernel");
        loss_kernel<<<1, 1, 0, s>>>(row_loss.get(), batch, D, loss.get());
        check_launch("the loss kernel");
        if (!gradients) return;

        mm_tn(h, code.get(), dy.get(), grad(6), K, D, B, "the codebook gradient");
        mm_nt(h, dy.get(), E, dcode.get(), B, K, D, "the bits gradient");
        dlogits_kernel<<<grid_for(groups), kThreads, 0, s>>>(dcode.get(), prob.get(), groups, dlogits.get());
        check_launch("the softmax backward kernel");
        mm_tn(h, dlogits.get(), h1.get(), grad(4), O, I, B, "the second Linear layer's weight gradient");
        column_sum_kernel<<<grid_for(O), kThreads, 0, s>>>(dlogits.get(), batch, O, grad(5));
        mm_nn(h, dlogits.get(), W2, dh1.get(), B, I, O, "the second Linear layer's input gradient");
        gelu_backward_kernel<<<grid_for(B * I), kThreads, 0, s>>>(a1.get(), dh1.get(), B * I);
        check_launch("the GELU backward kernels");
        float* da1 = dh1.get();
        mm_tn(h, da1, h0.get(), grad(2), I, D, B, "the first Linear layer's weight gradient");
        column_sum_kernel<<<grid_for(I), kThreads, 0, s>>>(da1, batch, I, grad(3));
        mm_nn(h, da1, W1, dh0.get(), B, D, I, "the first Linear layer's input gradient");
        layer_norm_grad_kernel<<<grid_for(D), kThreads, 0, s>>>(dh0.get(), xhat.get(), batch, D, grad(0), grad(1));
        check_launch("the LayerNorm backward kernels");
    }
};

// ---- ValueObjectiveCuda ------------------------------------------------------

ValueObjectiveCuda::ValueObjectiveCuda(uint32_t value_dim, uint32_t value_bits, uint32_t hidden, int32_t device)
    : model_(new Model(device, value_dim, value_bits, hidden)) {}

ValueObjectiveCuda::~ValueObjectiveCuda() = default;

double ValueObjectiveCuda::evaluate(const ValueCodebook& vc, const float* v, uint32_t batch, const float* noise,
                                    OptionChoice choice, ValueCodebook* grads, const float* row_weight) {
    require(batch > 0 && v != nullptr, COMMVQ_ERR_INVALID_ARGUMENT, "value objective: empty batch");
    Model& m = *model_;
    Scope scope(m.device);
    const cudaStream_t s = m.stream.get();
    if (batch > m.capacity) {
        m.reserve(batch);
        m.v_in.allocate(size_t(batch) * m.D, m.device, "the batch");
        m.noise_in.allocate(size_t(batch) * m.O, m.device, "the noise");
        m.weight_in.allocate(batch, m.device, "the row weights");
    }
    m.upload_parameters(vc);
    check(cudaMemcpyAsync(m.v_in.get(), v, size_t(batch) * m.D * sizeof(float), cudaMemcpyHostToDevice, s),
          "copy of the batch to the device");
    if (noise)
        check(cudaMemcpyAsync(m.noise_in.get(), noise, size_t(batch) * m.O * sizeof(float), cudaMemcpyHostToDevice, s),
              "copy of the noise to the device");
    if (row_weight)
        check(cudaMemcpyAsync(m.weight_in.get(), row_weight, batch * sizeof(float), cudaMemcpyHostToDevice, s),
              "copy of the row weights to the device");
    const Rows rows{m.v_in.get(), nullptr, row_weight ? m.weight_in.get() : nullptr};
    const Noise nz{noise ? m.noise_in.get() : nullptr, 0, 0, false};
    m.evaluate(rows, nz, choice, grads != nullptr, batch);

    vhat_.resize(size_t(batch) * m.D);
    check(cudaMemcpyAsync(vhat_.data(), m.vhat.get(), vhat_.size() * sizeof(float), cudaMemcpyDeviceToHost, s),
          "copy of v_hat from the device");
    if (grads) {
        m.download(m.grads, *grads);
        grads->lambda.assign(m.D, 0.0f);
    }
    return m.download_loss();
}

// ---- the trainer -------------------------------------------------------------

void train_value_codebook_cuda(ValueCodebook& vc, const float* values, size_t n_tokens, uint32_t value_dim,
                               const ValueTrainConfig& config, uint64_t seed, const ValueStepHook& hook,
                               const float* token_weight, int32_t device) {
    require(n_tokens > 0 && config.batch > 0, COMMVQ_ERR_INVALID_ARGUMENT,
            "value training needs tokens and a batch size");
    const uint32_t batch = uint32_t(std::min<size_t>(config.batch, n_tokens));
    ValueObjectiveCuda::Model m(device, value_dim, config.value_bits, config.hidden);
    Scope scope(m.device);
    const cudaStream_t s = m.stream.get();
    m.reserve(batch);
    m.upload_parameters(vc);

    // The training tokens (and their weights) go up once.
    const size_t D = value_dim;
    DeviceArray<float> all_values, all_weights, moment1, moment2;
    DeviceArray<uint64_t> index;
    DeviceArray<double> partial, clip;
    all_values.allocate(n_tokens * D, m.device, "the training values");
    check(cudaMemcpyAsync(all_values.get(), values, n_tokens * D * sizeof(float), cudaMemcpyHostToDevice, s),
          "copy of the training values to the device");
    if (token_weight) {
        all_weights.allocate(n_tokens, m.device, "the token weights");
        check(cudaMemcpyAsync(all_weights.get(), token_weight, n_tokens * sizeof(float), cudaMemcpyHostToDevice, s),
              "copy of the token weights to the device");
    }
    moment1.allocate(m.total, m.device, "the first AdamW moment");
    moment1.fill_bytes(0, s);
    moment2.allocate(m.total, m.device, "the second AdamW moment");
    moment2.fill_bytes(0, s);
    index.allocate(batch, m.device, "the batch rows");
    partial.allocate(kNormBlocks, m.device, "the gradient norm");
    clip.allocate(1, m.device, "the clip factor");
    const Rows rows{all_values.get(), index.get(), token_weight ? all_weights.get() : nullptr};

    // The CPU trainer's batch stream: the same generator, the same draws.
    std::mt19937_64 rng(mix(seed));
    // Pageable on purpose: cudaMemcpyAsync stages pageable memory before it
    // returns, so the next step may refill the vector while the device is
    // still busy with this one.
    std::vector<uint64_t> rows_host(batch);
    AdamStep adam{config.beta1, config.beta2, config.lr, float(1.0 - double(config.lr) * config.weight_decay), 0, 0};
    for (uint32_t step = 0; step < config.steps; ++step) {
        for (uint32_t b = 0; b < batch; ++b) rows_host[b] = rng() % n_tokens;
        check(cudaMemcpyAsync(index.get(), rows_host.data(), batch * sizeof(uint64_t), cudaMemcpyHostToDevice, s),
              "copy of the batch rows to the device");
        const Noise noise{nullptr, seed, step, config.gumbel};
        m.evaluate(rows, noise, OptionChoice::kHard, true, batch);

        square_sum_kernel<<<kNormBlocks, kThreads, 0, s>>>(m.grads.get(), m.total, partial.get());
        clip_kernel<<<1, kThreads, 0, s>>>(partial.get(), kNormBlocks, config.grad_clip, clip.get());
        adam.c1 = 1.0 - std::pow(double(config.beta1), step + 1);
        adam.c2 = 1.0 - std::pow(double(config.beta2), step + 1);
        adamw_kernel<<<grid_for(m.total), kThreads, 0, s>>>(m.params.get(), m.grads.get(), moment1.get(),
                                                           moment2.get(), m.total, clip.get(), adam);
        check_launch("the optimizer kernels");
        if (hook) hook(step, m.download_loss());
    }
    m.download(m.params, vc);
}

}  // namespace train
}  // namespace commvq
