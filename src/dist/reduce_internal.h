// Elementwise reductions for the host collectives: dst = a op b over n elements, and the
// division that turns a sum into an average. Integer sums wrap (two's complement) rather
// than overflow into undefined behaviour; a float max propagates NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/bf16.h"
#include "core/error.h"
#include "core/tensor.h"
#include "dist/communicator.h"

namespace mpt::dist::reduce {

inline const char* op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

// Throws when `dtype` cannot be reduced with `op`: kAvg needs a floating type; fp16 and
// bytes are not reduced on the host. bf16 is combined in fp32 and rounded after each
// combination (as NCCL's bf16 reductions do).
inline void check_supported(DType dtype, ReduceOp op, const std::string& where) {
  bool known_op = op == ReduceOp::kSum || op == ReduceOp::kMax || op == ReduceOp::kAvg;
  MPT_CHECK(known_op, Status::kInvalidArgument, where, ": unknown reduce op ", static_cast<int>(op));
  switch (dtype) {
    case DType::kF32:
    case DType::kF64:
    case DType::kBF16: return;
    case DType::kI32:
    case DType::kI64:
      MPT_CHECK(op != ReduceOp::kAvg, Status::kInvalidArgument, where, ": avg needs a floating dtype, got ",
                dtype_name(dtype));
      return;
    default:
      fail(Status::kNotSupported, where, ": reductions of ", dtype_name(dtype),
           " are not supported on host buffers (f32, f64, bf16, i32 and i64 are)");
  }
}

template <typename T>
void combine_typed(T* dst, const T* a, const T* b, int64_t n, ReduceOp op) {
  if (op == ReduceOp::kMax) {
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_floating_point_v<T>) {
        dst[i] = (a[i] > b[i] || std::isnan(a[i])) ? a[i] : b[i];
      } else {
        dst[i] = a[i] > b[i] ? a[i] : b[i];
      }
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_floating_point_v<T>) {
      dst[i] = a[i] + b[i];
    } else {
      using U = std::make_unsigned_t<T>;
      dst[i] = static_cast<T>(static_cast<U>(a[i]) + static_cast<U>(b[i]));
    }
  }
}

inline void combine_bf16(uint16_t* dst, const uint16_t* a, const uint16_t* b, int64_t n, ReduceOp op) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = bf16_to_f32(a[i]), y = bf16_to_f32(b[i]);
    const float r = op == ReduceOp::kMax ? ((x > y || std::isnan(x)) ? x : y) : x + y;
    dst[i] = f32_to_bf16(r);
  }
}

// dst[i] = a[i] op b[i]; dst may alias a or b. kAvg sums here; finish_avg divides.
inline void combine(void* dst, const void* a, const void* b, int64_t n, DType dtype, ReduceOp op) {
  switch (dtype) {
    case DType::kBF16:
      return combine_bf16(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(a),
                          static_cast<const uint16_t*>(b), n, op);
    case DType::kF32:
      return combine_typed(static_cast<float*>(dst), static_cast<const float*>(a), static_cast<const float*>(b), n, op);
    case DType::kF64:
      return combine_typed(static_cast<double*>(dst), static_cast<const double*>(a), static_cast<const double*>(b), n,
                           op);
    case DType::kI32:
      return combine_typed(static_cast<int32_t*>(dst), static_cast<const int32_t*>(a),
                           static_cast<const int32_t*>(b), n, op);
    case DType::kI64:
      return combine_typed(static_cast<int64_t*>(dst), static_cast<const int64_t*>(a),
                           static_cast<const int64_t*>(b), n, op);
    default: MPT_ASSERT(false);
  }
}

// data[i] /= group_size when op is kAvg (floating types only, checked at issue).
inline void finish_avg(void* data, int64_t n, DType dtype, ReduceOp op, int64_t group_size) {
  if (op != ReduceOp::kAvg) return;
  if (dtype == DType::kF64) {
    auto* p = static_cast<double*>(data);
    for (int64_t i = 0; i < n; ++i) p[i] /= static_cast<double>(group_size);
    return;
  }
  if (dtype == DType::kBF16) {
    auto* p = static_cast<uint16_t*>(data);
    for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(bf16_to_f32(p[i]) / static_cast<float>(group_size));
    return;
  }
  MPT_ASSERT(dtype == DType::kF32);
  auto* p = static_cast<float*>(data);
  for (int64_t i = 0; i < n; ++i) p[i] /= static_cast<float>(group_size);
}

}  // namespace mpt::dist::reduce
