#include "cuda/device.h"

#include <cuda_runtime.h>

#include "backend/devices.h"
#include "core/error.h"

namespace mpt::cuda {

static_assert(backend::kCudaErrorStubLibrary == cudaErrorStubLibrary &&
                  backend::kCudaErrorInsufficientDriver == cudaErrorInsufficientDriver &&
                  backend::kCudaErrorDevicesUnavailable == cudaErrorDevicesUnavailable &&
                  backend::kCudaErrorNoDevice == cudaErrorNoDevice &&
                  backend::kCudaErrorInvalidDevice == cudaErrorInvalidDevice &&
                  backend::kCudaErrorSystemDriverMismatch == cudaErrorSystemDriverMismatch &&
                  backend::kCudaErrorCompatNotSupportedOnDevice == cudaErrorCompatNotSupportedOnDevice,
              "backend/devices.h names cudaError_t values as plain numbers");

void check(int err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  auto e = static_cast<cudaError_t>(err);
  fail(Status::kDevice, call, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ") at ", file, ":", line);
}

std::vector<DeviceInfo> visible_devices() {
  std::vector<DeviceInfo> out;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error, so that a later launch check does not report it
    backend::DeviceCountFailure f;
    f.error = static_cast<int>(err);
    f.name = cudaGetErrorName(err);
    f.text = cudaGetErrorString(err);
    if (cudaDriverGetVersion(&f.driver_version) != cudaSuccess) f.driver_version = 0;
    if (cudaRuntimeGetVersion(&f.runtime_version) != cudaSuccess) f.runtime_version = CUDART_VERSION;
    cudaGetLastError();
    if (backend::device_count_means_no_gpu(f)) return out;  // a machine without a GPU is normal
    fail(Status::kDevice, backend::device_count_problem(f));
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
