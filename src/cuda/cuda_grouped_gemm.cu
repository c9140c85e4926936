// The grouped GEMM of the expert layers on the CUDA backend: one cuBLASLt GEMM per group of
// rows, semantics and argument checks as the CPU grouped_matmul (backend/cpu/moe.cc). Its
// GEMMs take the heuristic's algorithm, untimed: the rows per expert change every step, so
// each step would bring new shapes to time (and wait for).
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/elements.cuh"
#include "cuda/gemm_internal.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {

using backend::GroupedForm;

namespace {
constexpr bool kTimeGroupedGemms = false;  // see the file comment
}  // namespace

void CudaOps::grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                             float beta) {
  const char* op = "grouped_matmul";
  MPT_GEMM_CHECK(form == GroupedForm::kForward || form == GroupedForm::kInputGrad || form == GroupedForm::kWeightGrad,
                 op, str("unknown form ", static_cast<int>(form)));
  MPT_GEMM_CHECK(groups > 0 && counts != nullptr, op,
                 str("needs groups > 0 and their counts, got groups ", groups, counts ? "" : " and no counts"));
  MPT_GEMM_CHECK(std::isfinite(beta), op, str("beta ", beta, " must be finite"));
  check_matrix(op, "a", a, -1, -1);
  const int64_t R = a.shape[0];
  int64_t total = 0;
  for (int64_t g = 0; g < groups; ++g) {
    MPT_GEMM_CHECK(counts[g] >= 0 && counts[g] <= R - total, op,
                   str("counts[", g, "] = ", counts[g], (counts[g] < 0 ? " is negative" : " runs past the rows of a"),
                       " (a ", describe(a), ", ", total, " rows in groups before it)"));
    total += counts[g];
  }
  MPT_GEMM_CHECK(total == R, op, str("counts sum to ", total, ", not to the ", R, " rows of a ", describe(a)));

  if (form == GroupedForm::kWeightGrad) {
    // c[g] [out, in] = dy_g^T @ x_g + beta * c[g]
    const int64_t out = a.shape[1];
    check_matrix(op, "b", b, R, -1);
    const int64_t in = b.shape[1];
    check_float(op, "c", c);
    MPT_GEMM_CHECK(c.ndim == 3 && c.shape[0] == groups && c.shape[1] == out && c.shape[2] == in, op,
                   str("c ", describe(c), " must be [groups, out, in] = [", groups, ", ", out, ", ", in, "]"));
    if (c.numel() == 0) return;
    const GemmOperands operands(*this, c, a, b, beta);
    int64_t first = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const Out cg = operands.c(g * out * in);
      if (counts[g] > 0)
        gemm(*this, true, false, out, in, counts[g], 1.0f, operands.a(first * out), out, operands.b(first * in), in,
             operands.ab_bf16(), beta, cg, in, kTimeGroupedGemms);
      else if (beta != 1.0f)  // no rows: the product is zero
        scale_matrix(stream(), cg, out, in, in, beta);
      first += counts[g];
    }
    operands.finish(*this, c);
    return;
  }

  // Weights b [groups, out, in]; kForward: c [R, out] = a [R, in] @ b[g]^T,
  // kInputGrad: c [R, in] = a [R, out] @ b[g].
  check_float(op, "b", b);
  MPT_GEMM_CHECK(b.ndim == 3 && b.shape[0] == groups, op,
                 str("b ", describe(b), " must be [groups = ", groups, ", out, in]"));
  const int64_t out = b.shape[1], in = b.shape[2];
  const bool fwd = form == GroupedForm::kForward;
  const int64_t a_cols = fwd ? in : out, c_cols = fwd ? out : in;
  check_matrix(op, "a", a, R, a_cols);
  check_matrix(op, "c", c, R, c_cols);
  if (c.numel() == 0) return;
  const GemmOperands operands(*this, c, a, b, beta);
  int64_t first = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (counts[g] > 0)
      gemm(*this, false, fwd, counts[g], c_cols, a_cols, 1.0f, operands.a(first * a_cols), a_cols > 1 ? a_cols : 1,
           operands.b(g * out * in), in > 1 ? in : 1, operands.ab_bf16(), beta, operands.c(first * c_cols),
           c_cols > 1 ? c_cols : 1, kTimeGroupedGemms);
    first += counts[g];
  }
  operands.finish(*this, c);
}

}  // namespace mpt::cuda
