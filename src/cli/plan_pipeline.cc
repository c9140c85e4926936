// `mptrain plan --pipeline`: the pipeline schedule a recipe implies, drawn as a unit-time
// timeline per stage, with its bubble fraction and the activations each stage keeps.
//
// The recipe is resolved as `mptrain config` resolves it, for a world of tp * pp * cp * dp
// ranks (dp from --dp), so every rule of the recipe applies; --schedule can then ask for a
// schedule the sizes do not allow, which is refused naming the rule.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>

#include "cli/plan_cli.h"
#include "core/error.h"
#include "parallel/pipeline_layout.h"

namespace mpt::cli {
namespace {

using parallel::ScheduleKind;
using parallel::ScheduleSpec;

// A timeline wider than this many time units is summarised, not drawn.
constexpr int64_t kMaxDrawnTimeUnits = 400;

// The recipe with its overrides, finalized for a world of tp * pp * cp * dp ranks.
config::Recipe planned_recipe(const PlanArguments& args) {
  config::Recipe recipe = config::load_recipe_file(args.recipe_path);
  config::apply_overrides(recipe, args.overrides);
  const config::ModelConfig& m = recipe.model;
  // Sizes below 1 are finalize()'s to report; 1 keeps the world size meaningful meanwhile.
  const auto size = [](int64_t n) { return std::max<int64_t>(n, 1); };
  const int64_t world = size(m.tensor_model_parallel_size) * size(m.pipeline_model_parallel_size) *
                        size(m.context_parallel_size) * args.data_parallel_size;
  config::finalize(recipe, world);
  return recipe;
}

// "[0-1] [4-5]": the layers of each chunk of one stage, in chunk order.
std::string stage_layers(const config::Recipe& recipe, int64_t stage) {
  const config::ModelConfig& m = recipe.model;
  const parallel::PipelineSplit split{m.num_layers, m.pipeline_model_parallel_size,
                                      m.virtual_pipeline_model_parallel_size.value_or(1),
                                      m.num_layers_in_first_pipeline_stage, m.num_layers_in_last_pipeline_stage};
  std::string text;
  for (int64_t c = 0; c < split.chunks; ++c) {
    const parallel::ChunkLayers layers = parallel::chunk_layers(split, stage, c);
    text += c == 0 ? "[" : " [";
    if (layers.count() == 1) text += std::to_string(layers.begin);
    if (layers.count() > 1) text += str(layers.begin, "-", layers.end - 1);
    text += "]";
  }
  return text;
}

ScheduleKind default_schedule(int64_t stages, int64_t chunks) {
  if (chunks > 1) return ScheduleKind::kInterleaved;
  return stages > 1 ? ScheduleKind::k1F1B : ScheduleKind::kNone;
}

std::string plural(int64_t n, const char* one, const char* many) { return str(n, " ", n == 1 ? one : many); }

}  // namespace

int run_plan_pipeline(const PlanArguments& args) {
  const config::Recipe recipe = planned_recipe(args);
  const config::ModelConfig& m = recipe.model;
  const config::Derived& d = recipe.derived;
  const int64_t p = m.pipeline_model_parallel_size, v = m.virtual_pipeline_model_parallel_size.value_or(1);
  const int64_t microbatches = d.num_microbatches;
  const int64_t group = m.microbatch_group_size_per_vp_stage.value_or(p);

  const ScheduleKind kind = args.schedule.value_or(default_schedule(p, v));
  const ScheduleSpec spec{kind, p, v, microbatches, group};
  try {
    parallel::check_schedule(spec);
  } catch (const Error& e) {
    fail(Status::kInvalidConfig, recipe.path, ": ", e.what(), " (P = model.pipeline_model_parallel_size ", p,
         ", V = ", v, ", M = train.global_batch_size / (train.micro_batch_size * data-parallel size) = ",
         microbatches, ")");
  }

  const int64_t micro_batch_size = recipe.train.micro_batch_size.value_or(0);
  const std::string layout =
      str("layout: world ", d.world_size, " = tp ", m.tensor_model_parallel_size, " x pp ", p, " x cp ",
          m.context_parallel_size, " x dp ", d.data_parallel_size, "; ",
          plural(microbatches, "micro-batch", "micro-batches"), " of ", micro_batch_size, " per step (global batch ",
          microbatches * micro_batch_size * d.data_parallel_size, ")");
  std::printf("%s\n", layout.c_str());
  std::string schedule = str("schedule: ", parallel::schedule_name(kind), ", P=", p, " V=", v, " M=", microbatches);
  if (kind == ScheduleKind::kInterleaved) schedule += str(" G=", group);
  std::printf("%s\n", schedule.c_str());

  const parallel::Simulation sim = parallel::simulate(spec);
  if (sim.makespan <= kMaxDrawnTimeUnits) {
    std::fputs(parallel::render_timeline(spec).c_str(), stdout);
  } else {
    int64_t idle = 0, busy = 0;
    for (int64_t x : sim.idle) idle += x;
    for (int64_t x : sim.busy) busy += x;
    std::printf("timeline: %lld time units per stage, not drawn (more than %lld)\n",
                static_cast<long long>(sim.makespan), static_cast<long long>(kMaxDrawnTimeUnits));
    std::printf("bubble fraction: %g (idle %lld / busy %lld time units)\n", sim.bubble_fraction(),
                static_cast<long long>(idle), static_cast<long long>(busy));
  }
  std::string in_flight = "micro-batches in flight (most per chunk):";
  std::string layers = "layers (by chunk):";
  for (int64_t r = 0; r < p; ++r) {
    const int64_t most = parallel::max_in_flight(parallel::pipeline_schedule(spec, r), v);
    in_flight += str(r == 0 ? " " : ", ", "stage ", r, " ", most);
    layers += str(r == 0 ? " " : ", ", "stage ", r, " ", stage_layers(recipe, r));
  }
  std::printf("%s\n%s\n", in_flight.c_str(), layers.c_str());
  std::fflush(stdout);
  return 0;
}

}  // namespace mpt::cli
