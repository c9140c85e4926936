// Expert parallelism against the one-rank oracle: recipes/tiny.toml made a mixture of experts
// (tiny_moe's experts: 8 of 176 SwiGLU units, top 2, a shared expert, both router losses) by
// overrides, trained 10 steps at expert-parallel layouts folded over data, tensor, context
// and pipeline parallelism, with both token dispatchers.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine_threads.h"

namespace mpt::train {
namespace {

const std::vector<std::string> kMoe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                       "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                       "model.moe_shared_expert_intermediate_size=176"};
// Gradients compared after step 1: the router, experts on different expert-parallel ranks,
// the shared expert and a dense weight.
const std::vector<std::string> kGrads = {
    "decoder.layers.0.mlp.router.weight",        "decoder.layers.0.mlp.experts.linear_fc1.weight0",
    "decoder.layers.1.mlp.experts.linear_fc2.weight7", "decoder.layers.2.mlp.experts.linear_fc1.weight5",
    "decoder.layers.3.mlp.shared_experts.linear_fc1.weight", "decoder.layers.1.self_attention.linear_qkv.weight",
    "output_layer.weight"};

std::vector<std::string> with(std::vector<std::string> extra) {
  std::vector<std::string> o = kMoe;
  o.insert(o.end(), extra.begin(), extra.end());
  return o;
}

const testing::RankRun& one_rank() {
  static const testing::RankRun want = testing::run(1, kMoe, 10, kGrads)[0];
  return want;
}

// Step-1 loss and gradients within 1e-5 relative, every step's loss within 1e-5, the final
// parameters within 1e-5 (except under TP, whose vocabulary padding differs).
void expect_matches_one_rank(int64_t world, const std::vector<std::string>& layout, const std::string& what,
                             bool params = true) {
  for (const char* dispatcher : {"alltoall", "allgather"}) {
    std::vector<std::string> o = with(layout);
    o.push_back(std::string("model.moe_token_dispatcher_type=") + dispatcher);
    const std::vector<testing::RankRun> got = testing::run(world, o, 10, kGrads);
    const std::string w = what + " (" + dispatcher + ")";
    testing::expect_same_run(got, one_rank(), w, params);
    testing::expect_same_grads(got[0], one_rank(), kGrads, w);
  }
}

TEST(ExpertParallel, EP2MatchesOneRank) {
  expect_matches_one_rank(2, {"model.expert_model_parallel_size=2"}, "EP=2");
}

TEST(ExpertParallel, EP4MatchesOneRank) {
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=4"}, "EP=4");
}

TEST(ExpertParallel, EP2AtWorld4WithExpertDataParallelMatchesOneRank) {
  // DP = 4, EDP = 2: each expert's gradient sums over its two replicas.
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2"}, "EP=2 DP=4 EDP=2");
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2", "ddp.data_parallel_sharding_strategy=optim_grads_params"},
                          "EP=2 DP=4 EDP=2 FSDP");
}

TEST(ExpertParallel, EP2WithTensorAndSequenceParallelMatchesOneRank) {
  // ETP defaults to TP (2): the experts' hidden units split too.
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2", "model.tensor_model_parallel_size=2",
                              "model.sequence_parallel=true"},
                          "EP=2 x TP=2+SP (ETP=2)", false);
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2", "model.tensor_model_parallel_size=2",
                              "model.sequence_parallel=true", "model.expert_tensor_parallel_size=1"},
                          "EP=2 x TP=2+SP, ETP=1", false);
}

TEST(ExpertParallel, EP2WithExpertTensorParallelMatchesOneRank) {
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2", "model.expert_tensor_parallel_size=2"},
                          "EP=2 x ETP=2");
}

TEST(ExpertParallel, EP2WithContextAndPipelineParallelMatchesOneRank) {
  expect_matches_one_rank(2, {"model.expert_model_parallel_size=2", "model.context_parallel_size=2"},
                          "EP=2 x CP=2");
  expect_matches_one_rank(4, {"model.expert_model_parallel_size=2", "model.pipeline_model_parallel_size=2"},
                          "EP=2 x PP=2");
}

// The experts' parameters per rank: 1/EP of the one-rank model's, 1/(EP x ETP) with ETP.
TEST(ExpertParallel, ExpertMemoryPerRankIsOneOverEpTimesEtp) {
  const double one = static_cast<double>(one_rank().memory.expert_params_bytes);
  ASSERT_GT(one, 0);
  const auto ep2 = testing::run(2, with({"model.expert_model_parallel_size=2"}), 1);
  const auto ep4 = testing::run(4, with({"model.expert_model_parallel_size=4"}), 1);
  const auto etp = testing::run(4, with({"model.expert_model_parallel_size=2", "model.expert_tensor_parallel_size=2"}), 1);
  for (const auto& r : ep2) EXPECT_NEAR(r.memory.expert_params_bytes / one, 0.5, 0.01);
  for (const auto& r : ep4) EXPECT_NEAR(r.memory.expert_params_bytes / one, 0.25, 0.01);
  for (const auto& r : etp) EXPECT_NEAR(r.memory.expert_params_bytes / one, 0.25, 0.01);
}

}  // namespace
}  // namespace mpt::train
