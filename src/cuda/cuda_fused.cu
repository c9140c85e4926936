// The residual add fused with the norm after it: sum = a + b, then LayerNorm or RMSNorm of
// sum as stored, in one kernel. Each warp owns a row: its first pass reads a and b once,
// writes sum and accumulates the statistics from the rounded sum; the later passes read the
// row back from sum (each lane only the elements it wrote itself, so no synchronisation is
// needed, and the row is still in cache; the packed output pass syncs the warp first). The
// loops, reductions and formulas are those of the norm kernels in cuda_layers.cu (the output
// pass is theirs: norm_rows.cuh) and of the add kernel, so a fused call gives the bits of
// add() followed by the norm. Checks are the CPU backend's (backend/cpu/fused.cc).
#include <cstdint>
#include <string>
#include <utility>

#include "core/bf16.h"
#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/kernel_util.cuh"
#include "cuda/norm_rows.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {

namespace {

// sum[j] = a[j] + b[j]; returns the value as sum stores it (rounded when sum is bf16).
template <typename O, typename I>
__device__ __forceinline__ float add_stored(const O& sum, const I& a, const I& b, int64_t j) {
  const float v = a[j] + b[j];
  sum.set(j, v);
  return sum.bf16 ? round_bf16(v) : v;
}

// With `vec` (typed views, aligned rows of whole packs) the output pass reads packs of sum
// that other lanes wrote: __syncwarp orders those writes before the reads.
template <typename V>
__global__ void add_layernorm_fwd_kernel(typename V::O sum, typename V::O out, float* mean, float* rstd,
                                         typename V::I a, typename V::I b, typename V::I w, typename V::I bias,
                                         int64_t rows, int64_t h, float eps, bool vec) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const auto sr = sum.at(t * h);
    const auto ar = a.at(t * h), br = b.at(t * h);
    double total = 0;
    for (int64_t j = lane; j < h; j += kWarp) total += add_stored(sr, ar, br, j);
    const double mu = warp_sum(total) / static_cast<double>(h);
    double var = 0;
    for (int64_t j = lane; j < h; j += kWarp) {
      const double d = sr[j] - mu;
      var += d * d;
    }
    var = warp_sum(var) / static_cast<double>(h);
    const float m = static_cast<float>(mu), r = static_cast<float>(1.0 / sqrt(var + eps));
    if (lane == 0) mean[t] = m, rstd[t] = r;
    if (vec) __syncwarp();
    layernorm_store<V>(out.at(t * h), sr, w, bias, h, m, r, lane, vec);
  }
}

template <typename V>
__global__ void add_rmsnorm_fwd_kernel(typename V::O sum, typename V::O out, float* rstd, typename V::I a,
                                       typename V::I b, typename V::I w, int64_t rows, int64_t h, float eps, bool vec) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const auto sr = sum.at(t * h);
    const auto ar = a.at(t * h), br = b.at(t * h);
    double sq = 0;
    for (int64_t j = lane; j < h; j += kWarp) {
      const float s = add_stored(sr, ar, br, j);
      sq += static_cast<double>(s) * s;
    }
    const float r = static_cast<float>(1.0 / sqrt(warp_sum(sq) / static_cast<double>(h) + eps));
    if (lane == 0) rstd[t] = r;
    if (vec) __syncwarp();
    rmsnorm_store<V>(out.at(t * h), sr, w, h, r, lane, vec);
  }
}

// Whether the bytes of two tensors share an address (empty ones share none).
bool overlaps(const Tensor& x, const Tensor& y) {
  if (x.data == nullptr || y.data == nullptr || x.bytes() == 0 || y.bytes() == 0) return false;
  const auto xb = reinterpret_cast<uintptr_t>(x.data), yb = reinterpret_cast<uintptr_t>(y.data);
  return xb < yb + y.bytes() && yb < xb + x.bytes();
}

// Everything add() and the norm check, before anything runs: sum, a, b, out [rows, H] with
// H = weight.numel(); sum is a or b entirely or apart from both; out apart from all three.
// Returns the rows.
int64_t check_add_norm(const char* op, const Tensor& sum, const Tensor& out, const Tensor* mean, const Tensor& rstd,
                       const Tensor& a, const Tensor& b, const Tensor& weight, const Tensor* bias) {
  check_float(op, "sum", sum);
  check_float(op, "out", out);
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_float(op, "weight", weight);
  const int64_t h = weight.numel();
  MPT_CHECK(h > 0 && last_dim(sum) == h, Status::kInvalidArgument, op, ": sum ", describe(sum),
            " last axis must match weight ", describe(weight));
  const int64_t n = sum.numel(), rows = n / h;
  check_numel(op, "a", a, n);
  check_numel(op, "b", b, n);
  check_numel(op, "out", out, n);
  if (mean) check_f32(op, "mean", *mean, rows);
  check_f32(op, "rstd", rstd, rows);
  if (bias && bias->data != nullptr) check_float(op, "bias", *bias, h);
  for (const auto& [name, in] : {std::pair<const char*, const Tensor*>{"a", &a}, {"b", &b}}) {
    const bool same = in->data == sum.data && in->dtype == sum.dtype;
    MPT_CHECK(same || !overlaps(sum, *in), Status::kInvalidArgument, op, ": sum ", describe(sum), " must be ", name,
              " ", describe(*in), " itself (same memory and dtype) or not overlap it");
    MPT_CHECK(!overlaps(out, *in), Status::kInvalidArgument, op, ": out ", describe(out), " must not overlap ", name,
              " ", describe(*in));
  }
  MPT_CHECK(!overlaps(out, sum), Status::kInvalidArgument, op, ": out ", describe(out), " must not overlap sum ",
            describe(sum));
  return rows;
}

}  // namespace

void CudaOps::add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                                Tensor bias, float eps) {
  const int64_t rows = check_add_norm("add_layernorm_fwd", sum, out, &mean, rstd, a, b, weight, &bias);
  if (rows == 0) return;
  const int64_t h = weight.numel();
  const bool vec = norm_packs(h, sum.dtype, {sum.data, out.data, a.data, b.data, weight.data, bias.data});
  with_views({&sum, &out, &a, &b, &weight, &bias}, [&](auto v) {
    using V = decltype(v);
    add_layernorm_fwd_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(sum), V::out(out), fp(mean), fp(rstd), V::in(a), V::in(b), V::in(weight),
        bias.data ? V::in(bias) : typename V::I{}, rows, h, eps, vec);
  });
  MPT_CUDA_LAUNCH("add_layernorm_fwd_kernel");
}

void CudaOps::add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) {
  const int64_t rows = check_add_norm("add_rmsnorm_fwd", sum, out, nullptr, rstd, a, b, weight, nullptr);
  if (rows == 0) return;
  const int64_t h = weight.numel();
  const bool vec = norm_packs(h, sum.dtype, {sum.data, out.data, a.data, b.data, weight.data});
  with_views({&sum, &out, &a, &b, &weight}, [&](auto v) {
    using V = decltype(v);
    add_rmsnorm_fwd_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(sum), V::out(out), fp(rstd), V::in(a), V::in(b), V::in(weight), rows, h, eps, vec);
  });
  MPT_CUDA_LAUNCH("add_rmsnorm_fwd_kernel");
}

}  // namespace mpt::cuda
