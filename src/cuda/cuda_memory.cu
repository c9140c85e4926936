// CudaOps' copies inside device memory and its pointer test. device_copy has memmove's
// semantics (ops.h: the areas may overlap), which cudaMemcpyAsync lacks: overlapping areas
// are copied in the safe direction, either as a few copies of disjoint pieces or, for a
// short shift, by one kernel. Neither allocates, so the copy records into a graph.
#include <cstdint>

#include "cuda/cuda_ops.h"
#include "cuda/device.h"

namespace mpt::cuda {

namespace {

constexpr int kMoveThreads = 1024;
constexpr int kMoveWordsPerThread = 8;
// Overlapping copies whose shift leaves at most this many pieces run as separate copies of
// disjoint pieces (each at full bandwidth); shorter shifts run in memmove_kernel.
constexpr size_t kMaxPieces = 8;

// dst[0, n) = src[0, n) for overlapping areas, in one block that walks tile by tile away
// from the side the shift moves toward (ascending when dst < src): a tile is read whole
// before it is written, and its writes land only on source words already read.
template <typename Word, bool kAscending>
__global__ void memmove_kernel(Word* dst, const Word* src, int64_t n) {
  const int64_t tile = int64_t{kMoveThreads} * kMoveWordsPerThread;
  for (int64_t start = 0; start < n; start += tile) {
    Word held[kMoveWordsPerThread];
    for (int w = 0; w < kMoveWordsPerThread; ++w) {
      const int64_t at = start + int64_t{w} * kMoveThreads + threadIdx.x;
      if (at < n) held[w] = src[kAscending ? at : n - 1 - at];
    }
    __syncthreads();  // every read of this tile before any of its writes
    for (int w = 0; w < kMoveWordsPerThread; ++w) {
      const int64_t at = start + int64_t{w} * kMoveThreads + threadIdx.x;
      if (at < n) dst[kAscending ? at : n - 1 - at] = held[w];
    }
  }
}

template <typename Word>
void launch_memmove(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  const auto n = static_cast<int64_t>(bytes / sizeof(Word));
  auto* d = static_cast<Word*>(dst);
  const auto* s = static_cast<const Word*>(src);
  if (d < s)
    memmove_kernel<Word, true><<<1, kMoveThreads, 0, stream>>>(d, s, n);
  else
    memmove_kernel<Word, false><<<1, kMoveThreads, 0, stream>>>(d, s, n);
  MPT_CUDA_LAUNCH(memmove_kernel);
}

}  // namespace

void CudaOps::device_copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0 || dst == src) return;
  const auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
  const size_t shift = d > s ? d - s : s - d;
  if (shift >= bytes) {  // disjoint
    MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return;
  }
  if ((bytes + shift - 1) / shift <= kMaxPieces) {
    // Pieces of `shift` bytes are each disjoint from their destination. Copied in order
    // from the end the shift moves toward, a piece overwrites only source bytes that an
    // earlier piece has already copied.
    auto* to = static_cast<char*>(dst);
    const auto* from = static_cast<const char*>(src);
    for (size_t done = 0; done < bytes; done += shift) {
      const size_t piece = bytes - done < shift ? bytes - done : shift;
      const size_t at = d < s ? done : bytes - done - piece;
      MPT_CUDA_CHECK(cudaMemcpyAsync(to + at, from + at, piece, cudaMemcpyDeviceToDevice, stream_));
    }
    return;
  }
  // The widest word that divides both addresses and the length (the shift then too).
  const uintptr_t bits = d | s | static_cast<uintptr_t>(bytes);
  if (bits % 16 == 0)
    launch_memmove<uint4>(dst, src, bytes, stream_);
  else if (bits % 8 == 0)
    launch_memmove<uint2>(dst, src, bytes, stream_);
  else if (bits % 4 == 0)
    launch_memmove<uint32_t>(dst, src, bytes, stream_);
  else if (bits % 2 == 0)
    launch_memmove<uint16_t>(dst, src, bytes, stream_);
  else
    launch_memmove<uint8_t>(dst, src, bytes, stream_);
}

bool CudaOps::is_device_pointer(const void* p) const {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // not a pointer CUDA knows: host memory
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

}  // namespace mpt::cuda
