// Memory planned up front. An Arena is one aligned allocation carved into named regions;
// the sizes are summed before the allocation is made, so the bytes a step uses are known
// (and printable) before the first step, and the steady state allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mpt {

class Arena {
 public:
  static constexpr size_t kAlign = 64;
  Arena() = default;
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept;
  Arena& operator=(Arena&& o) noexcept;

  // Planning phase: reserve `bytes` and get back an offset. Call before allocate().
  size_t reserve(size_t bytes);
  // Allocates all reserved bytes at once, zero-filled. Throws kOutOfMemory.
  void allocate();
  template <typename T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }
  size_t size() const { return size_; }
  bool allocated() const { return base_ != nullptr; }

 private:
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mpt
