#include <cstring>
#include <limits>

#include "test_ops_util.h"

namespace mpt::test {
namespace {

TEST(OpsElementwise, FillCopyAddScale) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> a = random_vector(1000, 1), b = random_vector(1000, 2), out(1000), y = a;
  ops->fill(view(out, {10, 100}), 3.5f);
  for (float v : out) ASSERT_EQ(v, 3.5f);
  ops->copy(view(out, {1000}), view(a, {10, 100}));
  EXPECT_EQ(out, a);
  ops->add(view(out, {1000}), view(a, {1000}), view(b, {1000}));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(out[i], a[i] + b[i]);
  ops->add(view(a, {1000}), view(a, {1000}), view(b, {1000}));  // out aliases a
  EXPECT_EQ(a, out);
  ops->add_inplace(view(y, {1000}), view(b, {1000}));
  EXPECT_EQ(y, out);
  ops->scale(view(y, {1000}), -2.0f);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], -2.0f * out[i]);
}

TEST(OpsElementwise, SumSquaresAndDotMatchDoubleAndIgnoreThreadCount) {
  const int64_t n = 200003;  // several 64K chunks and a ragged tail
  std::vector<float> a = random_vector(n, 3), b = random_vector(n, 4);
  double ss = 0, ab = 0;
  for (int64_t i = 0; i < n; ++i) {
    ss += static_cast<double>(a[i]) * a[i];
    ab += static_cast<double>(a[i]) * b[i];
  }
  auto one = backend::make_cpu_ops(1), two = backend::make_cpu_ops(2);
  const double ss1 = one->sum_squares(view(a, {n})), ss2 = two->sum_squares(view(a, {n}));
  const double ab1 = one->dot(view(a, {n}), view(b, {n})), ab2 = two->dot(view(a, {n}), view(b, {n}));
  EXPECT_NEAR(ss1, ss, 1e-10 * ss);
  EXPECT_NEAR(ab1, ab, 1e-10 * std::fabs(ss));
  EXPECT_EQ(std::memcmp(&ss1, &ss2, sizeof(double)), 0);
  EXPECT_EQ(std::memcmp(&ab1, &ab2, sizeof(double)), 0);
  EXPECT_EQ(two->sum_squares(Tensor::f32(nullptr, {0})), 0.0);
}

TEST(OpsElementwise, AllFinite) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(5000, 5);
  EXPECT_TRUE(ops->all_finite(view(x, {5000})));
  x[4321] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(ops->all_finite(view(x, {5000})));
  x[4321] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ops->all_finite(view(x, {5000})));
  x[4321] = std::numeric_limits<float>::max();
  EXPECT_TRUE(ops->all_finite(view(x, {5000})));
}

TEST(OpsElementwise, RejectsMismatchedArguments) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> a(6), b(7);
  std::vector<int32_t> ids(6);
  expect_invalid([&] { ops->copy(view(a, {6}), view(b, {7})); });
  expect_invalid([&] { ops->add(view(a, {6}), view(a, {6}), view(b, {7})); });
  expect_invalid([&] { ops->fill(view(ids, {6}), 1.0f); });
  expect_invalid([&] { ops->dot(view(a, {6}), view(b, {7})); });
}

}  // namespace
}  // namespace mpt::test
