// Attention on the GPU: flash-style fp32 kernels following src/backend/cpu/attention.cc.
// q, k, v, out and their gradients may be f32 or bf16 each (widened into the fp32 tiles,
// rounded once on store); lse is f32.
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
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <string>

#include "core/error.h"
#include "core/rng_device.h"
#include "cuda/cuda_ops.h"
#include "cuda/attention_kernels.cuh"
#include "cuda/device.h"
#include "cuda/elements.cuh"
#include "cuda/fused_attention.h"
#include "cuda/op_checks.h"

namespace mpt::cuda {

using backend::AttentionDims;
using backend::SeqPositions;

namespace {

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
  check_float(op, names[0], q);
  check_float(op, names[1], k);
  check_float(op, names[2], v);
  check_numel(op, names[0], q, d.seq_q * d.batch * d.heads * d.head_dim);
  check_numel(op, names[1], k, d.seq_kv * d.batch * d.groups * d.head_dim);
  check_numel(op, names[2], v, d.seq_kv * d.batch * d.groups * d.head_dim);
}

// 4-element loads (float4, or four bf16 in 8 bytes) need that alignment.
bool aligned4(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % (4 * dtype_size(t.dtype)) == 0; }

// seed: the backend's dropout seed in device memory (read by the kernels when they run).
Args make_args(const AttentionDims& d, const uint64_t* seed, std::initializer_list<const Tensor*> tensors) {
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
  for (const Tensor* t : tensors) a.vec4 = a.vec4 && aligned4(*t);
  a.dropout_p = d.dropout_p;
  a.keep_scale = 1.0f / (1.0f - d.dropout_p);
  a.dropout_key = d.dropout_key;
  a.seed = seed;
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

// lse between the engine's [seq, batch, heads] and a library's [batch, heads, seq].
__global__ void lse_layout_kernel(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads,
                                  bool to_bhs) {
  const int64_t n = seq * batch * heads;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t h = i % heads, b = (i / heads) % batch, s = i / (heads * batch);  // i in [s, b, h] order
    const int64_t j = (b * heads + h) * seq + s;
    if (to_bhs) dst[j] = src[i];
    else dst[i] = src[j];
  }
}

void lse_layout(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads, void* stream, bool to_bhs) {
  const int64_t n = seq * batch * heads;
  if (n == 0) return;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 16);
  lse_layout_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      dst, src, seq, batch, heads, to_bhs);
  MPT_CUDA_LAUNCH("lse_layout_kernel");
}

// MPT_ATTENTION=cudnn and the library declined: an error naming why.
[[noreturn]] void library_required(const char* op, const std::string& why) {
  fail(Status::kNotSupported, op, ": MPT_ATTENTION=cudnn, but cuDNN cannot serve this call: ", why);
}

}  // namespace

void lse_to_bhs(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads, void* stream) {
  lse_layout(dst, src, seq, batch, heads, stream, true);
}

void lse_from_bhs(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads, void* stream) {
  lse_layout(dst, src, seq, batch, heads, stream, false);
}

AttentionChoice attention_choice_from_env() {
  const char* v = std::getenv("MPT_ATTENTION");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return AttentionChoice::kAuto;
  if (s == "cudnn") return AttentionChoice::kLibrary;
  if (s == "kernel") return AttentionChoice::kKernel;
  fail(Status::kInvalidArgument, "MPT_ATTENTION='", s, "': expected auto, cudnn or kernel");
}

void CudaOps::init_attention() {
  attention_choice_ = attention_choice_from_env();
  if (attention_choice_ == AttentionChoice::kKernel) {
    fused_attention_why_ = "MPT_ATTENTION=kernel";
    return;
  }
  fused_attention_ = make_cudnn_attention(*this, fused_attention_why_);
  MPT_CHECK(fused_attention_ || attention_choice_ != AttentionChoice::kLibrary, Status::kNotSupported,
            "MPT_ATTENTION=cudnn, but cuDNN attention is unavailable: ", fused_attention_why_);
}

std::string CudaOps::attention_summary(const AttentionDims& d, DType dtype) {
  const std::string own = "mptrain's fp32 CUDA-core attention kernel";
  if (!fused_attention_) return str(own, " (", fused_attention_why_, ")");
  if (fused_attention_->serves(d, dtype)) return fused_attention_->describe();
  if (attention_choice_ == AttentionChoice::kLibrary) library_required("attention", fused_attention_->why_not());
  return str(own, " (", fused_attention_->why_not(), ")");
}

namespace {

// The library's call, when it takes it; false: the own kernel runs.
bool library_forward(FusedAttention* lib, AttentionChoice choice, Tensor out, Tensor lse, Tensor q, Tensor k,
                     Tensor v, const AttentionDims& d) {
  if (lib == nullptr) return false;
  if (lib->forward(out, lse, q, k, v, d)) return true;
  if (choice == AttentionChoice::kLibrary) library_required("attention_fwd", lib->why_not());
  return false;
}

bool library_backward(FusedAttention* lib, AttentionChoice choice, Tensor dq, Tensor dk, Tensor dv, Tensor dout,
                      Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, const AttentionDims& d) {
  if (lib == nullptr) return false;
  if (lib->backward(dq, dk, dv, dout, q, k, v, out, lse, d)) return true;
  if (choice == AttentionChoice::kLibrary) library_required("attention_bwd", lib->why_not());
  return false;
}

}  // namespace

void CudaOps::attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) {
  const char* op = "attention_fwd";
  check_dims(op, d);
  check_qkv(op, d, q, k, v, {"q", "k", "v"});
  check_float(op, "out", out, q.numel());
  check_f32(op, "lse", lse, d.seq_q * d.batch * d.heads);
  if (library_forward(fused_attention_.get(), attention_choice_, out, lse, q, k, v, d)) return;

  Args a = make_args(d, dropout_seed_on_device(), {&q, &k, &v, &out});
  a.q = in_view(q);
  a.k = in_view(k);
  a.v = in_view(v);
  a.out_w = out_view(out);
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
  check_float(op, "out", out, q.numel());
  check_float(op, "dout", dout, q.numel());
  check_f32(op, "lse", lse, d.seq_q * d.batch * d.heads);
  check_qkv(op, d, dq, dk, dv, {"dq", "dk", "dv"});
  if (library_backward(fused_attention_.get(), attention_choice_, dq, dk, dv, dout, q, k, v, out, lse, d)) return;

  // D_i = dout_i . out_i per (token, head) row, laid out like lse.
  const int64_t rows = d.seq_q * d.batch * d.heads;
  auto* di = static_cast<float*>(scratch(static_cast<size_t>(rows) * sizeof(float)));
  attention_row_dot_kernel<<<grid_size(op, (rows + kWarps - 1) / kWarps), kThreads, 0, stream()>>>(
      di, in_view(dout), in_view(out), rows, static_cast<int>(d.head_dim));
  MPT_CUDA_LAUNCH("attention_row_dot_kernel");

  Args a = make_args(d, dropout_seed_on_device(), {&q, &k, &v, &dout, &dq, &dk, &dv});
  a.q = in_view(q);
  a.k = in_view(k);
  a.v = in_view(v);
  a.dout = in_view(dout);
  a.lse = lse.f();
  a.di = di;
  a.dq = out_view(dq);
  a.dk = out_view(dk);
  a.dv = out_view(dv);
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
  check_float(op, "out", out);
  check_f32(op, "lse", lse);
  check_float(op, "part_out", part_out);
  check_f32(op, "part_lse", part_lse);
  MPT_CHECK(lse.numel() % heads == 0, Status::kInvalidArgument, op, ": lse ", describe(lse),
            " must hold [tokens, heads ", heads, "] elements");
  const int64_t rows = lse.numel();  // one per (token, head)
  check_numel(op, "out", out, rows * head_dim);
  check_numel(op, "part_lse", part_lse, rows);
  check_numel(op, "part_out", part_out, rows * head_dim);
  if (rows == 0) return;
  attention_merge_kernel<<<grid_size(op, (rows + kWarps - 1) / kWarps), kThreads, 0, stream()>>>(
      out_view(out), lse.f(), in_view(part_out), part_lse.f(), rows, head_dim);
  MPT_CUDA_LAUNCH("attention_merge_kernel");
}

}  // namespace mpt::cuda
