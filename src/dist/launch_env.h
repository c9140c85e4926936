// Where this process sits in a job: rank, world size, local rank and the rendezvous
// address, from explicit values or the launcher's environment (torchrun, SLURM, Open MPI).
// Header-only so that the C ABI and the command line resolve it the same way.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>

#include "core/error.h"

namespace mpt::dist {

struct LaunchPlace {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
};

// The value of the first variable in `names` that is set, as a non-negative integer;
// nullopt when none is set. A malformed value is an error naming the variable.
inline std::optional<int64_t> env_int(std::initializer_list<const char*> names) {
  for (const char* name : names) {
    const char* text = std::getenv(name);
    if (text == nullptr || *text == '\0') continue;
    errno = 0;
    char* end = nullptr;
    long long v = std::strtoll(text, &end, 10);
    MPT_CHECK(errno == 0 && end != text && *end == '\0' && v >= 0, Status::kInvalidArgument,
              "environment variable ", name, "='", text, "' is not a non-negative integer");
    return static_cast<int64_t>(v);
  }
  return std::nullopt;
}

// Explicit values win; -1 (or a null address) means "from the environment", where
// torchrun's variables win over SLURM's, and SLURM's over Open MPI's.
inline LaunchPlace resolve_launch_place(int64_t rank = -1, int64_t world_size = -1,
                                        int64_t local_rank = -1, const char* master_addr = nullptr,
                                        int64_t master_port = -1) {
  LaunchPlace p;
  p.rank = rank >= 0 ? rank : env_int({"RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"}).value_or(0);
  p.world_size = world_size >= 0
                     ? world_size
                     : env_int({"WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"}).value_or(1);
  p.local_rank =
      local_rank >= 0
          ? local_rank
          : env_int({"LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"}).value_or(0);
  p.master_port = master_port >= 0 ? master_port : env_int({"MASTER_PORT"}).value_or(29500);
  if (master_addr != nullptr) {
    p.master_addr = master_addr;
  } else if (const char* env = std::getenv("MASTER_ADDR"); env != nullptr && *env != '\0') {
    p.master_addr = env;
  }

  MPT_CHECK(p.world_size >= 1, Status::kInvalidArgument, "world size must be at least 1, got ",
            p.world_size);
  MPT_CHECK(p.rank < p.world_size, Status::kInvalidArgument, "rank ", p.rank,
            " is outside a world of size ", p.world_size);
  MPT_CHECK(p.local_rank < p.world_size, Status::kInvalidArgument, "local rank ", p.local_rank,
            " is outside a world of size ", p.world_size);
  MPT_CHECK(p.master_port >= 1 && p.master_port <= 65535, Status::kInvalidArgument,
            "master port ", p.master_port, " is not in 1..65535");
  MPT_CHECK(!p.master_addr.empty(), Status::kInvalidArgument, "master address is empty");
  return p;
}

}  // namespace mpt::dist
