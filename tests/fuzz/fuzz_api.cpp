// Fuzz target: sequences of cache calls, decoded from the input, checked
// against a model of what the calls do to the sequences' lengths (API.md):
// which calls must succeed and with which status the others must fail.
// After every call the cache's lengths equal the model's, its bookkeeping
// passes Cache::check_integrity(), and every attention is finite; a fork
// attends bit for bit like its source. The pool is large enough that no
// call can run out of blocks, so CAPACITY is never right.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cache.h"
#include "fuzz_target.h"
#include "random_codebook.h"

namespace {

constexpr uint32_t kSeqs = 4;
constexpr uint32_t kMaxOps = 48;
constexpr uint32_t kMaxAppend = 24;

// Bytes of the input, then zeros.
struct Bytes {
    const uint8_t* data;
    size_t size, at = 0;
    uint32_t next() { return at < size ? data[at++] : 0; }
};

struct Model {
    uint64_t len[kSeqs][2] = {};
    uint64_t frontier(uint32_t s) const { return std::max(len[s][0], len[s][1]); }
    bool in_step(uint32_t s) const { return len[s][0] == len[s][1]; }
};

void expect(bool ok) {
    if (!ok) std::abort();
}

std::vector<float> attention(commvq_cache_t* c, uint32_t layer, uint32_t seq, uint32_t nq, uint32_t flags) {
    const commvq::Codebook& cb = c->cache.codebook();
    const size_t row = size_t(cb.n_q_heads) * cb.head_dim;
    std::vector<float> q(nq * row), out(nq * row + nq * cb.n_q_heads);
    for (size_t i = 0; i < q.size(); ++i) q[i] = float(int(i % 7) - 3) * 0.25f;
    expect(commvq_cache_attend(c, layer, seq, nq, q.data(), out.data(), out.data() + nq * row, flags) == COMMVQ_OK);
    for (float x : out) expect(std::isfinite(x));
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static commvq_cache_t* c = commvq::test::fuzz_cache(kSeqs, 16 * 1024);
    for (uint32_t s = 0; s < kSeqs; ++s) commvq_cache_seq_clear(c, s);
    const commvq::Codebook& cb = c->cache.codebook();
    const size_t D = cb.value_dim();
    Model m;
    Bytes in{data, size};
    commvq::test::Rng rng(size);
    for (uint32_t op = 0; op < kMaxOps && in.at < in.size; ++op) {
        const uint32_t kind = in.next() % 7, a = in.next(), b = in.next();
        const uint32_t layer = a & 1, seq = (a >> 1) % kSeqs, other = (a >> 3) % kSeqs;
        switch (kind) {
        case 0: {  // append
            const uint32_t n = b % kMaxAppend + 1;
            const std::vector<float> k = rng.normals(n * D), v = rng.normals(n * D);
            const bool ok = m.len[seq][layer] + n <= m.frontier(seq) ||
                            (m.len[seq][layer] == m.frontier(seq) && m.in_step(seq));
            const commvq_status_t st = commvq_cache_append(c, layer, seq, n, k.data(), v.data());
            expect(st == (ok ? COMMVQ_OK : COMMVQ_ERR_INVALID_STATE));
            if (ok) m.len[seq][layer] += n;
            break;
        }
        case 1: {  // attend, causal or not
            const uint32_t nq = b % 4 + 1, flags = (b & 0x80) ? COMMVQ_ATTEND_NON_CAUSAL : 0;
            const bool ok = m.len[seq][layer] > 0 && (flags || nq <= m.len[seq][layer]);
            if (ok) {
                attention(c, layer, seq, nq, flags);
            } else {
                std::vector<float> q(nq * cb.n_q_heads * cb.head_dim, 0.5f), out(q.size());
                expect(commvq_cache_attend(c, layer, seq, nq, q.data(), out.data(), nullptr, flags) ==
                       COMMVQ_ERR_OUT_OF_RANGE);
            }
            break;
        }
        case 2: {  // attend_batch over two sequences
            const uint32_t ids[2] = {seq, other};
            const bool ok = m.len[seq][layer] > 0 && m.len[other][layer] > 0;
            std::vector<float> q(2 * cb.n_q_heads * cb.head_dim, 0.5f), out(q.size());
            expect(commvq_cache_attend_batch(c, layer, 2, ids, q.data(), out.data(), nullptr, 0) ==
                   (ok ? COMMVQ_OK : COMMVQ_ERR_OUT_OF_RANGE));
            if (ok)
                for (float x : out) expect(std::isfinite(x));
            break;
        }
        case 3: {  // truncate, sometimes past the end
            const uint64_t n = b % (m.frontier(seq) + 2);
            const bool ok = n <= m.frontier(seq);
            expect(commvq_cache_seq_truncate(c, seq, n) == (ok ? COMMVQ_OK : COMMVQ_ERR_OUT_OF_RANGE));
            if (ok)
                for (auto& l : m.len[seq]) l = std::min(l, n);
            break;
        }
        case 4:  // clear
            expect(commvq_cache_seq_clear(c, seq) == COMMVQ_OK);
            m.len[seq][0] = m.len[seq][1] = 0;
            break;
        case 6: {  // append_batch to two sequences: all or nothing
            const uint32_t n = b % kMaxAppend + 1;
            const uint32_t ids[2] = {seq, other};
            const std::vector<float> k = rng.normals(2 * n * D), v = rng.normals(2 * n * D);
            auto row_ok = [&](uint32_t s) {
                return m.len[s][layer] + n <= m.frontier(s) || (m.len[s][layer] == m.frontier(s) && m.in_step(s));
            };
            const commvq_status_t want = seq == other                  ? COMMVQ_ERR_INVALID_ARGUMENT
                                         : !row_ok(seq) || !row_ok(other) ? COMMVQ_ERR_INVALID_STATE
                                                                          : COMMVQ_OK;
            expect(commvq_cache_append_batch(c, layer, 2, ids, n, k.data(), v.data()) == want);
            if (want == COMMVQ_OK) {
                m.len[seq][layer] += n;
                m.len[other][layer] += n;
            }
            break;
        }
        case 5: {  // fork
            const commvq_status_t want = seq == other             ? COMMVQ_ERR_INVALID_ARGUMENT
                                         : m.frontier(other) != 0 ? COMMVQ_ERR_INVALID_STATE
                                         : !m.in_step(seq)        ? COMMVQ_ERR_INVALID_STATE
                                                                  : COMMVQ_OK;
            expect(commvq_cache_seq_fork(c, seq, other) == want);
            if (want != COMMVQ_OK) break;
            m.len[other][0] = m.len[seq][0];
            m.len[other][1] = m.len[seq][1];
            for (uint32_t l = 0; l < 2; ++l)
                if (m.len[seq][l] > 0) expect(attention(c, l, seq, 1, 0) == attention(c, l, other, 1, 0));
            break;
        }
        }
        c->cache.check_integrity();  // throws, and so aborts, on damaged bookkeeping
        for (uint32_t s = 0; s < kSeqs; ++s)
            for (uint32_t l = 0; l < 2; ++l) expect(c->cache.sequence(s).layers[l].length == m.len[s][l]);
    }
    return 0;
}
