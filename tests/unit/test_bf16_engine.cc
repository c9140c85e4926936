// bf16 mixed precision (mixed_precision = "bf16_mixed"), as Megatron trains: bf16
// activations, their gradients and a bf16 compute copy of the weights; fp32 master weights,
// gradients (grad_reduce_in_fp32) and Adam state. On the CPU backend bf16 tensors are stored
// rounded and computed in fp32 (backend/ops.h), so these runs are the reference the GPU's
// bf16 runs are compared with.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "engine_threads.h"

namespace mpt::train {
namespace {

using testing::RankRun;
using testing::rel;

const std::string kBf16 = "mixed_precision=bf16_mixed";

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

const std::vector<std::string> kMoe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                       "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                       "model.moe_shared_expert_intermediate_size=176"};

// Each step's loss within 2e-4 and gradient norm within 3e-3 (relative) of `want`. Seen: at
// most 2.7e-5 and 3.3e-4; bf16 against fp32 differs by 3.5e-3 and 4.4e-2.
void expect_close_run(const std::vector<RankRun>& got, const RankRun& want, const std::string& what) {
  const double loss_tol = 2e-4, norm_tol = 3e-3;
  for (size_t k = 0; k < got.size(); ++k) {
    ASSERT_EQ(got[k].losses.size(), want.losses.size()) << what;
    for (size_t i = 0; i < want.losses.size(); ++i) {
          EXPECT_LT(rel(got[k].losses[i], want.losses[i]), loss_tol)
          << what << " rank " << k << " step " << i + 1 << ": " << got[k].losses[i] << " vs " << want.losses[i];
      EXPECT_LT(rel(got[k].norms[i], want.norms[i]), norm_tol)
          << what << " rank " << k << " grad norm, step " << i + 1 << ": " << got[k].norms[i] << " vs "
          << want.norms[i];
    }
  }
}

double worst_rel(const std::vector<double>& a, const std::vector<double>& b) {
  double w = 0;
  for (size_t i = 0; i < a.size(); ++i) w = std::max(w, rel(a[i], b[i]));
  return w;
}

TEST(Bf16Engine, TinyTracksTheFp32LossCurve) {
  const RankRun fp32 = testing::run(1, {}, 10, {}).front();
  const RankRun bf16 = testing::run(1, {kBf16}, 10, {}).front();
  // bf16 is really in use (the curves are not the same bits) and follows fp32 closely.
  EXPECT_GT(worst_rel(bf16.losses, fp32.losses), 1e-6);
  EXPECT_LT(worst_rel(bf16.losses, fp32.losses), 1e-2);
  EXPECT_LT(worst_rel(bf16.norms, fp32.norms), 5e-2);
  // It learns as fp32 does: a stale bf16 copy of the weights would leave the loss where it
  // started.
  const double fp32_drop = fp32.losses.front() - fp32.losses.back();
  const double bf16_drop = bf16.losses.front() - bf16.losses.back();
  ASSERT_GT(fp32_drop, 0.1);
  EXPECT_NEAR(bf16_drop, fp32_drop, 0.05 * fp32_drop);
  // The master weights stay fp32 and end near the fp32 run's.
  ASSERT_EQ(bf16.params.size(), fp32.params.size());
  EXPECT_LT(testing::rel_l2(bf16.params, fp32.params, fp32.params.size()), 1e-2);
  bool any_off_bf16_grid = false;
  for (float p : bf16.params) any_off_bf16_grid = any_off_bf16_grid || round_bf16(p) != p;
  EXPECT_TRUE(any_off_bf16_grid) << "master weights must keep fp32 precision";
}

TEST(Bf16Engine, MemoryHoldsFp32MastersPlusBf16CopiesAndHalvesActivations) {
  const RankRun fp32 = testing::run(1, {}, 1, {}).front();
  const RankRun bf16 = testing::run(1, {kBf16}, 1, {}).front();
  // Parameters: fp32 masters plus the bf16 compute copy, 6 bytes where fp32 holds 4.
  EXPECT_EQ(bf16.memory.params_bytes * 4, fp32.memory.params_bytes * 6);
  EXPECT_EQ(bf16.memory.grads_bytes, fp32.memory.grads_bytes);          // fp32 gradients
  EXPECT_EQ(bf16.memory.optimizer_bytes, fp32.memory.optimizer_bytes);  // fp32 Adam state
  // Activations: bf16 except the logits, statistics and cross-entropy pieces.
  const double ratio = static_cast<double>(bf16.memory.activations_peak_bytes) /
                       static_cast<double>(fp32.memory.activations_peak_bytes);
  EXPECT_LT(ratio, 0.75);
  EXPECT_GT(ratio, 0.5);
}

// Every parallel layout in bf16 against the one-rank bf16 run. Layouts round in other places
// (partial sums of a row-parallel GEMM are rounded before their reduction, ring attention
// merges rounded blocks), so they agree to bf16 precision rather than bit for bit.
TEST(Bf16Engine, DenseLayoutsMatchOneRank) {
  const RankRun one = testing::run(1, {kBf16}, 4, {}).front();
  expect_close_run(testing::run(2, {kBf16}, 4, {}), one, "DP2");
  expect_close_run(testing::run(2, {kBf16, "ddp.use_distributed_optimizer=true"}, 4, {}), one, "DP2 distributed optimizer");
  expect_close_run(testing::run(2, {kBf16, "ddp.data_parallel_sharding_strategy=optim_grads_params"}, 4, {}), one, "FSDP DP2");
  expect_close_run(testing::run(2, {kBf16, "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"}, 4,
                                {}), one, "TP2+SP");
  expect_close_run(testing::run(2, {kBf16, "model.tensor_model_parallel_size=2"}, 4, {}), one, "TP2");
  expect_close_run(testing::run(2, {kBf16, "model.pipeline_model_parallel_size=2"}, 4, {}), one, "PP2");
  expect_close_run(testing::run(4,
                                {kBf16, "model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                 "model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2"},
                                4, {}),
                   one, "TP2+SP x PP2 x VPP2");
  expect_close_run(testing::run(2, {kBf16, "model.context_parallel_size=2"}, 4, {}), one, "CP2 ring");
  expect_close_run(testing::run(2, {kBf16, "model.context_parallel_size=2", "model.cp_comm_type=all_gather"}, 4, {}), one, "CP2 all-gather");
}

TEST(Bf16Engine, ExpertParallelMatchesOneRank) {
  const RankRun one = testing::run(1, plus({kBf16}, kMoe), 4, {}).front();
  expect_close_run(testing::run(2, plus({kBf16, "model.expert_model_parallel_size=2"}, kMoe), 4, {}), one, "EP2 allgather");
  expect_close_run(testing::run(2,
                                plus({kBf16, "model.expert_model_parallel_size=2",
                                      "model.moe_token_dispatcher_type=alltoall"},
                                     kMoe),
                                4, {}), one, "EP2 alltoall");
}

}  // namespace
}  // namespace mpt::train
