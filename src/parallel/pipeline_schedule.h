// Pipeline schedules as data: a pure function from (P stages, V chunks per stage, M micro-
// batches, this stage) to the ordered list of compute actions this stage runs. The executor
// (train/engine) runs the list and derives every send and receive from it: the forward of
// (micro-batch m, chunk c) needs the output of the previous virtual stage and sends its own
// to the next; the backward needs the gradient from the next virtual stage and sends one to
// the previous. Virtual stage of (stage r, chunk c) is c * P + r; the model's layers run in
// virtual-stage order.
//
//   kNone         P = 1: forward then backward of each micro-batch (gradient accumulation).
//   kGPipe        all forwards, then all backwards (M micro-batches in flight).
//   k1F1B         warm-up min(P - r - 1, M) forwards, then one forward one backward, then
//                 the remaining backwards (at most P - r micro-batches in flight).
//   kInterleaved  Megatron's interleaved 1F1B over V chunks: forwards in the order of
//                 get_schedule_table(M, V, G) (groups of G micro-batches, chunk by chunk),
//                 backwards in the same order with chunks reversed; warm-up
//                 (P - r - 1) * 2 + (V - 1) * G forwards (all of them when that reaches M * V).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpt::parallel {

enum class ScheduleKind { kNone, kGPipe, k1F1B, kInterleaved };
const char* schedule_name(ScheduleKind kind);  // "none", "gpipe", "1f1b", "interleaved"

struct PipelineAction {
  bool forward = true;      // false: backward
  int64_t microbatch = 0;
  int64_t chunk = 0;        // model chunk on this stage, 0 .. V-1
  bool operator==(const PipelineAction&) const = default;
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int64_t stages = 1;       // P
  int64_t chunks = 1;       // V (kInterleaved only; 1 otherwise)
  int64_t microbatches = 1; // M
  int64_t group = 0;        // G = microbatch_group_size_per_vp_stage; 0 means P
};

// Throws Error(kInvalidConfig) naming the rule when the spec cannot be scheduled: sizes below
// 1, chunks > 1 for a kind other than kInterleaved, kNone with P > 1, and for kInterleaved
// M not divisible by P, or G outside [P, M], or a last group of micro-batches (M % G) that is
// neither empty nor at least P (it would stall on dependencies).
void check_schedule(const ScheduleSpec& spec);

// This stage's compute actions in execution order: every (m, c) forward and backward once.
std::vector<PipelineAction> pipeline_schedule(const ScheduleSpec& spec, int64_t stage);

// For each chunk of this stage, the most micro-batches whose forward has run and whose
// backward has not, over its schedule: how many sets of saved activations the chunk needs
// (under the interleaved schedule the later chunks need fewer).
std::vector<int64_t> in_flight_per_chunk(const std::vector<PipelineAction>& actions, int64_t chunks);
// The largest of them.
int64_t max_in_flight(const std::vector<PipelineAction>& actions, int64_t chunks);

// Unit-time simulation of all stages: every compute action takes one time unit, messages
// arrive instantly; an action starts when its stage is free and its input has arrived
// (forward of virtual stage v > 0: forward of (m, v - 1) done; backward of virtual stage
// v < P*V - 1: backward of (m, v + 1) done; backward of the last virtual stage: its own
// forward done). Throws Error(kInternal) naming the stuck actions if no stage can proceed
// (a deadlock).
struct Simulation {
  int64_t makespan = 0;                            // time units until the last action ends
  std::vector<int64_t> busy, idle;                 // per stage, over [0, makespan)
  std::vector<std::vector<int64_t>> start;         // per stage, start time of each action
  double bubble_fraction() const;                  // total idle / total busy
};
Simulation simulate(const ScheduleSpec& spec);

// The timeline as text, one line per stage, one column per time unit: "F3" / "B3" for
// micro-batch 3 (chunk letters a, b, ... appended when V > 1, e.g. "F3b"), dots for idle
// units, cells separated by spaces and padded to one width; then the bubble fraction.
std::string render_timeline(const ScheduleSpec& spec);

}  // namespace mpt::parallel
