// index.json: the map from each global tensor to the shard files holding its slices, plus
// each file's size and CRC-32C, plus the caller's metadata. It is what lets a checkpoint
// saved at one parallel layout be read at another: a reader asks for a region of the
// global tensor and assembles it from whichever slices cover it.
//
// {"format": "mptrain-checkpoint", "version": 1, "iteration": N,
//  "tensors": {NAME: {"dtype": "F32", "global_shape": [...],
//                     "shards": [{"file": F, "key": KEY, "offset": [...], "shape": [...]}]}},
//  "files": {F: {"bytes": n, "crc32c": "8 hex digits"}},
//  "meta": {...}}
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace mpt::ckpt {

inline constexpr char kIndexFormat[] = "mptrain-checkpoint";
inline constexpr int kIndexVersion = 1;
inline constexpr char kIndexFile[] = "index.json";
inline constexpr char kLatestFile[] = "latest_checkpointed_iteration.txt";

struct ShardRef {
  std::string file;  // a shard file in the same directory
  std::string key;   // the tensor's key inside that file
  std::vector<int64_t> offset;
  std::vector<int64_t> shape;
};

struct TensorRecord {
  DType dtype = DType::kF32;
  std::vector<int64_t> global_shape;
  std::vector<ShardRef> shards;
};

struct FileRecord {
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
};

struct CheckpointIndex {
  int64_t iteration = 0;
  std::map<std::string, TensorRecord> tensors;
  std::map<std::string, FileRecord> files;
  nlohmann::json meta = nlohmann::json::object();

  nlohmann::json to_json() const;
  // index.json's text: one line per file and per tensor, so it reads well in a terminal
  // and diffs well. Throws nlohmann::json::type_error for strings that are not UTF-8.
  std::string to_text() const;
  // Validates everything that can be checked without opening the shard files; `where`
  // names index.json in errors (kCorruptData; kNotSupported for a newer version).
  static CheckpointIndex from_json(const nlohmann::json& j, const std::string& where);
};

// "iter_0000100": Megatron's directory name, 7 digits or more.
std::string iteration_dir_name(int64_t iteration);
std::optional<int64_t> parse_iteration_dir_name(std::string_view name);
// "shard_00003.safetensors".
std::string shard_file_name(int64_t index);
// A plain file name: no path separators, not "." or "..", nothing hidden; keeps a crafted
// index from reaching outside its directory.
bool is_plain_file_name(std::string_view name);

// Throws `status` naming `where` if a shard's slice leaves the global shape or two shards
// of the tensor overlap.
void check_shard_boxes(const std::string& name, const TensorRecord& t, const std::string& where,
                       Status status);

std::string format_crc32c(uint32_t crc);
std::optional<uint32_t> parse_crc32c(std::string_view hex);

}  // namespace mpt::ckpt
