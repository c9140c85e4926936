// Device memory without cudaMalloc/cudaFree in the steady state: a caching allocator.
// Blocks are rounded up to size classes (512-byte multiples below 1 MiB, 2 MiB multiples
// above) and kept on free lists per class when released; a request takes a cached block of
// its class before asking the driver. When cudaMalloc fails the cache is returned to the
// driver and the request retried once; then Error(kOutOfMemory) names the request, the
// bytes in use and cached, and the device. Blocks are used on one stream (the backend's),
// so a released block can be reused at once in stream order.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace mpt::cuda {

class CachingAllocator {
 public:
  explicit CachingAllocator(int device);
  ~CachingAllocator();  // returns every block to the driver
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // A block of at least `bytes` (256-byte aligned; null for 0 bytes).
  void* allocate(size_t bytes);
  // Back to the cache; nullptr is ignored; a pointer this allocator did not give out throws
  // Error(kInvalidArgument).
  void release(void* p);
  // Frees every cached (not in use) block.
  void empty_cache();

  size_t bytes_in_use() const;
  size_t bytes_cached() const;
  size_t peak_bytes_in_use() const;
  int64_t driver_allocations() const;  // cudaMalloc calls so far

 private:
  static size_t size_class(size_t bytes);

  int device_;
  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> in_use_;             // pointer -> class size
  std::map<size_t, std::vector<void*>> free_;            // class size -> cached blocks
  size_t in_use_bytes_ = 0, cached_bytes_ = 0, peak_ = 0;
  int64_t driver_allocations_ = 0;
};

}  // namespace mpt::cuda
