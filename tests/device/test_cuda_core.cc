// The CUDA backend's core against the CPU oracle: the caching allocator, memory calls,
// elementwise ops, the double reductions, all_finite and AdamW.
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "cuda/allocator.h"
#include "cuda/cuda_ops.h"
#include "device_util.h"

namespace mpt::device_testing {
namespace {

// Element counts that hit the edges of the launch shapes: empty, one, around a block of
// 256 threads, past the 1024 reduction blocks (grid-stride loops), odd.
const std::vector<int64_t> kSizes = {0, 1, 7, 255, 256, 257, 4097, 262145, 1048576 + 3, 3000017};

cuda::CudaOps& as_cuda(backend::Ops& ops) { return dynamic_cast<cuda::CudaOps&>(ops); }

// --- allocator --------------------------------------------------------------------------

TEST(CudaAllocator, ReusesReleasedBlocksWithoutNewDriverAllocations) {
  MPT_SKIP_WITHOUT_GPU();
  cuda::CachingAllocator alloc(0);
  EXPECT_EQ(alloc.allocate(0), nullptr);
  alloc.release(nullptr);

  void* small = alloc.allocate(1000);  // class 1024
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small) % 256, 0u);
  EXPECT_EQ(alloc.bytes_in_use(), 1024u);
  EXPECT_EQ(alloc.driver_allocations(), 1);
  alloc.release(small);
  EXPECT_EQ(alloc.bytes_in_use(), 0u);
  EXPECT_EQ(alloc.bytes_cached(), 1024u);
  EXPECT_EQ(alloc.allocate(513), small) << "a request of the same class takes the cached block";
  EXPECT_EQ(alloc.driver_allocations(), 1);

  void* large = alloc.allocate((size_t{3} << 20) + 1);  // class 4 MiB
  EXPECT_EQ(alloc.bytes_in_use(), 1024u + (size_t{4} << 20));
  EXPECT_EQ(alloc.driver_allocations(), 2);
  alloc.release(large);
  EXPECT_EQ(alloc.allocate(size_t{4} << 20), large);
  EXPECT_EQ(alloc.driver_allocations(), 2);
  void* other = alloc.allocate(size_t{1} << 20);  // 1 MiB is the largest small class: a new block
  EXPECT_NE(other, large);
  EXPECT_EQ(alloc.driver_allocations(), 3);
  EXPECT_EQ(alloc.peak_bytes_in_use(), 1024u + (size_t{4} << 20) + (size_t{1} << 20));

  // A steady state of the same requests allocates nothing new from the driver.
  alloc.release(small);
  alloc.release(large);
  alloc.release(other);
  const int64_t before = alloc.driver_allocations();
  for (int step = 0; step < 50; ++step) {
    std::vector<void*> blocks;
    for (size_t bytes : {size_t{1000}, size_t{3} << 20, size_t{1} << 20}) blocks.push_back(alloc.allocate(bytes));
    for (void* p : blocks) alloc.release(p);
  }
  EXPECT_EQ(alloc.driver_allocations(), before);

  alloc.empty_cache();
  EXPECT_EQ(alloc.bytes_cached(), 0u);
  EXPECT_EQ(alloc.bytes_in_use(), 0u);
  alloc.allocate(1000);
  EXPECT_EQ(alloc.driver_allocations(), before + 1) << "after empty_cache the driver is asked again";
}

TEST(CudaAllocator, OutOfMemoryNamesTheRequestAndLeavesTheDeviceUsable) {
  MPT_SKIP_WITHOUT_GPU();
  cuda::CachingAllocator alloc(0);
  void* kept = alloc.allocate(4096);
  alloc.release(alloc.allocate(8192));  // something cached, given back before the retry
  const size_t huge = size_t{1} << 50;  // 1 PiB
  expect_error([&] { alloc.allocate(huge); }, Status::kOutOfMemory,
               {"cuda:0", "cannot allocate 1125899906842624 bytes", "4096 bytes in use"});
  EXPECT_EQ(alloc.bytes_cached(), 0u) << "the cache is returned to the driver before the retry";
  expect_error([&] { alloc.allocate(std::numeric_limits<size_t>::max()); }, Status::kOutOfMemory,
               {"cannot allocate 18446744073709551615 bytes"});
  // No sticky error is left behind: allocations and kernels still work.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  void* p = alloc.allocate(1 << 20);
  EXPECT_NE(p, nullptr);
  alloc.release(p);
  alloc.release(kept);

  Backends b;
  expect_error([&] { b.gpu->allocate(huge); }, Status::kOutOfMemory, {"cuda:0", "1125899906842624"});
  auto x = b.f32({1000}, 3);
  b.gpu->scale(x->gpu_t(), 2.0f);
  b.cpu->scale(x->cpu(), 2.0f);
  expect_close(*x, 0.0, "scale after an out-of-memory error");
}

TEST(CudaAllocator, RejectsPointersItDidNotGiveOut) {
  MPT_SKIP_WITHOUT_GPU();
  cuda::CachingAllocator alloc(0);
  int host = 0;
  expect_error([&] { alloc.release(&host); }, Status::kInvalidArgument, {"did not give out"});
  void* p = alloc.allocate(2048);
  expect_error([&] { alloc.release(static_cast<char*>(p) + 256); }, Status::kInvalidArgument, {"did not give out"});
  alloc.release(p);
  expect_error([&] { alloc.release(p); }, Status::kInvalidArgument, {"released twice"});
  EXPECT_EQ(alloc.bytes_cached(), 2048u) << "a rejected release changes nothing";

  Backends b;
  expect_error([&] { b.gpu->release(&host); }, Status::kInvalidArgument, {"cuda:0", "did not give out"});
}

// --- construction and memory ------------------------------------------------------------

TEST(CudaCore, FactoryRefusesWithoutAGpu) {
  std::string problem;
  if (gpu_visible(&problem)) GTEST_SKIP() << "a GPU is visible";
  ASSERT_TRUE(problem.empty()) << "the CUDA GPUs cannot be counted: " << problem;
  expect_error([] { backend::make_cuda_ops(0); }, Status::kDevice, {"cuda:0", "no CUDA GPU is visible"});
}

TEST(CudaCore, FactoryNamesTheDevice) {
  MPT_SKIP_WITHOUT_GPU();
  const int count = static_cast<int>(cuda::visible_devices().size());
  expect_error([] { backend::make_cuda_ops(-1); }, Status::kDevice, {"cuda:-1", "no such GPU"});
  expect_error([&] { backend::make_cuda_ops(count); }, Status::kDevice,
               {"cuda:" + std::to_string(count), "no such GPU", std::to_string(count)});
  auto ops = backend::make_cuda_ops(count - 1);
  EXPECT_EQ(std::string(ops->name()), "cuda:" + std::to_string(count - 1));
  EXPECT_FALSE(ops->host_memory());
  EXPECT_GE(ops->workspace_bytes(), int64_t{32} << 20) << "the cuBLASLt workspace";
  EXPECT_EQ(as_cuda(*ops).lt_workspace_bytes(), size_t{32} << 20);
  EXPECT_NE(as_cuda(*ops).lt(), nullptr);
  EXPECT_NE(as_cuda(*ops).stream(), nullptr);
  ops->synchronize();
}

TEST(CudaCore, AllocateIsZeroFilledEvenWhenReused) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  EXPECT_EQ(b.gpu->allocate(0), nullptr);
  b.gpu->release(nullptr);
  for (size_t bytes : {size_t{4}, size_t{1000}, size_t{3} << 20}) {
    void* p = b.gpu->allocate(bytes);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
    std::vector<uint8_t> junk(bytes, 0xab);
    b.gpu->to_device(p, junk.data(), bytes);
    b.gpu->release(p);
    void* q = b.gpu->allocate(bytes);
    EXPECT_EQ(q, p) << "the released block is reused";
    std::vector<uint8_t> got(bytes, 1);
    b.gpu->to_host(got.data(), q, bytes);
    EXPECT_EQ(got, std::vector<uint8_t>(bytes, 0)) << bytes << " bytes";
    b.gpu->release(q);
  }
}

TEST(CudaCore, CopiesToAndFromTheDevice) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const size_t n = 1000003;
  std::vector<float> src(n);
  for (size_t i = 0; i < n; ++i) src[i] = static_cast<float>(i) * 0.5f - 7.0f;
  void* dev = b.gpu->allocate(n * sizeof(float));
  b.gpu->to_device(dev, src.data(), n * sizeof(float));
  b.gpu->to_device(dev, src.data(), 0);
  b.gpu->to_host(src.data(), dev, 0);
  std::vector<float> back(n);
  b.gpu->to_host(back.data(), dev, n * sizeof(float));
  EXPECT_EQ(back, src);

  // From pinned memory the copy has left the buffer once to_device returns.
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, n * sizeof(float)), cudaSuccess);
  for (size_t i = 0; i < n; ++i) pinned[i] = static_cast<float>(i);
  b.gpu->to_device(dev, pinned, n * sizeof(float));
  std::memset(pinned, 0, n * sizeof(float));
  b.gpu->to_host(back.data(), dev, n * sizeof(float));
  for (size_t i = 0; i < n; i += 9973) ASSERT_EQ(back[i], static_cast<float>(i)) << i;
  EXPECT_EQ(back[n - 1], static_cast<float>(n - 1));
  cudaFreeHost(pinned);
  b.gpu->release(dev);
}

TEST(CudaCore, ScratchAndPinnedGrowAndKeepTheirSize) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto& ops = as_cuda(*b.gpu);
  const int64_t base = ops.workspace_bytes();
  void* s1 = ops.scratch(16);
  ASSERT_NE(s1, nullptr);
  void* s2 = ops.scratch(size_t{24} << 20);
  ASSERT_NE(s2, nullptr);
  EXPECT_GE(ops.workspace_bytes(), base + (int64_t{24} << 20));
  EXPECT_EQ(ops.scratch(16), s2) << "scratch never shrinks";
  const std::vector<uint8_t> ones(size_t{24} << 20, 1);
  b.gpu->to_device(s2, ones.data(), ones.size());  // the whole area is writable
  ops.synchronize();
  void* h1 = ops.pinned(8);
  ASSERT_NE(h1, nullptr);
  auto* h2 = static_cast<uint8_t*>(ops.pinned(size_t{1} << 20));
  ASSERT_NE(h2, nullptr);
  h2[(size_t{1} << 20) - 1] = 7;
  EXPECT_EQ(ops.pinned(8), h2);
}

// --- elementwise ----------------------------------------------------------------------------

TEST(CudaCore, FillCopyAddScaleMatchTheCpuExactly) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  for (int64_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    auto x = b.f32({n}, 11);
    b.gpu->fill(x->gpu_t(), -1.25f);
    b.cpu->fill(x->cpu(), -1.25f);
    expect_close(*x, 0.0, "fill");

    auto src = b.f32({n}, 12), dst = b.f32({n}, 13);
    b.gpu->copy(dst->gpu_t(), src->gpu_t());
    b.cpu->copy(dst->cpu(), src->cpu());
    expect_close(*dst, 0.0, "copy");

    auto a = b.f32({n}, 14), c = b.f32({n}, 15), out = b.f32({n}, 16);
    b.gpu->add(out->gpu_t(), a->gpu_t(), c->gpu_t());
    b.cpu->add(out->cpu(), a->cpu(), c->cpu());
    expect_close(*out, 0.0, "add");
    b.gpu->add(a->gpu_t(), a->gpu_t(), c->gpu_t());  // out aliases a
    b.cpu->add(a->cpu(), a->cpu(), c->cpu());
    expect_close(*a, 0.0, "add into a");
    b.gpu->add(c->gpu_t(), out->gpu_t(), c->gpu_t());  // out aliases b
    b.cpu->add(c->cpu(), out->cpu(), c->cpu());
    expect_close(*c, 0.0, "add into b");

    b.gpu->add_inplace(out->gpu_t(), src->gpu_t());
    b.cpu->add_inplace(out->cpu(), src->cpu());
    expect_close(*out, 0.0, "add_inplace");

    b.gpu->scale(out->gpu_t(), 0.3f);
    b.cpu->scale(out->cpu(), 0.3f);
    expect_close(*out, 0.0, "scale");
  }
}

TEST(CudaCore, CopyMovesAnyDtypeAndShape) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  std::vector<int32_t> values(1001);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int32_t>(i * 7919 % 1000) - 500;
  auto src = b.i32({7, 11, 13}, values);
  auto dst = b.i32({1001}, std::vector<int32_t>(1001, 0));
  b.gpu->copy(dst->gpu_t(), src->gpu_t());
  EXPECT_EQ(dst->download_i32(), values);
  b.gpu->copy(src->gpu_t(), src->gpu_t());  // onto itself: nothing to do
  EXPECT_EQ(src->download_i32(), values);
}

// --- device_copy: memmove semantics -------------------------------------------------------

// One overlapping (or disjoint) device_copy inside a buffer of `total` pattern bytes against
// std::memmove on the host copy, eagerly or recorded in a graph and replayed.
void check_device_copy(Backends& b, size_t total, size_t dst_at, size_t src_at, size_t bytes, bool graphed) {
  std::vector<uint8_t> host(total);
  for (size_t i = 0; i < total; ++i) host[i] = static_cast<uint8_t>((i * 131 + i / 251) & 0xff);
  auto* base = static_cast<uint8_t*>(b.gpu->allocate(total));
  b.gpu->to_device(base, host.data(), total);
  if (graphed) {
    b.gpu->begin_capture();
    b.gpu->device_copy(base + dst_at, base + src_at, bytes);
    const std::unique_ptr<backend::Graph> graph = b.gpu->end_capture();
    graph->replay();
  } else {
    b.gpu->device_copy(base + dst_at, base + src_at, bytes);
  }
  std::memmove(host.data() + dst_at, host.data() + src_at, bytes);
  std::vector<uint8_t> got(total);
  b.gpu->to_host(got.data(), base, total);
  b.gpu->release(base);
  size_t first_bad = total;
  for (size_t i = 0; i < total && first_bad == total; ++i)
    if (got[i] != host[i]) first_bad = i;
  EXPECT_EQ(first_bad, total) << "device_copy of " << bytes << " bytes from offset " << src_at << " to " << dst_at
                              << (graphed ? " (graph)" : "") << ": first wrong byte at " << first_bad;
}

// Forward (dst below src) and backward (dst above src) shifts: by one byte (the byte kernel),
// by 4 and 16 bytes (wider words), by a fraction of the length (copies of disjoint pieces),
// across several of the kernel's tiles and with odd lengths; disjoint copies as before.
TEST(CudaCore, DeviceCopyHandlesOverlapInBothDirections) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  struct Case {
    size_t bytes, shift, offset;
  };
  const Case cases[] = {{17, 1, 0},           {1000, 1, 3},       {4096, 4, 0},        {300001, 4, 8},
                        {1 << 20, 16, 0},     {(1 << 20) + 48, 16, 16}, {3000017, 7, 1}, {1 << 20, 1 << 18, 0},
                        {1000003, 500000, 5}, {1 << 20, (1 << 20) - 1, 0}, {64, 63, 0},   {1 << 16, 1 << 16, 0},
                        {4096, 8192, 0}};
  for (const Case& c : cases) {
    const size_t total = c.offset + c.bytes + c.shift + 64;
    check_device_copy(b, total, c.offset, c.offset + c.shift, c.bytes, false);  // forward
    check_device_copy(b, total, c.offset + c.shift, c.offset, c.bytes, false);  // backward
  }
  check_device_copy(b, 4096, 0, 0, 4096, false);  // onto itself
  check_device_copy(b, 64, 3, 5, 0, false);        // empty
}

TEST(CudaCore, DeviceCopyWithOverlapRecordsIntoAGraph) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  check_device_copy(b, (1 << 20) + 256, 0, 4, 1 << 20, true);        // the kernel, forward
  check_device_copy(b, (1 << 20) + 256, 4, 0, 1 << 20, true);        // the kernel, backward
  check_device_copy(b, (1 << 20) + 256, 0, 1 << 18, 1 << 20, true);  // pieces, forward
  check_device_copy(b, (1 << 20) + (1 << 18), 1 << 18, 0, 1 << 20, true);  // pieces, backward
}

// --- reductions -----------------------------------------------------------------------------

TEST(CudaCore, SumSquaresAndDotMatchTheCpuAndRepeatBitForBit) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  for (int64_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    auto x = b.f32({n}, 21, 3.0f), y = b.f32({n}, 22);
    const double ss_cpu = b.cpu->sum_squares(x->cpu()), ss_gpu = b.gpu->sum_squares(x->gpu_t());
    const double dot_cpu = b.cpu->dot(x->cpu(), y->cpu()), dot_gpu = b.gpu->dot(x->gpu_t(), y->gpu_t());
    if (n == 0) {
      EXPECT_EQ(ss_gpu, 0.0);
      EXPECT_EQ(dot_gpu, 0.0);
      continue;
    }
    EXPECT_NEAR(ss_gpu, ss_cpu, 1e-12 * ss_cpu);
    // A dot product cancels: compare against the scale of its terms, sqrt(sum x^2 * sum y^2).
    const double dot_scale = std::sqrt(ss_cpu * b.cpu->sum_squares(y->cpu()));
    EXPECT_NEAR(dot_gpu, dot_cpu, 1e-12 * dot_scale);
    // The same bits again, also after a reduction of another size reused the scratch.
    b.gpu->sum_squares(y->gpu_t());
    const double ss_again = b.gpu->sum_squares(x->gpu_t()), dot_again = b.gpu->dot(x->gpu_t(), y->gpu_t());
    EXPECT_EQ(std::memcmp(&ss_again, &ss_gpu, sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(&dot_again, &dot_gpu, sizeof(double)), 0);
  }
}

TEST(CudaCore, SumSquaresIsExactOnIntegers) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  // Integers whose squares and sums stay exact in double: any order gives the exact answer.
  const int64_t n = 2000003;
  auto x = b.f32({n});
  double want = 0;
  for (int64_t i = 0; i < n; ++i) {
    x->f()[i] = static_cast<float>(i % 1001 - 500);
    want += static_cast<double>(x->f()[i]) * x->f()[i];
  }
  x->upload();
  EXPECT_EQ(b.gpu->sum_squares(x->gpu_t()), want);
  EXPECT_EQ(b.gpu->dot(x->gpu_t(), x->gpu_t()), want);
}

TEST(CudaCore, AllFiniteFindsEveryNanAndInf) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  const float specials[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::quiet_NaN()};
  for (int64_t n : kSizes) {
    SCOPED_TRACE("n = " + std::to_string(n));
    auto x = b.f32({n}, 31, 1e30f);
    EXPECT_TRUE(b.gpu->all_finite(x->gpu_t()));
    EXPECT_EQ(b.gpu->all_finite(x->gpu_t()), b.cpu->all_finite(x->cpu()));
    if (n == 0) continue;
    int which = 0;
    for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
      const float saved = x->f()[at];
      x->f()[at] = specials[which++ % 4];
      x->upload();
      EXPECT_FALSE(b.gpu->all_finite(x->gpu_t())) << "special at " << at;
      EXPECT_FALSE(b.cpu->all_finite(x->cpu()));
      x->f()[at] = saved;
    }
    // The largest finite values and subnormals are finite.
    x->f()[0] = FLT_MAX;
    x->f()[n - 1] = -FLT_MAX;
    if (n > 2) x->f()[1] = std::numeric_limits<float>::denorm_min();
    x->upload();
    EXPECT_TRUE(b.gpu->all_finite(x->gpu_t()));
  }
}

// --- AdamW ------------------------------------------------------------------------------------

TEST(CudaCore, AdamWMatchesTheCpuOverSteps) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  struct Case {
    float lr, beta1, beta2, eps, wd, grad_scale;
  };
  const Case cases[] = {{1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f},
                        {3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.37f},
                        {1e-2f, 0.0f, 0.5f, 1e-5f, 0.01f, 2.0f}};
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{257}, int64_t{1000003}}) {
    for (const Case& c : cases) {
      SCOPED_TRACE("n = " + std::to_string(n) + ", beta2 = " + std::to_string(c.beta2));
      auto param = b.f32({n}, 41, 0.02f), m = b.f32({n}), v = b.f32({n});
      backend::AdamWArgs a;
      a.lr = c.lr;
      a.beta1 = c.beta1;
      a.beta2 = c.beta2;
      a.eps = c.eps;
      a.weight_decay = c.wd;
      a.grad_scale = c.grad_scale;
      for (int64_t step : {1, 2, 3, 10, 1000}) {
        auto grad = b.f32({n}, 100 + static_cast<uint64_t>(step), 0.5f);
        a.step = step;
        b.gpu->adamw(param->gpu_t(), grad->gpu_t(), m->gpu_t(), v->gpu_t(), a);
        b.cpu->adamw(param->cpu(), grad->cpu(), m->cpu(), v->cpu(), a);
        const std::string at = " at step " + std::to_string(step);
        expect_close(*param, 1e-6, "param" + at);
        expect_close(*m, 1e-6, "exp_avg" + at);
        expect_close(*v, 1e-6, "exp_avg_sq" + at);
      }
    }
  }
}

// --- argument checks ----------------------------------------------------------------------

TEST(CudaCore, RejectsWhatTheCpuRejects) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  auto x4 = b.f32({4}, 1), x3 = b.f32({3}, 2);
  auto ids = b.i32({4}, {1, 2, 3, 4});
  backend::AdamWArgs a;
  // Each misuse is tried on both backends: both must throw kInvalidArgument naming the op.
  struct Misuse {
    const char* op;
    std::function<void(backend::Ops&, bool gpu)> call;
  };
  auto t = [](Pair& p, bool gpu) { return gpu ? p.gpu_t() : p.cpu(); };
  const Misuse misuses[] = {
      {"fill", [&](backend::Ops& o, bool g) { o.fill(t(*ids, g), 1.0f); }},
      {"copy", [&](backend::Ops& o, bool g) { o.copy(t(*x4, g), t(*x3, g)); }},
      {"copy", [&](backend::Ops& o, bool g) { o.copy(t(*x4, g), t(*ids, g)); }},
      {"add", [&](backend::Ops& o, bool g) { o.add(t(*x4, g), t(*x4, g), t(*x3, g)); }},
      {"add", [&](backend::Ops& o, bool g) { o.add(t(*x4, g), t(*ids, g), t(*x4, g)); }},
      {"add_inplace", [&](backend::Ops& o, bool g) { o.add_inplace(t(*x3, g), t(*x4, g)); }},
      {"scale", [&](backend::Ops& o, bool g) { o.scale(t(*ids, g), 2.0f); }},
      {"sum_squares", [&](backend::Ops& o, bool g) { o.sum_squares(t(*ids, g)); }},
      {"dot", [&](backend::Ops& o, bool g) { o.dot(t(*x4, g), t(*x3, g)); }},
      {"all_finite", [&](backend::Ops& o, bool g) { o.all_finite(t(*ids, g)); }},
      {"fill", [&](backend::Ops& o, bool g) {
         Tensor missing = t(*x4, g);
         missing.data = nullptr;
         o.fill(missing, 0.0f);
       }},
      {"adamw", [&](backend::Ops& o, bool g) { o.adamw(t(*x4, g), t(*x3, g), t(*x4, g), t(*x4, g), a); }},
      {"adamw", [&](backend::Ops& o, bool g) {
         backend::AdamWArgs bad = a;
         bad.step = 0;
         o.adamw(t(*x4, g), t(*x4, g), t(*x4, g), t(*x4, g), bad);
       }},
      {"adamw", [&](backend::Ops& o, bool g) {
         backend::AdamWArgs bad = a;
         bad.beta2 = 1.0f;
         o.adamw(t(*x4, g), t(*x4, g), t(*x4, g), t(*x4, g), bad);
       }},
  };
  for (const auto& m : misuses) {
    SCOPED_TRACE(m.op);
    expect_error([&] { m.call(*b.cpu, false); }, Status::kInvalidArgument, {std::string(m.op) + ": "});
    expect_error([&] { m.call(*b.gpu, true); }, Status::kInvalidArgument, {std::string(m.op) + ": "});
  }
  // Nothing was changed by a rejected call.
  expect_close(*x4, 0.0, "x4 after rejected calls");
}

// --- 64-bit indexing -----------------------------------------------------------------------------

TEST(CudaCore, HandlesMoreThanTwoToThe31Elements) {
  MPT_SKIP_WITHOUT_GPU();
  Backends b;
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  const int64_t n = (int64_t{1} << 31) + 5;
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (free_bytes < 2 * bytes + (size_t{1} << 30)) GTEST_SKIP() << "needs " << 2 * bytes << " bytes free";
  void* px = b.gpu->allocate(bytes);
  void* py = b.gpu->allocate(bytes);
  const Tensor x(px, DType::kF32, {n}), y(py, DType::kF32, {n});
  b.gpu->fill(x, 1.0f);
  b.gpu->fill(y, 0.5f);
  b.gpu->add_inplace(y, x);  // 1.5
  b.gpu->scale(y, 2.0f);     // 3
  EXPECT_EQ(b.gpu->sum_squares(x), static_cast<double>(n));
  EXPECT_EQ(b.gpu->dot(x, y), 3.0 * static_cast<double>(n));
  EXPECT_TRUE(b.gpu->all_finite(y));
  float last = 0;
  b.gpu->to_host(&last, static_cast<float*>(py) + (n - 1), sizeof(float));
  EXPECT_EQ(last, 3.0f);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  b.gpu->to_device(static_cast<float*>(py) + (n - 1), &nan, sizeof(float));
  EXPECT_FALSE(b.gpu->all_finite(y)) << "a NaN past element 2^31";
  b.gpu->release(px);
  b.gpu->release(py);
}

}  // namespace
}  // namespace mpt::device_testing
