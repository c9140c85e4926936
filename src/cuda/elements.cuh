// Tensor elements as the CUDA kernels read and write them. Each floating tensor is f32 or
// bf16 on its own (ops.h, "Precision"), so a kernel takes its tensors as In / Out views whose
// dtype is chosen at run time; every thread of a launch sees the same dtype, so the branch is
// uniform and costs little next to the memory traffic. Kernels compute in fp32: a bf16
// element is widened exactly on load, and a result is rounded once, to nearest even, on
// store, with core/bf16.h's conversion (the CPU backend's bits, NaN and -0 included).
#pragma once

#include <cstdint>

#include "core/bf16.h"
#include "core/tensor.h"

namespace mpt::cuda {

__device__ __forceinline__ float load_bf16(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ void store_bf16(uint16_t* p, int64_t i, float v) { p[i] = f32_to_bf16(v); }

// A tensor an op reads. Null data reads as "absent" (optional arguments).
struct In {
  const void* data = nullptr;
  bool bf16 = false;

  __device__ __forceinline__ float operator[](int64_t i) const {
    return bf16 ? load_bf16(static_cast<const uint16_t*>(data), i) : static_cast<const float*>(data)[i];
  }
  // The view from element `offset` on.
  __host__ __device__ __forceinline__ In at(int64_t offset) const {
    return {static_cast<const char*>(data) + offset * (bf16 ? 2 : 4), bf16};
  }
  __host__ __device__ __forceinline__ explicit operator bool() const { return data != nullptr; }
};

// A tensor an op writes (or reads and writes: "acc" outputs, in-place ops).
struct Out {
  void* data = nullptr;
  bool bf16 = false;

  __device__ __forceinline__ float operator[](int64_t i) const {
    return bf16 ? load_bf16(static_cast<const uint16_t*>(data), i) : static_cast<const float*>(data)[i];
  }
  __device__ __forceinline__ void set(int64_t i, float v) const {
    if (bf16)
      store_bf16(static_cast<uint16_t*>(data), i, v);
    else
      static_cast<float*>(data)[i] = v;
  }
  // acc: widened, added to in fp32, rounded once.
  __device__ __forceinline__ void add(int64_t i, float v) const { set(i, (*this)[i] + v); }
  __host__ __device__ __forceinline__ Out at(int64_t offset) const {
    return {static_cast<char*>(data) + offset * (bf16 ? 2 : 4), bf16};
  }
  __host__ __device__ __forceinline__ operator In() const { return {data, bf16}; }
  __host__ __device__ __forceinline__ explicit operator bool() const { return data != nullptr; }
};

// Views of a checked f32/bf16 tensor (op_checks.h check_float); an empty optional tensor
// gives a null view.
inline In in_view(const Tensor& t) { return {t.data, t.dtype == DType::kBF16}; }
inline Out out_view(const Tensor& t) { return {t.data, t.dtype == DType::kBF16}; }

}  // namespace mpt::cuda
