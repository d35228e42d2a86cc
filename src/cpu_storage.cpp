#include "cpu_storage.h"

#include "dtype.h"
#include "error.h"
#include "size_math.h"

namespace commvq {

CpuStorage::CpuStorage(const Codebook& cb, const BackendConfig& config)
    : layout_(config.layout),
      n_blocks_(config.n_blocks),
      sinks_(config.sink_tokens),
      window_(config.window),
      token_elements_(size_t(cb.n_kv_heads) * cb.head_dim),
      slot_half_bytes_(token_elements_ * dtype_size(config.io_dtype)),
      slots_per_layer_(size_t(config.sink_tokens) + config.window) {
    sequence_bytes_ = checked_mul({cb.n_layers, slots_per_layer_, 2, slot_half_bytes_},
                                  "the windows of one sequence");
    pool_.resize(checked_mul({cb.n_layers, n_blocks_, layout_.block_bytes}, "the block pool"));
    uncompressed_.resize(checked_mul({config.max_seqs, sequence_bytes_}, "the windows"));
}

}  // namespace commvq
