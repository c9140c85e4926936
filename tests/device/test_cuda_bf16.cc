// bf16 mixed precision on the GPU (ops.h, "Precision") against the CPU backend's bf16 calls:
// every op with bf16 arguments and with f32/bf16 mixes, on random inputs of realistic and
// edge shapes. A bf16 output must match the CPU's within bf16 tolerance (1e-2 of the
// tensor's scale: both round one fp32 result); an f32 output computed from bf16 inputs
// within the fp32 tolerance (1e-5; 1e-4 for tensor-core GEMMs, which still shows that an
// f32 GEMM operand beside a bf16 one is rounded to bf16 as the contract says). Also: cast
// bit for bit against core/bf16.h on edge values, repeats give the same bits, mixed GEMMs
// stop growing scratch, and f32-only arguments given as bf16 are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::Activation;
using backend::AttentionDims;
using backend::GroupedForm;

constexpr DType kF = DType::kF32, kB = DType::kBF16;
constexpr double kBf16Tol = 1e-2, kF32Tol = 1e-5;
// An f32 c of a bf16 GEMM: tensor cores accumulate in fp32 but not in the CPU's order or
// rounding. Still far below the ~1e-3 an f32 operand left unrounded would show.
constexpr double kBf16GemmTol = 1e-4;
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

const char* name(DType t) { return t == kB ? "bf16" : "f32"; }

// --- tensors in either dtype on both backends ---------------------------------------------------

// The host values (the CPU's) copied to the device, so that a next step starts equal on both.
void upload(Pair& p) {
  if (!p.host.empty()) p.upload();
}

void set_values(Pair& p, const std::vector<float>& v) {
  set_host(p, v);
  if (!v.empty()) p.upload();
}

// The device tensor matches the CPU result in p.host: NaN exactly where the CPU has NaN, and
// within tol (default: by p's dtype) of the tensor's scale elsewhere.
void expect_matches_cpu(const Pair& p, const std::string& what, double tol = -1) {
  if (tol < 0) tol = p.dtype == kB ? kBf16Tol : kF32Tol;
  const std::vector<float> got = device_values(p), want = host_values(p);
  for (size_t i = 0; i < got.size(); ++i)
    if (std::isnan(got[i]) != std::isnan(want[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " on the GPU, " << want[i] << " on the CPU";
      return;
    }
  const double e = scaled_error(got, want.data(), got.size());
  EXPECT_LE(e, tol) << what << " (" << name(p.dtype) << "): the GPU result differs from the CPU's by " << e
                    << " (scaled)";
}

// The device bytes equal the CPU's (ops that move or round values without arithmetic).
void expect_same_bits(const Pair& p, const std::string& what) {
  const std::vector<uint8_t> got = device_bytes(p);
  EXPECT_EQ(std::memcmp(got.data(), p.host.data(), got.size()), 0) << what << ": the GPU's bits differ from the CPU's";
}

// The dtype of argument `bit` in a combination numbered `mask`.
DType pick(int mask, int bit) { return (mask >> bit) & 1 ? kB : kF; }

std::string shape_of(std::initializer_list<int64_t> dims) {
  std::string s;
  for (int64_t d : dims) {
    if (!s.empty()) s += 'x';
    s += std::to_string(d);
  }
  return s;
}

// --- cast -------------------------------------------------------------------------------------

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Edge values of the f32 -> bf16 rounding: zeros, ties to even (down and up), values just off
// a tie, the largest finite values (one rounds to inf), subnormals, infinities and NaNs
// (quiet, signalling, negative, with payload).
std::vector<float> edge_values() {
  const uint32_t bits[] = {0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, 0x3f808000u, 0x3f818000u,
                           0xbf808000u, 0x3f808001u, 0x3f807fffu, 0x3f80ffffu, 0x7f7fffffu, 0x7f7f7fffu,
                           0x7f7f8000u, 0xff7fffffu, 0x00000001u, 0x00008000u, 0x00018000u, 0x807fffffu,
                           0x00800000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u,
                           0x7fa00000u, 0xff812345u, 0x7fffffffu, 0x4049fdb0u, 0xc2f6e979u, 0x3dcccccdu};
  std::vector<float> v;
  for (uint32_t u : bits) v.push_back(from_bits(u));
  return v;
}

TEST(CudaBf16, CastIsBitExactOnEdgeValues) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  // Repeated to 1003 values: the four-wide path, its tail, and a view one element in (only
  // 4-byte aligned) that takes the one-at-a-time path.
  std::vector<float> values;
  const std::vector<float> edges = edge_values();
  for (int64_t i = 0; i < 1003; ++i) values.push_back(edges[static_cast<size_t>(i) % edges.size()]);
  for (int64_t skip : {int64_t{0}, int64_t{1}}) {
    const int64_t n = static_cast<int64_t>(values.size()) - skip;
    auto src = make_tensor(b, kF, {static_cast<int64_t>(values.size())});
    set_values(*src, values);
    auto dst = make_tensor(b, kB, {static_cast<int64_t>(values.size())});
    b.gpu->cast(dst->gpu_t().rows(skip, n), src->gpu_t().rows(skip, n));
    const std::vector<uint8_t> got = device_bytes(*dst);
    for (int64_t i = skip; i < static_cast<int64_t>(values.size()); ++i) {
      uint16_t h;
      std::memcpy(&h, got.data() + 2 * i, 2);
      uint32_t u;
      std::memcpy(&u, &values[i], 4);
      ASSERT_EQ(h, f32_to_bf16(values[i])) << "skip " << skip << ": f32 bits 0x" << std::hex << u;
    }
  }

  // bf16 -> f32 over every bit pattern: exact widening.
  const int64_t all = 65536;
  auto src = make_tensor(b, kB, {all});
  auto* h = reinterpret_cast<uint16_t*>(src->host.data());
  for (int64_t i = 0; i < all; ++i) h[i] = static_cast<uint16_t>(i);
  src->upload();
  auto dst = make_tensor(b, kF, {all});
  b.gpu->cast(dst->gpu_t(), src->gpu_t());
  const std::vector<uint8_t> got = device_bytes(*dst);
  for (int64_t i = 0; i < all; ++i) {
    uint32_t u;
    std::memcpy(&u, got.data() + 4 * i, 4);
    ASSERT_EQ(u, static_cast<uint32_t>(i) << 16) << "bf16 bits 0x" << std::hex << i;
  }

  // Same dtype: a copy; and empty tensors.
  auto copy = make_tensor(b, kB, {all});
  b.gpu->cast(copy->gpu_t(), src->gpu_t());
  EXPECT_EQ(device_bytes(*copy), device_bytes(*src));
  auto empty_b = make_tensor(b, kB, {0}), empty_f = make_tensor(b, kF, {0});
  b.gpu->cast(empty_b->gpu_t(), empty_f->gpu_t());
  b.gpu->synchronize();
}

// --- elementwise and reductions -----------------------------------------------------------------

TEST(CudaBf16, ElementwiseOpsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  uint64_t seed = 1;
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1001}, int64_t{70000}}) {
    const std::string at = " n " + std::to_string(n);
    for (int mask = 0; mask < 8; ++mask) {  // out, a, b
      auto x = make_tensor(b, pick(mask, 1), {n}, seed++), y = make_tensor(b, pick(mask, 2), {n}, seed++);
      auto out = make_tensor(b, pick(mask, 0), {n}, seed++);
      b.gpu->add(out->gpu_t(), x->gpu_t(), y->gpu_t());
      b.cpu->add(out->cpu(), x->cpu(), y->cpu());
      expect_matches_cpu(*out, "add mask " + std::to_string(mask) + at);
    }
    for (int mask = 0; mask < 4; ++mask) {  // y, x
      auto y = make_tensor(b, pick(mask, 0), {n}, seed++), x = make_tensor(b, pick(mask, 1), {n}, seed++);
      b.gpu->add_inplace(y->gpu_t(), x->gpu_t());
      b.cpu->add_inplace(y->cpu(), x->cpu());
      expect_matches_cpu(*y, "add_inplace mask " + std::to_string(mask) + at);
    }
    auto x = make_tensor(b, kB, {n}, seed++);
    b.gpu->scale(x->gpu_t(), -0.37f);
    b.cpu->scale(x->cpu(), -0.37f);
    expect_matches_cpu(*x, "scale" + at);
    b.gpu->fill(x->gpu_t(), 0.1f);
    b.cpu->fill(x->cpu(), 0.1f);
    expect_same_bits(*x, "fill" + at);

    // copy: bytes for equal dtypes, rounded or widened across them.
    for (int mask = 0; mask < 4; ++mask) {  // dst, src
      auto src = make_tensor(b, pick(mask, 1), {n}, seed++), dst = make_tensor(b, pick(mask, 0), {n}, seed++);
      b.gpu->copy(dst->gpu_t(), src->gpu_t());
      set_host(*dst, host_values(*src));
      expect_same_bits(*dst, "copy mask " + std::to_string(mask) + at);
    }
  }
}

TEST(CudaBf16, ReductionsReadBf16) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  for (int64_t n : {int64_t{0}, int64_t{3}, int64_t{300001}}) {
    auto x = make_tensor(b, kB, {n}, 11), y = make_tensor(b, kF, {n}, 12);
    const double want_sq = b.cpu->sum_squares(x->cpu()), got_sq = b.gpu->sum_squares(x->gpu_t());
    EXPECT_NEAR(got_sq, want_sq, 1e-12 * std::max(1.0, want_sq)) << "sum_squares n " << n;
    const double want_dot = b.cpu->dot(x->cpu(), y->cpu()), got_dot = b.gpu->dot(x->gpu_t(), y->gpu_t());
    EXPECT_NEAR(got_dot, want_dot, 1e-12 * std::max(1.0, b.cpu->sum_squares(y->cpu()) + want_sq)) << "dot n " << n;
    EXPECT_EQ(b.gpu->sum_squares(x->gpu_t()), got_sq) << "sum_squares repeats bit for bit, n " << n;
  }
  // all_finite on bf16: the largest finite value passes, any Inf or NaN fails.
  const int64_t n = 5000;
  auto x = make_tensor(b, kB, {n}, 13);
  auto* h = reinterpret_cast<uint16_t*>(x->host.data());
  h[17] = 0x7f7f;
  h[18] = 0xff7f;
  x->upload();
  EXPECT_TRUE(b.gpu->all_finite(x->gpu_t()));
  for (uint16_t bad : {uint16_t{0x7f80}, uint16_t{0xff80}, uint16_t{0x7fc0}, uint16_t{0xffff}, uint16_t{0x7f81}})
    for (int64_t at : {int64_t{0}, int64_t{2500}, n - 1}) {
      const uint16_t old = h[at];
      h[at] = bad;
      x->upload();
      EXPECT_FALSE(b.gpu->all_finite(x->gpu_t())) << "bits 0x" << std::hex << bad << " at " << std::dec << at;
      EXPECT_FALSE(b.cpu->all_finite(x->cpu()));
      h[at] = old;
    }
}

// --- GEMM ------------------------------------------------------------------------------------

double gemm_tol(DType ta, DType tb, DType tc) {
  return tc == kB ? kBf16Tol : ta == kB || tb == kB ? kBf16GemmTol : kF32Tol;
}

// c = alpha op(a) op(b) + beta c with the given dtypes. c starts random, or NaN at beta 0.
void check_matmul(Backends& b, DType ta, DType tb, DType tc, int64_t m, int64_t n, int64_t k, bool trans_a,
                  bool trans_b, float alpha, float beta, uint64_t seed) {
  const std::string what = std::string("matmul a ") + name(ta) + " b " + name(tb) + " c " + name(tc) + " m " +
                           std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) +
                           (trans_a ? " a^T" : "") + (trans_b ? " b^T" : "") + " alpha " + std::to_string(alpha) +
                           " beta " + std::to_string(beta);
  auto a = make_tensor(b, ta, trans_a ? std::vector<int64_t>{k, m} : std::vector<int64_t>{m, k}, seed);
  auto bm = make_tensor(b, tb, trans_b ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n}, seed + 1);
  auto c = make_tensor(b, tc, {m, n}, seed + 2);
  if (beta == 0.0f) set_values(*c, std::vector<float>(static_cast<size_t>(m * n), kNan));
  b.gpu->matmul(c->gpu_t(), a->gpu_t(), bm->gpu_t(), trans_a, trans_b, alpha, beta);
  b.cpu->matmul(c->cpu(), a->cpu(), bm->cpu(), trans_a, trans_b, alpha, beta);
  expect_matches_cpu(*c, what, gemm_tol(ta, tb, tc));
}

TEST(CudaBf16, MatmulMatchesTheCpuForEveryDtypeMix) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 1, 1}, {7, 13, 5}, {64, 64, 64}, {127, 129, 255}, {33, 47, 1},
                          {1, 300, 64}, {3, 5, 0}, {0, 5, 3}};
  const float scales[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, -2.0f}};
  uint64_t seed = 100;
  for (int mask = 1; mask < 8; ++mask)  // a, b, c; all-f32 is test_cuda_gemm.cc's
    for (const Shape& s : shapes)
      for (int trans = 0; trans < 4; ++trans)
        for (const auto& ab : scales) {
          check_matmul(b, pick(mask, 0), pick(mask, 1), pick(mask, 2), s.m, s.n, s.k, trans & 1, trans & 2, ab[0],
                       ab[1], seed);
          seed += 3;
        }
}

// Megatron's weight gradients: bf16 dy and x, an fp32 main_grad accumulated over micro-batches.
TEST(CudaBf16, MatmulAccumulatesBf16ProductsIntoF32) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t out = 96, in = 160, tokens = 777;
  auto grad = make_tensor(b, kF, {out, in}, 200);
  for (int micro = 0; micro < 3; ++micro) {
    auto dy = make_tensor(b, kB, {tokens, out}, 201 + micro), x = make_tensor(b, kB, {tokens, in}, 211 + micro);
    b.gpu->matmul(grad->gpu_t(), dy->gpu_t(), x->gpu_t(), true, false, 1.0f, 1.0f);
    b.cpu->matmul(grad->cpu(), dy->cpu(), x->cpu(), true, false, 1.0f, 1.0f);
  }
  expect_matches_cpu(*grad, "main_grad after 3 micro-batches", kBf16GemmTol);
}

TEST(CudaBf16, MatmulRepeatsBitForBitAndStopsGrowingScratch) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto a = make_tensor(b, kB, {256, 4096}, 300), w = make_tensor(b, kF, {384, 4096}, 301);
  auto c = make_tensor(b, kF, {256, 384}), cb = make_tensor(b, kB, {256, 384});
  std::vector<uint8_t> first, first_b;
  int64_t workspace = 0;
  for (int run = 0; run < 3; ++run) {
    b.gpu->matmul(c->gpu_t(), a->gpu_t(), w->gpu_t(), false, true, 1.0f, 0.0f);
    b.gpu->matmul(cb->gpu_t(), a->gpu_t(), w->gpu_t(), false, true, 1.0f, 0.0f);
    if (run == 0) {
      first = device_bytes(*c);
      first_b = device_bytes(*cb);
      workspace = b.gpu->workspace_bytes();
    } else {
      EXPECT_EQ(device_bytes(*c), first) << "run " << run << ": f32 c";
      EXPECT_EQ(device_bytes(*cb), first_b) << "run " << run << ": bf16 c";
      EXPECT_EQ(b.gpu->workspace_bytes(), workspace) << "run " << run << ": scratch grew in a steady state";
    }
  }
}

// c of every form with dtypes (a, b, c) from mask; groups with and without rows.
void check_grouped(Backends& b, GroupedForm form, int mask, const std::vector<int64_t>& counts, int64_t out,
                   int64_t in, float beta, uint64_t seed) {
  const int64_t groups = static_cast<int64_t>(counts.size());
  const int64_t rows = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const DType ta = pick(mask, 0), tb = pick(mask, 1), tc = pick(mask, 2);
  std::unique_ptr<Pair> a, w, c;
  if (form == GroupedForm::kWeightGrad) {
    a = make_tensor(b, ta, {rows, out}, seed);
    w = make_tensor(b, tb, {rows, in}, seed + 1);
    c = make_tensor(b, tc, {groups, out, in}, seed + 2);
  } else {
    const bool fwd = form == GroupedForm::kForward;
    a = make_tensor(b, ta, {rows, fwd ? in : out}, seed);
    w = make_tensor(b, tb, {groups, out, in}, seed + 1);
    c = make_tensor(b, tc, {rows, fwd ? out : in}, seed + 2);
  }
  if (beta == 0.0f) set_values(*c, std::vector<float>(static_cast<size_t>(c->numel()), kNan));
  b.gpu->grouped_matmul(c->gpu_t(), a->gpu_t(), w->gpu_t(), counts.data(), groups, form, beta);
  b.cpu->grouped_matmul(c->cpu(), a->cpu(), w->cpu(), counts.data(), groups, form, beta);
  expect_matches_cpu(*c, "grouped_matmul form " + std::to_string(static_cast<int>(form)) + " a " + name(ta) +
                             " b " + name(tb) + " c " + name(tc) + " out " + std::to_string(out) + " in " +
                             std::to_string(in) + " beta " + std::to_string(beta),
                     gemm_tol(ta, tb, tc));
}

TEST(CudaBf16, GroupedMatmulMatchesTheCpuInEveryForm) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  uint64_t seed = 400;
  const std::vector<std::vector<int64_t>> count_sets = {{5, 0, 17, 3}, {0, 0}, {64, 1}};
  for (GroupedForm form : {GroupedForm::kForward, GroupedForm::kInputGrad, GroupedForm::kWeightGrad})
    for (int mask = 1; mask < 8; ++mask)
      for (const auto& counts : count_sets)
        for (float beta : {0.0f, 1.0f}) {
          check_grouped(b, form, mask, counts, 24, 40, beta, seed += 3);
          check_grouped(b, form, mask, counts, 7, 13, beta, seed += 3);
        }
}

TEST(CudaBf16, BiasOpsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  uint64_t seed = 500;
  for (int64_t rows : {int64_t{0}, int64_t{3}, int64_t{1000}})
    for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{128}})
      for (int mask = 1; mask < 4; ++mask) {
        const std::string at = " mask " + std::to_string(mask) + " " + shape_of({rows, n});
        auto y = make_tensor(b, pick(mask, 0), {rows, n}, seed++), bias = make_tensor(b, pick(mask, 1), {n}, seed++);
        b.gpu->add_bias(y->gpu_t(), bias->gpu_t());
        b.cpu->add_bias(y->cpu(), bias->cpu());
        expect_matches_cpu(*y, "add_bias" + at);
        auto dbias = make_tensor(b, pick(mask, 0), {n}, seed++), dy = make_tensor(b, pick(mask, 1), {rows, n}, seed++);
        b.gpu->bias_grad(dbias->gpu_t(), dy->gpu_t());
        b.cpu->bias_grad(dbias->cpu(), dy->cpu());
        expect_matches_cpu(*dbias, "bias_grad" + at);
      }
}

// --- norms -----------------------------------------------------------------------------------

// Activations (x, out, dout, dx) in act, weight and bias in wt, their gradients in gt.
void check_norms(Backends& b, DType act, DType wt, DType gt, int64_t rows, int64_t h, uint64_t seed) {
  const std::string at = std::string(" act ") + name(act) + " weight " + name(wt) + " grads " + name(gt) + " " +
                         shape_of({rows, h});
  auto x = make_tensor(b, act, {rows, h}, seed, 2.0f), w = make_tensor(b, wt, {h}, seed + 1),
       bias = make_tensor(b, wt, {h}, seed + 2);
  auto out = make_tensor(b, act, {rows, h}, seed + 3), mean = make_tensor(b, kF, {rows}),
       rstd = make_tensor(b, kF, {rows});
  b.gpu->layernorm_fwd(out->gpu_t(), mean->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(), bias->gpu_t(), 1e-5f);
  b.cpu->layernorm_fwd(out->cpu(), mean->cpu(), rstd->cpu(), x->cpu(), w->cpu(), bias->cpu(), 1e-5f);
  expect_matches_cpu(*out, "layernorm out" + at);
  expect_matches_cpu(*mean, "layernorm mean" + at);
  expect_matches_cpu(*rstd, "layernorm rstd" + at);
  // Each step starts from the CPU's tensors, so that both backends see equal inputs.
  upload(*mean);
  upload(*rstd);
  auto dout = make_tensor(b, act, {rows, h}, seed + 4), dx = make_tensor(b, act, {rows, h}, seed + 5);
  auto dw = make_tensor(b, gt, {h}, seed + 6), db = make_tensor(b, gt, {h}, seed + 7);
  b.gpu->layernorm_bwd(dx->gpu_t(), dw->gpu_t(), db->gpu_t(), dout->gpu_t(), x->gpu_t(), w->gpu_t(), mean->gpu_t(),
                       rstd->gpu_t());
  b.cpu->layernorm_bwd(dx->cpu(), dw->cpu(), db->cpu(), dout->cpu(), x->cpu(), w->cpu(), mean->cpu(), rstd->cpu());
  expect_matches_cpu(*dx, "layernorm dx" + at);
  expect_matches_cpu(*dw, "layernorm dweight" + at);
  expect_matches_cpu(*db, "layernorm dbias" + at);

  b.gpu->rmsnorm_fwd(out->gpu_t(), rstd->gpu_t(), x->gpu_t(), w->gpu_t(), 1e-6f);
  b.cpu->rmsnorm_fwd(out->cpu(), rstd->cpu(), x->cpu(), w->cpu(), 1e-6f);
  expect_matches_cpu(*out, "rmsnorm out" + at);
  expect_matches_cpu(*rstd, "rmsnorm rstd" + at);
  for (Pair* p : {rstd.get(), dx.get(), dw.get()}) upload(*p);
  b.gpu->rmsnorm_bwd(dx->gpu_t(), dw->gpu_t(), dout->gpu_t(), x->gpu_t(), w->gpu_t(), rstd->gpu_t());
  b.cpu->rmsnorm_bwd(dx->cpu(), dw->cpu(), dout->cpu(), x->cpu(), w->cpu(), rstd->cpu());
  expect_matches_cpu(*dx, "rmsnorm dx" + at);
  expect_matches_cpu(*dw, "rmsnorm dweight" + at);
}

TEST(CudaBf16, NormsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  uint64_t seed = 600;
  for (int mask = 1; mask < 8; ++mask) {
    check_norms(b, pick(mask, 0), pick(mask, 1), pick(mask, 2), 37, 100, seed += 10);
    check_norms(b, pick(mask, 0), pick(mask, 1), pick(mask, 2), 300, 1030, seed += 10);
    check_norms(b, pick(mask, 0), pick(mask, 1), pick(mask, 2), 0, 16, seed += 10);
  }
}

// --- attention pieces, activations, dropout ---------------------------------------------------------

TEST(CudaBf16, QkvSplitAndMergeMoveTheCpuBits) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 33, groups = 2, hpg = 3, d = 10;
  for (int mask = 1; mask < 4; ++mask) {  // fused, parts
    const DType fused = pick(mask, 0), parts = pick(mask, 1);
    const std::string at = std::string(" fused ") + name(fused) + " parts " + name(parts);
    auto qkv = make_tensor(b, fused, {tokens, groups * (hpg + 2) * d}, 700 + mask);
    auto q = make_tensor(b, parts, {tokens, groups * hpg * d}), k = make_tensor(b, parts, {tokens, groups * d});
    auto v = make_tensor(b, parts, {tokens, groups * d});
    b.gpu->qkv_split(q->gpu_t(), k->gpu_t(), v->gpu_t(), qkv->gpu_t(), groups, hpg, d);
    b.cpu->qkv_split(q->cpu(), k->cpu(), v->cpu(), qkv->cpu(), groups, hpg, d);
    expect_same_bits(*q, "q" + at);
    expect_same_bits(*k, "k" + at);
    expect_same_bits(*v, "v" + at);
    auto dqkv = make_tensor(b, fused, {tokens, groups * (hpg + 2) * d}, 710 + mask);
    auto dq = make_tensor(b, parts, {tokens, groups * hpg * d}, 720 + mask),
         dk = make_tensor(b, parts, {tokens, groups * d}, 730);
    auto dv = make_tensor(b, parts, {tokens, groups * d}, 740);
    b.gpu->qkv_merge(dqkv->gpu_t(), dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), groups, hpg, d);
    b.cpu->qkv_merge(dqkv->cpu(), dq->cpu(), dk->cpu(), dv->cpu(), groups, hpg, d);
    expect_same_bits(*dqkv, "dqkv" + at);
  }
}

TEST(CudaBf16, RopeMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 301, heads = 4, head_dim = 64;
  std::vector<int32_t> pos(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) pos[t] = static_cast<int32_t>((t * 7919) % 4096);
  auto positions = b.i32({tokens}, pos);
  for (int64_t rotary : {int64_t{64}, int64_t{32}})
    for (bool inverse : {false, true}) {
      auto x = make_tensor(b, kB, {tokens, heads * head_dim}, 800 + rotary);
      b.gpu->rope(x->gpu_t(), positions->gpu_t(), heads, head_dim, rotary, 10000.0f, inverse);
      b.cpu->rope(x->cpu(), positions->cpu(), heads, head_dim, rotary, 10000.0f, inverse);
      expect_matches_cpu(*x, "rope rotary " + std::to_string(rotary) + (inverse ? " inverse" : ""));
    }
}

TEST(CudaBf16, ActivationsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  uint64_t seed = 900;
  for (Activation act : {Activation::kGelu, Activation::kGeluTanh, Activation::kSilu, Activation::kRelu,
                         Activation::kSquaredRelu})
    for (bool gated : {false, true})
      for (int mask = 1; mask < 8; ++mask) {  // x, out/dout, dx
        const int64_t rows = 37, f = 129, width = gated ? 2 * f : f;
        const std::string at = " act " + std::to_string(static_cast<int>(act)) + (gated ? " gated" : "") + " mask " +
                               std::to_string(mask);
        auto x = make_tensor(b, pick(mask, 0), {rows, width}, seed++, 2.0f),
             out = make_tensor(b, pick(mask, 1), {rows, f});
        b.gpu->activation_fwd(out->gpu_t(), x->gpu_t(), act, gated);
        b.cpu->activation_fwd(out->cpu(), x->cpu(), act, gated);
        expect_matches_cpu(*out, "activation_fwd" + at);
        auto dout = make_tensor(b, pick(mask, 1), {rows, f}, seed++),
             dx = make_tensor(b, pick(mask, 2), {rows, width}, seed++);
        b.gpu->activation_bwd(dx->gpu_t(), dout->gpu_t(), x->gpu_t(), act, gated);
        b.cpu->activation_bwd(dx->cpu(), dout->cpu(), x->cpu(), act, gated);
        expect_matches_cpu(*dx, "activation_bwd" + at);
      }
}

TEST(CudaBf16, DropoutMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  for (float p : {0.0f, 0.1f, 0.5f})
    for (int mask = 1; mask < 4; ++mask) {  // out, x
      const std::string at = " p " + std::to_string(p) + " mask " + std::to_string(mask);
      auto x = make_tensor(b, pick(mask, 1), {65, 77}, 1000 + mask),
           out = make_tensor(b, pick(mask, 0), {65, 77}, 1010);
      b.gpu->dropout_fwd(out->gpu_t(), x->gpu_t(), p, 0xabcdef, 11);
      b.cpu->dropout_fwd(out->cpu(), x->cpu(), p, 0xabcdef, 11);
      expect_matches_cpu(*out, "dropout_fwd" + at);
      upload(*out);
      b.gpu->dropout_bwd(x->gpu_t(), out->gpu_t(), p, 0x1234, 0);
      b.cpu->dropout_bwd(x->cpu(), out->cpu(), p, 0x1234, 0);
      expect_matches_cpu(*x, "dropout_bwd" + at);
    }
  // In place on bf16.
  auto x = make_tensor(b, kB, {10, 33}, 1020);
  b.gpu->dropout_fwd(x->gpu_t(), x->gpu_t(), 0.25f, 77, 3);
  b.cpu->dropout_fwd(x->cpu(), x->cpu(), 0.25f, 77, 3);
  expect_matches_cpu(*x, "dropout_fwd in place");
}

// --- embedding and the logits' gradient --------------------------------------------------------

TEST(CudaBf16, EmbeddingMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 1000, vocab = 50, h = 300, vocab_start = 20;
  std::mt19937 rng(5);
  std::vector<int32_t> id_values(static_cast<size_t>(tokens));
  for (auto& id : id_values) id = static_cast<int32_t>(rng() % (vocab + 30));  // some outside the range
  auto ids = b.i32({tokens}, id_values);
  for (int mask = 1; mask < 4; ++mask) {  // table, rows
    const std::string at = " mask " + std::to_string(mask);
    auto table = make_tensor(b, pick(mask, 0), {vocab, h}, 1100 + mask);
    for (bool accumulate : {false, true}) {
      auto out = make_tensor(b, pick(mask, 1), {tokens, h}, 1110);
      b.gpu->embedding_fwd(out->gpu_t(), ids->gpu_t(), table->gpu_t(), vocab_start, accumulate);
      b.cpu->embedding_fwd(out->cpu(), ids->cpu(), table->cpu(), vocab_start, accumulate);
      expect_matches_cpu(*out, std::string("embedding_fwd") + (accumulate ? " accumulate" : "") + at);
    }
    auto dout = make_tensor(b, pick(mask, 1), {tokens, h}, 1120),
         dtable = make_tensor(b, pick(mask, 0), {vocab, h}, 1130);
    b.gpu->embedding_bwd(dtable->gpu_t(), ids->gpu_t(), dout->gpu_t(), vocab_start);
    b.cpu->embedding_bwd(dtable->cpu(), ids->cpu(), dout->cpu(), vocab_start);
    expect_matches_cpu(*dtable, "embedding_bwd" + at);
  }
}

TEST(CudaBf16, CrossEntropyGradientMayBeBf16) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 19, cols = 300, vocab_start = 300, vocab_valid = 560;
  std::vector<int32_t> target_values(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) target_values[t] = static_cast<int32_t>(290 + (t * 37) % 320);
  auto targets = b.i32({tokens}, target_values);
  auto logits = make_tensor(b, kF, {tokens, cols}, 1200, 3.0f), grad_scale = make_tensor(b, kF, {tokens}, 1201);
  auto row_max = make_tensor(b, kF, {tokens}), sumexp = make_tensor(b, kF, {tokens}),
       target_logit = make_tensor(b, kF, {tokens});
  b.cpu->ce_row_max(row_max->cpu(), logits->cpu(), vocab_start, vocab_valid);
  b.cpu->ce_sumexp_target(sumexp->cpu(), target_logit->cpu(), logits->cpu(), row_max->cpu(), targets->cpu(),
                          vocab_start, vocab_valid);
  upload(*row_max);
  upload(*sumexp);
  auto dlogits = make_tensor(b, kB, {tokens, cols}, 1202);
  b.gpu->ce_bwd(dlogits->gpu_t(), logits->gpu_t(), row_max->gpu_t(), sumexp->gpu_t(), targets->gpu_t(),
                grad_scale->gpu_t(), vocab_start, vocab_valid);
  b.cpu->ce_bwd(dlogits->cpu(), logits->cpu(), row_max->cpu(), sumexp->cpu(), targets->cpu(), grad_scale->cpu(),
                vocab_start, vocab_valid);
  expect_matches_cpu(*dlogits, "ce_bwd dlogits");
}

// --- attention -------------------------------------------------------------------------------

// Dtypes of one attention call: inputs q, k, v; out; the backward's dout and dq, dk, dv.
struct AttentionTypes {
  DType q, k, v, out, dout, dq, dk, dv;
};

void check_attention(Backends& b, const AttentionDims& d, const AttentionTypes& t, uint64_t seed) {
  const std::string at = " sq " + std::to_string(d.seq_q) + " skv " + std::to_string(d.seq_kv) + " B " +
                         std::to_string(d.batch) + " H " + std::to_string(d.heads) + " G " + std::to_string(d.groups) +
                         " D " + std::to_string(d.head_dim) + (d.causal ? " causal" : " full") + " p " +
                         std::to_string(d.dropout_p) + " q " + name(t.q) + " out " + name(t.out);
  const int64_t tq = d.seq_q * d.batch, tk = d.seq_kv * d.batch;
  const int64_t hd = d.heads * d.head_dim, gd = d.groups * d.head_dim;
  auto q = make_tensor(b, t.q, {tq, hd}, seed), k = make_tensor(b, t.k, {tk, gd}, seed + 1),
       v = make_tensor(b, t.v, {tk, gd}, seed + 2);
  auto out = make_tensor(b, t.out, {tq, hd}, seed + 3), lse = make_tensor(b, kF, {tq, d.heads}, seed + 4);
  b.gpu->attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), d);
  b.cpu->attention_fwd(out->cpu(), lse->cpu(), q->cpu(), k->cpu(), v->cpu(), d);
  expect_matches_cpu(*out, "attention_fwd out" + at);
  expect_matches_cpu(*lse, "attention_fwd lse" + at);
  // The backward on the CPU's out and lse, so that both see the same inputs.
  upload(*out);
  upload(*lse);
  auto dout = make_tensor(b, t.dout, {tq, hd}, seed + 5);
  auto dq = make_tensor(b, t.dq, {tq, hd}, seed + 6), dk = make_tensor(b, t.dk, {tk, gd}, seed + 7);
  auto dv = make_tensor(b, t.dv, {tk, gd}, seed + 8);
  b.gpu->attention_bwd(dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), dout->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(),
                       out->gpu_t(), lse->gpu_t(), d);
  b.cpu->attention_bwd(dq->cpu(), dk->cpu(), dv->cpu(), dout->cpu(), q->cpu(), k->cpu(), v->cpu(), out->cpu(),
                       lse->cpu(), d);
  expect_matches_cpu(*dq, "attention_bwd dq" + at);
  expect_matches_cpu(*dk, "attention_bwd dk" + at);
  expect_matches_cpu(*dv, "attention_bwd dv" + at);
}

TEST(CudaBf16, AttentionMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const AttentionTypes all_bf16{kB, kB, kB, kB, kB, kB, kB, kB};
  // seq_q, seq_kv, batch, heads, groups, head_dim, causal, dropout: GQA and MQA, fewer
  // queries than keys, lengths and head dims off the tile sizes (3: no 4-wide loads).
  const AttentionDims shapes[] = {
      attention_dims(37, 37, 2, 4, 2, 64, true, 0),   attention_dims(45, 61, 1, 6, 2, 40, true, 0),
      attention_dims(33, 33, 2, 4, 1, 128, true, 0),  attention_dims(20, 20, 1, 2, 2, 256, false, 0),
      attention_dims(70, 70, 1, 4, 2, 3, true, 0),    attention_dims(129, 129, 1, 8, 2, 32, true, 0.1f),
      attention_dims(1, 17, 3, 2, 1, 16, false, 0)};
  uint64_t seed = 1300;
  for (const AttentionDims& d : shapes) check_attention(b, d, all_bf16, seed += 10);
  // Mixed: bf16 k/v/dout beside f32 q, out and some gradients.
  const AttentionTypes mixed{kF, kB, kB, kF, kB, kF, kB, kF};
  check_attention(b, attention_dims(37, 37, 2, 4, 2, 64, true, 0), mixed, seed += 10);
  check_attention(b, attention_dims(45, 61, 1, 6, 3, 40, true, 0), mixed, seed += 10);
}

TEST(CudaBf16, AttentionRepeatsBitForBit) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const AttentionDims d = attention_dims(200, 200, 2, 8, 2, 64, true, 0);
  const int64_t t = d.seq_q * d.batch;
  auto q = make_tensor(b, kB, {t, 512}, 1400), k = make_tensor(b, kB, {t, 128}, 1401),
       v = make_tensor(b, kB, {t, 128}, 1402);
  auto out = make_tensor(b, kB, {t, 512}), lse = make_tensor(b, kF, {t, 8}), dout = make_tensor(b, kB, {t, 512}, 1403);
  auto dq = make_tensor(b, kB, {t, 512}), dk = make_tensor(b, kB, {t, 128}), dv = make_tensor(b, kB, {t, 128});
  std::vector<uint8_t> first;
  for (int run = 0; run < 3; ++run) {
    b.gpu->attention_fwd(out->gpu_t(), lse->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(), d);
    b.gpu->attention_bwd(dq->gpu_t(), dk->gpu_t(), dv->gpu_t(), dout->gpu_t(), q->gpu_t(), k->gpu_t(), v->gpu_t(),
                         out->gpu_t(), lse->gpu_t(), d);
    std::vector<uint8_t> got;
    for (const Pair* p : {out.get(), lse.get(), dq.get(), dk.get(), dv.get()}) {
      const std::vector<uint8_t> bytes = device_bytes(*p);
      got.insert(got.end(), bytes.begin(), bytes.end());
    }
    if (run == 0)
      first = got;
    else
      EXPECT_EQ(got, first) << "run " << run;
  }
}

TEST(CudaBf16, AttentionMergeMatchesTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t tokens = 29, heads = 3, dim = 40;
  for (int mask = 1; mask < 4; ++mask) {  // out, part_out
    auto out = make_tensor(b, pick(mask, 0), {tokens, heads * dim}, 1500);
    auto part = make_tensor(b, pick(mask, 1), {tokens, heads * dim}, 1501);
    auto lse = make_tensor(b, kF, {tokens, heads}, 1502), part_lse = make_tensor(b, kF, {tokens, heads}, 1503);
    // Rows with no keys yet, and parts that saw none.
    std::vector<float> l = host_values(*lse), pl = host_values(*part_lse);
    l[0] = l[5] = -std::numeric_limits<float>::infinity();
    pl[1] = pl[5] = -std::numeric_limits<float>::infinity();
    set_values(*lse, l);
    set_values(*part_lse, pl);
    b.gpu->attention_merge(out->gpu_t(), lse->gpu_t(), part->gpu_t(), part_lse->gpu_t(), heads, dim);
    b.cpu->attention_merge(out->cpu(), lse->cpu(), part->cpu(), part_lse->cpu(), heads, dim);
    expect_matches_cpu(*out, "attention_merge out mask " + std::to_string(mask));
    expect_matches_cpu(*lse, "attention_merge lse mask " + std::to_string(mask));
  }
}

// --- mixture of experts ------------------------------------------------------------------------

// rows [T, k]: choices dropped with probability `drop`, the kept ones on distinct rows of [0, R).
std::vector<int32_t> random_rows(int64_t T, int64_t k, int64_t R, double drop, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> free_rows(static_cast<size_t>(R));
  std::iota(free_rows.begin(), free_rows.end(), 0);
  std::shuffle(free_rows.begin(), free_rows.end(), rng);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<int32_t> rows(static_cast<size_t>(T * k));
  size_t next = 0;
  for (auto& r : rows) r = (u(rng) < drop || next == free_rows.size()) ? -1 : free_rows[next++];
  return rows;
}

TEST(CudaBf16, MoePermutesMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  struct Shape {
    int64_t tokens, choices, hidden, rows;
  };
  uint64_t seed = 1600;
  for (const Shape& s : {Shape{37, 2, 33, 80}, Shape{64, 8, 130, 600}, Shape{0, 2, 16, 4}})
    for (int mask = 1; mask < 4; ++mask) {  // token side, permuted side
      const DType tok = pick(mask, 0), perm = pick(mask, 1);
      const std::string at = std::string(" tokens ") + name(tok) + " permuted " + name(perm) + " " +
                             shape_of({s.tokens, s.choices, s.hidden, s.rows});
      auto rows = b.i32({s.tokens, s.choices}, random_rows(s.tokens, s.choices, s.rows, 0.2, seed += 10));
      auto x = make_tensor(b, tok, {s.tokens, s.hidden}, seed + 1),
           x_perm = make_tensor(b, perm, {s.rows, s.hidden}, seed + 2);
      b.gpu->moe_permute(x_perm->gpu_t(), x->gpu_t(), rows->gpu_t());
      b.cpu->moe_permute(x_perm->cpu(), x->cpu(), rows->cpu());
      expect_same_bits(*x_perm, "moe_permute" + at);
      auto dx = make_tensor(b, tok, {s.tokens, s.hidden}, seed + 3);
      b.gpu->moe_permute_bwd(dx->gpu_t(), x_perm->gpu_t(), rows->gpu_t());
      b.cpu->moe_permute_bwd(dx->cpu(), x_perm->cpu(), rows->cpu());
      expect_matches_cpu(*dx, "moe_permute_bwd" + at);

      auto probs = make_tensor(b, kF, {s.tokens, s.choices}, seed + 4),
           out = make_tensor(b, tok, {s.tokens, s.hidden}, seed + 5);
      auto y = make_tensor(b, perm, {s.rows, s.hidden}, seed + 6);
      b.gpu->moe_unpermute(out->gpu_t(), y->gpu_t(), rows->gpu_t(), probs->gpu_t());
      b.cpu->moe_unpermute(out->cpu(), y->cpu(), rows->cpu(), probs->cpu());
      expect_matches_cpu(*out, "moe_unpermute" + at);
      auto dy = make_tensor(b, perm, {s.rows, s.hidden}, seed + 7),
           dprobs = make_tensor(b, kF, {s.tokens, s.choices}, seed + 8);
      auto dout = make_tensor(b, tok, {s.tokens, s.hidden}, seed + 9);
      b.gpu->moe_unpermute_bwd(dy->gpu_t(), dprobs->gpu_t(), dout->gpu_t(), y->gpu_t(), rows->gpu_t(),
                               probs->gpu_t());
      b.cpu->moe_unpermute_bwd(dy->cpu(), dprobs->cpu(), dout->cpu(), y->cpu(), rows->cpu(), probs->cpu());
      expect_matches_cpu(*dy, "moe_unpermute_bwd dy" + at);
      expect_matches_cpu(*dprobs, "moe_unpermute_bwd dprobs" + at);
    }
}

// --- arguments that stay f32 ----------------------------------------------------------------------

// call must throw kInvalidArgument naming "op: arg must be F32".
void expect_refused(const std::function<void()>& call, const std::string& op, const std::string& arg) {
  try {
    call();
    ADD_FAILURE() << op << ": a BF16 " << arg << " was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(op + ": " + arg + " must be F32"), std::string::npos) << e.what();
  }
}

TEST(CudaBf16, RefusesBf16WhereTheContractKeepsF32) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const int64_t t = 8, h = 16;
  auto x = make_tensor(b, kB, {t, h}, 1), w = make_tensor(b, kB, {h}, 2), out = make_tensor(b, kB, {t, h});
  auto stat_f = make_tensor(b, kF, {t}), stat_b = make_tensor(b, kB, {t});
  expect_refused(
      [&] {
        b.gpu->layernorm_fwd(out->gpu_t(), stat_b->gpu_t(), stat_f->gpu_t(), x->gpu_t(), w->gpu_t(), Tensor(), 1e-5f);
      },
      "layernorm_fwd", "mean");
  expect_refused([&] { b.gpu->rmsnorm_fwd(out->gpu_t(), stat_b->gpu_t(), x->gpu_t(), w->gpu_t(), 1e-5f); },
                 "rmsnorm_fwd", "rstd");

  const AttentionDims d = attention_dims(4, 4, 2, 2, 2, 4, true, 0);  // q, k, v, out all [8, 8]
  auto q = make_tensor(b, kB, {8, 8}, 3), attn_out = make_tensor(b, kB, {8, 8}), lse_b = make_tensor(b, kB, {8, 2});
  expect_refused(
      [&] { b.gpu->attention_fwd(attn_out->gpu_t(), lse_b->gpu_t(), q->gpu_t(), q->gpu_t(), q->gpu_t(), d); },
      "attention_fwd", "lse");

  auto logits_b = make_tensor(b, kB, {t, h}, 4), logits_f = make_tensor(b, kF, {t, h}, 5);
  expect_refused([&] { b.gpu->ce_row_max(stat_f->gpu_t(), logits_b->gpu_t(), 0, h); }, "ce_row_max", "logits");
  expect_refused([&] { b.gpu->ce_row_max(stat_b->gpu_t(), logits_f->gpu_t(), 0, h); }, "ce_row_max", "row_max");
  expect_refused([&] { b.gpu->router_lse(stat_f->gpu_t(), logits_b->gpu_t()); }, "router_lse", "logits");

  auto rows = b.i32({t, 1}, {0, 1, 2, 3, 4, 5, 6, 7});
  auto probs_b = make_tensor(b, kB, {t, 1});
  expect_refused([&] { b.gpu->moe_unpermute(out->gpu_t(), x->gpu_t(), rows->gpu_t(), probs_b->gpu_t()); },
                 "moe_unpermute", "probs");

  auto p = make_tensor(b, kF, {h}), m = make_tensor(b, kF, {h}), v = make_tensor(b, kF, {h});
  backend::AdamWArgs args;
  args.lr = 1e-3f;
  expect_refused([&] { b.gpu->adamw(p->gpu_t(), w->gpu_t(), m->gpu_t(), v->gpu_t(), args); }, "adamw", "grad");
  expect_refused([&] { b.gpu->adamw(w->gpu_t(), p->gpu_t(), m->gpu_t(), v->gpu_t(), args); }, "adamw", "param");

  // And dtypes that are neither: an I32 tensor where a floating one goes.
  auto ids = b.i32({t, h}, std::vector<int32_t>(static_cast<size_t>(t * h), 0));
  try {
    b.gpu->add(out->gpu_t(), ids->gpu_t(), x->gpu_t());
    ADD_FAILURE() << "add: an I32 a was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add: a must be F32 or BF16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpt::device_testing
