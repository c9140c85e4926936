// Linear-layer pieces: GEMM on row-major 2-D views, bias add and bias gradient.
#pragma once

#include "core/tensor.h"

namespace mpt::backend::cpu {

// c[M,N] = alpha * op(a) @ op(b) + beta * c. A tensor of more than two axes is read as
// [numel / last_dim, last_dim].
void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta);
void add_bias(Tensor y, Tensor bias);    // y[T,N] += bias[N]
void bias_grad(Tensor dbias, Tensor dy);  // dbias[N] += sum_t dy[t,:]

}  // namespace mpt::backend::cpu
