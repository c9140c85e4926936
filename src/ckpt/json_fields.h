// Strict reading of JSON that comes from disk (safetensors headers, index.json): every
// field is checked for presence and type, and every failure is kCorruptData naming the
// file and the field (`where`) and the offending value.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpt::ckpt {

// Parses `text`; rejects syntax errors, nesting deeper than 256 levels and duplicate keys
// (which JSON readers resolve differently, so a file could mean two things).
nlohmann::json parse_json_strict(std::string_view text, const std::string& where);

// A short rendering of a JSON value for error messages.
std::string describe(const nlohmann::json& value);

const nlohmann::json& require_field(const nlohmann::json& object, const std::string& key,
                                    const std::string& where);
const nlohmann::json& require_object(const nlohmann::json& value, const std::string& where);
const nlohmann::json& require_array(const nlohmann::json& value, const std::string& where);
std::string require_string(const nlohmann::json& value, const std::string& where);
int64_t require_int64(const nlohmann::json& value, const std::string& where);
uint64_t require_uint64(const nlohmann::json& value, const std::string& where);
// An array of non-negative integers: a shape, an offset.
std::vector<int64_t> require_dims(const nlohmann::json& value, const std::string& where);

std::string format_dims(const std::vector<int64_t>& dims);  // "[2, 3]"

}  // namespace mpt::ckpt
