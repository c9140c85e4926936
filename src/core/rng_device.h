// The random numbers of core/rng.h as inline functions that compile for both the host and
// CUDA device code, so a GPU kernel draws exactly the CPU backend's bits: the same
// Philox-4x32-10 blocks, the same uniform01 and dropout decisions, the same key mixing.
// Bit-identity with core/rng.cc is tested in tests/unit/test_rng_device.cc.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define MPT_RNG_FN __host__ __device__ __forceinline__
#else
#define MPT_RNG_FN inline
#endif

namespace mpt {

// One Philox-4x32-10 block for a 64-bit key and a 128-bit counter (hi, lo): Philox(key,
// counter_hi, counter_lo).out.
MPT_RNG_FN void philox_device(uint64_t key, uint64_t counter_hi, uint64_t counter_lo, uint32_t out[4]) {
  const uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  const uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
#if defined(__CUDA_ARCH__)
    const uint32_t hi0 = __umulhi(m0, c0), lo0 = m0 * c0;
    const uint32_t hi1 = __umulhi(m1, c2), lo1 = m1 * c2;
#else
    const uint64_t p0 = static_cast<uint64_t>(m0) * c0, p1 = static_cast<uint64_t>(m1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
#endif
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += w0, k1 += w1;
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

// mix_key(a, b): two 64-bit values into one key (splitmix-style).
MPT_RNG_FN uint64_t mix_key_device(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// uniform01(bits): uniform in (0, 1]. Every step is exact in fp32 (24-bit integer plus one,
// times a power of two), so host and device agree bit for bit.
MPT_RNG_FN float uniform01_device(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

// dropout_keep(key, index, p): element `index` of stream `key` is kept (probability 1-p).
MPT_RNG_FN bool dropout_keep_device(uint64_t key, uint64_t index, float p) {
  uint32_t r[4];
  philox_device(key, 0x64726f70ull /* "drop" */, index, r);
  return uniform01_device(r[0]) > p;
}

// The attention dropout stream of (global head, batch index): mix_key(mix_key(key, head), b),
// as backend::AttentionDims documents.
MPT_RNG_FN uint64_t attention_dropout_stream_device(uint64_t key, uint64_t global_head, uint64_t batch) {
  return mix_key_device(mix_key_device(key, global_head), batch);
}

}  // namespace mpt

#undef MPT_RNG_FN
