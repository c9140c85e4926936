#include "backend/cpu/embedding.h"

#include <algorithm>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

namespace {

constexpr int64_t kColumnBlock = 64;

// Checks sizes; returns the hidden size H.
int64_t embedding_hidden(const char* op, const Tensor& rows, const Tensor& ids, const Tensor& table) {
  check_f32(op, "table", table);
  check_i32(op, "ids", ids);
  check_f32(op, "out/dout", rows);
  const int64_t h = last_dim(table);
  MPT_CPU_CHECK(h > 0 && table.ndim >= 2, op, "table " + describe(table) + " must be [V_local, H]");
  check_numel(op, "out/dout", rows, ids.numel() * h);
  return h;
}

}  // namespace

void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) {
  const int64_t h = embedding_hidden("embedding_fwd", out, ids, table);
  const int64_t vocab = table.numel() / h, tokens = ids.numel();
  const int32_t* pid = ids.i();
  const float* pt = table.f();
  float* po = out.f();
#pragma omp parallel for schedule(static) if(tokens * h >= kMinParallelWork)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t row = static_cast<int64_t>(pid[t]) - vocab_start;
    float* orow = po + t * h;
    const bool inside = row >= 0 && row < vocab;
    if (accumulate) {
      if (inside)
        for (int64_t j = 0; j < h; ++j) orow[j] += pt[row * h + j];
    } else if (inside) {
      std::copy(pt + row * h, pt + (row + 1) * h, orow);
    } else {
      std::fill(orow, orow + h, 0.0f);
    }
  }
}

void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) {
  const int64_t h = embedding_hidden("embedding_bwd", dout, ids, dtable);
  const int64_t vocab = dtable.numel() / h, tokens = ids.numel();
  const int32_t* pid = ids.i();
  const float* pg = dout.f();
  float* pd = dtable.f();
  const int64_t blocks = (h + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if(tokens * h >= kMinParallelWork)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t lo = blk * kColumnBlock, hi = std::min(h, lo + kColumnBlock);
    for (int64_t t = 0; t < tokens; ++t) {
      const int64_t row = static_cast<int64_t>(pid[t]) - vocab_start;
      if (row < 0 || row >= vocab) continue;
      for (int64_t j = lo; j < hi; ++j) pd[row * h + j] += pg[t * h + j];
    }
  }
}

}  // namespace mpt::backend::cpu
