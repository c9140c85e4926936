#include "ckpt/checkpoint_writer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <system_error>

#include "ckpt/checkpoint_index.h"
#include "ckpt/file_io.h"
#include "ckpt/json_fields.h"
#include "ckpt/safetensors.h"
#include "core/error.h"

namespace mpt::ckpt {

using nlohmann::json;

namespace {

constexpr char kStagingPrefix[] = ".tmp_";
constexpr char kAsidePrefix[] = ".old_";

std::string process_tag() { return host_name() + "_" + std::to_string(::getpid()); }

void check_slice(const TensorSlice& s) {
  MPT_CHECK(!s.name.empty(), Status::kInvalidArgument, "checkpoint slice has an empty name");
  MPT_CHECK(dtype_size(s.dtype) != 0, Status::kInvalidArgument, "tensor '", s.name,
            "': invalid dtype ", static_cast<int>(s.dtype));
  const size_t ndim = s.global_shape.size();
  MPT_CHECK(s.offset.size() == ndim && s.shape.size() == ndim, Status::kInvalidArgument,
            "tensor '", s.name, "': offset ", format_dims(s.offset), " and shape ",
            format_dims(s.shape), " must have ", ndim, " axes like global_shape ",
            format_dims(s.global_shape));
  for (size_t d = 0; d < ndim; ++d) {
    MPT_CHECK(s.global_shape[d] >= 0 && s.offset[d] >= 0 && s.shape[d] >= 0 &&
                  s.offset[d] <= s.global_shape[d] && s.shape[d] <= s.global_shape[d] - s.offset[d],
              Status::kInvalidArgument, "tensor '", s.name, "': slice at offset ",
              format_dims(s.offset), " with shape ", format_dims(s.shape),
              " lies outside global_shape ", format_dims(s.global_shape), " on axis ", d);
  }
  auto volume = checked_volume(s.global_shape);
  MPT_CHECK(volume.has_value(), Status::kInvalidArgument, "tensor '", s.name, "': global_shape ",
            format_dims(s.global_shape), " has too many elements");
  MPT_CHECK(s.data != nullptr || *checked_volume(s.shape) == 0, Status::kInvalidArgument,
            "tensor '", s.name, "': slice data is null");
  MPT_CHECK(s.file >= 0, Status::kInvalidArgument, "tensor '", s.name, "': shard file number ",
            s.file, " is negative");
}

// Each tensor's slices must cover its global shape once: no overlap, no hole.
void check_tiling(const std::map<std::string, TensorRecord>& tensors) {
  for (const auto& [name, t] : tensors) {
    check_shard_boxes(name, t, "checkpoint", Status::kInvalidArgument);
    int64_t covered = 0;
    for (const ShardRef& s : t.shards) covered += *checked_volume(s.shape);
    int64_t total = *checked_volume(t.global_shape);
    MPT_CHECK(covered == total, Status::kInvalidArgument, "checkpoint: tensor '", name,
              "' slices cover ", covered, " of the ", total, " elements of global_shape ",
              format_dims(t.global_shape));
  }
}

// Adds `from` into `into`; a tensor seen twice must agree on dtype and global shape.
void merge_tensors(std::map<std::string, TensorRecord>& into,
                   const std::map<std::string, TensorRecord>& from) {
  for (const auto& [name, t] : from) {
    auto [it, inserted] = into.try_emplace(name, t);
    if (inserted) continue;
    MPT_CHECK(it->second.dtype == t.dtype && it->second.global_shape == t.global_shape,
              Status::kInvalidArgument, "checkpoint: tensor '", name, "' is saved as ",
              dtype_name(it->second.dtype), " ", format_dims(it->second.global_shape),
              " and as ", dtype_name(t.dtype), " ", format_dims(t.global_shape));
    it->second.shards.insert(it->second.shards.end(), t.shards.begin(), t.shards.end());
  }
}

std::map<std::string, TensorRecord> records_of(const std::vector<TensorSlice>& slices,
                                               const std::string& file_name) {
  std::map<std::string, TensorRecord> records;
  for (const TensorSlice& s : slices) {
    TensorRecord t{s.dtype, s.global_shape, {}};
    std::string file = file_name.empty() ? shard_file_name(s.file) : file_name;
    t.shards.push_back({file, "", s.offset, s.shape});
    merge_tensors(records, {{s.name, t}});
  }
  return records;
}

// The key inside the shard file: the tensor name when the slice is the whole tensor,
// otherwise the name tagged with the slice's offset (unique within one tensor).
std::string slice_key(const TensorSlice& s) {
  if (s.shape == s.global_shape) return s.name;
  std::string key = s.name + "@";
  for (size_t d = 0; d < s.offset.size(); ++d) {
    if (d > 0) key += ',';
    key += std::to_string(s.offset[d]);
  }
  return key;
}

struct StagingName {
  std::string iter_dir;
  std::string host;
  int64_t pid = 0;
};

// ".tmp_iter_0000100_host_1234" -> {iter_0000100, host, 1234}.
std::optional<StagingName> parse_staging_name(const std::string& name, const std::string& prefix) {
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  std::string rest = name.substr(prefix.size());
  size_t iter_end = rest.find('_', 5);
  size_t pid_start = rest.rfind('_');
  if (iter_end == std::string::npos || pid_start <= iter_end) return std::nullopt;
  StagingName out;
  out.iter_dir = rest.substr(0, iter_end);
  out.host = rest.substr(iter_end + 1, pid_start - iter_end - 1);
  std::string pid = rest.substr(pid_start + 1);
  if (!parse_iteration_dir_name(out.iter_dir) || pid.empty() || pid.size() > 10 ||
      pid.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  out.pid = std::stoll(pid);
  return out;
}

// Staging and set-aside directories left by this host's dead processes. A set-aside
// directory is the only copy of its checkpoint when a replace died between its two renames.
void clean_stale_staging(const std::string& save_dir) {
  const std::string host = host_name();
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(save_dir, ec))
    names.push_back(entry.path().filename().string());
  if (ec) fail(Status::kIoError, save_dir, ": cannot list directory: ", ec.message());
  const std::string latest_tmp = std::string(".") + kLatestFile + ".tmp_" + host + "_";
  for (const std::string& name : names) {
    if (name.rfind(latest_tmp, 0) == 0) {
      std::string pid = name.substr(latest_tmp.size());
      if (!pid.empty() && pid.size() <= 10 && pid.find_first_not_of("0123456789") == std::string::npos &&
          !process_is_alive(std::stoll(pid)))
        remove_tree(join_path(save_dir, name));
      continue;
    }
    for (const std::string prefix : {kStagingPrefix, kAsidePrefix}) {
      auto parsed = parse_staging_name(name, prefix);
      if (!parsed || parsed->host != host) continue;
      if (process_is_alive(parsed->pid)) continue;  // ours included: a save may be under way
      std::string path = join_path(save_dir, name);
      std::string final_dir = join_path(save_dir, parsed->iter_dir);
      if (prefix == kAsidePrefix && !path_exists(final_dir)) {
        rename_path(path, final_dir);
        fsync_directory(save_dir);
      } else {
        remove_tree(path);
      }
    }
  }
}

void publish(const std::string& save_dir, const std::string& staging, const std::string& final_dir,
             int64_t iteration) {
  if (!path_exists(final_dir)) {
    rename_path(staging, final_dir);
    fsync_directory(save_dir);
    return;
  }
  if (exchange_paths(staging, final_dir)) {
    fsync_directory(save_dir);
    remove_tree(staging);  // now holds the replaced checkpoint
    return;
  }
  // No atomic exchange on this file system: set the old one aside, move the new one in.
  std::string aside =
      join_path(save_dir, kAsidePrefix + iteration_dir_name(iteration) + "_" + process_tag());
  rename_path(final_dir, aside);
  try {
    rename_path(staging, final_dir);
  } catch (...) {
    ::rename(aside.c_str(), final_dir.c_str());
    throw;
  }
  fsync_directory(save_dir);
  remove_tree(aside);
}

}  // namespace

std::string begin_checkpoint(const std::string& save_dir, int64_t iteration) {
  MPT_CHECK(iteration >= 0, Status::kInvalidArgument, "checkpoint iteration ", iteration,
            " is negative");
  MPT_CHECK(!save_dir.empty(), Status::kInvalidArgument, "checkpoint save directory is empty");
  if (!is_directory(save_dir)) {
    make_directories(save_dir);
    std::string parent = std::filesystem::path(save_dir).lexically_normal().parent_path().string();
    fsync_directory(parent.empty() ? "." : parent);
  }
  clean_stale_staging(save_dir);
  std::string staging =
      join_path(save_dir, kStagingPrefix + iteration_dir_name(iteration) + "_" + process_tag());
  remove_tree(staging);
  make_directories(staging);
  return staging;
}

json write_shard(const std::string& staging_dir, const std::string& file_name,
                 const std::vector<TensorSlice>& slices) {
  MPT_CHECK(is_plain_file_name(file_name), Status::kInvalidArgument, "checkpoint shard file name '",
            file_name, "' is not a plain file name");
  for (const TensorSlice& s : slices) check_slice(s);
  // Widest dtypes first keeps every tensor naturally aligned in the data section.
  std::vector<const TensorSlice*> order;
  for (const TensorSlice& s : slices) order.push_back(&s);
  std::stable_sort(order.begin(), order.end(), [](const TensorSlice* a, const TensorSlice* b) {
    return dtype_size(a->dtype) > dtype_size(b->dtype);
  });

  std::vector<SafetensorsEntry> entries;
  std::map<std::string, const TensorSlice*> by_key;
  uint64_t cursor = 0;
  for (const TensorSlice* s : order) {
    SafetensorsEntry e{slice_key(*s), s->dtype, s->shape, cursor, 0};
    MPT_CHECK(by_key.emplace(e.key, s).second, Status::kInvalidArgument, "tensor '", s->name,
              "': two slices at offset ", format_dims(s->offset), " in ", file_name);
    e.end = cursor + static_cast<uint64_t>(*checked_volume(s->shape)) * dtype_size(s->dtype);
    cursor = e.end;
    entries.push_back(std::move(e));
  }
  std::string header;
  try {
    header = encode_safetensors_header(entries, {{"format", kIndexFormat}});
  } catch (const json::exception& e) {
    fail(Status::kInvalidArgument, file_name, ": tensor names must be valid UTF-8: ", e.what());
  }

  std::string path = join_path(staging_dir, file_name);
  FileWriter out(path);
  out.write(header.data(), header.size());
  for (size_t i = 0; i < entries.size(); ++i) out.write(order[i]->data, entries[i].end - entries[i].begin);
  out.finish();

  CheckpointIndex part;
  part.tensors = records_of(slices, file_name);
  for (auto& [name, t] : part.tensors) {
    for (ShardRef& s : t.shards) {
      TensorSlice probe{name, t.dtype, t.global_shape, s.offset, s.shape, nullptr, 0};
      s.key = slice_key(probe);
    }
  }
  part.files[file_name] = {out.bytes(), out.crc32c()};
  json j = part.to_json();
  return {{"tensors", j["tensors"]}, {"files", j["files"]}};
}

std::string commit_checkpoint(const std::string& save_dir, int64_t iteration,
                              const std::string& staging_dir, const std::vector<json>& shard_parts,
                              const json& meta) {
  CheckpointIndex index;
  index.iteration = iteration;
  index.meta = meta;
  for (const json& part : shard_parts) {
    json wrapped = {{"format", kIndexFormat}, {"version", kIndexVersion}, {"iteration", iteration},
                    {"tensors", part.value("tensors", json::object())},
                    {"files", part.value("files", json::object())}};
    CheckpointIndex p = CheckpointIndex::from_json(wrapped, "checkpoint shard part");
    for (const auto& [file, f] : p.files)
      MPT_CHECK(index.files.emplace(file, f).second, Status::kInvalidArgument,
                "checkpoint: shard file '", file, "' was written twice");
    merge_tensors(index.tensors, p.tensors);
  }
  check_tiling(index.tensors);

  std::string text;
  try {
    text = index.to_text();
  } catch (const json::exception& e) {
    fail(Status::kInvalidArgument, "checkpoint: meta is not serialisable as JSON: ", e.what());
  }
  // What is published must pass the reader's checks (e.g. a meta nested too deeply).
  try {
    CheckpointIndex::from_json(parse_json_strict(text, kIndexFile), kIndexFile);
  } catch (const Error& e) {
    fail(Status::kInvalidArgument, "checkpoint: index.json would not read back: ", e.what());
  }
  {
    FileWriter out(join_path(staging_dir, kIndexFile));
    out.write(text.data(), text.size());
    out.finish();
  }
  fsync_directory(staging_dir);

  std::string final_dir = join_path(save_dir, iteration_dir_name(iteration));
  publish(save_dir, staging_dir, final_dir, iteration);
  write_file_atomic(join_path(save_dir, kLatestFile), std::to_string(iteration));
  return final_dir;
}

void discard_checkpoint(const std::string& staging_dir) noexcept { remove_tree(staging_dir); }

std::string save_checkpoint(const std::string& save_dir, int64_t iteration,
                            const std::vector<TensorSlice>& tensors, const json& meta) {
  // Check the whole set before writing anything, so a bad call costs no I/O.
  std::map<int64_t, std::vector<TensorSlice>> by_file;
  for (const TensorSlice& s : tensors) {
    check_slice(s);
    by_file[s.file].push_back(s);
  }
  check_tiling(records_of(tensors, ""));

  std::string staging = begin_checkpoint(save_dir, iteration);
  try {
    std::vector<json> parts;
    for (const auto& [file, slices] : by_file)
      parts.push_back(write_shard(staging, shard_file_name(file), slices));
    return commit_checkpoint(save_dir, iteration, staging, parts, meta);
  } catch (...) {
    discard_checkpoint(staging);
    throw;
  }
}

}  // namespace mpt::ckpt
