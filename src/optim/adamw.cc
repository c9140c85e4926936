#include "optim/adamw.h"

#include <cmath>

namespace mpt::optim {

AdamW::AdamW(const model::ParamRegistry& reg, backend::Ops& ops, AdamWConfig cfg) : reg_(reg), ops_(ops), cfg_(cfg) {
  size_t bytes = static_cast<size_t>(reg.total_numel()) * sizeof(float);
  size_t m = state_.reserve(bytes), v = state_.reserve(bytes);
  state_.allocate();
  exp_avg_ = state_.at<float>(m);
  exp_avg_sq_ = state_.at<float>(v);
}

double AdamW::grad_norm(float* grads) const {
  double sq = 0;
  for (int i = 0; i < static_cast<int>(reg_.params().size()); ++i) sq += ops_.sum_squares(reg_.view(grads, i));
  return std::sqrt(sq);
}

void AdamW::step(float* params, float* grads, double norm, double lr, double weight_decay) {
  ++step_;
  float scale = 1.0f;
  if (cfg_.clip_grad > 0) {
    double coeff = cfg_.clip_grad / (norm + 1e-6);
    if (coeff < 1.0) scale = static_cast<float>(coeff);
  }
  backend::AdamWArgs a;
  a.lr = static_cast<float>(lr);
  a.beta1 = static_cast<float>(cfg_.beta1);
  a.beta2 = static_cast<float>(cfg_.beta2);
  a.eps = static_cast<float>(cfg_.eps);
  a.step = step_;
  a.grad_scale = scale;
  for (int i = 0; i < static_cast<int>(reg_.params().size()); ++i) {
    a.weight_decay = reg_.at(i).weight_decay ? static_cast<float>(weight_decay) : 0.0f;
    ops_.adamw(reg_.view(params, i), reg_.view(grads, i), reg_.view(exp_avg_, i), reg_.view(exp_avg_sq_, i), a);
  }
}

}  // namespace mpt::optim
