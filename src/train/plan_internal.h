// The planner's shared state: one recipe's sizes as the engine would build them, and the
// model chunks each pipeline stage holds, registered by the model's own code. Internal to
// the plan_*.cc files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "dist/parallel_state.h"
#include "model/gpt_dims.h"
#include "model/gpt_model.h"
#include "optim/data_parallel.h"
#include "parallel/pipeline_layout.h"
#include "parallel/pipeline_schedule.h"
#include "train/plan.h"

namespace mpt::train::planning {

// One model chunk of a stage as the engine registers it: its layers, the flat layout of its
// dense parameters and of its experts, each cut into units.
struct ChunkModel {
  parallel::ChunkLayers layers;
  model::ParamRegistry reg, expert_reg;
  std::vector<model::ParamUnit> units, expert_units;
};

// A sharded part's sizes: the dense parameters over dp-cp, or the experts over edp.
struct PartLayout {
  int64_t total = 0;      // flat elements, alignment padding included
  int64_t max_unit = 0;   // the largest unit
  int64_t units = 0;
  int64_t unit_copies = 0;   // bf16 copies of every unit, each rounded as its arena rounds it
  int64_t group = 1;      // ranks the data-parallel storage shards over
  bool distributed = false;  // held by a data-parallel storage (world > 1), else resident
};

struct Context {
  Context(const config::Recipe& recipe, const Hardware& hardware);

  const config::Recipe& recipe;
  Hardware hw;
  model::GPTDims dims;            // rank 0's view; every rank's sizes are the same
  dist::ParallelState layout;
  int64_t world = 1, tp = 1, cp = 1, pp = 1, vpp = 1, ep = 1, etp = 1, dp = 1, edp = 1;
  int64_t dp_cp = 1;              // the dense data-parallel group: DP x CP
  int64_t microbatches = 1;
  bool bf16 = false;
  int64_t act_bytes = 4;          // the compute dtype's bytes
  optim::Sharding sharding = optim::Sharding::kNoShard;
  int64_t bucket_numel = 0;       // no_shard / optim bucket size (elements)
  int64_t param_slots = 2, grad_slots = 2;
  parallel::ScheduleSpec schedule;
  // Activation recompute as the recipe asks for it (the planner models it; see plan.h).
  std::string recompute_granularity;  // "", "full", "selective"
  std::string recompute_method;       // full: "uniform" | "block"
  int64_t recompute_num_layers = 0;

  // The chunks of stage `stage`, registered with the unit alignment the engine uses.
  std::vector<ChunkModel> chunks(int64_t stage) const;
  // Micro-batches in flight on each chunk of `stage` under the recipe's schedule.
  std::vector<int64_t> in_flight(int64_t stage) const;
  // Whether any group of `kind` spans more than one node.
  bool crosses_nodes(dist::GroupKind kind) const;
  double bandwidth(bool crosses) const {
    return crosses ? hw.inter_node_bytes_per_s : hw.intra_node_bytes_per_s;
  }
};

// One chunk's storages (each chunk of a stage has its own).
PartLayout dense_part(const Context& c, const ChunkModel& chunk);
PartLayout expert_part(const Context& c, const ChunkModel& chunk);

// plan_memory.cc
MemoryPlan stage_memory(const Context& c, const std::vector<ChunkModel>& chunks, const std::vector<int64_t>& in_flight);
// Forward FLOPs of one micro-batch through one chunk on this rank, and of its attention
// cores alone (recompute_layers: layers whose forward runs again in backward).
struct ChunkFlops {
  double forward = 0, attention = 0, recompute = 0;
};
ChunkFlops chunk_flops(const Context& c, const ChunkModel& chunk, int64_t recompute_layers);

// plan_comm.cc: the stage's traffic per step, seconds at the hardware's bandwidths.
std::vector<CommPlan> stage_comm(const Context& c, int64_t stage, const std::vector<ChunkModel>& chunks);

// Ring collectives over n ranks: bytes each rank sends for `bytes` of data.
inline double all_reduce_bytes(double bytes, int64_t n) { return n > 1 ? 2.0 * bytes * (n - 1) / n : 0; }
inline double gather_bytes(double bytes, int64_t n) { return n > 1 ? bytes * (n - 1) / n : 0; }  // AG or RS of the whole

}  // namespace mpt::train::planning
