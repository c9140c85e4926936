// Graph capture (Ops::begin_capture, model.cuda_graph_impl = "local"), without a GPU: the
// emulated device (MPT_BACKEND=cpu-device) records graphs as a GPU does, fixing every
// argument when recorded and refusing what a replay could not repeat. So training that
// replays recorded micro-batches matches training without graphs bit for bit only if
// everything that differs between micro-batches (tokens, labels, the loss mask's weights)
// is read from backend memory, not baked into a recording.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "engine_threads.h"
#include "backend/ops.h"
#include "config/recipe.h"
#include "core/error.h"
#include "train/engine.h"

namespace mpt {
namespace {

using backend::Ops;

// Backend memory holding `values` (f32).
Tensor upload(Ops& ops, const std::vector<float>& values, std::initializer_list<int64_t> shape) {
  Tensor t(ops.allocate(values.size() * sizeof(float)), DType::kF32, shape);
  ops.to_device(t.data, values.data(), values.size() * sizeof(float));
  return t;
}

std::vector<float> download(Ops& ops, const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  ops.to_host(v.data(), t.data, v.size() * sizeof(float));
  return v;
}

TEST(Graphs, ReplayReadsMemoryAsItIsAndKeepsTheRecordedScalars) {
  auto ops = backend::make_emulated_device_ops(1);
  ASSERT_TRUE(ops->supports_graphs());
  const Tensor a = upload(*ops, {1, 2, 3, 4}, {2, 2}), b = upload(*ops, {1, 0, 0, 1}, {2, 2});
  const Tensor c = upload(*ops, {10, 10, 10, 10}, {2, 2});
  ops->begin_capture();
  EXPECT_TRUE(ops->capturing());
  ops->matmul(c, a, b, false, false, 2.0f, 1.0f);  // c = 2 a b + c
  ops->scale(a, 3.0f);
  std::unique_ptr<backend::Graph> g = ops->end_capture();
  EXPECT_FALSE(ops->capturing());
  EXPECT_EQ(g->nodes(), 2);
  EXPECT_EQ(download(*ops, c), (std::vector<float>{10, 10, 10, 10})) << "recording runs nothing";
  g->replay();
  EXPECT_EQ(download(*ops, c), (std::vector<float>{12, 14, 16, 18}));
  EXPECT_EQ(download(*ops, a), (std::vector<float>{3, 6, 9, 12}));
  // New contents of the same memory are read; alpha and the scale stay as recorded.
  ops->to_device(a.data, std::vector<float>{1, 1, 1, 1}.data(), 4 * sizeof(float));
  g->replay();
  EXPECT_EQ(download(*ops, c), (std::vector<float>{14, 16, 18, 20}));
  EXPECT_EQ(download(*ops, a), (std::vector<float>{3, 3, 3, 3}));
  for (const Tensor& t : {a, b, c}) ops->release(t.data);
}

TEST(Graphs, WhatAReplayCannotRepeatIsRefusedAndSpoilsTheCapture) {
  auto ops = backend::make_emulated_device_ops(1);
  const Tensor x = upload(*ops, {1, 2, 3}, {3});
  float host[3] = {};
  const std::vector<std::pair<std::string, std::function<void()>>> calls = {
      {"allocate(64 bytes)", [&] { ops->allocate(64); }},
      {"to_device()", [&] { ops->to_device(x.data, host, sizeof(host)); }},
      {"to_host()", [&] { ops->to_host(host, x.data, sizeof(host)); }},
      {"sum_squares()", [&] { ops->sum_squares(x); }},
      {"dot()", [&] { ops->dot(x, x); }},
      {"all_finite()", [&] { ops->all_finite(x); }},
      {"synchronize()", [&] { ops->synchronize(); }},
      {"begin_capture()", [&] { ops->begin_capture(); }},
  };
  for (const auto& [name, call] : calls) {
    ops->begin_capture();
    ops->scale(x, 2.0f);
    try {
      call();
      ADD_FAILURE() << name << " was not refused during capture";
    } catch (const Error& e) {
      EXPECT_EQ(e.status(), Status::kInternal) << name;
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    try {
      ops->end_capture();
      ADD_FAILURE() << "a capture spoiled by " << name << " gave a graph";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    EXPECT_FALSE(ops->capturing()) << name;
    // Nothing recorded ran, and the backend works as before.
    EXPECT_EQ(download(*ops, x), (std::vector<float>{1, 2, 3})) << name;
  }
  // release() runs from destructors, so it does not throw: the capture fails instead.
  ops->begin_capture();
  ops->release(nullptr);  // nothing to give back: not a refusal
  EXPECT_EQ(ops->end_capture()->nodes(), 0);
  void* spare = ops->allocate(64);
  ops->begin_capture();
  ops->release(spare);
  try {
    ops->end_capture();
    ADD_FAILURE() << "a capture that released memory gave a graph";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("release()"), std::string::npos) << e.what();
  }
  ops->begin_capture();
  ops->scale(x, 2.0f);
  ops->end_capture()->replay();
  EXPECT_EQ(download(*ops, x), (std::vector<float>{2, 4, 6}));
  ops->release(x.data);
}

TEST(Graphs, HostMemoryBackendsRecordNone) {
  auto ops = backend::make_cpu_ops(1);
  EXPECT_FALSE(ops->supports_graphs());
  try {
    ops->begin_capture();
    FAIL() << "the cpu backend recorded a graph";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kNotSupported);
  }
}

struct Trained {
  std::vector<train::StepResult> steps;
  std::vector<float> params;
  int64_t replays = 0;
  std::vector<std::string> log;
};

// tiny.toml (two layers, four micro-batches of 2 x 128 tokens) trained `steps` steps on the
// emulated device from host batches whose loss masks differ in every micro-batch.
Trained train(const std::vector<std::string>& overrides, int64_t steps = 5) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=2", "validation.eval_interval=null",
                              "train.micro_batch_size=2", "train.global_batch_size=8"});
  config::apply_overrides(r, overrides);
  config::finalize(r, 1);
  const int64_t rows = 8, S = 128;
  std::mt19937 rng(7);
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  Trained run;
  try {
    train::Engine e(r, Logger([&](LogLevel, const std::string& line) { run.log.push_back(line); }));
    const int64_t before = backend::emulated_device_graph_replays();
    for (int64_t i = 0; i < steps; ++i) {
      std::vector<int32_t> tokens(static_cast<size_t>(rows * S)), labels(tokens.size());
      std::vector<float> mask(tokens.size());
      for (size_t j = 0; j < tokens.size(); ++j) {
        tokens[j] = static_cast<int32_t>(rng() % 256);
        labels[j] = static_cast<int32_t>(rng() % 256);
        // Row k masks about k/10 of its tokens out: every micro-batch has its own mask sum.
        mask[j] = static_cast<int64_t>(rng() % 10) < static_cast<int64_t>(j) / S ? 0.0f : 1.0f;
      }
      train::HostBatch b{tokens.data(), labels.data(), mask.data(), rows, S};
      run.steps.push_back(e.train_step(&b));
    }
    run.replays = backend::emulated_device_graph_replays() - before;
    run.params = e.gather_parameters();
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  return run;
}

void expect_identical(const Trained& got, const Trained& want, const std::string& what) {
  ASSERT_EQ(got.steps.size(), want.steps.size());
  for (size_t i = 0; i < got.steps.size(); ++i) {
    EXPECT_EQ(got.steps[i].lm_loss, want.steps[i].lm_loss) << what << ", step " << i + 1;
    EXPECT_EQ(got.steps[i].grad_norm, want.steps[i].grad_norm) << what << ", step " << i + 1;
  }
  ASSERT_EQ(got.params.size(), want.params.size());
  size_t differ = 0;
  for (size_t i = 0; i < got.params.size(); ++i) differ += got.params[i] != want.params[i];
  EXPECT_EQ(differ, 0u) << what << ": parameters differing after training";
}

bool logged(const Trained& r, const std::string& needle) {
  for (const std::string& line : r.log)
    if (line.find(needle) != std::string::npos) return true;
  return false;
}

TEST(Graphs, ReplayedMicroBatchesTrainAsEagerOnesBitForBit) {
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"mixed_precision=bf16_mixed"},
      {"model.recompute_granularity=full", "model.recompute_method=uniform", "model.recompute_num_layers=1"},
      // Every micro-batch draws its own masks, through the backend's dropout seed.
      {"model.hidden_dropout=0.1", "model.attention_dropout=0.1"},
      {"model.hidden_dropout=0.1", "model.attention_dropout=0.1", "mixed_precision=bf16_mixed",
       "model.recompute_granularity=full", "model.recompute_method=uniform", "model.recompute_num_layers=1"},
  };
  for (const std::vector<std::string>& v : variants) {
    std::string what = "fp32";
    for (const std::string& o : v) what = o;
    const Trained eager = train(v);
    std::vector<std::string> with = v;
    with.insert(with.end(), {"model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=2"});
    const Trained graphed = train(with);
    EXPECT_EQ(eager.replays, 0) << what;
    // Steps 3 to 5 replay a forward and a backward per micro-batch.
    EXPECT_EQ(graphed.replays, 3 * 4 * 2) << what;
    EXPECT_TRUE(logged(graphed, "CUDA graph of a micro-batch's forward recorded at iteration 3")) << what;
    EXPECT_TRUE(logged(graphed, "CUDA graph of a micro-batch's backward recorded at iteration 3")) << what;
    expect_identical(graphed, eager, what);
    // The masks differ, so the losses do: a weight fixed in the recording would show.
    EXPECT_NE(eager.steps[3].lm_loss, eager.steps[4].lm_loss);
  }
}

// With the weights held still (lr 0) and the same batch every step, only dropout changes the
// loss: each step draws new masks, recorded or replayed, through the backend's seed.
TEST(Graphs, ReplaysDrawEachStepsOwnDropoutMasks) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=2", "validation.eval_interval=null",
                              "train.micro_batch_size=2", "train.global_batch_size=8", "optimizer.lr=0",
                              "optimizer.min_lr=0", "model.hidden_dropout=0.1", "model.attention_dropout=0.1",
                              "model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=1"});
  config::finalize(r, 1);
  std::vector<int32_t> tokens(8 * 128), labels(tokens.size());
  for (size_t j = 0; j < tokens.size(); ++j) tokens[j] = static_cast<int32_t>(j % 251), labels[j] = static_cast<int32_t>(j % 13);
  train::HostBatch b{tokens.data(), labels.data(), nullptr, 8, 128};
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  std::vector<double> loss;
  try {
    train::Engine e(r, Logger([](LogLevel, const std::string&) {}));
    for (int i = 0; i < 4; ++i) loss.push_back(e.train_step(&b).lm_loss);  // eager, recorded, replayed x2
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  for (size_t i = 0; i < loss.size(); ++i)
    for (size_t j = i + 1; j < loss.size(); ++j) EXPECT_NE(loss[i], loss[j]) << "steps " << i + 1 << ", " << j + 1;
}

// Loading a checkpoint after the graphs were recorded writes the same memory they read:
// the replayed steps after the load repeat the steps after the save, bit for bit.
TEST(Graphs, StepsAfterALoadReplayOnTheLoadedWeights) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=2", "validation.eval_interval=null",
                              "train.micro_batch_size=2", "train.global_batch_size=8", "mixed_precision=bf16_mixed",
                              "model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=1"});
  config::finalize(r, 1);
  const std::string dir = testing::TempDir() + "mpt_graphs_ckpt";
  std::filesystem::remove_all(dir);
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  std::vector<double> first, again;
  int64_t replays = 0;
  try {
    train::Engine e(r, Logger([](LogLevel, const std::string&) {}));
    e.train_step();
    e.save_checkpoint(dir);
    for (int i = 0; i < 3; ++i) first.push_back(e.train_step().lm_loss);  // recorded in the first
    e.load_checkpoint(dir);
    const int64_t before = backend::emulated_device_graph_replays();
    for (int i = 0; i < 3; ++i) again.push_back(e.train_step().lm_loss);
    replays = backend::emulated_device_graph_replays() - before;
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  std::filesystem::remove_all(dir);
  EXPECT_EQ(replays, 3 * 4 * 2);
  EXPECT_EQ(again, first);
}

// Data parallel: every micro-batch's forward and all but the last backward replay; the last
// backward runs eagerly and hands the gradients to the reduction (during it, with
// overlap_grad_reduce). Each rank matches its run without graphs bit for bit, for all-reduced
// gradients and for the distributed optimizer.
TEST(Graphs, DataParallelRanksReplayAllButTheLastBackward) {
  const std::vector<std::vector<std::string>> variants = {
      {"ddp.overlap_grad_reduce=true", "ddp.bucket_size=20000"},
      {"ddp.use_distributed_optimizer=true", "ddp.data_parallel_sharding_strategy=optim", "ddp.bucket_size=20000"},
  };
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  try {
    for (const std::vector<std::string>& v : variants) {
      std::vector<std::string> base = v;
      base.insert(base.end(), {"model.num_layers=2", "model.hidden_dropout=0.1", "model.attention_dropout=0.1"});
      const std::vector<train::testing::RankRun> eager = train::testing::run(2, base, 4);
      std::vector<std::string> with = base;
      with.insert(with.end(), {"model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=1"});
      const int64_t before = backend::emulated_device_graph_replays();
      const std::vector<train::testing::RankRun> graphed = train::testing::run(2, with, 4);
      // Steps 2 to 4, two ranks, two micro-batches each: two forwards and one backward.
      EXPECT_EQ(backend::emulated_device_graph_replays() - before, 3 * 2 * 3) << v[0];
      for (size_t k = 0; k < 2; ++k) {
        EXPECT_EQ(graphed[k].losses, eager[k].losses) << v[0] << ", rank " << k;
        EXPECT_EQ(graphed[k].norms, eager[k].norms) << v[0] << ", rank " << k;
        EXPECT_TRUE(graphed[k].params == eager[k].params) << v[0] << ", rank " << k << ": parameters differ";
      }
    }
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
}

TEST(Graphs, AHostMemoryBackendTrainsWithoutThemAndSaysSo) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=1", "validation.eval_interval=null",
                              "model.cuda_graph_impl=local"});
  config::finalize(r, 1);
  ::setenv("MPT_BACKEND", "cpu", 1);
  std::vector<std::string> log;
  {
    train::Engine e(r, Logger([&](LogLevel, const std::string& line) { log.push_back(line); }));
    e.train_step();
  }
  ::unsetenv("MPT_BACKEND");
  bool said = false;
  for (const std::string& line : log) said = said || line.find("records no graphs") != std::string::npos;
  EXPECT_TRUE(said);
}

TEST(Graphs, WhatGraphsCannotHoldIsRefusedNamingTheKey) {
  auto refused = [](const std::vector<std::string>& overrides, int64_t world, const std::string& key) {
    config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
    config::apply_overrides(r, {"model.cuda_graph_impl=local"});
    config::apply_overrides(r, overrides);
    try {
      config::finalize(r, world);
      ADD_FAILURE() << "accepted: " << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
    }
  };
  refused({"model.tensor_model_parallel_size=2"}, 2, "model.tensor_model_parallel_size");
  refused({"model.pipeline_model_parallel_size=2"}, 2, "model.pipeline_model_parallel_size");
  refused({"model.context_parallel_size=2"}, 2, "model.context_parallel_size");
  refused({"ddp.use_distributed_optimizer=true", "ddp.data_parallel_sharding_strategy=optim_grads"}, 2,
          "ddp.data_parallel_sharding_strategy");
  refused({"model.num_moe_experts=4"}, 1, "model.num_moe_experts");
  refused({"model.cuda_graph_impl=transformer_engine"}, 1, "use \"local\"");
  refused({"model.cuda_graph_impl=cudnn"}, 1, "model.cuda_graph_impl");
  refused({"model.cuda_graph_warmup_steps=0"}, 1, "model.cuda_graph_warmup_steps");
}

}  // namespace
}  // namespace mpt
