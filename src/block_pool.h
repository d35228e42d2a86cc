// Bookkeeping of the block pool: which blocks are free and how many block
// tables refer to each one. A block is shared (reference count > 1) after a
// fork and is copied before anyone writes to it (copy-on-write). The bytes of
// the blocks belong to the back end (backend.h), which may keep them in
// device memory; this class only hands out block ids.
#pragma once

#include <cstdint>
#include <vector>

namespace commvq {

class BlockPool {
public:
    explicit BlockPool(uint32_t n_blocks);

    uint32_t capacity() const { return uint32_t(refs_.size()); }
    uint32_t free_count() const { return uint32_t(free_.size()); }
    uint32_t used_count() const { return capacity() - free_count(); }

    // A free block with reference count 1. The caller has checked
    // free_count(); running dry here is a bug (COMMVQ_ERR_INTERNAL).
    uint32_t allocate();
    // One more block table refers to the block.
    void retain(uint32_t block);
    // One block table fewer refers to it; at zero it is free again.
    void release(uint32_t block);
    bool shared(uint32_t block) const { return refs_[block] > 1; }
    uint32_t references(uint32_t block) const { return refs_[block]; }

private:
    std::vector<uint32_t> refs_;
    std::vector<uint32_t> free_;  // a stack; capacity reserved, so never reallocates
};

}  // namespace commvq
