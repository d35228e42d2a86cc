// The few thread-block-cluster operations decode attention needs: the CTA's
// rank, the address of a shared-memory location in another CTA of the
// cluster, and a cluster-wide barrier. Clusters exist from sm_90 on; the plan
// (plan.cu) chooses a cluster of 1 elsewhere, where these reduce to the CTA
// itself and __syncthreads.
#pragma once

#include <cstdint>

namespace commvq {
namespace cuda {
namespace attention {

__device__ __forceinline__ uint32_t cluster_rank(uint32_t cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (cluster > 1) {
        uint32_t r;
        asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
        return r;
    }
#endif
    return 0;
}

// Generic address of `local` (this CTA's shared memory) in CTA `rank`.
template <class T>
__device__ __forceinline__ T* cluster_peer(T* local, uint32_t rank, uint32_t cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (cluster > 1) {
        uint64_t remote;
        asm volatile("mapa.u64 %0, %1, %2;" : "=l"(remote) : "l"(reinterpret_cast<uint64_t>(local)), "r"(rank));
        return reinterpret_cast<T*>(remote);
    }
#endif
    return local;
}

// Every thread of every CTA of the cluster arrives; shared-memory writes
// made before (local or remote) are visible to all after.
__device__ __forceinline__ void cluster_barrier(uint32_t cluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (cluster > 1) {
        asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
        return;
    }
#endif
    __syncthreads();
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
