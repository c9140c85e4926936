// CUDA device discovery and error checking. Every CUDA runtime call in src/cuda goes
// through MPT_CUDA_CHECK so a failure names the call, the error and where it happened.
#pragma once

#include <string>
#include <vector>

namespace mpt::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  size_t total_memory = 0;
  int multiprocessors = 0;
};

// Devices visible to this process; empty when there is no driver or no GPU (never throws
// for that case: a machine without a GPU is normal). Any other failure to count them (a
// driver older than the runtime, a driver mismatch, GPUs the process may not open) throws
// Error(kDevice) naming the CUDA error and what to check (backend/devices.h has the rule).
std::vector<DeviceInfo> visible_devices();

// Throws mpt::Error(kDevice) naming `call`, the CUDA error and file:line when err != 0.
void check(int err, const char* call, const char* file, int line);

}  // namespace mpt::cuda

#define MPT_CUDA_CHECK(call) ::mpt::cuda::check(static_cast<int>(call), #call, __FILE__, __LINE__)
