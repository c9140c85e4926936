// The recipe's [profiling] section on one rank: which steps the timeline records, the
// summary line after each of them and the Chrome trace written after the last one; and a
// communicator wrapper that puts a group's collectives on the timeline.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "config/recipe.h"
#include "core/log.h"
#include "core/timeline.h"
#include "dist/communicator.h"

namespace mpt::backend {
class Ops;
}

namespace mpt::train {

// The clock of `ops`' compute stream (CUDA events on the CUDA backend), or null on a backend
// that computes synchronously on the host, whose steady clock then times the compute.
std::unique_ptr<DeviceClock> make_device_clock(backend::Ops& ops);

class StepProfiler {
 public:
  // Null unless the recipe sets profiling.timeline_dir and profiles `rank` (profile_ranks
  // empty: every rank). Room is reserved for `spans_per_step` spans in each profiled step;
  // compute is timed on `ops`' clock (make_device_clock).
  static std::unique_ptr<StepProfiler> from_recipe(const config::Recipe& recipe, int64_t rank,
                                                   size_t spans_per_step, backend::Ops& ops);
  StepProfiler(const config::Recipe& recipe, int64_t rank, size_t reserve);

  Timeline& timeline() { return timeline_; }
  // <timeline_dir>/timeline_rank<rank>.json
  const std::string& path() const { return path_; }

  // At the start of the step after `iteration` completed ones: the timeline, now recording
  // that step, or null outside the window [profile_step_start, profile_step_end).
  Timeline* begin_step(int64_t iteration);
  // After the step that begin_step() opened, once the device has finished it: resolves
  // device times, logs the summary line and, after the window's last step, writes the trace.
  // Throws Error(kIoError) naming the file when it cannot be written.
  void end_step(const Logger& log);
  // Writes what was recorded and not yet written (a run that stopped inside the window).
  void flush();

  // The summary line of a step: compute, communication, and the share of it hidden.
  static std::string summary_line(const StepSummary& s, int64_t rank);

 private:
  void write();

  std::unique_ptr<DeviceClock> clock_;
  Timeline timeline_;
  int64_t rank_ = 0, first_ = 0, end_ = 0;
  int64_t step_ = 0;  // the step begin_step() opened, 1-based
  std::string dir_, path_;
  bool unwritten_ = false;
};

// `inner` with its asynchronous operations put on `timeline` while it records: each as the
// transport ran it, on lane `lane` (static text), and the compute thread's wait for it
// (recorded at its first wait()). While recording, each operation's handle is wrapped (one
// allocation beside the transport's own); otherwise everything passes straight through.
std::unique_ptr<dist::Communicator> record_collectives(std::unique_ptr<dist::Communicator> inner,
                                                       Timeline& timeline, const char* lane);

}  // namespace mpt::train
