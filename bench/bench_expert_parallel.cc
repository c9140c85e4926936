// Expert parallelism on the CPU backend: a mixture-of-experts shape (8 experts, top 2, a
// shared expert) at EP = 1, 2, 4 and EP = 2 x ETP = 2, with the allgather and alltoall token
// dispatchers, dropless and then with a capacity factor of 1.0; ranks as threads of this
// process talking over loopback gloo. World = EP x ETP (TP = 1), so every rank is also a
// data-parallel replica with its own tokens, and the global batch is the same at every
// layout. Per layout it prints what one rank holds against dropless EP = 1 (expert
// parameters, all parameters, the activation peak), the bytes one rank sends in the token
// exchange per step (against the analytic volume for allgather; for alltoall, whose volume
// depends on the routing, against allgather's and an estimate for uniform routing), the step
// time and the first step's loss against EP = 1's at the same capacity.
//
//   build/bench_expert_parallel [steps]      (default 2 timed steps after 1 warm-up)
//
// The ranks share this machine's cores, so step times across layouts are not a speed
// comparison; the memory figures and the allgather bytes are exact.
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

// LLaMA-style attention (RMSNorm, RoPE, 8 heads over 4 query groups) with an MoE MLP in each
// of 4 layers at hidden 256: 8 SwiGLU experts of 512 units, the top 2 per token, a shared
// expert of 512 units, the load-balancing loss and z-loss, dropless. 4 micro-batches of
// 2 x 512 tokens per step, spread over the data-parallel ranks.
const char* kShape = R"(
[model]
num_layers = 4
hidden_size = 256
ffn_hidden_size = 704
num_attention_heads = 8
num_query_groups = 4
kv_channels = 32
seq_length = 512
vocab_size = 2048
normalization = "RMSNorm"
activation_func = "silu"
gated_linear_unit = true
add_bias_linear = false
position_embedding_type = "rope"
share_embeddings_and_output_weights = false
hidden_dropout = 0.0
attention_dropout = 0.0
num_moe_experts = 8
moe_ffn_hidden_size = 512
moe_router_topk = 2
moe_router_score_function = "softmax"
moe_router_load_balancing_type = "aux_loss"
moe_aux_loss_coeff = 1e-2
moe_z_loss_coeff = 1e-3
moe_shared_expert_intermediate_size = 512
[train]
micro_batch_size = 2
global_batch_size = 8
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
  int64_t ep;
  int64_t etp;
  std::string dispatcher;
  double capacity = 0;  // moe_expert_capacity_factor; 0: dropless
  int64_t world() const { return ep * etp; }
  bool alltoall() const { return dispatcher == "alltoall"; }
  std::string name() const {
    std::string n = "EP=" + std::to_string(ep);
    if (world() > 1) n += (etp > 1 ? " x ETP=" + std::to_string(etp) : "") + " " + dispatcher;
    if (capacity > 0) {
      char c[48];
      std::snprintf(c, sizeof(c), ", capacity %.1f", capacity);
      n += c;
    }
    return n;
  }
};

// What one rank saw over one warm-up step and the timed ones.
struct RankFigures {
  mpt::train::MemoryReport memory;
  double first_loss = 0;
  double step_s = 0;           // mean over the timed steps
  double spread = 0;           // the last step's most loaded expert over the mean
  std::vector<int64_t> bytes;  // per timed step: bytes sent in the token exchange
};

mpt::config::Recipe recipe_for(const Layout& l) {
  mpt::config::Recipe r = mpt::config::load_recipe_string(kShape, "bench_expert_parallel");
  mpt::config::apply_overrides(r, {"model.expert_model_parallel_size=" + std::to_string(l.ep),
                                   "model.expert_tensor_parallel_size=" + std::to_string(l.etp),
                                   "model.moe_token_dispatcher_type=" + l.dispatcher});
  if (l.capacity > 0)
    mpt::config::apply_overrides(r, {"model.moe_expert_capacity_factor=" + std::to_string(l.capacity)});
  mpt::config::finalize(r, l.world());  // TP = 1, DP = EP x ETP, EDP = 1
  return r;
}

std::vector<RankFigures> run_layout(const Layout& l, int steps) {
  std::vector<RankFigures> out(static_cast<size_t>(l.world()));
  mpt::bench::run_engines(recipe_for(l), l.world(), [&](int64_t rank, mpt::train::Engine& engine) {
    RankFigures& f = out[static_cast<size_t>(rank)];
    f.first_loss = engine.train_step().lm_loss;
    double total = 0;
    for (int i = 0; i < steps; ++i) {
      const int64_t before = engine.ep_bytes_sent();
      const mpt::train::StepResult s = engine.train_step();
      total += s.step_time_s;
      f.spread = s.moe_expert_spread;
      f.bytes.push_back(engine.ep_bytes_sent() - before);
    }
    f.step_s = total / steps;
    f.memory = engine.memory();
  });
  return out;
}

// Per step, one rank: M micro-batches through L MoE layers, each routing the R rows of H
// floats this rank holds (seq x micro_batch here) to k experts of E, in a token-exchange group of
// g = ETP x EP ranks. Ring all-gathers and reduce-scatters send (g-1) blocks per rank.
//   exchange counts (both dispatchers): an all-gather of E int64 counts per layer forward;
//   allgather: forward all-gathers [R,H] and the rows, expert indices and probabilities
//     [R,k] (int32, int32, float) and reduce-scatters the outputs [g*R,H]; backward
//     all-gathers d(output) [R,H] and reduce-scatters d(probs) [g*R,k] and d(input) [g*R,H]:
//     (g-1) x (4 R H + 4 R k) x 4 bytes;
//   alltoall: each routed row goes to every ETP rank of its expert's EP rank, this rank
//     itself excepted; with uniform routing R k (ETP - 1/EP) rows, sent out and back in
//     forward and again in backward: 4 R k (ETP - 1/EP) H x 4 bytes (an estimate: the real
//     volume follows the router's choices);
//   per step: the experts' share of the gradient norm, one double all-reduced (a ring
//     all-reduce sends 2(g-1)/g of its bytes, as the mean over ranks).
double expected_ep_bytes(const mpt::config::Recipe& r) {
  const auto& m = r.model;
  const double ep = static_cast<double>(m.expert_model_parallel_size);
  const double etp = static_cast<double>(r.derived.expert_tensor_parallel_size);
  const double g = ep * etp;
  if (g <= 1) return 0;
  const double H = static_cast<double>(m.hidden_size), k = static_cast<double>(m.moe_router_topk);
  const double E = static_cast<double>(*m.num_moe_experts);
  int64_t rows = m.seq_length / m.context_parallel_size * *r.train.micro_batch_size;
  if (m.sequence_parallel) rows /= m.tensor_model_parallel_size;
  const double R = static_cast<double>(rows);
  const double L = static_cast<double>((m.num_layers + m.moe_layer_freq - 1) / m.moe_layer_freq);
  const double counts = (g - 1) * E * 8;
  const double tokens = m.moe_token_dispatcher_type == "allgather" ? (g - 1) * (4 * R * H + 4 * R * k) * 4
                                                                     : 4 * R * k * (etp - 1 / ep) * H * 4;
  return (tokens + counts) * L * static_cast<double>(r.derived.num_microbatches) + 2 * (g - 1) / g * 8;
}

// Bytes sent in the token exchange per step, as the mean over ranks and timed steps. Prints,
// and clears `ok`, where ranks hold different sizes or (allgather, whose volume does not
// depend on the routing) a rank's bytes change from step to step.
double mean_ep_bytes(const Layout& l, const std::vector<RankFigures>& ranks, bool& ok) {
  double total = 0;
  size_t n = 0;
  for (size_t k = 0; k < ranks.size(); ++k) {
    const RankFigures& rk = ranks[k];
    const mpt::train::MemoryReport &a = rk.memory, &b = ranks[0].memory;
    if (a.params_bytes != b.params_bytes || a.expert_params_bytes != b.expert_params_bytes ||
        a.activations_peak_bytes != b.activations_peak_bytes) {
      std::printf("%s: rank %zu holds other sizes than rank 0 (params %lld, experts %lld, activations %lld)\n",
                  l.name().c_str(), k, static_cast<long long>(a.params_bytes),
                  static_cast<long long>(a.expert_params_bytes), static_cast<long long>(a.activations_peak_bytes));
      ok = false;
    }
    for (size_t i = 0; i < rk.bytes.size(); ++i) {
      if (!l.alltoall() && rk.bytes[i] != rk.bytes[0]) {
        std::printf("%s: rank %zu sent %lld bytes in timed step %zu but %lld in the first\n", l.name().c_str(), k,
                    static_cast<long long>(rk.bytes[i]), i + 1, static_cast<long long>(rk.bytes[0]));
        ok = false;
      }
      total += static_cast<double>(rk.bytes[i]);
      ++n;
    }
  }
  return total / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  using mpt::bench::mib;
  using mpt::bench::with_ratio;
  const int steps = argc > 1 ? std::atoi(argv[1]) : 2;
  if (steps < 1) {
    std::fprintf(stderr, "bench_expert_parallel: steps must be a positive integer, got '%s'\n", argv[1]);
    return 2;
  }
  // Dropless at every layout, then a capacity of 1.0 (each rank keeps at most R k / E of its
  // choices per expert), which bounds what a rank's experts can receive.
  const std::vector<Layout> layouts = {
      {1, 1, "alltoall"},       {2, 1, "allgather"},      {2, 1, "alltoall"},       {4, 1, "allgather"},
      {4, 1, "alltoall"},       {2, 2, "allgather"},      {2, 2, "alltoall"},       {1, 1, "alltoall", 1.0},
      {4, 1, "allgather", 1.0}, {4, 1, "alltoall", 1.0}};
  try {
    {
      const mpt::config::Recipe r = recipe_for(layouts[0]);
      const auto& m = r.model;
      std::printf("shape: %lld layers, hidden %lld, %lld heads over %lld query groups, %lld experts of %lld "
                  "(SwiGLU), top %lld, shared expert %lld, seq %lld, micro-batch %lld, global batch %lld, "
                  "vocab %lld; %d timed step(s) after 1 warm-up\n\n",
                  static_cast<long long>(m.num_layers), static_cast<long long>(m.hidden_size),
                  static_cast<long long>(m.num_attention_heads), static_cast<long long>(r.derived.num_query_groups),
                  static_cast<long long>(*m.num_moe_experts), static_cast<long long>(*m.moe_ffn_hidden_size),
                  static_cast<long long>(m.moe_router_topk),
                  static_cast<long long>(*m.moe_shared_expert_intermediate_size),
                  static_cast<long long>(m.seq_length), static_cast<long long>(*r.train.micro_batch_size),
                  static_cast<long long>(*r.train.global_batch_size), static_cast<long long>(m.vocab_size), steps);
    }
    std::vector<std::string> rows;
    RankFigures dropless;      // EP=1 without a capacity: the reference for sizes
    RankFigures same_routing;  // EP=1 with the layout's capacity: the reference for the loss
    std::vector<double> sent_by_layout;
    bool ok = true;
    for (size_t li = 0; li < layouts.size(); ++li) {
      const Layout& l = layouts[li];
      const std::vector<RankFigures> ranks = run_layout(l, steps);
      const RankFigures& f = ranks[0];
      if (l.world() == 1) same_routing = f;
      if (li == 0) dropless = f;
      const double sent = mean_ep_bytes(l, ranks, ok);
      sent_by_layout.push_back(sent);
      const double expected = expected_ep_bytes(recipe_for(l));
      const double bytes_ratio = expected > 0 ? sent / expected : (sent == 0 ? 1.0 : 0.0);
      // alltoall against the allgather run of the same layout.
      double vs_allgather = 0;
      for (size_t j = 0; j < li; ++j) {
        const Layout& o = layouts[j];
        if (l.alltoall() && !o.alltoall() && o.ep == l.ep && o.etp == l.etp && o.capacity == l.capacity)
          vs_allgather = sent / sent_by_layout[j];
      }
      const double loss_rel = std::abs(f.first_loss - same_routing.first_loss) / std::abs(same_routing.first_loss);
      const double expert_ratio =
          static_cast<double>(f.memory.expert_params_bytes) / static_cast<double>(dropless.memory.expert_params_bytes);
      double max_step_s = 0;
      for (const RankFigures& rf : ranks) max_step_s = std::max(max_step_s, rf.step_s);

      std::printf("%s: experts %lld B of params %lld B, activations %lld B per rank; exchange sent %.1f B/step "
                  "(mean of ranks and steps; %s %.1f, ratio %.6f",
                  l.name().c_str(), static_cast<long long>(f.memory.expert_params_bytes),
                  static_cast<long long>(f.memory.params_bytes),
                  static_cast<long long>(f.memory.activations_peak_bytes), sent,
                  l.alltoall() ? "uniform-routing estimate" : "analytic", expected, bytes_ratio);
      if (vs_allgather > 0) std::printf("; %.4f of allgather's", vs_allgather);
      std::printf("); expert spread %.3f; step %.1f ms (slowest rank %.1f ms); first-step loss %.9f "
                  "(rel. to EP=1%s %.2e)\n",
                  f.spread, f.step_s * 1e3, max_step_s * 1e3, f.first_loss, l.capacity > 0 ? " at that capacity" : "",
                  loss_rel);
      if (!l.alltoall() && std::abs(bytes_ratio - 1.0) > 1e-3) {
        std::printf("%s: exchange bytes sent are %.6f of the analytic figure\n", l.name().c_str(), bytes_ratio);
        ok = false;
      }
      if (std::abs(expert_ratio * static_cast<double>(l.world()) - 1.0) > 1e-3) {
        std::printf("%s: expert parameters per rank are %.6f of EP=1's, expected 1/%lld\n", l.name().c_str(),
                    expert_ratio, static_cast<long long>(l.world()));
        ok = false;
      }
      if (loss_rel > 1e-5) {
        std::printf("%s: first-step loss differs from EP=1's by %.2e (relative)\n", l.name().c_str(), loss_rel);
        ok = false;
      }
      std::fflush(stdout);

      char bytes[128];
      if (l.world() == 1) std::snprintf(bytes, sizeof(bytes), "0 | 0 | - | -");
      else if (l.alltoall())
        std::snprintf(bytes, sizeof(bytes), "%.2f | ~%.2f | ~%.3f | %.3fx", mib(sent), mib(expected), bytes_ratio,
                      vs_allgather);
      else std::snprintf(bytes, sizeof(bytes), "%.2f | %.2f | %.4f | 1x", mib(sent), mib(expected), bytes_ratio);
      char row[640];
      std::snprintf(row, sizeof(row), "| %s | %s | %s | %s | %s | %.0f | %.7f (%.1e) |", l.name().c_str(),
                    with_ratio(f.memory.expert_params_bytes, dropless.memory.expert_params_bytes).c_str(),
                    with_ratio(f.memory.params_bytes, dropless.memory.params_bytes).c_str(),
                    with_ratio(f.memory.activations_peak_bytes, dropless.memory.activations_peak_bytes).c_str(),
                    bytes, f.step_s * 1e3, f.first_loss, loss_rel);
      rows.emplace_back(row);
    }
    std::printf("\nper rank: MiB (ratio to dropless EP=1); exchange MiB sent per step (mean of ranks and timed "
                "steps): measured, analytic (alltoall: ~ uniform-routing estimate), ratio, alltoall vs allgather; "
                "loss relative to EP=1 at the same capacity\n\n");
    std::printf("| layout | expert params | all params | activation peak | exchange sent/step | analytic | "
                "measured/analytic | vs allgather | step ms | first-step lm loss (rel. to EP=1) |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const std::string& row : rows) std::printf("%s\n", row.c_str());
    if (!ok) {
      std::fprintf(stderr, "bench_expert_parallel: a figure disagrees with its expectation (see above)\n");
      return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_expert_parallel: %s\n", e.what());
    return 1;
  }
  return 0;
}
