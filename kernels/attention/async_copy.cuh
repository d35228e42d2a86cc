// Global-to-shared copies that do not pass through registers (cp.async,
// sm_80 on), so many can be in flight at once; a CTA waits for all of its
// copies with wait_async_copies before reading the destination.
#pragma once

#include <cstdint>

namespace commvq {
namespace cuda {
namespace attention {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
    return uint32_t(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void copy_async4(void* shared_dst, const void* global_src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(shared_address(shared_dst)), "l"(global_src)
                 : "memory");
}

// Both addresses 16-byte aligned; bypasses L1 (the data is read once).
__device__ __forceinline__ void copy_async16(void* shared_dst, const void* global_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(shared_address(shared_dst)), "l"(global_src)
                 : "memory");
}

__device__ __forceinline__ void wait_async_copies() {
    asm volatile("cp.async.commit_group;\n\tcp.async.wait_group 0;" ::: "memory");
}

}  // namespace attention
}  // namespace cuda
}  // namespace commvq
