// mptrain: train a transformer from a TOML recipe, print the resolved recipe, plan a run
// (memory, communication, layouts, pipeline schedule), prepare and inspect indexed datasets,
// or inspect a checkpoint.
// With --nproc-per-node N it launches N ranks of itself (src/cli/launcher.h).
// Exit status: 0 success, 1 rejected input or failed training (or a failed rank), 2 bad
// command line, 128 + the signal when a launch was stopped by SIGINT or SIGTERM.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "cli/command_line.h"
#include "cli/commands.h"
#include "cli/launcher.h"
#include "core/error.h"
#include "dist/launch_env.h"

namespace {

int report(const char* message, int exit_status) {
  std::fprintf(stderr, "mptrain: error: %s\n", message);
  return exit_status;
}

// This program's own executable, for the ranks to run.
std::string self_executable() {
  std::string path(4096, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size());
  if (n <= 0 || static_cast<size_t>(n) >= path.size()) return "/proc/self/exe";
  path.resize(static_cast<size_t>(n));
  return path;
}

// `--nproc-per-node N`: this process launches N ranks, each running the same command line
// without the launch options, and returns the launch's exit status.
int launch_ranks(const mpt::cli::Invocation& inv) {
  // Under torchrun, srun or mpirun this process is already one rank of a job.
  for (const char* name : {"WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"}) {
    const std::optional<int64_t> world = mpt::dist::env_int({name});
    if (world && *world > 1)
      throw mpt::cli::UsageError("--nproc-per-node " + std::to_string(inv.nproc_per_node) +
                                 " inside a launched job (" + name + "=" + std::to_string(*world) +
                                 "): this process is already one of its ranks; leave "
                                 "--nproc-per-node out under torchrun, srun or mpirun");
  }
  // N ranks each using every core would oversubscribe the CPU.
  const char* omp_threads = std::getenv("OMP_NUM_THREADS");
  if (!inv.threads && (omp_threads == nullptr || *omp_threads == '\0')) {
    const int share = std::max(1, omp_get_num_procs() / inv.nproc_per_node);
    ::setenv("OMP_NUM_THREADS", std::to_string(share).c_str(), 1);
  }
  std::vector<std::string> argv = {self_executable()};
  argv.insert(argv.end(), inv.rank_arguments.begin(), inv.rank_arguments.end());
  mpt::cli::LaunchOptions options;
  options.nproc = inv.nproc_per_node;
  if (!inv.master_addr.empty()) options.master_addr = inv.master_addr;
  options.master_port = inv.master_port;
  return mpt::cli::launch_local(argv, options);
}

int run(int argc, char** argv) {
  using mpt::cli::Command;
  if (const std::optional<std::vector<std::string>> plan = mpt::cli::plan_command_line(argc, argv))
    return mpt::cli::run_plan(*plan);
  const mpt::cli::Invocation inv = mpt::cli::parse_command_line(argc, argv);
  switch (inv.command) {
    case Command::kHelp:
      std::fputs(mpt::cli::usage_text().c_str(), stdout);
      std::fputs(("\n" + mpt::cli::plan_usage_text()).c_str(), stdout);
      return 0;
    case Command::kVersion:
      std::printf("mptrain %s\n", MPT_VERSION_STRING);
      return 0;
    case Command::kPreprocess:
      return mpt::cli::run_preprocess(inv);
    case Command::kDatasetInfo:
      return mpt::cli::run_dataset_info(inv);
    case Command::kCkptInfo:
      return mpt::cli::run_ckpt_info(inv);
    case Command::kBatches:
      return mpt::cli::run_batches(inv);
    case Command::kConfig:
    case Command::kTrain:
      break;
  }
  if (inv.nproc_per_node > 1) return launch_ranks(inv);
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
