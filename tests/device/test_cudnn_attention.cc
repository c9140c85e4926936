// cuDNN's fused attention behind the CUDA backend (src/cuda/cudnn_attention.cc) against the CPU
// oracle on bf16 tensors: MHA, GQA and MQA, causal (square and bottom-right, fewer queries
// than keys) and full masks, the head sizes LLaMA and GPT use; the context-parallel use (key
// blocks merged by log-sum-exp, their backward on the whole attention's out and lse); which
// attention a shape gets and why (MPT_ATTENTION); replays of a recorded graph; repeats.
//
// Tolerance: cuDNN rounds the probabilities to bf16 before P.V and the score gradients before
// the dq/dk products (as flash attention does), where the oracle keeps fp32 and rounds each
// output once; the difference stays within a few bf16 ulps of each tensor's scale.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "cuda/fused_attention.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::AttentionDims;

constexpr DType kB = DType::kBF16, kF = DType::kF32;

// A GPU, and a build with cuDNN attention (CMake found cuDNN and the frontend's headers).
#if defined(MPT_HAVE_CUDNN)
#define MPT_SKIP_WITHOUT_CUDNN() MPT_SKIP_WITHOUT_GPU()
#else
#define MPT_SKIP_WITHOUT_CUDNN() GTEST_SKIP() << "this build has no cuDNN attention"
#endif
constexpr double kTol = 3e-2;

// Sets an environment variable for the scope (restoring what was there).
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

std::string label(const AttentionDims& d) {
  return "sq " + std::to_string(d.seq_q) + " skv " + std::to_string(d.seq_kv) + " B " + std::to_string(d.batch) +
         " H " + std::to_string(d.heads) + " G " + std::to_string(d.groups) + " D " + std::to_string(d.head_dim) +
         (d.causal ? " causal" : " full");
}

// The device values match the CPU's (in p.host) within kTol of the tensor's scale.
void expect_matches_cpu(const Pair& p, const std::string& what) {
  const std::vector<float> got = device_values(p), want = host_values(p);
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_TRUE(std::isfinite(got[i])) << what << ": element " << i << " is " << got[i] << " on the GPU";
  const double e = scaled_error(got, want.data(), got.size());
  EXPECT_LE(e, kTol) << what << ": the GPU differs from the CPU by " << e << " (scaled)";
}

struct Problem {
  AttentionDims d;
  std::unique_ptr<Pair> q, k, v, out, lse, dout, dq, dk, dv;
  Problem(Backends& b, const AttentionDims& dd, uint64_t seed) : d(dd) {
    const int64_t tq = d.seq_q * d.batch, tk = d.seq_kv * d.batch;
    const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
    q = make_tensor(b, kB, {tq, hd}, seed);
    k = make_tensor(b, kB, {tk, gd}, seed + 1);
    v = make_tensor(b, kB, {tk, gd}, seed + 2);
    out = make_tensor(b, kB, {tq, hd}, seed + 3);  // random: the op must overwrite every element
    lse = make_tensor(b, kF, {tq, d.heads}, seed + 4);
    dout = make_tensor(b, kB, {tq, hd}, seed + 5);
    dq = make_tensor(b, kB, {tq, hd}, seed + 6);
    dk = make_tensor(b, kB, {tk, gd}, seed + 7);
    dv = make_tensor(b, kB, {tk, gd}, seed + 8);
  }
  void forward(backend::Ops& ops, bool gpu) {
    if (gpu) ops.attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), d);
    else ops.attention_fwd(out->cpu(), lse->cpu(), q->cpu(), k->cpu(), v->cpu(), d);
  }
  void backward(backend::Ops& ops, bool gpu) {
    if (gpu)
      ops.attention_bwd(dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), dout->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(),
                        out->gpu_t(), lse->gpu_t(), d);
    else
      ops.attention_bwd(dq->cpu(), dk->cpu(), dv->cpu(), dout->cpu(), q->cpu(), k->cpu(), v->cpu(), out->cpu(),
                        lse->cpu(), d);
  }
};

// The summary must name cuDNN: otherwise these tests would compare the own kernel.
void expect_cudnn(Backends& b, const AttentionDims& d) {
  const std::string s = b.gpu->attention_summary(d, kB);
  ASSERT_NE(s.find("cuDNN"), std::string::npos) << label(d) << ": " << s;
  ASSERT_EQ(s.find("mptrain's"), std::string::npos) << label(d) << ": " << s;
}

void check_problem(Backends& b, const AttentionDims& d, uint64_t seed) {
  SCOPED_TRACE(label(d));
  expect_cudnn(b, d);
  Problem p(b, d, seed);
  p.forward(*b.gpu, true);
  p.forward(*b.cpu, false);
  expect_matches_cpu(*p.out, "out");
  expect_matches_cpu(*p.lse, "lse");
  p.out->upload();  // the backward on the CPU's out and lse, on both
  p.lse->upload();
  p.backward(*b.gpu, true);
  p.backward(*b.cpu, false);
  expect_matches_cpu(*p.dq, "dq");
  expect_matches_cpu(*p.dk, "dk");
  expect_matches_cpu(*p.dv, "dv");
}

TEST(CudnnAttention, MatchesTheCpu) {
  MPT_SKIP_WITHOUT_CUDNN();
  ScopedEnv choice("MPT_ATTENTION", "cudnn");  // a declined call is an error, not the own kernel
  Backends b;
  // seq_q, seq_kv, batch, heads, groups, head_dim, causal
  check_problem(b, attention_dims(256, 256, 2, 8, 2, 128, true), 1);   // LLaMA-like GQA
  check_problem(b, attention_dims(200, 200, 2, 4, 4, 64, true), 11);   // GPT-2-like MHA, length off the tiles
  check_problem(b, attention_dims(129, 129, 3, 6, 1, 64, true), 21);   // MQA
  check_problem(b, attention_dims(96, 160, 2, 4, 2, 128, false), 31);  // full mask, more keys
  check_problem(b, attention_dims(64, 192, 2, 4, 2, 64, true), 41);    // bottom-right: the last 64 of 192
  check_problem(b, attention_dims(1, 77, 2, 4, 2, 128, true), 51);     // one query sees every key
}

// Context parallelism: keys in two blocks (the earlier ones in full, the diagonal causal),
// merged by log-sum-exp, give the whole call's out and lse; each block's backward on the whole
// attention's out and lse gives its share, and the dq shares sum to the whole dq.
TEST(CudnnAttention, KeyBlocksMergeToTheWhole) {
  MPT_SKIP_WITHOUT_CUDNN();
  ScopedEnv choice("MPT_ATTENTION", "cudnn");
  Backends b;
  const int64_t S = 128, half = 64, B = 2, H = 4, G = 2, D = 128;
  Problem whole(b, attention_dims(half, S, B, H, G, D, true), 61);  // the last `half` queries, every key
  whole.forward(*b.cpu, false);
  whole.backward(*b.cpu, false);
  // Block 0: keys [0, half) in full; block 1: keys [half, S), causal (square).
  const int64_t tk = half * B, gd = G * D, tq = half * B, hd = H * D;
  auto k0 = make_tensor(b, kB, {tk, gd}), k1 = make_tensor(b, kB, {tk, gd}), v0 = make_tensor(b, kB, {tk, gd}),
       v1 = make_tensor(b, kB, {tk, gd});
  for (auto [dst, src, first] : {std::tuple{k0.get(), whole.k.get(), 0L}, std::tuple{k1.get(), whole.k.get(), half},
                                 std::tuple{v0.get(), whole.v.get(), 0L}, std::tuple{v1.get(), whole.v.get(), half}})
    b.gpu->device_copy(dst->dev, static_cast<uint8_t*>(src->dev) + first * B * gd * 2,
                       static_cast<size_t>(tk * gd * 2));
  const AttentionDims full = attention_dims(half, half, B, H, G, D, false),
                      diag = attention_dims(half, half, B, H, G, D, true);
  expect_cudnn(b, full);
  expect_cudnn(b, diag);
  auto out = make_tensor(b, kB, {tq, hd}), lse = make_tensor(b, kF, {tq, H});
  auto part = make_tensor(b, kB, {tq, hd}), part_lse = make_tensor(b, kF, {tq, H});
  b.gpu->attention_fwd(out->gpu_t(), lse->gpu_t(), whole.q->gpu_t(), k0->gpu_t(), v0->gpu_t(), full);
  b.gpu->attention_fwd(part->gpu_t(), part_lse->gpu_t(), whole.q->gpu_t(), k1->gpu_t(), v1->gpu_t(), diag);
  b.gpu->attention_merge(out->gpu_t(), lse->gpu_t(), part->gpu_t(), part_lse->gpu_t(), H, D);
  out->host = whole.out->host;
  lse->host = whole.lse->host;
  expect_matches_cpu(*out, "merged out");
  expect_matches_cpu(*lse, "merged lse");
  // The backward of each block on the CPU's whole out and lse.
  out->upload();
  lse->upload();
  auto dq0 = make_tensor(b, kB, {tq, hd}), dq1 = make_tensor(b, kB, {tq, hd});
  auto dk0 = make_tensor(b, kB, {tk, gd}), dk1 = make_tensor(b, kB, {tk, gd}), dv0 = make_tensor(b, kB, {tk, gd}),
       dv1 = make_tensor(b, kB, {tk, gd});
  b.gpu->attention_bwd(dq0->gpu_t(), dk0->gpu_t(), dv0->gpu_t(), whole.dout->gpu_t(), whole.q->gpu_t(), k0->gpu_t(),
                       v0->gpu_t(), out->gpu_t(), lse->gpu_t(), full);
  b.gpu->attention_bwd(dq1->gpu_t(), dk1->gpu_t(), dv1->gpu_t(), whole.dout->gpu_t(), whole.q->gpu_t(), k1->gpu_t(),
                       v1->gpu_t(), out->gpu_t(), lse->gpu_t(), diag);
  const std::vector<float> a = device_values(*dq0), c = device_values(*dq1);
  std::vector<float> dq(a.size());
  for (size_t i = 0; i < a.size(); ++i) dq[i] = a[i] + c[i];
  const std::vector<float> want_dq = host_values(*whole.dq);
  EXPECT_LE(scaled_error(dq, want_dq.data(), dq.size()), kTol) << "dq of the two blocks summed";
  // dk, dv: each block's rows of the whole.
  const std::vector<float> want_dk = host_values(*whole.dk), want_dv = host_values(*whole.dv);
  const size_t rows = static_cast<size_t>(tk * gd);
  EXPECT_LE(scaled_error(device_values(*dk0), want_dk.data(), rows), kTol) << "dk block 0";
  EXPECT_LE(scaled_error(device_values(*dk1), want_dk.data() + rows, rows), kTol) << "dk block 1";
  EXPECT_LE(scaled_error(device_values(*dv0), want_dv.data(), rows), kTol) << "dv block 0";
  EXPECT_LE(scaled_error(device_values(*dv1), want_dv.data() + rows, rows), kTol) << "dv block 1";
}

// What a shape gets and why, as the run's first log line says it.
TEST(CudnnAttention, SummaryNamesTheAttentionAndWhy) {
  MPT_SKIP_WITHOUT_CUDNN();
  {
    Backends b;
    const AttentionDims llama = attention_dims(2048, 2048, 1, 16, 4, 128, true);
    EXPECT_NE(b.gpu->attention_summary(llama, kB).find("cuDNN"), std::string::npos);
    const std::string f32 = b.gpu->attention_summary(llama, kF);
    EXPECT_NE(f32.find("mptrain's"), std::string::npos) << f32;
    EXPECT_NE(f32.find("bf16"), std::string::npos) << f32;
    AttentionDims dropout = llama;
    dropout.dropout_p = 0.1f;
    const std::string dr = b.gpu->attention_summary(dropout, kB);
    EXPECT_NE(dr.find("dropout"), std::string::npos) << dr;
  }
  {
    ScopedEnv choice("MPT_ATTENTION", "kernel");
    Backends b;
    const std::string s = b.gpu->attention_summary(attention_dims(64, 64, 1, 2, 2, 64, true), kB);
    EXPECT_NE(s.find("MPT_ATTENTION=kernel"), std::string::npos) << s;
  }
  {
    ScopedEnv choice("MPT_ATTENTION", "cudnn");
    Backends b;
    AttentionDims d = attention_dims(64, 64, 1, 2, 2, 64, true);
    d.dropout_p = 0.1f;
    expect_error([&] { b.gpu->attention_summary(d, kB); }, Status::kNotSupported, {"MPT_ATTENTION=cudnn", "dropout"});
  }
  {
    ScopedEnv choice("MPT_ATTENTION", "flash");
    expect_error([&] { Backends b; }, Status::kInvalidArgument, {"MPT_ATTENTION='flash'", "auto, cudnn or kernel"});
  }
}

// Calls cuDNN declines run on the own kernel under "auto" and still match the CPU.
TEST(CudnnAttention, DeclinedCallsRunOnTheOwnKernel) {
  MPT_SKIP_WITHOUT_CUDNN();
  Backends b;
  AttentionDims d = attention_dims(65, 65, 2, 4, 2, 40, true);  // head_dim 40: not a multiple of 16
  SCOPED_TRACE(label(d));
  Problem p(b, d, 71);
  p.forward(*b.gpu, true);
  p.forward(*b.cpu, false);
  expect_matches_cpu(*p.out, "out");
  expect_matches_cpu(*p.lse, "lse");
}

// A recorded graph replays the fused attention on new inputs as an eager call does; a shape
// first seen during the capture is refused (its plan is built at its first call).
TEST(CudnnAttention, GraphReplays) {
  MPT_SKIP_WITHOUT_CUDNN();
  ScopedEnv choice("MPT_ATTENTION", "cudnn");
  Backends b;
  const AttentionDims d = attention_dims(128, 128, 2, 8, 2, 128, true);
  Problem p(b, d, 81);
  p.forward(*b.gpu, true);  // builds the plans and sizes the workspace
  p.backward(*b.gpu, true);
  b.gpu->begin_capture();
  p.forward(*b.gpu, true);
  p.backward(*b.gpu, true);
  std::unique_ptr<backend::Graph> g = b.gpu->end_capture();
  ASSERT_TRUE(g);
  Problem fresh(b, d, 91);  // new values into the recorded buffers
  for (auto [dst, src] : {std::pair{p.q.get(), fresh.q.get()}, std::pair{p.k.get(), fresh.k.get()},
                          std::pair{p.v.get(), fresh.v.get()}, std::pair{p.dout.get(), fresh.dout.get()}})
    b.gpu->device_copy(dst->dev, src->dev, dst->host.size());
  g->replay();
  fresh.forward(*b.gpu, true);
  fresh.backward(*b.gpu, true);
  for (auto [a, c] : {std::pair{p.out.get(), fresh.out.get()}, std::pair{p.lse.get(), fresh.lse.get()},
                      std::pair{p.dq.get(), fresh.dq.get()}, std::pair{p.dk.get(), fresh.dk.get()},
                      std::pair{p.dv.get(), fresh.dv.get()}}) {
    a->host = device_bytes(*c);
    expect_matches_cpu(*a, "replay against eager");
  }
  Problem other(b, attention_dims(96, 96, 2, 8, 2, 128, true), 101);
  b.gpu->begin_capture();
  expect_error([&] { other.forward(*b.gpu, true); }, Status::kInternal, {"cuDNN attention plan", "before the capture"});
  expect_error([&] { b.gpu->end_capture(); }, Status::kInternal, {"cuDNN attention plan"});
}

// The same call twice gives the same bits when the backward is deterministic (the summary
// says which it is: cuDNN releases before the Hopper deterministic backward have none).
TEST(CudnnAttention, RepeatsBitForBitWhenDeterministic) {
  MPT_SKIP_WITHOUT_CUDNN();
  ScopedEnv choice("MPT_ATTENTION", "cudnn");
  Backends b;
  const AttentionDims d = attention_dims(512, 512, 2, 8, 2, 128, true);
  const std::string s = b.gpu->attention_summary(d, kB);
  Problem p(b, d, 111);
  std::vector<uint8_t> first;
  for (int run = 0; run < 3; ++run) {
    p.forward(*b.gpu, true);
    p.backward(*b.gpu, true);
    std::vector<uint8_t> got;
    for (const Pair* t : {p.out.get(), p.lse.get(), p.dq.get(), p.dk.get(), p.dv.get()}) {
      const std::vector<uint8_t> bytes = device_bytes(*t);
      got.insert(got.end(), bytes.begin(), bytes.end());
    }
    if (run == 0) {
      first = got;
    } else if (s.find("(deterministic backward)") != std::string::npos) {
      EXPECT_EQ(got, first) << "run " << run << ": " << s;
    }
  }
  // With determinism required, a backward cuDNN cannot make deterministic is declined (and
  // the own kernel, deterministic, runs it).
  ScopedEnv any("MPT_ATTENTION", "auto");
  ScopedEnv det("MPT_ATTENTION_DETERMINISTIC", "1");
  Backends strict;
  const std::string t = strict.gpu->attention_summary(d, kB);
  EXPECT_EQ(t.find("non-deterministic"), std::string::npos) << t;
}

}  // namespace
}  // namespace mpt::device_testing

namespace mpt::device_testing {
namespace {

// --- the graphs, checked without a GPU --------------------------------------------------------
// The frontend's rules for Hopper (sm_90) and cuDNN's lowering run on the CPU, so every
// machine that builds this checks the graphs the benchmark models' calls would build: their
// layouts, masks, GQA, the Stats layout and its packed fallback.

cuda::AttentionPlanShape plan_shape(bool backward, const AttentionDims& d, bool packed, bool deterministic) {
  cuda::AttentionPlanShape s;
  s.backward = backward;
  s.batch = d.batch;
  s.heads = d.heads;
  s.groups = d.groups;
  s.seq_q = d.seq_q;
  s.seq_kv = d.seq_kv;
  s.head_dim = d.head_dim;
  s.causal = d.causal;
  s.scale = d.softmax_scale;
  s.packed_stats = packed;
  s.deterministic = deterministic;
  return s;
}

#if defined(MPT_HAVE_CUDNN)
#define MPT_SKIP_WITHOUT_CUDNN_BUILD() (void)0
#else
#define MPT_SKIP_WITHOUT_CUDNN_BUILD() GTEST_SKIP() << "this build has no cuDNN attention"
#endif

TEST(CudnnAttentionGraphs, TheBenchmarkCallsPassTheFrontendsHopperRules) {
  MPT_SKIP_WITHOUT_CUDNN_BUILD();
  ASSERT_TRUE(cuda::cudnn_attention_built());
  // LLaMA ~1B (micro-batch 8, seq 2048, 16 heads in 4 groups of 128), GPT-2 (12 heads of 64,
  // seq 1024), a context-parallel block pair (full and diagonal) and a bottom-right call.
  const AttentionDims calls[] = {
      attention_dims(2048, 2048, 8, 16, 4, 128, true), attention_dims(1024, 1024, 8, 12, 12, 64, true),
      attention_dims(512, 512, 8, 16, 4, 128, false), attention_dims(512, 512, 8, 16, 4, 128, true),
      attention_dims(256, 1024, 2, 8, 1, 128, true)};
  for (const AttentionDims& d : calls) {
    SCOPED_TRACE(label(d));
    // The forward writes Stats straight into the engine's lse (cuDNN 9.12+) and packed.
    EXPECT_EQ(cuda::check_cudnn_attention_graph(plan_shape(false, d, false, false), 90), "");
    EXPECT_EQ(cuda::check_cudnn_attention_graph(plan_shape(false, d, true, false), 90), "");
    // The backward reads a packed Stats on every cuDNN 9; the engine's layout from 9.26 on.
    EXPECT_EQ(cuda::check_cudnn_attention_graph(plan_shape(true, d, true, false), 90), "");
    EXPECT_EQ(cuda::check_cudnn_attention_graph(plan_shape(true, d, true, true), 90), "");
    const std::string direct = cuda::check_cudnn_attention_graph(plan_shape(true, d, false, false), 90);
    if (!direct.empty()) {
      EXPECT_NE(direct.find("packed BHSD"), std::string::npos) << direct;
    }
  }
}

// The checks are real: shapes the fused kernels do not take are refused, naming why.
TEST(CudnnAttentionGraphs, ShapesCudnnDoesNotTakeAreRefused) {
  MPT_SKIP_WITHOUT_CUDNN_BUILD();
  const std::string odd =
      cuda::check_cudnn_attention_graph(plan_shape(false, attention_dims(64, 64, 2, 4, 2, 36, true), false, false), 90);
  EXPECT_NE(odd, "") << "head_dim 36";
  EXPECT_NE(odd.find("hidden_dim"), std::string::npos) << odd;
  expect_error([] { cuda::check_cudnn_attention_graph(cuda::AttentionPlanShape{}, 0); }, Status::kInvalidArgument,
               {"sm 0"});
}

}  // namespace
}  // namespace mpt::device_testing
