#include "data/split.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

#include "core/error.h"

namespace mpt::data {

const char* split_name(Split split) {
  switch (split) {
    case Split::kTrain: return "train";
    case Split::kValid: return "valid";
    case Split::kTest: return "test";
  }
  return "unknown";
}

std::array<double, 3> parse_split_weights(const std::string& weights) {
  auto bad = [&](const std::string& why) {
    fail(Status::kInvalidConfig, "dataset.split '", weights, "': ", why,
         " (expected up to three non-negative weights such as \"969,30,1\")");
  };
  char sep = weights.find('/') != std::string::npos ? '/' : ',';
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = weights.find(sep, start);
    parts.push_back(weights.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  if (parts.size() > 3) bad(str(parts.size(), " weights given"));
  std::array<double, 3> w{0, 0, 0};
  double sum = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    size_t b = p.find_first_not_of(" \t"), e = p.find_last_not_of(" \t");
    if (b == std::string::npos) bad(str("weight ", i + 1, " is empty"));
    std::string token = p.substr(b, e - b + 1);
    char* stop = nullptr;
    double v = std::strtod(token.c_str(), &stop);
    if (stop != token.c_str() + token.size() || !std::isfinite(v)) bad(str("weight '", token, "' is not a number"));
    if (v < 0) bad(str("weight '", token, "' is negative"));
    w[i] = v;
    sum += v;
  }
  if (!(sum > 0)) bad("weights sum to zero");
  for (double& v : w) v /= sum;
  return w;
}

std::array<int64_t, 4> split_boundaries(const std::array<double, 3>& weights, int64_t size) {
  MPT_CHECK(size >= 0, Status::kInvalidArgument, "split_boundaries: negative size ", size);
  std::array<int64_t, 4> b{0, 0, 0, 0};
  for (int i = 0; i < 3; ++i) b[i + 1] = b[i] + std::llround(weights[i] * static_cast<double>(size));
  // Rounding can overshoot or fall short by a unit; Megatron moves every boundary by the
  // difference, and clamping keeps them ordered within [0, size].
  int64_t diff = b[3] - size;
  for (int i = 1; i < 4; ++i) b[i] = std::min(std::max<int64_t>(b[i] - diff, b[i - 1]), size);
  b[3] = size;
  return b;
}

}  // namespace mpt::data
