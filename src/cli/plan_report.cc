// `mptrain plan` as text: the plan (layout, memory per stage, traffic per dimension, the
// estimate), the search's ranking and exclusions, and the process groups.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

#include "cli/plan_cli.h"
#include "core/error.h"

namespace mpt::cli {
namespace {

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// Binary units for bytes: "12.34 GiB", "512.0 MiB".
std::string bytes_text(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::abs(b) >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? str(static_cast<int64_t>(b), " B") : fmt(b >= 100 ? "%.1f" : "%.2f", b) + " " + units[u];
}

// Element counts: "70.55 B", "262.7 M".
std::string count_text(double n) {
  if (n >= 1e9) return fmt("%.2f B", n / 1e9);
  if (n >= 1e6) return fmt("%.1f M", n / 1e6);
  if (n >= 1e3) return fmt("%.1f K", n / 1e3);
  return str(static_cast<int64_t>(n));
}

std::string seconds_text(double s) {
  if (s >= 1) return fmt("%.2f s", s);
  if (s >= 1e-3) return fmt("%.1f ms", s * 1e3);
  return fmt("%.0f us", s * 1e6);
}

std::string gpus(int64_t n) { return str(n, n == 1 ? " GPU" : " GPUs"); }

std::string pad(const std::string& s, size_t width, bool right = true) {
  if (s.size() >= width) return s;
  return right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
}

std::string ranks_text(const std::vector<int64_t>& ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) s += str(i ? "," : "", ranks[i]);
  return s + "]";
}

std::string layout_line(const train::Plan& p) {
  const dist::ParallelSizes& s = p.sizes;
  std::string l = str("layout: TP ", s.tp, " x CP ", s.cp, " x DP ", p.dp, " x PP ", s.pp);
  if (p.vpp > 1) l += str(" (VPP ", p.vpp, ")");
  l += str(" = ", gpus(s.world));
  if (p.sequence_parallel) l += ", sequence parallel";
  if (s.ep > 1 || p.parameters != p.active_parameters)
    l += str("; experts ETP ", s.etp, " x EP ", s.ep, " x EDP ", p.edp, " x PP ", s.pp);
  return l;
}

const char* kDims[] = {"dp", "edp", "tp", "cp", "ep", "pp", "embedding"};

}  // namespace

std::string plan_text(const train::Plan& p, const std::string& world_note) {
  const train::Hardware& hw = p.hardware;
  const size_t stages = p.stages.size();
  std::string t;
  t += str("plan: ", p.recipe, " on ", gpus(p.sizes.world), world_note, ", ", hw.gpus_per_node, " per node, ",
           bytes_text(hw.gpu_memory_bytes), " each\n");
  t += layout_line(p) + "\n";
  t += str("sharding: ", p.sharding, p.sharding == "no_shard" ? "" : str(" over dp-cp (", gpus(p.dp * p.sizes.cp), ")"),
           "; precision: ", p.precision, "\n");
  t += str("batch: global ", p.global_batch, " = micro-batch ", p.micro_batch, " x ", p.microbatches,
           p.microbatches == 1 ? " micro-batch" : " micro-batches", " x DP ", p.dp, "; sequence ", p.seq,
           p.sizes.cp > 1 ? str(" (", p.seq / p.sizes.cp, " per CP rank)") : std::string(), "\n");
  t += str("model: ", count_text(static_cast<double>(p.parameters)), " parameters",
           p.active_parameters != p.parameters
               ? str(", ", count_text(static_cast<double>(p.active_parameters)), " active per token")
               : std::string(),
           "\n");
  if (!p.recompute.empty())
    t += str("recompute: ", p.recompute, ", modelled here; the engine does not build activation recompute yet\n");

  // Memory, one column per stage.
  const size_t label = 26, col = 12;
  auto row = [&](const std::string& name, auto value) {
    std::string line = "  " + pad(name, label - 2, false);
    for (const train::StagePlan& s : p.stages) line += pad(value(s), col);
    return line + "\n";
  };
  t += "\nmemory per GPU" + std::string(label - 14, ' ');
  for (const train::StagePlan& s : p.stages) t += pad(str("stage ", s.stage), col);
  t += "\n";
  t += row("layers", [](const train::StagePlan& s) { return str(s.layers); });
  t += row("parameters", [](const train::StagePlan& s) { return count_text(static_cast<double>(s.memory.parameters)); });
  if (p.active_parameters != p.parameters)
    t += row("  of which experts", [](const train::StagePlan& s) { return count_text(static_cast<double>(s.memory.expert_parameters)); });
  t += row("weights, fp32 master", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.params_master)); });
  if (p.precision != "fp32")
    t += row("weights, bf16 copy", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.params_compute)); });
  t += row("gradients, fp32", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.grads)); });
  t += row("optimizer (Adam), fp32", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.optimizer)); });
  t += row("activations", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.activations)); });
  t += row("total", [](const train::StagePlan& s) { return bytes_text(static_cast<double>(s.memory.total())); });
  t += row(str("free of ", bytes_text(hw.gpu_memory_bytes)), [&](const train::StagePlan& s) {
    const double left = hw.gpu_memory_bytes - static_cast<double>(s.memory.total());
    return left >= 0 ? bytes_text(left) : "-" + bytes_text(-left);
  });
  double share = 0, mean = 0;
  int64_t share_stage = 0;
  for (const train::StagePlan& s : p.stages) {
    mean += static_cast<double>(s.memory.parameters) / static_cast<double>(stages);
    if (static_cast<double>(s.memory.parameters) > share) {
      share = static_cast<double>(s.memory.parameters);
      share_stage = s.stage;
    }
  }
  const double bytes_per = p.precision == "fp32" ? 4 : 2;
  t += str("parameter share per GPU: ", count_text(share), " (", fmt("%.2f", share * bytes_per / 1e9), " GB in ",
           p.precision == "fp32" ? "fp32" : "bf16", ") on stage ", share_stage, "; mean ", count_text(mean), " (",
           fmt("%.2f", mean * bytes_per / 1e9), " GB)\n");
  const train::StagePlan& peak = p.stages[static_cast<size_t>(p.peak_stage())];
  std::string in_flight;
  for (size_t k = 0; k < peak.memory.chunk_in_flight.size(); ++k)
    in_flight += str(k ? " + " : "", peak.memory.chunk_in_flight[k]);
  const bool one = peak.memory.chunk_in_flight.size() == 1 && peak.memory.in_flight == 1;
  t += str("activations on stage ", peak.stage, ": ", in_flight, " micro-batch", one ? "" : "es", " in flight",
           peak.chunks.size() == 1 ? "" : str(" (per chunk)"), ", up to ",
           bytes_text(static_cast<double>(peak.memory.layer_activations)),
           " per layer and micro-batch", peak.post_process
               ? str(", ", bytes_text(static_cast<double>(peak.memory.head_activations)), " for the head (d(output); its logits run in row blocks)")
               : std::string(),
           ", working buffers ", bytes_text(static_cast<double>(peak.memory.working_buffers)), "\n");

  // Traffic, one column per stage.
  struct Row {
    std::string dim, group, what, nodes;
    std::vector<int64_t> bytes;
    double seconds = 0, exposed = 0;
  };
  std::vector<Row> rows;
  for (const char* dim : kDims)
    for (const train::StagePlan& s : p.stages)
      for (const train::CommPlan& c : s.comm) {
        if (c.dim != dim) continue;
        auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.dim == c.dim && r.what == c.what; });
        if (it == rows.end()) {
          Row r{c.dim, str(c.group, " (", c.group_size, ")"), c.what, c.crosses_nodes ? "across" : "within",
                std::vector<int64_t>(stages, 0)};
          rows.push_back(r);
          it = rows.end() - 1;
        }
        it->bytes[static_cast<size_t>(s.stage)] += c.bytes;
        it->seconds = std::max(it->seconds, c.seconds);
        it->exposed = std::max(it->exposed, c.exposed_seconds);
      }
  t += "\ncommunication per step, bytes each GPU sends\n";
  std::string head = "  " + pad("dim", 10, false) + pad("group (GPUs)", 17, false) + pad("nodes", 7, false);
  for (const train::StagePlan& s : p.stages) head += pad(str("stage ", s.stage), col);
  t += head + pad("time", 10) + pad("waits", 10) + "  what\n";
  if (rows.empty()) t += "  (none: one GPU)\n";
  for (const Row& r : rows) {
    std::string line = "  " + pad(r.dim, 10, false) + pad(r.group, 17, false) + pad(r.nodes, 7, false);
    for (int64_t b : r.bytes) line += pad(b ? bytes_text(static_cast<double>(b)) : "-", col);
    t += line + pad(seconds_text(r.seconds), 10) + pad(seconds_text(r.exposed), 10) + "  " + r.what + "\n";
  }

  // The estimate.
  const train::TimePlan& tm = p.time;
  int64_t slowest = 0;
  for (const train::StagePlan& s : p.stages)
    if (s.microbatch_seconds > p.stages[static_cast<size_t>(slowest)].microbatch_seconds) slowest = s.stage;
  const train::StagePlan& sl = p.stages[static_cast<size_t>(slowest)];
  t += str("\nestimate: ", fmt("%.0f", hw.peak_flops / 1e12), " TFLOP/s peak x ", fmt("%.2f", hw.compute_efficiency),
           "; ", fmt("%.0f", hw.intra_node_bytes_per_s / 1e9), " GB/s within a node, ",
           fmt("%.0f", hw.inter_node_bytes_per_s / 1e9), " GB/s across nodes per GPU; ",
           fmt("%.0f", hw.collective_latency_s * 1e6), " us per message\n");
  t += str("  micro-batch on the slowest stage (", slowest, "): ", seconds_text(sl.microbatch_seconds), " (compute ",
           seconds_text(sl.compute_seconds), ", ", fmt("%.3g", 3 * sl.forward_flops / 1e12), " TFLOP)\n");
  t += str("  step: ", seconds_text(tm.step_seconds), " = pipeline ", seconds_text(tm.pipeline_seconds), " (",
           p.microbatches, p.microbatches == 1 ? " micro-batch + " : " micro-batches + ", fmt("%.2f", static_cast<double>(p.sizes.pp - 1) / static_cast<double>(p.vpp)),
           " bubble slots; bubble ", fmt("%.2f", tm.bubble_fraction * 100), "%) + ", seconds_text(tm.tail_seconds),
           " after backward\n");
  t += str("  throughput: ", count_text(tm.tokens_per_second), " tokens/s (",
           fmt("%.0f", tm.tokens_per_second / static_cast<double>(p.sizes.world)), " per GPU); MFU ",
           fmt("%.1f", tm.mfu * 100), "%\n");
  t += p.fits() ? std::string("fits: yes\n")
                : str("fits: no, stage ", p.peak_stage(), " needs ",
                      bytes_text(static_cast<double>(p.stages[static_cast<size_t>(p.peak_stage())].memory.total())),
                      "\n");
  return t;
}

std::string search_text(const train::SearchResult& s) {
  std::string t = str("search: ", gpus(s.gpus), ": ", s.considered, " layouts considered, ", s.feasible.size(), " fit");
  if (s.recipe_rank > 0) t += str("; the recipe's own layout ranks ", s.recipe_rank, " of ", s.feasible.size());
  else t += "; the recipe's own layout is not among them";
  t += "\nrules:";
  for (const std::string& r : s.rules) t += "\n  " + r;
  t += "\n\n" + pad("rank", 6) + "  " + pad("layout", 34, false) + pad("memory", 12) + pad("step", 11) +
       pad("tokens/s", 12) + pad("MFU", 8) + pad("bubble", 9) + "\n";
  for (size_t i = 0; i < s.feasible.size(); ++i) {
    const train::Plan& p = s.feasible[i].plan;
    const double mem = static_cast<double>(p.stages[static_cast<size_t>(p.peak_stage())].memory.total());
    t += pad(str(i + 1), 6) + "  " + pad(s.feasible[i].layout.label(), 34, false) + pad(bytes_text(mem), 12) +
         pad(seconds_text(p.time.step_seconds), 11) + pad(count_text(p.time.tokens_per_second), 12) +
         pad(fmt("%.1f%%", p.time.mfu * 100), 8) + pad(fmt("%.2f%%", p.time.bubble_fraction * 100), 9) +
         (static_cast<int64_t>(i) + 1 == s.recipe_rank ? "  <- the recipe's" : "") + "\n";
  }
  if (!s.excluded.empty()) t += "\nexcluded families:\n";
  for (const train::ExcludedFamily& f : s.excluded) {
    t += "  " + f.family + ": " + (f.reasons.empty() ? std::string("no valid layout") : f.reasons.front()) + "\n";
    for (size_t i = 1; i < f.reasons.size(); ++i) t += "  " + std::string(f.family.size() + 2, ' ') + f.reasons[i] + "\n";
  }
  return t;
}

std::string groups_text(const dist::ParallelState& layout, int64_t rank) {
  using dist::GroupKind;
  static const GroupKind kinds[] = {GroupKind::kTp,     GroupKind::kCp,        GroupKind::kDp,       GroupKind::kDpCp,
                                    GroupKind::kPp,     GroupKind::kTpCp,      GroupKind::kTpDpCp,   GroupKind::kModel,
                                    GroupKind::kEmbedding, GroupKind::kPosition, GroupKind::kEtp,     GroupKind::kEp,
                                    GroupKind::kEtpEp,  GroupKind::kEdp};
  auto name = [](GroupKind k) {
    return k == GroupKind::kModel ? std::string("tp-pp (model parallel)") : std::string(dist::group_kind_name(k));
  };
  std::string t = "groups: " + layout.describe() + "\n";
  for (GroupKind k : kinds) {
    const auto& gs = layout.groups(k);
    t += str("  ", name(k), " (", gs.size(), " group", gs.size() == 1 ? "" : "s", " of ", gs.empty() ? 0 : gs.front().size(),
             "):");
    for (const std::vector<int64_t>& g : gs) {
      t += ' ';
      t += ranks_text(g);
    }
    t += "\n";
  }
  const dist::RankCoords c = layout.coords(rank);
  t += str("rank ", rank, ": tp ", c.tp, ", cp ", c.cp, ", dp ", c.dp, ", pp ", c.pp, "; etp ", c.etp, ", ep ", c.ep,
           ", edp ", c.edp, "\n");
  for (GroupKind k : kinds) {
    const std::vector<int64_t> g = layout.group_of(k, rank);
    t += "  " + pad(name(k), 24, false) + (g.empty() ? std::string("(not a member)") : ranks_text(g)) + "\n";
  }
  return t;
}

}  // namespace mpt::cli
