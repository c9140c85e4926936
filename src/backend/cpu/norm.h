// LayerNorm and RMSNorm over the last axis of x [T, H], forward and backward.
// Statistics are accumulated in double; mean and rstd [T] are saved for backward.
#pragma once

#include "core/tensor.h"

namespace mpt::backend::cpu {

// out = (x - mean) * rstd * weight + bias, rstd = 1 / sqrt(var + eps), var biased.
// bias may be empty.
void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps);
// dx, dweight, dbias accumulate; dbias may be empty.
void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                   Tensor rstd);
// out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps);
// dx, dweight accumulate.
void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd);

}  // namespace mpt::backend::cpu
