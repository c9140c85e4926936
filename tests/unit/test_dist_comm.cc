// The gloo communicator with ranks as threads (and, for a killed rank, as processes):
// every collective against a serial reference for 1-4 ranks, uneven and empty counts,
// every dtype, the ring's exact bytes and summation order, asynchronous overlap, disjoint
// subgroups, and failures (mismatched calls, a missing rank, a lost rank) that fail fast
// with the peer named instead of hanging.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/store.h"
#include "dist_threads.h"
#include "test_errors.h"

namespace mpt::dist {
namespace {

using testing::RankEnv;
using testing::run_ranks;
using testing::world_comm;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Small integers: sums are exact in every dtype, whatever the order.
template <typename T>
T value(int64_t rank, int64_t i) {
  return static_cast<T>(((rank * 131 + i * 7) % 23) - 11);
}

template <typename T>
T reduce_ref(int64_t n, int64_t i, ReduceOp op, int64_t salt = 0) {
  T acc = value<T>(salt, i);
  for (int64_t r = 1; r < n; ++r) {
    T x = value<T>(r * 5 + salt, i);
    acc = op == ReduceOp::kMax ? std::max(acc, x) : static_cast<T>(acc + x);
  }
  if (op == ReduceOp::kAvg) acc = static_cast<T>(acc / static_cast<T>(n));
  return acc;
}

template <typename T>
DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, double>) return DType::kF64;
  if constexpr (std::is_same_v<T, int32_t>) return DType::kI32;
  return DType::kI64;
}

// Rank r of n with `count` elements cut into chunks as equal as possible sends every chunk
// but (r+1) % n in the reduce-scatter and every chunk but (r+2) % n in the all-gather.
int64_t all_reduce_bytes(int64_t count, int64_t n, int64_t r, int64_t elem) {
  if (n == 1) return 0;
  auto chunk = [&](int64_t c) { return count / n + (c < count % n ? 1 : 0); };
  return (2 * count - chunk((r + 1) % n) - chunk((r + 2) % n)) * elem;
}

template <typename T>
void check_all_reduce(Communicator& comm, int64_t rank, int64_t n, ReduceOp op, int64_t count) {
  // Rank r's data is value(r * 5, i), so that the reference is independent of the ring.
  std::vector<T> data(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) data[i] = value<T>(rank * 5, i);
  int64_t before = comm.bytes_sent();
  comm.all_reduce(data.data(), count, dtype_of<T>(), op);
  for (int64_t i = 0; i < count; ++i)
    ASSERT_EQ(data[i], reduce_ref<T>(n, i, op)) << "n " << n << " count " << count << " op " << int(op) << " i " << i;
  EXPECT_EQ(comm.bytes_sent() - before, all_reduce_bytes(count, n, rank, sizeof(T))) << "count " << count;
}

TEST(GlooCommAllReduce, MatchesTheSerialReferenceForEverySizeDtypeOpAndCount) {
  for (int64_t n = 1; n <= 4; ++n) {
    run_ranks(n, [n](RankEnv& env) {
      auto comm = world_comm(env);
      EXPECT_EQ(comm->size(), n);
      EXPECT_EQ(comm->rank(), env.rank);
      // Empty, shorter than the group, uneven, and long.
      for (int64_t count : {int64_t{0}, n - 1, n + 1, int64_t{1001}})
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) check_all_reduce<float>(*comm, env.rank, n, op, count);
      for (int64_t count : {int64_t{1}, int64_t{37}}) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg}) check_all_reduce<double>(*comm, env.rank, n, op, count);
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
          check_all_reduce<int32_t>(*comm, env.rank, n, op, count);
          check_all_reduce<int64_t>(*comm, env.rank, n, op, count);
        }
      }
    });
  }
}

TEST(GlooCommAllReduce, BytesSentFollowTheRingFormula) {
  run_ranks(4, [](RankEnv& env) {
    auto comm = world_comm(env);
    std::vector<float> data(4000, 1.0f);
    comm->all_reduce(data.data(), 4000, DType::kF32, ReduceOp::kSum);
    EXPECT_EQ(comm->bytes_sent(), 2 * 3 * 4000 * 4 / 4);  // 2 (n-1)/n of the buffer
    EXPECT_EQ(data[123], 4.0f);
  });
}

// Chunk c is summed as x[c-1] + (... + (x[c+1] + x[c])): the same bits on every rank, and
// not the naive left-to-right order (the test would notice a different algorithm).
TEST(GlooCommAllReduce, FloatSumsAreBitIdenticalAndFollowTheRingOrder) {
  for (int64_t n : {3, 4}) {
    run_ranks(n, [n](RankEnv& env) {
      const int64_t count = 1001;
      auto input = [](int64_t r) {
        std::mt19937 rng(static_cast<unsigned>(100 + r));
        std::uniform_real_distribution<float> dist(-1000.0f, 1000.0f);
        std::vector<float> v(1001);
        for (auto& x : v) x = dist(rng) * std::exp2(static_cast<float>(rng() % 20) - 10);
        return v;
      };
      std::vector<std::vector<float>> all;
      for (int64_t r = 0; r < n; ++r) all.push_back(input(r));
      std::vector<float> data = all[env.rank];
      auto comm = world_comm(env);
      comm->all_reduce(data.data(), count, DType::kF32, ReduceOp::kSum);
      int64_t naive_differs = 0;
      for (int64_t i = 0; i < count; ++i) {
        int64_t c = 0;
        while ((c + 1) * (count / n) + std::min(c + 1, count % n) <= i) ++c;
        float ring = all[c][i];
        for (int64_t k = 1; k < n; ++k) ring = all[(c + k) % n][i] + ring;
        float naive = all[0][i];
        for (int64_t r = 1; r < n; ++r) naive += all[r][i];
        naive_differs += std::memcmp(&ring, &naive, 4) != 0;
        ASSERT_EQ(std::memcmp(&data[i], &ring, 4), 0) << "element " << i << ": " << data[i] << " vs " << ring;
      }
      EXPECT_GT(naive_differs, 0);
      // Every rank holds the same bits: gather everyone's result and compare.
      std::vector<float> gathered(static_cast<size_t>(n * count));
      comm->all_gather(data.data(), gathered.data(), count, DType::kF32);
      for (int64_t r = 0; r < n; ++r) EXPECT_EQ(std::memcmp(&gathered[r * count], data.data(), count * 4), 0);
    });
  }
}

template <typename T>
void check_reduce_scatter(Communicator& comm, int64_t rank, int64_t n, ReduceOp op, int64_t count, bool in_place) {
  std::vector<T> in(static_cast<size_t>(n * count));
  for (int64_t i = 0; i < n * count; ++i) in[i] = value<T>(rank * 5, i);
  std::vector<T> out(static_cast<size_t>(count), T(99));
  T* dst = in_place ? in.data() + rank * count : out.data();
  int64_t before = comm.bytes_sent();
  comm.reduce_scatter(in.data(), dst, count, dtype_of<T>(), op);
  for (int64_t i = 0; i < count; ++i)
    ASSERT_EQ(dst[i], reduce_ref<T>(n, rank * count + i, op)) << "n " << n << " count " << count << " i " << i;
  EXPECT_EQ(comm.bytes_sent() - before, (n - 1) * count * static_cast<int64_t>(sizeof(T)));
}

TEST(GlooCommReduceScatter, MatchesTheSerialReference) {
  for (int64_t n = 1; n <= 4; ++n) {
    run_ranks(n, [n](RankEnv& env) {
      auto comm = world_comm(env);
      for (int64_t count : {0, 5}) {
        for (bool in_place : {false, true}) {
          for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kAvg})
            check_reduce_scatter<float>(*comm, env.rank, n, op, count, in_place);
          check_reduce_scatter<double>(*comm, env.rank, n, ReduceOp::kAvg, count, in_place);
          check_reduce_scatter<int32_t>(*comm, env.rank, n, ReduceOp::kSum, count, in_place);
          check_reduce_scatter<int64_t>(*comm, env.rank, n, ReduceOp::kMax, count, in_place);
        }
      }
    });
  }
}

// Block b is summed as x[b] + (... + (x[b+2] + x[b+1])) at rank b.
TEST(GlooCommReduceScatter, FloatSumsFollowTheRingOrder) {
  const int64_t n = 4, count = 257;
  run_ranks(n, [&](RankEnv& env) {
    auto input = [&](int64_t r) {
      std::mt19937 rng(static_cast<unsigned>(7 + r));
      std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
      std::vector<float> v(static_cast<size_t>(n * count));
      for (auto& x : v) x = dist(rng) * std::exp2(static_cast<float>(rng() % 16));
      return v;
    };
    std::vector<float> in = input(env.rank), out(count);
    auto comm = world_comm(env);
    comm->reduce_scatter(in.data(), out.data(), count, DType::kF32, ReduceOp::kSum);
    std::vector<std::vector<float>> all;
    for (int64_t r = 0; r < n; ++r) all.push_back(input(r));
    const int64_t b = env.rank;
    for (int64_t i = 0; i < count; ++i) {
      float acc = all[(b + 1) % n][b * count + i];
      for (int64_t k = 2; k <= n; ++k) acc = all[(b + k) % n][b * count + i] + acc;
      ASSERT_EQ(std::memcmp(&out[i], &acc, 4), 0) << "element " << i;
    }
  });
}

// bf16 reductions combine in fp32 and round to bf16 (the results here are exact in bf16
// whatever the combination order).
TEST(GlooCommAllReduce, Bf16SumMaxAndAvg) {
  run_ranks(3, [](RankEnv& env) {
    auto comm = world_comm(env);
    const float mine[3] = {std::ldexp(1.0f, -static_cast<int>(env.rank)), static_cast<float>(env.rank) - 1.5f, 3.0f};
    std::vector<uint16_t> sum(3), mx(3), avg(3);
    for (int i = 0; i < 3; ++i) sum[i] = mx[i] = avg[i] = f32_to_bf16(mine[i]);
    comm->all_reduce(sum.data(), 3, DType::kBF16, ReduceOp::kSum);
    comm->all_reduce(mx.data(), 3, DType::kBF16, ReduceOp::kMax);
    comm->all_reduce(avg.data(), 3, DType::kBF16, ReduceOp::kAvg);
    EXPECT_EQ(bf16_to_f32(sum[0]), 1.75f);
    EXPECT_EQ(bf16_to_f32(sum[1]), -1.5f);
    EXPECT_EQ(bf16_to_f32(sum[2]), 9.0f);
    EXPECT_EQ(bf16_to_f32(mx[1]), 0.5f);
    EXPECT_EQ(bf16_to_f32(avg[2]), 3.0f);
    EXPECT_EQ(bf16_to_f32(avg[1]), -0.5f);
  });
}

TEST(GlooCommAllGather, EveryDtypeAndCountAndInPlace) {
  for (int64_t n = 1; n <= 4; ++n) {
    run_ranks(n, [n](RankEnv& env) {
      auto comm = world_comm(env);
      for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64, DType::kU8, DType::kF64}) {
        const int64_t es = static_cast<int64_t>(dtype_size(dtype));
        for (int64_t count : {0, 7, 300}) {
          for (bool in_place : {false, true}) {
            if (dtype != DType::kF32 && (count != 7 || in_place)) continue;  // bytes are bytes
            std::vector<uint8_t> in(static_cast<size_t>(count * es)), out(static_cast<size_t>(n * count * es), 0xee);
            auto byte = [&](int64_t r, int64_t j) { return static_cast<uint8_t>(r * 37 + j * 11 + es); };
            for (int64_t j = 0; j < count * es; ++j) in[j] = byte(env.rank, j);
            uint8_t* src = in.data();
            if (in_place) {
              std::memcpy(out.data() + env.rank * count * es, in.data(), in.size());
              src = out.data() + env.rank * count * es;
            }
            int64_t before = comm->bytes_sent();
            comm->all_gather(src, out.data(), count, dtype);
            for (int64_t r = 0; r < n; ++r)
              for (int64_t j = 0; j < count * es; ++j) ASSERT_EQ(out[r * count * es + j], byte(r, j)) << r << " " << j;
            EXPECT_EQ(comm->bytes_sent() - before, (n - 1) * count * es);
          }
        }
      }
    });
  }
}

TEST(GlooCommAllToAll, UnevenAndEmptyBlocks) {
  for (int64_t n = 1; n <= 4; ++n) {
    run_ranks(n, [n](RankEnv& env) {
      auto comm = world_comm(env);
      const int64_t r = env.rank;
      auto sends = [&](int64_t src, int64_t dst) { return (src + 2 * dst) % 3; };  // 0, 1 or 2 elements
      std::vector<int64_t> send_counts(n), recv_counts(n);
      for (int64_t p = 0; p < n; ++p) {
        send_counts[p] = sends(r, p);
        recv_counts[p] = sends(p, r);
      }
      auto tag = [](int64_t src, int64_t dst, int64_t j) { return static_cast<int64_t>(src * 10000 + dst * 100 + j); };
      std::vector<int64_t> in, out;
      for (int64_t p = 0; p < n; ++p)
        for (int64_t j = 0; j < send_counts[p]; ++j) in.push_back(tag(r, p, j));
      int64_t total_in = 0;
      for (int64_t p = 0; p < n; ++p) total_in += recv_counts[p];
      out.assign(static_cast<size_t>(total_in), -1);
      int64_t before = comm->bytes_sent();
      comm->all_to_all(in.data(), send_counts.data(), out.data(), recv_counts.data(), DType::kI64);
      size_t k = 0;
      for (int64_t p = 0; p < n; ++p)
        for (int64_t j = 0; j < recv_counts[p]; ++j) EXPECT_EQ(out[k++], tag(p, r, j));
      int64_t expected = 0;
      for (int64_t p = 0; p < n; ++p)
        if (p != r) expected += send_counts[p] * 8;
      EXPECT_EQ(comm->bytes_sent() - before, expected);
    });
  }
}

TEST(GlooCommBroadcast, FromEveryRoot) {
  for (int64_t n = 1; n <= 4; ++n) {
    run_ranks(n, [n](RankEnv& env) {
      auto comm = world_comm(env);
      for (int64_t root = 0; root < n; ++root) {
        for (int64_t count : {0, 100}) {
          std::vector<int32_t> data(static_cast<size_t>(count));
          for (int64_t i = 0; i < count; ++i) data[i] = env.rank == root ? static_cast<int32_t>(root * 1000 + i) : -1;
          int64_t before = comm->bytes_sent();
          comm->broadcast(data.data(), count, DType::kI32, root);
          for (int64_t i = 0; i < count; ++i) ASSERT_EQ(data[i], root * 1000 + i);
          // Every rank but the root receives one copy: the sends add up to n - 1 copies.
          int64_t sent = comm->bytes_sent() - before;
          std::vector<int64_t> all(static_cast<size_t>(n));
          comm->all_gather(&sent, all.data(), 1, DType::kI64);
          int64_t total = 0;
          for (int64_t s : all) total += s;
          EXPECT_EQ(total, (n - 1) * count * 4);
          EXPECT_LE(sent, 2 * count * 4);  // a binomial tree over <= 4 ranks: at most 2 children
        }
      }
    });
  }
}

TEST(GlooCommP2P, TaggedSendsMatchTheirReceivesInAnyOrder) {
  run_ranks(2, [](RankEnv& env) {
    auto comm = world_comm(env);
    std::vector<float> a(50), b(70), got_a(50), got_b(70);
    for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
    for (size_t i = 0; i < b.size(); ++i) b[i] = -static_cast<float>(i);
    if (env.rank == 0) {
      auto w1 = comm->send_async(a.data(), 50, DType::kF32, 1, /*tag=*/1);
      auto w2 = comm->send_async(b.data(), 70, DType::kF32, 1, /*tag=*/2);
      w2->wait();
      w1->wait();
      EXPECT_EQ(comm->bytes_sent(), (50 + 70) * 4);
    } else {
      comm->recv(got_b.data(), 70, DType::kF32, 0, 2);  // the later send first
      comm->recv(got_a.data(), 50, DType::kF32, 0, 1);
      EXPECT_EQ(got_a, a);
      EXPECT_EQ(got_b, b);
      EXPECT_EQ(comm->bytes_sent(), 0);
    }
    // Both send to each other, then receive: a pipeline's exchange, which must not deadlock.
    int64_t mine = 100 + env.rank, theirs = -1;
    auto s = comm->send_async(&mine, 1, DType::kI64, 1 - env.rank, 0);
    auto r = comm->recv_async(&theirs, 1, DType::kI64, 1 - env.rank, 0);
    r->wait();
    s->wait();
    EXPECT_EQ(theirs, 100 + (1 - env.rank));
  });
}

TEST(GlooCommAsync, SeveralOperationsOverlapAndCompleteInIssueOrder) {
  run_ranks(3, [](RankEnv& env) {
    auto comm = world_comm(env);
    std::vector<std::vector<int32_t>> bufs(4, std::vector<int32_t>(333));
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 333; ++i) bufs[k][i] = static_cast<int32_t>((env.rank + 1) * (k + 1) + i);
    std::vector<int64_t> gathered(3);
    int64_t mine = env.rank * 7;
    std::vector<std::shared_ptr<Work>> works;
    for (int k = 0; k < 4; ++k) works.push_back(comm->all_reduce_async(bufs[k].data(), 333, DType::kI32, ReduceOp::kSum));
    works.push_back(comm->all_gather_async(&mine, gathered.data(), 1, DType::kI64));
    works.push_back(comm->barrier_async());
    works.back()->wait();  // the last one first: everything before it has run
    for (auto& w : works) w->wait();
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < 333; ++i) ASSERT_EQ(bufs[k][i], 6 * (k + 1) + 3 * i);
    EXPECT_EQ(gathered, (std::vector<int64_t>{0, 7, 14}));
    works[0]->wait();  // waiting again is harmless
  });
}

TEST(GlooCommGroups, DisjointSubgroupsRunConcurrentlyBesideTheWorld) {
  run_ranks(4, [](RankEnv& env) {
    const int64_t r = env.rank;
    std::vector<int64_t> members = r % 2 == 0 ? std::vector<int64_t>{0, 2} : std::vector<int64_t>{1, 3};
    const std::string name = r % 2 == 0 ? "even" : "odd";
    auto world = world_comm(env);
    auto sub = make_gloo_communicator(env.store, name, members, r, testing::test_options());
    auto self = make_gloo_communicator(env.store, str("self", r), {r}, r, testing::test_options());
    EXPECT_EQ(sub->name(), name);
    EXPECT_EQ(sub->global_ranks(), members);
    EXPECT_EQ(sub->size(), 2);
    EXPECT_EQ(sub->rank(), r / 2);
    for (int round = 0; round < 5; ++round) {
      int64_t x = r + 1 + round;
      auto w = sub->all_reduce_async(&x, 1, DType::kI64, ReduceOp::kSum);
      int64_t y = r + 1;
      world->all_reduce(&y, 1, DType::kI64, ReduceOp::kSum);
      w->wait();
      EXPECT_EQ(x, (r % 2 == 0 ? 1 + 3 : 2 + 4) + 2 * round);
      EXPECT_EQ(y, 10);
    }
    // A group of one copies and sends nothing.
    int64_t v = 5, out = 0, blocks[1] = {1};
    self->all_reduce(&v, 1, DType::kI64, ReduceOp::kSum);
    self->all_gather(&v, &out, 1, DType::kI64);
    self->all_to_all(&v, blocks, &out, blocks, DType::kI64);
    self->broadcast(&v, 1, DType::kI64, 0);
    self->barrier();
    EXPECT_EQ(v, 5);
    EXPECT_EQ(out, 5);
    EXPECT_EQ(self->bytes_sent(), 0);
    // A group formed again under the same name gets fresh keys.
    sub.reset();
    auto again = make_gloo_communicator(env.store, name, members, r, testing::test_options());
    int64_t one = 1;
    again->all_reduce(&one, 1, DType::kI64, ReduceOp::kSum);
    EXPECT_EQ(one, 2);
  });
}

TEST(GlooCommErrors, InvalidArgumentsAreRejectedAndLeaveTheCommunicatorUsable) {
  run_ranks(2, [](RankEnv& env) {
    auto comm = world_comm(env);
    int32_t i = 1;
    uint16_t h = 0;
    float f = 1;
    EXPECT_EQ(error_of([&] { comm->all_reduce(&i, 1, DType::kI32, ReduceOp::kAvg); }).status(), Status::kInvalidArgument);
    Error bf = error_of([&] { comm->all_reduce(&h, 1, DType::kF16, ReduceOp::kSum); });
    EXPECT_EQ(bf.status(), Status::kNotSupported);
    EXPECT_TRUE(contains(bf.what(), str("group world (ranks 0,1): rank ", env.rank) + ": all_reduce")) << bf.what();
    EXPECT_EQ(error_of([&] { comm->all_reduce(&f, -1, DType::kF32, ReduceOp::kSum); }).status(), Status::kInvalidArgument);
    EXPECT_EQ(error_of([&] { comm->all_reduce(nullptr, 3, DType::kF32, ReduceOp::kSum); }).status(), Status::kInvalidArgument);
    EXPECT_EQ(error_of([&] { comm->broadcast(&f, 1, DType::kF32, 2); }).status(), Status::kInvalidArgument);
    EXPECT_EQ(error_of([&] { comm->send(&f, 1, DType::kF32, env.rank); }).status(), Status::kInvalidArgument);
    EXPECT_EQ(error_of([&] { comm->send(&f, 1, DType::kF32, 1 - env.rank, int64_t{1} << 30); }).status(),
              Status::kInvalidArgument);
    int64_t counts[2] = {1, -1};
    EXPECT_EQ(error_of([&] { comm->all_to_all(&f, counts, &f, counts, DType::kF32); }).status(), Status::kInvalidArgument);
    EXPECT_EQ(error_of([&] { make_gloo_communicator(env.store, "g", {2, 1}, 1, {}); }).status(),
              Status::kInvalidArgument);
    comm->all_reduce(&f, 1, DType::kF32, ReduceOp::kSum);
    EXPECT_EQ(f, 2.0f);
  });
}

TEST(GlooCommErrors, DifferentCollectivesAreNamedNotHung) {
  run_ranks(2, [](RankEnv& env) {
    std::vector<float> data(12, 1.0f);
    {  // different counts: each rank sees the other's header
      auto comm = world_comm(env);
      const int64_t count = env.rank == 0 ? 10 : 12;
      Error e = error_of([&] { comm->all_reduce(data.data(), count, DType::kF32, ReduceOp::kSum); });
      EXPECT_EQ(e.status(), Status::kDistributed);
      const std::string other = env.rank == 0 ? "peer rank 1 issued all_reduce #0 (count 12, F32, sum)"
                                              : "peer rank 0 issued all_reduce #0 (count 10, F32, sum)";
      EXPECT_TRUE(contains(e.what(), other)) << e.what();
      EXPECT_TRUE(contains(e.what(), str("where this rank issued all_reduce #0 (count ", count)))
          << e.what();
      Error later = error_of([&] { comm->barrier(); });
      EXPECT_EQ(later.status(), Status::kDistributed);
      EXPECT_TRUE(contains(later.what(), "unusable after an earlier failure")) << later.what();
    }
    {  // different collectives: the broadcast's receiver names the all_reduce; the other
       // rank loses it at once instead of waiting out the 5 s timeout
      auto comm = world_comm(env, 5, "world2");
      auto start = Clock::now();
      Error e = error_of([&] {
        if (env.rank == 0) comm->all_reduce(data.data(), 10, DType::kF32, ReduceOp::kSum);
        else comm->broadcast(data.data(), 10, DType::kF32, 0);
      });
      EXPECT_LT(seconds_since(start), 2.0);
      EXPECT_EQ(e.status(), Status::kDistributed);
      const std::string named = env.rank == 1 ? "peer rank 0 issued all_reduce #0 (count 10, F32, sum) where this "
                                                "rank issued broadcast #0 (count 10, F32, root 0)"
                                              : "lost peer rank 1";
      EXPECT_TRUE(contains(e.what(), named)) << e.what();
    }
    {  // all_to_all counts that disagree between sender and receiver: named, nothing written
      auto comm = world_comm(env, 5, "world3");
      // Rank 0 sends 3 elements to rank 1, which expects 2; the other direction agrees.
      std::vector<int64_t> sends = {1, 3}, recvs = {1, 2};
      if (env.rank == 1) sends = recvs = {2, 1};
      std::vector<float> in(4, 5.0f), out(4, -1.0f);
      Error e = error_of([&] { comm->all_to_all(in.data(), sends.data(), out.data(), recvs.data(), DType::kF32); });
      EXPECT_EQ(e.status(), Status::kDistributed);
      if (env.rank == 1) {
        EXPECT_TRUE(contains(e.what(), "peer rank 0 issued all_to_all #0 (count 3, F32) where this rank issued "
                                       "all_to_all #0 (count 2, F32)"))
            << e.what();
        EXPECT_EQ(out[1], -1.0f);  // the other's block was never received
      }
    }
  });
}

TEST(GlooCommFailure, GroupFormationNamesTheRanksThatNeverJoined) {
  run_ranks(
      3,
      [](RankEnv& env) {
        if (env.rank == 2) return;
        Error e = error_of([&] { make_gloo_communicator(env.store, "late", {0, 1, 2}, env.rank, testing::test_options(1)); });
        EXPECT_EQ(e.status(), Status::kDistributed);
        EXPECT_TRUE(contains(e.what(), "rank 2 never joined")) << e.what();
        EXPECT_TRUE(contains(e.what(), "group late (ranks 0,1,2)")) << e.what();
      },
      /*store_timeout_s=*/0.5);
}

// Ranks 0 and 1 run an all_reduce that rank 2 never joins: both fail after the timeout,
// naming rank 2 (rank 0 receives from it, rank 1 sends to it).
TEST(GlooCommFailure, ARankThatNeverCallsTimesOutNamingIt) {
  const double timeout = 1.5;
  run_ranks(3, [&](RankEnv& env) {
    auto comm = world_comm(env, timeout);
    int64_t x = 1;
    comm->all_reduce(&x, 1, DType::kI64, ReduceOp::kSum);
    if (env.rank == 2) {
      env.store.wait_ranks("failed", 2, 3);  // keeps its communicator open, silent
      return;
    }
    auto start = Clock::now();
    Error e = error_of([&] { comm->all_reduce(&x, 1, DType::kI64, ReduceOp::kSum); });
    double took = seconds_since(start);
    env.store.wait_ranks("failed", env.rank, 3);
    EXPECT_EQ(e.status(), Status::kDistributed);
    EXPECT_TRUE(contains(e.what(), str("group world (ranks 0,1,2): rank ", env.rank) + ": all_reduce"))
        << e.what();
    EXPECT_TRUE(contains(e.what(), "peer rank 2 (timeout)")) << e.what();
    EXPECT_GE(took, timeout - 0.1);
    EXPECT_LT(took, timeout + 3.0);
    auto again = Clock::now();
    EXPECT_EQ(error_of([&] { comm->barrier(); }).status(), Status::kDistributed);
    EXPECT_LT(seconds_since(again), 0.5);
  });
}

TEST(GlooCommFailure, ADestroyedCommunicatorIsNamedAsTheLostPeer) {
  run_ranks(3, [](RankEnv& env) {
    auto comm = world_comm(env, 10);
    int64_t x = 1;
    comm->all_reduce(&x, 1, DType::kI64, ReduceOp::kSum);
    env.store.wait_ranks("first", env.rank, 3);
    if (env.rank == 2) {
      comm.reset();
      return;
    }
    auto start = Clock::now();
    Error e = error_of([&] { comm->all_reduce(&x, 1, DType::kI64, ReduceOp::kSum); });
    EXPECT_LT(seconds_since(start), 5.0);  // well inside the 10 s timeout
    EXPECT_EQ(e.status(), Status::kDistributed);
    // Rank 2 is named among the lost peers (closed or reset). Rank 0, failing on rank 2 at
    // the same time, may close its connections first and be listed before it.
    EXPECT_TRUE(contains(e.what(), ": lost peer rank ")) << e.what();
    EXPECT_TRUE(contains(e.what(), ": lost peer rank 2 (") || contains(e.what(), "), peer rank 2 ("))
        << e.what();
  });
}

TEST(GlooCommP2P, MismatchedSizesTimeOutInsteadOfCorruptingMemory) {
  run_ranks(2, [](RankEnv& env) {
    auto comm = world_comm(env, 1.0);
    std::vector<int32_t> data(5, 7);
    Error e = error_of([&] {
      if (env.rank == 0) comm->send(data.data(), 4, DType::kI32, 1, 5);
      else comm->recv(data.data(), 5, DType::kI32, 0, 5);
    });
    EXPECT_EQ(e.status(), Status::kDistributed);
    EXPECT_TRUE(contains(e.what(), std::string(env.rank == 0 ? "send" : "recv") + ": ")) << e.what();
    EXPECT_TRUE(contains(e.what(), str("peer rank ", 1 - env.rank))) << e.what();
    if (env.rank == 1) {
      EXPECT_EQ(data, std::vector<int32_t>(5, 7));
    }
  });
}

// Three processes; rank 2 exits in the middle of a run. The others, inside an all_reduce,
// fail with the lost peer named well before their timeout.
TEST(GlooCommFailure, AKilledProcessIsNamedByTheSurvivors) {
  const double timeout = 4.0;
  StoreServer server(0, testing::LogCapture().logger());
  const int port = server.port();
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pids[3];
  int pipes[3][2];
  for (int r = 0; r < 3; ++r) {
    ASSERT_EQ(::pipe(pipes[r]), 0);
    pids[r] = ::fork();
    ASSERT_GE(pids[r], 0);
    if (pids[r] == 0) {
      std::string report = "ok";
      try {
        Store store("127.0.0.1", port, timeout, r);
        auto comm = make_gloo_communicator(store, "world", {0, 1, 2}, r, testing::test_options(timeout));
        std::vector<float> x(1000, 1.0f);
        comm->all_reduce(x.data(), 1000, DType::kF32, ReduceOp::kSum);
        comm->all_reduce(x.data(), 1000, DType::kF32, ReduceOp::kSum);
        if (x[0] != 9.0f) report = "wrong sum before the failure";
        if (r == 2) {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          ::_exit(0);  // gone without a word, mid-run
        }
        auto start = Clock::now();
        try {
          comm->all_reduce(x.data(), 1000, DType::kF32, ReduceOp::kSum);
          report = "no error after rank 2 died";
        } catch (const Error& e) {
          double took = seconds_since(start);
          if (e.status() != Status::kDistributed) report = std::string("wrong status: ") + e.what();
          else if (!contains(e.what(), ": lost peer rank 2 (")) report = std::string("rank 2 not named: ") + e.what();
          else if (took > timeout) report = str("took ", took, " s: ", e.what());
        }
      } catch (const std::exception& e) {
        report = std::string("unexpected: ") + e.what();
      }
      ssize_t ignored = ::write(pipes[r][1], report.data(), report.size());
      (void)ignored;
      ::_exit(0);
    }
    ::close(pipes[r][1]);
  }
  auto start = Clock::now();
  for (int r = 0; r < 3; ++r) {
    int status = 0;
    while (::waitpid(pids[r], &status, WNOHANG) == 0) {
      if (seconds_since(start) > timeout + 10) {
        ::kill(pids[r], SIGKILL);
        ::waitpid(pids[r], &status, 0);
        ADD_FAILURE() << "rank " << r << " hung";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    std::string report;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipes[r][0], buf, sizeof(buf))) > 0) report.append(buf, static_cast<size_t>(n));
    ::close(pipes[r][0]);
    if (r < 2) {
      EXPECT_EQ(report, "ok") << "rank " << r;
    }
  }
  EXPECT_LT(seconds_since(start), timeout + 3);
}

}  // namespace
}  // namespace mpt::dist
