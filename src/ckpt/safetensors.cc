#include "ckpt/safetensors.h"

#include <algorithm>
#include <cstring>

#include "ckpt/json_fields.h"
#include "core/error.h"

namespace mpt::ckpt {

using nlohmann::json;

namespace {

constexpr char kMetadataKey[] = "__metadata__";

uint64_t load_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

SafetensorsEntry parse_entry(const std::string& key, const json& value, const std::string& where) {
  std::string at = str(where, ": tensor '", key, "'");
  require_object(value, at);
  SafetensorsEntry e;
  e.key = key;
  std::string dtype = require_string(require_field(value, "dtype", at), at + " dtype");
  auto dt = dtype_from_name(dtype);
  MPT_CHECK(dt.has_value(), Status::kCorruptData, at, " has unsupported dtype '", dtype, "'");
  e.dtype = *dt;
  e.shape = require_dims(require_field(value, "shape", at), at + " shape");
  const json& offsets = require_array(require_field(value, "data_offsets", at), at + " data_offsets");
  MPT_CHECK(offsets.size() == 2, Status::kCorruptData, at, " data_offsets ", describe(offsets),
            " must hold exactly [begin, end]");
  e.begin = require_uint64(offsets[0], at + " data_offsets[0]");
  e.end = require_uint64(offsets[1], at + " data_offsets[1]");
  MPT_CHECK(e.begin <= e.end, Status::kCorruptData, at, " data_offsets [", e.begin, ", ", e.end,
            "] end before they begin");
  auto volume = checked_volume(e.shape);
  unsigned __int128 expect = static_cast<unsigned __int128>(volume.value_or(0)) * dtype_size(e.dtype);
  MPT_CHECK(volume.has_value() && expect == e.end - e.begin, Status::kCorruptData, at, " shape ",
            format_dims(e.shape), " x ", dtype, " needs ",
            volume ? std::to_string(static_cast<uint64_t>(expect)) : std::string("too many"),
            " bytes but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin);
  return e;
}

}  // namespace

std::optional<DType> dtype_from_name(std::string_view name) {
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64, DType::kU8})
    if (name == dtype_name(t)) return t;
  return std::nullopt;
}

std::optional<int64_t> checked_volume(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

const SafetensorsEntry* SafetensorsHeader::find(const std::string& key) const {
  for (const SafetensorsEntry& e : entries)
    if (e.key == key) return &e;
  return nullptr;
}

SafetensorsHeader parse_safetensors(const uint8_t* bytes, uint64_t size, const std::string& where) {
  MPT_CHECK(size >= 8, Status::kCorruptData, where, ": file is ", size,
            " bytes, too short for the 8-byte header length");
  uint64_t header_len = load_u64_le(bytes);
  MPT_CHECK(header_len <= kMaxSafetensorsHeader, Status::kCorruptData, where, ": header length ",
            header_len, " exceeds the limit of ", kMaxSafetensorsHeader, " bytes");
  MPT_CHECK(header_len <= size - 8, Status::kCorruptData, where, ": header length ", header_len,
            " exceeds the file (", size, " bytes)");
  std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_len);
  json header = parse_json_strict(text, where + " header");
  require_object(header, where + " header");

  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  const uint64_t data_size = size - out.data_start;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == kMetadataKey) {
      const json& meta = require_object(it.value(), where + " __metadata__");
      for (auto m = meta.begin(); m != meta.end(); ++m)
        out.metadata[m.key()] = require_string(m.value(), str(where, " __metadata__ '", m.key(), "'"));
      continue;
    }
    out.entries.push_back(parse_entry(it.key(), it.value(), where));
  }

  // Spans must tile the data section exactly: an overlap aliases two tensors, a gap or a
  // tail hides bytes no tensor accounts for.
  std::sort(out.entries.begin(), out.entries.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t cursor = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry& e : out.entries) {
    MPT_CHECK(e.end <= data_size, Status::kCorruptData, where, ": tensor '", e.key,
              "' data_offsets [", e.begin, ", ", e.end, "] exceed the data section (", data_size,
              " bytes)");
    MPT_CHECK(e.begin >= cursor, Status::kCorruptData, where, ": tensor '", e.key,
              "' data_offsets [", e.begin, ", ", e.end, "] overlap tensor '", prev->key, "' [",
              prev->begin, ", ", prev->end, "]");
    MPT_CHECK(e.begin == cursor, Status::kCorruptData, where, ": bytes [", cursor, ", ", e.begin,
              ") of the data section belong to no tensor (gap before '", e.key, "')");
    cursor = e.end;
    prev = &e;
  }
  MPT_CHECK(cursor == data_size, Status::kCorruptData, where, ": data section is ", data_size,
            " bytes but its tensors end at ", cursor);
  return out;
}

std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  for (const SafetensorsEntry& e : entries) {
    header[e.key] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape},
                     {"data_offsets", {e.begin, e.end}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + text;
}

}  // namespace mpt::ckpt
