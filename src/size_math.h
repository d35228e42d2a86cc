// Byte counts computed from caller-chosen sizes (max_tokens, window, ...)
// can overflow; these products refuse to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "error.h"

namespace commvq {

// The product of the factors; COMMVQ_ERR_OUT_OF_MEMORY naming `what` when it
// does not fit in size_t (no allocation of that size could succeed).
inline size_t checked_mul(std::initializer_list<uint64_t> factors, const char* what) {
    uint64_t product = 1;
    for (uint64_t f : factors) {
        if (f != 0 && product > std::numeric_limits<uint64_t>::max() / f)
            throw Error(COMMVQ_ERR_OUT_OF_MEMORY, std::string(what) + " would take more bytes than can be addressed");
        product *= f;
    }
    if (product > std::numeric_limits<size_t>::max())
        throw Error(COMMVQ_ERR_OUT_OF_MEMORY, std::string(what) + " would take more bytes than can be addressed");
    return size_t(product);
}

}  // namespace commvq
