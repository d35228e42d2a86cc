// The codebook functions of the C API.
#include <memory>

#include "block_layout.h"
#include "codebook.h"
#include "codebook_file.h"
#include "guard.h"

using commvq::capi::guard;
using commvq::capi::require_arg;

extern "C" {

COMMVQ_API void commvq_codebook_info_init(commvq_codebook_info_t* info) {
    if (!info) return;
    std::memset(info, 0, sizeof *info);
    info->struct_size = sizeof *info;
}

COMMVQ_API commvq_status_t commvq_codebook_load(const char* path, commvq_codebook_t** out) {
    return guard([&] {
        require_arg(path, "commvq_codebook_load", "path");
        require_arg(out, "commvq_codebook_load", "out");
        auto cb = std::make_unique<commvq_codebook>(commvq_codebook{commvq::load_codebook(path)});
        *out = cb.release();
    });
}

COMMVQ_API commvq_status_t commvq_codebook_load_memory(const void* data, size_t size,
                                                      commvq_codebook_t** out) {
    return guard([&] {
        require_arg(data, "commvq_codebook_load_memory", "data");
        require_arg(out, "commvq_codebook_load_memory", "out");
        auto cb = std::make_unique<commvq_codebook>(commvq_codebook{commvq::parse_codebook(data, size)});
        *out = cb.release();
    });
}

COMMVQ_API commvq_status_t commvq_codebook_save(const commvq_codebook_t* cb, const char* path) {
    return guard([&] {
        require_arg(cb, "commvq_codebook_save", "cb");
        require_arg(path, "commvq_codebook_save", "path");
        commvq::save_codebook(cb->cb, path);
    });
}

COMMVQ_API commvq_status_t commvq_codebook_save_as(const commvq_codebook_t* cb, const char* path, int32_t dtype) {
    return guard([&] {
        require_arg(cb, "commvq_codebook_save_as", "cb");
        require_arg(path, "commvq_codebook_save_as", "path");
        commvq::save_codebook(cb->cb, path, dtype);
    });
}

COMMVQ_API void commvq_codebook_free(commvq_codebook_t* cb) { delete cb; }

COMMVQ_API commvq_status_t commvq_codebook_get_info(const commvq_codebook_t* cb,
                                                   commvq_codebook_info_t* info) {
    return guard([&] {
        const char* fn = "commvq_codebook_get_info";
        require_arg(cb, fn, "cb");
        require_arg(info, fn, "info");
        const commvq::Codebook& c = cb->cb;
        commvq_codebook_info_t i;
        std::memset(&i, 0, sizeof i);
        i.n_layers = c.n_layers;
        i.n_kv_heads = c.n_kv_heads;
        i.n_q_heads = c.n_q_heads;
        i.head_dim = c.head_dim;
        i.key_stages = c.key_stages;
        i.sub_centers = c.sub_centers;
        i.value_bits = c.value_bits;
        i.value_hidden = c.value_hidden;
        i.pair_layout = c.pair_layout;
        i.scale_mode = c.scale_mode;
        i.format_version = commvq::kCodebookFormatVersion;
        i.rope.theta = c.rope.theta;
        i.rope.scaling = c.rope.scaling;
        i.rope.factor = c.rope.factor;
        i.rope.low_freq_factor = c.rope.low_freq_factor;
        i.rope.high_freq_factor = c.rope.high_freq_factor;
        i.rope.original_max_position = c.rope.original_max_position;
        i.fingerprint = c.fingerprint;
        i.compressed_token_bytes = uint32_t(commvq::make_block_layout(c, 1).token_bytes());
        commvq::capi::write_struct(info, i, fn, "info");
    });
}

}  // extern "C"
