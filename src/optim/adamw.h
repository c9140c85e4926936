// Megatron's "adam" optimizer for one rank: decoupled weight decay (none on biases and norm
// weights), global-norm gradient clipping, fp32 moments. It updates the elements it owns:
// by default every element of the registry's flat layout; under the distributed optimizer
// only this rank's shards (flat ranges), with moments stored compactly for those alone.
// A step is one adamw_multi over every piece (a parameter's part inside an owned range);
// the gradient norm's pieces are summed in backend memory and read once.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/compute_params.h"
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
  // holds owned range k (its element `begin` at grads[k][0]). Summed on the backend, one
  // host read.
  double grad_sum_squares(const std::vector<float*>& grads) const;
  // The same left in backend memory (f64 [1], valid until the next call): no host read.
  Tensor grad_sum_squares_on_device(const std::vector<float*>& grads) const;
  // Clips by `norm` (the global norm) and applies one update at (lr, weight_decay).
  void step(const std::vector<float*>& params, const std::vector<float*>& grads, double norm, double lr,
            double weight_decay);
  // The same, clipping by the norm sqrt(sumsq) with sumsq (f64 [1]) in backend memory (the
  // global sum, e.g. grad_sum_squares_on_device's on a rank that holds everything): the clip
  // factor is formed on the backend and the update reads it there, so no host value of the
  // norm is needed. The same bits as step() given that norm.
  void step(const std::vector<float*>& params, const std::vector<float*>& grads, Tensor sumsq, double lr,
            double weight_decay);

  // Has every step write the bf16 compute copies of `copies` (a model's, bf16 mixed
  // precision) with its update, and tell them so (ComputeParams::copies_written), where it
  // can: when this optimizer updates every element of the layout the copies are cut from
  // and they are resident. Returns whether it will. A sharded update leaves them to be cast
  // from the gathered parameters.
  bool write_compute_copies(model::ComputeParams& copies);
  // The master parameters were replaced outside a step (a checkpoint load): the copies the
  // last step wrote are stale.
  void params_replaced();

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
  // A parameter's part inside owned range `range`: elements [at, at + count) of the range,
  // moments at `state` in the compact layout.
  struct Piece {
    size_t range = 0;
    int64_t at = 0, count = 0, state = 0;
    bool weight_decay = true, counted_in_norm = true;
    void* copy = nullptr;  // its bf16 compute copy, or null
  };
  backend::AdamWArgs args(double lr) const;
  // The update's piece table for these areas (kept while they stay the same), at weight_decay.
  const std::vector<backend::AdamWTensor>& table(const std::vector<float*>& params, const std::vector<float*>& grads,
                                                 double weight_decay);
  void update(const std::vector<float*>& params, const std::vector<float*>& grads, const backend::AdamWArgs& a,
              double weight_decay);

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
  std::vector<Piece> pieces_;            // in layout order
  std::vector<backend::AdamWTensor> table_;
  std::vector<float*> table_params_, table_grads_;  // the areas table_ points into
  model::ComputeParams* copies_ = nullptr;          // written with each update, or null
  Arena scalars_;                        // the norm's sum (f64) and the clip factor (f32), in backend memory
  Tensor sumsq_, clip_factor_;
  mutable std::vector<float*> whole_params_{nullptr}, whole_grads_{nullptr};  // the whole-layout forms, without allocating
};

}  // namespace mpt::optim
