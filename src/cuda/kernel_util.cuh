// Launch shapes, reductions and small helpers shared by the CUDA layer kernels
// (cuda_layers.cu, cuda_vocab.cu). Internal to src/cuda; each including file gets its own
// copies (internal linkage).
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "cuda/op_checks.h"

namespace mpt::cuda {
namespace {

inline void check_i32(const char* op, const char* arg, const Tensor& t) {
  MPT_CHECK(t.dtype == DType::kI32, Status::kInvalidArgument, op, ": ", arg, " must be I32, got ", describe(t));
  check_view(op, arg, t);
}

inline float* fp(const Tensor& t) { return static_cast<float*>(t.data); }
inline const int32_t* ip(const Tensor& t) { return static_cast<const int32_t*>(t.data); }

// --- launch shapes -------------------------------------------------------------------------

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // kernels stride over whatever is left
constexpr int kWarp = 32;
constexpr int kRowWarps = 8;                      // rows per block in the one-warp-per-row kernels

inline unsigned blocks_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::min((work + per_block - 1) / per_block, kMaxBlocks));
}

// Whether a grid-strided loop over n elements may count in uint32_t: an index below n <=
// 2^31 - 1 plus one grid's threads (at most kMaxBlocks x kThreads = 2^28) stays below 2^32.
inline bool index32(int64_t n) { return n <= INT32_MAX; }

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Butterfly sums: every lane ends with the same bits (addition is commutative).
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Sum (or max) over a block of kThreads threads in a fixed tree; every thread gets the result.
template <typename T, typename Combine>
__device__ T block_reduce(T v, Combine combine) {
  __shared__ T partial[kThreads / kWarp];
  for (int off = kWarp / 2; off > 0; off /= 2) v = combine(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  T r = partial[0];
  for (int w = 1; w < kThreads / kWarp; ++w) r = combine(r, partial[w]);
  return r;
}

}  // namespace
}  // namespace mpt::cuda
