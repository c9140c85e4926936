// Saving a checkpoint: SAVE_DIR/iter_XXXXXXX/ holding safetensors shard files and
// index.json, published atomically. The steps are exposed separately so that several
// ranks can each write their own shard file into one staging directory and a single rank
// commits; save_checkpoint() runs them all for one process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace mpt::ckpt {

// One contiguous, row-major slice [offset, offset + shape) of a global tensor.
struct TensorSlice {
  std::string name;  // global name, e.g. "decoder.layers.self_attention.linear_qkv.weight"
  DType dtype = DType::kF32;
  std::vector<int64_t> global_shape;
  std::vector<int64_t> offset;  // per-axis start inside the global tensor
  std::vector<int64_t> shape;   // per-axis extent of this slice
  const void* data = nullptr;   // volume(shape) * dtype_size(dtype) bytes
  int64_t file = 0;             // written to shard_file_name(file); a rank uses its rank
};

// Writes SAVE_DIR/iter_XXXXXXX atomically and points latest_checkpointed_iteration.txt at
// it (always at this iteration, as Megatron does). The slices of each tensor must tile its
// global shape exactly. An existing iter_XXXXXXX is replaced only once the new one is
// complete; on any failure the staging directory is removed and what was on disk before
// stays intact. Returns the final directory. Errors: kInvalidArgument (slices),
// kIoError (file system, naming the path and strerror).
std::string save_checkpoint(const std::string& save_dir, int64_t iteration,
                            const std::vector<TensorSlice>& tensors, const nlohmann::json& meta);

// --- the steps of save_checkpoint ------------------------------------------------------
// Creates SAVE_DIR/.tmp_iter_XXXXXXX_<host>_<pid>/ and returns it. Removes staging
// directories that this host's dead processes left behind (and puts back a checkpoint a
// crash left set aside during a replace). One save per save directory at a time.
std::string begin_checkpoint(const std::string& save_dir, int64_t iteration);

// Writes `slices` into staging_dir/file_name (fsync'ed) and returns this file's part of
// the index: {"tensors": {...}, "files": {...}} in index.json's shape.
nlohmann::json write_shard(const std::string& staging_dir, const std::string& file_name,
                           const std::vector<TensorSlice>& slices);

// Merges the parts from every write_shard, checks that each tensor is tiled exactly,
// writes index.json, publishes the directory as iter_XXXXXXX and updates the latest file.
std::string commit_checkpoint(const std::string& save_dir, int64_t iteration,
                              const std::string& staging_dir,
                              const std::vector<nlohmann::json>& shard_parts,
                              const nlohmann::json& meta);

// Removes a staging directory after a failed save; never throws.
void discard_checkpoint(const std::string& staging_dir) noexcept;

}  // namespace mpt::ckpt
