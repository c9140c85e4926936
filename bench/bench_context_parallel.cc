// Context parallelism on the CPU backend: a long-sequence LLaMA-like shape (seq 4096) at
// CP = 1, 2 and 4 with the ring ("p2p") and all-gather exchanges, ranks as threads of this
// process talking over loopback gloo. Per layout it prints what one rank holds against
// CP = 1 (the activation peak the engine allocates once, and the backend's attention work
// buffers), the bytes one rank sends to its context-parallel peers per step against the
// exchange's analytic volume, the step time and the first step's loss against CP = 1's.
//
//   build/bench_context_parallel [steps]      (default 1 timed step after 1 warm-up)
//
// The ranks share this machine's cores, so step times across CP sizes are not a speed
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
#include "train/engine.h"

namespace {

// LLaMA-style (RMSNorm, RoPE, SwiGLU, 8 heads over 4 query groups), 4 layers at hidden 256,
// one sequence of 4096 tokens per micro-batch, 2 micro-batches per step, DP = 1.
const char* kShape = R"(
[model]
num_layers = 4
hidden_size = 256
ffn_hidden_size = 704
num_attention_heads = 8
num_query_groups = 4
kv_channels = 32
seq_length = 4096
vocab_size = 2048
normalization = "RMSNorm"
activation_func = "silu"
gated_linear_unit = true
add_bias_linear = false
position_embedding_type = "rope"
share_embeddings_and_output_weights = false
hidden_dropout = 0.0
attention_dropout = 0.0
[train]
micro_batch_size = 1
global_batch_size = 2
train_iters = 1000
[optimizer]
lr = 1e-4
[dataset]
source = "mock"
num_workers = 1
[dist]
distributed_backend = "gloo"
distributed_timeout_minutes = 10
)";

struct Layout {
  int64_t cp;
  std::string comm;
  std::string name() const { return "CP=" + std::to_string(cp) + (cp > 1 ? " " + comm : ""); }
};

using RankFigures = mpt::bench::StepFigures;

mpt::config::Recipe recipe_for(const Layout& l) {
  mpt::config::Recipe r = mpt::config::load_recipe_string(kShape, "bench_context_parallel");
  mpt::config::apply_overrides(r, {"model.context_parallel_size=" + std::to_string(l.cp), "model.cp_comm_type=" + l.comm});
  mpt::config::finalize(r, l.cp);  // world = CP, DP = 1
  return r;
}

// Runs 1 warm-up step and `steps` timed steps on l.cp ranks, one thread each.
std::vector<RankFigures> run_layout(const Layout& l, int steps) {
  return mpt::bench::time_steps(recipe_for(l), l.cp, steps, &mpt::train::Engine::cp_bytes_sent);
}

// Bytes one rank sends to its CP peers per step. Per layer and micro-batch, with KV = 2 x
// (S/CP x B) x kv_width x 4 bytes (one rank's keys and values): the ring sends (CP-1) KV
// forward, then (CP-1) KV and CP dKV backward; the all-gather exchange (CP-1) KV forward,
// (CP-1) KV again and a reduce-scatter of (CP-1) dKV backward. Per micro-batch the two loss
// sums are all-reduced over CP (a ring all-reduce sends 2(n-1)/n of its 16 bytes).
double expected_cp_bytes(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const double n = static_cast<double>(m.context_parallel_size);
  if (n <= 1) return 0;
  const double tokens = static_cast<double>(m.seq_length * *r.train.micro_batch_size) / n;
  const double kv = 2 * tokens * static_cast<double>(r.derived.num_query_groups * r.derived.kv_channels) * 4;
  const double per_layer = m.cp_comm_type == "p2p" ? (3 * n - 2) * kv : 3 * (n - 1) * kv;
  const double loss = 2 * (n - 1) / n * 16;
  return (per_layer * static_cast<double>(m.num_layers) + loss) * static_cast<double>(r.derived.num_microbatches);
}


}  // namespace

int main(int argc, char** argv) {
  using mpt::bench::mib;
  const int steps = argc > 1 ? std::atoi(argv[1]) : 1;
  if (steps < 1) {
    std::fprintf(stderr, "bench_context_parallel: steps must be a positive integer, got '%s'\n", argv[1]);
    return 2;
  }
  const std::vector<Layout> layouts = {{1, "p2p"}, {2, "p2p"}, {2, "all_gather"}, {4, "p2p"}, {4, "all_gather"}};
  try {
    {
      const mpt::config::Recipe r = recipe_for(layouts[0]);
      const auto& m = r.model;
      std::printf("shape: %lld layers, hidden %lld, %lld heads over %lld query groups of %lld, ffn %lld, seq %lld, "
                  "micro-batch %lld x %lld per step, vocab %lld; %d timed step(s) after 1 warm-up\n\n",
                  static_cast<long long>(m.num_layers), static_cast<long long>(m.hidden_size),
                  static_cast<long long>(m.num_attention_heads), static_cast<long long>(r.derived.num_query_groups),
                  static_cast<long long>(r.derived.kv_channels), static_cast<long long>(r.derived.ffn_hidden_size),
                  static_cast<long long>(m.seq_length), static_cast<long long>(*r.train.micro_batch_size),
                  static_cast<long long>(r.derived.num_microbatches), static_cast<long long>(m.vocab_size), steps);
    }
    std::vector<std::string> rows;
    RankFigures reference;
    bool ok = true;
    for (const Layout& l : layouts) {
      const std::vector<RankFigures> ranks = run_layout(l, steps);
      const RankFigures& f = ranks[0];
      if (l.cp == 1) reference = f;
      double sent = 0, max_step_s = 0;
      for (const RankFigures& rf : ranks) {
        sent += static_cast<double>(rf.bytes.back()) / static_cast<double>(ranks.size());
        max_step_s = std::max(max_step_s, rf.step_s);
        if (rf.memory.activations_peak_bytes != f.memory.activations_peak_bytes) {
          std::printf("%s: ranks hold different activation peaks\n", l.name().c_str());
          ok = false;
        }
      }
      const double expected = expected_cp_bytes(recipe_for(l));
      const double bytes_ratio = expected > 0 ? sent / expected : (sent == 0 ? 1.0 : 0.0);
      const double loss_rel = std::abs(f.first_loss - reference.first_loss) / std::abs(reference.first_loss);
      std::printf("%s: activations %lld B, backend work buffers %lld B per rank; CP sent %.1f B/step (mean of ranks; "
                  "analytic %.1f, ratio %.6f); step %.1f ms (slowest rank %.1f ms); first-step loss %.9f "
                  "(rel. to CP=1 %.2e)\n",
                  l.name().c_str(), static_cast<long long>(f.memory.activations_peak_bytes),
                  static_cast<long long>(f.memory.backend_workspace_bytes), sent, expected, bytes_ratio,
                  f.step_s * 1e3, max_step_s * 1e3, f.first_loss, loss_rel);
      if (std::abs(bytes_ratio - 1.0) > 1e-3) {
        std::printf("%s: CP bytes sent are %.6f of the analytic figure\n", l.name().c_str(), bytes_ratio);
        ok = false;
      }
      if (loss_rel > 1e-5) {
        std::printf("%s: first-step loss differs from CP=1's by %.2e (relative)\n", l.name().c_str(), loss_rel);
        ok = false;
      }
      std::fflush(stdout);
      char bytes[96];
      if (expected > 0) std::snprintf(bytes, sizeof(bytes), "%.2f | %.2f | %.4f", mib(sent), mib(expected), bytes_ratio);
      else std::snprintf(bytes, sizeof(bytes), "0 | 0 | -");
      char row[512];
      std::snprintf(row, sizeof(row), "| %s | %s | %s | %s | %.0f | %.7f (%.1e) |", l.name().c_str(),
                    mpt::bench::with_ratio(f.memory.activations_peak_bytes, reference.memory.activations_peak_bytes).c_str(),
                    mpt::bench::with_ratio(f.memory.backend_workspace_bytes, reference.memory.backend_workspace_bytes).c_str(),
                    bytes, f.step_s * 1e3, f.first_loss, loss_rel);
      rows.emplace_back(row);
    }
    std::printf("\nper rank: MiB (ratio to CP=1); CP MiB sent per step (mean of ranks): measured, analytic, ratio\n\n");
    std::printf("| layout | activation peak | attention work buffers | CP sent/step | analytic | measured/analytic "
                "| step ms | first-step lm loss (rel. to CP=1) |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    for (const std::string& row : rows) std::printf("%s\n", row.c_str());
    if (!ok) {
      std::fprintf(stderr, "bench_context_parallel: a figure disagrees with its expectation (see above)\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_context_parallel: %s\n", e.what());
    return 1;
  }
  return 0;
}
