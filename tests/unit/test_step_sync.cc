// No host synchronisation inside a step: on the emulated device (MPT_BACKEND=cpu-device),
// the reads a training step makes from backend memory to the host (each a wait for the
// device on a GPU) do not grow with its micro-batches. The loss accumulates on the device
// and is read once per step; the rest are the step's own (the gradient norm, the finite
// check), also once per step. Nor do they grow with the model's parameters: the norm's pieces
// are summed in backend memory and read once, and the update is one call for all of them.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "config/recipe.h"
#include "train/engine.h"

namespace mpt::train {
namespace {

// Host reads of one steady-state step of a dense one-rank run with `microbatches`.
int64_t host_reads_per_step(int64_t microbatches, const std::vector<std::string>& overrides = {}) {
  config::Recipe r = config::load_recipe_file(MPT_SOURCE_DIR "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "model.num_layers=2", "validation.eval_interval=null",
                              "train.micro_batch_size=1",
                              "train.global_batch_size=" + std::to_string(microbatches)});
  config::apply_overrides(r, overrides);
  config::finalize(r, 1);
  ::setenv("MPT_BACKEND", "cpu-device", 1);
  int64_t reads = 0;
  try {
    Engine e(r, Logger([](LogLevel, const std::string&) {}));
    e.train_step();
    const int64_t before = backend::emulated_device_host_reads();
    e.train_step();
    reads = backend::emulated_device_host_reads() - before;
  } catch (...) {
    ::unsetenv("MPT_BACKEND");
    throw;
  }
  ::unsetenv("MPT_BACKEND");
  return reads;
}

TEST(StepSync, HostReadsDoNotGrowWithMicroBatches) {
  const int64_t two = host_reads_per_step(2), eight = host_reads_per_step(8);
  EXPECT_GT(two, 0) << "the step reads its loss and gradient norm";
  EXPECT_EQ(eight, two) << "a read per micro-batch: " << two << " reads at 2 micro-batches, " << eight << " at 8";
  // The same in bf16 (the compute copies of the weights are cast on the device).
  EXPECT_EQ(host_reads_per_step(8, {"mixed_precision=bf16_mixed"}), two);
}

TEST(StepSync, HostReadsDoNotGrowWithParameters) {
  const int64_t two_layers = host_reads_per_step(2);
  EXPECT_EQ(host_reads_per_step(2, {"model.num_layers=6"}), two_layers)
      << "a read per parameter: more layers, more reads";
  // Biases add pieces to every layer.
  EXPECT_EQ(host_reads_per_step(2, {"model.add_bias_linear=true", "model.num_layers=4"}), two_layers);
  EXPECT_EQ(host_reads_per_step(2, {"model.num_layers=6", "mixed_precision=bf16_mixed"}), two_layers);
  // Experts have an optimizer of their own (one norm read more) whatever their number. (The
  // router's token counts are read per MoE layer and micro-batch: so only the experts vary.)
  const int64_t four = host_reads_per_step(2, {"model.num_moe_experts=4", "model.moe_ffn_hidden_size=176"});
  EXPECT_EQ(host_reads_per_step(2, {"model.num_moe_experts=8", "model.moe_ffn_hidden_size=176"}), four);
}

}  // namespace
}  // namespace mpt::train
