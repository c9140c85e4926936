// Which accelerators this process can see, for backend selection and the startup log.
// Builds without CUDA report none.
#pragma once

#include <string>

namespace mpt::backend {

// Number of CUDA GPUs visible (0 without a driver, a GPU, or a CUDA build). Throws
// Error(kDevice) when the count cannot be read for any other reason (a driver that does not
// match, a GPU the process may not open): see device_count_means_no_gpu.
int cuda_device_count();
// One line describing the first GPU, or "" when there is none; throws as cuda_device_count.
std::string cuda_device_summary();
// True when this build contains the CUDA sources.
bool built_with_cuda();

// --- what a failed cudaGetDeviceCount means -----------------------------------------------
// Plain values, so that the rule is tested without CUDA (cuda/device.cu passes the runtime's
// answers in and checks these numbers against cudaError_t).
inline constexpr int kCudaErrorStubLibrary = 34;
inline constexpr int kCudaErrorInsufficientDriver = 35;
inline constexpr int kCudaErrorDevicesUnavailable = 46;
inline constexpr int kCudaErrorNoDevice = 100;
inline constexpr int kCudaErrorInvalidDevice = 101;
inline constexpr int kCudaErrorSystemDriverMismatch = 803;
inline constexpr int kCudaErrorCompatNotSupportedOnDevice = 804;

struct DeviceCountFailure {
  int error = 0;            // the cudaError_t
  std::string name, text;   // cudaGetErrorName's and cudaGetErrorString's words for it
  int driver_version = 0;   // cudaDriverGetVersion's (1000 * major + 10 * minor; 0: no driver)
  int runtime_version = 0;  // cudaRuntimeGetVersion's
};

// True when the failure means "this machine has no GPU to use": cudaErrorNoDevice (none
// present, or CUDA_VISIBLE_DEVICES hides them all), or cudaErrorInsufficientDriver with no
// driver installed at all (driver version 0: the runtime says "insufficient" when it finds
// no libcuda, as on a build machine with the toolkit and no GPU). With a driver installed,
// "insufficient" means one older than this build's runtime: the machine is meant to run
// GPUs, so reading it as "no GPU" would silently train on the CPU and skip every GPU test.
// Every other error is a problem too.
bool device_count_means_no_gpu(const DeviceCountFailure& f);

// The message of Error(kDevice) for a failure that is not "no GPU": the CUDA error, the
// driver and runtime versions, and what to check.
std::string device_count_problem(const DeviceCountFailure& f);

}  // namespace mpt::backend
