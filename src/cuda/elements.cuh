// Tensor elements as the CUDA kernels read and write them. Each floating tensor is f32 or
// bf16 on its own (ops.h, "Precision"), so a kernel takes its tensors as In / Out views whose
// dtype is chosen at run time (a uniform branch), or, when a call's tensors share one dtype,
// as InT / OutT views with the dtype a template parameter (with_views picks). Kernels
// compute in fp32: a bf16 element is widened exactly on load, and a result is rounded once,
// to nearest even, on store, with core/bf16.h's conversion (the CPU backend's bits, NaN and
// -0 included).
#pragma once

#include <cstdint>
#include <initializer_list>

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

// --- one dtype known at compile time ---------------------------------------------------------
// When every tensor of a call has the same dtype (the usual case: all f32, or all bf16 in
// mixed precision), kernels take InT/OutT views instead: the same interface as In/Out with T
// = float or uint16_t (bf16 bits) fixed, so no branch per element, and 16-byte packs (4 f32
// or 8 bf16) for the kernels that move whole aligned runs. Same widening and rounding.

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(uint16_t v) { return bf16_to_f32(v); }
template <typename T>
__device__ __forceinline__ T narrow(float v);
template <>
__device__ __forceinline__ float narrow<float>(float v) { return v; }
template <>
__device__ __forceinline__ uint16_t narrow<uint16_t>(float v) { return f32_to_bf16(v); }

// 16 bytes of T.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / static_cast<int>(sizeof(T));
  T v[kSize];
};

template <typename T>
struct InT {
  const T* data = nullptr;
  static constexpr bool bf16 = sizeof(T) == 2;
  __device__ __forceinline__ float operator[](int64_t i) const { return widen(data[i]); }
  // The pack starting at element i (i a multiple of Pack<T>::kSize, data 16-byte aligned).
  __device__ __forceinline__ Pack<T> pack(int64_t i) const { return *reinterpret_cast<const Pack<T>*>(data + i); }
  __host__ __device__ __forceinline__ InT at(int64_t offset) const { return {data + offset}; }
  __host__ __device__ __forceinline__ explicit operator bool() const { return data != nullptr; }
};

template <typename T>
struct OutT {
  T* data = nullptr;
  static constexpr bool bf16 = sizeof(T) == 2;
  __device__ __forceinline__ float operator[](int64_t i) const { return widen(data[i]); }
  __device__ __forceinline__ void set(int64_t i, float v) const { data[i] = narrow<T>(v); }
  __device__ __forceinline__ void add(int64_t i, float v) const { set(i, (*this)[i] + v); }
  __device__ __forceinline__ Pack<T> pack(int64_t i) const { return *reinterpret_cast<const Pack<T>*>(data + i); }
  __device__ __forceinline__ void set_pack(int64_t i, const Pack<T>& p) const {
    *reinterpret_cast<Pack<T>*>(data + i) = p;
  }
  __host__ __device__ __forceinline__ OutT at(int64_t offset) const { return {data + offset}; }
  __host__ __device__ __forceinline__ operator InT<T>() const { return {data}; }
  __host__ __device__ __forceinline__ explicit operator bool() const { return data != nullptr; }
};

// The view families a kernel template is instantiated with: Typed<T> (one dtype) or
// Dynamic (each tensor's dtype read at run time, for calls that mix them).
template <typename T_>
struct Typed {
  using T = T_;
  using I = InT<T>;
  using O = OutT<T>;
  static constexpr int kPack = Pack<T>::kSize;
  static I in(const Tensor& t) { return {static_cast<const T*>(t.data)}; }
  static O out(const Tensor& t) { return {static_cast<T*>(t.data)}; }
};
struct Dynamic {
  using I = In;
  using O = Out;
  static constexpr int kPack = 1;
  static I in(const Tensor& t) { return in_view(t); }
  static O out(const Tensor& t) { return out_view(t); }
};

// Calls f(Typed<float>{}), f(Typed<uint16_t>{}) or f(Dynamic{}): typed when every tensor
// given that has data shares one dtype (empty optional tensors do not count).
template <typename F>
void with_views(std::initializer_list<const Tensor*> tensors, F&& f) {
  int f32 = 0, bf16 = 0;
  for (const Tensor* t : tensors) {
    if (t->data == nullptr) continue;
    (t->dtype == DType::kBF16 ? bf16 : f32) += 1;
  }
  if (bf16 == 0)
    f(Typed<float>{});
  else if (f32 == 0)
    f(Typed<uint16_t>{});
  else
    f(Dynamic{});
}

// Whether every pointer given is on a 16-byte boundary (null ones are).
inline bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

}  // namespace mpt::cuda
