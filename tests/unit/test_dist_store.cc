// The rendezvous store: values, waiting, timeouts naming keys and ranks, connection
// retries, a server that survives malformed frames, and clients that fail (not hang) when
// the server dies.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/store.h"
#include "dist_threads.h"
#include "test_errors.h"

namespace mpt::dist {
namespace {

using testing::LogCapture;
using testing::RankEnv;
using testing::run_ranks;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A port nobody listens on right now.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), len), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len), 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// A raw connection for writing bytes the client never would.
class RawSocket {
 public:
  explicit RawSocket(int port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<uint16_t>(port));
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    timeval tv{3, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawSocket() { close(); }
  void write(const std::string& bytes) {
    EXPECT_EQ(::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  // True when the server closed the connection (end of stream or reset) within 3 s.
  bool closed_by_server() {
    char buf[256];
    for (;;) {
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }
  std::string read(size_t n) {
    std::string got;
    char buf[256];
    while (got.size() < n) {
      ssize_t k = ::recv(fd_, buf, std::min(sizeof(buf), n - got.size()), 0);
      if (k <= 0) break;
      got.append(buf, static_cast<size_t>(k));
    }
    return got;
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

std::string u32le(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}
std::string lp(const std::string& s) { return u32le(static_cast<uint32_t>(s.size())) + s; }
std::string frame(const std::string& body) { return u32le(static_cast<uint32_t>(body.size())) + body; }

TEST(StoreBasics, SetGetCheckAdd) {
  StoreServer server(0);
  Store store("127.0.0.1", server.port(), 5, 0);
  EXPECT_EQ(store.rank(), 0);
  EXPECT_EQ(store.host(), "127.0.0.1");
  EXPECT_DOUBLE_EQ(store.timeout_s(), 5);
  EXPECT_FALSE(store.check({"a"}));
  store.set("a", "alpha");
  store.set("empty", "");
  EXPECT_EQ(store.get("a"), "alpha");
  EXPECT_EQ(store.get("empty"), "");
  EXPECT_TRUE(store.check({"a", "empty"}));
  EXPECT_FALSE(store.check({"a", "b"}));
  store.set("a", std::string("bin\0ary", 7));
  EXPECT_EQ(store.get("a"), std::string("bin\0ary", 7));
  EXPECT_EQ(store.add("n", 5), 5);
  EXPECT_EQ(store.add("n", -7), -2);
  EXPECT_EQ(store.get("n"), "-2");  // counters are decimal text
  store.wait({"a", "n"});           // present: returns at once
}

TEST(StoreBasics, LargeValueRoundTrips) {
  StoreServer server(0);
  Store store("127.0.0.1", server.port(), 5, 0);
  std::string big(3 << 20, '\0');
  std::mt19937 rng(7);
  for (auto& c : big) c = static_cast<char>(rng());
  store.set("big", big);
  EXPECT_EQ(store.get("big"), big);
}

TEST(StoreBasics, AddToNonIntegerIsRejectedAndStoreStaysUsable) {
  StoreServer server(0);
  Store store("127.0.0.1", server.port(), 5, 3);
  store.set("word", "abc");
  Error e = error_of([&] { store.add("word", 1); });
  EXPECT_EQ(e.status(), Status::kInvalidArgument);
  EXPECT_TRUE(contains(e.what(), "'word'")) << e.what();
  EXPECT_TRUE(contains(e.what(), "not a decimal integer")) << e.what();
  EXPECT_EQ(store.add("count", 2), 2);
}

TEST(StoreBasics, ManyClientsAddConcurrently) {
  constexpr int kClients = 12, kAdds = 40;
  run_ranks(kClients, [](RankEnv& env) {
    for (int i = 0; i < kAdds; ++i) env.store.add("total", 1);
    env.store.wait_ranks("done", env.rank, env.world);
    EXPECT_EQ(env.store.get("total"), std::to_string(kClients * kAdds));
  });
}

TEST(StoreWait, GetWaitsUntilAnotherClientSets) {
  StoreServer server(0);
  Store reader("127.0.0.1", server.port(), 5, 0);
  Store writer("127.0.0.1", server.port(), 5, 1);
  auto start = Clock::now();
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    writer.set("late", "here");
  });
  EXPECT_EQ(reader.get("late"), "here");
  EXPECT_GE(seconds_since(start), 0.15);
  t.join();
}

TEST(StoreWait, WaitReturnsOnlyWhenEveryKeyExists) {
  StoreServer server(0);
  Store a("127.0.0.1", server.port(), 5, 0);
  Store b("127.0.0.1", server.port(), 5, 1);
  std::atomic<bool> second_set{false};
  std::thread t([&] {
    b.set("k1", "1");
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    second_set = true;
    b.set("k2", "2");
  });
  a.wait({"k1", "k2"});
  EXPECT_TRUE(second_set.load());
  t.join();
}

TEST(StoreWait, GetTimesOutNamingTheKeyThenWorksAgain) {
  StoreServer server(0);
  Store store("127.0.0.1", server.port(), 0.3, 4);
  auto start = Clock::now();
  Error e = error_of([&] { store.get("missing/key"); });
  double took = seconds_since(start);
  EXPECT_EQ(e.status(), Status::kDistributed);
  EXPECT_TRUE(contains(e.what(), "'missing/key'")) << e.what();
  EXPECT_TRUE(contains(e.what(), "rank 4")) << e.what();
  EXPECT_TRUE(contains(e.what(), "0.3 s")) << e.what();
  EXPECT_GE(took, 0.28);
  EXPECT_LT(took, 2.0);
  // The late reply must not be taken for the next call's answer.
  store.set("missing/key", "now");
  store.set("other", "value");
  EXPECT_EQ(store.get("other"), "value");
  EXPECT_EQ(store.get("missing/key"), "now");
}

TEST(StoreWait, WaitTimeoutListsTheKeysNeverSet) {
  StoreServer server(0);
  Store store("127.0.0.1", server.port(), 0.3, 0);
  store.set("x", "1");
  Error e = error_of([&] { store.wait({"x", "y", "z"}); });
  EXPECT_EQ(e.status(), Status::kDistributed);
  EXPECT_TRUE(contains(e.what(), "never set: 'y', 'z'")) << e.what();
}

TEST(StoreWaitRanks, EveryRankArrives) {
  run_ranks(4, [](RankEnv& env) {
    env.store.wait_ranks("start", env.rank, env.world, str("r", env.rank));
    for (int64_t r = 0; r < env.world; ++r) EXPECT_EQ(env.store.get(str("start/", r)), str("r", r));
  });
}

TEST(StoreWaitRanks, TimeoutNamesTheRanksThatNeverArrived) {
  StoreServer server(0);
  std::vector<std::string> messages(2);
  std::vector<std::thread> ranks;
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      Store store("127.0.0.1", server.port(), 0.4, r);
      Error e = error_of([&] { store.wait_ranks("init", r, 4); });
      EXPECT_EQ(e.status(), Status::kDistributed);
      messages[r] = e.what();
    });
  }
  for (auto& t : ranks) t.join();
  for (const auto& m : messages) {
    EXPECT_TRUE(contains(m, "ranks 2, 3 never arrived")) << m;
    EXPECT_TRUE(contains(m, "'init'")) << m;
  }
  Store store("127.0.0.1", server.port(), 0.4, 1);
  Error bad = error_of([&] { store.wait_ranks("init", 4, 4); });
  EXPECT_EQ(bad.status(), Status::kInvalidArgument);
}

TEST(StoreConnect, RetriesUntilTheServerStarts) {
  int port = free_port();
  std::unique_ptr<StoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    server = std::make_unique<StoreServer>(port);
  });
  auto start = Clock::now();
  Store store("127.0.0.1", port, 5, 1);
  EXPECT_GE(seconds_since(start), 0.25);
  starter.join();
  store.set("k", "v");
  EXPECT_EQ(store.get("k"), "v");
}

TEST(StoreConnect, GivesUpAfterTheTimeoutNamingHostAndPort) {
  int port = free_port();
  auto start = Clock::now();
  Error e = error_of([&] { Store store("127.0.0.1", port, 0.3, 2); });
  EXPECT_EQ(e.status(), Status::kDistributed);
  EXPECT_TRUE(contains(e.what(), str("127.0.0.1:", port))) << e.what();
  EXPECT_TRUE(contains(e.what(), "rank 2")) << e.what();
  EXPECT_LT(seconds_since(start), 2.0);
  EXPECT_EQ(error_of([] { Store s("127.0.0.1", 0, 1, 0); }).status(), Status::kInvalidArgument);
  EXPECT_EQ(error_of([] { Store s("127.0.0.1", 5000, 0, 0); }).status(), Status::kInvalidArgument);
}

TEST(StoreServerErrors, PortInUseIsNamed) {
  StoreServer first(0);
  Error e = error_of([&] { StoreServer second(first.port()); });
  EXPECT_EQ(e.status(), Status::kDistributed);
  EXPECT_TRUE(contains(e.what(), str("port ", first.port()))) << e.what();
}

TEST(StoreServerErrors, MalformedFramesCloseOnlyTheirConnection) {
  LogCapture log;
  StoreServer server(0, log.logger());
  Store good("127.0.0.1", server.port(), 5, 0);
  Store setter("127.0.0.1", server.port(), 5, 1);
  good.set("before", "1");
  // A client parked in a get across all of it.
  std::string parked;
  std::thread waiter([&] { parked = good.get("after"); });

  std::mt19937 rng(11);
  std::string garbage(4096, '\0');
  for (auto& c : garbage) c = static_cast<char>(rng());
  garbage.replace(0, 4, u32le(300));  // a plausible length, then nonsense operands
  const std::vector<std::pair<std::string, std::string>> cases = {
      {u32le(0xffffffffu) + "xxxx", "exceeds the 64 MiB limit"},
      {u32le(0), "empty frame"},
      {frame(std::string(1, char(99)) + lp("k")), "unknown opcode 99"},
      {frame(std::string(1, char(1)) + u32le(100) + "short"), "operands do not fill"},
      {frame(std::string(1, char(1)) + lp("k") + lp("v") + "extra"), "operands do not fill"},
      {frame(std::string(1, char(3)) + u32le(1000000) + lp("k")), "operands do not fill"},
      {garbage, "dropping the connection"},
  };
  for (const auto& [bytes, reason] : cases) {
    RawSocket raw(server.port());
    raw.write(bytes);
    EXPECT_TRUE(raw.closed_by_server()) << reason;
    setter.set("alive", reason);
    EXPECT_EQ(setter.get("alive"), reason);
  }
  {  // a frame cut short by its client
    RawSocket raw(server.port());
    raw.write(u32le(50) + std::string(1, char(1)) + "abc");
    raw.close();
  }
  {  // a well-formed check on a raw socket is answered: length 2, status ok, present
    RawSocket raw(server.port());
    raw.write(frame(std::string(1, char(4)) + u32le(1) + lp("before")));
    EXPECT_EQ(raw.read(6), u32le(2) + std::string(1, '\0') + std::string(1, '\1'));
  }
  setter.set("after", "done");
  waiter.join();
  EXPECT_EQ(parked, "done");

  std::string all;
  for (const auto& line : log.snapshot()) all += line + "\n";
  for (const auto& [bytes, reason] : cases) EXPECT_TRUE(contains(all, reason)) << all;
  EXPECT_TRUE(contains(all, "truncated frame")) << all;
  EXPECT_TRUE(contains(all, "127.0.0.1:")) << all;  // names the client
}

TEST(StoreServerErrors, ServerDeathFailsWaitingAndLaterCallsNamingHostAndPort) {
  auto server = std::make_unique<StoreServer>(0);
  const std::string where = str("127.0.0.1:", server->port());
  Store store("127.0.0.1", server->port(), 30, 5);
  store.set("k", "v");
  Error waiting(Status::kOk, "");
  auto start = Clock::now();
  std::thread t([&] { waiting = error_of([&] { store.get("never"); }); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  server.reset();
  t.join();
  EXPECT_LT(seconds_since(start), 3.0);  // far below the 30 s timeout
  EXPECT_EQ(waiting.status(), Status::kDistributed);
  EXPECT_TRUE(contains(waiting.what(), where)) << waiting.what();
  EXPECT_TRUE(contains(waiting.what(), "'never'")) << waiting.what();
  Error later = error_of([&] { store.set("k", "w"); });
  EXPECT_EQ(later.status(), Status::kDistributed);
  EXPECT_TRUE(contains(later.what(), where)) << later.what();
}

}  // namespace
}  // namespace mpt::dist
