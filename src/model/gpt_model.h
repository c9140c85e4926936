// The GPT model for one rank: embedding, decoder layers, final norm, output layer and the
// vocab-parallel cross-entropy pieces. Parameters, gradients and every activation are
// planned at construction and allocated once; a training step allocates nothing.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "core/arena.h"
#include "model/gpt_dims.h"
#include "model/param_registry.h"
#include "model/transformer_layer.h"

namespace mpt::model {

// Host-side inputs of one micro-batch in token-major order (token t = s * micro_batch + b).
struct MicroBatchInput {
  int32_t* ids = nullptr;       // [T]
  int32_t* labels = nullptr;    // [T]
  float* loss_mask = nullptr;   // [T]
};

class GPTModel {
 public:
  GPTModel(const GPTDims& dims, backend::Ops& ops);

  const GPTDims& dims() const { return dims_; }
  const ParamRegistry& registry() const { return reg_; }
  float* params() { return params_; }
  const float* params() const { return params_; }
  float* grads() { return grads_; }
  int64_t flat_numel() const { return reg_.total_numel(); }

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

  int64_t params_bytes() const { return reg_.total_numel() * 4; }
  int64_t activations_bytes() const { return static_cast<int64_t>(acts_.size()); }

 private:
  void plan_activations();
  Tensor P(int i) const { return reg_.view(params_, i); }
  Tensor G(int i) const { return reg_.view(grads_, i); }
  int output_weight() const { return dims_.tied_output ? word_emb_ : output_w_; }

  GPTDims dims_;
  GPTDims eval_dims_;  // dims_ with dropout off
  backend::Ops& ops_;
  ParamRegistry reg_;
  int word_emb_ = -1, pos_emb_ = -1, final_w_ = -1, final_b_ = -1, output_w_ = -1;
  std::vector<LayerParams> layer_params_;

  Arena weights_;  // params then grads, same layout
  float* params_ = nullptr;
  float* grads_ = nullptr;

  Arena acts_;
  Tensor ids_, labels_, loss_mask_, positions_, grad_scale_;
  std::vector<Tensor> residual_;  // [L+1] x [T,H]: input of each layer and the last output
  std::vector<LayerActs> layer_acts_;
  LayerScratch scratch_;
  Tensor final_out_, final_mean_, final_rstd_;
  Tensor logits_;                 // [T, Vp]; becomes dlogits in backward
  Tensor row_max_, sumexp_, target_logit_, token_loss_;
  Tensor dres_;                   // [T,H]
};

}  // namespace mpt::model
