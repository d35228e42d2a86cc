// Version, status names, the last-error message and capabilities.
#include <cstdio>

#include "backend.h"
#include "guard.h"

namespace commvq {
namespace capi {
namespace {
// One message per thread, in a fixed buffer so that recording a failure can
// never fail itself.
thread_local char t_last_error[2048] = "";
}  // namespace

void set_last_error(const char* prefix, const char* message) noexcept {
    std::snprintf(t_last_error, sizeof t_last_error, "%s%s", prefix, message);
}

const char* last_error() noexcept { return t_last_error; }

}  // namespace capi
}  // namespace commvq

#define COMMVQ_STR2(x) #x
#define COMMVQ_STR(x) COMMVQ_STR2(x)

extern "C" {

COMMVQ_API uint32_t commvq_version_number(void) { return COMMVQ_VERSION_NUMBER; }

COMMVQ_API const char* commvq_version_string(void) {
    return COMMVQ_STR(COMMVQ_VERSION_MAJOR) "." COMMVQ_STR(COMMVQ_VERSION_MINOR) "." COMMVQ_STR(
        COMMVQ_VERSION_PATCH);
}

COMMVQ_API const char* commvq_status_string(commvq_status_t status) {
    switch (status) {
    case COMMVQ_OK: return "COMMVQ_OK";
    case COMMVQ_ERR_INVALID_ARGUMENT: return "COMMVQ_ERR_INVALID_ARGUMENT";
    case COMMVQ_ERR_SHAPE_MISMATCH: return "COMMVQ_ERR_SHAPE_MISMATCH";
    case COMMVQ_ERR_OUT_OF_RANGE: return "COMMVQ_ERR_OUT_OF_RANGE";
    case COMMVQ_ERR_INVALID_STATE: return "COMMVQ_ERR_INVALID_STATE";
    case COMMVQ_ERR_CAPACITY: return "COMMVQ_ERR_CAPACITY";
    case COMMVQ_ERR_OUT_OF_MEMORY: return "COMMVQ_ERR_OUT_OF_MEMORY";
    case COMMVQ_ERR_IO: return "COMMVQ_ERR_IO";
    case COMMVQ_ERR_FORMAT: return "COMMVQ_ERR_FORMAT";
    case COMMVQ_ERR_CORRUPT: return "COMMVQ_ERR_CORRUPT";
    case COMMVQ_ERR_CODEBOOK_MISMATCH: return "COMMVQ_ERR_CODEBOOK_MISMATCH";
    case COMMVQ_ERR_NOT_SUPPORTED: return "COMMVQ_ERR_NOT_SUPPORTED";
    case COMMVQ_ERR_CUDA: return "COMMVQ_ERR_CUDA";
    case COMMVQ_ERR_CANCELLED: return "COMMVQ_ERR_CANCELLED";
    case COMMVQ_ERR_INTERNAL: return "COMMVQ_ERR_INTERNAL";
    default: return "COMMVQ_ERR_UNKNOWN";
    }
}

COMMVQ_API const char* commvq_last_error(void) { return commvq::capi::last_error(); }

COMMVQ_API int32_t commvq_cuda_available(void) { return commvq_device_count() > 0 ? 1 : 0; }

COMMVQ_API int32_t commvq_device_count(void) {
#ifdef COMMVQ_WITH_CUDA
    int32_t n = 0;
    // A failing CUDA runtime (no driver, no device) means no usable device.
    commvq::capi::guard([&] { n = commvq::cuda_device_count(); });
    return n;
#else
    return 0;
#endif
}

}  // extern "C"
