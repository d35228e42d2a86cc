// Work split over threads for the trainers. Results never depend on the
// thread count: callers cut the work into a fixed number of items (chosen
// from the data size only), each item writes its own partial result, and
// the caller reduces the partials in item order.
#pragma once

#include <cstddef>
#include <cstdint>

namespace commvq {
namespace train {

// Threads to use for n_threads = 0 ("all cores").
uint32_t resolve_threads(uint32_t n_threads);

// Calls item(i) for every i < n_items, spread over up to n_threads threads
// (the calling thread included). An exception thrown by any item is
// rethrown here once all threads have stopped.
template <typename Fn>
void parallel_for(size_t n_items, uint32_t n_threads, Fn&& item);

}  // namespace train
}  // namespace commvq

#include "parallel_impl.h"
