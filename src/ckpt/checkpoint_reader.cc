#include "ckpt/checkpoint_reader.h"

#include <cstring>
#include <filesystem>

#include "ckpt/crc32c.h"
#include "ckpt/json_fields.h"
#include "ckpt/safetensors.h"
#include "core/error.h"

namespace mpt::ckpt {

using nlohmann::json;

namespace {

constexpr uint64_t kMaxIndexBytes = 1ull << 30;

std::string base_name(const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return std::filesystem::path(d).filename().string();
}

// Printable rendering of untrusted text for an error message.
std::string quote_text(const std::string& text) {
  std::string out;
  for (char c : text.substr(0, 40)) {
    if (c >= 0x20 && c < 0x7f) {
      out += c;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    }
  }
  return "'" + out + (text.size() > 40 ? "...'" : "'");
}

// An iteration directory, or the one a save directory's latest file names.
std::string resolve_directory(const std::string& dir) {
  if (path_exists(join_path(dir, kIndexFile))) return dir;
  MPT_CHECK(is_directory(dir), Status::kIoError, dir, ": checkpoint directory does not exist");
  MPT_CHECK(!parse_iteration_dir_name(base_name(dir)), Status::kIoError,
            join_path(dir, kIndexFile), ": missing; not a complete checkpoint directory");
  auto latest = latest_iteration(dir);
  MPT_CHECK(latest.has_value(), Status::kIoError, dir, ": holds neither ", kIndexFile, " nor ",
            kLatestFile, "; not a checkpoint");
  std::string iter_dir = join_path(dir, iteration_dir_name(*latest));
  // The latest file promises a complete checkpoint: one that is not there is damage.
  MPT_CHECK(is_directory(iter_dir), Status::kCorruptData, iter_dir, ": does not exist (named by ",
            join_path(dir, kLatestFile), ")");
  MPT_CHECK(path_exists(join_path(iter_dir, kIndexFile)), Status::kCorruptData,
            join_path(iter_dir, kIndexFile), ": missing (checkpoint named by ",
            join_path(dir, kLatestFile), ")");
  return iter_dir;
}

std::vector<int64_t> strides_of(const std::vector<int64_t>& shape) {
  std::vector<int64_t> s(shape.size(), 1);
  for (size_t d = shape.size(); d-- > 1;) s[d - 1] = s[d] * shape[d];
  return s;
}

}  // namespace

std::optional<int64_t> latest_iteration(const std::string& save_dir) {
  std::string path = join_path(save_dir, kLatestFile);
  if (!path_exists(path)) return std::nullopt;
  std::string text = read_file(path, 64);
  size_t b = text.find_first_not_of(" \t\r\n");
  size_t e = text.find_last_not_of(" \t\r\n");
  std::string digits = b == std::string::npos ? "" : text.substr(b, e - b + 1);
  MPT_CHECK(!digits.empty() && digits.size() <= 18 &&
                digits.find_first_not_of("0123456789") == std::string::npos,
            Status::kCorruptData, path, ": expected an iteration number, found ",
            quote_text(text));
  return std::stoll(digits);
}

CheckpointReader::CheckpointReader(const std::string& dir) : dir_(resolve_directory(dir)) {
  const std::string index_path = join_path(dir_, kIndexFile);
  index_ = CheckpointIndex::from_json(parse_json_strict(read_file(index_path, kMaxIndexBytes), index_path),
                                      index_path);
  if (auto named = parse_iteration_dir_name(base_name(dir_))) {
    MPT_CHECK(*named == index_.iteration, Status::kCorruptData, index_path, ": iteration ",
              index_.iteration, " does not match the directory name ", base_name(dir_));
  }

  // Each file once: size against the index, then its header (the CRC when first read).
  std::map<std::string, std::map<std::string, const SafetensorsEntry*>> keys;
  std::map<std::string, SafetensorsHeader> headers;
  for (const auto& [file, rec] : index_.files) {
    const std::string path = join_path(dir_, file);
    // A file the index lists but the directory lacks is a damaged checkpoint, not an
    // absent one; other open failures (permissions) stay I/O errors.
    MPT_CHECK(path_exists(path), Status::kCorruptData, path, ": missing (listed in ", kIndexFile, ")");
    MappedFile mapped(path);
    MPT_CHECK(mapped.size() == rec.bytes, Status::kCorruptData, path, ": size ", mapped.size(),
              " bytes, but index.json records ", rec.bytes);
    SafetensorsHeader& header = headers[file] = parse_safetensors(mapped.data(), mapped.size(), path);
    for (const SafetensorsEntry& e : header.entries) keys[file][e.key] = &e;
    files_.emplace(file, std::move(mapped));
  }

  for (const auto& [name, t] : index_.tensors) {
    std::vector<const uint8_t*>& starts = shard_data_[name];
    for (const ShardRef& s : t.shards) {
      const std::string path = join_path(dir_, s.file);
      auto it = keys[s.file].find(s.key);
      MPT_CHECK(it != keys[s.file].end(), Status::kCorruptData, path, ": has no tensor '", s.key,
                "' (a shard of '", name, "' in index.json)");
      const SafetensorsEntry& e = *it->second;
      MPT_CHECK(e.dtype == t.dtype && e.shape == s.shape, Status::kCorruptData, path, ": tensor '",
                s.key, "' is ", dtype_name(e.dtype), " ", format_dims(e.shape),
                " but index.json says ", dtype_name(t.dtype), " ", format_dims(s.shape));
      starts.push_back(files_.at(s.file).data() + headers.at(s.file).data_start + e.begin);
    }
  }
}

void CheckpointReader::verify_file(const std::string& file) const {
  std::lock_guard<std::mutex> lock(verified_mu_);
  auto it = verified_.find(file);
  if (it == verified_.end()) {
    const MappedFile& mapped = files_.at(file);
    const uint32_t want = index_.files.at(file).crc32c;
    const uint32_t crc = crc32c(mapped.data(), mapped.size());
    it = verified_
             .emplace(file, crc == want ? std::string()
                                        : str(join_path(dir_, file), ": crc32c ", format_crc32c(crc),
                                              " does not match ", format_crc32c(want), " recorded in index.json"))
             .first;
  }
  MPT_CHECK(it->second.empty(), Status::kCorruptData, it->second);
}

void CheckpointReader::verify() const {
  for (const auto& [file, rec] : index_.files) verify_file(file);
}

std::vector<std::string> CheckpointReader::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [name, t] : index_.tensors) names.push_back(name);
  return names;
}

const TensorRecord& CheckpointReader::record(const std::string& name) const {
  auto it = index_.tensors.find(name);
  MPT_CHECK(it != index_.tensors.end(), Status::kInvalidArgument, dir_, ": checkpoint has no tensor '",
            name, "'");
  return it->second;
}

DType CheckpointReader::dtype(const std::string& name) const { return record(name).dtype; }

std::vector<int64_t> CheckpointReader::global_shape(const std::string& name) const {
  return record(name).global_shape;
}

void CheckpointReader::read(const std::string& name, DType dtype, const std::vector<int64_t>& offset,
                            const std::vector<int64_t>& shape, void* dst) const {
  const TensorRecord& t = record(name);
  MPT_CHECK(dtype == t.dtype, Status::kInvalidArgument, dir_, ": tensor '", name, "' is stored as ",
            dtype_name(t.dtype), ", read as ", dtype_name(dtype), " requested");
  const size_t ndim = t.global_shape.size();
  MPT_CHECK(offset.size() == ndim && shape.size() == ndim, Status::kInvalidArgument, dir_,
            ": tensor '", name, "' has ", ndim, " axes; region offset ", format_dims(offset),
            " shape ", format_dims(shape), " requested");
  for (size_t d = 0; d < ndim; ++d) {
    MPT_CHECK(offset[d] >= 0 && shape[d] >= 0 && offset[d] <= t.global_shape[d] &&
                  shape[d] <= t.global_shape[d] - offset[d],
              Status::kInvalidArgument, dir_, ": tensor '", name, "' region offset ",
              format_dims(offset), " shape ", format_dims(shape), " leaves global_shape ",
              format_dims(t.global_shape), " on axis ", d);
  }
  const int64_t volume = *checked_volume(shape);
  if (volume == 0) return;
  MPT_CHECK(dst != nullptr, Status::kInvalidArgument, "tensor '", name, "': destination is null");

  const size_t esize = dtype_size(dtype);
  const std::vector<int64_t> dst_strides = strides_of(shape);
  const std::vector<const uint8_t*>& starts = shard_data_.at(name);
  int64_t covered = 0;
  std::vector<int64_t> lo(ndim), ext(ndim), idx(ndim);
  for (size_t i = 0; i < t.shards.size(); ++i) {
    const ShardRef& s = t.shards[i];
    bool empty = false;
    for (size_t d = 0; d < ndim; ++d) {
      lo[d] = std::max(offset[d], s.offset[d]);
      ext[d] = std::min(offset[d] + shape[d], s.offset[d] + s.shape[d]) - lo[d];
      empty = empty || ext[d] <= 0;
    }
    if (empty) continue;
    verify_file(s.file);
    const std::vector<int64_t> src_strides = strides_of(s.shape);
    // Trailing axes that are whole in the shard, the region and their intersection form
    // one contiguous run in both; the axes before it are walked.
    size_t k = ndim;
    int64_t run = 1;
    while (k > 0) {
      --k;
      run *= ext[k];
      if (ext[k] != s.shape[k] || ext[k] != shape[k]) break;
    }
    int64_t walked = 1;
    for (size_t d = 0; d < k; ++d) walked *= ext[d];
    covered += run * walked;
    for (size_t d = 0; d < ndim; ++d) idx[d] = lo[d];
    while (true) {
      int64_t src = 0, dst_at = 0;
      for (size_t d = 0; d < ndim; ++d) {
        src += (idx[d] - s.offset[d]) * src_strides[d];
        dst_at += (idx[d] - offset[d]) * dst_strides[d];
      }
      std::memcpy(static_cast<uint8_t*>(dst) + dst_at * esize, starts[i] + src * esize, run * esize);
      size_t d = k;  // odometer over the walked axes [0, k)
      while (d > 0 && ++idx[d - 1] == lo[d - 1] + ext[d - 1]) {
        idx[d - 1] = lo[d - 1];
        --d;
      }
      if (d == 0) break;
    }
  }
  MPT_CHECK(covered == volume, Status::kCorruptData, join_path(dir_, kIndexFile), ": tensor '",
            name, "' region offset ", format_dims(offset), " shape ", format_dims(shape),
            " is covered by shards for only ", covered, " of ", volume, " elements");
}

}  // namespace mpt::ckpt
