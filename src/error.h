// Internal failures travel as commvq::Error; the C shim (src/capi/) turns
// them into a status code and the thread's last-error message. Nothing below
// the shim returns status codes, so no check can be forgotten on the way up.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "commvq/commvq.h"

namespace commvq {

class Error : public std::runtime_error {
public:
    Error(commvq_status_t status, const std::string& message)
        : std::runtime_error(message), status_(status) {}
    commvq_status_t status() const { return status_; }

private:
    commvq_status_t status_;
};

// Throws Error(status, message) when the condition does not hold.
//
// Checks on the paths a cache takes every call (append, attend, the block
// pool, files) pass either a literal or a function that builds the message:
// nothing is allocated unless the check fails, so a check costs no heap
// allocation and cannot itself fail for want of memory after a mutation has
// begun.
inline void require(bool condition, commvq_status_t status, const char* message) {
    if (!condition) throw Error(status, message);
}

template <class MakeMessage, class = std::enable_if_t<std::is_invocable_r_v<std::string, MakeMessage&>>>
inline void require(bool condition, commvq_status_t status, MakeMessage&& make_message) {
    if (!condition) throw Error(status, make_message());
}

// A message already built: for checks that run once (creation, training,
// tools), where building it first costs nothing that matters.
inline void require(bool condition, commvq_status_t status, const std::string& message) {
    if (!condition) throw Error(status, message);
}

}  // namespace commvq
