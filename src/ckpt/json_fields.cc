#include "ckpt/json_fields.h"

#include <limits>
#include <set>

#include "core/error.h"

namespace mpt::ckpt {

using nlohmann::json;

namespace {

// The parsed tree is freed recursively, so a crafted file of nested brackets could
// exhaust the stack; its depth is measured before parsing.
constexpr int kMaxJsonDepth = 256;

void check_depth(std::string_view text, const std::string& where) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      MPT_CHECK(++depth <= kMaxJsonDepth, Status::kCorruptData, where,
                ": invalid JSON: nested deeper than ", kMaxJsonDepth, " levels at byte ", i);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

}  // namespace

json parse_json_strict(std::string_view text, const std::string& where) {
  check_depth(text, where);
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto on_event = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == json::parse_event_t::key && !open_objects.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!open_objects.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json result;
  try {
    result = json::parse(text.begin(), text.end(), on_event);
  } catch (const json::exception& e) {
    fail(Status::kCorruptData, where, ": invalid JSON: ", e.what());
  }
  MPT_CHECK(duplicate.empty(), Status::kCorruptData, where, ": invalid JSON: key '", duplicate,
            "' appears twice in one object");
  return result;
}

std::string describe(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 80;
  if (text.size() > kMax) text = text.substr(0, kMax) + "...";
  return text;
}

const json& require_field(const json& object, const std::string& key, const std::string& where) {
  require_object(object, where);
  auto it = object.find(key);
  MPT_CHECK(it != object.end(), Status::kCorruptData, where, ": missing field '", key, "'");
  return *it;
}

const json& require_object(const json& value, const std::string& where) {
  MPT_CHECK(value.is_object(), Status::kCorruptData, where, ": expected a JSON object, found ",
            describe(value));
  return value;
}

const json& require_array(const json& value, const std::string& where) {
  MPT_CHECK(value.is_array(), Status::kCorruptData, where, ": expected a JSON array, found ",
            describe(value));
  return value;
}

std::string require_string(const json& value, const std::string& where) {
  MPT_CHECK(value.is_string(), Status::kCorruptData, where, ": expected a string, found ",
            describe(value));
  return value.get<std::string>();
}

int64_t require_int64(const json& value, const std::string& where) {
  if (value.is_number_unsigned()) {
    uint64_t v = value.get<uint64_t>();
    MPT_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
              Status::kCorruptData, where, ": value ", v, " does not fit in int64");
    return static_cast<int64_t>(v);
  }
  MPT_CHECK(value.is_number_integer(), Status::kCorruptData, where,
            ": expected an integer, found ", describe(value));
  return value.get<int64_t>();
}

uint64_t require_uint64(const json& value, const std::string& where) {
  MPT_CHECK(value.is_number_integer(), Status::kCorruptData, where,
            ": expected a non-negative integer, found ", describe(value));
  MPT_CHECK(value.is_number_unsigned() || value.get<int64_t>() >= 0, Status::kCorruptData, where,
            ": expected a non-negative integer, found ", describe(value));
  return value.get<uint64_t>();
}

std::vector<int64_t> require_dims(const json& value, const std::string& where) {
  require_array(value, where);
  std::vector<int64_t> dims;
  dims.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    int64_t d = require_int64(value[i], str(where, "[", i, "]"));
    MPT_CHECK(d >= 0, Status::kCorruptData, where, ": negative extent ", d, " at axis ", i);
    dims.push_back(d);
  }
  return dims;
}

std::string format_dims(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

}  // namespace mpt::ckpt
