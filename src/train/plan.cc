// The plan of one recipe: its sizes as the engine builds them (Context), every stage's
// memory and traffic, and the time model that turns them into a step time and MFU.
//
// Time model, per pipeline stage and micro-batch: compute = 3 x forward FLOPs (forward +
// backward; recomputed forwards added) at peak x compute_efficiency; tensor-parallel,
// expert (token exchange) and pipeline messages wait in full (the engine does not overlap
// them with compute); the context-parallel ring overlaps the attention cores it feeds, and
// per-micro-batch data-parallel traffic (ZeRO-2/3) the micro-batch's compute. The pipeline
// runs M micro-batches plus (P - 1) / V bubble slots of the slowest stage. After backward,
// the gradient reduction overlaps the last micro-batch's backward when
// ddp.overlap_grad_reduce is on; parameter all-gathers after the optimizer step and the
// tied-embedding reduction wait in full. Collectives cost bytes / bandwidth (inter-node
// when their group spans nodes) plus a fixed latency each. The optimizer's own step is not
// modelled.
#include "train/plan.h"

#include <algorithm>
#include <numeric>

#include "core/arena.h"
#include "core/error.h"
#include "train/plan_internal.h"

namespace mpt::train {

double default_peak_flops(bool bf16) { return bf16 ? 989e12 : 67e12; }

namespace planning {
namespace {

dist::ParallelSizes sizes_of(const config::Recipe& r) {
  dist::ParallelSizes s;
  s.world = r.derived.world_size;
  s.tp = r.model.tensor_model_parallel_size;
  s.cp = r.model.context_parallel_size;
  s.pp = r.model.pipeline_model_parallel_size;
  if (r.model.num_moe_experts) {
    s.ep = r.model.expert_model_parallel_size;
    s.etp = r.derived.expert_tensor_parallel_size;
  }
  return s;
}

}  // namespace

Context::Context(const config::Recipe& r, const Hardware& hardware)
    : recipe(r), hw(hardware), dims(model::make_dims(r)), layout(sizes_of(r)) {
  const config::ModelConfig& m = r.model;
  world = r.derived.world_size;
  tp = m.tensor_model_parallel_size;
  cp = m.context_parallel_size;
  pp = m.pipeline_model_parallel_size;
  vpp = m.virtual_pipeline_model_parallel_size.value_or(1);
  ep = dims.ep;
  etp = dims.num_experts > 0 ? dims.etp : 1;
  dp = layout.dp();
  edp = layout.edp();
  dp_cp = dp * cp;
  microbatches = r.derived.num_microbatches;
  bf16 = config::uses_bf16(r);
  act_bytes = static_cast<int64_t>(dtype_size(dims.compute));
  // As the engine configures its data-parallel storage: the distributed optimizer is
  // ZeRO-1 unless a stronger strategy is named; Megatron's default bucket size.
  sharding = optim::parse_sharding(r.ddp.data_parallel_sharding_strategy);
  const bool dist_opt = r.ddp.use_distributed_optimizer || r.optimizer.use_distributed_optimizer;
  if (dist_opt && sharding == optim::Sharding::kNoShard) sharding = optim::Sharding::kOptim;
  bucket_numel = r.ddp.bucket_size ? *r.ddp.bucket_size : std::max<int64_t>(40000000, 1000000 * dp_cp);
  if (dims.tied_output) param_slots = grad_slots = 3;
  schedule.stages = pp;
  schedule.chunks = vpp;
  schedule.microbatches = microbatches;
  schedule.group = m.microbatch_group_size_per_vp_stage.value_or(0);
  schedule.kind = pp == 1 ? parallel::ScheduleKind::kNone
                  : vpp > 1 ? parallel::ScheduleKind::kInterleaved
                            : parallel::ScheduleKind::k1F1B;
  recompute_granularity = m.recompute_granularity.value_or("");
  recompute_method = m.recompute_method.value_or("");
  recompute_num_layers = m.recompute_num_layers.value_or(0);
}

std::vector<ChunkModel> Context::chunks(int64_t stage) const {
  const config::ModelConfig& m = recipe.model;
  const parallel::PipelineSplit split{dims.num_layers, pp, vpp, m.num_layers_in_first_pipeline_stage,
                                      m.num_layers_in_last_pipeline_stage};
  // The engine aligns units to its data-parallel groups when it has them (world > 1).
  const int64_t align = world > 1 ? model::ParamRegistry::kAlign * dp_cp : model::ParamRegistry::kAlign;
  const int64_t expert_align = world > 1 ? model::ParamRegistry::kAlign * edp : model::ParamRegistry::kAlign;
  std::vector<ChunkModel> out(static_cast<size_t>(vpp));
  for (int64_t c = 0; c < vpp; ++c) {
    ChunkModel& ch = out[static_cast<size_t>(c)];
    ch.layers = parallel::chunk_layers(split, stage, c);
    const model::ExpertLayout experts{&ch.expert_reg, &ch.expert_units, expert_align};
    model::register_chunk(ch.reg, ch.units, dims, ch.layers, align, &experts);
  }
  return out;
}

std::vector<int64_t> Context::in_flight(int64_t stage) const {
  return parallel::in_flight_per_chunk(parallel::pipeline_schedule(schedule, stage), vpp);
}

bool Context::crosses_nodes(dist::GroupKind kind) const {
  const int64_t per_node = std::max<int64_t>(hw.gpus_per_node, 1);
  for (const std::vector<int64_t>& g : layout.groups(kind))
    for (int64_t rank : g)
      if (rank / per_node != g.front() / per_node) return true;
  return false;
}

namespace {

PartLayout part_of(const std::vector<model::ParamUnit>& units, int64_t group, bool distributed) {
  PartLayout p;
  p.group = group;
  p.distributed = distributed;
  for (const model::ParamUnit& u : units) {
    p.total += u.numel();
    p.max_unit = std::max(p.max_unit, u.numel());
    ++p.units;
    p.unit_copies += (u.numel() * 2 + static_cast<int64_t>(Arena::kAlign) - 1) / static_cast<int64_t>(Arena::kAlign) *
                     static_cast<int64_t>(Arena::kAlign);
  }
  return p;
}

}  // namespace

PartLayout dense_part(const Context& c, const ChunkModel& chunk) { return part_of(chunk.units, c.dp_cp, c.world > 1); }

PartLayout expert_part(const Context& c, const ChunkModel& chunk) {
  return part_of(chunk.expert_units, c.edp, c.world > 1);
}

}  // namespace planning

namespace {

using planning::ChunkModel;
using planning::Context;

std::string layer_range(const parallel::ChunkLayers& l) {
  if (l.count() == 0) return "[]";
  if (l.count() == 1) return str("[", l.begin, "]");
  return str("[", l.begin, "-", l.end - 1, "]");
}

// Layers of a chunk whose forward runs twice under full recompute.
int64_t recomputed_layers(const Context& c, int64_t layers) {
  if (c.recompute_granularity != "full") return 0;
  if (c.recompute_method == "block") return std::min(c.recompute_num_layers, layers);
  return layers;
}

// The stage's FLOPs per micro-batch on one rank: forward, its attention cores, recomputed forwards.
planning::ChunkFlops stage_flops(const Context& c, const std::vector<ChunkModel>& chunks) {
  planning::ChunkFlops sum;
  for (const ChunkModel& ch : chunks) {
    const planning::ChunkFlops f = planning::chunk_flops(c, ch, recomputed_layers(c, ch.layers.count()));
    sum.forward += f.forward;
    sum.attention += f.attention;
    sum.recompute += f.recompute;
  }
  return sum;
}

void time_stages(const Context& c, const std::vector<planning::ChunkFlops>& per_stage, Plan& plan) {
  const Hardware& hw = c.hw;
  const double rate = hw.peak_flops * hw.compute_efficiency;
  const double M = static_cast<double>(c.microbatches);
  double slowest = 0, tail = 0;
  for (StagePlan& s : plan.stages) {
    const double forward = per_stage[static_cast<size_t>(s.stage)].forward;
    const double attention = per_stage[static_cast<size_t>(s.stage)].attention;
    const double recompute = per_stage[static_cast<size_t>(s.stage)].recompute;
    s.forward_flops = forward;
    const double compute = (3 * forward + recompute) / rate;
    s.compute_seconds = compute;
    double exposed_mb = 0, stage_tail = 0;
    for (CommPlan& x : s.comm) {
      if (x.phase == "microbatch") {
        double hide = 0;  // compute the traffic runs beside
        if (x.dim == "cp" && c.recipe.model.cp_comm_type == "p2p") hide = 3 * attention / rate;
        if (x.dim == "dp" || x.dim == "edp") hide = compute;
        x.exposed_seconds = M * std::max(0.0, x.seconds / M - hide);
        exposed_mb += x.exposed_seconds / M;
      } else if (x.phase == "grad-sync") {
        const double hide = c.recipe.ddp.overlap_grad_reduce ? 2 * forward / rate : 0;
        x.exposed_seconds = std::max(0.0, x.seconds - hide);
        stage_tail += x.exposed_seconds;
      } else {
        x.exposed_seconds = x.seconds;
        stage_tail += x.exposed_seconds;
      }
    }
    s.microbatch_seconds = compute + exposed_mb;
    slowest = std::max(slowest, s.microbatch_seconds);
    tail = std::max(tail, stage_tail);
  }
  TimePlan& t = plan.time;
  const double P = static_cast<double>(c.pp), V = static_cast<double>(c.vpp);
  t.bubble_fraction = c.pp > 1 ? (P - 1) / (V * M) : 0;
  t.pipeline_seconds = (M + (P - 1) / V) * slowest;
  t.tail_seconds = tail;
  t.step_seconds = t.pipeline_seconds + tail;
  // Every rank of a stage does its share of that stage's work; recompute is not model work.
  double flops = 0;
  for (const StagePlan& s : plan.stages) flops += 3 * s.forward_flops;
  t.model_flops = flops * M * static_cast<double>(c.world / c.pp);
  const double tokens = static_cast<double>(plan.global_batch * plan.seq);
  if (t.step_seconds > 0) {
    t.tokens_per_second = tokens / t.step_seconds;
    t.mfu = t.model_flops / (t.step_seconds * static_cast<double>(c.world) * hw.peak_flops);
  }
}

std::string describe_recompute(const config::ModelConfig& m) {
  if (!m.recompute_granularity) return "";
  if (*m.recompute_granularity == "selective") {
    std::string modules;
    for (const std::string& s : m.recompute_modules) modules += (modules.empty() ? "" : ", ") + s;
    return str("selective (", modules.empty() ? "core_attn" : modules, ")");
  }
  const int64_t n = m.recompute_num_layers.value_or(1);
  if (m.recompute_method.value_or("uniform") == "block")
    return str("full (block: the first ", n, n == 1 ? " layer" : " layers", " of each chunk)");
  return str("full (uniform: groups of ", n, n == 1 ? " layer" : " layers", ")");
}

}  // namespace

int64_t Plan::peak_stage() const {
  int64_t best = 0;
  for (const StagePlan& s : stages)
    if (s.memory.total() > stages[static_cast<size_t>(best)].memory.total()) best = s.stage;
  return best;
}

bool Plan::fits() const {
  return !stages.empty() &&
         static_cast<double>(stages[static_cast<size_t>(peak_stage())].memory.total()) <= hardware.gpu_memory_bytes;
}

Plan make_plan(const config::Recipe& recipe, const Hardware& hardware) {
  MPT_CHECK(recipe.finalized, Status::kInvalidConfig, "plan: the recipe ", recipe.path, " is not finalized");
  const Context c(recipe, hardware);
  Plan plan;
  plan.recipe = recipe.path;
  plan.sizes = c.layout.sizes();
  plan.sizes.etp = c.layout.etp();
  plan.dp = c.dp;
  plan.edp = c.edp;
  plan.vpp = c.vpp;
  plan.sequence_parallel = c.dims.sequence_parallel;
  plan.sharding = c.world > 1 ? optim::sharding_name(c.sharding) : "no_shard";
  plan.precision = c.bf16 ? "bf16 mixed" : "fp32";
  plan.micro_batch = c.dims.micro_batch;
  plan.microbatches = c.microbatches;
  plan.global_batch = c.dims.micro_batch * c.microbatches * c.dp;
  plan.seq = c.dims.seq;
  plan.recompute = describe_recompute(recipe.model);
  plan.hardware = hardware;

  const model::ParamRegistry whole = model::whole_model_registry(c.dims);
  plan.parameters = whole.num_parameters();
  plan.active_parameters = plan.parameters;
  if (c.dims.num_experts > 0) {
    int64_t experts = 0;
    for (const model::ParamInfo& p : whole.params())
      if (p.name.find(".mlp.experts.") != std::string::npos) experts += p.numel;
    plan.active_parameters = plan.parameters - experts + experts * c.dims.moe_topk / c.dims.num_experts;
  }

  std::vector<planning::ChunkFlops> flops;
  for (int64_t stage = 0; stage < c.pp; ++stage) {
    StagePlan s;
    s.stage = stage;
    const std::vector<ChunkModel> chunks = c.chunks(stage);
    for (const ChunkModel& ch : chunks) {
      s.layers += ch.layers.count();
      s.chunks.push_back(layer_range(ch.layers));
      s.pre_process = s.pre_process || ch.layers.pre_process;
      s.post_process = s.post_process || ch.layers.post_process;
    }
    const std::vector<int64_t> in_flight = c.in_flight(stage);
    s.in_flight = *std::max_element(in_flight.begin(), in_flight.end());
    s.memory = planning::stage_memory(c, chunks, in_flight);
    s.comm = planning::stage_comm(c, stage, chunks);
    flops.push_back(stage_flops(c, chunks));
    plan.stages.push_back(std::move(s));
  }
  time_stages(c, flops, plan);
  return plan;
}

config::Recipe finalized_for_plan(const config::Recipe& recipe, int64_t world, std::string* recompute) {
  config::Recipe r = recipe;
  config::ModelConfig& m = r.model;
  // The engine refuses activation recompute (not built yet); the planner models it, so its
  // keys sit out finalize() and come back after. Their own consistency is checked here.
  const config::ModelConfig kept = m;
  if (m.recompute_granularity == "full") {
    MPT_CHECK(m.recompute_method && m.recompute_num_layers, Status::kInvalidConfig, r.path,
              ": model.recompute_granularity: \"full\" needs model.recompute_method and model.recompute_num_layers");
  }
  m.recompute_granularity.reset();
  m.recompute_method.reset();
  m.recompute_num_layers.reset();
  m.recompute_modules.clear();
  config::finalize(r, world);
  r.model.recompute_granularity = kept.recompute_granularity;
  r.model.recompute_method = kept.recompute_method;
  r.model.recompute_num_layers = kept.recompute_num_layers;
  r.model.recompute_modules = kept.recompute_modules;
  if (recompute) *recompute = describe_recompute(r.model);
  return r;
}

Plan plan_recipe(const config::Recipe& recipe, int64_t world, const Hardware& hardware) {
  return make_plan(finalized_for_plan(recipe, world), hardware);
}

int64_t smallest_world(const config::Recipe& recipe) {
  const config::ModelConfig& m = recipe.model;
  const auto size = [](int64_t n) { return std::max<int64_t>(n, 1); };
  const int64_t dense = size(m.tensor_model_parallel_size) * size(m.pipeline_model_parallel_size) *
                        size(m.context_parallel_size);
  if (!m.num_moe_experts) return dense;
  const int64_t expert = size(m.expert_tensor_parallel_size.value_or(m.tensor_model_parallel_size)) *
                         size(m.expert_model_parallel_size) * size(m.pipeline_model_parallel_size);
  return std::lcm(dense, expert);
}

}  // namespace mpt::train
