#include "backend/cpu/check.h"

#include "core/error.h"

namespace mpt::backend::cpu {

std::string describe(const Tensor& t) {
  std::string s = dtype_name(t.dtype);
  s += '[';
  for (int i = 0; i < t.ndim && i < Tensor::kMaxDims; ++i) {
    if (i) s += ',';
    s += std::to_string(t.shape[i]);
  }
  s += ']';
  return s;
}

namespace {
void check_view(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.ndim >= 0 && t.ndim <= Tensor::kMaxDims, Status::kInvalidArgument, op, ": ", arg, " has ndim ",
            t.ndim);
  for (int i = 0; i < t.ndim; ++i)
    MPT_CHECK(t.shape[i] >= 0, Status::kInvalidArgument, op, ": ", arg, " has a negative extent: ", describe(t));
  MPT_CHECK(t.data != nullptr || t.numel() == 0, Status::kInvalidArgument, op, ": ", arg, " ", describe(t),
            " has no data");
}
}  // namespace

void check_f32(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.dtype == DType::kF32, Status::kInvalidArgument, op, ": ", arg, " must be F32, got ", describe(t));
  check_view(op, arg, t);
}

void check_i32(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.dtype == DType::kI32, Status::kInvalidArgument, op, ": ", arg, " must be I32, got ", describe(t));
  check_view(op, arg, t);
}

void check_float(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.dtype == DType::kF32 || t.dtype == DType::kBF16, Status::kInvalidArgument, op, ": ", arg,
            " must be F32 or BF16, got ", describe(t));
  check_view(op, arg, t);
}

void check_numel(const char* op, const char* arg, const Tensor& t, int64_t expected) {
  MPT_CHECK(t.numel() == expected, Status::kInvalidArgument, op, ": ", arg, " ", describe(t), " must hold ",
            expected, " elements");
}

void invalid_argument(const char* op, const std::string& what) { fail(Status::kInvalidArgument, op, ": ", what); }

}  // namespace mpt::backend::cpu
