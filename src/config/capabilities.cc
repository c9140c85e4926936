// What mptrain has not built yet, in one list: a recipe that asks for any of it is
// rejected at finalize() with the key that asked. When a capability lands, delete its line.
#include <string>

#include "config/finalize_internal.h"
#include "config/schema_internal.h"
#include "core/error.h"

namespace mpt::config {

void check_capabilities(Checker& c) {
  const Recipe& r = c.r;
  const ModelConfig& m = r.model;
  const auto unbuilt = [&](bool in_use, std::string_view key, const std::string& capability) {
    if (in_use) c.fail(key, capability + " is not supported yet");
  };
  // Any value other than the default of a key, found through the key table.
  const auto changed = [&](std::string_view key) {
    const KeySpec* k = find_key(key);
    return k != nullptr && k->get(r) != k->default_value();
  };

  // Parallelism: every dimension is built (data, tensor + sequence, context, pipeline +
  // virtual stages, expert + expert tensor).

  // Model features.
  if (m.num_moe_experts) {
    unbuilt(m.add_bias_linear, "model.add_bias_linear", "biases on the experts' linear layers");
    unbuilt(m.moe_router_load_balancing_type != "aux_loss" && m.moe_router_load_balancing_type != "none",
            "model.moe_router_load_balancing_type",
            str("the load-balancing type ", toml_quote(m.moe_router_load_balancing_type)));
  }
  for (const std::string& module : m.recompute_modules)
    unbuilt(module == "mla_up_proj", "model.recompute_modules",
            "recomputing \"mla_up_proj\" (multi-latent attention)");
  unbuilt(m.apply_residual_connection_post_layernorm, "model.apply_residual_connection_post_layernorm",
          "the residual connection after the layernorm");
  unbuilt(m.qk_layernorm, "model.qk_layernorm", "query/key layernorm");
  unbuilt(m.layernorm_zero_centered_gamma, "model.layernorm_zero_centered_gamma", "zero-centered layernorm gamma");

  // CUDA graphs: a dense model's forward and backward, alone or data-parallel with its
  // gradients reduced after the last micro-batch's backward (which runs eagerly). What a
  // graph cannot hold: the collectives inside a layer (tensor, context, pipeline and expert
  // parallelism), a reduction per micro-batch (sharded gradients), MoE routing (its counts
  // come to the host).
  if (m.cuda_graph_impl == "transformer_engine")
    c.fail("model.cuda_graph_impl", "\"transformer_engine\": mptrain records its own graphs; use \"local\"");
  if (m.cuda_graph_impl == "local") {
    const auto graphs = [&](bool in_use, std::string_view key, const std::string& what) {
      if (in_use) c.fail(key, what + " with model.cuda_graph_impl = \"local\" is not supported yet (graphs are "
                                     "recorded for a dense model on one rank or data-parallel ranks)");
    };
    graphs(m.tensor_model_parallel_size > 1, "model.tensor_model_parallel_size", "tensor parallelism");
    graphs(m.pipeline_model_parallel_size > 1, "model.pipeline_model_parallel_size", "pipeline parallelism");
    graphs(m.context_parallel_size > 1, "model.context_parallel_size", "context parallelism");
    graphs(m.num_moe_experts.has_value(), "model.num_moe_experts", "mixture of experts");
    const std::string& sharding = r.ddp.data_parallel_sharding_strategy;
    graphs(sharding == "optim_grads" || sharding == "optim_grads_params", "ddp.data_parallel_sharding_strategy",
           str("sharded gradients (", toml_quote(sharding), ")"));
  }

  // Precision: fp32, or bf16 mixed precision with fp32 gradients.
  unbuilt(m.fp16, "model.fp16", "fp16 training");
  const std::string preset = r.mixed_precision.preset.value_or("fp32");
  unbuilt(preset == "fp16_mixed", "mixed_precision", str("the mixed-precision preset ", toml_quote(preset)));
  unbuilt(r.mixed_precision.fp16, "mixed_precision.fp16", "fp16 mixed precision");
  unbuilt(uses_bf16(r) && !r.mixed_precision.grad_reduce_in_fp32, "mixed_precision.grad_reduce_in_fp32",
          "gradient reduction in bf16 (gradients are accumulated and reduced in fp32)");

  // Optimizer and data-parallel machinery.
  unbuilt(r.optimizer.optimizer == "sgd", "optimizer.optimizer", "the optimizer \"sgd\"");
  unbuilt(r.optimizer.overlap_param_gather, "optimizer.overlap_param_gather", "overlapped parameter all-gathers");
  for (const KeySpec& k : key_table()) {
    static const char* const kBuilt[] = {"check_for_nan_in_grad", "grad_reduce_in_fp32", "overlap_grad_reduce",
                                         "bucket_size", "use_distributed_optimizer", "data_parallel_sharding_strategy",
                                         "average_in_collective"};
    bool built = false;
    for (const char* name : kBuilt) built = built || k.name == name;
    if (k.section != "ddp" || built) continue;
    unbuilt(changed(k.full_name()), k.full_name(), "this data-parallel setting");
  }
  const std::string& style = r.scheduler.lr_decay_style;
  unbuilt(style == "inverse-square-root" || style == "WSD", "scheduler.lr_decay_style",
          str("the lr_decay_style ", toml_quote(style)));

  // Data, checkpoints, logging.
  unbuilt(r.logger.timing_log_level != 0, "logger.timing_log_level", "per-phase timing");
  if (r.profiling.use_nsys_profiler)
    c.fail("profiling.use_nsys_profiler",
           "starting and stopping Nsight Systems at profiling.profile_step_start / profile_step_end (with NVTX "
           "ranges) is not supported yet; run the whole job under `nsys profile` without a capture range, or set "
           "profiling.timeline_dir for mptrain's own trace of compute and communication");
}

}  // namespace mpt::config
