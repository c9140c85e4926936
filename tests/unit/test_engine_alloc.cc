// A steady-state training step allocates nothing: every buffer is planned and allocated
// when the engine is built. Counted through the global operator new of this test program.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "train/engine.h"

namespace {
std::atomic<long> g_allocations{0};
}

// The replacements pair with each other: every new of this program goes through malloc,
// which GCC's mismatch heuristic cannot see.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace mpt::train {
namespace {

void expect_steady_state_allocates_nothing(const char* recipe, const std::vector<std::string>& overrides = {}) {
  config::Recipe r = config::load_recipe_file(std::string(MPT_SOURCE_DIR "/recipes/") + recipe);
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=2", "validation.eval_interval=null"});
  config::apply_overrides(r, overrides);
  config::finalize(r, 1);
  Engine e(r, Logger([](LogLevel, const std::string&) {}));
  e.train_step();
  e.train_step();
  const long before = g_allocations.load();
  for (int i = 0; i < 3; ++i) e.train_step();
  EXPECT_EQ(g_allocations.load() - before, 0) << recipe << ": heap allocations during 3 steady-state steps";
}

TEST(EngineMemory, SteadyStateStepAllocatesNothing) { expect_steady_state_allocates_nothing("tiny.toml"); }

// A profiled run's steps outside its window (the measured steps are 3 to 5) record nothing.
TEST(EngineMemory, SteadyStateStepWithProfilingOutsideItsWindowAllocatesNothing) {
  expect_steady_state_allocates_nothing("tiny.toml", {"profiling.timeline_dir=/tmp/mpt_unused_timeline",
                                                      "profiling.profile_step_start=8",
                                                      "profiling.profile_step_end=9"});
}

// bf16 mixed precision: the compute copies of the weights and the backend's conversion
// buffers are reused step after step.
TEST(EngineMemory, SteadyStateBf16StepAllocatesNothing) {
  expect_steady_state_allocates_nothing("tiny.toml", {"mixed_precision=bf16_mixed"});
  expect_steady_state_allocates_nothing("tiny_moe.toml", {"mixed_precision=bf16_mixed"});
}

// Activation recompute regenerates into buffers planned once; a recomputed MoE layer routes
// again into its slot's host-side work space.
TEST(EngineMemory, SteadyStateRecomputeStepAllocatesNothing) {
  const std::vector<std::string> full = {"model.recompute_granularity=full", "model.recompute_method=uniform",
                                         "model.recompute_num_layers=2"};
  expect_steady_state_allocates_nothing("tiny.toml", full);
  expect_steady_state_allocates_nothing("tiny_moe.toml", full);
  expect_steady_state_allocates_nothing(
      "tiny_moe.toml", {"model.recompute_granularity=selective",
                        "model.recompute_modules=[\"layernorm\",\"moe\"]"});
  expect_steady_state_allocates_nothing("tiny.toml", {"model.recompute_granularity=selective",
                                                      "model.recompute_modules=[\"layernorm\",\"mlp\"]"});
}

// Replaying recorded graphs (the emulated device records them as a GPU does): a step's
// inputs and loss weights are staged through buffers kept between micro-batches.
TEST(EngineMemory, SteadyStateGraphReplayAllocatesNothing) {
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  expect_steady_state_allocates_nothing("tiny.toml",
                                        {"model.cuda_graph_impl=local", "model.cuda_graph_warmup_steps=1"});
  expect_steady_state_allocates_nothing("tiny.toml", {"mixed_precision=bf16_mixed", "model.cuda_graph_impl=local",
                                                      "model.cuda_graph_warmup_steps=1"});
  ::unsetenv("MPT_BACKEND");
}

// The MoE layer's host-side routing keeps its work space between micro-batches too.
TEST(EngineMemory, SteadyStateMixtureOfExpertsStepAllocatesNothing) {
  expect_steady_state_allocates_nothing("tiny_moe.toml");
}

}  // namespace
}  // namespace mpt::train
