// Runs N ranks of the Engine as threads of one benchmark process, talking over loopback
// gloo: rank 0 hosts the rendezvous on a free port. Shared by the parallelism benchmarks.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "config/recipe.h"
#include "core/error.h"
#include "core/log.h"
#include "dist/launch_env.h"
#include "train/engine.h"

namespace mpt::bench {

inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  MPT_CHECK(fd >= 0, Status::kDistributed, "benchmark: socket() failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  MPT_CHECK(ok, Status::kDistributed, "benchmark: no free loopback port");
  return ntohs(a.sin_port);
}

// fn(rank, engine) on `world` threads, each with its own Engine built from `recipe`
// (finalized for `world` ranks). The first rank's exception is rethrown after all joined.
inline void run_engines(const config::Recipe& recipe, int64_t world,
                        const std::function<void(int64_t, train::Engine&)>& fn) {
  const int port = free_port();
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchPlace place;
        place.rank = rank;
        place.world_size = world;
        place.local_rank = rank;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
        train::Engine engine(recipe, quiet, place);
        fn(rank, engine);
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

inline double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

// "12.34 (0.500x)": MiB and the ratio to a reference (MiB alone when the reference is 0).
inline std::string with_ratio(int64_t bytes, int64_t reference) {
  char buf[64];
  if (reference > 0)
    std::snprintf(buf, sizeof(buf), "%.2f (%.3fx)", mib(static_cast<double>(bytes)),
                  static_cast<double>(bytes) / static_cast<double>(reference));
  else
    std::snprintf(buf, sizeof(buf), "%.2f", mib(static_cast<double>(bytes)));
  return buf;
}

// What one rank saw over one warm-up step (the first touch of every buffer) and `steps`
// timed ones.
struct StepFigures {
  train::MemoryReport memory;
  double first_loss = 0;
  double step_s = 0;           // mean over the timed steps
  std::vector<int64_t> bytes;  // per timed step: the growth of the `sent` counter
};

inline std::vector<StepFigures> time_steps(const config::Recipe& recipe, int64_t world, int steps,
                                           int64_t (train::Engine::*sent)() const) {
  std::vector<StepFigures> out(static_cast<size_t>(world));
  run_engines(recipe, world, [&](int64_t rank, train::Engine& engine) {
    StepFigures& f = out[static_cast<size_t>(rank)];
    f.first_loss = engine.train_step().lm_loss;
    double total = 0;
    for (int i = 0; i < steps; ++i) {
      const int64_t before = (engine.*sent)();
      total += engine.train_step().step_time_s;
      f.bytes.push_back((engine.*sent)() - before);
    }
    f.step_s = total / steps;
    f.memory = engine.memory();
  });
  return out;
}

}  // namespace mpt::bench
