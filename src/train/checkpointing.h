// Saving and restoring a model, its optimizer state and the training position through the
// sharded checkpoint format of src/ckpt. Every tensor is written under its global name
// with its global shape, so a later run at another layout can read the slices it needs.
#pragma once

#include <cstdint>
#include <string>

#include "config/recipe.h"
#include "model/param_registry.h"

namespace mpt::train {

struct CheckpointState {
  int64_t iteration = 0;
  int64_t consumed_samples = 0;
  int64_t consumed_valid_samples = 0;  // validation data read so far: each evaluation continues it
  int64_t optimizer_steps = 0;
};

// True when `dir` is an iteration directory or a save directory holding a complete one.
bool checkpoint_exists(const std::string& dir);

// Buffers laid out by `registry`, whose parameters are whole tensors (the whole model's
// registry, model::whole_model_registry): the parameters and the two Adam moments.
struct ModelBuffers {
  const model::ParamRegistry* registry = nullptr;
  float* params = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
};

std::string save_model_checkpoint(const std::string& save_dir, const config::Recipe& recipe, const ModelBuffers& b,
                                  const CheckpointState& state);

// Loads weights (and, unless checkpoint.load_optim is false or finetune is set, optimizer
// state). Every tensor must be present with the model's global shape; nothing is written
// into the buffers unless all are.
CheckpointState load_model_checkpoint(const std::string& dir, const config::Recipe& recipe, const ModelBuffers& b);

}  // namespace mpt::train
