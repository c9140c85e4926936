// Loading a checkpoint: opens SAVE_DIR/iter_XXXXXXX (or a save directory, following
// latest_checkpointed_iteration.txt), checks every shard file's size and header against
// index.json, then serves any region of any global tensor, assembled from the slices that
// cover it. A shard file's CRC-32C is verified the first time a read touches it, so a rank
// that needs a few slices of a large checkpoint reads only their files; verify() checks
// every file.
// Nothing read from disk is trusted: every inconsistency is an mpt::Error naming the
// file, the field and the value. kIoError means "no checkpoint here" (the directory does
// not exist, holds neither index.json nor the latest file) or an unreadable file;
// kCorruptData means a checkpoint is there but damaged, including files it names that are
// missing (a shard listed in index.json, the iteration the latest file names).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint_index.h"
#include "ckpt/file_io.h"
#include "core/tensor.h"

namespace mpt::ckpt {

// The iteration named by SAVE_DIR/latest_checkpointed_iteration.txt; nullopt when the
// directory or the file does not exist. A malformed file is kCorruptData.
std::optional<int64_t> latest_iteration(const std::string& save_dir);

class CheckpointReader {
 public:
  // `dir`: an iteration directory (holds index.json) or a save directory.
  explicit CheckpointReader(const std::string& dir);

  int64_t iteration() const { return index_.iteration; }
  const nlohmann::json& meta() const { return index_.meta; }
  const std::string& directory() const { return dir_; }

  bool has(const std::string& name) const { return index_.tensors.count(name) != 0; }
  std::vector<std::string> tensor_names() const;  // sorted
  // kInvalidArgument for a name the checkpoint lacks.
  DType dtype(const std::string& name) const;
  std::vector<int64_t> global_shape(const std::string& name) const;

  // Copies the region [offset, offset + shape) of tensor `name` into dst (contiguous,
  // row-major). No conversion: `dtype` must be the stored one. Throws kInvalidArgument for
  // a bad request (unknown name, other dtype, region outside the tensor) and kCorruptData
  // when the checkpoint's slices do not cover the region. Safe to call from several
  // threads at once.
  // Verifies every shard file's CRC-32C (kCorruptData naming the file on a mismatch).
  void verify() const;

  void read(const std::string& name, DType dtype, const std::vector<int64_t>& offset,
            const std::vector<int64_t>& shape, void* dst) const;

 private:
  const TensorRecord& record(const std::string& name) const;

  std::string dir_;
  CheckpointIndex index_;
  void verify_file(const std::string& file) const;

  std::map<std::string, MappedFile> files_;
  // Files whose CRC-32C has been checked: "" when it matched, else the error.
  mutable std::mutex verified_mu_;
  mutable std::map<std::string, std::string> verified_;
  // Start of each shard's bytes, parallel to index_.tensors[name].shards.
  std::map<std::string, std::vector<const uint8_t*>> shard_data_;
};

}  // namespace mpt::ckpt
