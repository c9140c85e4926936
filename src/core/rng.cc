#include "core/rng.h"

#include <cmath>

namespace mpt {

namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}
}  // namespace

Philox::Philox(uint64_t key, uint64_t counter_hi, uint64_t counter_lo) {
  uint32_t c[4] = {static_cast<uint32_t>(counter_lo), static_cast<uint32_t>(counter_lo >> 32),
                   static_cast<uint32_t>(counter_hi), static_cast<uint32_t>(counter_hi >> 32)};
  uint32_t k[2] = {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32)};
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c[0], &hi0, &lo0);
    mulhilo(kM1, c[2], &hi1, &lo1);
    uint32_t n0 = hi1 ^ c[1] ^ k[0], n1 = lo1, n2 = hi0 ^ c[3] ^ k[1], n3 = lo0;
    c[0] = n0, c[1] = n1, c[2] = n2, c[3] = n3;
    k[0] += kW0, k[1] += kW1;
  }
  for (int i = 0; i < 4; ++i) out[i] = c[i];
}

uint64_t hash_name(std::string_view name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

uint64_t mix_key(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float normal_at(uint64_t key, uint64_t index) {
  Philox r(key, 0x6e6f726dull /* "norm" */, index);
  // Box-Muller in double so tails are accurate; one normal per counter keeps it simple.
  double u1 = (static_cast<double>(r.out[0]) + 1.0) / 4294967296.0;
  double u2 = static_cast<double>(r.out[1]) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

void fill_normal(float* dst, int64_t n, uint64_t key, uint64_t first, float mean, float std) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) dst[i] = mean + std * normal_at(key, first + static_cast<uint64_t>(i));
}

}  // namespace mpt
