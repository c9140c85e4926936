#include "ckpt/checkpoint_index.h"

#include <cstdio>

#include "ckpt/json_fields.h"
#include "ckpt/safetensors.h"
#include "core/error.h"

namespace mpt::ckpt {

using nlohmann::json;

namespace {

TensorRecord parse_tensor(const std::string& name, const json& value, const std::string& where,
                          const std::map<std::string, FileRecord>& files) {
  std::string at = str(where, ": tensor '", name, "'");
  require_object(value, at);
  TensorRecord t;
  std::string dtype = require_string(require_field(value, "dtype", at), at + " dtype");
  auto dt = dtype_from_name(dtype);
  MPT_CHECK(dt.has_value(), Status::kCorruptData, at, " has unsupported dtype '", dtype, "'");
  t.dtype = *dt;
  t.global_shape = require_dims(require_field(value, "global_shape", at), at + " global_shape");
  MPT_CHECK(checked_volume(t.global_shape).has_value(), Status::kCorruptData, at, " global_shape ",
            format_dims(t.global_shape), " has too many elements");
  const json& shards = require_array(require_field(value, "shards", at), at + " shards");
  MPT_CHECK(!shards.empty(), Status::kCorruptData, at, " lists no shards");
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string sat = str(at, " shards[", i, "]");
    require_object(shards[i], sat);
    ShardRef s;
    s.file = require_string(require_field(shards[i], "file", sat), sat + " file");
    MPT_CHECK(files.count(s.file) != 0, Status::kCorruptData, sat, " names file '", s.file,
              "' that is not listed under \"files\"");
    s.key = require_string(require_field(shards[i], "key", sat), sat + " key");
    s.offset = require_dims(require_field(shards[i], "offset", sat), sat + " offset");
    s.shape = require_dims(require_field(shards[i], "shape", sat), sat + " shape");
    MPT_CHECK(s.offset.size() == t.global_shape.size() && s.shape.size() == t.global_shape.size(),
              Status::kCorruptData, sat, " offset ", format_dims(s.offset), " and shape ",
              format_dims(s.shape), " must both have ", t.global_shape.size(),
              " axes like global_shape ", format_dims(t.global_shape));
    t.shards.push_back(std::move(s));
  }
  check_shard_boxes(name, t, where, Status::kCorruptData);
  return t;
}

}  // namespace

std::string iteration_dir_name(int64_t iteration) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "iter_%07lld", static_cast<long long>(iteration));
  return buf;
}

std::optional<int64_t> parse_iteration_dir_name(std::string_view name) {
  constexpr std::string_view kPrefix = "iter_";
  if (name.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  std::string_view digits = name.substr(kPrefix.size());
  if (digits.size() < 7 || digits.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

std::string shard_file_name(int64_t index) {
  char buf[48];
  std::snprintf(buf, sizeof(buf), "shard_%05lld.safetensors", static_cast<long long>(index));
  return buf;
}

bool is_plain_file_name(std::string_view name) {
  if (name.empty() || name.front() == '.') return false;
  for (char c : name)
    if (c == '/' || c == '\\' || c == '\0') return false;
  return true;
}

void check_shard_boxes(const std::string& name, const TensorRecord& t, const std::string& where,
                       Status status) {
  const size_t ndim = t.global_shape.size();
  for (size_t i = 0; i < t.shards.size(); ++i) {
    const ShardRef& s = t.shards[i];
    for (size_t d = 0; d < ndim; ++d) {
      MPT_CHECK(s.offset[d] <= t.global_shape[d] && s.shape[d] <= t.global_shape[d] - s.offset[d],
                status, where, ": tensor '", name, "' shard in '", s.file, "' at offset ",
                format_dims(s.offset), " with shape ", format_dims(s.shape),
                " lies outside global_shape ", format_dims(t.global_shape), " on axis ", d);
    }
  }
  auto empty = [&](const ShardRef& s) {
    for (int64_t e : s.shape)
      if (e == 0) return true;
    return false;
  };
  for (size_t i = 0; i < t.shards.size(); ++i) {
    if (empty(t.shards[i])) continue;
    for (size_t j = i + 1; j < t.shards.size(); ++j) {
      const ShardRef& a = t.shards[i];
      const ShardRef& b = t.shards[j];
      if (empty(b)) continue;
      bool overlap = true;
      for (size_t d = 0; d < ndim && overlap; ++d)
        overlap = a.offset[d] < b.offset[d] + b.shape[d] && b.offset[d] < a.offset[d] + a.shape[d];
      MPT_CHECK(!overlap, status, where, ": tensor '", name, "' shards at offsets ",
                format_dims(a.offset), " ('", a.file, "') and ", format_dims(b.offset), " ('",
                b.file, "') overlap");
    }
  }
}

std::string format_crc32c(uint32_t crc) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", crc);
  return buf;
}

std::optional<uint32_t> parse_crc32c(std::string_view hex) {
  if (hex.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : hex) {
    int d = (c >= '0' && c <= '9') ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : -1;
    if (d < 0) return std::nullopt;
    v = (v << 4) | static_cast<uint32_t>(d);
  }
  return v;
}

json CheckpointIndex::to_json() const {
  json tensors_j = json::object();
  for (const auto& [name, t] : tensors) {
    json shards = json::array();
    for (const ShardRef& s : t.shards)
      shards.push_back({{"file", s.file}, {"key", s.key}, {"offset", s.offset}, {"shape", s.shape}});
    tensors_j[name] = {{"dtype", dtype_name(t.dtype)}, {"global_shape", t.global_shape},
                       {"shards", std::move(shards)}};
  }
  json files_j = json::object();
  for (const auto& [file, f] : files)
    files_j[file] = {{"bytes", f.bytes}, {"crc32c", format_crc32c(f.crc32c)}};
  return {{"format", kIndexFormat}, {"version", kIndexVersion}, {"iteration", iteration},
          {"tensors", std::move(tensors_j)}, {"files", std::move(files_j)}, {"meta", meta}};
}

std::string CheckpointIndex::to_text() const {
  const json j = to_json();
  std::string out = "{\n";
  for (const char* key : {"format", "version", "iteration"})
    out.append(" \"").append(key).append("\": ").append(j[key].dump()).append(",\n");
  for (const char* key : {"files", "tensors"}) {
    out.append(" \"").append(key).append("\": {");
    bool first = true;
    for (const auto& [name, value] : j[key].items()) {
      out.append(first ? "\n  " : ",\n  ").append(json(name).dump()).append(": ").append(value.dump());
      first = false;
    }
    out.append(first ? "},\n" : "\n },\n");
  }
  out.append(" \"meta\": ").append(j["meta"].dump()).append("\n}\n");
  return out;
}

CheckpointIndex CheckpointIndex::from_json(const json& j, const std::string& where) {
  require_object(j, where);
  std::string format = require_string(require_field(j, "format", where), where + " format");
  MPT_CHECK(format == kIndexFormat, Status::kCorruptData, where, ": format '", format,
            "' is not '", kIndexFormat, "'");
  int64_t version = require_int64(require_field(j, "version", where), where + " version");
  MPT_CHECK(version >= 1, Status::kCorruptData, where, ": version ", version, " is not valid");
  MPT_CHECK(version <= kIndexVersion, Status::kNotSupported, where, ": version ", version,
            " is newer than this build reads (", kIndexVersion, ")");

  CheckpointIndex index;
  index.iteration = require_int64(require_field(j, "iteration", where), where + " iteration");
  MPT_CHECK(index.iteration >= 0, Status::kCorruptData, where, ": iteration ", index.iteration,
            " is negative");

  const json& files = require_object(require_field(j, "files", where), where + " files");
  for (auto it = files.begin(); it != files.end(); ++it) {
    std::string at = str(where, ": files '", it.key(), "'");
    MPT_CHECK(is_plain_file_name(it.key()), Status::kCorruptData, at,
              " is not a plain file name inside the checkpoint directory");
    FileRecord f;
    f.bytes = require_uint64(require_field(it.value(), "bytes", at), at + " bytes");
    std::string hex = require_string(require_field(it.value(), "crc32c", at), at + " crc32c");
    auto crc = parse_crc32c(hex);
    MPT_CHECK(crc.has_value(), Status::kCorruptData, at, " crc32c '", hex,
              "' is not 8 hex digits");
    f.crc32c = *crc;
    index.files[it.key()] = f;
  }

  const json& tensors = require_object(require_field(j, "tensors", where), where + " tensors");
  for (auto it = tensors.begin(); it != tensors.end(); ++it)
    index.tensors[it.key()] = parse_tensor(it.key(), it.value(), where, index.files);

  if (auto m = j.find("meta"); m != j.end()) index.meta = *m;
  return index;
}

}  // namespace mpt::ckpt
