#include "model/moe_layer.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.h"
#include "model/linear.h"

namespace mpt::model {

MoeParams register_moe(ParamRegistry& reg, ParamRegistry& experts, const GPTDims& d, const std::string& pre,
                       float out_std) {
  MoeParams p;
  // The router is replicated over tensor-parallel ranks; each routes its own rows under
  // sequence parallelism, so its gradient is a partial sum there.
  const TensorSplit whole{-1, 1, d.tp_rank, d.tp};
  p.router = reg.add_split(pre + "router.weight", {d.num_experts, d.hidden}, whole, Init::kNormal, d.init_std, true);
  reg.set_sequence_parallel(p.router, d.sequence_parallel);
  // Experts' hidden units are cut over expert-tensor-parallel ranks like a dense MLP's.
  const TensorSplit column{0, d.gated ? 2 : 1, d.etp_rank, d.etp}, row{1, 1, d.etp_rank, d.etp};
  // Expert weights back to back: each is a whole number of alignment blocks when the hidden
  // size is (checked when the recipe is loaded), so expert e + 1 starts where e ends.
  const int64_t first = d.first_expert(), n = d.local_experts();
  for (int64_t e = first; e < first + n; ++e) {
    const int i = experts.add_split(str(pre, "experts.linear_fc1.weight", e), {d.moe_fc1_width(), d.hidden}, column,
                                    Init::kNormal, d.init_std, true);
    if (e == first) p.fc1 = i;
  }
  for (int64_t e = first; e < first + n; ++e) {
    const int i = experts.add_split(str(pre, "experts.linear_fc2.weight", e), {d.hidden, d.local_moe_ffn()}, row,
                                    Init::kNormal, out_std, true);
    if (e == first) p.fc2 = i;
  }
  if (d.shared_ffn > 0) {
    const TensorSplit tp_column{0, d.gated ? 2 : 1, d.tp_rank, d.tp}, tp_row{1, 1, d.tp_rank, d.tp};
    p.shared_fc1 = reg.add_split(pre + "shared_experts.linear_fc1.weight", {d.shared_fc1_width(), d.hidden}, tp_column,
                                 Init::kNormal, d.init_std, true);
    p.shared_fc2 = reg.add_split(pre + "shared_experts.linear_fc2.weight", {d.hidden, d.local_shared_ffn()}, tp_row,
                                 Init::kNormal, out_std, true);
  }
  for (int first_param : {p.fc1, p.fc2}) {
    const ParamInfo& a = experts.at(first_param);
    const ParamInfo& b = experts.at(first_param + static_cast<int>(n) - 1);
    MPT_CHECK(b.offset == a.offset + (n - 1) * a.numel, Status::kInvalidConfig, "the experts' weights of ", pre,
              " are not contiguous: hidden_size ", d.hidden, " and the expert ffn size must make each expert's weight "
              "a multiple of ", ParamRegistry::kAlign, " elements");
  }
  return p;
}

void route_tokens(const int32_t* indices, const float* probs, int64_t tokens, int64_t k, int64_t experts,
                  int64_t capacity, bool by_position, bool pad_to_capacity, Routing& r) {
  const size_t E = static_cast<size_t>(experts), n = static_cast<size_t>(tokens * k);
  r.rows.assign(n, -1);
  r.counts.assign(E, 0);
  r.routed.assign(E, 0);
  // Each expert's choices (flat index t * k + j), tokens ascending: a counting sort.
  for (size_t i = 0; i < n; ++i) {
    const int32_t e = indices[i];
    MPT_CHECK(e >= 0 && e < experts, Status::kInternal, "router chose expert ", e, " of ", experts);
    ++r.routed[static_cast<size_t>(e)];
  }
  r.start.assign(E + 1, 0);
  for (size_t e = 0; e < E; ++e) r.start[e + 1] = r.start[e] + r.routed[e];
  r.order.resize(n);
  r.counts.assign(r.start.begin(), r.start.end() - 1);  // next free place of each expert, for now
  for (size_t i = 0; i < n; ++i) r.order[static_cast<size_t>(r.counts[static_cast<size_t>(indices[i])]++)] = static_cast<int64_t>(i);
  int64_t next_row = 0;
  for (size_t e = 0; e < E; ++e) {
    const auto first = r.order.begin() + r.start[e];
    auto last = r.order.begin() + r.start[e + 1];
    if (capacity >= 0 && last - first > capacity) {
      if (!by_position) {
        // Keep the highest probabilities; among equal ones the earlier token.
        std::sort(first, last, [&](int64_t a, int64_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
        std::sort(first, first + capacity);
      }
      last = first + capacity;
    }
    for (auto it = first; it != last; ++it) r.rows[static_cast<size_t>(*it)] = static_cast<int32_t>(next_row++);
    const int64_t kept = last - first;
    const int64_t rows = pad_to_capacity && capacity >= 0 ? capacity : kept;
    next_row += rows - kept;  // padding rows stay zero
    r.counts[e] = rows;
  }
  r.total_rows = next_row;
}

bool moe_recomputed(const Recompute& rc, const MoeActs& a, const Tensor& t) {
  if (rc.moe) return true;
  if (rc.moe_act && &t == &a.act_out) return true;
  return rc.shared_experts && (&t == &a.shared_fc1_out || &t == &a.shared_act_out);
}

Tensor MoeContext::stacked_params(int first) const {
  const ParamInfo& p = ereg.at(first);
  const DType t = dims.compute;
  return Tensor(static_cast<char*>(eparams) + static_cast<size_t>(p.offset - ebase) * dtype_size(t), t,
                {dims.local_experts(), p.shape[0], p.shape[1]});
}

Tensor MoeContext::stacked_grads(int first) const {
  const ParamInfo& p = ereg.at(first);
  return Tensor::f32(egrads + (p.offset - ebase), {dims.local_experts(), p.shape[0], p.shape[1]});
}

namespace {
// The experts' part of forward: x_perm [rows, H] -> y [rows, H] through fc1, the activation
// and fc2 as grouped GEMMs over the local experts (counts rows each).
void experts_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, int64_t rows, const int64_t* counts,
                     Tensor y) {
  backend::Ops& ops = c.ops;
  const int64_t E = c.dims.local_experts();
  const Tensor xp = a.x_perm.rows(0, rows), h1 = a.fc1_out.rows(0, rows), h2 = a.act_out.rows(0, rows);
  ops.grouped_matmul(h1, xp, c.stacked_params(p.fc1), counts, E, backend::GroupedForm::kForward, 0.0f);
  ops.activation_fwd(h2, h1, c.dims.activation, c.dims.gated);
  ops.grouped_matmul(y, h2, c.stacked_params(p.fc2), counts, E, backend::GroupedForm::kForward, 0.0f);
}

// Its backward: dy [rows, H] -> dx [rows, H]; the experts' weight gradients accumulate.
void experts_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, int64_t rows,
                      const int64_t* counts, Tensor dy, Tensor dx) {
  backend::Ops& ops = c.ops;
  const int64_t E = c.dims.local_experts();
  const Tensor xp = a.x_perm.rows(0, rows), h1 = a.fc1_out.rows(0, rows), h2 = a.act_out.rows(0, rows);
  const Tensor dh2 = s.dact.rows(0, rows), dh1 = s.dfc1.rows(0, rows);
  ops.grouped_matmul(c.stacked_grads(p.fc2), dy, h2, counts, E, backend::GroupedForm::kWeightGrad, 1.0f);
  ops.grouped_matmul(dh2, dy, c.stacked_params(p.fc2), counts, E, backend::GroupedForm::kInputGrad, 0.0f);
  ops.activation_bwd(dh1, dh2, h1, c.dims.activation, c.dims.gated);
  ops.grouped_matmul(c.stacked_grads(p.fc1), dh1, xp, counts, E, backend::GroupedForm::kWeightGrad, 1.0f);
  ops.grouped_matmul(dx, dh1, c.stacked_params(p.fc1), counts, E, backend::GroupedForm::kInputGrad, 0.0f);
}

// Every member's rows per expert, and the rows each local expert receives from the group.
void exchange_counts(const MoeContext& c, const Routing& r, Exchange& x) {
  const GPTDims& d = c.dims;
  const int64_t g = c.ep.size(), E = d.num_experts, El = d.local_experts(), first = d.first_expert();
  x.all_counts.resize(static_cast<size_t>(g * E));
  c.ep.all_gather(r.counts.data(), x.all_counts.data(), E, DType::kI64);
  x.counts.assign(static_cast<size_t>(El), 0);
  for (int64_t q = 0; q < g; ++q)
    for (int64_t e = 0; e < El; ++e)
      x.counts[static_cast<size_t>(e)] += x.all_counts[static_cast<size_t>(q * E + first + e)];
  x.rows = 0;
  for (int64_t n : x.counts) x.rows += n;
}

// Where member q's rows of local expert e start in x_perm (expert-major, members in order):
// x.offsets[q * local experts + e].
void expert_offsets(const MoeContext& c, Exchange& x) {
  const int64_t g = c.ep.size(), E = c.dims.num_experts, El = c.dims.local_experts(), first = c.dims.first_expert();
  x.offsets.resize(static_cast<size_t>(g * El));
  int64_t at = 0;
  for (int64_t e = 0; e < El; ++e)
    for (int64_t q = 0; q < g; ++q) {
      x.offsets[static_cast<size_t>(q * El + e)] = at;
      at += x.all_counts[static_cast<size_t>(q * E + first + e)];
    }
}

// --- allgather dispatcher ----------------------------------------------------------------

void allgather_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t R = d.rows(), k = d.moe_topk, g = c.ep.size(), E = d.num_experts, El = d.local_experts();
  const int64_t first = d.first_expert();
  Exchange& ex = a.exchange;
  exchange_counts(c, a.routing, ex);
  c.ep.all_gather(x.data, s.gathered.data, R * d.hidden, x.dtype);
  c.ep.all_gather(a.rows.data, s.rows_g.data, R * k, DType::kI32);
  c.ep.all_gather(a.indices.data, s.indices_g.data, R * k, DType::kI32);
  c.ep.all_gather(a.probs.data, a.probs_g.data, R * k, DType::kF32);
  // Each gathered choice of a local expert goes to that expert's block, member q's part,
  // at its place among q's rows of the expert.
  expert_offsets(c, ex);
  const std::vector<int64_t>& off = ex.offsets;
  std::vector<int64_t>& start = ex.starts;
  start.resize(static_cast<size_t>(E));
  const size_t n_choices = static_cast<size_t>(g * R * k);
  ex.rows_g.resize(n_choices);
  ex.indices_g.resize(n_choices);
  ex.map.resize(n_choices);
  c.ops.to_host(ex.rows_g.data(), s.rows_g.data, n_choices * sizeof(int32_t));
  c.ops.to_host(ex.indices_g.data(), s.indices_g.data, n_choices * sizeof(int32_t));
  const int32_t* rows = ex.rows_g.data();
  const int32_t* idx = ex.indices_g.data();
  int32_t* map = ex.map.data();
  for (int64_t q = 0; q < g; ++q) {
    int64_t at = 0;
    for (int64_t e = 0; e < E; ++e) {
      start[static_cast<size_t>(e)] = at;
      at += ex.all_counts[static_cast<size_t>(q * E + e)];
    }
    for (int64_t i = q * R * k; i < (q + 1) * R * k; ++i) {
      const int64_t e = idx[i] - first;
      map[i] = rows[i] < 0 || e < 0 || e >= El
                   ? -1
                   : static_cast<int32_t>(off[static_cast<size_t>(q * El + e)] + rows[i] -
                                          start[static_cast<size_t>(idx[i])]);
    }
  }
  ops.to_device(a.map.data, map, n_choices * sizeof(int32_t));
  const int64_t n = ex.rows;
  const Tensor xp = a.x_perm.rows(0, n), y = s.y_perm.rows(0, n);
  ops.moe_permute(xp, s.gathered, a.map);
  experts_forward(c, p, a, n, ex.counts.data(), y);
  ops.moe_unpermute(s.combined, y, a.map, a.probs_g);
  ops.synchronize();
  c.ep.reduce_scatter(s.combined.data, out.data, R * d.hidden, out.dtype);
}

void allgather_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor dout, Tensor dx) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t R = d.rows(), k = d.moe_topk, n = a.exchange.rows;
  const int64_t* counts = a.exchange.counts.data();
  ops.synchronize();
  c.ep.all_gather(dout.data, s.gathered.data, R * d.hidden, dout.dtype);
  // Recompute the local experts' outputs for d(probs), then d(y) in their place.
  const Tensor y = s.y_perm.rows(0, n), dy = s.dx_perm.rows(0, n);
  ops.grouped_matmul(y, a.act_out.rows(0, n), c.stacked_params(p.fc2), counts, d.local_experts(),
                     backend::GroupedForm::kForward, 0.0f);
  ops.moe_unpermute_bwd(dy, s.dprobs_g, s.gathered, y, a.map, a.probs_g);
  ops.synchronize();
  c.ep.reduce_scatter(s.dprobs_g.data, s.dprobs.data, R * k, DType::kF32);
  experts_backward(c, p, a, s, n, counts, dy, y);  // y's rows now hold d(x_perm)
  ops.moe_permute_bwd(s.combined, y, a.map);
  ops.synchronize();
  c.ep.reduce_scatter(s.combined.data, dx.data, R * d.hidden, dx.dtype);
}

// --- alltoall dispatcher -----------------------------------------------------------------

// Plans the exchange: this rank's permuted rows for expert-parallel rank r's experts are
// block r; member p gets block peer_ep(p). Received rows come member by member, each
// member's rows expert by expert; map sends each to its place in x_perm (expert-major).
void alltoall_plan(const MoeContext& c, MoeActs& a) {
  const GPTDims& d = c.dims;
  const int64_t g = c.ep.size(), E = d.num_experts, El = d.local_experts(), H = d.hidden, first = d.first_expert();
  Exchange& ex = a.exchange;
  exchange_counts(c, a.routing, ex);
  const std::vector<int64_t>& mine = a.routing.counts;
  ex.block_start.assign(static_cast<size_t>(c.ep.ep()), 0);
  ex.block_rows.assign(static_cast<size_t>(c.ep.ep()), 0);
  int64_t at = 0;
  for (int64_t r = 0; r < c.ep.ep(); ++r) {
    ex.block_start[static_cast<size_t>(r)] = at;
    for (int64_t e = r * El; e < (r + 1) * El; ++e) ex.block_rows[static_cast<size_t>(r)] += mine[static_cast<size_t>(e)];
    at += ex.block_rows[static_cast<size_t>(r)];
  }
  ex.send.resize(static_cast<size_t>(g));
  ex.recv.resize(static_cast<size_t>(g));
  expert_offsets(c, ex);
  const std::vector<int64_t>& off = ex.offsets;
  ex.map.resize(static_cast<size_t>(ex.rows));
  int32_t* map = ex.map.data();
  ex.received = 0;
  for (int64_t q = 0; q < g; ++q) {
    ex.send[static_cast<size_t>(q)] = ex.block_rows[static_cast<size_t>(c.ep.peer_ep(q))] * H;
    int64_t from_q = 0;
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = ex.all_counts[static_cast<size_t>(q * E + first + e)];
      for (int64_t i = 0; i < n; ++i) map[ex.received + from_q + i] = static_cast<int32_t>(off[static_cast<size_t>(q * El + e)] + i);
      from_q += n;
    }
    ex.recv[static_cast<size_t>(q)] = from_q * H;
    ex.received += from_q;
  }
  c.ops.to_device(a.map.data, map, static_cast<size_t>(ex.received) * sizeof(int32_t));
}

// Sends this rank's permuted rows `local` to the members holding their experts; rows land in
// s.received.
void alltoall_dispatch(const MoeContext& c, const MoeActs& a, MoeScratch& s, Tensor local) {
  const Exchange& ex = a.exchange;
  const void* send = local.data;
  if (c.ep.etp() > 1) {  // every ETP rank of an expert-parallel rank gets its block
    int64_t at = 0;
    for (int64_t q = 0; q < c.ep.size(); ++q) {
      const size_t r = static_cast<size_t>(c.ep.peer_ep(q));
      const int64_t n = ex.block_rows[r];
      c.ops.device_copy(s.stage.rows(at, n).data, local.rows(ex.block_start[r], n).data,
                        local.rows(0, n).bytes());
      at += n;
    }
    send = s.stage.data;
  }
  c.ep.all_to_all(send, ex.send.data(), s.received.data, ex.recv.data(), local.dtype);
}

// The reverse: s.received holds each received row's result; they travel back and, summed
// over the ETP ranks that computed parts of them, land in `local`.
void alltoall_combine(const MoeContext& c, const MoeActs& a, MoeScratch& s, Tensor local) {
  const Exchange& ex = a.exchange;
  if (c.ep.etp() == 1) {
    c.ep.all_to_all(s.received.data, ex.recv.data(), local.data, ex.send.data(), local.dtype);
    return;
  }
  c.ep.all_to_all(s.received.data, ex.recv.data(), s.stage.data, ex.send.data(), local.dtype);
  // Members come ETP-fastest: the first ETP rank of each expert-parallel rank sets the sum.
  int64_t at = 0;
  for (int64_t q = 0; q < c.ep.size(); ++q) {
    const size_t r = static_cast<size_t>(c.ep.peer_ep(q));
    const int64_t n = ex.block_rows[r];
    const Tensor dst = local.rows(ex.block_start[r], n), src = s.stage.rows(at, n);
    if (q % c.ep.etp() == 0) c.ops.copy(dst, src);
    else c.ops.add_inplace(dst, src);
    at += n;
  }
}

void alltoall_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out) {
  backend::Ops& ops = c.ops;
  alltoall_plan(c, a);
  const Exchange& ex = a.exchange;
  const Tensor local = s.local.rows(0, a.routing.total_rows);
  ops.moe_permute(local, x, a.rows);
  ops.synchronize();
  alltoall_dispatch(c, a, s, local);
  const int64_t n = ex.rows;
  const Tensor received = s.received.rows(0, ex.received), map = a.map.rows(0, ex.received);
  const Tensor xp = a.x_perm.rows(0, n), y = s.y_perm.rows(0, n);
  ops.moe_permute(xp, received, map);
  experts_forward(c, p, a, n, ex.counts.data(), y);
  ops.moe_permute_bwd(received, y, map);  // back into arrival order
  ops.synchronize();
  const Tensor y_local = a.y_local.rows(0, a.routing.total_rows);
  alltoall_combine(c, a, s, y_local);
  ops.moe_unpermute(out, y_local, a.rows, a.probs);
}

void alltoall_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor dout, Tensor dx) {
  backend::Ops& ops = c.ops;
  const Exchange& ex = a.exchange;
  const Tensor local = s.local.rows(0, a.routing.total_rows);
  ops.moe_unpermute_bwd(local, s.dprobs, dout, a.y_local.rows(0, a.routing.total_rows), a.rows, a.probs);
  ops.synchronize();
  alltoall_dispatch(c, a, s, local);
  const int64_t n = ex.rows;
  const Tensor received = s.received.rows(0, ex.received), map = a.map.rows(0, ex.received);
  const Tensor dy = s.y_perm.rows(0, n), dxp = s.dx_perm.rows(0, n);
  ops.moe_permute(dy, received, map);
  experts_backward(c, p, a, s, n, ex.counts.data(), dy, dxp);
  ops.moe_permute_bwd(received, dxp, map);
  ops.synchronize();
  alltoall_combine(c, a, s, local);
  ops.moe_permute_bwd(dx, local, a.rows);
}

// --- one rank ----------------------------------------------------------------------------

void local_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out) {
  const int64_t n = a.routing.total_rows;
  const Tensor y = s.y_perm.rows(0, n);
  c.ops.moe_permute(a.x_perm.rows(0, n), x, a.rows);
  experts_forward(c, p, a, n, a.routing.counts.data(), y);
  c.ops.moe_unpermute(out, y, a.rows, a.probs);
}

void local_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor dout, Tensor dx) {
  backend::Ops& ops = c.ops;
  const int64_t n = a.routing.total_rows;
  const int64_t* counts = a.routing.counts.data();
  // Recompute the experts' outputs the probabilities multiplied (for d(probs)); d(y) then
  // overwrites them once d(probs) has read them.
  const Tensor y = s.y_perm.rows(0, n), dy = s.dx_perm.rows(0, n);
  ops.grouped_matmul(y, a.act_out.rows(0, n), c.stacked_params(p.fc2), counts, c.dims.local_experts(),
                     backend::GroupedForm::kForward, 0.0f);
  ops.moe_unpermute_bwd(dy, s.dprobs, dout, y, a.rows, a.probs);
  experts_backward(c, p, a, s, n, counts, dy, y);  // y's rows now hold d(x_perm)
  ops.moe_permute_bwd(dx, y, a.rows);
}
}  // namespace

void moe_forward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor out,
                 bool training) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t R = d.rows(), E = d.num_experts, k = d.moe_topk;

  // Router: logits, top-k, the losses' pieces, over this rank's rows.
  linear_forward(ops, a.logits, x, c.P(p.router), Tensor());
  ops.router_topk(a.indices, a.probs, a.scores, a.logits, k, d.router_score, d.router_pre_softmax);
  double lse_sq = 0;
  if (d.z_loss_coeff > 0) {
    ops.router_lse(a.lse, a.logits);
    lse_sq = ops.dot(a.lse, a.lse);
  }
  ops.synchronize();
  const int64_t capacity = d.capacity_factor > 0 ? d.expert_capacity(R) : -1;
  a.host_indices.resize(static_cast<size_t>(R * k));
  a.host_probs.resize(static_cast<size_t>(R * k));
  ops.to_host(a.host_indices.data(), a.indices.data, a.host_indices.size() * sizeof(int32_t));
  ops.to_host(a.host_probs.data(), a.probs.data, a.host_probs.size() * sizeof(float));
  route_tokens(a.host_indices.data(), a.host_probs.data(), R, k, E, capacity, d.drop_by_position, d.pad_to_capacity,
               a.routing);
  ops.to_device(a.rows.data, a.routing.rows.data(), a.routing.rows.size() * sizeof(int32_t));
  // The losses are the micro-batch's: counts over the ranks holding parts of it, each rank's
  // share from its own rows (the shares add up to the whole).
  a.routed_total = a.routing.routed;
  c.ep.sum_over_tpcp(a.routed_total.data(), E);
  a.tokens_total = R * c.ep.tpcp_size();
  const double Tt = static_cast<double>(a.tokens_total);
  a.z_loss = d.z_loss_coeff * lse_sq / Tt;
  a.aux_loss = 0;
  if (training && d.aux_loss_coeff > 0) {
    // E * coeff / (k * T^2) * sum_e routed_e * sum_t scores[t, e].
    a.host_scores.resize(static_cast<size_t>(R * E));
    ops.to_host(a.host_scores.data(), a.scores.data, a.host_scores.size() * sizeof(float));
    const float* sc = a.host_scores.data();
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
      double col = 0;
      for (int64_t t = 0; t < R; ++t) col += sc[t * E + e];
      sum += col * static_cast<double>(a.routed_total[static_cast<size_t>(e)]);
    }
    a.aux_loss = static_cast<double>(E) * d.aux_loss_coeff / (static_cast<double>(k) * Tt * Tt) * sum;
  }

  if (c.ep.size() == 1) local_forward(c, p, a, s, x, out);
  else if (c.ep.dispatcher() == parallel::TokenDispatcher::kAllGather) allgather_forward(c, p, a, s, x, out);
  else alltoall_forward(c, p, a, s, x, out);

  if (d.shared_ffn > 0) {
    column_parallel_forward(ops, c.tp, a.shared_fc1_out, x, c.P(p.shared_fc1), Tensor(), c.full);
    ops.activation_fwd(a.shared_act_out, a.shared_fc1_out, d.activation, d.gated);
    row_parallel_forward(ops, c.tp, s.shared_out, a.shared_act_out, c.P(p.shared_fc2), Tensor(), c.partial);
    ops.add_inplace(out, s.shared_out);
  }
}

void moe_backward(const MoeContext& c, const MoeParams& p, MoeActs& a, MoeScratch& s, Tensor x, Tensor dout, Tensor dx,
                  float aux_scale) {
  backend::Ops& ops = c.ops;
  const GPTDims& d = c.dims;
  const int64_t R = d.rows(), E = d.num_experts, k = d.moe_topk;

  // Recompute regenerates what forward dropped ("moe" has rerun all of forward already).
  const bool redo_act = d.recompute.moe_act && !d.recompute.moe;
  const bool redo_shared = d.recompute.shared_experts && !d.recompute.moe && d.shared_ffn > 0;
  if (redo_act) {
    const int64_t n = c.ep.size() == 1 ? a.routing.total_rows : a.exchange.rows;
    ops.activation_fwd(a.act_out.rows(0, n), a.fc1_out.rows(0, n), d.activation, d.gated);
  }
  if (redo_shared) {
    column_parallel_forward(ops, c.tp, a.shared_fc1_out, x, c.P(p.shared_fc1), Tensor(), c.full);
    ops.activation_fwd(a.shared_act_out, a.shared_fc1_out, d.activation, d.gated);
  }

  // Shared expert: its input gradient waits in s.shared_out.
  if (d.shared_ffn > 0) {
    row_parallel_backward(ops, c.tp, s.dshared_act, c.G(p.shared_fc2), Tensor(), dout, a.shared_act_out,
                          c.P(p.shared_fc2), c.full);
    ops.activation_bwd(s.dshared_fc1, s.dshared_act, a.shared_fc1_out, d.activation, d.gated);
    column_parallel_backward(ops, c.tp, s.shared_out, c.G(p.shared_fc1), Tensor(), s.dshared_fc1, x,
                             c.P(p.shared_fc1), c.full, c.partial);
  }

  if (c.ep.size() == 1) local_backward(c, p, a, s, dout, dx);
  else if (c.ep.dispatcher() == parallel::TokenDispatcher::kAllGather) allgather_backward(c, p, a, s, dout, dx);
  else alltoall_backward(c, p, a, s, dout, dx);
  if (d.shared_ffn > 0) ops.add_inplace(dx, s.shared_out);

  // Router: through the probabilities, the load-balancing loss and the z-loss.
  const double Tt = static_cast<double>(a.tokens_total);
  Tensor dscores;
  if (d.aux_loss_coeff > 0) {
    s.host_dscores.resize(static_cast<size_t>(R * E));
    float* ds = s.host_dscores.data();
    const double w = aux_scale * static_cast<double>(E) * d.aux_loss_coeff / (static_cast<double>(k) * Tt * Tt);
    for (int64_t t = 0; t < R; ++t)
      for (int64_t e = 0; e < E; ++e)
        ds[t * E + e] = static_cast<float>(w * static_cast<double>(a.routed_total[static_cast<size_t>(e)]));
    ops.to_device(s.dscores.data, ds, s.host_dscores.size() * sizeof(float));
    dscores = s.dscores;
  }
  ops.router_topk_bwd(s.dlogits, s.dprobs, dscores, a.logits, a.indices, k, d.router_score, d.router_pre_softmax);
  if (d.z_loss_coeff > 0)
    ops.router_z_loss_bwd(s.dlogits, a.logits, a.lse, static_cast<float>(aux_scale * d.z_loss_coeff / Tt));
  ops.matmul(c.G(p.router), s.dlogits, x, true, false, 1.0f, 1.0f);
  ops.matmul(dx, s.dlogits, c.P(p.router), false, false, 1.0f, 1.0f);
}

}  // namespace mpt::model
