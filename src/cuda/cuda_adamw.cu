// AdamW on the GPU: every parameter piece of a step in one launch (a few where a model has
// more pieces than one launch's table holds), the bf16 compute copy written beside the
// update, and the gradient norm's pieces summed and its clip factor formed in device memory.
//
// The piece table travels as the kernel's parameter (up to 32764 bytes since CUDA 12.1), so
// a step uploads and allocates nothing. Each block updates kBlockElems elements of one
// piece; the table holds each piece's first block, and a block finds its piece by binary
// search. Arithmetic is the CPU backend's, operation for operation (backend/cpu/adamw.cc):
// the _rn intrinsics keep the compiler from fusing multiply-adds, so the bits are the CPU's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/bf16.h"
#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {

namespace {

constexpr int kAdamThreads = 256;
constexpr int64_t kBlockElems = 8192;  // a multiple of 4 * kAdamThreads: blocks keep 16-byte alignment
constexpr int kMaxPieces = 512;        // per launch

struct AdamWScalars {
  float lr, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, grad_scale;
  float bias_correction1, bias_correction2;
};

struct Piece {
  float* param;
  const float* grad;
  float* exp_avg;
  float* exp_avg_sq;
  uint16_t* copy;  // null: no compute copy
  int64_t n;
  float weight_decay;
  int32_t vec;  // every array aligned for 4-element accesses
};

struct PieceTable {
  Piece piece[kMaxPieces];
  int32_t first_block[kMaxPieces + 1];  // piece k's blocks are [first_block[k], first_block[k + 1])
  int32_t count;
};
// The launch's parameters: the table, the scalars and the device factor's address.
static_assert(sizeof(PieceTable) + sizeof(AdamWScalars) + sizeof(void*) <= 32764,
              "the AdamW piece table must fit a kernel's parameters");

// One element's update; returns the new parameter.
__device__ __forceinline__ float adamw_element(float& p, float g, float& m, float& v, const AdamWScalars& s,
                                               float gs, float wd) {
  g = __fmul_rn(g, gs);
  m = __fadd_rn(__fmul_rn(s.beta1, m), __fmul_rn(s.one_minus_beta1, g));
  v = __fadd_rn(__fmul_rn(s.beta2, v), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fsqrt_rn(__fdiv_rn(v, s.bias_correction2)), s.eps);
  const float update = __fadd_rn(__fdiv_rn(__fdiv_rn(m, s.bias_correction1), denom), __fmul_rn(wd, p));
  p = __fsub_rn(p, __fmul_rn(s.lr, update));
  return p;
}

__global__ void __launch_bounds__(kAdamThreads)
    adamw_multi_kernel(const __grid_constant__ PieceTable table, AdamWScalars s, const float* scale) {
  const int32_t b = static_cast<int32_t>(blockIdx.x);
  int lo = 0, hi = table.count;  // the last piece whose first block is <= b
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (table.first_block[mid] <= b) lo = mid;
    else hi = mid;
  }
  const Piece& pc = table.piece[lo];
  const float gs = scale ? *scale : s.grad_scale;
  const float wd = pc.weight_decay;
  const int64_t begin = static_cast<int64_t>(b - table.first_block[lo]) * kBlockElems;
  const int64_t end = min(begin + kBlockElems, pc.n);
  int64_t scalar_from = begin;
  if (pc.vec) {
    const int64_t quads_end = end / 4;
    for (int64_t q = begin / 4 + threadIdx.x; q < quads_end; q += kAdamThreads) {
      float4 p = reinterpret_cast<const float4*>(pc.param)[q];
      const float4 g = reinterpret_cast<const float4*>(pc.grad)[q];
      float4 m = reinterpret_cast<const float4*>(pc.exp_avg)[q];
      float4 v = reinterpret_cast<const float4*>(pc.exp_avg_sq)[q];
      adamw_element(p.x, g.x, m.x, v.x, s, gs, wd);
      adamw_element(p.y, g.y, m.y, v.y, s, gs, wd);
      adamw_element(p.z, g.z, m.z, v.z, s, gs, wd);
      adamw_element(p.w, g.w, m.w, v.w, s, gs, wd);
      reinterpret_cast<float4*>(pc.exp_avg)[q] = m;
      reinterpret_cast<float4*>(pc.exp_avg_sq)[q] = v;
      reinterpret_cast<float4*>(pc.param)[q] = p;
      if (pc.copy) {
        uint2 packed;  // little-endian: the lower element in the lower half
        packed.x = f32_to_bf16(p.x) | static_cast<uint32_t>(f32_to_bf16(p.y)) << 16;
        packed.y = f32_to_bf16(p.z) | static_cast<uint32_t>(f32_to_bf16(p.w)) << 16;
        reinterpret_cast<uint2*>(pc.copy)[q] = packed;
      }
    }
    scalar_from = quads_end * 4;  // the piece's last 0-3 elements, in its last block
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += kAdamThreads) {
    float p = pc.param[i], m = pc.exp_avg[i], v = pc.exp_avg_sq[i];
    adamw_element(p, pc.grad[i], m, v, s, gs, wd);
    pc.exp_avg[i] = m;
    pc.exp_avg_sq[i] = v;
    pc.param[i] = p;
    if (pc.copy) pc.copy[i] = f32_to_bf16(p);
  }
}

// The sum of squares in the order of CudaOps::sum_squares (cuda_ops.cu): at most
// kReduceBlocks grid-strided partial sums, each a fixed tree over its threads, then one
// block's fixed tree over the partials; so acc + sum_squares(x) and sum_squares_acc give the
// same bits.
constexpr int kReduceThreads = 256;
constexpr int64_t kReduceBlocks = 1024;

__device__ void tree_sum(double* shared) {
  for (int width = kReduceThreads / 2; width > 0; width /= 2) {
    if (static_cast<int>(threadIdx.x) < width) shared[threadIdx.x] += shared[threadIdx.x + width];
    __syncthreads();
  }
}

__global__ void square_partials_kernel(In x, int64_t n, double* partial) {
  __shared__ double shared[kReduceThreads];
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  double s = 0;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = x[i];
    s += v * v;
  }
  shared[threadIdx.x] = s;
  __syncthreads();
  tree_sum(shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = shared[0];
}

// One block: *acc += the sum of partial[0, count).
__global__ void add_partials_kernel(const double* partial, int64_t count, double* acc) {
  __shared__ double shared[kReduceThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < count; i += kReduceThreads) s += partial[i];
  shared[threadIdx.x] = s;
  __syncthreads();
  tree_sum(shared);
  if (threadIdx.x == 0) *acc += shared[0];
}

// One thread: Megatron's clip coefficient in double, as the host forms it (ops.h).
__global__ void clip_factor_kernel(float* factor, const double* sumsq, double max_norm) {
  float f = 1.0f;
  if (max_norm > 0) {
    const double coeff = max_norm / (sqrt(*sumsq) + 1e-6);
    if (coeff < 1.0) f = __double2float_rn(coeff);
  }
  *factor = f;
}

bool aligned_to(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// A cheap test that t is a well-formed f32 (or bf16) tensor of n elements; the full checks,
// with their messages, run only when it fails.
bool plain(const Tensor& t, DType dtype, int64_t n) {
  if (t.dtype != dtype || t.ndim < 0 || t.ndim > Tensor::kMaxDims) return false;
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] < 0) return false;
  return t.numel() == n && (t.data != nullptr || n == 0);
}

// adamw's argument checks for piece k of the table (k < 0: adamw's own tensors). Messages
// are formatted only for a piece that fails, so a step allocates nothing.
void check_piece(const char* op, int64_t k, const backend::AdamWTensor& t) {
  const int64_t n = t.param.numel();
  if (plain(t.param, DType::kF32, n) && plain(t.grad, DType::kF32, n) && plain(t.exp_avg, DType::kF32, n) &&
      plain(t.exp_avg_sq, DType::kF32, n) && (t.compute_copy.data == nullptr || plain(t.compute_copy, DType::kBF16, n)))
    return;
  const std::string at = k < 0 ? std::string() : str("piece ", k, " ");
  check_f32(op, (at + "param").c_str(), t.param);
  check_f32(op, (at + "grad").c_str(), t.grad, n);
  check_f32(op, (at + "exp_avg").c_str(), t.exp_avg, n);
  check_f32(op, (at + "exp_avg_sq").c_str(), t.exp_avg_sq, n);
  if (t.compute_copy.data == nullptr) return;
  MPT_CHECK(t.compute_copy.dtype == DType::kBF16, Status::kInvalidArgument, op, ": ", at,
            "compute_copy must be BF16, got ", describe(t.compute_copy));
  check_view(op, (at + "compute_copy").c_str(), t.compute_copy);
  check_numel(op, (at + "compute_copy").c_str(), t.compute_copy, n);
}

AdamWScalars scalars(const char* op, const backend::AdamWArgs& a) {
  MPT_CHECK(a.step >= 1, Status::kInvalidArgument, op, ": step ", a.step, " must be >= 1");
  MPT_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1, Status::kInvalidArgument, op, ": beta1 ",
            a.beta1, " and beta2 ", a.beta2, " must be in [0, 1)");
  if (a.grad_scale_device.data != nullptr) check_f32(op, "grad_scale_device", a.grad_scale_device, 1);
  AdamWScalars s;
  s.lr = a.lr;
  s.beta1 = a.beta1;
  s.one_minus_beta1 = 1.0f - a.beta1;
  s.beta2 = a.beta2;
  s.one_minus_beta2 = 1.0f - a.beta2;
  s.eps = a.eps;
  s.grad_scale = a.grad_scale;
  // Bias corrections in double, then rounded to float, as the CPU backend does.
  s.bias_correction1 = static_cast<float>(1.0 - std::pow(static_cast<double>(a.beta1), static_cast<double>(a.step)));
  s.bias_correction2 = static_cast<float>(1.0 - std::pow(static_cast<double>(a.beta2), static_cast<double>(a.step)));
  return s;
}

// Updates the checked pieces, as many launches as the table needs.
void launch_pieces(cudaStream_t stream, const backend::AdamWTensor* tensors, int64_t count, const AdamWScalars& s,
                   const float* scale) {
  PieceTable table;
  table.count = 0;
  int64_t blocks = 0;
  auto flush = [&] {
    if (table.count == 0) return;
    table.first_block[table.count] = static_cast<int32_t>(blocks);
    adamw_multi_kernel<<<static_cast<unsigned>(blocks), kAdamThreads, 0, stream>>>(table, s, scale);
    MPT_CUDA_LAUNCH(adamw_multi_kernel);
    table.count = 0;
    blocks = 0;
  };
  constexpr int64_t kMaxLaunchBlocks = int64_t{1} << 30;  // block indices stay in int32
  for (int64_t k = 0; k < count; ++k) {
    const backend::AdamWTensor& t = tensors[k];
    const int64_t n = t.param.numel();
    if (n == 0) continue;
    const int64_t piece_blocks = (n + kBlockElems - 1) / kBlockElems;
    MPT_CHECK(piece_blocks <= kMaxLaunchBlocks, Status::kInvalidArgument, "adamw: a piece of ", n,
              " elements is more than one launch updates");
    if (table.count == kMaxPieces || blocks + piece_blocks > kMaxLaunchBlocks) flush();
    Piece& pc = table.piece[table.count];
    pc.param = t.param.f();
    pc.grad = t.grad.f();
    pc.exp_avg = t.exp_avg.f();
    pc.exp_avg_sq = t.exp_avg_sq.f();
    pc.copy = static_cast<uint16_t*>(t.compute_copy.data);
    pc.n = n;
    pc.weight_decay = t.weight_decay;
    pc.vec = aligned_to(pc.param, 16) && aligned_to(pc.grad, 16) && aligned_to(pc.exp_avg, 16) &&
             aligned_to(pc.exp_avg_sq, 16) && aligned_to(pc.copy, 8);
    table.first_block[table.count] = static_cast<int32_t>(blocks);
    ++table.count;
    blocks += piece_blocks;
  }
  flush();
}

void check_scalar(const char* op, const char* arg, const Tensor& t, DType dtype) {
  MPT_CHECK(t.dtype == dtype, Status::kInvalidArgument, op, ": ", arg, " must be ", dtype_label(dtype), ", got ",
            describe(t));
  check_view(op, arg, t);
  check_numel(op, arg, t, 1);
  MPT_CHECK(t.data != nullptr, Status::kInvalidArgument, op, ": ", arg, " has no data");
}

}  // namespace

void CudaOps::adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const backend::AdamWArgs& a) {
  const backend::AdamWTensor t{param, grad, exp_avg, exp_avg_sq, Tensor(), a.weight_decay};
  check_piece("adamw", -1, t);
  const AdamWScalars s = scalars("adamw", a);
  launch_pieces(stream_, &t, 1, s, static_cast<const float*>(a.grad_scale_device.data));
}

void CudaOps::adamw_multi(const backend::AdamWTensor* tensors, int64_t count, const backend::AdamWArgs& a) {
  const char* op = "adamw_multi";
  MPT_CHECK(count >= 0 && (count == 0 || tensors != nullptr), Status::kInvalidArgument, op, ": ", count, " pieces",
            tensors ? "" : " and no table");
  for (int64_t k = 0; k < count; ++k) check_piece(op, k, tensors[k]);
  const AdamWScalars s = scalars(op, a);
  launch_pieces(stream_, tensors, count, s, static_cast<const float*>(a.grad_scale_device.data));
}

void CudaOps::sum_squares_acc(Tensor acc, Tensor x) {
  check_scalar("sum_squares_acc", "acc", acc, DType::kF64);
  check_float("sum_squares_acc", "x", x);
  const int64_t n = x.numel();
  if (n == 0) return;
  const int64_t blocks = std::min((n + kReduceThreads - 1) / kReduceThreads, kReduceBlocks);
  auto* partial = static_cast<double*>(scratch(static_cast<size_t>(blocks) * sizeof(double)));
  square_partials_kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream_>>>(in_view(x), n, partial);
  MPT_CUDA_LAUNCH(square_partials_kernel);
  add_partials_kernel<<<1, kReduceThreads, 0, stream_>>>(partial, blocks, static_cast<double*>(acc.data));
  MPT_CUDA_LAUNCH(add_partials_kernel);
}

void CudaOps::grad_clip_factor(Tensor factor, Tensor sumsq, double max_norm) {
  check_scalar("grad_clip_factor", "factor", factor, DType::kF32);
  check_scalar("grad_clip_factor", "sumsq", sumsq, DType::kF64);
  clip_factor_kernel<<<1, 1, 0, stream_>>>(static_cast<float*>(factor.data), static_cast<const double*>(sumsq.data),
                                            max_norm);
  MPT_CUDA_LAUNCH(clip_factor_kernel);
}

}  // namespace mpt::cuda
