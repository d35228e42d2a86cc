// Moving head vectors between the model's pair layout and the canonical
// layout used inside the library (element 2j real, 2j + 1 imaginary part of
// pair j). Keys and queries enter through to_canonical; nothing leaves in
// the canonical layout (values are never paired).
#pragma once

#include <cstdint>

namespace commvq {

void to_canonical(const float* x, uint32_t head_dim, int32_t pair_layout, float* out);
void from_canonical(const float* x, uint32_t head_dim, int32_t pair_layout, float* out);

}  // namespace commvq
