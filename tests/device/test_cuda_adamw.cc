// The CUDA optimizer ops (src/cuda/cuda_adamw.cu) against the CPU ops and against
// themselves: adamw_multi gives the bits of per-piece adamw and cast on the GPU (pieces
// spanning several blocks, unaligned ones on the scalar path, empty ones, more pieces than
// one launch's table), its compute copies are the updated params rounded to nearest even,
// and it tracks the CPU oracle; the clip factor read from device memory equals the host
// float; sum_squares_acc gives the bits of acc + sum_squares and repeats them; the clip
// factor is the host formula's bits; all three record into a graph and replay as run
// eagerly; bad arguments are refused as the CPU refuses them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/rng.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

// One device allocation read and written whole.
struct Buf {
  backend::Ops* gpu = nullptr;
  void* dev = nullptr;
  size_t bytes = 0;
  Buf(backend::Ops& g, size_t n) : gpu(&g), dev(g.allocate(std::max<size_t>(n, 1))), bytes(n) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { gpu->release(dev); }
  void put(const void* src) { gpu->to_device(dev, src, bytes); }
  std::vector<uint8_t> get() const {
    std::vector<uint8_t> out(bytes);
    gpu->to_host(out.data(), dev, bytes);
    return out;
  }
};

// The pieces of an update held on the host (the CPU's tensors) and on the device. Each
// device piece sits `shift` elements into its buffers (shift 1: not 16-byte aligned).
struct Pieces {
  std::vector<int64_t> sizes, shifts;
  std::vector<float> decays;
  std::vector<bool> copies;
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<std::vector<uint16_t>> c;
  std::vector<std::unique_ptr<Buf>> dp, dg, dm, dv, dc;

  Pieces(backend::Ops& gpu, std::vector<int64_t> n, uint64_t seed) : sizes(std::move(n)) {
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t len = sizes[k];
      shifts.push_back(k % 3 == 2 ? 1 : 0);
      decays.push_back(k % 2 ? 0.0f : 0.1f * static_cast<float>(1 + k % 4));
      copies.push_back(k % 4 != 1);
      auto draw = [&](uint64_t key, float scale, bool square) {
        std::vector<float> x(static_cast<size_t>(len));
        fill_normal(x.data(), len, seed + 16 * k + key, 0, 0.0f, scale);
        if (square)
          for (float& e : x) e *= e;
        return x;
      };
      p.push_back(draw(0, 0.02f, false));
      g.push_back(draw(1, 1.0f, false));
      m.push_back(draw(2, 0.01f, false));
      v.push_back(draw(3, 0.01f, true));
      c.emplace_back(static_cast<size_t>(len), uint16_t{0x7fc0});
      const size_t shift = static_cast<size_t>(shifts[k]);
      auto up = [&](const void* src, size_t elem, std::vector<std::unique_ptr<Buf>>& to) {
        auto b = std::make_unique<Buf>(gpu, (static_cast<size_t>(len) + shift) * elem);
        std::vector<uint8_t> staged(b->bytes, 0);
        std::memcpy(staged.data() + shift * elem, src, static_cast<size_t>(len) * elem);
        b->put(staged.data());
        to.push_back(std::move(b));
      };
      up(p[k].data(), 4, dp);
      up(g[k].data(), 4, dg);
      up(m[k].data(), 4, dm);
      up(v[k].data(), 4, dv);
      up(c[k].data(), 2, dc);
    }
  }
  void* at(const Buf& b, size_t k, size_t elem) const {
    return static_cast<uint8_t*>(b.dev) + static_cast<size_t>(shifts[k]) * elem;
  }
  std::vector<backend::AdamWTensor> host_table() {
    std::vector<backend::AdamWTensor> t;
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t n = sizes[k];
      t.push_back({Tensor::f32(p[k].data(), {n}), Tensor::f32(g[k].data(), {n}), Tensor::f32(m[k].data(), {n}),
                   Tensor::f32(v[k].data(), {n}), copies[k] ? Tensor(c[k].data(), DType::kBF16, {n}) : Tensor(),
                   decays[k]});
    }
    return t;
  }
  std::vector<backend::AdamWTensor> device_table() const {
    std::vector<backend::AdamWTensor> t;
    for (size_t k = 0; k < sizes.size(); ++k) {
      const int64_t n = sizes[k];
      t.push_back({Tensor::f32(static_cast<float*>(at(*dp[k], k, 4)), {n}),
                   Tensor::f32(static_cast<float*>(at(*dg[k], k, 4)), {n}),
                   Tensor::f32(static_cast<float*>(at(*dm[k], k, 4)), {n}),
                   Tensor::f32(static_cast<float*>(at(*dv[k], k, 4)), {n}),
                   copies[k] ? Tensor(at(*dc[k], k, 2), DType::kBF16, {n}) : Tensor(), decays[k]});
    }
    return t;
  }
  // Piece k's device values of one array, without the shift.
  template <typename T>
  std::vector<T> device(const std::vector<std::unique_ptr<Buf>>& bufs, size_t k) const {
    const std::vector<uint8_t> raw = bufs[k]->get();
    std::vector<T> out(static_cast<size_t>(sizes[k]));
    if (!out.empty()) std::memcpy(out.data(), raw.data() + static_cast<size_t>(shifts[k]) * sizeof(T), out.size() * sizeof(T));
    return out;
  }
};

backend::AdamWArgs args(int64_t step) {
  backend::AdamWArgs a;
  a.lr = 3e-3f;
  a.beta1 = 0.9f;
  a.beta2 = 0.95f;
  a.eps = 1e-8f;
  a.step = step;
  a.grad_scale = 0.37f;
  return a;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Every array of x's device pieces equals y's bit for bit.
void expect_same_device(const Pieces& x, const Pieces& y, const std::string& what) {
  for (size_t k = 0; k < x.sizes.size(); ++k) {
    EXPECT_TRUE(same_bits(x.device<float>(x.dp, k), y.device<float>(y.dp, k))) << what << ": param of piece " << k;
    EXPECT_TRUE(same_bits(x.device<float>(x.dm, k), y.device<float>(y.dm, k))) << what << ": exp_avg of piece " << k;
    EXPECT_TRUE(same_bits(x.device<float>(x.dv, k), y.device<float>(y.dv, k))) << what << ": exp_avg_sq of piece " << k;
    EXPECT_TRUE(same_bits(x.device<uint16_t>(x.dc, k), y.device<uint16_t>(y.dc, k))) << what << ": copy of piece " << k;
  }
}

// Per-piece adamw at each piece's decay, then cast (the definition of adamw_multi).
void per_piece(backend::Ops& ops, const std::vector<backend::AdamWTensor>& t, const backend::AdamWArgs& a) {
  for (const backend::AdamWTensor& x : t) {
    backend::AdamWArgs b = a;
    b.weight_decay = x.weight_decay;
    ops.adamw(x.param, x.grad, x.exp_avg, x.exp_avg_sq, b);
    if (x.compute_copy.data) ops.cast(x.compute_copy, x.param);
  }
}

const std::vector<int64_t> kSizes = {1, 3, 8192, 0, 8192 * 3 + 7, 1000, 5, 257, 65536 + 12, 4};

TEST(CudaAdamW, MultiEqualsPerPieceAdamWAndCast) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Pieces multi(*b.gpu, kSizes, 3), single(*b.gpu, kSizes, 3);
  for (int64_t step : {1, 2, 10}) {
    const std::vector<backend::AdamWTensor> t = multi.device_table();
    b.gpu->adamw_multi(t.data(), static_cast<int64_t>(t.size()), args(step));
    per_piece(*b.gpu, single.device_table(), args(step));
    expect_same_device(multi, single, "step " + std::to_string(step));
  }
  for (size_t k = 0; k < kSizes.size(); ++k) {
    if (!multi.copies[k]) continue;
    const std::vector<float> p = multi.device<float>(multi.dp, k);
    const std::vector<uint16_t> c = multi.device<uint16_t>(multi.dc, k);
    for (size_t i = 0; i < p.size(); ++i) ASSERT_EQ(c[i], f32_to_bf16(p[i])) << "piece " << k << " element " << i;
  }
}

TEST(CudaAdamW, MultiTracksTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Pieces x(*b.gpu, kSizes, 5);
  for (int64_t step : {1, 2, 3, 1000}) {
    const std::vector<backend::AdamWTensor> t = x.device_table();
    b.gpu->adamw_multi(t.data(), static_cast<int64_t>(t.size()), args(step));
    std::vector<backend::AdamWTensor> h = x.host_table();
    b.cpu->adamw_multi(h.data(), static_cast<int64_t>(h.size()), args(step));
    for (size_t k = 0; k < kSizes.size(); ++k) {
      const std::string at = "piece " + std::to_string(k) + " at step " + std::to_string(step);
      const std::vector<float> p = x.device<float>(x.dp, k), m = x.device<float>(x.dm, k);
      EXPECT_LE(scaled_error(p, x.p[k].data(), p.size()), 1e-6) << "param of " << at;
      EXPECT_LE(scaled_error(m, x.m[k].data(), m.size()), 1e-6) << "exp_avg of " << at;
    }
  }
}

// More pieces than one launch's table: several launches, the same bits.
TEST(CudaAdamW, ManyPiecesSpanSeveralLaunches) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  std::vector<int64_t> sizes;
  for (int k = 0; k < 1300; ++k) sizes.push_back(1 + (k * 37) % 300);
  Pieces multi(*b.gpu, sizes, 7), single(*b.gpu, sizes, 7);
  const std::vector<backend::AdamWTensor> t = multi.device_table();
  b.gpu->adamw_multi(t.data(), static_cast<int64_t>(t.size()), args(1));
  per_piece(*b.gpu, single.device_table(), args(1));
  expect_same_device(multi, single, "1300 pieces");
}

TEST(CudaAdamW, FactorInDeviceMemoryEqualsTheHostFloat) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Pieces dev(*b.gpu, kSizes, 9), host(*b.gpu, kSizes, 9);
  Buf factor(*b.gpu, 4);
  const float f = 0.1234f;
  factor.put(&f);
  backend::AdamWArgs a = args(2), h = args(2);
  a.grad_scale = 9.0f;  // not used: the device factor is
  a.grad_scale_device = Tensor::f32(static_cast<float*>(factor.dev), {1});
  h.grad_scale = f;
  const std::vector<backend::AdamWTensor> t = dev.device_table(), u = host.device_table();
  b.gpu->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  b.gpu->adamw_multi(u.data(), static_cast<int64_t>(u.size()), h);
  expect_same_device(dev, host, "device factor");
  // The single-tensor op reads it too.
  b.gpu->adamw(t[2].param, t[2].grad, t[2].exp_avg, t[2].exp_avg_sq, a);
  b.gpu->adamw(u[2].param, u[2].grad, u[2].exp_avg, u[2].exp_avg_sq, h);
  EXPECT_TRUE(same_bits(dev.device<float>(dev.dp, 2), host.device<float>(host.dp, 2)));
}

TEST(CudaAdamW, SumSquaresAccIsAccPlusSumSquares) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Buf acc(*b.gpu, 8);
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{255}, int64_t{4097}, int64_t{1000003}}) {
    for (bool bf16 : {false, true}) {
      SCOPED_TRACE("n = " + std::to_string(n) + (bf16 ? ", bf16" : ", f32"));
      auto x = b.f32({n}, 11, 2.0f);
      std::vector<uint16_t> xb(static_cast<size_t>(n));
      for (size_t i = 0; i < xb.size(); ++i) xb[i] = f32_to_bf16(x->f()[i]);
      Buf xbuf(*b.gpu, xb.size() * 2);
      xbuf.put(xb.data());
      const Tensor dx = bf16 ? Tensor(xbuf.dev, DType::kBF16, {n}) : x->gpu_t();
      const Tensor hx = bf16 ? Tensor(xb.data(), DType::kBF16, {n}) : x->cpu();
      const double start = 0.75;
      const Tensor dacc(acc.dev, DType::kF64, {1});
      double got[2];
      for (double& g : got) {
        acc.put(&start);
        b.gpu->sum_squares_acc(dacc, dx);
        b.gpu->sum_squares_acc(dacc, dx);
        acc.gpu->to_host(&g, acc.dev, 8);
      }
      double want = start;
      want += b.gpu->sum_squares(dx);
      want += b.gpu->sum_squares(dx);
      EXPECT_EQ(std::memcmp(&got[0], &want, 8), 0) << got[0] << " vs " << want;
      EXPECT_EQ(std::memcmp(&got[0], &got[1], 8), 0) << "not deterministic";
      const double cpu = start + 2 * b.cpu->sum_squares(hx);
      EXPECT_NEAR(got[0], cpu, 1e-12 * cpu);
    }
  }
}

float host_clip(double sumsq, double max_norm) {
  if (max_norm <= 0) return 1.0f;
  const double coeff = max_norm / (std::sqrt(sumsq) + 1e-6);
  return coeff < 1.0 ? static_cast<float>(coeff) : 1.0f;
}

TEST(CudaAdamW, ClipFactorIsTheHostFormula) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Buf sq(*b.gpu, 8), factor(*b.gpu, 4);
  const double inf = std::numeric_limits<double>::infinity();
  for (double max_norm : {1.0, 0.3, 0.0})
    for (double s : {0.0, 1e-20, 0.25, 1.0, 2.0, 12345.678, 1e300, inf, std::nan("")}) {
      sq.put(&s);
      b.gpu->grad_clip_factor(Tensor::f32(static_cast<float*>(factor.dev), {1}), Tensor(sq.dev, DType::kF64, {1}),
                              max_norm);
      float got = 0;
      b.gpu->to_host(&got, factor.dev, 4);
      const float want = host_clip(s, max_norm);
      EXPECT_EQ(std::memcmp(&got, &want, 4), 0) << "sumsq " << s << ", max_norm " << max_norm << ": " << got
                                                 << " vs " << want;
    }
}

// A step's optimizer work recorded once and replayed: the norm summed, the factor formed
// and the update applied from device memory, as the same calls run eagerly.
TEST(CudaAdamW, NormFactorAndUpdateReplayFromAGraph) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Pieces graphed(*b.gpu, kSizes, 13), eager(*b.gpu, kSizes, 13);
  Buf gsq(*b.gpu, 8), gf(*b.gpu, 4), esq(*b.gpu, 8), ef(*b.gpu, 4);
  auto work = [&](Pieces& x, Buf& sq, Buf& f) {
    const Tensor acc(sq.dev, DType::kF64, {1});
    b.gpu->fill(Tensor::f32(static_cast<float*>(sq.dev), {2}), 0.0f);
    const std::vector<backend::AdamWTensor> t = x.device_table();
    for (const backend::AdamWTensor& piece : t) b.gpu->sum_squares_acc(acc, piece.grad);
    const Tensor factor = Tensor::f32(static_cast<float*>(f.dev), {1});
    b.gpu->grad_clip_factor(factor, acc, 1.0);
    backend::AdamWArgs a = args(1);
    a.grad_scale_device = factor;
    b.gpu->adamw_multi(t.data(), static_cast<int64_t>(t.size()), a);
  };
  work(graphed, gsq, gf);  // the scratch reaches its size before the capture
  work(eager, esq, ef);
  b.gpu->begin_capture();
  work(graphed, gsq, gf);
  std::unique_ptr<backend::Graph> g = b.gpu->end_capture();
  for (int r = 0; r < 2; ++r) {
    g->replay();
    work(eager, esq, ef);
  }
  b.gpu->synchronize();
  expect_same_device(graphed, eager, "replayed");
  EXPECT_TRUE(same_bits(gf.get(), ef.get()));
  float f = 0;
  b.gpu->to_host(&f, ef.dev, 4);
  EXPECT_LT(f, 1.0f) << "the gradients' norm clips";
}

TEST(CudaAdamW, RejectsWhatTheCpuRejects) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  Buf p(*b.gpu, 16), copy3(*b.gpu, 6), d(*b.gpu, 16);
  const Tensor t4 = Tensor::f32(static_cast<float*>(p.dev), {4});
  backend::AdamWTensor bad_copy{t4, t4, t4, t4, Tensor(copy3.dev, DType::kBF16, {3}), 0.0f};
  backend::AdamWTensor f32_copy{t4, t4, t4, t4, t4, 0.0f};
  const Tensor f64 = Tensor(d.dev, DType::kF64, {1}), f32 = Tensor::f32(static_cast<float*>(d.dev), {1});
  backend::AdamWArgs wrong_factor = args(1);
  wrong_factor.grad_scale_device = f64;
  expect_error([&] { b.gpu->adamw_multi(&bad_copy, 1, args(1)); }, Status::kInvalidArgument,
               {"adamw_multi", "piece 0", "compute_copy"});
  expect_error([&] { b.gpu->adamw_multi(&f32_copy, 1, args(1)); }, Status::kInvalidArgument,
               {"adamw_multi", "compute_copy", "BF16"});
  expect_error([&] { b.gpu->adamw_multi(nullptr, 3, args(1)); }, Status::kInvalidArgument, {"adamw_multi"});
  expect_error([&] { b.gpu->adamw(t4, t4, t4, t4, wrong_factor); }, Status::kInvalidArgument,
               {"adamw", "grad_scale_device"});
  expect_error([&] { b.gpu->sum_squares_acc(f32, t4); }, Status::kInvalidArgument, {"sum_squares_acc", "acc"});
  expect_error([&] { b.gpu->grad_clip_factor(f64, f64, 1.0); }, Status::kInvalidArgument,
               {"grad_clip_factor", "factor"});
  expect_error([&] { b.gpu->grad_clip_factor(f32, f32, 1.0); }, Status::kInvalidArgument,
               {"grad_clip_factor", "sumsq"});
  // The CPU refuses the same calls.
  std::vector<float> h(4);
  std::vector<uint16_t> h3(3);
  const Tensor c4 = Tensor::f32(h.data(), {4});
  backend::AdamWTensor cpu_bad{c4, c4, c4, c4, Tensor(h3.data(), DType::kBF16, {3}), 0.0f};
  expect_error([&] { b.cpu->adamw_multi(&cpu_bad, 1, args(1)); }, Status::kInvalidArgument,
               {"adamw_multi", "compute_copy"});
}

}  // namespace
}  // namespace mpt::device_testing
