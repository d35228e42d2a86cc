#include "block_pool.h"

#include <string>

#include "error.h"

namespace commvq {

BlockPool::BlockPool(uint32_t n_blocks) : refs_(n_blocks, 0) {
    free_.reserve(n_blocks);
    // Lowest ids on top of the stack: a fresh pool hands out 0, 1, 2, ...
    for (uint32_t b = n_blocks; b-- > 0;) free_.push_back(b);
}

uint32_t BlockPool::allocate() {
    require(!free_.empty(), COMMVQ_ERR_INTERNAL, "block pool: allocation from an empty pool");
    uint32_t b = free_.back();
    free_.pop_back();
    refs_[b] = 1;
    return b;
}

void BlockPool::retain(const uint32_t* blocks, size_t n) {
    for (size_t i = 0; i < n; ++i)
        require(blocks[i] < capacity() && refs_[blocks[i]] > 0, COMMVQ_ERR_INTERNAL,
                "block pool: retain of a free block");
    for (size_t i = 0; i < n; ++i) ++refs_[blocks[i]];
}

void BlockPool::release(const uint32_t* blocks, size_t n) {
    for (size_t i = 0; i < n; ++i)
        require(blocks[i] < capacity() && refs_[blocks[i]] > 0, COMMVQ_ERR_INTERNAL,
                "block pool: release of a free block");
    // free_ has room for every block, so push_back never reallocates.
    for (size_t i = 0; i < n; ++i)
        if (--refs_[blocks[i]] == 0) free_.push_back(blocks[i]);
}

void BlockPool::check(const std::vector<uint32_t>& expected) const {
    const auto fail = [](const std::string& what) { throw Error(COMMVQ_ERR_INTERNAL, "block pool: " + what); };
    if (expected.size() != refs_.size())
        fail(std::to_string(expected.size()) + " reference counts given for " + std::to_string(refs_.size()) +
             " blocks");
    std::vector<uint8_t> listed(refs_.size(), 0);
    for (uint32_t b : free_) {
        if (b >= refs_.size()) fail("free list holds block " + std::to_string(b) + " past the pool");
        if (listed[b]++) fail("block " + std::to_string(b) + " is on the free list twice");
    }
    for (size_t b = 0; b < refs_.size(); ++b) {
        if (refs_[b] != expected[b])
            fail("block " + std::to_string(b) + " has reference count " + std::to_string(refs_[b]) + ", but " +
                 std::to_string(expected[b]) + " block tables hold it");
        if ((refs_[b] == 0) != (listed[b] != 0))
            fail("block " + std::to_string(b) + " with reference count " + std::to_string(refs_[b]) + " is " +
                 (listed[b] ? "" : "not ") + "on the free list");
    }
}

}  // namespace commvq
