// The mptrain command line as data: which command, which recipe, which overrides and
// options. Parsing is pure (no I/O) so that every usage error is one exception.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace mpt::cli {

enum class Command { kTrain, kConfig, kHelp, kVersion };

struct Invocation {
  Command command = Command::kTrain;
  std::string recipe_path;
  std::vector<std::string> overrides;  // "section.key=value", in order
  std::optional<int> threads;          // --threads N
  bool quiet = false;                  // --quiet: warnings and errors only
  int nproc_per_node = 1;              // --nproc-per-node N
};

// A command line that cannot be understood; the program exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// argv[0] is the program name. Throws UsageError.
Invocation parse_command_line(int argc, const char* const* argv);

// The text of `mptrain --help`.
std::string usage_text();

}  // namespace mpt::cli
