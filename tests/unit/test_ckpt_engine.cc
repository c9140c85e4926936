// Distributed checkpoints through the engine: every rank writes the slices it owns, and a
// checkpoint saved at one layout loads at another, each rank reading only its slices.
// recipes/tiny.toml (and its mixture-of-experts form) on ranks as threads.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "ckpt/checkpoint.h"
#include "engine_threads.h"

namespace mpt::train {
namespace {

struct Trained {
  std::vector<double> losses;  // rank 0's
  std::string saved;           // the directory rank 0 saved, if asked
};

// Trains `steps` steps of tiny(overrides) on `world` ranks (loading checkpoint.load when the
// overrides set it); then saves into `save_dir` when given.
Trained train(int64_t world, const std::vector<std::string>& overrides, int64_t steps,
              const std::string& save_dir = "") {
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
        place.rank = rank;
        place.world_size = world;
        place.local_rank = rank;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
        Engine e(r, quiet, place);
        for (int64_t i = 0; i < steps; ++i) {
          const double loss = e.train_step().lm_loss;
          if (rank == 0) out.losses.push_back(loss);
        }
        if (!save_dir.empty()) {
          const std::string dir = e.save_checkpoint(save_dir);
          if (rank == 0) out.saved = dir;
        }
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

std::vector<std::string> plus(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string fresh_dir(const std::string& name) {
  const std::string d = ::testing::TempDir() + "mpt_ckpt_engine_" + name;
  std::filesystem::remove_all(d);
  return d;
}

// Every rank wrote its own shard file: as many files as ranks that own something.
size_t shard_files(const std::string& dir) {
  size_t n = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir)) n += f.path().extension() == ".safetensors";
  return n;
}

// Train 20 steps straight; separately 10, save, a new set of engines loads, 10 more: the
// last 10 losses are bit-identical, at DP x TP x PP with the distributed optimizer.
TEST(CheckpointEngine, ResumeIsBitExactAtDataTensorPipelineLayout) {
  const std::vector<std::string> layout = {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
                                           "model.pipeline_model_parallel_size=2",
                                           "ddp.use_distributed_optimizer=true", "train.train_iters=20"};
  const Trained straight = train(8, layout, 20);
  const std::string dir = fresh_dir("resume");
  const Trained first = train(8, layout, 10, dir);
  EXPECT_EQ(shard_files(first.saved), 8u);
  const Trained second = train(8, plus(layout, {"checkpoint.load=" + dir}), 10);
  ASSERT_EQ(second.losses.size(), 10u);
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(second.losses[i], straight.losses[10 + i]) << "step " << 11 + i;
}

// Saved at TP=2 x PP=2 (DP=1), loaded at other layouts: the next step's loss equals the
// original layout's next loss within 1e-5 relative.
TEST(CheckpointEngine, ReshardingLoadsAtAnyLayout) {
  const std::vector<std::string> saved_at = {"model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"};
  const std::string dir = fresh_dir("reshard");
  train(4, saved_at, 3, dir);
  const double want = train(4, plus(saved_at, {"checkpoint.load=" + dir}), 1).losses.at(0);
  struct Layout {
    int64_t world;
    std::vector<std::string> overrides;
  };
  const std::vector<Layout> layouts = {
      {1, {}},
      {4, {"model.tensor_model_parallel_size=4"}},
      {4, {"model.pipeline_model_parallel_size=4"}},
      {2, {"ddp.data_parallel_sharding_strategy=optim_grads_params"}},
      {4, {"model.tensor_model_parallel_size=2", "model.sequence_parallel=true",
           "ddp.use_distributed_optimizer=true"}},
      {2, {"model.pipeline_model_parallel_size=2", "model.virtual_pipeline_model_parallel_size=2"}},
      {2, {"model.context_parallel_size=2"}},
  };
  for (const Layout& l : layouts) {
    const double got = train(l.world, plus(l.overrides, {"checkpoint.load=" + dir}), 1).losses.at(0);
    EXPECT_LT(testing::rel(got, want), 1e-5) << "world " << l.world << ": " << got << " vs " << want;
  }
}

// save -> load at another layout -> save gives the same tensors (vocabulary-sized ones: their
// real rows, as the padding depends on the tensor-parallel size).
TEST(CheckpointEngine, SaveLoadSaveKeepsEveryTensor) {
  const std::string a = fresh_dir("sls_a"), b = fresh_dir("sls_b");
  const Trained first = train(4, {"model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"}, 2, a);
  const Trained second = train(2, {"checkpoint.load=" + a, "ddp.data_parallel_sharding_strategy=optim"}, 0, b);
  ckpt::CheckpointReader ra(first.saved), rb(second.saved);
  ASSERT_EQ(ra.tensor_names(), rb.tensor_names());
  for (const std::string& name : ra.tensor_names()) {
    std::vector<int64_t> shape = ra.global_shape(name);
    if (name.find("word_embeddings") != std::string::npos || name.find("output_layer") != std::string::npos) {
      EXPECT_EQ(rb.global_shape(name)[1], shape[1]) << name;
      shape[0] = 257;
    } else {
      ASSERT_EQ(shape, rb.global_shape(name)) << name;
    }
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    ra.read(name, DType::kF32, std::vector<int64_t>(shape.size(), 0), shape, x.data());
    rb.read(name, DType::kF32, std::vector<int64_t>(shape.size(), 0), shape, y.data());
    EXPECT_EQ(x, y) << name;
  }
}

// A mixture of experts saved at EP=2 loads on one rank (EP=1).
TEST(CheckpointEngine, ExpertParallelCheckpointLoadsOnOneRank) {
  const std::vector<std::string> moe = {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176",
                                        "model.moe_aux_loss_coeff=1e-2", "model.moe_z_loss_coeff=1e-3",
                                        "model.moe_shared_expert_intermediate_size=176",
                                        "model.moe_token_dispatcher_type=alltoall"};
  const std::string dir = fresh_dir("moe");
  train(2, plus(moe, {"model.expert_model_parallel_size=2"}), 3, dir);
  const double want = train(2, plus(moe, {"model.expert_model_parallel_size=2", "checkpoint.load=" + dir}), 1).losses.at(0);
  const double got = train(1, plus(moe, {"checkpoint.load=" + dir}), 1).losses.at(0);
  EXPECT_LT(testing::rel(got, want), 1e-5) << got << " vs " << want;
}

// checkpoint.async_save: train() writes the checkpoints of iterations 2, 4 and 6 in the
// background while training goes on; they hold exactly what synchronous saves hold, and
// training resumed from the one of iteration 4 continues like the uninterrupted run.
TEST(CheckpointEngine, AsyncSaveWritesWhatSyncSaveWrites) {
  auto train_loop = [](int64_t world, const std::vector<std::string>& overrides) {
    config::Recipe r = testing::tiny(plus(overrides, {"train.train_iters=6", "checkpoint.save_interval=2"}));
    config::finalize(r, world);
    const int port = testing::free_port();
    std::vector<std::thread> threads;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    for (int64_t rank = 0; rank < world; ++rank)
      threads.emplace_back([&, rank] {
        try {
          dist::LaunchPlace place;
          place.rank = rank;
          place.world_size = world;
          place.local_rank = rank;
          place.master_addr = "127.0.0.1";
          place.master_port = port;
          Engine e(r, Logger([](LogLevel, const std::string&) {}, LogLevel::kError), place);
          e.train();
        } catch (...) {
          errors[static_cast<size_t>(rank)] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  };
  const std::string sync = fresh_dir("sync"), async = fresh_dir("async");
  const std::vector<std::string> layout = {"model.tensor_model_parallel_size=2", "ddp.use_distributed_optimizer=true"};
  train_loop(4, plus(layout, {"checkpoint.save=" + sync}));
  train_loop(4, plus(layout, {"checkpoint.save=" + async, "checkpoint.async_save=true"}));
  for (int it : {2, 4, 6}) {
    const std::string name = ckpt::iteration_dir_name(it);
    ckpt::CheckpointReader ra(sync + "/" + name), rb(async + "/" + name);
    ASSERT_EQ(ra.tensor_names(), rb.tensor_names());
    for (const std::string& t : ra.tensor_names()) {
      const std::vector<int64_t> shape = ra.global_shape(t);
      int64_t n = 1;
      for (int64_t d : shape) n *= d;
      std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
      ra.read(t, DType::kF32, std::vector<int64_t>(shape.size(), 0), shape, x.data());
      rb.read(t, DType::kF32, std::vector<int64_t>(shape.size(), 0), shape, y.data());
      ASSERT_EQ(x, y) << name << " " << t;
    }
  }
  EXPECT_EQ(ckpt::latest_iteration(async), 6);
  const Trained straight = train(4, layout, 6);
  const Trained resumed =
      train(4, plus(layout, {"checkpoint.load=" + async + "/" + ckpt::iteration_dir_name(4)}), 2);
  EXPECT_EQ(resumed.losses, std::vector<double>(straight.losses.begin() + 4, straight.losses.end()));
}

}  // namespace
}  // namespace mpt::train
