// Fuzz target: the codebook loader (commvq_codebook_load_memory) on any
// bytes. Every input must end in a status: no crash, no leak, no undefined
// behaviour (the target runs under ASan and UBSan). A codebook that loads
// is saved to memory again and must load back to the same fingerprint.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "codebook_file.h"
#include "commvq/commvq.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    commvq_codebook_t* cb = nullptr;
    if (commvq_codebook_load_memory(data, size, &cb) != COMMVQ_OK) return 0;
    const std::vector<uint8_t> again = commvq::serialize_codebook(cb->cb);
    commvq_codebook_t* back = nullptr;
    if (commvq_codebook_load_memory(again.data(), again.size(), &back) != COMMVQ_OK ||
        back->cb.fingerprint != cb->cb.fingerprint)
        std::abort();  // a loaded codebook must survive its own save
    commvq_codebook_free(back);
    commvq_codebook_free(cb);
    return 0;
}
