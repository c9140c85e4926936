// The GEMM pieces the CUDA backend's GEMM ops share (cuda_gemm.cu, cuda_grouped_gemm.cu):
// argument checks with the CPU backend's messages, the cuBLASLt GEMM on raw row-major
// operands, and the operands of one op in the dtypes cuBLASLt takes.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#include "cuda/cuda_ops.h"
#include "cuda/elements.cuh"

namespace mpt::cuda {

// Error(kInvalidArgument) "op: what".
[[noreturn]] void invalid_argument(const char* op, const std::string& what);

#define MPT_GEMM_CHECK(cond, op, what)                       \
  do {                                                       \
    if (!(cond)) ::mpt::cuda::invalid_argument((op), (what)); \
  } while (0)

// t is a 2-D F32 or BF16 matrix [rows, cols]; a negative extent matches any.
void check_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols);

// c[rows, cols] (leading dimension ld) = beta * c; beta == 0 writes zeros, as BLAS does.
void scale_matrix(cudaStream_t stream, Out c, int64_t rows, int64_t cols, int64_t ld, float beta);

// Row-major c[m,n] = alpha * op(a) @ op(b) + beta * c with leading dimensions in elements
// (a is [k,m] when trans_a, b is [n,k] when trans_b), the CPU sgemm's contract: nothing
// for an empty c, c = beta * c for k == 0 (zeros at beta 0). a and b are both bf16
// (ab_bf16) or both f32; c is f32 or bf16. The first call of a shape times cuBLASLt's
// candidates when `autotune` (cuda_gemm.cu); false takes the heuristic's first.
void gemm(CudaOps& ops, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const void* a,
          int64_t lda, const void* b, int64_t ldb, bool ab_bf16, float beta, Out c, int64_t ldc,
          bool autotune = true);

inline size_t element_bytes(bool bf16) { return bf16 ? 2 : 4; }

// The operands of one GEMM op as the GEMMs read and write them: when a or b is bf16 both are
// bf16 (an f32 one rounded into scratch); c is written in place, except a bf16 c beside f32
// operands, which is computed in an f32 copy in scratch (widened when beta reads it) and
// rounded into c by finish(). Scratch is asked for once, so its pieces stay valid together.
class GemmOperands {
 public:
  GemmOperands(CudaOps& ops, const Tensor& c, const Tensor& a, const Tensor& b, float beta)
      : a_(a.data), b_(b.data), ab_bf16_(a.dtype == DType::kBF16 || b.dtype == DType::kBF16), c_(out_view(c)) {
    const bool round_a = ab_bf16_ && a.dtype == DType::kF32, round_b = ab_bf16_ && b.dtype == DType::kF32;
    const bool stage_c = !ab_bf16_ && c.dtype == DType::kBF16;
    const size_t a_bytes = round_a ? padded(static_cast<size_t>(a.numel()) * 2) : 0;
    const size_t b_bytes = round_b ? padded(static_cast<size_t>(b.numel()) * 2) : 0;
    const size_t c_bytes = stage_c ? padded(static_cast<size_t>(c.numel()) * 4) : 0;
    if (a_bytes + b_bytes + c_bytes == 0) return;
    char* base = static_cast<char*>(ops.scratch(a_bytes + b_bytes + c_bytes));
    if (round_a) {
      ops.convert(base, DType::kBF16, a.data, DType::kF32, a.numel());
      a_ = base;
    }
    if (round_b) {
      ops.convert(base + a_bytes, DType::kBF16, b.data, DType::kF32, b.numel());
      b_ = base + a_bytes;
    }
    if (stage_c) {
      staged_ = base + a_bytes + b_bytes;
      if (beta != 0.0f) ops.convert(staged_, DType::kF32, c.data, DType::kBF16, c.numel());
      c_ = Out{staged_, false};
    }
  }

  bool ab_bf16() const { return ab_bf16_; }
  // Element `offset` of a, b or c (the GEMM's view of c).
  const void* a(int64_t offset) const { return static_cast<const char*>(a_) + offset * element_bytes(ab_bf16_); }
  const void* b(int64_t offset) const { return static_cast<const char*>(b_) + offset * element_bytes(ab_bf16_); }
  Out c(int64_t offset) const { return c_.at(offset); }

  // Rounds a staged c into the op's c.
  void finish(CudaOps& ops, const Tensor& c) const {
    if (staged_) ops.convert(c.data, DType::kBF16, staged_, DType::kF32, c.numel());
  }

 private:
  static size_t padded(size_t bytes) { return (bytes + 255) / 256 * 256; }

  const void* a_;
  const void* b_;
  bool ab_bf16_;
  Out c_;
  void* staged_ = nullptr;
};

}  // namespace mpt::cuda
