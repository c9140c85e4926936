#include "backend/cpu/norm.h"

#include <algorithm>
#include <cmath>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

constexpr int64_t kColumnBlock = 64;

// Rows T of x [T, H] where H = weight.numel(), after checking every argument's size.
int64_t norm_rows(const char* op, const Tensor& x, const Tensor& weight) {
  check_f32(op, "x", x);
  check_f32(op, "weight", weight);
  const int64_t h = weight.numel();
  MPT_CPU_CHECK(h > 0 && last_dim(x) == h, op, "x " + describe(x) + " last axis must match weight " + describe(weight));
  return x.numel() / h;
}

// Parameter gradients: each thread owns a block of columns and walks the rows in order,
// so sums are race-free and reproducible. mean may be null (RMSNorm); dbias may be null.
void norm_param_grads(float* dweight, float* dbias, const float* dout, const float* x, const float* mean,
                      const float* rstd, int64_t rows, int64_t h) {
  const int64_t blocks = (h + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if(rows * h >= kMinParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * kColumnBlock, hi = std::min(h, lo + kColumnBlock);
    double acc_w[kColumnBlock] = {}, acc_b[kColumnBlock] = {};
    for (int64_t t = 0; t < rows; ++t) {
      const float mu = mean ? mean[t] : 0.0f, r = rstd[t];
      const float* xr = x + t * h;
      const float* gr = dout + t * h;
      for (int64_t j = lo; j < hi; ++j) {
        const float xhat = (xr[j] - mu) * r;
        acc_w[j - lo] += static_cast<double>(gr[j]) * xhat;
        acc_b[j - lo] += gr[j];
      }
    }
    for (int64_t j = lo; j < hi; ++j) {
      dweight[j] += static_cast<float>(acc_w[j - lo]);
      if (dbias) dbias[j] += static_cast<float>(acc_b[j - lo]);
    }
  }
}

}  // namespace

void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) {
  const char* op = "layernorm_fwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_f32(op, "out", out);
  check_numel(op, "out", out, x.numel());
  check_f32(op, "mean", mean);
  check_numel(op, "mean", mean, rows);
  check_f32(op, "rstd", rstd);
  check_numel(op, "rstd", rstd, rows);
  const bool has_bias = !is_empty(bias);
  if (has_bias) {
    check_f32(op, "bias", bias);
    check_numel(op, "bias", bias, h);
  }
  const float *px = x.f(), *pw = weight.f(), *pb = has_bias ? bias.f() : nullptr;
  float *po = out.f(), *pm = mean.f(), *pr = rstd.f();
#pragma omp parallel for schedule(static) if(rows * h >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = px + t * h;
    double sum = 0;
    for (int64_t j = 0; j < h; ++j) sum += xr[j];
    const double mu = sum / static_cast<double>(h);
    double var = 0;
    for (int64_t j = 0; j < h; ++j) {
      const double d = xr[j] - mu;
      var += d * d;
    }
    var /= static_cast<double>(h);
    // Saved statistics are what backward sees, so the output is formed from them too.
    const float m = static_cast<float>(mu), r = static_cast<float>(1.0 / std::sqrt(var + eps));
    pm[t] = m;
    pr[t] = r;
    float* orow = po + t * h;
    for (int64_t j = 0; j < h; ++j) orow[j] = (xr[j] - m) * r * pw[j] + (pb ? pb[j] : 0.0f);
  }
}

void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                   Tensor rstd) {
  const char* op = "layernorm_bwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_f32(op, "dx", dx);
  check_numel(op, "dx", dx, x.numel());
  check_f32(op, "dout", dout);
  check_numel(op, "dout", dout, x.numel());
  check_f32(op, "dweight", dweight);
  check_numel(op, "dweight", dweight, h);
  check_f32(op, "mean", mean);
  check_numel(op, "mean", mean, rows);
  check_f32(op, "rstd", rstd);
  check_numel(op, "rstd", rstd, rows);
  const bool has_bias = !is_empty(dbias);
  if (has_bias) {
    check_f32(op, "dbias", dbias);
    check_numel(op, "dbias", dbias, h);
  }
  const float *px = x.f(), *pw = weight.f(), *pg = dout.f(), *pm = mean.f(), *pr = rstd.f();
  float* pdx = dx.f();
#pragma omp parallel for schedule(static) if(rows * h >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float *xr = px + t * h, *gr = pg + t * h;
    const float m = pm[t], r = pr[t];
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = 0; j < h; ++j) {
      const double g = static_cast<double>(gr[j]) * pw[j];
      sum_g += g;
      sum_gx += g * ((xr[j] - m) * r);
    }
    const float mean_g = static_cast<float>(sum_g / static_cast<double>(h));
    const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(h));
    float* dr = pdx + t * h;
    for (int64_t j = 0; j < h; ++j) {
      const float xhat = (xr[j] - m) * r;
      dr[j] += r * (gr[j] * pw[j] - mean_g - xhat * mean_gx);
    }
  }
  norm_param_grads(dweight.f(), has_bias ? dbias.f() : nullptr, pg, px, pm, pr, rows, h);
}

void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) {
  const char* op = "rmsnorm_fwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_f32(op, "out", out);
  check_numel(op, "out", out, x.numel());
  check_f32(op, "rstd", rstd);
  check_numel(op, "rstd", rstd, rows);
  const float *px = x.f(), *pw = weight.f();
  float *po = out.f(), *pr = rstd.f();
#pragma omp parallel for schedule(static) if(rows * h >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float* xr = px + t * h;
    double sq = 0;
    for (int64_t j = 0; j < h; ++j) sq += static_cast<double>(xr[j]) * xr[j];
    const float r = static_cast<float>(1.0 / std::sqrt(sq / static_cast<double>(h) + eps));
    pr[t] = r;
    float* orow = po + t * h;
    for (int64_t j = 0; j < h; ++j) orow[j] = xr[j] * r * pw[j];
  }
}

void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) {
  const char* op = "rmsnorm_bwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_f32(op, "dx", dx);
  check_numel(op, "dx", dx, x.numel());
  check_f32(op, "dout", dout);
  check_numel(op, "dout", dout, x.numel());
  check_f32(op, "dweight", dweight);
  check_numel(op, "dweight", dweight, h);
  check_f32(op, "rstd", rstd);
  check_numel(op, "rstd", rstd, rows);
  const float *px = x.f(), *pw = weight.f(), *pg = dout.f(), *pr = rstd.f();
  float* pdx = dx.f();
#pragma omp parallel for schedule(static) if(rows * h >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t) {
    const float *xr = px + t * h, *gr = pg + t * h;
    const float r = pr[t];
    double sum_gx = 0;
    for (int64_t j = 0; j < h; ++j) sum_gx += static_cast<double>(gr[j]) * pw[j] * (xr[j] * r);
    const float mean_gx = static_cast<float>(sum_gx / static_cast<double>(h));
    float* dr = pdx + t * h;
    for (int64_t j = 0; j < h; ++j) dr[j] += r * (gr[j] * pw[j] - xr[j] * r * mean_gx);
  }
  norm_param_grads(dweight.f(), nullptr, pg, px, nullptr, pr, rows, h);
}

}  // namespace mpt::backend::cpu
