// The safetensors container: u64 little-endian header length N, N bytes of JSON
// {KEY: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data section; offsets are relative to its start. Nothing in a file is executed;
// parsing checks every field against the file's real size before any byte is trusted.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor.h"

namespace mpt::ckpt {

// "F32", "BF16", "F16", "I32", "I64", "U8" (the names core's dtype_name() gives).
std::optional<DType> dtype_from_name(std::string_view name);

struct SafetensorsEntry {
  std::string key;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the data section
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in data order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // absolute file offset of the data section

  const SafetensorsEntry* find(const std::string& key) const;
};

// Headers larger than this are refused before being read (the reference reader's limit).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

// Parses and validates the header of the file `bytes[0, size)`; `where` names the file in
// errors. Checks: length prefix against the file size, JSON syntax, known dtypes, shapes,
// shape x dtype size == data_offsets span, offsets inside the data section, and that the
// spans tile the data section with no overlap and no gap. Throws kCorruptData.
SafetensorsHeader parse_safetensors(const uint8_t* bytes, uint64_t size, const std::string& where);

// The header bytes (length prefix + JSON padded with spaces to 8-byte alignment) for
// entries whose data_offsets are already assigned.
std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata);

// Number of elements in `shape`, or nullopt on int64 overflow.
std::optional<int64_t> checked_volume(const std::vector<int64_t>& shape);

}  // namespace mpt::ckpt
