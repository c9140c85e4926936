#include "data/numpy_random.h"

namespace mpt::data {

uint64_t NumpyRandomState::interval(uint64_t max) {
  if (max == 0) return 0;
  // The smallest all-ones mask covering max; draws above max are rejected, never folded,
  // so every value is equally likely and the draw count matches numpy's.
  uint64_t mask = max;
  mask |= mask >> 1;
  mask |= mask >> 2;
  mask |= mask >> 4;
  mask |= mask >> 8;
  mask |= mask >> 16;
  mask |= mask >> 32;
  uint64_t value;
  if (max <= 0xffffffffULL) {
    do {
      value = next32() & mask;
    } while (value > max);
  } else {
    do {
      value = next64() & mask;
    } while (value > max);
  }
  return value;
}

}  // namespace mpt::data
