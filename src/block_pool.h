// Bookkeeping of the block pool: which blocks are free and how many block
// tables refer to each one. A block is shared (reference count > 1) after a
// fork and is copied before anyone writes to it (copy-on-write). The bytes of
// the blocks belong to the back end (backend.h), which may keep them in
// device memory; this class only hands out block ids.
//
// Nothing here allocates after construction (the free list's capacity is the
// whole pool) and the operations on several blocks check every block before
// they change any, so the cache can prepare a mutation, then commit it with
// calls that cannot fail halfway.
#pragma once

#include <cstddef>
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
    // One more block table refers to each of blocks[0..n) (distinct, all in
    // use); COMMVQ_ERR_INTERNAL, with nothing changed, if one is free.
    void retain(const uint32_t* blocks, size_t n);
    // One block table fewer refers to each of blocks[0..n) (distinct); at
    // zero a block is free again. COMMVQ_ERR_INTERNAL, with nothing changed,
    // if one is already free.
    void release(const uint32_t* blocks, size_t n);
    void release(uint32_t block) { release(&block, 1); }
    bool shared(uint32_t block) const { return refs_[block] > 1; }
    uint32_t references(uint32_t block) const { return refs_[block]; }

    // Checks the pool against the reference counts the block tables imply
    // (expected[b] = how many tables hold block b): every count equal, the
    // free list exactly the blocks at zero, each once. COMMVQ_ERR_INTERNAL
    // naming the first disagreement. For tests and debugging; allocates.
    void check(const std::vector<uint32_t>& expected) const;

private:
    std::vector<uint32_t> refs_;
    std::vector<uint32_t> free_;  // a stack; capacity reserved, so never reallocates
};

}  // namespace commvq
