// Memory planned up front. An Arena is one aligned allocation carved into named regions;
// the sizes are summed before the allocation is made, so the bytes a step uses are known
// (and printable) before the first step, and the steady state allocates nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mpt {

// Where memory comes from: host memory, or a backend's (device memory for a GPU; see
// backend::Ops, which is one). allocate() returns zero-filled memory aligned to at least
// 64 bytes and throws Error(kOutOfMemory).
class MemoryResource {
 public:
  virtual ~MemoryResource() = default;
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* p) = 0;
};

class Arena {
 public:
  static constexpr size_t kAlign = 64;
  // memory: where allocate() takes the arena from; null: host memory.
  explicit Arena(MemoryResource* memory = nullptr) : memory_(memory) {}
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
  MemoryResource* memory_ = nullptr;
  uint8_t* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace mpt
