#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace mpt::parallel {
namespace {

int64_t group_size(const ScheduleSpec& spec) { return spec.group == 0 ? spec.stages : spec.group; }

// Megatron's get_schedule_table: the forward order of (micro-batch, chunk) on every stage.
// Micro-batches go in groups of G; within a group every chunk runs the whole group before
// the next chunk starts. The last group takes whatever micro-batches remain.
std::vector<std::pair<int64_t, int64_t>> interleaved_table(int64_t microbatches, int64_t chunks, int64_t group) {
  std::vector<std::pair<int64_t, int64_t>> table;
  table.reserve(static_cast<size_t>(microbatches * chunks));
  for (int64_t first = 0; first < microbatches; first += group) {
    const int64_t end = std::min(first + group, microbatches);
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      for (int64_t m = first; m < end; ++m) table.emplace_back(m, chunk);
  }
  return table;
}

// Megatron's get_pp_rank_microbatches for the interleaved schedule (training, no
// overlapped expert communication): forwards run before the first backward.
int64_t interleaved_warmup(int64_t stages, int64_t stage, int64_t chunks, int64_t group, int64_t microbatches) {
  const int64_t warmup = (stages - stage - 1) * 2 + (chunks - 1) * group;
  return std::min(warmup, microbatches * chunks);
}

// Warm-up forwards, then (forward warmup + k, backward k) pairs, then the last backwards.
// forward(k) and backward(k) give the k-th forward and backward of this stage.
template <typename Forward, typename Backward>
std::vector<PipelineAction> one_forward_one_backward(int64_t total, int64_t warmup, Forward forward,
                                                     Backward backward) {
  std::vector<PipelineAction> actions;
  actions.reserve(static_cast<size_t>(2 * total));
  for (int64_t k = 0; k < warmup; ++k) actions.push_back(forward(k));
  for (int64_t k = 0; k < total - warmup; ++k) {
    actions.push_back(forward(k + warmup));
    actions.push_back(backward(k));
  }
  for (int64_t k = total - warmup; k < total; ++k) actions.push_back(backward(k));
  return actions;
}

std::string action_text(const PipelineAction& a, int64_t chunks) {
  std::string text = str(a.forward ? "F" : "B", a.microbatch);
  if (chunks > 1) text += static_cast<char>('a' + a.chunk % 26);
  return text;
}

// Index of the completion time of (virtual stage, micro-batch, direction) in a flat table.
size_t event_index(int64_t virtual_stage, int64_t microbatch, bool forward, int64_t microbatches) {
  return static_cast<size_t>((virtual_stage * microbatches + microbatch) * 2 + (forward ? 0 : 1));
}

}  // namespace

const char* schedule_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kNone: return "none";
    case ScheduleKind::kGPipe: return "gpipe";
    case ScheduleKind::k1F1B: return "1f1b";
    case ScheduleKind::kInterleaved: return "interleaved";
  }
  return "unknown";
}

void check_schedule(const ScheduleSpec& spec) {
  const std::string name = str(schedule_name(spec.kind), " pipeline schedule: ");
  const int64_t p = spec.stages, v = spec.chunks, m = spec.microbatches;
  MPT_CHECK(p >= 1, Status::kInvalidConfig, name, "pipeline_model_parallel_size (", p, ") must be at least 1");
  MPT_CHECK(v >= 1, Status::kInvalidConfig, name, "the number of model chunks per stage (", v, ") must be at least 1");
  MPT_CHECK(m >= 1, Status::kInvalidConfig, name, "the number of micro-batches (", m, ") must be at least 1");
  MPT_CHECK(spec.group >= 0, Status::kInvalidConfig, name, "microbatch_group_size_per_vp_stage (", spec.group,
            ") must be at least 1 (0 stands for pipeline_model_parallel_size)");
  if (spec.kind != ScheduleKind::kInterleaved) {
    MPT_CHECK(v == 1, Status::kInvalidConfig, name, "the number of model chunks per stage (", v,
              ") must be 1; only the interleaved schedule runs several chunks per stage");
  }
  if (spec.kind == ScheduleKind::kNone) {
    MPT_CHECK(p == 1, Status::kInvalidConfig, name, "pipeline_model_parallel_size (", p,
              ") must be 1; several stages need the gpipe, 1f1b or interleaved schedule");
  }
  if (spec.kind != ScheduleKind::kInterleaved) return;
  const int64_t g = group_size(spec);
  MPT_CHECK(m % p == 0, Status::kInvalidConfig, name, "the number of micro-batches (", m,
            ") must be divisible by pipeline_model_parallel_size (", p, ")");
  MPT_CHECK(g >= p && g <= m, Status::kInvalidConfig, name, "microbatch_group_size_per_vp_stage (", g,
            ") must be in [pipeline_model_parallel_size, number of micro-batches] = [", p, ", ", m, "]");
  const int64_t last_group = m % g;
  MPT_CHECK(last_group == 0 || last_group >= p, Status::kInvalidConfig, name,
            "the last group of micro-batches (", m, " % microbatch_group_size_per_vp_stage ", g, " = ", last_group,
            ") must be empty or at least pipeline_model_parallel_size (", p,
            "); a smaller one stalls on dependencies");
}

std::vector<PipelineAction> pipeline_schedule(const ScheduleSpec& spec, int64_t stage) {
  check_schedule(spec);
  MPT_CHECK(stage >= 0 && stage < spec.stages, Status::kInvalidArgument, "pipeline stage ", stage,
            " is outside [0, ", spec.stages, ")");
  const int64_t p = spec.stages, m = spec.microbatches;
  const auto forward = [](int64_t micro) { return PipelineAction{true, micro, 0}; };
  const auto backward = [](int64_t micro) { return PipelineAction{false, micro, 0}; };

  switch (spec.kind) {
    case ScheduleKind::kNone:
      return one_forward_one_backward(m, 0, forward, backward);
    case ScheduleKind::kGPipe:
      return one_forward_one_backward(m, m, forward, backward);
    case ScheduleKind::k1F1B:
      return one_forward_one_backward(m, std::min(p - stage - 1, m), forward, backward);
    case ScheduleKind::kInterleaved: {
      const int64_t v = spec.chunks, g = group_size(spec);
      const auto table = interleaved_table(m, v, g);
      const auto forward_k = [&](int64_t k) {
        return PipelineAction{true, table[static_cast<size_t>(k)].first, table[static_cast<size_t>(k)].second};
      };
      // Backwards walk the same table with the chunks reversed: the last chunk's gradient
      // is the first one available.
      const auto backward_k = [&](int64_t k) {
        return PipelineAction{false, table[static_cast<size_t>(k)].first,
                              v - 1 - table[static_cast<size_t>(k)].second};
      };
      return one_forward_one_backward(m * v, interleaved_warmup(p, stage, v, g, m), forward_k, backward_k);
    }
  }
  fail(Status::kInternal, "pipeline_schedule: unknown schedule kind ", static_cast<int>(spec.kind));
}

std::vector<int64_t> in_flight_per_chunk(const std::vector<PipelineAction>& actions, int64_t chunks) {
  MPT_CHECK(chunks >= 1, Status::kInvalidArgument, "in_flight_per_chunk: chunks (", chunks, ") must be at least 1");
  std::vector<int64_t> open(static_cast<size_t>(chunks), 0), most(static_cast<size_t>(chunks), 0);
  for (const PipelineAction& a : actions) {
    MPT_CHECK(a.chunk >= 0 && a.chunk < chunks, Status::kInvalidArgument, "in_flight_per_chunk: action ",
              action_text(a, chunks), " names chunk ", a.chunk, " outside [0, ", chunks, ")");
    const size_t c = static_cast<size_t>(a.chunk);
    open[c] += a.forward ? 1 : -1;
    most[c] = std::max(most[c], open[c]);
  }
  return most;
}

int64_t max_in_flight(const std::vector<PipelineAction>& actions, int64_t chunks) {
  const std::vector<int64_t> most = in_flight_per_chunk(actions, chunks);
  return *std::max_element(most.begin(), most.end());
}

double Simulation::bubble_fraction() const {
  int64_t total_idle = 0, total_busy = 0;
  for (int64_t x : idle) total_idle += x;
  for (int64_t x : busy) total_busy += x;
  return total_busy == 0 ? 0.0 : static_cast<double>(total_idle) / static_cast<double>(total_busy);
}

Simulation simulate(const ScheduleSpec& spec) {
  check_schedule(spec);
  const int64_t p = spec.stages, v = spec.chunks, m = spec.microbatches;
  const int64_t last_virtual = p * v - 1;
  constexpr int64_t kNotDone = std::numeric_limits<int64_t>::max();

  std::vector<std::vector<PipelineAction>> actions;
  for (int64_t r = 0; r < p; ++r) actions.push_back(pipeline_schedule(spec, r));
  // done[event_index(...)]: the time the action ends; kNotDone until it has run.
  std::vector<int64_t> done(static_cast<size_t>(p * v * m * 2), kNotDone);

  // The action an action waits for, as (virtual stage, micro-batch, forward), or none.
  struct Need {
    bool any;
    int64_t virtual_stage;
    int64_t microbatch;
    bool forward;
  };
  const auto need_of = [&](int64_t stage, const PipelineAction& a) -> Need {
    const int64_t vs = a.chunk * p + stage;
    if (a.forward) return vs > 0 ? Need{true, vs - 1, a.microbatch, true} : Need{false, 0, 0, true};
    return vs < last_virtual ? Need{true, vs + 1, a.microbatch, false} : Need{true, vs, a.microbatch, true};
  };

  Simulation sim;
  sim.start.assign(static_cast<size_t>(p), {});
  std::vector<size_t> next(static_cast<size_t>(p), 0);
  size_t remaining = 0;
  for (int64_t r = 0; r < p; ++r) {
    sim.start[static_cast<size_t>(r)].assign(actions[static_cast<size_t>(r)].size(), -1);
    remaining += actions[static_cast<size_t>(r)].size();
  }

  // One time unit per step: every stage whose next action has its input starts it. An
  // action started at t ends at t + 1, so no action started in this step can feed another
  // started in the same step, whatever the order of the stages.
  for (int64_t t = 0; remaining > 0; ++t) {
    size_t started = 0;
    for (int64_t r = 0; r < p; ++r) {
      const auto& list = actions[static_cast<size_t>(r)];
      size_t& i = next[static_cast<size_t>(r)];
      if (i == list.size()) continue;
      const PipelineAction& a = list[i];
      const Need need = need_of(r, a);
      if (need.any && done[event_index(need.virtual_stage, need.microbatch, need.forward, m)] > t) continue;
      sim.start[static_cast<size_t>(r)][i] = t;
      done[event_index(a.chunk * p + r, a.microbatch, a.forward, m)] = t + 1;
      sim.makespan = t + 1;
      ++i;
      ++started;
    }
    if (started > 0) {
      remaining -= started;
      continue;
    }
    // Nothing runs and nothing is running: no later step can differ from this one.
    std::string stuck;
    for (int64_t r = 0; r < p; ++r) {
      const auto& list = actions[static_cast<size_t>(r)];
      const size_t i = next[static_cast<size_t>(r)];
      if (i == list.size()) continue;
      const Need need = need_of(r, list[i]);
      stuck += str(stuck.empty() ? "" : "; ", "stage ", r, " at ", action_text(list[i], v), " (action ", i,
                   ") waits for the ", need.forward ? "forward" : "backward", " of micro-batch ", need.microbatch,
                   " on virtual stage ", need.virtual_stage);
    }
    fail(Status::kInternal, schedule_name(spec.kind), " pipeline schedule deadlocks at time ", t, " (P=", p,
         ", V=", v, ", M=", m, ", G=", group_size(spec), "): ", stuck);
  }

  for (int64_t r = 0; r < p; ++r) {
    const auto n = static_cast<int64_t>(actions[static_cast<size_t>(r)].size());
    sim.busy.push_back(n);
    sim.idle.push_back(sim.makespan - n);
  }
  return sim;
}

std::string render_timeline(const ScheduleSpec& spec) {
  const Simulation sim = simulate(spec);
  const int64_t p = spec.stages, v = spec.chunks;
  // Cell texts by stage and time; empty for an idle unit.
  std::vector<std::vector<std::string>> cells(static_cast<size_t>(p),
                                              std::vector<std::string>(static_cast<size_t>(sim.makespan)));
  size_t width = 1;
  for (int64_t r = 0; r < p; ++r) {
    const std::vector<PipelineAction> actions = pipeline_schedule(spec, r);
    for (size_t i = 0; i < actions.size(); ++i) {
      std::string text = action_text(actions[i], v);
      width = std::max(width, text.size());
      cells[static_cast<size_t>(r)][static_cast<size_t>(sim.start[static_cast<size_t>(r)][i])] = std::move(text);
    }
  }
  const size_t label_width = std::to_string(p - 1).size();
  std::ostringstream out;
  for (int64_t r = 0; r < p; ++r) {
    const std::string number = std::to_string(r);
    out << "stage " << std::string(label_width - number.size(), ' ') << number << ":";
    // A stage ends idle or with the backward of the last micro-batch, the widest cell, so
    // no line ends in padding.
    for (const std::string& cell : cells[static_cast<size_t>(r)])
      out << ' ' << (cell.empty() ? std::string(width, '.') : cell + std::string(width - cell.size(), ' '));
    out << '\n';
  }
  int64_t total_idle = 0, total_busy = 0;
  for (int64_t x : sim.idle) total_idle += x;
  for (int64_t x : sim.busy) total_busy += x;
  out << "bubble fraction: " << sim.bubble_fraction() << " (idle " << total_idle << " / busy " << total_busy
      << " time units)\n";
  return out.str();
}

}  // namespace mpt::parallel
