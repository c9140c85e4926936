// The parameters as the model computes with them. In fp32 these are the master values the
// storage holds. Under bf16 mixed precision (as Megatron's Float16Module runs) each unit is
// used through a bf16 copy, cast from the fp32 master values the first time the unit is used
// after they changed; gradients and the optimizer stay fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/param_storage.h"

namespace mpt::model {

class ComputeParams {
 public:
  // resident: the storage keeps every unit's parameters in place (one copy per unit is kept
  // here); otherwise (a sharding storage gathers units on demand) two unit-sized copies are
  // reused, enough for the two units the model holds at once (the head and a tied embedding).
  ComputeParams(backend::Ops& ops, DType dtype, const std::vector<ParamUnit>& units, bool resident);
  ComputeParams(const ComputeParams&) = delete;
  ComputeParams& operator=(const ComputeParams&) = delete;

  // Whether each unit keeps its own copy (resident parameters): the copies an optimizer that
  // updates every element may write with its update.
  bool resident() const { return resident_; }

  DType dtype() const { return dtype_; }
  const std::vector<ParamUnit>& units() const { return units_; }
  // Unit u's copy where every unit keeps its own (bf16 with resident parameters), else null:
  // memory an optimizer may write with its update (backend::AdamWTensor::compute_copy).
  void* resident_copy(int u);
  // Every resident copy was just written from the master values (by the optimizer's update,
  // which changed them): the next invalidate() leaves the copies as they are, once, so the
  // step after it casts nothing.
  void copies_written();
  // Drops copies_written(): the master values were replaced since (a checkpoint load).
  void forget_written() { written_ = false; }
  // Unit u's parameters in dtype(), from `master`, the storage's area for the unit (returned
  // as is in fp32). Valid until the unit's area is released or another unit takes its copy.
  void* unit(int u, float* master);
  // The master values changed (an optimizer step, a load): every unit is cast again at its
  // next use (but see copies_written).
  void invalidate();
  // Bytes of the copies.
  int64_t bytes() const { return static_cast<int64_t>(arena_.size()); }

 private:
  struct Slot {
    int unit = -1;      // whose copy it holds
    bool fresh = false; // cast since the last invalidate()
    uint64_t used = 0;  // last use, for reuse of the oldest
    size_t offset = 0;
  };
  backend::Ops& ops_;
  DType dtype_;
  const std::vector<ParamUnit>& units_;
  bool resident_;
  Arena arena_;
  std::vector<Slot> slots_;
  uint64_t clock_ = 0;
  bool written_ = false;  // copies_written() since the last invalidate()
};

}  // namespace mpt::model
