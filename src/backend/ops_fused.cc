// The default fused ops of Ops: each runs the ops it fuses, in turn, so a backend that does
// not override one (the CPU backend, the emulated device) gives exactly their bits. A GPU
// backend overrides them with one pass over memory.
#include "backend/ops.h"

namespace mpt::backend {

void Ops::qkv_split_rope(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                         int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) {
  qkv_split(q, k, v, qkv, groups, heads_per_group, head_dim);
  rope(q, positions, groups * heads_per_group, head_dim, rotary_dim, base, false);
  rope(k, positions, groups, head_dim, rotary_dim, base, false);
}

void Ops::qkv_merge_rope(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                         int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) {
  rope(dq, positions, groups * heads_per_group, head_dim, rotary_dim, base, true);
  rope(dk, positions, groups, head_dim, rotary_dim, base, true);
  qkv_merge(dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
}

void Ops::ce_stats(Tensor row_max, Tensor sumexp, Tensor target_logit, Tensor logits, Tensor targets,
                   int64_t vocab_start, int64_t vocab_valid) {
  ce_row_max(row_max, logits, vocab_start, vocab_valid);
  ce_sumexp_target(sumexp, target_logit, logits, row_max, targets, vocab_start, vocab_valid);
}

}  // namespace mpt::backend
