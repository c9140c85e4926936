// Did-you-mean over the key table: small edit distances, or the same key name in the
// section where it actually lives.
#include <algorithm>
#include <cctype>
#include <limits>
#include <vector>

#include "config/schema_internal.h"
#include "config/suggest_internal.h"

namespace mpt::config {
namespace {

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool same_ignoring_case(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

// Close enough to be a typo: about one edit per three characters, at most three.
size_t tolerance(std::string_view typed) {
  return std::clamp<size_t>(typed.size() / 3, 1, 3);
}

std::string phrase(const std::vector<std::string>& names) {
  if (names.empty()) return "";
  std::string out = " (did you mean ";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += (i + 1 == names.size()) ? " or " : ", ";
    out += "'" + names[i] + "'";
  }
  return out + "?)";
}

}  // namespace

size_t edit_distance(std::string_view a, std::string_view b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i) {
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

std::string suggest_key(std::string_view unknown) {
  const size_t dot = unknown.rfind('.');
  const std::string_view section = dot == std::string_view::npos ? std::string_view() : unknown.substr(0, dot);
  const std::string_view name = dot == std::string_view::npos ? unknown : unknown.substr(dot + 1);

  std::vector<std::string> same_name;
  for (const KeySpec& k : key_table()) {
    if (same_ignoring_case(k.name, name) && k.full_name() != unknown) same_name.push_back(k.full_name());
  }
  if (!same_name.empty()) {
    if (same_name.size() > 3) same_name.resize(3);
    return phrase(same_name);
  }

  size_t best = std::numeric_limits<size_t>::max();
  std::vector<std::string> closest;
  for (const KeySpec& k : key_table()) {
    const std::string full = k.full_name();
    const size_t by_full = edit_distance(unknown, full);
    const size_t by_name = edit_distance(name, k.name) + (same_ignoring_case(k.section, section) ? 0 : 1);
    const size_t score = std::min(by_full, by_name);
    if (score > tolerance(name)) continue;
    if (score < best) {
      best = score;
      closest.clear();
    }
    if (score == best && closest.size() < 3) closest.push_back(full);
  }
  return phrase(closest);
}

std::string suggest_section(std::string_view unknown) {
  size_t best = std::numeric_limits<size_t>::max();
  std::vector<std::string> closest;
  for (const std::string& s : section_names()) {
    size_t score = edit_distance(unknown, s);
    // An abbreviation that starts a real section name, such as [optim].
    if (unknown.size() >= 3 && s.size() > unknown.size() &&
        same_ignoring_case(std::string_view(s).substr(0, unknown.size()), unknown))
      score = 1;
    if (score > tolerance(unknown)) continue;
    if (score < best) {
      best = score;
      closest.clear();
    }
    if (score == best) closest.push_back(s);
  }
  return phrase(closest);
}

}  // namespace mpt::config
