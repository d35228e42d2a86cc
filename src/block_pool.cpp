#include "block_pool.h"

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

void BlockPool::retain(uint32_t block) {
    require(refs_[block] > 0, COMMVQ_ERR_INTERNAL, "block pool: retain of a free block");
    ++refs_[block];
}

void BlockPool::release(uint32_t block) {
    require(refs_[block] > 0, COMMVQ_ERR_INTERNAL, "block pool: release of a free block");
    if (--refs_[block] == 0) free_.push_back(block);
}

}  // namespace commvq
