// The local launcher behind `mptrain --nproc-per-node N`: starts N copies of a program on
// this machine, one per rank, with torchrun's environment variables, prefixes their output
// with the rank, and stops all of them when one fails or the launcher is interrupted.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace mpt::cli {

struct LaunchOptions {
  int nproc = 1;                         // ranks to start: WORLD_SIZE = LOCAL_WORLD_SIZE
  std::string master_addr = "127.0.0.1"; // MASTER_ADDR of every rank
  int master_port = 0;                   // MASTER_PORT; 0: a free TCP port picked here
  bool prefix_output = true;             // "[rankK]: " before each line; false: ranks write
                                         // straight to the launcher's stdout and stderr
  double kill_grace_s = 5;               // SIGTERM, then SIGKILL this many seconds later
  size_t max_line_bytes = 64 * 1024;     // a longer line is split into prefixed pieces
};

// Runs argv (argv[0] is the executable's path; no PATH search) as ranks 0..nproc-1 and
// waits for all of them. Each rank inherits the launcher's environment and stdin, with
// RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK=0, GROUP_WORLD_SIZE=1,
// MASTER_ADDR and MASTER_PORT set (replacing any value already there), SIGINT, SIGTERM
// and SIGCHLD at their default dispositions, no blocked signals, and PR_SET_PDEATHSIG =
// SIGTERM, so that ranks die with the thread that called launch_local.
//
// With prefix_output, a rank's stdout and stderr go through pipes and every line is written
// whole, as "[rankK]: line\n", to the launcher's stdout or stderr respectively: lines of
// different ranks never mix. A final line without a newline gets one; a line longer than
// max_line_bytes is written as several prefixed lines. Everything a rank wrote before it
// exited is written out before launch_local returns (output of a rank's own background
// children that outlive it may be cut off).
//
// The first rank to exit non-zero or die by a signal is reported on stderr as
// "mptrain: rank K exited with status S" or "mptrain: rank K was killed by signal SIGSEGV";
// the ranks still running get SIGTERM, and SIGKILL after kill_grace_s. SIGINT or SIGTERM
// received by the launcher is forwarded to every running rank, again followed by SIGKILL
// after kill_grace_s. Failures after the first (ranks stopped by the launcher) are not
// reported separately.
//
// Returns 0 when every rank exited 0; 1 when a rank failed first; 128 + the signal number
// when a SIGINT or SIGTERM to the launcher came first. Throws mpt::Error for invalid
// options (nproc < 1, an empty argv, a port outside 0..65535, a negative grace), when no
// free port can be found, or when a rank cannot be started (fork, pipe or exec failed; the
// ranks already started are killed and reaped first).
//
// Not reentrant: one launch_local at a time per process. It replaces the SIGINT, SIGTERM
// and SIGCHLD handlers while it runs and restores them, and the calling thread's signal
// mask, before returning.
int launch_local(const std::vector<std::string>& argv, const LaunchOptions& options);

// A TCP port that was free on this machine a moment ago (bound to port 0 and released).
int pick_free_port();

// The name of a signal, "SIGKILL"; "signal 40" for one without a name here.
std::string signal_name(int signal_number);

}  // namespace mpt::cli
