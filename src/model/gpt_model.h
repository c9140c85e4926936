// The GPT model for one rank: embedding, decoder layers, final norm, output layer and the
// vocab-parallel cross-entropy pieces. Parameters, gradients and every activation are
// planned at construction and allocated once; a training step allocates nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/gpt_dims.h"
#include "model/param_registry.h"
#include "model/param_storage.h"
#include "model/transformer_layer.h"
#include "parallel/tensor_parallel.h"

namespace mpt::model {

// Host-side inputs of one micro-batch in token-major order (token t = s * micro_batch + b).
struct MicroBatchInput {
  int32_t* ids = nullptr;       // [T]
  int32_t* labels = nullptr;    // [T]
  float* loss_mask = nullptr;   // [T]
};

// Builds the storage for a model's registry and units (see param_storage.h).
using StorageFactory =
    std::function<std::unique_ptr<ParamStorage>(const ParamRegistry&, const std::vector<ParamUnit>&)>;

class GPTModel {
 public:
  // unit_align: every unit's flat range starts and ends at a multiple of it (a data-parallel
  // storage asks for a multiple of its group size so units shard evenly). Without a factory
  // the model keeps every parameter and gradient resident (FullStorage). tp: this rank's
  // tensor-parallel group (its size must be dims.tp); the model holds this rank's slices.
  GPTModel(const GPTDims& dims, backend::Ops& ops, const StorageFactory& storage = nullptr,
           int64_t unit_align = ParamRegistry::kAlign, const parallel::TensorParallel& tp = {});

  const GPTDims& dims() const { return dims_; }
  const ParamRegistry& registry() const { return reg_; }
  const std::vector<ParamUnit>& units() const { return units_; }
  ParamStorage& storage() { return *storage_; }
  // The whole flat buffers; null when the storage shards them.
  float* params() { return storage_->full_params(); }
  const float* params() const { return storage_->full_params(); }
  float* grads() { return storage_->full_grads(); }
  int64_t flat_numel() const { return reg_.total_numel(); }

  // Needs resident parameters (a sharding storage initialises its own shards).
  void init_parameters(uint64_t seed);
  void zero_grads();

  // Buffers the caller fills before forward().
  MicroBatchInput input() { return {ids_.i(), labels_.i(), loss_mask_.f()}; }

  // Runs forward and keeps activations. Returns (sum over tokens of loss * mask, sum of mask).
  struct LossSums {
    double weighted_loss = 0;
    double mask_sum = 0;
  };
  // training = false runs without dropout (evaluation).
  LossSums forward(uint64_t dropout_key, bool training = true);
  // Backward of loss_scale * sum(loss * mask); accumulates into grads().
  void backward(float loss_scale, uint64_t dropout_key);

  int64_t params_bytes() const { return storage_->params_bytes(); }
  int64_t grads_bytes() const { return storage_->grads_bytes(); }
  int64_t activations_bytes() const { return static_cast<int64_t>(acts_.size()); }

 private:
  void plan_activations();
  int head_unit() const { return static_cast<int>(units_.size()) - 1; }
  // Views of parameter i inside unit u's current area.
  Tensor P(int u, float* area, int i) const { return reg_.view(area, units_[static_cast<size_t>(u)].begin, i); }
  int output_weight() const { return dims_.tied_output ? word_emb_ : output_w_; }

  GPTDims dims_;
  GPTDims eval_dims_;  // dims_ with dropout off
  backend::Ops& ops_;
  parallel::TensorParallel tp_;
  ParamRegistry reg_;
  int word_emb_ = -1, pos_emb_ = -1, final_w_ = -1, final_b_ = -1, output_w_ = -1;
  std::vector<LayerParams> layer_params_;

  std::vector<ParamUnit> units_;  // embedding, decoder layers, head
  std::unique_ptr<ParamStorage> storage_;

  Arena acts_;
  Tensor ids_, labels_, loss_mask_, positions_, grad_scale_;  // [T]
  Tensor local_positions_;        // the rows of positions_ this rank holds (sequence parallelism)
  std::vector<Tensor> residual_;  // [L+1] x [R,H]: input of each layer and the last output
  std::vector<LayerActs> layer_acts_;
  LayerScratch scratch_;
  Tensor final_out_, final_mean_, final_rstd_;  // [R,H], [R], [R]
  Tensor logits_;                 // [T, Vp / TP]; becomes dlogits in backward
  Tensor row_max_, token_loss_;   // [T]
  Tensor sumexp_target_;          // [2,T]: sum of exponentials, then the target logit (one all-reduce)
  Tensor sumexp_, target_logit_;  // its rows
  Tensor dres_;                   // [R,H]
};

}  // namespace mpt::model
