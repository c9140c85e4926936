// Seeded shuffles driven by the counter-based generator: the order depends only on the
// key, so every rank and every resumed run computes the same epoch order.
#pragma once

#include <cstdint>
#include <vector>

namespace mpt::data {

// A permutation of 0..n-1 by Fisher-Yates; swap i draws a 64-bit value from
// Philox(key, counter i), so the bias of taking it modulo i+1 is below 2^-40 for any n here.
std::vector<int64_t> shuffled_order(int64_t n, uint64_t key);

}  // namespace mpt::data
