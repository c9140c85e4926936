// Whole training steps on the GPU (MPT_BACKEND=cuda) against the CPU oracle: recipes/tiny.toml
// in fp32 for 3 steps, one rank, then multi-rank layouts sharing the one GPU (their
// collectives staged through host memory over gloo, as NCCL refuses two ranks on one
// device) against the one-rank GPU run; then bf16 mixed precision: its loss curve against
// fp32's, against the CPU's bf16 run, and its layouts against one rank; dropout against the
// CPU; CUDA graphs against eager steps. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../unit/engine_threads.h"
#include "device_util.h"

namespace mpt::train {
namespace {

std::vector<testing::RankRun> run_on(const char* backend, int64_t world, const std::vector<std::string>& overrides,
                                     int64_t steps = 3) {
  ::setenv("MPT_BACKEND", backend, 1);
  std::vector<testing::RankRun> r;
  try {
    r = testing::run(world, overrides, steps, {"decoder.layers.0.self_attention.linear_qkv.weight"});
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

const std::string kBf16 = "mixed_precision=bf16_mixed";

// Each step's loss and gradient norm within the given relative tolerances.
void expect_within(const std::vector<testing::RankRun>& got, const testing::RankRun& want, double loss_tol,
                   double norm_tol, const std::string& what) {
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_EQ(got[k].losses.size(), want.losses.size());
    for (size_t i = 0; i < want.losses.size(); ++i) {
      EXPECT_LT(testing::rel(got[k].losses[i], want.losses[i]), loss_tol)
          << what << " rank " << k << " step " << i + 1 << ": " << got[k].losses[i] << " vs " << want.losses[i];
      EXPECT_LT(testing::rel(got[k].norms[i], want.norms[i]), norm_tol)
          << what << " rank " << k << " grad norm, step " << i + 1;
    }
  }
}

// bf16 training of the tiny recipe follows the fp32 curve (within 1%, as on the CPU, where
// it is within 0.4%) and learns as much.
TEST(CudaEngine, Bf16TracksTheFp32LossCurve) {
  MPT_SKIP_WITHOUT_GPU();
  const testing::RankRun fp32 = run_on("cuda", 1, {}, 10)[0];
  const std::vector<testing::RankRun> bf16 = run_on("cuda", 1, {kBf16}, 10);
  expect_within(bf16, fp32, 1e-2, 1e-1, "bf16 against fp32 on the GPU");
  const double fp32_drop = fp32.losses.front() - fp32.losses.back();
  const double bf16_drop = bf16[0].losses.front() - bf16[0].losses.back();
  ASSERT_GT(fp32_drop, 0.1);
  EXPECT_NEAR(bf16_drop, fp32_drop, 0.05 * fp32_drop);
}

// The GPU's bf16 kernels against the CPU's bf16 reference (the same roundings; sums in
// other orders can round a value to the neighbouring bf16).
TEST(CudaEngine, Bf16StepsMatchTheCpuBf16) {
  MPT_SKIP_WITHOUT_GPU();
  const testing::RankRun cpu = run_on("cpu", 1, {kBf16})[0];
  expect_within(run_on("cuda", 1, {kBf16}), cpu, 2e-3, 2e-2, "bf16 GPU against bf16 CPU");
}

TEST(CudaEngine, Bf16LayoutsOnOneGpuMatchTheOneRankGpuRun) {
  MPT_SKIP_WITHOUT_GPU();
  const testing::RankRun one = run_on("cuda", 1, {kBf16})[0];
  expect_within(run_on("cuda", 2, {kBf16, "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"}), one,
                1e-3, 1e-2, "bf16 TP=2");
  expect_within(run_on("cuda", 2, {kBf16, "model.pipeline_model_parallel_size=2"}), one, 1e-3, 1e-2, "bf16 PP=2");
  expect_within(run_on("cuda", 2, {kBf16, "model.context_parallel_size=2"}), one, 1e-3, 1e-2, "bf16 CP=2");
  const std::vector<std::string> moe = {kBf16, "model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                        "model.moe_aux_loss_coeff=1e-2", "model.moe_shared_expert_intermediate_size=176"};
  const testing::RankRun moe_one = run_on("cuda", 1, moe)[0];
  std::vector<std::string> ep = moe;
  ep.push_back("model.expert_model_parallel_size=2");
  expect_within(run_on("cuda", 2, ep), moe_one, 1e-3, 1e-2, "bf16 EP=2");
}

// Dropout on the GPU draws the CPU's masks (keyed through the backend's dropout seed).
TEST(CudaEngine, DropoutStepsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  const std::vector<std::string> dropout = {"model.hidden_dropout=0.1", "model.attention_dropout=0.1"};
  const testing::RankRun cpu = run_on("cpu", 1, dropout)[0];
  expect_close_runs(run_on("cuda", 1, dropout), cpu, "GPU with dropout, one rank");
}

// CUDA graphs replay the kernels eager steps launch, on the same memory: every step's loss,
// gradient norm and the final parameters are the same bits, in fp32 and bf16, with dropout.
TEST(CudaEngine, GraphedStepsMatchEagerStepsBitForBit) {
  MPT_SKIP_WITHOUT_GPU();
  for (const std::vector<std::string>& base :
       {std::vector<std::string>{"model.hidden_dropout=0.1", "model.attention_dropout=0.1"},
        std::vector<std::string>{kBf16, "model.hidden_dropout=0.1", "model.attention_dropout=0.1"}}) {
    const std::string what = base.size() == 3 ? "bf16" : "fp32";
    const testing::RankRun eager = run_on("cuda", 1, base, 6)[0];
    std::vector<std::string> graphs = base;
    graphs.insert(graphs.end(), {"model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=2"});
    const testing::RankRun graphed = run_on("cuda", 1, graphs, 6)[0];
    EXPECT_EQ(graphed.losses, eager.losses) << what;
    EXPECT_EQ(graphed.norms, eager.norms) << what;
    EXPECT_TRUE(graphed.params == eager.params) << what << ": final parameters differ";
  }
}

}  // namespace
}  // namespace mpt::train
