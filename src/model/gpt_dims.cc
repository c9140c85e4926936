#include "model/gpt_dims.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

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

Recompute parse_recompute(const config::ModelConfig& m) {
  Recompute rc;
  const std::string granularity = m.recompute_granularity.value_or("");
  if (granularity == "full") {
    MPT_CHECK(m.recompute_method && m.recompute_num_layers, Status::kInvalidConfig,
              "model.recompute_granularity: \"full\" needs model.recompute_method and model.recompute_num_layers");
    rc.full = *m.recompute_method == "block" ? Recompute::Full::kBlock : Recompute::Full::kUniform;
    rc.num_layers = *m.recompute_num_layers;
    MPT_CHECK(rc.num_layers >= 1, Status::kInvalidConfig, "model.recompute_num_layers: must be >= 1, got ",
              rc.num_layers);
    return rc;
  }
  if (granularity != "selective") return rc;
  rc.selective = true;
  const std::vector<std::string> fallback = {"core_attn"};  // Megatron's default list
  for (const std::string& name : m.recompute_modules.empty() ? fallback : m.recompute_modules) {
    if (name == "core_attn") rc.core_attn = true;
    else if (name == "layernorm") rc.layernorm = true;
    else if (name == "mlp") rc.mlp = true;
    else if (name == "moe") rc.moe = true;
    else if (name == "moe_act") rc.moe_act = true;
    else if (name == "shared_experts") rc.shared_experts = true;
    else if (name == "mla_up_proj")
      fail(Status::kInvalidConfig, "model.recompute_modules: \"mla_up_proj\" needs multi-latent attention, which is "
           "not supported yet");
    else
      fail(Status::kInvalidConfig, "model.recompute_modules: unknown module '", name, "'; valid: \"core_attn\", "
           "\"layernorm\", \"mlp\", \"moe\", \"moe_act\", \"shared_experts\"");
  }
  return rc;
}
}  // namespace

Recompute::Group Recompute::group(int64_t i, int64_t layers) const {
  if (full == Full::kUniform) {
    const int64_t begin = i / num_layers * num_layers;
    return {begin, std::min(begin + num_layers, layers)};
  }
  if (full == Full::kBlock && i < num_layers) return {i, i + 1};
  return {};
}

std::string Recompute::describe() const {
  if (full == Full::kUniform)
    return str("full (uniform, groups of ", num_layers, num_layers == 1 ? " layer)" : " layers)");
  if (full == Full::kBlock)
    return num_layers == 1 ? "full (block, the first layer of each chunk)"
                           : str("full (block, the first ", num_layers, " layers of each chunk)");
  if (!selective) return "none";
  std::string parts;
  const std::pair<bool, const char*> modules[] = {{core_attn, "core_attn"}, {layernorm, "layernorm"}, {mlp, "mlp"},
                                                  {moe, "moe"}, {moe_act, "moe_act"},
                                                  {shared_experts, "shared_experts"}};
  for (const auto& [on, name] : modules)
    if (on) parts += str(parts.empty() ? "" : ", ", name);
  return "selective (" + parts + ")";
}

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
  g.compute = config::uses_bf16(r) ? DType::kBF16 : DType::kF32;
  g.tp = m.tensor_model_parallel_size;
  g.sequence_parallel = m.sequence_parallel && g.tp > 1;
  g.cp = m.context_parallel_size;
  if (m.num_moe_experts && *m.num_moe_experts > 0) {
    g.num_experts = *m.num_moe_experts;
    g.moe_topk = m.moe_router_topk;
    g.moe_ffn = m.moe_ffn_hidden_size.value_or(g.ffn);
    g.moe_layer_freq = m.moe_layer_freq;
    g.shared_ffn = m.moe_shared_expert_intermediate_size.value_or(0);
    g.router_score = m.moe_router_score_function == "sigmoid" ? backend::RouterScore::kSigmoid
                                                               : backend::RouterScore::kSoftmax;
    g.router_pre_softmax = m.moe_router_pre_softmax;
    g.aux_loss_coeff = m.moe_router_load_balancing_type == "aux_loss" ? static_cast<float>(m.moe_aux_loss_coeff) : 0;
    g.z_loss_coeff = static_cast<float>(m.moe_z_loss_coeff.value_or(0));
    g.capacity_factor = static_cast<float>(m.moe_expert_capacity_factor.value_or(0));
    g.drop_by_position = m.moe_token_drop_policy == "position";
    g.pad_to_capacity = m.moe_pad_expert_input_to_capacity;
    g.ep = m.expert_model_parallel_size;
    g.etp = d.expert_tensor_parallel_size;
    g.alltoall = m.moe_token_dispatcher_type == "alltoall";
  }
  g.recompute = parse_recompute(m);
  return g;
}

int64_t GPTDims::expert_capacity(int64_t tokens) const {
  if (capacity_factor <= 0) return tokens * moe_topk;
  const double c = std::ceil(static_cast<double>(tokens * moe_topk) / static_cast<double>(num_experts) *
                             static_cast<double>(capacity_factor));
  return static_cast<int64_t>(c);
}

int64_t GPTDims::expert_rows(int64_t tokens, int64_t experts) const {
  const int64_t kept = tokens * std::min(moe_topk, experts);  // dropless: every choice kept
  if (capacity_factor <= 0) return kept;
  const int64_t capped = experts * expert_capacity(tokens);
  return pad_to_capacity ? capped : std::min(kept, capped);
}

int64_t GPTDims::loss_chunk() const {
  const int64_t T = tokens();
  if (loss_chunk_rows > 0) return std::min(loss_chunk_rows, T);
  const int64_t fit = kLogitsBlockBytes / (4 * std::max<int64_t>(local_vocab(), 1));
  return std::min(T, std::max<int64_t>(64, fit / 64 * 64));
}

}  // namespace mpt::model
