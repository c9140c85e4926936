// Cross-entropy over vocab-parallel logits, in the pieces that bracket the reductions
// across tensor-parallel ranks: row max (all-reduce max), sum of exponentials and target
// logit (all-reduce sum), loss, and the gradient.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// logits [T, V_local]; column c is vocabulary id vocab_start + c; ids >= vocab_valid are
// padding and take no part. row_max is -inf for a row with no valid column.
void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid);
// sumexp = sum exp(logit - row_max) over valid columns (in double); target_logit = the
// target's logit, 0 when the target is outside this rank's columns.
void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                      int64_t vocab_start, int64_t vocab_valid);
// loss = log(sumexp) + row_max - target_logit
void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit);
// dlogits = (softmax - onehot(target)) * grad_scale[t], 0 in padding columns. dlogits
// may alias logits.
void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
            int64_t vocab_start, int64_t vocab_valid);
// ce_bwd's rule for a dlogits in another dtype than logits (bf16): it must not overlap them,
// as a GPU writes elements while others are still to be read. Checked before staging.
void check_dlogits_apart(const Tensor& dlogits, const Tensor& logits);

}  // namespace mpt::backend::cpu
