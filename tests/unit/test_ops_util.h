// Helpers for the CPU op tests: random inputs, tensor views over vectors, and a central
// finite-difference gradient check on a scalar loss.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/ops.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace mpt::test {

inline std::vector<float> random_vector(int64_t n, uint64_t key, float scale = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[i] = scale * normal_at(key, static_cast<uint64_t>(i));
  return v;
}

inline Tensor view(std::vector<float>& v, std::initializer_list<int64_t> dims) { return Tensor::f32(v.data(), dims); }
inline Tensor view(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
  return Tensor::i32(v.data(), dims);
}

inline double inner(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// Compares `analytic` with central differences of loss() while x[i] is nudged by +-eps.
// Passes when |fd - analytic| <= rtol * |analytic| + atol, atol = rtol/10 of the largest
// gradient entry (float noise in the loss sets that floor).
inline void expect_gradient(const std::string& what, std::vector<float>& x, const std::vector<float>& analytic,
                            const std::function<double()>& loss, float eps = 1e-3f, double rtol = 1e-2) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  double gmax = 0;
  for (float g : analytic) gmax = std::max(gmax, static_cast<double>(std::fabs(g)));
  const double atol = std::max(1e-4, 0.1 * rtol * gmax);
  int failures = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float saved = x[i];
    x[i] = saved + eps;
    const float up = x[i];
    const double l_up = loss();
    x[i] = saved - eps;
    const float down = x[i];
    const double l_down = loss();
    x[i] = saved;
    const double fd = (l_up - l_down) / (static_cast<double>(up) - down);
    const double err = std::fabs(fd - analytic[i]);
    if (err > rtol * std::fabs(analytic[i]) + atol && ++failures <= 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " vs finite difference " << fd
                    << " (|grad|max " << gmax << ")";
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << x.size() << " entries differ";
}

// Runs f and expects an mpt::Error with kInvalidArgument.
template <typename F>
void expect_invalid(F f) {
  try {
    f();
    ADD_FAILURE() << "expected mpt::Error(kInvalidArgument)";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
  }
}

}  // namespace mpt::test
