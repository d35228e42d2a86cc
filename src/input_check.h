// The one rule for the numbers a caller hands in (docs/API.md, "Numbers a
// caller passes"): every element of the keys and values of append, of the
// queries of attend and attend_batch, and of the inputs of
// commvq_codebook_encode_keys and commvq_codebook_reconstruct is finite and
// at most kMaxInputMagnitude in magnitude; anything else is refused with
// COMMVQ_ERR_INVALID_ARGUMENT naming the call, the row and the element.
//
// Why a bound and not only finiteness: attention forms scores in float32,
// attn_scale * <q, k> over head_dim terms, and keys keep their norm as a
// float32 scale. With |q_i|, |k_i| <= 1e12 and attn_scale <= 1e6 a score is
// at most 1e30 * head_dim, far inside float32's 3.4e38, so no finite input
// can overflow into Inf or NaN. Real activations sit many orders below the
// bound (f16 itself ends at 65504).
#pragma once

#include <cstddef>
#include <cstdint>

namespace commvq {

constexpr double kMaxInputMagnitude = 1e12;
// attn_scale: finite, > 0 once resolved, and at most this (see above).
constexpr double kMaxAttnScale = 1e6;

// Index of the first of data[0..n) (elements of io dtype `dtype`) that is
// NaN, infinite or beyond kMaxInputMagnitude; n if there is none.
size_t first_bad_input(const void* data, int32_t dtype, size_t n);

// Throws COMMVQ_ERR_INVALID_ARGUMENT if an element of data (n_rows rows of
// row_elements elements) breaks the rule, e.g. "commvq_cache_append: k of
// token 3, element 17, is inf; ...". `name` names the argument, `row` what
// a row is (token, query, entry).
void require_inputs(const char* fn, const char* name, const char* row, const void* data, int32_t dtype,
                    size_t n_rows, size_t row_elements);

// The same for a batch of n_entries entries of n_tokens tokens each
// (commvq_cache_append_batch): "k of entry 2, token 0, element 17".
void require_batch_inputs(const char* fn, const char* name, const void* data, int32_t dtype, size_t n_entries,
                          size_t n_tokens, size_t token_elements);

}  // namespace commvq
