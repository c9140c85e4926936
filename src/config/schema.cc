// The table of every recipe key. Adding a key to the recipe is one MPT_KEY line here
// (plus the struct member in recipe.h); loading, overrides, checks and to_toml follow.
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>

#include "config/schema_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

template <typename T>
struct KeyTraits;
template <>
struct KeyTraits<bool> {
  static constexpr KeyType type = KeyType::kBool;
};
template <>
struct KeyTraits<int64_t> {
  static constexpr KeyType type = KeyType::kInt;
};
template <>
struct KeyTraits<double> {
  static constexpr KeyType type = KeyType::kFloat;
};
template <>
struct KeyTraits<std::string> {
  static constexpr KeyType type = KeyType::kString;
};
template <>
struct KeyTraits<std::vector<std::string>> {
  static constexpr KeyType type = KeyType::kStringList;
};

template <>
struct KeyTraits<std::vector<BlendItem>> {
  static constexpr KeyType type = KeyType::kBlend;
};
template <>
struct KeyTraits<std::vector<int64_t>> {
  static constexpr KeyType type = KeyType::kIntList;
};

template <typename T>
struct Unwrap {
  using type = T;
  static constexpr bool optional = false;
};
template <typename T>
struct Unwrap<std::optional<T>> {
  using type = T;
  static constexpr bool optional = true;
};

template <typename T>
Value to_value(const T& field) {
  if constexpr (Unwrap<T>::optional) {
    if (!field.has_value()) return std::monostate{};
    return Value(*field);
  } else {
    return Value(field);
  }
}

template <typename T>
void from_value(T& field, const Value& v) {
  if constexpr (Unwrap<T>::optional) {
    if (std::holds_alternative<std::monostate>(v)) {
      field.reset();
      return;
    }
    field = std::get<typename Unwrap<T>::type>(v);
  } else {
    field = std::get<T>(v);
  }
}

template <auto Section, auto Field>
Value get_field(const Recipe& r) {
  return to_value(r.*Section.*Field);
}

template <auto Section, auto Field>
void set_field(Recipe& r, const Value& v) {
  from_value(r.*Section.*Field, v);
}

template <auto Section, auto Field>
KeySpec make_key(std::string_view section, std::string_view name) {
  using Member = std::remove_cvref_t<decltype(std::declval<Recipe>().*Section.*Field)>;
  KeySpec k;
  k.section = section;
  k.name = name;
  k.type = KeyTraits<typename Unwrap<Member>::type>::type;
  k.optional = Unwrap<Member>::optional;
  k.get = &get_field<Section, Field>;
  k.set = &set_field<Section, Field>;
  return k;
}

#define MPT_KEY(SECTION, NAME) \
  make_key<&Recipe::SECTION, &decltype(Recipe::SECTION)::NAME>(#SECTION, #NAME)

std::vector<KeySpec> build_table() {
  return {
      // [model] architecture
      MPT_KEY(model, num_layers).must_be_set().above(0),
      MPT_KEY(model, hidden_size).must_be_set().above(0),
      MPT_KEY(model, ffn_hidden_size).above(0),
      MPT_KEY(model, num_attention_heads).must_be_set().above(0),
      MPT_KEY(model, num_query_groups).above(0),
      MPT_KEY(model, kv_channels).above(0),
      MPT_KEY(model, seq_length).at_least(1),
      MPT_KEY(model, vocab_size).must_be_set().above(0),
      MPT_KEY(model, make_vocab_size_divisible_by).at_least(1),
      MPT_KEY(model, normalization).one_of({"LayerNorm", "RMSNorm"}),
      MPT_KEY(model, layernorm_epsilon).above(0),
      MPT_KEY(model, activation_func).one_of({"gelu", "gelu_tanh", "silu", "relu", "squared_relu"}),
      MPT_KEY(model, gated_linear_unit),
      MPT_KEY(model, add_bias_linear),
      MPT_KEY(model, add_qkv_bias),
      MPT_KEY(model, position_embedding_type).one_of({"learned_absolute", "rope", "none"}),
      MPT_KEY(model, rotary_base).above(0),
      MPT_KEY(model, rotary_percent).above(0).at_most(1),
      MPT_KEY(model, share_embeddings_and_output_weights),
      MPT_KEY(model, init_method_std).above(0),
      MPT_KEY(model, embedding_init_method_std).above(0),
      MPT_KEY(model, hidden_dropout).at_least(0).below(1),
      MPT_KEY(model, attention_dropout).at_least(0).below(1),
      MPT_KEY(model, softmax_scale).above(0),
      MPT_KEY(model, apply_residual_connection_post_layernorm),
      MPT_KEY(model, qk_layernorm),
      MPT_KEY(model, layernorm_zero_centered_gamma),
      MPT_KEY(model, bf16),
      MPT_KEY(model, fp16),
      // [model] parallel layout
      MPT_KEY(model, tensor_model_parallel_size).at_least(1),
      MPT_KEY(model, pipeline_model_parallel_size).at_least(1),
      MPT_KEY(model, virtual_pipeline_model_parallel_size).at_least(1),
      MPT_KEY(model, sequence_parallel),
      MPT_KEY(model, context_parallel_size).at_least(1),
      MPT_KEY(model, cp_comm_type).one_of({"p2p", "all_gather"}),
      MPT_KEY(model, expert_model_parallel_size).at_least(1),
      MPT_KEY(model, expert_tensor_parallel_size).at_least(1),
      MPT_KEY(model, num_layers_in_first_pipeline_stage).at_least(1),
      MPT_KEY(model, num_layers_in_last_pipeline_stage).at_least(1),
      MPT_KEY(model, microbatch_group_size_per_vp_stage).at_least(1),
      // [model] mixture of experts
      MPT_KEY(model, num_moe_experts).at_least(1),
      MPT_KEY(model, moe_ffn_hidden_size).at_least(1),
      MPT_KEY(model, moe_router_topk).at_least(1),
      MPT_KEY(model, moe_aux_loss_coeff).at_least(0),
      MPT_KEY(model, moe_z_loss_coeff).at_least(0),
      MPT_KEY(model, moe_router_load_balancing_type)
          .one_of({"aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"}),
      MPT_KEY(model, moe_token_dispatcher_type).one_of({"allgather", "alltoall"}),
      MPT_KEY(model, moe_expert_capacity_factor).above(0),
      MPT_KEY(model, moe_pad_expert_input_to_capacity),
      MPT_KEY(model, moe_token_drop_policy).one_of({"probs", "position"}),
      MPT_KEY(model, moe_layer_freq).at_least(1),
      MPT_KEY(model, moe_shared_expert_intermediate_size).at_least(1),
      MPT_KEY(model, moe_grouped_gemm),
      MPT_KEY(model, moe_router_score_function).one_of({"softmax", "sigmoid"}),
      MPT_KEY(model, moe_router_pre_softmax),
      // [model] activation recompute
      MPT_KEY(model, recompute_granularity).one_of({"full", "selective"}),
      MPT_KEY(model, recompute_method).one_of({"uniform", "block"}),
      MPT_KEY(model, recompute_num_layers).at_least(1),
      MPT_KEY(model, recompute_modules)
          .one_of({"core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts"}),
      // [model] CUDA graphs
      MPT_KEY(model, cuda_graph_impl).one_of({"none", "local", "transformer_engine"}),
      MPT_KEY(model, cuda_graph_warmup_steps).at_least(1),

      MPT_KEY(train, micro_batch_size).must_be_set().at_least(1),
      MPT_KEY(train, global_batch_size).at_least(1),
      MPT_KEY(train, train_iters).must_be_set().at_least(1),
      MPT_KEY(train, exit_interval).at_least(1),

      MPT_KEY(optimizer, optimizer).one_of({"adam", "sgd"}),
      MPT_KEY(optimizer, lr).must_be_set().at_least(0),
      MPT_KEY(optimizer, min_lr).at_least(0),
      MPT_KEY(optimizer, weight_decay).at_least(0),
      MPT_KEY(optimizer, adam_beta1).at_least(0).below(1),
      MPT_KEY(optimizer, adam_beta2).at_least(0).below(1),
      MPT_KEY(optimizer, adam_eps).above(0),
      MPT_KEY(optimizer, clip_grad).at_least(0),
      MPT_KEY(optimizer, use_distributed_optimizer),
      MPT_KEY(optimizer, overlap_param_gather),

      MPT_KEY(scheduler, lr_decay_style).one_of({"constant", "linear", "cosine", "inverse-square-root", "WSD"}),
      MPT_KEY(scheduler, lr_decay_iters).at_least(1),
      MPT_KEY(scheduler, lr_warmup_iters).at_least(0),
      MPT_KEY(scheduler, lr_warmup_fraction).at_least(0).at_most(1),
      MPT_KEY(scheduler, lr_warmup_init).at_least(0),
      MPT_KEY(scheduler, start_weight_decay).at_least(0),
      MPT_KEY(scheduler, end_weight_decay).at_least(0),
      MPT_KEY(scheduler, weight_decay_incr_style).one_of({"constant", "linear", "cosine"}),

      MPT_KEY(ddp, grad_reduce_in_fp32),
      MPT_KEY(ddp, overlap_grad_reduce),
      MPT_KEY(ddp, overlap_param_gather),
      MPT_KEY(ddp, align_param_gather),
      MPT_KEY(ddp, use_distributed_optimizer),
      MPT_KEY(ddp, num_distributed_optimizer_instances).at_least(1),
      MPT_KEY(ddp, check_for_nan_in_grad),
      MPT_KEY(ddp, bucket_size).at_least(1),
      MPT_KEY(ddp, average_in_collective),
      MPT_KEY(ddp, data_parallel_sharding_strategy)
          .one_of({"no_shard", "optim", "optim_grads", "optim_grads_params"}),
      MPT_KEY(ddp, use_megatron_fsdp),

      MPT_KEY(dataset, source).one_of({"mock", "corpus", "indexed"}),
      MPT_KEY(dataset, seq_length).at_least(1),
      MPT_KEY(dataset, random_seed).at_least(0),
      MPT_KEY(dataset, data_path),
      MPT_KEY(dataset, blend),
      MPT_KEY(dataset, split),
      MPT_KEY(dataset, path_to_cache),
      MPT_KEY(dataset, mmap_bin_files),
      MPT_KEY(dataset, eod_mask_loss),
      MPT_KEY(dataset, num_workers).at_least(0),

      MPT_KEY(checkpoint, save),
      MPT_KEY(checkpoint, load),
      MPT_KEY(checkpoint, save_interval).at_least(1),
      MPT_KEY(checkpoint, save_optim),
      MPT_KEY(checkpoint, save_rng),
      MPT_KEY(checkpoint, load_optim),
      MPT_KEY(checkpoint, load_rng),
      MPT_KEY(checkpoint, finetune),
      MPT_KEY(checkpoint, exit_on_missing_checkpoint),
      MPT_KEY(checkpoint, async_save),
      MPT_KEY(checkpoint, most_recent_k).at_least(-1),
      MPT_KEY(checkpoint, exit_signal_handler),

      MPT_KEY(logger, log_interval).at_least(1),
      MPT_KEY(logger, metrics_file),
      MPT_KEY(logger, tensorboard_dir),
      MPT_KEY(logger, log_throughput),
      MPT_KEY(logger, timing_log_level).at_least(0).at_most(2),

      MPT_KEY(rng, seed).at_least(0),

      MPT_KEY(validation, eval_iters).at_least(1),
      MPT_KEY(validation, eval_interval).at_least(1),

      MPT_KEY(dist, distributed_backend).one_of({"auto", "nccl", "gloo"}),
      MPT_KEY(dist, distributed_timeout_minutes).above(0),

      MPT_KEY(profiling, use_nsys_profiler),
      MPT_KEY(profiling, profile_step_start).at_least(0),
      MPT_KEY(profiling, profile_step_end).at_least(1),
      MPT_KEY(profiling, use_pytorch_profiler),
      MPT_KEY(profiling, profile_ranks).at_least(0),
      MPT_KEY(profiling, timeline_dir),

      // `mixed_precision = "bf16_mixed"` at top level, or the [mixed_precision] table.
      make_key<&Recipe::mixed_precision, &MixedPrecisionConfig::preset>("", "mixed_precision")
          .one_of({"fp32", "bf16_mixed", "fp16_mixed"}),
      MPT_KEY(mixed_precision, bf16),
      MPT_KEY(mixed_precision, fp16),
      MPT_KEY(mixed_precision, fp32),
      MPT_KEY(mixed_precision, grad_reduce_in_fp32),
  };
}

#undef MPT_KEY

}  // namespace

std::string KeySpec::full_name() const {
  if (section.empty()) return std::string(name);
  return std::string(section) + "." + std::string(name);
}

Value KeySpec::default_value() const {
  static const Recipe defaults;
  return get(defaults);
}

KeySpec KeySpec::must_be_set() const {
  KeySpec k = *this;
  k.required = true;
  return k;
}
KeySpec KeySpec::at_least(double v) const {
  KeySpec k = *this;
  k.lo = v;
  k.lo_open = false;
  return k;
}
KeySpec KeySpec::above(double v) const {
  KeySpec k = *this;
  k.lo = v;
  k.lo_open = true;
  return k;
}
KeySpec KeySpec::at_most(double v) const {
  KeySpec k = *this;
  k.hi = v;
  k.hi_open = false;
  return k;
}
KeySpec KeySpec::below(double v) const {
  KeySpec k = *this;
  k.hi = v;
  k.hi_open = true;
  return k;
}
KeySpec KeySpec::one_of(std::vector<std::string_view> words) const {
  KeySpec k = *this;
  k.choices = std::move(words);
  return k;
}

const std::vector<KeySpec>& key_table() {
  static const std::vector<KeySpec> table = build_table();
  return table;
}

const KeySpec* find_key(std::string_view full_name) {
  for (const KeySpec& k : key_table()) {
    if (k.full_name() == full_name) return &k;
  }
  return nullptr;
}

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const KeySpec& k : key_table()) {
      if (k.section.empty()) continue;
      if (std::find(out.begin(), out.end(), k.section) == out.end()) out.emplace_back(k.section);
    }
    return out;
  }();
  return names;
}

bool is_section(std::string_view name) {
  const auto& names = section_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

void assign(Recipe& recipe, const KeySpec& spec, const Value& value, const Source& source) {
  MPT_ASSERT(spec.optional || !std::holds_alternative<std::monostate>(value));
  if (spec.section.empty() && spec.name == "mixed_precision") {
    recipe.mixed_precision = MixedPrecisionConfig{};
    for (const KeySpec& k : key_table()) {
      if (k.section == "mixed_precision") recipe.sources.erase(k.full_name());
    }
  }
  spec.set(recipe, value);
  if (std::holds_alternative<std::monostate>(value)) {
    recipe.sources.erase(spec.full_name());
  } else {
    recipe.sources[spec.full_name()] = source;
  }
}

}  // namespace mpt::config
