// The fused ops of the CPU backend (ops.h): the residual add with the norm after it, and a
// linear layer's GEMM with its bias and activation. The reference defines them as the
// compositions they replace: every argument is checked first, then the pieces run in turn
// through the backend's own ops, so a fused call equals the unfused calls bit for bit, bf16
// roundings and staging included, and a refused call writes nothing.
#pragma once

#include <optional>

#include "backend/ops.h"

namespace mpt::backend::cpu {

// sum = a + b, then layernorm_fwd / rmsnorm_fwd of sum as stored.
void add_layernorm_fwd(Ops& ops, Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b,
                       Tensor weight, Tensor bias, float eps);
void add_rmsnorm_fwd(Ops& ops, Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps);
// pre = x @ w^T + bias, y = act(pre); without act, y = x @ w^T + bias and pre is empty.
void matmul_bias_act(Ops& ops, Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias,
                     std::optional<Activation> act);

}  // namespace mpt::backend::cpu
