// Runs the Engine on N ranks as threads of this process (each rank its own gloo groups over
// loopback TCP) and collects what the equivalence tests compare: losses, gradient norms,
// gathered parameters and gradients, memory and bytes sent.
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <cstdlib>
#include <string>

#include "config/recipe.h"
#include "core/error.h"
#include "train/engine.h"

namespace mpt::train::testing {

// The source tree the test reads recipes from: $MPT_SOURCE_DIR when set (a build run on
// another machine: tests/device/run.sh sets it), else the tree this build was configured from.
inline std::string source_dir() {
  const char* env = std::getenv("MPT_SOURCE_DIR");
  return env && *env ? std::string(env) : std::string(MPT_SOURCE_DIR);
}

// recipes/tiny.toml for 10 steps: 4 micro-batches of 4 per step at one rank, so DP = 2 and
// 4 split each step evenly.
inline config::Recipe tiny(const std::vector<std::string>& overrides) {
  config::Recipe r = config::load_recipe_file(source_dir() + "/recipes/tiny.toml");
  config::apply_overrides(r, {"train.train_iters=10", "validation.eval_interval=null", "checkpoint.save=null",
                              "dataset.num_workers=1", "dist.distributed_timeout_minutes=0.5"});
  config::apply_overrides(r, overrides);
  return r;
}

inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

struct RankRun {
  std::vector<double> losses, norms;
  std::vector<float> params;  // every parameter as a whole tensor, registry order, no padding
  std::map<std::string, std::vector<float>> grads_step1;  // whole gradients after step 1
  std::map<std::string, std::vector<int64_t>> shapes;     // their global shapes
  MemoryReport memory;
  int64_t dp_bytes_last_step = 0, tp_bytes_last_step = 0, cp_bytes_last_step = 0;
  int64_t flat_numel = 0;
};

// Trains `steps` steps of tiny(overrides) on `world` ranks; gradients of `grad_names` are
// gathered after step 1.
inline std::vector<RankRun> run(int64_t world, const std::vector<std::string>& overrides, int64_t steps = 10,
                                const std::vector<std::string>& grad_names = {}) {
  config::Recipe r = tiny(overrides);
  config::finalize(r, world);
  std::vector<RankRun> out(static_cast<size_t>(world));
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
        Engine engine(r, quiet, place);
        RankRun& rr = out[static_cast<size_t>(rank)];
        for (int64_t i = 0; i < steps; ++i) {
          const int64_t dp0 = engine.dp_bytes_sent(), tp0 = engine.tp_bytes_sent(), cp0 = engine.cp_bytes_sent();
          StepResult s = engine.train_step();
          rr.losses.push_back(s.lm_loss);
          rr.norms.push_back(s.grad_norm);
          rr.dp_bytes_last_step = engine.dp_bytes_sent() - dp0;
          rr.tp_bytes_last_step = engine.tp_bytes_sent() - tp0;
          rr.cp_bytes_last_step = engine.cp_bytes_sent() - cp0;
          if (i == 0)
            for (const std::string& name : grad_names) {
              rr.grads_step1[name] = engine.gather_tensor(name, true);
              rr.shapes[name] = engine.tensor_shape(name);
            }
        }
        rr.memory = engine.memory();
        rr.flat_numel = engine.flat_numel();
        rr.params = engine.gather_parameters();
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

inline double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

// ||a - b|| / ||b|| over the leading `n` elements.
inline double rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// The step-1 gradients of `names` in `rr` against `want`'s, within 1e-5 (relative L2).
// Vocabulary-sized tensors compare the real vocabulary's rows (tiny.toml's 257): their
// padding depends on the tensor-parallel size.
inline void expect_same_grads(const RankRun& rr, const RankRun& want, const std::vector<std::string>& names,
                              const std::string& what) {
  constexpr int64_t kVocab = 257;
  for (const std::string& name : names) {
    const std::vector<int64_t>& shape = rr.shapes.at(name);
    const bool vocab_rows = name.find("word_embeddings") != std::string::npos || name == "output_layer.weight";
    size_t n = rr.grads_step1.at(name).size();
    if (vocab_rows) n = static_cast<size_t>(kVocab * shape[1]);
    else EXPECT_EQ(shape, want.shapes.at(name)) << what << ": " << name;
    const double e = rel_l2(rr.grads_step1.at(name), want.grads_step1.at(name), n);
    EXPECT_LT(e, 1e-5) << what << ": gradient of " << name << " after step 1 differs by " << e;
  }
}

// Every rank of `got` against the one-rank run `want`: each step's loss within 1e-5
// relative and gradient norm within 1e-4; with `params`, the final parameters within 1e-5.
inline void expect_same_run(const std::vector<RankRun>& got, const RankRun& want, const std::string& what,
                            bool params = true) {
  for (size_t k = 0; k < got.size(); ++k) {
    const RankRun& rr = got[k];
    ASSERT_EQ(rr.losses.size(), want.losses.size());
    for (size_t i = 0; i < rr.losses.size(); ++i) {
      EXPECT_LT(rel(rr.losses[i], want.losses[i]), 1e-5)
          << what << " rank " << k << " step " << i + 1 << ": " << rr.losses[i] << " vs " << want.losses[i];
      EXPECT_LT(rel(rr.norms[i], want.norms[i]), 1e-4) << what << " rank " << k << " grad norm, step " << i + 1;
    }
    if (!params) continue;
    ASSERT_EQ(rr.params.size(), want.params.size()) << what;
    double worst = 0;
    for (size_t i = 0; i < rr.params.size(); ++i)
      worst = std::max(worst, static_cast<double>(std::abs(rr.params[i] - want.params[i])));
    EXPECT_LT(worst, 1e-5) << what << " rank " << k << ": final parameters differ by up to " << worst;
  }
}

// Batches supplied by the host (the C API's mpt_train_step with a batch), one step of
// tiny(overrides) on `world` ranks: when every rank passes the same batch of whole
// sequences (4 micro-batches of 4, loss mask `mask` or none) each reports the one-rank loss;
// when rank 1 passes another (`spoil` applied to the tokens; default: other tokens), every
// rank fails with kInvalidArgument containing rule(rank), and nobody hangs.
inline void expect_same_batch_rule(const std::vector<std::string>& overrides, int64_t world,
                                   const std::function<std::string(int64_t)>& rule, const float* mask = nullptr,
                                   const std::function<void(std::vector<int32_t>&)>& spoil = nullptr) {
  config::Recipe r = tiny(overrides);
  config::finalize(r, world);
  const int64_t rows = 16, cols = 129;  // seq_length + 1
  auto batch_tokens = [&](int32_t salt) {
    std::vector<int32_t> t(static_cast<size_t>(rows * cols));
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int32_t>((i * 31 + static_cast<size_t>(salt)) % 257);
    return t;
  };
  config::Recipe one = tiny({});
  config::finalize(one, 1);
  const std::vector<int32_t> same = batch_tokens(0);
  std::vector<int32_t> other = batch_tokens(7);
  if (spoil) {
    other = same;
    spoil(other);
  }
  HostBatch hb{same.data(), nullptr, mask, rows, cols};
  Logger quiet([](LogLevel, const std::string&) {}, LogLevel::kError);
  const double want = Engine(one, quiet).train_step(&hb).lm_loss;

  for (bool differ : {false, true}) {
    const int port = free_port();
    std::vector<double> loss(static_cast<size_t>(world), 0);
    std::vector<std::string> errors(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int64_t rank = 0; rank < world; ++rank)
      threads.emplace_back([&, rank] {
        dist::LaunchPlace place;
        place.rank = place.local_rank = rank;
        place.world_size = world;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        try {
          Engine e(r, quiet, place);
          HostBatch b{differ && rank == 1 ? other.data() : same.data(), nullptr, mask, rows, cols};
          loss[static_cast<size_t>(rank)] = e.train_step(&b).lm_loss;
        } catch (const Error& e) {
          errors[static_cast<size_t>(rank)] = str(static_cast<int>(e.status()), ": ", e.what());
        }
      });
    for (auto& t : threads) t.join();
    for (size_t k = 0; k < static_cast<size_t>(world); ++k) {
      if (differ) {
        EXPECT_NE(errors[k].find(str(static_cast<int>(Status::kInvalidArgument), ": ")), std::string::npos) << errors[k];
        EXPECT_NE(errors[k].find(rule(static_cast<int64_t>(k))), std::string::npos) << "rank " << k << ": " << errors[k];
      } else {
        EXPECT_EQ(errors[k], "");
        EXPECT_LT(rel(loss[k], want), 1e-6) << loss[k] << " vs " << want;
      }
    }
  }
}

}  // namespace mpt::train::testing
