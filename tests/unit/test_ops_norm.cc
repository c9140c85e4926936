#include "test_ops_util.h"

namespace mpt::test {
namespace {

constexpr int64_t kT = 5, kH = 70;  // H spans two column blocks of the parameter gradients

TEST(OpsNorm, LayerNormForwardMatchesDefinition) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kH, 1, 2.0f), w = random_vector(kH, 2), b = random_vector(kH, 3);
  for (float& v : x) v += 3.0f;  // an offset mean exercises the two-pass variance
  std::vector<float> out(kT * kH), mean(kT), rstd(kT);
  ops->layernorm_fwd(view(out, {kT, kH}), view(mean, {kT}), view(rstd, {kT}), view(x, {kT, kH}), view(w, {kH}),
                     view(b, {kH}), 1e-5f);
  for (int64_t t = 0; t < kT; ++t) {
    double mu = 0, var = 0;
    for (int64_t j = 0; j < kH; ++j) mu += x[t * kH + j];
    mu /= kH;
    for (int64_t j = 0; j < kH; ++j) var += (x[t * kH + j] - mu) * (x[t * kH + j] - mu);
    var /= kH;
    const double r = 1.0 / std::sqrt(var + 1e-5);
    EXPECT_NEAR(mean[t], mu, 1e-6);
    EXPECT_NEAR(rstd[t], r, 1e-6 * r);
    for (int64_t j = 0; j < kH; ++j) EXPECT_NEAR(out[t * kH + j], (x[t * kH + j] - mu) * r * w[j] + b[j], 1e-5);
  }
}

void check_layernorm_grads(bool with_bias) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kH, 4), w = random_vector(kH, 5), b = random_vector(kH, 6),
                     r = random_vector(kT * kH, 7);
  std::vector<float> out(kT * kH), mean(kT), rstd(kT);
  Tensor bias = with_bias ? view(b, {kH}) : Tensor();
  auto forward = [&] {
    ops->layernorm_fwd(view(out, {kT, kH}), view(mean, {kT}), view(rstd, {kT}), view(x, {kT, kH}), view(w, {kH}),
                       bias, 1e-5f);
  };
  auto loss = [&] {
    forward();
    return inner(r, out);
  };
  forward();
  // Start from non-zero gradients: the backward accumulates.
  std::vector<float> dx0 = random_vector(kT * kH, 8), dw0 = random_vector(kH, 9), db0 = random_vector(kH, 10);
  std::vector<float> dx = dx0, dw = dw0, db = db0;
  ops->layernorm_bwd(view(dx, {kT, kH}), view(dw, {kH}), with_bias ? view(db, {kH}) : Tensor(), view(r, {kT, kH}),
                     view(x, {kT, kH}), view(w, {kH}), view(mean, {kT}), view(rstd, {kT}));
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  for (int64_t j = 0; j < kH; ++j) {
    dw[j] -= dw0[j];
    db[j] -= db0[j];
  }
  expect_gradient("layernorm dx", x, dx, loss);
  expect_gradient("layernorm dweight", w, dw, loss);
  if (with_bias) expect_gradient("layernorm dbias", b, db, loss);
}

TEST(OpsNorm, LayerNormGradients) { check_layernorm_grads(true); }
TEST(OpsNorm, LayerNormGradientsWithoutBias) { check_layernorm_grads(false); }

TEST(OpsNorm, RmsNormForwardMatchesDefinition) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kH, 11), w = random_vector(kH, 12), out(kT * kH), rstd(kT);
  ops->rmsnorm_fwd(view(out, {kT, kH}), view(rstd, {kT}), view(x, {kT, kH}), view(w, {kH}), 1e-6f);
  for (int64_t t = 0; t < kT; ++t) {
    double ms = 0;
    for (int64_t j = 0; j < kH; ++j) ms += static_cast<double>(x[t * kH + j]) * x[t * kH + j];
    const double r = 1.0 / std::sqrt(ms / kH + 1e-6);
    EXPECT_NEAR(rstd[t], r, 1e-6 * r);
    for (int64_t j = 0; j < kH; ++j) EXPECT_NEAR(out[t * kH + j], x[t * kH + j] * r * w[j], 1e-5);
  }
}

TEST(OpsNorm, RmsNormGradients) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(kT * kH, 13), w = random_vector(kH, 14), r = random_vector(kT * kH, 15);
  std::vector<float> out(kT * kH), rstd(kT);
  auto forward = [&] {
    ops->rmsnorm_fwd(view(out, {kT, kH}), view(rstd, {kT}), view(x, {kT, kH}), view(w, {kH}), 1e-6f);
  };
  auto loss = [&] {
    forward();
    return inner(r, out);
  };
  forward();
  std::vector<float> dx0 = random_vector(kT * kH, 16), dw0 = random_vector(kH, 17), dx = dx0, dw = dw0;
  ops->rmsnorm_bwd(view(dx, {kT, kH}), view(dw, {kH}), view(r, {kT, kH}), view(x, {kT, kH}), view(w, {kH}),
                   view(rstd, {kT}));
  for (size_t i = 0; i < dx.size(); ++i) dx[i] -= dx0[i];
  for (int64_t j = 0; j < kH; ++j) dw[j] -= dw0[j];
  expect_gradient("rmsnorm dx", x, dx, loss);
  expect_gradient("rmsnorm dweight", w, dw, loss);
}

TEST(OpsNorm, RejectsMismatchedShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> x(12), w(5), out(12), rstd(3);
  expect_invalid([&] { ops->rmsnorm_fwd(view(out, {3, 4}), view(rstd, {3}), view(x, {3, 4}), view(w, {5}), 1e-6f); });
  std::vector<float> w4(4), rstd2(2);
  expect_invalid([&] { ops->rmsnorm_fwd(view(out, {3, 4}), view(rstd2, {2}), view(x, {3, 4}), view(w4, {4}), 1e-6f); });
}

}  // namespace
}  // namespace mpt::test
