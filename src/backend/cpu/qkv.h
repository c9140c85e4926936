// Split of the fused linear_qkv output into q, k, v and its inverse (Megatron layout:
// per query group g, [heads_per_group query heads, 1 key, 1 value] of head_dim each).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// qkv [T, groups*(hpg+2)*D] -> q [T, groups*hpg*D], k, v [T, groups*D].
void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group, int64_t head_dim);
// The inverse (and adjoint) of qkv_split; overwrites dqkv.
void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
               int64_t head_dim);

}  // namespace mpt::backend::cpu
