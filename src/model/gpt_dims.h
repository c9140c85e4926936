// The model's sizes and switches, resolved once from a finalized recipe.
#pragma once

#include <cstdint>

#include "backend/ops.h"
#include "config/recipe.h"

namespace mpt::model {

struct GPTDims {
  int64_t num_layers = 0;
  int64_t hidden = 0;
  int64_t ffn = 0;
  int64_t heads = 0;
  int64_t groups = 0;
  int64_t head_dim = 0;
  int64_t seq = 0;
  int64_t micro_batch = 0;
  int64_t vocab = 0;         // real vocabulary; ids >= vocab are padding
  int64_t padded_vocab = 0;
  bool layernorm = true;     // false: RMSNorm
  bool gated = false;
  bool bias = true;          // add_bias_linear
  bool qkv_bias = false;     // bias on linear_qkv (add_bias_linear or add_qkv_bias)
  bool rope = false;
  bool learned_positions = true;
  bool tied_output = true;
  backend::Activation activation = backend::Activation::kGelu;
  float norm_eps = 1e-5f;
  float rotary_base = 10000.0f;
  int64_t rotary_dim = 0;
  float softmax_scale = 0;
  float hidden_dropout = 0;
  float attention_dropout = 0;
  float init_std = 0.02f;
  float embedding_init_std = 0.02f;
  // Tensor parallelism: heads, query groups, ffn and the padded vocabulary are split over
  // tp ranks (the sizes above are whole-model sizes); under sequence_parallel the residual
  // stream between the parallel regions is split along the sequence too.
  int64_t tp = 1;
  int64_t tp_rank = 0;
  bool sequence_parallel = false;
  // Context parallelism: each sequence of `seq` positions is split over cp ranks; this rank
  // holds local_seq() of them (see parallel/context_parallel.h for which).
  int64_t cp = 1;
  int64_t cp_rank = 0;

  // Mixture of experts (num_experts 0: every MLP is dense). Layer i is an MoE layer when
  // i % moe_layer_freq == 0; its MLP is a router over num_experts experts of moe_ffn hidden
  // units, moe_topk per token, plus an optional always-on shared expert of shared_ffn units.
  int64_t num_experts = 0;
  int64_t moe_topk = 2;
  int64_t moe_ffn = 0;
  int64_t moe_layer_freq = 1;
  int64_t shared_ffn = 0;
  backend::RouterScore router_score = backend::RouterScore::kSoftmax;
  bool router_pre_softmax = false;
  float aux_loss_coeff = 0;      // load-balancing loss (Switch): E * coeff * sum_e f_e * P_e
  float z_loss_coeff = 0;        // router z-loss: coeff * mean_t logsumexp(logits_t)^2
  float capacity_factor = 0;     // 0: dropless
  bool drop_by_position = false; // moe_token_drop_policy "position" (else "probs")
  bool pad_to_capacity = false;

  bool is_moe_layer(int64_t layer) const { return num_experts > 0 && layer % moe_layer_freq == 0; }
  int64_t moe_fc1_width() const { return gated ? 2 * moe_ffn : moe_ffn; }
  int64_t shared_fc1_width() const { return gated ? 2 * shared_ffn : shared_ffn; }
  // Expert capacity (tokens per expert) for `tokens` tokens: ceil(tokens * k / E * factor).
  int64_t expert_capacity(int64_t tokens) const;
  // Rows an MoE layer's permuted activations may need for `tokens` tokens.
  int64_t max_expert_rows(int64_t tokens) const;

  int64_t local_seq() const { return seq / cp; }
  // Tokens of a micro-batch on this rank.
  int64_t tokens() const { return local_seq() * micro_batch; }
  // Rows of the residual stream this rank holds: tokens() / tp under sequence parallelism.
  int64_t rows() const { return sequence_parallel ? tokens() / tp : tokens(); }
  // This rank's share of each split size.
  int64_t local_heads() const { return heads / tp; }
  int64_t local_groups() const { return groups / tp; }
  int64_t local_ffn() const { return ffn / tp; }
  int64_t local_vocab() const { return padded_vocab / tp; }
  int64_t vocab_start() const { return tp_rank * local_vocab(); }
  int64_t qkv_width() const { return (local_heads() + 2 * local_groups()) * head_dim; }
  int64_t attn_width() const { return local_heads() * head_dim; }
  int64_t kv_width() const { return local_groups() * head_dim; }
  int64_t fc1_width() const { return gated ? 2 * local_ffn() : local_ffn(); }
};

GPTDims make_dims(const config::Recipe& recipe);

}  // namespace mpt::model
