// The codebook of one model: per layer, the key codebook (R residual stages
// of C commutative sub-centers per KV head) and the value codebook (the
// learned encoder and the additive binary codebook E). See docs/METHOD.md.
//
// Key sub-centers are stored in the canonical pair layout: for a head vector
// of P = head_dim/2 complex numbers, element [2j] is the real part and
// [2j + 1] the imaginary part of pair j. Vectors from the model are brought
// into this layout by pair_layout.h; the model's own layout (rotate-half or
// interleaved) is recorded in pair_layout.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "commvq/commvq.h"

namespace commvq {

struct RopeSpec {
    double theta = 10000.0;
    int32_t scaling = COMMVQ_ROPE_SCALING_NONE;
    double factor = 1.0;
    double low_freq_factor = 1.0;
    double high_freq_factor = 4.0;
    double original_max_position = 8192.0;
};

struct KeyCodebook {
    // [n_kv_heads][key_stages][sub_centers][head_dim], canonical pair layout.
    std::vector<float> sub_centers;
};

struct ValueCodebook {
    std::vector<float> lambda;       // [D]   fixed per-channel scale
    std::vector<float> norm_weight;  // [D]   LayerNorm
    std::vector<float> norm_bias;    // [D]
    std::vector<float> enc1_weight;  // [I][D]
    std::vector<float> enc1_bias;    // [I]
    std::vector<float> enc2_weight;  // [4n][I]
    std::vector<float> enc2_bias;    // [4n]
    std::vector<float> codebook;     // E: [2n][D]
};

struct LayerCodebook {
    KeyCodebook keys;
    ValueCodebook values;
};

struct Codebook {
    uint32_t n_layers = 0;
    uint32_t n_kv_heads = 0;
    uint32_t n_q_heads = 0;
    uint32_t head_dim = 0;
    uint32_t key_stages = 0;    // R
    uint32_t sub_centers = 64;  // C; a stage code is A * C + B
    uint32_t value_bits = 1;    // b
    uint32_t value_hidden = 0;  // I
    int32_t pair_layout = COMMVQ_PAIRS_ROTATE_HALF;
    int32_t scale_mode = COMMVQ_SCALE_TOKEN;
    RopeSpec rope;
    std::string model_name;
    std::vector<LayerCodebook> layers;

    // Derived by finalize(); never stored in files.
    uint64_t fingerprint = 0;
    // Per layer: [n_kv_heads][key_stages][C][C], gamma_{A,B} = 2 <z_A, i z_B>.
    std::vector<std::vector<float>> cross;
    // Per layer: [n_kv_heads][key_stages][C], ||z_a||^2.
    std::vector<std::vector<float>> norms;

    // A slice cache's own copy (slice_codebook) holds the key tables of its
    // KV heads only (n_kv_heads, n_q_heads and the key data are the slice's)
    // but the whole value codebook: values are encoded over all of the
    // model's heads. Both are 0 in every codebook a file or training makes.
    uint32_t value_kv_heads = 0;  // the model's KV heads; 0 = n_kv_heads
    uint32_t kv_head_begin = 0;   // the model's index of this codebook's KV head 0

    uint32_t pairs() const { return head_dim / 2; }
    // The model's KV heads (a slice's codebook holds fewer: n_kv_heads).
    uint32_t model_kv_heads() const { return value_kv_heads ? value_kv_heads : n_kv_heads; }
    uint32_t value_dim() const { return model_kv_heads() * head_dim; }  // D
    uint32_t key_dim() const { return n_kv_heads * head_dim; }  // keys of one token (D but in a slice)
    bool is_slice() const { return value_kv_heads != 0 && value_kv_heads != n_kv_heads; }
    // Whether a token's key scale needs the squared key norms of heads this
    // codebook does not hold (a slice in the token scale mode): appends
    // then bring them (docs/PARALLEL.md).
    bool needs_given_key_norms() const { return is_slice() && scale_mode == COMMVQ_SCALE_TOKEN; }
    uint32_t value_groups() const { return value_dim() * value_bits / 2; }  // n
    uint32_t value_code_bits() const { return 2 * value_groups(); }         // 2n
    uint32_t code_bits() const;                                            // bits of one stage code
    uint32_t n_key_scales() const { return scale_mode == COMMVQ_SCALE_HEAD ? n_kv_heads : 1; }

    // Checks every size and value, then computes cross, norms and fingerprint.
    // Throws Error(COMMVQ_ERR_FORMAT or _SHAPE_MISMATCH) on anything inconsistent.
    void finalize();

    const float* sub_center(uint32_t layer, uint32_t head, uint32_t stage, uint32_t a) const {
        return layers[layer].keys.sub_centers.data() +
               ((size_t(head) * key_stages + stage) * sub_centers + a) * head_dim;
    }
};

// The copy a cache of KV heads [begin, begin + count) keeps (count < the
// model's heads): the key sub-centers, cross and norm tables of those heads,
// n_q_heads of their query groups, the value codebook whole. cb is
// finalized; the copy is not a codebook of a file (no finalize, no save).
Codebook slice_codebook(const Codebook& cb, uint32_t begin, uint32_t count);

// One tensor of a layer as codebook files name it (docs/FORMATS.md), in the
// fixed order that files and the fingerprint use.
struct CodebookTensorSpec {
    std::string name;              // e.g. "layers.3.values.enc1.weight"
    std::vector<uint64_t> shape;
};
std::vector<CodebookTensorSpec> layer_tensor_specs(const Codebook& cb, uint32_t layer);
// The same tensors' storage, in the same order.
std::vector<const std::vector<float>*> layer_tensor_data(const LayerCodebook& layer);
std::vector<std::vector<float>*> layer_tensor_data(LayerCodebook& layer);

// The shape, layout and RoPE fields as (key, value) strings, in a fixed
// order, exactly as codebook files write them in __metadata__ (doubles with
// %.17g, enums by name). The fingerprint hashes this text.
std::vector<std::pair<std::string, std::string>> codebook_shape_metadata(const Codebook& cb);
// The fingerprint (docs/FORMATS.md): FNV-1a 64 over "commvq-codebook\n",
// the shape metadata as "key=value\n" lines, then every tensor's float32
// values in layer_tensor_specs order, layer by layer. The constructor hashes
// the text; add() the values, in order, in as many pieces as convenient.
class CodebookFingerprint {
public:
    explicit CodebookFingerprint(const Codebook& cb);
    void add(const float* values, size_t n);
    uint64_t value() const { return h_; }

private:
    void add_bytes(const void* data, size_t n);
    uint64_t h_ = 0xcbf29ce484222325ull;
};

// Names of the enums in files: "rotate_half"/"interleaved", "token"/"head",
// "none"/"linear"/"llama3".
const char* pair_layout_name(int32_t pair_layout);
const char* scale_mode_name(int32_t scale_mode);
const char* rope_scaling_name(int32_t scaling);

// Whether s is well-formed UTF-8 (what a file's JSON header can hold, e.g.
// the model name).
bool is_valid_utf8(const std::string& s);

// The standard R for a bit width: 1 bit -> 11 stages, 2 bits -> 21.
uint32_t key_stages_for_bits(uint32_t value_bits);
// The standard encoder width: I = min(4096, 4n).
uint32_t value_hidden_for(uint32_t value_dim, uint32_t value_bits);

}  // namespace commvq

// The C handle is the C++ object.
struct commvq_codebook {
    commvq::Codebook cb;
};
