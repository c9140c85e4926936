// What a run reports: the Megatron-style log line and the JSON-lines metrics file whose
// field names other tools (and the multi-rank equivalence tests) rely on.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "train/engine.h"

namespace mpt::train {

// Averages over one log interval.
struct IntervalStats {
  int64_t iteration = 0;
  int64_t train_iters = 0;
  int64_t consumed_samples = 0;
  int64_t global_batch_size = 0;
  double ms_per_iteration = 0;
  double lr = 0;
  double lm_loss = 0;
  double grad_norm = 0;
  double tokens_per_sec = 0;
  // Mixture of experts (spread 0: a dense model, not shown).
  double moe_aux_loss = 0, moe_z_loss = 0, moe_expert_spread = 0;
};

std::string format_log_line(const IntervalStats& s);

class MetricsFile {
 public:
  MetricsFile() = default;  // closed: writes do nothing
  // Opens `path` (truncating when `truncate`, else appending). Throws kIoError.
  void open(const std::string& path, bool truncate);
  ~MetricsFile();
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;

  bool is_open() const { return file_ != nullptr; }
  void write_step(const StepResult& r, double tokens_per_sec);
  void write_memory(int rank, const MemoryReport& m);
  void write_validation(int64_t iteration, double lm_loss);

 private:
  void write_line(const std::string& line);
  std::FILE* file_ = nullptr;
  std::string path_;
};

}  // namespace mpt::train
