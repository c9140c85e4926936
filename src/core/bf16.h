// bfloat16 on the host and in device code: the upper 16 bits of an IEEE fp32. Narrowing
// rounds to nearest, ties to even (as the GPU's conversion instructions do); NaN stays NaN
// (quiet), infinities and signed zeros are kept. Widening is exact.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MPT_HOST_DEVICE __host__ __device__
#else
#define MPT_HOST_DEVICE
#endif

namespace mpt {

MPT_HOST_DEVICE inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

MPT_HOST_DEVICE inline float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

// x rounded to the nearest bf16 value, as an fp32.
MPT_HOST_DEVICE inline float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

}  // namespace mpt
