#include "core/arena.h"

#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace mpt {

namespace {
void release(MemoryResource* memory, uint8_t* base) {
  if (memory) memory->release(base);
  else std::free(base);
}
}  // namespace

Arena::~Arena() { release(memory_, base_); }

Arena::Arena(Arena&& o) noexcept
    : memory_(o.memory_), base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}

Arena& Arena::operator=(Arena&& o) noexcept {
  if (this != &o) {
    release(memory_, base_);
    memory_ = o.memory_;
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
  if (memory_) {
    base_ = static_cast<uint8_t*>(memory_->allocate(n));
    return;
  }
  base_ = static_cast<uint8_t*>(std::aligned_alloc(kAlign, n));
  MPT_CHECK(base_ != nullptr, Status::kOutOfMemory, "out of host memory allocating ", n, " bytes");
  std::memset(base_, 0, n);
}

}  // namespace mpt
