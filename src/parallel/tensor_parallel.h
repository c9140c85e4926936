// Tensor and sequence parallelism: the communication around column- and row-parallel linear
// layers (Megatron-Core's tensor_parallel mappings), the gradients of parameters that
// sequence parallelism leaves partial, and moving parameters between this rank's slices and
// whole tensors.
//
// A transformer layer is two tensor-parallel regions (attention, MLP). Each is entered by a
// column-parallel linear (linear_qkv, linear_fc1: output features split) and left by a
// row-parallel one (linear_proj, linear_fc2: input features split, partial sums reduced).
// Activations are token-major [T, H] rows (token t = s * batch + b), so a split along the
// sequence is a contiguous block of rows.
//
//                      forward                         backward
//   enter, no SP       identity                        all-reduce d(input)
//   leave, no SP       all-reduce partial output       identity
//   enter, SP          all-gather rows                 reduce-scatter d(input)
//   leave, SP          reduce-scatter partial output   all-gather d(output)
//
// The backward of a column-parallel layer overlaps its input-gradient reduction with the
// weight-gradient GEMM: compute d(input), start its reduction, compute d(weight), wait. Under
// SP the layer keeps only its [T/TP, H] input and gathers it again in backward, started
// before the d(input) GEMM so that gather overlaps it too.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend/ops.h"
#include "core/tensor.h"
#include "dist/communicator.h"
#include "model/param_registry.h"

namespace mpt::parallel {

// A collective in flight, or nothing (a mapping that is the identity at this layout).
class Pending {
 public:
  Pending() = default;
  explicit Pending(std::shared_ptr<dist::Work> work) : work_(std::move(work)) {}
  void wait() {
    if (work_) work_->wait();
    work_.reset();
  }

 private:
  std::shared_ptr<dist::Work> work_;
};

class TensorParallel {
 public:
  TensorParallel() = default;  // one rank: every mapping is the identity
  // comm: the tensor-parallel group (null or size 1: one rank).
  TensorParallel(dist::Communicator* comm, bool sequence_parallel);

  int64_t size() const { return comm_ ? comm_->size() : 1; }
  int64_t rank() const { return comm_ ? comm_->rank() : 0; }
  bool sequence_parallel() const { return sp_; }
  dist::Communicator* comm() const { return comm_; }
  // Rows of a [rows, H] activation this rank holds outside the parallel regions, and the
  // first of them: rows / TP at rank * rows / TP under SP, else all of them.
  int64_t local_rows(int64_t rows) const { return sp_ ? rows / size() : rows; }
  int64_t row_offset(int64_t rows) const { return sp_ ? rank() * (rows / size()) : 0; }

  // Forward into a column-parallel layer: x [local_rows, H] -> the whole [rows, H]. Under SP
  // the rows are all-gathered into `full` and `full` is returned; otherwise x itself.
  Tensor enter(Tensor x, Tensor full) const;
  // The same gather started asynchronously (a backward re-gather); a no-op without SP.
  Pending enter_async(Tensor x, Tensor full) const;
  // Backward of enter(): dfull [rows, H] holds this rank's partial d(input); reduces it into
  // dx [local_rows, H]: all-reduce in place (dx must be dfull) or reduce-scatter under SP.
  Pending enter_backward_async(Tensor dfull, Tensor dx) const;

  // Forward out of a row-parallel layer: partial [rows, H] sums -> out [local_rows, H]:
  // all-reduce in place (out must be partial) or reduce-scatter under SP.
  void leave(Tensor partial, Tensor out) const;
  // Backward of leave(): dout [local_rows, H] -> d(partial) [rows, H]: dout itself without
  // SP; all-gathered into `full` (and `full` returned) under SP.
  Tensor leave_backward(Tensor dout, Tensor full) const;

  // An all-reduce over the group (cross-entropy pieces); nothing at one rank.
  void all_reduce(Tensor x, dist::ReduceOp op) const;

 private:
  dist::Communicator* comm_ = nullptr;
  bool sp_ = false;
};

// Sums the gradients of sequence-parallel parameters (ParamInfo::sequence_parallel) over
// the tensor-parallel group, for the elements of `owned` ranges (the flat ranges this rank
// updates; grads[k] holds range k). Every rank of the group owns the same ranges, so one
// all-reduce of the packed elements does it.
class SequenceParallelGrads {
 public:
  SequenceParallelGrads(const model::ParamRegistry& registry, const std::vector<std::pair<int64_t, int64_t>>& owned);
  int64_t numel() const { return numel_; }
  // grads live in `ops`' memory; the pieces travel through a host staging buffer.
  void all_reduce(dist::Communicator& tp, const std::vector<float*>& grads, backend::Ops& ops);

 private:
  struct Piece {
    size_t range;
    int64_t at, count;  // element offset inside the range, element count
  };
  std::vector<Piece> pieces_;
  std::vector<float> staging_;
  int64_t numel_ = 0;
};

// Parameter `index` of `local` (laid out in `buf`) as the whole tensor, in row-major order
// of its global shape: all-gathered over `tp` when split (a collective: every rank of the
// group calls it for the same parameter). tp may be null at one rank.
std::vector<float> gather_whole_param(const model::ParamRegistry& local, int index, const float* buf,
                                      dist::Communicator* tp);
// Without communication: this rank's slices of every parameter of `local`, taken by name from
// a buffer laid out by `whole` (a registry of whole tensors).
void take_slices(const model::ParamRegistry& local, float* buf, const model::ParamRegistry& whole,
                 const float* whole_buf);

}  // namespace mpt::parallel
