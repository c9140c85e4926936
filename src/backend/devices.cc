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

}  // namespace mpt::backend
