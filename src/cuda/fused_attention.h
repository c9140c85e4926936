// Attention through a vendor library's fused kernels (cuDNN's scaled-dot-product attention on
// tensor cores), behind the CUDA backend's attention ops. A call the library cannot serve
// (dtype, head size, dropout, alignment, a cuDNN too old for the layout) is declined, and the
// backend runs its own kernel instead (cuda_attention.cu); the reason is kept, so a run can
// say which attention it uses and why.
//
// Which one runs is chosen by MPT_ATTENTION: "auto" (default: the library where it serves),
// "cudnn" (the library or an error naming why not) or "kernel" (mptrain's own kernel always).
// The backward is deterministic where cuDNN offers it; MPT_ATTENTION_DETERMINISTIC=1 makes that
// a requirement (a call whose deterministic backward cuDNN lacks runs on the own kernel,
// which is deterministic), =0 lets cuDNN pick its fastest backward.
#pragma once

#include <memory>
#include <string>

#include "backend/ops.h"
#include "core/tensor.h"

namespace mpt::cuda {

class CudaOps;

enum class AttentionChoice { kAuto, kLibrary, kKernel };

class FusedAttention {
 public:
  virtual ~FusedAttention() = default;
  // Run the call on the backend's stream and return true, or return false having queued
  // nothing (why_not() then says why). The arguments are checked by the caller.
  virtual bool forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const backend::AttentionDims& d) = 0;
  virtual bool backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                        Tensor lse, const backend::AttentionDims& d) = 0;
  // Whether calls of these dims, with every tensor of `dtype`, would run here (builds and
  // caches their plans); why_not() says why not.
  virtual bool serves(const backend::AttentionDims& d, DType dtype) = 0;
  virtual const std::string& why_not() const = 0;
  // "cuDNN 9.19.0 fused attention", with the backward's determinism where known. Its plans'
  // workspace lives in the backend's scratch area (counted in Ops::workspace_bytes).
  virtual std::string describe() const = 0;
};

// cuDNN's attention on `ops`'s stream, or nullptr with `why` set when this build or machine
// has no usable cuDNN (cudnn_attention.cc, or cudnn_attention_absent.cc in a build without it).
std::unique_ptr<FusedAttention> make_cudnn_attention(CudaOps& ops, std::string& why);

// One cuDNN attention plan's shape: what a plan is built and cached for.
struct AttentionPlanShape {
  bool backward = false;
  int64_t batch = 0, heads = 0, groups = 0, seq_q = 0, seq_kv = 0, head_dim = 0;
  bool causal = false;
  float scale = 0;
  bool packed_stats = false;   // Stats as a packed [B, H, S] copy, not in the engine's lse
  bool deterministic = false;  // the backward's deterministic algorithm
};
// Whether this build has cuDNN attention.
bool cudnn_attention_built();
// The cuDNN graph of such a call checked by the frontend's rules for GPUs of compute
// capability `sm` (90: Hopper) and lowered to cuDNN's operation graph, without a GPU: "" when
// it passes, else the frontend's message. Catches layout and attribute mistakes on any machine.
std::string check_cudnn_attention_graph(const AttentionPlanShape& shape, int sm);

// MPT_ATTENTION read and checked: Error(kInvalidArgument) naming the value otherwise.
AttentionChoice attention_choice_from_env();

// lse layouts for the library (cuda_attention.cu): [seq, batch, heads] (the engine's, token-
// major) to [batch, heads, seq] and back, queued on `stream`.
void lse_to_bhs(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads, void* stream);
void lse_from_bhs(float* dst, const float* src, int64_t seq, int64_t batch, int64_t heads, void* stream);

}  // namespace mpt::cuda
