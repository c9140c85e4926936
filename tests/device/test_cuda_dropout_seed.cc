// The dropout seed on the CUDA backend (ops.h, set_dropout_seed): with seed s, dropout and
// attention with dropout draw the masks of key ^ s (the CPU's calls with that key, bit for
// bit for dropout and within the attention tolerance); seed 0 gives the keys' own masks; the
// seed is written in stream order; a captured graph replays with the masks of the seed set
// before each replay; setting the seed during a capture is refused and spoils it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::AttentionDims;
using backend::Graph;

constexpr double kTol = 1e-5;
constexpr float kP = 0.3f;
constexpr uint64_t kKey = 0x5eed1234abcdull;
// Seeds with low bits, high bits and all bits set: each must reach every mask.
constexpr uint64_t kSeeds[] = {1, 0x9e3779b97f4a7c15ull, 0xffffffff00000000ull, ~uint64_t{0}};

std::string hex(uint64_t v) {
  char text[32];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

std::vector<float> host_f32(Pair& p) { return std::vector<float>(p.f(), p.f() + p.numel()); }

// got and want hold the same bits.
void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int64_t mismatches = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && ++mismatches <= 5)
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
  EXPECT_EQ(mismatches, 0) << what;
}

// How many elements are dropped (zero) in exactly one of a and b: masks that differ.
int64_t mask_differences(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) n += (a[i] == 0.0f) != (b[i] == 0.0f);
  return n;
}

// --- dropout ------------------------------------------------------------------------------

// The CPU's dropout_fwd of x with key `key` (its seed left at 0).
std::vector<float> cpu_dropout(Backends& b, Pair& x, uint64_t key, int64_t row_offset) {
  Pair out;
  out.dtype = DType::kF32;
  out.shape = x.shape;
  out.host.assign(x.host.size(), 0);
  b.cpu->dropout_fwd(out.cpu(), x.cpu(), kP, key, row_offset);
  return host_f32(out);
}

TEST(CudaDropoutSeed, DropoutDrawsTheMasksOfKeyXorSeed) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t rows = 19, cols = 517, row_offset = 7;
  auto x = b.f32({rows, cols}, 11), out = b.f32({rows, cols});
  const std::vector<float> unseeded = cpu_dropout(b, *x, kKey, row_offset);

  // Seed 0 at construction: the key's own masks.
  b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, row_offset);
  expect_same_bits(out->download_f32(), unseeded, "dropout_fwd, seed 0 at construction");

  for (uint64_t seed : kSeeds) {
    SCOPED_TRACE("seed " + hex(seed));
    const std::vector<float> want = cpu_dropout(b, *x, kKey ^ seed, row_offset);
    EXPECT_GT(mask_differences(want, unseeded), rows * cols / 10) << "the seed must change the masks";
    b.gpu->set_dropout_seed(seed);
    b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, row_offset);
    expect_same_bits(out->download_f32(), want, "dropout_fwd");

    // Backward in place (dx aliases dout) draws the same masks.
    auto d = b.f32({rows, cols}, 12);
    b.cpu->dropout_bwd(d->cpu(), d->cpu(), kP, kKey ^ seed, row_offset);
    b.gpu->dropout_bwd(d->gpu_t(), d->gpu_t(), kP, kKey, row_offset);
    expect_same_bits(d->download_f32(), host_f32(*d), "dropout_bwd in place");
  }

  // Back to 0: the key's own masks again.
  b.gpu->set_dropout_seed(0);
  b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, row_offset);
  expect_same_bits(out->download_f32(), unseeded, "dropout_fwd, seed set back to 0");
}

// set_dropout_seed is queued with the ops: with no wait in between, each call sees the seed
// set just before it, not the last one.
TEST(CudaDropoutSeed, TheSeedIsWrittenInStreamOrder) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t rows = 64, cols = 4096;
  auto x = b.f32({rows, cols}, 21);
  std::vector<std::unique_ptr<Pair>> outs;
  for (size_t s = 0; s < std::size(kSeeds); ++s) outs.push_back(b.f32({rows, cols}));
  for (size_t s = 0; s < std::size(kSeeds); ++s) {
    b.gpu->set_dropout_seed(kSeeds[s]);
    b.gpu->dropout_fwd(outs[s]->gpu_t(), x->gpu_t(), kP, kKey, 0);
  }
  for (size_t s = 0; s < std::size(kSeeds); ++s)
    expect_same_bits(outs[s]->download_f32(), cpu_dropout(b, *x, kKey ^ kSeeds[s], 0),
                     "dropout_fwd after seed " + hex(kSeeds[s]));
}

// Each backend keeps its own seed.
TEST(CudaDropoutSeed, EachBackendHasItsOwnSeed) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto other = backend::make_cuda_ops(0);
  const int64_t rows = 5, cols = 333;
  auto x = b.f32({rows, cols}, 31), out = b.f32({rows, cols});
  b.gpu->set_dropout_seed(kSeeds[1]);
  other->set_dropout_seed(kSeeds[2]);
  void* other_out = other->allocate(x->host.size());
  void* other_x = other->allocate(x->host.size());
  other->to_device(other_x, x->host.data(), x->host.size());
  b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, 0);
  other->dropout_fwd(x->make(other_out), x->make(other_x), kP, kKey, 0);
  std::vector<float> got(static_cast<size_t>(rows * cols));
  other->to_host(got.data(), other_out, got.size() * sizeof(float));
  expect_same_bits(out->download_f32(), cpu_dropout(b, *x, kKey ^ kSeeds[1], 0), "first backend");
  expect_same_bits(got, cpu_dropout(b, *x, kKey ^ kSeeds[2], 0), "second backend");
  other->release(other_out);
  other->release(other_x);
}

// --- attention ----------------------------------------------------------------------------

// GQA (two query heads per key head: the dk/dv pass walks both), causal, dropout keyed by
// shifted positions and a head offset; lengths and head_dim off the tile sizes.
AttentionDims seeded_dims(bool causal) {
  AttentionDims d;
  d.seq_q = 37;
  d.seq_kv = 45;
  d.batch = 2;
  d.heads = 4;
  d.groups = 2;
  d.head_dim = 40;
  d.softmax_scale = 1.0f / std::sqrt(40.0f);
  d.causal = causal;
  d.dropout_p = 0.2f;
  d.dropout_key = kKey;
  d.head_offset = 5;
  d.q_pos = {60, 10, 8};
  d.kv_pos = {3, 20, 100};
  d.mask_seq = 200;
  return d;
}

// One attention problem on both backends, each side run on its own.
struct Problem : AttentionTensors {
  using AttentionTensors::AttentionTensors;
  void gpu_forward(backend::Ops& gpu) {
    gpu.attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), d);
  }
  void gpu_backward(backend::Ops& gpu) {
    gpu.attention_bwd(dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), dout->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(),
                      out->gpu_t(), lse->gpu_t(), d);
  }
  // The CPU's calls with dropout_key = key (its seed left at 0), into the host copies.
  void cpu_forward(backend::Ops& cpu, uint64_t key) {
    AttentionDims e = d;
    e.dropout_key = key;
    cpu.attention_fwd(out->cpu(), lse->cpu(), q->cpu(), k->cpu(), v->cpu(), e);
  }
  void cpu_backward(backend::Ops& cpu, uint64_t key) {
    AttentionDims e = d;
    e.dropout_key = key;
    cpu.attention_bwd(dq->cpu(), dk->cpu(), dv->cpu(), dout->cpu(), q->cpu(), k->cpu(), v->cpu(), out->cpu(),
                      lse->cpu(), e);
  }
  std::vector<std::vector<float>> gpu_results() const {
    return {out->download_f32(), lse->download_f32(), dq->download_f32(), dk->download_f32(), dv->download_f32()};
  }
};

const char* const kResultNames[] = {"out", "lse", "dq", "dk", "dv"};

// GPU attention with seed s against the CPU's with key ^ s: forward, then backward on the
// CPU's out and lse (uploaded), so both backwards see equal inputs.
void check_attention(Backends& b, Problem& p, uint64_t seed) {
  SCOPED_TRACE("seed " + hex(seed));
  b.gpu->set_dropout_seed(seed);
  p.cpu_forward(*b.cpu, p.d.dropout_key ^ seed);
  p.gpu_forward(*b.gpu);
  expect_close(*p.out, kTol, "out");
  expect_close(*p.lse, kTol, "lse");
  p.out->upload();
  p.lse->upload();
  p.cpu_backward(*b.cpu, p.d.dropout_key ^ seed);
  p.gpu_backward(*b.gpu);
  expect_close(*p.dq, kTol, "dq");
  expect_close(*p.dk, kTol, "dk");
  expect_close(*p.dv, kTol, "dv");
}

TEST(CudaDropoutSeed, AttentionDrawsTheMasksOfKeyXorSeed) {
  MPT_SKIP_WITHOUT_GPU();
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "full");
    Backends b;
    Problem p(b, seeded_dims(causal), 40);
    // The seeds change the CPU's output: a GPU ignoring them would be caught.
    p.cpu_forward(*b.cpu, p.d.dropout_key);
    const std::vector<float> unseeded = host_f32(*p.out);
    p.cpu_forward(*b.cpu, p.d.dropout_key ^ kSeeds[0]);
    EXPECT_GT(scaled_error(unseeded, p.out->f(), unseeded.size()), 1e-2) << "seed " << hex(kSeeds[0]);

    check_attention(b, p, 0);  // the key's own masks (seed 0 at construction)
    for (uint64_t seed : kSeeds) check_attention(b, p, seed);
    check_attention(b, p, 0);  // set back to 0
  }
}

// Without dropout the seed changes nothing.
TEST(CudaDropoutSeed, AttentionWithoutDropoutIgnoresTheSeed) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  AttentionDims d = seeded_dims(true);
  d.dropout_p = 0;
  Problem p(b, d, 50);
  p.gpu_forward(*b.gpu);
  p.gpu_backward(*b.gpu);
  const auto unseeded = p.gpu_results();
  b.gpu->set_dropout_seed(kSeeds[1]);
  p.gpu_forward(*b.gpu);
  p.gpu_backward(*b.gpu);
  const auto seeded = p.gpu_results();
  for (size_t i = 0; i < seeded.size(); ++i) expect_same_bits(seeded[i], unseeded[i], kResultNames[i]);
}

// --- graphs -------------------------------------------------------------------------------

// Dropout forward and backward and attention forward and backward, recorded once with the
// keys fixed, replayed after set_dropout_seed: each replay gives the bits of the same calls
// run eagerly with that seed, and the CPU's dropout with key ^ seed.
TEST(CudaDropoutSeed, AReplayDrawsTheMasksOfTheSeedSetBeforeIt) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  const int64_t rows = 23, cols = 301;
  auto x = b.f32({rows, cols}, 61), y = b.f32({rows, cols}), dy = b.f32({rows, cols}, 62),
       dx = b.f32({rows, cols});
  Problem p(b, seeded_dims(true), 63);
  auto run = [&] {
    gpu.dropout_fwd(y->gpu_t(), x->gpu_t(), kP, kKey, 3);
    gpu.dropout_bwd(dx->gpu_t(), dy->gpu_t(), kP, kKey, 3);
    p.gpu_forward(gpu);
    p.gpu_backward(gpu);
  };
  auto results = [&] {
    std::vector<std::vector<float>> r = p.gpu_results();
    r.push_back(y->download_f32());
    r.push_back(dx->download_f32());
    return r;
  };
  const char* const names[] = {"out", "lse", "dq", "dk", "dv", "dropout y", "dropout dx"};

  gpu.set_dropout_seed(kSeeds[3]);  // the seed while recording must not be baked in
  run();                            // warm-up: scratch in place before the capture
  gpu.begin_capture();
  run();
  const std::unique_ptr<Graph> graph = gpu.end_capture();
  ASSERT_NE(graph, nullptr);

  std::vector<std::vector<float>> previous;
  for (uint64_t seed : {kSeeds[0], kSeeds[1], uint64_t{0}, kSeeds[2]}) {
    SCOPED_TRACE("seed " + hex(seed));
    gpu.set_dropout_seed(seed);
    run();
    const auto eager = results();
    for (Pair* written : {y.get(), dx.get(), p.out.get(), p.dq.get(), p.dk.get(), p.dv.get()})
      gpu.scale(written->gpu_t(), 0.0f);  // the replay must write them again
    gpu.set_dropout_seed(seed);
    graph->replay();
    const auto replayed = results();
    for (size_t i = 0; i < eager.size(); ++i) expect_same_bits(replayed[i], eager[i], names[i]);
    expect_same_bits(replayed[5], cpu_dropout(b, *x, kKey ^ seed, 3), "replayed dropout y against the CPU");
    p.cpu_forward(*b.cpu, kKey ^ seed);
    expect_close(*p.out, kTol, "replayed attention out against the CPU");
    if (!previous.empty()) {
      EXPECT_GT(mask_differences(replayed[5], previous[5]), rows * cols / 10) << "the masks did not change";
      EXPECT_NE(replayed[0], previous[0]) << "attention out did not change";
      EXPECT_NE(replayed[2], previous[2]) << "attention dq did not change";
    }
    previous = replayed;
  }
}

// set_dropout_seed during a capture throws naming it, spoils the capture and leaves the
// seed as it was.
TEST(CudaDropoutSeed, SettingTheSeedDuringCaptureIsRefused) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  backend::Ops& gpu = *b.gpu;
  const int64_t rows = 7, cols = 129;
  auto x = b.f32({rows, cols}, 71), out = b.f32({rows, cols});
  gpu.set_dropout_seed(kSeeds[1]);
  gpu.dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, 0);  // warm-up

  gpu.begin_capture();
  gpu.fill(out->gpu_t(), 1.0f);  // recorded work before the refusal
  expect_error([&] { gpu.set_dropout_seed(kSeeds[2]); }, Status::kInternal,
               {"cuda:0", "set_dropout_seed()", "during graph capture"}, "set_dropout_seed during capture");
  EXPECT_TRUE(gpu.capturing()) << "a refusal does not end the capture";
  expect_error([&] { gpu.end_capture(); }, Status::kInternal, {"graph capture failed", "set_dropout_seed()"},
               "end_capture after set_dropout_seed");
  EXPECT_FALSE(gpu.capturing());

  // The seed is unchanged, and can be set again once the capture has ended.
  gpu.dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, 0);
  expect_same_bits(out->download_f32(), cpu_dropout(b, *x, kKey ^ kSeeds[1], 0), "after the refusal");
  gpu.set_dropout_seed(kSeeds[2]);
  gpu.dropout_fwd(out->gpu_t(), x->gpu_t(), kP, kKey, 0);
  expect_same_bits(out->download_f32(), cpu_dropout(b, *x, kKey ^ kSeeds[2], 0), "seed set after the capture");
}

}  // namespace
}  // namespace mpt::device_testing
