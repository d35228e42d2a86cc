// Implementation of parallel_for (a template, so it lives in a header).
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace commvq {
namespace train {

template <typename Fn>
void parallel_for(size_t n_items, uint32_t n_threads, Fn&& item) {
    size_t workers = std::min<size_t>(std::max<uint32_t>(n_threads, 1), n_items);
    if (workers <= 1) {
        for (size_t i = 0; i < n_items; ++i) item(i);
        return;
    }
    std::atomic<size_t> next{0};
    std::exception_ptr failure;
    std::mutex failure_mutex;
    auto run = [&]() {
        for (size_t i = next++; i < n_items; i = next++) {
            try {
                item(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(failure_mutex);
                if (!failure) failure = std::current_exception();
                next = n_items;
            }
        }
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    // A helper that cannot be started (no memory for its state,
    // pthread_create refused) only means fewer helpers: whoever runs takes
    // the items, and the helpers started are joined either way (destroying
    // a joinable std::thread would end the process).
    try {
        for (size_t t = 1; t < workers; ++t) threads.emplace_back(run);
    } catch (const std::exception&) {
    }
    run();
    for (auto& t : threads) t.join();
    if (failure) std::rethrow_exception(failure);
}

}  // namespace train
}  // namespace commvq
