#include "backend/cpu/convert.h"

#include "backend/cpu/check.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/threading.h"
#include "core/bf16.h"

namespace mpt::backend::cpu {

void widen_bf16(float* dst, const uint16_t* src, int64_t n) {
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void narrow_to_bf16(uint16_t* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

void round_to_bf16(float* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if(n >= kMinParallelWork)
  for (int64_t i = 0; i < n; ++i) dst[i] = round_bf16(src[i]);
}

void cast(Tensor dst, Tensor src) {
  const char* op = "cast";
  check_numel(op, "dst", dst, src.numel());
  if (dst.dtype == src.dtype) return copy(dst, src);
  check_float(op, "dst", dst);
  check_float(op, "src", src);
  // Elements of different sizes: converting in place would overwrite unread input.
  const auto* d = static_cast<const char*>(dst.data);
  const auto* s = static_cast<const char*>(src.data);
  MPT_CPU_CHECK(d + dst.bytes() <= s || s + src.bytes() <= d, op,
                "dst " + describe(dst) + " and src " + describe(src) + " overlap");
  if (dst.dtype == DType::kBF16)
    narrow_to_bf16(static_cast<uint16_t*>(dst.data), static_cast<const float*>(src.data), dst.numel());
  else
    widen_bf16(static_cast<float*>(dst.data), static_cast<const uint16_t*>(src.data), dst.numel());
}

}  // namespace mpt::backend::cpu
