#include "thread_pool.h"

#include <algorithm>

namespace commvq {

ThreadPool::ThreadPool(unsigned n_threads) {
    if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
    workers_.reserve(n_threads - 1);
    for (unsigned t = 1; t < n_threads; ++t) workers_.emplace_back([this, t] { work(t); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

// Takes items until none is left; an exception stops this thread's share and
// is kept for the caller (later ones are dropped: one report is enough).
void ThreadPool::drain(unsigned thread) {
    for (;;) {
        size_t item = next_.fetch_add(1, std::memory_order_relaxed);
        if (item >= n_items_) return;
        try {
            call_(fn_, item, thread);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            next_.store(n_items_, std::memory_order_relaxed);
            return;
        }
    }
}

void ThreadPool::run(size_t n_items, void* fn, Trampoline call) {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        fn_ = fn;
        call_ = call;
        n_items_ = n_items;
        next_.store(0, std::memory_order_relaxed);
        busy_ = unsigned(workers_.size());
        error_ = nullptr;
        ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::exception_ptr error;
    {
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return busy_ == 0; });
        error = error_;
        error_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
}

void ThreadPool::work(unsigned thread) {
    uint64_t seen = 0;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mutex_);
            wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
        }
        drain(thread);
        bool last;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            last = --busy_ == 0;
        }
        if (last) done_.notify_one();
    }
}

}  // namespace commvq
