// The planner against the engine: recipes/tiny.toml and tiny_moe.toml trained two steps at
// layouts over every parallel dimension and sharding strategy (ranks as threads); on every
// rank the planned parameter, gradient and optimizer bytes must equal the engine's memory
// report within 2%, its activations within 20%, and the bytes planned per dimension the
// communicators' counts of the last step within 10%.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "dist/parallel_state.h"
#include "engine_threads.h"
#include "train/plan.h"

namespace mpt::train {
namespace {

// What the engine reports on one rank: memory, and the bytes it sent in the last step per
// dimension (keys as CommPlan::dim).
struct Measured {
  MemoryReport memory;
  std::map<std::string, int64_t> bytes;
};

config::Recipe recipe_of(const std::string& file, const std::vector<std::string>& overrides, int64_t world) {
  config::Recipe r = config::load_recipe_file(std::string(MPT_SOURCE_DIR) + "/recipes/" + file);
  config::apply_overrides(r, {"train.train_iters=10", "validation.eval_interval=null", "checkpoint.save=null",
                              "dataset.num_workers=0", "dist.distributed_timeout_minutes=0.5"});
  config::apply_overrides(r, overrides);
  config::finalize(r, world);
  return r;
}

std::vector<Measured> measure(const config::Recipe& r, int64_t steps = 2) {
  const int64_t world = r.derived.world_size;
  std::vector<Measured> out(static_cast<size_t>(world));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  const int port = testing::free_port();
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank)
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchPlace place;
        place.rank = place.local_rank = rank;
        place.world_size = world;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Engine e(r, Logger([](LogLevel, const std::string&) {}, LogLevel::kError), place);
        Measured& m = out[static_cast<size_t>(rank)];
        for (int64_t i = 0; i < steps; ++i) {
          const int64_t dp = e.dp_bytes_sent(), tp = e.tp_bytes_sent(), pp = e.pp_bytes_sent();
          const int64_t cp = e.cp_bytes_sent(), ep = e.ep_bytes_sent(), edp = e.edp_bytes_sent();
          e.train_step();
          m.bytes = {{"dp", e.dp_bytes_sent() - dp}, {"tp", e.tp_bytes_sent() - tp}, {"pp", e.pp_bytes_sent() - pp},
                     {"cp", e.cp_bytes_sent() - cp}, {"ep", e.ep_bytes_sent() - ep}, {"edp", e.edp_bytes_sent() - edp}};
        }
        m.memory = e.memory();
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

void expect_close(double planned, double measured, double tolerance, const std::string& what) {
  const double err = std::abs(planned - measured) / std::max(measured, 1.0);
  EXPECT_LE(err, tolerance) << what << ": planned " << planned << ", measured " << measured;
}

// Plans and runs `overrides` of `file` on `world` ranks and compares every rank.
void expect_plan_matches_engine(const std::string& file, int64_t world, const std::vector<std::string>& overrides) {
  const config::Recipe r = recipe_of(file, overrides, world);
  const Plan plan = make_plan(r, Hardware{});
  const std::vector<Measured> got = measure(r);
  dist::ParallelSizes sizes = plan.sizes;
  const dist::ParallelState layout(sizes);
  std::string name = file;
  for (const std::string& o : overrides) name += " " + o;
  for (int64_t rank = 0; rank < world; ++rank) {
    const Measured& m = got[static_cast<size_t>(rank)];
    const StagePlan& s = plan.stages[static_cast<size_t>(layout.coords(rank).pp)];
    const std::string what = str(name, ", rank ", rank, " (stage ", s.stage, ")");
    expect_close(static_cast<double>(s.memory.params_bytes()), static_cast<double>(m.memory.params_bytes), 0.02,
                 what + ": parameters");
    expect_close(static_cast<double>(s.memory.expert_params), static_cast<double>(m.memory.expert_params_bytes), 0.02,
                 what + ": expert parameters");
    expect_close(static_cast<double>(s.memory.grads), static_cast<double>(m.memory.grads_bytes), 0.02,
                 what + ": gradients");
    expect_close(static_cast<double>(s.memory.optimizer), static_cast<double>(m.memory.optimizer_bytes), 0.02,
                 what + ": optimizer");
    expect_close(static_cast<double>(s.memory.activations), static_cast<double>(m.memory.activations_peak_bytes), 0.2,
                 what + ": activations");
    std::map<std::string, double> planned;
    for (const CommPlan& c : s.comm) planned[c.dim] += static_cast<double>(c.bytes);
    for (const auto& [dim, bytes] : m.bytes) {
      // Scalars (the loss, the gradient norm) travel on groups the plan leaves silent.
      if (planned[dim] == 0 && bytes < 4096) continue;
      expect_close(planned[dim], static_cast<double>(bytes), 0.1, what + ": bytes sent over " + dim);
    }
  }
}

TEST(PlanEngine, DataParallelEveryShardingStrategy) {
  for (const char* s : {"no_shard", "optim", "optim_grads", "optim_grads_params"})
    expect_plan_matches_engine("tiny.toml", 2, {std::string("ddp.data_parallel_sharding_strategy=") + s});
}

TEST(PlanEngine, TensorParallelWithAndWithoutSequenceParallel) {
  expect_plan_matches_engine("tiny.toml", 2, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true"});
  expect_plan_matches_engine("tiny.toml", 2, {"model.tensor_model_parallel_size=2"});
}

TEST(PlanEngine, PipelineWithAndWithoutVirtualStages) {
  expect_plan_matches_engine("tiny.toml", 2, {"model.pipeline_model_parallel_size=2"});
  expect_plan_matches_engine("tiny.toml", 2,
                             {"model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2"});
}

// Under the interleaved schedule each chunk keeps only its own micro-batches in flight (the
// later chunk fewer), and the planned activations match the engine's within 3%.
TEST(PlanEngine, VirtualStagesKeepEachChunksOwnMicroBatchesInFlight) {
  const std::vector<std::string> o = {"model.pipeline_model_parallel_size=2",
                                      "model.virtual_pipeline_model_parallel_size=2"};
  const config::Recipe r = recipe_of("tiny.toml", o, 2);
  const Plan plan = make_plan(r, Hardware{});
  EXPECT_EQ(plan.stages[0].memory.chunk_in_flight, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(plan.stages[1].memory.chunk_in_flight, (std::vector<int64_t>{3, 1}));
  const std::vector<Measured> got = measure(r);
  for (int64_t stage = 0; stage < 2; ++stage) {
    const MemoryPlan& m = plan.stages[static_cast<size_t>(stage)].memory;
    const double measured = static_cast<double>(got[static_cast<size_t>(stage)].memory.activations_peak_bytes);
    expect_close(static_cast<double>(m.activations), measured, 0.03, str("stage ", stage, ": activations"));
  }
}

TEST(PlanEngine, ContextParallelBothExchanges) {
  expect_plan_matches_engine("tiny.toml", 2, {"model.context_parallel_size=2"});
  expect_plan_matches_engine("tiny.toml", 2, {"model.context_parallel_size=2", "model.cp_comm_type=all_gather"});
}

TEST(PlanEngine, ExpertParallelBothDispatchers) {
  expect_plan_matches_engine("tiny_moe.toml", 2, {"model.expert_model_parallel_size=2"});
  expect_plan_matches_engine("tiny_moe.toml", 2,
                             {"model.expert_model_parallel_size=2", "model.moe_token_dispatcher_type=allgather"});
}

TEST(PlanEngine, Bf16TensorAndSequenceParallel) {
  expect_plan_matches_engine("tiny.toml", 2, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                              "mixed_precision=bf16_mixed"});
}

// Full recompute: the kept group inputs and the shared re-run region.
TEST(PlanEngine, FullRecompute) {
  expect_plan_matches_engine("tiny.toml", 1, {"model.recompute_granularity=full", "model.recompute_method=uniform",
                                              "model.recompute_num_layers=1"});
  expect_plan_matches_engine("tiny.toml", 2, {"model.pipeline_model_parallel_size=2", "model.recompute_granularity=full",
                                              "model.recompute_method=uniform", "model.recompute_num_layers=2"});
  expect_plan_matches_engine("tiny.toml", 2, {"model.pipeline_model_parallel_size=2", "model.recompute_granularity=full",
                                              "model.recompute_method=block", "model.recompute_num_layers=1"});
}

TEST(PlanEngine, TiedOutputLayerAcrossStages) {
  // The last stage's copy of the embedding: its sharded gradient is gathered over dp-cp
  // before the embedding group sums it, and FSDP keeps a third gathered unit for it.
  for (const char* s : {"optim", "optim_grads_params"})
    expect_plan_matches_engine("tiny.toml", 4, {"model.share_embeddings_and_output_weights=true",
                                                "model.pipeline_model_parallel_size=2",
                                                std::string("ddp.data_parallel_sharding_strategy=") + s});
}

TEST(PlanEngine, FourRanksMixed) {
  // TP2 x PP2; DP2 x CP2 sharded over dp-cp 4; EP2 x DP2 with FSDP over dp-cp and edp.
  expect_plan_matches_engine("tiny.toml", 4, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                              "model.pipeline_model_parallel_size=2"});
  expect_plan_matches_engine("tiny.toml", 4, {"model.context_parallel_size=2", "ddp.use_distributed_optimizer=true"});
  expect_plan_matches_engine("tiny_moe.toml", 4, {"model.expert_model_parallel_size=2",
                                                  "ddp.data_parallel_sharding_strategy=optim_grads_params"});
}

}  // namespace
}  // namespace mpt::train
