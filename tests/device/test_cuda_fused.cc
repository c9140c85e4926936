// The fused ops on the GPU (src/cuda/cuda_fused.cu, matmul_bias_act in src/cuda/cuda_gemm.cu)
// against the CPU oracle, in f32 (1e-5 of the tensor's scale), bf16 (1e-2) and mixes (an f32
// result of a bf16 GEMM: 1e-4, tensor cores summing in their own order), on realistic, odd
// and empty shapes. The add + norm kernel must also give the bits of the GPU's own add() and
// norm. matmul_bias_act runs each of its paths: cuBLASLt's bias epilogue, its GELU epilogue
// (gelu_tanh, bf16), and the fallbacks (k = 0, rows that are not a multiple of 8 elements, a
// bias or pre off a 16-byte boundary, a bias in another dtype, f32 operands with a bf16 y).
// qkv_split_rope / qkv_merge_rope and ce_stats against the CPU and the GPU's unfused ops, bf16
// d(logits) against the f32 ones rounded, and the packed and one-element paths of the
// elementwise and norm kernels (sizes around the pack, tensors off a 16-byte boundary).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

using backend::Activation;

constexpr DType kF = DType::kF32, kB = DType::kBF16;
constexpr double kF32Tol = 1e-5, kBf16Tol = 1e-2, kBf16GemmTol = 1e-4;
constexpr float kEps = 1e-5f;

const char* dtype_label(DType t) { return t == kB ? "bf16" : "f32"; }

// A tensor on both backends, optionally `skip` elements into its storage (to put it off an
// alignment boundary): host bytes for the CPU op, a device copy for the GPU op.
struct Both {
  std::unique_ptr<Pair> store;
  int64_t skip = 0;
  std::vector<int64_t> shape;

  DType dtype() const { return store->dtype; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  Tensor at(void* base) const {
    Tensor t;
    t.data = numel() == 0 ? nullptr : static_cast<char*>(base) + skip * dtype_size(dtype());
    t.dtype = dtype();
    t.ndim = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
    return t;
  }
  Tensor cpu() const { return at(store->host.data()); }
  Tensor gpu() const { return at(store->dev); }
};

float load(const uint8_t* bytes, DType dt, int64_t i) {
  if (dt == kB) {
    uint16_t h;
    std::memcpy(&h, bytes + 2 * i, 2);
    return bf16_to_f32(h);
  }
  float f;
  std::memcpy(&f, bytes + 4 * i, 4);
  return f;
}

// normal(offset, scale) values from `seed` (rounded for bf16), on both backends.
Both make(Backends& b, DType dt, std::vector<int64_t> shape, uint64_t seed, float scale = 1.0f, float offset = 0.0f,
          int64_t skip = 0) {
  Both t;
  t.shape = std::move(shape);
  t.skip = skip;
  const int64_t n = t.numel(), total = n + skip;
  t.store = std::make_unique<Pair>();
  Pair& p = *t.store;
  p.gpu = b.gpu.get();
  p.dtype = dt;
  p.shape = {total};
  p.host.assign(static_cast<size_t>(total) * dtype_size(dt), 0);
  std::vector<float> v(static_cast<size_t>(total), 0.0f);
  if (total > 0) fill_normal(v.data(), total, seed, 0, offset, scale);
  for (int64_t i = 0; i < total; ++i) {
    if (dt == kB) {
      const uint16_t h = f32_to_bf16(v[static_cast<size_t>(i)]);
      std::memcpy(p.host.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(p.host.data() + 4 * i, &v[static_cast<size_t>(i)], 4);
    }
  }
  p.dev = b.gpu->allocate(p.host.size() ? p.host.size() : 1);
  if (!p.host.empty()) p.upload();
  return t;
}

std::vector<uint8_t> device_bytes(const Both& t) {
  std::vector<uint8_t> out(t.store->host.size());
  if (!out.empty()) t.store->gpu->to_host(out.data(), t.store->dev, out.size());
  return out;
}

// The GPU's values match the CPU's (NaN where the CPU has NaN) within tol of their scale.
void expect_matches_cpu(const Both& t, double tol, const std::string& what) {
  const std::vector<uint8_t> dev = device_bytes(t);
  const int64_t n = t.numel();
  std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    got[static_cast<size_t>(i)] = load(dev.data(), t.dtype(), t.skip + i);
    want[static_cast<size_t>(i)] = load(t.store->host.data(), t.dtype(), t.skip + i);
    if (std::isnan(got[static_cast<size_t>(i)]) != std::isnan(want[static_cast<size_t>(i)])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " on the GPU, " << want[i] << " on the CPU";
      return;
    }
  }
  const double e = scaled_error(got, want.data(), got.size());
  EXPECT_LE(e, tol) << what << " (" << dtype_label(t.dtype()) << "): the GPU differs from the CPU by " << e
                    << " (scaled)";
}

void expect_same_device_bits(const Both& got, const Both& want, const std::string& what) {
  EXPECT_EQ(device_bytes(got), device_bytes(want)) << what << ": the bits differ";
}

template <typename F>
void expect_invalid(F f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << what << ": expected mpt::Error(kInvalidArgument)";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << what << ": " << e.what();
  }
}

// ---- add + norm -----------------------------------------------------------------------------

struct AddNormCase {
  bool layernorm = true, with_bias = true;
  bool sum_is_a = false;
  int64_t rows = 0, h = 0;
  DType sum = kF, out = kF, a = kF, b = kF, weight = kF;
};

std::string label(const AddNormCase& c) {
  return std::string(c.layernorm ? "add_layernorm_fwd" : "add_rmsnorm_fwd") + " " + std::to_string(c.rows) + "x" +
         std::to_string(c.h) + " sum:" + dtype_label(c.sum) + " out:" + dtype_label(c.out) + " a:" +
         dtype_label(c.a) + " b:" + dtype_label(c.b) + " weight:" + dtype_label(c.weight) +
         (c.with_bias ? " bias" : "") + (c.sum_is_a ? " (sum is a)" : "");
}

struct AddNormArgs {
  Both sum, out, mean, rstd, a, b, weight, bias;

  AddNormArgs(Backends& be, const AddNormCase& c, uint64_t seed) {
    a = make(be, c.a, {c.rows, c.h}, seed + 1, 2.0f, 3.0f);  // a mean far from zero
    b = make(be, c.b, {c.rows, c.h}, seed + 2);
    sum = make(be, c.sum, {c.rows, c.h}, seed + 3, 100.0f);
    out = make(be, c.out, {c.rows, c.h}, seed + 4, 100.0f);
    mean = make(be, kF, {c.rows}, seed + 5);
    rstd = make(be, kF, {c.rows}, seed + 6);
    weight = make(be, c.weight, {c.h}, seed + 7, 0.5f, 1.0f);
    bias = make(be, c.weight, {c.h}, seed + 8, 0.5f);
  }
  const Both& summed(const AddNormCase& c) const { return c.sum_is_a ? a : sum; }

  void fused(backend::Ops& ops, bool on_gpu, const AddNormCase& c) {
    auto T = [&](const Both& t) { return on_gpu ? t.gpu() : t.cpu(); };
    const Tensor s = T(summed(c));
    if (c.layernorm)
      ops.add_layernorm_fwd(s, T(out), T(mean), T(rstd), T(a), T(b), T(weight), c.with_bias ? T(bias) : Tensor(),
                            kEps);
    else
      ops.add_rmsnorm_fwd(s, T(out), T(rstd), T(a), T(b), T(weight), kEps);
  }
  void unfused(backend::Ops& ops, bool on_gpu, const AddNormCase& c) {
    auto T = [&](const Both& t) { return on_gpu ? t.gpu() : t.cpu(); };
    const Tensor s = T(summed(c));
    ops.add(s, T(a), T(b));
    if (c.layernorm)
      ops.layernorm_fwd(T(out), T(mean), T(rstd), s, T(weight), c.with_bias ? T(bias) : Tensor(), kEps);
    else
      ops.rmsnorm_fwd(T(out), T(rstd), s, T(weight), kEps);
  }
};

void check_add_norm(Backends& be, const AddNormCase& c, uint64_t seed) {
  const std::string what = label(c);
  AddNormArgs x(be, c, seed);
  x.fused(*be.cpu, false, c);
  x.fused(*be.gpu, true, c);
  EXPECT_EQ(device_bytes(x.summed(c)), x.summed(c).store->host) << what << ": sum differs from the CPU's bits";
  expect_matches_cpu(x.out, c.out == kB ? kBf16Tol : kF32Tol, what + ": out");
  if (c.layernorm) expect_matches_cpu(x.mean, kF32Tol, what + ": mean");
  expect_matches_cpu(x.rstd, kF32Tol, what + ": rstd");

  // The GPU's add() then its norm, on the same inputs: the same bits.
  AddNormArgs y(be, c, seed);
  y.unfused(*be.gpu, true, c);
  expect_same_device_bits(x.summed(c), y.summed(c), what + ": sum against the GPU's add()");
  expect_same_device_bits(x.out, y.out, what + ": out against the GPU's add() and norm");
  if (c.layernorm) expect_same_device_bits(x.mean, y.mean, what + ": mean against the GPU's norm");
  expect_same_device_bits(x.rstd, y.rstd, what + ": rstd against the GPU's norm");
}

// Empty, a single element, odd widths, a realistic one, and widths past one warp's stride
// that are not multiples of 32.
const std::vector<std::pair<int64_t, int64_t>> kNormShapes = {{0, 8}, {1, 1}, {3, 5}, {37, 100}, {9, 1000}, {4, 4099}};

TEST(CudaFused, AddNormMatchesCpuInF32) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 10;
  for (const auto& [rows, h] : kNormShapes)
    for (bool layernorm : {true, false})
      for (bool with_bias : {true, false}) {
        if (!layernorm && with_bias) continue;
        AddNormCase c;
        c.layernorm = layernorm, c.with_bias = with_bias, c.rows = rows, c.h = h;
        check_add_norm(be, c, seed += 16);
      }
}

TEST(CudaFused, AddNormMatchesCpuInBf16AndMixes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 1000;
  for (const auto& [rows, h] : kNormShapes)
    for (bool layernorm : {true, false})
      for (int mask : {0x1f, 0x01, 0x0c, 0x13, 0x1a}) {  // all bf16, then mixes of (sum, out, a, b, weight)
        AddNormCase c;
        c.layernorm = layernorm, c.rows = rows, c.h = h;
        auto pick = [&](int bit) { return (mask >> bit) & 1 ? kB : kF; };
        c.sum = pick(0), c.out = pick(1), c.a = pick(2), c.b = pick(3), c.weight = pick(4);
        check_add_norm(be, c, seed += 16);
      }
}

// The residual updated in place: sum is a.
TEST(CudaFused, AddNormWithSumAliasingA) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 3000;
  for (const auto& [rows, h] : kNormShapes)
    for (bool layernorm : {true, false})
      for (DType dt : {kF, kB}) {
        AddNormCase c;
        c.layernorm = layernorm, c.rows = rows, c.h = h, c.sum_is_a = true;
        c.sum = c.a = c.out = dt;
        c.b = dt == kB ? kF : kB;
        check_add_norm(be, c, seed += 16);
      }
}

TEST(CudaFused, AddNormRefusesOverlapsAndBadShapes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  AddNormCase c;
  c.rows = 4, c.h = 16;
  AddNormArgs x(be, c, 5);
  expect_invalid([&] { be.gpu->add_rmsnorm_fwd(x.sum.gpu(), x.a.gpu(), x.rstd.gpu(), x.a.gpu(), x.b.gpu(),
                                               x.weight.gpu(), kEps); },
                 "out over a");
  Tensor shifted = x.a.gpu();
  shifted.data = static_cast<char*>(shifted.data) + 4;
  shifted.shape[0] = 3;
  Tensor a3 = x.a.gpu(), b3 = x.b.gpu(), out3 = x.out.gpu(), rstd3 = x.rstd.gpu();
  a3.shape[0] = b3.shape[0] = out3.shape[0] = 3;
  rstd3.shape[0] = 3;
  expect_invalid([&] { be.gpu->add_rmsnorm_fwd(shifted, out3, rstd3, a3, b3, x.weight.gpu(), kEps); },
                 "sum over part of a");
  Tensor short_out = x.out.gpu();
  short_out.shape[1] = 15;
  expect_invalid([&] { be.gpu->add_layernorm_fwd(x.sum.gpu(), short_out, x.mean.gpu(), x.rstd.gpu(), x.a.gpu(),
                                                 x.b.gpu(), x.weight.gpu(), Tensor(), kEps); },
                 "out of another size");
  Tensor bf16_rstd = x.rstd.gpu();
  bf16_rstd.dtype = kB;
  expect_invalid([&] { be.gpu->add_rmsnorm_fwd(x.sum.gpu(), x.out.gpu(), bf16_rstd, x.a.gpu(), x.b.gpu(),
                                               x.weight.gpu(), kEps); },
                 "bf16 rstd");
}

// ---- matmul_bias_act ------------------------------------------------------------------------

struct GemmCase {
  int64_t rows = 0, in = 0, out = 0;
  std::optional<Activation> act;
  bool with_bias = true;
  DType y = kF, pre = kF, x = kF, w = kF, bias = kF;
  int64_t bias_skip = 0, pre_skip = 0;  // elements off the allocation's start
};

const char* act_label(const std::optional<Activation>& act) {
  if (!act) return "none";
  switch (*act) {
    case Activation::kGelu: return "gelu";
    case Activation::kGeluTanh: return "gelu_tanh";
    case Activation::kSilu: return "silu";
    case Activation::kRelu: return "relu";
    case Activation::kSquaredRelu: return "squared_relu";
  }
  return "?";
}

std::string label(const GemmCase& c) {
  std::string s = "matmul_bias_act [" + std::to_string(c.rows) + ", " + std::to_string(c.in) + "] -> " +
                  std::to_string(c.out) + " act " + act_label(c.act) + " y:" + dtype_label(c.y) + " x:" +
                  dtype_label(c.x) + " w:" + dtype_label(c.w);
  if (c.act) s += std::string(" pre:") + dtype_label(c.pre) + (c.pre_skip ? " (pre offset)" : "");
  if (c.with_bias) s += std::string(" bias:") + dtype_label(c.bias) + (c.bias_skip ? " (bias offset)" : "");
  return s;
}

// An output's tolerance: bf16 storage, else an f32 result of a bf16 product, else fp32.
double tolerance(DType out, const GemmCase& c) {
  if (out == kB) return kBf16Tol;
  return c.x == kB || c.w == kB ? kBf16GemmTol : kF32Tol;
}

void check_matmul_bias_act(Backends& be, const GemmCase& c, uint64_t seed) {
  const std::string what = label(c);
  Both x = make(be, c.x, {c.rows, c.in}, seed + 1);
  Both w = make(be, c.w, {c.out, c.in}, seed + 2, 1.0f / std::sqrt(static_cast<float>(c.in > 0 ? c.in : 1)));
  Both bias = make(be, c.bias, {c.out}, seed + 3, 0.5f, 0.0f, c.bias_skip);
  Both y = make(be, c.y, {c.rows, c.out}, seed + 4, 100.0f);
  Both pre = make(be, c.pre, {c.rows, c.out}, seed + 5, 100.0f, 0.0f, c.pre_skip);
  const Tensor no;
  be.cpu->matmul_bias_act(y.cpu(), c.act ? pre.cpu() : no, x.cpu(), w.cpu(), c.with_bias ? bias.cpu() : no, c.act);
  be.gpu->matmul_bias_act(y.gpu(), c.act ? pre.gpu() : no, x.gpu(), w.gpu(), c.with_bias ? bias.gpu() : no, c.act);
  expect_matches_cpu(y, tolerance(c.y, c), what + ": y");
  if (c.act) expect_matches_cpu(pre, tolerance(c.pre, c), what + ": pre");

  // Repeats give the same bits (one cached algorithm per shape).
  const std::vector<uint8_t> first = device_bytes(y);
  be.gpu->matmul_bias_act(y.gpu(), c.act ? pre.gpu() : no, x.gpu(), w.gpu(), c.with_bias ? bias.gpu() : no, c.act);
  EXPECT_EQ(device_bytes(y), first) << what << ": a repeat gives other bits";
}

const std::vector<std::optional<Activation>> kActs = {std::nullopt,      Activation::kGelu, Activation::kGeluTanh,
                                                      Activation::kSilu, Activation::kRelu, Activation::kSquaredRelu};

struct GemmShape {
  int64_t rows, in, out;
};
// Aligned shapes (the epilogues), rows of a width that is not a multiple of 8 (no GELU
// epilogue), odd ones, a single element, no rows, k = 0.
const std::vector<GemmShape> kGemmShapes = {{64, 64, 128}, {100, 96, 264}, {33, 40, 20}, {7, 13, 9},
                                            {1, 1, 1},     {0, 8, 8},      {5, 0, 16}};

TEST(CudaFused, MatmulBiasActMatchesCpuInF32) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 5000;
  for (const GemmShape& s : kGemmShapes)
    for (const auto& act : kActs)
      for (bool with_bias : {true, false}) {
        GemmCase c;
        c.rows = s.rows, c.in = s.in, c.out = s.out, c.act = act, c.with_bias = with_bias;
        check_matmul_bias_act(be, c, seed += 16);
      }
}

TEST(CudaFused, MatmulBiasActMatchesCpuInBf16AndMixes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 9000;
  struct Mix {
    DType y, pre, x, w, bias;
  };
  // All bf16 (the epilogues); an f32 operand rounded beside a bf16 one; bf16 operands with f32
  // outputs; f32 operands with bf16 outputs (staged: the fallback); a bias in another dtype
  // than its output (the fallback).
  const std::vector<Mix> mixes = {{kB, kB, kB, kB, kB}, {kB, kB, kF, kB, kB}, {kF, kF, kB, kB, kF},
                                  {kB, kB, kF, kF, kB}, {kB, kB, kB, kB, kF}};
  for (const GemmShape& s : kGemmShapes)
    for (const auto& act : kActs)
      for (const Mix& m : mixes) {
        GemmCase c;
        c.rows = s.rows, c.in = s.in, c.out = s.out, c.act = act;
        c.y = m.y, c.pre = m.pre, c.x = m.x, c.w = m.w, c.bias = m.bias;
        check_matmul_bias_act(be, c, seed += 16);
        c.with_bias = false;
        check_matmul_bias_act(be, c, seed += 16);
      }
}

// A bias or pre off a 16-byte boundary takes the fallback (or, for pre, the bias epilogue
// and the activation kernel); the results are the same.
TEST(CudaFused, MatmulBiasActFallsBackOffAlignment) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 20000;
  for (DType dt : {kF, kB})
    for (const auto& act : {std::optional<Activation>(), std::optional<Activation>(Activation::kGeluTanh),
                            std::optional<Activation>(Activation::kSilu)})
      for (int64_t bias_skip : {0, 1})
        for (int64_t pre_skip : {0, 1}) {
          GemmCase c;
          c.rows = 48, c.in = 64, c.out = 128, c.act = act;
          c.y = c.pre = c.x = c.w = c.bias = dt;
          c.bias_skip = bias_skip, c.pre_skip = pre_skip;
          check_matmul_bias_act(be, c, seed += 16);
        }
}

TEST(CudaFused, MatmulBiasActRefusesBadArguments) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  Both x = make(be, kF, {4, 6}, 1), w = make(be, kF, {5, 6}, 2), bias = make(be, kF, {5}, 3);
  Both y = make(be, kF, {4, 5}, 4), pre = make(be, kF, {4, 5}, 5), long_bias = make(be, kF, {6}, 6);
  expect_invalid([&] { be.gpu->matmul_bias_act(y.gpu(), pre.gpu(), x.gpu(), w.gpu(), bias.gpu(), std::nullopt); },
                 "pre without an activation");
  expect_invalid([&] { be.gpu->matmul_bias_act(y.gpu(), Tensor(), x.gpu(), w.gpu(), bias.gpu(), Activation::kGelu); },
                 "an activation without pre");
  expect_invalid(
      [&] { be.gpu->matmul_bias_act(y.gpu(), pre.gpu(), x.gpu(), w.gpu(), long_bias.gpu(), Activation::kGelu); },
      "a bias of the wrong length");
  expect_invalid([&] { be.gpu->matmul_bias_act(y.gpu(), y.gpu(), x.gpu(), w.gpu(), bias.gpu(), Activation::kGelu); },
                 "y over pre");
}

// ---- qkv split + RoPE -----------------------------------------------------------------------

struct QkvRopeCase {
  int64_t tokens, groups, hpg, d, rotary;
  DType qkv = kF, parts = kF;
  int64_t skip = 0;  // elements off the allocations' start: the one-element path
};

std::string label(const QkvRopeCase& c) {
  return "qkv rope T=" + std::to_string(c.tokens) + " groups=" + std::to_string(c.groups) + " hpg=" +
         std::to_string(c.hpg) + " D=" + std::to_string(c.d) + " rotary=" + std::to_string(c.rotary) + " qkv:" +
         dtype_label(c.qkv) + " parts:" + dtype_label(c.parts) + " skip=" + std::to_string(c.skip);
}

// Positions of a context-parallel rank's two chunks: not in order, large values included.
std::vector<int32_t> rope_positions(int64_t tokens) {
  std::vector<int32_t> p(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) p[static_cast<size_t>(t)] = static_cast<int32_t>((t * 7919) % 32768);
  return p;
}

// The fused ops on the GPU against the CPU (within tolerance: sincos differ in the last bits)
// and against the GPU's own qkv_split + rope / rope + qkv_merge (bit for bit).
void check_qkv_rope(Backends& be, const QkvRopeCase& c, uint64_t seed) {
  const std::string what = label(c);
  const int64_t T = c.tokens, width = c.groups * (c.hpg + 2) * c.d, qw = c.groups * c.hpg * c.d, kvw = c.groups * c.d;
  const float base = 10000.0f;
  auto pos = be.i32({T}, rope_positions(T));
  Both qkv = make(be, c.qkv, {T, width}, seed, 1.0f, 0.0f, c.skip);
  Both q = make(be, c.parts, {T, qw}, seed + 1, 1.0f, 0.0f, c.skip);
  Both k = make(be, c.parts, {T, kvw}, seed + 2, 1.0f, 0.0f, c.skip);
  Both v = make(be, c.parts, {T, kvw}, seed + 3, 1.0f, 0.0f, c.skip);
  Both q2 = make(be, c.parts, {T, qw}, seed + 4), k2 = make(be, c.parts, {T, kvw}, seed + 5);
  Both v2 = make(be, c.parts, {T, kvw}, seed + 6);
  be.cpu->qkv_split_rope(q.cpu(), k.cpu(), v.cpu(), qkv.cpu(), c.groups, c.hpg, c.d, pos->cpu(), c.rotary, base);
  be.gpu->qkv_split_rope(q.gpu(), k.gpu(), v.gpu(), qkv.gpu(), c.groups, c.hpg, c.d, pos->gpu_t(), c.rotary, base);
  const double tol = c.parts == kB ? kBf16Tol : kF32Tol;
  expect_matches_cpu(q, tol, what + ": q");
  expect_matches_cpu(k, tol, what + ": k");
  expect_matches_cpu(v, 0, what + ": v");
  be.gpu->qkv_split(q2.gpu(), k2.gpu(), v2.gpu(), qkv.gpu(), c.groups, c.hpg, c.d);
  be.gpu->rope(q2.gpu(), pos->gpu_t(), c.groups * c.hpg, c.d, c.rotary, base, false);
  be.gpu->rope(k2.gpu(), pos->gpu_t(), c.groups, c.d, c.rotary, base, false);
  auto same_values = [&](const Both& got, const Both& want, const std::string& name) {
    const std::vector<uint8_t> g = device_bytes(got), w = device_bytes(want);
    const size_t bytes = static_cast<size_t>(got.numel()) * dtype_size(got.dtype());
    EXPECT_TRUE(std::equal(g.begin() + got.skip * dtype_size(got.dtype()),
                           g.begin() + got.skip * dtype_size(got.dtype()) + bytes,
                           w.begin() + want.skip * dtype_size(want.dtype())))
        << what << ": " << name << " differs from the GPU's unfused ops";
  };
  same_values(q, q2, "q");
  same_values(k, k2, "k");
  same_values(v, v2, "v");

  // Backward: d(qkv) from the rotated parts as gradients.
  Both dqkv = make(be, c.qkv, {T, width}, seed + 7, 100.0f, 0.0f, c.skip);
  Both dqkv2 = make(be, c.qkv, {T, width}, seed + 8);
  be.cpu->qkv_merge_rope(dqkv.cpu(), q.cpu(), k.cpu(), v.cpu(), c.groups, c.hpg, c.d, pos->cpu(), c.rotary, base);
  be.gpu->qkv_merge_rope(dqkv.gpu(), q2.gpu(), k2.gpu(), v2.gpu(), c.groups, c.hpg, c.d, pos->gpu_t(), c.rotary,
                         base);
  // The CPU rotated its q and k back in place; the GPU's inputs were q2, k2 (the same values).
  expect_matches_cpu(dqkv, c.qkv == kB || c.parts == kB ? kBf16Tol : kF32Tol, what + ": dqkv");
  be.gpu->rope(q.gpu(), pos->gpu_t(), c.groups * c.hpg, c.d, c.rotary, base, true);
  be.gpu->rope(k.gpu(), pos->gpu_t(), c.groups, c.d, c.rotary, base, true);
  be.gpu->qkv_merge(dqkv2.gpu(), q.gpu(), k.gpu(), v.gpu(), c.groups, c.hpg, c.d);
  same_values(dqkv, dqkv2, "dqkv");
}

TEST(CudaFused, QkvSplitRopeMatchesCpuAndTheUnfusedOps) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 7000;
  // Packed (head and rotary widths in whole 16-byte packs), partial rotary, odd widths, one
  // token, none; each aligned and one element off (the one-element path).
  const std::vector<QkvRopeCase> shapes = {{9, 2, 4, 64, 64}, {5, 1, 3, 128, 32}, {3, 2, 1, 6, 4},
                                           {7, 3, 2, 24, 16}, {1, 1, 1, 2, 2},    {0, 2, 2, 16, 16}};
  for (QkvRopeCase c : shapes)
    for (DType dt : {kF, kB})
      for (int64_t skip : {0, 1}) {
        c.qkv = c.parts = dt;
        c.skip = skip;
        check_qkv_rope(be, c, seed += 16);
      }
  // Mixed dtypes take the composed path.
  QkvRopeCase mixed{4, 2, 2, 16, 8};
  mixed.qkv = kF, mixed.parts = kB;
  check_qkv_rope(be, mixed, seed += 16);
}

// ---- cross-entropy: one-pass statistics, bf16 d(logits) ---------------------------------------

struct CeCase {
  int64_t tokens, cols, start, valid;
  int64_t skip = 0;
};

// ce_stats on the GPU (one pass, online) against the CPU's two passes: row_max and the target
// logit exactly, sumexp within fp32 rounding.
TEST(CudaFused, CeStatsMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 8000;
  // Packed rows (cols a multiple of 4), odd columns, a shard with an offset, a padding-only
  // shard, a long row; aligned and one element off.
  const std::vector<CeCase> cases = {{6, 64, 0, 60}, {5, 13, 0, 13}, {4, 40, 40, 70}, {3, 8, 80, 70},
                                     {2, 50257, 0, 50257}, {0, 16, 0, 16}};
  for (CeCase c : cases)
    for (int64_t skip : {0, 1}) {
      c.skip = skip;
      const std::string what = "ce_stats T=" + std::to_string(c.tokens) + " cols=" + std::to_string(c.cols) +
                               " from " + std::to_string(c.start) + " skip=" + std::to_string(skip);
      Both logits = make(be, kF, {c.tokens, c.cols}, seed += 8, 4.0f, 0.0f, skip);
      if (c.tokens > 1) {  // a column at -inf, and one far above the rest, in the first row
        float ninf = -std::numeric_limits<float>::infinity(), big = 80.0f;
        std::memcpy(logits.store->host.data() + 4 * (skip + 1), &ninf, 4);
        std::memcpy(logits.store->host.data() + 4 * (skip + c.cols / 2), &big, 4);
        logits.store->upload();
      }
      std::vector<int32_t> ids(static_cast<size_t>(c.tokens));
      for (int64_t t = 0; t < c.tokens; ++t)
        ids[static_cast<size_t>(t)] = static_cast<int32_t>((t * 37) % (c.start + c.cols));
      auto targets = be.i32({c.tokens}, ids);
      Both row_max = make(be, kF, {c.tokens}, seed + 1), sumexp = make(be, kF, {c.tokens}, seed + 2);
      Both target = make(be, kF, {c.tokens}, seed + 3);
      be.cpu->ce_stats(row_max.cpu(), sumexp.cpu(), target.cpu(), logits.cpu(), targets->cpu(), c.start, c.valid);
      be.gpu->ce_stats(row_max.gpu(), sumexp.gpu(), target.gpu(), logits.gpu(), targets->gpu_t(), c.start, c.valid);
      expect_matches_cpu(row_max, 0, what + ": row_max");
      expect_matches_cpu(target, 0, what + ": target_logit");
      expect_matches_cpu(sumexp, kF32Tol, what + ": sumexp");
    }
}

// ce_bwd into bf16: the GPU's f32 d(logits) rounded once, bit for bit, on the packed and the
// one-element paths; and a bf16 dlogits over the logits is refused.
TEST(CudaFused, CeBwdBf16IsTheF32GradientRounded) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 9000;
  const std::vector<CeCase> cases = {{6, 64, 0, 60}, {5, 13, 0, 13}, {4, 40, 40, 70}, {3, 1024, 0, 1000}};
  for (CeCase c : cases)
    for (int64_t skip : {0, 1}) {
      const std::string what = "ce_bwd T=" + std::to_string(c.tokens) + " cols=" + std::to_string(c.cols) +
                               " skip=" + std::to_string(skip);
      Both logits = make(be, kF, {c.tokens, c.cols}, seed += 8, 3.0f, 0.0f, skip);
      std::vector<int32_t> ids(static_cast<size_t>(c.tokens));
      for (int64_t t = 0; t < c.tokens; ++t) ids[static_cast<size_t>(t)] = static_cast<int32_t>(c.start + t % c.cols);
      auto targets = be.i32({c.tokens}, ids);
      Both row_max = make(be, kF, {c.tokens}, 1), sumexp = make(be, kF, {c.tokens}, 2);
      Both target = make(be, kF, {c.tokens}, 3), scale = make(be, kF, {c.tokens}, seed + 4, 0.5f, 1.0f);
      be.cpu->ce_stats(row_max.cpu(), sumexp.cpu(), target.cpu(), logits.cpu(), targets->cpu(), c.start, c.valid);
      for (Both* t : {&row_max, &sumexp}) t->store->upload();  // the same statistics on both
      Both d32 = make(be, kF, {c.tokens, c.cols}, seed + 5);
      Both d16 = make(be, kB, {c.tokens, c.cols}, seed + 6, 1.0f, 0.0f, skip);
      be.cpu->ce_bwd(d16.cpu(), logits.cpu(), row_max.cpu(), sumexp.cpu(), targets->cpu(), scale.cpu(), c.start,
                     c.valid);
      be.gpu->ce_bwd(d32.gpu(), logits.gpu(), row_max.gpu(), sumexp.gpu(), targets->gpu_t(), scale.gpu(), c.start,
                     c.valid);
      be.gpu->ce_bwd(d16.gpu(), logits.gpu(), row_max.gpu(), sumexp.gpu(), targets->gpu_t(), scale.gpu(), c.start,
                     c.valid);
      expect_matches_cpu(d16, kBf16Tol, what + ": bf16 dlogits");
      const std::vector<uint8_t> b16 = device_bytes(d16), b32 = device_bytes(d32);
      int64_t mismatches = 0;
      for (int64_t i = 0; i < c.tokens * c.cols; ++i) {
        uint16_t h;
        float f;
        std::memcpy(&h, b16.data() + 2 * (skip + i), 2);
        std::memcpy(&f, b32.data() + 4 * i, 4);
        if (h != f32_to_bf16(f) && ++mismatches <= 5)
          ADD_FAILURE() << what << ": element " << i << " is not rounded once";
      }
      EXPECT_EQ(mismatches, 0) << what;
      Tensor over = logits.gpu();
      over.dtype = kB;
      expect_invalid([&] { be.gpu->ce_bwd(over, logits.gpu(), row_max.gpu(), sumexp.gpu(), targets->gpu_t(),
                                          scale.gpu(), c.start, c.valid); },
                     what + ": bf16 dlogits over the logits");
    }
}

// ---- packed and one-element paths of the elementwise and norm kernels ----------------------

// add, add_inplace, scale and fill give the CPU's bits in f32 and bf16, with every size around
// the pack (the tail), aligned and one element off (no packs).
TEST(CudaFused, ElementwiseOpsGiveTheCpuBitsOnEveryPath) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 11000;
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{8}, int64_t{9}, int64_t{4099}, int64_t{65536 * 3 + 5}})
    for (DType dt : {kF, kB})
      for (int64_t skip : {0, 1}) {
        const std::string what =
            std::string(dtype_label(dt)) + " n=" + std::to_string(n) + " skip=" + std::to_string(skip);
        Both a = make(be, dt, {n}, seed += 4, 1.0f, 0.0f, skip), b = make(be, dt, {n}, seed + 1, 1.0f, 0.0f, skip);
        Both out = make(be, dt, {n}, seed + 2, 1.0f, 0.0f, skip);
        auto same_as_cpu = [&](const Both& t, const std::string& op) {
          EXPECT_EQ(device_bytes(t), t.store->host) << what << ": " << op << " differs from the CPU's bits";
        };
        be.cpu->add(out.cpu(), a.cpu(), b.cpu());
        be.gpu->add(out.gpu(), a.gpu(), b.gpu());
        same_as_cpu(out, "add");
        be.cpu->add_inplace(out.cpu(), a.cpu());
        be.gpu->add_inplace(out.gpu(), a.gpu());
        same_as_cpu(out, "add_inplace");
        be.cpu->scale(out.cpu(), 0.3f);
        be.gpu->scale(out.gpu(), 0.3f);
        same_as_cpu(out, "scale");
        be.cpu->fill(a.cpu(), 1.7f);
        be.gpu->fill(a.gpu(), 1.7f);
        same_as_cpu(a, "fill");
      }
}

// t's values `skip` elements into a new allocation.
Both shifted(Backends& be, const Both& t, int64_t skip) {
  Both c = make(be, t.dtype(), t.shape, 1, 1.0f, 0.0f, skip);
  const size_t e = dtype_size(t.dtype());
  std::copy(t.store->host.begin() + t.skip * e, t.store->host.begin() + (t.skip + t.numel()) * e,
            c.store->host.begin() + skip * e);
  c.store->upload();
  return c;
}

// A norm over rows of whole packs gives the same bits aligned (packed output pass) and one
// element off (lane by lane).
TEST(CudaFused, NormPackedAndLaneStridedPathsGiveTheSameBits) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  uint64_t seed = 12000;
  for (DType dt : {kF, kB})
    for (bool layernorm : {true, false}) {
      const int64_t rows = 11, h = 1024;
      Both outs[2], xs[2], means[2], rstds[2];
      xs[0] = make(be, dt, {rows, h}, seed, 2.0f, 1.0f);
      xs[1] = shifted(be, xs[0], 1);
      for (int64_t skip : {0, 1}) {
        outs[skip] = make(be, dt, {rows, h}, seed + 1, 1.0f, 0.0f, skip);
        means[skip] = make(be, kF, {rows}, seed + 2);
        rstds[skip] = make(be, kF, {rows}, seed + 3);
      }
      Both w = make(be, dt, {h}, seed + 4, 0.5f, 1.0f), bias = make(be, dt, {h}, seed + 5);
      Both w1 = shifted(be, w, 1), bias1 = shifted(be, bias, 1);
      for (int64_t skip : {0, 1}) {
        const Tensor wt = skip ? w1.gpu() : w.gpu(), bt = skip ? bias1.gpu() : bias.gpu();
        if (layernorm)
          be.gpu->layernorm_fwd(outs[skip].gpu(), means[skip].gpu(), rstds[skip].gpu(), xs[skip].gpu(), wt, bt, kEps);
        else
          be.gpu->rmsnorm_fwd(outs[skip].gpu(), rstds[skip].gpu(), xs[skip].gpu(), wt, kEps);
      }
      const std::vector<uint8_t> o0 = device_bytes(outs[0]), o1 = device_bytes(outs[1]);
      const size_t e = dtype_size(dt), bytes = static_cast<size_t>(rows * h) * e;
      EXPECT_TRUE(std::equal(o0.begin(), o0.begin() + bytes, o1.begin() + e))
          << dtype_label(dt) << (layernorm ? " layernorm" : " rmsnorm") << ": packed and lane-strided outputs differ";
      EXPECT_EQ(device_bytes(rstds[0]), device_bytes(rstds[1]));
      seed += 16;
    }
}

}  // namespace
}  // namespace mpt::device_testing
