#include "optim/adamw.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mpt::optim {

AdamW::AdamW(const model::ParamRegistry& reg, backend::Ops& ops, AdamWConfig cfg, std::vector<FlatRange> owned)
    : reg_(reg), ops_(ops), cfg_(cfg), owned_(std::move(owned)), state_(&ops) {
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
}

template <typename Fn>
void AdamW::for_each_piece(size_t k, Fn&& fn) const {
  const FlatRange& r = owned_[k];
  const auto& params = reg_.params();
  for (int i = 0; i < static_cast<int>(params.size()); ++i) {
    const model::ParamInfo& p = params[static_cast<size_t>(i)];
    const int64_t lo = std::max(r.begin, p.offset), hi = std::min(r.end, p.offset + p.numel);
    if (lo < hi) fn(i, lo, hi - lo, state_offset_[k] + (lo - r.begin));
  }
}

double AdamW::grad_sum_squares(const std::vector<float*>& grads) const {
  MPT_ASSERT(grads.size() == owned_.size());
  double sq = 0;
  for (size_t k = 0; k < owned_.size(); ++k)
    for_each_piece(k, [&](int i, int64_t first, int64_t count, int64_t) {
      if (reg_.at(i).counted_in_norm())
        sq += ops_.sum_squares(Tensor::f32(grads[k] + (first - owned_[k].begin), {count}));
    });
  return sq;
}

void AdamW::step(const std::vector<float*>& params, const std::vector<float*>& grads, double norm, double lr,
                 double weight_decay) {
  MPT_ASSERT(params.size() == owned_.size() && grads.size() == owned_.size());
  ++step_;
  float scale = 1.0f;
  if (cfg_.clip_grad > 0) {
    const double coeff = cfg_.clip_grad / (norm + 1e-6);
    if (coeff < 1.0) scale = static_cast<float>(coeff);
  }
  backend::AdamWArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(cfg_.beta1);
  a.beta2 = static_cast<float>(cfg_.beta2);
  a.eps = static_cast<float>(cfg_.eps);
  a.step = step_;
  a.grad_scale = scale;
  for (size_t k = 0; k < owned_.size(); ++k)
    for_each_piece(k, [&](int i, int64_t first, int64_t count, int64_t state) {
      a.weight_decay = reg_.at(i).weight_decay ? static_cast<float>(weight_decay) : 0.0f;
      const int64_t at = first - owned_[k].begin;
      ops_.adamw(Tensor::f32(params[k] + at, {count}), Tensor::f32(grads[k] + at, {count}),
                 Tensor::f32(exp_avg_ + state, {count}), Tensor::f32(exp_avg_sq_ + state, {count}), a);
    });
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
