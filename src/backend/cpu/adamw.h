// AdamW as torch.optim.AdamW / Megatron apply it, on fp32 parameters and state.
#pragma once

#include "backend/ops.h"

namespace mpt::backend::cpu {

// g = grad * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr * (m/(1-b1^step) / (sqrt(v/(1-b2^step)) + eps) + wd * p), p on the right the old p.
// grad_scale is *a.grad_scale_device when that is given.
void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a);

}  // namespace mpt::backend::cpu
