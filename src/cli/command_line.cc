#include "cli/command_line.h"

#include <cerrno>
#include <cstdlib>
#include <string_view>

namespace mpt::cli {
namespace {

// A positive integer option value, e.g. --threads 8.
int parse_count(const std::string& option, const std::string& text, int max) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0' || v < 1 || v > max)
    throw UsageError(option + " expects an integer in 1.." + std::to_string(max) + ", got '" +
                     text + "'");
  return static_cast<int>(v);
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

}  // namespace

Invocation parse_command_line(int argc, const char* const* argv) {
  Invocation inv;
  std::vector<std::string> positionals;
  bool help = false, version = false, options_done = false;

  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (options_done || arg.empty() || arg[0] != '-' || arg == "-") {
      positionals.push_back(arg);
      continue;
    }
    // Options taking a value accept both "--name value" and "--name=value".
    auto value_of = [&](const std::string& name) -> std::optional<std::string> {
      if (arg == name) {
        if (i + 1 >= argc) throw UsageError(name + " needs a value");
        return std::string(argv[++i]);
      }
      if (starts_with(arg, name + "=")) return arg.substr(name.size() + 1);
      return std::nullopt;
    };
    if (arg == "--") {
      options_done = true;
    } else if (arg == "-h" || arg == "--help") {
      help = true;
    } else if (arg == "--version") {
      version = true;
    } else if (arg == "-q" || arg == "--quiet") {
      inv.quiet = true;
    } else if (auto v = value_of("--threads")) {
      inv.threads = parse_count("--threads", *v, 4096);
    } else if (auto n = value_of("--nproc-per-node")) {
      inv.nproc_per_node = parse_count("--nproc-per-node", *n, 1024);
    } else {
      throw UsageError("unknown option '" + arg + "'");
    }
  }

  if (help) {
    inv.command = Command::kHelp;
    return inv;
  }
  if (version) {
    inv.command = Command::kVersion;
    return inv;
  }
  if (inv.nproc_per_node > 1)
    throw UsageError("--nproc-per-node " + std::to_string(inv.nproc_per_node) +
                     ": multi-process launch is not supported yet");

  size_t next = 0;
  if (!positionals.empty()) {
    const std::string& word = positionals[0];
    if (word == "help") {
      inv.command = Command::kHelp;
      return inv;
    }
    if (word == "version") {
      inv.command = Command::kVersion;
      return inv;
    }
    if (word == "train" || word == "config") {
      inv.command = word == "train" ? Command::kTrain : Command::kConfig;
      next = 1;
    }
  }
  if (next >= positionals.size()) throw UsageError("missing the recipe file (RECIPE.toml)");
  inv.recipe_path = positionals[next++];
  for (; next < positionals.size(); ++next) {
    const std::string& a = positionals[next];
    if (a.find('=') == std::string::npos || a.front() == '=')
      throw UsageError("expected an override section.key=value after the recipe, got '" + a + "'");
    inv.overrides.push_back(a);
  }
  return inv;
}

std::string usage_text() {
  return R"(Usage:
  mptrain [OPTIONS] RECIPE.toml [section.key=value ...]
  mptrain [OPTIONS] train RECIPE.toml [section.key=value ...]
  mptrain [OPTIONS] config RECIPE.toml [section.key=value ...]
  mptrain help | --help | -h
  mptrain --version

Commands:
  train     Train the model the recipe describes (the default when the first argument
            is a recipe file). Prints a log line every logger.log_interval iterations
            and saves checkpoints as the [checkpoint] section says.
  config    Validate the recipe with its overrides and print the resolved recipe as
            TOML (loadable again as a recipe). Nothing is trained.
  help      Print this text.

Overrides:
  section.key=value   Set one recipe key after the file is read, as Megatron Bridge's
                      command line does: model.num_layers=4, optimizer.lr=3e-4,
                      dataset.source=corpus. The value is read as TOML; a bare word that
                      is not valid TOML is taken as a string. Later overrides win.

Options:
  --threads N         Use N CPU threads for computation (default: OpenMP's default,
                      usually every core; OMP_NUM_THREADS is honoured too).
  --quiet, -q         Print only warnings and errors, not progress lines.
  --nproc-per-node N  Start N local processes, one per rank (only N = 1 is supported
                      yet). Under torchrun, srun or mpirun the rank and world size come
                      from their environment variables instead.
  --version           Print the version and exit.
  --help, -h          Print this text and exit.
  --                  Treat every later argument as a recipe or an override.

Exit status:
  0  success
  1  the recipe, an override, the data or a checkpoint was rejected, or training failed
     (the message names the file, line and key where it can)
  2  the command line itself is wrong
)";
}

}  // namespace mpt::cli
