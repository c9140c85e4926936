#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace mpt::optim {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

LRSchedule LRSchedule::from_recipe(const config::Recipe& r) {
  LRSchedule s;
  s.max_lr = r.optimizer.lr.value_or(0.0);
  s.min_lr = r.derived.min_lr;
  s.warmup_init = r.scheduler.lr_warmup_init;
  s.warmup_iters = r.derived.lr_warmup_iters;
  s.decay_iters = r.derived.lr_decay_iters;
  s.decay_style = r.scheduler.lr_decay_style;
  s.start_wd = r.scheduler.start_weight_decay.value_or(r.optimizer.weight_decay);
  s.end_wd = r.scheduler.end_weight_decay.value_or(r.optimizer.weight_decay);
  s.wd_style = r.scheduler.weight_decay_incr_style;
  return s;
}

double LRSchedule::lr_at(int64_t step) const {
  if (warmup_iters > 0 && step <= warmup_iters)
    return warmup_init + (max_lr - warmup_init) * static_cast<double>(step) / static_cast<double>(warmup_iters);
  if (decay_style == "constant") return max_lr;
  if (step > decay_iters) return min_lr;
  const double ratio = static_cast<double>(step - warmup_iters) / static_cast<double>(std::max<int64_t>(1, decay_iters - warmup_iters));
  double coeff = 1.0;
  if (decay_style == "linear") coeff = 1.0 - ratio;
  else if (decay_style == "cosine") coeff = 0.5 * (std::cos(kPi * ratio) + 1.0);
  return min_lr + coeff * (max_lr - min_lr);
}

double LRSchedule::weight_decay_at(int64_t step) const {
  if (wd_style == "constant" || decay_iters <= 0) return end_wd;
  const double ratio = std::min(1.0, static_cast<double>(step) / static_cast<double>(decay_iters));
  double coeff = ratio;  // linear
  if (wd_style == "cosine") coeff = 0.5 * (std::cos(kPi * (1.0 - ratio)) + 1.0);
  return start_wd + coeff * (end_wd - start_wd);
}

}  // namespace mpt::optim
