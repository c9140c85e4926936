#include "backend/devices.h"

#include "core/error.h"

#ifdef MPT_HAVE_CUDA
#include "cuda/device.h"
#endif

namespace mpt::backend {

#ifdef MPT_HAVE_CUDA
int cuda_device_count() { return static_cast<int>(cuda::visible_devices().size()); }

std::string cuda_device_summary() {
  auto devs = cuda::visible_devices();
  if (devs.empty()) return "";
  const auto& d = devs[0];
  return str(d.name, " (sm_", d.compute_major, d.compute_minor, ", ", d.total_memory >> 20, " MiB, ",
             d.multiprocessors, " SMs)", devs.size() > 1 ? str(" and ", devs.size() - 1, " more") : std::string());
}

bool built_with_cuda() { return true; }
#else
int cuda_device_count() { return 0; }
std::string cuda_device_summary() { return ""; }
bool built_with_cuda() { return false; }
#endif

namespace {

// 12020 -> "12.2"
std::string cuda_version(int v) { return str(v / 1000, ".", (v % 1000) / 10); }

const char* what_to_check(const DeviceCountFailure& f) {
  switch (f.error) {
    case kCudaErrorInsufficientDriver:
      return "update the NVIDIA driver to one that supports this CUDA runtime (or build with a toolkit the "
             "driver supports)";
    case kCudaErrorStubLibrary:
      return "the CUDA toolkit's stub libcuda.so was loaded instead of the driver's: remove the toolkit's "
             "lib64/stubs directory from LD_LIBRARY_PATH";
    case kCudaErrorSystemDriverMismatch:
      return "the loaded NVIDIA kernel module and the user-space driver (libcuda) are different versions, "
             "usually after a driver update: reload the nvidia kernel module or reboot (nvidia-smi names both)";
    case kCudaErrorCompatNotSupportedOnDevice:
      return "a forward-compatibility libcuda (cuda-compat) is on the library path but this GPU does not "
             "support it: remove it from LD_LIBRARY_PATH or update the driver";
    case kCudaErrorInvalidDevice:
      return "CUDA_VISIBLE_DEVICES names a GPU that does not exist (nvidia-smi -L lists them)";
    case kCudaErrorDevicesUnavailable:
      return "the GPUs are busy or in exclusive-process or prohibited compute mode (nvidia-smi -q -d COMPUTE)";
    default:
      return "check that nvidia-smi lists the GPU, that this process may open /dev/nvidia* and /dev/nvidia-uvm "
             "(in a container: start it with the GPUs passed through), and CUDA_VISIBLE_DEVICES";
  }
}

}  // namespace

bool device_count_means_no_gpu(const DeviceCountFailure& f) {
  return f.error == kCudaErrorNoDevice || (f.error == kCudaErrorInsufficientDriver && f.driver_version == 0);
}

std::string device_count_problem(const DeviceCountFailure& f) {
  const std::string driver =
      f.driver_version > 0 ? str("driver for CUDA ", cuda_version(f.driver_version)) : std::string("no driver found");
  return str("cudaGetDeviceCount failed: ", f.name, " (", f.text, ", error ", f.error, "; ", driver, ", runtime CUDA ",
             cuda_version(f.runtime_version), "): ", what_to_check(f));
}

}  // namespace mpt::backend
