// Activation recompute on the CPU backend: the activation memory each scheme reserves and its
// step time, against no recompute in the same run, on recipes/tiny.toml and on a larger
// LLaMA-style shape (8 layers, hidden 512). One rank, so one micro-batch is in flight: a
// scheme keeps what it keeps for that one, plus one layer's (or group's) shared region.
// The gradients are the same bits with every scheme (tests/unit/test_recompute.cc); only
// memory and time change.
//
//   build/bench_recompute [tiny|large|all] [steps]   (default 3 timed steps after 1 warm-up)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_ranks.h"
#include "config/recipe.h"
#include "core/error.h"
#include "model/gpt_dims.h"
#include "train/engine.h"

namespace {

// 8 layers of hidden 512 (8 heads over 4 query groups, SwiGLU 1408), sequence 512,
// micro-batch 2, 2 micro-batches per step, on mock tokens of a 4096 vocabulary.
const char* kLarge = R"(
[model]
num_layers = 8
hidden_size = 512
ffn_hidden_size = 1408
num_attention_heads = 8
num_query_groups = 4
seq_length = 512
vocab_size = 4096
normalization = "RMSNorm"
activation_func = "silu"
gated_linear_unit = true
add_bias_linear = false
position_embedding_type = "rope"
share_embeddings_and_output_weights = false
hidden_dropout = 0.1
attention_dropout = 0.1
[train]
micro_batch_size = 2
global_batch_size = 4
train_iters = 1000
[optimizer]
lr = 1e-4
[dataset]
source = "mock"
)";

std::vector<std::vector<std::string>> schemes(int64_t layers) {
  auto selective = [](const std::string& modules) {
    return std::vector<std::string>{"model.recompute_granularity=selective", "model.recompute_modules=" + modules};
  };
  auto full = [](const std::string& method, int64_t n) {
    return std::vector<std::string>{"model.recompute_granularity=full", "model.recompute_method=" + method,
                                    "model.recompute_num_layers=" + std::to_string(n)};
  };
  return {{},
          selective("[\"core_attn\"]"),
          selective("[\"layernorm\"]"),
          selective("[\"mlp\"]"),
          selective("[\"layernorm\",\"mlp\"]"),
          full("uniform", 1),
          full("uniform", 2),
          full("block", 1),
          full("block", layers / 2)};
}

void run(const std::string& name, const mpt::config::Recipe& base, int steps) {
  const int64_t layers = base.model.num_layers;
  std::printf("\n%s: %lld layers, hidden %lld, sequence %lld x micro-batch %lld; %d timed steps\n", name.c_str(),
              static_cast<long long>(layers), static_cast<long long>(base.model.hidden_size),
              static_cast<long long>(base.model.seq_length), static_cast<long long>(*base.train.micro_batch_size),
              steps);
  std::printf("  %-46s %-22s %-18s %s\n", "recompute", "activations MiB", "step ms", "first loss");
  {  // the process's first steps are slower (thread pools, first page touches): untimed
    mpt::config::Recipe r = base;
    mpt::config::finalize(r, 1);
    mpt::bench::time_steps(r, 1, 1, &mpt::train::Engine::dp_bytes_sent);
  }
  int64_t ref_bytes = 0;
  double ref_s = 0;
  for (const std::vector<std::string>& scheme : schemes(layers)) {
    mpt::config::Recipe r = base;
    mpt::config::apply_overrides(r, scheme);
    mpt::config::finalize(r, 1);
    const std::string label = mpt::model::make_dims(r).recompute.describe();
    const mpt::bench::StepFigures f =
        mpt::bench::time_steps(r, 1, steps, &mpt::train::Engine::dp_bytes_sent).front();
    const int64_t bytes = f.memory.activations_peak_bytes;
    if (ref_bytes == 0) {
      ref_bytes = bytes;
      ref_s = f.step_s;
    }
    char time[64];
    std::snprintf(time, sizeof(time), "%.1f (%.2fx)", f.step_s * 1e3, f.step_s / ref_s);
    std::printf("  %-46s %-22s %-18s %.6f\n", label.c_str(), mpt::bench::with_ratio(bytes, ref_bytes).c_str(), time,
                f.first_loss);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "all";
  const int steps = argc > 2 ? std::atoi(argv[2]) : 3;
  try {
    if (which == "tiny" || which == "all") {
      mpt::config::Recipe r = mpt::config::load_recipe_file(MPT_BENCH_SOURCE_DIR "/recipes/tiny.toml");
      mpt::config::apply_overrides(r, {"model.hidden_dropout=0.1", "model.attention_dropout=0.1",
                                       "validation.eval_interval=null", "dataset.num_workers=1"});
      run("tiny (recipes/tiny.toml, dropout 0.1)", r, steps);
    }
    if (which == "large" || which == "all") run("large", mpt::config::load_recipe_string(kLarge, "large"), steps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_recompute: %s\n", e.what());
    return 1;
  }
  return 0;
}
