// `mptrain plan RECIPE`: memory, communication, step time and MFU of a recipe on a cluster
// (train/plan.h), every valid layout ranked (--search), every process group (--groups), as
// text or JSON; and `mptrain plan --pipeline`, the pipeline timeline (plan_pipeline.cc).
// This file parses the arguments and dispatches; nothing is trained.
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "cli/plan_cli.h"
#include "core/error.h"

namespace mpt::cli {
namespace {

using parallel::ScheduleKind;

ScheduleKind parse_schedule(const std::string& text) {
  for (ScheduleKind kind : {ScheduleKind::kNone, ScheduleKind::kGPipe, ScheduleKind::k1F1B, ScheduleKind::kInterleaved})
    if (text == parallel::schedule_name(kind)) return kind;
  throw UsageError("--schedule expects none, gpipe, 1f1b or interleaved, got '" + text + "'");
}

int64_t parse_int(const std::string& option, const std::string& text, int64_t lo, int64_t hi) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0' || v < lo || v > hi)
    throw UsageError(option + " expects an integer in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got '" +
                     text + "'");
  return v;
}

std::string number_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

// A number above `lo` (or at least `lo` when `inclusive`), at most `hi`.
double parse_number(const std::string& option, const std::string& text, double lo, bool inclusive, double hi) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  const bool low_ok = inclusive ? v >= lo : v > lo;
  if (text.empty() || errno != 0 || *end != '\0' || !std::isfinite(v) || !low_ok || v > hi)
    throw UsageError(option + " expects a number " + (inclusive ? ">= " : "> ") + number_text(lo) + " and <= " +
                     number_text(hi) + ", got '" + text + "'");
  return v;
}

// args: the command line from "plan" on.
PlanArguments parse_plan_arguments(const std::vector<std::string>& args) {
  PlanArguments out;
  bool options_done = false;
  std::vector<std::string> positionals;
  std::vector<std::string> pipeline_only, plan_only;  // options given, by name
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      positionals.push_back(arg);
      continue;
    }
    auto value_of = [&](const std::string& name) -> std::optional<std::string> {
      if (arg == name) {
        if (i + 1 >= args.size()) throw UsageError(name + " needs a value");
        return args[++i];
      }
      if (arg.starts_with(name + "=")) return arg.substr(name.size() + 1);
      return std::nullopt;
    };
    train::Hardware& hw = out.hardware;
    if (arg == "--") {
      options_done = true;
    } else if (arg == "-h" || arg == "--help") {
      out.help = true;
    } else if (arg == "--pipeline") {
      out.pipeline = true;
    } else if (auto s = value_of("--schedule")) {
      out.schedule = parse_schedule(*s);
      pipeline_only.push_back("--schedule");
    } else if (auto dp = value_of("--dp")) {
      out.data_parallel_size = parse_int("--dp", *dp, 1, 1 << 20);
      pipeline_only.push_back("--dp");
    } else if (auto n = value_of("--gpus")) {
      out.gpus = parse_int("--gpus", *n, 1, 1 << 20);
      plan_only.push_back("--gpus");
    } else if (auto g = value_of("--gpu-memory")) {
      hw.gpu_memory_bytes = parse_number("--gpu-memory", *g, 0, false, 1 << 20) * (1 << 30);
      plan_only.push_back("--gpu-memory");
    } else if (auto n = value_of("--gpus-per-node")) {
      hw.gpus_per_node = parse_int("--gpus-per-node", *n, 1, 1024);
      plan_only.push_back("--gpus-per-node");
    } else if (auto p = value_of("--peak-tflops")) {
      hw.peak_flops = parse_number("--peak-tflops", *p, 0, false, 1e6) * 1e12;
      out.peak_given = true;
      plan_only.push_back("--peak-tflops");
    } else if (auto e = value_of("--compute-efficiency")) {
      hw.compute_efficiency = parse_number("--compute-efficiency", *e, 0, false, 1);
      plan_only.push_back("--compute-efficiency");
    } else if (auto b = value_of("--intra-node-gbps")) {
      hw.intra_node_bytes_per_s = parse_number("--intra-node-gbps", *b, 0, false, 1e6) * 1e9;
      plan_only.push_back("--intra-node-gbps");
    } else if (auto b = value_of("--inter-node-gbps")) {
      hw.inter_node_bytes_per_s = parse_number("--inter-node-gbps", *b, 0, false, 1e6) * 1e9;
      plan_only.push_back("--inter-node-gbps");
    } else if (auto l = value_of("--latency-us")) {
      hw.collective_latency_s = parse_number("--latency-us", *l, 0, true, 1e6) * 1e-6;
      plan_only.push_back("--latency-us");
    } else if (arg == "--search") {
      out.search = true;
      plan_only.push_back(arg);
    } else if (arg == "--groups") {
      out.groups = true;
      plan_only.push_back(arg);
    } else if (auto r = value_of("--rank")) {
      out.rank = parse_int("--rank", *r, 0, (1 << 20) - 1);
      plan_only.push_back("--rank");
    } else if (arg == "--json") {
      out.json = true;
      plan_only.push_back(arg);
    } else {
      throw UsageError("unknown option '" + arg + "' of 'plan'");
    }
  }
  if (out.help) return out;
  if (out.pipeline && !plan_only.empty())
    throw UsageError(plan_only.front() + " is not an option of 'plan --pipeline' (which draws the schedule only)");
  if (!out.pipeline && !pipeline_only.empty())
    throw UsageError(pipeline_only.front() + " needs --pipeline (the schedule's timeline)");
  if (out.search && out.groups)
    throw UsageError("--search ranks other layouts and --groups lists the recipe's groups: ask one at a time");
  if (positionals.empty()) throw UsageError("plan needs the recipe file (RECIPE.toml)");
  out.recipe_path = positionals[0];
  for (size_t k = 1; k < positionals.size(); ++k) {
    const std::string& a = positionals[k];
    if (a.find('=') == std::string::npos || a.front() == '=')
      throw UsageError("expected an override section.key=value after the recipe, got '" + a + "'");
    out.overrides.push_back(a);
  }
  return out;
}

void print(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace

std::string plan_usage_text() {
  return R"(Plan:
  mptrain plan RECIPE.toml [section.key=value ...] [--gpus N] [--gpu-memory GiB]
               [--gpus-per-node N] [--search | --groups [--rank R]] [--json] [model options]
            What the recipe costs on a cluster, before anything runs. Per pipeline stage,
            one GPU's memory: parameters (fp32 master weights and the bf16 compute copies),
            gradients and optimizer state as the sharding strategy holds them, activations
            by the per-layer formula for every micro-batch in flight; the bytes each GPU
            sends per step over each parallel dimension (dp, edp, tp, cp, ep, pp, the tied
            embedding) and whether its groups cross nodes; an estimated step time, bubble,
            throughput and MFU. The recipe is checked as `config` checks it, for N GPUs.
  --gpus N              The world size (default: the smallest the layout allows, the
                        product of its parallel sizes; the data-parallel size is N over it).
  --gpu-memory GiB      Memory per GPU the plan must fit in (default 80).
  --gpus-per-node N     GPUs per node (default 8): groups spanning nodes use the network.
  --search              Every layout of N GPUs (TP within a node, SP whenever TP > 1, PP,
                        CP, EP, the recipe's virtual stages or none) that passes the recipe's
                        rules and fits, ranked by estimated throughput, and why every family
                        of layouts (TP, PP, EP) that does not was excluded.
  --groups              Every process group as rank lists (tp, cp, dp, dp-cp, pp, tp-cp,
                        tp-dp-cp, tp-pp, embedding, position-embedding, etp, ep, etp-ep,
                        edp) and one rank's coordinates and groups.
  --rank R              The rank --groups describes (default 0).
  --json                The plan (groups included), or the search, as one JSON document.
  Model options (the estimate's stated model; defaults: an H100 SXM node):
  --peak-tflops X       Peak per GPU (default 989 for bf16 mixed precision, 67 for fp32).
  --compute-efficiency F  Fraction of peak GEMMs and attention reach (default 0.7).
  --intra-node-gbps X   GB/s per GPU inside a node (default 360, NVLink).
  --inter-node-gbps X   GB/s per GPU between nodes (default 40, 400 Gb/s InfiniBand).
  --latency-us X        Fixed cost of each collective or message (default 20).

  mptrain plan --pipeline RECIPE.toml [section.key=value ...] [--schedule NAME] [--dp N]
            Print the pipeline schedule the recipe implies (nothing is trained): the layout,
            each stage's compute in unit time steps ("F3"/"B3": forward/backward of
            micro-batch 3, a letter per model chunk when interleaved, dots for idle steps),
            the bubble fraction (idle over busy time) and, per stage, the most micro-batches
            whose activations are kept at once, and the layers of each chunk. The recipe is
            checked as `config` checks it, for tp * pp * cp * dp ranks. P is model.pipeline_model_parallel_size, V
            model.virtual_pipeline_model_parallel_size, G
            model.microbatch_group_size_per_vp_stage (default P), M the number of
            micro-batches, train.global_batch_size / (train.micro_batch_size * DP).
  --schedule NAME       none, gpipe, 1f1b or interleaved (default: interleaved when V > 1,
                        1f1b when P > 1, none otherwise).
  --dp N                The data-parallel size to plan for (default 1).
)";
}

int run_plan(const std::vector<std::string>& command_line) {
  const PlanArguments args = parse_plan_arguments(command_line);
  if (args.help) {
    print(plan_usage_text());
    return 0;
  }
  if (args.pipeline) return run_plan_pipeline(args);

  config::Recipe recipe = config::load_recipe_file(args.recipe_path);
  config::apply_overrides(recipe, args.overrides);
  train::Hardware hw = args.hardware;
  if (!args.peak_given) hw.peak_flops = train::default_peak_flops(config::uses_bf16(recipe));
  const int64_t world = args.gpus.value_or(train::smallest_world(recipe));

  if (args.search) {
    const train::SearchResult search = train::search_layouts(recipe, world, hw);
    print(args.json ? search_json(search) + "\n" : search_text(search));
    return 0;
  }
  const train::Plan plan = train::plan_recipe(recipe, world, hw);
  const dist::ParallelState layout(plan.sizes);
  MPT_CHECK(args.rank < world, Status::kInvalidArgument, "plan --rank ", args.rank, ": outside the world of ", world,
            " ranks");
  if (args.json) {
    print(plan_json(plan, layout, args.rank) + "\n");
    return 0;
  }
  const std::string note = args.gpus ? "" : " (the smallest world the layout allows; --gpus N for more)";
  std::string text = plan_text(plan, note);
  if (args.groups) {
    text += '\n';
    text += groups_text(layout, args.rank);
  }
  print(text);
  return 0;
}

}  // namespace mpt::cli
