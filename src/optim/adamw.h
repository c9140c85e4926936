// Megatron's "adam" optimizer for one rank: decoupled weight decay (none on biases and norm
// weights), global-norm gradient clipping, fp32 moments. It updates the elements it owns:
// by default every element of the registry's flat layout; under the distributed optimizer
// only this rank's shards (flat ranges), with moments stored compactly for those alone.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/param_registry.h"

namespace mpt::optim {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double clip_grad = 1.0;  // 0 disables clipping
};

// A range [begin, end) of the flat parameter layout.
struct FlatRange {
  int64_t begin = 0, end = 0;
  int64_t numel() const { return end - begin; }
};

class AdamW {
 public:
  // owned empty: the whole layout [0, total_numel).
  AdamW(const model::ParamRegistry& registry, backend::Ops& ops, AdamWConfig config,
        std::vector<FlatRange> owned = {});

  const std::vector<FlatRange>& owned() const { return owned_; }
  int64_t owned_numel() const { return owned_numel_; }

  // Sum of squares of the owned gradient elements this rank counts in the norm (replicated
  // tensor-parallel parameters only on TP rank 0: ParamInfo::counted_in_norm). grads[k]
  // holds owned range k (its element `begin` at grads[k][0]).
  double grad_sum_squares(const std::vector<float*>& grads) const;
  // Clips by `norm` (the global norm) and applies one update at (lr, weight_decay).
  void step(const std::vector<float*>& params, const std::vector<float*>& grads, double norm, double lr,
            double weight_decay);

  // Whole-layout forms (only when this optimizer owns everything).
  double grad_sum_squares(float* grads) const;
  double grad_norm(float* grads) const;
  void step(float* params, float* grads, double norm, double lr, double weight_decay);

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  // Moments, compact over the owned ranges in order (the full layout when owning everything).
  float* exp_avg() { return exp_avg_; }
  float* exp_avg_sq() { return exp_avg_sq_; }
  int64_t state_bytes() const { return static_cast<int64_t>(state_.size()); }

 private:
  // Calls fn(param index, first element, count, offset in the compact state) for each piece
  // of a parameter inside owned range k.
  template <typename Fn>
  void for_each_piece(size_t k, Fn&& fn) const;

  const model::ParamRegistry& reg_;
  backend::Ops& ops_;
  AdamWConfig cfg_;
  std::vector<FlatRange> owned_;
  std::vector<int64_t> state_offset_;  // compact offset of each owned range
  int64_t owned_numel_ = 0;
  Arena state_;
  float* exp_avg_ = nullptr;
  float* exp_avg_sq_ = nullptr;
  int64_t step_ = 0;
  mutable std::vector<float*> whole_params_{nullptr}, whole_grads_{nullptr};  // the whole-layout forms, without allocating
};

}  // namespace mpt::optim
