// Whole training steps on the GPU (MPT_BACKEND=cuda) against the CPU oracle: recipes/tiny.toml
// in fp32 for 3 steps, one rank, then multi-rank layouts sharing the one GPU (their
// collectives staged through host memory over gloo, as NCCL refuses two ranks on one
// device) against the one-rank GPU run. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../unit/engine_threads.h"
#include "device_util.h"

namespace mpt::train {
namespace {

std::vector<testing::RankRun> run_on(const char* backend, int64_t world, const std::vector<std::string>& overrides) {
  ::setenv("MPT_BACKEND", backend, 1);
  std::vector<testing::RankRun> r;
  try {
    r = testing::run(world, overrides, 3, {"decoder.layers.0.self_attention.linear_qkv.weight"});
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  return r;
}

// Each step's loss within 1e-5 relative, the gradient norm within 1e-4, the step-1
// gradients within 1e-5 (relative L2).
void expect_close_runs(const std::vector<testing::RankRun>& got, const testing::RankRun& want, const std::string& what) {
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_EQ(got[k].losses.size(), want.losses.size());
    for (size_t i = 0; i < want.losses.size(); ++i) {
      EXPECT_LT(testing::rel(got[k].losses[i], want.losses[i]), 1e-5) << what << " rank " << k << " step " << i + 1;
      EXPECT_LT(testing::rel(got[k].norms[i], want.norms[i]), 1e-4) << what << " rank " << k << " step " << i + 1;
    }
  }
  testing::expect_same_grads(got[0], want, {"decoder.layers.0.self_attention.linear_qkv.weight"}, what);
}

TEST(CudaEngine, Fp32StepsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  const testing::RankRun cpu = run_on("cpu", 1, {})[0];
  expect_close_runs(run_on("cuda", 1, {}), cpu, "GPU, one rank");
}

TEST(CudaEngine, LayoutsOnOneGpuMatchTheOneRankGpuRun) {
  MPT_SKIP_WITHOUT_GPU();
  const testing::RankRun one = run_on("cuda", 1, {})[0];
  expect_close_runs(run_on("cuda", 2, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true"}), one,
                    "TP=2");
  expect_close_runs(run_on("cuda", 2, {"model.pipeline_model_parallel_size=2"}), one, "PP=2");
  expect_close_runs(run_on("cuda", 2, {"model.context_parallel_size=2"}), one, "CP=2");
  const std::vector<std::string> moe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                        "model.moe_aux_loss_coeff=1e-2", "model.moe_shared_expert_intermediate_size=176"};
  const testing::RankRun moe_one = run_on("cuda", 1, moe)[0];
  std::vector<std::string> ep = moe;
  ep.push_back("model.expert_model_parallel_size=2");
  expect_close_runs(run_on("cuda", 2, ep), moe_one, "EP=2");
}

}  // namespace
}  // namespace mpt::train
