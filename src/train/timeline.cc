#include "train/timeline.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "ckpt/file_io.h"
#include "core/error.h"

namespace mpt::train {

#ifndef MPT_HAVE_CUDA
std::unique_ptr<DeviceClock> make_device_clock(backend::Ops&) { return nullptr; }  // cuda/event_clock.cc
#endif

std::unique_ptr<StepProfiler> StepProfiler::from_recipe(const config::Recipe& recipe, int64_t rank,
                                                        size_t spans_per_step, backend::Ops& ops) {
  const config::ProfilingConfig& p = recipe.profiling;
  if (!p.timeline_dir) return nullptr;
  const std::vector<int64_t>& ranks = p.profile_ranks;
  if (!ranks.empty() && std::find(ranks.begin(), ranks.end(), rank) == ranks.end()) return nullptr;
  const size_t steps = static_cast<size_t>(std::max<int64_t>(0, p.profile_step_end - p.profile_step_start));
  auto profiler = std::make_unique<StepProfiler>(recipe, rank, spans_per_step * steps);
  profiler->clock_ = make_device_clock(ops);
  profiler->timeline_.set_device_clock(profiler->clock_.get());
  return profiler;
}

StepProfiler::StepProfiler(const config::Recipe& recipe, int64_t rank, size_t reserve)
    : timeline_(reserve),
      rank_(rank),
      first_(recipe.profiling.profile_step_start),
      end_(recipe.profiling.profile_step_end),
      dir_(recipe.profiling.timeline_dir.value_or(".")),
      path_(ckpt::join_path(dir_, str("timeline_rank", rank, ".json"))) {}

Timeline* StepProfiler::begin_step(int64_t iteration) {
  if (iteration < first_ || iteration >= end_) {
    timeline_.end_step();  // a step that failed part-way may have left it recording
    return nullptr;
  }
  step_ = iteration + 1;
  timeline_.begin_step(step_);
  unwritten_ = true;
  return &timeline_;
}

void StepProfiler::end_step(const Logger& log) {
  timeline_.end_step();
  timeline_.resolve();
  log.info(summary_line(timeline_.summarize(step_), rank_));
  if (step_ == end_) write();
}

void StepProfiler::flush() {
  if (unwritten_) write();
}

void StepProfiler::write() {
  try {
    ckpt::make_directories(dir_);
    ckpt::write_file_atomic(path_, timeline_.chrome_trace(rank_));
  } catch (const Error& e) {
    fail(Status::kIoError, "profiling.timeline_dir: cannot write the timeline: ", e.what());
  }
  unwritten_ = false;
}

std::string StepProfiler::summary_line(const StepSummary& s, int64_t rank) {
  auto ms = [](double seconds) { return str(std::round(seconds * 1e4) / 10, " ms"); };
  return str(" profiling: iteration ", s.step, " rank ", rank, " | compute ", ms(s.compute_s), " | communication ",
             ms(s.comm_s), " | ", std::lround(100 * s.hidden_fraction()),
             "% of communication overlapped with compute");
}

namespace {

// The operations of a communicator by name, and the compute thread's wait for each.
struct OpName {
  const char* op;
  const char* wait;
};
constexpr OpName kAllReduce{"all_reduce", "wait all_reduce"};
constexpr OpName kReduceScatter{"reduce_scatter", "wait reduce_scatter"};
constexpr OpName kAllGather{"all_gather", "wait all_gather"};
constexpr OpName kAllToAll{"all_to_all", "wait all_to_all"};
constexpr OpName kBroadcast{"broadcast", "wait broadcast"};
constexpr OpName kSend{"send", "wait send"};
constexpr OpName kRecv{"recv", "wait recv"};
constexpr OpName kBarrier{"barrier", "wait barrier"};

// An operation issued while the timeline recorded: its first wait() records it.
class RecordedWork final : public dist::Work {
 public:
  RecordedWork(std::shared_ptr<dist::Work> inner, Timeline& timeline, const char* lane, const OpName& name)
      : inner_(std::move(inner)), timeline_(timeline), lane_(lane), name_(name) {}

  void wait() override {
    if (recorded_) return inner_->wait();
    Span s;
    s.start = std::chrono::steady_clock::now();
    inner_->wait();
    s.end = std::chrono::steady_clock::now();
    recorded_ = true;
    s.name = name_.wait;
    s.lane = "compute";
    s.kind = SpanKind::kWait;
    timeline_.add(s);
    s.name = name_.op;
    s.lane = lane_;
    s.kind = SpanKind::kComm;
    inner_->times(s.start, s.end);  // else what this thread saw
    timeline_.add(s);
  }
  bool times(TimePoint& start, TimePoint& end) const override { return inner_->times(start, end); }

 private:
  std::shared_ptr<dist::Work> inner_;
  Timeline& timeline_;
  const char* lane_;
  OpName name_;
  bool recorded_ = false;
};

class RecordingCommunicator final : public dist::Communicator {
 public:
  RecordingCommunicator(std::unique_ptr<dist::Communicator> inner, Timeline& timeline, const char* lane)
      : inner_(std::move(inner)), timeline_(timeline), lane_(lane) {}

  int64_t rank() const override { return inner_->rank(); }
  int64_t size() const override { return inner_->size(); }
  const std::string& name() const override { return inner_->name(); }
  const std::vector<int64_t>& global_ranks() const override { return inner_->global_ranks(); }
  int64_t bytes_sent() const override { return inner_->bytes_sent(); }

  std::shared_ptr<dist::Work> all_reduce_async(void* data, int64_t count, DType dtype, dist::ReduceOp op) override {
    return track(inner_->all_reduce_async(data, count, dtype, op), kAllReduce);
  }
  std::shared_ptr<dist::Work> reduce_scatter_async(const void* in, void* out, int64_t count, DType dtype,
                                                   dist::ReduceOp op) override {
    return track(inner_->reduce_scatter_async(in, out, count, dtype, op), kReduceScatter);
  }
  std::shared_ptr<dist::Work> all_gather_async(const void* in, void* out, int64_t count, DType dtype) override {
    return track(inner_->all_gather_async(in, out, count, dtype), kAllGather);
  }
  std::shared_ptr<dist::Work> all_to_all_async(const void* in, const int64_t* send_counts, void* out,
                                               const int64_t* recv_counts, DType dtype) override {
    return track(inner_->all_to_all_async(in, send_counts, out, recv_counts, dtype), kAllToAll);
  }
  std::shared_ptr<dist::Work> broadcast_async(void* data, int64_t count, DType dtype, int64_t root) override {
    return track(inner_->broadcast_async(data, count, dtype, root), kBroadcast);
  }
  std::shared_ptr<dist::Work> send_async(const void* data, int64_t count, DType dtype, int64_t peer,
                                         int64_t tag) override {
    return track(inner_->send_async(data, count, dtype, peer, tag), kSend);
  }
  std::shared_ptr<dist::Work> recv_async(void* data, int64_t count, DType dtype, int64_t peer, int64_t tag) override {
    return track(inner_->recv_async(data, count, dtype, peer, tag), kRecv);
  }
  std::shared_ptr<dist::Work> barrier_async() override { return track(inner_->barrier_async(), kBarrier); }

 private:
  std::shared_ptr<dist::Work> track(std::shared_ptr<dist::Work> w, const OpName& name) {
    if (!timeline_.recording()) return w;
    return std::make_shared<RecordedWork>(std::move(w), timeline_, lane_, name);
  }

  std::unique_ptr<dist::Communicator> inner_;
  Timeline& timeline_;
  const char* lane_;
};

}  // namespace

std::unique_ptr<dist::Communicator> record_collectives(std::unique_ptr<dist::Communicator> inner,
                                                       Timeline& timeline, const char* lane) {
  return std::make_unique<RecordingCommunicator>(std::move(inner), timeline, lane);
}

}  // namespace mpt::train
