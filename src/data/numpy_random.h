// numpy.random.RandomState(seed) for an integer seed, reproduced exactly: MT19937 seeded by
// init_genrand (as std::mt19937 is), numpy's legacy bounded integers (random_interval: a
// mask-and-reject draw from 32-bit outputs when the bound fits 32 bits, else from 64-bit
// outputs built high word first) and RandomState.shuffle of a 1-D array (Fisher-Yates from
// the last element down). Megatron shuffles its GPT document and sample indices with this
// generator, so mptrain visits samples in the same order as Megatron-LM for the same data
// and seed.
#pragma once

#include <cstdint>
#include <random>
#include <utility>

namespace mpt::data {

class NumpyRandomState {
 public:
  explicit NumpyRandomState(uint32_t seed) : mt_(seed) {}

  uint32_t next32() { return static_cast<uint32_t>(mt_()); }
  uint64_t next64() {
    const uint64_t hi = next32();
    return (hi << 32) | next32();
  }
  // A uniform integer in [0, max] (numpy's random_interval).
  uint64_t interval(uint64_t max);

  // RandomState.shuffle(x) for a 1-D array x of n elements.
  template <typename T>
  void shuffle(T* x, int64_t n) {
    for (int64_t i = n - 1; i >= 1; --i) {
      const int64_t j = static_cast<int64_t>(interval(static_cast<uint64_t>(i)));
      std::swap(x[i], x[j]);
    }
  }

 private:
  std::mt19937 mt_;
};

}  // namespace mpt::data
