#include "backend/cpu/activation.h"

#include <cmath>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluCubic = 0.044715f;

// Value and derivative of the activation at x.
struct ValueGrad {
  float value, grad;
};

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

inline ValueGrad evaluate(Activation act, float x) {
  switch (act) {
    case Activation::kGelu: {
      const float cdf = 0.5f * (1.0f + std::erf(x * kInvSqrt2));
      return {x * cdf, cdf + x * kInvSqrt2Pi * std::exp(-0.5f * x * x)};
    }
    case Activation::kGeluTanh: {
      const float t = std::tanh(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
      return {0.5f * x * (1.0f + t), 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du};
    }
    case Activation::kSilu: {
      const float s = sigmoid(x);
      return {x * s, s * (1.0f + x * (1.0f - s))};
    }
    case Activation::kRelu:
      return {x > 0 ? x : 0.0f, x > 0 ? 1.0f : 0.0f};
    case Activation::kSquaredRelu:
      return {x > 0 ? x * x : 0.0f, x > 0 ? 2.0f * x : 0.0f};
  }
  return {0, 0};
}

// Checks and returns (rows, F).
void shapes(const char* op, const Tensor& x, const Tensor& y, Activation act, bool gated, int64_t* rows,
            int64_t* features) {
  MPT_CPU_CHECK(static_cast<int>(act) >= 0 && static_cast<int>(act) <= static_cast<int>(Activation::kSquaredRelu), op,
            str("unknown activation ", static_cast<int>(act)));
  check_f32(op, "x", x);
  check_f32(op, "out/dout", y);
  const int64_t width = last_dim(x);
  MPT_CPU_CHECK(!gated || width % 2 == 0, op, "gated x " + describe(x) + " must have an even last axis");
  *features = gated ? width / 2 : width;
  *rows = width == 0 ? 0 : x.numel() / width;
  check_numel(op, "out/dout", y, *rows * *features);
}

}  // namespace

void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  shapes("activation_fwd", x, out, act, gated, &rows, &f);
  const float* px = x.f();
  float* po = out.f();
  const int64_t width = gated ? 2 * f : f;
#pragma omp parallel for schedule(static) if(rows * width >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = px + t * width;
    float* orow = po + t * f;
    for (int64_t j = 0; j < f; ++j) orow[j] = evaluate(act, xr[j]).value * (gated ? xr[f + j] : 1.0f);
  }
}

void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  shapes("activation_bwd", x, dout, act, gated, &rows, &f);
  check_f32("activation_bwd", "dx", dx);
  check_numel("activation_bwd", "dx", dx, x.numel());
  const float *px = x.f(), *pg = dout.f();
  float* pdx = dx.f();
  const int64_t width = gated ? 2 * f : f;
#pragma omp parallel for schedule(static) if(rows * width >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = px + t * width;
    const float* gr = pg + t * f;
    float* dr = pdx + t * width;
    for (int64_t j = 0; j < f; ++j) {
      const ValueGrad a = evaluate(act, xr[j]);
      if (gated) {
        const float up = xr[f + j];
        dr[j] = gr[j] * up * a.grad;
        dr[f + j] = gr[j] * a.value;
      } else {
        dr[j] = gr[j] * a.grad;
      }
    }
  }
}

}  // namespace mpt::backend::cpu
