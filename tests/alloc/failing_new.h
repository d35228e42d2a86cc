// Allocation-failure injection for the tests of this executable: the global
// operator new (every form) is replaced by one that counts allocations and,
// when armed, makes the nth one from then on throw std::bad_alloc, once.
// It lives in its own executable so that no other test runs under it.
#pragma once

#include <cstdint>

namespace commvq {
namespace test {

// The nth allocation from now (n >= 1) fails; later ones succeed.
void fail_allocation(uint64_t n);
// Stops counting; returns how many allocations were attempted since
// fail_allocation, and whether the failure happened.
struct AllocationCount {
    uint64_t attempted = 0;
    bool failed = false;
};
AllocationCount stop_failing();

}  // namespace test
}  // namespace commvq
