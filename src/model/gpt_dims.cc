#include "model/gpt_dims.h"

#include <cmath>

namespace mpt::model {

namespace {
backend::Activation parse_activation(const std::string& name) {
  if (name == "gelu") return backend::Activation::kGelu;
  if (name == "gelu_tanh") return backend::Activation::kGeluTanh;
  if (name == "silu") return backend::Activation::kSilu;
  if (name == "relu") return backend::Activation::kRelu;
  if (name == "squared_relu") return backend::Activation::kSquaredRelu;
  fail(Status::kInvalidConfig, "model.activation_func: unknown activation '", name, "'");
}
}  // namespace

GPTDims make_dims(const config::Recipe& r) {
  MPT_CHECK(r.finalized, Status::kInternal, "make_dims needs a finalized recipe");
  const auto& m = r.model;
  const auto& d = r.derived;
  GPTDims g;
  g.num_layers = m.num_layers;
  g.hidden = m.hidden_size;
  g.ffn = d.ffn_hidden_size;
  g.heads = m.num_attention_heads;
  g.groups = d.num_query_groups;
  g.head_dim = d.kv_channels;
  g.seq = m.seq_length;
  g.micro_batch = *r.train.micro_batch_size;
  g.vocab = m.vocab_size;
  g.padded_vocab = d.padded_vocab_size;
  g.layernorm = m.normalization == "LayerNorm";
  g.gated = m.gated_linear_unit;
  g.bias = m.add_bias_linear;
  g.qkv_bias = m.add_bias_linear || m.add_qkv_bias;
  g.rope = m.position_embedding_type == "rope";
  g.learned_positions = m.position_embedding_type == "learned_absolute";
  g.tied_output = m.share_embeddings_and_output_weights;
  g.activation = parse_activation(m.activation_func);
  g.norm_eps = static_cast<float>(m.layernorm_epsilon);
  g.rotary_base = static_cast<float>(m.rotary_base);
  g.rotary_dim = static_cast<int64_t>(std::llround(static_cast<double>(g.head_dim) * m.rotary_percent));
  g.softmax_scale = m.softmax_scale ? static_cast<float>(*m.softmax_scale)
                                    : static_cast<float>(1.0 / std::sqrt(static_cast<double>(g.head_dim)));
  g.hidden_dropout = static_cast<float>(m.hidden_dropout);
  g.attention_dropout = static_cast<float>(m.attention_dropout);
  g.init_std = static_cast<float>(m.init_method_std);
  g.embedding_init_std = static_cast<float>(m.embedding_init_method_std.value_or(m.init_method_std));
  g.tp = m.tensor_model_parallel_size;
  g.sequence_parallel = m.sequence_parallel && g.tp > 1;
  g.cp = m.context_parallel_size;
  return g;
}

}  // namespace mpt::model
