// Saving and restoring a model, its optimizer state and the training position through the
// sharded checkpoint format of src/ckpt. Every tensor is written under its global name
// with its global shape, so a later run at another layout can read the slices it needs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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

// --- sharded saving and resharding loading ---------------------------------------------
// What one rank holds of some parameters: flat buffers laid out by `registry`, whose
// parameters are this rank's slices of the global tensors (ParamInfo::tp), and the two Adam
// moments in the same layout.
struct LocalBuffers {
  const model::ParamRegistry* registry = nullptr;
  float* params = nullptr;
  float* exp_avg = nullptr;
  float* exp_avg_sq = nullptr;
  std::vector<bool> writes;  // saving: per parameter, whether this rank writes it
};

// A box of the global tensor that a parameter's slice covers (a stride-2 split covers two)
// and the element where its data starts in the slice.
struct SliceBox {
  std::vector<int64_t> offset, shape;
  int64_t local_first = 0;
};
std::vector<SliceBox> slice_boxes(const model::ParamInfo& p);

// Saving by many ranks into one staging directory (ckpt::begin_checkpoint): each rank
// writes the parameters it is marked to write into its own shard file and returns that
// file's part of the index; one rank then commits every part.
nlohmann::json write_rank_shard(const std::string& staging_dir, int64_t rank, const config::Recipe& recipe,
                                const std::vector<LocalBuffers>& parts);
std::string commit_model_checkpoint(const std::string& save_dir, const config::Recipe& recipe,
                                    const std::string& staging_dir, const std::vector<nlohmann::json>& shard_parts,
                                    const CheckpointState& state);

// Loads this rank's slices of every parameter of `parts` (and, unless checkpoint.load_optim
// is false or finetune is set, of the Adam moments) from a checkpoint saved at any layout,
// reading only the regions it needs. Every tensor is checked first (present, global shape
// as this model's), so a bad checkpoint leaves the buffers as they were. Vocabulary-sized
// tensors saved at another tensor-parallel size (other padding) load their real rows.
CheckpointState load_local_checkpoint(const std::string& dir, const config::Recipe& recipe,
                                      const std::vector<LocalBuffers>& parts);

}  // namespace mpt::train
