// finalize(): every rule at once, then the derived sizes. The per-key rules (required,
// ranges, allowed words) come from the key table; cross-key rules live in check_*.cc.
#include <string>

#include "config/finalize_internal.h"
#include "config/recipe.h"
#include "config/schema_internal.h"
#include "config/suggest_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

std::string range_text(const KeySpec& k) {
  if (k.lo && k.hi) {
    return str("in ", k.lo_open ? "(" : "[", format_number(*k.lo), ", ", format_number(*k.hi),
               k.hi_open ? ")" : "]");
  }
  if (k.lo) return str(k.lo_open ? "> " : ">= ", format_number(*k.lo));
  return str(k.hi_open ? "< " : "<= ", format_number(*k.hi));
}

bool in_range(const KeySpec& k, double x) {
  if (k.lo && (k.lo_open ? !(x > *k.lo) : !(x >= *k.lo))) return false;
  if (k.hi && (k.hi_open ? !(x < *k.hi) : !(x <= *k.hi))) return false;
  return true;
}

std::string choice_text(const KeySpec& k, const std::string& got) {
  std::string words;
  std::string close;
  for (std::string_view w : k.choices) {
    if (!words.empty()) words += ", ";
    words += toml_quote(w);
    if (close.empty() && edit_distance(got, w) <= 2) close = str(" (did you mean ", toml_quote(w), "?)");
  }
  return str("must be one of ", words, "; got ", toml_quote(got), close);
}

}  // namespace

std::string Checker::where(std::string_view key) const {
  auto it = r.sources.find(std::string(key));
  if (it != r.sources.end()) return it->second.where();
  return r.path.empty() ? "<recipe>" : r.path;
}

void Checker::fail(std::string_view key, const std::string& rule) {
  problems.add(static_cast<int64_t>(problems.size()), str(where(key), ": ", key, ": ", rule));
}

int64_t padded_vocab_size(int64_t vocab_size, int64_t divisible_by, int64_t tensor_parallel_size) {
  const int64_t multiple = divisible_by * tensor_parallel_size;
  if (vocab_size <= 0 || multiple <= 0) return vocab_size;
  return (vocab_size + multiple - 1) / multiple * multiple;
}

void check_key_table(Checker& c) {
  for (const KeySpec& k : key_table()) {
    const std::string key = k.full_name();
    const Value v = k.get(c.r);
    const bool unset = std::holds_alternative<std::monostate>(v);
    if (k.required && (unset || (!c.r.sources.count(key) && v == k.default_value()))) {
      c.fail(key, "is required but not set");
      continue;
    }
    if (unset) continue;
    if (k.lo || k.hi) {
      double x = 0;
      if (auto* i = std::get_if<int64_t>(&v)) x = static_cast<double>(*i);
      if (auto* f = std::get_if<double>(&v)) x = *f;
      if (auto* list = std::get_if<std::vector<int64_t>>(&v)) {
        for (int64_t e : *list)
          if (!in_range(k, static_cast<double>(e)))
            c.fail(key, str("every element must be ", range_text(k), ", got ", e, " in ", render(v)));
      } else if (!in_range(k, x)) {
        c.fail(key, str("must be ", range_text(k), ", got ", render(v)));
      }
    }
    if (!k.choices.empty() && v != k.default_value()) {
      std::vector<std::string> words;
      if (auto* s = std::get_if<std::string>(&v)) words.push_back(*s);
      if (auto* list = std::get_if<std::vector<std::string>>(&v)) words = *list;
      for (const std::string& w : words) {
        bool known = false;
        for (std::string_view choice : k.choices) known = known || choice == w;
        if (!known) c.fail(key, choice_text(k, w));
      }
    }
  }
}

void finalize(Recipe& recipe, int64_t world_size) {
  recipe.finalized = false;
  Checker c(recipe, world_size);
  check_key_table(c);
  check_model(c);
  check_layout(c);
  check_run(c);
  check_capabilities(c);
  // The sizes are kept even when rules fail, so tools can show what was derived.
  recipe.derived = c.d;
  c.problems.throw_if_any();
  recipe.finalized = true;
}

}  // namespace mpt::config
