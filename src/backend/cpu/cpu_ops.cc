// The fp32 reference backend: the Ops interface over the kernel families of this
// directory. Each call runs on the backend's own thread count and restores the caller's.
#include <omp.h>

#include <memory>

#include "backend/cpu/activation.h"
#include "backend/cpu/adamw.h"
#include "backend/cpu/attention.h"
#include "backend/cpu/blas.h"
#include "backend/cpu/cross_entropy.h"
#include "backend/cpu/dropout.h"
#include "backend/cpu/elementwise.h"
#include "backend/cpu/embedding.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/moe.h"
#include "backend/cpu/norm.h"
#include "backend/cpu/qkv.h"
#include "backend/cpu/rope.h"
#include "backend/ops.h"

namespace mpt::backend {

namespace {

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
    std::scoped_lock lock(scratch_.mu, moe_scratch_.mu);
    return static_cast<int64_t>(scratch_.buf.capacity() * sizeof(float) +
                                moe_scratch_.slots.capacity() * sizeof(int64_t));
  }

  void fill(Tensor x, float value) override {
    ThreadScope ts(threads_);
    cpu::fill(x, value);
  }
  void copy(Tensor dst, Tensor src) override {
    ThreadScope ts(threads_);
    cpu::copy(dst, src);
  }
  void add(Tensor out, Tensor a, Tensor b) override {
    ThreadScope ts(threads_);
    cpu::add(out, a, b);
  }
  void add_inplace(Tensor y, Tensor x) override {
    ThreadScope ts(threads_);
    cpu::add_inplace(y, x);
  }
  void scale(Tensor x, float s) override {
    ThreadScope ts(threads_);
    cpu::scale(x, s);
  }
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

  void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) override {
    ThreadScope ts(threads_);
    cpu::matmul(c, a, b, trans_a, trans_b, alpha, beta);
  }
  void add_bias(Tensor y, Tensor bias) override {
    ThreadScope ts(threads_);
    cpu::add_bias(y, bias);
  }
  void bias_grad(Tensor dbias, Tensor dy) override {
    ThreadScope ts(threads_);
    cpu::bias_grad(dbias, dy);
  }

  void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias,
                     float eps) override {
    ThreadScope ts(threads_);
    cpu::layernorm_fwd(out, mean, rstd, x, weight, bias, eps);
  }
  void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean,
                     Tensor rstd) override {
    ThreadScope ts(threads_);
    cpu::layernorm_bwd(dx, dweight, dbias, dout, x, weight, mean, rstd);
  }
  void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) override {
    ThreadScope ts(threads_);
    cpu::rmsnorm_fwd(out, rstd, x, weight, eps);
  }
  void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) override {
    ThreadScope ts(threads_);
    cpu::rmsnorm_bwd(dx, dweight, dout, x, weight, rstd);
  }

  void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override {
    ThreadScope ts(threads_);
    cpu::qkv_split(q, k, v, qkv, groups, heads_per_group, head_dim);
  }
  void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group,
                 int64_t head_dim) override {
    ThreadScope ts(threads_);
    cpu::qkv_merge(dqkv, dq, dk, dv, groups, heads_per_group, head_dim);
  }
  void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base,
            bool inverse) override {
    ThreadScope ts(threads_);
    cpu::rope(x, positions, heads, head_dim, rotary_dim, base, inverse);
  }
  void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) override {
    ThreadScope ts(threads_);
    cpu::attention_fwd(out, lse, q, k, v, d, scratch_);
  }
  void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out,
                     Tensor lse, const AttentionDims& d) override {
    ThreadScope ts(threads_);
    cpu::attention_bwd(dq, dk, dv, dout, q, k, v, out, lse, d, scratch_);
  }
  void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads,
                       int64_t head_dim) override {
    ThreadScope ts(threads_);
    cpu::attention_merge(out, lse, part_out, part_lse, heads, head_dim);
  }

  void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) override {
    ThreadScope ts(threads_);
    cpu::activation_fwd(out, x, act, gated);
  }
  void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) override {
    ThreadScope ts(threads_);
    cpu::activation_bwd(dx, dout, x, act, gated);
  }

  void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) override {
    ThreadScope ts(threads_);
    cpu::dropout_fwd(out, x, p, key, row_offset);
  }
  void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) override {
    ThreadScope ts(threads_);
    cpu::dropout_bwd(dx, dout, p, key, row_offset);
  }

  void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) override {
    ThreadScope ts(threads_);
    cpu::embedding_fwd(out, ids, table, vocab_start, accumulate);
  }
  void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) override {
    ThreadScope ts(threads_);
    cpu::embedding_bwd(dtable, ids, dout, vocab_start);
  }

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
    cpu::ce_bwd(dlogits, logits, row_max, sumexp, targets, grad_scale, vocab_start, vocab_valid);
  }

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
    cpu::moe_permute(x_perm, x, rows, moe_scratch_);
  }
  void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) override {
    ThreadScope ts(threads_);
    cpu::moe_permute_bwd(dx, dx_perm, rows, moe_scratch_);
  }
  void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) override {
    ThreadScope ts(threads_);
    cpu::moe_unpermute(out, y, rows, probs, moe_scratch_);
  }
  void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) override {
    ThreadScope ts(threads_);
    cpu::moe_unpermute_bwd(dy, dprobs, dout, y, rows, probs, moe_scratch_);
  }
  void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                      float beta) override {
    ThreadScope ts(threads_);
    cpu::grouped_matmul(c, a, b, counts, groups, form, beta);
  }

  void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) override {
    ThreadScope ts(threads_);
    cpu::adamw(param, grad, exp_avg, exp_avg_sq, a);
  }

 private:
  int threads_;
  mutable cpu::AttentionScratch scratch_;
  mutable cpu::MoeScratch moe_scratch_;
};

}  // namespace

std::unique_ptr<Ops> make_cpu_ops(int num_threads) { return std::make_unique<CpuOps>(num_threads); }

}  // namespace mpt::backend
