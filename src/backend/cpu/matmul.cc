#include "backend/cpu/matmul.h"

#include <algorithm>

#include "backend/cpu/blas.h"
#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {
// Columns reduced together by one thread in bias_grad: a cache line's worth and more.
constexpr int64_t kColumnBlock = 64;
}  // namespace

void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) {
  check_f32("matmul", "c", c);
  check_f32("matmul", "a", a);
  check_f32("matmul", "b", b);
  const int64_t m = rows_of(c), n = last_dim(c);
  const int64_t a_rows = rows_of(a), a_cols = last_dim(a);
  const int64_t b_rows = rows_of(b), b_cols = last_dim(b);
  const int64_t am = trans_a ? a_cols : a_rows, ak = trans_a ? a_rows : a_cols;
  const int64_t bk = trans_b ? b_cols : b_rows, bn = trans_b ? b_rows : b_cols;
  MPT_CPU_CHECK(am == m && bn == n && ak == bk, "matmul",
            "shapes do not match: c " + describe(c) + ", a " + describe(a) + (trans_a ? "^T" : "") + ", b " +
                describe(b) + (trans_b ? "^T" : ""));
  sgemm(trans_a, trans_b, m, n, ak, alpha, a.f(), std::max<int64_t>(a_cols, 1), b.f(), std::max<int64_t>(b_cols, 1),
        beta, c.f(), std::max<int64_t>(n, 1));
}

void add_bias(Tensor y, Tensor bias) {
  check_f32("add_bias", "y", y);
  check_f32("add_bias", "bias", bias);
  const int64_t n = bias.numel();
  MPT_CPU_CHECK(n > 0 && last_dim(y) == n, "add_bias", "y " + describe(y) + " rows must match bias " + describe(bias));
  const int64_t rows = y.numel() / n;
  float* py = y.f();
  const float* pb = bias.f();
#pragma omp parallel for schedule(static) if(rows * n >= kMinParallelWork)
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t j = 0; j < n; ++j) py[t * n + j] += pb[j];
}

void bias_grad(Tensor dbias, Tensor dy) {
  check_f32("bias_grad", "dbias", dbias);
  check_f32("bias_grad", "dy", dy);
  const int64_t n = dbias.numel();
  MPT_CPU_CHECK(n > 0 && last_dim(dy) == n, "bias_grad",
            "dy " + describe(dy) + " rows must match dbias " + describe(dbias));
  const int64_t rows = dy.numel() / n;
  float* pd = dbias.f();
  const float* pg = dy.f();
  const int64_t blocks = (n + kColumnBlock - 1) / kColumnBlock;
  // Each thread owns whole columns and sums rows in order: no races, fixed order.
#pragma omp parallel for schedule(static) if(rows * n >= kMinParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * kColumnBlock, hi = std::min(n, lo + kColumnBlock);
    double acc[kColumnBlock] = {};
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t j = lo; j < hi; ++j) acc[j - lo] += pg[t * n + j];
    for (int64_t j = lo; j < hi; ++j) pd[j] += static_cast<float>(acc[j - lo]);
  }
}

}  // namespace mpt::backend::cpu
