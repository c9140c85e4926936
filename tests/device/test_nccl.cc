// The NCCL communicator in a world of one (NCCL takes one rank per GPU, and these tests run
// on one GPU): every collective's result and in-place form, bytes_sent, asynchronous Works
// waited in any order, ordering after a producer stream, Works outliving the communicator,
// when the GPU ran each collective (Work::times), and the errors for bad arguments and bad
// groups (which leave the communicator usable).
#include <gtest/gtest.h>

#include "cuda/device.h"

#if MPT_HAVE_NCCL

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "backend/ops.h"
#include "core/error.h"
#include "core/log.h"
#include "cuda/cuda_ops.h"
#include "cuda/nccl_communicator.h"
#include "device_util.h"
#include "dist/store.h"

namespace mpt {
namespace {

using cuda::NcclCommunicator;
using dist::ReduceOp;

// Device memory for a test, freed at scope exit.
struct DeviceBuffer {
  void* p = nullptr;
  size_t bytes = 0;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    MPT_CUDA_CHECK(cudaMalloc(&p, n ? n : 1));
    MPT_CUDA_CHECK(cudaMemset(p, 0, n ? n : 1));
  }
  ~DeviceBuffer() { cudaFree(p); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
  void upload(const void* src, size_t n) { MPT_CUDA_CHECK(cudaMemcpy(p, src, n, cudaMemcpyHostToDevice)); }
  template <typename T>
  std::vector<T> download(size_t count, size_t offset = 0) const {
    std::vector<T> out(count);
    if (count) MPT_CUDA_CHECK(cudaMemcpy(out.data(), as<T>() + offset, count * sizeof(T), cudaMemcpyDeviceToHost));
    return out;
  }
};

// A store (this rank hosts it) and a communicator over world ranks {world_rank}.
struct OneRank {
  dist::StoreServer server{0, Logger([](LogLevel, const std::string&) {})};
  dist::Store store{"127.0.0.1", server.port(), 10.0, 0};
  std::unique_ptr<NcclCommunicator> comm;
  explicit OneRank(int64_t world_rank = 0, const std::string& name = "world") {
    dist::CommOptions o;
    o.timeout_s = 30;
    comm = cuda::make_nccl_communicator(store, name, {world_rank}, world_rank, 0, o);
  }
};

template <typename T>
std::vector<T> ramp(size_t n, int64_t salt) {
  std::vector<T> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<T>(((static_cast<int64_t>(i) * 7 + salt) % 23) - 11);
  return v;
}

// The bits of small integers as bf16 and f16 (exact in both).
std::vector<uint16_t> half_bits(size_t n, bool bf16) {
  std::vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) {
    const float x = static_cast<float>(static_cast<int>(i % 9) - 4);
    if (bf16) {
      uint32_t b;
      std::memcpy(&b, &x, 4);
      v[i] = static_cast<uint16_t>(b >> 16);
    } else {  // |x| <= 4 integers: sign, exponent 15 + e, 10-bit mantissa
      const int m = std::abs(static_cast<int>(x));
      uint16_t h = 0;
      if (m != 0) {
        int e = 0;
        while ((m >> (e + 1)) != 0) ++e;
        h = static_cast<uint16_t>(((15 + e) << 10) | ((m << (10 - e)) & 0x3ff));
      }
      v[i] = static_cast<uint16_t>(h | (x < 0 ? 0x8000 : 0));
    }
  }
  return v;
}

void expect_error(const std::function<void()>& call, Status status, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "expected an error containing " << parts.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    for (const auto& part : parts) EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

template <typename T>
void check_all_reduce(NcclCommunicator& comm, DType dtype, ReduceOp op, size_t count) {
  const std::vector<T> in = ramp<T>(count, 5);
  DeviceBuffer buf(count * sizeof(T));
  buf.upload(in.data(), count * sizeof(T));
  comm.all_reduce(buf.p, static_cast<int64_t>(count), dtype, op);
  EXPECT_EQ(buf.download<T>(count), in) << "count " << count << " op " << static_cast<int>(op);
}

TEST(NcclCommunicator, AWorldOfOneReportsItsLayout) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w(3, "solo");
  EXPECT_EQ(w.comm->rank(), 0);
  EXPECT_EQ(w.comm->size(), 1);
  EXPECT_EQ(w.comm->name(), "solo");
  EXPECT_EQ(w.comm->global_ranks(), std::vector<int64_t>{3});
  EXPECT_NE(w.comm->stream(), nullptr);
  EXPECT_EQ(w.comm->bytes_sent(), 0);
}

TEST(NcclCommunicator, AllReduceOverOneRankKeepsTheDataForEveryDtypeAndOp) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  for (size_t count : {size_t{0}, size_t{1}, size_t{1001}, size_t{1} << 20}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
      check_all_reduce<float>(*w.comm, DType::kF32, op, count);
      check_all_reduce<double>(*w.comm, DType::kF64, op, count);
    }
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      check_all_reduce<int32_t>(*w.comm, DType::kI32, op, count);
      check_all_reduce<int64_t>(*w.comm, DType::kI64, op, count);
    }
    for (bool bf16 : {true, false})
      for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) {
        const std::vector<uint16_t> in = half_bits(count, bf16);
        DeviceBuffer buf(count * 2);
        buf.upload(in.data(), count * 2);
        w.comm->all_reduce(buf.p, static_cast<int64_t>(count), bf16 ? DType::kBF16 : DType::kF16, op);
        EXPECT_EQ(buf.download<uint16_t>(count), in) << (bf16 ? "bf16" : "f16") << " count " << count;
      }
  }
  EXPECT_EQ(w.comm->bytes_sent(), 0) << "one rank sends nothing";
}

TEST(NcclCommunicator, ReduceScatterAndAllGatherCopyTheOneBlockInAndOutOfPlace) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  for (size_t count : {size_t{0}, size_t{1}, size_t{4097}}) {
    const std::vector<float> in = ramp<float>(count, 9);
    DeviceBuffer a(count * 4), b(count * 4);
    a.upload(in.data(), count * 4);
    w.comm->reduce_scatter(a.p, b.p, static_cast<int64_t>(count), DType::kF32, ReduceOp::kSum);
    EXPECT_EQ(b.download<float>(count), in) << "reduce_scatter count " << count;
    w.comm->reduce_scatter(a.p, a.p, static_cast<int64_t>(count), DType::kF32, ReduceOp::kAvg);  // own block
    EXPECT_EQ(a.download<float>(count), in) << "reduce_scatter in place, count " << count;

    DeviceBuffer c(count * 4);
    w.comm->all_gather(b.p, c.p, static_cast<int64_t>(count), DType::kF32);
    EXPECT_EQ(c.download<float>(count), in) << "all_gather count " << count;
    w.comm->all_gather(c.p, c.p, static_cast<int64_t>(count), DType::kF32);
    EXPECT_EQ(c.download<float>(count), in) << "all_gather in place, count " << count;
  }
  // Any dtype moves as bytes.
  const std::vector<uint8_t> bytes = {1, 2, 3, 250, 7};
  DeviceBuffer u(5), v(5);
  u.upload(bytes.data(), 5);
  w.comm->all_gather(u.p, v.p, 5, DType::kU8);
  EXPECT_EQ(v.download<uint8_t>(5), bytes);
  EXPECT_EQ(w.comm->bytes_sent(), 0);
}

TEST(NcclCommunicator, AllToAllAndBroadcastMoveTheOwnBlock) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  for (int64_t count : {int64_t{0}, int64_t{1}, int64_t{37}, int64_t{300000}}) {
    const std::vector<int64_t> in = ramp<int64_t>(static_cast<size_t>(count), 3);
    DeviceBuffer a(static_cast<size_t>(count) * 8), b(static_cast<size_t>(count) * 8);
    a.upload(in.data(), in.size() * 8);
    w.comm->all_to_all(a.p, &count, b.p, &count, DType::kI64);
    EXPECT_EQ(b.download<int64_t>(in.size()), in) << "all_to_all count " << count;
    w.comm->broadcast(b.p, count, DType::kI64, 0);
    EXPECT_EQ(b.download<int64_t>(in.size()), in) << "broadcast count " << count;
  }
  EXPECT_EQ(w.comm->bytes_sent(), 0);
}

TEST(NcclCommunicator, BarriersComplete) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  for (int i = 0; i < 3; ++i) w.comm->barrier();
  auto a = w.comm->barrier_async();
  auto b = w.comm->barrier_async();
  b->wait();
  a->wait();
}

TEST(NcclCommunicator, AsyncWorksCanBeWaitedInAnyOrderAndMoreThanOnce) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  const size_t n = 1 << 16;
  std::vector<std::unique_ptr<DeviceBuffer>> in, out;
  std::vector<std::vector<float>> want;
  std::vector<std::shared_ptr<dist::Work>> works;
  for (int i = 0; i < 6; ++i) {
    want.push_back(ramp<float>(n, i));
    in.push_back(std::make_unique<DeviceBuffer>(n * 4));
    out.push_back(std::make_unique<DeviceBuffer>(n * 4));
    in.back()->upload(want.back().data(), n * 4);
    works.push_back(w.comm->reduce_scatter_async(in.back()->p, out.back()->p, static_cast<int64_t>(n), DType::kF32,
                                                 ReduceOp::kSum));
  }
  for (int i = 5; i >= 0; --i) works[static_cast<size_t>(i)]->wait();
  for (int i = 0; i < 6; ++i) {
    works[static_cast<size_t>(i)]->wait();  // again: returns at once
    EXPECT_EQ(out[static_cast<size_t>(i)]->download<float>(n), want[static_cast<size_t>(i)]) << "work " << i;
  }
}

// A producer stream's fill is still running when the collective is issued; the input
// stream makes the communicator's stream wait for it (without, it could read zeros).
TEST(NcclCommunicator, AnInputStreamOrdersOperationsAfterItsWork) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  auto ops = backend::make_cuda_ops(0);
  auto* cuda_ops = dynamic_cast<cuda::CudaOps*>(ops.get());
  ASSERT_NE(cuda_ops, nullptr);
  w.comm->set_input_stream(cuda_ops->stream());
  const int64_t n = int64_t{1} << 26;  // 256 MiB: the fill takes a while
  for (float value : {3.0f, -1.5f}) {
    void* in = ops->allocate(static_cast<size_t>(n) * 4);
    DeviceBuffer out(static_cast<size_t>(n) * 4);
    ops->fill(Tensor::f32(static_cast<float*>(in), {n}), value);
    w.comm->reduce_scatter(in, out.p, n, DType::kF32, ReduceOp::kSum);
    const std::vector<float> got = out.download<float>(static_cast<size_t>(n));
    size_t wrong = 0;
    for (float x : got) wrong += x != value;
    EXPECT_EQ(wrong, 0u) << "elements that the collective read before the fill wrote them";
    ops->synchronize();
    ops->release(in);
  }
  w.comm->set_input_stream(nullptr);
}

TEST(NcclCommunicator, WorksOutliveTheCommunicator) {
  MPT_SKIP_WITHOUT_GPU();
  const std::vector<float> in = ramp<float>(1000, 1);
  DeviceBuffer a(4000), b(4000);
  a.upload(in.data(), 4000);
  std::shared_ptr<dist::Work> work;
  {
    OneRank w;
    work = w.comm->reduce_scatter_async(a.p, b.p, 1000, DType::kF32, ReduceOp::kSum);
  }  // destroyed: finalizes, so the work completes
  work->wait();
  EXPECT_EQ(b.download<float>(1000), in);
  TimePoint start, end;
  EXPECT_TRUE(work->times(start, end)) << "the timing events outlive the communicator too";
  EXPECT_LE(start, end);
}

TEST(NcclCommunicator, TwoCommunicatorsUnderOneNameAreIndependent) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  dist::CommOptions o;
  auto second = cuda::make_nccl_communicator(w.store, "world", {0}, 0, 0, o);
  DeviceBuffer a(400);
  const std::vector<int32_t> in = ramp<int32_t>(100, 2);
  a.upload(in.data(), 400);
  second->all_reduce(a.p, 100, DType::kI32, ReduceOp::kMax);
  w.comm->all_reduce(a.p, 100, DType::kI32, ReduceOp::kSum);
  EXPECT_EQ(a.download<int32_t>(100), in);
}

TEST(NcclCommunicator, BadArgumentsThrowAndLeaveTheCommunicatorUsable) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  auto& c = *w.comm;
  const Status invalid = Status::kInvalidArgument;
  const std::string where = "group world (ranks 0): rank 0: ";
  DeviceBuffer buf(4096);
  std::vector<float> host(16);
  void* pinned = nullptr;
  MPT_CUDA_CHECK(cudaMallocHost(&pinned, 64));

  expect_error([&] { c.all_reduce(host.data(), 16, DType::kF32, ReduceOp::kSum); }, invalid,
               {where + "all_reduce: data must be device memory of GPU 0, got pageable host memory"});
  expect_error([&] { c.broadcast(pinned, 16, DType::kF32, 0); }, invalid, {"broadcast: data", "pinned host memory"});
  expect_error([&] { c.all_reduce(nullptr, 4, DType::kF32, ReduceOp::kSum); }, invalid, {"all_reduce: data is null"});
  expect_error([&] { c.all_reduce(buf.p, -1, DType::kF32, ReduceOp::kSum); }, invalid, {"count -1 is negative"});
  expect_error([&] { c.all_reduce(buf.p, 4, static_cast<DType>(42), ReduceOp::kSum); }, invalid, {"unknown dtype 42"});
  expect_error([&] { c.all_reduce(buf.p, 4, DType::kF32, static_cast<ReduceOp>(7)); }, invalid,
               {"unknown reduce op 7"});
  expect_error([&] { c.all_reduce(buf.p, 4, DType::kU8, ReduceOp::kSum); }, Status::kNotSupported,
               {"reductions of u8 are not supported"});
  expect_error([&] { c.all_reduce(buf.p, 4, DType::kI32, ReduceOp::kAvg); }, invalid,
               {"avg needs a floating dtype, got i32"});
  expect_error([&] { c.broadcast(buf.p, 4, DType::kF32, 1); }, invalid, {"root 1 is outside the group of size 1"});
  int64_t count = 4, other = 5;
  expect_error([&] { c.all_to_all(buf.p, nullptr, buf.as<char>() + 1024, &count, DType::kF32); }, invalid,
               {"send_counts and recv_counts must not be null"});
  expect_error([&] { c.all_to_all(buf.p, &count, buf.as<char>() + 1024, &other, DType::kF32); }, invalid,
               {"this rank sends itself 4 elements but expects 5"});
  expect_error([&] { c.all_to_all(buf.p, &count, buf.as<char>() + 8, &count, DType::kF32); }, invalid,
               {"in and out overlap"});
  expect_error([&] { c.reduce_scatter(buf.p, buf.as<char>() + 4, 4, DType::kF32, ReduceOp::kSum); }, invalid,
               {"reduce_scatter: out overlaps in"});
  expect_error([&] { c.all_gather(buf.as<char>() + 4, buf.p, 4, DType::kF32); }, invalid,
               {"all_gather: in overlaps out"});
  expect_error([&] { c.send(buf.p, 4, DType::kF32, 0, 0); }, invalid,
               {where + "send: peer 0 is not another member of the group of size 1"});
  expect_error([&] { c.recv(buf.p, 4, DType::kF32, 1, 0); }, invalid, {"recv: peer 1 is not another member"});
  expect_error([&] { c.send(buf.p, 4, DType::kF32, 1, -1); }, invalid, {"send: tag -1 is not in 0..8388607"});
  expect_error([&] { c.recv(buf.p, 4, DType::kF32, 1, int64_t{1} << 23); }, invalid, {"tag 8388608"});
  EXPECT_EQ(c.bytes_sent(), 0);
  cudaFreeHost(pinned);

  // Still usable.
  const std::vector<float> in = ramp<float>(16, 4);
  buf.upload(in.data(), 64);
  c.all_reduce(buf.p, 16, DType::kF32, ReduceOp::kSum);
  EXPECT_EQ(buf.download<float>(16), in);
}

TEST(NcclCommunicator, BadGroupsAreRejected) {
  MPT_SKIP_WITHOUT_GPU();
  dist::StoreServer server(0, Logger([](LogLevel, const std::string&) {}));
  dist::Store store("127.0.0.1", server.port(), 5.0, 0);
  dist::CommOptions o;
  const Status invalid = Status::kInvalidArgument;
  expect_error([&] { cuda::make_nccl_communicator(store, "", {0}, 0, 0, o); }, invalid, {"the group name is empty"});
  expect_error([&] { cuda::make_nccl_communicator(store, "g", {}, 0, 0, o); }, invalid, {"the group has no ranks"});
  expect_error([&] { cuda::make_nccl_communicator(store, "g", {1, 0}, 0, 0, o); }, invalid,
               {"global_ranks must be sorted"});
  expect_error([&] { cuda::make_nccl_communicator(store, "g", {1}, 0, 0, o); }, invalid,
               {"group g: rank 0: this rank is not a member of the group"});
  dist::CommOptions zero;
  zero.timeout_s = 0;
  expect_error([&] { cuda::make_nccl_communicator(store, "g", {0}, 0, 0, zero); }, invalid, {"timeout 0 s"});
  expect_error([&] { cuda::make_nccl_communicator(store, "g", {0}, 0, 999, o); }, Status::kDevice,
               {"create: GPU 999 is not one of the"});
}

// --- when the GPU ran each collective ---------------------------------------------------------

using Clock = std::chrono::steady_clock;

// An average over one rank is a scaling kernel over the whole buffer (a sum or max in place
// is no work at all for NCCL): 256 MiB read and written take any GPU tens of microseconds.
constexpr int64_t kLarge = int64_t{1} << 26;
// No GPU moves 512 MiB in less (that would be over 10 TB/s).
constexpr auto kLargeAtLeast = std::chrono::microseconds(50);
// A converted time is late by the host's reading of the clock's reference (a poll, unless
// the thread is descheduled), which may exceed the latency of the wait() it is compared with.
constexpr auto kReadingSlack = std::chrono::milliseconds(1);

// Holds a stream at a host gate: work ordered after it waits until open(), or 10 s at most
// (so that a call which blocked on that work would fail the test, not hang it).
struct Gate {
  cudaStream_t stream = nullptr;
  std::atomic<bool> opened{false};
  const Clock::time_point deadline = Clock::now() + std::chrono::seconds(10);
  Gate() {
    MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    MPT_CUDA_CHECK(cudaLaunchHostFunc(
        stream,
        [](void* self) {
          const Gate& g = *static_cast<const Gate*>(self);
          while (!g.opened.load() && Clock::now() < g.deadline) std::this_thread::yield();
        },
        this));
  }
  ~Gate() {
    opened = true;
    cudaStreamSynchronize(stream);
    cudaStreamDestroy(stream);
  }
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  void open() { opened = true; }
};

TEST(NcclCommunicator, TimesTellWhenTheGpuRanACollective) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  DeviceBuffer buf(static_cast<size_t>(kLarge) * 4);
  Gate gate;
  w.comm->set_input_stream(gate.stream);
  auto work = w.comm->all_reduce_async(buf.p, kLarge, DType::kF32, ReduceOp::kAvg);
  w.comm->set_input_stream(nullptr);
  TimePoint start, end;
  EXPECT_FALSE(work->times(start, end)) << "the collective cannot have run: the stream it waits for is held";
  EXPECT_EQ(start, TimePoint{}) << "untouched";
  EXPECT_EQ(end, TimePoint{}) << "untouched";

  const TimePoint opened = Clock::now();
  gate.open();
  work->wait();
  const TimePoint waited = Clock::now();
  ASSERT_TRUE(work->times(start, end));
  auto us = [](Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
  EXPECT_GE(start, opened) << "started " << us(opened - start) << " us before the gate let it";
  EXPECT_GE(end - start, kLargeAtLeast) << "256 MiB averaged in " << us(end - start) << " us";
  EXPECT_LE(end, waited + kReadingSlack) << "ended " << us(end - waited) << " us after wait() returned";

  // Asked again: the same reference converts it, so the same span.
  TimePoint start2, end2;
  ASSERT_TRUE(work->times(start2, end2));
  EXPECT_EQ(start2, start);
  EXPECT_EQ(end2, end);
}

TEST(NcclCommunicator, CollectivesQueuedOnTheStreamRunOneAfterAnother) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  constexpr size_t kOps = 3;
  std::vector<std::unique_ptr<DeviceBuffer>> bufs;
  for (size_t i = 0; i < kOps; ++i) bufs.push_back(std::make_unique<DeviceBuffer>(static_cast<size_t>(kLarge) * 4));
  const TimePoint issued = Clock::now();
  std::vector<std::shared_ptr<dist::Work>> works;
  for (auto& b : bufs) works.push_back(w.comm->all_reduce_async(b->p, kLarge, DType::kF32, ReduceOp::kAvg));
  works.push_back(w.comm->all_reduce_async(bufs[0]->p, 0, DType::kF32, ReduceOp::kSum));  // no data: an empty span
  for (size_t i = works.size(); i-- > 0;) works[i]->wait();
  const TimePoint waited = Clock::now();

  std::vector<TimePoint> start(works.size()), end(works.size());
  for (size_t i = 0; i < works.size(); ++i) {
    ASSERT_TRUE(works[i]->times(start[i], end[i])) << "work " << i;
    EXPECT_GE(start[i], issued) << "work " << i;
    EXPECT_LE(start[i], end[i]) << "work " << i;
    EXPECT_LE(end[i], waited + kReadingSlack) << "work " << i;
    if (i < kOps) {
      EXPECT_GE(end[i] - start[i], kLargeAtLeast) << "work " << i;
    }
    if (i > 0) {
      EXPECT_GE(start[i], end[i - 1]) << "work " << i << " started before work " << i - 1 << " ended";
    }
  }
}

// Pairs of timing events are reused once their Works are gone, never while one still holds
// them: the spans of Works kept across later collectives do not change.
TEST(NcclCommunicator, TimingEventsAreReusedOnlyOnceTheirWorksAreGone) {
  MPT_SKIP_WITHOUT_GPU();
  OneRank w;
  const int64_t n = 1 << 22;  // 16 MiB: microseconds on any GPU, well above the clock's resolution
  DeviceBuffer buf(static_cast<size_t>(n) * 4);
  struct Timed {
    std::shared_ptr<dist::Work> work;
    TimePoint start, end;
  };
  auto issue_and_wait = [&](size_t count) {
    std::vector<Timed> round(count);
    for (auto& t : round) t.work = w.comm->all_reduce_async(buf.p, n, DType::kF32, ReduceOp::kAvg);
    for (auto& t : round) t.work->wait();
    return round;
  };
  auto time = [](std::vector<Timed>& round) {
    for (size_t i = 0; i < round.size(); ++i) {
      EXPECT_TRUE(round[i].work->times(round[i].start, round[i].end)) << "work " << i;
      EXPECT_LT(round[i].start, round[i].end) << "work " << i;
      if (i > 0) {
        EXPECT_GE(round[i].start, round[i - 1].end) << "work " << i;
      }
    }
  };

  std::vector<Timed> first = issue_and_wait(40);
  time(first);
  std::vector<Timed> kept;
  for (size_t i = 0; i < first.size(); i += 2) kept.push_back(first[i]);
  first.clear();  // half of the pairs go back to the pool
  std::vector<Timed> second = issue_and_wait(60);
  // Converted before anything newer: against the same reference as before, so the same
  // times unless a later collective recorded their events again.
  for (size_t i = 0; i < kept.size(); ++i) {
    TimePoint start, end;
    ASSERT_TRUE(kept[i].work->times(start, end)) << "kept work " << i;
    EXPECT_EQ(start, kept[i].start) << "kept work " << i << ": its events were recorded again";
    EXPECT_EQ(end, kept[i].end) << "kept work " << i << ": its events were recorded again";
  }
  time(second);
  EXPECT_GE(second.front().start, kept.back().end);
}

}  // namespace
}  // namespace mpt

#else  // built without NCCL

TEST(NcclCommunicator, NotBuilt) { GTEST_SKIP() << "mptrain was built without NCCL"; }

#endif
