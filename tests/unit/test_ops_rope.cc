#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kT = 6, kHeads = 3, kDim = 12, kRot = 8;

std::vector<int32_t> positions() { return {0, 1, 7, 100, 4095, 31}; }

TEST(OpsRope, MatchesRotateHalfDefinition) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kHeads * kDim, 1), y = x;
  std::vector<int32_t> pos = positions();
  ops->rope(view(y, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, kRot, 10000.0f, false);
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t h = 0; h < kHeads; ++h) {
      const float* in = &x[(t * kHeads + h) * kDim];
      const float* out = &y[(t * kHeads + h) * kDim];
      for (int64_t i = 0; i < kRot / 2; ++i) {
        const double angle = pos[t] * std::pow(10000.0, -2.0 * i / kRot);
        const double a = in[i], b = in[i + kRot / 2];
        EXPECT_NEAR(out[i], a * std::cos(angle) - b * std::sin(angle), 1e-5);
        EXPECT_NEAR(out[i + kRot / 2], b * std::cos(angle) + a * std::sin(angle), 1e-5);
      }
      for (int64_t i = kRot; i < kDim; ++i) EXPECT_EQ(out[i], in[i]) << "channel past rotary_dim changed";
    }
}

TEST(OpsRope, InverseUndoesForwardAndPreservesNorm) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kHeads * kDim, 2), y = x;
  std::vector<int32_t> pos = positions();
  ops->rope(view(y, {kT, kHeads * kDim}), view(pos, {kT}), kHeads, kDim, kRot, 10000.0f, false);
  for (int64_t row = 0; row < kT * kHeads; ++row) {
    double nx = 0, ny = 0;
    for (int64_t i = 0; i < kDim; ++i) {
      nx += static_cast<double>(x[row * kDim + i]) * x[row * kDim + i];
      ny += static_cast<double>(y[row * kDim + i]) * y[row * kDim + i];
    }
    EXPECT_NEAR(ny, nx, 1e-5 * nx);
  }
  ops->rope(view(y, {kT, kHeads * kDim}), view(pos, {kT}), kHeads, kDim, kRot, 10000.0f, true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5);
}

// The backward is the transpose: <dy, R x> == <R^T dy, x>.
TEST(OpsRope, InverseIsTheTranspose) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kHeads * kDim, 3), dy = random_vector(kT * kHeads * kDim, 4);
  std::vector<float> rx = x, rtdy = dy;
  std::vector<int32_t> pos = positions();
  ops->rope(view(rx, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, kRot, 500.0f, false);
  ops->rope(view(rtdy, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, kRot, 500.0f, true);
  const double lhs = inner(dy, rx), rhs = inner(rtdy, x);
  EXPECT_NEAR(lhs, rhs, 1e-5 * (std::fabs(lhs) + 1));
  // and R^T is the gradient of <dy, R x> with respect to x
  std::vector<float> xv = x;
  auto loss = [&] {
    std::vector<float> y = xv;
    ops->rope(view(y, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, kRot, 500.0f, false);
    return inner(dy, y);
  };
  expect_gradient("rope dx", xv, rtdy, loss);
}

TEST(OpsRope, RejectsBadDims) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> x(kT * kHeads * kDim);
  std::vector<int32_t> pos = positions();
  expect_invalid([&] { ops->rope(view(x, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, 7, 1e4f, false); });
  expect_invalid([&] { ops->rope(view(x, {kT, kHeads, kDim}), view(pos, {kT}), kHeads, kDim, 14, 1e4f, false); });
  expect_invalid([&] { ops->rope(view(x, {kT, kHeads, kDim}), view(pos, {kT - 1}), kHeads, kDim, 8, 1e4f, false); });
}

}  // namespace
}  // namespace mpt::test
