// Argument checks shared by the CUDA op files, with the CPU backend's rules and messages
// (backend/cpu/check.h): header-only, so the CUDA library needs nothing from the core
// library's objects to use them.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/tensor.h"

namespace mpt::cuda {

inline const char* dtype_label(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kBF16: return "BF16";
    case DType::kF16: return "F16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kU8: return "U8";
    case DType::kF64: return "F64";
  }
  return "?";
}

// "F32[4,8]": dtype and shape, for messages.
inline std::string describe(const Tensor& t) {
  std::string s = dtype_label(t.dtype);
  s += '[';
  for (int i = 0; i < t.ndim && i < Tensor::kMaxDims; ++i) {
    if (i) s += ',';
    s += std::to_string(t.shape[i]);
  }
  return s + ']';
}

// A well-formed view: ndim in range, no negative extent, data unless empty.
inline void check_view(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.ndim >= 0 && t.ndim <= Tensor::kMaxDims, Status::kInvalidArgument, op, ": ", arg, " has ndim ",
            t.ndim);
  for (int i = 0; i < t.ndim; ++i)
    MPT_CHECK(t.shape[i] >= 0, Status::kInvalidArgument, op, ": ", arg, " has a negative extent: ", describe(t));
  MPT_CHECK(t.data != nullptr || t.numel() == 0, Status::kInvalidArgument, op, ": ", arg, " ", describe(t),
            " has no data");
}

inline void check_f32(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.dtype == DType::kF32, Status::kInvalidArgument, op, ": ", arg, " must be F32, got ", describe(t));
  check_view(op, arg, t);
}

// The floating dtypes an op computes on (ops.h, "Precision"): f32, or bf16 widened on load
// and rounded once on store.
inline bool is_float(DType t) { return t == DType::kF32 || t == DType::kBF16; }

inline void check_float(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(is_float(t.dtype), Status::kInvalidArgument, op, ": ", arg, " must be F32 or BF16, got ", describe(t));
  check_view(op, arg, t);
}

inline void check_numel(const char* op, const char* arg, const Tensor& t, int64_t expected) {
  MPT_CHECK(t.numel() == expected, Status::kInvalidArgument, op, ": ", arg, " ", describe(t), " must hold ",
            expected, " elements");
}

// The dtype check and the element count together.
inline void check_f32(const char* op, const char* arg, const Tensor& t, int64_t numel) {
  check_f32(op, arg, t);
  check_numel(op, arg, t, numel);
}
inline void check_float(const char* op, const char* arg, const Tensor& t, int64_t numel) {
  check_float(op, arg, t);
  check_numel(op, arg, t, numel);
}

// A tensor is read as [rows_of, last_dim] rows.
inline int64_t last_dim(const Tensor& t) { return t.ndim == 0 ? 1 : t.shape[t.ndim - 1]; }
inline int64_t rows_of(const Tensor& t) {
  int64_t r = 1;
  for (int i = 0; i + 1 < t.ndim; ++i) r *= t.shape[i];
  return r;
}

// Throws Error(kDevice) naming the cuBLASLt call and its status.
inline void check_cublas(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  fail(Status::kDevice, call, " failed: ", cublasLtGetStatusName(status), " (", cublasLtGetStatusString(status), ")");
}

}  // namespace mpt::cuda
