// Attention on the GPU: flash-style fp32 kernels following src/backend/cpu/attention.cc.
//
// Forward: one block per (query tile, batch, head) walks the key tiles with an online
// softmax, so the [seq_q, seq_kv] scores never reach global memory. Backward recomputes the
// probabilities from lse in two passes with no floating-point atomics: one block per query
// tile accumulates dq over the key tiles, and one block per (key tile, batch, key head)
// accumulates dk and dv over the query tiles of every query head of its group, heads in
// order. Each output element is written by one thread after a fixed-order sum, so a call
// gives the same bits every time.
//
// Tiles live in shared memory with rows padded by one float (no bank conflicts on the
// column walks); a block of 256 threads is a 16 x 16 grid in which thread (ty, tx) owns
// rows ty + 16 m and columns tx + 16 n of every tile product. head_dim is padded to the
// next of 32, 64, 128, 256 and the padding is zero.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include "core/error.h"
#include "core/rng_device.h"
#include "cuda/cuda_ops.h"
#include "cuda/op_checks.h"
#include "cuda/device.h"

namespace mpt::cuda {

using backend::AttentionDims;
using backend::SeqPositions;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kThreads = 256;  // 16 x 16 for the tile products, 8 warps for the row passes
constexpr int kWarps = kThreads / 32;
constexpr int kMaxHeadDim = 256;

// --- kernels -------------------------------------------------------------------------------

// SeqPositions, readable on the device.
struct Positions {
  int64_t first, split, second;
};

__device__ __forceinline__ int64_t position_at(const Positions& p, int64_t i) {
  return i < p.split ? p.first + i : p.second + (i - p.split);
}

// Everything a kernel needs of one call. Pointers not used by a kernel are null.
struct Args {
  const float *q, *k, *v;
  const float *dout, *lse, *di;        // backward inputs (di: dout . out per query row)
  float *out_w, *lse_w;                // forward outputs
  float *dq, *dk, *dv;                 // backward outputs
  int64_t seq_q, seq_kv, batch, heads, groups;
  int head_dim;
  float scale;
  bool causal;
  bool vec4;  // every tensor 16-byte aligned and head_dim % 4 == 0: float4 tile loads
  float dropout_p, keep_scale;
  uint64_t dropout_key;
  int64_t head_offset;
  Positions q_pos, kv_pos;
  int64_t mask_seq;  // resolved: never 0
};

// Key j is visible to query i: bottom-right causal alignment, as on the CPU.
__device__ __forceinline__ bool visible(const Args& a, int64_t i, int64_t j) {
  return j < a.seq_kv && (!a.causal || j <= i + (a.seq_kv - a.seq_q));
}

// Dropout mask index of element (i, j) is row_base(i) + kv_pos.at(j).
__device__ __forceinline__ uint64_t mask_row_base(const Args& a, int64_t i) {
  return static_cast<uint64_t>(position_at(a.q_pos, i) * a.mask_seq);
}
__device__ __forceinline__ bool kept(const Args& a, uint64_t stream, uint64_t row_base, int64_t j) {
  return dropout_keep_device(stream, row_base + static_cast<uint64_t>(position_at(a.kv_pos, j)), a.dropout_p);
}

// Butterfly reductions: every lane ends with the same bits (the operations commute).
__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
__device__ __forceinline__ double warp_sum(double x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Rows [0, rows) of a slice with row stride ld into shared [ROWS][DMAX + 1]; rows past
// `rows` and columns past head_dim are zero (zero times a masked probability stays zero).
template <int ROWS, int DMAX>
__device__ void load_tile(float* dst, const float* src, int64_t ld, int rows, int head_dim, bool vec4) {
  constexpr int kLd = DMAX + 1;
  if (vec4) {
    constexpr int kQuads = DMAX / 4;
    for (int idx = threadIdx.x; idx < ROWS * kQuads; idx += kThreads) {
      const int r = idx / kQuads, c = (idx % kQuads) * 4;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < rows && c < head_dim) x = *reinterpret_cast<const float4*>(src + r * ld + c);
      float* d = dst + r * kLd + c;
      d[0] = x.x;
      d[1] = x.y;
      d[2] = x.z;
      d[3] = x.w;
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * DMAX; idx += kThreads) {
      const int r = idx / DMAX, c = idx % DMAX;
      dst[r * kLd + c] = r < rows && c < head_dim ? src[r * ld + c] : 0.0f;
    }
  }
}

// acc[m][n] += sum_k A[ty + 16m][k] * B[tx + 16n][k]   (A B^T; A, B row-major in shared)
template <int M, int N>
__device__ __forceinline__ void product_abt(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                            int K, int ty, int tx) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float x[M], y[N];
#pragma unroll
    for (int m = 0; m < M; ++m) x[m] = A[(ty + 16 * m) * lda + k];
#pragma unroll
    for (int n = 0; n < N; ++n) y[n] = B[(tx + 16 * n) * ldb + k];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < N; ++n) acc[m][n] = fmaf(x[m], y[n], acc[m][n]);
  }
}

// acc[m][n] += sum_k A[ty + 16m][k] * B[k][tx + 16n]   (A B)
template <int M, int N, int K>
__device__ __forceinline__ void product_ab(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                           int ty, int tx) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float x[M], y[N];
#pragma unroll
    for (int m = 0; m < M; ++m) x[m] = A[(ty + 16 * m) * lda + k];
#pragma unroll
    for (int n = 0; n < N; ++n) y[n] = B[k * ldb + tx + 16 * n];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < N; ++n) acc[m][n] = fmaf(x[m], y[n], acc[m][n]);
  }
}

// acc[m][n] += sum_k A[k][ty + 16m] * B[k][tx + 16n]   (A^T B)
template <int M, int N, int K>
__device__ __forceinline__ void product_atb(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                            int ty, int tx) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float x[M], y[N];
#pragma unroll
    for (int m = 0; m < M; ++m) x[m] = A[k * lda + ty + 16 * m];
#pragma unroll
    for (int n = 0; n < N; ++n) y[n] = B[k * ldb + tx + 16 * n];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < N; ++n) acc[m][n] = fmaf(x[m], y[n], acc[m][n]);
  }
}

template <int M, int N>
__device__ __forceinline__ void zero(float (&acc)[M][N]) {
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int n = 0; n < N; ++n) acc[m][n] = 0.0f;
}

// Tile shapes of one head_dim class: BQ query rows and BK key rows per tile, head_dim padded
// to DMAX. Shared memory holds whole tiles; the byte counts below match the kernels' carving.
template <int DMAX, int BQ, int BK>
struct Tiles {
  static_assert(DMAX % 16 == 0 && BQ % 16 == 0 && BK % 16 == 0, "tiles are split over a 16 x 16 thread grid");
  static constexpr int kLd = DMAX + 1;  // row stride of q/k/v-like tiles
  static constexpr int kLs = BK + 1;    // row stride of score-like tiles [BQ][BK]
  static constexpr size_t fwd_bytes() { return sizeof(float) * (BQ * kLd + 2 * BK * kLd + BQ * kLs + 2 * BQ); }
  static constexpr size_t dq_bytes() { return sizeof(float) * (2 * BQ * kLd + 2 * BK * kLd + BQ * kLs + 2 * BQ); }
  static constexpr size_t dkdv_bytes() {
    return sizeof(float) * (2 * BQ * kLd + 2 * BK * kLd + 2 * BQ * kLs + 2 * BQ);
  }
};

// Forward: block = (query tile, batch b, head h); heavy (late) causal query tiles start first.
template <int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(Args a) {
  using T = Tiles<DMAX, BQ, BK>;
  constexpr int kLd = T::kLd, kLs = T::kLs;
  constexpr int RQ = BQ / 16, CK = BK / 16, CD = DMAX / 16, kRowsPerWarp = BQ / kWarps;
  extern __shared__ float smem[];
  float* qs = smem;                  // [BQ][kLd]
  float* ks = qs + BQ * kLd;         // [BK][kLd]
  float* vs = ks + BK * kLd;         // [BK][kLd]
  float* ss = vs + BK * kLd;         // [BQ][kLs] scores, then probabilities
  float* row_rescale = ss + BQ * kLs;  // [BQ] factor on the running output this tile
  float* row_sum = row_rescale + BQ;   // [BQ] final softmax denominators

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16, warp = tid / 32, lane = tid % 32;
  const int64_t pairs = a.batch * a.heads, q_tiles = (a.seq_q + BQ - 1) / BQ;
  const int64_t bh = blockIdx.x % pairs, qt = q_tiles - 1 - blockIdx.x / pairs;
  const int64_t b = bh / a.heads, h = bh % a.heads, g = h / (a.heads / a.groups);
  const int64_t q0 = qt * BQ;
  const int q_rows = static_cast<int>(min(static_cast<int64_t>(BQ), a.seq_q - q0));
  const int64_t ldq = a.batch * a.heads * a.head_dim, ldk = a.batch * a.groups * a.head_dim;
  const int64_t q_off = q0 * ldq + (b * a.heads + h) * a.head_dim, kv_off = (b * a.groups + g) * a.head_dim;
  const int64_t kv_end = a.causal ? min(a.seq_kv, q0 + q_rows + (a.seq_kv - a.seq_q)) : a.seq_kv;
  const uint64_t stream =
      a.dropout_p > 0 ? attention_dropout_stream_device(a.dropout_key, a.head_offset + h, b) : 0;

  load_tile<BQ, DMAX>(qs, a.q + q_off, ldq, q_rows, a.head_dim, a.vec4);
  // Running max and sum of the rows this warp owns (rows warp + kWarps t), in every lane.
  float row_max[kRowsPerWarp], row_total[kRowsPerWarp];
#pragma unroll
  for (int t = 0; t < kRowsPerWarp; ++t) row_max[t] = kNegInf, row_total[t] = 0.0f;
  float o[RQ][CD];
  zero(o);

  for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {
    const int k_rows = static_cast<int>(min(static_cast<int64_t>(BK), a.seq_kv - k0));
    __syncthreads();  // the previous tile's ks, vs, ss are no longer read
    load_tile<BK, DMAX>(ks, a.k + kv_off + k0 * ldk, ldk, k_rows, a.head_dim, a.vec4);
    load_tile<BK, DMAX>(vs, a.v + kv_off + k0 * ldk, ldk, k_rows, a.head_dim, a.vec4);
    __syncthreads();

    float s[RQ][CK];
    zero(s);
    product_abt(s, qs, kLd, ks, kLd, a.head_dim, ty, tx);
#pragma unroll
    for (int m = 0; m < RQ; ++m)
#pragma unroll
      for (int n = 0; n < CK; ++n) ss[(ty + 16 * m) * kLs + tx + 16 * n] = a.scale * s[m][n];
    __syncthreads();

    // Online softmax, one warp per row: rescale the running sum to the new max, add this
    // tile's exponentials, keep the dropped-out probabilities for the P V product.
#pragma unroll
    for (int t = 0; t < kRowsPerWarp; ++t) {
      const int r = warp + kWarps * t;
      const int64_t i = q0 + r;
      const bool row_ok = r < q_rows;
      float* srow = ss + r * kLs;
      float tile_max = kNegInf;
      for (int c = lane; c < BK; c += 32)
        if (row_ok && visible(a, i, k0 + c)) tile_max = fmaxf(tile_max, srow[c]);
      tile_max = warp_max(tile_max);
      const float new_max = fmaxf(row_max[t], tile_max);
      // No key seen yet (a padding row): nothing to rescale and nothing to add.
      const float rescale = new_max == kNegInf ? 1.0f : expf(row_max[t] - new_max);
      const uint64_t base = a.dropout_p > 0 && row_ok ? mask_row_base(a, i) : 0;
      float tile_sum = 0.0f;
      for (int c = lane; c < BK; c += 32) {
        float p = 0.0f;
        if (row_ok && visible(a, i, k0 + c)) {
          p = expf(srow[c] - new_max);
          tile_sum += p;
          if (a.dropout_p > 0) p = kept(a, stream, base, k0 + c) ? p * a.keep_scale : 0.0f;
        }
        srow[c] = p;
      }
      tile_sum = warp_sum(tile_sum);
      row_total[t] = row_total[t] * rescale + tile_sum;
      row_max[t] = new_max;
      if (lane == 0) row_rescale[r] = rescale;
    }
    __syncthreads();

#pragma unroll
    for (int m = 0; m < RQ; ++m) {
      const float f = row_rescale[ty + 16 * m];
#pragma unroll
      for (int n = 0; n < CD; ++n) o[m][n] *= f;
    }
    product_ab<RQ, CD, BK>(o, ss, kLs, vs, kLd, ty, tx);
  }

  // lse = max + log(sum); the output is divided by the sum once, at the end.
#pragma unroll
  for (int t = 0; t < kRowsPerWarp; ++t) {
    const int r = warp + kWarps * t;
    if (lane == 0) {
      row_sum[r] = row_total[t];
      if (r < q_rows) a.lse_w[((q0 + r) * a.batch + b) * a.heads + h] = row_max[t] + logf(row_total[t]);
    }
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < RQ; ++m) {
    const int r = ty + 16 * m;
    if (r >= q_rows) continue;
    const float total = row_sum[r];
    float* dst = a.out_w + q_off + r * ldq;
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) dst[c] = o[m][n] / total;
    }
  }
}

// D_i = dout_i . out_i per (token, head) row, in double as on the CPU; one warp per row.
__global__ void attention_row_dot_kernel(float* di, const float* dout, const float* out, int64_t rows,
                                         int head_dim) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float* g = dout + r * head_dim;
  const float* o = out + r * head_dim;
  double acc = 0;
  for (int c = lane; c < head_dim; c += 32) acc += static_cast<double>(g[c]) * o[c];
  acc = warp_sum(acc);
  if (lane == 0) di[r] = static_cast<float>(acc);
}

// The probability and score gradient of element (i, j) from its score s (unscaled q.k) and
// dp = dout_i . v_j, as the CPU forms them: P = exp(scale s - lse_i), dS = P (dP' - D_i)
// with dP' the dropped-out dp; *dropped = the dropped-out P (what dv needs).
__device__ __forceinline__ float score_grad(const Args& a, float s, float dp, float lse, float di, bool keep,
                                            float* dropped) {
  const float p = expf(a.scale * s - lse);
  if (a.dropout_p > 0) {
    *dropped = keep ? p * a.keep_scale : 0.0f;
    return p * ((keep ? dp * a.keep_scale : 0.0f) - di);
  }
  *dropped = p;
  return p * (dp - di);
}

// Loads lse and D_i of query rows [q0, q0 + q_rows) of (b, h) into shared (zero past the end).
template <int BQ>
__device__ void load_row_stats(float* lse_s, float* di_s, const Args& a, int64_t q0, int q_rows, int64_t b,
                               int64_t h) {
  for (int r = threadIdx.x; r < BQ; r += kThreads) {
    const int64_t row = ((q0 + r) * a.batch + b) * a.heads + h;
    lse_s[r] = r < q_rows ? a.lse[row] : 0.0f;
    di_s[r] = r < q_rows ? a.di[row] : 0.0f;
  }
}

// Backward, dq: block = (query tile, batch b, head h), over the key tiles its rows see.
template <int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(Args a) {
  using T = Tiles<DMAX, BQ, BK>;
  constexpr int kLd = T::kLd, kLs = T::kLs;
  constexpr int RQ = BQ / 16, CK = BK / 16, CD = DMAX / 16;
  extern __shared__ float smem[];
  float* qs = smem;             // [BQ][kLd]
  float* gs = qs + BQ * kLd;    // [BQ][kLd] dout
  float* ks = gs + BQ * kLd;    // [BK][kLd]
  float* vs = ks + BK * kLd;    // [BK][kLd]
  float* dss = vs + BK * kLd;   // [BQ][kLs] score gradients
  float* lse_s = dss + BQ * kLs;  // [BQ]
  float* di_s = lse_s + BQ;       // [BQ]

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t pairs = a.batch * a.heads, q_tiles = (a.seq_q + BQ - 1) / BQ;
  const int64_t bh = blockIdx.x % pairs, qt = q_tiles - 1 - blockIdx.x / pairs;
  const int64_t b = bh / a.heads, h = bh % a.heads, g = h / (a.heads / a.groups);
  const int64_t q0 = qt * BQ;
  const int q_rows = static_cast<int>(min(static_cast<int64_t>(BQ), a.seq_q - q0));
  const int64_t ldq = a.batch * a.heads * a.head_dim, ldk = a.batch * a.groups * a.head_dim;
  const int64_t q_off = q0 * ldq + (b * a.heads + h) * a.head_dim, kv_off = (b * a.groups + g) * a.head_dim;
  const int64_t kv_end = a.causal ? min(a.seq_kv, q0 + q_rows + (a.seq_kv - a.seq_q)) : a.seq_kv;
  const uint64_t stream =
      a.dropout_p > 0 ? attention_dropout_stream_device(a.dropout_key, a.head_offset + h, b) : 0;

  load_tile<BQ, DMAX>(qs, a.q + q_off, ldq, q_rows, a.head_dim, a.vec4);
  load_tile<BQ, DMAX>(gs, a.dout + q_off, ldq, q_rows, a.head_dim, a.vec4);
  load_row_stats<BQ>(lse_s, di_s, a, q0, q_rows, b, h);
  uint64_t base[RQ];
#pragma unroll
  for (int m = 0; m < RQ; ++m)
    base[m] = a.dropout_p > 0 && ty + 16 * m < q_rows ? mask_row_base(a, q0 + ty + 16 * m) : 0;
  float dq[RQ][CD];
  zero(dq);

  for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {
    const int k_rows = static_cast<int>(min(static_cast<int64_t>(BK), a.seq_kv - k0));
    __syncthreads();  // the previous tile's ks, vs, dss are no longer read
    load_tile<BK, DMAX>(ks, a.k + kv_off + k0 * ldk, ldk, k_rows, a.head_dim, a.vec4);
    load_tile<BK, DMAX>(vs, a.v + kv_off + k0 * ldk, ldk, k_rows, a.head_dim, a.vec4);
    __syncthreads();

    float s[RQ][CK], dp[RQ][CK];
    zero(s);
    zero(dp);
    product_abt(s, qs, kLd, ks, kLd, a.head_dim, ty, tx);
    product_abt(dp, gs, kLd, vs, kLd, a.head_dim, ty, tx);
#pragma unroll
    for (int m = 0; m < RQ; ++m) {
      const int r = ty + 16 * m;
#pragma unroll
      for (int n = 0; n < CK; ++n) {
        const int c = tx + 16 * n;
        float ds = 0.0f, unused;
        if (r < q_rows && visible(a, q0 + r, k0 + c)) {
          const bool keep = a.dropout_p > 0 && kept(a, stream, base[m], k0 + c);
          ds = score_grad(a, s[m][n], dp[m][n], lse_s[r], di_s[r], keep, &unused);
        }
        dss[r * kLs + c] = ds;
      }
    }
    __syncthreads();
    product_ab<RQ, CD, BK>(dq, dss, kLs, ks, kLd, ty, tx);
  }

#pragma unroll
  for (int m = 0; m < RQ; ++m) {
    const int r = ty + 16 * m;
    if (r >= q_rows) continue;
    float* dst = a.dq + q_off + r * ldq;
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) dst[c] = a.scale * dq[m][n];
    }
  }
}

// Backward, dk and dv: block = (key tile, batch b, key head g). It walks the group's query
// heads in order and, for each, the query tiles that see its keys; the sums over heads are
// therefore in a fixed order and need no atomics.
template <int DMAX, int BQ, int BK>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(Args a) {
  using T = Tiles<DMAX, BQ, BK>;
  constexpr int kLd = T::kLd, kLs = T::kLs;
  constexpr int RQ = BQ / 16, CK = BK / 16, RK = BK / 16, CD = DMAX / 16;
  extern __shared__ float smem[];
  float* ks = smem;             // [BK][kLd]
  float* vs = ks + BK * kLd;    // [BK][kLd]
  float* qs = vs + BK * kLd;    // [BQ][kLd]
  float* gs = qs + BQ * kLd;    // [BQ][kLd] dout
  float* ps = gs + BQ * kLd;    // [BQ][kLs] dropped-out probabilities
  float* dss = ps + BQ * kLs;   // [BQ][kLs] score gradients
  float* lse_s = dss + BQ * kLs;  // [BQ]
  float* di_s = lse_s + BQ;       // [BQ]

  const int tid = threadIdx.x, ty = tid / 16, tx = tid % 16;
  const int64_t kv_pairs = a.batch * a.groups, hpg = a.heads / a.groups;
  const int64_t bg = blockIdx.x % kv_pairs, kt = blockIdx.x / kv_pairs;
  const int64_t b = bg / a.groups, g = bg % a.groups;
  const int64_t k0 = kt * BK;
  const int k_rows = static_cast<int>(min(static_cast<int64_t>(BK), a.seq_kv - k0));
  const int64_t ldq = a.batch * a.heads * a.head_dim, ldk = a.batch * a.groups * a.head_dim;
  const int64_t kv_off = k0 * ldk + (b * a.groups + g) * a.head_dim;
  // Queries before q_first see none of these keys (causal): i >= j - (seq_kv - seq_q).
  const int64_t q_first = a.causal ? max(int64_t{0}, k0 - (a.seq_kv - a.seq_q)) : 0;

  load_tile<BK, DMAX>(ks, a.k + kv_off, ldk, k_rows, a.head_dim, a.vec4);
  load_tile<BK, DMAX>(vs, a.v + kv_off, ldk, k_rows, a.head_dim, a.vec4);
  float dk[RK][CD], dv[RK][CD];
  zero(dk);
  zero(dv);

  for (int64_t hh = 0; hh < hpg; ++hh) {
    const int64_t h = g * hpg + hh;
    const uint64_t stream =
        a.dropout_p > 0 ? attention_dropout_stream_device(a.dropout_key, a.head_offset + h, b) : 0;
    for (int64_t q0 = q_first / BQ * BQ; q0 < a.seq_q; q0 += BQ) {
      const int q_rows = static_cast<int>(min(static_cast<int64_t>(BQ), a.seq_q - q0));
      const int64_t q_off = q0 * ldq + (b * a.heads + h) * a.head_dim;
      __syncthreads();  // the previous tile's qs, gs, ps, dss are no longer read
      load_tile<BQ, DMAX>(qs, a.q + q_off, ldq, q_rows, a.head_dim, a.vec4);
      load_tile<BQ, DMAX>(gs, a.dout + q_off, ldq, q_rows, a.head_dim, a.vec4);
      load_row_stats<BQ>(lse_s, di_s, a, q0, q_rows, b, h);
      __syncthreads();

      // Scores and dP with queries as rows, as in the dq pass.
      float s[RQ][CK], dp[RQ][CK];
      zero(s);
      zero(dp);
      product_abt(s, qs, kLd, ks, kLd, a.head_dim, ty, tx);
      product_abt(dp, gs, kLd, vs, kLd, a.head_dim, ty, tx);
#pragma unroll
      for (int m = 0; m < RQ; ++m) {
        const int r = ty + 16 * m;
        const bool row_ok = r < q_rows;
        const uint64_t base = a.dropout_p > 0 && row_ok ? mask_row_base(a, q0 + r) : 0;
#pragma unroll
        for (int n = 0; n < CK; ++n) {
          const int c = tx + 16 * n;
          float ds = 0.0f, p = 0.0f;
          if (row_ok && visible(a, q0 + r, k0 + c)) {
            const bool keep = a.dropout_p > 0 && kept(a, stream, base, k0 + c);
            ds = score_grad(a, s[m][n], dp[m][n], lse_s[r], di_s[r], keep, &p);
          }
          ps[r * kLs + c] = p;
          dss[r * kLs + c] = ds;
        }
      }
      __syncthreads();
      // dv += P'^T dout, dk += dS^T q (rows: keys).
      product_atb<RK, CD, BQ>(dv, ps, kLs, gs, kLd, ty, tx);
      product_atb<RK, CD, BQ>(dk, dss, kLs, qs, kLd, ty, tx);
    }
  }

#pragma unroll
  for (int m = 0; m < RK; ++m) {
    const int r = ty + 16 * m;
    if (r >= k_rows) continue;
    float* dk_row = a.dk + kv_off + r * ldk;
    float* dv_row = a.dv + kv_off + r * ldk;
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) {
        dk_row[c] = a.scale * dk[m][n];
        dv_row[c] = dv[m][n];
      }
    }
  }
}

// Merge of (part_out, part_lse) into (out, lse), one warp per (token, head) row, in double
// exactly as the CPU forms it.
__global__ void attention_merge_kernel(float* out, float* lse, const float* part_out, const float* part_lse,
                                       int64_t rows, int64_t head_dim) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float a = lse[r], b = part_lse[r];
  __syncwarp();  // every lane has read lse[r] before lane 0 overwrites it
  if (b == kNegInf) return;  // the part saw no keys
  float* o = out + r * head_dim;
  const float* x = part_out + r * head_dim;
  if (a == kNegInf) {  // no keys yet: out may hold anything
    for (int64_t c = lane; c < head_dim; c += 32) o[c] = x[c];
    if (lane == 0) lse[r] = b;
    return;
  }
  // log(e^a + e^b) = max + log1p(e^-|a-b|); (a < b ? b : a) is std::max, NaN included.
  const double da = a, db = b;
  const double merged = (da < db ? db : da) + log1p(exp(-fabs(da - db)));
  const double wa = exp(da - merged), wb = exp(db - merged);
  for (int64_t c = lane; c < head_dim; c += 32) o[c] = static_cast<float>(wa * o[c] + wb * x[c]);
  if (lane == 0) lse[r] = static_cast<float>(merged);
}

// --- host side: checks (the CPU backend's rules and messages) and launches -----------------





// a + b for non-negative a, b, saturating at INT64_MAX.
int64_t add_saturated(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }

// Largest of p.at(i) over i in [0, n), n > 0, saturating at INT64_MAX.
int64_t last_position(const SeqPositions& p, int64_t n) {
  if (p.split >= n) return add_saturated(p.first, n - 1);
  const int64_t second_last = add_saturated(p.second, n - 1 - p.split);
  return p.split > 0 ? std::max(add_saturated(p.first, p.split - 1), second_last) : second_last;
}

int64_t resolved_mask_seq(const AttentionDims& d) { return d.mask_seq > 0 ? d.mask_seq : d.seq_kv; }

void check_positions(const char* op, const char* name, const SeqPositions& p) {
  MPT_CHECK(p.first >= 0 && p.split >= 0 && p.second >= 0, Status::kInvalidArgument, op, ": ", name,
            " must be non-negative: first ", p.first, ", split ", p.split, ", second ", p.second);
}

void check_dims(const char* op, const AttentionDims& d) {
  MPT_CHECK(d.seq_q > 0 && d.seq_kv > 0 && d.batch > 0 && d.heads > 0 && d.groups > 0 && d.head_dim > 0,
            Status::kInvalidArgument, op, ": dims must be positive: seq_q ", d.seq_q, ", seq_kv ", d.seq_kv,
            ", batch ", d.batch, ", heads ", d.heads, ", groups ", d.groups, ", head_dim ", d.head_dim);
  MPT_CHECK(d.heads % d.groups == 0, Status::kInvalidArgument, op, ": heads ", d.heads,
            " must be a multiple of groups ", d.groups);
  MPT_CHECK(!d.causal || d.seq_q <= d.seq_kv, Status::kInvalidArgument, op,
            ": causal attention needs seq_q <= seq_kv (queries are the last keys' positions), got seq_q ", d.seq_q,
            " and seq_kv ", d.seq_kv);
  MPT_CHECK(d.dropout_p >= 0 && d.dropout_p < 1, Status::kInvalidArgument, op, ": dropout_p ", d.dropout_p,
            " must be in [0, 1)");
  check_positions(op, "q_pos", d.q_pos);
  check_positions(op, "kv_pos", d.kv_pos);
  MPT_CHECK(d.mask_seq >= 0, Status::kInvalidArgument, op, ": mask_seq ", d.mask_seq,
            " must be non-negative (0: seq_kv)");
  if (d.dropout_p > 0) {
    // Distinct (i, j) must key distinct mask elements, and the index must not overflow.
    const int64_t ms = resolved_mask_seq(d), kv_last = last_position(d.kv_pos, d.seq_kv),
                  q_last = last_position(d.q_pos, d.seq_q);
    MPT_CHECK(kv_last < ms, Status::kInvalidArgument, op, ": kv_pos reaches position ", kv_last,
              ", which must be below mask_seq ", ms);
    MPT_CHECK(q_last < INT64_MAX / ms, Status::kInvalidArgument, op, ": q_pos reaches position ", q_last,
              ": q_pos * mask_seq (", ms, ") overflows");
  }
  MPT_CHECK(std::isfinite(d.softmax_scale) && d.softmax_scale > 0, Status::kInvalidArgument, op,
            ": softmax_scale ", d.softmax_scale, " must be positive (usually 1/sqrt(head_dim))");
  MPT_CHECK(d.head_dim <= kMaxHeadDim, Status::kNotSupported, op, ": head_dim ", d.head_dim,
            " is above the CUDA backend's limit of ", kMaxHeadDim);
}

// names: the three argument names, e.g. {"q", "k", "v"} or {"dq", "dk", "dv"}.
void check_qkv(const char* op, const AttentionDims& d, const Tensor& q, const Tensor& k, const Tensor& v,
               const char* const (&names)[3]) {
  check_f32(op, names[0], q);
  check_f32(op, names[1], k);
  check_f32(op, names[2], v);
  check_numel(op, names[0], q, d.seq_q * d.batch * d.heads * d.head_dim);
  check_numel(op, names[1], k, d.seq_kv * d.batch * d.groups * d.head_dim);
  check_numel(op, names[2], v, d.seq_kv * d.batch * d.groups * d.head_dim);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Args make_args(const AttentionDims& d, std::initializer_list<const Tensor*> tensors) {
  Args a{};
  a.seq_q = d.seq_q;
  a.seq_kv = d.seq_kv;
  a.batch = d.batch;
  a.heads = d.heads;
  a.groups = d.groups;
  a.head_dim = static_cast<int>(d.head_dim);
  a.scale = d.softmax_scale;
  a.causal = d.causal;
  a.vec4 = d.head_dim % 4 == 0;
  for (const Tensor* t : tensors) a.vec4 = a.vec4 && aligned16(t->data);
  a.dropout_p = d.dropout_p;
  a.keep_scale = 1.0f / (1.0f - d.dropout_p);
  a.dropout_key = d.dropout_key;
  a.head_offset = d.head_offset;
  a.q_pos = {d.q_pos.first, d.q_pos.split, d.q_pos.second};
  a.kv_pos = {d.kv_pos.first, d.kv_pos.split, d.kv_pos.second};
  a.mask_seq = resolved_mask_seq(d);
  return a;
}

unsigned grid_size(const char* op, int64_t blocks) {
  MPT_CHECK(blocks <= INT_MAX, Status::kNotSupported, op, ": ", blocks,
            " thread blocks exceed the CUDA grid limit (shorter sequences or fewer heads per call)");
  return static_cast<unsigned>(blocks);
}

template <typename Kernel>
void launch(const char* op, Kernel kernel, int64_t blocks, size_t smem, cudaStream_t stream, const Args& a) {
  MPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid_size(op, blocks), kThreads, smem, stream>>>(a);
  MPT_CUDA_LAUNCH(op);
}

// One instantiation per head_dim class; tiles shrink as head_dim grows to bound shared memory.
template <int DMAX, int BQ, int BK>
void launch_fwd(const Args& a, cudaStream_t stream) {
  const int64_t tiles = (a.seq_q + BQ - 1) / BQ;
  launch("attention_fwd", attention_fwd_kernel<DMAX, BQ, BK>, tiles * a.batch * a.heads,
         Tiles<DMAX, BQ, BK>::fwd_bytes(), stream, a);
}

template <int DMAX, int BQ, int BK>
void launch_dq(const Args& a, cudaStream_t stream) {
  const int64_t tiles = (a.seq_q + BQ - 1) / BQ;
  launch("attention_bwd", attention_bwd_dq_kernel<DMAX, BQ, BK>, tiles * a.batch * a.heads,
         Tiles<DMAX, BQ, BK>::dq_bytes(), stream, a);
}

template <int DMAX, int BQ, int BK>
void launch_dkdv(const Args& a, cudaStream_t stream) {
  const int64_t tiles = (a.seq_kv + BK - 1) / BK;
  launch("attention_bwd", attention_bwd_dkdv_kernel<DMAX, BQ, BK>, tiles * a.batch * a.groups,
         Tiles<DMAX, BQ, BK>::dkdv_bytes(), stream, a);
}

}  // namespace

void CudaOps::attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) {
  const char* op = "attention_fwd";
  check_dims(op, d);
  check_qkv(op, d, q, k, v, {"q", "k", "v"});
  check_f32(op, "out", out);
  check_numel(op, "out", out, q.numel());
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.seq_q * d.batch * d.heads);

  Args a = make_args(d, {&q, &k, &v, &out});
  a.q = q.f();
  a.k = k.f();
  a.v = v.f();
  a.out_w = out.f();
  a.lse_w = lse.f();
  if (d.head_dim <= 32)
    launch_fwd<32, 64, 64>(a, stream());
  else if (d.head_dim <= 64)
    launch_fwd<64, 64, 64>(a, stream());
  else if (d.head_dim <= 128)
    launch_fwd<128, 64, 32>(a, stream());
  else
    launch_fwd<256, 32, 32>(a, stream());
}

void CudaOps::attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                            Tensor lse, const AttentionDims& d) {
  const char* op = "attention_bwd";
  check_dims(op, d);
  check_qkv(op, d, q, k, v, {"q", "k", "v"});
  check_f32(op, "out", out);
  check_numel(op, "out", out, q.numel());
  check_f32(op, "dout", dout);
  check_numel(op, "dout", dout, q.numel());
  check_f32(op, "lse", lse);
  check_numel(op, "lse", lse, d.seq_q * d.batch * d.heads);
  check_qkv(op, d, dq, dk, dv, {"dq", "dk", "dv"});

  // D_i = dout_i . out_i per (token, head) row, laid out like lse.
  const int64_t rows = d.seq_q * d.batch * d.heads;
  auto* di = static_cast<float*>(scratch(static_cast<size_t>(rows) * sizeof(float)));
  attention_row_dot_kernel<<<grid_size(op, (rows + kWarps - 1) / kWarps), kThreads, 0, stream()>>>(
      di, dout.f(), out.f(), rows, static_cast<int>(d.head_dim));
  MPT_CUDA_LAUNCH("attention_row_dot_kernel");

  Args a = make_args(d, {&q, &k, &v, &dout, &dq, &dk, &dv});
  a.q = q.f();
  a.k = k.f();
  a.v = v.f();
  a.dout = dout.f();
  a.lse = lse.f();
  a.di = di;
  a.dq = dq.f();
  a.dk = dk.f();
  a.dv = dv.f();
  if (d.head_dim <= 32) {
    launch_dq<32, 64, 64>(a, stream());
    launch_dkdv<32, 64, 64>(a, stream());
  } else if (d.head_dim <= 64) {
    launch_dq<64, 64, 64>(a, stream());
    launch_dkdv<64, 64, 64>(a, stream());
  } else if (d.head_dim <= 128) {
    launch_dq<128, 64, 32>(a, stream());
    launch_dkdv<128, 32, 64>(a, stream());
  } else {
    launch_dq<256, 32, 32>(a, stream());
    launch_dkdv<256, 16, 32>(a, stream());
  }
}

void CudaOps::attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads,
                              int64_t head_dim) {
  const char* op = "attention_merge";
  MPT_CHECK(heads > 0 && head_dim > 0, Status::kInvalidArgument, op, ": heads ", heads, " and head_dim ", head_dim,
            " must be positive");
  check_f32(op, "out", out);
  check_f32(op, "lse", lse);
  check_f32(op, "part_out", part_out);
  check_f32(op, "part_lse", part_lse);
  MPT_CHECK(lse.numel() % heads == 0, Status::kInvalidArgument, op, ": lse ", describe(lse),
            " must hold [tokens, heads ", heads, "] elements");
  const int64_t rows = lse.numel();  // one per (token, head)
  check_numel(op, "out", out, rows * head_dim);
  check_numel(op, "part_lse", part_lse, rows);
  check_numel(op, "part_out", part_out, rows * head_dim);
  if (rows == 0) return;
  attention_merge_kernel<<<grid_size(op, (rows + kWarps - 1) / kWarps), kThreads, 0, stream()>>>(
      out.f(), lse.f(), part_out.f(), part_lse.f(), rows, head_dim);
  MPT_CUDA_LAUNCH("attention_merge_kernel");
}

}  // namespace mpt::cuda
