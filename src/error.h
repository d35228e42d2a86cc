// Internal failures travel as commvq::Error; the C shim (src/capi/) turns
// them into a status code and the thread's last-error message. Nothing below
// the shim returns status codes, so no check can be forgotten on the way up.
#pragma once

#include <stdexcept>
#include <string>

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
inline void require(bool condition, commvq_status_t status, const std::string& message) {
    if (!condition) throw Error(status, message);
}

}  // namespace commvq
