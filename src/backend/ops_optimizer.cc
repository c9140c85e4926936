// The default optimizer ops of Ops, composed of the per-tensor ones: what the CPU backend
// runs, and the definition a GPU's fused kernels must match (ops.h, "optimizer").
#include <cmath>

#include "backend/ops.h"
#include "core/error.h"

namespace mpt::backend {
namespace {

// A one-element tensor of `dtype`: sum_squares_acc's accumulator, the clip inputs.
void check_scalar(const char* op, const char* arg, const Tensor& t, DType dtype) {
  MPT_CHECK(t.dtype == dtype && t.numel() == 1 && t.data != nullptr, Status::kInvalidArgument, op, ": ", arg,
            " must be one ", dtype_name(dtype), " element in backend memory, got ", dtype_name(t.dtype), " of ",
            t.numel(), t.data ? "" : " without data");
}

}  // namespace

void Ops::adamw_multi(const AdamWTensor* tensors, int64_t count, const AdamWArgs& a) {
  MPT_CHECK(count >= 0 && (count == 0 || tensors != nullptr), Status::kInvalidArgument,
            "adamw_multi: ", count, " pieces", tensors ? "" : " and no table");
  AdamWArgs piece = a;
  for (int64_t k = 0; k < count; ++k) {
    const AdamWTensor& t = tensors[k];
    if (t.compute_copy.data != nullptr)
      MPT_CHECK(t.compute_copy.dtype == DType::kBF16 && t.compute_copy.numel() == t.param.numel(),
                Status::kInvalidArgument, "adamw_multi: piece ", k, ": compute_copy must be BF16 of ",
                t.param.numel(), " elements, got ", dtype_name(t.compute_copy.dtype), " of ",
                t.compute_copy.numel());
    piece.weight_decay = t.weight_decay;
    adamw(t.param, t.grad, t.exp_avg, t.exp_avg_sq, piece);
    if (t.compute_copy.data != nullptr) cast(t.compute_copy, t.param);
  }
}

void Ops::sum_squares_acc(Tensor acc, Tensor x) {
  check_scalar("sum_squares_acc", "acc", acc, DType::kF64);
  double v = 0;
  to_host(&v, acc.data, sizeof v);
  v += sum_squares(x);
  to_device(acc.data, &v, sizeof v);
}

void Ops::grad_clip_factor(Tensor factor, Tensor sumsq, double max_norm) {
  check_scalar("grad_clip_factor", "factor", factor, DType::kF32);
  check_scalar("grad_clip_factor", "sumsq", sumsq, DType::kF64);
  double sq = 0;
  to_host(&sq, sumsq.data, sizeof sq);
  float f = 1.0f;
  if (max_norm > 0) {
    const double coeff = max_norm / (std::sqrt(sq) + 1e-6);
    if (coeff < 1.0) f = static_cast<float>(coeff);
  }
  to_device(factor.data, &f, sizeof f);
}

}  // namespace mpt::backend
