// A CPU backend that keeps "device" memory apart from host memory: the CPU ops behind a
// wall. Memory from allocate() is handed out as tagged addresses (bit 62 set, which no
// user-space pointer has: dereferencing one faults at once), and every op takes the tag
// off before computing. Code that reads or writes backend memory from the host instead of
// through the ops, to_host() or to_device() crashes here exactly where it would read
// garbage on a GPU, so the device code paths of the model, the parallel layers and the
// engine are tested on a machine without a GPU, with results bit-identical to the CPU
// backend's. Selected with MPT_BACKEND=cpu-device.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "backend/ops.h"
#include "core/error.h"

namespace mpt::backend {
namespace {

constexpr uintptr_t kTag = uintptr_t{1} << 62;

// Calls that hand a value from backend memory to the host, and so wait for the backend's
// work on a GPU: to_host and the ops returning a host value.
std::atomic<int64_t> g_host_reads{0};

void* untag(const void* p) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~kTag); }
bool tagged(const void* p) { return (reinterpret_cast<uintptr_t>(p) & kTag) != 0; }

Tensor U(Tensor t) {
  MPT_CHECK(t.data == nullptr || tagged(t.data), Status::kInternal,
            "a backend op was given host memory (", t.data, "); ops take memory from Ops::allocate");
  t.data = untag(t.data);
  return t;
}

class EmulatedDeviceOps final : public Ops {
 public:
  explicit EmulatedDeviceOps(int threads) : inner_(make_cpu_ops(threads)) {}
  const char* name() const override { return "cpu-device"; }
  void synchronize() override { inner_->synchronize(); }
  int64_t workspace_bytes() const override { return inner_->workspace_bytes(); }

  bool host_memory() const override { return false; }
  bool is_device_pointer(const void* p) const override { return tagged(p); }
  void* allocate(size_t bytes) override {
    void* p = Ops::allocate(bytes);
    return p == nullptr ? nullptr : reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) | kTag);
  }
  void release(void* p) override { Ops::release(p == nullptr ? nullptr : untag(p)); }
  void to_device(void* dst, const void* src, size_t bytes) override {
    MPT_CHECK(tagged(dst) && (bytes == 0 || !tagged(src)), Status::kInternal, "to_device: bad pointers");
    if (bytes) std::memcpy(untag(dst), src, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    MPT_CHECK(tagged(src) && (bytes == 0 || !tagged(dst)), Status::kInternal, "to_host: bad pointers");
    ++g_host_reads;
    if (bytes) std::memcpy(dst, untag(src), bytes);
  }
  void device_copy(void* dst, const void* src, size_t bytes) override {
    MPT_CHECK(tagged(dst) && tagged(src), Status::kInternal, "device_copy: bad pointers");
    if (bytes) std::memmove(untag(dst), untag(src), bytes);
  }

  void cast(Tensor dst, Tensor src) override { inner_->cast(U(dst), U(src)); }
  void fill(Tensor x, float value) override { inner_->fill(U(x), value); }
  void copy(Tensor dst, Tensor src) override { inner_->copy(U(dst), U(src)); }
  void add(Tensor out, Tensor a, Tensor b) override { inner_->add(U(out), U(a), U(b)); }
  void add_inplace(Tensor y, Tensor x) override { inner_->add_inplace(U(y), U(x)); }
  void scale(Tensor x, float s) override { inner_->scale(U(x), s); }
  double sum_squares(Tensor x) override {
    ++g_host_reads;
    return inner_->sum_squares(U(x));
  }
  double dot(Tensor a, Tensor b) override {
    ++g_host_reads;
    return inner_->dot(U(a), U(b));
  }
  bool all_finite(Tensor x) override {
    ++g_host_reads;
    return inner_->all_finite(U(x));
  }
  void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) override { inner_->matmul(U(c), U(a), U(b), trans_a, trans_b, alpha, beta); }
  void add_bias(Tensor y, Tensor bias) override { inner_->add_bias(U(y), U(bias)); }
  void bias_grad(Tensor dbias, Tensor dy) override { inner_->bias_grad(U(dbias), U(dy)); }
  void matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias, std::optional<Activation> act) override { inner_->matmul_bias_act(U(y), U(pre), U(x), U(w), U(bias), act); }
  void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) override { inner_->layernorm_fwd(U(out), U(mean), U(rstd), U(x), U(weight), U(bias), eps); }
  void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean, Tensor rstd) override { inner_->layernorm_bwd(U(dx), U(dweight), U(dbias), U(dout), U(x), U(weight), U(mean), U(rstd)); }
  void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) override { inner_->rmsnorm_fwd(U(out), U(rstd), U(x), U(weight), eps); }
  void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) override { inner_->rmsnorm_bwd(U(dx), U(dweight), U(dout), U(x), U(weight), U(rstd)); }
  void add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight, Tensor bias, float eps) override { inner_->add_layernorm_fwd(U(sum), U(out), U(mean), U(rstd), U(a), U(b), U(weight), U(bias), eps); }
  void add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) override { inner_->add_rmsnorm_fwd(U(sum), U(out), U(rstd), U(a), U(b), U(weight), eps); }
  void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group, int64_t head_dim) override { inner_->qkv_split(U(q), U(k), U(v), U(qkv), groups, heads_per_group, head_dim); }
  void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group, int64_t head_dim) override { inner_->qkv_merge(U(dqkv), U(dq), U(dk), U(dv), groups, heads_per_group, head_dim); }
  void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base, bool inverse) override { inner_->rope(U(x), U(positions), heads, head_dim, rotary_dim, base, inverse); }
  void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) override { inner_->attention_fwd(U(out), U(lse), U(q), U(k), U(v), d); }
  void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, const AttentionDims& d) override { inner_->attention_bwd(U(dq), U(dk), U(dv), U(dout), U(q), U(k), U(v), U(out), U(lse), d); }
  void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads, int64_t head_dim) override { inner_->attention_merge(U(out), U(lse), U(part_out), U(part_lse), heads, head_dim); }
  void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) override { inner_->activation_fwd(U(out), U(x), act, gated); }
  void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) override { inner_->activation_bwd(U(dx), U(dout), U(x), act, gated); }
  void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) override { inner_->dropout_fwd(U(out), U(x), p, key, row_offset); }
  void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) override { inner_->dropout_bwd(U(dx), U(dout), p, key, row_offset); }
  void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) override { inner_->embedding_fwd(U(out), U(ids), U(table), vocab_start, accumulate); }
  void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) override { inner_->embedding_bwd(U(dtable), U(ids), U(dout), vocab_start); }
  void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) override { inner_->ce_row_max(U(row_max), U(logits), vocab_start, vocab_valid); }
  void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets, int64_t vocab_start, int64_t vocab_valid) override { inner_->ce_sumexp_target(U(sumexp), U(target_logit), U(logits), U(row_max), U(targets), vocab_start, vocab_valid); }
  void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) override { inner_->ce_loss(U(loss), U(row_max), U(sumexp), U(target_logit)); }
  void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale, int64_t vocab_start, int64_t vocab_valid) override { inner_->ce_bwd(U(dlogits), U(logits), U(row_max), U(sumexp), U(targets), U(grad_scale), vocab_start, vocab_valid); }
  void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn, bool pre_softmax) override { inner_->router_topk(U(indices), U(probs), U(scores), U(logits), k, fn, pre_softmax); }
  void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k, RouterScore fn, bool pre_softmax) override { inner_->router_topk_bwd(U(dlogits), U(dprobs), U(dscores), U(logits), U(indices), k, fn, pre_softmax); }
  void router_lse(Tensor lse, Tensor logits) override { inner_->router_lse(U(lse), U(logits)); }
  void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) override { inner_->router_z_loss_bwd(U(dlogits), U(logits), U(lse), scale); }
  void moe_permute(Tensor x_perm, Tensor x, Tensor rows) override { inner_->moe_permute(U(x_perm), U(x), U(rows)); }
  void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) override { inner_->moe_permute_bwd(U(dx), U(dx_perm), U(rows)); }
  void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) override { inner_->moe_unpermute(U(out), U(y), U(rows), U(probs)); }
  void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) override { inner_->moe_unpermute_bwd(U(dy), U(dprobs), U(dout), U(y), U(rows), U(probs)); }
  void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form, float beta) override { inner_->grouped_matmul(U(c), U(a), U(b), counts, groups, form, beta); }
  void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) override { inner_->adamw(U(param), U(grad), U(exp_avg), U(exp_avg_sq), a); }

 private:
  std::unique_ptr<Ops> inner_;
};

}  // namespace

int64_t emulated_device_host_reads() { return g_host_reads.load(); }

std::unique_ptr<Ops> make_emulated_device_ops(int num_threads) {
  return std::make_unique<EmulatedDeviceOps>(num_threads);
}

}  // namespace mpt::backend
