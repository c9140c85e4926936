// --search: every layout of N GPUs the recipe's model allows, each checked by the recipe's
// own rules (finalize()) and planned; those that fit ranked by estimated throughput.
//
// The usual rules first: tensor parallelism stays within a node (TP divides the GPUs per
// node), sequence parallelism is on whenever TP > 1, the recipe's virtual stages are tried
// beside none, its uneven first/last stages are kept at its own PP only; expert tensor
// parallelism stays the recipe's (TP unless it names one). Everything else (heads, groups,
// ffn, vocabulary, sequence and batch divisibility, experts over EP) is finalize()'s.
#include <algorithm>
#include <map>

#include "core/error.h"
#include "train/plan.h"

namespace mpt::train {
namespace {

std::vector<int64_t> divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n; ++d)
    if (n % d == 0) out.push_back(d);
  return out;
}

// The first problem of a finalize() error, without the place it was set.
std::string first_problem(const std::string& what) {
  std::string line = what.substr(0, what.find('\n'));
  const size_t key = line.find(": ");
  return key == std::string::npos ? line : line.substr(key + 2);
}

std::string gib(double bytes) { return str(static_cast<double>(static_cast<int64_t>(bytes / (1 << 30) * 10 + 0.5)) / 10, " GiB"); }

struct FamilyState {
  bool feasible = false;
  std::vector<std::string> rules;  // distinct
  double least_memory = -1;        // of the layouts that did not fit
  std::string least_layout;
  void add(const std::string& why) {
    if (std::find(rules.begin(), rules.end(), why) == rules.end()) rules.push_back(why);
  }
};

}  // namespace

std::string LayoutChoice::label() const {
  std::string s = str("TP ", tp, " PP ", pp);
  if (vpp > 1) s += str(" VPP ", vpp);
  s += str(" CP ", cp);
  if (ep > 1) s += str(" EP ", ep);
  return s + str(" DP ", dp);
}

SearchResult search_layouts(const config::Recipe& recipe, int64_t gpus, const Hardware& hardware) {
  MPT_CHECK(gpus >= 1, Status::kInvalidArgument, "plan --search: the number of GPUs must be >= 1, got ", gpus);
  const config::ModelConfig& m = recipe.model;
  SearchResult out;
  out.gpus = gpus;
  const int64_t per_node = hardware.gpus_per_node;
  const bool moe = m.num_moe_experts.has_value();
  const int64_t recipe_vpp = m.virtual_pipeline_model_parallel_size.value_or(1);
  out.rules.push_back(str("tensor parallelism within a node: TP divides the ", per_node, " GPUs per node"));
  out.rules.push_back("sequence parallelism whenever TP > 1");
  out.rules.push_back(recipe_vpp > 1 ? str("virtual pipeline stages: none or the recipe's ", recipe_vpp)
                                     : "no virtual pipeline stages (the recipe has none)");
  out.rules.push_back("micro-batch, global batch, sharding and model as the recipe has them");

  std::map<std::string, FamilyState> families;
  std::vector<std::string> family_order;
  auto family_of = [&](const std::string& name) -> FamilyState& {
    if (!families.count(name)) family_order.push_back(name);
    return families[name];
  };
  const LayoutChoice own{m.tensor_model_parallel_size, m.pipeline_model_parallel_size, recipe_vpp,
                         m.context_parallel_size, moe ? m.expert_model_parallel_size : 1, 0};

  for (int64_t tp : divisors(gpus)) {
    if (tp > per_node || per_node % tp != 0) {
      family_of(str("TP ", tp)).add(str("tensor parallelism must stay within a node (", per_node, " GPUs)"));
      continue;
    }
    for (int64_t pp : divisors(gpus / tp)) {
      if (pp > m.num_layers) {
        family_of(str("TP ", tp, " PP ", pp)).add(str("more pipeline stages than layers (", m.num_layers, ")"));
        continue;
      }
      for (int64_t cp : divisors(gpus / (tp * pp))) {
        const int64_t etp = m.expert_tensor_parallel_size.value_or(tp);
        std::vector<int64_t> eps{1};
        if (moe) {
          eps.clear();
          if ((gpus / pp) % etp == 0)
            for (int64_t ep : divisors(gpus / (etp * pp)))
              if (*m.num_moe_experts % ep == 0) eps.push_back(ep);
          if (eps.empty())
            family_of(str("TP ", tp, " PP ", pp))
                .add(str("no expert-parallel size fits: ", gpus, " GPUs / PP ", pp, " over expert_tensor_parallel_size ",
                         etp));
        }
        for (int64_t ep : eps) {
          std::vector<int64_t> vpps{1};
          if (recipe_vpp > 1 && pp > 1) vpps.push_back(recipe_vpp);
          for (int64_t vpp : vpps) {
            const LayoutChoice choice{tp, pp, vpp, cp, ep, gpus / (tp * pp * cp)};
            FamilyState& f = family_of(str("TP ", tp, " PP ", pp, moe ? str(" EP ", ep) : std::string()));
            config::Recipe r = recipe;
            config::ModelConfig& rm = r.model;
            rm.tensor_model_parallel_size = tp;
            rm.pipeline_model_parallel_size = pp;
            rm.context_parallel_size = cp;
            rm.sequence_parallel = tp > 1;
            if (vpp > 1) rm.virtual_pipeline_model_parallel_size = vpp;
            else rm.virtual_pipeline_model_parallel_size.reset();
            if (pp != m.pipeline_model_parallel_size) {
              rm.num_layers_in_first_pipeline_stage.reset();
              rm.num_layers_in_last_pipeline_stage.reset();
            }
            if (vpp != recipe_vpp) rm.microbatch_group_size_per_vp_stage.reset();
            if (moe) rm.expert_model_parallel_size = ep;
            ++out.considered;
            Plan plan;
            try {
              plan = plan_recipe(r, gpus, hardware);
            } catch (const Error& e) {
              f.add(first_problem(e.what()));
              continue;
            }
            if (!plan.fits()) {
              const double need = static_cast<double>(plan.stages[static_cast<size_t>(plan.peak_stage())].memory.total());
              if (f.least_memory < 0 || need < f.least_memory) {
                f.least_memory = need;
                f.least_layout = choice.label();
              }
              continue;
            }
            f.feasible = true;
            out.feasible.push_back(RankedLayout{choice, std::move(plan)});
          }
        }
      }
    }
  }
  std::stable_sort(out.feasible.begin(), out.feasible.end(), [](const RankedLayout& a, const RankedLayout& b) {
    return a.plan.time.tokens_per_second > b.plan.time.tokens_per_second;
  });
  for (size_t i = 0; i < out.feasible.size(); ++i) {
    const LayoutChoice& l = out.feasible[i].layout;
    if (l.tp == own.tp && l.pp == own.pp && l.vpp == own.vpp && l.cp == own.cp && l.ep == own.ep)
      out.recipe_rank = static_cast<int64_t>(i) + 1;
  }
  for (const std::string& name : family_order) {
    const FamilyState& f = families[name];
    if (f.feasible) continue;
    ExcludedFamily x;
    x.family = name;
    x.reasons = f.rules;
    if (f.least_memory >= 0)
      x.reasons.push_back(str("does not fit: at least ", gib(f.least_memory), " per GPU (", f.least_layout,
                              "), more than ", gib(hardware.gpu_memory_bytes)));
    out.excluded.push_back(std::move(x));
  }
  return out;
}

}  // namespace mpt::train
