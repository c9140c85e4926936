// The planner behind `mptrain plan`: what a recipe costs on a cluster before anything runs.
// For every pipeline stage it gives one rank's memory (parameters, gradients, optimizer
// state, activations) and the bytes it sends per step over each parallel dimension, then an
// estimated step time and MFU from a stated hardware model; `search_layouts` ranks every
// valid layout of N GPUs that fits.
//
// Memory and communication follow what the engine does, not a generic textbook: parameter
// counts come from the model's own registry (register_chunk), the sharding strategies hold
// what optim/data_parallel.h says they hold, activations are the per-layer formula of
// Korthikanti et al. written out tensor by tensor as this engine keeps them (flash-style
// attention: no s^2 term; dropout masks regenerated, not stored; fp32 logits and statistics),
// and bytes are those of the ring collectives and point-to-point messages the code issues.
// Tests compare all of it with the engine's memory report and byte counters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "dist/parallel_state.h"

namespace mpt::train {

// The hardware the estimate is for. Defaults: an H100 SXM node (dense bf16 peak, NVLink 4
// and 400 Gb/s InfiniBand per GPU at what NCCL typically reaches).
struct Hardware {
  int64_t gpus_per_node = 8;
  double gpu_memory_bytes = 80.0 * (1 << 30);
  double peak_flops = 989e12;            // per GPU, in the recipe's compute precision
  double compute_efficiency = 0.7;       // fraction of peak that GEMMs and attention reach
  double intra_node_bytes_per_s = 360e9; // per GPU, one direction
  double inter_node_bytes_per_s = 40e9;
  double collective_latency_s = 20e-6;   // per collective or point-to-point message
};
// H100 SXM peaks: 989 TFLOP/s dense bf16; fp32 GEMMs (no TF32) 67 TFLOP/s.
double default_peak_flops(bool bf16);

// One rank of a pipeline stage; bytes unless said otherwise.
struct MemoryPlan {
  int64_t parameters = 0;         // this rank's parameters (elements, without padding)
  int64_t expert_parameters = 0;  // the MoE experts' share of `parameters`
  int64_t params_master = 0;      // fp32 master weights held (sharded, gathered units included)
  int64_t params_compute = 0;     // bf16 compute copies (0 in fp32)
  int64_t expert_params = 0;      // the experts' share of master + compute
  int64_t grads = 0;              // fp32 gradients (shards and working buffers included)
  int64_t optimizer = 0;          // fp32 Adam moments of the owned elements
  int64_t activations = 0;        // every activation slot and the working buffers
  // The activations' parts: one micro-batch's saved tensors for one layer (the largest layer
  // of the stage), micro-batches in flight on each chunk (the most of them in in_flight),
  // the head's (d(last layer's output)) per micro-batch, and the buffers shared by all
  // micro-batches of a chunk.
  int64_t layer_activations = 0;
  int64_t in_flight = 0;
  std::vector<int64_t> chunk_in_flight;
  int64_t head_activations = 0;
  int64_t working_buffers = 0;
  int64_t params_bytes() const { return params_master + params_compute; }  // as MemoryReport
  int64_t total() const { return params_bytes() + grads + optimizer + activations; }
};

// One parallel dimension's traffic for one rank and one step.
struct CommPlan {
  std::string dim;          // "dp", "edp", "tp", "pp", "cp", "ep", "embedding"
  std::string group;        // the process group: "dp-cp", "tp", "etp-ep", ...
  int64_t group_size = 1;
  std::string what;         // the collectives, in words
  int64_t bytes = 0;        // payload bytes this rank sends per step
  int64_t messages = 0;     // collectives or point-to-point messages per step
  // When it runs: "microbatch" (with every micro-batch), "grad-sync" (the gradient
  // reduction after backward) or "after-step" (after the optimizer step, or outside overlap).
  std::string phase;
  bool crosses_nodes = false;
  double seconds = 0;       // at the group's bandwidth, latency included
  double exposed_seconds = 0;  // what the step waits for (after overlap)
};

struct StagePlan {
  int64_t stage = 0;
  int64_t layers = 0;                // decoder layers on the stage
  std::vector<std::string> chunks;   // per chunk: "[0-19]"
  bool pre_process = false, post_process = false;
  int64_t in_flight = 1;             // micro-batches in flight on its busiest chunk
  MemoryPlan memory;
  std::vector<CommPlan> comm;
  double forward_flops = 0;          // one micro-batch through the stage, this rank
  double microbatch_seconds = 0;     // forward + backward of one micro-batch, exposed comm included
  double compute_seconds = 0;        // of which compute
};

struct TimePlan {
  double step_seconds = 0;
  double pipeline_seconds = 0;       // micro-batches through the slowest stage, bubble included
  double bubble_fraction = 0;        // (P - 1) / (V * M): idle over busy
  double tail_seconds = 0;           // exposed data-parallel and embedding traffic after backward
  double model_flops = 0;            // per step, all ranks (recompute excluded)
  double tokens_per_second = 0;
  double mfu = 0;
};

struct Plan {
  std::string recipe;                // path
  dist::ParallelSizes sizes;
  int64_t dp = 1, edp = 1, vpp = 1;
  bool sequence_parallel = false;
  std::string sharding;              // no_shard | optim | optim_grads | optim_grads_params
  std::string precision;             // "bf16 mixed" | "fp32"
  int64_t micro_batch = 1, microbatches = 1, global_batch = 1, seq = 1;
  int64_t parameters = 0;            // the whole model
  int64_t active_parameters = 0;     // used per token (MoE: top-k experts)
  std::string recompute;             // "" or a description (modelled; the engine has not built it)
  Hardware hardware;
  std::vector<StagePlan> stages;
  TimePlan time;
  // The stage whose rank needs the most memory, and whether that fits.
  int64_t peak_stage() const;
  bool fits() const;
};

// The plan of a finalized recipe on recipe.derived.world_size GPUs. Throws Error(kInvalidConfig)
// when the recipe is not finalized.
Plan make_plan(const config::Recipe& recipe, const Hardware& hardware);

// Loads nothing: finalizes a copy of `recipe` (loaded and overridden, not finalized) for
// `world` ranks as the planner needs it, modelling activation recompute, which the engine has
// not built, apart: recompute keys are taken out before finalize() and described in
// Plan::recompute. Throws finalize()'s Error for every other problem.
config::Recipe finalized_for_plan(const config::Recipe& recipe, int64_t world, std::string* recompute = nullptr);
// The same and make_plan().
Plan plan_recipe(const config::Recipe& recipe, int64_t world, const Hardware& hardware);

// The smallest world the recipe's layout allows: lcm(TP*PP*CP, ETP*EP*PP).
int64_t smallest_world(const config::Recipe& recipe);

// --search: every layout of `gpus` GPUs (TP within a node and dividing it, SP whenever TP > 1,
// PP, CP, EP, the recipe's virtual stages or none), validated by finalize() and planned;
// those that fit ranked by estimated throughput. Micro and global batch, sharding and the
// model stay the recipe's.
struct LayoutChoice {
  int64_t tp = 1, pp = 1, vpp = 1, cp = 1, ep = 1, dp = 1;
  std::string label() const;  // "TP 4 PP 4 VPP 5 CP 2 EP 1 DP 2"
};
struct RankedLayout {
  LayoutChoice layout;
  Plan plan;
};
// A family is every layout with the same TP, PP and EP; it is excluded when none fits.
struct ExcludedFamily {
  std::string family;                 // "TP 8 PP 1 EP 1"
  std::vector<std::string> reasons;   // distinct reasons over its layouts
};
struct SearchResult {
  int64_t gpus = 0;
  int64_t considered = 0;
  std::vector<RankedLayout> feasible;   // best first
  std::vector<ExcludedFamily> excluded;
  std::vector<std::string> rules;       // the rules applied, e.g. "TP within a node (8 GPUs)"
  int64_t recipe_rank = -1;             // 1-based rank of the recipe's own layout; -1: not feasible
};
SearchResult search_layouts(const config::Recipe& recipe, int64_t gpus, const Hardware& hardware);

}  // namespace mpt::train
