// Host and device helpers shared by the training kernels (train_key_em.cu,
// train_value.cu): CUDA and cuBLAS failures as commvq::Error (never an
// abort), the trainer's device made current for a call, typed device arrays
// freed on their own device, and a deterministic block sum.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "error.h"

namespace commvq {
namespace train {
namespace gpu {

[[noreturn]] inline void fail(cudaError_t e, const std::string& what) {
    cudaGetLastError();  // clear a sticky launch error so later calls report their own
    throw Error(e == cudaErrorMemoryAllocation ? COMMVQ_ERR_OUT_OF_MEMORY : COMMVQ_ERR_CUDA,
                "training on the GPU: " + what + ": " + cudaGetErrorString(e));
}

inline void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) fail(e, what);
}

inline void check_blas(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS)
        throw Error(s == CUBLAS_STATUS_ALLOC_FAILED ? COMMVQ_ERR_OUT_OF_MEMORY : COMMVQ_ERR_CUDA,
                    std::string("training on the GPU: ") + what + " failed (cuBLAS status " +
                        std::to_string(int(s)) + ")");
}

// Makes `device` current for one call, then restores the caller's device.
class Scope {
public:
    explicit Scope(int device) {
        cudaGetDevice(&previous_);
        changed_ = previous_ != device;
        if (changed_) check(cudaSetDevice(device), "cudaSetDevice");
    }
    ~Scope() {
        if (changed_) cudaSetDevice(previous_);
    }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

private:
    int previous_ = 0;
    bool changed_ = false;
};

// The same for destructors: never throws, ignores failures.
class QuietScope {
public:
    explicit QuietScope(int device) {
        cudaGetDevice(&previous_);
        changed_ = previous_ != device && cudaSetDevice(device) == cudaSuccess;
    }
    ~QuietScope() {
        if (changed_) cudaSetDevice(previous_);
    }
    QuietScope(const QuietScope&) = delete;
    QuietScope& operator=(const QuietScope&) = delete;

private:
    int previous_ = 0;
    bool changed_ = false;
};

// A typed device array on one device, freed on destruction (on its device).
template <class T>
class DeviceArray {
public:
    DeviceArray() = default;
    DeviceArray(const DeviceArray&) = delete;
    DeviceArray& operator=(const DeviceArray&) = delete;
    ~DeviceArray() { release(); }

    // Frees what was held and takes `count` elements (at least one).
    void allocate(size_t count, int device, const char* what) {
        release();
        const size_t bytes = std::max<size_t>(count, 1) * sizeof(T);
        const cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&ptr_), bytes);
        if (e != cudaSuccess) {
            ptr_ = nullptr;
            fail(e, "cannot take " + std::to_string(bytes) + " bytes of device memory for " + what);
        }
        device_ = device;
        count_ = count;
    }
    // Fills every byte with `byte` (0xFF makes float and double NaN), in
    // stream order (a plain cudaMemset would run on the legacy default
    // stream, which our non-blocking stream does not wait for).
    void fill_bytes(int byte, cudaStream_t stream) {
        check(cudaMemsetAsync(ptr_, byte, count_ * sizeof(T), stream), "cudaMemsetAsync");
    }
    // Synchronous copies of the first `count` elements (the caller's
    // device current).
    void upload(const T* host, size_t count) {
        check(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice), "copy to the device");
    }
    void download(T* host, size_t count) const {
        check(cudaMemcpy(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost), "copy from the device");
    }
    T* get() const { return ptr_; }
    size_t size() const { return count_; }

private:
    void release() {
        if (!ptr_) return;
        QuietScope scope(device_);
        cudaFree(ptr_);
        ptr_ = nullptr;
        count_ = 0;
    }
    T* ptr_ = nullptr;
    size_t count_ = 0;
    int device_ = 0;
};

// Block-wide sum in a fixed tree order (deterministic). blockDim.x must be a
// power of two; shared holds blockDim.x doubles.
__device__ __forceinline__ double block_sum(double x, double* shared) {
    shared[threadIdx.x] = x;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    const double total = shared[0];
    __syncthreads();
    return total;
}

}  // namespace gpu
}  // namespace train
}  // namespace commvq
