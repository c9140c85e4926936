// Conversions between fp32 and bf16 (core/bf16.h: round to nearest even, NaN kept quiet,
// widening exact): the cast op and the loops the bf16 staging of every other op runs on.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace mpt::backend::cpu {

// dst = src in dst's dtype: F32 -> BF16 rounds, BF16 -> F32 widens, equal dtypes copy.
// Same numel; any other pair of dtypes is refused.
void cast(Tensor dst, Tensor src);

// n elements each, on the OpenMP team when n is large. dst and src must not overlap.
void widen_bf16(float* dst, const uint16_t* src, int64_t n);
void narrow_to_bf16(uint16_t* dst, const float* src, int64_t n);
// dst = src rounded to bf16 values, kept in fp32 (dst may be src).
void round_to_bf16(float* dst, const float* src, int64_t n);

}  // namespace mpt::backend::cpu
