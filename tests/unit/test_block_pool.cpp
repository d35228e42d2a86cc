// The block pool's bookkeeping: operations on several blocks change all or
// nothing, and check() finds any disagreement with the block tables.
#include <doctest/doctest.h>

#include <vector>

#include "block_pool.h"
#include "error.h"

using namespace commvq;

namespace {

commvq_status_t status_of(void (*f)(BlockPool&), BlockPool& pool) {
    try {
        f(pool);
        return COMMVQ_OK;
    } catch (const Error& e) {
        return e.status();
    }
}

}  // namespace

TEST_CASE("block pool: retain and release of several blocks check every block before changing any") {
    BlockPool pool(4);
    const uint32_t a = pool.allocate(), b = pool.allocate();
    CHECK(a == 0);
    CHECK(b == 1);
    // Block 2 is free: nothing may change, not even a's count.
    const uint32_t with_free[3] = {a, 2, b};
    CHECK_THROWS_AS(pool.retain(with_free, 3), Error);
    CHECK_THROWS_AS(pool.release(with_free, 3), Error);
    CHECK(pool.references(a) == 1);
    CHECK(pool.references(b) == 1);
    CHECK(pool.free_count() == 2);
    const uint32_t both[2] = {a, b};
    pool.retain(both, 2);
    CHECK(pool.references(a) == 2);
    pool.release(both, 2);
    pool.release(both, 2);
    CHECK(pool.free_count() == 4);
    CHECK_NOTHROW(pool.check({0, 0, 0, 0}));
}

TEST_CASE("block pool: check() names the first disagreement with the tables' counts") {
    BlockPool pool(3);
    pool.allocate();
    CHECK_NOTHROW(pool.check({1, 0, 0}));
    CHECK(status_of([](BlockPool& p) { p.check({2, 0, 0}); }, pool) == COMMVQ_ERR_INTERNAL);
    CHECK(status_of([](BlockPool& p) { p.check({1, 1, 0}); }, pool) == COMMVQ_ERR_INTERNAL);
    CHECK(status_of([](BlockPool& p) { p.check({1, 0}); }, pool) == COMMVQ_ERR_INTERNAL);
    try {
        pool.check({0, 0, 0});
        FAIL("check() passed a pool that disagrees");
    } catch (const Error& e) {
        CHECK(std::string(e.what()).find("block 0 has reference count 1, but 0 block tables hold it") !=
              std::string::npos);
    }
}
