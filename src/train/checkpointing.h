// Saving and restoring a model, its optimizer state and the training position through the
// sharded checkpoint format of src/ckpt. Every tensor is written under its global name
// with its global shape, so a later run at another layout can read the slices it needs.
#pragma once

#include <cstdint>
#include <string>

#include "config/recipe.h"
#include "model/gpt_model.h"
#include "optim/adamw.h"

namespace mpt::train {

struct CheckpointState {
  int64_t iteration = 0;
  int64_t consumed_samples = 0;
  int64_t consumed_valid_samples = 0;  // validation data read so far: each evaluation continues it
  int64_t optimizer_steps = 0;
};

// True when `dir` is an iteration directory or a save directory holding a complete one.
bool checkpoint_exists(const std::string& dir);

std::string save_model_checkpoint(const std::string& save_dir, const config::Recipe& recipe,
                                  const model::GPTModel& model, optim::AdamW& optimizer, const CheckpointState& state);

// Loads weights (and, unless checkpoint.load_optim is false or finetune is set, optimizer
// state). Every tensor must be present with the model's global shape.
CheckpointState load_model_checkpoint(const std::string& dir, const config::Recipe& recipe, model::GPTModel& model,
                                      optim::AdamW& optimizer);

}  // namespace mpt::train
