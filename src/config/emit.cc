// to_toml(): the whole recipe, every key with its value (defaults included), in the key
// table's order, so the text loads back to the same configuration.
#include <algorithm>
#include <sstream>
#include <string>
#include <vector>

#include "config/recipe.h"
#include "config/schema_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

// Comments end at a newline; keep a path with odd characters on one line.
std::string one_line(std::string s) {
  for (char& ch : s) {
    if (ch == '\n' || ch == '\r') ch = ' ';
  }
  return s;
}

void emit_derived(std::ostringstream& out, const Derived& d) {
  out << "#\n# derived by finalize() for world size " << d.world_size << ":\n";
  const auto line = [&](const char* name, const std::string& value) {
    out << "#   " << name << " = " << value << "\n";
  };
  line("data_parallel_size", std::to_string(d.data_parallel_size));
  line("expert_tensor_parallel_size", std::to_string(d.expert_tensor_parallel_size));
  line("expert_data_parallel_size", std::to_string(d.expert_data_parallel_size));
  line("ffn_hidden_size", std::to_string(d.ffn_hidden_size));
  line("num_query_groups", std::to_string(d.num_query_groups));
  line("kv_channels", std::to_string(d.kv_channels));
  line("padded_vocab_size", std::to_string(d.padded_vocab_size));
  line("num_microbatches", std::to_string(d.num_microbatches));
  line("lr_decay_iters", std::to_string(d.lr_decay_iters));
  line("lr_warmup_iters", std::to_string(d.lr_warmup_iters));
  line("min_lr", format_double(d.min_lr));
  line("dataset_source", toml_quote(d.dataset_source));
}

void emit_key(std::ostringstream& out, const KeySpec& k, const Recipe& r, const char* prefix) {
  const Value v = k.get(r);
  if (std::holds_alternative<std::monostate>(v)) {
    out << "# " << k.name << " = (unset)\n";
  } else {
    out << prefix << k.name << " = " << render(v) << "\n";
  }
}

}  // namespace

std::string to_toml(const Recipe& recipe) {
  std::ostringstream out;
  out << "# mptrain recipe";
  if (!recipe.path.empty()) out << ", resolved from " << one_line(recipe.path);
  out << "\n";
  if (recipe.finalized) emit_derived(out, recipe.derived);

  // Top-level keys come before every table in TOML.
  std::vector<std::string> replaced_sections;
  for (const KeySpec& k : key_table()) {
    if (!k.section.empty()) continue;
    out << "\n";
    emit_key(out, k, recipe, "");
    if (!std::holds_alternative<std::monostate>(k.get(recipe))) replaced_sections.emplace_back(k.name);
  }

  for (const std::string& section : section_names()) {
    const bool replaced =
        std::find(replaced_sections.begin(), replaced_sections.end(), section) != replaced_sections.end();
    out << "\n";
    // A preset written at top level stands for the whole table; show it, commented out.
    if (replaced) out << "# [" << section << "] is given by the preset above\n# ";
    out << "[" << section << "]\n";
    for (const KeySpec& k : key_table()) {
      if (k.section == section) emit_key(out, k, recipe, replaced ? "# " : "");
    }
  }
  return out.str();
}

}  // namespace mpt::config
