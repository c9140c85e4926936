// The mixture-of-experts MLP of a transformer layer (Megatron-Core's MoELayer): a top-k
// router, token dropping to a capacity when asked, the routed experts run as grouped GEMMs
// over the tokens permuted into expert order, the outputs combined with their routing
// probabilities, and an optional shared expert every token goes through. The router's
// load-balancing (Switch) loss and z-loss add their gradients in backward.
//
// Routing bookkeeping (which row of the permuted activations holds which choice, how many
// rows each expert gets) is done on the host, as Megatron syncs tokens_per_expert to the
// host: rows are grouped by expert, tokens in ascending order within an expert.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "model/gpt_dims.h"
#include "model/param_registry.h"
#include "parallel/expert_parallel.h"
#include "parallel/tensor_parallel.h"

namespace mpt::model {

// Registry indices of an MoE MLP (-1: absent). Expert e's weights are fc1 + e and fc2 + e,
// laid out back to back so that they form the stacked [E, out, in] a grouped GEMM takes.
struct MoeParams {
  int router = -1;
  int fc1 = -1, fc2 = -1;
  int shared_fc1 = -1, shared_fc2 = -1;
};

// Registers layer `prefix`'s MoE MLP ("decoder.layers.N.mlp.") under Megatron's names:
// router.weight [E, H] and shared_experts.linear_fc1/fc2.weight (when shared_ffn > 0, split
// over tensor-parallel ranks like a dense MLP) in `reg`; this rank's experts
// experts.linear_fc1.weight<e> [fc1, H] and experts.linear_fc2.weight<e> [H, ffn] (e global,
// the hidden units split over expert-tensor-parallel ranks) in `experts`, which may be `reg`.
MoeParams register_moe(ParamRegistry& reg, ParamRegistry& experts, const GPTDims& d, const std::string& prefix,
                       float out_std);

// Where each token's choices went: host-side routing of one micro-batch.
struct Routing {
  std::vector<int32_t> rows;        // [T, k]: row of the permuted activations, -1 when dropped
  std::vector<int64_t> counts;      // [E]: rows per expert (capacity each when padded)
  std::vector<int64_t> routed;      // [E]: choices per expert before dropping (the loss's f_e)
  int64_t total_rows = 0;           // sum of counts
  // Work space, kept so that routing the next micro-batch allocates nothing.
  std::vector<int64_t> order, start;
};
// Builds the routing from the router's choices into `r` (its storage reused). indices [T, k]
// (descending probability per token), probs [T, k]. capacity < 0: dropless. Dropping keeps,
// per expert, the `capacity` choices of highest probability (ties: lower token) or, by
// position, the earliest tokens.
void route_tokens(const int32_t* indices, const float* probs, int64_t tokens, int64_t k, int64_t experts,
                  int64_t capacity, bool by_position, bool pad_to_capacity, Routing& r);
inline Routing route_tokens(const int32_t* indices, const float* probs, int64_t tokens, int64_t k, int64_t experts,
                            int64_t capacity, bool by_position, bool pad_to_capacity) {
  Routing r;
  route_tokens(indices, probs, tokens, k, experts, capacity, by_position, pad_to_capacity, r);
  return r;
}

// How this rank's local experts' rows were exchanged with the group (expert parallelism).
struct Exchange {
  std::vector<int64_t> all_counts;  // [group, E]: every member's rows per expert
  std::vector<int64_t> counts;      // [local experts]: rows each local expert received
  int64_t rows = 0;                 // sum of counts: rows of x_perm
  // alltoall: elements sent to and received from each member, and where each expert-parallel
  // rank's experts' rows start in this rank's locally permuted rows.
  std::vector<int64_t> send, recv, block_start, block_rows;
  int64_t received = 0;             // rows received
  // Work space: where member q's rows of local expert e start in x_perm ([group, local
  // experts]), and where a member's rows of each expert start among its own ([E]); host
  // copies of the gathered routing and the row map built from them.
  std::vector<int64_t> offsets, starts;
  std::vector<int32_t> rows_g, indices_g, map;
};

// What an MoE MLP keeps from forward to backward. R = the rows this rank holds (its tokens).
struct MoeActs {
  Tensor logits, lse;            // [R, E], [R] (lse only with the z-loss)
  Tensor indices, probs, scores; // i32 [R, k], [R, k], [R, E]
  Tensor rows;                   // i32 [R, k]: this rank's routing (see Routing)
  Tensor x_perm, fc1_out, act_out;  // the local experts' rows: [max rows, H], [., fc1], [., ffn]
  Tensor shared_fc1_out, shared_act_out;  // [T, shared fc1], [T, shared ffn] (T: whole tokens)
  // Expert parallelism only.
  Tensor map;      // i32: allgather [group * R, k]: each gathered choice's row of x_perm or -1;
                   // alltoall [max received, 1]: each received row's row of x_perm
  Tensor probs_g;  // allgather [group * R, k]: every member's probabilities
  Tensor y_local;  // alltoall [max local rows, H]: the outputs of this rank's choices
  Routing routing;
  Exchange exchange;
  // Host copies of the router's choices (and its scores, for the load-balancing loss).
  std::vector<int32_t> host_indices;
  std::vector<float> host_probs, host_scores;
  std::vector<int64_t> routed_total;  // [E]: routed choices over the micro-batch (tensor x context group)
  int64_t tokens_total = 0;           // tokens of the micro-batch the counts cover
  double aux_loss = 0, z_loss = 0;    // this rank's share of the micro-batch's values (0 when off)
};

// Whether `t`, a member of `a`, is dropped after forward and regenerated in backward under
// rc's selective modules: every member with "moe" (layer_backward runs moe_forward again);
// the experts' activation output with "moe_act"; the shared expert's fc1 and activation
// outputs with "shared_experts" (moe_backward regenerates those two).
bool moe_recomputed(const Recompute& rc, const MoeActs& a, const Tensor& t);

// Scratch shared by every MoE layer of a model.
struct MoeScratch {
  Tensor y_perm;         // [max rows, H]; its gradient in backward
  Tensor dact, dfc1;     // [max rows, ffn], [max rows, fc1]
  Tensor dx_perm;        // [max rows, H]
  Tensor dlogits, dscores, dprobs;  // [R, E], [R, E], [R, k]
  Tensor shared_out;     // [R, H]: the shared expert's output, then its input gradient
  Tensor dshared_act, dshared_fc1;
  // Expert parallelism only.
  Tensor gathered, combined;  // allgather [group * R, H]
  Tensor rows_g, indices_g;   // allgather i32 [group * R, k]
  Tensor dprobs_g;            // allgather [group * R, k]
  Tensor local;               // alltoall [max local rows, H]: this rank's permuted rows
  Tensor received;            // alltoall [max received, H]
  Tensor stage;               // alltoall with ETP > 1: [ETP * max local rows, H]
  std::vector<float> host_dscores;  // the load-balancing gradient, built on the host
};

// Reserves a layer's MoE activations and the shared scratch through `act` (the compute
// dtype), `f32` and `i32`, which plan tensors of a shape inside the model's arena.
template <typename Act, typename F32, typename I32>
void plan_moe(const GPTDims& d, MoeActs& a, Act act, F32 f32, I32 i32) {
  const int64_t R = d.rows(), T = d.tokens(), E = d.num_experts, k = d.moe_topk, g = d.moe_group();
  const int64_t rows = g > 1 ? d.max_received_rows(R) : d.max_expert_rows(R);
  f32(a.logits, {R, E});
  if (d.z_loss_coeff > 0) f32(a.lse, {R});
  i32(a.indices, {R, k});
  f32(a.probs, {R, k});
  f32(a.scores, {R, E});
  i32(a.rows, {R, k});
  act(a.x_perm, {rows, d.hidden});
  act(a.fc1_out, {rows, d.moe_fc1_width()});
  act(a.act_out, {rows, d.local_moe_ffn()});
  if (d.shared_ffn > 0) {
    act(a.shared_fc1_out, {T, d.shared_fc1_width()});
    act(a.shared_act_out, {T, d.local_shared_ffn()});
  }
  if (g > 1 && !d.alltoall) {
    i32(a.map, {g * R, k});
    f32(a.probs_g, {g * R, k});
  } else if (g > 1) {
    i32(a.map, {rows, 1});
    act(a.y_local, {d.max_expert_rows(R), d.hidden});
  }
}
template <typename Act, typename F32, typename I32>
void plan_moe_scratch(const GPTDims& d, MoeScratch& s, Act act, F32 f32, I32 i32) {
  const int64_t R = d.rows(), E = d.num_experts, k = d.moe_topk, g = d.moe_group();
  const int64_t rows = g > 1 ? d.max_received_rows(R) : d.max_expert_rows(R);
  act(s.y_perm, {rows, d.hidden});
  act(s.dact, {rows, d.local_moe_ffn()});
  act(s.dfc1, {rows, d.moe_fc1_width()});
  act(s.dx_perm, {rows, d.hidden});
  f32(s.dlogits, {R, E});
  f32(s.dscores, {R, E});
  f32(s.dprobs, {R, k});
  if (d.shared_ffn > 0) {
    act(s.shared_out, {R, d.hidden});
    act(s.dshared_act, {d.tokens(), d.local_shared_ffn()});
    act(s.dshared_fc1, {d.tokens(), d.shared_fc1_width()});
  }
  if (g > 1 && !d.alltoall) {
    act(s.gathered, {g * R, d.hidden});
    act(s.combined, {g * R, d.hidden});
    i32(s.rows_g, {g * R, k});
    i32(s.indices_g, {g * R, k});
    f32(s.dprobs_g, {g * R, k});
  } else if (g > 1) {
    act(s.local, {d.max_expert_rows(R), d.hidden});
    act(s.received, {rows, d.hidden});
    if (d.etp > 1) act(s.stage, {d.etp * d.max_expert_rows(R), d.hidden});
  }
}

// What one MoE MLP computes with: the layer's unit (router, shared expert) and its expert
// unit (this rank's experts), the groups, and the layer's sequence-parallel scratch.
struct MoeContext {
  backend::Ops& ops;
  const GPTDims& dims;
  const ParamRegistry& reg;
  void* params;  // the unit's parameters in dims.compute (their compute copy under bf16)
  float* grads;
  int64_t base;
  const ParamRegistry& ereg;
  void* eparams;  // the expert unit's, likewise
  float* egrads;
  int64_t ebase;
  const parallel::TensorParallel& tp;
  const parallel::ExpertParallel& ep;
  Tensor full, partial;  // [T, H] each under sequence parallelism (the shared expert's)
  Tensor P(int i) const { return reg.view(params, dims.compute, base, i); }
  Tensor G(int i) const { return reg.view(grads, base, i); }
  // This rank's experts' weights stacked: [local experts, out, in] starting at expert
  // parameter `first`: their compute copies, or their gradients.
  Tensor stacked_params(int first) const;
  Tensor stacked_grads(int first) const;
};

// x [R, H] (the pre-MLP norm's output) -> out [R, H] (overwritten). training: compute the
// load-balancing and z-losses.
void moe_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out,
                 bool training);
// dout [R, H] -> dx [R, H] (overwritten); parameter gradients accumulate; regenerates first
// what "moe_act" and "shared_experts" recompute dropped. aux_scale: the
// weight of this micro-batch's load-balancing and z-losses in the objective (Megatron's
// MoEAuxLossAutoScaler scale, 1 / micro-batches, times CP).
void moe_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor dout, Tensor dx,
                  float aux_scale);

}  // namespace mpt::model
