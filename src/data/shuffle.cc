#include "data/shuffle.h"

#include <numeric>
#include <utility>

#include "core/error.h"
#include "core/rng.h"

namespace mpt::data {

std::vector<int64_t> shuffled_order(int64_t n, uint64_t key) {
  MPT_CHECK(n >= 0, Status::kInvalidArgument, "shuffled_order: negative length ", n);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  for (int64_t i = n - 1; i > 0; --i) {
    Philox r(key, 0x73687566ull /* "shuf" */, static_cast<uint64_t>(i));
    uint64_t bits = (static_cast<uint64_t>(r.out[1]) << 32) | r.out[0];
    int64_t j = static_cast<int64_t>(bits % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

}  // namespace mpt::data
