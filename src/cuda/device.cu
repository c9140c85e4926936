#include "cuda/device.h"

#include <cuda_runtime.h>

#include "core/error.h"

namespace mpt::cuda {

void check(int err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  auto e = static_cast<cudaError_t>(err);
  fail(Status::kDevice, call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":", line);
}

std::vector<DeviceInfo> visible_devices() {
  std::vector<DeviceInfo> out;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" / "no device" error
    return out;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    MPT_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.compute_major = p.major;
    d.compute_minor = p.minor;
    d.total_memory = p.totalGlobalMem;
    d.multiprocessors = p.multiProcessorCount;
    out.push_back(d);
  }
  return out;
}

}  // namespace mpt::cuda
