// Tensor and sequence parallelism on the CPU backend: one GPT-2-medium-like shape (cut to
// 8 layers so it runs on 2 cores) at TP = 1, 2, 2 + SP, 4 and 4 + SP, ranks as threads of
// this process talking over loopback gloo. Per layout it prints what one rank holds
// (parameters, gradients, optimizer state, activation peak) against TP = 1, the bytes one
// rank sends to its tensor-parallel peers per step against the analytic figure, the step
// time, and the first step's loss against TP = 1's (the same model at every layout).
//
//   build/bench_tensor_parallel [steps]      (default 3 timed steps after 1 warm-up)
//
// The ranks share this machine's cores, so step times across TP sizes are not a speed
// comparison; the memory and byte figures are exact.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_ranks.h"
#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/launch_env.h"
#include "train/engine.h"

namespace {

// 8 layers of GPT-2 medium's family (LayerNorm, gelu, biases, learned positions, tied
// output) at hidden 512; 2 micro-batches of 2 x 256 tokens per step, DP = 1.
const char* kShape = R"(
[model]
num_layers = 8
hidden_size = 512
ffn_hidden_size = 2048
num_attention_heads = 8
num_query_groups = 8
kv_channels = 64
seq_length = 256
vocab_size = 50257
normalization = "LayerNorm"
activation_func = "gelu"
gated_linear_unit = false
add_bias_linear = true
position_embedding_type = "learned_absolute"
share_embeddings_and_output_weights = true
hidden_dropout = 0.0
attention_dropout = 0.0
[train]
micro_batch_size = 2
global_batch_size = 4
train_iters = 1000
[optimizer]
lr = 1e-4
[dataset]
source = "mock"
num_workers = 1
[dist]
distributed_backend = "gloo"
distributed_timeout_minutes = 5
)";

struct Layout {
  int64_t tp;
  bool sp;
  std::string name() const { return "TP=" + std::to_string(tp) + (sp ? "+SP" : ""); }
};

using RankFigures = mpt::bench::StepFigures;

mpt::config::Recipe recipe_for(const Layout& l) {
  mpt::config::Recipe r = mpt::config::load_recipe_string(kShape, "bench_tensor_parallel");
  mpt::config::apply_overrides(r, {"model.tensor_model_parallel_size=" + std::to_string(l.tp),
                                   std::string("model.sequence_parallel=") + (l.sp ? "true" : "false")});
  mpt::config::finalize(r, l.tp);  // world = TP, DP = 1
  return r;
}

// Runs 1 warm-up step and `steps` timed steps on l.tp ranks, one thread each.
std::vector<RankFigures> run_layout(const Layout& l, int steps) {
  return mpt::bench::time_steps(recipe_for(l), l.tp, steps, &mpt::train::Engine::tp_bytes_sent);
}

// Parameters replicated over TP ranks whose gradients, under SP, each rank computes from its
// part of the sequence and so are summed over TP once per step: per layer two norm weights,
// two norm biases (LayerNorm) and the row-parallel biases of linear_proj and linear_fc2;
// the final norm's weight and bias; the learned position embedding [seq, hidden].
int64_t sequence_parallel_numel(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const int64_t H = m.hidden_size;
  const bool layernorm = m.normalization == "LayerNorm";
  const int64_t per_layer = 2 * H + (layernorm ? 2 * H : 0) + (m.add_bias_linear ? 2 * H : 0);
  int64_t n = m.num_layers * per_layer + H + (layernorm ? H : 0);
  if (m.position_embedding_type == "learned_absolute") n += m.seq_length * H;
  return n;
}

// Bytes one rank sends to its TP peers per step, counted from the algorithm: a ring
// all-reduce of B bytes sends 2(n-1)/n B, a reduce-scatter or all-gather (n-1)/n B.
//   per micro-batch without SP: all-reduces of [T,H] after the embedding and each of the 2L
//     row-parallel layers, and of d(input) before each of the 2L column-parallel layers and
//     the output layer: 4L + 2 all-reduces;
//   with SP: per layer 2 all-gathers + 2 reduce-scatters forward, and backward 2 all-gathers
//     of d(output) for the row-parallel layers, 2 re-gathers of the column-parallel inputs
//     (not kept from forward: that is the activation saving) and 2 reduce-scatters of their
//     d(input): 10 per layer; plus 5 for the embedding and the output layer: 10L + 5;
//   both: the vocab-parallel cross-entropy all-reduces [T] (max) and [2T] (sums);
//   per step: the gradient-norm all-reduce (one double) and, with SP, one all-reduce of the
//     sequence-parallel parameters' gradients.
double expected_tp_bytes(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const double n = static_cast<double>(m.tensor_model_parallel_size);
  if (n <= 1) return 0;
  const double L = static_cast<double>(m.num_layers), H = static_cast<double>(m.hidden_size), f = 4;
  const double T = static_cast<double>(m.seq_length * *r.train.micro_batch_size);
  const double ring = (n - 1) / n, act = T * H * f;
  double per_mb = m.sequence_parallel ? (10 * L + 5) * ring * act : (4 * L + 2) * 2 * ring * act;
  per_mb += 2 * ring * 3 * T * f;
  double per_step = 2 * ring * 8;
  if (m.sequence_parallel) per_step += 2 * ring * static_cast<double>(sequence_parallel_numel(r)) * f;
  return per_mb * static_cast<double>(r.derived.num_microbatches) + per_step;
}

using mpt::bench::mib;


bool same_memory(const mpt::train::MemoryReport& a, const mpt::train::MemoryReport& b) {
  return a.params_bytes == b.params_bytes && a.grads_bytes == b.grads_bytes && a.optimizer_bytes == b.optimizer_bytes &&
         a.activations_peak_bytes == b.activations_peak_bytes;
}

// Bytes sent to TP peers per step, as the mean over ranks: ranks may differ by a few bytes
// where a buffer does not split evenly into ring chunks (the one-double gradient norm at
// TP = 4). Prints, and clears `ok`, where ranks hold different sizes or a rank's bytes change
// from step to step.
double mean_tp_bytes(const Layout& l, const std::vector<RankFigures>& ranks, std::string& per_rank, bool& ok) {
  double mean = 0;
  for (size_t k = 0; k < ranks.size(); ++k) {
    const RankFigures& rk = ranks[k];
    if (!same_memory(rk.memory, ranks[0].memory)) {
      std::printf("%s: rank %zu holds other sizes than rank 0 (params %lld, grads %lld, optimizer %lld, "
                  "activations %lld)\n",
                  l.name().c_str(), k, static_cast<long long>(rk.memory.params_bytes),
                  static_cast<long long>(rk.memory.grads_bytes), static_cast<long long>(rk.memory.optimizer_bytes),
                  static_cast<long long>(rk.memory.activations_peak_bytes));
      ok = false;
    }
    for (size_t i = 1; i < rk.bytes.size(); ++i)
      if (rk.bytes[i] != rk.bytes[0]) {
        std::printf("%s: rank %zu sent %lld TP bytes in timed step %zu but %lld in the first\n", l.name().c_str(), k,
                    static_cast<long long>(rk.bytes[i]), i + 1, static_cast<long long>(rk.bytes[0]));
        ok = false;
      }
    mean += static_cast<double>(rk.bytes.back()) / static_cast<double>(ranks.size());
    if (k > 0) per_rank += ' ';
    per_rank += std::to_string(rk.bytes.back());
  }
  return mean;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 3;
  if (steps < 1) {
    std::fprintf(stderr, "bench_tensor_parallel: steps must be a positive integer, got '%s'\n", argv[1]);
    return 2;
  }
  const std::vector<Layout> layouts = {{1, false}, {2, false}, {2, true}, {4, false}, {4, true}};
  try {
    {
      const mpt::config::Recipe r = recipe_for(layouts[0]);
      const auto& m = r.model;
      std::printf("shape: %lld layers, hidden %lld, %lld heads, ffn %lld, seq %lld, micro-batch %lld x %lld per step, "
                  "vocab %lld, LayerNorm, gelu, learned positions, tied output; %d timed steps after 1 warm-up\n\n",
                  static_cast<long long>(m.num_layers), static_cast<long long>(m.hidden_size),
                  static_cast<long long>(m.num_attention_heads), static_cast<long long>(r.derived.ffn_hidden_size),
                  static_cast<long long>(m.seq_length), static_cast<long long>(*r.train.micro_batch_size),
                  static_cast<long long>(r.derived.num_microbatches), static_cast<long long>(m.vocab_size), steps);
    }
    std::vector<std::string> rows;
    RankFigures reference;
    bool ok = true;
    for (const Layout& l : layouts) {
      const std::vector<RankFigures> ranks = run_layout(l, steps);
      const RankFigures& f = ranks[0];
      if (l.tp == 1) reference = f;
      std::string per_rank;
      const double sent = mean_tp_bytes(l, ranks, per_rank, ok);
      const double expected = expected_tp_bytes(recipe_for(l));
      const double bytes_ratio = expected > 0 ? sent / expected : (sent == 0 ? 1.0 : 0.0);
      const double loss_rel = std::abs(f.first_loss - reference.first_loss) / std::abs(reference.first_loss);
      double max_step_s = 0;
      for (const RankFigures& rf : ranks) max_step_s = std::max(max_step_s, rf.step_s);

      std::printf("%s: params %lld B, grads %lld B, optimizer %lld B, activations %lld B per rank; TP sent %.1f "
                  "B/step, mean of ranks [%s] (analytic %.1f, ratio %.6f); step %.1f ms (slowest rank %.1f ms); "
                  "first-step loss %.9f (rel. to TP=1 %.2e)\n",
                  l.name().c_str(), static_cast<long long>(f.memory.params_bytes),
                  static_cast<long long>(f.memory.grads_bytes), static_cast<long long>(f.memory.optimizer_bytes),
                  static_cast<long long>(f.memory.activations_peak_bytes), sent, per_rank.c_str(), expected,
                  bytes_ratio, f.step_s * 1e3, max_step_s * 1e3, f.first_loss, loss_rel);
      if (std::abs(bytes_ratio - 1.0) > 1e-3) {
        std::printf("%s: TP bytes sent are %.6f of the analytic figure\n", l.name().c_str(), bytes_ratio);
        ok = false;
      }
      if (loss_rel > 1e-6) {
        std::printf("%s: first-step loss differs from TP=1's by %.2e (relative)\n", l.name().c_str(), loss_rel);
        ok = false;
      }
      std::fflush(stdout);

      char bytes[96];
      if (expected > 0) std::snprintf(bytes, sizeof(bytes), "%.2f | %.2f | %.4f", mib(sent), mib(expected), bytes_ratio);
      else std::snprintf(bytes, sizeof(bytes), "%.2f | 0 | -", mib(sent));
      char row[512];
      std::snprintf(row, sizeof(row), "| %s | %s | %s | %s | %s | %s | %.0f | %.7f (%.1e) |", l.name().c_str(),
                    mpt::bench::with_ratio(f.memory.params_bytes, reference.memory.params_bytes).c_str(),
                    mpt::bench::with_ratio(f.memory.grads_bytes, reference.memory.grads_bytes).c_str(),
                    mpt::bench::with_ratio(f.memory.optimizer_bytes, reference.memory.optimizer_bytes).c_str(),
                    mpt::bench::with_ratio(f.memory.activations_peak_bytes, reference.memory.activations_peak_bytes).c_str(), bytes,
                    f.step_s * 1e3, f.first_loss, loss_rel);
      rows.emplace_back(row);
    }
    std::printf("\nper rank: MiB (ratio to TP=1); TP MiB sent per step (mean of ranks): measured, analytic, ratio\n\n");
    std::printf("| layout | params | grads | optimizer | activation peak | TP sent/step | analytic | measured/analytic "
                "| step ms | first-step lm loss (rel. to TP=1) |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const std::string& row : rows) std::printf("%s\n", row.c_str());
    if (!ok) {
      std::fprintf(stderr, "bench_tensor_parallel: a figure disagrees with its expectation (see above)\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tensor_parallel: %s\n", e.what());
    return 1;
  }
  return 0;
}
