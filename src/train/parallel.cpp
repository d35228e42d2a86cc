#include "parallel.h"

namespace commvq {
namespace train {

uint32_t resolve_threads(uint32_t n_threads) {
    if (n_threads > 0) return n_threads;
    unsigned cores = std::thread::hardware_concurrency();
    return cores > 0 ? cores : 1;
}

}  // namespace train
}  // namespace commvq
