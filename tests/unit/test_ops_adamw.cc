#include "test_ops_util.h"

#include <cstring>
#include <limits>

#include "core/bf16.h"

namespace mpt::test {
namespace {

TEST(OpsAdamW, TwoStepsMatchHandComputedReference) {
  auto ops = backend::make_cpu_ops(2);
  const int64_t n = 300;
  std::vector<float> p = random_vector(n, 1), m(n, 0.0f), v(n, 0.0f);
  std::vector<double> rp(p.begin(), p.end()), rm(n, 0.0), rv(n, 0.0);
  backend::AdamWArgs a;
  a.lr = 1e-2f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.weight_decay = 0.1f;
  a.grad_scale = 0.5f;
  for (int64_t step = 1; step <= 2; ++step) {
    std::vector<float> g = random_vector(n, 10 + step);
    a.step = step;
    ops->adamw(view(p, {n}), view(g, {n}), view(m, {n}), view(v, {n}), a);
    const double b1 = a.beta1, b2 = a.beta2;
    for (int64_t i = 0; i < n; ++i) {
      const double gi = static_cast<double>(g[i]) * a.grad_scale;
      rm[i] = b1 * rm[i] + (1 - b1) * gi;
      rv[i] = b2 * rv[i] + (1 - b2) * gi * gi;
      const double mhat = rm[i] / (1 - std::pow(b1, step)), vhat = rv[i] / (1 - std::pow(b2, step));
      rp[i] -= a.lr * (mhat / (std::sqrt(vhat) + a.eps) + a.weight_decay * rp[i]);
    }
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_NEAR(m[i], rm[i], 1e-6);
      ASSERT_NEAR(v[i], rv[i], 1e-6);
      ASSERT_NEAR(p[i], rp[i], 1e-6) << "step " << step << " element " << i;
    }
  }
}

TEST(OpsAdamW, RejectsBadArguments) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> p(4), g(3), m(4), v(4);
  backend::AdamWArgs a;
  expect_invalid([&] { ops->adamw(view(p, {4}), view(g, {3}), view(m, {4}), view(v, {4}), a); });
  a.step = 0;
  expect_invalid([&] { ops->adamw(view(p, {4}), view(p, {4}), view(m, {4}), view(v, {4}), a); });
}

// --- adamw_multi, sum_squares_acc, grad_clip_factor -----------------------------------------

// Pieces of one update: sizes that leave vector tails, an empty piece, mixed weight decays,
// with and without a bf16 compute copy.
struct MultiCase {
  std::vector<int64_t> sizes{1, 3, 257, 0, 1000, 4096 + 5};
  std::vector<float> decays{0.1f, 0.0f, 0.05f, 0.1f, 0.0f, 0.3f};
  std::vector<bool> copies{true, false, true, true, false, true};
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<std::vector<uint16_t>> c;

  explicit MultiCase(uint64_t seed) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t n = sizes[k];
      p.push_back(random_vector(n, seed + 10 * k, 0.02f));
      g.push_back(random_vector(n, seed + 10 * k + 1));
      m.push_back(random_vector(n, seed + 10 * k + 2, 0.01f));
      std::vector<float> sq = random_vector(n, seed + 10 * k + 3, 0.01f);
      for (float& x : sq) x = x * x;
      v.push_back(sq);
      c.emplace_back(static_cast<size_t>(n), uint16_t{0x7fc0});  // NaN until written
    }
  }
  std::vector<backend::AdamWTensor> table() {
    std::vector<backend::AdamWTensor> t;
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t n = sizes[k];
      backend::AdamWTensor x;
      x.param = Tensor::f32(p[k].data(), {n});
      x.grad = Tensor::f32(g[k].data(), {n});
      x.exp_avg = Tensor::f32(m[k].data(), {n});
      x.exp_avg_sq = Tensor::f32(v[k].data(), {n});
      if (copies[k]) x.compute_copy = Tensor(c[k].data(), DType::kBF16, {n});
      x.weight_decay = decays[k];
      t.push_back(x);
    }
    return t;
  }
};

backend::AdamWArgs multi_args(int64_t step) {
  backend::AdamWArgs a;
  a.lr = 3e-3f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.step = step;
  a.grad_scale = 0.37f;
  a.weight_decay = 123.0f;  // not used by adamw_multi: each piece has its own
  return a;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Per-tensor adamw at each piece's decay, then cast: the definition adamw_multi matches.
void reference_update(backend::Ops& ops, MultiCase& mc, const backend::AdamWArgs& a) {
  for (size_t k = 0; k < mc.sizes.size(); ++k) {
    const int64_t n = mc.sizes[k];
    backend::AdamWArgs b = a;
    b.weight_decay = mc.decays[k];
    ops.adamw(Tensor::f32(mc.p[k].data(), {n}), Tensor::f32(mc.g[k].data(), {n}), Tensor::f32(mc.m[k].data(), {n}),
              Tensor::f32(mc.v[k].data(), {n}), b);
    if (mc.copies[k]) ops.cast(Tensor(mc.c[k].data(), DType::kBF16, {n}), Tensor::f32(mc.p[k].data(), {n}));
  }
}

void expect_same_case(const MultiCase& got, const MultiCase& want, const std::string& what) {
  for (size_t k = 0; k < got.sizes.size(); ++k) {
    EXPECT_TRUE(same_bits(got.p[k], want.p[k])) << what << ": param of piece " << k;
    EXPECT_TRUE(same_bits(got.m[k], want.m[k])) << what << ": exp_avg of piece " << k;
    EXPECT_TRUE(same_bits(got.v[k], want.v[k])) << what << ": exp_avg_sq of piece " << k;
    EXPECT_TRUE(same_bits(got.c[k], want.c[k])) << what << ": compute copy of piece " << k;
  }
}

TEST(OpsAdamW, MultiEqualsPerTensorAdamWAndCastBitForBit) {
  auto ops = backend::make_cpu_ops(2);
  MultiCase got(7), want(7);
  for (int64_t step : {1, 2, 3}) {
    const backend::AdamWArgs a = multi_args(step);
    std::vector<backend::AdamWTensor> t = got.table();
    ops->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
    reference_update(*ops, want, a);
    expect_same_case(got, want, "step " + std::to_string(step));
  }
  // The copies were written (no NaN left) and are the params rounded to nearest even.
  for (size_t k = 0; k < got.sizes.size(); ++k)
    for (size_t i = 0; got.copies[k] && i < got.c[k].size(); ++i)
      ASSERT_EQ(got.c[k][i], f32_to_bf16(got.p[k][i])) << "piece " << k << " element " << i;
  // An empty table is a no-op.
  ops->adamw_multi(nullptr, 0, multi_args(1));
}

TEST(OpsAdamW, ClipFactorFromBackendMemoryEqualsTheHostFloat) {
  auto ops = backend::make_cpu_ops(2);
  MultiCase got(9), want(9);
  float factor = 0.37f;
  backend::AdamWArgs a = multi_args(1), host = a;
  a.grad_scale = 5.0f;  // ignored: the device factor is used
  a.grad_scale_device = Tensor::f32(&factor, {1});
  std::vector<backend::AdamWTensor> t = got.table();
  ops->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  reference_update(*ops, want, host);
  expect_same_case(got, want, "device factor");
  // The single-tensor form reads it too.
  std::vector<float> p1 = random_vector(33, 1), g1 = random_vector(33, 2), m1(33, 0.0f), v1(33, 0.0f);
  std::vector<float> p2 = p1, m2 = m1, v2 = v1;
  ops->adamw(view(p1, {33}), view(g1, {33}), view(m1, {33}), view(v1, {33}), a);
  ops->adamw(view(p2, {33}), view(g1, {33}), view(m2, {33}), view(v2, {33}), host);
  EXPECT_TRUE(same_bits(p1, p2) && same_bits(m1, m2) && same_bits(v1, v2));
}

// The emulated device forwards the table (its pointers untagged) and the device factor.
TEST(OpsAdamW, MultiOnTheEmulatedDeviceEqualsTheCpu) {
  auto cpu = backend::make_cpu_ops(2);
  auto dev = backend::make_emulated_device_ops(2);
  MultiCase host(11), want(11);
  float factor = 0.5f;
  backend::AdamWArgs a = multi_args(2), ref = a;
  ref.grad_scale = factor;
  std::vector<std::vector<void*>> mem;  // per piece: p, g, m, v, c on the device
  std::vector<backend::AdamWTensor> t = host.table();
  auto up = [&](const void* src, size_t bytes) {
    void* d = dev->allocate(std::max<size_t>(bytes, 1));
    dev->to_device(d, src, bytes);
    return d;
  };
  for (size_t k = 0; k < t.size(); ++k) {
    const int64_t n = host.sizes[k];
    const size_t fb = static_cast<size_t>(n) * 4, hb = static_cast<size_t>(n) * 2;
    mem.push_back({up(host.p[k].data(), fb), up(host.g[k].data(), fb), up(host.m[k].data(), fb),
                   up(host.v[k].data(), fb), up(host.c[k].data(), hb)});
    t[k].param.data = mem[k][0];
    t[k].grad.data = mem[k][1];
    t[k].exp_avg.data = mem[k][2];
    t[k].exp_avg_sq.data = mem[k][3];
    if (host.copies[k]) t[k].compute_copy.data = mem[k][4];
  }
  void* f = up(&factor, sizeof factor);
  a.grad_scale_device = Tensor::f32(static_cast<float*>(f), {1});
  const int64_t reads = backend::emulated_device_host_reads();
  dev->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  EXPECT_EQ(backend::emulated_device_host_reads(), reads) << "the update reads nothing back";
  reference_update(*cpu, want, ref);
  // Recorded in a graph, the table as it was at the call: replayed twice, two updates.
  dev->begin_capture();
  dev->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  std::unique_ptr<backend::Graph> graph = dev->end_capture();
  for (backend::AdamWTensor& x : t) x.param.data = nullptr;  // the recording holds its own copy
  graph->replay();
  graph->replay();
  reference_update(*cpu, want, ref);
  reference_update(*cpu, want, ref);
  for (size_t k = 0; k < t.size(); ++k) {
    const size_t n = static_cast<size_t>(host.sizes[k]);
    dev->to_host(host.p[k].data(), mem[k][0], n * 4);
    dev->to_host(host.m[k].data(), mem[k][2], n * 4);
    dev->to_host(host.v[k].data(), mem[k][3], n * 4);
    dev->to_host(host.c[k].data(), mem[k][4], n * 2);
    for (void* d : mem[k]) dev->release(d);
  }
  dev->release(f);
  expect_same_case(host, want, "emulated device");
}

TEST(OpsAdamW, SumSquaresAccEqualsTheHostSum) {
  auto ops = backend::make_cpu_ops(2);
  std::vector<float> x = random_vector(10001, 5), y = random_vector(7, 6);
  std::vector<uint16_t> yb(y.size());
  for (size_t i = 0; i < y.size(); ++i) yb[i] = f32_to_bf16(y[i]);
  double acc = 0.25;
  ops->sum_squares_acc(Tensor(&acc, DType::kF64, {1}), view(x, {10001}));
  ops->sum_squares_acc(Tensor(&acc, DType::kF64, {1}), Tensor(yb.data(), DType::kBF16, {7}));
  double want = 0.25;
  want += ops->sum_squares(view(x, {10001}));
  want += ops->sum_squares(Tensor(yb.data(), DType::kBF16, {7}));
  EXPECT_EQ(std::memcmp(&acc, &want, sizeof acc), 0) << acc << " vs " << want;

  // On the emulated device: accumulated there, recorded in a graph like any op, no host read.
  auto dev = backend::make_emulated_device_ops(2);
  void* dx = dev->allocate(x.size() * 4);
  void* dacc = dev->allocate(8);
  dev->to_device(dx, x.data(), x.size() * 4);
  const double start = 0.25;
  dev->to_device(dacc, &start, 8);
  const int64_t reads = backend::emulated_device_host_reads();
  dev->begin_capture();
  dev->sum_squares_acc(Tensor(dacc, DType::kF64, {1}), Tensor::f32(static_cast<float*>(dx), {10001}));
  std::unique_ptr<backend::Graph> g = dev->end_capture();
  g->replay();
  g->replay();
  EXPECT_EQ(backend::emulated_device_host_reads(), reads);
  double got = 0;
  dev->to_host(&got, dacc, 8);
  double twice = 0.25;
  twice += ops->sum_squares(view(x, {10001}));
  twice += ops->sum_squares(view(x, {10001}));
  EXPECT_EQ(std::memcmp(&got, &twice, sizeof got), 0) << got << " vs " << twice;
  dev->release(dx);
  dev->release(dacc);
}

// Megatron's coefficient as the optimizer forms it on the host (optim/adamw.cc).
float host_clip(double sumsq, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coeff = max_norm / (std::sqrt(sumsq) + 1e-6);
  return coeff < 1.0 ? static_cast<float>(coeff) : 1.0f;
}

TEST(OpsAdamW, GradClipFactorIsTheHostFormula) {
  auto ops = backend::make_cpu_ops(1);
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  for (double max_norm : {1.0, 0.3, 0.0, -1.0})
    for (double sumsq : {0.0, 1e-20, 0.25, 1.0, (1.0 - 1e-6) * (1.0 - 1e-6), 2.0, 1e6, 1e300, inf, nan}) {
      float factor = -7.0f;
      ops->grad_clip_factor(Tensor::f32(&factor, {1}), Tensor(&sumsq, DType::kF64, {1}), max_norm);
      const float want = host_clip(sumsq, max_norm);
      EXPECT_EQ(std::memcmp(&factor, &want, sizeof factor), 0)
          << "sumsq " << sumsq << ", max_norm " << max_norm << ": " << factor << " vs " << want;
    }
  // Clipping off is 1 whatever the norm; a large norm scales below 1.
  double big = 400.0;
  float f = 0;
  ops->grad_clip_factor(Tensor::f32(&f, {1}), Tensor(&big, DType::kF64, {1}), 1.0);
  EXPECT_NEAR(f, 0.05f, 1e-7f);
}

TEST(OpsAdamW, OptimizerOpsRejectBadArguments) {
  auto ops = backend::make_cpu_ops(1);
  std::vector<float> p(4), g(4), m(4), v(4), f32_copy(4);
  std::vector<uint16_t> short_copy(3);
  backend::AdamWTensor t{view(p, {4}), view(g, {4}), view(m, {4}), view(v, {4}), view(f32_copy, {4}), 0.0f};
  expect_invalid([&] { ops->adamw_multi(&t, 1, multi_args(1)); });  // an f32 compute copy
  t.compute_copy = Tensor(short_copy.data(), DType::kBF16, {3});
  expect_invalid([&] { ops->adamw_multi(&t, 1, multi_args(1)); });  // a copy of another size
  expect_invalid([&] { ops->adamw_multi(nullptr, 2, multi_args(1)); });
  expect_invalid([&] { ops->adamw_multi(&t, -1, multi_args(1)); });
  backend::AdamWArgs a = multi_args(1);
  double d = 0;
  a.grad_scale_device = Tensor(&d, DType::kF64, {1});
  expect_invalid([&] { ops->adamw(view(p, {4}), view(g, {4}), view(m, {4}), view(v, {4}), a); });
  a.grad_scale_device = view(p, {4});
  expect_invalid([&] { ops->adamw(view(p, {4}), view(g, {4}), view(m, {4}), view(v, {4}), a); });
  float acc32 = 0;
  expect_invalid([&] { ops->sum_squares_acc(Tensor::f32(&acc32, {1}), view(p, {4})); });
  expect_invalid([&] { ops->sum_squares_acc(Tensor(&d, DType::kF64, {2}), view(p, {4})); });
  expect_invalid([&] { ops->grad_clip_factor(Tensor(&d, DType::kF64, {1}), Tensor(&d, DType::kF64, {1}), 1.0); });
  expect_invalid([&] { ops->grad_clip_factor(Tensor::f32(&acc32, {1}), Tensor::f32(&acc32, {1}), 1.0); });
}

}  // namespace
}  // namespace mpt::test
