// The key table: every recipe key once, with its section, TOML type, accessor and the
// simple rules (required, numeric range, allowed words) that finalize() checks generically.
// Loading, overrides, validation and to_toml() all walk this one table.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "config/recipe.h"

namespace mpt::config {

// A key's value; std::monostate is an unset optional (Bridge's None).
using Value = std::variant<std::monostate, bool, int64_t, double, std::string, std::vector<std::string>,
                           std::vector<BlendItem>, std::vector<int64_t>>;

enum class KeyType { kBool, kInt, kFloat, kString, kStringList, kBlend, kIntList };

struct KeySpec {
  std::string_view section;  // empty for a top-level key (`mixed_precision = "bf16_mixed"`)
  std::string_view name;
  KeyType type = KeyType::kInt;
  bool optional = false;     // std::optional member: may be left unset
  Value (*get)(const Recipe&) = nullptr;
  void (*set)(Recipe&, const Value&) = nullptr;

  // Rules checked by finalize() for every key alike.
  bool required = false;
  std::optional<double> lo, hi;      // for a list of integers: each element
  bool lo_open = false, hi_open = false;
  std::vector<std::string_view> choices;  // allowed words (each element of a string list)

  std::string full_name() const;  // "section.name", or "name" at top level
  Value default_value() const;

  KeySpec must_be_set() const;
  KeySpec at_least(double v) const;   // >= v
  KeySpec above(double v) const;      // > v
  KeySpec at_most(double v) const;    // <= v
  KeySpec below(double v) const;      // < v
  KeySpec one_of(std::vector<std::string_view> words) const;
};

// Every key, sections in the order of `section_names()`, keys in struct order.
const std::vector<KeySpec>& key_table();
const KeySpec* find_key(std::string_view full_name);
const std::vector<std::string>& section_names();
bool is_section(std::string_view name);

// Sets the key, records where it came from. Setting the mixed-precision preset replaces
// the [mixed_precision] table with its defaults, as Bridge replaces the whole config.
void assign(Recipe& recipe, const KeySpec& spec, const Value& value, const Source& source);

// Text forms shared by messages and to_toml().
std::string format_double(double v);            // shortest round-trip text, "1.0" kept a float
std::string format_number(double v);            // shortest text, "1" for integral values
std::string toml_quote(std::string_view s);     // TOML basic string with escapes
std::string render(const Value& v);             // TOML text of a value; "(unset)" for None
const char* type_phrase(KeyType type);          // "an integer", "a string", ...

// Problems gathered before one Error is thrown. Each is a full line "WHERE: text";
// `order` sorts them (the file line for loader problems).
class Problems {
 public:
  void add(int64_t order, std::string line);
  bool empty() const { return items_.empty(); }
  size_t size() const { return items_.size(); }
  void sort();
  std::string joined() const;
  // Throws Error(kInvalidConfig) with one problem per line when any were added.
  void throw_if_any() const;

 private:
  std::vector<std::pair<int64_t, std::string>> items_;
};

}  // namespace mpt::config
