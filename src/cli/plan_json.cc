// `mptrain plan --json`: the plan or the search as one JSON document for tools. Sizes are
// bytes, times seconds, FLOPs per second; keys mirror train/plan.h.
#include <nlohmann/json.hpp>

#include "cli/plan_cli.h"

namespace mpt::cli {
namespace {

using nlohmann::json;

json hardware_json(const train::Hardware& h) {
  return {{"gpus_per_node", h.gpus_per_node},
          {"gpu_memory_bytes", h.gpu_memory_bytes},
          {"peak_flops", h.peak_flops},
          {"compute_efficiency", h.compute_efficiency},
          {"intra_node_bytes_per_s", h.intra_node_bytes_per_s},
          {"inter_node_bytes_per_s", h.inter_node_bytes_per_s},
          {"collective_latency_s", h.collective_latency_s}};
}

json memory_json(const train::MemoryPlan& m) {
  return {{"parameters", m.parameters},
          {"expert_parameters", m.expert_parameters},
          {"params_master_bytes", m.params_master},
          {"params_compute_bytes", m.params_compute},
          {"params_bytes", m.params_bytes()},
          {"expert_params_bytes", m.expert_params},
          {"grads_bytes", m.grads},
          {"optimizer_bytes", m.optimizer},
          {"activations_bytes", m.activations},
          {"layer_activations_bytes", m.layer_activations},
          {"head_activations_bytes", m.head_activations},
          {"working_buffers_bytes", m.working_buffers},
          {"in_flight", m.in_flight},
          {"chunk_in_flight", m.chunk_in_flight},
          {"total_bytes", m.total()}};
}

json comm_json(const train::CommPlan& c) {
  return {{"dim", c.dim},         {"group", c.group},         {"group_size", c.group_size},
          {"what", c.what},       {"phase", c.phase},         {"bytes", c.bytes},
          {"messages", c.messages}, {"crosses_nodes", c.crosses_nodes}, {"seconds", c.seconds},
          {"exposed_seconds", c.exposed_seconds}};
}

json layout_json(const train::Plan& p) {
  return {{"world", p.sizes.world},   {"tp", p.sizes.tp},     {"cp", p.sizes.cp},     {"dp", p.dp},
          {"pp", p.sizes.pp},         {"vpp", p.vpp},         {"ep", p.sizes.ep},     {"etp", p.sizes.etp},
          {"edp", p.edp},             {"sequence_parallel", p.sequence_parallel},
          {"sharding", p.sharding},   {"precision", p.precision}};
}

json time_json(const train::TimePlan& t) {
  return {{"step_seconds", t.step_seconds},         {"pipeline_seconds", t.pipeline_seconds},
          {"tail_seconds", t.tail_seconds},         {"bubble_fraction", t.bubble_fraction},
          {"model_flops", t.model_flops},           {"tokens_per_second", t.tokens_per_second},
          {"mfu", t.mfu}};
}

json summary_json(const train::Plan& p) {
  json stages = json::array();
  for (const train::StagePlan& s : p.stages) {
    json comm = json::array();
    for (const train::CommPlan& c : s.comm) comm.push_back(comm_json(c));
    stages.push_back({{"stage", s.stage},
                      {"layers", s.layers},
                      {"chunks", s.chunks},
                      {"pre_process", s.pre_process},
                      {"post_process", s.post_process},
                      {"in_flight", s.in_flight},
                      {"memory", memory_json(s.memory)},
                      {"comm", comm},
                      {"forward_flops_per_microbatch", s.forward_flops},
                      {"compute_seconds_per_microbatch", s.compute_seconds},
                      {"microbatch_seconds", s.microbatch_seconds}});
  }
  return {{"recipe", p.recipe},
          {"layout", layout_json(p)},
          {"batch",
           {{"global", p.global_batch}, {"micro_batch", p.micro_batch}, {"microbatches", p.microbatches}, {"seq", p.seq}}},
          {"parameters", p.parameters},
          {"active_parameters", p.active_parameters},
          {"recompute", p.recompute},
          {"hardware", hardware_json(p.hardware)},
          {"stages", stages},
          {"time", time_json(p.time)},
          {"peak_stage", p.peak_stage()},
          {"fits", p.fits()}};
}

}  // namespace

std::string plan_json(const train::Plan& plan, const dist::ParallelState& layout, int64_t rank) {
  using dist::GroupKind;
  json doc = summary_json(plan);
  json groups = json::object();
  for (GroupKind k : {GroupKind::kTp, GroupKind::kCp, GroupKind::kDp, GroupKind::kDpCp, GroupKind::kPp,
                      GroupKind::kTpCp, GroupKind::kTpDpCp, GroupKind::kModel, GroupKind::kEmbedding,
                      GroupKind::kPosition, GroupKind::kEtp, GroupKind::kEp, GroupKind::kEtpEp, GroupKind::kEdp})
    groups[dist::group_kind_name(k)] = layout.groups(k);
  doc["groups"] = groups;
  const dist::RankCoords c = layout.coords(rank);
  doc["rank"] = {{"rank", rank},
                 {"coords", {{"tp", c.tp}, {"cp", c.cp}, {"dp", c.dp}, {"pp", c.pp}, {"etp", c.etp}, {"ep", c.ep},
                             {"edp", c.edp}}}};
  return doc.dump();
}

std::string search_json(const train::SearchResult& s) {
  json feasible = json::array();
  for (const train::RankedLayout& l : s.feasible) {
    const train::Plan& p = l.plan;
    feasible.push_back({{"layout", l.layout.label()},
                        {"tp", l.layout.tp},
                        {"pp", l.layout.pp},
                        {"vpp", l.layout.vpp},
                        {"cp", l.layout.cp},
                        {"ep", l.layout.ep},
                        {"dp", l.layout.dp},
                        {"peak_memory_bytes", p.stages[static_cast<size_t>(p.peak_stage())].memory.total()},
                        {"time", time_json(p.time)}});
  }
  json excluded = json::array();
  for (const train::ExcludedFamily& f : s.excluded) excluded.push_back({{"family", f.family}, {"reasons", f.reasons}});
  return json{{"gpus", s.gpus},         {"considered", s.considered}, {"rules", s.rules},
              {"feasible", feasible},   {"excluded", excluded},       {"recipe_rank", s.recipe_rank}}
      .dump();
}

}  // namespace mpt::cli
