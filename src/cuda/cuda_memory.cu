// CudaOps' copies inside device memory and its pointer test.
#include "cuda/cuda_ops.h"
#include "cuda/device.h"

namespace mpt::cuda {

void CudaOps::device_copy(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

bool CudaOps::is_device_pointer(const void* p) const {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();  // not a pointer CUDA knows: host memory
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

}  // namespace mpt::cuda
