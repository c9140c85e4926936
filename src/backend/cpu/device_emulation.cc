// A CPU backend that keeps "device" memory apart from host memory: the CPU ops behind a
// wall. Memory from allocate() is handed out as tagged addresses (bit 62 set, which no
// user-space pointer has: dereferencing one faults at once), and every op takes the tag
// off before computing. Code that reads or writes backend memory from the host instead of
// through the ops, to_host() or to_device() crashes here exactly where it would read
// garbage on a GPU, so the device code paths of the model, the parallel layers and the
// engine are tested on a machine without a GPU, with results bit-identical to the CPU
// backend's. Selected with MPT_BACKEND=cpu-device.
//
// It records graphs as a GPU does (Ops::begin_capture): while capturing, each op is kept as
// a call with its arguments as they are then, and runs only when the graph is replayed; the
// calls a graph cannot repeat are refused. So a scalar baked into a recording where it
// should have been read from memory shows up here as a wrong result, without a GPU.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend/ops.h"
#include "core/error.h"

namespace mpt::backend {
namespace {

constexpr uintptr_t kTag = uintptr_t{1} << 62;

// Calls that hand a value from backend memory to the host, and so wait for the backend's
// work on a GPU: to_host and the ops returning a host value.
std::atomic<int64_t> g_host_reads{0};
// Replays of recorded graphs.
std::atomic<int64_t> g_graph_replays{0};

void* untag(const void* p) { return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) & ~kTag); }
bool tagged(const void* p) { return (reinterpret_cast<uintptr_t>(p) & kTag) != 0; }

Tensor U(Tensor t) {
  MPT_CHECK(t.data == nullptr || tagged(t.data), Status::kInternal,
            "a backend op was given host memory (", t.data, "); ops take memory from Ops::allocate");
  t.data = untag(t.data);
  return t;
}

// AdamW's arguments with the clip factor's memory untagged.
AdamWArgs U(AdamWArgs a) {
  a.grad_scale_device = U(a.grad_scale_device);
  return a;
}

using Call = std::function<void()>;

class RecordedGraph final : public Graph {
 public:
  explicit RecordedGraph(std::vector<Call> calls) : calls_(std::move(calls)) {}
  void replay() override {
    ++g_graph_replays;
    for (const Call& c : calls_) c();
  }
  int64_t nodes() const override { return static_cast<int64_t>(calls_.size()); }

 private:
  std::vector<Call> calls_;
};

class EmulatedDeviceOps final : public Ops {
 public:
  explicit EmulatedDeviceOps(int threads) : inner_(make_cpu_ops(threads)) {}
  const char* name() const override { return "cpu-device"; }
  void synchronize() override {
    refuse_in_capture("synchronize()");
    inner_->synchronize();
  }
  int64_t workspace_bytes() const override { return inner_->workspace_bytes(); }

  bool supports_graphs() const override { return true; }
  bool capturing() const override { return capturing_; }
  void begin_capture() override {
    refuse_in_capture("begin_capture()");
    capturing_ = true;
    spoiled_.clear();
    recording_.clear();
  }
  std::unique_ptr<Graph> end_capture() override {
    MPT_CHECK(capturing_, Status::kInternal, "cpu-device: end_capture() without begin_capture()");
    capturing_ = false;
    std::vector<Call> calls = std::move(recording_);
    recording_.clear();
    for (void* p : released_) Ops::release(untag(p));
    released_.clear();
    MPT_CHECK(spoiled_.empty(), Status::kInternal, "cpu-device: the graph capture failed: ", spoiled_,
              " during capture");
    return std::make_unique<RecordedGraph>(std::move(calls));
  }

  // The seed lives "in device memory": a recorded op reads it when it runs, not when it
  // was recorded.
  void set_dropout_seed(uint64_t seed) override {
    refuse_in_capture("set_dropout_seed()");
    dropout_seed_ = seed;
  }

  bool host_memory() const override { return false; }
  bool is_device_pointer(const void* p) const override { return tagged(p); }
  void* allocate(size_t bytes) override {
    refuse_in_capture(str("allocate(", bytes, " bytes)"));
    void* p = Ops::allocate(bytes);
    return p == nullptr ? nullptr : reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(p) | kTag);
  }
  void release(void* p) override {
    if (p != nullptr && capturing_) {
      // Refused without a throw (release() runs from destructors, during unwinding too): the
      // capture fails, and the memory is given back once it has ended.
      if (spoiled_.empty()) spoiled_ = "release()";
      released_.push_back(p);
      return;
    }
    Ops::release(p == nullptr ? nullptr : untag(p)); }
  void to_device(void* dst, const void* src, size_t bytes) override {
    refuse_in_capture("to_device()");
    MPT_CHECK(tagged(dst) && (bytes == 0 || !tagged(src)), Status::kInternal, "to_device: bad pointers");
    if (bytes) std::memcpy(untag(dst), src, bytes);
  }
  void to_host(void* dst, const void* src, size_t bytes) override {
    refuse_in_capture("to_host()");
    MPT_CHECK(tagged(src) && (bytes == 0 || !tagged(dst)), Status::kInternal, "to_host: bad pointers");
    ++g_host_reads;
    if (bytes) std::memcpy(dst, untag(src), bytes);
  }
  void device_copy(void* dst, const void* src, size_t bytes) override {
    MPT_CHECK(tagged(dst) && tagged(src), Status::kInternal, "device_copy: bad pointers");
    run([=] {
      if (bytes) std::memmove(untag(dst), untag(src), bytes);
    });
  }

  void cast(Tensor dst, Tensor src) override { run([=, this] { inner_->cast(U(dst), U(src)); }); }
  void fill(Tensor x, float value) override { run([=, this] { inner_->fill(U(x), value); }); }
  void copy(Tensor dst, Tensor src) override { run([=, this] { inner_->copy(U(dst), U(src)); }); }
  void add(Tensor out, Tensor a, Tensor b) override { run([=, this] { inner_->add(U(out), U(a), U(b)); }); }
  void add_inplace(Tensor y, Tensor x) override { run([=, this] { inner_->add_inplace(U(y), U(x)); }); }
  void scale(Tensor x, float s) override { run([=, this] { inner_->scale(U(x), s); }); }
  double sum_squares(Tensor x) override {
    refuse_in_capture("sum_squares()");
    ++g_host_reads;
    return inner_->sum_squares(U(x));
  }
  double dot(Tensor a, Tensor b) override {
    refuse_in_capture("dot()");
    ++g_host_reads;
    return inner_->dot(U(a), U(b));
  }
  bool all_finite(Tensor x) override {
    refuse_in_capture("all_finite()");
    ++g_host_reads;
    return inner_->all_finite(U(x));
  }
  void matmul(Tensor c, Tensor a, Tensor b, bool trans_a, bool trans_b, float alpha, float beta) override { run([=, this] { inner_->matmul(U(c), U(a), U(b), trans_a, trans_b, alpha, beta); }); }
  void add_bias(Tensor y, Tensor bias) override { run([=, this] { inner_->add_bias(U(y), U(bias)); }); }
  void bias_grad(Tensor dbias, Tensor dy) override { run([=, this] { inner_->bias_grad(U(dbias), U(dy)); }); }
  void matmul_bias_act(Tensor y, Tensor pre, Tensor x, Tensor w, Tensor bias, std::optional<Activation> act) override { run([=, this] { inner_->matmul_bias_act(U(y), U(pre), U(x), U(w), U(bias), act); }); }
  void layernorm_fwd(Tensor out, Tensor mean, Tensor rstd, Tensor x, Tensor weight, Tensor bias, float eps) override { run([=, this] { inner_->layernorm_fwd(U(out), U(mean), U(rstd), U(x), U(weight), U(bias), eps); }); }
  void layernorm_bwd(Tensor dx, Tensor dweight, Tensor dbias, Tensor dout, Tensor x, Tensor weight, Tensor mean, Tensor rstd) override { run([=, this] { inner_->layernorm_bwd(U(dx), U(dweight), U(dbias), U(dout), U(x), U(weight), U(mean), U(rstd)); }); }
  void rmsnorm_fwd(Tensor out, Tensor rstd, Tensor x, Tensor weight, float eps) override { run([=, this] { inner_->rmsnorm_fwd(U(out), U(rstd), U(x), U(weight), eps); }); }
  void rmsnorm_bwd(Tensor dx, Tensor dweight, Tensor dout, Tensor x, Tensor weight, Tensor rstd) override { run([=, this] { inner_->rmsnorm_bwd(U(dx), U(dweight), U(dout), U(x), U(weight), U(rstd)); }); }
  void add_layernorm_fwd(Tensor sum, Tensor out, Tensor mean, Tensor rstd, Tensor a, Tensor b, Tensor weight, Tensor bias, float eps) override { run([=, this] { inner_->add_layernorm_fwd(U(sum), U(out), U(mean), U(rstd), U(a), U(b), U(weight), U(bias), eps); }); }
  void add_rmsnorm_fwd(Tensor sum, Tensor out, Tensor rstd, Tensor a, Tensor b, Tensor weight, float eps) override { run([=, this] { inner_->add_rmsnorm_fwd(U(sum), U(out), U(rstd), U(a), U(b), U(weight), eps); }); }
  void qkv_split(Tensor q, Tensor k, Tensor v, Tensor qkv, int64_t groups, int64_t heads_per_group, int64_t head_dim) override { run([=, this] { inner_->qkv_split(U(q), U(k), U(v), U(qkv), groups, heads_per_group, head_dim); }); }
  void qkv_merge(Tensor dqkv, Tensor dq, Tensor dk, Tensor dv, int64_t groups, int64_t heads_per_group, int64_t head_dim) override { run([=, this] { inner_->qkv_merge(U(dqkv), U(dq), U(dk), U(dv), groups, heads_per_group, head_dim); }); }
  void rope(Tensor x, Tensor positions, int64_t heads, int64_t head_dim, int64_t rotary_dim, float base, bool inverse) override { run([=, this] { inner_->rope(U(x), U(positions), heads, head_dim, rotary_dim, base, inverse); }); }
  void attention_fwd(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) override { run([=, this] { seeded(); inner_->attention_fwd(U(out), U(lse), U(q), U(k), U(v), d); }); }
  void attention_bwd(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, const AttentionDims& d) override { run([=, this] { seeded(); inner_->attention_bwd(U(dq), U(dk), U(dv), U(dout), U(q), U(k), U(v), U(out), U(lse), d); }); }
  void attention_merge(Tensor out, Tensor lse, Tensor part_out, Tensor part_lse, int64_t heads, int64_t head_dim) override { run([=, this] { inner_->attention_merge(U(out), U(lse), U(part_out), U(part_lse), heads, head_dim); }); }
  void activation_fwd(Tensor out, Tensor x, Activation act, bool gated) override { run([=, this] { inner_->activation_fwd(U(out), U(x), act, gated); }); }
  void activation_bwd(Tensor dx, Tensor dout, Tensor x, Activation act, bool gated) override { run([=, this] { inner_->activation_bwd(U(dx), U(dout), U(x), act, gated); }); }
  void dropout_fwd(Tensor out, Tensor x, float p, uint64_t key, int64_t row_offset) override { run([=, this] { seeded(); inner_->dropout_fwd(U(out), U(x), p, key, row_offset); }); }
  void dropout_bwd(Tensor dx, Tensor dout, float p, uint64_t key, int64_t row_offset) override { run([=, this] { seeded(); inner_->dropout_bwd(U(dx), U(dout), p, key, row_offset); }); }
  void embedding_fwd(Tensor out, Tensor ids, Tensor table, int64_t vocab_start, bool accumulate) override { run([=, this] { inner_->embedding_fwd(U(out), U(ids), U(table), vocab_start, accumulate); }); }
  void embedding_bwd(Tensor dtable, Tensor ids, Tensor dout, int64_t vocab_start) override { run([=, this] { inner_->embedding_bwd(U(dtable), U(ids), U(dout), vocab_start); }); }
  void ce_row_max(Tensor row_max, Tensor logits, int64_t vocab_start, int64_t vocab_valid) override { run([=, this] { inner_->ce_row_max(U(row_max), U(logits), vocab_start, vocab_valid); }); }
  void ce_sumexp_target(Tensor sumexp, Tensor target_logit, Tensor logits, Tensor row_max, Tensor targets, int64_t vocab_start, int64_t vocab_valid) override { run([=, this] { inner_->ce_sumexp_target(U(sumexp), U(target_logit), U(logits), U(row_max), U(targets), vocab_start, vocab_valid); }); }
  void ce_loss(Tensor loss, Tensor row_max, Tensor sumexp, Tensor target_logit) override { run([=, this] { inner_->ce_loss(U(loss), U(row_max), U(sumexp), U(target_logit)); }); }
  void ce_bwd(Tensor dlogits, Tensor logits, Tensor row_max, Tensor sumexp, Tensor targets, Tensor grad_scale, int64_t vocab_start, int64_t vocab_valid) override { run([=, this] { inner_->ce_bwd(U(dlogits), U(logits), U(row_max), U(sumexp), U(targets), U(grad_scale), vocab_start, vocab_valid); }); }
  void router_topk(Tensor indices, Tensor probs, Tensor scores, Tensor logits, int64_t k, RouterScore fn, bool pre_softmax) override { run([=, this] { inner_->router_topk(U(indices), U(probs), U(scores), U(logits), k, fn, pre_softmax); }); }
  void router_topk_bwd(Tensor dlogits, Tensor dprobs, Tensor dscores, Tensor logits, Tensor indices, int64_t k, RouterScore fn, bool pre_softmax) override { run([=, this] { inner_->router_topk_bwd(U(dlogits), U(dprobs), U(dscores), U(logits), U(indices), k, fn, pre_softmax); }); }
  void router_lse(Tensor lse, Tensor logits) override { run([=, this] { inner_->router_lse(U(lse), U(logits)); }); }
  void router_z_loss_bwd(Tensor dlogits, Tensor logits, Tensor lse, float scale) override { run([=, this] { inner_->router_z_loss_bwd(U(dlogits), U(logits), U(lse), scale); }); }
  void moe_permute(Tensor x_perm, Tensor x, Tensor rows) override { run([=, this] { inner_->moe_permute(U(x_perm), U(x), U(rows)); }); }
  void moe_permute_bwd(Tensor dx, Tensor dx_perm, Tensor rows) override { run([=, this] { inner_->moe_permute_bwd(U(dx), U(dx_perm), U(rows)); }); }
  void moe_unpermute(Tensor out, Tensor y, Tensor rows, Tensor probs) override { run([=, this] { inner_->moe_unpermute(U(out), U(y), U(rows), U(probs)); }); }
  void moe_unpermute_bwd(Tensor dy, Tensor dprobs, Tensor dout, Tensor y, Tensor rows, Tensor probs) override { run([=, this] { inner_->moe_unpermute_bwd(U(dy), U(dprobs), U(dout), U(y), U(rows), U(probs)); }); }
  void grouped_matmul(Tensor c, Tensor a, Tensor b, const int64_t* counts, int64_t groups, GroupedForm form,
                      float beta) override {
    // The host counts are read when the call is made, as a GPU's launch arguments are.
    std::vector<int64_t> n(counts, counts + (groups > 0 ? groups : 0));
    run([=, this, n = std::move(n)] { inner_->grouped_matmul(U(c), U(a), U(b), n.data(), groups, form, beta); });
  }
  void adamw(Tensor param, Tensor grad, Tensor exp_avg, Tensor exp_avg_sq, const AdamWArgs& a) override { run([=, this] { inner_->adamw(U(param), U(grad), U(exp_avg), U(exp_avg_sq), U(a)); }); }
  void adamw_multi(const AdamWTensor* tensors, int64_t count, const AdamWArgs& a) override {
    MPT_CHECK(count >= 0 && (count == 0 || tensors != nullptr), Status::kInvalidArgument, "adamw_multi: ", count,
              " pieces", tensors ? "" : " and no table");
    if (!capturing_) {
      inner_->adamw_multi(untagged(tensors, count), count, U(a));
      return;
    }
    // The table is read when the call is made, as a GPU's launch arguments are.
    std::vector<AdamWTensor> table(tensors, tensors + count);
    run([=, this, table = std::move(table)] { inner_->adamw_multi(untagged(table.data(), count), count, U(a)); });
  }
  // On the device: no host read, and recorded like any op while capturing.
  void sum_squares_acc(Tensor acc, Tensor x) override { run([=, this] { inner_->sum_squares_acc(U(acc), U(x)); }); }
  void grad_clip_factor(Tensor factor, Tensor sumsq, double max_norm) override { run([=, this] { inner_->grad_clip_factor(U(factor), U(sumsq), max_norm); }); }

 private:
  // Hands the seed as it is now to the CPU ops about to run.
  void seeded() { inner_->set_dropout_seed(dropout_seed_); }
  // adamw_multi's table with its memory untagged, in a buffer kept between calls (a step
  // allocates nothing).
  const AdamWTensor* untagged(const AdamWTensor* tensors, int64_t count) {
    multi_table_.assign(tensors, tensors + count);
    for (AdamWTensor& x : multi_table_) {
      x.param = U(x.param), x.grad = U(x.grad), x.exp_avg = U(x.exp_avg), x.exp_avg_sq = U(x.exp_avg_sq);
      x.compute_copy = U(x.compute_copy);
    }
    return multi_table_.data();
  }
  // Runs an op now, or records it while capturing.
  template <class F>
  void run(F&& f) {
    if (capturing_)
      recording_.emplace_back(std::forward<F>(f));
    else
      f();
  }
  // A call a replay could not repeat: refused while capturing, and the capture spoiled.
  void refuse_in_capture(const std::string& call) {
    if (!capturing_) return;
    if (spoiled_.empty()) spoiled_ = call;
    fail(Status::kInternal, "cpu-device: ", call, " during graph capture: a replay could not repeat it");
  }

  std::unique_ptr<Ops> inner_;
  bool capturing_ = false;
  std::vector<Call> recording_;
  std::string spoiled_;  // the first refused call of this capture
  std::vector<void*> released_;  // memory released during this capture
  std::vector<AdamWTensor> multi_table_;  // see untagged()
};

}  // namespace

int64_t emulated_device_host_reads() { return g_host_reads.load(); }
int64_t emulated_device_graph_replays() { return g_graph_replays.load(); }

std::unique_ptr<Ops> make_emulated_device_ops(int num_threads) {
  return std::make_unique<EmulatedDeviceOps>(num_threads);
}

}  // namespace mpt::backend
