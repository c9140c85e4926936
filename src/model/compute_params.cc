#include "model/compute_params.h"

#include <algorithm>

#include "core/error.h"

namespace mpt::model {
ComputeParams::ComputeParams(backend::Ops& ops, DType dtype, const std::vector<ParamUnit>& units, bool resident)
    : ops_(ops), dtype_(dtype), units_(units), resident_(resident), arena_(&ops) {
  MPT_CHECK(dtype == DType::kF32 || dtype == DType::kBF16, Status::kInvalidArgument,
            "parameters compute in f32 or bf16, not ", dtype_name(dtype));
  if (dtype_ == DType::kF32 || units_.empty()) return;
  const size_t es = dtype_size(dtype_);
  if (resident_) {
    for (size_t u = 0; u < units_.size(); ++u) {
      Slot s;
      s.unit = static_cast<int>(u);
      s.offset = arena_.reserve(static_cast<size_t>(units_[u].numel()) * es);
      slots_.push_back(s);
    }
  } else {
    int64_t largest = 0;
    for (const ParamUnit& u : units_) largest = std::max(largest, u.numel());
    for (int k = 0; k < 2; ++k) {
      Slot s;
      s.offset = arena_.reserve(static_cast<size_t>(largest) * es);
      slots_.push_back(s);
    }
  }
  arena_.allocate();
}

void* ComputeParams::unit(int u, float* master) {
  if (dtype_ == DType::kF32) return master;
  MPT_ASSERT(u >= 0 && static_cast<size_t>(u) < units_.size() && master != nullptr);
  Slot* slot = nullptr;
  if (resident_) {
    slot = &slots_[static_cast<size_t>(u)];
  } else {
    for (Slot& s : slots_)
      if (s.unit == u) slot = &s;
    if (slot == nullptr) {  // the copy used longest ago
      slot = &*std::min_element(slots_.begin(), slots_.end(),
                                [](const Slot& a, const Slot& b) { return a.used < b.used; });
      slot->unit = u;
      slot->fresh = false;
    }
  }
  slot->used = ++clock_;
  void* copy = arena_.at<uint8_t>(slot->offset);
  if (!slot->fresh) {
    const int64_t n = units_[static_cast<size_t>(u)].numel();
    ops_.cast(Tensor(copy, dtype_, {n}), Tensor::f32(master, {n}));
    slot->fresh = true;
  }
  return copy;
}

void* ComputeParams::resident_copy(int u) {
  if (dtype_ == DType::kF32 || !resident_) return nullptr;
  MPT_ASSERT(u >= 0 && static_cast<size_t>(u) < slots_.size());
  return arena_.at<uint8_t>(slots_[static_cast<size_t>(u)].offset);
}

void ComputeParams::copies_written() {
  MPT_ASSERT(dtype_ != DType::kF32 && resident_);
  written_ = true;
}

void ComputeParams::invalidate() {
  for (Slot& s : slots_) s.fresh = written_;
  written_ = false;
}

}  // namespace mpt::model
