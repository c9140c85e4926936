// Cross-key rules of the model architecture (TransformerConfig's __post_init__ checks),
// and the model sizes every later stage reads from Derived.
#include <algorithm>
#include <string>

#include "config/finalize_internal.h"
#include "core/error.h"
#include "parallel/pipeline_layout.h"

namespace mpt::config {
namespace {

void check_attention(Checker& c) {
  const ModelConfig& m = c.r.model;
  const int64_t heads = m.num_attention_heads;
  if (!m.kv_channels && heads > 0 && m.hidden_size > 0 && m.hidden_size % heads != 0) {
    c.fail("model.hidden_size", str("must be divisible by model.num_attention_heads (", m.hidden_size, " % ",
                                    heads, " = ", m.hidden_size % heads, "), or set model.kv_channels"));
  }
  if (m.num_query_groups && *m.num_query_groups > 0 && heads > 0 && heads % *m.num_query_groups != 0) {
    c.fail("model.num_query_groups",
           str("must divide model.num_attention_heads (", heads, " % ", *m.num_query_groups, " = ",
               heads % *m.num_query_groups, ")"));
  }
  if (m.position_embedding_type == "rope" && c.d.kv_channels > 0 && m.rotary_percent > 0 &&
      m.rotary_percent <= 1) {
    // Megatron rotates int(kv_channels * rotary_percent) channels in (even, odd) pairs.
    const auto rotary_dim = static_cast<int64_t>(static_cast<double>(c.d.kv_channels) * m.rotary_percent);
    if (rotary_dim < 2 || rotary_dim % 2 != 0) {
      c.fail("model.rotary_percent",
             str("the rotary dimension int(kv_channels * rotary_percent) = int(", c.d.kv_channels, " * ",
                 format_number(m.rotary_percent), ") = ", rotary_dim, " must be even and at least 2"));
    }
  }
  if (m.bf16 && m.fp16) c.fail("model.fp16", "cannot be combined with model.bf16");
}

void check_moe(Checker& c) {
  const ModelConfig& m = c.r.model;
  if (m.num_moe_experts && *m.num_moe_experts > 0 && m.moe_router_topk > *m.num_moe_experts) {
    c.fail("model.moe_router_topk",
           str("must be <= model.num_moe_experts (", *m.num_moe_experts, "), got ", m.moe_router_topk));
  }
  if (m.num_moe_experts && m.hidden_size % 16 != 0) {
    c.fail("model.hidden_size", str("must be a multiple of 16 with model.num_moe_experts (the experts' weights are "
                                     "stacked for grouped GEMMs), got ", m.hidden_size));
  }
  if (m.moe_pad_expert_input_to_capacity && !m.moe_expert_capacity_factor) {
    c.fail("model.moe_pad_expert_input_to_capacity", "needs model.moe_expert_capacity_factor");
  }
}

// The layers of the largest model chunk (a pipeline stage's, or a virtual stage's with
// interleaving), or 0 when the pipeline split is broken (check_layout reports that).
int64_t largest_chunk_layers(const ModelConfig& m) {
  parallel::PipelineSplit split;
  split.num_layers = m.num_layers;
  split.stages = m.pipeline_model_parallel_size;
  split.chunks = m.virtual_pipeline_model_parallel_size.value_or(1);
  split.first = m.num_layers_in_first_pipeline_stage;
  split.last = m.num_layers_in_last_pipeline_stage;
  if (split.num_layers < 1 || split.stages < 1 || split.chunks < 1) return 0;
  int64_t largest = 0;
  try {
    for (int64_t stage = 0; stage < split.stages; ++stage)
      largest = std::max(largest, parallel::chunk_layers(split, stage, 0).count());
  } catch (const Error&) {
    return 0;
  }
  return largest;
}

void check_recompute(Checker& c) {
  const ModelConfig& m = c.r.model;
  const std::string granularity = m.recompute_granularity.value_or("");
  if (granularity == "full") {
    if (!m.recompute_method)
      c.fail("model.recompute_granularity", "\"full\" needs model.recompute_method (\"uniform\" or \"block\")");
    if (!m.recompute_num_layers)
      c.fail("model.recompute_granularity", "\"full\" needs model.recompute_num_layers");
  } else {
    const std::string why = granularity.empty() ? "model.recompute_granularity is not set"
                                                : "model.recompute_granularity is \"" + granularity + "\"";
    if (m.recompute_method) c.fail("model.recompute_method", "needs model.recompute_granularity = \"full\" (" + why + ")");
    if (m.recompute_num_layers)
      c.fail("model.recompute_num_layers", "needs model.recompute_granularity = \"full\" (" + why + ")");
  }
  if (!m.recompute_modules.empty() && granularity != "selective") {
    c.fail("model.recompute_modules", "needs model.recompute_granularity = \"selective\"");
  }
  if (m.recompute_num_layers && m.num_layers > 0 && *m.recompute_num_layers > m.num_layers) {
    c.fail("model.recompute_num_layers",
           str("must be <= model.num_layers (", m.num_layers, "), got ", *m.recompute_num_layers));
  } else if (m.recompute_num_layers && granularity == "full") {
    // Megatron counts recompute_num_layers within each model chunk (uniform: layers per
    // group; block: layers recomputed per chunk).
    const int64_t chunk = largest_chunk_layers(m);
    if (chunk > 0 && *m.recompute_num_layers > chunk) {
      c.fail("model.recompute_num_layers",
             str("must be <= the layers of a model chunk (", chunk, ": model.num_layers ", m.num_layers,
                 " over pipeline_model_parallel_size ", m.pipeline_model_parallel_size,
                 " x virtual_pipeline_model_parallel_size ", m.virtual_pipeline_model_parallel_size.value_or(1),
                 "), got ", *m.recompute_num_layers));
    }
  }
  // The MoE modules need an MoE MLP to act on.
  const bool moe = m.num_moe_experts && *m.num_moe_experts > 0;
  for (const std::string& module : m.recompute_modules) {
    if ((module == "moe" || module == "moe_act" || module == "shared_experts") && !moe)
      c.fail("model.recompute_modules", str(toml_quote(module), " needs model.num_moe_experts"));
    if (module == "shared_experts" && moe && !m.moe_shared_expert_intermediate_size)
      c.fail("model.recompute_modules", "\"shared_experts\" needs model.moe_shared_expert_intermediate_size");
  }
}

}  // namespace

void check_model(Checker& c) {
  const ModelConfig& m = c.r.model;
  Derived& d = c.d;
  d.ffn_hidden_size = m.ffn_hidden_size.value_or(4 * m.hidden_size);
  d.num_query_groups = m.num_query_groups.value_or(m.num_attention_heads);
  d.kv_channels = m.kv_channels.value_or(m.num_attention_heads > 0 ? m.hidden_size / m.num_attention_heads : 0);
  d.padded_vocab_size = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by,
                                          m.tensor_model_parallel_size);
  check_attention(c);
  check_moe(c);
  check_recompute(c);
}

}  // namespace mpt::config
