#include "vector_clones.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace commvq {

namespace {

bool cpu_has_v3() {
#if COMMVQ_HAVE_V3_CLONE
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v3");
#else
    return false;
#endif
}

// The machine's clone, decided once: the CPU, then the environment.
CpuClone machine_clone() {
    static const CpuClone clone = [] {
        CpuClone c = cpu_has_v3() ? CpuClone::v3 : CpuClone::baseline;
        if (const char* e = std::getenv("COMMVQ_ENCODER_CLONE")) {
            if (std::strcmp(e, "baseline") == 0) c = CpuClone::baseline;
            if (std::strcmp(e, "v3") == 0 && cpu_has_v3()) c = CpuClone::v3;
        }
        return c;
    }();
    return clone;
}

std::atomic<int> forced{-1};  // a CpuClone set by set_encoder_clone, or -1

}  // namespace

bool cpu_clone_available(CpuClone clone) { return clone == CpuClone::baseline || cpu_has_v3(); }

CpuClone encoder_clone() {
    const int f = forced.load(std::memory_order_relaxed);
    return f >= 0 ? CpuClone(f) : machine_clone();
}

bool set_encoder_clone(CpuClone clone) {
    if (!cpu_clone_available(clone)) return false;
    forced.store(int(clone), std::memory_order_relaxed);
    return true;
}

void reset_encoder_clone() { forced.store(-1, std::memory_order_relaxed); }

const char* cpu_clone_name(CpuClone clone) { return clone == CpuClone::v3 ? "x86-64-v3" : "baseline"; }

}  // namespace commvq
