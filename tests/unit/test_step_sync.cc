// No host synchronisation inside a step: on the emulated device (MPT_BACKEND=cpu-device),
// the reads a training step makes from backend memory to the host (each a wait for the
// device on a GPU) do not grow with its micro-batches. The loss accumulates on the device
// and is read once per step; the rest are the step's own (the gradient norm, the finite
// check), also once per step.
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

}  // namespace
}  // namespace mpt::train
