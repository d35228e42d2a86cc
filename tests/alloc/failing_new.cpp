#include "failing_new.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace commvq {
namespace test {
namespace {

std::atomic<bool> armed{false};
std::atomic<uint64_t> attempted{0};
std::atomic<uint64_t> fail_at{0};
std::atomic<bool> failed{false};

// Counts the allocation; true if it is the one that must fail.
bool must_fail() {
    if (!armed.load(std::memory_order_relaxed)) return false;
    const uint64_t n = attempted.fetch_add(1) + 1;
    if (n != fail_at.load()) return false;
    failed = true;
    return true;
}

void* allocate(std::size_t size) {
    if (must_fail()) throw std::bad_alloc();
    if (void* p = std::malloc(size ? size : 1)) return p;
    throw std::bad_alloc();
}

void* allocate_aligned(std::size_t size, std::align_val_t align) {
    if (must_fail()) throw std::bad_alloc();
    const std::size_t a = std::size_t(align);
    if (void* p = std::aligned_alloc(a, (size + a - 1) / a * a)) return p;
    throw std::bad_alloc();
}

}  // namespace

void fail_allocation(uint64_t n) {
    attempted = 0;
    failed = false;
    fail_at = n;
    armed = true;
}

AllocationCount stop_failing() {
    armed = false;
    return {attempted.load(), failed.load()};
}

}  // namespace test
}  // namespace commvq

// Every replaceable form, so that each allocation is counted and every
// block is freed by the function matching the one that allocated it (the
// sanitizers check that).
void* operator new(std::size_t n) { return commvq::test::allocate(n); }
void* operator new[](std::size_t n) { return commvq::test::allocate(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
    try {
        return commvq::test::allocate(n);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void* operator new(std::size_t n, std::align_val_t a) { return commvq::test::allocate_aligned(n, a); }
void* operator new[](std::size_t n, std::align_val_t a) { return commvq::test::allocate_aligned(n, a); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
    try {
        return commvq::test::allocate_aligned(n, a);
    } catch (...) {
        return nullptr;
    }
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t& t) noexcept {
    return operator new(n, a, t);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { std::free(p); }
