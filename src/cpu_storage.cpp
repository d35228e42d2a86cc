#include "cpu_storage.h"

#include <algorithm>
#include <cstring>

#include "dtype.h"
#include "error.h"
#include "size_math.h"

namespace commvq {

CpuStorage::CpuStorage(const Codebook& cb, const BackendConfig& config)
    : layout_(config.layout),
      n_blocks_(config.n_blocks),
      sinks_(config.sink_tokens),
      window_(config.window),
      n_layers_(cb.n_layers),
      key_bytes_(size_t(cb.key_dim()) * dtype_size(config.io_dtype)),
      value_bytes_(size_t(cb.value_dim()) * dtype_size(config.io_dtype)),
      slot_bytes_(key_bytes_ + value_bytes_),
      slots_per_layer_(size_t(config.sink_tokens) + config.window),
      has_norms2_(cb.needs_given_key_norms()) {
    sequence_bytes_ = checked_mul({cb.n_layers, slots_per_layer_, slot_bytes_}, "the windows of one sequence");
    pool_.resize(checked_mul({cb.n_layers, n_blocks_, layout_.block_bytes}, "the block pool"));
    uncompressed_.resize(checked_mul({config.max_seqs, sequence_bytes_}, "the windows"));
    if (has_norms2_)
        norms2_.resize(checked_mul({config.max_seqs, cb.n_layers, slots_per_layer_}, "the windows' key norms"));
}

void CpuStorage::copy_sequence(uint32_t src, uint32_t dst) {
    // Without sinks and window a sequence has no slots (and the storage no
    // buffer): memcpy of null pointers is undefined even for 0 bytes.
    if (sequence_bytes_ == 0) return;
    std::memcpy(uncompressed_.data() + dst * sequence_bytes_, uncompressed_.data() + src * sequence_bytes_,
                sequence_bytes_);
    if (!has_norms2_) return;
    const size_t per_seq = size_t(n_layers_) * slots_per_layer_;
    std::copy_n(norms2_.data() + src * per_seq, per_seq, norms2_.data() + dst * per_seq);
}

}  // namespace commvq
