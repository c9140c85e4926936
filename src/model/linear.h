// Linear layers y = x W^T + b with W [out, in], and their backward: the plain form, and the
// column- and row-parallel forms of tensor parallelism (see parallel/tensor_parallel.h for
// the communication each one does). Shared by every module.
#pragma once

#include <optional>

#include "backend/ops.h"
#include "parallel/tensor_parallel.h"

namespace mpt::model {

// A bias is added in the GEMM's epilogue (Ops::matmul_bias_act).
inline void linear_forward(backend::Ops& ops, Tensor y, Tensor x, Tensor w, Tensor b) {
  if (b.data)
    ops.matmul_bias_act(y, Tensor(), x, w, b, std::nullopt);
  else
    ops.matmul(y, x, w, false, true, 1.0f, 0.0f);
}

// dw (+db) accumulate; dx is overwritten (skipped when dx.data is null).
inline void linear_backward(backend::Ops& ops, Tensor dx, Tensor dw, Tensor db, Tensor dy, Tensor x, Tensor w) {
  if (db.data) ops.bias_grad(db, dy);
  ops.matmul(dw, dy, x, true, false, 1.0f, 1.0f);
  if (dx.data) ops.matmul(dx, dy, w, false, false, 1.0f, 0.0f);
}

// Column-parallel: y [T, out_local] = enter(x) W_local^T + b_local, x [R, in] this rank's rows.
// `full` [T, in] receives the gathered input under sequence parallelism.
inline void column_parallel_forward(backend::Ops& ops, const parallel::TensorParallel& tp, Tensor y, Tensor x,
                                    Tensor w, Tensor b, Tensor full) {
  linear_forward(ops, y, tp.enter(x, full), w, b);
}

// The same with a plain (non-gated) activation fused into the GEMM's epilogue: pre [T,
// out_local] = enter(x) W_local^T + b_local, kept for backward, and y = act(pre).
inline void column_parallel_act_forward(backend::Ops& ops, const parallel::TensorParallel& tp, Tensor y, Tensor pre,
                                        Tensor x, Tensor w, Tensor b, backend::Activation act, Tensor full) {
  ops.matmul_bias_act(y, pre, tp.enter(x, full), w, b, act);
}

// Its backward: dw (+db) accumulate; dx [R, in] receives the reduced input gradient. The
// reduction runs while the weight-gradient GEMM does; under sequence parallelism the input
// is gathered again into `full`, overlapping the input-gradient GEMM, whose result goes to
// `partial` [T, in] before its reduce-scatter.
inline void column_parallel_backward(backend::Ops& ops, const parallel::TensorParallel& tp, Tensor dx, Tensor dw,
                                     Tensor db, Tensor dy, Tensor x, Tensor w, Tensor full, Tensor partial) {
  const bool sp = tp.sequence_parallel();
  parallel::Pending gather = tp.enter_async(x, full);
  const Tensor dfull = sp ? partial : dx;
  ops.matmul(dfull, dy, w, false, false, 1.0f, 0.0f);
  gather.wait();
  parallel::Pending reduce = tp.enter_backward_async(dfull, dx);
  if (db.data) ops.bias_grad(db, dy);
  ops.matmul(dw, dy, sp ? full : x, true, false, 1.0f, 1.0f);
  reduce.wait();
}

// Row-parallel: y [R, out] = leave(x W_local^T) + b, x [T, in_local]; the bias (replicated)
// is added after the reduction. `partial` [T, out] holds the sums before a reduce-scatter.
inline void row_parallel_forward(backend::Ops& ops, const parallel::TensorParallel& tp, Tensor y, Tensor x, Tensor w,
                                 Tensor b, Tensor partial) {
  const Tensor p = tp.sequence_parallel() ? partial : y;
  ops.matmul(p, x, w, false, true, 1.0f, 0.0f);
  tp.leave(p, y);
  if (b.data) ops.add_bias(y, b);
}

// Its backward: dy [R, out] -> dx [T, in_local]; dw (+db) accumulate. Under sequence
// parallelism dy is gathered into `full` first.
inline void row_parallel_backward(backend::Ops& ops, const parallel::TensorParallel& tp, Tensor dx, Tensor dw,
                                  Tensor db, Tensor dy, Tensor x, Tensor w, Tensor full) {
  if (db.data) ops.bias_grad(db, dy);
  const Tensor d = tp.leave_backward(dy, full);
  ops.matmul(dx, d, w, false, false, 1.0f, 0.0f);
  ops.matmul(dw, d, x, true, false, 1.0f, 1.0f);
}

}  // namespace mpt::model
