#include "model/transformer_layer.h"

#include <cmath>
#include <string>

#include "core/rng.h"
#include "model/linear.h"

namespace mpt::model {

namespace {
// Distinct dropout streams inside one layer.
enum Site : uint64_t { kAttnProbs = 1, kAttnOut = 2, kMlpOut = 3 };

backend::AttentionDims attention_dims(const GPTDims& d, uint64_t key) {
  backend::AttentionDims a;
  a.seq_q = a.seq_kv = d.seq;
  a.batch = d.micro_batch;
  a.heads = d.heads;
  a.groups = d.groups;
  a.head_dim = d.head_dim;
  a.softmax_scale = d.softmax_scale;
  a.causal = true;
  a.dropout_p = d.attention_dropout;
  a.dropout_key = mix_key(key, kAttnProbs);
  return a;
}

void norm_forward(const LayerContext& c, int w, int b, Tensor out, Tensor mean, Tensor rstd, Tensor x) {
  if (c.dims.layernorm)
    c.ops.layernorm_fwd(out, mean, rstd, x, c.P(w), c.P(b), c.dims.norm_eps);
  else
    c.ops.rmsnorm_fwd(out, rstd, x, c.P(w), c.dims.norm_eps);
}

void norm_backward(const LayerContext& c, int w, int b, Tensor dx, Tensor dout, Tensor x, Tensor mean, Tensor rstd) {
  if (c.dims.layernorm)
    c.ops.layernorm_bwd(dx, c.G(w), c.G(b), dout, x, c.P(w), mean,
                        rstd);
  else
    c.ops.rmsnorm_bwd(dx, c.G(w), dout, x, c.P(w), rstd);
}
}  // namespace

LayerParams register_layer(ParamRegistry& reg, const GPTDims& d, int64_t index) {
  const std::string pre = "decoder.layers." + std::to_string(index) + ".";
  // Output-side projections are scaled by 1/sqrt(2 * num_layers), as Megatron does.
  const float out_std = d.init_std / std::sqrt(2.0f * static_cast<float>(d.num_layers));
  LayerParams p;
  p.norm1_w = reg.add(pre + "input_layernorm.weight", {d.hidden}, Init::kOnes, 0, false);
  if (d.layernorm) p.norm1_b = reg.add(pre + "input_layernorm.bias", {d.hidden}, Init::kZeros, 0, false);
  p.qkv_w = reg.add(pre + "self_attention.linear_qkv.weight", {d.qkv_width(), d.hidden}, Init::kNormal, d.init_std, true);
  if (d.qkv_bias) p.qkv_b = reg.add(pre + "self_attention.linear_qkv.bias", {d.qkv_width()}, Init::kZeros, 0, false);
  p.proj_w = reg.add(pre + "self_attention.linear_proj.weight", {d.hidden, d.attn_width()}, Init::kNormal, out_std, true);
  if (d.bias) p.proj_b = reg.add(pre + "self_attention.linear_proj.bias", {d.hidden}, Init::kZeros, 0, false);
  p.norm2_w = reg.add(pre + "pre_mlp_layernorm.weight", {d.hidden}, Init::kOnes, 0, false);
  if (d.layernorm) p.norm2_b = reg.add(pre + "pre_mlp_layernorm.bias", {d.hidden}, Init::kZeros, 0, false);
  p.fc1_w = reg.add(pre + "mlp.linear_fc1.weight", {d.fc1_width(), d.hidden}, Init::kNormal, d.init_std, true);
  if (d.bias) p.fc1_b = reg.add(pre + "mlp.linear_fc1.bias", {d.fc1_width()}, Init::kZeros, 0, false);
  p.fc2_w = reg.add(pre + "mlp.linear_fc2.weight", {d.hidden, d.ffn}, Init::kNormal, out_std, true);
  if (d.bias) p.fc2_b = reg.add(pre + "mlp.linear_fc2.bias", {d.hidden}, Init::kZeros, 0, false);
  return p;
}

void layer_forward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x, Tensor out,
                   uint64_t key) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  auto P = [&](int i) { return c.P(i); };

  // Attention branch.
  norm_forward(c, p.norm1_w, p.norm1_b, a.norm1_out, a.norm1_mean, a.norm1_rstd, x);
  linear_forward(ops, s.qkv, a.norm1_out, P(p.qkv_w), P(p.qkv_b));
  ops.qkv_split(a.q, a.k, a.v, s.qkv, d.groups, d.heads / d.groups, d.head_dim);
  if (d.rope) {
    ops.rope(a.q, c.positions, d.heads, d.head_dim, d.rotary_dim, d.rotary_base, false);
    ops.rope(a.k, c.positions, d.groups, d.head_dim, d.rotary_dim, d.rotary_base, false);
  }
  ops.attention_fwd(a.attn_out, a.lse, a.q, a.k, a.v, attention_dims(d, key));
  linear_forward(ops, s.branch, a.attn_out, P(p.proj_w), P(p.proj_b));
  if (d.hidden_dropout > 0) ops.dropout_fwd(s.branch, s.branch, d.hidden_dropout, mix_key(key, kAttnOut), 0);
  ops.add(a.resid_mid, x, s.branch);

  // MLP branch.
  norm_forward(c, p.norm2_w, p.norm2_b, a.norm2_out, a.norm2_mean, a.norm2_rstd, a.resid_mid);
  linear_forward(ops, a.fc1_out, a.norm2_out, P(p.fc1_w), P(p.fc1_b));
  ops.activation_fwd(a.act_out, a.fc1_out, d.activation, d.gated);
  linear_forward(ops, s.branch, a.act_out, P(p.fc2_w), P(p.fc2_b));
  if (d.hidden_dropout > 0) ops.dropout_fwd(s.branch, s.branch, d.hidden_dropout, mix_key(key, kMlpOut), 0);
  ops.add(out, a.resid_mid, s.branch);
}

void layer_backward(const LayerContext& c, const LayerParams& p, LayerActs& a, LayerScratch& s, Tensor x, Tensor dres,
                    uint64_t key) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  auto P = [&](int i) { return c.P(i); };
  auto G = [&](int i) { return c.G(i); };

  // MLP branch: out = resid_mid + drop(fc2(act(fc1(norm2(resid_mid))))).
  Tensor dbranch = s.branch;
  if (d.hidden_dropout > 0)
    ops.dropout_bwd(dbranch, dres, d.hidden_dropout, mix_key(key, kMlpOut), 0);
  else
    ops.copy(dbranch, dres);
  linear_backward(ops, s.dact, G(p.fc2_w), G(p.fc2_b), dbranch, a.act_out, P(p.fc2_w));
  ops.activation_bwd(s.dfc1, s.dact, a.fc1_out, d.activation, d.gated);
  linear_backward(ops, s.dnorm, G(p.fc1_w), G(p.fc1_b), s.dfc1, a.norm2_out, P(p.fc1_w));
  norm_backward(c, p.norm2_w, p.norm2_b, dres, s.dnorm, a.resid_mid, a.norm2_mean, a.norm2_rstd);

  // Attention branch: resid_mid = x + drop(proj(attn(...))).
  if (d.hidden_dropout > 0)
    ops.dropout_bwd(dbranch, dres, d.hidden_dropout, mix_key(key, kAttnOut), 0);
  else
    ops.copy(dbranch, dres);
  linear_backward(ops, s.dattn, G(p.proj_w), G(p.proj_b), dbranch, a.attn_out, P(p.proj_w));
  ops.attention_bwd(s.dq, s.dk, s.dv, s.dattn, a.q, a.k, a.v, a.attn_out, a.lse, attention_dims(d, key));
  if (d.rope) {
    ops.rope(s.dq, c.positions, d.heads, d.head_dim, d.rotary_dim, d.rotary_base, true);
    ops.rope(s.dk, c.positions, d.groups, d.head_dim, d.rotary_dim, d.rotary_base, true);
  }
  Tensor dqkv = s.qkv;
  ops.qkv_merge(dqkv, s.dq, s.dk, s.dv, d.groups, d.heads / d.groups, d.head_dim);
  linear_backward(ops, s.dnorm, G(p.qkv_w), G(p.qkv_b), dqkv, a.norm1_out, P(p.qkv_w));
  norm_backward(c, p.norm1_w, p.norm1_b, dres, s.dnorm, x, a.norm1_mean, a.norm1_rstd);
}

}  // namespace mpt::model
