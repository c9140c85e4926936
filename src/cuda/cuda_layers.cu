// The layer ops of the CUDA backend: norms, qkv split/merge, RoPE, activations and dropout
// (the embedding and cross-entropy are in cuda_vocab.cu). Each follows its CPU twin in
// src/backend/cpu (same checks, same formulas, same accumulation precision); every reduction
// has a fixed shape, so a call gives the same bits every time. Data tensors are f32 or bf16
// each (elements.cuh); norm statistics are f32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/rng_device.h"
#include "cuda/cuda_ops.h"
#include "cuda/elements.cuh"
#include "cuda/kernel_util.cuh"
#include "cuda/op_checks.h"
#include "cuda/device.h"

namespace mpt::cuda {

using backend::Activation;

namespace {
// --- normalisation ---------------------------------------------------------------------------

// One warp per row: statistics in double as on the CPU, output formed from the rounded ones.
__global__ void layernorm_fwd_kernel(Out out, float* mean, float* rstd, In x, In w, In b, int64_t rows, int64_t h,
                                     float eps) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const In xr = x.at(t * h);
    double sum = 0;
    for (int64_t j = lane; j < h; j += kWarp) sum += xr[j];
    const double mu = warp_sum(sum) / static_cast<double>(h);
    double var = 0;
    for (int64_t j = lane; j < h; j += kWarp) {
      const double d = xr[j] - mu;
      var += d * d;
    }
    var = warp_sum(var) / static_cast<double>(h);
    const float m = static_cast<float>(mu), r = static_cast<float>(1.0 / sqrt(var + eps));
    if (lane == 0) mean[t] = m, rstd[t] = r;
    const Out orow = out.at(t * h);
    for (int64_t j = lane; j < h; j += kWarp) orow.set(j, (xr[j] - m) * r * w[j] + (b ? b[j] : 0.0f));
  }
}

__global__ void rmsnorm_fwd_kernel(Out out, float* rstd, In x, In w, int64_t rows, int64_t h, float eps) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const In xr = x.at(t * h);
    double sq = 0;
    for (int64_t j = lane; j < h; j += kWarp) sq += static_cast<double>(xr[j]) * xr[j];
    const float r = static_cast<float>(1.0 / sqrt(warp_sum(sq) / static_cast<double>(h) + eps));
    if (lane == 0) rstd[t] = r;
    const Out orow = out.at(t * h);
    for (int64_t j = lane; j < h; j += kWarp) orow.set(j, xr[j] * r * w[j]);
  }
}

// dx += the input gradient of one row per warp; mean == nullptr means RMSNorm.
__global__ void norm_bwd_dx_kernel(Out dx, In dout, In x, In w, const float* mean, const float* rstd, int64_t rows,
                                   int64_t h) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const In xr = x.at(t * h), gr = dout.at(t * h);
    const float m = mean ? mean[t] : 0.0f, r = rstd[t];
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = lane; j < h; j += kWarp) {
      const double g = static_cast<double>(gr[j]) * w[j];
      sum_g += g;
      sum_gx += g * ((xr[j] - m) * r);
    }
    const float mean_g = static_cast<float>(warp_sum(sum_g) / static_cast<double>(h));
    const float mean_gx = static_cast<float>(warp_sum(sum_gx) / static_cast<double>(h));
    const Out dr = dx.at(t * h);
    if (mean) {
      for (int64_t j = lane; j < h; j += kWarp) {
        const float xhat = (xr[j] - m) * r;
        dr.add(j, r * (gr[j] * w[j] - mean_g - xhat * mean_gx));
      }
    } else {
      for (int64_t j = lane; j < h; j += kWarp) dr.add(j, r * (gr[j] * w[j] - xr[j] * r * mean_gx));
    }
  }
}

// Parameter gradients in two fixed-order steps: each block sums a chunk of rows for 32
// columns (8 row lanes, then the lanes in order) into partial[chunk][col]; the finish
// kernel adds the chunks in order into dweight/dbias. No atomics, so the bits never vary.
constexpr int kParamCols = 32, kParamLanes = 8;
constexpr int64_t kMaxParamChunks = 64;

__global__ void norm_param_partial_kernel(double* part_w, double* part_b, In dout, In x, const float* mean,
                                          const float* rstd, int64_t rows, int64_t h, int64_t rows_per_chunk) {
  __shared__ double sw[kParamLanes][kParamCols], sb[kParamLanes][kParamCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kParamCols + threadIdx.x;
  const int64_t chunk = blockIdx.y, lo = chunk * rows_per_chunk, hi = min(rows, lo + rows_per_chunk);
  double acc_w = 0, acc_b = 0;
  if (col < h) {
    for (int64_t t = lo + threadIdx.y; t < hi; t += kParamLanes) {
      const float g = dout[t * h + col];
      const float xhat = (x[t * h + col] - (mean ? mean[t] : 0.0f)) * rstd[t];
      acc_w += static_cast<double>(g) * xhat;
      acc_b += g;
    }
  }
  sw[threadIdx.y][threadIdx.x] = acc_w;
  sb[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < h) {
    for (int l = 1; l < kParamLanes; ++l) acc_w += sw[l][threadIdx.x], acc_b += sb[l][threadIdx.x];
    part_w[chunk * h + col] = acc_w;
    if (part_b) part_b[chunk * h + col] = acc_b;
  }
}

__global__ void norm_param_finish_kernel(Out dweight, Out dbias, const double* part_w, const double* part_b,
                                         int64_t chunks, int64_t h) {
  for (int64_t j = global_thread(); j < h; j += grid_threads()) {
    double w = 0, b = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      w += part_w[c * h + j];
      if (dbias) b += part_b[c * h + j];
    }
    dweight.add(j, static_cast<float>(w));
    if (dbias) dbias.add(j, static_cast<float>(b));
  }
}

// Rows T of x [T, H] where H = weight.numel(), after checking both.
int64_t norm_rows(const char* op, const Tensor& x, const Tensor& weight) {
  check_float(op, "x", x);
  check_float(op, "weight", weight);
  const int64_t h = weight.numel();
  MPT_CHECK(h > 0 && last_dim(x) == h, Status::kInvalidArgument, op, ": x ", describe(x),
            " last axis must match weight ", describe(weight));
  return x.numel() / h;
}

void norm_param_grads(CudaOps& ops, Out dweight, Out dbias, In dout, In x, const float* mean, const float* rstd,
                      int64_t rows, int64_t h) {
  const int64_t chunks = std::min(kMaxParamChunks, (rows + 127) / 128);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  const size_t part = static_cast<size_t>(chunks * h) * sizeof(double);
  double* part_w = static_cast<double*>(ops.scratch(dbias ? 2 * part : part));
  double* part_b = dbias ? part_w + chunks * h : nullptr;
  MPT_CHECK((h + kParamCols - 1) / kParamCols <= INT32_MAX, Status::kInvalidArgument, "norm backward: hidden size ",
            h, " is too large");
  const dim3 grid(static_cast<unsigned>((h + kParamCols - 1) / kParamCols), static_cast<unsigned>(chunks));
  norm_param_partial_kernel<<<grid, dim3(kParamCols, kParamLanes), 0, ops.stream()>>>(
      part_w, part_b, dout, x, mean, rstd, rows, h, rows_per_chunk);
  MPT_CUDA_LAUNCH("norm_param_partial_kernel");
  norm_param_finish_kernel<<<blocks_for(h, kThreads), kThreads, 0, ops.stream()>>>(dweight, dbias, part_w, part_b,
                                                                                   chunks, h);
  MPT_CUDA_LAUNCH("norm_param_finish_kernel");
}

// --- qkv split / merge -----------------------------------------------------------------------

// One thread per value of the fused rows; to_fused picks the direction.
__global__ void qkv_shuffle_kernel(Out qkv, Out q, Out k, Out v, int64_t tokens, int64_t groups, int64_t hpg,
                                   int64_t d, bool to_fused) {
  const int64_t group_width = (hpg + 2) * d, width = groups * group_width;
  const int64_t q_width = groups * hpg * d, kv_width = groups * d, n = tokens * width;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t t = i / width, col = i % width;
    const int64_t g = col / group_width, slot = (col % group_width) / d, e = col % d;
    const Out part = slot < hpg ? q.at(t * q_width + (g * hpg + slot) * d) : slot == hpg ? k.at(t * kv_width + g * d)
                                                                                       : v.at(t * kv_width + g * d);
    if (to_fused)
      qkv.set(i, part[e]);
    else
      part.set(e, qkv[i]);
  }
}

int64_t qkv_tokens(const char* op, const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v,
                   int64_t groups, int64_t hpg, int64_t d) {
  MPT_CHECK(groups > 0 && hpg > 0 && d > 0, Status::kInvalidArgument, op, ": groups ", groups, ", heads_per_group ",
            hpg, ", head_dim ", d, " must be positive");
  check_float(op, "qkv", qkv);
  check_float(op, "q", q);
  check_float(op, "k", k);
  check_float(op, "v", v);
  const int64_t width = groups * (hpg + 2) * d;
  MPT_CHECK(qkv.numel() % width == 0, Status::kInvalidArgument, op, ": qkv ", describe(qkv), " rows must hold ",
            width, " values");
  const int64_t tokens = qkv.numel() / width;
  check_numel(op, "q", q, tokens * groups * hpg * d);
  check_numel(op, "k", k, tokens * groups * d);
  check_numel(op, "v", v, tokens * groups * d);
  return tokens;
}

// --- RoPE ------------------------------------------------------------------------------------

// One thread per (token, frequency): the angle and its cosine/sine in double (positions
// times frequencies reach 1e5 radians at long context), shared by the token's heads.
__global__ void rope_kernel(Out x, const int32_t* pos, int64_t tokens, int64_t heads, int64_t head_dim,
                            int64_t rotary_dim, double base, double sign) {
  const int64_t half = rotary_dim / 2, n = tokens * half, width = heads * head_dim;
  for (int64_t idx = global_thread(); idx < n; idx += grid_threads()) {
    const int64_t t = idx / half, i = idx % half;
    const double freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
    const double angle = sign * pos[t] * freq;
    double sd, cd;
    sincos(angle, &sd, &cd);
    const float c = static_cast<float>(cd), s = static_cast<float>(sd);
    for (int64_t h = 0; h < heads; ++h) {
      const Out row = x.at(t * width + h * head_dim);
      const float a = row[i], b = row[i + half];
      row.set(i, a * c - b * s);
      row.set(i + half, b * c + a * s);
    }
  }
}

// --- activations -----------------------------------------------------------------------------

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluCubic = 0.044715f;

struct ValueGrad {
  float value, grad;
};

// Value and derivative of the activation at x: the CPU backend's formulas.
__device__ __forceinline__ ValueGrad evaluate(Activation act, float x) {
  switch (act) {
    case Activation::kGelu: {
      const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
      return {x * cdf, cdf + x * kInvSqrt2Pi * expf(-0.5f * x * x)};
    }
    case Activation::kGeluTanh: {
      const float t = tanhf(kSqrt2OverPi * (x + kGeluCubic * x * x * x));
      const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCubic * x * x);
      return {0.5f * x * (1.0f + t), 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du};
    }
    case Activation::kSilu: {
      const float s = 1.0f / (1.0f + expf(-x));
      return {x * s, s * (1.0f + x * (1.0f - s))};
    }
    case Activation::kRelu:
      return {x > 0 ? x : 0.0f, x > 0 ? 1.0f : 0.0f};
    case Activation::kSquaredRelu:
      return {x > 0 ? x * x : 0.0f, x > 0 ? 2.0f * x : 0.0f};
  }
  return {0, 0};
}

// One thread per output feature (t, j); gated rows are [gate | up].
__global__ void activation_fwd_kernel(Out out, In x, int64_t rows, int64_t f, Activation act, bool gated) {
  const int64_t width = gated ? 2 * f : f, n = rows * f;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t t = i / f, j = i % f;
    const In xr = x.at(t * width);
    out.set(i, evaluate(act, xr[j]).value * (gated ? xr[f + j] : 1.0f));
  }
}

__global__ void activation_bwd_kernel(Out dx, In dout, In x, int64_t rows, int64_t f, Activation act, bool gated) {
  const int64_t width = gated ? 2 * f : f, n = rows * f;
  for (int64_t i = global_thread(); i < n; i += grid_threads()) {
    const int64_t t = i / f, j = i % f;
    const In xr = x.at(t * width);
    const Out dr = dx.at(t * width);
    const ValueGrad a = evaluate(act, xr[j]);
    const float g = dout[i];
    if (gated) {
      const float up = xr[f + j];
      dr.set(j, g * up * a.grad);
      dr.set(f + j, g * a.value);
    } else {
      dr.set(j, g * a.grad);
    }
  }
}

void activation_shapes(const char* op, const Tensor& x, const Tensor& y, Activation act, bool gated, int64_t* rows,
                       int64_t* features) {
  MPT_CHECK(static_cast<int>(act) >= 0 && static_cast<int>(act) <= static_cast<int>(Activation::kSquaredRelu),
            Status::kInvalidArgument, op, ": unknown activation ", static_cast<int>(act));
  check_float(op, "x", x);
  check_float(op, "out/dout", y);
  const int64_t width = last_dim(x);
  MPT_CHECK(!gated || width % 2 == 0, Status::kInvalidArgument, op, ": gated x ", describe(x),
            " must have an even last axis");
  *features = gated ? width / 2 : width;
  *rows = width == 0 ? 0 : x.numel() / width;
  check_numel(op, "out/dout", y, *rows * *features);
}

// --- dropout ---------------------------------------------------------------------------------

// Flat element i of [R, C] is mask index (row_offset + r) * C + c = first + i, in stream
// key ^ *seed (the dropout seed as it is when the kernel runs).
__global__ void dropout_kernel(Out dst, In src, int64_t n, uint64_t first, float p, float keep_scale, uint64_t key,
                               const uint64_t* seed) {
  const uint64_t stream = key ^ *seed;
  for (int64_t i = global_thread(); i < n; i += grid_threads())
    dst.set(i, dropout_keep_device(stream, first + static_cast<uint64_t>(i), p) ? src[i] * keep_scale : 0.0f);
}

void apply_dropout(CudaOps& ops, const char* op, Tensor dst, Tensor src, float p, uint64_t key, int64_t row_offset) {
  check_float(op, "output", dst);
  check_float(op, "input", src, dst.numel());
  MPT_CHECK(p >= 0 && p < 1, Status::kInvalidArgument, op, ": p ", p, " must be in [0, 1)");
  MPT_CHECK(row_offset >= 0, Status::kInvalidArgument, op, ": row_offset ", row_offset, " must be non-negative");
  const int64_t n = dst.numel();
  if (n == 0) return;
  if (p == 0) {  // a copy (converted when the dtypes differ)
    ops.convert(dst.data, dst.dtype, src.data, src.dtype, n);
    return;
  }
  const uint64_t first = static_cast<uint64_t>(row_offset) * static_cast<uint64_t>(last_dim(dst));
  dropout_kernel<<<blocks_for(n, kThreads), kThreads, 0, ops.stream()>>>(out_view(dst), in_view(src), n, first, p,
                                                                         1.0f / (1.0f - p), key,
                                                                         ops.dropout_seed_on_device());
  MPT_CUDA_LAUNCH("dropout_kernel");
}

}  // namespace

// --- the ops -------------------------------------------------------------------------------

void CudaOps::layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) {
  const char* op = "layernorm_fwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_float(op, "out", out, x.numel());
  check_f32(op, "mean", mean, rows);
  check_f32(op, "rstd", rstd, rows);
  const bool has_bias = bias.data != nullptr;
  if (has_bias) {
    check_float(op, "bias", bias, h);
  }
  if (rows == 0) return;
  layernorm_fwd_kernel<<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
      out_view(out), fp(mean), fp(rstd), in_view(x), in_view(weight), has_bias ? in_view(bias) : In{}, rows, h, eps);
  MPT_CUDA_LAUNCH("layernorm_fwd_kernel");
}

void CudaOps::layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                            Tensor rstd) {
  const char* op = "layernorm_bwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_float(op, "dx", dx, x.numel());
  check_float(op, "dout", dout, x.numel());
  check_float(op, "dweight", dweight, h);
  check_f32(op, "mean", mean, rows);
  check_f32(op, "rstd", rstd, rows);
  const bool has_bias = dbias.data != nullptr;
  if (has_bias) {
    check_float(op, "dbias", dbias, h);
  }
  if (rows == 0) return;
  norm_bwd_dx_kernel<<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
      out_view(dx), in_view(dout), in_view(x), in_view(weight), fp(mean), fp(rstd), rows, h);
  MPT_CUDA_LAUNCH("norm_bwd_dx_kernel");
  norm_param_grads(*this, out_view(dweight), has_bias ? out_view(dbias) : Out{}, in_view(dout), in_view(x), fp(mean),
                   fp(rstd), rows, h);
}

void CudaOps::rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) {
  const char* op = "rmsnorm_fwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_float(op, "out", out, x.numel());
  check_f32(op, "rstd", rstd, rows);
  if (rows == 0) return;
  rmsnorm_fwd_kernel<<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
      out_view(out), fp(rstd), in_view(x), in_view(weight), rows, h, eps);
  MPT_CUDA_LAUNCH("rmsnorm_fwd_kernel");
}

void CudaOps::rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) {
  const char* op = "rmsnorm_bwd";
  const int64_t rows = norm_rows(op, x, weight), h = weight.numel();
  check_float(op, "dx", dx, x.numel());
  check_float(op, "dout", dout, x.numel());
  check_float(op, "dweight", dweight, h);
  check_f32(op, "rstd", rstd, rows);
  if (rows == 0) return;
  norm_bwd_dx_kernel<<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
      out_view(dx), in_view(dout), in_view(x), in_view(weight), nullptr, fp(rstd), rows, h);
  MPT_CUDA_LAUNCH("norm_bwd_dx_kernel");
  norm_param_grads(*this, out_view(dweight), Out{}, in_view(dout), in_view(x), nullptr, fp(rstd), rows, h);
}

void CudaOps::qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                        int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_split", qkv, q, k, v, groups, heads_per_group, head_dim);
  const int64_t n = qkv.numel();
  if (n == 0) return;
  qkv_shuffle_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
      out_view(qkv), out_view(q), out_view(k), out_view(v), tokens, groups, heads_per_group, head_dim, false);
  MPT_CUDA_LAUNCH("qkv_shuffle_kernel");
}

void CudaOps::qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                        int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_merge", dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
  const int64_t n = dqkv.numel();
  if (n == 0) return;
  qkv_shuffle_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
      out_view(dqkv), out_view(dq), out_view(dk), out_view(dv), tokens, groups, heads_per_group, head_dim, true);
  MPT_CUDA_LAUNCH("qkv_shuffle_kernel");
}

void CudaOps::rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
                   bool inverse) {
  const char* op = "rope";
  check_float(op, "x", x);
  check_i32(op, "positions", positions);
  MPT_CHECK(heads > 0 && head_dim > 0 && rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0,
            Status::kInvalidArgument, op, ": heads ", heads, ", head_dim ", head_dim, ", rotary_dim ", rotary_dim,
            ": need rotary_dim even and in (0, head_dim]");
  MPT_CHECK(base > 0 && std::isfinite(base), Status::kInvalidArgument, op, ": base ", base, " must be positive");
  const int64_t width = heads * head_dim;
  MPT_CHECK(x.numel() % width == 0, Status::kInvalidArgument, op, ": x ", describe(x),
            " rows must hold heads*head_dim = ", width);
  const int64_t tokens = x.numel() / width;
  check_numel(op, "positions", positions, tokens);
  // The CPU backend's limit, kept so that both backends accept the same calls.
  constexpr int64_t kMaxRotaryDim = 1024;
  MPT_CHECK(rotary_dim <= kMaxRotaryDim, Status::kInvalidArgument, op, ": rotary_dim ", rotary_dim, " exceeds ",
            kMaxRotaryDim);
  const int64_t n = tokens * (rotary_dim / 2);
  if (n == 0) return;
  rope_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(out_view(x), ip(positions), tokens, heads,
                                                                  head_dim, rotary_dim, static_cast<double>(base),
                                                                  inverse ? -1.0 : 1.0);
  MPT_CUDA_LAUNCH("rope_kernel");
}

void CudaOps::activation_fwd(Tensor out, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  activation_shapes("activation_fwd", x, out, act, gated, &rows, &f);
  if (rows * f == 0) return;
  activation_fwd_kernel<<<blocks_for(rows * f, kThreads), kThreads, 0, stream()>>>(out_view(out), in_view(x), rows,
                                                                                   f, act, gated);
  MPT_CUDA_LAUNCH("activation_fwd_kernel");
}

void CudaOps::activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  activation_shapes("activation_bwd", x, dout, act, gated, &rows, &f);
  check_float("activation_bwd", "dx", dx);
  check_numel("activation_bwd", "dx", dx, x.numel());
  if (rows * f == 0) return;
  activation_bwd_kernel<<<blocks_for(rows * f, kThreads), kThreads, 0, stream()>>>(
      out_view(dx), in_view(dout), in_view(x), rows, f, act, gated);
  MPT_CUDA_LAUNCH("activation_bwd_kernel");
}

void CudaOps::dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) {
  apply_dropout(*this, "dropout_fwd", out, x, p, key, row_offset);
}

void CudaOps::dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) {
  apply_dropout(*this, "dropout_bwd", dx, dout, p, key, row_offset);
}

}  // namespace mpt::cuda
