// The one place where C++ meets the C API: every public function runs its
// body through guard(), which turns a commvq::Error into its status, an
// allocation failure into COMMVQ_ERR_OUT_OF_MEMORY and anything else into
// COMMVQ_ERR_INTERNAL, and records the message as the calling thread's last
// error (commvq_last_error). No exception leaves the library.
#pragma once

#include <algorithm>
#include <cstring>
#include <exception>
#include <new>
#include <string>

#include "commvq/commvq.h"
#include "error.h"

namespace commvq {
namespace capi {

// Sets the calling thread's last-error message to prefix + message
// (truncated to a fixed buffer; never allocates, never throws).
void set_last_error(const char* prefix, const char* message) noexcept;
const char* last_error() noexcept;

template <class Body>
commvq_status_t guard(Body&& body) noexcept {
    try {
        body();
        return COMMVQ_OK;
    } catch (const Error& e) {
        set_last_error("", e.what());
        return e.status();
    } catch (const std::bad_alloc&) {
        set_last_error("", "out of host memory");
        return COMMVQ_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_last_error("internal error (please report): ", e.what());
        return COMMVQ_ERR_INTERNAL;
    } catch (...) {
        set_last_error("internal error (please report): ", "unknown exception");
        return COMMVQ_ERR_INTERNAL;
    }
}

// COMMVQ_ERR_INVALID_ARGUMENT "fn: name is NULL" for a null argument.
inline void require_arg(const void* p, const char* fn, const char* name) {
    if (!p) throw Error(COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + name + " is NULL");
}

// A caller's parameter struct read through its struct_size: fields past it
// (the caller was built against an older header) keep their defaults;
// fields this library does not know are ignored.
template <class T>
T read_params(const T* in, const T& defaults, const char* fn, const char* name) {
    require_arg(in, fn, name);
    if (in->struct_size < sizeof(uint32_t))
        throw Error(COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + name + "->struct_size is " +
                                                     std::to_string(in->struct_size) +
                                                     "; fill the struct with its *_init function first");
    T out = defaults;
    std::memcpy(&out, in, std::min<size_t>(in->struct_size, sizeof(T)));
    out.struct_size = sizeof(T);
    return out;
}

// Writes the first min(out->struct_size, sizeof(T)) bytes of value to out,
// keeping the caller's struct_size.
template <class T>
void write_struct(T* out, T value, const char* fn, const char* name) {
    require_arg(out, fn, name);
    if (out->struct_size < sizeof(uint32_t))
        throw Error(COMMVQ_ERR_INVALID_ARGUMENT, std::string(fn) + ": " + name + "->struct_size is " +
                                                     std::to_string(out->struct_size) +
                                                     "; fill the struct with its *_init function first");
    value.struct_size = out->struct_size;
    std::memcpy(out, &value, std::min<size_t>(out->struct_size, sizeof(T)));
}

}  // namespace capi
}  // namespace commvq
