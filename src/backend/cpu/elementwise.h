// Memory and elementwise ops, and the double-precision reductions behind the gradient
// norm and loss sums.
#pragma once

#include "core/tensor.h"

namespace mpt::backend::cpu {

void fill(Tensor x, float value);
void copy(Tensor dst, Tensor src);             // same dtype and numel
void add(Tensor out, Tensor a, Tensor b);      // out may alias a or b
void add_inplace(Tensor y, Tensor x);          // y += x
void scale(Tensor x, float s);                 // x *= s
// Sums over fixed 64K-element chunks, each in double, combined in index order: the
// result does not depend on the number of threads. These three read F32 or BF16 (widened).
double sum_squares(Tensor x);
double dot(Tensor a, Tensor b);
bool all_finite(Tensor x);

}  // namespace mpt::backend::cpu
