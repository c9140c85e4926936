#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace mpt {

Arena::~Arena() { std::free(base_); }

Arena::Arena(Arena&& o) noexcept : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    std::free(base_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

size_t Arena::reserve(size_t bytes) {
  MPT_ASSERT(base_ == nullptr);
  size_t off = size_;
  size_ += (bytes + kAlign - 1) / kAlign * kAlign;
  return off;
}

void Arena::allocate() {
  MPT_ASSERT(base_ == nullptr);
  size_t n = size_ == 0 ? kAlign : size_;
  base_ = static_cast<uint8_t*>(std::aligned_alloc(kAlign, n));
  MPT_CHECK(base_ != nullptr, Status::kOutOfMemory, "out of host memory allocating ", n, " bytes");
  std::memset(base_, 0, n);
}

}  // namespace mpt
