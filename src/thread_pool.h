// A small persistent pool of worker threads, created once with the cache so
// that append (encoding) and attend (attention) never start threads on the
// hot path. One job runs at a time: a handle is never used by two threads at
// once (commvq.h), so the pool needs no queue.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace commvq {

class ThreadPool {
public:
    // n_threads counts the calling thread, which works too: 1 means no
    // worker threads at all. 0 means one per hardware thread. A worker that
    // cannot be started is COMMVQ_ERR_OUT_OF_MEMORY, after the others have
    // been stopped.
    explicit ThreadPool(unsigned n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    unsigned size() const { return unsigned(workers_.size()) + 1; }

    // Calls fn(item, thread) for every item in [0, n_items), items handed
    // out one at a time to whichever thread is free; thread < size() names
    // the thread, so fn can use per-thread scratch. Returns when all items
    // are done. The first exception thrown by fn is rethrown here, after
    // every thread has stopped.
    template <class Fn>
    void parallel_for(size_t n_items, Fn&& fn) {
        if (n_items == 0) return;
        if (workers_.empty() || n_items == 1) {
            for (size_t i = 0; i < n_items; ++i) fn(i, 0u);
            return;
        }
        run(n_items, &fn, [](void* f, size_t item, unsigned thread) {
            (*static_cast<Fn*>(f))(item, thread);
        });
    }

private:
    using Trampoline = void (*)(void*, size_t, unsigned);
    void run(size_t n_items, void* fn, Trampoline call);
    void work(unsigned thread);
    void drain(unsigned thread);
    // Stops and joins every worker.
    void stop() noexcept;

    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::condition_variable done_;
    // The current job; written under mutex_ before generation_ moves.
    void* fn_ = nullptr;
    Trampoline call_ = nullptr;
    size_t n_items_ = 0;
    std::atomic<size_t> next_{0};
    unsigned busy_ = 0;  // workers still inside the current job
    uint64_t generation_ = 0;
    bool stop_ = false;
    std::exception_ptr error_;
};

}  // namespace commvq
