// Argument checks shared by the CPU kernels. A mismatch is a caller's bug, but it is
// reported as kInvalidArgument naming the op, the argument and its shape, never a crash.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// "F32[4,8]": dtype and shape, for messages.
std::string describe(const Tensor& t);

// Throws unless t is F32 (or I32) with a sane shape and data behind every element.
void check_f32(const char* op, const char* arg, const Tensor& t);
void check_i32(const char* op, const char* arg, const Tensor& t);
// Throws unless t is F32 or BF16 with a sane shape and data behind every element.
void check_float(const char* op, const char* arg, const Tensor& t);

// Throws unless t holds exactly `expected` elements.
void check_numel(const char* op, const char* arg, const Tensor& t, int64_t expected);

// Throws kInvalidArgument with "op: what".
[[noreturn]] void invalid_argument(const char* op, const std::string& what);

}  // namespace mpt::backend::cpu

// Throws with "op: what" unless cond holds. A macro so that the message (often built with
// str()) is only formatted on failure: checks run on every op call of every step.
#define MPT_CPU_CHECK(cond, op, what)                                    \
  do {                                                                   \
    if (!(cond)) ::mpt::backend::cpu::invalid_argument((op), (what));    \
  } while (0)

namespace mpt::backend::cpu {

// Size of the last axis: a tensor is read as [numel / last_dim, last_dim] rows.
inline int64_t last_dim(const Tensor& t) { return t.ndim == 0 ? 1 : t.shape[t.ndim - 1]; }

// Product of all axes but the last (1 for a vector): the row count of that reading.
inline int64_t rows_of(const Tensor& t) {
  int64_t r = 1;
  for (int i = 0; i + 1 < t.ndim; ++i) r *= t.shape[i];
  return r;
}

// True when the tensor has no data (an optional argument left out).
inline bool is_empty(const Tensor& t) { return t.data == nullptr; }

}  // namespace mpt::backend::cpu
