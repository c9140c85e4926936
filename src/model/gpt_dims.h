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

  int64_t tokens() const { return seq * micro_batch; }
  int64_t qkv_width() const { return (heads + 2 * groups) * head_dim; }
  int64_t attn_width() const { return heads * head_dim; }
  int64_t kv_width() const { return groups * head_dim; }
  int64_t fc1_width() const { return gated ? 2 * ffn : ffn; }
};

GPTDims make_dims(const config::Recipe& recipe);

}  // namespace mpt::model
