#include "attention_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "code_packing.h"
#include "dtype.h"
#include "error.h"
#include "pair_layout.h"
#include "rope.h"
#include "value_encoder.h"
#include "vector_clones.h"

namespace commvq {
namespace {

// Tokens handled together: their keys are formed once for all rows of a
// work item, and their code-space sums are folded into the double
// accumulators once per chunk.
constexpr uint32_t kChunk = 64;
// A row is split over threads only into ranges of at least this many tokens.
constexpr uint64_t kMinPartTokens = 256;
// Per-thread softmax state of one work item stays about this small.
constexpr size_t kTileStateBytes = size_t(1) << 20;
constexpr uint32_t kMaxTileRows = 16;

// kBitMask[byte][k] = bit k of byte, as 0.0f or 1.0f: turns the adding of a
// weight into the 8 accumulators of a code byte into one vector multiply-add.
struct BitMask {
    float m[256][8];
    BitMask() {
        for (int b = 0; b < 256; ++b)
            for (int k = 0; k < 8; ++k) m[b][k] = float((b >> k) & 1);
    }
};
const BitMask kBitMask;

// Eight independent float partial sums (one vector, each lane summing n/8
// products), added in double.
inline double dot(const float* a, const float* b, uint32_t n) {
    F8 acc = {};
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) acc += load8(a + i) * load8(b + i);
    double s = 0;
    for (int k = 0; k < 8; ++k) s += acc[k];
    for (; i < n; ++i) s += double(a[i]) * b[i];
    return s;
}

// Canonical pairs (re, im interleaved) to planar: re[P] then im[P], so that
// forming and rotating keys are plain vector loops.
inline void to_planar(const float* canonical, uint32_t pairs, float* out) {
    for (uint32_t j = 0; j < pairs; ++j) {
        out[j] = canonical[2 * j];
        out[pairs + j] = canonical[2 * j + 1];
    }
}

}  // namespace

CpuAttention::CpuAttention(const Codebook& cb, const BackendConfig& config,
                           const CpuStorage& storage, ThreadPool& pool)
    : cb_(cb),
      config_(config),
      storage_(storage),
      pool_(pool),
      group_size_(cb.n_q_heads / cb.n_kv_heads),
      code_count_(cb.value_code_bits()),
      state_stride_(2 + size_t(cb.value_code_bits()) + cb.head_dim) {
    const uint32_t d = cb.head_dim, P = cb.pairs(), D = cb.value_dim();
    const uint32_t R = cb.key_stages, C = cb.sub_centers;

    planar_.resize(cb.n_layers);
    lambda_eps_.resize(cb.n_layers);
    for (uint32_t l = 0; l < cb.n_layers; ++l) {
        planar_[l].resize(size_t(cb.n_kv_heads) * R * C * d);
        for (uint32_t g = 0; g < cb.n_kv_heads; ++g)
            for (uint32_t r = 0; r < R; ++r)
                for (uint32_t a = 0; a < C; ++a)
                    to_planar(cb.sub_center(l, g, r, a), P,
                              planar_[l].data() + ((size_t(g) * R + r) * C + a) * d);
        const auto& lambda = cb.layers[l].values.lambda;
        lambda_eps_[l].resize(D);
        for (uint32_t c = 0; c < D; ++c) lambda_eps_[l][c] = lambda[c] + kValueEps;
    }
    freq_ = rope_frequencies(cb.rope, d);
    step_cos_.resize(P);
    step_sin_.resize(P);
    for (uint32_t j = 0; j < P; ++j) {
        step_cos_[j] = std::cos(freq_[j]);
        step_sin_[j] = std::sin(freq_[j]);
    }

    const size_t row_state_bytes = size_t(cb.n_q_heads) * state_stride_ * sizeof(double);
    tile_rows_ = uint32_t(std::clamp<size_t>(kTileStateBytes / row_state_bytes, 1, kMaxTileRows));

    const unsigned T = pool.size();
    scratch_.resize(T);
    for (auto& s : scratch_) {
        s.q.resize(size_t(tile_rows_) * cb.n_q_heads * d);
        s.cos.resize(size_t(kChunk) * P);
        s.sin.resize(size_t(kChunk) * P);
        s.rot_cos.resize(P);
        s.rot_sin.resize(P);
        s.keys.resize(size_t(cb.n_kv_heads) * kChunk * d);
        s.values.resize(size_t(kChunk) * D);
        s.bits.resize(kChunk);
        s.weights.resize(kChunk);
        s.codes.resize(size_t(cb.n_kv_heads) * R);
        s.token.resize(std::max<size_t>(D, size_t(cb.n_q_heads) * d));
        s.canonical.resize(d);
        s.p.resize(kChunk);
        s.chunk_acc.resize(d);
        s.pw.resize(kChunk);
        s.za.resize(R);
        s.zb.resize(R);
        s.states.resize(size_t(tile_rows_) * cb.n_q_heads * state_stride_);
        s.out.resize(d);
    }
    // Split mode runs with fewer rows than threads and at most
    // ceil(2T / rows) parts per row: fewer than 3T parts in all.
    parts_.reserve(3 * size_t(T));
    part_states_.resize(3 * size_t(T) * cb.n_q_heads * state_stride_);
    row_first_part_.resize(size_t(T) + 1);
}

uint64_t CpuAttention::bytes_tables() const {
    uint64_t n = 0;
    for (const auto& p : planar_) n += p.size() * sizeof(float);
    for (const auto& l : lambda_eps_) n += l.size() * sizeof(float);
    return n;
}

uint64_t CpuAttention::bytes_scratch() const {
    uint64_t n = part_states_.size() * sizeof(double);
    for (const auto& s : scratch_)
        n += (s.q.size() + s.cos.size() + s.sin.size() + s.keys.size() + s.values.size() +
              s.weights.size() + s.token.size() + s.canonical.size() + s.p.size() + s.pw.size() +
              s.chunk_acc.size()) * sizeof(float) +
             (s.za.size() + s.zb.size()) * sizeof(float*) +
             (s.rot_cos.size() + s.rot_sin.size() + s.states.size() + s.out.size()) * sizeof(double) +
             s.codes.size() * sizeof(uint16_t) + s.bits.size() * sizeof(void*);
    return n;
}

void CpuAttention::init_states(double* states, size_t n_heads) const {
    for (size_t h = 0; h < n_heads; ++h) {
        double* st = states + h * state_stride_;
        st[0] = -std::numeric_limits<double>::infinity();
        std::fill(st + 1, st + state_stride_, 0.0);
    }
}

void CpuAttention::load_queries(const AttendCall& call, uint32_t r0, uint32_t r1, Scratch& s) const {
    const uint32_t d = cb_.head_dim, Hq = cb_.n_q_heads;
    const size_t row_elems = size_t(Hq) * d;
    const size_t row_bytes = row_elems * dtype_size(config_.io_dtype);
    for (uint32_t r = r0; r < r1; ++r) {
        to_float(static_cast<const uint8_t*>(call.q) + r * row_bytes, config_.io_dtype, row_elems,
                 s.token.data());
        for (uint32_t h = 0; h < Hq; ++h) {
            to_canonical(s.token.data() + size_t(h) * d, d, cb_.pair_layout, s.canonical.data());
            to_planar(s.canonical.data(), cb_.pairs(), s.q.data() + (size_t(r - r0) * Hq + h) * d);
        }
    }
}

// cos and sin of (position + t) w_j for the n tokens of a chunk. The angle
// is advanced by one exact step per token in double precision (error about
// 1e-16 per step), instead of 2P sin/cos calls per token; a range starts
// from exact values.
COMMVQ_VECTOR_CLONES
void CpuAttention::prepare_rotation(uint64_t position, uint32_t n, Scratch& s) const {
    const uint32_t P = cb_.pairs();
    if (!s.rot_valid || s.rot_position != position) {
        for (uint32_t j = 0; j < P; ++j) {
            double angle = double(position) * freq_[j];
            s.rot_cos[j] = std::cos(angle);
            s.rot_sin[j] = std::sin(angle);
        }
    }
    for (uint32_t t = 0; t < n; ++t) {
        float* c = s.cos.data() + size_t(t) * P;
        float* sn = s.sin.data() + size_t(t) * P;
        for (uint32_t j = 0; j < P; ++j) {
            c[j] = float(s.rot_cos[j]);
            sn[j] = float(s.rot_sin[j]);
            double rc = s.rot_cos[j] * step_cos_[j] - s.rot_sin[j] * step_sin_[j];
            double rs = s.rot_sin[j] * step_cos_[j] + s.rot_cos[j] * step_sin_[j];
            s.rot_cos[j] = rc;
            s.rot_sin[j] = rs;
        }
    }
    s.rot_position = position + n;
    s.rot_valid = true;
}

namespace {
// Rotates a planar key by the angles of its token: pair j times exp(i m w_j).
inline void rotate_planar(float* key, const float* c, const float* sn, uint32_t P, float scale) {
    float* re = key;
    float* im = key + P;
    for (uint32_t j = 0; j < P; ++j) {
        float x = re[j] * scale, y = im[j] * scale;
        re[j] = x * c[j] - y * sn[j];
        im[j] = x * sn[j] + y * c[j];
    }
}

// Pairs [j0, j0 + 8 NB) of a key: the sum over the R stages of z_A + i z_B,
// i.e. (a_re - b_im, a_im + b_re), scaled and rotated. The partial key
// stays in registers over all stages; NB blocks of 8 pairs at once keep
// 2 NB independent sums in flight.
template <int NB>
inline void form_pairs8(const float* const* za, const float* const* zb, uint32_t R, uint32_t P,
                        uint32_t j0, float scale, const float* c, const float* sn, float* out) {
    F8 re[NB] = {}, im[NB] = {};
    for (uint32_t r = 0; r < R; ++r) {
        const float* a = za[r] + j0;
        const float* b = zb[r] + j0;
        for (int k = 0; k < NB; ++k) {
            re[k] += load8(a + 8 * k) - load8(b + P + 8 * k);
            im[k] += load8(a + P + 8 * k) + load8(b + 8 * k);
        }
    }
    for (int k = 0; k < NB; ++k) {
        const uint32_t j = j0 + 8 * k;
        const F8 x = re[k] * scale, y = im[k] * scale, cv = load8(c + j), sv = load8(sn + j);
        store8(out + j, x * cv - y * sv);
        store8(out + P + j, x * sv + y * cv);
    }
}

// The same for one pair (head dims that are not a multiple of 16).
inline void form_pair(const float* const* za, const float* const* zb, uint32_t R, uint32_t P, uint32_t j,
                      float scale, const float* c, const float* sn, float* out) {
    float re = 0, im = 0;
    for (uint32_t r = 0; r < R; ++r) {
        re += za[r][j] - zb[r][P + j];
        im += za[r][P + j] + zb[r][j];
    }
    const float x = re * scale, y = im * scale;
    out[j] = x * c[j] - y * sn[j];
    out[P + j] = x * sn[j] + y * c[j];
}
}  // namespace

// Forms the rotated keys of n compressed tokens (one block) for every KV
// head, once: the G query heads of a group and all rows of the work item
// share them. Rotating the key by +m equals rotating each query by -m, but
// costs one rotation per key instead of one per query head.
COMMVQ_VECTOR_CLONES
void CpuAttention::form_compressed_keys(uint32_t layer, const LayerView& view, uint64_t position,
                                        uint32_t n, Scratch& s) const {
    const uint32_t d = cb_.head_dim, P = cb_.pairs(), R = cb_.key_stages, C = cb_.sub_centers;
    const uint32_t Hkv = cb_.n_kv_heads;
    const BlockLayout& layout = storage_.layout();
    const uint64_t index = position - view.sinks;
    const uint8_t* block = storage_.block(layer, view.blocks[index / layout.block_tokens]);
    const uint32_t slot0 = uint32_t(index % layout.block_tokens);
    const float* planar = planar_[layer].data();
    const float** za = s.za.data();
    const float** zb = s.zb.data();
    for (uint32_t t = 0; t < n; ++t) {
        ConstTokenSlot slot = token_slot(layout, block, slot0 + t);
        s.bits[t] = slot.value_codes;
        s.weights[t] = *slot.value_weight;
        unpack_codes(slot.key_codes, size_t(Hkv) * R, cb_.code_bits(), s.codes.data());
        const float* c = s.cos.data() + size_t(t) * P;
        const float* sn = s.sin.data() + size_t(t) * P;
        for (uint32_t g = 0; g < Hkv; ++g) {
            for (uint32_t r = 0; r < R; ++r) {
                const uint32_t code = s.codes[size_t(g) * R + r];
                const float* stage = planar + (size_t(g) * R + r) * C * d;
                za[r] = stage + size_t(code / C) * d;
                zb[r] = stage + size_t(code % C) * d;
            }
            const float scale = slot.key_scales[cb_.n_key_scales() == 1 ? 0 : g];
            float* key = s.keys.data() + (size_t(g) * kChunk + t) * d;
            uint32_t j = 0;
            for (; j + 16 <= P; j += 16) form_pairs8<2>(za, zb, R, P, j, scale, c, sn, key);
            for (; j + 8 <= P; j += 8) form_pairs8<1>(za, zb, R, P, j, scale, c, sn, key);
            for (; j < P; ++j) form_pair(za, zb, R, P, j, scale, c, sn, key);
        }
    }
}

// Keys and values of n uncompressed tokens, as the host gave them; pre-RoPE
// keys are rotated to their positions here.
COMMVQ_VECTOR_CLONES
void CpuAttention::load_uncompressed(uint32_t layer, const LayerView& view, uint64_t position,
                                     uint32_t n, bool rotate, Scratch& s) const {
    const uint32_t d = cb_.head_dim, P = cb_.pairs(), D = cb_.value_dim();
    for (uint32_t t = 0; t < n; ++t) {
        const uint8_t* slot = storage_.slot(view.seq, layer, position + t);
        to_float(slot, config_.io_dtype, cb_.key_dim(), s.token.data());
        for (uint32_t g = 0; g < cb_.n_kv_heads; ++g) {
            float* key = s.keys.data() + (size_t(g) * kChunk + t) * d;
            to_canonical(s.token.data() + size_t(g) * d, d, cb_.pair_layout, s.canonical.data());
            to_planar(s.canonical.data(), P, key);
            if (rotate)
                rotate_planar(key, s.cos.data() + size_t(t) * P, s.sin.data() + size_t(t) * P, P, 1.0f);
        }
        to_float(slot + storage_.key_bytes(), config_.io_dtype, D,
                 s.values.data() + size_t(t) * D);
    }
}

// One query head over n tokens of a chunk: online softmax step. Scores and
// probabilities in float, the running sum and accumulators in double; each
// accumulator's share of the chunk is summed in float (at most kChunk terms,
// in registers) and folded in once.
COMMVQ_VECTOR_CLONES
void CpuAttention::update(double* state, const float* q, const float* keys, uint32_t n,
                          bool compressed, uint32_t group, Scratch& s) const {
    const uint32_t d = cb_.head_dim;
    float* p = s.p.data();
    float chunk_max = -std::numeric_limits<float>::infinity();
    for (uint32_t t = 0; t < n; ++t) {
        p[t] = float(config_.attn_scale * dot(q, keys + size_t(t) * d, d));
        chunk_max = std::max(chunk_max, p[t]);
    }
    const double m_old = state[0];
    const double m_new = std::max(m_old, double(chunk_max));
    double sum = 0;
    for (uint32_t t = 0; t < n; ++t) {
        p[t] = std::exp(float(p[t] - m_new));
        sum += p[t];
    }
    double* acc_code = state + 2;
    double* acc_dense = acc_code + code_count_;
    if (m_new != m_old && state[1] != 0) {
        const double alpha = std::exp(m_old - m_new);
        state[1] *= alpha;
        for (size_t i = 0; i < code_count_ + size_t(d); ++i) acc_code[i] *= alpha;
    }
    state[0] = m_new;
    state[1] += sum;

    if (compressed) {
        // acc_i += p_t w_t bit_i: byte by byte, eight bits at a time.
        float* pw = s.pw.data();
        for (uint32_t t = 0; t < n; ++t) pw[t] = p[t] * s.weights[t];
        // Four code bytes at a time: four independent sums per token.
        const uint32_t n_bytes = code_count_ / 8;
        uint32_t b = 0;
        for (; b + 4 <= n_bytes; b += 4) {
            F8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
            for (uint32_t t = 0; t < n; ++t) {
                const uint8_t* bits = s.bits[t] + b;
                a0 += pw[t] * load8(kBitMask.m[bits[0]]);
                a1 += pw[t] * load8(kBitMask.m[bits[1]]);
                a2 += pw[t] * load8(kBitMask.m[bits[2]]);
                a3 += pw[t] * load8(kBitMask.m[bits[3]]);
            }
            for (int k = 0; k < 8; ++k) {
                acc_code[8 * b + k] += a0[k];
                acc_code[8 * b + 8 + k] += a1[k];
                acc_code[8 * b + 16 + k] += a2[k];
                acc_code[8 * b + 24 + k] += a3[k];
            }
        }
        for (; b < n_bytes; ++b) {
            F8 a = {};
            for (uint32_t t = 0; t < n; ++t) a += pw[t] * load8(kBitMask.m[s.bits[t][b]]);
            for (int k = 0; k < 8; ++k) acc_code[8 * b + k] += a[k];
        }
    } else {
        const uint32_t D = cb_.value_dim();
        float* acc = s.chunk_acc.data();
        std::fill(acc, acc + d, 0.0f);
        for (uint32_t t = 0; t < n; ++t) {
            const float pt = p[t];
            const float* v = s.values.data() + size_t(t) * D + size_t(cb_.kv_head_begin + group) * d;
            for (uint32_t c = 0; c < d; ++c) acc[c] += pt * v[c];
        }
        for (uint32_t c = 0; c < d; ++c) acc_dense[c] += acc[c];
    }
}

// Adds the softmax state of another token range of the same query head.
void CpuAttention::merge(double* into, const double* part) const {
    if (part[1] == 0) return;
    const double m = std::max(into[0], part[0]);
    const double a = into[1] == 0 ? 0.0 : std::exp(into[0] - m);
    const double b = std::exp(part[0] - m);
    into[0] = m;
    into[1] = into[1] * a + part[1] * b;
    for (size_t i = 2; i < state_stride_; ++i) into[i] = into[i] * a + part[i] * b;
}

// The output of one query head: E applied once to the code-space sum (only
// the head's own channels), the per-channel scale, the uncompressed tokens'
// sum, divided by the softmax denominator.
COMMVQ_VECTOR_CLONES
void CpuAttention::finish(uint32_t layer, uint32_t head, const double* state, void* out,
                          float* lse, Scratch& s) const {
    const uint32_t d = cb_.head_dim, D = cb_.value_dim();
    // The head's KV group, numbered among the model's heads: its columns of
    // E and lambda (a slice cache holds heads from kv_head_begin on).
    const uint32_t g = cb_.kv_head_begin + head / group_size_;
    const double* acc_code = state + 2;
    const double* acc_dense = acc_code + code_count_;
    const float* E = cb_.layers[layer].values.codebook.data() + size_t(g) * d;
    double* o = s.out.data();
    std::fill(o, o + d, 0.0);
    for (uint32_t i = 0; i < code_count_; ++i) {
        const double a = acc_code[i];
        if (a == 0) continue;
        const float* e = E + size_t(i) * D;
        for (uint32_t c = 0; c < d; ++c) o[c] += a * e[c];
    }
    const float* lam = lambda_eps_[layer].data() + size_t(g) * d;
    const double inv_l = 1.0 / state[1];
    float* out_f = s.canonical.data();  // d floats, free at this point
    for (uint32_t c = 0; c < d; ++c) out_f[c] = float((lam[c] * o[c] + acc_dense[c]) * inv_l);
    from_float(out_f, d, config_.io_dtype, out);
    if (lse) *lse = float(state[0] + std::log(state[1]));
}

// Rows [r0, r1) (one view) over tokens [begin, end) of their sequence.
void CpuAttention::accumulate(const AttendCall& call, uint32_t r0, uint32_t r1, uint64_t begin,
                              uint64_t end, double* states, Scratch& s) const {
    const LayerView& view = *call.rows[r0].view;
    const uint32_t d = cb_.head_dim, Hq = cb_.n_q_heads;
    const uint32_t bt = storage_.layout().block_tokens;
    uint64_t last = 0;
    for (uint32_t r = r0; r < r1; ++r) last = std::max(last, call.rows[r].visible);
    end = std::min(end, last);
    s.rot_valid = false;
    for (uint64_t pos = begin; pos < end;) {
        const bool compressed = pos >= view.sinks && pos < view.sinks + view.compressed;
        uint64_t segment_end;
        if (pos < view.sinks) {
            segment_end = view.sinks;
        } else if (compressed) {
            uint64_t block_end = ((pos - view.sinks) / bt + 1) * bt;
            segment_end = view.sinks + std::min<uint64_t>(view.compressed, block_end);
        } else {
            segment_end = view.length;
        }
        const uint64_t chunk_end = std::min({segment_end, pos + kChunk, end});
        const uint32_t n = uint32_t(chunk_end - pos);
        const bool rotate = compressed || config_.key_convention == COMMVQ_KEYS_PRE_ROPE;
        if (rotate) prepare_rotation(pos, n, s);
        if (compressed)
            form_compressed_keys(call.layer, view, pos, n, s);
        else
            load_uncompressed(call.layer, view, pos, n, rotate, s);
        for (uint32_t r = r0; r < r1; ++r) {
            const uint64_t visible_end = std::min(call.rows[r].visible, chunk_end);
            if (visible_end <= pos) continue;
            const uint32_t nv = uint32_t(visible_end - pos);
            for (uint32_t h = 0; h < Hq; ++h) {
                const uint32_t g = h / group_size_;
                update(states + (size_t(r - r0) * Hq + h) * state_stride_,
                       s.q.data() + (size_t(r - r0) * Hq + h) * d,
                       s.keys.data() + size_t(g) * kChunk * d, nv, compressed, g, s);
            }
        }
        pos = chunk_end;
    }
}

void CpuAttention::attend(const AttendCall& call) {
    const uint32_t Hq = cb_.n_q_heads, d = cb_.head_dim;
    const size_t out_row_bytes = size_t(Hq) * d * dtype_size(config_.io_dtype);
    const size_t out_head_bytes = size_t(d) * dtype_size(config_.io_dtype);
    auto out_ptr = [&](uint32_t r, uint32_t h) {
        return static_cast<uint8_t*>(call.out) + r * out_row_bytes + h * out_head_bytes;
    };
    auto lse_ptr = [&](uint32_t r, uint32_t h) {
        return call.lse ? call.lse + size_t(r) * Hq + h : nullptr;
    };
    const unsigned T = pool_.size();

    // Splitting rows over threads pays only with fewer rows than threads and
    // a row long enough for two parts.
    bool split = T > 1 && call.n_rows < T;
    if (split) {
        split = false;
        for (uint32_t r = 0; r < call.n_rows; ++r) split |= call.rows[r].visible >= 2 * kMinPartTokens;
    }
    if (!split) {
        // A work item is a tile of rows over all of their tokens, finished
        // in place.
        const uint32_t tile = call.one_sequence ? tile_rows_ : 1;
        const size_t n_items = (call.n_rows + tile - 1) / tile;
        pool_.parallel_for(n_items, [&](size_t item, unsigned thread) {
            Scratch& s = scratch_[thread];
            const uint32_t r0 = uint32_t(item * tile);
            const uint32_t r1 = std::min(call.n_rows, r0 + tile);
            load_queries(call, r0, r1, s);
            init_states(s.states.data(), size_t(r1 - r0) * Hq);
            accumulate(call, r0, r1, 0, std::numeric_limits<uint64_t>::max(), s.states.data(), s);
            for (uint32_t r = r0; r < r1; ++r)
                for (uint32_t h = 0; h < Hq; ++h)
                    finish(call.layer, h, s.states.data() + (size_t(r - r0) * Hq + h) * state_stride_,
                           out_ptr(r, h), lse_ptr(r, h), s);
        });
        return;
    }

    // Fewer rows than threads (decode): split each row's tokens into parts,
    // accumulate the parts in parallel, then merge and finish per head.
    const uint64_t max_parts = (2 * uint64_t(T) + call.n_rows - 1) / call.n_rows;
    parts_.clear();
    for (uint32_t r = 0; r < call.n_rows; ++r) {
        const uint64_t visible = call.rows[r].visible;
        const uint64_t n_parts =
            std::max<uint64_t>(1, std::min(max_parts, visible / kMinPartTokens));
        row_first_part_[r] = uint32_t(parts_.size());
        for (uint64_t k = 0; k < n_parts; ++k)
            parts_.push_back({r, visible * k / n_parts, visible * (k + 1) / n_parts});
    }
    row_first_part_[call.n_rows] = uint32_t(parts_.size());
    const size_t part_stride = size_t(Hq) * state_stride_;
    pool_.parallel_for(parts_.size(), [&](size_t i, unsigned thread) {
        Scratch& s = scratch_[thread];
        const Part& part = parts_[i];
        double* states = part_states_.data() + i * part_stride;
        load_queries(call, part.row, part.row + 1, s);
        init_states(states, Hq);
        accumulate(call, part.row, part.row + 1, part.begin, part.end, states, s);
    });
    pool_.parallel_for(size_t(call.n_rows) * Hq, [&](size_t item, unsigned thread) {
        const uint32_t r = uint32_t(item / Hq), h = uint32_t(item % Hq);
        double* into = part_states_.data() + row_first_part_[r] * part_stride + h * state_stride_;
        for (uint32_t k = row_first_part_[r] + 1; k < row_first_part_[r + 1]; ++k)
            merge(into, part_states_.data() + k * part_stride + h * state_stride_);
        finish(call.layer, h, into, out_ptr(r, h), lse_ptr(r, h), scratch_[thread]);
    });
}

}  // namespace commvq
