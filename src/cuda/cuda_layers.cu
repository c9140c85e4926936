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
#include "cuda/norm_rows.cuh"
#include "cuda/op_checks.h"
#include "cuda/device.h"

namespace mpt::cuda {

using backend::Activation;

namespace {
// --- normalisation ---------------------------------------------------------------------------

// One warp per row: statistics in double as on the CPU, output formed from the rounded ones.
// The statistics' loads go lane by lane (the order their sums depend on); with typed views
// and `vec` (h a multiple of the pack, every row 16-byte aligned) the output pass moves
// whole packs, with the same expression per element.
template <typename V>
__global__ void layernorm_fwd_kernel(typename V::O out, float* mean, float* rstd, typename V::I x, typename V::I w,
                                     typename V::I b, int64_t rows, int64_t h, float eps, bool vec) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const auto xr = x.at(t * h);
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
    layernorm_store<V>(out.at(t * h), xr, w, b, h, m, r, lane, vec);
  }
}

template <typename V>
__global__ void rmsnorm_fwd_kernel(typename V::O out, float* rstd, typename V::I x, typename V::I w, int64_t rows,
                                   int64_t h, float eps, bool vec) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const auto xr = x.at(t * h);
    double sq = 0;
    for (int64_t j = lane; j < h; j += kWarp) sq += static_cast<double>(xr[j]) * xr[j];
    const float r = static_cast<float>(1.0 / sqrt(warp_sum(sq) / static_cast<double>(h) + eps));
    if (lane == 0) rstd[t] = r;
    rmsnorm_store<V>(out.at(t * h), xr, w, h, r, lane, vec);
  }
}

// dx += the input gradient of one row per warp; mean == nullptr means RMSNorm.
template <typename V>
__global__ void norm_bwd_dx_kernel(typename V::O dx, typename V::I dout, typename V::I x, typename V::I w,
                                   const float* mean, const float* rstd, int64_t rows, int64_t h) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp; t < rows;
       t += static_cast<int64_t>(gridDim.x) * kRowWarps) {
    const auto xr = x.at(t * h), gr = dout.at(t * h);
    const float m = mean ? mean[t] : 0.0f, r = rstd[t];
    double sum_g = 0, sum_gx = 0;
    for (int64_t j = lane; j < h; j += kWarp) {
      const double g = static_cast<double>(gr[j]) * w[j];
      sum_g += g;
      sum_gx += g * ((xr[j] - m) * r);
    }
    const float mean_g = static_cast<float>(warp_sum(sum_g) / static_cast<double>(h));
    const float mean_gx = static_cast<float>(warp_sum(sum_gx) / static_cast<double>(h));
    const auto dr = dx.at(t * h);
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

// --- RoPE ---------------------------------------------------------------------------------

// The cosine and sine of token position `pos` for frequency i, in double (positions times
// frequencies reach 1e5 radians at long context), then rounded to float.
__device__ __forceinline__ void rope_angle(int32_t pos, int64_t i, int64_t rotary_dim, double base, double sign,
                                           float& c, float& s) {
  const double freq = pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
  const double angle = sign * pos * freq;
  double sd, cd;
  sincos(angle, &sd, &cd);
  c = static_cast<float>(cd);
  s = static_cast<float>(sd);
}

// The rotation of the pair (a, b) = (x[i], x[i + half]): one expression, shared by every RoPE
// kernel, so that they round alike.
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& ra, float& rb) {
  ra = a * c - b * s;
  rb = b * c + a * s;
}

// One thread per (token, frequency): the angle computed once, shared by the token's heads.
template <typename V>
__global__ void rope_kernel(typename V::O x, const int32_t* pos, int64_t tokens, int64_t heads, int64_t head_dim,
                            int64_t rotary_dim, double base, double sign) {
  const int64_t half = rotary_dim / 2, n = tokens * half, width = heads * head_dim;
  for (int64_t idx = global_thread(); idx < n; idx += grid_threads()) {
    const int64_t t = idx / half, i = idx % half;
    float c, s;
    rope_angle(pos[t], i, rotary_dim, base, sign, c, s);
    for (int64_t h = 0; h < heads; ++h) {
      const auto row = x.at(t * width + h * head_dim);
      float ra, rb;
      rotate(row[i], row[i + half], c, s, ra, rb);
      row.set(i, ra);
      row.set(i + half, rb);
    }
  }
}

// qkv_split (+ RoPE on q and k) and, to_fused, qkv_merge (+ the inverse RoPE on dq and dk)
// in one pass, on tensors of one dtype T, W elements per access (a 16-byte pack, or 1).
// Thread (t, lane): a lane below half / W owns channels [lane*W, lane*W + W) and their
// partners at + half of every head of token t, rotating q's and k's by angles computed once
// (rope_angle); a later lane owns W of the channels [rotary_dim, head_dim), moved as they
// are. rotary_dim 0: a plain split or merge. Each element is read once and written once.
template <typename T, int W>
__global__ void qkv_rope_kernel(T* qkv, T* q, T* k, T* v, const int32_t* pos, int64_t tokens, int64_t groups,
                                int64_t hpg, int64_t d, int64_t rotary_dim, double base, double sign, bool to_fused) {
  const int64_t half = rotary_dim / 2, rot_lanes = half / W, lanes = rot_lanes + (d - rotary_dim) / W;
  const int64_t width = groups * (hpg + 2) * d, q_width = groups * hpg * d, kv_width = groups * d;
  using P = Pack<T>;
  auto load = [](const T* p) {
    struct Run {
      float v[W];
    } r;
    if constexpr (W == P::kSize) {
      const P pk = *reinterpret_cast<const P*>(p);
#pragma unroll
      for (int e = 0; e < W; ++e) r.v[e] = widen(pk.v[e]);
    } else {
#pragma unroll
      for (int e = 0; e < W; ++e) r.v[e] = widen(p[e]);
    }
    return r;
  };
  auto store = [](T* p, const float* v) {
    if constexpr (W == P::kSize) {
      P pk;
#pragma unroll
      for (int e = 0; e < W; ++e) pk.v[e] = narrow<T>(v[e]);
      *reinterpret_cast<P*>(p) = pk;
    } else {
#pragma unroll
      for (int e = 0; e < W; ++e) p[e] = narrow<T>(v[e]);
    }
  };
  for (int64_t idx = global_thread(); idx < tokens * lanes; idx += grid_threads()) {
    const int64_t t = idx / lanes, lane = idx % lanes;
    const bool rotating = lane < rot_lanes;
    const int64_t first = rotating ? lane * W : rotary_dim + (lane - rot_lanes) * W;
    float c[W], s[W];
    if (rotating) {
#pragma unroll
      for (int e = 0; e < W; ++e) rope_angle(pos[t], first + e, rotary_dim, base, sign, c[e], s[e]);
    }
    T* fused = qkv + t * width;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t slot = 0; slot < hpg + 2; ++slot) {
        T* whole = fused + (g * (hpg + 2) + slot) * d;
        T* part = slot < hpg    ? q + t * q_width + (g * hpg + slot) * d
                  : slot == hpg ? k + t * kv_width + g * d
                                : v + t * kv_width + g * d;
        T* src = to_fused ? part : whole;
        T* dst = to_fused ? whole : part;
        auto a = load(src + first);
        if (!rotating) {
          store(dst + first, a.v);
          continue;
        }
        auto b = load(src + first + half);
        if (slot <= hpg) {  // a query or key head: rotated
#pragma unroll
          for (int e = 0; e < W; ++e) rotate(a.v[e], b.v[e], c[e], s[e], a.v[e], b.v[e]);
        }
        store(dst + first, a.v);
        store(dst + first + half, b.v);
      }
    }
  }
}

// Launches qkv_rope_kernel when qkv, q, k and v share a dtype (else returns false): packs when
// every head's runs [0, half) and [rotary_dim, head_dim) split into aligned 16-byte packs.
bool launch_qkv_rope(cudaStream_t stream, const Tensor& qkv, const Tensor& q, const Tensor& k, const Tensor& v,
                     const int32_t* pos, int64_t tokens, int64_t groups, int64_t hpg, int64_t d, int64_t rotary_dim,
                     double base, bool to_fused) {
  if (q.dtype != qkv.dtype || k.dtype != qkv.dtype || v.dtype != qkv.dtype) return false;
  auto run = [&](auto type) {
    using T = decltype(type);
    constexpr int W = Pack<T>::kSize;
    const bool vec = (rotary_dim / 2) % W == 0 && (d - rotary_dim) % W == 0 &&
                     aligned16({qkv.data, q.data, k.data, v.data});
    const int w = vec ? W : 1;
    const int64_t lanes = rotary_dim / 2 / w + (d - rotary_dim) / w, n = tokens * lanes;
    if (n == 0) return;
    T *pf = static_cast<T*>(qkv.data), *pq = static_cast<T*>(q.data);
    T *pk = static_cast<T*>(k.data), *pv = static_cast<T*>(v.data);
    const double sign = to_fused ? -1.0 : 1.0;
    if (vec)
      qkv_rope_kernel<T, W><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(pf, pq, pk, pv, pos, tokens, groups, hpg,
                                                                             d, rotary_dim, base, sign, to_fused);
    else
      qkv_rope_kernel<T, 1><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(pf, pq, pk, pv, pos, tokens, groups, hpg,
                                                                             d, rotary_dim, base, sign, to_fused);
    MPT_CUDA_LAUNCH("qkv_rope_kernel");
  };
  if (qkv.dtype == DType::kBF16)
    run(uint16_t{});
  else
    run(float{});
  return true;
}

// RoPE's argument rules (the CPU backend's), for rope and the fused qkv ops.
void check_rope(const char* op, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base) {
  MPT_CHECK(heads > 0 && head_dim > 0 && rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0,
            Status::kInvalidArgument, op, ": heads ", heads, ", head_dim ", head_dim, ", rotary_dim ", rotary_dim,
            ": need rotary_dim even and in (0, head_dim]");
  MPT_CHECK(base > 0 && std::isfinite(base), Status::kInvalidArgument, op, ": base ", base, " must be positive");
  // The CPU backend's limit, kept so that both backends accept the same calls.
  constexpr int64_t kMaxRotaryDim = 1024;
  MPT_CHECK(rotary_dim <= kMaxRotaryDim, Status::kInvalidArgument, op, ": rotary_dim ", rotary_dim, " exceeds ",
            kMaxRotaryDim);
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

// One thread per output feature (t, j); gated rows are [gate | up]. Index is uint32_t when
// the call's elements fit (32-bit division for t and j).
template <typename V, typename Index>
__global__ void activation_fwd_kernel(typename V::O out, typename V::I x, Index rows, Index f, Activation act,
                                      bool gated) {
  const Index width = gated ? 2 * f : f, n = rows * f;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Index t = i / f, j = i % f;
    const auto xr = x.at(static_cast<int64_t>(t) * width);
    out.set(i, evaluate(act, xr[j]).value * (gated ? xr[f + j] : 1.0f));
  }
}

template <typename V, typename Index>
__global__ void activation_bwd_kernel(typename V::O dx, typename V::I dout, typename V::I x, Index rows, Index f,
                                      Activation act, bool gated) {
  const Index width = gated ? 2 * f : f, n = rows * f;
  const Index stride = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index i = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const Index t = i / f, j = i % f;
    const auto xr = x.at(static_cast<int64_t>(t) * width);
    const auto dr = dx.at(static_cast<int64_t>(t) * width);
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
  const bool vec = norm_packs(h, x.dtype, {out.data, x.data, weight.data, bias.data});
  with_views({&out, &x, &weight, &bias}, [&](auto v) {
    using V = decltype(v);
    layernorm_fwd_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(out), fp(mean), fp(rstd), V::in(x), V::in(weight), has_bias ? V::in(bias) : typename V::I{}, rows, h,
        eps, vec);
  });
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
  with_views({&dx, &dout, &x, &weight}, [&](auto v) {
    using V = decltype(v);
    norm_bwd_dx_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(dx), V::in(dout), V::in(x), V::in(weight), fp(mean), fp(rstd), rows, h);
  });
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
  const bool vec = norm_packs(h, x.dtype, {out.data, x.data, weight.data});
  with_views({&out, &x, &weight}, [&](auto v) {
    using V = decltype(v);
    rmsnorm_fwd_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(out), fp(rstd), V::in(x), V::in(weight), rows, h, eps, vec);
  });
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
  with_views({&dx, &dout, &x, &weight}, [&](auto v) {
    using V = decltype(v);
    norm_bwd_dx_kernel<V><<<blocks_for(rows, kRowWarps), kRowWarps * kWarp, 0, stream()>>>(
        V::out(dx), V::in(dout), V::in(x), V::in(weight), nullptr, fp(rstd), rows, h);
  });
  MPT_CUDA_LAUNCH("norm_bwd_dx_kernel");
  norm_param_grads(*this, out_view(dweight), Out{}, in_view(dout), in_view(x), nullptr, fp(rstd), rows, h);
}

void CudaOps::qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                        int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_split", qkv, q, k, v, groups, heads_per_group, head_dim);
  const int64_t n = qkv.numel();
  if (n == 0) return;
  if (launch_qkv_rope(stream(), qkv, q, k, v, nullptr, tokens, groups, heads_per_group, head_dim, 0, 0, false)) return;
  qkv_shuffle_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
      out_view(qkv), out_view(q), out_view(k), out_view(v), tokens, groups, heads_per_group, head_dim, false);
  MPT_CUDA_LAUNCH("qkv_shuffle_kernel");
}

void CudaOps::qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                        int64_t head_dim) {
  const int64_t tokens = qkv_tokens("qkv_merge", dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
  const int64_t n = dqkv.numel();
  if (n == 0) return;
  if (launch_qkv_rope(stream(), dqkv, dq, dk, dv, nullptr, tokens, groups, heads_per_group, head_dim, 0, 0, true))
    return;
  qkv_shuffle_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(
      out_view(dqkv), out_view(dq), out_view(dk), out_view(dv), tokens, groups, heads_per_group, head_dim, true);
  MPT_CUDA_LAUNCH("qkv_shuffle_kernel");
}

void CudaOps::qkv_split_rope(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                             int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) {
  const char* op = "qkv_split_rope";
  const int64_t tokens = qkv_tokens(op, qkv, q, k, v, groups, heads_per_group, head_dim);
  check_rope(op, groups * heads_per_group, head_dim, rotary_dim, base);
  check_i32(op, "positions", positions);
  check_numel(op, "positions", positions, tokens);
  if (tokens == 0) return;
  if (!launch_qkv_rope(stream(), qkv, q, k, v, ip(positions), tokens, groups, heads_per_group, head_dim, rotary_dim,
                       static_cast<double>(base), false))
    Ops::qkv_split_rope(q, k, v, qkv, groups, heads_per_group, head_dim, positions, rotary_dim, base);
}

void CudaOps::qkv_merge_rope(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                             int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) {
  const char* op = "qkv_merge_rope";
  const int64_t tokens = qkv_tokens(op, dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
  check_rope(op, groups * heads_per_group, head_dim, rotary_dim, base);
  check_i32(op, "positions", positions);
  check_numel(op, "positions", positions, tokens);
  if (tokens == 0) return;
  if (!launch_qkv_rope(stream(), dqkv, dq, dk, dv, ip(positions), tokens, groups, heads_per_group, head_dim,
                       rotary_dim, static_cast<double>(base), true))
    Ops::qkv_merge_rope(dqkv, dq, dk, dv, groups, heads_per_group, head_dim, positions, rotary_dim, base);
}

void CudaOps::rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
                   bool inverse) {
  const char* op = "rope";
  check_float(op, "x", x);
  check_i32(op, "positions", positions);
  check_rope(op, heads, head_dim, rotary_dim, base);
  const int64_t width = heads * head_dim;
  MPT_CHECK(x.numel() % width == 0, Status::kInvalidArgument, op, ": x ", describe(x),
            " rows must hold heads*head_dim = ", width);
  const int64_t tokens = x.numel() / width;
  check_numel(op, "positions", positions, tokens);
  const int64_t n = tokens * (rotary_dim / 2);
  if (n == 0) return;
  with_views({&x}, [&](auto v) {
    using V = decltype(v);
    rope_kernel<V><<<blocks_for(n, kThreads), kThreads, 0, stream()>>>(V::out(x), ip(positions), tokens, heads,
                                                                       head_dim, rotary_dim, static_cast<double>(base),
                                                                       inverse ? -1.0 : 1.0);
  });
  MPT_CUDA_LAUNCH("rope_kernel");
}

void CudaOps::activation_fwd(Tensor out, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  activation_shapes("activation_fwd", x, out, act, gated, &rows, &f);
  if (rows * f == 0) return;
  // 32-bit indices when the input's elements (gated: 2 per output) fit.
  const bool small = index32(x.numel());
  with_views({&out, &x}, [&](auto v) {
    using V = decltype(v);
    const unsigned blocks = blocks_for(rows * f, kThreads);
    if (small)
      activation_fwd_kernel<V, uint32_t><<<blocks, kThreads, 0, stream()>>>(
          V::out(out), V::in(x), static_cast<uint32_t>(rows), static_cast<uint32_t>(f), act, gated);
    else
      activation_fwd_kernel<V, int64_t><<<blocks, kThreads, 0, stream()>>>(V::out(out), V::in(x), rows, f, act, gated);
  });
  MPT_CUDA_LAUNCH("activation_fwd_kernel");
}

void CudaOps::activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) {
  int64_t rows = 0, f = 0;
  activation_shapes("activation_bwd", x, dout, act, gated, &rows, &f);
  check_float("activation_bwd", "dx", dx);
  check_numel("activation_bwd", "dx", dx, x.numel());
  if (rows * f == 0) return;
  const bool small = index32(x.numel());
  with_views({&dx, &dout, &x}, [&](auto v) {
    using V = decltype(v);
    const unsigned blocks = blocks_for(rows * f, kThreads);
    if (small)
      activation_bwd_kernel<V, uint32_t><<<blocks, kThreads, 0, stream()>>>(
          V::out(dx), V::in(dout), V::in(x), static_cast<uint32_t>(rows), static_cast<uint32_t>(f), act, gated);
    else
      activation_bwd_kernel<V, int64_t><<<blocks, kThreads, 0, stream()>>>(V::out(dx), V::in(dout), V::in(x), rows,
                                                                           f, act, gated);
  });
  MPT_CUDA_LAUNCH("activation_bwd_kernel");
}

void CudaOps::dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) {
  apply_dropout(*this, "dropout_fwd", out, x, p, key, row_offset);
}

void CudaOps::dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) {
  apply_dropout(*this, "dropout_bwd", dx, dout, p, key, row_offset);
}

}  // namespace mpt::cuda
