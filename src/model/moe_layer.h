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

namespace mpt::model {

// Registry indices of an MoE MLP (-1: absent). Expert e's weights are fc1 + e and fc2 + e,
// laid out back to back so that they form the stacked [E, out, in] a grouped GEMM takes.
struct MoeParams {
  int router = -1;
  int fc1 = -1, fc2 = -1;
  int shared_fc1 = -1, shared_fc2 = -1;
};

// Registers layer `prefix`'s MoE MLP ("decoder.layers.N.mlp.") under Megatron's names:
// router.weight [E, H]; experts.linear_fc1.weight<e> [fc1, H] and experts.linear_fc2.weight<e>
// [H, ffn] for each expert e; shared_experts.linear_fc1/fc2.weight when shared_ffn > 0.
MoeParams register_moe(ParamRegistry& reg, const GPTDims& d, const std::string& prefix, float out_std);

// Where each token's choices went: host-side routing of one micro-batch.
struct Routing {
  std::vector<int32_t> rows;        // [T, k]: row of the permuted activations, -1 when dropped
  std::vector<int64_t> counts;      // [E]: rows per expert (capacity each when padded)
  std::vector<int64_t> routed;      // [E]: choices per expert before dropping (the loss's f_e)
  int64_t total_rows = 0;           // sum of counts
};
// Builds the routing from the router's choices. indices [T, k] (descending probability per
// token), probs [T, k]. capacity < 0: dropless. Dropping keeps, per expert, the `capacity`
// choices of highest probability (ties: lower token) or, by position, the earliest tokens.
Routing route_tokens(const int32_t* indices, const float* probs, int64_t tokens, int64_t k, int64_t experts,
                     int64_t capacity, bool by_position, bool pad_to_capacity);

// What an MoE MLP keeps from forward to backward (T tokens, up to `max_rows` permuted rows).
struct MoeActs {
  Tensor logits, lse;            // [T, E], [T] (lse only with the z-loss)
  Tensor indices, probs, scores; // i32 [T, k], [T, k], [T, E]
  Tensor rows;                   // i32 [T, k]
  Tensor x_perm, fc1_out, act_out;  // [max_rows, H], [max_rows, fc1], [max_rows, ffn]
  Tensor shared_fc1_out, shared_act_out;  // [T, shared fc1], [T, shared ffn]
  Routing routing;
  double aux_loss = 0, z_loss = 0;  // this micro-batch's values (0 when off)
};

// Scratch shared by every MoE layer of a model.
struct MoeScratch {
  Tensor y_perm;         // [max_rows, H]; its gradient in backward
  Tensor dact, dfc1;     // [max_rows, ffn], [max_rows, fc1]
  Tensor dx_perm;        // [max_rows, H]
  Tensor dlogits, dscores, dprobs;  // [T, E], [T, E], [T, k]
  Tensor shared_out;     // [T, H]: the shared expert's output, then its input gradient
  Tensor dshared_act, dshared_fc1;
};

// Reserves a layer's MoE activations and the shared scratch through `f32`/`i32`, which plan
// tensors of a shape inside the model's arena.
template <typename F32, typename I32>
void plan_moe(const GPTDims& d, MoeActs& a, F32 f32, I32 i32) {
  const int64_t T = d.tokens(), E = d.num_experts, k = d.moe_topk, rows = d.max_expert_rows(T);
  f32(a.logits, {T, E});
  if (d.z_loss_coeff > 0) f32(a.lse, {T});
  i32(a.indices, {T, k});
  f32(a.probs, {T, k});
  f32(a.scores, {T, E});
  i32(a.rows, {T, k});
  f32(a.x_perm, {rows, d.hidden});
  f32(a.fc1_out, {rows, d.moe_fc1_width()});
  f32(a.act_out, {rows, d.moe_ffn});
  if (d.shared_ffn > 0) {
    f32(a.shared_fc1_out, {T, d.shared_fc1_width()});
    f32(a.shared_act_out, {T, d.shared_ffn});
  }
}
template <typename F32>
void plan_moe_scratch(const GPTDims& d, MoeScratch& s, F32 f32) {
  const int64_t T = d.tokens(), E = d.num_experts, k = d.moe_topk, rows = d.max_expert_rows(T);
  f32(s.y_perm, {rows, d.hidden});
  f32(s.dact, {rows, d.moe_ffn});
  f32(s.dfc1, {rows, d.moe_fc1_width()});
  f32(s.dx_perm, {rows, d.hidden});
  f32(s.dlogits, {T, E});
  f32(s.dscores, {T, E});
  f32(s.dprobs, {T, k});
  if (d.shared_ffn > 0) {
    f32(s.shared_out, {T, d.hidden});
    f32(s.dshared_act, {T, d.shared_ffn});
    f32(s.dshared_fc1, {T, d.shared_fc1_width()});
  }
}

// The parameters of one MoE MLP: P(i) / G(i) view parameter i of the layer's unit.
struct MoeContext {
  backend::Ops& ops;
  const GPTDims& dims;
  const ParamRegistry& reg;
  float* params;
  float* grads;
  int64_t base;
  Tensor P(int i) const { return reg.view(params, base, i); }
  Tensor G(int i) const { return reg.view(grads, base, i); }
  // Experts' weights stacked: [E, out, in] starting at parameter `first`.
  Tensor stacked(float* area, int first) const;
};

// x [T, H] (the pre-MLP norm's output) -> out [T, H] (overwritten). training: compute the
// load-balancing and z-losses.
void moe_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out,
                 bool training);
// dout [T, H] -> dx [T, H] (overwritten); parameter gradients accumulate. aux_scale: the
// weight of this micro-batch's load-balancing and z-losses in the objective (Megatron's
// MoEAuxLossAutoScaler scale, 1 / micro-batches).
void moe_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor dout, Tensor dx,
                  float aux_scale);

}  // namespace mpt::model
