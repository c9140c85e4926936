// Megatron's parallel-layout rules (initialize_model_parallel and TransformerConfig), and
// the sizes derived from them: DP, ETP, EDP and the number of micro-batches.
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "config/finalize_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

// The ranks a layout needs: lcm(TP*PP*CP, ETP*EP*PP) (the expert layout only with experts).
int64_t ranks_needed(const Checker& c) {
  const ModelConfig& m = c.r.model;
  const int64_t tp = m.tensor_model_parallel_size, pp = m.pipeline_model_parallel_size;
  int64_t need = tp * pp * m.context_parallel_size;
  if (m.num_moe_experts)
    need = std::lcm(need, m.expert_tensor_parallel_size.value_or(tp) * m.expert_model_parallel_size * pp);
  return need;
}

// What to do about a world the layout does not divide: how many ranks it needs, and which of
// `keys` (name, value) to lower instead.
std::string world_advice(const Checker& c, const std::vector<std::pair<std::string, int64_t>>& keys) {
  const int64_t need = ranks_needed(c);
  std::string names;
  for (const auto& [key, value] : keys) {
    if (value <= 1) continue;
    names += str(names.empty() ? "" : ", ", "model.", key, " (", value, ")");
  }
  std::string advice = c.world_size < need
                           ? str(": the recipe's layout needs at least ", need, " ranks (a multiple of ", need,
                                 "), not ", c.world_size, "; launch ", need)
                           : str(": the recipe's layout needs a multiple of ", need, " ranks (", need, ", ", 2 * need,
                                 ", ...), not ", c.world_size, "; launch such a number");
  if (!names.empty()) advice += str(", or lower ", names, " until their product divides ", c.world_size);
  return advice;
}

void check_pipeline(Checker& c) {
  const ModelConfig& m = c.r.model;
  const int64_t pp = m.pipeline_model_parallel_size;
  const int64_t layers = m.num_layers;
  if (pp < 1 || layers < 1) return;
  const auto& first = m.num_layers_in_first_pipeline_stage;
  const auto& last = m.num_layers_in_last_pipeline_stage;
  const int64_t vpp = m.virtual_pipeline_model_parallel_size.value_or(1);

  if (first || last) {
    const char* key = first ? "model.num_layers_in_first_pipeline_stage" : "model.num_layers_in_last_pipeline_stage";
    if (pp == 1) {
      c.fail(key, "needs model.pipeline_model_parallel_size > 1");
      return;
    }
    const int64_t middle_layers = layers - first.value_or(0) - last.value_or(0);
    const int64_t middle_stages = pp - (first ? 1 : 0) - (last ? 1 : 0);
    if (middle_layers < 0 || (middle_stages == 0 && middle_layers != 0) ||
        (middle_stages > 0 && middle_layers % middle_stages != 0)) {
      c.fail(key, str("the remaining ", middle_layers, " layers must divide evenly over the remaining ",
                      middle_stages, " pipeline stages (model.num_layers ", layers,
                      ", model.pipeline_model_parallel_size ", pp, ")"));
      return;
    }
    if (vpp > 1) {
      if (first && *first % vpp != 0)
        c.fail("model.num_layers_in_first_pipeline_stage",
               str("must be divisible by model.virtual_pipeline_model_parallel_size (", vpp, ")"));
      if (last && *last % vpp != 0)
        c.fail("model.num_layers_in_last_pipeline_stage",
               str("must be divisible by model.virtual_pipeline_model_parallel_size (", vpp, ")"));
      if (middle_stages > 0 && (middle_layers / middle_stages) % vpp != 0)
        c.fail("model.virtual_pipeline_model_parallel_size",
               str("must divide the layers of each middle pipeline stage (", middle_layers / middle_stages, ")"));
    }
    return;
  }
  if (layers % pp != 0) {
    c.fail("model.num_layers", str("must be divisible by model.pipeline_model_parallel_size (", layers, " % ", pp,
                                   " = ", layers % pp, ")"));
    return;
  }
  if (vpp > 1 && (layers / pp) % vpp != 0) {
    c.fail("model.virtual_pipeline_model_parallel_size",
           str("must divide the layers per pipeline stage (model.num_layers / pipeline_model_parallel_size = ",
               layers / pp, ")"));
  }
}

void check_sequence_split(Checker& c) {
  const ModelConfig& m = c.r.model;
  const int64_t tp = m.tensor_model_parallel_size, cp = m.context_parallel_size, seq = m.seq_length;
  if (m.sequence_parallel && tp == 1) c.fail("model.sequence_parallel", "needs model.tensor_model_parallel_size > 1");
  if (tp < 1 || cp < 1 || seq < 1) return;
  // CP splits the sequence into 2*CP load-balanced chunks; SP splits each rank's part by TP.
  int64_t multiple = 1;
  std::string why;
  if (cp > 1 && m.sequence_parallel && tp > 1) {
    multiple = cp * std::lcm<int64_t>(2, tp);
    why = str("context_parallel_size * lcm(2, tensor_model_parallel_size) = ", multiple);
  } else if (cp > 1) {
    multiple = 2 * cp;
    why = str("2 * context_parallel_size = ", multiple);
  } else if (m.sequence_parallel && tp > 1) {
    multiple = tp;
    why = str("tensor_model_parallel_size = ", multiple, ", for sequence parallelism");
  }
  if (seq % multiple != 0) c.fail("model.seq_length", str("must be divisible by ", why, ", got ", seq));
}

void check_experts(Checker& c) {
  const ModelConfig& m = c.r.model;
  Derived& d = c.d;
  const int64_t tp = m.tensor_model_parallel_size, pp = m.pipeline_model_parallel_size;
  const int64_t ep = m.expert_model_parallel_size;
  d.expert_tensor_parallel_size = m.expert_tensor_parallel_size.value_or(tp);
  d.expert_data_parallel_size = 0;
  const int64_t etp = d.expert_tensor_parallel_size;
  if (etp < 1 || ep < 1 || pp < 1) return;

  if (ep > 1 && !m.num_moe_experts) c.fail("model.expert_model_parallel_size", "needs model.num_moe_experts");
  const int64_t expert_model_size = etp * ep * pp;
  if (c.world_size >= 1 && c.world_size % expert_model_size == 0) {
    d.expert_data_parallel_size = c.world_size / expert_model_size;
  } else if (c.world_size >= 1 && m.num_moe_experts) {
    c.fail("model.expert_model_parallel_size",
           str("world size ", c.world_size, " is not divisible by expert_tensor_parallel_size * "
               "expert_model_parallel_size * pipeline_model_parallel_size = ", etp, " * ", ep, " * ", pp, " = ",
               expert_model_size,
               world_advice(c, {{"expert_tensor_parallel_size", etp}, {"expert_model_parallel_size", ep},
                                {"pipeline_model_parallel_size", pp}})));
  }
  if (!m.num_moe_experts) return;
  const int64_t experts = *m.num_moe_experts;
  if (experts > 0 && experts % ep != 0) {
    c.fail("model.num_moe_experts",
           str("must be divisible by model.expert_model_parallel_size (", experts, " % ", ep, " = ", experts % ep, ")"));
  }
  const int64_t expert_ffn = m.moe_ffn_hidden_size.value_or(d.ffn_hidden_size);
  if (expert_ffn > 0 && expert_ffn % etp != 0) {
    c.fail(m.moe_ffn_hidden_size ? "model.moe_ffn_hidden_size" : "model.ffn_hidden_size",
           str("the expert hidden size ", expert_ffn, " must be divisible by the expert tensor parallel size (", etp,
               ")"));
  }
  // Megatron requires it when TP and EP are combined, and its MoE layer refuses to train
  // with TP without it: each rank routes its own part of the sequence.
  if (tp > 1 && !m.sequence_parallel) {
    c.fail("model.sequence_parallel",
           str("must be true for a mixture of experts with tensor parallelism (tensor_model_parallel_size ", tp,
               ", expert_model_parallel_size ", ep, ")"));
  }
  const int64_t shared = m.moe_shared_expert_intermediate_size.value_or(0);
  if (shared % tp != 0) {
    c.fail("model.moe_shared_expert_intermediate_size",
           str("the shared expert's hidden size ", shared, " must be divisible by tensor_model_parallel_size (", tp,
               ")"));
  }
}

// The interleaved schedule (virtual pipeline stages) runs micro-batches in groups of
// G = microbatch_group_size_per_vp_stage (default P) through each chunk in turn; other
// counts would leave a stage waiting on a micro-batch that never comes.
void check_interleaving(Checker& c) {
  const ModelConfig& m = c.r.model;
  const int64_t pp = m.pipeline_model_parallel_size, M = c.d.num_microbatches;
  if (!m.virtual_pipeline_model_parallel_size || pp < 2 || M < 1) return;
  const int64_t g = m.microbatch_group_size_per_vp_stage.value_or(pp);
  if (M % pp != 0) {
    c.fail("train.global_batch_size",
           str("gives ", M, " micro-batches per step, which the interleaved pipeline schedule (virtual stages) needs "
               "divisible by model.pipeline_model_parallel_size (", pp, ")"));
    return;
  }
  if (g < pp || g > M)
    c.fail("model.microbatch_group_size_per_vp_stage",
           str("must lie in [pipeline_model_parallel_size, micro-batches per step] = [", pp, ", ", M, "], got ", g));
  else if (M % g != 0 && M % g < pp)
    c.fail("model.microbatch_group_size_per_vp_stage",
           str("leaves a last group of ", M % g, " micro-batches (", M, " % ", g,
               "), which must be at least pipeline_model_parallel_size (", pp, ")"));
}

void check_batch(Checker& c) {
  const TrainConfig& t = c.r.train;
  Derived& d = c.d;
  if (!t.micro_batch_size || *t.micro_batch_size < 1 || d.data_parallel_size < 1) return;
  const int64_t per_step = *t.micro_batch_size * d.data_parallel_size;
  const int64_t global = t.global_batch_size.value_or(per_step);
  if (global < 1) return;
  if (global % per_step != 0) {
    c.fail("train.global_batch_size",
           str("must be divisible by train.micro_batch_size * data-parallel size = ", *t.micro_batch_size, " * ",
               d.data_parallel_size, " = ", per_step, ", got ", global));
    return;
  }
  d.num_microbatches = global / per_step;
  check_interleaving(c);
}

}  // namespace

void check_layout(Checker& c) {
  const ModelConfig& m = c.r.model;
  Derived& d = c.d;
  const int64_t tp = m.tensor_model_parallel_size, pp = m.pipeline_model_parallel_size;
  const int64_t cp = m.context_parallel_size;

  if (c.world_size < 1) c.fail("world_size", str("must be >= 1, got ", c.world_size));
  d.data_parallel_size = 0;
  if (tp >= 1 && pp >= 1 && cp >= 1 && c.world_size >= 1) {
    const int64_t model_size = tp * pp * cp;
    if (c.world_size % model_size == 0) {
      d.data_parallel_size = c.world_size / model_size;
    } else {
      c.fail("model.tensor_model_parallel_size",
             str("world size ", c.world_size, " is not divisible by tensor_model_parallel_size * "
                 "pipeline_model_parallel_size * context_parallel_size = ", tp, " * ", pp, " * ", cp, " = ",
                 model_size,
                 world_advice(c, {{"tensor_model_parallel_size", tp}, {"pipeline_model_parallel_size", pp},
                                  {"context_parallel_size", cp}})));
    }
  }
  if (tp >= 1) {
    if (m.num_attention_heads > 0 && m.num_attention_heads % tp != 0)
      c.fail("model.num_attention_heads",
             str("must be divisible by model.tensor_model_parallel_size (", m.num_attention_heads, " % ", tp, " = ",
                 m.num_attention_heads % tp, ")"));
    if (m.num_query_groups && *m.num_query_groups > 0 && *m.num_query_groups % tp != 0)
      c.fail("model.num_query_groups",
             str("must be divisible by model.tensor_model_parallel_size (", *m.num_query_groups, " % ", tp, " = ",
                 *m.num_query_groups % tp, ")",
                 *m.num_query_groups < tp ? "; fewer query groups than tensor-parallel ranks (replicating key/value "
                                            "heads) is not supported"
                                          : ""));
    if (d.ffn_hidden_size > 0 && d.ffn_hidden_size % tp != 0)
      c.fail("model.ffn_hidden_size",
             str("must be divisible by model.tensor_model_parallel_size (", d.ffn_hidden_size, " % ", tp, " = ",
                 d.ffn_hidden_size % tp, ")", m.ffn_hidden_size ? "" : "; unset, it is 4 * model.hidden_size"));
  }
  if (m.microbatch_group_size_per_vp_stage && !m.virtual_pipeline_model_parallel_size)
    c.fail("model.microbatch_group_size_per_vp_stage", "needs model.virtual_pipeline_model_parallel_size");
  if (m.virtual_pipeline_model_parallel_size && pp == 1)
    c.fail("model.virtual_pipeline_model_parallel_size", "needs model.pipeline_model_parallel_size > 1");
  check_pipeline(c);
  check_sequence_split(c);
  check_experts(c);
  check_batch(c);
}

}  // namespace mpt::config
