#include "parallel/tensor_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace mpt::parallel {

TensorParallel::TensorParallel(dist::Communicator* comm, bool sequence_parallel)
    : comm_(comm != nullptr && comm->size() > 1 ? comm : nullptr), sp_(sequence_parallel && comm_ != nullptr) {}

Tensor TensorParallel::enter(Tensor x, Tensor full) const {
  if (!sp_) return x;
  enter_async(x, full).wait();
  return full;
}

Pending TensorParallel::enter_async(Tensor x, Tensor full) const {
  if (!sp_) return Pending();
  MPT_ASSERT(full.numel() == x.numel() * size() && full.dtype == x.dtype);
  return Pending(comm_->all_gather_async(x.data, full.data, x.numel(), x.dtype));
}

Pending TensorParallel::enter_backward_async(Tensor dfull, Tensor dx) const {
  if (!comm_) {
    MPT_ASSERT(dfull.data == dx.data);
    return Pending();
  }
  if (!sp_) {
    MPT_ASSERT(dfull.data == dx.data);
    return Pending(comm_->all_reduce_async(dfull.data, dfull.numel(), dfull.dtype, dist::ReduceOp::kSum));
  }
  MPT_ASSERT(dfull.numel() == dx.numel() * size() && dfull.dtype == dx.dtype);
  return Pending(comm_->reduce_scatter_async(dfull.data, dx.data, dx.numel(), dx.dtype, dist::ReduceOp::kSum));
}

void TensorParallel::leave(Tensor partial, Tensor out) const {
  if (!comm_) {
    MPT_ASSERT(partial.data == out.data);
    return;
  }
  if (!sp_) {
    MPT_ASSERT(partial.data == out.data);
    comm_->all_reduce(partial.data, partial.numel(), partial.dtype, dist::ReduceOp::kSum);
    return;
  }
  MPT_ASSERT(partial.numel() == out.numel() * size() && partial.dtype == out.dtype);
  comm_->reduce_scatter(partial.data, out.data, out.numel(), out.dtype, dist::ReduceOp::kSum);
}

Tensor TensorParallel::leave_backward(Tensor dout, Tensor full) const {
  if (!sp_) return dout;
  MPT_ASSERT(full.numel() == dout.numel() * size() && full.dtype == dout.dtype);
  comm_->all_gather(dout.data, full.data, dout.numel(), dout.dtype);
  return full;
}

void TensorParallel::all_reduce(Tensor x, dist::ReduceOp op) const {
  if (comm_) comm_->all_reduce(x.data, x.numel(), x.dtype, op);
}

SequenceParallelGrads::SequenceParallelGrads(const model::ParamRegistry& registry,
                                             const std::vector<std::pair<int64_t, int64_t>>& owned) {
  for (size_t k = 0; k < owned.size(); ++k)
    for (const model::ParamInfo& p : registry.params()) {
      if (!p.sequence_parallel) continue;
      const int64_t lo = std::max(owned[k].first, p.offset), hi = std::min(owned[k].second, p.offset + p.numel);
      if (lo >= hi) continue;
      pieces_.push_back(Piece{k, lo - owned[k].first, hi - lo});
      numel_ += hi - lo;
    }
  staging_.resize(static_cast<size_t>(numel_));
}

void SequenceParallelGrads::all_reduce(dist::Communicator& tp, const std::vector<float*>& grads, backend::Ops& ops) {
  if (numel_ == 0 || tp.size() == 1) return;
  float* s = staging_.data();
  for (const Piece& p : pieces_) {
    ops.to_host(s, grads[p.range] + p.at, static_cast<size_t>(p.count) * sizeof(float));
    s += p.count;
  }
  tp.all_reduce(staging_.data(), numel_, DType::kF32, dist::ReduceOp::kSum);
  s = staging_.data();
  for (const Piece& p : pieces_) {
    ops.to_device(grads[p.range] + p.at, s, static_cast<size_t>(p.count) * sizeof(float));
    s += p.count;
  }
}

std::vector<float> gather_whole_param(const model::ParamRegistry& local, int index, const float* buf,
                                      dist::Communicator* tp) {
  const model::ParamInfo& p = local.at(index);
  int64_t whole_numel = 1;
  for (int64_t d : p.global_shape) whole_numel *= d;
  std::vector<float> whole(static_cast<size_t>(whole_numel));
  const float* src = buf + p.offset;
  if (!p.tp.split()) {
    std::copy(src, src + p.numel, whole.begin());
    return whole;
  }
  MPT_CHECK(tp != nullptr && tp->size() == p.tp.size, Status::kInternal, "parameter ", p.name, " is split over ",
            p.tp.size, " tensor-parallel ranks but the group given has ", tp ? tp->size() : 1);
  std::vector<float> parts(static_cast<size_t>(p.numel * p.tp.size));
  tp->all_gather(src, parts.data(), p.numel, DType::kF32);
  for (int64_t r = 0; r < p.tp.size; ++r) {
    const float* part = parts.data() + r * p.numel;
    model::for_each_split_run(p.shape, p.global_shape, p.tp, r, [&](int64_t l, int64_t g, int64_t n) {
      std::copy(part + l, part + l + n, whole.begin() + g);
    });
  }
  return whole;
}

void take_slices(const model::ParamRegistry& local, float* buf, const model::ParamRegistry& whole,
                 const float* whole_buf) {
  for (int i = 0; i < static_cast<int>(local.params().size()); ++i) {
    const model::ParamInfo& p = local.at(i);
    const int w = whole.find(p.name);
    MPT_CHECK(w >= 0, Status::kInternal, "the whole model has no parameter named '", p.name, "'");
    const float* src = whole_buf + whole.at(w).offset;
    float* dst = buf + p.offset;
    model::for_each_split_run(p.shape, p.global_shape, p.tp, p.tp.rank,
                              [&](int64_t l, int64_t g, int64_t n) { std::copy(src + g, src + g + n, dst + l); });
  }
}

}  // namespace mpt::parallel
