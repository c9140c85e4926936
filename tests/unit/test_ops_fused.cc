// The fused ops of ops.h against the ops they fuse, on the CPU reference: add_layernorm_fwd
// and add_rmsnorm_fwd equal add() then the norm, and matmul_bias_act equals matmul, add_bias
// and activation_fwd, bit for bit, for every f32/bf16 mix of their arguments, with sum
// aliasing a or b, empty and odd shapes. Also: the norm reads the rounded sum, bad calls
// are refused before anything is written, and the emulated device backend forwards them (and
// runs the fused defaults of ops_fused.cc on its own ops).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "test_errors.h"
#include "test_ops_util.h"

namespace mpt::test {
namespace {

using backend::Activation;
using backend::Ops;

constexpr DType kF = DType::kF32, kB = DType::kBF16;
constexpr float kEps = 1e-5f;

const char* dtype_label(DType t) { return t == kB ? "bf16" : "f32"; }

// A tensor's own storage in either dtype.
struct Buf {
  DType dtype = kF;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  Tensor t() {
    Tensor x;
    x.data = bytes.empty() ? nullptr : bytes.data();
    x.dtype = dtype;
    x.ndim = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) x.shape[i] = shape[i];
    return x;
  }
  std::vector<float> values() const {
    std::vector<float> v(static_cast<size_t>(numel()));
    for (size_t i = 0; i < v.size(); ++i) {
      if (dtype == kB) {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        v[i] = bf16_to_f32(h);
      } else {
        std::memcpy(&v[i], bytes.data() + 4 * i, 4);
      }
    }
    return v;
  }
};

// offset + scale * N(0, 1) values from `key` (rounded for bf16).
Buf random_buf(DType dt, std::vector<int64_t> shape, uint64_t key, float scale = 1.0f, float offset = 0.0f) {
  Buf b;
  b.dtype = dt;
  b.shape = std::move(shape);
  const int64_t n = b.numel();
  b.bytes.assign(static_cast<size_t>(n) * dtype_size(dt), 0);
  const std::vector<float> v = random_vector(n, key, scale);
  for (int64_t i = 0; i < n; ++i) {
    const float x = offset + v[static_cast<size_t>(i)];
    if (dt == kB) {
      const uint16_t h = f32_to_bf16(x);
      std::memcpy(b.bytes.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(b.bytes.data() + 4 * i, &x, 4);
    }
  }
  return b;
}

void expect_same_bytes(const Buf& got, const Buf& want, const std::string& what) {
  ASSERT_EQ(got.bytes.size(), want.bytes.size()) << what;
  if (got.bytes == want.bytes) return;
  const std::vector<float> g = got.values(), w = want.values();
  for (size_t i = 0; i < g.size(); ++i)
    if (std::memcmp(&g[i], &w[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << g[i] << ", the unfused ops give " << w[i];
      return;
    }
}

std::string shape_label(const std::vector<int64_t>& shape) {
  std::string s;
  for (int64_t d : shape) {
    if (!s.empty()) s += 'x';
    s += std::to_string(d);
  }
  return s;
}

// ---- add + norm -----------------------------------------------------------------------------

enum class SumAlias { kNone, kA, kB };

struct AddNormCall {
  bool layernorm = true;
  bool with_bias = true;
  SumAlias alias = SumAlias::kNone;
  std::vector<int64_t> shape;  // of sum, out, a, b: [..., H]
  DType sum = kF, out = kF, a = kF, b = kF, weight = kF, bias = kF;
};

// The arguments of one call, as fresh storage; sum is a's or b's when aliased.
struct AddNormArgs {
  Buf sum, out, mean, rstd, a, b, weight, bias;

  AddNormArgs(const AddNormCall& c, uint64_t seed) {
    const int64_t h = c.shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < c.shape.size(); ++i) rows *= c.shape[i];
    a = random_buf(c.a, c.shape, seed + 1, 3.0f, 0.5f);
    b = random_buf(c.b, c.shape, seed + 2, 1.0f);
    sum = random_buf(c.sum, c.shape, seed + 3, 100.0f);  // stale values the op must overwrite
    out = random_buf(c.out, c.shape, seed + 4, 100.0f);
    mean = random_buf(kF, {rows}, seed + 5, 100.0f);
    rstd = random_buf(kF, {rows}, seed + 6, 100.0f);
    weight = random_buf(c.weight, {h}, seed + 7, 0.5f, 1.0f);
    if (c.with_bias) bias = random_buf(c.bias, {h}, seed + 8, 0.5f);
  }
  // The tensor sum is called with.
  Tensor sum_t(const AddNormCall& c) {
    return c.alias == SumAlias::kA ? a.t() : c.alias == SumAlias::kB ? b.t() : sum.t();
  }
  const Buf& sum_buf(const AddNormCall& c) const {
    return c.alias == SumAlias::kA ? a : c.alias == SumAlias::kB ? b : sum;
  }
};

std::string label(const AddNormCall& c) {
  std::string s = std::string(c.layernorm ? "add_layernorm_fwd" : "add_rmsnorm_fwd") + " " + shape_label(c.shape) +
                  " sum:" + dtype_label(c.sum) + " out:" + dtype_label(c.out) + " a:" + dtype_label(c.a) +
                  " b:" + dtype_label(c.b) + " weight:" + dtype_label(c.weight);
  if (c.with_bias) s += std::string(" bias:") + dtype_label(c.bias);
  if (c.alias != SumAlias::kNone) s += c.alias == SumAlias::kA ? " (sum is a)" : " (sum is b)";
  return s;
}

void fused_add_norm(Ops& ops, const AddNormCall& c, AddNormArgs& x) {
  if (c.layernorm)
    ops.add_layernorm_fwd(x.sum_t(c), x.out.t(), x.mean.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(),
                          c.with_bias ? x.bias.t() : Tensor(), kEps);
  else
    ops.add_rmsnorm_fwd(x.sum_t(c), x.out.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(), kEps);
}

void unfused_add_norm(Ops& ops, const AddNormCall& c, AddNormArgs& x) {
  const Tensor sum = x.sum_t(c);
  ops.add(sum, x.a.t(), x.b.t());
  if (c.layernorm)
    ops.layernorm_fwd(x.out.t(), x.mean.t(), x.rstd.t(), sum, x.weight.t(), c.with_bias ? x.bias.t() : Tensor(),
                      kEps);
  else
    ops.rmsnorm_fwd(x.out.t(), x.rstd.t(), sum, x.weight.t(), kEps);
}

void check_add_norm(Ops& ops, const AddNormCall& c, uint64_t seed) {
  AddNormArgs fused(c, seed), unfused(c, seed);
  fused_add_norm(ops, c, fused);
  unfused_add_norm(ops, c, unfused);
  const std::string what = label(c);
  expect_same_bytes(fused.sum_buf(c), unfused.sum_buf(c), what + ": sum");
  expect_same_bytes(fused.out, unfused.out, what + ": out");
  if (c.layernorm) expect_same_bytes(fused.mean, unfused.mean, what + ": mean");
  expect_same_bytes(fused.rstd, unfused.rstd, what + ": rstd");
  expect_same_bytes(fused.a, unfused.a, what + ": a");
  expect_same_bytes(fused.b, unfused.b, what + ": b");
}

const std::vector<std::vector<int64_t>> kNormShapes = {{0, 8}, {1, 1}, {3, 5}, {7, 33}, {2, 3, 65}};

// Every f32/bf16 mix of (sum, out, a, b, weight, bias), both norms, with and without bias.
TEST(OpsFused, AddNormEqualsAddThenNormForEveryDtypeMix) {
  auto ops = backend::make_cpu_ops(2);
  uint64_t seed = 100;
  for (const std::vector<int64_t>& shape : kNormShapes)
    for (int layernorm = 0; layernorm < 2; ++layernorm)
      for (int mask = 0; mask < 64; ++mask) {
        AddNormCall c;
        c.layernorm = layernorm != 0;
        c.with_bias = c.layernorm && (mask & 1) == 0;
        c.shape = shape;
        auto pick = [&](int bit) { return (mask >> bit) & 1 ? kB : kF; };
        c.sum = pick(0), c.out = pick(1), c.a = pick(2), c.b = pick(3), c.weight = pick(4), c.bias = pick(5);
        check_add_norm(*ops, c, seed += 16);
      }
}

// sum written over a or over b (the residual updated in place), in both dtypes.
TEST(OpsFused, AddNormWithSumAliasingAnInput) {
  auto ops = backend::make_cpu_ops(2);
  uint64_t seed = 5000;
  for (const std::vector<int64_t>& shape : kNormShapes)
    for (int layernorm = 0; layernorm < 2; ++layernorm)
      for (SumAlias alias : {SumAlias::kA, SumAlias::kB})
        for (int mask = 0; mask < 8; ++mask) {
          AddNormCall c;
          c.layernorm = layernorm != 0;
          c.alias = alias;
          c.shape = shape;
          auto pick = [&](int bit) { return (mask >> bit) & 1 ? kB : kF; };
          c.sum = pick(0), c.out = pick(1), c.a = pick(2), c.b = pick(2) == kB ? kF : kB;
          if (alias == SumAlias::kA) c.a = c.sum;
          if (alias == SumAlias::kB) c.b = c.sum;
          check_add_norm(*ops, c, seed += 16);
        }
}

// The norm reads sum as stored: with a bf16 sum the statistics come from the rounded values,
// not from the fp32 a + b (which give different bits), and a plain norm of the stored sum
// gives the same bits.
TEST(OpsFused, AddNormReadsTheRoundedSum) {
  auto ops = backend::make_cpu_ops(2);
  for (bool layernorm : {true, false}) {
    AddNormCall c;
    c.layernorm = layernorm;
    c.shape = {4, 96};
    c.sum = kB;
    AddNormArgs x(c, 77);
    fused_add_norm(*ops, c, x);

    Buf out2 = x.out, mean2 = x.mean, rstd2 = x.rstd;
    if (layernorm)
      ops->layernorm_fwd(out2.t(), mean2.t(), rstd2.t(), x.sum.t(), x.weight.t(), x.bias.t(), kEps);
    else
      ops->rmsnorm_fwd(out2.t(), rstd2.t(), x.sum.t(), x.weight.t(), kEps);
    expect_same_bytes(x.out, out2, "norm of the stored sum");
    expect_same_bytes(x.rstd, rstd2, "rstd of the stored sum");

    std::vector<float> exact = x.a.values();
    const std::vector<float> bv = x.b.values();
    for (size_t i = 0; i < exact.size(); ++i) exact[i] += bv[i];
    Buf out3 = x.out, mean3 = x.mean, rstd3 = x.rstd;
    const Tensor e = Tensor::f32(exact.data(), {4, 96});
    if (layernorm)
      ops->layernorm_fwd(out3.t(), mean3.t(), rstd3.t(), e, x.weight.t(), x.bias.t(), kEps);
    else
      ops->rmsnorm_fwd(out3.t(), rstd3.t(), e, x.weight.t(), kEps);
    EXPECT_NE(x.out.bytes, out3.bytes) << "the unrounded sum gives the same output: the test shows nothing";
  }
}

// A refused call writes nothing, even when sum is a.
TEST(OpsFused, AddNormRefusesBadArgumentsBeforeWriting) {
  auto ops = backend::make_cpu_ops(2);
  AddNormCall c;
  c.shape = {3, 8};
  c.alias = SumAlias::kA;
  AddNormArgs x(c, 9);
  const Buf a0 = x.a, out0 = x.out;
  Buf short_out = random_buf(kF, {3, 7}, 3);
  expect_invalid([&] {
    ops->add_layernorm_fwd(x.a.t(), short_out.t(), x.mean.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(),
                           x.bias.t(), kEps);
  });
  Buf short_rstd = random_buf(kF, {2}, 4);
  expect_invalid([&] { ops->add_rmsnorm_fwd(x.a.t(), x.out.t(), short_rstd.t(), x.a.t(), x.b.t(), x.weight.t(), kEps); });
  Buf bf16_mean = random_buf(kB, {3}, 5);
  expect_invalid([&] {
    ops->add_layernorm_fwd(x.a.t(), x.out.t(), bf16_mean.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(), Tensor(),
                           kEps);
  });
  Buf long_bias = random_buf(kF, {9}, 6);
  expect_invalid([&] {
    ops->add_layernorm_fwd(x.a.t(), x.out.t(), x.mean.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(), long_bias.t(),
                           kEps);
  });
  // out over an input, sum over part of a, sum as a in another dtype.
  expect_invalid([&] { ops->add_rmsnorm_fwd(x.a.t(), x.b.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(), kEps); });
  Tensor shifted = x.a.t();
  shifted.data = x.a.bytes.data() + 4;
  Buf other = random_buf(kF, {3, 8}, 7);
  expect_invalid([&] {
    ops->add_rmsnorm_fwd(shifted, x.out.t(), x.rstd.t(), x.a.t(), other.t(), x.weight.t(), kEps);
  });
  Tensor as_bf16 = x.a.t();
  as_bf16.dtype = kB;
  expect_invalid([&] { ops->add_rmsnorm_fwd(as_bf16, x.out.t(), x.rstd.t(), x.a.t(), x.b.t(), x.weight.t(), kEps); });
  expect_same_bytes(x.a, a0, "a after refused calls");
  expect_same_bytes(x.out, out0, "out after refused calls");
}

// ---- GEMM with epilogue ---------------------------------------------------------------------

struct GemmCall {
  int64_t rows = 0, in = 0, out = 0;
  bool x3d = false;  // x and y as [2, rows/2, .] (rows even)
  bool with_bias = true;
  std::optional<Activation> act;
  DType y = kF, pre = kF, x = kF, w = kF, bias = kF;
};

struct GemmArgs {
  Buf y, pre, x, w, bias;

  GemmArgs(const GemmCall& c, uint64_t seed) {
    auto rows_shape = [&](int64_t cols) {
      return c.x3d ? std::vector<int64_t>{2, c.rows / 2, cols} : std::vector<int64_t>{c.rows, cols};
    };
    x = random_buf(c.x, rows_shape(c.in), seed + 1);
    w = random_buf(c.w, {c.out, c.in}, seed + 2, 0.3f);
    if (c.with_bias) bias = random_buf(c.bias, {c.out}, seed + 3, 0.5f);
    y = random_buf(c.y, rows_shape(c.out), seed + 4, 100.0f);
    if (c.act) pre = random_buf(c.pre, rows_shape(c.out), seed + 5, 100.0f);
  }
  Tensor pre_t(const GemmCall& c) { return c.act ? pre.t() : Tensor(); }
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

std::string label(const GemmCall& c) {
  std::string s = "matmul_bias_act [" + std::to_string(c.rows) + ", " + std::to_string(c.in) + "] -> " +
                  std::to_string(c.out) + (c.x3d ? " (3-D)" : "") + " act " + act_label(c.act) +
                  " y:" + dtype_label(c.y) + " x:" + dtype_label(c.x) + " w:" + dtype_label(c.w);
  if (c.act) s += std::string(" pre:") + dtype_label(c.pre);
  if (c.with_bias) s += std::string(" bias:") + dtype_label(c.bias);
  return s;
}

void check_matmul_bias_act(Ops& ops, const GemmCall& c, uint64_t seed) {
  GemmArgs fused(c, seed), unfused(c, seed);
  ops.matmul_bias_act(fused.y.t(), fused.pre_t(c), fused.x.t(), fused.w.t(),
                      c.with_bias ? fused.bias.t() : Tensor(), c.act);
  const Tensor z = c.act ? unfused.pre.t() : unfused.y.t();
  ops.matmul(z, unfused.x.t(), unfused.w.t(), false, true, 1.0f, 0.0f);
  if (c.with_bias) ops.add_bias(z, unfused.bias.t());
  if (c.act) ops.activation_fwd(unfused.y.t(), z, *c.act, false);
  const std::string what = label(c);
  expect_same_bytes(fused.y, unfused.y, what + ": y");
  if (c.act) expect_same_bytes(fused.pre, unfused.pre, what + ": pre");
}

struct GemmShape {
  int64_t rows, in, out;
  bool x3d;
};
// Empty rows, k = 0, a single element, odd sizes, sizes that are not multiples of 8 (the
// GPU epilogue's requirement) beside ones that are, and a 3-D input.
const std::vector<GemmShape> kGemmShapes = {{0, 5, 3, false},   {3, 0, 4, false},  {1, 1, 1, false},
                                            {7, 13, 9, false},  {5, 16, 24, false}, {6, 12, 10, true}};

// Every f32/bf16 mix of (y, pre, x, w, bias) with no activation and each plain one.
TEST(OpsFused, MatmulBiasActEqualsMatmulBiasThenActivation) {
  auto ops = backend::make_cpu_ops(2);
  const std::vector<std::optional<Activation>> acts = {std::nullopt,       Activation::kGelu, Activation::kGeluTanh,
                                                       Activation::kSilu,  Activation::kRelu,
                                                       Activation::kSquaredRelu};
  uint64_t seed = 20000;
  for (const GemmShape& s : kGemmShapes)
    for (const std::optional<Activation>& act : acts)
      for (int mask = 0; mask < 64; ++mask) {
        GemmCall c;
        c.rows = s.rows, c.in = s.in, c.out = s.out, c.x3d = s.x3d;
        c.act = act;
        c.with_bias = (mask & 32) == 0;
        auto pick = [&](int bit) { return (mask >> bit) & 1 ? kB : kF; };
        c.y = pick(0), c.pre = pick(1), c.x = pick(2), c.w = pick(3), c.bias = pick(4);
        if (!act && (mask & 2)) continue;  // pre's dtype means nothing without an activation
        check_matmul_bias_act(*ops, c, seed += 16);
      }
}

// No outputs: the product is empty and there is no bias to add.
TEST(OpsFused, MatmulBiasActWithNoOutputs) {
  auto ops = backend::make_cpu_ops(2);
  GemmCall c;
  c.rows = 4, c.in = 6, c.out = 0;
  c.with_bias = false;
  check_matmul_bias_act(*ops, c, 1);
  c.act = Activation::kGelu;
  check_matmul_bias_act(*ops, c, 2);
}

TEST(OpsFused, MatmulBiasActRefusesBadArgumentsBeforeWriting) {
  auto ops = backend::make_cpu_ops(2);
  GemmCall c;
  c.rows = 4, c.in = 6, c.out = 5;
  c.act = Activation::kGelu;
  GemmArgs x(c, 3);
  const Buf y0 = x.y, pre0 = x.pre;
  // pre without an activation, no pre with one, a pre of another shape.
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), x.pre.t(), x.x.t(), x.w.t(), x.bias.t(), std::nullopt); });
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), Tensor(), x.x.t(), x.w.t(), x.bias.t(), Activation::kGelu); });
  Buf wide_pre = random_buf(kF, {4, 6}, 4);
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), wide_pre.t(), x.x.t(), x.w.t(), x.bias.t(), Activation::kGelu); });
  // A bias of the wrong length, a w that does not fit x, a w that is not 2-D.
  Buf long_bias = random_buf(kF, {6}, 5);
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), x.pre.t(), x.x.t(), x.w.t(), long_bias.t(), Activation::kGelu); });
  Buf narrow_w = random_buf(kF, {5, 5}, 6);
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), x.pre.t(), x.x.t(), narrow_w.t(), x.bias.t(), Activation::kGelu); });
  Tensor w3 = x.w.t();
  w3.ndim = 3, w3.shape[0] = 1, w3.shape[1] = 5, w3.shape[2] = 6;
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), x.pre.t(), x.x.t(), w3, x.bias.t(), Activation::kGelu); });
  // y over pre, y over x, an unknown activation.
  expect_invalid([&] { ops->matmul_bias_act(x.y.t(), x.y.t(), x.x.t(), x.w.t(), x.bias.t(), Activation::kGelu); });
  Buf square_w = random_buf(kF, {6, 6}, 7), y6 = random_buf(kF, {4, 6}, 8);
  expect_invalid([&] { ops->matmul_bias_act(x.x.t(), y6.t(), x.x.t(), square_w.t(), Tensor(), Activation::kRelu); });
  expect_invalid([&] {
    ops->matmul_bias_act(x.y.t(), x.pre.t(), x.x.t(), x.w.t(), x.bias.t(), static_cast<Activation>(17));
  });
  expect_same_bytes(x.y, y0, "y after refused calls");
  expect_same_bytes(x.pre, pre0, "pre after refused calls");
}

// ---- the emulated device backend forwards the fused ops -------------------------------------

// b's storage copied into `ops`' memory; the device pointer is returned.
void* upload(Ops& ops, const Buf& b) {
  void* p = ops.allocate(b.bytes.size());
  ops.to_device(p, b.bytes.data(), b.bytes.size());
  return p;
}

Tensor on(void* p, Buf& b) {
  Tensor t = b.t();
  t.data = p;
  return t;
}

void download(Ops& ops, Buf& b, void* p) { ops.to_host(b.bytes.data(), p, b.bytes.size()); }

TEST(OpsFused, EmulatedDeviceBackendGivesTheCpuBits) {
  auto cpu = backend::make_cpu_ops(2);
  auto dev = backend::make_emulated_device_ops(2);
  {
    AddNormCall c;
    c.shape = {5, 24};
    c.sum = kB, c.a = kB;
    AddNormArgs host(c, 31), want(c, 31);
    fused_add_norm(*cpu, c, want);
    void* ps = upload(*dev, host.sum);
    void* po = upload(*dev, host.out);
    void* pm = upload(*dev, host.mean);
    void* pr = upload(*dev, host.rstd);
    void* pa = upload(*dev, host.a);
    void* pb = upload(*dev, host.b);
    void* pw = upload(*dev, host.weight);
    void* pbias = upload(*dev, host.bias);
    dev->add_layernorm_fwd(on(ps, host.sum), on(po, host.out), on(pm, host.mean), on(pr, host.rstd), on(pa, host.a),
                           on(pb, host.b), on(pw, host.weight), on(pbias, host.bias), kEps);
    download(*dev, host.sum, ps);
    download(*dev, host.out, po);
    download(*dev, host.mean, pm);
    download(*dev, host.rstd, pr);
    expect_same_bytes(host.sum, want.sum, "emulated add_layernorm_fwd: sum");
    expect_same_bytes(host.out, want.out, "emulated add_layernorm_fwd: out");
    expect_same_bytes(host.mean, want.mean, "emulated add_layernorm_fwd: mean");
    expect_same_bytes(host.rstd, want.rstd, "emulated add_layernorm_fwd: rstd");
    dev->add_rmsnorm_fwd(on(ps, host.sum), on(po, host.out), on(pr, host.rstd), on(pa, host.a), on(pb, host.b),
                         on(pw, host.weight), kEps);
    c.layernorm = false;
    fused_add_norm(*cpu, c, want);
    download(*dev, host.out, po);
    download(*dev, host.rstd, pr);
    expect_same_bytes(host.out, want.out, "emulated add_rmsnorm_fwd: out");
    expect_same_bytes(host.rstd, want.rstd, "emulated add_rmsnorm_fwd: rstd");
    for (void* p : {ps, po, pm, pr, pa, pb, pw, pbias}) dev->release(p);
  }
  {
    GemmCall c;
    c.rows = 6, c.in = 10, c.out = 7;
    c.act = Activation::kGeluTanh;
    c.y = kB, c.pre = kB, c.x = kB;
    GemmArgs host(c, 41), want(c, 41);
    cpu->matmul_bias_act(want.y.t(), want.pre.t(), want.x.t(), want.w.t(), want.bias.t(), c.act);
    void* py = upload(*dev, host.y);
    void* ppre = upload(*dev, host.pre);
    void* px = upload(*dev, host.x);
    void* pw = upload(*dev, host.w);
    void* pbias = upload(*dev, host.bias);
    dev->matmul_bias_act(on(py, host.y), on(ppre, host.pre), on(px, host.x), on(pw, host.w), on(pbias, host.bias),
                         c.act);
    download(*dev, host.y, py);
    download(*dev, host.pre, ppre);
    expect_same_bytes(host.y, want.y, "emulated matmul_bias_act: y");
    expect_same_bytes(host.pre, want.pre, "emulated matmul_bias_act: pre");
    for (void* p : {py, ppre, px, pw, pbias}) dev->release(p);
  }
}

// The fused defaults of Ops (ops_fused.cc: qkv_split_rope, qkv_merge_rope, ce_stats) run the
// emulated device's own ops on its memory, bf16 included: the CPU bits, and recordable.
TEST(OpsFused, EmulatedDeviceRunsTheFusedDefaults) {
  auto cpu = backend::make_cpu_ops(2);
  auto dev = backend::make_emulated_device_ops(2);
  const int64_t T = 4, groups = 2, hpg = 2, d = 8, rotary = 4;
  Buf qkv = random_buf(kB, {T, groups * (hpg + 2) * d}, 51), q = random_buf(kB, {T, groups * hpg * d}, 52);
  Buf k = random_buf(kB, {T, groups * d}, 53), v = random_buf(kB, {T, groups * d}, 54);
  Buf pos{DType::kI32, {T}, std::vector<uint8_t>(4 * T)};
  const int32_t positions[T] = {3, 1, 4, 1};
  std::memcpy(pos.bytes.data(), positions, sizeof(positions));
  Buf wq = q, wk = k, wv = v, wqkv = qkv;
  cpu->qkv_split_rope(wq.t(), wk.t(), wv.t(), wqkv.t(), groups, hpg, d, pos.t(), rotary, 10000.0f);
  void *pqkv = upload(*dev, qkv), *pq = upload(*dev, q), *pk = upload(*dev, k), *pv = upload(*dev, v);
  void* ppos = upload(*dev, pos);
  dev->begin_capture();
  dev->qkv_split_rope(on(pq, q), on(pk, k), on(pv, v), on(pqkv, qkv), groups, hpg, d, on(ppos, pos), rotary, 10000.0f);
  std::unique_ptr<backend::Graph> graph = dev->end_capture();
  graph->replay();
  download(*dev, q, pq);
  download(*dev, k, pk);
  download(*dev, v, pv);
  expect_same_bytes(q, wq, "emulated qkv_split_rope: q");
  expect_same_bytes(k, wk, "emulated qkv_split_rope: k");
  expect_same_bytes(v, wv, "emulated qkv_split_rope: v");
  cpu->qkv_merge_rope(wqkv.t(), wq.t(), wk.t(), wv.t(), groups, hpg, d, pos.t(), rotary, 10000.0f);
  dev->qkv_merge_rope(on(pqkv, qkv), on(pq, q), on(pk, k), on(pv, v), groups, hpg, d, on(ppos, pos), rotary, 10000.0f);
  download(*dev, qkv, pqkv);
  expect_same_bytes(qkv, wqkv, "emulated qkv_merge_rope: dqkv");

  const int64_t cols = 12;
  Buf logits = random_buf(kF, {T, cols}, 55, 3.0f), targets{DType::kI32, {T}, std::vector<uint8_t>(4 * T)};
  std::memcpy(targets.bytes.data(), positions, sizeof(positions));
  Buf row_max = random_buf(kF, {T}, 56), sumexp = random_buf(kF, {T}, 57), target = random_buf(kF, {T}, 58);
  Buf wmax = row_max, wsum = sumexp, wtarget = target;
  cpu->ce_stats(wmax.t(), wsum.t(), wtarget.t(), logits.t(), targets.t(), 0, 10);
  void *plog = upload(*dev, logits), *ptar = upload(*dev, targets), *pmax = upload(*dev, row_max);
  void *psum = upload(*dev, sumexp), *ptl = upload(*dev, target);
  dev->ce_stats(on(pmax, row_max), on(psum, sumexp), on(ptl, target), on(plog, logits), on(ptar, targets), 0, 10);
  download(*dev, row_max, pmax);
  download(*dev, sumexp, psum);
  download(*dev, target, ptl);
  expect_same_bytes(row_max, wmax, "emulated ce_stats: row_max");
  expect_same_bytes(sumexp, wsum, "emulated ce_stats: sumexp");
  expect_same_bytes(target, wtarget, "emulated ce_stats: target_logit");
  for (void* p : {pqkv, pq, pk, pv, ppos, plog, ptar, pmax, psum, ptl}) dev->release(p);
}

}  // namespace
}  // namespace mpt::test
