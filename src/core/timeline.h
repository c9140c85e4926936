// The profiling timeline: when compute and communication ran on one rank, step by step, so
// that their overlap can be seen (a Chrome trace) and measured (StepSummary). It lives in
// core, not train, because the data-parallel storages (optim) record their own collectives.
//
// Cost: code that records holds a Timeline* that is null when profiling is off, so the
// check is one pointer test. Spans are plain values (names are static text) kept in storage
// reserved up front: recording allocates nothing until that reserve is used up. add() is
// thread-safe, so a transport's worker thread may close spans too.
//
// Times are the host's steady clock. On a backend that computes asynchronously (a GPU
// stream), a span may instead hold marks of a DeviceClock, turned into steady-clock times by
// resolve() once the device has passed them (after the step).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace mpt {

using TimePoint = std::chrono::steady_clock::time_point;

enum class SpanKind : uint8_t {
  kCompute,  // this rank's compute: a pipeline action, the optimizer step
  kComm,     // a collective as its transport ran it: from the worker's start to its end
  kWait,     // the compute thread blocked on communication (inside or between compute spans)
};

struct Span {
  const char* name = "";        // static text: "backward", "grad reduce-scatter", ...
  const char* lane = "";        // where it ran, static text: "compute", "dp-cp comm", ...
  SpanKind kind = SpanKind::kCompute;
  TimePoint start, end;
  int64_t step = 0;             // the iteration it belongs to, 1-based as the log counts
  int32_t microbatch = -1;      // a pipeline action's micro-batch and model chunk
  int32_t chunk = -1;
  int32_t index = -1;           // which bucket or unit, named by index_name
  const char* index_name = nullptr;
  // Device marks standing for start / end until resolve() (-1: the time is already set).
  int32_t start_mark = -1, end_mark = -1;
};

// Times work on a device that computes asynchronously to the host: mark() records a point on
// its compute stream; time_of() gives when the device passed it, on the host's steady clock,
// once it has (after a synchronize). reset() recycles the marks of a resolved step.
class DeviceClock {
 public:
  virtual ~DeviceClock() = default;
  virtual int32_t mark() = 0;
  virtual TimePoint time_of(int32_t mark) = 0;
  virtual void reset() = 0;
};

// A step's figures: compute time (compute spans less the waits inside them), communication
// time (the union of comm spans) and how much of it ran while the rank computed.
struct StepSummary {
  int64_t step = 0;
  double compute_s = 0;
  double comm_s = 0;
  double hidden_s = 0;
  double hidden_fraction() const { return comm_s > 0 ? hidden_s / comm_s : 0.0; }
};

class Timeline {
 public:
  // Room for `reserve` spans before recording allocates.
  explicit Timeline(size_t reserve);
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Spans recorded between begin_step() and end_step() belong to `step`; recording() says
  // whether a step is open. Called by the thread that runs the steps.
  void begin_step(int64_t step);
  void end_step() { recording_.store(false, std::memory_order_release); }
  bool recording() const { return recording_.load(std::memory_order_acquire); }

  // Where compute spans take their times; null (the default): the host's clock.
  void set_device_clock(DeviceClock* clock) { device_ = clock; }
  // A compute span's start or end: now on the host, or a mark on the device.
  struct Point {
    TimePoint host;
    int32_t mark = -1;
  };
  Point now() const;

  // Records a span under the open step (its step field is set here). Thread-safe.
  void add(Span span);
  // A compute-thread span from two points taken with now().
  void add_compute(const char* name, Point start, Point end, int32_t microbatch = -1, int32_t chunk = -1);
  // Turns device marks into times (after the device has passed them) and recycles them.
  void resolve();

  std::vector<Span> spans() const;  // a copy, in the order recorded
  size_t capacity() const;
  void clear();

  StepSummary summarize(int64_t step) const;
  // Chrome trace JSON (chrome://tracing, Perfetto): each span a complete event ("ph": "X")
  // of process `rank`, one thread per lane, "ts"/"dur" in microseconds of the steady clock,
  // so traces of ranks on one host line up; args hold step, micro-batch, chunk and index.
  std::string chrome_trace(int64_t rank) const;

 private:
  mutable std::mutex mu_;
  std::vector<Span> spans_;
  std::atomic<bool> recording_{false};
  std::atomic<int64_t> step_{0};
  DeviceClock* device_ = nullptr;
};

}  // namespace mpt
