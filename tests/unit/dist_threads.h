// Runs N ranks as threads of this process: rank 0 hosts a StoreServer on a free port, and
// every rank gets its own Store client (and makes its own communicators). An exception
// escaping a rank becomes a test failure naming the rank; gtest assertions inside a rank
// report as usual (ASSERT_* ends only that rank's function).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/log.h"
#include "dist/communicator.h"
#include "dist/store.h"

namespace mpt::dist::testing {

struct RankEnv {
  int64_t rank;
  int64_t world;
  Store& store;
  int port;
};

// A logger that keeps the server's lines for tests to inspect.
struct LogCapture {
  std::mutex mu;
  std::vector<std::string> lines;
  Logger logger() {
    return Logger([this](LogLevel, const std::string& m) {
      std::lock_guard<std::mutex> lock(mu);
      lines.push_back(m);
    });
  }
  std::vector<std::string> snapshot() {
    std::lock_guard<std::mutex> lock(mu);
    return lines;
  }
};

// fn(env) on `world` threads. The server lives until every rank has returned.
inline void run_ranks(int64_t world, const std::function<void(RankEnv&)>& fn, double store_timeout_s = 5.0) {
  LogCapture quiet;  // malformed-frame tests use their own server
  StoreServer server(0, quiet.logger());
  const int port = server.port();
  std::mutex mu;
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  for (int64_t r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        Store store("127.0.0.1", port, store_timeout_s, r);
        RankEnv env{r, world, store, port};
        fn(env);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mu);
        errors.push_back(str("rank ", r) + " threw: " + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) ADD_FAILURE() << e;
}

inline std::vector<int64_t> iota_ranks(int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), int64_t{0});
  return v;
}

inline CommOptions test_options(double timeout_s = 5.0) {
  CommOptions o;
  o.timeout_s = timeout_s;
  o.host = "127.0.0.1";
  return o;
}

// The world communicator of a thread rank.
inline std::unique_ptr<Communicator> world_comm(RankEnv& env, double timeout_s = 5.0, const std::string& name = "world") {
  return make_gloo_communicator(env.store, name, iota_ranks(env.world), env.rank, test_options(timeout_s));
}

}  // namespace mpt::dist::testing
