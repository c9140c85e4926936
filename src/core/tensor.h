// A non-owning view of a dense, row-major array. Memory is owned by arenas and flat
// buffers planned up front; a Tensor only says where an array is and what shape it has.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "core/error.h"

namespace mpt {

enum class DType : int32_t { kF32 = 0, kBF16 = 1, kF16 = 2, kI32 = 3, kI64 = 4, kU8 = 5, kF64 = 6 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kBF16: return 2;
    case DType::kF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
    case DType::kF64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t);

struct Tensor {
  static constexpr int kMaxDims = 4;
  void* data = nullptr;
  DType dtype = DType::kF32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};

  Tensor() = default;
  Tensor(void* p, DType t, std::initializer_list<int64_t> dims) : data(p), dtype(t) {
    MPT_ASSERT(dims.size() <= static_cast<size_t>(kMaxDims));
    for (int64_t d : dims) shape[ndim++] = d;
  }
  static Tensor f32(float* p, std::initializer_list<int64_t> dims) { return Tensor(p, DType::kF32, dims); }
  static Tensor i32(int32_t* p, std::initializer_list<int64_t> dims) { return Tensor(p, DType::kI32, dims); }

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  // Rows [begin, begin + count) of the first dimension, same trailing shape.
  Tensor rows(int64_t begin, int64_t count) const {
    MPT_ASSERT(ndim >= 1 && begin >= 0 && count >= 0 && begin + count <= shape[0]);
    Tensor t = *this;
    t.shape[0] = count;
    t.data = static_cast<char*>(data) + static_cast<size_t>(begin) * (bytes() / static_cast<size_t>(shape[0] ? shape[0] : 1));
    return t;
  }
  float* f() const {
    MPT_ASSERT(dtype == DType::kF32);
    return static_cast<float*>(data);
  }
  int32_t* i() const {
    MPT_ASSERT(dtype == DType::kI32);
    return static_cast<int32_t*>(data);
  }
};

}  // namespace mpt
