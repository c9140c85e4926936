// `section.key=value` overrides, as Bridge's command line takes them. The value is read
// as a TOML value; text that is not one (a bare word, a path) is taken as a string.
#include <optional>
#include <string_view>

#include "config/convert_internal.h"
#include "config/recipe.h"
#include "config/schema_internal.h"
#include "config/suggest_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

std::string_view trim(std::string_view s) {
  const char* space = " \t\r\n";
  const size_t b = s.find_first_not_of(space);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(space);
  return s.substr(b, e - b + 1);
}

// The value text read as `v = <text>`; nullopt when that is not exactly one TOML value,
// with toml++'s reason in `why`.
std::optional<toml::table> parse_value(std::string_view text, std::string& why) {
  try {
    toml::table doc = toml::parse(std::string("v = ") + std::string(text));
    if (doc.size() == 1 && doc.get("v") != nullptr) return doc;
    why = "it holds more than one value";
  } catch (const toml::parse_error& e) {
    why = std::string(e.description());
  }
  return std::nullopt;
}

// Text that opens a TOML string, array or inline table was meant as TOML, not a bare word.
bool looks_like_toml(std::string_view text) {
  return !text.empty() && (text.front() == '"' || text.front() == '\'' || text.front() == '[' || text.front() == '{');
}

void apply_one(Recipe& recipe, std::string_view assignment, const std::string& origin, int64_t order,
               Problems& problems) {
  auto report = [&](const std::string& text) { problems.add(order, str(origin, ": ", text)); };

  const size_t eq = assignment.find('=');
  if (eq == std::string_view::npos) {
    const std::string_view word = trim(assignment.substr(0, assignment.find_first_of(" \t:")));
    std::string hint;
    if (find_key(word) != nullptr) hint = str(" (did you mean '", word, "=...'?)");
    else if (!word.empty()) hint = suggest_key(word);
    report(str("expected section.key=value, found no '='", hint));
    return;
  }
  const std::string key(trim(assignment.substr(0, eq)));
  const std::string_view text = trim(assignment.substr(eq + 1));

  const KeySpec* spec = find_key(key);
  if (spec == nullptr) {
    if (is_section(key)) {
      report(str("'", key, "' is a section, not a key; write ", key, ".KEY=VALUE"));
    } else {
      report(str("unknown key '", key, "'", suggest_key(key)));
    }
    return;
  }

  Value value;
  if (spec->optional && (text == "null" || text == "None")) {
    value = std::monostate{};  // back to Bridge's None
  } else {
    std::string why;
    const std::optional<toml::table> doc = parse_value(text, why);
    if (!doc && looks_like_toml(text)) {
      report(str(spec->full_name(), ": the value ", text, " is not valid TOML: ", why));
      return;
    }
    const toml::node* node = doc ? doc->get("v") : nullptr;
    const bool wants_text = spec->type == KeyType::kString || spec->type == KeyType::kStringList;
    // For a string key any text is the string itself: `dataset.split=100` is "100".
    const toml::value<std::string> raw{std::string(text)};
    if (node == nullptr || (wants_text && !node->is_string() && !node->is_array())) node = &raw;
    std::string error;
    std::optional<Value> converted = convert_node(*node, *spec, error);
    if (!converted) {
      report(str(spec->full_name(), ": ", error));
      return;
    }
    value = std::move(*converted);
  }
  assign(recipe, *spec, value, Source{origin, 0});
}

}  // namespace

void apply_override(Recipe& recipe, const std::string& assignment, const std::string& origin) {
  Problems problems;
  apply_one(recipe, assignment, origin, 0, problems);
  problems.throw_if_any();
}

void apply_overrides(Recipe& recipe, const std::vector<std::string>& assignments) {
  Problems problems;
  for (size_t i = 0; i < assignments.size(); ++i) {
    apply_one(recipe, assignments[i], str("override '", assignments[i], "'"), static_cast<int64_t>(i),
              problems);
  }
  problems.throw_if_any();
}

}  // namespace mpt::config
