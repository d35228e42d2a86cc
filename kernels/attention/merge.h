// The merge kernels of decode attention (merge.cu), launched after the
// attention kernel by launch_attend.
#pragma once

#include <cuda_runtime.h>

#include "attention/layout.h"

namespace commvq {
namespace cuda {

int launch_merge(const AttendParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace commvq
