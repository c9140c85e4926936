// The CUDA GEMM family (matmul, add_bias, bias_grad, grouped_matmul) against the CPU
// oracle on random inputs: every transpose combination and scale, degenerate extents
// (1xN, Mx1, K = 1, empty), misaligned views, groups without rows, bit-for-bit repeats
// and the argument checks; the algorithm choice per shape (timed once, cached, untimed
// during capture or with MPT_GEMM_AUTOTUNE=0) and the widened bf16 fallback's notice.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/log.h"
#include "cuda/cuda_ops.h"
#include "device_util.h"

namespace mpt {
namespace {

using backend::GroupedForm;
using device_testing::Backends;
using device_testing::Pair;

constexpr double kTol = 1e-5;
// bf16 operands: exact products, fp32 sums in another order than the CPU's.
constexpr double kBf16GemmTol = 1e-4;

std::string shape_name(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// The device values equal the CPU's in p.host: NaN exactly where the CPU has NaN, and
// within `tol` of the tensor's scale elsewhere (a NaN would slip past the scaled error).
void expect_matches_cpu(const Pair& p, double tol, const std::string& what) {
  const std::vector<float> got = p.download_f32();
  const auto* want = reinterpret_cast<const float*>(p.host.data());
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(want[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " on the GPU, " << want[i] << " on the CPU";
      return;
    }
  }
  const double e = device_testing::scaled_error(got, want, got.size());
  EXPECT_LE(e, tol) << what << ": the GPU result differs from the CPU's by " << e << " (scaled)";
}

void expect_bitwise_equal(const std::vector<float>& x, const std::vector<float>& y, const std::string& what) {
  ASSERT_EQ(x.size(), y.size()) << what;
  EXPECT_EQ(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)), 0) << what << ": two calls gave different bits";
}

void expect_invalid(const std::function<void()>& call, const std::string& op) {
  try {
    call();
    ADD_FAILURE() << op << ": expected an invalid-argument error";
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), Status::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find(op + ":"), std::string::npos) << e.what();
  }
}

void fill_nan(Pair& p) {
  for (int64_t i = 0; i < p.numel(); ++i) p.f()[i] = std::numeric_limits<float>::quiet_NaN();
  p.upload();
}

// ---- matmul ---------------------------------------------------------------------------------

void check_matmul(Backends& be, int64_t m, int64_t n, int64_t k, bool ta, bool tb, float alpha, float beta,
                  uint64_t seed) {
  auto a = be.f32(ta ? std::vector<int64_t>{k, m} : std::vector<int64_t>{m, k}, seed);
  auto b = be.f32(tb ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n}, seed + 1);
  auto c = be.f32({m, n}, seed + 2);
  be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), ta, tb, alpha, beta);
  be.cpu->matmul(c->cpu(), a->cpu(), b->cpu(), ta, tb, alpha, beta);
  expect_matches_cpu(*c, kTol,
                     "matmul m " + std::to_string(m) + " n " + std::to_string(n) + " k " + std::to_string(k) +
                         (ta ? " a^T" : "") + (tb ? " b^T" : "") + " alpha " + std::to_string(alpha) + " beta " +
                         std::to_string(beta));
}

TEST(CudaGemm, MatmulMatchesCpuForEveryTransposeAndScale) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 1, 1},     {1, 37, 19},   {41, 1, 23},     {29, 31, 1},  {7, 13, 5},
                          {64, 64, 64},  {127, 129, 255}, {256, 384, 1024}, {1, 4096, 64}, {3, 5, 0},
                          {0, 5, 3},     {4, 0, 3},     {0, 0, 0}};
  const float scales[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, -2.0f}, {-1.5f, 0.25f}, {0.0f, 0.5f}};
  uint64_t seed = 1;
  for (const Shape& s : shapes)
    for (int combo = 0; combo < 4; ++combo)
      for (const auto& ab : scales) {
        check_matmul(be, s.m, s.n, s.k, combo & 1, combo & 2, ab[0], ab[1], seed);
        seed += 3;
      }
}

TEST(CudaGemm, MatmulAtBetaZeroIgnoresNanInTheOutput) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  for (int64_t k : {int64_t{0}, int64_t{1}, int64_t{17}}) {
    auto a = be.f32({9, k}, 11), b = be.f32({k, 6}, 12);
    auto c = be.f32({9, 6});
    fill_nan(*c);
    be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), false, false, 1.0f, 0.0f);
    be.cpu->matmul(c->cpu(), a->cpu(), b->cpu(), false, false, 1.0f, 0.0f);
    for (float v : c->download_f32()) ASSERT_TRUE(std::isfinite(v)) << "k " << k << ": NaN of c leaked through beta 0";
    expect_matches_cpu(*c, kTol, "matmul over NaN, k " + std::to_string(k));
  }
}

// A tensor of more than two axes is read as [numel / last_dim, last_dim] rows.
TEST(CudaGemm, MatmulReadsHigherRankTensorsAsRows) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto a = be.f32({2, 3, 5}, 21), b = be.f32({7, 5}, 22), c = be.f32({2, 3, 7}, 23);
  be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), false, true, 1.0f, 1.0f);
  be.cpu->matmul(c->cpu(), a->cpu(), b->cpu(), false, true, 1.0f, 1.0f);
  expect_matches_cpu(*c, kTol, "matmul on [2,3,5] x [7,5]^T");
}

// Views that start one row into an odd-width buffer are only 4-byte aligned: the algorithm
// chosen must accept that, and the one chosen for aligned operands must not be reused.
TEST(CudaGemm, MatmulOnMisalignedViews) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const int64_t m = 33, n = 47, k = 65;
  for (int pass = 0; pass < 2; ++pass) {  // aligned first, then the same shape misaligned
    const int64_t skip = pass;
    auto a = be.f32({m + skip, k}, 31), b = be.f32({k + skip, n}, 32), c = be.f32({m + skip, n}, 33);
    auto view = [&](const Tensor& t, int64_t rows) { return t.rows(skip, rows); };
    be.gpu->matmul(view(c->gpu_t(), m), view(a->gpu_t(), m), view(b->gpu_t(), k), false, false, 0.75f, 0.5f);
    be.cpu->matmul(view(c->cpu(), m), view(a->cpu(), m), view(b->cpu(), k), false, false, 0.75f, 0.5f);
    expect_matches_cpu(*c, kTol, pass ? "matmul on misaligned views" : "matmul on aligned views");
  }
}

TEST(CudaGemm, MatmulIsBitwiseRepeatable) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  struct Shape {
    int64_t m, n, k;
  };
  // The long inner dimension invites split-K algorithms, whose reduction must be ordered.
  for (const Shape& s : {Shape{512, 768, 2048}, Shape{64, 64, 16384}, Shape{3, 1000, 4097}}) {
    auto a = be.f32({s.m, s.k}, 41), b = be.f32({s.n, s.k}, 42);
    auto c1 = be.f32({s.m, s.n}), c2 = be.f32({s.m, s.n});
    be.gpu->matmul(c1->gpu_t(), a->gpu_t(), b->gpu_t(), false, true, 1.0f, 0.0f);
    be.gpu->matmul(c2->gpu_t(), a->gpu_t(), b->gpu_t(), false, true, 1.0f, 0.0f);
    const std::string what = "matmul " + shape_name({s.m, s.n, s.k});
    expect_bitwise_equal(c1->download_f32(), c2->download_f32(), what);
    be.cpu->matmul(c1->cpu(), a->cpu(), b->cpu(), false, true, 1.0f, 0.0f);
    expect_matches_cpu(*c1, kTol, what);
  }
}

TEST(CudaGemm, MatmulRejectsBadArguments) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto a = be.f32({3, 4}, 1), b = be.f32({3, 4}, 2), c = be.f32({3, 3});
  auto ids = be.i32({3, 4}, std::vector<int32_t>(12, 0));
  expect_invalid([&] { be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), false, false, 1, 0); }, "matmul");
  expect_invalid([&] { be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), true, true, 1, 0); }, "matmul");
  expect_invalid([&] { be.gpu->matmul(c->gpu_t(), ids->gpu_t(), b->gpu_t(), false, true, 1, 0); }, "matmul");
  Tensor no_data = a->gpu_t();
  no_data.data = nullptr;
  expect_invalid([&] { be.gpu->matmul(c->gpu_t(), no_data, b->gpu_t(), false, true, 1, 0); }, "matmul");
}

// ---- algorithm choice per shape ------------------------------------------------------------

cuda::CudaOps& as_cuda(backend::Ops& ops) { return dynamic_cast<cuda::CudaOps&>(ops); }

// Sets MPT_GEMM_AUTOTUNE for one scope, restoring what was there.
class AutotuneSetting {
 public:
  explicit AutotuneSetting(const char* value) {
    const char* old = std::getenv("MPT_GEMM_AUTOTUNE");
    had_ = old != nullptr;
    if (had_) old_ = old;
    if (value)
      ::setenv("MPT_GEMM_AUTOTUNE", value, 1);
    else
      ::unsetenv("MPT_GEMM_AUTOTUNE");
  }
  ~AutotuneSetting() {
    if (had_)
      ::setenv("MPT_GEMM_AUTOTUNE", old_.c_str(), 1);
    else
      ::unsetenv("MPT_GEMM_AUTOTUNE");
  }
  AutotuneSetting(const AutotuneSetting&) = delete;
  AutotuneSetting& operator=(const AutotuneSetting&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};

struct TunedShape {
  int64_t m, n, k;
  bool ta, tb;
  float alpha, beta;
};

// The first call of each shape (none used by another test) plans it and, with more than one
// candidate, times them; its result equals the CPU's. The second call reuses the plan (nothing
// planned or timed) and gives the same bits. At beta != 0 the timing must leave c as it was:
// the result then still equals the CPU's single accumulation.
void check_tuned_shapes(Backends& be, const std::vector<TunedShape>& shapes, uint64_t seed, int64_t* timed) {
  for (const TunedShape& s : shapes) {
    const std::string what = "matmul " + shape_name({s.m, s.n, s.k}) + (s.ta ? " a^T" : "") + (s.tb ? " b^T" : "") +
                             " beta " + std::to_string(s.beta);
    auto a = be.f32(s.ta ? std::vector<int64_t>{s.k, s.m} : std::vector<int64_t>{s.m, s.k}, seed);
    auto b = be.f32(s.tb ? std::vector<int64_t>{s.n, s.k} : std::vector<int64_t>{s.k, s.n}, seed + 1);
    auto c = be.f32({s.m, s.n}, seed + 2);
    auto c_again = be.f32({s.m, s.n}, seed + 2);
    seed += 3;
    const cuda::GemmTuningCounts before = cuda::gemm_tuning_counts();
    be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), s.ta, s.tb, s.alpha, s.beta);
    const cuda::GemmTuningCounts first = cuda::gemm_tuning_counts();
    EXPECT_EQ(first.planned - before.planned, 1) << what << ": a new shape is planned once";
    EXPECT_LE(first.timed - before.timed, 1) << what;
    *timed += first.timed - before.timed;
    be.gpu->matmul(c_again->gpu_t(), a->gpu_t(), b->gpu_t(), s.ta, s.tb, s.alpha, s.beta);
    const cuda::GemmTuningCounts second = cuda::gemm_tuning_counts();
    EXPECT_EQ(second.planned, first.planned) << what << ": the second call must reuse the cached choice";
    EXPECT_EQ(second.timed, first.timed) << what << ": the second call must not time again";
    expect_bitwise_equal(c->download_f32(), c_again->download_f32(), what + " (first and second call)");
    be.cpu->matmul(c->cpu(), a->cpu(), b->cpu(), s.ta, s.tb, s.alpha, s.beta);
    expect_matches_cpu(*c, kTol, what);
  }
}

TEST(CudaGemm, AutotunedShapesMatchTheCpuAndReuseTheirChoice) {
  MPT_SKIP_WITHOUT_GPU();
  AutotuneSetting on(nullptr);  // the default: timed
  Backends be;
  const std::vector<TunedShape> shapes = {{191, 263, 317, false, true, 1.0f, 0.0f},
                                          {512, 384, 768, false, false, 1.0f, 0.0f},
                                          {250, 130, 1030, true, false, 0.5f, 1.0f},
                                          {1000, 64, 4099, false, true, 1.0f, -0.5f},
                                          {96, 2048, 96, true, true, 2.0f, 0.0f},
                                          {2047, 1025, 129, false, false, 1.0f, 1.0f}};
  int64_t timed = 0;
  check_tuned_shapes(be, shapes, 900, &timed);
  EXPECT_GT(timed, 0) << "no shape had more than one candidate to time";
}

// MPT_GEMM_AUTOTUNE=0: the heuristic's first, nothing timed; results as before.
TEST(CudaGemm, AutotuneOffTakesTheHeuristicsFirst) {
  MPT_SKIP_WITHOUT_GPU();
  AutotuneSetting off("0");
  Backends be;
  int64_t timed = 0;
  check_tuned_shapes(be, {{193, 261, 319, false, true, 1.0f, 0.0f}, {252, 132, 1028, true, false, 1.0f, 1.0f}}, 950,
                     &timed);
  EXPECT_EQ(timed, 0) << "MPT_GEMM_AUTOTUNE=0 must not time";
}

// A shape first met during graph capture takes the heuristic's first untimed (nothing may wait
// during a capture), and keeps it for the eager calls after, which give the graph's bits.
TEST(CudaGemm, AShapeFirstMetInACaptureIsNotTimed) {
  MPT_SKIP_WITHOUT_GPU();
  AutotuneSetting on(nullptr);
  Backends be;
  auto a = be.f32({177, 311}, 971), b = be.f32({229, 311}, 972);
  auto c = be.f32({177, 229}), c_eager = be.f32({177, 229});
  const cuda::GemmTuningCounts before = cuda::gemm_tuning_counts();
  be.gpu->begin_capture();
  be.gpu->matmul(c->gpu_t(), a->gpu_t(), b->gpu_t(), false, true, 1.0f, 0.0f);
  const std::unique_ptr<backend::Graph> graph = be.gpu->end_capture();
  const cuda::GemmTuningCounts captured = cuda::gemm_tuning_counts();
  EXPECT_EQ(captured.planned - before.planned, 1);
  EXPECT_EQ(captured.timed, before.timed) << "timed during a capture";
  graph->replay();
  be.gpu->matmul(c_eager->gpu_t(), a->gpu_t(), b->gpu_t(), false, true, 1.0f, 0.0f);
  EXPECT_EQ(cuda::gemm_tuning_counts().timed, before.timed) << "the eager call must keep the graph's choice";
  expect_bitwise_equal(c->download_f32(), c_eager->download_f32(), "graph and eager call of one shape");
  be.cpu->matmul(c->cpu(), a->cpu(), b->cpu(), false, true, 1.0f, 0.0f);
  expect_matches_cpu(*c, kTol, "matmul planned in a capture");
}

// bf16 operands on tensor cores, where cuBLASLt proposes many algorithms: the timed choice
// agrees with the CPU on the same (bf16-rounded) values; a bf16 GEMM on 2-byte-aligned
// operands, which cuBLASLt may have no algorithm for, runs on widened copies and is then
// counted and logged once for its shape.
TEST(CudaGemm, AutotunedBf16GemmsMatchTheCpu) {
  MPT_SKIP_WITHOUT_GPU();
  AutotuneSetting on(nullptr);
  Backends be;
  std::vector<std::string> notices;
  as_cuda(*be.gpu).set_logger(Logger([&](LogLevel, const std::string& m) { notices.push_back(m); }, LogLevel::kDebug));
  struct Shape {
    int64_t m, n, k, skip;  // skip: elements the operands start into their buffers
  };
  uint64_t seed = 980;
  for (const Shape& s : {Shape{320, 448, 576, 0}, Shape{129, 255, 383, 0}, Shape{37, 45, 53, 1}}) {
    const std::string what = "bf16 matmul " + shape_name({s.m, s.n, s.k}) + " skip " + std::to_string(s.skip);
    auto a = be.f32({s.m * s.k + s.skip}, seed), b = be.f32({s.n * s.k + s.skip}, seed + 1);
    auto c = be.f32({s.m, s.n}), c_again = be.f32({s.m, s.n});
    seed += 2;
    // The CPU's operands: the values rounded to bf16 (exact in f32); the GPU's: them in bf16.
    auto round_host = [](Pair& p) {
      for (int64_t i = 0; i < p.numel(); ++i) p.f()[i] = bf16_to_f32(f32_to_bf16(p.f()[i]));
      p.upload();
    };
    round_host(*a);
    round_host(*b);
    void* a16 = be.gpu->allocate(static_cast<size_t>(a->numel()) * 2);
    void* b16 = be.gpu->allocate(static_cast<size_t>(b->numel()) * 2);
    Tensor a16_t = a->gpu_t(), b16_t = b->gpu_t();
    a16_t.data = a16;
    a16_t.dtype = DType::kBF16;
    b16_t.data = b16;
    b16_t.dtype = DType::kBF16;
    be.gpu->cast(a16_t, a->gpu_t());
    be.gpu->cast(b16_t, b->gpu_t());
    const auto matrix = [&](Tensor t, int64_t rows, int64_t cols) {
      t.data = static_cast<char*>(t.data) + s.skip * static_cast<int64_t>(dtype_size(t.dtype));
      t.ndim = 2;
      t.shape[0] = rows;
      t.shape[1] = cols;
      return t;
    };
    const cuda::GemmTuningCounts before = cuda::gemm_tuning_counts();
    const size_t notices_before = notices.size();
    be.gpu->matmul(c->gpu_t(), matrix(a16_t, s.m, s.k), matrix(b16_t, s.n, s.k), false, true, 1.0f, 0.0f);
    be.gpu->matmul(c_again->gpu_t(), matrix(a16_t, s.m, s.k), matrix(b16_t, s.n, s.k), false, true, 1.0f, 0.0f);
    const cuda::GemmTuningCounts after = cuda::gemm_tuning_counts();
    // Whether cuBLASLt has an algorithm for 2-byte-aligned bf16 depends on its version: the
    // fallback, where taken, is counted and logged once for the shape, else neither.
    const int64_t widened = after.widened - before.widened;
    EXPECT_TRUE(widened == 0 || (widened == 1 && s.skip)) << what << ": widened " << widened;
    ASSERT_EQ(static_cast<int64_t>(notices.size() - notices_before), widened) << what << ": one notice per shape";
    if (widened) {
      const std::string& notice = notices.back();
      EXPECT_NE(notice.find("widened"), std::string::npos) << notice;
      EXPECT_NE(notice.find("c[37, 45]"), std::string::npos) << notice;
      EXPECT_NE(notice.find("k 53"), std::string::npos) << notice;
      EXPECT_NE(notice.find("bf16"), std::string::npos) << notice;
    }
    expect_bitwise_equal(c->download_f32(), c_again->download_f32(), what + " (first and second call)");
    be.cpu->matmul(c->cpu(), matrix(a->cpu(), s.m, s.k), matrix(b->cpu(), s.n, s.k), false, true, 1.0f, 0.0f);
    expect_matches_cpu(*c, kBf16GemmTol, what);
    be.gpu->release(a16);
    be.gpu->release(b16);
  }
}

// ---- bias -----------------------------------------------------------------------------------

TEST(CudaGemm, AddBiasMatchesCpu) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const std::vector<std::vector<int64_t>> shapes = {{1, 1},    {5, 7},      {300, 1}, {1, 1000},
                                                    {1031, 769}, {0, 8},     {2, 3, 11}, {4099, 257}};
  uint64_t seed = 100;
  for (const auto& shape : shapes) {
    auto y = be.f32(shape, seed++), bias = be.f32({shape.back()}, seed++);
    be.gpu->add_bias(y->gpu_t(), bias->gpu_t());
    be.cpu->add_bias(y->cpu(), bias->cpu());
    expect_matches_cpu(*y, kTol, "add_bias y " + shape_name(shape));
  }
}

TEST(CudaGemm, AddBiasRejectsMismatchedShapes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto y = be.f32({4, 6}, 1), bias5 = be.f32({5}, 2), none = be.f32({0});
  expect_invalid([&] { be.gpu->add_bias(y->gpu_t(), bias5->gpu_t()); }, "add_bias");
  expect_invalid([&] { be.gpu->add_bias(y->gpu_t(), none->gpu_t()); }, "add_bias");
}

TEST(CudaGemm, BiasGradMatchesCpuAndAccumulates) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  // Row counts around the lane and chunk sizes, one column and many, a single row of many
  // columns, and tall inputs split into many row chunks.
  const std::vector<std::vector<int64_t>> shapes = {{0, 5},       {1, 1},      {7, 13},     {63, 33},
                                                    {65, 31},     {129, 32},   {100003, 3}, {4097, 1025},
                                                    {5, 70001},   {20000, 96}, {2, 9, 40}};
  uint64_t seed = 200;
  for (const auto& shape : shapes) {
    auto dy = be.f32(shape, seed++), dbias = be.f32({shape.back()}, seed++);  // dbias starts non-zero: acc
    be.gpu->bias_grad(dbias->gpu_t(), dy->gpu_t());
    be.cpu->bias_grad(dbias->cpu(), dy->cpu());
    expect_matches_cpu(*dbias, kTol, "bias_grad dy " + shape_name(shape));
  }
}

TEST(CudaGemm, BiasGradIsBitwiseRepeatable) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  for (const std::vector<int64_t>& shape : {std::vector<int64_t>{300001, 7}, std::vector<int64_t>{8192, 4096},
                                            std::vector<int64_t>{50, 10}}) {
    auto dy = be.f32(shape, 301);
    auto d1 = be.f32({shape.back()}), d2 = be.f32({shape.back()});
    be.gpu->bias_grad(d1->gpu_t(), dy->gpu_t());
    be.gpu->bias_grad(d2->gpu_t(), dy->gpu_t());
    expect_bitwise_equal(d1->download_f32(), d2->download_f32(), "bias_grad dy " + shape_name(shape));
    be.cpu->bias_grad(d1->cpu(), dy->cpu());
    expect_matches_cpu(*d1, kTol, "bias_grad dy " + shape_name(shape));
  }
}

TEST(CudaGemm, BiasGradRejectsMismatchedShapes) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  auto dy = be.f32({4, 6}, 1), d5 = be.f32({5}), none = be.f32({0});
  expect_invalid([&] { be.gpu->bias_grad(d5->gpu_t(), dy->gpu_t()); }, "bias_grad");
  expect_invalid([&] { be.gpu->bias_grad(none->gpu_t(), dy->gpu_t()); }, "bias_grad");
}

// ---- grouped GEMM -----------------------------------------------------------------------------

const char* form_name(GroupedForm f) {
  switch (f) {
    case GroupedForm::kForward: return "forward";
    case GroupedForm::kInputGrad: return "input-grad";
    case GroupedForm::kWeightGrad: return "weight-grad";
  }
  return "?";
}

struct GroupedOperands {
  std::unique_ptr<Pair> a, b, c;
};

// Operands of one grouped GEMM with weights [groups, out, in] over R rows.
GroupedOperands grouped_operands(Backends& be, GroupedForm form, int64_t groups, int64_t rows, int64_t out,
                                 int64_t in, uint64_t seed) {
  GroupedOperands o;
  switch (form) {
    case GroupedForm::kForward:
      o.a = be.f32({rows, in}, seed), o.b = be.f32({groups, out, in}, seed + 1), o.c = be.f32({rows, out}, seed + 2);
      break;
    case GroupedForm::kInputGrad:
      o.a = be.f32({rows, out}, seed), o.b = be.f32({groups, out, in}, seed + 1), o.c = be.f32({rows, in}, seed + 2);
      break;
    case GroupedForm::kWeightGrad:
      o.a = be.f32({rows, out}, seed), o.b = be.f32({rows, in}, seed + 1), o.c = be.f32({groups, out, in}, seed + 2);
      break;
  }
  return o;
}

TEST(CudaGemm, GroupedMatmulMatchesCpuForEveryForm) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const std::vector<std::vector<int64_t>> count_sets = {{5},          {3, 0, 4, 1}, {0, 0, 0},
                                                        {0, 7},       {1, 1, 1, 1, 1}, {17, 0, 33, 2},
                                                        {130, 0, 0, 1}};
  struct Dims {
    int64_t out, in;
  };
  const Dims dims[] = {{6, 10}, {1, 1}, {13, 1}, {1, 9}, {64, 48}, {33, 65}};
  uint64_t seed = 500;
  for (GroupedForm form : {GroupedForm::kForward, GroupedForm::kInputGrad, GroupedForm::kWeightGrad})
    for (float beta : {0.0f, 1.0f, 0.5f})
      for (const auto& counts : count_sets)
        for (const Dims& d : dims) {
          int64_t rows = 0;
          for (int64_t n : counts) rows += n;
          const auto groups = static_cast<int64_t>(counts.size());
          GroupedOperands o = grouped_operands(be, form, groups, rows, d.out, d.in, seed);
          seed += 3;
          be.gpu->grouped_matmul(o.c->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), counts.data(), groups, form, beta);
          be.cpu->grouped_matmul(o.c->cpu(), o.a->cpu(), o.b->cpu(), counts.data(), groups, form, beta);
          expect_matches_cpu(*o.c, kTol,
                             std::string("grouped_matmul ") + form_name(form) + " beta " + std::to_string(beta) +
                                 " counts " + shape_name(counts) + " out " + std::to_string(d.out) + " in " +
                                 std::to_string(d.in));
        }
}

// An expert that received no tokens gets a zero weight gradient at beta 0, whatever its
// buffer held, and keeps beta times it otherwise.
TEST(CudaGemm, GroupedWeightGradOfEmptyGroups) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const std::vector<int64_t> counts = {0, 4, 0};
  for (float beta : {0.0f, 1.0f, -0.5f}) {
    GroupedOperands o = grouped_operands(be, GroupedForm::kWeightGrad, 3, 4, 5, 7, 600);
    if (beta == 0.0f) fill_nan(*o.c);
    be.gpu->grouped_matmul(o.c->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), counts.data(), 3, GroupedForm::kWeightGrad,
                           beta);
    be.cpu->grouped_matmul(o.c->cpu(), o.a->cpu(), o.b->cpu(), counts.data(), 3, GroupedForm::kWeightGrad, beta);
    const std::vector<float> got = o.c->download_f32();
    if (beta == 0.0f) {
      for (size_t i = 0; i < 35; ++i) EXPECT_EQ(got[i], 0.0f) << "group 0 element " << i;
      for (size_t i = 70; i < 105; ++i) EXPECT_EQ(got[i], 0.0f) << "group 2 element " << i - 70;
    }
    expect_matches_cpu(*o.c, kTol, "grouped weight grad with empty groups, beta " + std::to_string(beta));
  }
}

TEST(CudaGemm, GroupedMatmulIsBitwiseRepeatable) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  const std::vector<int64_t> counts = {700, 0, 1300, 48};
  for (GroupedForm form : {GroupedForm::kForward, GroupedForm::kInputGrad, GroupedForm::kWeightGrad}) {
    GroupedOperands o = grouped_operands(be, form, 4, 2048, 96, 160, 700);
    auto c2 = be.f32(o.c->shape);
    be.gpu->grouped_matmul(o.c->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), counts.data(), 4, form, 0.0f);
    be.gpu->grouped_matmul(c2->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), counts.data(), 4, form, 0.0f);
    expect_bitwise_equal(o.c->download_f32(), c2->download_f32(), std::string("grouped_matmul ") + form_name(form));
    be.cpu->grouped_matmul(o.c->cpu(), o.a->cpu(), o.b->cpu(), counts.data(), 4, form, 0.0f);
    expect_matches_cpu(*o.c, kTol, std::string("grouped_matmul ") + form_name(form));
  }
}

TEST(CudaGemm, GroupedMatmulRejectsBadArguments) {
  MPT_SKIP_WITHOUT_GPU();
  Backends be;
  GroupedOperands o = grouped_operands(be, GroupedForm::kForward, 2, 6, 3, 4, 800);
  auto call = [&](const std::vector<int64_t>& counts, int64_t groups, float beta, GroupedForm form) {
    be.gpu->grouped_matmul(o.c->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), counts.data(), groups, form, beta);
  };
  const char* op = "grouped_matmul";
  expect_invalid([&] { call({2, 3}, 2, 0.0f, GroupedForm::kForward); }, op);   // counts sum to 5, not 6
  expect_invalid([&] { call({7, -1}, 2, 0.0f, GroupedForm::kForward); }, op);  // runs past, then negative
  expect_invalid([&] { call({-1, 7}, 2, 0.0f, GroupedForm::kForward); }, op);
  expect_invalid([&] { call({6}, 0, 0.0f, GroupedForm::kForward); }, op);
  expect_invalid([&] { call({3, 3}, 2, std::numeric_limits<float>::infinity(), GroupedForm::kForward); }, op);
  expect_invalid([&] { call({3, 3}, 2, 0.0f, static_cast<GroupedForm>(7)); }, op);
  expect_invalid([&] { call({6}, 1, 0.0f, GroupedForm::kForward); }, op);      // b holds 2 groups
  expect_invalid([&] { call({3, 3}, 2, 0.0f, GroupedForm::kInputGrad); }, op);  // a is [R, in], not [R, out]
  expect_invalid([&] { call({3, 3}, 2, 0.0f, GroupedForm::kWeightGrad); }, op);  // b is not [R, in]
  expect_invalid(
      [&] {
        be.gpu->grouped_matmul(o.c->gpu_t(), o.a->gpu_t(), o.b->gpu_t(), nullptr, 2, GroupedForm::kForward, 0.0f);
      },
      op);
}

}  // namespace
}  // namespace mpt
