#include "train/metrics.h"

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace mpt::train {

std::string format_log_line(const IntervalStats& s) {
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                " iteration %8lld/%8lld | consumed samples: %12lld | elapsed time per iteration (ms): %.1f | "
                "learning rate: %.6E | global batch size: %5lld | lm loss: %.6E | grad norm: %.3f | "
                "tokens per sec: %.1f",
                static_cast<long long>(s.iteration), static_cast<long long>(s.train_iters),
                static_cast<long long>(s.consumed_samples), s.ms_per_iteration, s.lr,
                static_cast<long long>(s.global_batch_size), s.lm_loss, s.grad_norm, s.tokens_per_sec);
  std::string line = buf;
  if (s.moe_expert_spread > 0) {
    std::snprintf(buf, sizeof(buf), " | load balancing loss: %.6E | z loss: %.6E | tokens per expert max/mean: %.3f",
                  s.moe_aux_loss, s.moe_z_loss, s.moe_expert_spread);
    line += buf;
  }
  return line;
}

void MetricsFile::open(const std::string& path, bool truncate) {
  MPT_ASSERT(file_ == nullptr);
  path_ = path;
  file_ = std::fopen(path.c_str(), truncate ? "w" : "a");
  MPT_CHECK(file_ != nullptr, Status::kIoError, "logger.metrics_file: cannot open '", path, "': ", std::strerror(errno));
}

MetricsFile::~MetricsFile() {
  if (file_) std::fclose(file_);
}

void MetricsFile::write_line(const std::string& line) {
  if (!file_) return;
  bool ok = std::fputs(line.c_str(), file_) >= 0 && std::fputc('\n', file_) != EOF && std::fflush(file_) == 0;
  MPT_CHECK(ok, Status::kIoError, "logger.metrics_file: write to '", path_, "' failed: ", std::strerror(errno));
}

void MetricsFile::write_step(const StepResult& r, double tokens_per_sec) {
  nlohmann::json j = {{"iteration", r.iteration},       {"lm_loss", r.lm_loss},
                      {"grad_norm", r.grad_norm},       {"lr", r.lr},
                      {"step_time_s", r.step_time_s},   {"tokens_per_sec", tokens_per_sec},
                      {"consumed_samples", r.consumed_samples}, {"tokens", r.tokens},
                      {"data_wait_s", r.data_wait_s}};
  if (r.moe_expert_spread > 0) {
    j["load_balancing_loss"] = r.moe_aux_loss;
    j["z_loss"] = r.moe_z_loss;
    j["tokens_per_expert_max_over_mean"] = r.moe_expert_spread;
  }
  write_line(j.dump());
}

void MetricsFile::write_memory(int rank, const MemoryReport& m) {
  nlohmann::json j = {{"event", "memory"},
                      {"rank", rank},
                      {"params_bytes", m.params_bytes},
                      {"expert_params_bytes", m.expert_params_bytes},
                      {"grads_bytes", m.grads_bytes},
                      {"optimizer_bytes", m.optimizer_bytes},
                      {"activations_peak_bytes", m.activations_peak_bytes},
                      {"backend_workspace_bytes", m.backend_workspace_bytes}};
  write_line(j.dump());
}

void MetricsFile::write_validation(int64_t iteration, double lm_loss) {
  nlohmann::json j = {{"event", "validation"}, {"iteration", iteration}, {"lm_loss", lm_loss}};
  write_line(j.dump());
}

}  // namespace mpt::train
