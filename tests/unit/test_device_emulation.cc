// The engine on a backend whose memory the host cannot touch (MPT_BACKEND=cpu-device: the
// CPU ops behind tagged device addresses, where any host access faults): every layout
// trains bit-identically to the CPU backend, so the model, parallel layers, staging of
// collectives through host memory, checkpoints and pipeline messages never read device
// memory from the host. This is the device code path a GPU run takes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "engine_threads.h"

namespace mpt::train {
namespace {

// Runs `world` ranks of tiny(overrides) for 3 steps on MPT_BACKEND=backend.
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

void expect_identical(int64_t world, const std::vector<std::string>& overrides, const std::string& what) {
  const auto cpu = run_on("cpu", world, overrides);
  const auto dev = run_on("cpu-device", world, overrides);
  for (size_t k = 0; k < cpu.size(); ++k) {
    EXPECT_EQ(dev[k].losses, cpu[k].losses) << what << " rank " << k;
    EXPECT_EQ(dev[k].norms, cpu[k].norms) << what << " rank " << k;
    EXPECT_EQ(dev[k].params, cpu[k].params) << what << " rank " << k;
    EXPECT_EQ(dev[k].grads_step1, cpu[k].grads_step1) << what << " rank " << k;
  }
}

const std::vector<std::string> kMoe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                       "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                       "model.moe_shared_expert_intermediate_size=176"};

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(DeviceEmulation, OneRankIsBitIdentical) { expect_identical(1, {}, "one rank"); }

TEST(DeviceEmulation, DataTensorPipelineLayoutsAreBitIdentical) {
  expect_identical(8,
                   {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                    "model.pipeline_model_parallel_size=2", "ddp.use_distributed_optimizer=true"},
                   "TP2+SP x PP2 x DP2, distributed optimizer");
  expect_identical(2, {"ddp.data_parallel_sharding_strategy=optim_grads_params"}, "FSDP DP2");
  expect_identical(2, {"model.context_parallel_size=2"}, "CP2");
  // A tied output layer across stages (its gradient summed over the embedding group), VPP.
  expect_identical(2,
                   {"model.share_embeddings_and_output_weights=true", "model.pipeline_model_parallel_size=2",
                    "model.virtual_pipeline_model_parallel_size=2", "model.hidden_dropout=0.1"},
                   "tied PP2 VPP2");
}

TEST(DeviceEmulation, ExpertParallelLayoutsAreBitIdentical) {
  expect_identical(2, plus(kMoe, {"model.expert_model_parallel_size=2"}), "EP2 alltoall");
  expect_identical(4,
                   plus(kMoe, {"model.expert_model_parallel_size=2", "model.tensor_model_parallel_size=2",
                               "model.sequence_parallel=true", "model.moe_token_dispatcher_type=allgather"}),
                   "EP2 x TP2+SP allgather");
}

// bf16 mixed precision: conversions, compute copies of the weights and bf16 messages stay
// in backend memory too.
TEST(DeviceEmulation, Bf16LayoutsAreBitIdentical) {
  expect_identical(1, {"mixed_precision=bf16_mixed"}, "bf16 one rank");
  expect_identical(4,
                   {"mixed_precision=bf16_mixed", "model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                    "model.pipeline_model_parallel_size=2"},
                   "bf16 TP2+SP x PP2");
  expect_identical(2, {"mixed_precision=bf16_mixed", "model.context_parallel_size=2"}, "bf16 CP2");
  expect_identical(2, {"mixed_precision=bf16_mixed", "ddp.data_parallel_sharding_strategy=optim_grads_params"},
                   "bf16 FSDP DP2");
  expect_identical(2, plus(kMoe, {"mixed_precision=bf16_mixed", "model.expert_model_parallel_size=2"}),
                   "bf16 EP2 alltoall");
}

}  // namespace
}  // namespace mpt::train
