// `mptrain plan`: its arguments and its outputs. plan_command.cc parses and dispatches,
// plan_pipeline.cc draws the pipeline timeline (--pipeline), plan_report.cc writes the plan,
// the search and the groups as text, plan_json.cc as JSON. The numbers all come from the
// planner library (train/plan.h); these files only format them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "dist/parallel_state.h"
#include "parallel/pipeline_schedule.h"
#include "train/plan.h"

namespace mpt::cli {

struct PlanArguments {
  bool help = false;
  bool pipeline = false;                          // --pipeline: the schedule's timeline
  std::optional<parallel::ScheduleKind> schedule; // --schedule (with --pipeline)
  int64_t data_parallel_size = 1;                 // --dp N (with --pipeline)
  std::optional<int64_t> gpus;                    // --gpus N; none: the smallest world the layout allows
  bool search = false;                            // --search
  bool groups = false;                            // --groups
  int64_t rank = 0;                               // --rank R: whose coordinates --groups shows
  bool json = false;                              // --json
  train::Hardware hardware;                       // --gpu-memory, --gpus-per-node, --peak-tflops, ...
  bool peak_given = false;
  std::string recipe_path;
  std::vector<std::string> overrides;
};

// The text of every plan option.
std::string plan_usage_text();

// plan_pipeline.cc
int run_plan_pipeline(const PlanArguments& args);

// plan_report.cc
std::string plan_text(const train::Plan& plan, const std::string& world_note);
std::string search_text(const train::SearchResult& search);
std::string groups_text(const dist::ParallelState& layout, int64_t rank);

// plan_json.cc: one JSON document each (the plan's includes every group and one rank's
// coordinates).
std::string plan_json(const train::Plan& plan, const dist::ParallelState& layout, int64_t rank);
std::string search_json(const train::SearchResult& search);

}  // namespace mpt::cli
