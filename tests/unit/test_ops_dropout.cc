#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kR = 64, kC = 50;

TEST(OpsDropout, KeepsAboutOneMinusPAndScales) {
  auto ops = backend::make_cpu_ops(2);
  const float p = 0.3f;
  std::vector<float> x = random_vector(kR * kC, 1), out(kR * kC);
  for (float& v : x) v = std::fabs(v) + 0.1f;  // never zero, so zeros mark drops
  ops->dropout_fwd(view(out, {kR, kC}), view(x, {kR, kC}), p, 42, 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < kR * kC; ++i) {
    const bool keep = dropout_keep(42, static_cast<uint64_t>(i), p);
    EXPECT_EQ(out[i] != 0.0f, keep);
    if (keep) {
      ++kept;
      EXPECT_FLOAT_EQ(out[i], x[i] / (1.0f - p));
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / (kR * kC), 1.0 - p, 0.03);
}

// A slice of rows with its row_offset draws the same mask as the whole tensor.
TEST(OpsDropout, RowOffsetSelectsTheSameMask) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kR * kC, 2), full(kR * kC);
  ops->dropout_fwd(view(full, {kR, kC}), view(x, {kR, kC}), 0.5f, 7, 0);
  std::vector<float> part_in(x.begin() + 10 * kC, x.begin() + 20 * kC), part(10 * kC);
  ops->dropout_fwd(view(part, {10, kC}), view(part_in, {10, kC}), 0.5f, 7, 10);
  for (int64_t i = 0; i < 10 * kC; ++i) EXPECT_EQ(part[i], full[10 * kC + i]);
}

TEST(OpsDropout, BackwardIsTheAdjointAndAliasingWorks) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kR * kC, 3), dy = random_vector(kR * kC, 4), y(kR * kC), dx(kR * kC);
  ops->dropout_fwd(view(y, {kR, kC}), view(x, {kR, kC}), 0.2f, 9, 3);
  ops->dropout_bwd(view(dx, {kR, kC}), view(dy, {kR, kC}), 0.2f, 9, 3);
  EXPECT_NEAR(inner(dy, y), inner(dx, x), 1e-4);
  std::vector<float> in_place = dy;
  ops->dropout_bwd(view(in_place, {kR, kC}), view(in_place, {kR, kC}), 0.2f, 9, 3);
  EXPECT_EQ(in_place, dx);
  auto loss = [&] {
    ops->dropout_fwd(view(y, {kR, kC}), view(x, {kR, kC}), 0.2f, 9, 3);
    return inner(dy, y);
  };
  std::vector<float> xs(x.begin(), x.begin() + 200), dxs(dx.begin(), dx.begin() + 200);
  // finite differences on the first rows suffice: the op is linear
  auto loss_rows = [&] {
    std::copy(xs.begin(), xs.end(), x.begin());
    return loss();
  };
  expect_gradient("dropout dx", xs, dxs, loss_rows);
}

TEST(OpsDropout, ZeroProbabilityCopiesAndBadProbabilityIsRejected) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kR * kC, 5), y(kR * kC);
  ops->dropout_fwd(view(y, {kR, kC}), view(x, {kR, kC}), 0.0f, 1, 0);
  EXPECT_EQ(x, y);
  expect_invalid([&] { ops->dropout_fwd(view(y, {kR, kC}), view(x, {kR, kC}), 1.0f, 1, 0); });
}

}  // namespace
}  // namespace mpt::test
