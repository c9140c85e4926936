// What one rank of a pipeline stage sends per step over each parallel dimension, as the
// engine's code issues it (collectives are rings: an all-reduce sends 2(n-1)/n of the data,
// a reduce-scatter or all-gather (n-1)/n of the whole). T = tokens of a micro-batch on this
// rank, R its residual rows, b the compute dtype's bytes, M micro-batches per step.
//
//   dp   the dense parameters' data-parallel storage over dp-cp (optim/data_parallel.h):
//        no_shard all-reduces gradients once per step; optim reduce-scatters them and
//        all-gathers the updated parameters; optim_grads reduce-scatters every unit's
//        gradients each micro-batch; optim_grads_params also all-gathers every unit before
//        its forward and its backward. All fp32.
//   edp  the same for the experts over the expert-data-parallel group.
//   tp   per layer and micro-batch: each of the two tensor-parallel regions (attention, MLP or
//        shared expert) all-reduces its output forward and its input gradient backward, or
//        under sequence parallelism all-gathers its input, reduce-scatters its output,
//        all-gathers the output gradient and the input again and reduce-scatters the input
//        gradient; the embedding and output layer likewise, the cross-entropy's row max and
//        sums (fp32); the sequence-parallel parameters' gradients once per step.
//   cp   per layer and micro-batch (parallel/context_parallel.h): ring forward (CP-1) x KV,
//        backward (CP-1) x KV + CP x KV; all-gather forward (CP-1) x KV, backward
//        2(CP-1) x KV; KV = 2 x T x kv_width x b.
//   ep   per MoE layer and micro-batch over etp-ep (g ranks): allgather gathers every rank's
//        rows, routing and probabilities and reduce-scatters the outputs (and the reverse
//        backward); alltoall sends each routed row to the ETP ranks of its expert's EP rank,
//        (g-1)/EP copies per row on average with balanced routing, four times.
//   pp   each forward of a chunk that is not the last virtual stage sends [R, H] on, each
//        backward of one that is not the first sends [R, H] back.
//   embedding  an output layer tied to the embedding on another stage: its fp32 gradient
//        all-reduced between the first and last stage (not in the engine's counters).
// Scalars (loss, gradient norm, MoE statistics) are left out.
#include <algorithm>
#include <map>
#include <utility>

#include "train/plan_internal.h"

namespace mpt::train::planning {
namespace {

using Range = std::pair<int64_t, int64_t>;

// DataParallel's buckets: whole units, built from the last unit, each grown while smaller
// than the bucket size unless gradients are reduced unit by unit.
std::vector<Range> buckets(const std::vector<model::ParamUnit>& units, int64_t bucket_numel, bool per_unit) {
  std::vector<Range> reversed;
  for (auto u = units.rbegin(); u != units.rend(); ++u) {
    if (!reversed.empty() && !per_unit && reversed.back().second - reversed.back().first < bucket_numel)
      reversed.back().first = u->begin;
    else
      reversed.push_back({u->begin, u->end});
  }
  return {reversed.rbegin(), reversed.rend()};
}

class Builder {
 public:
  Builder(const Context& c) : c_(c) {}

  void add(const std::string& dim, dist::GroupKind kind, int64_t group_size, const std::string& what, double bytes,
           int64_t messages, const char* phase) {
    if (group_size <= 1 || bytes <= 0) return;
    const std::string key = dim + "|" + what;
    auto it = index_.find(key);
    if (it == index_.end()) {
      CommPlan p;
      p.dim = dim;
      p.group = dist::group_kind_name(kind);
      p.group_size = group_size;
      p.what = what;
      p.phase = phase;
      p.crosses_nodes = crossing(kind);
      it = index_.emplace(key, out_.size()).first;
      out_.push_back(p);
    }
    CommPlan& p = out_[it->second];
    p.bytes += static_cast<int64_t>(bytes + 0.5);
    p.messages += messages;
  }

  std::vector<CommPlan> finish() {
    for (CommPlan& p : out_)
      p.seconds = static_cast<double>(p.bytes) / c_.bandwidth(p.crosses_nodes) +
                  static_cast<double>(p.messages) * c_.hw.collective_latency_s;
    return std::move(out_);
  }

 private:
  bool crossing(dist::GroupKind kind) {
    auto it = crosses_.find(kind);
    if (it == crosses_.end()) it = crosses_.emplace(kind, c_.crosses_nodes(kind)).first;
    return it->second;
  }
  const Context& c_;
  std::vector<CommPlan> out_;
  std::map<std::string, size_t> index_;
  std::map<dist::GroupKind, bool> crosses_;
};

// One data-parallel storage (a chunk's dense parameters or its experts).
void data_parallel(const Context& c, Builder& b, const char* dim, dist::GroupKind kind, const PartLayout& p,
                   const std::vector<model::ParamUnit>& units) {
  if (!p.distributed || p.group <= 1 || p.total == 0) return;
  const int64_t n = p.group;
  const double M = static_cast<double>(c.microbatches);
  const double whole = static_cast<double>(p.total) * 4;
  const bool per_unit = c.sharding == optim::Sharding::kOptimGrads || c.sharding == optim::Sharding::kOptimGradsParams;
  const int64_t nb = static_cast<int64_t>(buckets(units, c.bucket_numel, per_unit).size());
  switch (c.sharding) {
    case optim::Sharding::kNoShard:
      b.add(dim, kind, n, "all-reduce gradients", all_reduce_bytes(whole, n), nb, "grad-sync");
      break;
    case optim::Sharding::kOptim:
      b.add(dim, kind, n, "reduce-scatter gradients", gather_bytes(whole, n), nb, "grad-sync");
      b.add(dim, kind, n, "all-gather parameters", gather_bytes(whole, n), nb, "after-step");
      break;
    case optim::Sharding::kOptimGrads:
      b.add(dim, kind, n, "reduce-scatter gradients per micro-batch", M * gather_bytes(whole, n),
            c.microbatches * nb, "microbatch");
      b.add(dim, kind, n, "all-gather parameters", gather_bytes(whole, n), nb, "after-step");
      break;
    case optim::Sharding::kOptimGradsParams:
      b.add(dim, kind, n, "all-gather parameters per forward and backward", 2 * M * gather_bytes(whole, n),
            2 * c.microbatches * nb, "microbatch");
      b.add(dim, kind, n, "reduce-scatter gradients per micro-batch", M * gather_bytes(whole, n),
            c.microbatches * nb, "microbatch");
      break;
  }
}

// Elements of sequence-parallel parameters among the first rank's owned ranges.
int64_t owned_sequence_parallel(const Context& c, const ChunkModel& ch) {
  const bool sharded = c.world > 1 && c.sharding != optim::Sharding::kNoShard;
  const bool per_unit = c.sharding == optim::Sharding::kOptimGrads || c.sharding == optim::Sharding::kOptimGradsParams;
  std::vector<Range> owned;
  if (!sharded) {
    owned.push_back({0, ch.reg.total_numel()});
  } else {
    for (const Range& r : buckets(ch.units, c.bucket_numel, per_unit))
      owned.push_back({r.first, r.first + (r.second - r.first) / c.dp_cp});
  }
  int64_t n = 0;
  for (const model::ParamInfo& p : ch.reg.params()) {
    if (!p.sequence_parallel) continue;
    for (const Range& r : owned) n += std::max<int64_t>(0, std::min(r.second, p.offset + p.numel) - std::max(r.first, p.offset));
  }
  return n;
}

void tensor_parallel(const Context& c, Builder& b, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  const int64_t t = c.tp;
  if (t <= 1) return;
  const double M = static_cast<double>(c.microbatches);
  const double U = static_cast<double>(d.tokens() * d.hidden * c.act_bytes);  // one [T, H] activation
  const double g = static_cast<double>(t - 1) / static_cast<double>(t);
  const bool sp = d.sequence_parallel;
  const auto kind = dist::GroupKind::kTp;
  int64_t regions = 0;
  for (int64_t l = ch.layers.begin; l < ch.layers.end; ++l) regions += d.is_moe_layer(l) && d.shared_ffn == 0 ? 1 : 2;
  const double region_units = sp ? 5 : 4;  // in U x (t-1)/t
  b.add("tp", kind, t, sp ? "all-gather / reduce-scatter activations" : "all-reduce activations",
        M * static_cast<double>(regions) * region_units * g * U, c.microbatches * regions * (sp ? 5 : 2), "microbatch");
  if (ch.layers.pre_process)
    b.add("tp", kind, t, sp ? "all-gather / reduce-scatter activations" : "all-reduce activations",
          M * (sp ? 2 : 2) * g * U, c.microbatches * (sp ? 2 : 1), "microbatch");
  if (ch.layers.post_process) {
    b.add("tp", kind, t, sp ? "all-gather / reduce-scatter activations" : "all-reduce activations",
          M * (sp ? 3 : 2) * g * U, c.microbatches * (sp ? 3 : 1), "microbatch");
    b.add("tp", kind, t, "all-reduce cross-entropy pieces (fp32)",
          M * all_reduce_bytes(3.0 * static_cast<double>(d.tokens()) * 4, t), 2 * c.microbatches, "microbatch");
  }
  if (sp && c.world > 1) {
    const int64_t n = owned_sequence_parallel(c, ch);
    if (n > 0)
      b.add("tp", kind, t, "all-reduce sequence-parallel gradients", all_reduce_bytes(static_cast<double>(n) * 4, t),
            1, "after-step");
  }
}

void context_parallel(const Context& c, Builder& b, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  const int64_t cp = c.cp, L = ch.layers.count();
  if (cp <= 1 || L == 0) return;
  const double M = static_cast<double>(c.microbatches);
  const double kv = 2.0 * static_cast<double>(d.tokens() * d.kv_width() * c.act_bytes);
  if (c.recipe.model.cp_comm_type == "all_gather") {
    b.add("cp", dist::GroupKind::kCp, cp, "all-gather K/V, reduce-scatter their gradients",
          M * static_cast<double>(L) * 3 * static_cast<double>(cp - 1) * kv, c.microbatches * L * 3, "microbatch");
  } else {
    b.add("cp", dist::GroupKind::kCp, cp, "ring K/V and their gradients (send/recv)",
          M * static_cast<double>(L) * (2 * static_cast<double>(cp - 1) + static_cast<double>(cp)) * kv,
          c.microbatches * L * (3 * cp - 2), "microbatch");
  }
}

void expert_parallel(const Context& c, Builder& b, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  const int64_t g = d.moe_group();
  if (d.num_experts == 0 || g <= 1) return;
  int64_t moe_layers = 0;
  for (int64_t l = ch.layers.begin; l < ch.layers.end; ++l) moe_layers += d.is_moe_layer(l) ? 1 : 0;
  if (moe_layers == 0) return;
  const double M = static_cast<double>(c.microbatches), per = M * static_cast<double>(moe_layers);
  const double R = static_cast<double>(d.rows()), H = static_cast<double>(d.hidden);
  const double k = static_cast<double>(d.moe_topk), bytes = static_cast<double>(c.act_bytes);
  const double counts = static_cast<double>((g - 1) * d.num_experts * 8);  // every rank's rows per expert
  const auto kind = dist::GroupKind::kEtpEp;
  if (d.alltoall) {
    const double rows = static_cast<double>(d.max_expert_rows(d.rows()));
    const double copies = static_cast<double>(g - 1) / static_cast<double>(d.ep);
    b.add("ep", kind, g, "all-to-all routed rows (balanced routing)", per * (counts + 4 * rows * H * bytes * copies),
          c.microbatches * moe_layers * 5, "microbatch");
  } else {
    const double gm1 = static_cast<double>(g - 1);
    b.add("ep", kind, g, "all-gather tokens, reduce-scatter outputs",
          per * (counts + gm1 * (4 * R * H * bytes + 4 * R * k * 4)), c.microbatches * moe_layers * 9, "microbatch");
  }
}

void pipeline(const Context& c, Builder& b, int64_t stage, const std::vector<ChunkModel>& chunks) {
  if (c.pp <= 1) return;
  const double msg = static_cast<double>(c.dims.rows() * c.dims.hidden * c.act_bytes);
  const int64_t last = c.pp * c.vpp - 1;
  int64_t sends = 0;
  for (int64_t ch = 0; ch < static_cast<int64_t>(chunks.size()); ++ch) {
    const int64_t v = ch * c.pp + stage;
    if (v < last) sends += c.microbatches;
    if (v > 0) sends += c.microbatches;
  }
  b.add("pp", dist::GroupKind::kPp, c.pp, "send activations and their gradients", static_cast<double>(sends) * msg,
        sends, "microbatch");
}

void tied_embedding(const Context& c, Builder& b, const ChunkModel& ch) {
  const model::GPTDims& d = c.dims;
  if (!d.tied_output || c.pp <= 1 || !(ch.layers.pre_process || ch.layers.post_process) || c.world <= 1) return;
  const double bytes = static_cast<double>(d.local_vocab() * d.hidden) * 4;
  b.add("embedding", dist::GroupKind::kEmbedding, 2, "all-reduce the tied embedding's gradient", bytes, 1,
        "after-step");
  if (c.sharding == optim::Sharding::kNoShard || c.dp_cp <= 1) return;
  // A sharded gradient is gathered over dp-cp first: its whole bucket.
  const int i = ch.reg.find("embedding.word_embeddings.weight");
  const model::ParamInfo& p = ch.reg.at(i);
  const bool per_unit = c.sharding == optim::Sharding::kOptimGrads || c.sharding == optim::Sharding::kOptimGradsParams;
  for (const Range& r : buckets(ch.units, c.bucket_numel, per_unit))
    if (r.first <= p.offset && p.offset < r.second)
      b.add("dp", dist::GroupKind::kDpCp, c.dp_cp, "all-gather the tied embedding's gradient bucket",
            gather_bytes(static_cast<double>(r.second - r.first) * 4, c.dp_cp), 1, "after-step");
}

}  // namespace

std::vector<CommPlan> stage_comm(const Context& c, int64_t stage, const std::vector<ChunkModel>& chunks) {
  Builder b(c);
  for (const ChunkModel& ch : chunks) data_parallel(c, b, "dp", dist::GroupKind::kDpCp, dense_part(c, ch), ch.units);
  for (const ChunkModel& ch : chunks) tied_embedding(c, b, ch);
  for (const ChunkModel& ch : chunks)
    data_parallel(c, b, "edp", dist::GroupKind::kEdp, expert_part(c, ch), ch.expert_units);
  for (const ChunkModel& ch : chunks) tensor_parallel(c, b, ch);
  for (const ChunkModel& ch : chunks) context_parallel(c, b, ch);
  for (const ChunkModel& ch : chunks) expert_parallel(c, b, ch);
  pipeline(c, b, stage, chunks);
  return b.finish();
}

}  // namespace mpt::train::planning
