// The attention kernels of cuda_attention.cu (see its header comment for the scheme):
// forward with an online softmax, the row dots of the backward, dq per query tile, dk/dv
// per key tile, and the merge. Included by cuda_attention.cu only. q, k, v, out and the
// gradients are f32 or bf16 each (elements.cuh): tiles are widened into fp32 shared memory,
// every product and sum is fp32, and each output is rounded once; lse is f32.
#pragma once

#include <cstdint>
#include <limits>

#include "core/rng_device.h"
#include "cuda/cuda_ops.h"
#include "cuda/elements.cuh"

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
  In q, k, v;
  In dout;                             // backward inputs, with lse and di
  const float *lse, *di;               // (di: dout . out per query row)
  Out out_w;                           // forward outputs, with lse_w
  float* lse_w;
  Out dq, dk, dv;                      // backward outputs
  int64_t seq_q, seq_kv, batch, heads, groups;
  int head_dim;
  float scale;
  bool causal;
  bool vec4;  // head_dim % 4 == 0 and every tensor aligned to 4 elements: 4-element tile loads
  float dropout_p, keep_scale;
  uint64_t dropout_key;
  const uint64_t* seed;  // the backend's dropout seed, XORed into dropout_key when a kernel runs
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

// Four elements from element i of src (4-element aligned), widened.
__device__ __forceinline__ float4 load4(In src, int64_t i) {
  if (!src.bf16) return *reinterpret_cast<const float4*>(static_cast<const float*>(src.data) + i);
  const uint2 packed = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(src.data) + i);
  return make_float4(bf16_to_f32(static_cast<uint16_t>(packed.x & 0xffffu)),
                     bf16_to_f32(static_cast<uint16_t>(packed.x >> 16)),
                     bf16_to_f32(static_cast<uint16_t>(packed.y & 0xffffu)),
                     bf16_to_f32(static_cast<uint16_t>(packed.y >> 16)));
}

// Rows [0, rows) of a slice with row stride ld into shared [ROWS][DMAX + 1]; rows past
// `rows` and columns past head_dim are zero (zero times a masked probability stays zero).
template <int ROWS, int DMAX>
__device__ void load_tile(float* dst, In src, int64_t ld, int rows, int head_dim, bool vec4) {
  constexpr int kLd = DMAX + 1;
  if (vec4) {
    constexpr int kQuads = DMAX / 4;
    for (int idx = threadIdx.x; idx < ROWS * kQuads; idx += kThreads) {
      const int r = idx / kQuads, c = (idx % kQuads) * 4;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < rows && c < head_dim) x = load4(src, r * ld + c);
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

// acc[m][n] += sum_k A[(ty + 16m) * a_m + k * a_k] * B[(tx + 16n) * b_n + k * b_k]: a
// register tile of a product of two matrices in shared memory, read through strides so one
// loop serves the three forms below (after inlining the unit strides fold away).
template <int M, int N>
__device__ __forceinline__ void product(float (&acc)[M][N], const float* A, int a_m, int a_k, const float* B, int b_n,
                                        int b_k, int K, int ty, int tx) {
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float x[M], y[N];
#pragma unroll
    for (int m = 0; m < M; ++m) x[m] = A[(ty + 16 * m) * a_m + k * a_k];
#pragma unroll
    for (int n = 0; n < N; ++n) y[n] = B[(tx + 16 * n) * b_n + k * b_k];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int n = 0; n < N; ++n) acc[m][n] = fmaf(x[m], y[n], acc[m][n]);
  }
}

// acc[m][n] += sum_k A[ty + 16m][k] * B[tx + 16n][k]   (A B^T; A, B row-major in shared)
template <int M, int N>
__device__ __forceinline__ void product_abt(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                            int K, int ty, int tx) {
  product(acc, A, lda, 1, B, ldb, 1, K, ty, tx);
}

// acc[m][n] += sum_k A[ty + 16m][k] * B[k][tx + 16n]   (A B)
template <int M, int N, int K>
__device__ __forceinline__ void product_ab(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                           int ty, int tx) {
  product(acc, A, lda, 1, B, 1, ldb, K, ty, tx);
}

// acc[m][n] += sum_k A[k][ty + 16m] * B[k][tx + 16n]   (A^T B)
template <int M, int N, int K>
__device__ __forceinline__ void product_atb(float (&acc)[M][N], const float* A, int lda, const float* B, int ldb,
                                            int ty, int tx) {
  product(acc, A, 1, lda, B, 1, ldb, K, ty, tx);
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
// The query tile a block of the forward and dQ kernels owns: block = (query tile, batch b,
// head h), tiles taken last first so the longest causal rows start first; its rows, offsets,
// the keys it sees and its dropout stream.
struct QueryTile {
  int64_t b, h, q0, ldq, ldk, q_off, kv_off, kv_end;
  int q_rows;
  uint64_t stream;
};

template <int BQ>
__device__ __forceinline__ QueryTile query_tile(const Args& a) {
  QueryTile t;
  const int64_t pairs = a.batch * a.heads, q_tiles = (a.seq_q + BQ - 1) / BQ;
  const int64_t bh = blockIdx.x % pairs;
  t.b = bh / a.heads;
  t.h = bh % a.heads;
  const int64_t g = t.h / (a.heads / a.groups);
  t.q0 = (q_tiles - 1 - blockIdx.x / pairs) * BQ;
  t.q_rows = static_cast<int>(min(static_cast<int64_t>(BQ), a.seq_q - t.q0));
  t.ldq = a.batch * a.heads * a.head_dim;
  t.ldk = a.batch * a.groups * a.head_dim;
  t.q_off = t.q0 * t.ldq + (t.b * a.heads + t.h) * a.head_dim;
  t.kv_off = (t.b * a.groups + g) * a.head_dim;
  t.kv_end = a.causal ? min(a.seq_kv, t.q0 + t.q_rows + (a.seq_kv - a.seq_q)) : a.seq_kv;
  t.stream = a.dropout_p > 0 ? attention_dropout_stream_device(a.dropout_key ^ *a.seed, a.head_offset + t.h, t.b) : 0;
  return t;
}

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
  const QueryTile qt = query_tile<BQ>(a);
  const int64_t b = qt.b, h = qt.h, q0 = qt.q0, ldq = qt.ldq, ldk = qt.ldk, q_off = qt.q_off, kv_off = qt.kv_off;
  const int64_t kv_end = qt.kv_end;
  const int q_rows = qt.q_rows;
  const uint64_t stream = qt.stream;

  load_tile<BQ, DMAX>(qs, a.q.at(q_off), ldq, q_rows, a.head_dim, a.vec4);
  // Running max and sum of the rows this warp owns (rows warp + kWarps t), in every lane.
  float row_max[kRowsPerWarp], row_total[kRowsPerWarp];
#pragma unroll
  for (int t = 0; t < kRowsPerWarp; ++t) row_max[t] = kNegInf, row_total[t] = 0.0f;
  float o[RQ][CD];
  zero(o);

  for (int64_t k0 = 0; k0 < kv_end; k0 += BK) {
    const int k_rows = static_cast<int>(min(static_cast<int64_t>(BK), a.seq_kv - k0));
    __syncthreads();  // the previous tile's ks, vs, ss are no longer read
    load_tile<BK, DMAX>(ks, a.k.at(kv_off + k0 * ldk), ldk, k_rows, a.head_dim, a.vec4);
    load_tile<BK, DMAX>(vs, a.v.at(kv_off + k0 * ldk), ldk, k_rows, a.head_dim, a.vec4);
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
    const Out dst = a.out_w.at(q_off + r * ldq);
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) dst.set(c, o[m][n] / total);
    }
  }
}

// D_i = dout_i . out_i per (token, head) row, in double as on the CPU; one warp per row.
__global__ void attention_row_dot_kernel(float* di, In dout, In out, int64_t rows, int head_dim) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const In g = dout.at(r * head_dim);
  const In o = out.at(r * head_dim);
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
  const QueryTile qt = query_tile<BQ>(a);
  const int64_t b = qt.b, h = qt.h, q0 = qt.q0, ldq = qt.ldq, ldk = qt.ldk, q_off = qt.q_off, kv_off = qt.kv_off;
  const int64_t kv_end = qt.kv_end;
  const int q_rows = qt.q_rows;
  const uint64_t stream = qt.stream;

  load_tile<BQ, DMAX>(qs, a.q.at(q_off), ldq, q_rows, a.head_dim, a.vec4);
  load_tile<BQ, DMAX>(gs, a.dout.at(q_off), ldq, q_rows, a.head_dim, a.vec4);
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
    load_tile<BK, DMAX>(ks, a.k.at(kv_off + k0 * ldk), ldk, k_rows, a.head_dim, a.vec4);
    load_tile<BK, DMAX>(vs, a.v.at(kv_off + k0 * ldk), ldk, k_rows, a.head_dim, a.vec4);
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
    const Out dst = a.dq.at(q_off + r * ldq);
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) dst.set(c, a.scale * dq[m][n]);
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

  load_tile<BK, DMAX>(ks, a.k.at(kv_off), ldk, k_rows, a.head_dim, a.vec4);
  load_tile<BK, DMAX>(vs, a.v.at(kv_off), ldk, k_rows, a.head_dim, a.vec4);
  float dk[RK][CD], dv[RK][CD];
  zero(dk);
  zero(dv);
  const uint64_t key = a.dropout_p > 0 ? a.dropout_key ^ *a.seed : 0;

  for (int64_t hh = 0; hh < hpg; ++hh) {
    const int64_t h = g * hpg + hh;
    const uint64_t stream = a.dropout_p > 0 ? attention_dropout_stream_device(key, a.head_offset + h, b) : 0;
    for (int64_t q0 = q_first / BQ * BQ; q0 < a.seq_q; q0 += BQ) {
      const int q_rows = static_cast<int>(min(static_cast<int64_t>(BQ), a.seq_q - q0));
      const int64_t q_off = q0 * ldq + (b * a.heads + h) * a.head_dim;
      __syncthreads();  // the previous tile's qs, gs, ps, dss are no longer read
      load_tile<BQ, DMAX>(qs, a.q.at(q_off), ldq, q_rows, a.head_dim, a.vec4);
      load_tile<BQ, DMAX>(gs, a.dout.at(q_off), ldq, q_rows, a.head_dim, a.vec4);
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
    const Out dk_row = a.dk.at(kv_off + r * ldk);
    const Out dv_row = a.dv.at(kv_off + r * ldk);
#pragma unroll
    for (int n = 0; n < CD; ++n) {
      const int c = tx + 16 * n;
      if (c < a.head_dim) {
        dk_row.set(c, a.scale * dk[m][n]);
        dv_row.set(c, dv[m][n]);
      }
    }
  }
}

// Merge of (part_out, part_lse) into (out, lse), one warp per (token, head) row, in double
// exactly as the CPU forms it.
__global__ void attention_merge_kernel(Out out, float* lse, In part_out, const float* part_lse, int64_t rows,
                                       int64_t head_dim) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;
  const float a = lse[r], b = part_lse[r];
  __syncwarp();  // every lane has read lse[r] before lane 0 overwrites it
  if (b == kNegInf) return;  // the part saw no keys
  const Out o = out.at(r * head_dim);
  const In x = part_out.at(r * head_dim);
  if (a == kNegInf) {  // no keys yet: out may hold anything
    for (int64_t c = lane; c < head_dim; c += 32) o.set(c, x[c]);
    if (lane == 0) lse[r] = b;
    return;
  }
  // log(e^a + e^b) = max + log1p(e^-|a-b|); (a < b ? b : a) is std::max, NaN included.
  const double da = a, db = b;
  const double merged = (da < db ? db : da) + log1p(exp(-fabs(da - db)));
  const double wa = exp(da - merged), wb = exp(db - merged);
  for (int64_t c = lane; c < head_dim; c += 32) o.set(c, static_cast<float>(wa * o[c] + wb * x[c]));
  if (lane == 0) lse[r] = static_cast<float>(merged);
}

}  // namespace
}  // namespace mpt::cuda
