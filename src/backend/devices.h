// Which accelerators this process can see, for backend selection and the startup log.
// Builds without CUDA report none.
#pragma once

#include <string>

namespace mpt::backend {

// Number of CUDA GPUs visible (0 without a driver, a GPU, or a CUDA build).
int cuda_device_count();
// One line describing the first GPU, or "" when there is none.
std::string cuda_device_summary();
// True when this build contains the CUDA sources.
bool built_with_cuda();

}  // namespace mpt::backend
