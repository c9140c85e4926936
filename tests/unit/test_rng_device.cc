// core/rng_device.h (the random numbers GPU kernels draw) equals core/rng.h bit for bit.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/rng_device.h"

namespace mpt {
namespace {

// Keys and counters that exercise every 32-bit half: zero, all ones, carries, and a
// splitmix sequence for the bulk.
std::vector<uint64_t> sample_values(int n, uint64_t seed) {
  std::vector<uint64_t> v = {0ull, 1ull, 0xFFFFFFFFull, 0x100000000ull, ~0ull, 0x8000000000000000ull,
                             0x64726f70ull, 0xDEADBEEFCAFEF00Dull};
  uint64_t s = seed;
  for (int i = 0; i < n; ++i) {
    s += 0x9E3779B97F4A7C15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    v.push_back(z ^ (z >> 31));
  }
  return v;
}

TEST(RngDevice, PhiloxBlocksEqualTheHostPhilox) {
  const std::vector<uint64_t> keys = sample_values(40, 1), his = sample_values(10, 2), los = sample_values(40, 3);
  int64_t compared = 0;
  for (uint64_t key : keys)
    for (uint64_t hi : his)
      for (uint64_t lo : los) {
        const Philox want(key, hi, lo);
        uint32_t got[4] = {0, 0, 0, 0};
        philox_device(key, hi, lo, got);
        for (int i = 0; i < 4; ++i)
          ASSERT_EQ(got[i], want.out[i]) << "key " << key << " counter (" << hi << ", " << lo << ") word " << i;
        ++compared;
      }
  EXPECT_GT(compared, 10000);
}

// A known answer, so that a change to both implementations at once is caught too.
TEST(RngDevice, PhiloxMatchesTheReferenceVector) {
  // Random123's published Philox-4x32-10 answer for counter 0 and key 0.
  uint32_t got[4];
  philox_device(0, 0, 0, got);
  EXPECT_EQ(got[0], 0x6627e8d5u);
  EXPECT_EQ(got[1], 0xe169c58du);
  EXPECT_EQ(got[2], 0xbc57ac4cu);
  EXPECT_EQ(got[3], 0x9b00dbd8u);
}

TEST(RngDevice, MixKeyAndAttentionStreamsEqualTheHost) {
  const std::vector<uint64_t> as = sample_values(200, 4), bs = sample_values(50, 5);
  for (uint64_t a : as)
    for (uint64_t b : bs) {
      ASSERT_EQ(mix_key_device(a, b), mix_key(a, b)) << a << ", " << b;
      ASSERT_EQ(attention_dropout_stream_device(a, b, 7), mix_key(mix_key(a, b), 7)) << a << ", " << b;
    }
}

TEST(RngDevice, Uniform01EqualsTheHostOverEdgeAndRandomBits) {
  std::vector<uint32_t> bits = {0u, 1u, 255u, 256u, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFF00u, 0xFFFFFFFFu};
  for (uint64_t v : sample_values(5000, 6)) bits.push_back(static_cast<uint32_t>(v));
  for (uint32_t b : bits) {
    const float want = uniform01(b), got = uniform01_device(b);
    ASSERT_EQ(got, want) << "bits " << b;
    ASSERT_GT(got, 0.0f);
    ASSERT_LE(got, 1.0f);
  }
  EXPECT_EQ(uniform01_device(0xFFFFFFFFu), 1.0f);
  EXPECT_EQ(uniform01_device(0u), 1.0f / 16777216.0f);
}

TEST(RngDevice, DropoutDecisionsEqualTheHost) {
  const float probs[] = {0.0f, 1e-7f, 0.1f, 0.3f, 0.5f, 0.9f, 0.9999999f};
  const std::vector<uint64_t> keys = sample_values(20, 7);
  int64_t kept = 0, total = 0;
  for (uint64_t key : keys)
    for (float p : probs)
      for (uint64_t index = 0; index < 2000; ++index) {
        const uint64_t i = index < 1000 ? index : index * 0x100000001ull;  // large indices too
        const bool want = dropout_keep(key, i, p);
        ASSERT_EQ(dropout_keep_device(key, i, p), want) << "key " << key << " index " << i << " p " << p;
        if (p == 0.3f) kept += want, ++total;
      }
  // Not a tautology: the decisions really are Bernoulli(0.7) draws.
  EXPECT_NEAR(static_cast<double>(kept) / static_cast<double>(total), 0.7, 0.01);
}

}  // namespace
}  // namespace mpt
