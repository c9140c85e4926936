// Counter-based random numbers (Philox-4x32-10). A value depends only on (key, counter),
// never on call order, so a parameter element drawn from (seed, parameter name, global
// element index) is the same at every parallel layout, and a dropout mask can be
// regenerated in backward instead of stored.
#pragma once

#include <cstdint>
#include <string_view>

namespace mpt {

struct Philox {
  uint32_t out[4];
  // One Philox-4x32-10 block for a 64-bit key and a 128-bit counter (hi, lo).
  Philox(uint64_t key, uint64_t counter_hi, uint64_t counter_lo);
};

// 64-bit FNV-1a of a string; keys parameters by their global name.
uint64_t hash_name(std::string_view name);

// Mixes two 64-bit values into one key (splitmix-style).
uint64_t mix_key(uint64_t a, uint64_t b);

// Uniform in (0, 1] from 32 random bits.
inline float uniform01(uint32_t bits) { return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f); }

// Standard normal for element `index` of the stream `key` (Box-Muller on one Philox block).
float normal_at(uint64_t key, uint64_t index);

// Fills dst[i] = mean + std * normal_at(key, first + i) for i in [0, n).
void fill_normal(float* dst, int64_t n, uint64_t key, uint64_t first, float mean, float std);

// Dropout keep-decision for element `index` of stream `key`: true with probability 1-p.
inline bool dropout_keep(uint64_t key, uint64_t index, float p) {
  Philox r(key, 0x64726f70ull /* "drop" */, index);
  return uniform01(r.out[0]) > p;
}

}  // namespace mpt
