// The fused ops on the GPU (src/cuda/cuda_fused.cu, matmul_bias_act in src/cuda/cuda_gemm.cu)
// against the CPU oracle, in f32 (1e-5 of the tensor's scale), bf16 (1e-2) and mixes (an f32
// result of a bf16 GEMM: 1e-4, tensor cores summing in their own order), on realistic, odd
// and empty shapes. The add + norm kernel must also give the bits of the GPU's own add() and
// norm. matmul_bias_act runs each of its paths: cuBLASLt's bias epilogue, its GELU epilogue
// (gelu_tanh, bf16), and the fallbacks (k = 0, rows that are not a multiple of 8 elements, a
// bias or pre off a 16-byte boundary, a bias in another dtype, f32 operands with a bf16 y).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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

}  // namespace
}  // namespace mpt::device_testing
