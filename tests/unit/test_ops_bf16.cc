// bf16 arguments of the CPU ops (ops.h, "Precision"): every op given bf16 tensors equals,
// bit for bit, the fp32 op on the widened inputs with its bf16 outputs rounded once; GEMM
// operands are both rounded when either is bf16; the fp32-only arguments refuse bf16; the
// cast op rounds to nearest even.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "test_errors.h"
#include "test_ops_util.h"

namespace mpt::test {
namespace {

using backend::Activation;
using backend::AttentionDims;
using backend::GroupedForm;
using backend::Ops;
using backend::RouterScore;

constexpr float kInf = std::numeric_limits<float>::infinity();

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

Tensor make_tensor(void* data, DType dtype, const std::vector<int64_t>& shape) {
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t.shape[i] = shape[i];
  return t;
}

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_bf16(v[i]);
  return h;
}
std::vector<float> rounded(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

// ---- the generic check -------------------------------------------------------------------

// One floating argument of an op call.
struct ArgSpec {
  std::string name;
  std::vector<int64_t> shape;  // empty: the argument is left out (Tensor{})
  bool bf16_ok = true;         // false: fp32 only under the Precision contract
  bool operand = false;        // a GEMM operand: rounded to bf16 when the product is bf16
  int alias_of = -1;           // shares the memory (and dtype) of that argument
  float scale = 1, offset = 0;  // values offset + scale * N(0, 1), unless `values` is set
  std::vector<float> values;
};

struct OpCase {
  std::string name;
  std::vector<ArgSpec> args;
  std::function<void(Ops&, std::vector<Tensor>&)> call;
};

ArgSpec arg(std::string name, std::vector<int64_t> shape) {
  ArgSpec a;
  a.name = std::move(name);
  a.shape = std::move(shape);
  return a;
}
ArgSpec f32_only(std::string name, std::vector<int64_t> shape, float offset = 0, float scale = 1) {
  ArgSpec a = arg(std::move(name), std::move(shape));
  a.bf16_ok = false;
  a.offset = offset;
  a.scale = scale;
  return a;
}
ArgSpec left_out(std::string name) { return arg(std::move(name), {}); }
ArgSpec operand(std::string name, std::vector<int64_t> shape) {
  ArgSpec a = arg(std::move(name), std::move(shape));
  a.operand = true;
  return a;
}
ArgSpec alias(std::string name, int of) {
  ArgSpec a;
  a.name = std::move(name);
  a.alias_of = of;
  return a;
}

std::string describe_mask(const OpCase& c, const std::vector<bool>& bf16) {
  std::string s = c.name + " with";
  for (size_t i = 0; i < c.args.size(); ++i)
    if (c.args[i].alias_of < 0 && !c.args[i].shape.empty())
      s += " " + c.args[i].name + (bf16[i] ? ":bf16" : ":f32");
  return s;
}

// Calls the op with the arguments marked in `bf16` given as BF16 (their starting values
// rounded to bf16) and the rest as F32, and checks every argument afterwards, bit for bit,
// against the F32 call on the same starting values with the bf16 arguments' results
// rounded. Arguments the op only reads must come back unchanged.
void check_assignment(Ops& ops, const OpCase& c, const std::vector<bool>& bf16, uint64_t seed) {
  const size_t n = c.args.size();
  const std::string what = describe_mask(c, bf16);
  bool bf16_product = false;
  for (size_t i = 0; i < n; ++i) bf16_product |= c.args[i].operand && bf16[i];

  std::vector<std::vector<float>> start(n), ref(n), f32(n);
  std::vector<std::vector<uint16_t>> half(n);
  for (size_t i = 0; i < n; ++i) {
    const ArgSpec& a = c.args[i];
    if (a.alias_of >= 0 || a.shape.empty()) continue;
    std::vector<float> v = a.values;
    if (v.empty()) {
      v = random_vector(numel_of(a.shape), seed * 131 + i, a.scale);
      for (float& x : v) x += a.offset;
    }
    ASSERT_EQ(static_cast<int64_t>(v.size()), numel_of(a.shape)) << what << ": values of " << a.name;
    start[i] = bf16[i] ? rounded(v) : v;
    // The fp32 op on the values the bf16 call computes with.
    ref[i] = a.operand && bf16_product ? rounded(start[i]) : start[i];
  }

  std::vector<Tensor> ref_args(n), args(n);
  for (size_t i = 0; i < n; ++i) {
    const ArgSpec& a = c.args[i];
    if (a.alias_of >= 0 || a.shape.empty()) continue;
    ref_args[i] = make_tensor(ref[i].data(), DType::kF32, a.shape);
    if (bf16[i]) {
      half[i] = to_bf16(start[i]);
      args[i] = make_tensor(half[i].data(), DType::kBF16, a.shape);
    } else {
      f32[i] = start[i];
      args[i] = make_tensor(f32[i].data(), DType::kF32, a.shape);
    }
  }
  for (size_t i = 0; i < n; ++i)
    if (c.args[i].alias_of >= 0) {
      ref_args[i] = ref_args[c.args[i].alias_of];
      args[i] = args[c.args[i].alias_of];
    }
  c.call(ops, ref_args);
  c.call(ops, args);

  for (size_t i = 0; i < n; ++i) {
    const ArgSpec& a = c.args[i];
    if (a.alias_of >= 0 || a.shape.empty()) continue;
    // An operand rounded for the product is still only read.
    const std::vector<float>& expected = a.operand && !bf16[i] ? start[i] : ref[i];
    int failures = 0;
    for (size_t j = 0; j < expected.size() && failures < 5; ++j) {
      if (bf16[i]) {
        if (half[i][j] != f32_to_bf16(expected[j]) && ++failures)
          ADD_FAILURE() << what << ": " << a.name << "[" << j << "] = " << bf16_to_f32(half[i][j]) << ", expected "
                        << round_bf16(expected[j]) << " (fp32 " << expected[j] << ")";
      } else if (bits_of(f32[i][j]) != bits_of(expected[j]) && ++failures) {
        ADD_FAILURE() << what << ": " << a.name << "[" << j << "] = " << f32[i][j] << ", expected " << expected[j];
      }
    }
  }
}

// All the arguments that may be bf16 given as bf16, then two mixed calls: every other one
// as bf16, starting with the first and with the second.
void check_case(Ops& ops, const OpCase& c, uint64_t seed = 1) {
  std::vector<size_t> allowed;
  for (size_t i = 0; i < c.args.size(); ++i)
    if (c.args[i].bf16_ok && c.args[i].alias_of < 0 && !c.args[i].shape.empty()) allowed.push_back(i);
  ASSERT_FALSE(allowed.empty()) << c.name;
  std::vector<std::vector<bool>> masks;
  masks.emplace_back(c.args.size(), false);
  for (size_t i : allowed) masks[0][i] = true;
  if (allowed.size() >= 2)
    for (size_t first = 0; first < 2; ++first) {
      masks.emplace_back(c.args.size(), false);
      for (size_t k = first; k < allowed.size(); k += 2) masks.back()[allowed[k]] = true;
    }
  for (const auto& m : masks) {
    SCOPED_TRACE(describe_mask(c, m));
    check_assignment(ops, c, m, seed);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

std::unique_ptr<Ops> cpu_ops() { return backend::make_cpu_ops(2); }

std::shared_ptr<std::vector<int32_t>> ints(std::vector<int32_t> v) {
  return std::make_shared<std::vector<int32_t>>(std::move(v));
}

// ---- cast --------------------------------------------------------------------------------

uint16_t cast_one(Ops& ops, float x) {
  float src = x;
  uint16_t dst = 0x1234;
  ops.cast(Tensor(&dst, DType::kBF16, {1}), Tensor::f32(&src, {1}));
  return dst;
}

TEST(OpsBf16Cast, RoundsToNearestEven) {
  auto ops = cpu_ops();
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing in [1, 2)
  EXPECT_EQ(cast_one(*ops, 1.0f), 0x3f80);
  EXPECT_EQ(cast_one(*ops, 1.0f + ulp / 2), 0x3f80) << "a tie goes to the even neighbour, 1";
  EXPECT_EQ(cast_one(*ops, 1.0f + 3 * ulp / 2), 0x3f82) << "a tie goes to the even neighbour, 1 + 2 ulp";
  EXPECT_EQ(cast_one(*ops, 1.0f + ulp / 2 + ulp / 64), 0x3f81) << "above the tie rounds up";
  EXPECT_EQ(cast_one(*ops, 1.0f + ulp / 2 - ulp / 64), 0x3f80) << "below the tie rounds down";
  EXPECT_EQ(cast_one(*ops, -(1.0f + 3 * ulp / 2)), 0xbf82);
}

TEST(OpsBf16Cast, SpecialValues) {
  auto ops = cpu_ops();
  EXPECT_EQ(cast_one(*ops, kInf), 0x7f80);
  EXPECT_EQ(cast_one(*ops, -kInf), 0xff80);
  EXPECT_EQ(cast_one(*ops, 0.0f), 0x0000);
  EXPECT_EQ(cast_one(*ops, -0.0f), 0x8000) << "-0 keeps its sign";
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu, 0xff800001u}) {
    const uint16_t h = cast_one(*ops, float_of(nan));
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << nan << " -> " << h;
  }
  EXPECT_EQ(cast_one(*ops, FLT_MAX), 0x7f80) << "FLT_MAX is past the largest bf16: inf";
  EXPECT_EQ(cast_one(*ops, std::nextafter(FLT_MAX, 0.0f)), 0x7f80);
  EXPECT_EQ(cast_one(*ops, float_of(0x7f7f8000u)), 0x7f80) << "the tie above the largest bf16 goes to inf";
  EXPECT_EQ(cast_one(*ops, float_of(0x7f7f7fffu)), 0x7f7f) << "just below that tie: the largest bf16";
  EXPECT_EQ(cast_one(*ops, -FLT_MAX), 0xff80);
  EXPECT_EQ(cast_one(*ops, float_of(0x00010000u)), 0x0001) << "subnormals are kept";
}

TEST(OpsBf16Cast, WidensEveryBf16ExactlyAndBack) {
  auto ops = cpu_ops();
  std::vector<uint16_t> all(65536), back(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> wide(65536, 7.0f);
  ops->cast(Tensor::f32(wide.data(), {256, 256}), Tensor(all.data(), DType::kBF16, {256, 256}));
  ops->cast(Tensor(back.data(), DType::kBF16, {65536}), Tensor::f32(wide.data(), {65536}));
  for (uint32_t i = 0; i < 65536; ++i) {
    ASSERT_EQ(bits_of(wide[i]), i << 16) << "bf16 " << i << " widens to its upper half";
    if (std::isnan(wide[i]))
      ASSERT_TRUE(std::isnan(bf16_to_f32(back[i]))) << i;
    else
      ASSERT_EQ(back[i], i) << "bf16 " << i << " survives the round trip";
  }
}

TEST(OpsBf16Cast, MatchesRoundBf16OnLargeRandomTensors) {
  auto ops = cpu_ops();
  const int64_t n = 100000;  // past the parallel threshold
  std::vector<float> x = random_vector(n, 17, 3.0f), wide(n);
  std::vector<uint16_t> h(n);
  ops->cast(Tensor(h.data(), DType::kBF16, {n}), Tensor::f32(x.data(), {n}));
  ops->cast(Tensor::f32(wide.data(), {n}), Tensor(h.data(), DType::kBF16, {n}));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(bits_of(wide[i]), bits_of(round_bf16(x[i]))) << i;
}

TEST(OpsBf16Cast, SameDtypeCopiesAndMismatchesAreRefused) {
  auto ops = cpu_ops();
  std::vector<float> a = random_vector(6, 3), b(6);
  ops->cast(Tensor::f32(b.data(), {2, 3}), Tensor::f32(a.data(), {6}));
  EXPECT_EQ(a, b);
  std::vector<uint16_t> ha = to_bf16(a), hb(6);
  ops->cast(Tensor(hb.data(), DType::kBF16, {6}), Tensor(ha.data(), DType::kBF16, {6}));
  EXPECT_EQ(ha, hb);

  Error e = error_of([&] { ops->cast(Tensor(hb.data(), DType::kBF16, {5}), Tensor::f32(a.data(), {6})); });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "cast") && contains(e.what(), "dst")) << e.what();
  e = error_of([&] { ops->cast(Tensor(hb.data(), DType::kF16, {6}), Tensor::f32(a.data(), {6})); });
  EXPECT_TRUE(contains(e.what(), "dst") && contains(e.what(), "F16")) << e.what();
  // Converting in place would overwrite input not yet read.
  e = error_of([&] { ops->cast(Tensor(a.data(), DType::kBF16, {6}), Tensor::f32(a.data(), {6})); });
  EXPECT_TRUE(contains(e.what(), "overlap")) << e.what();
}

TEST(OpsBf16Cast, EmulatedDeviceForwardsCast) {
  auto ops = backend::make_emulated_device_ops(2);
  std::vector<float> x = random_vector(40, 5), back(40);
  float* dx = static_cast<float*>(ops->allocate(40 * sizeof(float)));
  auto* dh = static_cast<uint16_t*>(ops->allocate(40 * sizeof(uint16_t)));
  ops->to_device(dx, x.data(), 40 * sizeof(float));
  ops->cast(Tensor(dh, DType::kBF16, {40}), Tensor::f32(dx, {40}));
  ops->cast(Tensor::f32(dx, {40}), Tensor(dh, DType::kBF16, {40}));
  ops->to_host(back.data(), dx, 40 * sizeof(float));
  for (int i = 0; i < 40; ++i) EXPECT_EQ(bits_of(back[i]), bits_of(round_bf16(x[i]))) << i;
  ops->release(dx);
  ops->release(dh);
}

// ---- memory and elementwise --------------------------------------------------------------

TEST(OpsBf16Elementwise, FillCopyAddScale) {
  auto ops = cpu_ops();
  for (int64_t n : {int64_t{7}, int64_t{40000}}) {
    check_case(*ops, {"fill", {arg("x", {n})}, [](Ops& o, std::vector<Tensor>& t) { o.fill(t[0], 0.3f); }});
    check_case(*ops, {"copy", {arg("dst", {n}), arg("src", {n})},
                      [](Ops& o, std::vector<Tensor>& t) { o.copy(t[0], t[1]); }});
    check_case(*ops, {"add", {arg("out", {n}), arg("a", {n}), arg("b", {n})},
                      [](Ops& o, std::vector<Tensor>& t) { o.add(t[0], t[1], t[2]); }});
    check_case(*ops, {"add_inplace", {arg("y", {n}), arg("x", {n})},
                      [](Ops& o, std::vector<Tensor>& t) { o.add_inplace(t[0], t[1]); }});
    check_case(*ops, {"scale", {arg("x", {n})}, [](Ops& o, std::vector<Tensor>& t) { o.scale(t[0], 0.7f); }});
  }
}

TEST(OpsBf16Elementwise, AddWithOutputAliasingAnInput) {
  auto ops = cpu_ops();
  for (int64_t n : {int64_t{9}, int64_t{40000}}) {
    check_case(*ops, {"add out=a", {arg("a", {n}), arg("b", {n}), alias("out", 0)},
                      [](Ops& o, std::vector<Tensor>& t) { o.add(t[2], t[0], t[1]); }});
    check_case(*ops, {"add out=b", {arg("a", {n}), arg("b", {n}), alias("out", 1)},
                      [](Ops& o, std::vector<Tensor>& t) { o.add(t[2], t[0], t[1]); }});
    check_case(*ops, {"add out=a=b", {arg("a", {n}), alias("b", 0), alias("out", 0)},
                      [](Ops& o, std::vector<Tensor>& t) { o.add(t[2], t[0], t[1]); }});
  }
}

TEST(OpsBf16Elementwise, AliasedArgumentsOfDifferentDtypesAreRefused) {
  auto ops = cpu_ops();
  std::vector<float> a = random_vector(8, 1);
  std::vector<uint16_t> b = to_bf16(a);
  const Error e = error_of([&] {
    ops->add(Tensor::f32(a.data(), {8}), Tensor(a.data(), DType::kBF16, {8}), Tensor(b.data(), DType::kBF16, {8}));
  });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "add") && contains(e.what(), "shares memory")) << e.what();
}

TEST(OpsBf16Elementwise, ReductionsReadBf16) {
  auto ops = cpu_ops();
  for (int64_t n : {int64_t{5}, int64_t{70000}}) {  // one and two 64K chunks
    std::vector<float> a = rounded(random_vector(n, 21)), b = random_vector(n, 22);
    std::vector<uint16_t> ha = to_bf16(a), hb = to_bf16(b);
    std::vector<float> b_wide = rounded(b);
    const Tensor ta = Tensor::f32(a.data(), {n}), tb = Tensor::f32(b.data(), {n});
    const Tensor tha(ha.data(), DType::kBF16, {n}), thb(hb.data(), DType::kBF16, {n});
    EXPECT_EQ(ops->sum_squares(tha), ops->sum_squares(ta)) << n;
    EXPECT_EQ(ops->dot(tha, thb), ops->dot(ta, Tensor::f32(b_wide.data(), {n}))) << n;
    EXPECT_EQ(ops->dot(tha, tb), ops->dot(ta, tb)) << n << ": bf16 . f32";
    EXPECT_EQ(ops->dot(tb, tha), ops->dot(tb, ta)) << n << ": f32 . bf16";
    EXPECT_NE(ops->dot(tha, tb), ops->dot(tha, thb)) << n << ": the f32 argument is not rounded";
    EXPECT_TRUE(ops->all_finite(tha));
    for (float bad : {kInf, -kInf, std::numeric_limits<float>::quiet_NaN()}) {
      std::vector<uint16_t> h = ha;
      h[n / 2] = f32_to_bf16(bad);
      EXPECT_FALSE(ops->all_finite(Tensor(h.data(), DType::kBF16, {n}))) << bad;
    }
    // The largest finite bf16 is finite.
    std::vector<uint16_t> h = ha;
    h[0] = 0x7f7f;
    h[n - 1] = 0xff7f;
    EXPECT_TRUE(ops->all_finite(Tensor(h.data(), DType::kBF16, {n})));
  }
  std::vector<float> x(4);
  const Error e = error_of([&] { ops->sum_squares(Tensor(x.data(), DType::kF16, {8})); });
  EXPECT_TRUE(contains(e.what(), "sum_squares") && contains(e.what(), "F32 or BF16")) << e.what();
}

// ---- GEMM --------------------------------------------------------------------------------

OpCase matmul_case(int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta) {
  return {"matmul " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + (ta ? " a^T" : "") +
              (tb ? " b^T" : "") + " beta " + std::to_string(beta),
          {arg("c", {m, n}), operand("a", ta ? std::vector<int64_t>{k, m} : std::vector<int64_t>{m, k}),
           operand("b", tb ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n})},
          [=](Ops& o, std::vector<Tensor>& t) { o.matmul(t[0], t[1], t[2], ta, tb, alpha, beta); }};
}

TEST(OpsBf16Matmul, EqualsFp32GemmOnRoundedOperands) {
  auto ops = cpu_ops();
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (float beta : {0.0f, 1.0f, 0.5f}) check_case(*ops, matmul_case(5, 7, 9, ta, tb, 1.5f, beta));
  check_case(*ops, matmul_case(192, 200, 64, false, true, 1.0f, 0.0f));  // past the parallel threshold
  check_case(*ops, matmul_case(3, 4, 0, false, false, 1.0f, 0.5f));     // empty product: c = beta c
}

// a f32 with values bf16 cannot hold, next to a bf16 b: a is rounded first.
TEST(OpsBf16Matmul, Fp32OperandIsRoundedNextToABf16One) {
  auto ops = cpu_ops();
  const int64_t m = 4, n = 6, k = 8;
  std::vector<float> a = random_vector(m * k, 31), b = rounded(random_vector(k * n, 32));
  std::vector<uint16_t> hb = to_bf16(b);
  std::vector<float> c(m * n), c_rounded(m * n), c_exact(m * n);
  std::vector<float> a_rounded = rounded(a);
  ops->matmul(Tensor::f32(c.data(), {m, n}), Tensor::f32(a.data(), {m, k}), Tensor(hb.data(), DType::kBF16, {k, n}),
              false, false, 1.0f, 0.0f);
  ops->matmul(Tensor::f32(c_rounded.data(), {m, n}), Tensor::f32(a_rounded.data(), {m, k}),
              Tensor::f32(b.data(), {k, n}), false, false, 1.0f, 0.0f);
  ops->matmul(Tensor::f32(c_exact.data(), {m, n}), Tensor::f32(a.data(), {m, k}), Tensor::f32(b.data(), {k, n}),
              false, false, 1.0f, 0.0f);
  int differ = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    EXPECT_EQ(bits_of(c[i]), bits_of(c_rounded[i])) << i;
    differ += c[i] != c_exact[i];
  }
  EXPECT_GT(differ, 0) << "the all-fp32 product must not round its operands";
  EXPECT_EQ(a, random_vector(m * k, 31)) << "the f32 operand itself is left as it was";
}

// Weight gradients: bf16 dy and x, an fp32 gradient accumulating with beta = 1.
TEST(OpsBf16Matmul, AccumulatesIntoFp32WithBeta1) {
  auto ops = cpu_ops();
  const int64_t out = 6, in = 5, tokens = 11;
  std::vector<float> dy = rounded(random_vector(tokens * out, 41)), x = rounded(random_vector(tokens * in, 42));
  std::vector<uint16_t> hdy = to_bf16(dy), hx = to_bf16(x);
  std::vector<float> grad = random_vector(out * in, 43), expected = grad;
  ops->matmul(Tensor::f32(grad.data(), {out, in}), Tensor(hdy.data(), DType::kBF16, {tokens, out}),
              Tensor(hx.data(), DType::kBF16, {tokens, in}), true, false, 1.0f, 1.0f);
  ops->matmul(Tensor::f32(expected.data(), {out, in}), Tensor::f32(dy.data(), {tokens, out}),
              Tensor::f32(x.data(), {tokens, in}), true, false, 1.0f, 1.0f);
  for (int64_t i = 0; i < out * in; ++i) EXPECT_EQ(bits_of(grad[i]), bits_of(expected[i])) << i;
  int inexact = 0;
  for (float g : grad) inexact += g != round_bf16(g);
  EXPECT_GT(inexact, 0) << "an fp32 c keeps fp32 precision";
}

// Only c in bf16: the product of two f32 operands stays fp32.
TEST(OpsBf16Matmul, Bf16OutputOfFp32OperandsRoundsOnlyTheResult) {
  auto ops = cpu_ops();
  check_case(*ops, {"matmul bf16 c",
                    {arg("c", {4, 3}), f32_only("a", {4, 6}), f32_only("b", {6, 3})},
                    [](Ops& o, std::vector<Tensor>& t) { o.matmul(t[0], t[1], t[2], false, false, 1.0f, 0.5f); }});
}

OpCase grouped_case(GroupedForm form, float beta) {
  const int64_t groups = 3, out = 4, in = 5;
  const auto counts = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{2, 0, 3});
  const int64_t rows = 5;
  std::vector<ArgSpec> args;
  if (form == GroupedForm::kWeightGrad)
    args = {arg("c", {groups, out, in}), operand("a", {rows, out}), operand("b", {rows, in})};
  else if (form == GroupedForm::kForward)
    args = {arg("c", {rows, out}), operand("a", {rows, in}), operand("b", {groups, out, in})};
  else
    args = {arg("c", {rows, in}), operand("a", {rows, out}), operand("b", {groups, out, in})};
  return {"grouped_matmul form " + std::to_string(static_cast<int>(form)) + " beta " + std::to_string(beta), args,
          [=](Ops& o, std::vector<Tensor>& t) {
            o.grouped_matmul(t[0], t[1], t[2], counts->data(), groups, form, beta);
          }};
}

TEST(OpsBf16Matmul, GroupedMatmulAllForms) {
  auto ops = cpu_ops();
  for (GroupedForm form : {GroupedForm::kForward, GroupedForm::kInputGrad, GroupedForm::kWeightGrad})
    for (float beta : {0.0f, 1.0f, 0.5f}) check_case(*ops, grouped_case(form, beta));
}

TEST(OpsBf16Matmul, GroupedFp32OperandIsRoundedNextToABf16One) {
  auto ops = cpu_ops();
  const int64_t rows = 5, out = 4, in = 6;
  const int64_t counts[] = {3, 2};
  std::vector<float> x = random_vector(rows * in, 51), w = rounded(random_vector(2 * out * in, 52));
  std::vector<uint16_t> hw = to_bf16(w);
  std::vector<float> y(rows * out), y_rounded(rows * out), x_rounded = rounded(x);
  ops->grouped_matmul(Tensor::f32(y.data(), {rows, out}), Tensor::f32(x.data(), {rows, in}),
                      Tensor(hw.data(), DType::kBF16, {2, out, in}), counts, 2, GroupedForm::kForward, 0.0f);
  ops->grouped_matmul(Tensor::f32(y_rounded.data(), {rows, out}), Tensor::f32(x_rounded.data(), {rows, in}),
                      Tensor::f32(w.data(), {2, out, in}), counts, 2, GroupedForm::kForward, 0.0f);
  for (int64_t i = 0; i < rows * out; ++i) EXPECT_EQ(bits_of(y[i]), bits_of(y_rounded[i])) << i;
}

TEST(OpsBf16Matmul, BiasAddAndGradient) {
  auto ops = cpu_ops();
  check_case(*ops, {"add_bias", {arg("y", {6, 5}), arg("bias", {5})},
                    [](Ops& o, std::vector<Tensor>& t) { o.add_bias(t[0], t[1]); }});
  check_case(*ops, {"bias_grad", {arg("dbias", {5}), arg("dy", {6, 5})},
                    [](Ops& o, std::vector<Tensor>& t) { o.bias_grad(t[0], t[1]); }});
  check_case(*ops, {"bias_grad large", {arg("dbias", {200}), arg("dy", {300, 200})},
                    [](Ops& o, std::vector<Tensor>& t) { o.bias_grad(t[0], t[1]); }});
}

// ---- normalisation -----------------------------------------------------------------------

TEST(OpsBf16Norm, LayerNormForwardAndBackward) {
  auto ops = cpu_ops();
  for (auto [T, H] : {std::pair<int64_t, int64_t>{3, 8}, {64, 600}}) {
    for (bool bias : {true, false}) {
      check_case(*ops, {"layernorm_fwd",
                        {arg("out", {T, H}), f32_only("mean", {T}), f32_only("rstd", {T}), arg("x", {T, H}),
                         arg("weight", {H}), bias ? arg("bias", {H}) : left_out("bias")},
                        [](Ops& o, std::vector<Tensor>& t) {
                          o.layernorm_fwd(t[0], t[1], t[2], t[3], t[4], t[5], 1e-5f);
                        }});
      check_case(*ops, {"layernorm_bwd",
                        {arg("dx", {T, H}), arg("dweight", {H}), bias ? arg("dbias", {H}) : left_out("dbias"),
                         arg("dout", {T, H}), arg("x", {T, H}), arg("weight", {H}), f32_only("mean", {T}),
                         f32_only("rstd", {T}, 1.5f, 0.2f)},
                        [](Ops& o, std::vector<Tensor>& t) {
                          o.layernorm_bwd(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
                        }});
    }
  }
}

TEST(OpsBf16Norm, RmsNormForwardAndBackward) {
  auto ops = cpu_ops();
  for (auto [T, H] : {std::pair<int64_t, int64_t>{3, 8}, {64, 600}}) {
    check_case(*ops, {"rmsnorm_fwd", {arg("out", {T, H}), f32_only("rstd", {T}), arg("x", {T, H}), arg("weight", {H})},
                      [](Ops& o, std::vector<Tensor>& t) { o.rmsnorm_fwd(t[0], t[1], t[2], t[3], 1e-5f); }});
    check_case(*ops, {"rmsnorm_bwd",
                      {arg("dx", {T, H}), arg("dweight", {H}), arg("dout", {T, H}), arg("x", {T, H}),
                       arg("weight", {H}), f32_only("rstd", {T}, 1.5f, 0.2f)},
                      [](Ops& o, std::vector<Tensor>& t) { o.rmsnorm_bwd(t[0], t[1], t[2], t[3], t[4], t[5]); }});
  }
}

// ---- attention pieces --------------------------------------------------------------------

TEST(OpsBf16Attention, QkvSplitMergeAndRope) {
  auto ops = cpu_ops();
  const int64_t T = 3, groups = 2, hpg = 2, D = 4;
  const int64_t qw = groups * hpg * D, kw = groups * D, width = groups * (hpg + 2) * D;
  check_case(*ops, {"qkv_split", {arg("q", {T, qw}), arg("k", {T, kw}), arg("v", {T, kw}), arg("qkv", {T, width})},
                    [=](Ops& o, std::vector<Tensor>& t) { o.qkv_split(t[0], t[1], t[2], t[3], groups, hpg, D); }});
  check_case(*ops, {"qkv_merge", {arg("dqkv", {T, width}), arg("dq", {T, qw}), arg("dk", {T, kw}), arg("dv", {T, kw})},
                    [=](Ops& o, std::vector<Tensor>& t) { o.qkv_merge(t[0], t[1], t[2], t[3], groups, hpg, D); }});
  const auto positions = ints({0, 5, 17});
  for (bool inverse : {false, true})
    check_case(*ops, {"rope", {arg("x", {T, 3, 8})}, [=](Ops& o, std::vector<Tensor>& t) {
                        o.rope(t[0], Tensor::i32(positions->data(), {T}), 3, 8, 6, 10000.0f, inverse);
                      }});
}

AttentionDims attention_dims(float dropout_p) {
  AttentionDims d;
  d.seq_q = 5;
  d.seq_kv = 6;
  d.batch = 2;
  d.heads = 4;
  d.groups = 2;
  d.head_dim = 8;
  d.softmax_scale = 1.0f / std::sqrt(8.0f);
  d.causal = true;
  d.dropout_p = dropout_p;
  d.dropout_key = 99;
  return d;
}

TEST(OpsBf16Attention, ForwardBackwardAndMerge) {
  auto ops = cpu_ops();
  for (float p : {0.0f, 0.25f}) {
    const AttentionDims d = attention_dims(p);
    const int64_t tq = d.seq_q * d.batch, tkv = d.seq_kv * d.batch;
    const int64_t qw = d.heads * d.head_dim, kw = d.groups * d.head_dim;
    check_case(*ops, {"attention_fwd",
                      {arg("out", {tq, qw}), f32_only("lse", {tq, d.heads}), arg("q", {tq, qw}), arg("k", {tkv, kw}),
                       arg("v", {tkv, kw})},
                      [=](Ops& o, std::vector<Tensor>& t) { o.attention_fwd(t[0], t[1], t[2], t[3], t[4], d); }});
    check_case(*ops, {"attention_bwd",
                      {arg("dq", {tq, qw}), arg("dk", {tkv, kw}), arg("dv", {tkv, kw}), arg("dout", {tq, qw}),
                       arg("q", {tq, qw}), arg("k", {tkv, kw}), arg("v", {tkv, kw}), arg("out", {tq, qw}),
                       f32_only("lse", {tq, d.heads}, 2.0f, 0.3f)},
                      [=](Ops& o, std::vector<Tensor>& t) {
                        o.attention_bwd(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], d);
                      }});
  }
  // Rows with no keys yet (lse -inf) and parts without keys (part_lse -inf).
  const int64_t rows = 6, heads = 2, D = 4;
  ArgSpec lse = f32_only("lse", {rows / heads, heads}), part_lse = f32_only("part_lse", {rows / heads, heads});
  lse.values = random_vector(rows, 61);
  part_lse.values = random_vector(rows, 62);
  lse.values[1] = -kInf;
  part_lse.values[3] = -kInf;
  lse.values[5] = part_lse.values[5] = -kInf;
  check_case(*ops, {"attention_merge",
                    {arg("out", {rows / heads, heads * D}), lse, arg("part_out", {rows / heads, heads * D}), part_lse},
                    [=](Ops& o, std::vector<Tensor>& t) { o.attention_merge(t[0], t[1], t[2], t[3], heads, D); }});
}

// ---- MLP, dropout, embedding, cross-entropy ----------------------------------------------

TEST(OpsBf16Mlp, ActivationsForwardAndBackward) {
  auto ops = cpu_ops();
  for (Activation act : {Activation::kGelu, Activation::kGeluTanh, Activation::kSilu, Activation::kSquaredRelu})
    for (bool gated : {false, true}) {
      const int64_t T = 7, F = 6, W = gated ? 2 * F : F;
      const std::string name = "activation " + std::to_string(static_cast<int>(act)) + (gated ? " gated" : "");
      check_case(*ops, {name + " fwd", {arg("out", {T, F}), arg("x", {T, W})},
                        [=](Ops& o, std::vector<Tensor>& t) { o.activation_fwd(t[0], t[1], act, gated); }});
      check_case(*ops, {name + " bwd", {arg("dx", {T, W}), arg("dout", {T, F}), arg("x", {T, W})},
                        [=](Ops& o, std::vector<Tensor>& t) { o.activation_bwd(t[0], t[1], t[2], act, gated); }});
    }
}

TEST(OpsBf16Mlp, DropoutForwardAndBackward) {
  auto ops = cpu_ops();
  for (float p : {0.0f, 0.3f}) {
    check_case(*ops, {"dropout_fwd", {arg("out", {9, 7}), arg("x", {9, 7})},
                      [=](Ops& o, std::vector<Tensor>& t) { o.dropout_fwd(t[0], t[1], p, 1234, 3); }});
    check_case(*ops, {"dropout_bwd", {arg("dx", {9, 7}), arg("dout", {9, 7})},
                      [=](Ops& o, std::vector<Tensor>& t) { o.dropout_bwd(t[0], t[1], p, 1234, 3); }});
    check_case(*ops, {"dropout_fwd in place", {arg("x", {9, 7}), alias("out", 0)},
                      [=](Ops& o, std::vector<Tensor>& t) { o.dropout_fwd(t[1], t[0], p, 1234, 3); }});
  }
}

TEST(OpsBf16Embedding, ForwardAndBackward) {
  auto ops = cpu_ops();
  const int64_t V = 5, H = 6, vocab_start = 10;
  const auto ids = ints({10, 14, 3, 12, 12, 15, 11});  // 3 and 15 lie outside this table
  const int64_t T = static_cast<int64_t>(ids->size());
  for (bool accumulate : {false, true})
    check_case(*ops, {std::string("embedding_fwd") + (accumulate ? " accumulate" : ""),
                      {arg("out", {T, H}), arg("table", {V, H})}, [=](Ops& o, std::vector<Tensor>& t) {
                        o.embedding_fwd(t[0], Tensor::i32(ids->data(), {T}), t[1], vocab_start, accumulate);
                      }});
  check_case(*ops, {"embedding_bwd", {arg("dtable", {V, H}), arg("dout", {T, H})}, [=](Ops& o, std::vector<Tensor>& t) {
                      o.embedding_bwd(t[0], Tensor::i32(ids->data(), {T}), t[1], vocab_start);
                    }});
}

// Cross-entropy runs in fp32; only the gradient it hands back may be bf16.
TEST(OpsBf16CrossEntropy, GradientMayBeBf16) {
  auto ops = cpu_ops();
  const int64_t T = 4, V = 9, vocab_start = 9, vocab_valid = 16;  // the last two columns are padding
  const auto targets = ints({9, 12, 3, 15});
  check_case(*ops, {"ce_bwd",
                    {arg("dlogits", {T, V}), f32_only("logits", {T, V}), f32_only("row_max", {T}, 2.0f, 0.1f),
                     f32_only("sumexp", {T}, 5.0f, 0.5f), f32_only("grad_scale", {T}, 0.25f, 0.05f)},
                    [=](Ops& o, std::vector<Tensor>& t) {
                      o.ce_bwd(t[0], t[1], t[2], t[3], Tensor::i32(targets->data(), {T}), t[4], vocab_start,
                               vocab_valid);
                    }});
}

// ---- mixture of experts ------------------------------------------------------------------

TEST(OpsBf16Moe, PermutationsAndTheirBackwards) {
  auto ops = cpu_ops();
  const int64_t T = 4, k = 2, R = 9, H = 5;
  const auto rows = ints({0, 4, 2, -1, 7, 1, 3, 8});  // row 5 and 6: padding; one choice dropped
  const auto rows_t = [rows] { return Tensor::i32(rows->data(), {T, k}); };
  check_case(*ops, {"moe_permute", {arg("x_perm", {R, H}), arg("x", {T, H})},
                    [=](Ops& o, std::vector<Tensor>& t) { o.moe_permute(t[0], t[1], rows_t()); }});
  check_case(*ops, {"moe_permute_bwd", {arg("dx", {T, H}), arg("dx_perm", {R, H})},
                    [=](Ops& o, std::vector<Tensor>& t) { o.moe_permute_bwd(t[0], t[1], rows_t()); }});
  for (bool with_probs : {true, false}) {
    const ArgSpec probs = with_probs ? f32_only("probs", {T, k}) : left_out("probs");
    check_case(*ops, {"moe_unpermute", {arg("out", {T, H}), arg("y", {R, H}), probs},
                      [=](Ops& o, std::vector<Tensor>& t) { o.moe_unpermute(t[0], t[1], rows_t(), t[2]); }});
    check_case(*ops, {"moe_unpermute_bwd",
                      {arg("dy", {R, H}), with_probs ? f32_only("dprobs", {T, k}) : left_out("dprobs"),
                       arg("dout", {T, H}), arg("y", {R, H}), probs},
                      [=](Ops& o, std::vector<Tensor>& t) {
                        o.moe_unpermute_bwd(t[0], t[1], t[2], t[3], rows_t(), t[4]);
                      }});
  }
}

// ---- the fp32-only arguments -------------------------------------------------------------

// Expects call to be refused with an error naming the op, the argument and its BF16 dtype.
void expect_refused(const char* op, const char* arg_name, const std::function<void()>& call) {
  const Error e = error_of(call);
  EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
  const std::string what = e.what();
  EXPECT_TRUE(contains(what, op) && contains(what, std::string(arg_name) + " ") && contains(what, "BF16"))
      << op << " / " << arg_name << ": " << what;
}

TEST(OpsBf16Contract, Fp32OnlyArgumentsRefuseBf16) {
  auto ops = cpu_ops();
  const int64_t T = 4, H = 8, E = 5;
  std::vector<float> f(1024, 0.5f);
  std::vector<uint16_t> h(1024, 0x3f00);
  std::vector<int32_t> idx = {0, 1, 1, 2, 2, 3, 3, 4};
  auto F = [&](std::initializer_list<int64_t> dims) { return Tensor(f.data(), DType::kF32, dims); };
  auto B = [&](std::initializer_list<int64_t> dims) { return Tensor(h.data(), DType::kBF16, dims); };
  // Buffers of their own where the op writes one argument while reading another.
  std::vector<float> f2(1024, 0.5f), f3(1024, 0.5f);
  auto F2 = [&](std::initializer_list<int64_t> dims) { return Tensor(f2.data(), DType::kF32, dims); };
  auto F3 = [&](std::initializer_list<int64_t> dims) { return Tensor(f3.data(), DType::kF32, dims); };
  std::vector<uint16_t> h2(1024, 0x3f00), h3(1024, 0x3f00);
  auto B2 = [&](std::initializer_list<int64_t> dims) { return Tensor(h2.data(), DType::kBF16, dims); };
  auto B3 = [&](std::initializer_list<int64_t> dims) { return Tensor(h3.data(), DType::kBF16, dims); };

  expect_refused("layernorm_fwd", "mean", [&] {
    ops->layernorm_fwd(B2({T, H}), B({T}), F2({T}), B3({T, H}), B3({H}), Tensor(), 1e-5f);
  });
  expect_refused("layernorm_bwd", "rstd", [&] {
    ops->layernorm_bwd(B2({T, H}), B2({H}), Tensor(), B3({T, H}), B3({T, H}), B3({H}), F({T}), B({T}));
  });
  expect_refused("rmsnorm_fwd", "rstd", [&] { ops->rmsnorm_fwd(B2({T, H}), B({T}), B3({T, H}), B3({H}), 1e-5f); });
  const AttentionDims d = attention_dims(0);
  const int64_t tq = d.seq_q * d.batch, tkv = d.seq_kv * d.batch;
  std::vector<uint16_t> hq(tq * d.heads * d.head_dim, 0x3f00), hk(tkv * d.groups * d.head_dim, 0x3f00);
  const Tensor q(hq.data(), DType::kBF16, {tq, d.heads * d.head_dim});
  const Tensor kv(hk.data(), DType::kBF16, {tkv, d.groups * d.head_dim});
  std::vector<uint16_t> hout(hq.size());
  const Tensor out(hout.data(), DType::kBF16, {tq, d.heads * d.head_dim});
  expect_refused("attention_fwd", "lse", [&] { ops->attention_fwd(out, B({tq, d.heads}), q, kv, kv, d); });
  expect_refused("attention_merge", "part_lse", [&] {
    ops->attention_merge(out, F({tq, d.heads}), q, B({tq, d.heads}), d.heads, d.head_dim);
  });
  expect_refused("router_topk", "logits", [&] {
    ops->router_topk(Tensor::i32(idx.data(), {T, 2}), F2({T, 2}), Tensor(), B({T, E}), 2, RouterScore::kSoftmax, false);
  });
  expect_refused("router_topk", "probs", [&] {
    ops->router_topk(Tensor::i32(idx.data(), {T, 2}), B2({T, 2}), Tensor(), F({T, E}), 2, RouterScore::kSoftmax, false);
  });
  expect_refused("router_lse", "logits", [&] { ops->router_lse(F2({T}), B({T, E})); });
  expect_refused("ce_row_max", "logits", [&] { ops->ce_row_max(F2({T}), B({T, E}), 0, E); });
  std::vector<int32_t> targets = {0, 1, 2, 3};
  expect_refused("ce_bwd", "logits", [&] {
    ops->ce_bwd(B2({T, E}), B({T, E}), F({T}), F2({T}), Tensor::i32(targets.data(), {T}), F3({T}), 0, E);
  });
  expect_refused("ce_bwd", "grad_scale", [&] {
    ops->ce_bwd(B2({T, E}), F({T, E}), F2({T}), F3({T}), Tensor::i32(targets.data(), {T}), B({T}), 0, E);
  });
  std::vector<int32_t> rows = {0, 1, 2, 3, 4, 5, 6, 7};
  expect_refused("moe_unpermute", "probs", [&] {
    ops->moe_unpermute(B2({T, H}), B3({8, H}), Tensor::i32(rows.data(), {T, 2}), B({T, 2}));
  });
  expect_refused("moe_unpermute_bwd", "dprobs", [&] {
    ops->moe_unpermute_bwd(B2({8, H}), B({T, 2}), B3({T, H}), B3({8, H}), Tensor::i32(rows.data(), {T, 2}), F({T, 2}));
  });
  backend::AdamWArgs args;
  args.lr = 1e-3f;
  expect_refused("adamw", "grad", [&] { ops->adamw(F({8}), B({8}), F2({8}), F3({8}), args); });
}

TEST(OpsBf16Contract, OtherDtypesAreRefused) {
  auto ops = cpu_ops();
  std::vector<float> f(8);
  const Error e = error_of([&] {
    ops->add(Tensor::f32(f.data(), {8}), Tensor(f.data(), DType::kF16, {8}), Tensor::f32(f.data(), {8}));
  });
  EXPECT_TRUE(contains(e.what(), "add: a") && contains(e.what(), "F32 or BF16")) << e.what();
}

// ---- memory ------------------------------------------------------------------------------

TEST(OpsBf16Memory, RepeatedCallsReuseTheStagingBuffer) {
  auto ops = cpu_ops();
  const int64_t T = 64, H = 600;
  std::vector<float> x = random_vector(T * H, 71), w = random_vector(H, 72), mean(T), rstd(T), out(T * H);
  std::vector<uint16_t> hx = to_bf16(x), hw = to_bf16(w), hout(T * H);
  ops->add(Tensor::f32(out.data(), {T * H}), Tensor::f32(x.data(), {T * H}), Tensor::f32(x.data(), {T * H}));
  EXPECT_EQ(ops->workspace_bytes(), 0) << "an fp32 call stages nothing";
  auto call = [&] {
    ops->layernorm_fwd(Tensor(hout.data(), DType::kBF16, {T, H}), Tensor::f32(mean.data(), {T}),
                       Tensor::f32(rstd.data(), {T}), Tensor(hx.data(), DType::kBF16, {T, H}),
                       Tensor(hw.data(), DType::kBF16, {H}), Tensor(), 1e-5f);
  };
  call();
  const int64_t first = ops->workspace_bytes();
  EXPECT_GE(first, static_cast<int64_t>((2 * T * H + H) * sizeof(float))) << "out, x and weight staged";
  const std::vector<uint16_t> result = hout;
  call();
  EXPECT_EQ(ops->workspace_bytes(), first) << "a second identical call grows nothing";
  EXPECT_EQ(result, hout);
  // A smaller call fits in what is there.
  ops->add(Tensor(hout.data(), DType::kBF16, {100}), Tensor(hx.data(), DType::kBF16, {100}),
           Tensor::f32(x.data(), {100}));
  EXPECT_EQ(ops->workspace_bytes(), first);
}

}  // namespace
}  // namespace mpt::test
