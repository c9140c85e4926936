// Data-parallel training, ranks as threads of this process: every sharding strategy at
// DP = 2 and 4 reproduces the one-rank run (losses and final parameters), memory per rank
// shrinks as the strategy promises, and the bytes sent per step match the ring algorithms.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "train/engine.h"

namespace mpt::train {
namespace {

// recipes/tiny.toml for 10 steps: 4 micro-batches of 4 per step at one rank, so DP = 2 and
// 4 split each step evenly.
config::Recipe tiny(const std::vector<std::string>& overrides) {
  config::Recipe r = config::load_recipe_file(std::string(MPT_SOURCE_DIR) + "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "validation.eval_interval=null", "checkpoint.save=null",
                              "dataset.num_workers=1", "dist.distributed_timeout_minutes=0.5"});
  config::apply_overrides(r, overrides);
  return r;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct RankRun {
  std::vector<double> losses, norms;
  std::vector<float> params;  // every parameter, registry order, no padding
  MemoryReport memory;
  int64_t bytes_last_step = 0;
  int64_t flat_numel = 0;
};

std::vector<RankRun> run(int64_t world, const std::vector<std::string>& overrides, int64_t steps = 10) {
  config::Recipe r = tiny(overrides);
  config::finalize(r, world);
  std::vector<RankRun> out(static_cast<size_t>(world));
  const int port = free_port();
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchPlace place;
        place.rank = rank;
        place.world_size = world;
        place.local_rank = rank;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
        Engine engine(r, quiet, place);
        RankRun& rr = out[static_cast<size_t>(rank)];
        for (int64_t i = 0; i < steps; ++i) {
          const int64_t before = engine.dp_bytes_sent();
          StepResult s = engine.train_step();
          rr.losses.push_back(s.lm_loss);
          rr.norms.push_back(s.grad_norm);
          rr.bytes_last_step = engine.dp_bytes_sent() - before;
        }
        rr.memory = engine.memory();
        rr.flat_numel = engine.flat_numel();
        rr.params = engine.gather_parameters();
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

const std::vector<RankRun>& oracle() {
  static const std::vector<RankRun> r = run(1, {});
  return r;
}

double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

void expect_matches_oracle(const std::vector<RankRun>& got, const std::string& what) {
  const RankRun& want = oracle()[0];
  for (size_t k = 0; k < got.size(); ++k) {
    const RankRun& rr = got[k];
    ASSERT_EQ(rr.losses.size(), want.losses.size());
    for (size_t i = 0; i < rr.losses.size(); ++i) {
      EXPECT_LT(rel(rr.losses[i], want.losses[i]), 1e-5)
          << what << " rank " << k << " step " << i + 1 << ": " << rr.losses[i] << " vs " << want.losses[i];
      EXPECT_LT(rel(rr.norms[i], want.norms[i]), 1e-4) << what << " rank " << k << " grad norm, step " << i + 1;
    }
    ASSERT_EQ(rr.params.size(), want.params.size());
    double worst = 0;
    for (size_t i = 0; i < rr.params.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::abs(rr.params[i] - want.params[i])));
    EXPECT_LT(worst, 1e-5) << what << " rank " << k << ": final parameters differ by up to " << worst;
  }
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
      const double ratio = static_cast<double>(got[k].bytes_last_step) / expected;
      if (k == 0)
        std::printf("%-18s DP=%lld: %lld bytes sent per step, %.4f of the ring figure\n", c.sharding,
                    static_cast<long long>(c.dp), static_cast<long long>(got[k].bytes_last_step), ratio);
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
