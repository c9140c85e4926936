// The vocabulary ops of the CUDA backend: the vocab-parallel embedding (its backward sums
// each row's tokens in token order through a stable sort) and the cross-entropy pieces.
// Each follows its CPU twin in src/backend/cpu; every reduction has a fixed shape. The
// embedding's table and rows are f32 or bf16 each (elements.cuh); the cross-entropy pieces are
// f32, except the gradient handed back to the output layer (dlogits), which may be bf16.
// ce_stats reads each row once (an online softmax), ce_bwd moves four logits per access.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/kernel_util.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {
namespace {

// --- embedding -------------------------------------------------------------------------------

__global__ void embedding_fwd_kernel(Out out, const int32_t* ids, In table, int64_t tokens, int64_t h,
                                     int64_t vocab_start, int64_t vocab, bool accumulate) {
  const int64_t n = tokens * h;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t t = i / h, j = i % h, row = static_cast<int64_t>(ids[t]) - vocab_start;
    const bool inside = row >= 0 && row < vocab;
    if (accumulate) {
      if (inside) out.add(i, table[row * h + j]);
    } else {
      out.set(i, inside ? table[row * h + j] : 0.0f);
    }
  }
}

// Sort keys: the table row of each token, or `vocab` (sorted last, skipped) outside the range.
__global__ void embedding_keys_kernel(uint32_t* keys, int32_t* order, const int32_t* ids, int64_t tokens,
                                      int64_t vocab_start, int64_t vocab) {
  for (int64_t t = global_thread(); t < tokens; t += grid_threads()) {
    const int64_t row = static_cast<int64_t>(ids[t]) - vocab_start;
    keys[t] = static_cast<uint32_t>(row >= 0 && row < vocab ? row : vocab);
    order[t] = static_cast<int32_t>(t);
  }
}

// Tokens sorted stably by row: the block at the first position of a row's run adds that run's
// gradients in token order, exactly as the CPU loop does, for its tile of columns (in fp32,
// rounded once into a bf16 dtable).
__global__ void embedding_bwd_kernel(Out dtable, const uint32_t* keys, const int32_t* order, In dout, int64_t tokens,
                                     int64_t h, int64_t vocab) {
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  for (int64_t i = blockIdx.x; i < tokens; i += gridDim.x) {
    const uint32_t row = keys[i];
    if (row >= vocab || (i > 0 && keys[i - 1] == row) || j >= h) continue;
    float acc = dtable[row * h + j];
    for (int64_t s = i; s < tokens && keys[s] == row; ++s) acc += dout[static_cast<int64_t>(order[s]) * h + j];
    dtable.set(row * h + j, acc);
  }
}

int64_t embedding_hidden(const char* op, const Tensor& rows, const Tensor& ids, const Tensor& table) {
  check_float(op, "table", table);
  check_i32(op, "ids", ids);
  check_float(op, "out/dout", rows);
  const int64_t h = last_dim(table);
  MPT_CHECK(h > 0 && table.ndim >= 2, Status::kInvalidArgument, op, ": table ", describe(table),
            " must be [V_local, H]");
  check_numel(op, "out/dout", rows, ids.numel() * h);
  return h;
}

size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

// --- cross-entropy ---------------------------------------------------------------------------

struct CeLayout {
  int64_t tokens, cols, valid;  // valid: leading columns whose ids are < vocab_valid
};

CeLayout ce_layout(const char* op, const Tensor& logits, int64_t vocab_start, int64_t vocab_valid) {
  check_f32(op, "logits", logits);
  MPT_CHECK(vocab_start >= 0 && vocab_valid >= 0, Status::kInvalidArgument, op, ": vocab_start ", vocab_start,
            " and vocab_valid ", vocab_valid, " must be non-negative");
  const int64_t cols = last_dim(logits);
  MPT_CHECK(cols > 0, Status::kInvalidArgument, op, ": logits ", describe(logits), " has no columns");
  return {logits.numel() / cols, cols, std::clamp<int64_t>(vocab_valid - vocab_start, 0, cols)};
}

void check_per_token(const char* op, const char* arg, const Tensor& t, int64_t tokens, bool is_int = false) {
  if (is_int)
    check_i32(op, arg, t);
  else
    check_f32(op, arg, t);
  check_numel(op, arg, t, tokens);
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};

// One block per row. fmaxf skips NaN as the CPU's std::max(mx, x) does.
__global__ void ce_row_max_kernel(float* row_max, const float* logits, int64_t tokens, int64_t cols, int64_t valid) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* row = logits + t * cols;
    float mx = -INFINITY;
    for (int64_t c = threadIdx.x; c < valid; c += kThreads) mx = fmaxf(mx, row[c]);
    mx = block_reduce(mx, MaxOp());
    if (threadIdx.x == 0) row_max[t] = mx;
  }
}

__global__ void ce_sumexp_target_kernel(float* sumexp, float* target_logit, const float* logits,
                                        const float* row_max, const int32_t* targets, int64_t tokens, int64_t cols,
                                        int64_t valid, int64_t vocab_start) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* row = logits + t * cols;
    const float mx = row_max[t];
    double sum = 0;
    for (int64_t c = threadIdx.x; c < valid; c += kThreads) sum += expf(row[c] - mx);
    sum = block_reduce(sum, SumOp());
    if (threadIdx.x == 0) {
      sumexp[t] = static_cast<float>(sum);
      const int64_t col = static_cast<int64_t>(targets[t]) - vocab_start;
      target_logit[t] = col >= 0 && col < cols ? row[col] : 0.0f;
    }
  }
}

// ce_stats in one read of each row: every thread keeps a running max m and the sum s of
// exp(x - m) over its columns (in double; rescaled by exp(m_old - m_new) when m grows), then
// the block combines the pairs in a fixed tree. vec: 16-byte loads (cols a multiple of 4,
// logits aligned). A column at -inf adds nothing (as exp(-inf - max) = 0 does in two passes).
struct MaxSum {
  float m;
  double s;
};

__device__ __forceinline__ void online_add(MaxSum& a, float x) {
  if (x > a.m) {
    a.s = a.s * exp(static_cast<double>(a.m) - static_cast<double>(x)) + 1.0;
    a.m = x;
  } else if (x != -INFINITY) {
    a.s += expf(x - a.m);
  }
}

__device__ __forceinline__ double rescaled(double s, float from, float to) {
  return from == to ? s : s * exp(static_cast<double>(from) - static_cast<double>(to));
}

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  return {m, rescaled(a.s, a.m, m) + rescaled(b.s, b.m, m)};
}

__device__ MaxSum block_max_sum(MaxSum v) {
  __shared__ float part_m[kThreads / kWarp];
  __shared__ double part_s[kThreads / kWarp];
  for (int off = kWarp / 2; off > 0; off /= 2)
    v = combine(v, {__shfl_xor_sync(0xffffffffu, v.m, off), __shfl_xor_sync(0xffffffffu, v.s, off)});
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();  // the partials may still be read by a previous row
  if (lane == 0) part_m[warp] = v.m, part_s[warp] = v.s;
  __syncthreads();
  MaxSum r{part_m[0], part_s[0]};
  for (int w = 1; w < kThreads / kWarp; ++w) r = combine(r, {part_m[w], part_s[w]});
  return r;
}

__global__ void ce_stats_kernel(float* row_max, float* sumexp, float* target_logit, const float* logits,
                                const int32_t* targets, int64_t tokens, int64_t cols, int64_t valid,
                                int64_t vocab_start, bool vec) {
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const float* row = logits + t * cols;
    MaxSum acc{-INFINITY, 0.0};
    int64_t done = 0;
    if (vec) {
      const int64_t quads = valid / 4;
      for (int64_t q = threadIdx.x; q < quads; q += kThreads) {
        const float4 x = reinterpret_cast<const float4*>(row)[q];
        online_add(acc, x.x);
        online_add(acc, x.y);
        online_add(acc, x.z);
        online_add(acc, x.w);
      }
      done = quads * 4;
    }
    for (int64_t c = done + threadIdx.x; c < valid; c += kThreads) online_add(acc, row[c]);
    acc = block_max_sum(acc);
    if (threadIdx.x == 0) {
      row_max[t] = acc.m;
      sumexp[t] = static_cast<float>(acc.s);
      const int64_t col = static_cast<int64_t>(targets[t]) - vocab_start;
      target_logit[t] = col >= 0 && col < cols ? row[col] : 0.0f;
    }
  }
}

__global__ void ce_loss_kernel(float* loss, const float* row_max, const float* sumexp, const float* target_logit,
                               int64_t tokens) {
  for (int64_t t = global_thread(); t < tokens; t += grid_threads())
    loss[t] = static_cast<float>(log(static_cast<double>(sumexp[t]))) + row_max[t] - target_logit[t];
}

// One logit's gradient: the expression of every ce_bwd path.
__device__ __forceinline__ float ce_grad(float x, float mx, float inv_sum, bool target, float scale) {
  return (expf(x - mx) * inv_sum - (target ? 1.0f : 0.0f)) * scale;
}

// Four f32 or bf16 values to dst[0, 4) in one 16- or 8-byte store.
__device__ __forceinline__ void store4(float* dst, const float* v) {
  *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(uint16_t* dst, const float* v) {
  uint2 packed;  // little-endian: the lower element in the lower half
  packed.x = f32_to_bf16(v[0]) | static_cast<uint32_t>(f32_to_bf16(v[1])) << 16;
  packed.y = f32_to_bf16(v[2]) | static_cast<uint32_t>(f32_to_bf16(v[3])) << 16;
  *reinterpret_cast<uint2*>(dst) = packed;
}

// W logits per thread (4 with aligned rows of a multiple of 4 columns, else 1), each read
// before it is written, so an f32 dlogits may be logits. T: dlogits' element (float or bf16
// bits); Index uint32_t when the logits fit.
template <typename T, int W, typename Index>
__global__ void ce_bwd_kernel(T* dlogits, const float* logits, const float* row_max, const float* sumexp,
                              const int32_t* targets, const float* grad_scale, Index tokens, Index cols, Index valid,
                              int64_t vocab_start) {
  const Index runs = tokens * cols / W;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index r = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; r < runs; r += stride) {
    const Index i = r * W, t = i / cols, c = i % cols;
    const int64_t target = static_cast<int64_t>(targets[t]) - vocab_start;
    const float mx = row_max[t], inv_sum = 1.0f / sumexp[t], scale = grad_scale[t];
    float x[W], g[W];
    if constexpr (W == 4) {
      const float4 q = *reinterpret_cast<const float4*>(logits + i);
      x[0] = q.x, x[1] = q.y, x[2] = q.z, x[3] = q.w;
    } else {
      x[0] = logits[i];
    }
#pragma unroll
    for (int e = 0; e < W; ++e)
      g[e] = c + e >= valid ? 0.0f : ce_grad(x[e], mx, inv_sum, static_cast<int64_t>(c + e) == target, scale);
    if constexpr (W == 4)
      store4(dlogits + i, g);
    else
      dlogits[i] = narrow<T>(g[0]);
  }
}

template <typename T>
void launch_ce_bwd(cudaStream_t stream, T* dlogits, const float* logits, const float* row_max, const float* sumexp,
                   const int32_t* targets, const float* grad_scale, int64_t tokens, int64_t cols, int64_t valid,
                   int64_t vocab_start) {
  const int64_t n = tokens * cols;
  const bool vec = cols % 4 == 0 && aligned16({dlogits, logits});
  const unsigned blocks = blocks_for(vec ? n / 4 : n, kThreads);
  auto run = [&](auto index) {
    using Index = decltype(index);
    const auto nt = static_cast<Index>(tokens), nc = static_cast<Index>(cols), nv = static_cast<Index>(valid);
    if (vec)
      ce_bwd_kernel<T, 4, Index><<<blocks, kThreads, 0, stream>>>(dlogits, logits, row_max, sumexp, targets,
                                                                  grad_scale, nt, nc, nv, vocab_start);
    else
      ce_bwd_kernel<T, 1, Index><<<blocks, kThreads, 0, stream>>>(dlogits, logits, row_max, sumexp, targets,
                                                                  grad_scale, nt, nc, nv, vocab_start);
  };
  if (index32(n))
    run(uint32_t{});
  else
    run(int64_t{});
  MPT_CUDA_LAUNCH("ce_bwd_kernel");
}

bool overlaps(const Tensor& x, const Tensor& y) {
  if (x.data == nullptr || y.data == nullptr || x.bytes() == 0 || y.bytes() == 0) return false;
  const auto xb = reinterpret_cast<uintptr_t>(x.data), yb = reinterpret_cast<uintptr_t>(y.data);
  return xb < yb + y.bytes() && yb < xb + x.bytes();
}

}  // namespace

void CudaOps::embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) {
  const int64_t h = embedding_hidden("embedding_fwd", out, ids, table);
  const int64_t vocab = table.numel() / h, tokens = ids.numel();
  if (tokens == 0) return;
  embedding_fwd_kernel<<<blocks_for(tokens * h, kThreads), kThreads, 0, stream()>>>(
      out_view(out), ip(ids), in_view(table), tokens, h, vocab_start, vocab, accumulate);
  MPT_CUDA_LAUNCH("embedding_fwd_kernel");
}

void CudaOps::embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) {
  const char* op = "embedding_bwd";
  const int64_t h = embedding_hidden(op, dout, ids, dtable);
  const int64_t vocab = dtable.numel() / h, tokens = ids.numel();
  if (tokens == 0 || vocab == 0) return;
  // Sort keys are 32-bit rows plus one "outside" value; token indices are 32-bit as well.
  MPT_CHECK(vocab < UINT32_MAX && tokens <= INT32_MAX, Status::kInvalidArgument, op, ": dtable ", describe(dtable),
            " or ids ", describe(ids), " exceeds 32-bit indexing");
  constexpr int kColumnThreads = 128;
  const int64_t column_tiles = (h + kColumnThreads - 1) / kColumnThreads;
  MPT_CHECK(column_tiles <= 65535, Status::kInvalidArgument, op, ": hidden size ", h, " is too large");
  int end_bit = 1;
  while (end_bit < 32 && (uint64_t{1} << end_bit) <= static_cast<uint64_t>(vocab)) ++end_bit;

  // Scratch: keys and token order, sorted copies, then the sort's own temporary storage.
  const int num = static_cast<int>(tokens);
  size_t sort_bytes = 0;
  MPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint32_t*>(nullptr),
                                                 static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                 static_cast<int32_t*>(nullptr), num, 0, end_bit, stream()));
  const size_t array = align256(static_cast<size_t>(tokens) * 4);
  char* base = static_cast<char*>(scratch(4 * array + sort_bytes));
  auto* keys = reinterpret_cast<uint32_t*>(base);
  auto* sorted_keys = reinterpret_cast<uint32_t*>(base + array);
  auto* order = reinterpret_cast<int32_t*>(base + 2 * array);
  auto* sorted_order = reinterpret_cast<int32_t*>(base + 3 * array);
  void* sort_tmp = base + 4 * array;

  embedding_keys_kernel<<<blocks_for(tokens, kThreads), kThreads, 0, stream()>>>(keys, order, ip(ids), tokens,
                                                                                 vocab_start, vocab);
  MPT_CUDA_LAUNCH("embedding_keys_kernel");
  // Radix sort is stable: each row's tokens stay in token order.
  MPT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, keys, sorted_keys, order, sorted_order, num, 0,
                                                 end_bit, stream()));
  const dim3 grid(static_cast<unsigned>(std::min(tokens, kMaxBlocks)), static_cast<unsigned>(column_tiles));
  embedding_bwd_kernel<<<grid, kColumnThreads, 0, stream()>>>(out_view(dtable), sorted_keys, sorted_order,
                                                              in_view(dout), tokens, h, vocab);
  MPT_CUDA_LAUNCH("embedding_bwd_kernel");
}

void CudaOps::ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_row_max";
  const CeLayout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_per_token(op, "row_max", row_max, l.tokens);
  if (l.tokens == 0) return;
  ce_row_max_kernel<<<blocks_for(l.tokens, 1), kThreads, 0, stream()>>>(fp(row_max), fp(logits), l.tokens, l.cols,
                                                                        l.valid);
  MPT_CUDA_LAUNCH("ce_row_max_kernel");
}

void CudaOps::ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                               int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_sumexp_target";
  const CeLayout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_per_token(op, "sumexp", sumexp, l.tokens);
  check_per_token(op, "target_logit", target_logit, l.tokens);
  check_per_token(op, "row_max", row_max, l.tokens);
  check_per_token(op, "targets", targets, l.tokens, true);
  if (l.tokens == 0) return;
  ce_sumexp_target_kernel<<<blocks_for(l.tokens, 1), kThreads, 0, stream()>>>(
      fp(sumexp), fp(target_logit), fp(logits), fp(row_max), ip(targets), l.tokens, l.cols, l.valid, vocab_start);
  MPT_CUDA_LAUNCH("ce_sumexp_target_kernel");
}

void CudaOps::ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) {
  const char* op = "ce_loss";
  check_f32(op, "loss", loss);
  const int64_t tokens = loss.numel();
  check_per_token(op, "row_max", row_max, tokens);
  check_per_token(op, "sumexp", sumexp, tokens);
  check_per_token(op, "target_logit", target_logit, tokens);
  if (tokens == 0) return;
  ce_loss_kernel<<<blocks_for(tokens, kThreads), kThreads, 0, stream()>>>(fp(loss), fp(row_max), fp(sumexp),
                                                                          fp(target_logit), tokens);
  MPT_CUDA_LAUNCH("ce_loss_kernel");
}

void CudaOps::ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
                     int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_bwd";
  const CeLayout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_float(op, "dlogits", dlogits, logits.numel());
  MPT_CHECK(dlogits.dtype == logits.dtype || !overlaps(dlogits, logits), Status::kInvalidArgument, op, ": dlogits ",
            describe(dlogits), " must not overlap logits ", describe(logits), " unless it has their dtype");
  check_per_token(op, "row_max", row_max, l.tokens);
  check_per_token(op, "sumexp", sumexp, l.tokens);
  check_per_token(op, "targets", targets, l.tokens, true);
  check_per_token(op, "grad_scale", grad_scale, l.tokens);
  if (l.tokens * l.cols == 0) return;
  if (dlogits.dtype == DType::kBF16)
    launch_ce_bwd(stream(), static_cast<uint16_t*>(dlogits.data), fp(logits), fp(row_max), fp(sumexp), ip(targets),
                  fp(grad_scale), l.tokens, l.cols, l.valid, vocab_start);
  else
    launch_ce_bwd(stream(), fp(dlogits), fp(logits), fp(row_max), fp(sumexp), ip(targets), fp(grad_scale), l.tokens,
                  l.cols, l.valid, vocab_start);
}

void CudaOps::ce_stats(Tensor row_max, Tensor sumexp, Tensor target_logit, Tensor logits, Tensor targets,
                       int64_t vocab_start, int64_t vocab_valid) {
  const char* op = "ce_stats";
  const CeLayout l = ce_layout(op, logits, vocab_start, vocab_valid);
  check_per_token(op, "row_max", row_max, l.tokens);
  check_per_token(op, "sumexp", sumexp, l.tokens);
  check_per_token(op, "target_logit", target_logit, l.tokens);
  check_per_token(op, "targets", targets, l.tokens, true);
  if (l.tokens == 0) return;
  const bool vec = l.cols % 4 == 0 && aligned16({logits.data});
  ce_stats_kernel<<<blocks_for(l.tokens, 1), kThreads, 0, stream()>>>(fp(row_max), fp(sumexp), fp(target_logit),
                                                                      fp(logits), ip(targets), l.tokens, l.cols,
                                                                      l.valid, vocab_start, vec);
  MPT_CUDA_LAUNCH("ce_stats_kernel");
}

}  // namespace mpt::cuda
