// bf16 mixed precision with the compute copies written by the optimizer's update: training
// gives the bits of a run that casts every copy afresh at each step, at the layouts where the
// optimizer writes them (one rank, experts, DP all-reduce, a tied embedding across pipeline
// stages), and a checkpoint loaded after steps is not shadowed by the copies the last step
// wrote.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "engine_threads.h"

namespace mpt::train {
namespace {

const std::string kBf16 = "mixed_precision=bf16_mixed";

struct Trained {
  StepResult last;
  std::vector<float> params;  // rank 0's, gathered
};

// Engine::train() of tiny(overrides) for its first `iters` iterations on `world` ranks.
Trained train(int64_t world, std::vector<std::string> overrides, int64_t iters) {
  overrides.push_back("train.exit_interval=" + std::to_string(iters));
  overrides.push_back("logger.log_interval=1000");
  config::Recipe r = testing::tiny(overrides);
  config::finalize(r, world);
  const int port = testing::free_port();
  Trained out;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank)
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchPlace place;
        place.rank = place.local_rank = rank;
        place.world_size = world;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Engine e(r, Logger([](LogLevel, const std::string&) {}, LogLevel::kError), place);
        const StepResult last = e.train();
        std::vector<float> params = e.gather_parameters();
        if (rank == 0) out = Trained{last, std::move(params)};
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

void expect_same_bits(const Trained& got, const Trained& want, const std::string& what) {
  EXPECT_EQ(got.last.lm_loss, want.last.lm_loss) << what;
  EXPECT_EQ(got.last.grad_norm, want.last.grad_norm) << what;
  ASSERT_EQ(got.params.size(), want.params.size()) << what;
  EXPECT_EQ(std::memcmp(got.params.data(), want.params.data(), got.params.size() * sizeof(float)), 0)
      << what << ": the final parameters differ";
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// An evaluation after every step takes the optimizer's copies for its own pass, so the step
// after it casts every copy again: the run casting each step against the one that does not.
TEST(OptimComputeCopies, WrittenCopiesTrainAsCastOnes) {
  const std::vector<std::string> moe = {"model.num_moe_experts=4", "model.moe_ffn_hidden_size=176",
                                        "model.moe_aux_loss_coeff=1e-2"};
  struct Layout {
    const char* what;
    int64_t world;
    std::vector<std::string> overrides;
  };
  const Layout layouts[] = {
      {"one rank", 1, {}},
      {"one rank, experts", 1, moe},
      {"DP2 all-reduce", 2, {}},
      {"PP2, tied embedding", 2, {"model.pipeline_model_parallel_size=2", "model.share_embeddings_and_output_weights=true"}},
  };
  for (const Layout& l : layouts) {
    const Trained cast = train(l.world, plus({kBf16, "validation.eval_interval=1", "validation.eval_iters=1"}, l.overrides), 4);
    const Trained written = train(l.world, plus({kBf16}, l.overrides), 4);
    expect_same_bits(written, cast, l.what);
  }
}

// Steps, then a load: the next step computes with the loaded weights, as a fresh engine
// loading the same checkpoint does.
TEST(OptimComputeCopies, ALoadReplacesTheCopiesTheLastStepWrote) {
  config::Recipe r = testing::tiny({kBf16});
  config::finalize(r, 1);
  const Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
  const std::string root = ::testing::TempDir() + "mpt_optim_compute_copies";
  std::filesystem::remove_all(root);
  std::string dir;
  {
    Engine saver(r, quiet);
    saver.train_step();
    dir = saver.save_checkpoint(root);
  }
  Engine fresh(r, quiet), trained(r, quiet);
  for (int i = 0; i < 3; ++i) trained.train_step();
  fresh.load_checkpoint(dir);
  trained.load_checkpoint(dir);
  const StepResult want = fresh.train_step(), got = trained.train_step();
  EXPECT_EQ(got.lm_loss, want.lm_loss);
  EXPECT_EQ(got.grad_norm, want.grad_norm);
  const std::vector<float> a = trained.gather_parameters(), b = fresh.gather_parameters();
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  std::filesystem::remove_all(root);
}

}  // namespace
}  // namespace mpt::train
