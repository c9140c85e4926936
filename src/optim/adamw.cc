#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mpt::optim {

AdamW::AdamW(const model::ParamRegistry& reg, backend::Ops& ops, AdamWConfig cfg, std::vector<FlatRange> owned)
    : reg_(reg), ops_(ops), cfg_(cfg), owned_(std::move(owned)), state_(&ops), scalars_(&ops) {
  if (owned_.empty()) owned_.push_back(FlatRange{0, reg.total_numel()});
  for (const FlatRange& r : owned_) {
    MPT_ASSERT(0 <= r.begin && r.begin <= r.end && r.end <= reg.total_numel());
    state_offset_.push_back(owned_numel_);
    owned_numel_ += r.numel();
  }
  const size_t bytes = static_cast<size_t>(owned_numel_) * sizeof(float);
  const size_t m = state_.reserve(bytes), v = state_.reserve(bytes);
  state_.allocate();
  exp_avg_ = state_.at<float>(m);
  exp_avg_sq_ = state_.at<float>(v);
  const size_t sq = scalars_.reserve(sizeof(double)), f = scalars_.reserve(sizeof(float));
  scalars_.allocate();
  sumsq_ = Tensor(scalars_.at<double>(sq), DType::kF64, {1});
  clip_factor_ = Tensor::f32(scalars_.at<float>(f), {1});
  // The pieces: each parameter's part inside each owned range, in layout order.
  for (size_t k = 0; k < owned_.size(); ++k) {
    const FlatRange& r = owned_[k];
    for (const model::ParamInfo& p : reg.params()) {
      const int64_t lo = std::max(r.begin, p.offset), hi = std::min(r.end, p.offset + p.numel);
      if (lo >= hi) continue;
      Piece piece;
      piece.range = k;
      piece.at = lo - r.begin;
      piece.count = hi - lo;
      piece.state = state_offset_[k] + (lo - r.begin);
      piece.weight_decay = p.weight_decay;
      piece.counted_in_norm = p.counted_in_norm();
      pieces_.push_back(piece);
    }
  }
}

Tensor AdamW::grad_sum_squares_on_device(const std::vector<float*>& grads) const {
  MPT_ASSERT(grads.size() == owned_.size());
  // An f64 zero: its 8 bytes zeroed as two f32 elements (all-zero bits are +0.0).
  ops_.fill(Tensor::f32(static_cast<float*>(sumsq_.data), {2}), 0.0f);
  for (const Piece& p : pieces_)
    if (p.counted_in_norm) ops_.sum_squares_acc(sumsq_, Tensor::f32(grads[p.range] + p.at, {p.count}));
  return sumsq_;
}

double AdamW::grad_sum_squares(const std::vector<float*>& grads) const {
  const Tensor acc = grad_sum_squares_on_device(grads);
  double sq = 0;
  ops_.to_host(&sq, acc.data, sizeof sq);
  return sq;
}

backend::AdamWArgs AdamW::args(double lr) const {
  backend::AdamWArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(cfg_.beta1);
  a.beta2 = static_cast<float>(cfg_.beta2);
  a.eps = static_cast<float>(cfg_.eps);
  a.step = step_;
  return a;
}

const std::vector<backend::AdamWTensor>& AdamW::table(const std::vector<float*>& params,
                                                       const std::vector<float*>& grads, double weight_decay) {
  if (params != table_params_ || grads != table_grads_ || table_.size() != pieces_.size()) {
    table_.clear();
    for (const Piece& p : pieces_) {
      backend::AdamWTensor t;
      t.param = Tensor::f32(params[p.range] + p.at, {p.count});
      t.grad = Tensor::f32(grads[p.range] + p.at, {p.count});
      t.exp_avg = Tensor::f32(exp_avg_ + p.state, {p.count});
      t.exp_avg_sq = Tensor::f32(exp_avg_sq_ + p.state, {p.count});
      if (p.copy) t.compute_copy = Tensor(p.copy, DType::kBF16, {p.count});
      table_.push_back(t);
    }
    table_params_ = params;
    table_grads_ = grads;
  }
  const float wd = static_cast<float>(weight_decay);
  for (size_t i = 0; i < pieces_.size(); ++i) table_[i].weight_decay = pieces_[i].weight_decay ? wd : 0.0f;
  return table_;
}

void AdamW::update(const std::vector<float*>& params, const std::vector<float*>& grads, const backend::AdamWArgs& a,
                   double weight_decay) {
  const std::vector<backend::AdamWTensor>& t = table(params, grads, weight_decay);
  ops_.adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  if (copies_) copies_->copies_written();
}

void AdamW::step(const std::vector<float*>& params, const std::vector<float*>& grads, double norm, double lr,
                 double weight_decay) {
  MPT_ASSERT(params.size() == owned_.size() && grads.size() == owned_.size());
  ++step_;
  backend::AdamWArgs a = args(lr);
  if (cfg_.clip_grad > 0) {
    const double coeff = cfg_.clip_grad / (norm + 1e-6);
    if (coeff < 1.0) a.grad_scale = static_cast<float>(coeff);
  }
  update(params, grads, a, weight_decay);
}

void AdamW::step(const std::vector<float*>& params, const std::vector<float*>& grads, Tensor sumsq, double lr,
                 double weight_decay) {
  MPT_ASSERT(params.size() == owned_.size() && grads.size() == owned_.size());
  ops_.grad_clip_factor(clip_factor_, sumsq, cfg_.clip_grad);
  ++step_;
  backend::AdamWArgs a = args(lr);
  a.grad_scale_device = clip_factor_;
  update(params, grads, a, weight_decay);
}

bool AdamW::write_compute_copies(model::ComputeParams& copies) {
  const bool whole = owned_.size() == 1 && owned_[0].begin == 0 && owned_[0].end == reg_.total_numel();
  const std::vector<model::ParamUnit>& units = copies.units();
  if (!whole || units.empty() || copies.resident_copy(0) == nullptr) return false;
  for (Piece& p : pieces_) {
    // The unit holding the piece (units are in layout order and do not overlap).
    const auto u = std::upper_bound(units.begin(), units.end(), p.at,
                                    [](int64_t at, const model::ParamUnit& unit) { return at < unit.end; });
    MPT_CHECK(u != units.end() && u->begin <= p.at && p.at + p.count <= u->end, Status::kInternal,
              "optimizer: the parameter piece at [", p.at, ", ", p.at + p.count, ") lies in no unit of the model");
    p.copy = static_cast<uint16_t*>(copies.resident_copy(static_cast<int>(u - units.begin()))) + (p.at - u->begin);
  }
  table_.clear();  // rebuilt with the copies
  copies_ = &copies;
  return true;
}

void AdamW::params_replaced() {
  if (copies_) copies_->forget_written();
}

double AdamW::grad_sum_squares(float* grads) const {
  MPT_ASSERT(owned_.size() == 1 && owned_[0].begin == 0 && owned_[0].end == reg_.total_numel());
  whole_grads_[0] = grads;
  return grad_sum_squares(whole_grads_);
}

double AdamW::grad_norm(float* grads) const { return std::sqrt(grad_sum_squares(grads)); }

void AdamW::step(float* params, float* grads, double norm, double lr, double weight_decay) {
  MPT_ASSERT(owned_.size() == 1 && owned_[0].begin == 0 && owned_[0].end == reg_.total_numel());
  whole_params_[0] = params;
  whole_grads_[0] = grads;
  step(whole_params_, whole_grads_, norm, lr, weight_decay);
}

}  // namespace mpt::optim
