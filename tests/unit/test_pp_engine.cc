// Pipeline parallelism, ranks as threads of this process: recipes/tiny.toml at PP = 2 and 4
// (1F1B), PP = 2 with two virtual stages each (interleaved), uneven stages, and
// PP = 2 x TP = 2 x DP = 2 reproduce the one-rank run; a stage holds about 1/PP of the
// parameters, and its activations are bounded by the schedule's micro-batches in flight
// (P for 1F1B), not by the number of micro-batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "engine_threads.h"

namespace mpt::train {
namespace {

using testing::rel;
using testing::RankRun;
using testing::run;

const RankRun& oracle() {
  static const RankRun r = run(1, {})[0];
  return r;
}

struct Case {
  const char* name;
  int64_t world;
  std::vector<std::string> overrides;
  bool params = true;
};

class PipelineEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(PipelineEquivalence, MatchesOneRank) {
  const Case& c = GetParam();
  // Final parameters are compared too unless TP pads the vocabulary differently.
  testing::expect_same_run(run(c.world, c.overrides), oracle(), c.name, c.params);
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, PipelineEquivalence,
    ::testing::Values(Case{"pp2", 2, {"model.pipeline_model_parallel_size=2"}},
                      Case{"pp4", 4, {"model.pipeline_model_parallel_size=4"}},
                      Case{"pp2_vpp2", 2,
                           {"model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2"}},
                      Case{"pp2_uneven", 2,
                           {"model.pipeline_model_parallel_size=2", "model.num_layers_in_first_pipeline_stage=1"}},
                      Case{"pp2_tp2_dp2", 8,
                           {"model.pipeline_model_parallel_size=2", "model.tensor_model_parallel_size=2",
                            "model.sequence_parallel=true", "ddp.data_parallel_sharding_strategy=optim"},
                           false}),
    [](const auto& info) { return std::string(info.param.name); });

// An output layer tied to the embedding lives on both the first and the last stage; their
// gradients are summed over the embedding group, so both copies stay equal to one rank's.
TEST(PipelineTied, EmbeddingSharedAcrossStagesMatchesOneRank) {
  const std::vector<std::string> tied = {"model.share_embeddings_and_output_weights=true",
                                         "model.hidden_dropout=0.1"};
  const RankRun want = run(1, tied, 4)[0];
  std::vector<std::string> o = tied;
  o.push_back("model.pipeline_model_parallel_size=2");
  o.push_back("model.virtual_pipeline_model_parallel_size=2");
  testing::expect_same_run(run(2, o, 4), want, "PP=2 VPP=2 tied");
  // With FSDP over DP = 2 too: the tied gradients are gathered from the shards, summed over
  // the embedding group and stored back.
  o.push_back("ddp.data_parallel_sharding_strategy=optim_grads_params");
  o.push_back("train.global_batch_size=32");
  const std::vector<std::string> tied32 = {"model.share_embeddings_and_output_weights=true",
                                           "model.hidden_dropout=0.1", "train.global_batch_size=32"};
  testing::expect_same_run(run(4, o, 4), run(1, tied32, 4)[0], "PP=2 VPP=2 x DP=2 FSDP tied");
}

// Micro-batch groups of 4 on 2 stages (Megatron's microbatch_group_size_per_vp_stage): the
// chunk with the loss keeps up to 2 micro-batches in flight, each adding its output layer's
// gradients in forward, while DP = 2 reduce-scatters each unit's gradients as backward
// completes it (optim_grads, optim_grads_params) or keeps them resident (optim).
TEST(PipelineGroups, LossChunkWithSeveralMicroBatchesInFlightMatchesOneRank) {
  const std::vector<std::string> batch = {"train.global_batch_size=48"};
  const RankRun want = run(1, batch)[0];
  for (const char* sharding : {"optim_grads", "optim_grads_params", "optim"}) {
    const std::vector<std::string> o = {"train.global_batch_size=48", "model.pipeline_model_parallel_size=2",
                                        "model.virtual_pipeline_model_parallel_size=2",
                                        "model.microbatch_group_size_per_vp_stage=4",
                                        str("ddp.data_parallel_sharding_strategy=", sharding)};
    testing::expect_same_run(run(4, o), want, str("PP=2 VPP=2 G=4 x DP=2 ", sharding));
  }
}

// Parameters per stage about 1/PP of one rank's (a deep model, so the layers dominate); the
// first stage's activations hold min(P, M) micro-batches under 1F1B whatever M is, and all M
// would not fit the same bytes.
TEST(PipelineMemory, StageHoldsItsShareAndPInFlight) {
  const std::vector<std::string> deep = {"model.num_layers=32", "model.hidden_size=64", "model.ffn_hidden_size=176",
                                         "dataset.source=mock"};
  const MemoryReport one = run(1, deep, 0)[0].memory;
  for (int64_t pp : {2, 4}) {
    std::vector<std::string> o = deep;
    o.push_back(str("model.pipeline_model_parallel_size=", pp));
    const std::vector<RankRun> got = run(pp, o, 0);
    for (size_t r = 0; r < got.size(); ++r) {
      const double params = static_cast<double>(got[r].memory.params_bytes) / static_cast<double>(one.params_bytes);
      std::printf("PP=%lld stage %zu: parameters %.3f of one rank's\n", static_cast<long long>(pp), r, params);
      EXPECT_NEAR(params, 1.0 / static_cast<double>(pp), 0.03) << "PP=" << pp << " stage " << r;
    }
  }
  // Stage 0 at PP = 4 with M = 4 and M = 16 micro-batches: the same P = 4 slots.
  auto stage0_acts = [&](int64_t global_batch) {
    std::vector<std::string> o = deep;
    o.push_back("model.pipeline_model_parallel_size=4");
    o.push_back(str("train.global_batch_size=", global_batch));
    return run(4, o, 0)[0].memory.activations_peak_bytes;
  };
  const int64_t m4 = stage0_acts(16), m16 = stage0_acts(64);
  std::printf("PP=4 stage 0 activations: %lld bytes at M=4, %lld at M=16; one rank (one micro-batch): %lld\n",
              static_cast<long long>(m4), static_cast<long long>(m16), static_cast<long long>(one.activations_peak_bytes));
  EXPECT_EQ(m4, m16);
  // Four micro-batches of a quarter of the layers: about one rank's single micro-batch.
  EXPECT_LT(static_cast<double>(m16), 1.2 * static_cast<double>(one.activations_peak_bytes));
}

}  // namespace
}  // namespace mpt::train
