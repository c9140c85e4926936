// The planner on the production recipes, against figures worked out by hand: Llama-3 70B's
// parameters per GPU at TP 4 x PP 4 (the "70B in bf16 over 16 GPUs is about 8.75 GB" figure),
// its bytes per parameter under each sharding strategy, one layer's activations term by term,
// the bytes each dimension sends, which groups cross nodes, the pipeline bubble, activation
// recompute (modelled, not built), the search and its exclusions.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "train/plan.h"

namespace mpt::train {
namespace {

config::Recipe recipe(const std::string& name, const std::vector<std::string>& overrides = {}) {
  config::Recipe r = config::load_recipe_file(std::string(MPT_SOURCE_DIR) + "/recipes/" + name);
  config::apply_overrides(r, overrides);
  return r;
}

const Plan& llama70b() {
  static const Plan p = plan_recipe(recipe("llama70b.toml"), 64, Hardware{});
  return p;
}

int64_t comm_bytes(const StagePlan& s, const std::string& dim, const std::string& what = "") {
  int64_t b = 0;
  for (const CommPlan& c : s.comm)
    if (c.dim == dim && (what.empty() || c.what == what)) b += c.bytes;
  return b;
}

const CommPlan* comm(const StagePlan& s, const std::string& dim) {
  for (const CommPlan& c : s.comm)
    if (c.dim == dim) return &c;
  return nullptr;
}

// One decoder layer of Llama-3 70B on one of 4 tensor-parallel ranks: q/k/v (64 + 2 x 8 heads
// of 128), the output projection, gated fc1 and fc2 split four ways; both RMSNorm weights whole.
constexpr int64_t kLayerPerRank = ((64 + 16) * 128 * 8192 + 8192 * 8192 + 2 * 28672 * 8192 + 28672 * 8192) / 4 +
                                  2 * 8192;
// The vocabulary padded to a multiple of 128 x TP 4 = 512: 128512 rows, a quarter per rank.
constexpr int64_t kVocabPerRank = 128512 / 4 * 8192;

TEST(Plan, Llama70bParametersPerGpuMatchTheHandFigure) {
  const Plan& p = llama70b();
  ASSERT_EQ(p.stages.size(), 4u);
  EXPECT_EQ(p.stages[0].memory.parameters, 20 * kLayerPerRank + kVocabPerRank);  // + embedding
  EXPECT_EQ(p.stages[1].memory.parameters, 20 * kLayerPerRank);
  EXPECT_EQ(p.stages[2].memory.parameters, 20 * kLayerPerRank);
  EXPECT_EQ(p.stages[3].memory.parameters, 20 * kLayerPerRank + 8192 + kVocabPerRank);  // + final norm, output
  // 70.6 B parameters; in bf16 over TP 4 x PP 4, about 8.75 GB per GPU.
  EXPECT_NEAR(static_cast<double>(p.parameters), 70.55e9, 0.05e9);
  double mean = 0;
  for (const StagePlan& s : p.stages) mean += static_cast<double>(s.memory.parameters) / 4;
  EXPECT_NEAR(mean * 2, 8.75e9, 0.02 * 8.75e9);
  EXPECT_NEAR(static_cast<double>(p.stages[0].memory.params_compute), 2.0 * static_cast<double>(p.stages[0].memory.parameters),
              0.001 * 2.0 * static_cast<double>(p.stages[0].memory.parameters));
}

TEST(Plan, BytesPerParameterFollowTheShardingStrategy) {
  // ZeRO-1 over dp-cp = DP 2 x CP 2 = 4: fp32 master 4, bf16 copy 2, gradients 4 + 4/4 (the
  // reduced shard), Adam 8/4.
  const MemoryPlan& m = llama70b().stages[1].memory;
  const double n = static_cast<double>(m.parameters);
  EXPECT_NEAR(static_cast<double>(m.params_master) / n, 4.0, 0.01);
  EXPECT_NEAR(static_cast<double>(m.params_compute) / n, 2.0, 0.01);
  EXPECT_NEAR(static_cast<double>(m.grads) / n, 5.0, 0.01);
  EXPECT_NEAR(static_cast<double>(m.optimizer) / n, 2.0, 0.01);

  // No sharding: 4 + 2, gradients 4, Adam 8.
  const Hardware hw;
  const Plan ddp = plan_recipe(recipe("llama70b.toml", {"ddp.use_distributed_optimizer=false",
                                                        "optimizer.use_distributed_optimizer=false"}),
                               64, hw);
  EXPECT_EQ(ddp.sharding, "no_shard");
  const MemoryPlan& d = ddp.stages[1].memory;
  EXPECT_NEAR(static_cast<double>(d.grads) / n, 4.0, 0.01);
  EXPECT_NEAR(static_cast<double>(d.optimizer) / n, 8.0, 0.01);

  // ZeRO-3 (llama8b over dp-cp 8): everything over 8, plus two unit-sized working buffers of
  // master weights (the largest unit is the embedding, 128256 x 4096; three with a tied output
  // layer) and two bf16 copies.
  const Plan fsdp = plan_recipe(recipe("llama8b.toml"), 8, hw);
  EXPECT_EQ(fsdp.sharding, "optim_grads_params");
  const MemoryPlan& f = fsdp.stages[0].memory;
  const double unit = 128256.0 * 4096;
  const double n8 = static_cast<double>(f.parameters);
  EXPECT_NEAR(static_cast<double>(f.params_master), 4 * n8 / 8 + 2 * 4 * unit, 0.001 * static_cast<double>(f.params_master));
  EXPECT_NEAR(static_cast<double>(f.params_compute), 2 * 2 * unit, 0.001 * static_cast<double>(f.params_compute));
  EXPECT_NEAR(static_cast<double>(f.optimizer), 8 * n8 / 8, 0.001 * static_cast<double>(f.optimizer));
}

TEST(Plan, OneLayersActivationsTermByTerm) {
  // Llama-3 70B, micro-batch 1 of 8192 tokens over CP 2: T = 4096 tokens per rank, R = T / 4
  // rows under sequence parallelism, bf16. Saved per layer and micro-batch: the layer's input,
  // both norms' outputs and the residual after attention [R, 8192] each; q and the attention
  // output [T, 16 x 128] each; k and v [T, 2 x 128] each; fc1 [T, 2 x 7168]; the SwiGLU output
  // [T, 7168]; fp32: the attention's log-sum-exp [T, 16] and both norms' rstd [R].
  const int64_t T = 4096, R = 1024, b = 2;
  const int64_t want = 4 * R * 8192 * b + 2 * T * 2048 * b + 2 * T * 256 * b + T * 14336 * b + T * 7168 * b +
                       T * 16 * 4 + 2 * R * 4;
  EXPECT_EQ(llama70b().stages[1].memory.layer_activations, want);
  // Stage 0 of four under 1F1B keeps 4 micro-batches in flight, the last stage one.
  EXPECT_EQ(llama70b().stages[0].in_flight, 4);
  EXPECT_EQ(llama70b().stages[3].in_flight, 1);
  EXPECT_GT(llama70b().stages[0].memory.activations, 4 * 20 * want);
}

TEST(Plan, BytesSentPerDimension) {
  const Plan& p = llama70b();
  const StagePlan& s = p.stages[1];  // a middle stage: no embedding, no loss
  const int64_t M = 256, T = 4096, H = 8192, b = 2;
  // TP with SP: per layer and micro-batch, ten all-gathers / reduce-scatters of [T, H] (two
  // regions: all-gather in, reduce-scatter out; backward all-gather the output gradient, the
  // input again, reduce-scatter the input gradient), each sending 3/4 of it.
  EXPECT_EQ(comm_bytes(s, "tp", "all-gather / reduce-scatter activations"), M * 20 * 10 * T * H * b * 3 / 4);
  // PP: every micro-batch sends [R, H] on and its gradient back.
  EXPECT_EQ(comm_bytes(s, "pp"), 2 * M * (T / 4) * H * b);
  EXPECT_EQ(comm_bytes(p.stages[0], "pp"), M * (T / 4) * H * b);
  // CP ring over 2: per layer, forward one K/V block, backward one block and both
  // accumulators: 4 x (K and V of this rank).
  const int64_t kv = 2 * T * 256 * b;
  EXPECT_EQ(comm_bytes(s, "cp"), M * 20 * 4 * kv);
  // DP with the distributed optimizer over 4: reduce-scatter and all-gather 3/4 of the fp32
  // layout each.
  const double flat = static_cast<double>(s.memory.params_master);
  EXPECT_NEAR(static_cast<double>(comm_bytes(s, "dp")), 2 * 0.75 * flat, 2.0);
  // TP and CP stay inside a node; DP x CP and PP span nodes.
  EXPECT_FALSE(comm(s, "tp")->crosses_nodes);
  EXPECT_FALSE(comm(s, "cp")->crosses_nodes);
  EXPECT_TRUE(comm(s, "dp")->crosses_nodes);
  EXPECT_TRUE(comm(s, "pp")->crosses_nodes);
}

TEST(Plan, EstimateIncludesTheBubble) {
  const Plan& p = llama70b();
  EXPECT_DOUBLE_EQ(p.time.bubble_fraction, 3.0 / 256);
  double slowest = 0;
  for (const StagePlan& s : p.stages) slowest = std::max(slowest, s.microbatch_seconds);
  EXPECT_NEAR(p.time.pipeline_seconds, (256 + 3) * slowest, 1e-9);
  EXPECT_GE(p.time.step_seconds, p.time.pipeline_seconds);
  // Model FLOPs: about 6 x parameters per token plus attention; MFU below the compute efficiency.
  const double tokens = 512.0 * 8192;
  EXPECT_GT(p.time.model_flops, 6 * 70e9 * tokens);
  EXPECT_LT(p.time.model_flops, 6 * 70e9 * tokens * 1.5);
  EXPECT_GT(p.time.mfu, 0.3);
  EXPECT_LT(p.time.mfu, p.hardware.compute_efficiency);
  EXPECT_NEAR(p.time.tokens_per_second, tokens / p.time.step_seconds, 1e-6);
  // Virtual stages divide the bubble.
  const Plan v = plan_recipe(recipe("llama70b.toml", {"model.virtual_pipeline_model_parallel_size=5"}), 64, Hardware{});
  EXPECT_DOUBLE_EQ(v.time.bubble_fraction, 3.0 / (5 * 256));
}

TEST(Plan, FullRecomputeIsModelled) {
  config::Recipe r = recipe("llama70b.toml", {"model.recompute_granularity=full", "model.recompute_method=uniform",
                                              "model.recompute_num_layers=1"});
  config::Recipe engine_copy = r;
  EXPECT_NO_THROW(config::finalize(engine_copy, 64));  // the engine trains it
  const Plan p = plan_recipe(r, 64, Hardware{});
  EXPECT_EQ(p.recompute, "full (uniform: groups of 1 layer)");
  // Each layer keeps its input only; backward re-runs one layer's forward.
  EXPECT_LT(p.stages[0].memory.activations, llama70b().stages[0].memory.activations / 4);
  EXPECT_GT(p.stages[0].compute_seconds, llama70b().stages[0].compute_seconds * 1.3);
  // A full recompute without its method is refused.
  EXPECT_THROW(plan_recipe(recipe("llama70b.toml", {"model.recompute_granularity=full"}), 64, Hardware{}), Error);
}

TEST(Plan, SearchRanksTheRecipesLayoutAndSaysWhyFamiliesFail) {
  const SearchResult s = search_layouts(recipe("llama70b.toml"), 64, Hardware{});
  ASSERT_FALSE(s.feasible.empty());
  EXPECT_GE(s.recipe_rank, 1);
  const RankedLayout& own = s.feasible[static_cast<size_t>(s.recipe_rank - 1)];
  EXPECT_EQ(own.layout.label(), "TP 4 PP 4 CP 2 DP 2");
  for (size_t i = 0; i < s.feasible.size(); ++i) {
    EXPECT_TRUE(s.feasible[i].plan.fits()) << s.feasible[i].layout.label();
    EXPECT_LE(s.feasible[i].layout.tp, 8) << "TP beyond a node";
    if (i > 0) {
      EXPECT_GE(s.feasible[i - 1].plan.time.tokens_per_second, s.feasible[i].plan.time.tokens_per_second);
    }
  }
  auto reasons = [&](const std::string& family) {
    for (const ExcludedFamily& f : s.excluded)
      if (f.family == family) return f.reasons;
    return std::vector<std::string>{};
  };
  ASSERT_FALSE(reasons("TP 16").empty());
  EXPECT_NE(reasons("TP 16")[0].find("within a node"), std::string::npos);
  ASSERT_FALSE(reasons("TP 1 PP 32").empty());
  EXPECT_NE(reasons("TP 1 PP 32")[0].find("model.num_layers: must be divisible"), std::string::npos);
  ASSERT_FALSE(reasons("TP 1 PP 1").empty());
  EXPECT_NE(reasons("TP 1 PP 1").back().find("does not fit"), std::string::npos);
  // With Bridge's 5 virtual stages asked for, both are tried: interleaving does not fit here,
  // the same layout without it does.
  const SearchResult v = search_layouts(recipe("llama70b.toml", {"model.virtual_pipeline_model_parallel_size=5"}),
                                        64, Hardware{});
  EXPECT_EQ(v.recipe_rank, -1);
  bool plain = false, interleaved = false;
  for (const RankedLayout& l : v.feasible) {
    plain = plain || l.layout.label() == "TP 4 PP 4 CP 2 DP 2";
    interleaved = interleaved || l.layout.label() == "TP 4 PP 4 VPP 5 CP 2 DP 2";
  }
  EXPECT_TRUE(plain);
  EXPECT_FALSE(interleaved);
  EXPECT_GT(v.considered, s.considered);
}

TEST(Plan, SearchCoversExpertLayouts) {
  const SearchResult s = search_layouts(recipe("mixtral8x7b.toml"), 64, Hardware{});
  EXPECT_GE(s.recipe_rank, 1);
  bool other_ep = false;
  for (const RankedLayout& l : s.feasible) other_ep = other_ep || l.layout.ep != 8;
  EXPECT_TRUE(other_ep);
}

TEST(Plan, SmallestWorldAndRefusals) {
  EXPECT_EQ(smallest_world(recipe("llama70b.toml")), 32);
  EXPECT_EQ(smallest_world(recipe("mixtral8x7b.toml")), 32);   // ETP 1 x EP 8 x PP 4
  EXPECT_EQ(smallest_world(recipe("mixtral8x22b.toml")), 32);  // lcm(TP 4 x PP 4, EP 8 x PP 4)
  EXPECT_EQ(smallest_world(recipe("tiny.toml")), 1);
  config::Recipe raw = recipe("tiny.toml");
  EXPECT_THROW(make_plan(raw, Hardware{}), Error);  // not finalized
  EXPECT_THROW(search_layouts(raw, 0, Hardware{}), Error);
}

}  // namespace
}  // namespace mpt::train
