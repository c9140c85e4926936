// The mixture-of-experts MLP: routing bookkeeping (capacity, both drop policies, padding,
// no tokens at all), and recipes/tiny_moe.toml training at one rank and at DP = 2 (experts
// replicated, their gradients averaged with the rest) like one rank.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "engine_threads.h"
#include "model/moe_layer.h"

namespace mpt::model {
namespace {

// Six tokens, all routed to expert 0 of 2 (a skewed router), top-1; capacity factor 1.0
// gives capacity ceil(6 * 1 / 2 * 1.0) = 3.
TEST(MoeRouting, CapacityDropsExactlyTheExpectedTokens) {
  const std::vector<int32_t> indices = {0, 0, 0, 0, 0, 0};
  const std::vector<float> probs = {0.9f, 0.5f, 0.7f, 0.95f, 0.6f, 0.8f};
  // probs: the three highest probabilities stay (tokens 3, 0, 5), in token order.
  Routing r = route_tokens(indices.data(), probs.data(), 6, 1, 2, 3, false, false);
  EXPECT_EQ(r.rows, (std::vector<int32_t>{0, -1, -1, 1, -1, 2}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{3, 0}));
  EXPECT_EQ(r.routed, (std::vector<int64_t>{6, 0}));
  EXPECT_EQ(r.total_rows, 3);
  // position: the first three tokens stay.
  r = route_tokens(indices.data(), probs.data(), 6, 1, 2, 3, true, false);
  EXPECT_EQ(r.rows, (std::vector<int32_t>{0, 1, 2, -1, -1, -1}));
  // Padded to capacity: expert 1 gets three empty rows.
  r = route_tokens(indices.data(), probs.data(), 6, 1, 2, 3, true, true);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(r.total_rows, 6);
  // Dropless: every choice kept.
  r = route_tokens(indices.data(), probs.data(), 6, 1, 2, -1, false, false);
  EXPECT_EQ(r.rows, (std::vector<int32_t>{0, 1, 2, 3, 4, 5}));
}

// Top-2 over 3 experts: rows grouped by expert, tokens ascending within an expert; equal
// probabilities keep the earlier token.
TEST(MoeRouting, TopTwoGroupsByExpertAndBreaksTiesByToken) {
  const std::vector<int32_t> indices = {2, 0, 0, 2, 2, 1, 0, 1};  // tokens 0..3, two choices each
  const std::vector<float> probs = {0.6f, 0.4f, 0.5f, 0.5f, 0.7f, 0.3f, 0.5f, 0.5f};
  Routing r = route_tokens(indices.data(), probs.data(), 4, 2, 3, -1, false, false);
  // expert 0: (t0, j1), (t1, j0), (t3, j0); expert 1: (t2, j1), (t3, j1); expert 2: (t0, j0), (t1, j1), (t2, j0)
  EXPECT_EQ(r.rows, (std::vector<int32_t>{5, 0, 1, 6, 7, 3, 2, 4}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{3, 2, 3}));
  // Capacity 2: expert 0 keeps t1 and t3 (0.5 each, over t0's 0.4); expert 2 keeps t2 (0.7)
  // and t0 (0.6) over t1 (0.5).
  r = route_tokens(indices.data(), probs.data(), 4, 2, 3, 2, false, false);
  EXPECT_EQ(r.rows, (std::vector<int32_t>{4, -1, 0, -1, 5, 2, 1, 3}));
  EXPECT_EQ(r.counts, (std::vector<int64_t>{2, 2, 2}));
}

TEST(MoeRouting, NoTokensAndEmptyExpertsWork) {
  Routing r = route_tokens(nullptr, nullptr, 0, 2, 4, 3, false, true);
  EXPECT_TRUE(r.rows.empty());
  EXPECT_EQ(r.counts, (std::vector<int64_t>{3, 3, 3, 3}));
  r = route_tokens(nullptr, nullptr, 0, 2, 4, -1, false, false);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_EQ(r.total_rows, 0);
}

}  // namespace
}  // namespace mpt::model

namespace mpt::train {
namespace {

config::Recipe tiny_moe(const std::vector<std::string>& overrides) {
  config::Recipe r = config::load_recipe_file(std::string(MPT_SOURCE_DIR) + "/recipes/tiny_moe.toml");
  config::apply_overrides(r, {"train.train_iters=10", "validation.eval_interval=null", "dataset.num_workers=1"});
  config::apply_overrides(r, overrides);
  return r;
}

// tiny_moe trains: a finite, falling loss, the router's losses and spread reported.
TEST(MoeEngine, TinyMoeTrainsAndReportsTheRouter) {
  config::Recipe r = tiny_moe({"train.train_iters=12"});
  config::finalize(r, 1);
  Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
  Engine e(r, quiet);
  std::vector<StepResult> steps;
  for (int i = 0; i < 12; ++i) steps.push_back(e.train_step());
  for (const StepResult& s : steps) {
    EXPECT_TRUE(std::isfinite(s.lm_loss));
    EXPECT_GT(s.moe_aux_loss, 0);
    EXPECT_GT(s.moe_z_loss, 0);
    EXPECT_GE(s.moe_expert_spread, 1.0);
  }
  EXPECT_LT(steps.back().lm_loss, steps.front().lm_loss - 0.5);
  // The aux loss of a balanced router is coeff * topk... E * coeff * sum f P >= coeff (at
  // uniform routing exactly coeff).
  EXPECT_GT(steps.front().moe_aux_loss, 0.9e-2);
}

// Experts are replicated over data-parallel ranks at EP = 1: DP = 2 (FSDP sharding too)
// trains like one rank, and so does PP = 2 (each stage routes its own layers). recipes/tiny.toml made tiny_moe's mixture by overrides.
TEST(MoeEngine, DataAndPipelineParallelMatchOneRank) {
  const std::vector<std::string> moe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                        "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                        "model.moe_shared_expert_intermediate_size=176"};
  const testing::RankRun want = testing::run(1, moe)[0];
  testing::expect_same_run(testing::run(2, moe), want, "MoE DP=2");
  std::vector<std::string> fsdp = moe;
  fsdp.push_back("ddp.data_parallel_sharding_strategy=optim_grads_params");
  testing::expect_same_run(testing::run(2, fsdp), want, "MoE DP=2 FSDP");
  std::vector<std::string> pp = moe;
  pp.push_back("model.pipeline_model_parallel_size=2");
  testing::expect_same_run(testing::run(2, pp), want, "MoE PP=2");
}

}  // namespace
}  // namespace mpt::train
