// Mixture of experts on the GPU: router top-k and its backward, the z-loss pieces, and the
// permutation of token rows into expert order and back, with the semantics of ops.h and the
// CPU backend's arithmetic (src/backend/cpu/moe.cc):
// - The router works one warp per token. Row sums (softmax normaliser, sigmoid sum, the
//   backward's dot products) are in double, each lane summing a strided slice and the warp
//   adding the slices by a fixed tree; the sums over the k selected experts run in choice
//   order, as on the CPU. Selection compares the same fp32 values as the CPU (ties to the
//   lower expert, NaN first), so the chosen experts agree.
// - The permutations write every output element exactly once from one fixed-order sum;
//   products and sums are rounded one by one (_rn intrinsics) as the CPU's are. Their token
//   rows (x, y, out and the gradients) are f32 or bf16 each (elements.cuh: fp32 sums, one
//   rounding on store); probs and dprobs are f32, as are all the router's tensors.
// - Index tensors live on the device, so their values cannot be checked before the launch
//   without waiting for the stream. A rows map with an entry outside [-1, R) or a row named
//   twice makes every output of that call NaN, and indices that are not k distinct experts
//   make that token's dlogits NaN: the error shows up in the loss and the gradient norm
//   instead of passing silently, and no memory outside the tensors is touched.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/op_checks.h"

namespace mpt::cuda {

namespace {

using backend::RouterScore;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kThreads = 256;
constexpr int kRouterWarps = 4;                    // tokens per router block
constexpr size_t kDefaultSharedBytes = 48 * 1024;  // without opting in
constexpr int64_t kMaxBlocks = int64_t{1} << 20;   // grids stride beyond this
// Megatron normalises sigmoid scores as s / (sum + 1e-20).
constexpr double kSigmoidSumEps = 1e-20;
constexpr unsigned long long kNoChoice = ~0ull;  // a slot no choice names (memset 0xff)

// --- argument checks: the CPU backend's rules and messages ----------------------------

[[noreturn]] void invalid(const char* op, const std::string& what) { fail(Status::kInvalidArgument, op, ": ", what); }

bool is_empty(const Tensor& t) { return t.data == nullptr; }

void check_dtype(const char* op, const char* arg, const Tensor& t, DType want) {
  MPT_CHECK(t.dtype == want, Status::kInvalidArgument, op, ": ", arg, " must be ", dtype_label(want), ", got ",
            describe(t));
  check_view(op, arg, t);
}

std::string extent(int64_t n) { return n < 0 ? "*" : std::to_string(n); }

// What a matrix argument may hold: F32 only, F32 or BF16 (token rows), or I32 (indices).
enum class Holds { kF32, kFloat, kI32 };

// Throws unless t is a 2-D [rows, cols] of the dtype `holds` names; -1 accepts any extent.
void check_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols,
                  Holds holds = Holds::kF32) {
  if (holds == Holds::kFloat)
    check_float(op, arg, t);
  else
    check_dtype(op, arg, t, holds == Holds::kI32 ? DType::kI32 : DType::kF32);
  if (!(t.ndim == 2 && (rows < 0 || t.shape[0] == rows) && (cols < 0 || t.shape[1] == cols)))
    invalid(op, str(arg, " ", describe(t), " must be [", extent(rows), ", ", extent(cols), "]"));
}

struct RouterDims {
  int64_t tokens, experts;
};

RouterDims check_router(const char* op, const Tensor& logits, int64_t k, RouterScore fn) {
  if (fn != RouterScore::kSoftmax && fn != RouterScore::kSigmoid)
    invalid(op, str("unknown score function ", static_cast<int>(fn)));
  check_dtype(op, "logits", logits, DType::kF32);
  if (!(logits.ndim == 2 && logits.shape[1] > 0))
    invalid(op, "logits " + describe(logits) + " must be [tokens, experts] with experts > 0");
  const RouterDims d{logits.shape[0], logits.shape[1]};
  if (!(k >= 1 && k <= d.experts)) invalid(op, str("k ", k, " must be in [1, experts = ", d.experts, "]"));
  MPT_CHECK(d.experts <= INT32_MAX, Status::kNotSupported, op, ": ", d.experts, " experts exceed the GPU router's ",
            INT32_MAX);
  return d;
}

struct PermuteDims {
  int64_t tokens, choices, rows, hidden;
};

// Checks rows i32 [T, k], the token side tok [T, H] and the permuted side perm [R, H].
PermuteDims check_permute(const char* op, const Tensor& rows, const char* tok_name, const Tensor& tok,
                          const char* perm_name, const Tensor& perm) {
  check_matrix(op, "rows", rows, -1, -1, Holds::kI32);
  PermuteDims d{rows.shape[0], rows.shape[1], 0, 0};
  check_matrix(op, tok_name, tok, d.tokens, -1, Holds::kFloat);
  d.hidden = tok.shape[1];
  check_matrix(op, perm_name, perm, -1, d.hidden, Holds::kFloat);
  d.rows = perm.shape[0];
  return d;
}

void check_probs(const char* op, const char* arg, const Tensor& probs, const PermuteDims& d) {
  if (!is_empty(probs)) check_matrix(op, arg, probs, d.tokens, d.choices);
}

// --- device helpers -----------------------------------------------------------------------

__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

// The warp's sum of v, added by a fixed tree and handed to every lane.
__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return __shfl_sync(kFullMask, v, 0);
}

// True when (va, a) ranks before (vb, b): larger first, NaN above everything, ties to the
// lower index. A strict total order, so every lane reduces to the same expert.
__device__ __forceinline__ bool ranks_before(float va, int a, float vb, int b) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return a < b;
}

// A token's sums over all experts: the softmax's max logit and 1 / sum exp(l - max), the
// sigmoid's sum + eps. The max follows the CPU's std::max fold from l[0]: NaN only when
// l[0] is (then every softmax score is NaN either way).
struct RowStats {
  double max = 0, inv_sum = 0, sigmoid_den = 0;
  __device__ double softmax(const float* l, int e) const { return exp(l[e] - max) * inv_sum; }
};

__device__ RowStats row_stats(const float* l, int experts, RouterScore fn, int lane) {
  RowStats s;
  if (fn == RouterScore::kSoftmax) {
    float m = -INFINITY;
    for (int e = lane; e < experts; e += 32) m = fmaxf(m, l[e]);
    for (int offset = 16; offset > 0; offset /= 2) m = fmaxf(m, __shfl_xor_sync(kFullMask, m, offset));
    s.max = isnan(l[0]) ? static_cast<double>(l[0]) : static_cast<double>(m);
    double sum = 0;
    for (int e = lane; e < experts; e += 32) sum += exp(l[e] - s.max);
    s.inv_sum = 1.0 / warp_sum(sum);
  } else {
    double sum = 0;
    for (int e = lane; e < experts; e += 32) sum += sigmoid(l[e]);
    s.sigmoid_den = warp_sum(sum) + kSigmoidSumEps;
  }
  return s;
}

__device__ __forceinline__ int lane_id() { return static_cast<int>(threadIdx.x & 31); }

// Warp-per-item kernels: warp w of block b takes item b * warps + w, stepping by the grid's
// warps. The router's items are tokens, each warp with `experts` floats of shared memory.
__device__ __forceinline__ int64_t first_warp_item() {
  return int64_t{blockIdx.x} * (blockDim.x >> 5) + (threadIdx.x >> 5);
}
__device__ __forceinline__ int64_t warp_item_stride() { return int64_t{gridDim.x} * (blockDim.x >> 5); }

// indices/probs [T, k] in rank order; scores [T, E] (may be null).
__global__ void router_topk_kernel(const float* logits, int64_t tokens, int experts, int k, RouterScore fn,
                                   bool pre_softmax, int32_t* indices, float* probs, float* scores) {
  extern __shared__ float shared[];
  float* value = shared + (threadIdx.x >> 5) * experts;  // the fp32 values selection compares
  const int lane = lane_id();
  for (int64_t t = first_warp_item(); t < tokens; t += warp_item_stride()) {
    const float* l = logits + t * experts;
    const bool softmax = fn == RouterScore::kSoftmax;
    const bool need_stats = scores != nullptr || (softmax && pre_softmax);
    const RowStats st = need_stats ? row_stats(l, experts, fn, lane) : RowStats{};
    for (int e = lane; e < experts; e += 32)
      value[e] = !softmax ? static_cast<float>(sigmoid(l[e])) : pre_softmax ? static_cast<float>(st.softmax(l, e)) : l[e];
    __syncwarp();

    // Pass j takes the best expert ranking after pass j - 1's pick.
    int32_t* idx = indices + t * k;
    float prev_v = 0;
    int prev = -1;
    for (int j = 0; j < k; ++j) {
      float best_v = 0;
      int best = -1;
      for (int e = lane; e < experts; e += 32) {
        const float v = value[e];
        if (prev >= 0 && !ranks_before(prev_v, prev, v, e)) continue;
        if (best < 0 || ranks_before(v, e, best_v, best)) {
          best = e;
          best_v = v;
        }
      }
      for (int offset = 16; offset > 0; offset /= 2) {
        const float other_v = __shfl_xor_sync(kFullMask, best_v, offset);
        const int other = __shfl_xor_sync(kFullMask, best, offset);
        if (other >= 0 && (best < 0 || ranks_before(other_v, other, best_v, best))) {
          best = other;
          best_v = other_v;
        }
      }
      if (lane == 0) idx[j] = best;
      prev = best;
      prev_v = best_v;
    }

    if (lane == 0) {  // probabilities over the k choices, summed in choice order
      float* p = probs + t * k;
      if (softmax && !pre_softmax) {
        const double mx = l[idx[0]];
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += exp(l[idx[j]] - mx);
        for (int j = 0; j < k; ++j) p[j] = static_cast<float>(exp(l[idx[j]] - mx) / sum);
      } else if (softmax) {
        for (int j = 0; j < k; ++j) p[j] = value[idx[j]];
      } else {
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += sigmoid(l[idx[j]]);
        const double den = k > 1 ? sum + kSigmoidSumEps : 1.0;
        for (int j = 0; j < k; ++j) p[j] = static_cast<float>(sigmoid(l[idx[j]]) / den);
      }
    }
    if (scores != nullptr) {
      float* s = scores + t * experts;
      for (int e = lane; e < experts; e += 32)
        s[e] = softmax ? static_cast<float>(st.softmax(l, e)) : static_cast<float>(sigmoid(l[e]) / st.sigmoid_den);
    }
    __syncwarp();  // the next token reuses `value`
  }
}

// dlogits [T, E] from dprobs [T, k] and dscores [T, E] (may be null); the CPU's steps, with the
// gradient on the scores kept in fp32 shared memory where the CPU keeps it in dlogits.
__global__ void router_topk_bwd_kernel(const float* logits, const int32_t* indices, const float* dprobs,
                                       const float* dscores, int64_t tokens, int experts, int k, RouterScore fn,
                                       bool pre_softmax, float* dlogits) {
  extern __shared__ float shared[];
  float* g = shared + (threadIdx.x >> 5) * experts;
  const int lane = lane_id();
  for (int64_t t = first_warp_item(); t < tokens; t += warp_item_stride()) {
    const float* l = logits + t * experts;
    const int32_t* idx = indices + t * k;
    const float* dp = dprobs + t * k;
    const float* ds = dscores ? dscores + t * experts : nullptr;
    float* dl = dlogits + t * experts;

    bool bad = false;  // indices must be k distinct experts
    for (int j = lane; j < k; j += 32) {
      const int e = idx[j];
      if (e < 0 || e >= experts) bad = true;
      for (int i = 0; i < j && !bad; ++i) bad = idx[i] == e;
    }
    if (__any_sync(kFullMask, bad)) {
      for (int e = lane; e < experts; e += 32) dl[e] = NAN;
      continue;
    }

    const bool softmax = fn == RouterScore::kSoftmax;
    const RowStats st = (ds != nullptr || (softmax && pre_softmax)) ? row_stats(l, experts, fn, lane) : RowStats{};
    if (softmax && pre_softmax) {
      // probs are entries of the all-E softmax: one softmax backward with both upstreams.
      for (int e = lane; e < experts; e += 32) g[e] = ds ? ds[e] : 0.0f;
      __syncwarp();
      for (int j = lane; j < k; j += 32) g[idx[j]] = __fadd_rn(g[idx[j]], dp[j]);  // distinct experts
      __syncwarp();
      double dot = 0;
      for (int e = lane; e < experts; e += 32) dot += st.softmax(l, e) * g[e];
      dot = warp_sum(dot);
      for (int e = lane; e < experts; e += 32) dl[e] = static_cast<float>(st.softmax(l, e) * (g[e] - dot));
    } else if (softmax) {
      // scores: softmax over all E; probs: softmax over the k selected logits.
      double dot = 0;
      if (ds) {
        for (int e = lane; e < experts; e += 32) dot += st.softmax(l, e) * ds[e];
        dot = warp_sum(dot);
      }
      for (int e = lane; e < experts; e += 32) g[e] = ds ? static_cast<float>(st.softmax(l, e) * (ds[e] - dot)) : 0.0f;
      __syncwarp();
      if (lane == 0) {
        double mx = l[idx[0]];
        for (int j = 1; j < k; ++j) mx = fmax(mx, static_cast<double>(l[idx[j]]));
        double sum = 0, dot_p = 0;
        for (int j = 0; j < k; ++j) sum += exp(l[idx[j]] - mx);
        for (int j = 0; j < k; ++j) dot_p += exp(l[idx[j]] - mx) / sum * dp[j];
        for (int j = 0; j < k; ++j)
          g[idx[j]] = __fadd_rn(g[idx[j]], static_cast<float>(exp(l[idx[j]] - mx) / sum * (dp[j] - dot_p)));
      }
      __syncwarp();
      for (int e = lane; e < experts; e += 32) dl[e] = g[e];
    } else {
      // Gradient on sigmoid(l) from both normalisations, then through the sigmoid.
      double dot = 0;
      if (ds) {
        for (int e = lane; e < experts; e += 32) dot += sigmoid(l[e]) / st.sigmoid_den * ds[e];
        dot = warp_sum(dot);
      }
      for (int e = lane; e < experts; e += 32) g[e] = ds ? static_cast<float>((ds[e] - dot) / st.sigmoid_den) : 0.0f;
      __syncwarp();
      if (lane == 0) {
        if (k == 1) {
          g[idx[0]] = __fadd_rn(g[idx[0]], dp[0]);
        } else {
          double sum = 0, dot_p = 0;
          for (int j = 0; j < k; ++j) sum += sigmoid(l[idx[j]]);
          const double den = sum + kSigmoidSumEps;
          for (int j = 0; j < k; ++j) dot_p += sigmoid(l[idx[j]]) / den * dp[j];
          for (int j = 0; j < k; ++j) g[idx[j]] = __fadd_rn(g[idx[j]], static_cast<float>((dp[j] - dot_p) / den));
        }
      }
      __syncwarp();
      for (int e = lane; e < experts; e += 32) {
        const double s = sigmoid(l[e]);
        dl[e] = static_cast<float>(g[e] * s * (1.0 - s));
      }
    }
    __syncwarp();  // the next token reuses g
  }
}

// lse [T] = logsumexp of each row, as the CPU forms it: max - log(1 / sum exp(l - max)).
__global__ void router_lse_kernel(const float* logits, int64_t tokens, int experts, float* lse) {
  const int lane = lane_id();
  for (int64_t t = first_warp_item(); t < tokens; t += warp_item_stride()) {
    const RowStats st = row_stats(logits + t * experts, experts, RouterScore::kSoftmax, lane);
    if (lane == 0) lse[t] = static_cast<float>(st.max - log(st.inv_sum));
  }
}

// dlogits [T, E] += scale * 2 * lse[t] * exp(l - lse[t]).
__global__ void router_z_loss_bwd_kernel(float* dlogits, const float* logits, const float* lse, int64_t tokens,
                                         int64_t experts, float scale) {
  const int64_t n = tokens * experts;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double l = lse[i / experts], g = 2.0 * scale * l;
    dlogits[i] = __fadd_rn(dlogits[i], static_cast<float>(g * exp(logits[i] - l)));
  }
}

// --- permutations ---------------------------------------------------------------------------

// Validates rows [T, k] against R permuted rows: slot[r] = t * k + j for the choice naming
// row r (kNoChoice for padding); *bad = 1 when an entry is outside [-1, R) or names a row
// another choice names. Integer atomics only: the result does not depend on timing.
__global__ void map_rows_kernel(const int32_t* rows, int64_t choices_total, int64_t R, unsigned long long* slot,
                                int* bad) {
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < choices_total; i += stride) {
    const int64_t r = rows[i];
    if (r < -1 || r >= R) {
      atomicOr(bad, 1);
      continue;
    }
    if (r < 0) continue;
    if (atomicCAS(&slot[r], kNoChoice, static_cast<unsigned long long>(i)) != kNoChoice) atomicOr(bad, 1);
  }
}

// Kernels over [rows, cols]: threadIdx.y picks one of the block's rows, threadIdx.x strides
// the columns, so narrow rows still fill the block.
__device__ __forceinline__ int64_t first_row() { return int64_t{blockIdx.x} * blockDim.y + threadIdx.y; }
__device__ __forceinline__ int64_t row_stride() { return int64_t{gridDim.x} * blockDim.y; }

// x_perm[r] = x[token of slot r], zeros for padding.
__global__ void permute_kernel(Out x_perm, In x, const unsigned long long* slot, const int* bad, int64_t R, int64_t H,
                               int64_t k) {
  const bool poisoned = *bad != 0;
  for (int64_t r = first_row(); r < R; r += row_stride()) {
    const unsigned long long s = slot[r];
    const Out dst = x_perm.at(r * H);
    const In src = s == kNoChoice ? In{} : x.at(static_cast<int64_t>(s) / k * H);
    for (int64_t c = threadIdx.x; c < H; c += blockDim.x) dst.set(c, poisoned ? NAN : src ? src[c] : 0.0f);
  }
}

// out[t] = sum over kept j of w[t, j] * y[rows[t, j]] in choice order (w null: all ones).
__global__ void gather_sum_kernel(Out out, In y, const int32_t* rows, const float* w, const int* bad, int64_t T,
                                  int64_t H, int64_t k) {
  const bool poisoned = *bad != 0;
  for (int64_t t = first_row(); t < T; t += row_stride()) {
    const int32_t* rt = rows + t * k;
    const Out dst = out.at(t * H);
    for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k && !poisoned; ++j) {  // a poisoned map's rows may be out of range
        const int64_t r = rt[j];
        if (r < 0) continue;
        const float v = y[r * H + c];
        acc = __fadd_rn(acc, w ? __fmul_rn(w[t * k + j], v) : v);
      }
      dst.set(c, poisoned ? NAN : acc);
    }
  }
}

// dy[r] = w[slot r] * dout[token of slot r], zeros for padding.
__global__ void scatter_grad_kernel(Out dy, In dout, const float* w, const unsigned long long* slot, const int* bad,
                                    int64_t R, int64_t H, int64_t k) {
  const bool poisoned = *bad != 0;
  for (int64_t r = first_row(); r < R; r += row_stride()) {
    const unsigned long long s = slot[r];
    const Out dst = dy.at(r * H);
    if (poisoned || s == kNoChoice) {
      for (int64_t c = threadIdx.x; c < H; c += blockDim.x) dst.set(c, poisoned ? NAN : 0.0f);
      continue;
    }
    const int64_t choice = static_cast<int64_t>(s);
    const float weight = w ? w[choice] : 1.0f;
    const In src = dout.at(choice / k * H);
    for (int64_t c = threadIdx.x; c < H; c += blockDim.x) dst.set(c, __fmul_rn(weight, src[c]));
  }
}

// dprobs[t, j] = dout[t] . y[rows[t, j]] in double (0 when dropped): one warp per choice,
// lanes summing strided columns, added by a fixed tree.
__global__ void choice_dot_kernel(float* dprobs, In dout, In y, const int32_t* rows, const int* bad, int64_t T,
                                  int64_t H, int64_t k) {
  const bool poisoned = *bad != 0;
  const int lane = lane_id();
  for (int64_t i = first_warp_item(); i < T * k; i += warp_item_stride()) {
    const int64_t r = rows[i];
    double dot = 0;
    if (!poisoned && r >= 0) {
      const In a = dout.at(i / k * H);
      const In b = y.at(r * H);
      for (int64_t c = lane; c < H; c += 32) dot += static_cast<double>(a[c]) * b[c];
    }
    dot = warp_sum(dot);
    if (lane == 0) dprobs[i] = poisoned ? NAN : static_cast<float>(dot);
  }
}

// --- launch helpers -------------------------------------------------------------------------

unsigned capped_blocks(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::min((work + per_block - 1) / per_block, kMaxBlocks));
}

// A block of kThreads as [rows_per_block, cols] threads for rows of `cols` elements.
struct RowGrid {
  dim3 block;
  unsigned blocks = 0;
};

RowGrid row_grid(int64_t rows, int64_t cols) {
  int tx = 32;
  while (tx < cols && tx < kThreads) tx *= 2;
  RowGrid g;
  g.block = dim3(static_cast<unsigned>(tx), static_cast<unsigned>(kThreads / tx));
  g.blocks = capped_blocks(rows, kThreads / tx);
  return g;
}

// Warps per block and shared memory for a router kernel holding `experts` floats per warp.
// Past the default 48 KiB a block of one warp opts in to the device's larger limit.
struct RouterLaunch {
  int warps = 1;
  size_t shared = 0;
  unsigned blocks = 0;
};

template <typename Kernel>
RouterLaunch router_launch(const char* op, Kernel kernel, int device, int64_t tokens, int64_t experts,
                           bool uses_shared) {
  RouterLaunch L;
  const size_t per_warp = uses_shared ? static_cast<size_t>(experts) * sizeof(float) : 0;
  L.warps = kRouterWarps;
  while (L.warps > 1 && per_warp * L.warps > kDefaultSharedBytes) L.warps /= 2;
  L.shared = per_warp * L.warps;
  if (L.shared > kDefaultSharedBytes) {
    int optin = 0;
    MPT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    MPT_CHECK(L.shared <= static_cast<size_t>(optin), Status::kNotSupported, op, ": ", experts,
              " experts need ", L.shared, " bytes of shared memory per token, more than the device's ", optin);
    MPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(L.shared)));
  }
  L.blocks = capped_blocks(tokens, L.warps);
  return L;
}

// Device scratch for the permutations: a validity flag and R slots.
struct RowMap {
  int* bad = nullptr;
  unsigned long long* slot = nullptr;
};

constexpr size_t kFlagBytes = 256;  // keeps the slots 256-byte aligned

}  // namespace

// ---- router --------------------------------------------------------------------------------

void CudaOps::router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn,
                          bool pre_softmax) {
  const char* op = "router_topk";
  const RouterDims d = check_router(op, logits, k, fn);
  check_matrix(op, "indices", indices, d.tokens, k, Holds::kI32);
  check_matrix(op, "probs", probs, d.tokens, k);
  const bool with_scores = !is_empty(scores);
  if (with_scores) check_matrix(op, "scores", scores, d.tokens, d.experts);
  if (d.tokens == 0) return;
  const RouterLaunch L = router_launch(op, router_topk_kernel, device(), d.tokens, d.experts, true);
  router_topk_kernel<<<L.blocks, L.warps * 32, L.shared, stream()>>>(
      logits.f(), d.tokens, static_cast<int>(d.experts), static_cast<int>(k), fn, pre_softmax, indices.i(), probs.f(),
      with_scores ? scores.f() : nullptr);
  MPT_CUDA_LAUNCH(router_topk_kernel);
}

void CudaOps::router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices,
                              int64_t k, RouterScore fn, bool pre_softmax) {
  const char* op = "router_topk_bwd";
  const RouterDims d = check_router(op, logits, k, fn);
  check_matrix(op, "dlogits", dlogits, d.tokens, d.experts);
  check_matrix(op, "dprobs", dprobs, d.tokens, k);
  const bool with_scores = !is_empty(dscores);
  if (with_scores) check_matrix(op, "dscores", dscores, d.tokens, d.experts);
  check_matrix(op, "indices", indices, d.tokens, k, Holds::kI32);
  if (d.tokens == 0) return;
  const RouterLaunch L = router_launch(op, router_topk_bwd_kernel, device(), d.tokens, d.experts, true);
  router_topk_bwd_kernel<<<L.blocks, L.warps * 32, L.shared, stream()>>>(
      logits.f(), indices.i(), dprobs.f(), with_scores ? dscores.f() : nullptr, d.tokens, static_cast<int>(d.experts),
      static_cast<int>(k), fn, pre_softmax, dlogits.f());
  MPT_CUDA_LAUNCH(router_topk_bwd_kernel);
}

void CudaOps::router_lse(Tensor lse, Tensor logits) {
  const char* op = "router_lse";
  const RouterDims d = check_router(op, logits, 1, RouterScore::kSoftmax);
  check_dtype(op, "lse", lse, DType::kF32);
  if (lse.numel() != d.tokens) invalid(op, str("lse ", describe(lse), " must hold ", d.tokens, " elements"));
  if (d.tokens == 0) return;
  const RouterLaunch L = router_launch(op, router_lse_kernel, device(), d.tokens, d.experts, false);
  router_lse_kernel<<<L.blocks, L.warps * 32, 0, stream()>>>(logits.f(), d.tokens, static_cast<int>(d.experts),
                                                            lse.f());
  MPT_CUDA_LAUNCH(router_lse_kernel);
}

void CudaOps::router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) {
  const char* op = "router_z_loss_bwd";
  const RouterDims d = check_router(op, logits, 1, RouterScore::kSoftmax);
  check_matrix(op, "dlogits", dlogits, d.tokens, d.experts);
  check_dtype(op, "lse", lse, DType::kF32);
  if (lse.numel() != d.tokens) invalid(op, str("lse ", describe(lse), " must hold ", d.tokens, " elements"));
  if (!std::isfinite(scale)) invalid(op, str("scale ", scale, " must be finite"));
  const int64_t n = d.tokens * d.experts;
  if (n == 0) return;
  router_z_loss_bwd_kernel<<<capped_blocks(n, kThreads), kThreads, 0, stream()>>>(dlogits.f(), logits.f(), lse.f(),
                                                                                 d.tokens, d.experts, scale);
  MPT_CUDA_LAUNCH(router_z_loss_bwd_kernel);
}

// ---- permutations --------------------------------------------------------------------------

namespace {

// Fills the row map of `rows` on the ops' stream (scratch memory, valid for this call).
RowMap map_rows(CudaOps& ops, const Tensor& rows, const PermuteDims& d) {
  auto* base = static_cast<char*>(ops.scratch(kFlagBytes + static_cast<size_t>(d.rows) * sizeof(unsigned long long)));
  RowMap m;
  m.bad = reinterpret_cast<int*>(base);
  m.slot = reinterpret_cast<unsigned long long*>(base + kFlagBytes);
  MPT_CUDA_CHECK(cudaMemsetAsync(m.bad, 0, sizeof(int), ops.stream()));
  if (d.rows > 0)
    MPT_CUDA_CHECK(cudaMemsetAsync(m.slot, 0xff, static_cast<size_t>(d.rows) * sizeof(unsigned long long), ops.stream()));
  const int64_t n = d.tokens * d.choices;
  if (n > 0) {
    map_rows_kernel<<<capped_blocks(n, kThreads), kThreads, 0, ops.stream()>>>(rows.i(), n, d.rows, m.slot, m.bad);
    MPT_CUDA_LAUNCH(map_rows_kernel);
  }
  return m;
}

}  // namespace

void CudaOps::moe_permute(Tensor x_perm, Tensor x, Tensor rows) {
  const char* op = "moe_permute";
  const PermuteDims d = check_permute(op, rows, "x", x, "x_perm", x_perm);
  const RowMap m = map_rows(*this, rows, d);
  if (d.rows == 0 || d.hidden == 0) return;
  const RowGrid g = row_grid(d.rows, d.hidden);
  permute_kernel<<<g.blocks, g.block, 0, stream()>>>(out_view(x_perm), in_view(x), m.slot, m.bad, d.rows, d.hidden,
                                                      d.choices);
  MPT_CUDA_LAUNCH(permute_kernel);
}

void CudaOps::moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) {
  const char* op = "moe_permute_bwd";
  const PermuteDims d = check_permute(op, rows, "dx", dx, "dx_perm", dx_perm);
  const RowMap m = map_rows(*this, rows, d);
  if (d.tokens == 0 || d.hidden == 0) return;
  const RowGrid g = row_grid(d.tokens, d.hidden);
  gather_sum_kernel<<<g.blocks, g.block, 0, stream()>>>(out_view(dx), in_view(dx_perm), rows.i(), nullptr, m.bad,
                                                         d.tokens, d.hidden, d.choices);
  MPT_CUDA_LAUNCH(gather_sum_kernel);
}

void CudaOps::moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) {
  const char* op = "moe_unpermute";
  const PermuteDims d = check_permute(op, rows, "out", out, "y", y);
  check_probs(op, "probs", probs, d);
  const RowMap m = map_rows(*this, rows, d);
  if (d.tokens == 0 || d.hidden == 0) return;
  const RowGrid g = row_grid(d.tokens, d.hidden);
  gather_sum_kernel<<<g.blocks, g.block, 0, stream()>>>(out_view(out), in_view(y), rows.i(),
                                                         is_empty(probs) ? nullptr : probs.f(), m.bad, d.tokens,
                                                         d.hidden, d.choices);
  MPT_CUDA_LAUNCH(gather_sum_kernel);
}

void CudaOps::moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) {
  const char* op = "moe_unpermute_bwd";
  const PermuteDims d = check_permute(op, rows, "dout", dout, "dy", dy);
  check_probs(op, "probs", probs, d);
  const bool with_dprobs = !is_empty(dprobs);
  if (with_dprobs) check_matrix(op, "dprobs", dprobs, d.tokens, d.choices);
  if (with_dprobs || !is_empty(y)) check_matrix(op, "y", y, d.rows, d.hidden, Holds::kFloat);
  const RowMap m = map_rows(*this, rows, d);
  if (d.rows > 0 && d.hidden > 0) {
    const RowGrid g = row_grid(d.rows, d.hidden);
    scatter_grad_kernel<<<g.blocks, g.block, 0, stream()>>>(out_view(dy), in_view(dout),
                                                             is_empty(probs) ? nullptr : probs.f(), m.slot, m.bad,
                                                             d.rows, d.hidden, d.choices);
    MPT_CUDA_LAUNCH(scatter_grad_kernel);
  }
  const int64_t n = d.tokens * d.choices;
  if (!with_dprobs || n == 0) return;
  constexpr int kWarps = kThreads / 32;
  choice_dot_kernel<<<capped_blocks(n, kWarps), kThreads, 0, stream()>>>(dprobs.f(), in_view(dout), in_view(y),
                                                                          rows.i(), m.bad, d.tokens, d.hidden,
                                                                          d.choices);
  MPT_CUDA_LAUNCH(choice_dot_kernel);
}

}  // namespace mpt::cuda
