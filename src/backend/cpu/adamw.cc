#include "backend/cpu/adamw.h"

#include <cmath>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) {
  const char* op = "adamw";
  check_f32(op, "param", param);
  check_f32(op, "grad", grad);
  check_f32(op, "exp_avg", exp_avg);
  check_f32(op, "exp_avg_sq", exp_avg_sq);
  const int64_t n = param.numel();
  check_numel(op, "grad", grad, n);
  check_numel(op, "exp_avg", exp_avg, n);
  check_numel(op, "exp_avg_sq", exp_avg_sq, n);
  MPT_CPU_CHECK(a.step >= 1, op, str("step ", a.step, " must be >= 1"));
  MPT_CPU_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1, op,
            str("beta1 ", a.beta1, " and beta2 ", a.beta2, " must be in [0, 1)"));
  // Bias corrections in double: 1 - 0.999^step loses digits in float for small steps.
  const float bc1 = static_cast<float>(1.0 - std::pow(static_cast<double>(a.beta1), static_cast<double>(a.step)));
  const float bc2 = static_cast<float>(1.0 - std::pow(static_cast<double>(a.beta2), static_cast<double>(a.step)));
  float gs = a.grad_scale;
  if (!is_empty(a.grad_scale_device)) {
    check_f32(op, "grad_scale_device", a.grad_scale_device);
    check_numel(op, "grad_scale_device", a.grad_scale_device, 1);
    gs = *a.grad_scale_device.f();
  }
  const float b1 = a.beta1, b2 = a.beta2, lr = a.lr, wd = a.weight_decay, eps = a.eps;
  float *p = param.f(), *m = exp_avg.f(), *v = exp_avg_sq.f();
  const float* g = grad.f();
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] * gs;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi;
    v[i] = vi;
    const float update = (mi / bc1) / (std::sqrt(vi / bc2) + eps) + wd * p[i];
    p[i] -= lr * update;
  }
}

}  // namespace mpt::backend::cpu
