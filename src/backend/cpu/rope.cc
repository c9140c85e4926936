#include "backend/cpu/rope.h"

#include <cmath>

#include "backend/cpu/check.h"
#include "backend/cpu/threading.h"

namespace mpt::backend::cpu {

void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base, bool inverse) {
  const char* op = "rope";
  check_f32(op, "x", x);
  check_i32(op, "positions", positions);
  MPT_CPU_CHECK(heads > 0 && head_dim > 0 && rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0, op,
            str("heads ", heads, ", head_dim ", head_dim, ", rotary_dim ", rotary_dim,
                ": need rotary_dim even and in (0, head_dim]"));
  MPT_CPU_CHECK(base > 0 && std::isfinite(base), op, str("base ", base, " must be positive"));
  const int64_t width = heads * head_dim;
  MPT_CPU_CHECK(x.numel() % width == 0, op, "x " + describe(x) + str(" rows must hold heads*head_dim = ", width));
  const int64_t tokens = x.numel() / width;
  check_numel(op, "positions", positions, tokens);
  // Fixed-size tables on the stack: this op runs every layer of every step and must not
  // allocate. 1024 rotary channels is far beyond any real head size.
  constexpr int64_t kMaxRotaryDim = 1024;
  MPT_CPU_CHECK(rotary_dim <= kMaxRotaryDim, op, str("rotary_dim ", rotary_dim, " exceeds ", kMaxRotaryDim));
  const int64_t half = rotary_dim / 2;
  float* px = x.f();
  const int32_t* pos = positions.i();
  const double sign = inverse ? -1.0 : 1.0;
  double freq[kMaxRotaryDim / 2];
  for (int64_t i = 0; i < half; ++i)
    freq[i] = std::pow(static_cast<double>(base), -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
#pragma omp parallel if(tokens * width >= kMinParallelWork)
  {
    // cos and sin of this token's angles, shared by its heads; angles in double because
    // pos * freq reaches 1e5 radians at long context.
    float cs[kMaxRotaryDim];
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = sign * pos[t] * freq[i];
        cs[i] = static_cast<float>(std::cos(angle));
        cs[half + i] = static_cast<float>(std::sin(angle));
      }
      for (int64_t h = 0; h < heads; ++h) {
        float* row = px + t * width + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = row[i], b = row[i + half], c = cs[i], s = cs[half + i];
          row[i] = a * c - b * s;
          row[i + half] = b * c + a * s;
        }
      }
    }
  }
}

}  // namespace mpt::backend::cpu
