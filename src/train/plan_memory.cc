// One rank's memory on a pipeline stage, and the FLOPs of its micro-batches.
//
// Parameters, gradients and optimizer state: what each storage holds (optim/data_parallel.h)
// for the flat layout register_chunk gives the stage's chunks, fp32 throughout, plus the
// bf16 compute copies of mixed precision (one per resident unit; two unit-sized copies when
// parameters are sharded). Each allocation is rounded as the arenas round it.
//
// Activations: Korthikanti et al.'s per-layer formula (sbh(34 + 5as/h) bytes in 16 bits,
// over TP with sequence parallelism) written out for the tensors this engine keeps, per
// micro-batch in flight: the layer's input, both norms' outputs (and fp32 statistics), the
// rotated q, k, v and the attention output with its fp32 log-sum-exp (flash-style: no
// s x s probabilities), the residual after attention, and fc1's and the activation's
// outputs (or an MoE layer's routing and its experts' rows, reserved for the most rows a
// dropless or capacity-bounded exchange can bring). No dropout masks: they are regenerated.
// T = tokens of a micro-batch on this rank (seq / CP x micro-batch), R = the residual rows
// it holds (T / TP under sequence parallelism); widths are this rank's (heads, groups and
// ffn / TP). The chunk holding the loss runs its output layer, cross-entropy and their
// backward in forward, in row blocks of fp32 logits [C, vocab / TP] (GPTDims::loss_chunk;
// under bf16 their gradient goes to a bf16 block beside them, read by the output layer's GEMMs),
// and keeps only d(last layer's output) [R, H] per micro-batch; each chunk has one set of
// working buffers (gradients of one layer, the sequence-parallel gathers, the
// context-parallel ring's buffers, the loss's row block) shared by its micro-batches.
#include <algorithm>

#include "core/arena.h"
#include "model/moe_layer.h"
#include "train/plan_internal.h"

namespace mpt::train::planning {
namespace {

int64_t rounded(int64_t bytes) {
  const int64_t a = static_cast<int64_t>(Arena::kAlign);
  return (bytes + a - 1) / a * a;
}

// Adds up tensors as an arena plans them.
struct Tally {
  int64_t act_bytes;
  int64_t bytes = 0;
  void act(int64_t numel) { bytes += rounded(numel * act_bytes); }
  void f32(int64_t numel) { bytes += rounded(numel * 4); }
  void i32(int64_t numel) { bytes += rounded(numel * 4); }
};

int64_t numel(std::initializer_list<int64_t> shape) {
  int64_t n = 1;
  for (int64_t x : shape) n *= x;
  return n;
}

struct PartBytes {
  int64_t master = 0, compute = 0, grads = 0, optimizer = 0;
};

PartBytes part_bytes(const Context& c, const PartLayout& p) {
  PartBytes b;
  if (p.total == 0) return b;
  const bool fsdp = p.distributed && c.sharding == optim::Sharding::kOptimGradsParams;
  const bool sharded = p.distributed && c.sharding != optim::Sharding::kNoShard;
  const int64_t owned = sharded ? p.total / p.group : p.total;
  b.master = fsdp ? (owned + c.param_slots * p.max_unit) * 4 : p.total * 4;
  if (c.bf16) {
    // One copy per unit when parameters stay resident; else two unit-sized ones.
    b.compute = fsdp ? 2 * rounded(p.max_unit * 2) : p.unit_copies;
  }
  if (!p.distributed || c.sharding == optim::Sharding::kNoShard) {
    b.grads = p.total * 4;
  } else if (c.sharding == optim::Sharding::kOptim) {
    b.grads = (p.total + owned) * 4;
  } else {  // gradients of a unit live in a working buffer until reduce-scattered
    b.grads = (owned + c.grad_slots * (p.max_unit + p.max_unit / p.group)) * 4;
  }
  b.optimizer = 2 * rounded(owned * 4);
  return b;
}

// One micro-batch's saved tensors for the layers' attention halves and their MLP halves.
void attention_half(const model::GPTDims& d, Tally& t) {
  const int64_t T = d.tokens(), R = d.rows(), H = d.hidden;
  const int64_t stats = d.layernorm ? 2 : 1;  // mean and rstd, or rstd
  t.act(R * H);                               // norm1_out
  for (int64_t i = 0; i < stats; ++i) t.f32(R);
  t.act(T * d.attn_width());                  // q
  t.act(T * d.kv_width());                    // k
  t.act(T * d.kv_width());                    // v
  t.act(T * d.attn_width());                  // attention output
  t.f32(T * d.local_heads());                 // its log-sum-exp
  t.act(R * H);                               // residual after attention
  t.act(R * H);                               // norm2_out
  for (int64_t i = 0; i < stats; ++i) t.f32(R);
}

void mlp_half(const model::GPTDims& d, bool moe, Tally& t) {
  const int64_t T = d.tokens();
  if (!moe) {
    t.act(T * d.fc1_width());
    t.act(T * d.local_ffn());
    return;
  }
  // The reservation of model/moe_layer.h's plan_moe.
  model::MoeActs a;
  auto act = [&](Tensor&, std::initializer_list<int64_t> shape) { t.act(numel(shape)); };
  auto f32 = [&](Tensor&, std::initializer_list<int64_t> shape) { t.f32(numel(shape)); };
  model::plan_moe(d, a, act, f32, f32);
}

int64_t layer_bytes(const model::GPTDims& d, int64_t layer) {
  Tally t{static_cast<int64_t>(dtype_size(d.compute))};
  t.act(d.rows() * d.hidden);  // the layer's input (the residual stream)
  attention_half(d, t);
  mlp_half(d, d.is_moe_layer(layer), t);
  return t.bytes;
}

// Per micro-batch: d(last layer's output), computed in forward.
int64_t head_bytes(const model::GPTDims& d) {
  Tally t{static_cast<int64_t>(dtype_size(d.compute))};
  t.act(d.rows() * d.hidden);
  return t.bytes;
}

// Once per chunk: the final norm's output and statistics, one row block's logits and
// cross-entropy pieces, the loss accumulator.
int64_t head_working_bytes(const model::GPTDims& d) {
  Tally t{static_cast<int64_t>(dtype_size(d.compute))};
  const int64_t R = d.rows(), C = d.loss_chunk();
  t.act(R * d.hidden);
  for (int64_t i = 0; i < (d.layernorm ? 2 : 1); ++i) t.f32(R);
  t.f32(C * d.local_vocab());  // logits, fp32
  if (d.compute == DType::kBF16) t.act(C * d.local_vocab());  // d(logits), bf16
  t.f32(C);                    // row max
  t.f32(C);                    // token loss
  t.f32(2 * d.tokens());       // the micro-batch's per-token loss and gradient weights
  t.f32(2 * C);                // sums of exponentials, target logits
  t.f32(1);                    // the loss accumulator
  return t.bytes;
}

// The context-parallel exchange's workspace (parallel/context_parallel.h): the ring keeps two
// K/V blocks in flight forward and five packed K/V buffers backward, plus one partial output;
// all-gather holds the whole sequence's K/V (and their gradients backward).
int64_t cp_workspace_bytes(const model::GPTDims& d, int64_t cp, bool all_gather) {
  if (cp == 1) return 0;
  const int64_t T = d.tokens(), b = static_cast<int64_t>(dtype_size(d.compute));
  const int64_t kv = T * d.kv_width() * b;  // K (or V) of this rank
  int64_t fwd, bwd;
  if (all_gather) {
    fwd = 4 * cp * kv;
    bwd = 6 * cp * kv;
  } else {
    fwd = 2 * 2 * kv + T * d.attn_width() * b + T * d.local_heads() * 4;
    bwd = 5 * 2 * kv + T * d.attn_width() * b;
  }
  return rounded(std::max(fwd, bwd));
}

int64_t working_bytes(const Context& c, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  Tally t{c.act_bytes};
  const int64_t T = d.tokens(), R = d.rows(), H = d.hidden;
  t.i32(T);  // positions
  if (ch.layers.post_process) t.bytes += head_working_bytes(d);
  t.act(T * d.qkv_width());
  t.act(R * H);  // branch
  t.act(R * H);  // d(norm)
  t.act(T * d.local_ffn());
  t.act(T * d.fc1_width());
  t.act(T * d.attn_width());  // d(attention output)
  t.act(T * d.attn_width());  // dq
  t.act(T * d.kv_width());
  t.act(T * d.kv_width());
  if (d.sequence_parallel) {
    t.act(T * H);  // a gathered input
    t.act(T * H);  // a row-parallel output before its reduce-scatter
  }
  t.bytes += cp_workspace_bytes(d, c.cp, c.recipe.model.cp_comm_type == "all_gather");
  bool any_moe = false;
  for (int64_t l = ch.layers.begin; l < ch.layers.end; ++l) any_moe = any_moe || d.is_moe_layer(l);
  if (any_moe) {
    model::MoeScratch s;
    auto act = [&](Tensor&, std::initializer_list<int64_t> shape) { t.act(numel(shape)); };
    auto f32 = [&](Tensor&, std::initializer_list<int64_t> shape) { t.f32(numel(shape)); };
    model::plan_moe_scratch(d, s, act, f32, f32);
  }
  t.act(R * H);  // d(residual)
  return t.bytes;
}

// Per micro-batch in flight: inputs, the residual stream, every layer's saved tensors (under
// full recompute only the inputs of the layers it re-runs), the head's.
struct ChunkActivations {
  int64_t per_microbatch = 0, largest_layer = 0, head = 0, recompute_working = 0;
};

ChunkActivations chunk_activations(const Context& c, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  ChunkActivations a;
  Tally t{c.act_bytes};
  const int64_t T = d.tokens(), R = d.rows(), L = ch.layers.count();
  for (int i = 0; i < 3; ++i) t.i32(T);  // ids, labels, loss mask
  const int64_t residual = rounded(R * d.hidden * c.act_bytes);
  std::vector<int64_t> layers;
  for (int64_t l = ch.layers.begin; l < ch.layers.end; ++l) {
    layers.push_back(layer_bytes(d, l) - residual);  // the input is counted with the stream
    a.largest_layer = std::max(a.largest_layer, layers.back() + residual);
  }
  int64_t kept = 0, stream = L + 1;
  const int64_t n = std::max<int64_t>(c.recompute_num_layers, 1);
  if (c.recompute_granularity == "full" && c.recompute_method == "uniform") {
    // Groups of n layers keep only their input; backward re-runs one group at a time.
    // The re-run's tensors go to one region all micro-batches share: the largest group's
    // layers with the inputs of all but its first.
    stream = (L + n - 1) / n + 1;
    for (int64_t g = 0; g < L; g += n) {
      int64_t group = 0;
      for (int64_t i = g; i < std::min(g + n, L); ++i) group += layers[static_cast<size_t>(i)] + (i > g ? residual : 0);
      a.recompute_working = std::max(a.recompute_working, group);
    }
  } else if (c.recompute_granularity == "full") {
    // block: the first n layers keep only their input; one of them at a time is re-run, in a
    // region the size of the largest.
    for (int64_t i = std::min(n, L); i < L; ++i) kept += layers[static_cast<size_t>(i)];
    for (int64_t i = 0; i < std::min(n, L); ++i)
      a.recompute_working = std::max(a.recompute_working, layers[static_cast<size_t>(i)]);
  } else {
    // Selective recompute is not modelled: planned as keeping everything (an upper bound).
    for (int64_t x : layers) kept += x;
  }
  if (ch.layers.post_process) a.head = head_bytes(d);
  a.per_microbatch = t.bytes + stream * residual + kept + a.head;
  return a;
}

}  // namespace

MemoryPlan stage_memory(const Context& c, const std::vector<ChunkModel>& chunks, const std::vector<int64_t>& in_flight) {
  MemoryPlan m;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const ChunkModel& ch = chunks[k];
    m.parameters += ch.reg.num_parameters() + ch.expert_reg.num_parameters();
    m.expert_parameters += ch.expert_reg.num_parameters();
    for (const model::ParamInfo& p : ch.reg.params())
      if (p.pipeline_copy) m.parameters -= p.numel;  // the tied output layer's copy is counted once, on stage 0
    const PartBytes dense = part_bytes(c, dense_part(c, ch));
    const PartBytes experts = part_bytes(c, expert_part(c, ch));
    m.params_master += dense.master + experts.master;
    m.params_compute += dense.compute + experts.compute;
    m.expert_params += experts.master + experts.compute;
    m.grads += dense.grads + experts.grads;
    m.optimizer += dense.optimizer + experts.optimizer;

    const ChunkActivations a = chunk_activations(c, ch);
    const int64_t working = working_bytes(c, ch) + a.recompute_working;
    m.activations += in_flight[k] * a.per_microbatch + working;
    m.layer_activations = std::max(m.layer_activations, a.largest_layer);
    m.head_activations = std::max(m.head_activations, a.head);
    m.working_buffers += working;
  }
  m.chunk_in_flight = in_flight;
  m.in_flight = *std::max_element(in_flight.begin(), in_flight.end());
  return m;
}

ChunkFlops chunk_flops(const Context& c, const ChunkModel& ch, int64_t recompute_layers) {
  const model::GPTDims& d = c.dims;
  const double T = static_cast<double>(d.tokens()), R = static_cast<double>(d.rows());
  const double H = static_cast<double>(d.hidden);
  // Causal attention over the whole sequence, split evenly over CP ranks and over heads:
  // QK^T and PV, 2 x 2 x D FLOPs per (query, key) pair, s^2 / 2 pairs per sequence.
  const double S = static_cast<double>(d.seq);
  const double attention = 2.0 * static_cast<double>(d.micro_batch * d.local_heads() * d.head_dim) * S * S /
                           static_cast<double>(c.cp);
  ChunkFlops f;
  for (int64_t l = ch.layers.begin; l < ch.layers.end; ++l) {
    double layer = 2 * T * H * static_cast<double>(d.qkv_width() + d.attn_width()) + attention;
    if (d.is_moe_layer(l)) {
      const double k = static_cast<double>(d.moe_topk), g = static_cast<double>(d.moe_group());
      // Each expert-parallel rank's experts run a share 1/EP of the group's choices, each of
      // its ETP ranks over its slice of the hidden units.
      const double rows = g * R * k / static_cast<double>(d.ep);
      layer += 2 * R * H * static_cast<double>(d.num_experts);
      layer += 2 * rows * H * static_cast<double>(d.moe_fc1_width() + d.local_moe_ffn());
      layer += 2 * T * H * static_cast<double>(d.shared_fc1_width() + d.local_shared_ffn());
    } else {
      layer += 2 * T * H * static_cast<double>(d.fc1_width() + d.local_ffn());
    }
    f.forward += layer;
    f.attention += attention;
    if (l - ch.layers.begin < recompute_layers) f.recompute += layer;
  }
  if (ch.layers.post_process) f.forward += 2 * T * H * static_cast<double>(d.local_vocab());
  return f;
}

}  // namespace mpt::train::planning
