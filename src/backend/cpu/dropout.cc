#include "backend/cpu/dropout.h"

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"
#include "core/rng.h"

namespace mpt::backend::cpu {

namespace {

void apply_mask(const char* op, Tensor dst, Tensor src, float p, uint64_t key, int64_t row_offset) {
  check_f32(op, "output", dst);
  check_f32(op, "input", src);
  check_numel(op, "input", src, dst.numel());
  MPT_CPU_CHECK(p >= 0 && p < 1, op, str("p ", p, " must be in [0, 1)"));
  MPT_CPU_CHECK(row_offset >= 0, op, str("row_offset ", row_offset, " must be non-negative"));
  const int64_t cols = last_dim(dst), n = dst.numel();
  const uint64_t first = static_cast<uint64_t>(row_offset) * static_cast<uint64_t>(cols);
  const float* ps = src.f();
  float* pd = dst.f();
  const float keep_scale = 1.0f / (1.0f - p);
  if (p == 0) {
    if (pd != ps) {
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
      for (int64_t i = 0; i < n; ++i) pd[i] = ps[i];
    }
    return;
  }
  // Row-major [R, C], so (row_offset + r) * C + c is first + the flat index.
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i)
    pd[i] = dropout_keep(key, first + static_cast<uint64_t>(i), p) ? ps[i] * keep_scale : 0.0f;
}

}  // namespace

void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) {
  apply_mask("dropout_fwd", out, x, p, key, row_offset);
}

void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) {
  apply_mask("dropout_bwd", dx, dout, p, key, row_offset);
}

}  // namespace mpt::backend::cpu
