// The output pass of the norm kernels (cuda_layers.cu) and of the add + norm kernels
// (cuda_fused.cu): one row, by the 32 lanes of a warp, from statistics already reduced. One
// expression per element, so the lane-strided form and the packed form give the same bits.
#pragma once

#include <cstdint>

#include "cuda/elements.cuh"
#include "cuda/kernel_util.cuh"

namespace mpt::cuda {
namespace {

__device__ __forceinline__ float layernorm_value(float x, float m, float r, float w, float b) {
  return (x - m) * r * w + b;
}
__device__ __forceinline__ float rmsnorm_value(float x, float r, float w) { return x * r * w; }

// out = (x - m) * r * w + b (b may be absent). vec: typed views, h a multiple of the pack and
// every row 16-byte aligned; then each lane moves whole packs.
template <typename V>
__device__ __forceinline__ void layernorm_store(typename V::O orow, typename V::I xr, typename V::I w,
                                                typename V::I b, int64_t h, float m, float r, int lane, bool vec) {
  if constexpr (V::kPack > 1) {
    if (vec) {
      using T = typename V::T;
      constexpr int W = V::kPack;
      for (int64_t j = static_cast<int64_t>(lane) * W; j < h; j += kWarp * W) {
        const Pack<T> xp = xr.pack(j), wp = w.pack(j);
        Pack<T> bp{}, o;
        if (b) bp = b.pack(j);
#pragma unroll
        for (int k = 0; k < W; ++k)
          o.v[k] = narrow<T>(layernorm_value(widen(xp.v[k]), m, r, widen(wp.v[k]), b ? widen(bp.v[k]) : 0.0f));
        orow.set_pack(j, o);
      }
      return;
    }
  }
  for (int64_t j = lane; j < h; j += kWarp) orow.set(j, layernorm_value(xr[j], m, r, w[j], b ? b[j] : 0.0f));
}

// out = x * r * w.
template <typename V>
__device__ __forceinline__ void rmsnorm_store(typename V::O orow, typename V::I xr, typename V::I w, int64_t h,
                                              float r, int lane, bool vec) {
  if constexpr (V::kPack > 1) {
    if (vec) {
      using T = typename V::T;
      constexpr int W = V::kPack;
      for (int64_t j = static_cast<int64_t>(lane) * W; j < h; j += kWarp * W) {
        const Pack<T> xp = xr.pack(j), wp = w.pack(j);
        Pack<T> o;
#pragma unroll
        for (int k = 0; k < W; ++k) o.v[k] = narrow<T>(rmsnorm_value(widen(xp.v[k]), r, widen(wp.v[k])));
        orow.set_pack(j, o);
      }
      return;
    }
  }
  for (int64_t j = lane; j < h; j += kWarp) orow.set(j, rmsnorm_value(xr[j], r, w[j]));
}

// Whether a norm call over rows of h elements may use packs: h a multiple of a 16-byte pack
// of `dtype` and every tensor 16-byte aligned.
inline bool norm_packs(int64_t h, DType dtype, std::initializer_list<const void*> ptrs) {
  return h % (16 / static_cast<int64_t>(dtype_size(dtype))) == 0 && aligned16(ptrs);
}

}  // namespace
}  // namespace mpt::cuda
