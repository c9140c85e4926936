// The CUDA backend: backend::Ops on one NVIDIA GPU. Every op is queued on the backend's own
// stream and returns without waiting; synchronize(), to_host() and the ops that return a
// host value (sum_squares, dot, all_finite) wait. The stream's work can be recorded into a
// CUDA graph and replayed (begin_capture / end_capture); while recording, the calls that wait
// for the GPU or change memory are refused (see ops.h). Tensors are device memory from
// allocate() (or any device pointer), except where the interface passes a host array
// (grouped_matmul's counts).
//
// The ops live in several files, one family each:
//   cuda_ops.cu            construction, memory, the dropout seed, casts, elementwise,
//                          reductions
//   cuda_adamw.cu          AdamW over many pieces in one launch, the norm's device sums
//   cuda_graph.cu          graph capture and replay
//   cuda_gemm.cu           matmul (cuBLASLt), matmul_bias_act (cuBLASLt epilogues), bias
//   cuda_grouped_gemm.cu   grouped GEMM of the experts (shared pieces: gemm_internal.cuh)
//   cuda_fused.cu          the residual add fused with the norm after it
//   cuda_attention.cu      attention forward/backward (flash-style, GQA, causal, dropout),
//                          attention_merge; cuDNN's fused attention in front of it
//                          (cudnn_attention.cc, fused_attention.h)
//   cuda_layers.cu         norms, qkv split/merge (with RoPE fused), RoPE, activations, dropout
//   cuda_vocab.cu          embedding, cross-entropy pieces
//   cuda_moe.cu            router top-k and losses, token permutes
// Numerics: every floating tensor is f32 or bf16 on its own (ops.h, "Precision"; the f32-only
// arguments are refused as bf16). Kernels read through elements.cuh's views: bf16 widened
// exactly, fp32 arithmetic, each output rounded once to nearest even (core/bf16.h's bits).
// All-f32 calls run fp32 throughout (TF32 tensor cores are not used, so results match the
// CPU oracle within 1e-5 relative). GEMMs with a bf16 operand run on bf16 tensor cores with
// fp32 accumulation (an f32 operand beside it is rounded to bf16 first, in scratch).
// Reductions run in a fixed order, so a call gives the same bits every time. Dropout draws
// the CPU backend's masks exactly (the same Philox stream, core/rng_device.h); the kernels
// read the dropout seed from device memory when they run, so a replayed graph draws the
// masks of the seed set before the replay.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/ops.h"
#include "core/log.h"
#include "cuda/allocator.h"
#include "cuda/fused_attention.h"
#include "cuda/scratch_ledger.h"

namespace mpt::cuda {

class CudaOps final : public backend::Ops {
 public:
  explicit CudaOps(int device);
  ~CudaOps() override;
  CudaOps(const CudaOps&) = delete;
  CudaOps& operator=(const CudaOps&) = delete;

  const char* name() const override { return name_; }
  void synchronize() override;
  int64_t workspace_bytes() const override;
  int64_t peak_bytes() const override;  // the caching allocator's peak in use
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }

  // Memory (cuda_ops.cu): device memory from the caching allocator.
  bool host_memory() const override { return false; }
  void* allocate(size_t bytes) override;
  void release(void* p) override;
  void to_device(void* dst, const void* src, size_t bytes) override;
  void to_host(void* dst, const void* src, size_t bytes) override;
  void device_copy(void* dst, const void* src, size_t bytes) override;   // cuda_memory.cu
  bool is_device_pointer(const void* p) const override;                  // cuda_memory.cu

  // The dropout seed (ops.h) lives in device memory, written in stream order by a one-thread
  // kernel; refused during capture (a replay would write the recorded value again). Kernels
  // drawing dropout masks read it through dropout_seed_on_device() when they run.
  void set_dropout_seed(uint64_t seed) override;
  const uint64_t* dropout_seed_on_device() const { return dropout_seed_on_device_; }

  // Graphs (cuda_graph.cu): the stream captured in thread-local mode (other threads' CUDA
  // calls are left alone), instantiated at end_capture(); a graph replays on this backend's
  // stream and must not outlive it.
  bool supports_graphs() const override { return true; }
  void begin_capture() override;
  std::unique_ptr<backend::Graph> end_capture() override;
  bool capturing() const override { return capturing_; }
  // Refuses `call` during capture: remembers the first refusal (end_capture() then fails
  // naming it) and throws Error(kInternal) "<name>: <call> during graph capture: <why>".
  [[noreturn]] void refuse_in_capture(const std::string& call, const char* why = "a replay could not repeat it");

  // Casts, elementwise and reductions (cuda_ops.cu).
  void cast(Tensor dst, Tensor src) override;
  void fill(Tensor x, float value) override;
  void copy(Tensor dst, Tensor src) override;
  void add(Tensor out, Tensor a, Tensor b) override;
  void add_inplace(Tensor y, Tensor x) override;
  void scale(Tensor x, float s) override;
  double sum_squares(Tensor x) override;
  double dot(Tensor a, Tensor b) override;
  bool all_finite(Tensor x) override;

  // AdamW, the gradient norm's device sums and its clip factor (cuda_adamw.cu).
  void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const backend::AdamWArgs& a) override;
  void adamw_multi(const backend::AdamWTensor* tensors, int64_t count, const backend::AdamWArgs& a) override;
  void sum_squares_acc(Tensor acc, Tensor x) override;
  void grad_clip_factor(Tensor factor, Tensor sumsq, double max_norm) override;

  // GEMM (cuda_gemm.cu).
  void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) override;
  void add_bias(Tensor y, Tensor bias) override;
  void bias_grad(Tensor dbias, Tensor dy) override;
  void matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias,
                       std::optional<backend::Activation> act) override;
  void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, backend::GroupedForm form,
                      float beta) override;  // cuda_grouped_gemm.cu
  // Where the GEMMs report what a user may want to know, such as a bf16 GEMM run as an
  // fp32 one on widened copies (once per shape); by default stderr at level info.
  const Logger& logger() const { return log_; }
  void set_logger(Logger log) { log_ = std::move(log); }

  // Attention (cuda_attention.cu): cuDNN's fused attention where it serves the call
  // (fused_attention.h, MPT_ATTENTION), else mptrain's own kernels.
  std::string attention_summary(const backend::AttentionDims& d, DType dtype) override;
  void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const backend::AttentionDims& d) override;
  void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                     Tensor lse, const backend::AttentionDims& d) override;
  void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads,
                       int64_t head_dim) override;

  // Layers (cuda_layers.cu).
  void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) override;
  void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                     Tensor rstd) override;
  void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) override;
  void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) override;
  void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override;
  void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override;
  void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
            bool inverse) override;
  void qkv_split_rope(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                      int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) override;
  void qkv_merge_rope(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                      int64_t head_dim, Tensor positions, int64_t rotary_dim, float base) override;
  void activation_fwd(Tensor out, Tensor x, backend::Activation act, bool gated) override;
  void activation_bwd(Tensor dx, Tensor dout, Tensor x, backend::Activation act, bool gated) override;
  void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) override;
  void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) override;
  void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) override;
  void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) override;
  void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) override;
  void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                        int64_t vocab_start, int64_t vocab_valid) override;
  void ce_stats(Tensor row_max, Tensor sumexp, Tensor target_logit, Tensor logits, Tensor targets,
                int64_t vocab_start, int64_t vocab_valid) override;
  void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) override;
  void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
              int64_t vocab_start, int64_t vocab_valid) override;

  // The residual add fused with the norm after it (cuda_fused.cu).
  void add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                         Tensor bias, float eps) override;
  void add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) override;

  // Mixture of experts (cuda_moe.cu).
  void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, backend::RouterScore fn,
                   bool pre_softmax) override;
  void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k,
                       backend::RouterScore fn, bool pre_softmax) override;
  void router_lse(Tensor lse, Tensor logits) override;
  void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) override;
  void moe_permute(Tensor x_perm, Tensor x, Tensor rows) override;
  void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) override;
  void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) override;
  void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) override;

  // Shared by the op files: a scratch area of at least `bytes` on the device (valid until the
  // next call asking for scratch; grows, never shrinks), a second one for a step whose inputs
  // may sit in the first (the widened operands of a bf16 GEMM cuBLASLt has no algorithm
  // for), a small pinned host buffer for results the host reads, f32/bf16 conversion, and
  // the cuBLASLt handle and its workspace. During graph capture the areas may not grow (a
  // recorded op may use the memory growth would give back): the first call of each shape
  // must come before the capture. An area outgrown outside capture stays allocated while a
  // graph recorded during its lifetime lives (the graph replays its address); see
  // scratch_ledger.h.
  void* scratch(size_t bytes);
  void* second_scratch(size_t bytes);
  void* pinned(size_t bytes);
  // dst[0, n) = src[0, n) converted between f32 and bf16 (rounded to nearest even), or copied
  // when the dtypes match; queued on the stream. Throws for any other dtype.
  void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n);
  cublasLtHandle_t lt() const { return lt_; }
  void* lt_workspace() const { return lt_workspace_; }
  size_t lt_workspace_bytes() const { return lt_workspace_bytes_; }

 private:
  void* grow_scratch(void*& area, size_t& size, uint64_t& since, size_t bytes, const char* what);
  void init_attention();  // cuda_attention.cu: the library's attention as MPT_ATTENTION asks
  int device_ = 0;
  char name_[32] = "cuda";
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CachingAllocator> alloc_;
  cublasLtHandle_t lt_ = nullptr;
  void* lt_workspace_ = nullptr;
  size_t lt_workspace_bytes_ = 0;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  void* second_scratch_ = nullptr;
  size_t second_scratch_bytes_ = 0;
  // The scratch generation each area became current in, and the outgrown areas that live
  // recorded graphs may still use (shared with those graphs).
  uint64_t scratch_since_ = 0, second_scratch_since_ = 0;
  std::shared_ptr<ScratchLedger> scratch_ledger_;
  Logger log_;
  void* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
  uint64_t* dropout_seed_on_device_ = nullptr;  // one value, from the allocator; 0 at construction
  // Graph capture: whether one is under way, its first refused call ("" when none), and the
  // blocks released during it (given back once it has ended).
  bool capturing_ = false;
  std::string capture_error_;
  std::vector<void*> released_in_capture_;
  // The library's attention (null: none, for fused_attention_why_) and MPT_ATTENTION's choice.
  std::unique_ptr<FusedAttention> fused_attention_;
  std::string fused_attention_why_;
  AttentionChoice attention_choice_ = AttentionChoice::kAuto;
};

// How the GEMMs chose their cuBLASLt algorithms so far, in this process (cuda_gemm.cu):
// shapes planned (each first call of a shape and dtypes), shapes whose candidates were
// timed, and bf16 shapes run as fp32 GEMMs on widened copies. A shape's first call outside
// capture times the heuristic's candidates and keeps the fastest (the choice may differ
// between runs); MPT_GEMM_AUTOTUNE=0 takes the heuristic's first instead.
struct GemmTuningCounts {
  int64_t planned = 0, timed = 0, widened = 0;
};
GemmTuningCounts gemm_tuning_counts();

// Checks a kernel launch (cudaGetLastError) naming the kernel.
#define MPT_CUDA_LAUNCH(name) \
  ::mpt::cuda::check(static_cast<int>(cudaGetLastError()), "launch of " #name, __FILE__, __LINE__)

}  // namespace mpt::cuda
