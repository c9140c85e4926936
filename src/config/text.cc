// Text forms of recipe values (shared by messages and to_toml) and the problem list.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string>

#include "config/schema_internal.h"
#include "core/error.h"

namespace mpt::config {

std::string Source::where() const {
  if (line > 0) return str(file, ":", line);
  return file;
}

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v < 0 ? "-inf" : "inf";
  if (v == 0) return std::signbit(v) ? "-0" : "0";
  // The fewest significant digits that read back as the same double. to_chars ignores
  // the C locale, so the decimal point is always '.'.
  char buf[64];
  int digits = 1;
  std::to_chars_result res;
  for (; digits <= 17; ++digits) {
    res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific, digits - 1);
    double back = 0;
    std::from_chars(buf, res.ptr, back);
    if (back == v) break;
  }
  // The decimal exponent as printed, after rounding to `digits` ("9.9e+04" -> 4).
  const std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
  const char* exponent_text = sci.data() + sci.find('e') + 1;
  if (*exponent_text == '+') ++exponent_text;
  int exponent = 0;
  std::from_chars(exponent_text, sci.data() + sci.size(), exponent);
  digits = std::min(digits, 17);
  if (exponent >= -5 && exponent < 16) {
    // Plain decimals for everyday magnitudes: 10000, 0.0003.
    res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed, std::max(0, digits - 1 - exponent));
  } else {
    res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific, digits - 1);
  }
  return std::string(buf, res.ptr);
}

std::string format_double(double v) {
  std::string s = format_number(v);
  if (std::isnan(v) || std::isinf(v)) return s;
  // Keep it a TOML float: "1" would load back as an integer.
  if (s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

std::string toml_quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;  // UTF-8 bytes pass through unchanged
        }
    }
  }
  out += '"';
  return out;
}

std::string render(const Value& v) {
  struct Visitor {
    std::string operator()(std::monostate) const { return "(unset)"; }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return format_double(d); }
    std::string operator()(const std::string& s) const { return toml_quote(s); }
    std::string operator()(const std::vector<std::string>& list) const {
      std::string out = "[";
      for (size_t i = 0; i < list.size(); ++i) {
        if (i) out += ", ";
        out += toml_quote(list[i]);
      }
      return out + "]";
    }
    std::string operator()(const std::vector<int64_t>& list) const {
      std::string out = "[";
      for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + std::to_string(list[i]);
      return out + "]";
    }
    std::string operator()(const std::vector<BlendItem>& blend) const {
      std::string out = "[";
      for (size_t i = 0; i < blend.size(); ++i) {
        if (i) out += ", ";
        out += '[';
        out += toml_quote(blend[i].prefix);
        out += ", ";
        out += format_double(blend[i].weight);
        out += ']';
      }
      return out + "]";
    }
  };
  return std::visit(Visitor{}, v);
}

const char* type_phrase(KeyType type) {
  switch (type) {
    case KeyType::kBool: return "a boolean";
    case KeyType::kInt: return "an integer";
    case KeyType::kFloat: return "a number";
    case KeyType::kString: return "a string";
    case KeyType::kStringList: return "a string or a list of strings";
    case KeyType::kBlend: return "a list of [prefix, weight] pairs";
    case KeyType::kIntList: return "an integer or a list of integers";
  }
  return "a value";
}

void Problems::add(int64_t order, std::string line) { items_.emplace_back(order, std::move(line)); }

void Problems::sort() {
  std::stable_sort(items_.begin(), items_.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
}

std::string Problems::joined() const {
  std::string out;
  for (size_t i = 0; i < items_.size(); ++i) {
    if (i) out += '\n';
    out += items_[i].second;
  }
  return out;
}

void Problems::throw_if_any() const {
  if (!items_.empty()) throw Error(Status::kInvalidConfig, joined());
}

}  // namespace mpt::config
