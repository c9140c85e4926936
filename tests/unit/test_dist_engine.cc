// Data-parallel training, ranks as threads of this process: every sharding strategy at
// DP = 2 and 4 reproduces the one-rank run (losses and final parameters), memory per rank
// shrinks as the strategy promises, and the bytes sent per step match the ring algorithms.
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

const std::vector<RankRun>& oracle() {
  static const std::vector<RankRun> r = run(1, {});
  return r;
}

void expect_matches_oracle(const std::vector<RankRun>& got, const std::string& what) {
  testing::expect_same_run(got, oracle()[0], what);
}

struct Case {
  const char* sharding;
  int64_t dp;
};

class DataParallelEquivalence : public ::testing::TestWithParam<Case> {};

TEST_P(DataParallelEquivalence, MatchesOneRank) {
  const Case c = GetParam();
  const std::vector<RankRun> got =
      run(c.dp, {str("ddp.data_parallel_sharding_strategy=", c.sharding), "ddp.overlap_grad_reduce=true"});
  expect_matches_oracle(got, str(c.sharding, " at DP=", c.dp));

  // Bytes sent per rank in a step against the ring figures: an all-reduce sends 2(d-1)/d of
  // the buffer, a reduce-scatter or all-gather (d-1)/d. optim_grads reduce-scatters every
  // micro-batch; optim_grads_params also gathers every unit in forward and in backward.
  {
    const double d = static_cast<double>(c.dp), flat = static_cast<double>(got[0].flat_numel) * 4.0;
    const double ring = (d - 1) / d * flat;
    const double nmb = 4.0 / d;  // micro-batches per rank
    const std::string s = c.sharding;
    double expected = 2 * ring;  // no_shard, optim
    if (s == "optim_grads") expected = nmb * ring + ring;
    if (s == "optim_grads_params") expected = nmb * 3 * ring;
    for (size_t k = 0; k < got.size(); ++k) {
      const double ratio = static_cast<double>(got[k].dp_bytes_last_step) / expected;
      if (k == 0)
        std::printf("%-18s DP=%lld: %lld bytes sent per step, %.4f of the ring figure\n", c.sharding,
                    static_cast<long long>(c.dp), static_cast<long long>(got[k].dp_bytes_last_step), ratio);
      EXPECT_NEAR(ratio, 1.0, 0.1) << s << " rank " << k;
    }
  }
  // The optimizer state is sharded from `optim` on.
  const double opt_ratio = static_cast<double>(got[0].memory.optimizer_bytes) /
                           static_cast<double>(oracle()[0].memory.optimizer_bytes);
  EXPECT_NEAR(opt_ratio, std::string(c.sharding) == "no_shard" ? 1.0 : 1.0 / static_cast<double>(c.dp), 0.02);
}

INSTANTIATE_TEST_SUITE_P(Strategies, DataParallelEquivalence,
                         ::testing::Values(Case{"no_shard", 2}, Case{"no_shard", 4}, Case{"optim", 2}, Case{"optim", 4},
                                           Case{"optim_grads", 2}, Case{"optim_grads", 4},
                                           Case{"optim_grads_params", 2}, Case{"optim_grads_params", 4}),
                         [](const auto& info) { return str(info.param.sharding, "_dp", info.param.dp); });

// A tied output layer reads the embedding unit in the head and adds to its gradients from
// both ends of backward: the sharded storages keep that unit open across the pass.
TEST(DataParallelTied, ShardedStrategiesMatchOneRank) {
  const std::string tied = "model.share_embeddings_and_output_weights=true";
  const RankRun want = run(1, {tied}, 4)[0];
  for (const char* sharding : {"optim_grads", "optim_grads_params"}) {
    const std::vector<RankRun> got = run(2, {tied, str("ddp.data_parallel_sharding_strategy=", sharding)}, 4);
    for (const RankRun& rr : got) {
      ASSERT_EQ(rr.losses.size(), want.losses.size());
      for (size_t i = 0; i < rr.losses.size(); ++i)
        EXPECT_LT(rel(rr.losses[i], want.losses[i]), 1e-5) << sharding << " step " << i + 1;
      ASSERT_EQ(rr.params.size(), want.params.size());
      double worst = 0;
      for (size_t i = 0; i < rr.params.size(); ++i)
        worst = std::max(worst, static_cast<double>(std::abs(rr.params[i] - want.params[i])));
      EXPECT_LT(worst, 1e-5) << sharding;
    }
  }
}

// Memory per rank against one rank's, for a deeper model where a unit is a small part of
// the whole: optimizer state 1/DP from `optim` on, gradients 1/DP from `optim_grads` on
// and parameters 1/DP for `optim_grads_params`, each plus the working buffers of two units.
TEST(DataParallelMemory, ShrinksAsTheStrategyPromises) {
  const std::vector<std::string> deep = {"model.num_layers=32", "model.hidden_size=64", "model.ffn_hidden_size=176",
                                         "dataset.source=mock"};
  const MemoryReport one = run(1, deep, 0)[0].memory;
  for (int64_t dp : {2, 4}) {
    for (const char* sharding : {"no_shard", "optim", "optim_grads", "optim_grads_params"}) {
      std::vector<std::string> o = deep;
      o.push_back(str("ddp.data_parallel_sharding_strategy=", sharding));
      const MemoryReport m = run(dp, o, 0)[0].memory;
      const double opt = static_cast<double>(m.optimizer_bytes) / static_cast<double>(one.optimizer_bytes);
      const double grads = static_cast<double>(m.grads_bytes) / static_cast<double>(one.grads_bytes);
      const double params = static_cast<double>(m.params_bytes) / static_cast<double>(one.params_bytes);
      std::printf("%-18s DP=%lld: optimizer %.3f, gradients %.3f, parameters %.3f of one rank's\n", sharding,
                  static_cast<long long>(dp), opt, grads, params);
      const std::string s = sharding;
      const double share = 1.0 / static_cast<double>(dp);
      const double units = 0.1;  // two working units of 34
      if (s == "no_shard") {
        EXPECT_NEAR(opt, 1.0, 0.02);
        EXPECT_NEAR(grads, 1.0, 0.02);
      } else {
        EXPECT_NEAR(opt, share, 0.02) << s;
      }
      if (s == "optim") {
        EXPECT_NEAR(grads, 1.0 + share, 0.02) << "full gradients plus the reduced shard";
      }
      if (s == "optim_grads" || s == "optim_grads_params") {
        EXPECT_GT(grads, share);
        EXPECT_LT(grads, share + units) << s;
      }
      if (s == "optim_grads_params") {
        EXPECT_GT(params, share);
        EXPECT_LT(params, share + units) << s;
      } else {
        EXPECT_NEAR(params, 1.0, 0.02);
      }
    }
  }
}

}  // namespace
}  // namespace mpt::train
