#include "core/log.h"

#include <cstdio>

namespace mpt {

Logger::Logger()
    : sink_([](LogLevel, const std::string& m) {
        std::fputs(m.c_str(), stderr);
        std::fputc('\n', stderr);
      }),
      max_(LogLevel::kInfo) {}

}  // namespace mpt
