// commvq_cache_create with sizes it cannot allocate (a binding's -1 or -5
// wrapped to near 2^32, or 2^31 sequences): COMMVQ_ERR_OUT_OF_MEMORY with a
// message that names the function and the sizes, and *out left alone.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "cache_test_util.h"

using namespace commvq::test;

#if defined(__SANITIZE_ADDRESS__)
#define COMMVQ_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COMMVQ_TEST_ASAN 1
#endif
#endif

namespace {

void check_refused(commvq_codebook_t* cb, const commvq_cache_params_t& p, const char* field, const std::string& value) {
    commvq_cache_t* out = reinterpret_cast<commvq_cache_t*>(uintptr_t(1));
    CHECK(commvq_cache_create(cb, &p, &out) == COMMVQ_ERR_OUT_OF_MEMORY);
    CHECK(out == reinterpret_cast<commvq_cache_t*>(uintptr_t(1)));
    const std::string message = commvq_last_error();
    CHECK_MESSAGE(message.find("commvq_cache_create") != std::string::npos, message);
    CHECK_MESSAGE(message.find(std::string(field) + " " + value) != std::string::npos, message);
    CHECK_MESSAGE(message.find("max_seqs x (window + sink_tokens)") != std::string::npos, message);
}

}  // namespace

TEST_CASE("C API errors: cache_create out of memory names the function and the sizes") {
#if defined(COMMVQ_TEST_ASAN)
    // AddressSanitizer aborts on allocations beyond its limit instead of throwing std::bad_alloc.
    return;
#endif
    commvq_codebook_t* cb = codebook_handle(small_spec(2));
    commvq_cache_params_t p;

    commvq_cache_params_init(&p);
    p.max_seqs = uint32_t(-1);
    check_refused(cb, p, "max_seqs", "4294967295");

    commvq_cache_params_init(&p);
    p.window = uint32_t(-5);
    check_refused(cb, p, "window", "4294967291");

    commvq_cache_params_init(&p);
    p.max_seqs = uint32_t(1) << 31;
    check_refused(cb, p, "max_seqs", "2147483648");

    commvq_codebook_free(cb);
}
