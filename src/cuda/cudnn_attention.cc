// cuDNN's fused scaled-dot-product attention (the graph API through cudnn-frontend), forward and
// backward, on bf16 tensors with fp32 softmax statistics, for the CUDA backend.
//
// Layout: the engine's q [seq_q * B, heads * D] (token t = s * B + b) is cuDNN's [B, H, S, D]
// with strides (H*D, D, B*H*D, 1); k and v likewise with the groups as cuDNN's K/V heads (GQA,
// MQA). The lse [seq_q * B, heads] is cuDNN's Stats [B, H, S, 1] with strides (H, 1, B*H, 1),
// written and read in place where this cuDNN honours such strides (forward 9.12+, backward
// 9.26+, as the frontend checks); otherwise through a packed [B, H, S] copy in scratch.
// Causal: bottom-right aligned (the queries are the last seq_q keys), as ops.h defines it.
//
// One plan per shape, built at its first call and cached (a shape cuDNN cannot serve is cached
// with the reason, and declined). The workspace comes from the backend's scratch area, so a step
// allocates nothing and a graph capture records the same memory; a plan is never built while
// capturing (the warm-up steps build them).
#include <cudnn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

#include "core/error.h"
#include "cuda/cuda_ops.h"
#include "cuda/fused_attention.h"

namespace mpt::cuda {
namespace {

namespace fe = cudnn_frontend;
using backend::AttentionDims;
using Dims = std::vector<int64_t>;

enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

constexpr size_t kAlign = 256;  // of the packed Stats copy and the workspace inside scratch
size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

enum class Determinism { kPrefer, kRequire, kAny };

Determinism determinism_from_env() {
  const char* v = std::getenv("MPT_ATTENTION_DETERMINISTIC");
  if (v == nullptr || *v == '\0') return Determinism::kPrefer;
  if (std::strcmp(v, "1") == 0) return Determinism::kRequire;
  if (std::strcmp(v, "0") == 0) return Determinism::kAny;
  fail(Status::kInvalidArgument, "MPT_ATTENTION_DETERMINISTIC='", v, "': expected 1 (required) or 0 (not required)");
}

// A plan's cache key: its shape, the scale by its bits. The pointers are not part of it: they
// go in at execution.
struct PlanKey {
  AttentionPlanShape s;
  uint32_t scale_bits = 0;
  auto tied() const {
    return std::tie(s.backward, s.batch, s.heads, s.groups, s.seq_q, s.seq_kv, s.head_dim, s.causal, scale_bits,
                    s.packed_stats, s.deterministic);
  }
  bool operator<(const PlanKey& o) const { return tied() < o.tied(); }
};

// The graph of one call in the engine's layouts (the file's header comment); sm > 0 names the
// GPU generation (no device needed), 0 takes the current device's.
std::shared_ptr<fe::graph::Graph> describe_graph(const AttentionPlanShape& k, int sm) {
  const int64_t B = k.batch, H = k.heads, G = k.groups, D = k.head_dim;
  const Dims q_dim = {B, H, k.seq_q, D}, q_stride = {H * D, D, B * H * D, 1};
  const Dims kv_dim = {B, G, k.seq_kv, D}, kv_stride = {G * D, D, B * G * D, 1};
  const Dims stats_dim = {B, H, k.seq_q, 1};
  const Dims stats_stride = k.packed_stats ? Dims{H * k.seq_q, k.seq_q, 1, 1} : Dims{H, 1, B * H, 1};

  auto graph = std::make_shared<fe::graph::Graph>();
  if (sm > 0) graph->set_sm_version(sm);  // before any node: nodes copy the graph's context
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  auto tensor = [&](const char* name, int64_t uid, const Dims& dim, const Dims& stride) {
    return graph->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dim).set_stride(stride));
  };
  auto q = tensor("Q", kQ, q_dim, q_stride);
  auto kk = tensor("K", kK, kv_dim, kv_stride);
  auto v = tensor("V", kV, kv_dim, kv_stride);
  // Square causal blocks take the common top-left form (the same mask when seq_q == seq_kv).
  const bool top_left = k.seq_q == k.seq_kv;
  if (!k.backward) {
    auto opts = fe::graph::SDPA_attributes().set_name("mpt_attention_fwd").set_generate_stats(true).set_attn_scale(k.scale);
    if (k.causal) {
      if (top_left) opts.set_causal_mask(true);
      else opts.set_causal_mask_bottom_right(true);
    }
    auto [o, stats] = graph->sdpa(q, kk, v, opts);
    o->set_output(true).set_uid(kO).set_dim(q_dim).set_stride(q_stride);
    stats->set_output(true).set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim(stats_dim).set_stride(stats_stride);
  } else {
    auto o = tensor("O", kO, q_dim, q_stride);
    auto d_o = tensor("dO", kDO, q_dim, q_stride);
    auto stats = graph->tensor(fe::graph::Tensor_attributes()
                                   .set_name("Stats")
                                   .set_uid(kStats)
                                   .set_dim(stats_dim)
                                   .set_stride(stats_stride)
                                   .set_data_type(fe::DataType_t::FLOAT));
    auto opts = fe::graph::SDPA_backward_attributes().set_name("mpt_attention_bwd").set_attn_scale(k.scale);
    if (k.causal) {
      if (top_left) opts.set_causal_mask(true);
      else opts.set_causal_mask_bottom_right(true);
    }
    if (k.deterministic) opts.set_deterministic_algorithm(true);
    auto [dq, dk, dv] = graph->sdpa_backward(q, kk, v, o, d_o, stats, opts);
    dq->set_output(true).set_uid(kDQ).set_dim(q_dim).set_stride(q_stride);
    dk->set_output(true).set_uid(kDK).set_dim(kv_dim).set_stride(kv_stride);
    dv->set_output(true).set_uid(kDV).set_dim(kv_dim).set_stride(kv_stride);
  }
  return graph;
}

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;  // null when cuDNN declined (why)
  std::string why;
  int64_t workspace = 0;
};

// What a call resolved to: the plan and how Stats travels.
struct Resolved {
  const Plan* plan = nullptr;
  bool packed_stats = false;
  bool deterministic = false;
};

bool bf16(const Tensor& t) { return t.dtype == DType::kBF16; }
bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data) % 16 == 0; }

class CudnnAttention final : public FusedAttention {
 public:
  CudnnAttention(CudaOps& ops, cudnnHandle_t handle) : ops_(ops), handle_(handle), determinism_(determinism_from_env()) {
    const size_t v = cudnnGetVersion();
    version_ = str(v / 10000, ".", (v % 10000) / 100, ".", v % 100);
  }
  ~CudnnAttention() override {
    plans_.clear();  // the graphs hold plans of this handle
    cudnnDestroy(handle_);
  }

  bool forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, const AttentionDims& d) override {
    if (!call_allowed(d, {&q, &k, &v, &out})) return false;
    const Resolved r = resolve(false, d);
    if (r.plan == nullptr) return false;
    const int64_t stats_n = d.seq_q * d.batch * d.heads;
    const size_t stats_bytes = round_up(r.packed_stats ? stats_n * sizeof(float) : 0);
    char* base = static_cast<char*>(ops_.scratch(stats_bytes + static_cast<size_t>(r.plan->workspace)));
    float* stats = r.packed_stats ? reinterpret_cast<float*>(base) : lse.f();
    void* workspace = base + stats_bytes;
    std::unordered_map<int64_t, void*> pack = {{kQ, q.data}, {kK, k.data}, {kV, v.data}, {kO, out.data}, {kStats, stats}};
    execute(*r.plan, pack, workspace, "forward");
    if (r.packed_stats) lse_from_bhs(lse.f(), stats, d.seq_q, d.batch, d.heads, ops_.stream());
    return true;
  }

  bool backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,
                const AttentionDims& d) override {
    if (!call_allowed(d, {&q, &k, &v, &out, &dout, &dq, &dk, &dv})) return false;
    const Resolved r = resolve(true, d);
    if (r.plan == nullptr) return false;
    const int64_t stats_n = d.seq_q * d.batch * d.heads;
    const size_t stats_bytes = round_up(r.packed_stats ? stats_n * sizeof(float) : 0);
    char* base = static_cast<char*>(ops_.scratch(stats_bytes + static_cast<size_t>(r.plan->workspace)));
    float* stats = lse.f();
    if (r.packed_stats) {
      stats = reinterpret_cast<float*>(base);
      lse_to_bhs(stats, lse.f(), d.seq_q, d.batch, d.heads, ops_.stream());
    }
    std::unordered_map<int64_t, void*> pack = {{kQ, q.data},   {kK, k.data},   {kV, v.data},
                                               {kO, out.data}, {kStats, stats}, {kDO, dout.data},
                                               {kDQ, dq.data}, {kDK, dk.data}, {kDV, dv.data}};
    execute(*r.plan, pack, base + stats_bytes, "backward");
    return true;
  }

  bool serves(const AttentionDims& d, DType dtype) override {
    if (dtype != DType::kBF16) {
      why_ = "cuDNN attention runs on bf16 tensors; these are f32";
      return false;
    }
    if (!dims_allowed(d)) return false;
    const Resolved f = resolve(false, d), b = resolve(true, d);
    if (f.plan == nullptr || b.plan == nullptr) return false;
    backward_deterministic_ = b.deterministic;
    return true;
  }

  const std::string& why_not() const override { return why_; }

  std::string describe() const override {
    std::string s = str("cuDNN ", version_, " fused attention");
    if (backward_deterministic_) s += *backward_deterministic_ ? " (deterministic backward)" : " (non-deterministic backward)";
    return s;
  }

 private:
  bool dims_allowed(const AttentionDims& d) {
    if (d.dropout_p > 0) {
      why_ = "attention dropout (its masks must equal the CPU backend's)";
      return false;
    }
    return true;
  }

  bool call_allowed(const AttentionDims& d, std::initializer_list<const Tensor*> tensors) {
    if (!dims_allowed(d)) return false;
    for (const Tensor* t : tensors) {
      if (!bf16(*t)) {
        why_ = "cuDNN attention runs on bf16 tensors; this call has an f32 one";
        return false;
      }
      if (!aligned16(*t)) {
        why_ = "a tensor is not 16-byte aligned";
        return false;
      }
    }
    return true;
  }

  // The plan for a call: Stats in place where cuDNN allows it, else packed; the backward
  // deterministic as determinism_ asks. Null (why_ set) when no variant is served.
  Resolved resolve(bool backward, const AttentionDims& d) {
    std::vector<bool> det_options = {false};
    if (backward) {
      switch (determinism_) {
        case Determinism::kPrefer: det_options = {true, false}; break;
        case Determinism::kRequire: det_options = {true}; break;
        case Determinism::kAny: det_options = {false}; break;
      }
    }
    std::string first_why;
    for (bool det : det_options)
      for (bool packed : {false, true}) {
        PlanKey key;
        key.s.backward = backward;
        key.s.batch = d.batch;
        key.s.heads = d.heads;
        key.s.groups = d.groups;
        key.s.seq_q = d.seq_q;
        key.s.seq_kv = d.seq_kv;
        key.s.head_dim = d.head_dim;
        key.s.causal = d.causal;
        key.s.scale = d.softmax_scale;
        key.s.packed_stats = packed;
        key.s.deterministic = det;
        std::memcpy(&key.scale_bits, &d.softmax_scale, sizeof(float));
        const Plan& p = plan(key);
        if (p.graph) return Resolved{&p, packed, det};
        if (first_why.empty()) first_why = p.why;
      }
    why_ = str("cuDNN ", version_, " declined the ", backward ? "backward" : "forward", " of [batch ", d.batch,
               ", heads ", d.heads, ", groups ", d.groups, ", seq_q ", d.seq_q, ", seq_kv ", d.seq_kv, ", head_dim ",
               d.head_dim, d.causal ? ", causal" : "", "]: ", first_why);
    return Resolved{};
  }

  const Plan& plan(const PlanKey& key) {
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;
    if (ops_.capturing())
      ops_.refuse_in_capture("a cuDNN attention plan for a new shape",
                             "plans are built at a shape's first call, which must come before the capture");
    Plan p = build(key.s);
    return plans_.emplace(key, std::move(p)).first->second;
  }

  Plan build(const AttentionPlanShape& k) {
    std::shared_ptr<fe::graph::Graph> graph = describe_graph(k, 0);
    Plan p;
    fe::error_t built = graph->build(handle_, {fe::HeurMode_t::A});
    if (!built.is_good()) {
      p.why = built.get_message();
      return p;
    }
    fe::error_t sized = graph->get_workspace_size(p.workspace);
    if (!sized.is_good()) {
      p.why = sized.get_message();
      return p;
    }
    p.graph = std::move(graph);
    return p;
  }

  void execute(const Plan& p, std::unordered_map<int64_t, void*>& pack, void* workspace, const char* which) {
    fe::error_t run = p.graph->execute(handle_, pack, workspace);
    MPT_CHECK(run.is_good(), Status::kDevice, ops_.name(), ": cuDNN attention ", which, " failed: ", run.get_message());
  }

  CudaOps& ops_;
  cudnnHandle_t handle_;
  Determinism determinism_;
  std::string version_;
  std::string why_;
  std::optional<bool> backward_deterministic_;  // known once serves() found a backward plan
  std::map<PlanKey, Plan> plans_;
};

}  // namespace

bool cudnn_attention_built() { return true; }

std::string check_cudnn_attention_graph(const AttentionPlanShape& shape, int sm) {
  MPT_CHECK(sm > 0, Status::kInvalidArgument, "check_cudnn_attention_graph: sm ", sm, " must name a GPU generation");
  std::shared_ptr<fe::graph::Graph> graph = describe_graph(shape, sm);
  fe::error_t checked = graph->validate();
  if (!checked.is_good()) return checked.get_message();
  fe::error_t lowered = graph->build_operation_graph(nullptr);
  return lowered.is_good() ? std::string() : lowered.get_message();
}

std::unique_ptr<FusedAttention> make_cudnn_attention(CudaOps& ops, std::string& why) {
  const size_t version = cudnnGetVersion();
  if (version < 90000) {
    why = str("cuDNN ", version, " is loaded; fused attention needs cuDNN 9");
    return nullptr;
  }
  cudnnHandle_t handle = nullptr;
  const cudnnStatus_t created = cudnnCreate(&handle);
  if (created != CUDNN_STATUS_SUCCESS) {
    why = str("cudnnCreate failed: ", cudnnGetErrorString(created));
    return nullptr;
  }
  const cudnnStatus_t bound = cudnnSetStream(handle, ops.stream());
  if (bound != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(handle);
    why = str("cudnnSetStream failed: ", cudnnGetErrorString(bound));
    return nullptr;
  }
  return std::make_unique<CudnnAttention>(ops, handle);
}

}  // namespace mpt::cuda
