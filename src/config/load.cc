// Reading a recipe: TOML text -> Recipe, every key checked against the key table and
// every problem (unknown section or key, wrong type) reported together with its line.
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/convert_internal.h"
#include "config/recipe.h"
#include "config/schema_internal.h"
#include "config/suggest_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

// The line a key was written on. Implicitly created tables (`[a.b]` creates `a`) carry no
// source of their own, so fall back to their first child.
int64_t line_of(const toml::key& key, const toml::node& node) {
  if (key.source().begin.line > 0) return key.source().begin.line;
  if (node.source().begin.line > 0) return node.source().begin.line;
  if (const toml::table* t = node.as_table()) {
    int64_t first = 0;
    for (auto&& [k, child] : *t) {
      const int64_t l = line_of(k, child);
      if (l > 0 && (first == 0 || l < first)) first = l;
    }
    return first;
  }
  return 0;
}

class Loader {
 public:
  Loader(Recipe& recipe, Problems& problems) : recipe_(recipe), problems_(problems) {}

  void top_level(const toml::table& root) {
    for (auto&& [key, node] : root) {
      const std::string name(key.str());
      const int64_t line = line_of(key, node);
      const toml::table* table = node.as_table();
      if (table && is_section(name)) {
        section(name, *table);
      } else if (const KeySpec* spec = find_key(name)) {
        set(*spec, node, line);
      } else if (table) {
        report(line, str("unknown section '", name, "'", suggest_section(name)));
      } else if (is_section(name)) {
        report(line, str(name, ": expected a table [", name, "], got ", describe_node(node)));
      } else {
        report(line, str("unknown key '", name, "'", suggest_key(name)));
      }
    }
  }

 private:
  void section(const std::string& section, const toml::table& table) {
    for (auto&& [key, node] : table) {
      const std::string full = section + "." + std::string(key.str());
      const int64_t line = line_of(key, node);
      if (const KeySpec* spec = find_key(full)) {
        set(*spec, node, line);
      } else {
        report(line, str("unknown key '", full, "'", suggest_key(full)));
      }
    }
  }

  void set(const KeySpec& spec, const toml::node& node, int64_t line) {
    std::string error;
    std::optional<Value> value = convert_node(node, spec, error);
    if (!value) {
      // A top-level key that shares its name with a section takes either form.
      if (spec.section.empty() && is_section(spec.name))
        error = str("expected ", type_phrase(spec.type), " or a table, got ", describe_node(node));
      report(line, str(spec.full_name(), ": ", error));
      return;
    }
    assign(recipe_, spec, *value, Source{recipe_.path, line});
  }

  void report(int64_t line, const std::string& text) {
    problems_.add(line, str(Source{recipe_.path, line}.where(), ": ", text));
  }

  Recipe& recipe_;
  Problems& problems_;
};

}  // namespace

Recipe load_recipe_string(const std::string& toml, const std::string& name) {
  Recipe recipe;
  recipe.path = name;
  toml::table root;
  try {
    root = toml::parse(std::string_view(toml), std::string_view(name));
  } catch (const toml::parse_error& e) {
    const toml::source_position& at = e.source().begin;
    fail(Status::kInvalidConfig, name, ":", at.line, ":", at.column, ": syntax error: ", e.description());
  }
  Problems problems;
  Loader(recipe, problems).top_level(root);
  problems.sort();  // toml++ tables iterate in key order; report in file order
  problems.throw_if_any();
  return recipe;
}

Recipe load_recipe_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    fail(Status::kIoError, "cannot read recipe file '", path, "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(Status::kIoError, "cannot open recipe file '", path, "': ", std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(Status::kIoError, "cannot read recipe file '", path, "'");
  return load_recipe_string(text.str(), path);
}

}  // namespace mpt::config
