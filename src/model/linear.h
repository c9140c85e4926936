// A linear layer y = x W^T + b with W [out, in], and its backward. Shared by every module.
#pragma once

#include "backend/ops.h"

namespace mpt::model {

inline void linear_forward(backend::Ops& ops, Tensor y, Tensor x, Tensor w, Tensor b) {
  ops.matmul(y, x, w, false, true, 1.0f, 0.0f);
  if (b.data) ops.add_bias(y, b);
}

// dw (+db) accumulate; dx is overwritten (skipped when dx.data is null).
inline void linear_backward(backend::Ops& ops, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
  if (db.data) ops.bias_grad(db, dy);
  ops.matmul(dw, dy, x, true, false, 1.0f, 1.0f);
  if (dx.data) ops.matmul(dx, dy, w, false, false, 1.0f, 0.0f);
}

}  // namespace mpt::model
