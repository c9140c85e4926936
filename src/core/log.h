// Logging with a host-installable sink. The C ABI routes it to the user's callback; the
// CLI prints to stderr. A Logger belongs to a context; nothing here is global.
#pragma once

#include <functional>
#include <string>

namespace mpt {

enum class LogLevel : int { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

class Logger {
 public:
  using Sink = std::function<void(LogLevel, const std::string&)>;
  Logger();  // default sink: stderr, level info
  explicit Logger(Sink sink, LogLevel max_level = LogLevel::kInfo) : sink_(std::move(sink)), max_(max_level) {}
  void log(LogLevel level, const std::string& msg) const {
    if (static_cast<int>(level) <= static_cast<int>(max_) && sink_) sink_(level, msg);
  }
  void info(const std::string& msg) const { log(LogLevel::kInfo, msg); }
  void warn(const std::string& msg) const { log(LogLevel::kWarn, msg); }
  void error(const std::string& msg) const { log(LogLevel::kError, msg); }
  void set_level(LogLevel l) { max_ = l; }

 private:
  Sink sink_;
  LogLevel max_;
};

}  // namespace mpt
