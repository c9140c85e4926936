#include "model/moe_layer.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.h"
#include "model/linear.h"

namespace mpt::model {

MoeParams register_moe(ParamRegistry& reg, const GPTDims& d, const std::string& pre, float out_std) {
  MoeParams p;
  p.router = reg.add(pre + "router.weight", {d.num_experts, d.hidden}, Init::kNormal, d.init_std, true);
  // Expert weights back to back: each is a whole number of alignment blocks when the hidden
  // size is (checked when the recipe is loaded), so expert e + 1 starts where e ends.
  for (int64_t e = 0; e < d.num_experts; ++e) {
    const int i = reg.add(str(pre, "experts.linear_fc1.weight", e), {d.moe_fc1_width(), d.hidden}, Init::kNormal,
                          d.init_std, true);
    if (e == 0) p.fc1 = i;
  }
  for (int64_t e = 0; e < d.num_experts; ++e) {
    const int i =
        reg.add(str(pre, "experts.linear_fc2.weight", e), {d.hidden, d.moe_ffn}, Init::kNormal, out_std, true);
    if (e == 0) p.fc2 = i;
  }
  if (d.shared_ffn > 0) {
    p.shared_fc1 = reg.add(pre + "shared_experts.linear_fc1.weight", {d.shared_fc1_width(), d.hidden}, Init::kNormal,
                           d.init_std, true);
    p.shared_fc2 =
        reg.add(pre + "shared_experts.linear_fc2.weight", {d.hidden, d.shared_ffn}, Init::kNormal, out_std, true);
  }
  for (int first : {p.fc1, p.fc2}) {
    const ParamInfo& a = reg.at(first);
    const ParamInfo& b = reg.at(first + static_cast<int>(d.num_experts) - 1);
    MPT_CHECK(b.offset == a.offset + (d.num_experts - 1) * a.numel, Status::kInvalidConfig,
              "the experts' weights of ", pre, " are not contiguous: hidden_size ", d.hidden,
              " and the expert ffn size must make each expert's weight a multiple of ", ParamRegistry::kAlign,
              " elements");
  }
  return p;
}

Routing route_tokens(const int32_t* indices, const float* probs, int64_t tokens, int64_t k, int64_t experts,
                     int64_t capacity, bool by_position, bool pad_to_capacity) {
  Routing r;
  r.rows.assign(static_cast<size_t>(tokens * k), -1);
  r.counts.assign(static_cast<size_t>(experts), 0);
  r.routed.assign(static_cast<size_t>(experts), 0);
  // Each expert's choices (flat index t * k + j), tokens ascending.
  std::vector<std::vector<int64_t>> chosen(static_cast<size_t>(experts));
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      const int32_t e = indices[t * k + j];
      MPT_CHECK(e >= 0 && e < experts, Status::kInternal, "router chose expert ", e, " of ", experts);
      chosen[static_cast<size_t>(e)].push_back(t * k + j);
    }
  int64_t next_row = 0;
  for (int64_t e = 0; e < experts; ++e) {
    std::vector<int64_t>& c = chosen[static_cast<size_t>(e)];
    r.routed[static_cast<size_t>(e)] = static_cast<int64_t>(c.size());
    if (capacity >= 0 && static_cast<int64_t>(c.size()) > capacity) {
      if (!by_position) {
        // Keep the highest probabilities; among equal ones the earlier token.
        std::stable_sort(c.begin(), c.end(), [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
        c.resize(static_cast<size_t>(capacity));
        std::sort(c.begin(), c.end());
      } else {
        c.resize(static_cast<size_t>(capacity));
      }
    }
    for (int64_t flat : c) r.rows[static_cast<size_t>(flat)] = static_cast<int32_t>(next_row++);
    const int64_t n = pad_to_capacity && capacity >= 0 ? capacity : static_cast<int64_t>(c.size());
    next_row += n - static_cast<int64_t>(c.size());  // padding rows stay zero
    r.counts[static_cast<size_t>(e)] = n;
  }
  r.total_rows = next_row;
  return r;
}

Tensor MoeContext::stacked(float* area, int first) const {
  const ParamInfo& p = reg.at(first);
  return Tensor::f32(area + (p.offset - base), {dims.num_experts, p.shape[0], p.shape[1]});
}

namespace {
// The first `rows` rows of a planned [max_rows, width] tensor.
Tensor first_rows(Tensor t, int64_t rows) { return t.rows(0, rows); }
}  // namespace

void moe_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out,
                 bool training) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t T = d.tokens(), E = d.num_experts, k = d.moe_topk;

  // Router: logits, top-k, the losses' pieces.
  linear_forward(ops, a.logits, x, c.P(p.router), Tensor());
  ops.router_topk(a.indices, a.probs, a.scores, a.logits, k, d.router_score, d.router_pre_softmax);
  a.z_loss = 0;
  if (d.z_loss_coeff > 0) {
    ops.router_lse(a.lse, a.logits);
    double sq = ops.dot(a.lse, a.lse);
    a.z_loss = d.z_loss_coeff * sq / static_cast<double>(T);
  }
  ops.synchronize();
  const int64_t capacity = d.capacity_factor > 0 ? d.expert_capacity(T) : -1;
  a.routing = route_tokens(a.indices.i(), a.probs.f(), T, k, E, capacity, d.drop_by_position, d.pad_to_capacity);
  std::copy(a.routing.rows.begin(), a.routing.rows.end(), a.rows.i());
  a.aux_loss = 0;
  if (training && d.aux_loss_coeff > 0) {
    // E * coeff / (k * T^2) * sum_e routed_e * sum_t scores[t, e].
    const float* sc = a.scores.f();
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      double col = 0;
      for (int64_t t = 0; t < T; ++t) col += sc[t * E + e];
      sum += col * static_cast<double>(a.routing.routed[static_cast<size_t>(e)]);
    }
    a.aux_loss = static_cast<double>(E) * d.aux_loss_coeff / (static_cast<double>(k) * T * T) * sum;
  }

  // Experts: permute, fc1, activation, fc2 as grouped GEMMs, then combine.
  const int64_t R = a.routing.total_rows;
  const int64_t* counts = a.routing.counts.data();
  const Tensor xp = first_rows(a.x_perm, R), h1 = first_rows(a.fc1_out, R), h2 = first_rows(a.act_out, R);
  const Tensor y = first_rows(s.y_perm, R);
  ops.moe_permute(xp, x, a.rows);
  ops.grouped_matmul(h1, xp, c.stacked(c.params, p.fc1), counts, E, backend::GroupedForm::kForward, 0.0f);
  ops.activation_fwd(h2, h1, d.activation, d.gated);
  ops.grouped_matmul(y, h2, c.stacked(c.params, p.fc2), counts, E, backend::GroupedForm::kForward, 0.0f);
  ops.moe_unpermute(out, y, a.rows, a.probs);

  if (d.shared_ffn > 0) {
    linear_forward(ops, a.shared_fc1_out, x, c.P(p.shared_fc1), Tensor());
    ops.activation_fwd(a.shared_act_out, a.shared_fc1_out, d.activation, d.gated);
    linear_forward(ops, s.shared_out, a.shared_act_out, c.P(p.shared_fc2), Tensor());
    ops.add_inplace(out, s.shared_out);
  }
}

void moe_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor dout, Tensor dx,
                  float aux_scale) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t T = d.tokens(), E = d.num_experts, k = d.moe_topk;
  const int64_t R = a.routing.total_rows;
  const int64_t* counts = a.routing.counts.data();

  // Shared expert: dx starts as its input gradient.
  if (d.shared_ffn > 0) {
    linear_backward(ops, s.dshared_act, c.G(p.shared_fc2), Tensor(), dout, a.shared_act_out, c.P(p.shared_fc2));
    ops.activation_bwd(s.dshared_fc1, s.dshared_act, a.shared_fc1_out, d.activation, d.gated);
    linear_backward(ops, s.shared_out, c.G(p.shared_fc1), Tensor(), s.dshared_fc1, x, c.P(p.shared_fc1));
  }

  // Recompute the experts' outputs the probabilities multiplied (for d(probs)).
  const Tensor xp = first_rows(a.x_perm, R), h1 = first_rows(a.fc1_out, R), h2 = first_rows(a.act_out, R);
  const Tensor y = first_rows(s.y_perm, R), dxp = first_rows(s.dx_perm, R);
  const Tensor dh2 = first_rows(s.dact, R), dh1 = first_rows(s.dfc1, R);
  ops.grouped_matmul(y, h2, c.stacked(c.params, p.fc2), counts, E, backend::GroupedForm::kForward, 0.0f);
  // dy overwrites y once d(probs) has read it: compute d(probs) into s.dprobs first.
  ops.moe_unpermute_bwd(dxp, s.dprobs, dout, y, a.rows, a.probs);  // dxp holds d(y) for now
  ops.grouped_matmul(c.stacked(c.grads, p.fc2), dxp, h2, counts, E, backend::GroupedForm::kWeightGrad, 1.0f);
  ops.grouped_matmul(dh2, dxp, c.stacked(c.params, p.fc2), counts, E, backend::GroupedForm::kInputGrad, 0.0f);
  ops.activation_bwd(dh1, dh2, h1, d.activation, d.gated);
  ops.grouped_matmul(c.stacked(c.grads, p.fc1), dh1, xp, counts, E, backend::GroupedForm::kWeightGrad, 1.0f);
  ops.grouped_matmul(dxp, dh1, c.stacked(c.params, p.fc1), counts, E, backend::GroupedForm::kInputGrad, 0.0f);
  ops.moe_permute_bwd(dx, dxp, a.rows);
  if (d.shared_ffn > 0) ops.add_inplace(dx, s.shared_out);

  // Router: through the probabilities, the load-balancing loss and the z-loss.
  Tensor dscores;
  if (d.aux_loss_coeff > 0) {
    ops.synchronize();
    float* ds = s.dscores.f();
    const double w = aux_scale * static_cast<double>(E) * d.aux_loss_coeff / (static_cast<double>(k) * T * T);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t e = 0; e < E; ++e)
        ds[t * E + e] = static_cast<float>(w * static_cast<double>(a.routing.routed[static_cast<size_t>(e)]));
    dscores = s.dscores;
  }
  ops.router_topk_bwd(s.dlogits, s.dprobs, dscores, a.logits, a.indices, k, d.router_score, d.router_pre_softmax);
  if (d.z_loss_coeff > 0)
    ops.router_z_loss_bwd(s.dlogits, a.logits, a.lse, aux_scale * d.z_loss_coeff / static_cast<float>(T));
  ops.matmul(c.G(p.router), s.dlogits, x, true, false, 1.0f, 1.0f);
  ops.matmul(dx, s.dlogits, c.P(p.router), false, false, 1.0f, 1.0f);
}

}  // namespace mpt::model
