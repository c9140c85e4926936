// Type checks of TOML values against the key table.
#include <cmath>
#include <sstream>

#include "config/convert_internal.h"
#include "core/error.h"

namespace mpt::config {
namespace {

std::string node_text(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return toml_quote(node.as_string()->get());
    case toml::node_type::integer: return std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point: return format_double(node.as_floating_point()->get());
    case toml::node_type::boolean: return node.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array: {
      std::string out = "[";
      const toml::array& arr = *node.as_array();
      for (size_t i = 0; i < arr.size(); ++i) {
        if (i) out += ", ";
        out += node_text(arr[i]);
      }
      return out + "]";
    }
    case toml::node_type::table: return "{...}";
    default: {
      std::ostringstream os;
      if (auto* d = node.as_date()) os << *d;
      else if (auto* t = node.as_time()) os << *t;
      else if (auto* dt = node.as_date_time()) os << *dt;
      return os.str();
    }
  }
}

const char* type_word(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "float";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::array: return "array";
    case toml::node_type::table: return "table";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "value";
  }
}

}  // namespace

std::string describe_node(const toml::node& node) {
  if (node.is_table()) return "table";
  return str(type_word(node), " ", node_text(node));
}

std::optional<Value> convert_node(const toml::node& node, const KeySpec& spec, std::string& error) {
  switch (spec.type) {
    case KeyType::kBool:
      if (auto* b = node.as_boolean()) return Value(b->get());
      break;
    case KeyType::kInt:
      if (auto* i = node.as_integer()) return Value(i->get());
      if (auto* f = node.as_floating_point(); f && std::isfinite(f->get()) && std::trunc(f->get()) == f->get()) {
        error = str("expected an integer, got ", describe_node(node), " (write it without a decimal point)");
        return std::nullopt;
      }
      break;
    case KeyType::kFloat:
      if (auto* f = node.as_floating_point()) return Value(f->get());
      if (auto* i = node.as_integer()) return Value(static_cast<double>(i->get()));
      break;
    case KeyType::kString:
      if (auto* s = node.as_string()) return Value(s->get());
      break;
    case KeyType::kStringList: {
      if (auto* s = node.as_string()) return Value(std::vector<std::string>{s->get()});
      if (auto* arr = node.as_array()) {
        std::vector<std::string> list;
        for (const toml::node& element : *arr) {
          if (!element.is_string()) {
            error = str("expected ", type_phrase(spec.type), ", got an array holding ", describe_node(element));
            return std::nullopt;
          }
          list.push_back(element.as_string()->get());
        }
        return Value(std::move(list));
      }
      break;
    }
    case KeyType::kIntList: {
      if (auto* i = node.as_integer()) return Value(std::vector<int64_t>{i->get()});
      const toml::array* arr = node.as_array();
      if (arr == nullptr) break;
      std::vector<int64_t> list;
      for (const toml::node& element : *arr) {
        if (!element.is_integer()) {
          error = str("expected ", type_phrase(spec.type), ", got an array holding ", describe_node(element));
          return std::nullopt;
        }
        list.push_back(element.as_integer()->get());
      }
      return Value(std::move(list));
    }
    case KeyType::kBlend: {
      const toml::array* arr = node.as_array();
      if (arr == nullptr) break;
      std::vector<BlendItem> blend;
      for (const toml::node& element : *arr) {
        const toml::array* pair = element.as_array();
        const bool ok = pair && pair->size() == 2 && (*pair)[0].is_string() &&
                        ((*pair)[1].is_integer() || (*pair)[1].is_floating_point());
        if (!ok) {
          error = str("expected ", type_phrase(spec.type), " such as [[\"data/a\", 0.3], [\"data/b\", 0.7]], got an element ",
                      describe_node(element));
          return std::nullopt;
        }
        BlendItem item;
        item.prefix = (*pair)[0].as_string()->get();
        item.weight = (*pair)[1].is_integer() ? static_cast<double>((*pair)[1].as_integer()->get())
                                              : (*pair)[1].as_floating_point()->get();
        blend.push_back(std::move(item));
      }
      return Value(std::move(blend));
    }
  }
  error = str("expected ", type_phrase(spec.type), ", got ", describe_node(node));
  return std::nullopt;
}

}  // namespace mpt::config
