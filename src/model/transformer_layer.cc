#include "model/transformer_layer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/rng.h"
#include "model/linear.h"

namespace mpt::model {

namespace {
// Distinct dropout streams inside one layer.
enum Site : uint64_t { kAttnProbs = 1, kAttnOut = 2, kMlpOut = 3 };

}  // namespace

backend::AttentionDims attention_dims(const GPTDims& d, uint64_t key) {
  backend::AttentionDims a;
  a.seq_q = a.seq_kv = d.local_seq();
  a.batch = d.micro_batch;
  a.heads = d.local_heads();
  a.groups = d.local_groups();
  a.head_offset = d.tp_rank * d.local_heads();
  a.head_dim = d.head_dim;
  a.softmax_scale = d.softmax_scale;
  a.causal = true;
  a.dropout_p = d.attention_dropout;
  a.dropout_key = mix_key(key, kAttnProbs);
  return a;
}

namespace {
void norm_forward(const LayerContext& c, int w, int b, Tensor out, Tensor mean, Tensor rstd, Tensor x) {
  if (c.dims.layernorm)
    c.ops.layernorm_fwd(out, mean, rstd, x, c.P(w), c.P(b), c.dims.norm_eps);
  else
    c.ops.rmsnorm_fwd(out, rstd, x, c.P(w), c.dims.norm_eps);
}

// sum = x + branch, then the norm of sum as stored: one pass over the rows.
void add_norm_forward(const LayerContext& c, int w, int b, Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor x,
                      Tensor branch) {
  if (c.dims.layernorm)
    c.ops.add_layernorm_fwd(sum, out, mean, rstd, x, branch, c.P(w), c.P(b), c.dims.norm_eps);
  else
    c.ops.add_rmsnorm_fwd(sum, out, rstd, x, branch, c.P(w), c.dims.norm_eps);
}

// fc1 and the activation of a dense MLP; a plain activation runs in the GEMM's epilogue.
void mlp_fc1_forward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s) {
  const GPTDims& d = c.dims;
  if (d.gated) {
    column_parallel_forward(c.ops, c.tp, a.fc1_out, a.norm2_out, c.P(p.fc1_w), c.P(p.fc1_b), s.full);
    c.ops.activation_fwd(a.act_out, a.fc1_out, d.activation, true);
  } else {
    column_parallel_act_forward(c.ops, c.tp, a.act_out, a.fc1_out, a.norm2_out, c.P(p.fc1_w), c.P(p.fc1_b),
                                d.activation, s.full);
  }
}

void norm_backward(const LayerContext& c, int w, int b, Tensor dx, Tensor dout, Tensor x, Tensor mean, Tensor rstd) {
  if (c.dims.layernorm)
    c.ops.layernorm_bwd(dx, c.G(w), c.G(b), dout, x, c.P(w), mean,
                        rstd);
  else
    c.ops.rmsnorm_bwd(dx, c.G(w), dout, x, c.P(w), rstd);
}

MoeContext moe_context(const LayerContext& c, const LayerScratch& s) {
  MPT_ASSERT(c.ereg != nullptr && c.ep != nullptr);
  return MoeContext{c.ops, c.dims, c.reg, c.params, c.grads, c.base, *c.ereg, c.eparams, c.egrads, c.ebase,
                    c.tp, *c.ep, s.full, s.partial};
}
}  // namespace

RowRuns residual_row_runs(const GPTDims& d, const parallel::ContextParallel& cp, const parallel::TensorParallel& tp) {
  MPT_CHECK(cp.size() == d.cp, Status::kInvalidArgument, "the model's sequence is split over ", d.cp,
            " context-parallel ranks but its group has ", cp.size());
  const int64_t B = d.micro_batch, T = d.tokens();
  RowRuns chunks;  // this rank's local tokens as runs of whole-sequence rows
  if (d.cp == 1) {
    chunks.push_back({0, T, 0});
  } else {
    const int64_t c = d.local_seq() / 2;
    chunks.push_back({0, c * B, cp.position(0, d.local_seq()) * B});
    chunks.push_back({c * B, c * B, cp.position(c, d.local_seq()) * B});
  }
  const int64_t first = tp.row_offset(T), last = first + tp.local_rows(T);
  RowRuns runs;
  for (const RowRun& r : chunks) {
    const int64_t b = std::max(first, r.begin), e = std::min(last, r.begin + r.count);
    if (b < e) runs.push_back({b - first, e - b, r.global + (b - r.begin)});
  }
  return runs;
}

void dropout_rows_fwd(backend::Ops& ops, const RowRuns& runs, Tensor out, Tensor x, float p, uint64_t key) {
  for (const RowRun& r : runs) ops.dropout_fwd(out.rows(r.begin, r.count), x.rows(r.begin, r.count), p, key, r.global);
}

void dropout_rows_bwd(backend::Ops& ops, const RowRuns& runs, Tensor dx, Tensor dout, float p, uint64_t key) {
  for (const RowRun& r : runs)
    ops.dropout_bwd(dx.rows(r.begin, r.count), dout.rows(r.begin, r.count), p, key, r.global);
}

LayerParams register_layer(ParamRegistry& reg, ParamRegistry& experts, const GPTDims& d, int64_t index) {
  const std::string pre = "decoder.layers." + std::to_string(index) + ".";
  // Output-side projections are scaled by 1/sqrt(2 * num_layers), as Megatron does.
  const float out_std = d.init_std / std::sqrt(2.0f * static_cast<float>(d.num_layers));
  // Column-parallel weights are cut along their output rows (a gated fc1 as [gate_r; up_r]);
  // row-parallel ones along their input columns.
  const TensorSplit column{0, 1, d.tp_rank, d.tp}, gated_column{0, d.gated ? 2 : 1, d.tp_rank, d.tp};
  const TensorSplit row{1, 1, d.tp_rank, d.tp}, whole{-1, 1, d.tp_rank, d.tp};
  LayerParams p;
  // Replicated over tensor-parallel ranks; under sequence parallelism each rank's gradient
  // comes from its part of the sequence.
  auto replicated = [&](const std::string& name, Init init) {
    const int i = reg.add_split(pre + name, {d.hidden}, whole, init, 0, false);
    reg.set_sequence_parallel(i, d.sequence_parallel);
    return i;
  };
  p.norm1_w = replicated("input_layernorm.weight", Init::kOnes);
  if (d.layernorm) p.norm1_b = replicated("input_layernorm.bias", Init::kZeros);
  p.qkv_w = reg.add_split(pre + "self_attention.linear_qkv.weight", {d.qkv_width(), d.hidden}, column, Init::kNormal,
                          d.init_std, true);
  if (d.qkv_bias)
    p.qkv_b = reg.add_split(pre + "self_attention.linear_qkv.bias", {d.qkv_width()}, column, Init::kZeros, 0, false);
  p.proj_w = reg.add_split(pre + "self_attention.linear_proj.weight", {d.hidden, d.attn_width()}, row, Init::kNormal,
                           out_std, true);
  if (d.bias) p.proj_b = replicated("self_attention.linear_proj.bias", Init::kZeros);
  p.norm2_w = replicated("pre_mlp_layernorm.weight", Init::kOnes);
  if (d.layernorm) p.norm2_b = replicated("pre_mlp_layernorm.bias", Init::kZeros);
  if (d.is_moe_layer(index)) {
    p.moe = true;
    p.experts = register_moe(reg, experts, d, pre + "mlp.", out_std);
    return p;
  }
  p.fc1_w = reg.add_split(pre + "mlp.linear_fc1.weight", {d.fc1_width(), d.hidden}, gated_column, Init::kNormal,
                          d.init_std, true);
  if (d.bias)
    p.fc1_b = reg.add_split(pre + "mlp.linear_fc1.bias", {d.fc1_width()}, gated_column, Init::kZeros, 0, false);
  p.fc2_w = reg.add_split(pre + "mlp.linear_fc2.weight", {d.hidden, d.local_ffn()}, row, Init::kNormal, out_std, true);
  if (d.bias) p.fc2_b = replicated("mlp.linear_fc2.bias", Init::kZeros);
  return p;
}

ResidualSum layer_forward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x,
                          Tensor out, uint64_t key, const ResidualSum& in, bool defer) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  auto P = [&](int i) { return c.P(i); };

  // Attention branch; the previous layer's residual add, when left to it, fused into norm1.
  if (in.pending())
    add_norm_forward(c, p.norm1_w, p.norm1_b, x, a.norm1_out, a.norm1_mean, a.norm1_rstd, in.a, in.b);
  else
    norm_forward(c, p.norm1_w, p.norm1_b, a.norm1_out, a.norm1_mean, a.norm1_rstd, x);
  column_parallel_forward(ops, c.tp, s.qkv, a.norm1_out, P(p.qkv_w), P(p.qkv_b), s.full);
  if (d.rope)
    ops.qkv_split_rope(a.q, a.k, a.v, s.qkv, d.local_groups(), d.heads / d.groups, d.head_dim, c.positions,
                       d.rotary_dim, d.rotary_base);
  else
    ops.qkv_split(a.q, a.k, a.v, s.qkv, d.local_groups(), d.heads / d.groups, d.head_dim);
  c.cp.attention_forward(ops, s.cp_work, a.attn_out, a.lse, a.q, a.k, a.v, attention_dims(d, key));
  row_parallel_forward(ops, c.tp, s.branch, a.attn_out, P(p.proj_w), P(p.proj_b), s.partial);
  if (d.hidden_dropout > 0) dropout_rows_fwd(ops, c.runs, s.branch, s.branch, d.hidden_dropout, mix_key(key, kAttnOut));

  // MLP branch, its norm fused with the residual add before it.
  add_norm_forward(c, p.norm2_w, p.norm2_b, a.resid_mid, a.norm2_out, a.norm2_mean, a.norm2_rstd, x, s.branch);
  if (p.moe) {
    moe_forward(moe_context(c, s), p.experts, a.moe, s.moe, a.norm2_out, s.branch, c.training);
  } else {
    mlp_fc1_forward(c, p, a, s);
    row_parallel_forward(ops, c.tp, s.branch, a.act_out, P(p.fc2_w), P(p.fc2_b), s.partial);
  }
  if (d.hidden_dropout > 0) dropout_rows_fwd(ops, c.runs, s.branch, s.branch, d.hidden_dropout, mix_key(key, kMlpOut));
  const ResidualSum closing{a.resid_mid, s.branch};
  if (defer) return closing;
  ops.add(out, closing.a, closing.b);
  return {};
}

void layer_backward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x, Tensor dres,
                    uint64_t key) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  auto P = [&](int i) { return c.P(i); };
  auto G = [&](int i) { return c.G(i); };
  // Selective recompute regenerates what forward dropped just before backward reads it.
  const Recompute& rc = d.recompute;

  // MLP branch: out = resid_mid + drop(fc2(act(fc1(norm2(resid_mid))))). Without dropout
  // the branch's gradient is dres itself: the dense MLP only reads it before norm_backward
  // adds into dres (the MoE layer gets a copy: its backward is not held to that).
  Tensor dbranch = dres;
  if (d.hidden_dropout > 0 || p.moe) dbranch = s.branch;
  if (d.hidden_dropout > 0)
    dropout_rows_bwd(ops, c.runs, dbranch, dres, d.hidden_dropout, mix_key(key, kMlpOut));
  else if (p.moe)
    ops.copy(dbranch, dres);
  if (rc.layernorm) norm_forward(c, p.norm2_w, p.norm2_b, a.norm2_out, a.norm2_mean, a.norm2_rstd, a.resid_mid);
  if (p.moe) {
    // The whole MoE MLP runs again (routing and exchange included); its output is not needed.
    if (rc.moe) moe_forward(moe_context(c, s), p.experts, a.moe, s.moe, a.norm2_out, s.dnorm, c.training);
    moe_backward(moe_context(c, s), p.experts, a.moe, s.moe, a.norm2_out, dbranch, s.dnorm, c.aux_scale);
  } else {
    if (rc.mlp) mlp_fc1_forward(c, p, a, s);
    row_parallel_backward(ops, c.tp, s.dact, G(p.fc2_w), G(p.fc2_b), dbranch, a.act_out, P(p.fc2_w), s.full);
    ops.activation_bwd(s.dfc1, s.dact, a.fc1_out, d.activation, d.gated);
    column_parallel_backward(ops, c.tp, s.dnorm, G(p.fc1_w), G(p.fc1_b), s.dfc1, a.norm2_out, P(p.fc1_w), s.full,
                             s.partial);
  }
  norm_backward(c, p.norm2_w, p.norm2_b, dres, s.dnorm, a.resid_mid, a.norm2_mean, a.norm2_rstd);

  // Attention branch: resid_mid = x + drop(proj(attn(...))); linear_proj's backward only
  // reads the branch's gradient, so without dropout it is dres itself.
  dbranch = dres;
  if (d.hidden_dropout > 0) {
    dbranch = s.branch;
    dropout_rows_bwd(ops, c.runs, dbranch, dres, d.hidden_dropout, mix_key(key, kAttnOut));
  }
  row_parallel_backward(ops, c.tp, s.dattn, G(p.proj_w), G(p.proj_b), dbranch, a.attn_out, P(p.proj_w), s.full);
  c.cp.attention_backward(ops, s.cp_work, s.dq, s.dk, s.dv, s.dattn, a.q, a.k, a.v, a.attn_out, a.lse,
                          attention_dims(d, key));
  Tensor dqkv = s.qkv;
  if (d.rope)
    ops.qkv_merge_rope(dqkv, s.dq, s.dk, s.dv, d.local_groups(), d.heads / d.groups, d.head_dim, c.positions,
                       d.rotary_dim, d.rotary_base);
  else
    ops.qkv_merge(dqkv, s.dq, s.dk, s.dv, d.local_groups(), d.heads / d.groups, d.head_dim);
  if (rc.layernorm) norm_forward(c, p.norm1_w, p.norm1_b, a.norm1_out, a.norm1_mean, a.norm1_rstd, x);
  column_parallel_backward(ops, c.tp, s.dnorm, G(p.qkv_w), G(p.qkv_b), dqkv, a.norm1_out, P(p.qkv_w), s.full,
                           s.partial);
  norm_backward(c, p.norm1_w, p.norm1_b, dres, s.dnorm, x, a.norm1_mean, a.norm1_rstd);
}

}  // namespace mpt::model
