// Learning-rate and weight-decay schedules as Megatron's OptimizerParamScheduler computes
// them: linear warmup from lr_warmup_init to lr, then constant / linear / cosine decay to
// min_lr over lr_decay_iters. `step` counts optimizer steps already taken, so the first
// update of a warmup runs at warmup_init, exactly as in Megatron.
#pragma once

#include <cstdint>
#include <string>

#include "config/recipe.h"

namespace mpt::optim {

struct LRSchedule {
  double max_lr = 0;
  double min_lr = 0;
  double warmup_init = 0;
  int64_t warmup_iters = 0;
  int64_t decay_iters = 0;
  std::string decay_style = "linear";
  double start_wd = 0, end_wd = 0;
  std::string wd_style = "constant";

  static LRSchedule from_recipe(const config::Recipe& recipe);
  double lr_at(int64_t step) const;
  double weight_decay_at(int64_t step) const;
};

}  // namespace mpt::optim
