#include "test_ops_util.h"

namespace mpt::test {
namespace {

TEST(OpsAdamW, TwoStepsMatchHandComputedReference) {
  auto ops = backend::make_cpu_ops(2);
  const int64_t n = 300;
  std::vector<float> p = random_vector(n, 1), m(n, 0.0f), v(n, 0.0f);
  std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
  backend::AdamWArgs a;
  a.lr = 1e-2f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.weight_decay = 0.1f;
  a.grad_scale = 0.5f;
  for (int64_t step = 1; step <= 2; ++step) {
    std::vector<float> g = random_vector(n, 10 + step);
    a.step = step;
    ops->adamw(view(p, {n}), view(g, {n}), view(m, {n}), view(v, {n}), a);
    const double b1 = a.beta1, b2 = a.beta2;
    for (int64_t i = 0; i < n; ++i) {
      const double gi = static_cast<double>(g[i]) * a.grad_scale;
      rm[i] = b1 * rm[i] + (1 - b1) * gi;
      rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
      const double mhat = rm[i] / (1 - std::pow(b1, step)), vhat = rv[i] / (1 - std::pow(b2, step));
      rp[i] -= a.lr * (mhat / (std::sqrt(vhat) + a.eps) + a.weight_decay * rp[i]);
    }
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(m[i], rm[i], 1e-6);
      ASSERT_NEAR(v[i], rv[i], 1e-6);
      ASSERT_NEAR(p[i], rp[i], 1e-6) << "step " << step << " element " << i;
    }
  }
}

TEST(OpsAdamW, RejectsBadArguments) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> p(4), g(3), m(4), v(4);
  backend::AdamWArgs a;
  expect_invalid([&] { ops->adamw(view(p, {4}), view(g, {3}), view(m, {4}), view(v, {4}), a); });
  a.step = 0;
  expect_invalid([&] { ops->adamw(view(p, {4}), view(p, {4}), view(m, {4}), view(v, {4}), a); });
}

}  // namespace
}  // namespace mpt::test
