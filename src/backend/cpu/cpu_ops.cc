// The fp32 reference backend: the Ops interface over the kernel families of this
// directory. Each call runs on the backend's own thread count and restores the caller's.
// bf16 arguments reach the fp32 kernels through Bf16Staging (staging.h); each op below
// states how it uses every floating argument, which is what staging needs to know.
#include <omp.h>

#include <memory>

#include "backend/cpu/activation.h"
#include "backend/cpu/adamw.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/convert.h"
#include "backend/cpu/cross_entropy.h"
#include "backend/cpu/dropout.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/fused.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/moe.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/qkv.h"
#include "backend/cpu/rope.h"
#include "backend/cpu/staging.h"
#include "backend/ops.h"

namespace mpt::backend {

namespace {

using cpu::Use;
using enum cpu::Use;

// Sets the OpenMP team size for one op; the setting belongs to the calling thread only,
// so ranks running as threads each keep their own.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~ThreadScope() { omp_set_num_threads(saved_); }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
};

class CpuOps final : public Ops {
 public:
  explicit CpuOps(int threads) : threads_(threads > 0 ? threads : omp_get_max_threads()) { cpu::blas_load(); }

  const char* name() const override { return "cpu"; }
  int64_t workspace_bytes() const override {
    std::scoped_lock lock(scratch_.mu, moe_scratch_.mu, staging_.mu);
    return static_cast<int64_t>(scratch_.buf.capacity() * sizeof(float) +
                                moe_scratch_.slots.capacity() * sizeof(int64_t) +
                                staging_.buf.capacity() * sizeof(float));
  }

  void cast(Tensor dst, Tensor src) override {
    ThreadScope ts(threads_);
    cpu::cast(dst, src);
  }

  void fill(Tensor x, float value) override {
    ThreadScope ts(threads_);
    staged("fill", {{"x", &x, kOut}}, [&] { cpu::fill(x, value); });
  }
  void copy(Tensor dst, Tensor src) override {
    ThreadScope ts(threads_);
    if (dst.dtype == src.dtype) return cpu::copy(dst, src);  // bytes as they are
    staged("copy", {{"dst", &dst, kOut}, {"src", &src, kIn}}, [&] { cpu::copy(dst, src); });
  }
  void add(Tensor out, Tensor a, Tensor b) override {
    ThreadScope ts(threads_);
    staged("add", {{"out", &out, kOut}, {"a", &a, kIn}, {"b", &b, kIn}}, [&] { cpu::add(out, a, b); });
  }
  void add_inplace(Tensor y, Tensor x) override {
    ThreadScope ts(threads_);
    staged("add_inplace", {{"y", &y, kInOut}, {"x", &x, kIn}}, [&] { cpu::add_inplace(y, x); });
  }
  void scale(Tensor x, float s) override {
    ThreadScope ts(threads_);
    staged("scale", {{"x", &x, kInOut}}, [&] { cpu::scale(x, s); });
  }
  // The reductions read bf16 directly: no copy of what may be every gradient at once.
  double sum_squares(Tensor x) override {
    ThreadScope ts(threads_);
    return cpu::sum_squares(x);
  }
  double dot(Tensor a, Tensor b) override {
    ThreadScope ts(threads_);
    return cpu::dot(a, b);
  }
  bool all_finite(Tensor x) override {
    ThreadScope ts(threads_);
    return cpu::all_finite(x);
  }

  // With a or b in bf16 the product is a bf16 GEMM: both operands rounded to bf16 values.
  void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) override {
    ThreadScope ts(threads_);
    const Use operand = a.dtype == DType::kBF16 || b.dtype == DType::kBF16 ? kOperand : kIn;
    staged("matmul", {{"c", &c, beta == 0.0f ? kOut : kInOut}, {"a", &a, operand}, {"b", &b, operand}},
           [&] { cpu::matmul(c, a, b, trans_a, trans_b, alpha, beta); });
  }
  void add_bias(Tensor y, Tensor bias) override {
    ThreadScope ts(threads_);
    staged("add_bias", {{"y", &y, kInOut}, {"bias", &bias, kIn}}, [&] { cpu::add_bias(y, bias); });
  }
  void bias_grad(Tensor dbias, Tensor dy) override {
    ThreadScope ts(threads_);
    staged("bias_grad", {{"dbias", &dbias, kInOut}, {"dy", &dy, kIn}}, [&] { cpu::bias_grad(dbias, dy); });
  }
  // The fused ops run the ops they fuse (each staged on its own): the same roundings.
  void matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias, std::optional<Activation> act) override {
    cpu::matmul_bias_act(*this, y, pre, x, w, bias, act);
  }

  void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias,
                     float eps) override {
    ThreadScope ts(threads_);
    staged("layernorm_fwd",
           {{"out", &out, kOut}, {"mean", &mean, kF32}, {"rstd", &rstd, kF32}, {"x", &x, kIn},
            {"weight", &weight, kIn}, {"bias", &bias, kIn}},
           [&] { cpu::layernorm_fwd(out, mean, rstd, x, weight, bias, eps); });
  }
  void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                     Tensor rstd) override {
    ThreadScope ts(threads_);
    staged("layernorm_bwd",
           {{"dx", &dx, kInOut}, {"dweight", &dweight, kInOut}, {"dbias", &dbias, kInOut}, {"dout", &dout, kIn},
            {"x", &x, kIn}, {"weight", &weight, kIn}, {"mean", &mean, kF32}, {"rstd", &rstd, kF32}},
           [&] { cpu::layernorm_bwd(dx, dweight, dbias, dout, x, weight, mean, rstd); });
  }
  void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) override {
    ThreadScope ts(threads_);
    staged("rmsnorm_fwd", {{"out", &out, kOut}, {"rstd", &rstd, kF32}, {"x", &x, kIn}, {"weight", &weight, kIn}},
           [&] { cpu::rmsnorm_fwd(out, rstd, x, weight, eps); });
  }
  void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) override {
    ThreadScope ts(threads_);
    staged("rmsnorm_bwd",
           {{"dx", &dx, kInOut}, {"dweight", &dweight, kInOut}, {"dout", &dout, kIn}, {"x", &x, kIn},
            {"weight", &weight, kIn}, {"rstd", &rstd, kF32}},
           [&] { cpu::rmsnorm_bwd(dx, dweight, dout, x, weight, rstd); });
  }
  void add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight,
                         Tensor bias, float eps) override {
    cpu::add_layernorm_fwd(*this, sum, out, mean, rstd, a, b, weight, bias, eps);
  }
  void add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) override {
    cpu::add_rmsnorm_fwd(*this, sum, out, rstd, a, b, weight, eps);
  }

  void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override {
    ThreadScope ts(threads_);
    staged("qkv_split", {{"q", &q, kOut}, {"k", &k, kOut}, {"v", &v, kOut}, {"qkv", &qkv, kIn}},
           [&] { cpu::qkv_split(q, k, v, qkv, groups, heads_per_group, head_dim); });
  }
  void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override {
    ThreadScope ts(threads_);
    staged("qkv_merge", {{"dqkv", &dqkv, kOut}, {"dq", &dq, kIn}, {"dk", &dk, kIn}, {"dv", &dv, kIn}},
           [&] { cpu::qkv_merge(dqkv, dq, dk, dv, groups, heads_per_group, head_dim); });
  }
  void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
            bool inverse) override {
    ThreadScope ts(threads_);
    staged("rope", {{"x", &x, kInOut}},
           [&] { cpu::rope(x, positions, heads, head_dim, rotary_dim, base, inverse); });
  }
  // The call's dims with the dropout seed in its key (ops.h, set_dropout_seed).
  AttentionDims seeded(AttentionDims d) const {
    d.dropout_key ^= dropout_seed_;
    return d;
  }
  void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) override {
    ThreadScope ts(threads_);
    staged("attention_fwd",
           {{"out", &out, kOut}, {"lse", &lse, kF32}, {"q", &q, kIn}, {"k", &k, kIn}, {"v", &v, kIn}},
           [&] { cpu::attention_fwd(out, lse, q, k, v, seeded(d), scratch_); });
  }
  void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                     Tensor lse, const AttentionDims& d) override {
    ThreadScope ts(threads_);
    staged("attention_bwd",
           {{"dq", &dq, kOut}, {"dk", &dk, kOut}, {"dv", &dv, kOut}, {"dout", &dout, kIn}, {"q", &q, kIn},
            {"k", &k, kIn}, {"v", &v, kIn}, {"out", &out, kIn}, {"lse", &lse, kF32}},
           [&] { cpu::attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, seeded(d), scratch_); });
  }
  void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads,
                       int64_t head_dim) override {
    ThreadScope ts(threads_);
    staged("attention_merge",
           {{"out", &out, kInOut}, {"lse", &lse, kF32}, {"part_out", &part_out, kIn}, {"part_lse", &part_lse, kF32}},
           [&] { cpu::attention_merge(out, lse, part_out, part_lse, heads, head_dim); });
  }

  void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) override {
    ThreadScope ts(threads_);
    staged("activation_fwd", {{"out", &out, kOut}, {"x", &x, kIn}},
           [&] { cpu::activation_fwd(out, x, act, gated); });
  }
  void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) override {
    ThreadScope ts(threads_);
    staged("activation_bwd", {{"dx", &dx, kOut}, {"dout", &dout, kIn}, {"x", &x, kIn}},
           [&] { cpu::activation_bwd(dx, dout, x, act, gated); });
  }

  void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) override {
    ThreadScope ts(threads_);
    staged("dropout_fwd", {{"out", &out, kOut}, {"x", &x, kIn}},
           [&] { cpu::dropout_fwd(out, x, p, key ^ dropout_seed_, row_offset); });
  }
  void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) override {
    ThreadScope ts(threads_);
    staged("dropout_bwd", {{"dx", &dx, kOut}, {"dout", &dout, kIn}},
           [&] { cpu::dropout_bwd(dx, dout, p, key ^ dropout_seed_, row_offset); });
  }

  void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) override {
    ThreadScope ts(threads_);
    staged("embedding_fwd", {{"out", &out, accumulate ? kInOut : kOut}, {"table", &table, kIn}},
           [&] { cpu::embedding_fwd(out, ids, table, vocab_start, accumulate); });
  }
  void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) override {
    ThreadScope ts(threads_);
    staged("embedding_bwd", {{"dtable", &dtable, kInOut}, {"dout", &dout, kIn}},
           [&] { cpu::embedding_bwd(dtable, ids, dout, vocab_start); });
  }

  // Cross-entropy is fp32 throughout except the gradient it hands back to the output layer.
  void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) override {
    ThreadScope ts(threads_);
    cpu::ce_row_max(row_max, logits, vocab_start, vocab_valid);
  }
  void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets,
                        int64_t vocab_start, int64_t vocab_valid) override {
    ThreadScope ts(threads_);
    cpu::ce_sumexp_target(sumexp, target_logit, logits, row_max, targets, vocab_start, vocab_valid);
  }
  void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) override {
    ThreadScope ts(threads_);
    cpu::ce_loss(loss, row_max, sumexp, target_logit);
  }
  void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale,
              int64_t vocab_start, int64_t vocab_valid) override {
    ThreadScope ts(threads_);
    cpu::check_dlogits_apart(dlogits, logits);
    staged("ce_bwd",
           {{"dlogits", &dlogits, kOut}, {"logits", &logits, kF32}, {"row_max", &row_max, kF32},
            {"sumexp", &sumexp, kF32}, {"grad_scale", &grad_scale, kF32}},
           [&] { cpu::ce_bwd(dlogits, logits, row_max, sumexp, targets, grad_scale, vocab_start, vocab_valid); });
  }

  // The router is fp32 throughout.
  void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn,
                   bool pre_softmax) override {
    ThreadScope ts(threads_);
    cpu::router_topk(indices, probs, scores, logits, k, fn, pre_softmax);
  }
  void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k,
                       RouterScore fn, bool pre_softmax) override {
    ThreadScope ts(threads_);
    cpu::router_topk_bwd(dlogits, dprobs, dscores, logits, indices, k, fn, pre_softmax);
  }
  void router_lse(Tensor lse, Tensor logits) override {
    ThreadScope ts(threads_);
    cpu::router_lse(lse, logits);
  }
  void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) override {
    ThreadScope ts(threads_);
    cpu::router_z_loss_bwd(dlogits, logits, lse, scale);
  }
  void moe_permute(Tensor x_perm, Tensor x, Tensor rows) override {
    ThreadScope ts(threads_);
    staged("moe_permute", {{"x_perm", &x_perm, kOut}, {"x", &x, kIn}},
           [&] { cpu::moe_permute(x_perm, x, rows, moe_scratch_); });
  }
  void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) override {
    ThreadScope ts(threads_);
    staged("moe_permute_bwd", {{"dx", &dx, kOut}, {"dx_perm", &dx_perm, kIn}},
           [&] { cpu::moe_permute_bwd(dx, dx_perm, rows, moe_scratch_); });
  }
  void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) override {
    ThreadScope ts(threads_);
    staged("moe_unpermute", {{"out", &out, kOut}, {"y", &y, kIn}, {"probs", &probs, kF32}},
           [&] { cpu::moe_unpermute(out, y, rows, probs, moe_scratch_); });
  }
  void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) override {
    ThreadScope ts(threads_);
    staged("moe_unpermute_bwd",
           {{"dy", &dy, kOut}, {"dprobs", &dprobs, kF32}, {"dout", &dout, kIn}, {"y", &y, kIn},
            {"probs", &probs, kF32}},
           [&] { cpu::moe_unpermute_bwd(dy, dprobs, dout, y, rows, probs, moe_scratch_); });
  }
  void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                      float beta) override {
    ThreadScope ts(threads_);
    const Use operand = a.dtype == DType::kBF16 || b.dtype == DType::kBF16 ? kOperand : kIn;
    staged("grouped_matmul", {{"c", &c, beta == 0.0f ? kOut : kInOut}, {"a", &a, operand}, {"b", &b, operand}},
           [&] { cpu::grouped_matmul(c, a, b, counts, groups, form, beta); });
  }

  void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) override {
    ThreadScope ts(threads_);
    cpu::adamw(param, grad, exp_avg, exp_avg_sq, a);
  }

 private:
  // Runs kernel on the call's tensors: as they are when all are F32 (the fp32 path, with
  // nothing added but this dtype test), else with the BF16 ones staged as fp32.
  template <typename Kernel>
  void staged(const char* op, std::initializer_list<cpu::StagedArg> args, Kernel kernel) {
    if (cpu::all_f32(args)) return kernel();
    cpu::Bf16Staging staging(op, staging_, args);
    kernel();
    staging.finish();
  }

  int threads_;
  mutable cpu::AttentionScratch scratch_;
  mutable cpu::MoeScratch moe_scratch_;
  mutable cpu::StagingScratch staging_;
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops(int num_threads) { return std::make_unique<CpuOps>(num_threads); }

}  // namespace mpt::backend
