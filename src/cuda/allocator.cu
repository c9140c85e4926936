#include "cuda/allocator.h"

#include <cstdint>
#include <limits>

#include "core/error.h"
#include "cuda/device.h"

namespace mpt::cuda {

namespace {

constexpr size_t kSmallLimit = size_t{1} << 20;  // classes below: 512-byte steps
constexpr size_t kSmallStep = 512;
constexpr size_t kLargeStep = size_t{2} << 20;

size_t round_up(size_t n, size_t step) { return (n + step - 1) / step * step; }

// Returns every block of `blocks` to the driver. Errors are not thrown: this runs from the
// destructor and from the out-of-memory path, where a first error is the one to report.
void free_blocks(std::vector<void*>& blocks) {
  for (void* p : blocks) cudaFree(p);
  blocks.clear();
}

}  // namespace

CachingAllocator::CachingAllocator(int device) : device_(device) {}

CachingAllocator::~CachingAllocator() {
  // Work still queued may read these blocks: let it finish before the memory goes back.
  if (cudaSetDevice(device_) == cudaSuccess) cudaDeviceSynchronize();
  for (auto& [size, blocks] : free_) free_blocks(blocks);
  for (auto& [p, size] : in_use_) cudaFree(p);
  cudaGetLastError();  // nothing here may leave a sticky error behind for the next user
}

size_t CachingAllocator::size_class(size_t bytes) {
  return bytes <= kSmallLimit ? round_up(bytes, kSmallStep) : round_up(bytes, kLargeStep);
}

void* CachingAllocator::allocate(size_t bytes) {
  if (bytes == 0) return nullptr;
  std::lock_guard<std::mutex> lock(mu_);
  const auto out_of_memory = [&](const char* why) {
    fail(Status::kOutOfMemory, "cuda:", device_, ": cannot allocate ", bytes, " bytes (", why, "; ", in_use_bytes_,
         " bytes in use, ", cached_bytes_, " cached)");
  };
  if (bytes > std::numeric_limits<size_t>::max() - kLargeStep) out_of_memory("larger than any device");
  const size_t size = size_class(bytes);

  void* p = nullptr;
  auto cached = free_.find(size);
  if (cached != free_.end() && !cached->second.empty()) {
    p = cached->second.back();
    cached->second.pop_back();
    cached_bytes_ -= size;
  } else {
    MPT_CUDA_CHECK(cudaSetDevice(device_));
    cudaError_t err = cudaMalloc(&p, size);
    if (err == cudaErrorMemoryAllocation && cached_bytes_ > 0) {
      cudaGetLastError();
      // The cache may hold enough in other classes: give it back and try once more.
      MPT_CUDA_CHECK(cudaDeviceSynchronize());
      for (auto& [s, blocks] : free_) free_blocks(blocks);
      free_.clear();
      cached_bytes_ = 0;
      err = cudaMalloc(&p, size);
    }
    if (err == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      out_of_memory("the device is out of memory");
    }
    MPT_CUDA_CHECK(err);
    ++driver_allocations_;
  }
  in_use_.emplace(p, size);
  in_use_bytes_ += size;
  if (in_use_bytes_ > peak_) peak_ = in_use_bytes_;
  return p;
}

void CachingAllocator::release(void* p) {
  if (p == nullptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = in_use_.find(p);
  MPT_CHECK(it != in_use_.end(), Status::kInvalidArgument, "cuda:", device_, ": release of ", p,
            ", which this allocator did not give out (or released twice)");
  const size_t size = it->second;
  in_use_.erase(it);
  in_use_bytes_ -= size;
  free_[size].push_back(p);
  cached_bytes_ += size;
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  if (cached_bytes_ == 0) return;
  MPT_CUDA_CHECK(cudaSetDevice(device_));
  // A cached block may still be read by queued work (blocks are reused in stream order).
  MPT_CUDA_CHECK(cudaDeviceSynchronize());
  cudaError_t first = cudaSuccess;
  for (auto& [size, blocks] : free_)
    for (void* p : blocks) {
      const cudaError_t err = cudaFree(p);
      if (first == cudaSuccess) first = err;
    }
  free_.clear();
  cached_bytes_ = 0;
  MPT_CUDA_CHECK(first);
}

size_t CachingAllocator::bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_bytes_;
}

size_t CachingAllocator::bytes_cached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

size_t CachingAllocator::peak_bytes_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

int64_t CachingAllocator::driver_allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return driver_allocations_;
}

}  // namespace mpt::cuda
