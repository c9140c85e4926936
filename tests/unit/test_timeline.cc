// The profiling timeline: the recorder's Chrome trace and summary, and the engine's traces
// at DP = 2 (ranks as threads), where they must show gradient buckets reduced while backward
// still runs exactly when ddp.overlap_grad_reduce is on; the [profiling] keys' rules.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "config/recipe.h"
#include "core/timeline.h"
#include "engine_threads.h"
#include "test_errors.h"
#include "train/engine.h"
#include "train/timeline.h"

namespace mpt::train {
namespace {

// --- the recorder --------------------------------------------------------------------------

TimePoint at_ms(double ms) {
  using Ms = std::chrono::duration<double, std::milli>;
  return TimePoint(std::chrono::duration_cast<TimePoint::duration>(Ms(1000 + ms)));
}

Span span(const char* name, const char* lane, SpanKind kind, double start_ms, double end_ms) {
  Span s;
  s.name = name;
  s.lane = lane;
  s.kind = kind;
  s.start = at_ms(start_ms);
  s.end = at_ms(end_ms);
  return s;
}

TEST(TimelineRecorder, ChromeTraceIsValidAndComplete) {
  Timeline t(8);
  t.begin_step(7);
  Span fwd = span("forward", "compute", SpanKind::kCompute, 0, 10);
  fwd.microbatch = 1;
  fwd.chunk = 0;
  t.add(fwd);
  Span bucket = span("grad all-reduce", "dp-cp comm", SpanKind::kComm, 4, 12.5);
  bucket.index = 3;
  bucket.index_name = "bucket";
  t.add(bucket);
  t.add(span("wait \"quoted\"", "compute", SpanKind::kWait, 11, 12.5));
  t.add(span("all_reduce", "tp comm", SpanKind::kComm, 2, 3));
  t.end_step();

  const nlohmann::json trace = nlohmann::json::parse(t.chrome_trace(5));  // throws when invalid
  ASSERT_TRUE(trace.contains("traceEvents"));
  std::vector<nlohmann::json> spans;
  std::map<int64_t, std::string> threads;
  std::string process;
  for (const nlohmann::json& e : trace["traceEvents"]) {
    EXPECT_EQ(e["pid"], 5) << e;
    if (e["ph"] == "X") spans.push_back(e);
    if (e["ph"] == "M" && e["name"] == "thread_name")
      threads[e["tid"].get<int64_t>()] = e["args"]["name"].get<std::string>();
    if (e["ph"] == "M" && e["name"] == "process_name") process = e["args"]["name"].get<std::string>();
  }
  EXPECT_EQ(process, "rank 5");
  EXPECT_EQ(threads, (std::map<int64_t, std::string>{{0, "compute"}, {1, "dp-cp comm"}, {2, "tp comm"}}));
  ASSERT_EQ(spans.size(), 4u);
  const double origin_us = 1e6;  // at_ms(0)
  const struct {
    const char* name;
    const char* cat;
    int64_t tid;
    double ts_ms, dur_ms;
  } want[] = {{"forward", "compute", 0, 0, 10},
              {"grad all-reduce", "comm", 1, 4, 8.5},
              {"wait \"quoted\"", "wait", 0, 11, 1.5},
              {"all_reduce", "comm", 2, 2, 1}};
  for (size_t i = 0; i < spans.size(); ++i) {
    const nlohmann::json& e = spans[i];
    EXPECT_EQ(e["name"], want[i].name);
    EXPECT_EQ(e["cat"], want[i].cat);
    EXPECT_EQ(e["tid"], want[i].tid);
    EXPECT_NEAR(e["ts"].get<double>() - origin_us, want[i].ts_ms * 1000, 1e-3) << e;
    EXPECT_NEAR(e["dur"].get<double>(), want[i].dur_ms * 1000, 1e-3) << e;
    EXPECT_EQ(e["args"]["step"], 7);
  }
  EXPECT_EQ(spans[0]["args"]["microbatch"], 1);
  EXPECT_EQ(spans[0]["args"]["chunk"], 0);
  EXPECT_EQ(spans[1]["args"]["bucket"], 3);
  EXPECT_FALSE(spans[2]["args"].contains("microbatch"));
}

// compute [0,10] and [12,20] with a wait [4,6] inside; comm [5,14] and [13,15]: the rank
// computed 16 ms, communicated 10 ms, of which [6,10] and [12,15] (7 ms) under compute.
TEST(TimelineRecorder, SummaryCountsCommunicationUnderComputeButNotUnderWaits) {
  Timeline t(16);
  t.begin_step(2);
  t.add(span("forward", "compute", SpanKind::kCompute, 0, 10));
  t.add(span("wait", "compute", SpanKind::kWait, 4, 6));
  t.add(span("backward", "compute", SpanKind::kCompute, 12, 20));
  t.add(span("a", "dp-cp comm", SpanKind::kComm, 5, 14));
  t.add(span("b", "tp comm", SpanKind::kComm, 13, 15));
  t.begin_step(3);
  t.add(span("c", "dp-cp comm", SpanKind::kComm, 30, 40));  // another step: not counted
  t.end_step();
  const StepSummary s = t.summarize(2);
  EXPECT_NEAR(s.compute_s, 16e-3, 1e-9);
  EXPECT_NEAR(s.comm_s, 10e-3, 1e-9);
  EXPECT_NEAR(s.hidden_s, 7e-3, 1e-9);
  EXPECT_NEAR(s.hidden_fraction(), 0.7, 1e-6);
  EXPECT_EQ(StepProfiler::summary_line(s, 1),
            " profiling: iteration 2 rank 1 | compute 16 ms | communication 10 ms | 70% of communication overlapped "
            "with compute");
  EXPECT_NEAR(t.summarize(3).hidden_fraction(), 0.0, 1e-12);
}

// Threads add spans at once (as a transport's worker may): none is lost, and recording
// within the reserve never moves the storage.
TEST(TimelineRecorder, ConcurrentRecordingWithinTheReserveKeepsEverySpanWithoutGrowing) {
  constexpr int kThreads = 4, kEach = 2000;
  Timeline t(kThreads * kEach);
  const size_t capacity = t.capacity();
  t.begin_step(1);
  std::vector<std::thread> threads;
  for (int k = 0; k < kThreads; ++k)
    threads.emplace_back([&, k] {
      for (int i = 0; i < kEach; ++i) {
        Span s = span("x", "comm", SpanKind::kComm, i, i + 1);
        s.index = k * kEach + i;
        t.add(s);
      }
    });
  for (auto& th : threads) th.join();
  t.end_step();
  EXPECT_EQ(t.capacity(), capacity);
  std::vector<Span> all = t.spans();
  ASSERT_EQ(all.size(), static_cast<size_t>(kThreads * kEach));
  std::vector<int32_t> seen;
  for (const Span& s : all) seen.push_back(s.index);
  std::sort(seen.begin(), seen.end());
  for (int i = 0; i < kThreads * kEach; ++i) ASSERT_EQ(seen[static_cast<size_t>(i)], i);
}

// --- the engine's traces -------------------------------------------------------------------

struct Event {
  std::string name, cat;
  int64_t tid = 0, step = 0, microbatch = -1, index = -1;
  double start = 0, end = 0;  // microseconds
};

// The complete events of a trace, in the order recorded.
std::vector<Event> events(const nlohmann::json& trace) {
  std::vector<Event> out;
  for (const nlohmann::json& e : trace.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    Event v;
    v.name = e.at("name").get<std::string>();
    v.cat = e.at("cat").get<std::string>();
    v.tid = e.at("tid").get<int64_t>();
    v.start = e.at("ts").get<double>();
    v.end = v.start + e.at("dur").get<double>();
    const nlohmann::json& a = e.at("args");
    v.step = a.at("step").get<int64_t>();
    v.microbatch = a.value("microbatch", -1);
    v.index = a.value("bucket", a.value("unit", -1));
    out.push_back(v);
  }
  return out;
}

std::vector<Event> named(const std::vector<Event>& all, int64_t step, const std::string& name,
                         const std::string& cat = "") {
  std::vector<Event> out;
  for (const Event& e : all)
    if (e.step == step && e.name == name && (cat.empty() || e.cat == cat)) out.push_back(e);
  return out;
}

double last_end(const std::vector<Event>& v) {
  double t = 0;
  for (const Event& e : v) t = std::max(t, e.end);
  return t;
}

// A fresh directory under the system's temporary one, removed with the object.
struct TempDir {
  std::string path;
  TempDir() {
    static std::atomic<int> n{0};
    path = (std::filesystem::temp_directory_path() / str("mpt_timeline_", ::getpid(), "_", n++)).string();
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

struct Traces {
  std::vector<std::vector<Event>> ranks;  // per rank: its trace's events (empty: no trace)
  std::vector<std::string> rank0_log;     // rank 0's info lines
};

// `steps` steps of tiny(overrides) on `world` ranks (threads), the timeline in `dir`.
Traces train(int64_t world, std::vector<std::string> overrides, int64_t steps, const std::string& dir) {
  overrides.push_back(str("profiling.timeline_dir=", dir));
  config::Recipe r = testing::tiny(overrides);
  config::finalize(r, world);
  const int port = testing::free_port();
  Traces run;
  std::mutex mu;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank)
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchPlace place;
        place.rank = place.local_rank = rank;
        place.world_size = world;
        place.master_addr = "127.0.0.1";
        place.master_port = port;
        Logger log([&](LogLevel level, const std::string& line) {
          std::lock_guard<std::mutex> lock(mu);
          if (rank == 0 && level == LogLevel::kInfo) run.rank0_log.push_back(line);
        });
        Engine engine(r, log, place);
        for (int64_t i = 0; i < steps; ++i) engine.train_step();
      } catch (...) {
        errors[static_cast<size_t>(rank)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  for (int64_t rank = 0; rank < world; ++rank) {
    std::ifstream in(str(dir, "/timeline_rank", rank, ".json"));
    run.ranks.push_back(in ? events(nlohmann::json::parse(in)) : std::vector<Event>());
  }
  return run;
}

std::vector<std::string> profiling_lines(const Traces& run) {
  std::vector<std::string> out;
  for (const std::string& line : run.rank0_log)
    if (line.find("profiling: iteration") != std::string::npos) out.push_back(line);
  return out;
}

// Iterations 2 and 3 of 3: after 1 and up to 3 completed (Megatron's window).
const std::vector<std::string> kWindow = {"profiling.profile_step_start=1", "profiling.profile_step_end=3"};

std::vector<std::string> with_window(std::vector<std::string> o) {
  o.insert(o.end(), kWindow.begin(), kWindow.end());
  return o;
}

// With one bucket per unit (ddp.bucket_size=1), buckets launch as backward finishes their
// units: some reduction starts before the step's last backward action ends. Without
// overlap_grad_reduce every reduction starts after backward, and none is hidden.
TEST(TimelineEngine, BucketReducesOverlapBackwardOnlyWithOverlapGradReduce) {
  for (bool overlap : {true, false}) {
    TempDir dir;
    const std::string flag = str("ddp.overlap_grad_reduce=", overlap ? "true" : "false");
    const Traces run = train(2, with_window({"ddp.bucket_size=1", flag}), 3, dir.path);
    const std::string what = overlap ? "overlap_grad_reduce on" : "overlap_grad_reduce off";
    for (size_t rank = 0; rank < run.ranks.size(); ++rank) {
      const std::vector<Event>& ev = run.ranks[rank];
      ASSERT_FALSE(ev.empty()) << what << ": no trace from rank " << rank;
      for (const Event& e : ev) EXPECT_TRUE(e.step == 2 || e.step == 3) << what << ": step " << e.step << " recorded";
      for (int64_t step : {2, 3}) {
        // Complete: every action of the step (2 micro-batches on this rank), the optimizer,
        // and each bucket's reduction once with the compute thread's wait for it.
        const std::vector<Event> fwd = named(ev, step, "forward"), bwd = named(ev, step, "backward");
        ASSERT_EQ(fwd.size(), 2u) << what;
        ASSERT_EQ(bwd.size(), 2u) << what;
        EXPECT_EQ(named(ev, step, "optimizer").size(), 1u) << what;
        const std::vector<Event> buckets = named(ev, step, "grad all-reduce", "comm");
        ASSERT_GE(buckets.size(), 3u) << what << ": expected several buckets";
        EXPECT_EQ(named(ev, step, "wait grad all-reduce", "wait").size(), buckets.size()) << what;
        std::vector<int64_t> ids;
        for (const Event& b : buckets) ids.push_back(b.index);
        std::sort(ids.begin(), ids.end());
        for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], static_cast<int64_t>(i)) << what;

        const double backward_end = last_end(bwd);
        int64_t early = 0;
        for (const Event& b : buckets) {
          EXPECT_LE(b.start, b.end);
          early += b.start < backward_end;
        }
        if (overlap)
          EXPECT_GE(early, 1) << what << ", rank " << rank << " step " << step << ": no bucket started in backward";
        else
          EXPECT_EQ(early, 0) << what << ", rank " << rank << " step " << step << ": a bucket started in backward";
      }
    }
    const std::vector<std::string> lines = profiling_lines(run);
    ASSERT_EQ(lines.size(), 2u) << what;
    EXPECT_NE(lines[0].find("iteration 2 rank 0 | compute "), std::string::npos) << lines[0];
    EXPECT_NE(lines[1].find("iteration 3 rank 0 | compute "), std::string::npos) << lines[1];
    for (const std::string& line : lines) {
      if (!overlap) {
        EXPECT_NE(line.find("| 0% of communication overlapped with compute"), std::string::npos) << line;
      }
    }
  }
}

// The distributed optimizer reduce-scatters buckets during backward and all-gathers the
// updated parameters after the optimizer step (it does not prefetch them into the next
// forward: optimizer.overlap_param_gather is refused). FSDP gathers each unit ahead of its
// use: some gathers are in flight before the compute thread asks for them.
TEST(TimelineEngine, ParameterGathersOfTheDistributedOptimizerAndFsdp) {
  {
    TempDir dir;
    const Traces run = train(
        2, with_window({"ddp.bucket_size=1", "ddp.overlap_grad_reduce=true", "ddp.use_distributed_optimizer=true"}), 3,
        dir.path);
    for (const std::vector<Event>& ev : run.ranks)
      for (int64_t step : {2, 3}) {
        const std::vector<Event> rs = named(ev, step, "grad reduce-scatter", "comm");
        const std::vector<Event> ag = named(ev, step, "param all-gather", "comm");
        ASSERT_GE(rs.size(), 3u);
        EXPECT_EQ(ag.size(), rs.size());  // one per bucket
        const double backward_end = last_end(named(ev, step, "backward"));
        EXPECT_TRUE(std::any_of(rs.begin(), rs.end(), [&](const Event& e) { return e.start < backward_end; }));
        const std::vector<Event> opt = named(ev, step, "optimizer");
        ASSERT_EQ(opt.size(), 1u);
        for (const Event& e : ag) EXPECT_GE(e.start, opt[0].end) << "a parameter gather before the optimizer step";
      }
  }
  {
    TempDir dir;
    const Traces run = train(2, with_window({"ddp.data_parallel_sharding_strategy=optim_grads_params"}), 3, dir.path);
    for (const std::vector<Event>& ev : run.ranks) {
      int64_t prefetched = 0, gathers = 0;
      // Each collective is recorded right after the compute thread's wait for it.
      for (size_t i = 1; i < ev.size(); ++i) {
        if (ev[i].name != "param all-gather" || ev[i].cat != "comm") continue;
        ASSERT_EQ(ev[i - 1].name, "wait param all-gather");
        ++gathers;
        prefetched += ev[i].start < ev[i - 1].start;
      }
      EXPECT_GE(gathers, 2 * 6) << "every unit in forward and backward, over two steps";
      EXPECT_GE(prefetched, 1) << "no unit's gather was under way before the compute thread waited for it";
    }
  }
}

// Tensor parallelism: a column-parallel layer's backward starts its d(input) all-reduce,
// computes d(weight), then waits; on the timeline, such a reduction started before the
// compute thread waited for it.
TEST(TimelineEngine, TensorParallelCollectivesOverlapTheirWeightGradients) {
  TempDir dir;
  const Traces run = train(2, with_window({"model.tensor_model_parallel_size=2"}), 3, dir.path);
  for (const std::vector<Event>& ev : run.ranks) {
    int64_t reductions = 0, overlapped = 0;
    for (size_t i = 1; i < ev.size(); ++i) {
      if (ev[i].cat != "comm" || ev[i].name != "all_reduce") continue;
      ASSERT_EQ(ev[i - 1].name, "wait all_reduce");
      ++reductions;
      overlapped += ev[i].start < ev[i - 1].start;
    }
    EXPECT_GT(reductions, 0);
    EXPECT_GE(overlapped, 1);
  }
}

// Off, nothing is recorded: a rank outside profile_ranks, and steps outside the window,
// write no trace and log no summary.
TEST(TimelineEngine, NothingIsRecordedOutsideTheProfiledRanksAndSteps) {
  {
    TempDir dir;
    const Traces run = train(2, with_window({"profiling.profile_ranks=[1]"}), 3, dir.path);
    EXPECT_TRUE(run.ranks[0].empty());
    EXPECT_FALSE(run.ranks[1].empty());
    EXPECT_TRUE(profiling_lines(run).empty());
  }
  {
    TempDir dir;
    const Traces run = train(1, {"profiling.profile_step_start=5", "profiling.profile_step_end=7"}, 3, dir.path);
    EXPECT_TRUE(run.ranks[0].empty());
    EXPECT_FALSE(std::filesystem::exists(dir.path));
    EXPECT_TRUE(profiling_lines(run).empty());
  }
  {
    // A run that stops inside the window writes what it recorded when the engine goes.
    TempDir dir;
    const Traces run = train(1, {"profiling.profile_step_start=1", "profiling.profile_step_end=5"}, 3, dir.path);
    ASSERT_FALSE(run.ranks[0].empty());
    EXPECT_EQ(named(run.ranks[0], 3, "optimizer").size(), 1u);
    EXPECT_EQ(profiling_lines(run).size(), 2u);
  }
}

// --- the [profiling] keys ------------------------------------------------------------------

std::string problems(const std::vector<std::string>& overrides, int64_t world = 1) {
  config::Recipe r = testing::tiny(overrides);
  return error_of([&] { config::finalize(r, world); }).what();
}

TEST(TimelineConfig, BadProfilingKeysAreRefusedNamingTheKey) {
  config::Recipe r = testing::tiny({});
  const Error unknown = error_of([&] { config::apply_overrides(r, {"profiling.timeline_dri=x"}); });
  EXPECT_EQ(unknown.status(), Status::kInvalidConfig);
  EXPECT_TRUE(contains(unknown.what(), "profiling.timeline_dir")) << unknown.what();  // did you mean
  const Error type = error_of([&] { config::apply_overrides(r, {"profiling.profile_ranks=[\"a\"]"}); });
  EXPECT_TRUE(contains(type.what(), "profiling.profile_ranks: expected an integer or a list of integers"))
      << type.what();

  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"profiling.profile_step_start=4", "profiling.profile_step_end=4"},
       "profiling.profile_step_end: must be greater than profiling.profile_step_start (4), got 4"},
      {{"profiling.profile_step_start=-1"}, "profiling.profile_step_start: must be >= 0"},
      {{"profiling.profile_ranks=[0, -2]"}, "profiling.profile_ranks: every element must be >= 0, got -2"},
      {{"profiling.profile_ranks=[2]"}, "profiling.profile_ranks: rank 2 is not in this run of 2 ranks"},
      {{"profiling.profile_ranks=[1, 1]"}, "profiling.profile_ranks: rank 1 is listed twice"},
      {{"profiling.use_pytorch_profiler=true"}, "profiling.use_pytorch_profiler: mptrain has no PyTorch"},
      {{"profiling.use_nsys_profiler=true"}, "profiling.use_nsys_profiler: starting and stopping Nsight Systems"},
      {{"profiling.timeline_dir=\"\""}, "profiling.timeline_dir: is empty"},
      {{"profiling.timeline_dir=t", "profiling.profile_step_start=10"},
       "profiling.profile_step_start: the timeline would start after iteration 10 but training stops at "
       "train.train_iters = 10"},
  };
  for (const auto& [overrides, want] : cases) {
    const std::string msg = problems(overrides, 2);
    EXPECT_TRUE(contains(msg, want)) << "want: " << want << "\ngot: " << msg;
  }

  // Good values pass and survive the round trip through to_toml().
  config::Recipe good = testing::tiny({"profiling.profile_ranks=[1, 0]", "profiling.timeline_dir=traces",
                                       "profiling.profile_step_start=2", "profiling.profile_step_end=4"});
  config::finalize(good, 2);
  const config::Recipe back = config::load_recipe_string(config::to_toml(good));
  EXPECT_EQ(back.profiling.profile_ranks, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(back.profiling.timeline_dir, "traces");
  EXPECT_TRUE(contains(config::to_toml(good), "\n[profiling]\n"));
}

}  // namespace
}  // namespace mpt::train
