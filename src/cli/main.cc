// mptrain: train a transformer from a TOML recipe, print the resolved recipe, or prepare
// and inspect indexed datasets.
// Exit status: 0 success, 1 rejected input or failed training, 2 bad command line.
#include <omp.h>

#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "core/error.h"

namespace {

int report(const char* message, int exit_status) {
  std::fprintf(stderr, "mptrain: error: %s\n", message);
  return exit_status;
}

int run(int argc, char** argv) {
  using mpt::cli::Command;
  const mpt::cli::Invocation inv = mpt::cli::parse_command_line(argc, argv);
  switch (inv.command) {
    case Command::kHelp:
      std::fputs(mpt::cli::usage_text().c_str(), stdout);
      return 0;
    case Command::kVersion:
      std::printf("mptrain %s\n", MPT_VERSION_STRING);
      return 0;
    case Command::kPreprocess:
      return mpt::cli::run_preprocess(inv);
    case Command::kDatasetInfo:
      return mpt::cli::run_dataset_info(inv);
    case Command::kConfig:
    case Command::kTrain:
      break;
  }
  if (inv.threads) omp_set_num_threads(*inv.threads);
  return inv.command == Command::kConfig ? mpt::cli::run_config(inv) : mpt::cli::run_train(inv);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const mpt::cli::UsageError& e) {
    report(e.what(), 2);
    std::fputs("Try 'mptrain --help'.\n", stderr);
    return 2;
  } catch (const mpt::Error& e) {
    return report(e.what(), 1);
  } catch (const std::bad_alloc&) {
    return report("out of memory", 1);
  } catch (const std::exception& e) {
    return report((std::string("internal error: ") + e.what()).c_str(), 1);
  } catch (...) {
    return report("internal error: unknown exception", 1);
  }
}
