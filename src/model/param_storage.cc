#include "model/param_storage.h"

#include <cstring>

#include "core/error.h"

namespace mpt::model {

FullStorage::FullStorage(int64_t total_numel, backend::Ops& ops) : total_(total_numel), ops_(ops), arena_(&ops) {
  const size_t bytes = static_cast<size_t>(total_numel) * sizeof(float);
  const size_t p = arena_.reserve(bytes), g = arena_.reserve(bytes);
  arena_.allocate();
  params_ = arena_.at<float>(p);
  grads_ = arena_.at<float>(g);
}

float* FullStorage::unit_params(int u) {
  MPT_ASSERT(units_ != nullptr && u >= 0 && u < static_cast<int>(units_->size()));
  return params_ + (*units_)[static_cast<size_t>(u)].begin;
}

float* FullStorage::unit_grads(int u) {
  MPT_ASSERT(units_ != nullptr && u >= 0 && u < static_cast<int>(units_->size()));
  return grads_ + (*units_)[static_cast<size_t>(u)].begin;
}

void FullStorage::zero_grads() { ops_.fill(Tensor::f32(grads_, {total_}), 0.0f); }

}  // namespace mpt::model
