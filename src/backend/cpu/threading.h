// How the CPU kernels share work between OpenMP threads.
#pragma once

#include <cstdint>

namespace mpt::backend::cpu {

// Loops over fewer elements than this run on the calling thread: waking the team costs
// more than the work (and small models call many small ops).
constexpr int64_t kMinParallelWork = 1 << 15;

}  // namespace mpt::backend::cpu
