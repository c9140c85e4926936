#include <limits>

#include "backend/cpu/blas.h"
#include "test_ops_util.h"

namespace mpt::test {
namespace {

// c = alpha * op(a) op(b) + beta * c by definition, in double.
std::vector<float> naive_matmul(const std::vector<float>& a, const std::vector<float>& b, std::vector<float> c,
                                int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t p = 0; p < k; ++p)
        s += static_cast<double>(ta ? a[p * m + i] : a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = static_cast<float>(alpha * s + beta * c[i * n + j]);
    }
  return c;
}

void check_matmul(int64_t m, int64_t n, int64_t k) {
  auto ops = backend::make_cpu_ops(2);
  for (int combo = 0; combo < 4; ++combo) {
    const bool ta = combo & 1, tb = combo & 2;
    std::vector<float> a = random_vector(m * k, 10 + combo), b = random_vector(k * n, 20 + combo),
                       c = random_vector(m * n, 30 + combo);
    const std::vector<float> want = naive_matmul(a, b, c, m, n, k, ta, tb, 0.7f, 0.3f);
    Tensor ta_view = ta ? view(a, {k, m}) : view(a, {m, k});
    Tensor tb_view = tb ? view(b, {n, k}) : view(b, {k, n});
    ops->matmul(view(c, {m, n}), ta_view, tb_view, ta, tb, 0.7f, 0.3f);
    double worst = 0;
    for (size_t i = 0; i < c.size(); ++i) worst = std::max(worst, static_cast<double>(std::fabs(c[i] - want[i])));
    EXPECT_LT(worst, 1e-4 * std::sqrt(static_cast<double>(k))) << "m " << m << " n " << n << " k " << k
                                                                  << " trans_a " << ta << " trans_b " << tb;
  }
}

TEST(OpsMatmul, AllTransposeCombosMatchNaive) { check_matmul(7, 5, 9); }

// Large enough that the product is split over threads, by rows and then by columns.
TEST(OpsMatmul, SplitProductsMatchNaive) {
  check_matmul(160, 97, 300);
  check_matmul(90, 200, 257);
}

TEST(OpsMatmul, BetaZeroOverwritesAndEmptyInnerDimensionScales) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> a = random_vector(12, 1), b = random_vector(12, 2);
  std::vector<float> c(9, std::numeric_limits<float>::quiet_NaN());
  ops->matmul(view(c, {3, 3}), view(a, {3, 4}), view(b, {4, 3}), false, false, 1.0f, 0.0f);
  EXPECT_TRUE(ops->all_finite(view(c, {9})));
  std::vector<float> c2(6, 2.0f);
  ops->matmul(view(c2, {2, 3}), Tensor::f32(nullptr, {2, 0}), Tensor::f32(nullptr, {0, 3}), false, false, 1.0f, 0.5f);
  for (float v : c2) EXPECT_EQ(v, 1.0f);
}

TEST(OpsMatmul, RejectsMismatchedShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> a(12), b(12), c(9);
  expect_invalid([&] { ops->matmul(view(c, {3, 3}), view(a, {3, 4}), view(b, {3, 4}), false, false, 1, 0); });
  expect_invalid([&] { ops->matmul(view(c, {3, 3}), view(a, {4, 3}), view(b, {4, 3}), false, false, 1, 0); });
}

TEST(OpsMatmul, ReportsBlasCore) {
  auto ops = backend::make_cpu_ops(1);
  const std::string core = backend::cpu::blas_core_name();
  EXPECT_FALSE(core.empty());
  EXPECT_NE(core, "unavailable");
}

TEST(OpsBias, AddBiasAndBiasGradAreAdjoint) {
  auto ops = backend::make_cpu_ops(2);
  const int64_t t = 9, n = 130;  // n spans several column blocks
  std::vector<float> bias = random_vector(n, 1), r = random_vector(t * n, 2), y0 = random_vector(t * n, 3);
  auto loss = [&] {
    std::vector<float> y = y0;
    ops->add_bias(view(y, {t, n}), view(bias, {n}));
    return inner(r, y);
  };
  std::vector<float> before = random_vector(n, 4), dbias = before;
  ops->bias_grad(view(dbias, {n}), view(r, {t, n}));
  std::vector<float> grad(n);
  for (int64_t j = 0; j < n; ++j) grad[j] = dbias[j] - before[j];  // bias_grad accumulates
  expect_gradient("bias", bias, grad, loss);
  for (int64_t j = 0; j < n; ++j) {
    double s = before[j];
    for (int64_t i = 0; i < t; ++i) s += r[i * n + j];
    EXPECT_NEAR(dbias[j], s, 1e-5);
  }
}

}  // namespace
}  // namespace mpt::test
