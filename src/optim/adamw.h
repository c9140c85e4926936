// Megatron's "adam" optimizer for one rank: decoupled weight decay (none on biases and norm
// weights), global-norm gradient clipping, fp32 moments kept in flat buffers laid out like
// the parameters.
#pragma once

#include <cstdint>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/param_registry.h"

namespace mpt::optim {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double clip_grad = 1.0;  // 0 disables clipping
};

class AdamW {
 public:
  AdamW(const model::ParamRegistry& registry, backend::Ops& ops, AdamWConfig config);

  // Global L2 norm of the gradient (each element counted once).
  double grad_norm(float* grads) const;
  // Clips by `norm` (from grad_norm) and applies one update at (lr, weight_decay).
  void step(float* params, float* grads, double norm, double lr, double weight_decay);

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t s) { step_ = s; }
  float* exp_avg() { return exp_avg_; }
  float* exp_avg_sq() { return exp_avg_sq_; }
  int64_t state_bytes() const { return static_cast<int64_t>(state_.size()); }

 private:
  const model::ParamRegistry& reg_;
  backend::Ops& ops_;
  AdamWConfig cfg_;
  Arena state_;
  float* exp_avg_ = nullptr;
  float* exp_avg_sq_ = nullptr;
  int64_t step_ = 0;
};

}  // namespace mpt::optim
