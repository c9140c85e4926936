// Graph capture on the CUDA backend (src/cuda/cuda_graph.cu): a small transformer layer's
// forward and a backward piece recorded once and replayed on new input values must give the
// bits of the same ops run eagerly on those values; a replay that accumulates does so once
// per replay, in order with the eager work around it; each call a replay could not repeat is
// refused, spoils the capture (end_capture names it) and leaves the backend working; a
// capture invalidated by a CUDA error is ended all the same; an empty capture replays as
// nothing.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "cuda/cuda_ops.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::Activation;
using backend::AttentionDims;
using backend::Graph;

cuda::CudaOps& as_cuda(backend::Ops& ops) { return dynamic_cast<cuda::CudaOps&>(ops); }

// A device tensor of `shape` in `dtype`, zero on the host and the device.
std::unique_ptr<Pair> buffer(Backends& b, DType dtype, std::vector<int64_t> shape) {
  auto p = std::make_unique<Pair>();
  p->gpu = b.gpu.get();
  p->dtype = dtype;
  p->shape = std::move(shape);
  p->host.assign(static_cast<size_t>(p->numel()) * dtype_size(dtype), 0);
  p->dev = b.gpu->allocate(p->host.size());
  return p;
}

// Host values normal(offset, scale) from `seed`, rounded for bf16 (not uploaded).
void randomize(Pair& p, uint64_t seed, float scale, float offset = 0.0f) {
  std::vector<float> v(static_cast<size_t>(p.numel()));
  fill_normal(v.data(), p.numel(), seed, 0, offset, scale);
  for (size_t i = 0; i < v.size(); ++i) {
    if (p.dtype == DType::kBF16) {
      const uint16_t h = f32_to_bf16(v[i]);
      std::memcpy(p.host.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(p.host.data() + 4 * i, &v[i], 4);
    }
  }
}

// Whether every element of a float tensor's bytes is finite.
bool all_finite_bytes(const std::vector<uint8_t>& bytes, DType dtype) {
  const size_t size = dtype_size(dtype), n = bytes.size() / size;
  for (size_t i = 0; i < n; ++i) {
    float f;
    if (dtype == DType::kBF16) {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      f = bf16_to_f32(h);
    } else {
      std::memcpy(&f, bytes.data() + 4 * i, 4);
    }
    if (!std::isfinite(f)) return false;
  }
  return true;
}

// ---- a small layer: forward and a backward piece ---------------------------------------------

// Pre-norm attention and gated-SiLU MLP over 16 positions x 2 sequences (GQA: 4 query heads in
// 2 groups of head_dim 16), bf16 GEMMs beside fp32 ones, then an attention backward and two
// weight gradients accumulating (beta = 1) into fp32.
struct Layer {
  static constexpr int64_t kSeq = 16, kBatch = 2, kTokens = kSeq * kBatch;
  static constexpr int64_t kHidden = 64, kHeads = 4, kGroups = 2, kHeadDim = 16, kFfn = 96;
  static constexpr int64_t kQ = kHeads * kHeadDim, kKv = kGroups * kHeadDim, kQkv = kQ + 2 * kKv;

  struct Named {
    std::string name;
    std::unique_ptr<Pair> p;
  };
  // Set before each run: inputs (new values each round; x is updated in place by the
  // residual adds), accumulators (a start value each round) and outputs (poisoned with NaN,
  // so an op that did not run shows).
  std::vector<Named> inputs, accumulators, outputs;
  Pair *x, *norm_w, *w_qkv, *w_proj, *w_fc1, *w_fc2, *positions, *dout, *dproj, *dmlp;
  Pair *dw_proj, *dw_fc2;
  Pair *h, *rstd, *qkv, *q, *k, *v, *attn, *lse, *proj, *fc1, *act, *mlp, *dq, *dk, *dv;

  explicit Layer(Backends& b) {
    constexpr DType kF = DType::kF32, kB = DType::kBF16;
    auto add = [&](std::vector<Named>& to, const char* name, DType dt, std::vector<int64_t> shape) {
      to.push_back({name, buffer(b, dt, std::move(shape))});
      return to.back().p.get();
    };
    x = add(inputs, "x", kF, {kTokens, kHidden});
    norm_w = add(inputs, "norm_w", kF, {kHidden});
    w_qkv = add(inputs, "w_qkv", kB, {kQkv, kHidden});
    w_proj = add(inputs, "w_proj", kF, {kHidden, kQ});
    w_fc1 = add(inputs, "w_fc1", kB, {2 * kFfn, kHidden});
    w_fc2 = add(inputs, "w_fc2", kB, {kHidden, kFfn});
    positions = add(inputs, "positions", DType::kI32, {kTokens});
    dout = add(inputs, "dout", kF, {kTokens, kQ});
    dproj = add(inputs, "dproj", kF, {kTokens, kHidden});
    dmlp = add(inputs, "dmlp", kB, {kTokens, kHidden});
    dw_proj = add(accumulators, "dw_proj", kF, {kHidden, kQ});
    dw_fc2 = add(accumulators, "dw_fc2", kF, {kHidden, kFfn});
    h = add(outputs, "h", kB, {kTokens, kHidden});
    rstd = add(outputs, "rstd", kF, {kTokens});
    qkv = add(outputs, "qkv", kF, {kTokens, kQkv});
    q = add(outputs, "q", kF, {kTokens, kQ});
    k = add(outputs, "k", kF, {kTokens, kKv});
    v = add(outputs, "v", kF, {kTokens, kKv});
    attn = add(outputs, "attn", kF, {kTokens, kQ});
    lse = add(outputs, "lse", kF, {kTokens, kHeads});
    proj = add(outputs, "proj", kF, {kTokens, kHidden});
    fc1 = add(outputs, "fc1", kB, {kTokens, 2 * kFfn});
    act = add(outputs, "act", kB, {kTokens, kFfn});
    mlp = add(outputs, "mlp", kF, {kTokens, kHidden});
    dq = add(outputs, "dq", kF, {kTokens, kQ});
    dk = add(outputs, "dk", kF, {kTokens, kKv});
    dv = add(outputs, "dv", kF, {kTokens, kKv});
  }

  // Uploads round `seed`'s values (the same for the same seed) and poisons the outputs.
  void prepare(uint64_t seed) {
    uint64_t s = seed * 100;
    for (auto& [name, p] : inputs) {
      if (p.get() == positions) {
        for (int64_t t = 0; t < kTokens; ++t) p->i()[t] = static_cast<int32_t>(t / kBatch + seed % 3);
      } else if (p.get() == norm_w) {
        randomize(*p, ++s, 0.1f, 1.0f);
      } else {
        const bool weight = p.get() == w_qkv || p.get() == w_proj || p.get() == w_fc1 || p.get() == w_fc2;
        randomize(*p, ++s, weight ? 0.125f : 1.0f);
      }
      p->upload();
    }
    for (auto& [name, p] : accumulators) {
      randomize(*p, ++s, 1.0f);
      p->upload();
    }
    for (auto& [name, p] : outputs) {
      std::vector<uint8_t> nan(p->host.size(), 0xff);  // all-ones bits: NaN in f32 and bf16
      p->gpu->to_device(p->dev, nan.data(), nan.size());
    }
  }

  static AttentionDims dims() {
    AttentionDims d;
    d.seq_q = d.seq_kv = kSeq;
    d.batch = kBatch;
    d.heads = kHeads;
    d.groups = kGroups;
    d.head_dim = kHeadDim;
    d.softmax_scale = 0.25f;
    d.causal = true;
    return d;
  }

  void run(backend::Ops& o) {
    auto T = [](const Pair* p) { return p->gpu_t(); };
    const AttentionDims d = dims();
    o.rmsnorm_fwd(T(h), T(rstd), T(x), T(norm_w), 1e-5f);
    o.matmul(T(qkv), T(h), T(w_qkv), false, true, 1.0f, 0.0f);  // bf16 operands, f32 out
    o.qkv_split(T(q), T(k), T(v), T(qkv), kGroups, kHeads / kGroups, kHeadDim);
    o.rope(T(q), T(positions), kHeads, kHeadDim, kHeadDim, 10000.0f, false);
    o.rope(T(k), T(positions), kGroups, kHeadDim, kHeadDim, 10000.0f, false);
    o.attention_fwd(T(attn), T(lse), T(q), T(k), T(v), d);
    o.matmul(T(proj), T(attn), T(w_proj), false, true, 1.0f, 0.0f);  // fp32
    o.add_inplace(T(x), T(proj));
    o.matmul(T(fc1), T(x), T(w_fc1), false, true, 1.0f, 0.0f);  // f32 x rounded in scratch, bf16 out
    o.activation_fwd(T(act), T(fc1), Activation::kSilu, true);
    o.matmul(T(mlp), T(act), T(w_fc2), false, true, 1.0f, 0.0f);
    o.add_inplace(T(x), T(mlp));
    o.attention_bwd(T(dq), T(dk), T(dv), T(dout), T(q), T(k), T(v), T(attn), T(lse), d);
    o.matmul(T(dw_proj), T(dproj), T(attn), true, false, 1.0f, 1.0f);  // fp32, accumulating
    o.matmul(T(dw_fc2), T(dmlp), T(act), true, false, 1.0f, 1.0f);     // bf16 into fp32, accumulating
  }

  struct Contents {
    std::string name;
    DType dtype;
    std::vector<uint8_t> bytes;
  };
  // Every tensor's device bytes, in a fixed order.
  std::vector<Contents> snapshot() const {
    std::vector<Contents> out;
    for (const auto* group : {&inputs, &accumulators, &outputs})
      for (const auto& [name, p] : *group) out.push_back({name, p->dtype, device_bytes(*p)});
    return out;
  }
};

TEST(CudaGraph, ReplayOfALayerEqualsEagerRunsBitForBit) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  Layer layer(b);
  layer.prepare(1);
  layer.run(gpu);  // warm-up: scratch, GEMM plans and kernels in place before the capture
  const auto warm = layer.snapshot();

  gpu.begin_capture();
  layer.run(gpu);
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  ASSERT_NE(graph, nullptr);
  EXPECT_GE(graph->nodes(), 15) << "at least one node for each of the layer's 15 ops";
  const auto after_capture = layer.snapshot();
  for (size_t i = 0; i < warm.size(); ++i)
    EXPECT_EQ(after_capture[i].bytes, warm[i].bytes) << warm[i].name << ": the capture ran the ops";

  std::vector<Layer::Contents> previous;
  for (uint64_t round = 2; round <= 4; ++round) {
    layer.prepare(round);
    layer.run(gpu);
    const auto eager = layer.snapshot();
    layer.prepare(round);
    graph->replay();
    const auto replayed = layer.snapshot();
    ASSERT_EQ(replayed.size(), eager.size());
    for (size_t i = 0; i < eager.size(); ++i) {
      const std::string& name = eager[i].name;
      EXPECT_EQ(replayed[i].bytes, eager[i].bytes) << "round " << round << ", " << name << ": replay != eager";
      if (eager[i].dtype != DType::kI32) {
        EXPECT_TRUE(all_finite_bytes(eager[i].bytes, eager[i].dtype)) << "round " << round << ", " << name
                                                                      << " was not computed";
      }
      if (!previous.empty()) {
        EXPECT_NE(eager[i].bytes, previous[i].bytes) << "round " << round << ", " << name << ": unchanged";
      }
    }
    previous = eager;
  }
}

// ---- accumulation and ordering -----------------------------------------------------------------

TEST(CudaGraph, AReplayAccumulatesOncePerReplayInStreamOrder) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  constexpr int64_t M = 8, N = 12, K = 16;
  auto a = b.f32({M, K}), w = b.f32({N, K}), acc = b.f32({M, N});
  // Small integers: every product and sum is exact in fp32, whatever the summation order.
  for (int64_t i = 0; i < M * K; ++i) a->f()[i] = static_cast<float>((i * 3 + 1) % 7 - 3);
  for (int64_t i = 0; i < N * K; ++i) w->f()[i] = static_cast<float>((i * 5 + 2) % 5 - 2);
  a->upload();
  w->upload();
  std::vector<float> product(static_cast<size_t>(M * N), 0.0f);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) product[m * N + n] += a->f()[m * K + k] * w->f()[n * K + k];

  auto expect_multiple = [&](float times, const std::string& when) {
    const std::vector<float> got = acc->download_f32();
    for (size_t i = 0; i < got.size(); ++i)
      if (got[i] != times * product[i]) {
        ADD_FAILURE() << when << ": element " << i << " is " << got[i] << ", want " << times * product[i];
        return;
      }
  };

  gpu.matmul(acc->gpu_t(), a->gpu_t(), w->gpu_t(), false, true, 1.0f, 1.0f);  // warm-up
  expect_multiple(1, "eager");
  acc->upload();  // back to zeros
  gpu.begin_capture();
  gpu.matmul(acc->gpu_t(), a->gpu_t(), w->gpu_t(), false, true, 1.0f, 1.0f);
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  expect_multiple(0, "after the capture (recorded, not run)");
  for (int r = 1; r <= 3; ++r) {
    graph->replay();
    expect_multiple(static_cast<float>(r), "after replay " + std::to_string(r));
  }
  // Queued without waiting in between: the eager zeroing runs before the two replays.
  gpu.scale(acc->gpu_t(), 0.0f);
  graph->replay();
  graph->replay();
  expect_multiple(2, "zeroed, then two replays");
}

// ---- refused calls -----------------------------------------------------------------------------

// The backend computes normally, eagerly and in a new capture.
void expect_backend_works(backend::Ops& gpu, Pair& x, const std::string& what) {
  gpu.fill(x.gpu_t(), 2.0f);
  gpu.scale(x.gpu_t(), 3.0f);
  for (float f : x.download_f32())
    if (f != 6.0f) {
      ADD_FAILURE() << what << ": eager fill and scale give " << f << ", want 6";
      break;
    }
  gpu.begin_capture();
  gpu.fill(x.gpu_t(), 5.0f);
  gpu.scale(x.gpu_t(), 3.0f);
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  EXPECT_EQ(graph->nodes(), 2) << what;
  EXPECT_EQ(x.download_f32()[0], 6.0f) << what << ": the capture ran the ops";
  graph->replay();
  for (float f : x.download_f32())
    if (f != 15.0f) {
      ADD_FAILURE() << what << ": the replay gives " << f << ", want 15";
      break;
    }
}

TEST(CudaGraph, RefusedCallsSpoilTheCaptureAndLeaveTheBackendWorking) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  auto x = b.f32({64}, 7);
  std::vector<float> host(64, 1.0f);
  expect_backend_works(gpu, *x, "before any capture");  // warm-up of fill and scale
  const std::vector<std::pair<std::string, std::function<void()>>> refused = {
      {"allocate(1024 bytes)", [&] { gpu.allocate(1024); }},
      {"to_device(256 bytes)", [&] { gpu.to_device(x->dev, host.data(), 256); }},
      {"to_host(256 bytes)", [&] { gpu.to_host(host.data(), x->dev, 256); }},
      {"dot()", [&] { gpu.dot(x->gpu_t(), x->gpu_t()); }},
      {"sum_squares()", [&] { gpu.sum_squares(x->gpu_t()); }},
      {"all_finite()", [&] { gpu.all_finite(x->gpu_t()); }},
      {"begin_capture()", [&] { gpu.begin_capture(); }},
      {"synchronize()", [&] { gpu.synchronize(); }},
  };
  for (const auto& [call, f] : refused) {
    gpu.begin_capture();
    gpu.fill(x->gpu_t(), 1.0f);  // recorded work before the refusal
    expect_error(f, Status::kInternal, {"cuda:0", call, "during graph capture"}, call + " during capture");
    EXPECT_TRUE(gpu.capturing()) << call << ": a refusal does not end the capture";
    expect_error([&] { gpu.end_capture(); }, Status::kInternal, {"graph capture failed", call},
                 "end_capture after " + call);
    EXPECT_FALSE(gpu.capturing()) << call;
    expect_backend_works(gpu, *x, "after " + call);
  }

  // The first refusal is the one named.
  gpu.begin_capture();
  expect_error([&] { gpu.allocate(512); }, Status::kInternal, {"allocate(512 bytes)"}, "allocate");
  expect_error([&] { gpu.dot(x->gpu_t(), x->gpu_t()); }, Status::kInternal, {"dot()"}, "dot");
  try {
    gpu.end_capture();
    ADD_FAILURE() << "end_capture after two refusals: no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("allocate(512 bytes)"), std::string::npos) << message;
    EXPECT_EQ(message.find("dot()"), std::string::npos) << message;
  }
  expect_backend_works(gpu, *x, "after two refusals");

  // release() during capture does not throw (it runs from destructors) but spoils the capture;
  // the block is given back once the capture has ended (the allocator hands it out again).
  void* block = gpu.allocate(4096);
  gpu.begin_capture();
  gpu.release(block);
  gpu.release(nullptr);
  EXPECT_TRUE(gpu.capturing());
  expect_error([&] { gpu.end_capture(); }, Status::kInternal, {"graph capture failed", "release()"},
               "end_capture after release");
  void* again = gpu.allocate(4096);
  EXPECT_EQ(again, block) << "the block released during the capture was not given back after it";
  gpu.release(again);
  expect_backend_works(gpu, *x, "after release");

  expect_error([&] { gpu.end_capture(); }, Status::kInternal, {"without begin_capture"}, "end_capture alone");
}

TEST(CudaGraph, ScratchCannotGrowDuringCapture) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;  // a fresh backend: no scratch yet
  backend::Ops& gpu = *b.gpu;
  auto c = b.f32({8, 8}), w = b.f32({8, 8}, 2);
  auto a = buffer(b, DType::kBF16, {8, 8});
  randomize(*a, 3, 1.0f);
  a->upload();
  auto product = [&] { gpu.matmul(c->gpu_t(), a->gpu_t(), w->gpu_t(), false, true, 1.0f, 0.0f); };
  gpu.begin_capture();  // w must be rounded to bf16 in scratch, which does not exist yet
  expect_error(product, Status::kInternal, {"growth of the scratch area", "during graph capture"},
               "matmul before its warm-up");
  expect_error([&] { gpu.end_capture(); }, Status::kInternal, {"graph capture failed", "growth of the scratch area"},
               "end_capture");

  product();  // eagerly: scratch grows
  const std::vector<float> eager = c->download_f32();
  gpu.fill(c->gpu_t(), 0.0f);
  gpu.begin_capture();
  product();
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  graph->replay();
  EXPECT_EQ(c->download_f32(), eager);
}

// A graph replays the scratch addresses it was recorded with. A scratch area outgrown after
// the recording must stay allocated while the graph lives: were it given back, the tensors
// allocated next would get it and each replay would write its partial sums into them.
TEST(CudaGraph, ScratchOutgrownAfterTheRecordingStaysWithTheGraph) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;  // a fresh backend: no scratch yet
  backend::Ops& gpu = *b.gpu;
  cuda::CudaOps& cuda = as_cuda(gpu);
  // bias_grad over 4096 rows of 64 sums 64 chunks of rows in 64 x 64 doubles of scratch (32 KiB).
  auto dy = b.f32({4096, 64}, 51);
  auto dbias = b.f32({64});
  gpu.bias_grad(dbias->gpu_t(), dy->gpu_t());  // eagerly first: the scratch area grows
  void* recorded = cuda.scratch(0);
  ASSERT_NE(recorded, nullptr);
  gpu.fill(dbias->gpu_t(), 0.0f);
  gpu.begin_capture();
  gpu.bias_grad(dbias->gpu_t(), dy->gpu_t());
  std::unique_ptr<Graph> graph = gpu.end_capture();

  // A larger op outside capture: 64 chunks of 1024 columns need 512 KiB, so the area grows.
  auto dy_big = b.f32({8192, 1024}, 52);
  auto dbias_big = b.f32({1024});
  gpu.bias_grad(dbias_big->gpu_t(), dy_big->gpu_t());
  ASSERT_NE(cuda.scratch(0), recorded) << "the scratch area should have grown";
  // Tensors of the recorded area's size class, holding a value the replay must not touch.
  const float sentinel = 12345.0f;
  std::vector<std::unique_ptr<Pair>> fresh;
  for (int i = 0; i < 4; ++i) {
    fresh.push_back(b.f32({64, 128}));  // 32 KiB
    EXPECT_NE(fresh.back()->dev, recorded) << "the scratch area of a live graph was handed out again";
    gpu.fill(fresh.back()->gpu_t(), sentinel);
  }
  graph->replay();
  b.cpu->bias_grad(dbias->cpu(), dy->cpu());
  expect_close(*dbias, 1e-5, "bias_grad replayed after the scratch area grew");
  for (const auto& f : fresh)
    for (float v : f->download_f32()) ASSERT_EQ(v, sentinel) << "a replay wrote into a tensor allocated after it";
  b.cpu->bias_grad(dbias_big->cpu(), dy_big->cpu());
  expect_close(*dbias_big, 1e-5, "the larger bias_grad");

  // Once the graph is gone the outgrown area goes back to the allocator.
  const int64_t held = gpu.workspace_bytes();
  graph.reset();
  EXPECT_EQ(held - gpu.workspace_bytes(), int64_t{64} * 64 * 8) << "the retired area is counted until then";
  auto after = b.f32({64, 128});
  expect_backend_works(gpu, *after, "after the graph that held the old scratch area is gone");
}

TEST(CudaGraph, ACaptureInvalidatedByACudaErrorIsEndedAndReported) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  auto x = b.f32({64}, 7);
  expect_backend_works(gpu, *x, "before");
  gpu.begin_capture();
  gpu.fill(x->gpu_t(), 1.0f);
  // Waiting on a capturing stream is illegal: CUDA invalidates the capture.
  EXPECT_NE(cudaStreamSynchronize(as_cuda(gpu).stream()), cudaSuccess);
  expect_error([&] { gpu.end_capture(); }, Status::kDevice, {"graph capture failed", "cudaStreamEndCapture"},
               "end_capture of an invalidated capture");
  EXPECT_FALSE(gpu.capturing());
  expect_backend_works(gpu, *x, "after an invalidated capture");
}

// ---- state and empty graphs --------------------------------------------------------------------

TEST(CudaGraph, SupportsGraphsAndTracksTheCaptureState) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  EXPECT_TRUE(gpu.supports_graphs());
  EXPECT_FALSE(b.cpu->supports_graphs());
  EXPECT_FALSE(gpu.capturing());
  gpu.begin_capture();
  EXPECT_TRUE(gpu.capturing());
  gpu.end_capture();
  EXPECT_FALSE(gpu.capturing());
  gpu.begin_capture();
  EXPECT_TRUE(gpu.capturing());
  expect_error([&] { gpu.begin_capture(); }, Status::kInternal, {"begin_capture()"}, "nested begin_capture");
  EXPECT_TRUE(gpu.capturing());
  EXPECT_THROW(gpu.end_capture(), Error);
  EXPECT_FALSE(gpu.capturing());
}

TEST(CudaGraph, AnEmptyCaptureReplaysAsNothing) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  auto x = b.f32({256}, 11);
  const std::vector<float> before = x->download_f32();
  gpu.begin_capture();
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(graph->nodes(), 0);
  graph->replay();
  graph->replay();
  gpu.synchronize();
  EXPECT_EQ(x->download_f32(), before);
  expect_backend_works(gpu, *x, "after an empty graph's replays");
}

}  // namespace
}  // namespace mpt::device_testing
