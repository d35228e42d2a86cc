#include "thread_pool.h"

#include <algorithm>
#include <string>
#include <system_error>

#include "error.h"

namespace commvq {

// A worker that cannot start (no memory for its state, pthread_create
// refused) must not leave the ones already running behind: destroying a
// joinable std::thread would terminate the process. They are stopped and
// joined, and the failure becomes an ordinary COMMVQ_ERR_OUT_OF_MEMORY.
ThreadPool::ThreadPool(unsigned n_threads) {
    if (n_threads == 0) n_threads = std::max(1u, std::thread::hardware_concurrency());
    workers_.reserve(n_threads - 1);
    for (unsigned t = 1; t < n_threads; ++t) {
        try {
            workers_.emplace_back([this, t] { work(t); });
        } catch (const std::exception& e) {
            stop();
            throw Error(COMMVQ_ERR_OUT_OF_MEMORY, "cannot start worker thread " + std::to_string(t) + " of " +
                                                      std::to_string(n_threads - 1) + ": " + e.what());
        }
    }
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::stop() noexcept {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
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
