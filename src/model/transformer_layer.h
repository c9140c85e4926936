// One pre-norm transformer layer: x + drop(proj(attn(norm1(x)))), then + drop(fc2(act(fc1(norm2(.))))).
// Forward saves what backward needs in LayerActs; backward walks the same steps in reverse
// and accumulates parameter gradients.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/ops.h"
#include "model/gpt_dims.h"
#include "model/moe_layer.h"
#include "model/param_registry.h"
#include "parallel/context_parallel.h"
#include "parallel/tensor_parallel.h"

namespace mpt::model {

// Indices into the registry; -1 for parameters this configuration does not have.
struct LayerParams {
  int norm1_w = -1, norm1_b = -1;
  int qkv_w = -1, qkv_b = -1;
  int proj_w = -1, proj_b = -1;
  int norm2_w = -1, norm2_b = -1;
  int fc1_w = -1, fc1_b = -1;
  int fc2_w = -1, fc2_b = -1;
  bool moe = false;  // the MLP is a mixture of experts (fc1/fc2 unused)
  MoeParams experts;
};

// Registers layer `index`'s parameters under Megatron's names; an MoE layer's experts go to
// `experts` (which may be `reg`).
LayerParams register_layer(ParamRegistry& reg, ParamRegistry& experts, const GPTDims& d, int64_t index);

// A contiguous run of the residual rows this rank holds: rows [begin, begin + count) of its
// [R, H] tensors are rows [global, global + count) of the whole micro-batch's [S*B, H]
// (token t = s*B + b over the whole sequence). Dropout masks are keyed by global rows, so
// they are the same at every tensor-, sequence- and context-parallel layout.
struct RowRun {
  int64_t begin, count, global;
};
using RowRuns = std::vector<RowRun>;
// This rank's runs: its context-parallel chunks, cut to its sequence-parallel rows.
RowRuns residual_row_runs(const GPTDims& d, const parallel::ContextParallel& cp, const parallel::TensorParallel& tp);
// Dropout over [R, H] rows, keyed by global rows (see Ops::dropout_fwd); out may alias x.
void dropout_rows_fwd(backend::Ops& ops, const RowRuns& runs, Tensor out, Tensor x, float p, uint64_t key);
void dropout_rows_bwd(backend::Ops& ops, const RowRuns& runs, Tensor dx, Tensor dout, float p, uint64_t key);

// The local attention call of a layer whose dropout stream is `key`: this rank's heads
// and positions, causal.
backend::AttentionDims attention_dims(const GPTDims& d, uint64_t key);

// Activations a layer keeps from forward to backward. T = seq * micro_batch tokens; R = the
// residual rows this rank holds (T, or T / TP under sequence parallelism); widths are this
// rank's (local heads, groups and ffn under tensor parallelism).
struct LayerActs {
  Tensor norm1_out, norm1_mean, norm1_rstd;  // [R,H], [R], [R]
  Tensor q, k, v;                            // after RoPE: [T, heads*D], [T, groups*D] x2
  Tensor attn_out, lse;                      // [T, heads*D], [T, heads]
  Tensor resid_mid;                          // x + attention branch [R,H]
  Tensor norm2_out, norm2_mean, norm2_rstd;
  Tensor fc1_out, act_out;                   // [T, fc1_width], [T, ffn] (dense MLP)
  MoeActs moe;                               // an MoE MLP's
};

// Scratch shared by every layer (overwritten freely inside one call).
struct LayerScratch {
  Tensor qkv;        // [T, qkv_width]; reused as dqkv in backward
  Tensor branch;     // [R,H]: projection / fc2 output, and their gradients
  Tensor dnorm;      // [R,H]
  Tensor dact;       // [T, ffn]
  Tensor dfc1;       // [T, fc1_width]
  Tensor dattn;      // [T, heads*D]
  Tensor dq, dk, dv;
  // Sequence parallelism only (empty otherwise): [T,H] each.
  Tensor full;       // a gathered layer input (forward, and again in backward)
  Tensor partial;    // a row-parallel output before its reduce-scatter; d(input) before its own
  // Context parallelism only (empty otherwise): the attention exchange's buffers.
  Tensor cp_work;
  MoeScratch moe;    // models with MoE layers only
};

// params/grads hold the layer's unit: the flat range starting at `base`; params in
// dims.compute (the compute copy under bf16), grads always fp32.
struct LayerContext {
  backend::Ops& ops;
  const GPTDims& dims;
  const ParamRegistry& reg;
  void* params;
  float* grads;
  int64_t base;
  Tensor positions;  // i32 [T]: each token's position in its sequence
  const parallel::TensorParallel& tp;
  const parallel::ContextParallel& cp;
  const RowRuns& runs;  // this rank's residual rows in the whole micro-batch
  bool training = true;    // MoE: compute the router's losses
  float aux_scale = 1.0f;  // MoE: the weight of the router's losses in backward
  // MoE layers: the layer's expert unit (this rank's experts) and the token-exchange group.
  const ParamRegistry* ereg = nullptr;
  void* eparams = nullptr;
  float* egrads = nullptr;
  int64_t ebase = 0;
  const parallel::ExpertParallel* ep = nullptr;
  Tensor P(int i) const { return reg.view(params, dims.compute, base, i); }
  Tensor G(int i) const { return reg.view(grads, base, i); }
};

// x [R,H] -> out [R,H] (out must not alias x). dropout_key selects this layer's masks.
void layer_forward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x, Tensor out,
                   uint64_t dropout_key);
// dres holds d(out) on entry and d(x) on return; x is the layer's saved input.
void layer_backward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x, Tensor dres,
                    uint64_t dropout_key);

}  // namespace mpt::model
