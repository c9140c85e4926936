#include "test_ops_util.h"

namespace mpt::test {
namespace {

using backend::Activation;

double reference(Activation act, double x) {
  switch (act) {
    case Activation::kGelu: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    case Activation::kGeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case Activation::kSilu: return x / (1.0 + std::exp(-x));
    case Activation::kRelu: return x > 0 ? x : 0.0;
    case Activation::kSquaredRelu: return x > 0 ? x * x : 0.0;
  }
  return 0;
}

constexpr Activation kAll[] = {Activation::kGelu, Activation::kGeluTanh, Activation::kSilu, Activation::kRelu,
                               Activation::kSquaredRelu};
constexpr int64_t kT = 4, kF = 9;

// Inputs kept a finite difference away from the kink of ReLU at 0.
std::vector<float> inputs(int64_t n, uint64_t key) {
  std::vector<float> x = random_vector(n, key, 2.0f);
  for (float& v : x)
    if (std::fabs(v) < 0.01f) v = 0.5f;
  return x;
}

TEST(OpsActivation, ForwardMatchesDefinitions) {
  auto ops = backend::make_cpu_ops(2);
  for (Activation act : kAll)
    for (bool gated : {false, true}) {
      const int64_t width = gated ? 2 * kF : kF;
      std::vector<float> x = inputs(kT * width, 1), out(kT * kF);
      ops->activation_fwd(view(out, {kT, kF}), view(x, {kT, width}), act, gated);
      for (int64_t t = 0; t < kT; ++t)
        for (int64_t j = 0; j < kF; ++j) {
          double want = reference(act, x[t * width + j]);
          if (gated) want *= x[t * width + kF + j];
          EXPECT_NEAR(out[t * kF + j], want, 2e-6 * (1 + std::fabs(want)))
              << "activation " << static_cast<int>(act) << " gated " << gated;
        }
    }
}

TEST(OpsActivation, Gradients) {
  auto ops = backend::make_cpu_ops(2);
  for (Activation act : kAll)
    for (bool gated : {false, true}) {
      const int64_t width = gated ? 2 * kF : kF;
      std::vector<float> x = inputs(kT * width, 2), r = random_vector(kT * kF, 3), out(kT * kF);
      std::vector<float> dx(kT * width, 9.0f);  // overwritten
      ops->activation_bwd(view(dx, {kT, width}), view(r, {kT, kF}), view(x, {kT, width}), act, gated);
      auto loss = [&] {
        ops->activation_fwd(view(out, {kT, kF}), view(x, {kT, width}), act, gated);
        return inner(r, out);
      };
      expect_gradient(str("activation ", static_cast<int>(act), gated ? " gated" : ""), x, dx, loss);
    }
}

TEST(OpsActivation, RejectsBadShapes) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> x(kT * 7), out(kT * 3);
  expect_invalid([&] { ops->activation_fwd(view(out, {kT, 3}), view(x, {kT, 7}), Activation::kSilu, true); });
  expect_invalid([&] { ops->activation_fwd(view(out, {kT, 3}), view(x, {kT, 7}), Activation::kSilu, false); });
  expect_invalid([&] { ops->activation_fwd(view(out, {kT, 3}), view(x, {kT, 7}), static_cast<Activation>(9), false); });
}

}  // namespace
}  // namespace mpt::test
